//! The replicated cluster state: what Raft agrees on, and the pure function that changes it.
//!
//! Every node applies the same committed [`StateChange`]s in the same order to a
//! [`ClusterState`], so every node holds the same state. `apply` is deterministic: anything
//! that depends on the outside world (wall-clock time for token expiry, the new node's id)
//! is decided by the proposer and carried inside the change.
//!
//! Serialization is versioned ([`STATE_FORMAT`]). Fields added later (volumes, legs, epochs,
//! groups, placement) arrive with `#[serde(default)]` so older snapshots still load; an
//! incompatible change bumps the format, and `decode_state` refuses formats it does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{Event, EventError, Timeline};
use crate::group::{self, Group, GroupChange, GroupError};
use crate::ids::{ClusterId, NodeId};
use crate::volume::{self, VolumeChange, VolumeError, VolumeId, VolumeInfo};

/// The snapshot encoding version this build writes and reads.
pub const STATE_FORMAT: u32 = 1;

/// How many nodes may vote before new nodes join as learners.
pub const MAX_VOTERS: usize = 5;

/// What part a node plays in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Votes in Raft and may hold resources.
    Voter,
    /// Replicates the state but does not vote (joined after `MAX_VOTERS` voters).
    Learner,
    /// Votes, never holds resources: the tie-breaker of two-node clusters.
    Witness,
}

impl Role {
    pub fn votes(self) -> bool {
        matches!(self, Role::Voter | Role::Witness)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Witness => "witness",
        }
    }
}

/// The operator's wish for a node: `standby` drains it of resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admin {
    Online,
    Standby,
}

impl Admin {
    pub fn as_str(self) -> &'static str {
        match self {
            Admin::Online => "online",
            Admin::Standby => "standby",
        }
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// The cluster address (HOST:PORT) other nodes dial.
    pub addr: String,
    pub site: Option<String>,
    pub role: Role,
    pub admin: Admin,
}

/// A join token the cluster accepts until `expires_unix` (seconds, wall clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Hex SHA-256 of the token's secret; the secret itself is never stored.
    pub digest: String,
    pub expires_unix: u64,
}

/// Everything the cluster agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: ClusterId,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Ids are never reused: the next join gets at least this id.
    pub next_node_id: NodeId,
    #[serde(default)]
    pub join_tokens: Vec<JoinTokenRecord>,
    #[serde(default)]
    pub volumes: BTreeMap<VolumeId, VolumeInfo>,
    /// Volume ids are never reused either.
    #[serde(default = "first_volume_id")]
    pub next_volume_id: VolumeId,
    /// Resource groups by name: the operator's spec and the committed runtime facts.
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// The failover timeline (the newest events).
    #[serde(default)]
    pub timeline: Timeline,
    /// The newest request numbers applied per proposing node: a proposal the network
    /// delivered twice (a duplicated forward) commits twice but is applied once.
    #[serde(default)]
    pub recent_requests: BTreeMap<NodeId, std::collections::VecDeque<u64>>,
}

/// How many request numbers per node [`ClusterState::recent_requests`] remembers.
pub const RECENT_REQUESTS: usize = 256;

fn first_volume_id() -> VolumeId {
    1
}

/// A change to the cluster state, decided by a proposer and applied by all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum StateChange {
    /// A node joins (carried by a Raft membership change).
    AddNode {
        node: NodeInfo,
        token_digest: String,
        now_unix: u64,
    },
    /// A node leaves for good (carried by a Raft membership change).
    RemoveNode { id: NodeId },
    /// Put a node in standby or back online.
    SetAdmin { id: NodeId, admin: Admin },
    /// Accept a new join token until it expires; expired tokens are dropped.
    AddJoinToken {
        digest: String,
        expires_unix: u64,
        now_unix: u64,
    },
    /// Create, delete, promote, demote a volume, or change a leg's state.
    Volume(VolumeChange),
    /// Create, delete, enable, disable, move or clear a group; record a failure; place it.
    Group(GroupChange),
    /// Events for the timeline.
    Events { events: Vec<Event> },
}

/// A committed change that the state refused; every node refuses it identically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("node id {0} is already taken or was used before")]
    IdTaken(NodeId),
    #[error("a node named {0:?} is already a member")]
    NameTaken(String),
    #[error("no node with id {0}")]
    NoSuchNode(NodeId),
    #[error("the join token is not known to this cluster")]
    UnknownToken,
    #[error("the join token expired at {expired_unix} (unix seconds)")]
    ExpiredToken { expired_unix: u64 },
    #[error("the last voter cannot be removed")]
    LastVoter,
    #[error("node {node} is primary of volume {volume}; move or demote it first")]
    PrimaryOfVolume { node: NodeId, volume: String },
    #[error(
        "node {node} runs group {group} (or is placed to); move it away first (`tandem node \
         standby`), then remove the node"
    )]
    RunsGroup { node: NodeId, group: String },
    #[error(
        "volume {volume} belongs to group {group}, which node {holder} holds: it is promoted \
         only there (move the group instead)"
    )]
    HeldByGroup {
        volume: String,
        group: String,
        holder: NodeId,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Events(#[from] EventError),
}

/// A snapshot payload that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    #[error("state snapshot is not valid: {0}")]
    Malformed(String),
    #[error("state snapshot has format {found}, this build reads format {STATE_FORMAT}")]
    UnknownFormat { found: u32 },
    #[error("state snapshot belongs to cluster {found}, not {expected}")]
    ForeignCluster {
        expected: ClusterId,
        found: ClusterId,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: u32,
    state: serde_json::Value,
}

impl ClusterState {
    /// An empty state: what a joining node holds before its first snapshot arrives.
    pub fn empty(cluster: ClusterId) -> ClusterState {
        ClusterState {
            cluster,
            nodes: BTreeMap::new(),
            next_node_id: 1,
            join_tokens: Vec::new(),
            volumes: BTreeMap::new(),
            next_volume_id: first_volume_id(),
            groups: BTreeMap::new(),
            timeline: Timeline::default(),
            recent_requests: BTreeMap::new(),
        }
    }

    /// Whether request `request` of node `origin` was applied already; remembers it if not.
    pub fn first_time(&mut self, origin: NodeId, request: u64) -> bool {
        let seen = self.recent_requests.entry(origin).or_default();
        if seen.contains(&request) {
            return false;
        }
        if seen.len() >= RECENT_REQUESTS {
            seen.pop_front();
        }
        seen.push_back(request);
        true
    }

    /// The state of a brand-new cluster whose only member is `first`.
    pub fn founded_by(cluster: ClusterId, first: NodeInfo) -> ClusterState {
        let mut state = ClusterState::empty(cluster);
        state.next_node_id = first.id + 1;
        state.nodes.insert(first.id, first);
        state
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.values().find(|node| node.name == name)
    }

    pub fn voter_count(&self) -> usize {
        self.nodes.values().filter(|node| node.role.votes()).count()
    }

    /// The role a node joining now gets: past [`MAX_VOTERS`] voters, data nodes are learners.
    pub fn role_for_joiner(&self, witness: bool) -> Role {
        if self.voter_count() >= MAX_VOTERS {
            Role::Learner
        } else if witness {
            Role::Witness
        } else {
            Role::Voter
        }
    }

    /// Checks a join token as `apply` will, so a proposer can refuse early and clearly.
    pub fn check_token(&self, digest: &str, now_unix: u64) -> Result<(), ApplyError> {
        let record = self
            .join_tokens
            .iter()
            .find(|record| record.digest == digest)
            .ok_or(ApplyError::UnknownToken)?;
        if now_unix >= record.expires_unix {
            return Err(ApplyError::ExpiredToken {
                expired_unix: record.expires_unix,
            });
        }
        Ok(())
    }

    /// Checks that `change` would apply, without applying it.
    pub fn validate(&self, change: &StateChange) -> Result<(), ApplyError> {
        self.clone().apply(change).map(|_| ())
    }

    /// Applies one committed change. Deterministic: same state + same change = same result.
    pub fn apply(&mut self, change: &StateChange) -> Result<String, ApplyError> {
        match change {
            StateChange::AddNode {
                node,
                token_digest,
                now_unix,
            } => self.add_node(node, token_digest, *now_unix),
            StateChange::RemoveNode { id } => {
                let node = self.nodes.get(id).ok_or(ApplyError::NoSuchNode(*id))?;
                if node.role.votes() && self.voter_count() == 1 {
                    return Err(ApplyError::LastVoter);
                }
                if let Some(volume) = self.volumes.values().find(|v| v.primary == Some(*id)) {
                    return Err(ApplyError::PrimaryOfVolume {
                        node: *id,
                        volume: volume.name.clone(),
                    });
                }
                let held = self
                    .groups
                    .values()
                    .find(|g| g.status.holder == Some(*id) || g.status.node == Some(*id));
                if let Some(group) = held {
                    return Err(ApplyError::RunsGroup {
                        node: *id,
                        group: group.spec.name.clone(),
                    });
                }
                let name = node.name.clone();
                self.nodes.remove(id);
                Ok(format!("node {name} removed"))
            }
            StateChange::SetAdmin { id, admin } => {
                let node = self.nodes.get_mut(id).ok_or(ApplyError::NoSuchNode(*id))?;
                node.admin = *admin;
                Ok(format!("node {} is now {}", node.name, admin.as_str()))
            }
            StateChange::AddJoinToken {
                digest,
                expires_unix,
                now_unix,
            } => {
                self.join_tokens
                    .retain(|record| record.expires_unix > *now_unix);
                self.join_tokens.push(JoinTokenRecord {
                    digest: digest.clone(),
                    expires_unix: *expires_unix,
                });
                Ok(format!(
                    "join token valid until {expires_unix} (unix seconds)"
                ))
            }
            StateChange::Volume(change) => self.apply_volume(change),
            StateChange::Group(change) => Ok(group::apply(self, change)?),
            StateChange::Events { events } => {
                let added = self.timeline.record(events)?;
                Ok(format!("{added} event(s) recorded"))
            }
        }
    }

    /// A volume of a group that a node holds is promoted only there: a promotion proposed
    /// before its node released the group must not commit after another node acquired it.
    fn check_group_holder(&self, volume: VolumeId, node: NodeId) -> Result<(), ApplyError> {
        let Some(info) = self.volumes.get(&volume) else {
            return Ok(());
        };
        let held = self.groups.values().find(|group| {
            group.status.holder.is_some_and(|holder| holder != node)
                && group.spec.volumes().contains(&info.name.as_str())
        });
        match held {
            Some(group) => Err(ApplyError::HeldByGroup {
                volume: info.name.clone(),
                group: group.spec.name.clone(),
                holder: group.status.holder.unwrap_or_default(),
            }),
            None => Ok(()),
        }
    }

    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeInfo> {
        self.volumes.values().find(|volume| volume.name == name)
    }

    fn volume_mut(&mut self, id: VolumeId) -> Result<&mut VolumeInfo, VolumeError> {
        self.volumes
            .get_mut(&id)
            .ok_or(VolumeError::NoSuchVolume(id))
    }

    fn apply_volume(&mut self, change: &VolumeChange) -> Result<String, ApplyError> {
        match change {
            VolumeChange::Create {
                name,
                size,
                legs,
                granularity,
            } => {
                if self.volume_by_name(name).is_some() {
                    return Err(VolumeError::NameTaken(name.clone()).into());
                }
                volume::check_new_volume(name, *size, legs, |node| {
                    self.nodes
                        .get(&node)
                        .is_some_and(|info| info.role != Role::Witness)
                })?;
                granularity.check()?;
                let id = self.next_volume_id;
                self.next_volume_id += 1;
                let mut volume = volume::new_volume(id, name, *size, legs);
                volume.granularity = *granularity;
                self.volumes.insert(id, volume);
                Ok(format!("volume {name} created with id {id}"))
            }
            VolumeChange::Delete { volume } => {
                let info = self.volume_mut(*volume)?;
                if let Some(node) = info.primary {
                    let volume = info.name.clone();
                    return Err(VolumeError::InUse { volume, node }.into());
                }
                let name = info.name.clone();
                if let Some(user) = self
                    .groups
                    .values()
                    .find(|g| g.spec.volumes().contains(&&*name))
                {
                    let group = user.spec.name.clone();
                    return Err(GroupError::VolumeInUse {
                        volume: name,
                        group,
                    }
                    .into());
                }
                self.volumes.remove(volume);
                Ok(format!(
                    "volume {name} deleted (leg contents left in place)"
                ))
            }
            VolumeChange::Promote {
                volume,
                node,
                force,
                takeover,
            } => {
                self.check_group_holder(*volume, *node)?;
                Ok(volume::promote(
                    self.volume_mut(*volume)?,
                    *node,
                    *force,
                    *takeover,
                )?)
            }
            VolumeChange::Demote { volume, epoch } => {
                let info = self.volume_mut(*volume)?;
                if *epoch != info.epoch {
                    return Err(VolumeError::StaleEpoch {
                        volume: info.name.clone(),
                        given: *epoch,
                        current: info.epoch,
                    }
                    .into());
                }
                info.primary = None;
                Ok(format!("volume {} demoted (epoch {epoch})", info.name))
            }
            VolumeChange::SetLegState {
                volume,
                leg,
                state,
                epoch,
            } => Ok(volume::set_leg_state(
                self.volume_mut(*volume)?,
                *leg,
                *state,
                *epoch,
            )?),
        }
    }

    fn add_node(&mut self, node: &NodeInfo, digest: &str, now: u64) -> Result<String, ApplyError> {
        self.check_token(digest, now)?;
        if node.id < self.next_node_id || self.nodes.contains_key(&node.id) {
            return Err(ApplyError::IdTaken(node.id));
        }
        if self.node_by_name(&node.name).is_some() {
            return Err(ApplyError::NameTaken(node.name.clone()));
        }
        self.next_node_id = node.id + 1;
        self.nodes.insert(node.id, node.clone());
        Ok(format!(
            "node {} joined as {} with id {}",
            node.name,
            node.role.as_str(),
            node.id
        ))
    }
}

/// Encodes the state for a snapshot, tagged with [`STATE_FORMAT`].
pub fn encode_state(state: &ClusterState) -> Vec<u8> {
    let envelope = serde_json::json!({ "format": STATE_FORMAT, "state": state });
    // Serializing plain data structs to a Vec cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Decodes a snapshot payload, refusing unknown formats and other clusters' states.
pub fn decode_state(bytes: &[u8], cluster: ClusterId) -> Result<ClusterState, StateDecodeError> {
    let envelope: Envelope = serde_json::from_slice(bytes)
        .map_err(|error| StateDecodeError::Malformed(error.to_string()))?;
    if envelope.format != STATE_FORMAT {
        return Err(StateDecodeError::UnknownFormat {
            found: envelope.format,
        });
    }
    let state: ClusterState = serde_json::from_value(envelope.state)
        .map_err(|error| StateDecodeError::Malformed(error.to_string()))?;
    if state.cluster != cluster {
        return Err(StateDecodeError::ForeignCluster {
            expected: cluster,
            found: state.cluster,
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, name: &str, role: Role) -> NodeInfo {
        NodeInfo {
            id,
            name: name.into(),
            addr: format!("127.0.0.{id}:7000"),
            site: None,
            role,
            admin: Admin::Online,
        }
    }

    fn cluster_with_token() -> ClusterState {
        let mut state = ClusterState::founded_by(ClusterId([1; 16]), node(1, "a", Role::Voter));
        let token = StateChange::AddJoinToken {
            digest: "d".into(),
            expires_unix: 100,
            now_unix: 10,
        };
        state.apply(&token).unwrap();
        state
    }

    fn join(id: NodeId, name: &str, now_unix: u64) -> StateChange {
        StateChange::AddNode {
            node: node(id, name, Role::Voter),
            token_digest: "d".into(),
            now_unix,
        }
    }

    #[test]
    fn join_needs_a_live_token_a_fresh_id_and_a_unique_name() {
        let mut state = cluster_with_token();
        assert_eq!(
            state.apply(&join(2, "b", 200)),
            Err(ApplyError::ExpiredToken { expired_unix: 100 })
        );
        assert!(state.apply(&join(2, "b", 20)).is_ok());
        assert_eq!(state.apply(&join(2, "c", 20)), Err(ApplyError::IdTaken(2)));
        assert_eq!(
            state.apply(&join(3, "b", 20)),
            Err(ApplyError::NameTaken("b".into()))
        );
        let bad_token = StateChange::AddNode {
            node: node(3, "c", Role::Voter),
            token_digest: "nope".into(),
            now_unix: 20,
        };
        assert_eq!(state.apply(&bad_token), Err(ApplyError::UnknownToken));
    }

    #[test]
    fn removed_ids_are_never_reused() {
        let mut state = cluster_with_token();
        state.apply(&join(2, "b", 20)).unwrap();
        state.apply(&StateChange::RemoveNode { id: 2 }).unwrap();
        assert_eq!(state.apply(&join(2, "b", 20)), Err(ApplyError::IdTaken(2)));
        assert!(state.apply(&join(3, "b", 20)).is_ok());
    }

    #[test]
    fn the_last_voter_stays() {
        let mut state = cluster_with_token();
        assert_eq!(
            state.apply(&StateChange::RemoveNode { id: 1 }),
            Err(ApplyError::LastVoter)
        );
    }

    #[test]
    fn joiners_become_learners_past_five_voters() {
        let mut state = cluster_with_token();
        for id in 2..=4 {
            state.apply(&join(id, &format!("n{id}"), 20)).unwrap();
        }
        assert_eq!(state.role_for_joiner(true), Role::Witness);
        state.apply(&join(5, "n5", 20)).unwrap();
        assert_eq!(state.role_for_joiner(false), Role::Learner);
        assert_eq!(state.role_for_joiner(true), Role::Learner);
    }

    #[test]
    fn state_round_trips_and_refuses_foreign_or_future_snapshots() {
        let state = cluster_with_token();
        let bytes = encode_state(&state);
        assert_eq!(decode_state(&bytes, state.cluster).unwrap(), state);
        assert!(matches!(
            decode_state(&bytes, ClusterId([2; 16])),
            Err(StateDecodeError::ForeignCluster { .. })
        ));
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"format\":1", "\"format\":9");
        assert!(matches!(
            decode_state(future.as_bytes(), state.cluster),
            Err(StateDecodeError::UnknownFormat { found: 9 })
        ));
        assert!(matches!(
            decode_state(b"{", state.cluster),
            Err(StateDecodeError::Malformed(_))
        ));
    }
}
