//! `NodeCore`: one cluster member as a pure state machine (Raft, liveness, leases, state).
//!
//! Inputs: [`NodeCore::tick`] with `now`, [`NodeCore::receive`] with frame bytes,
//! [`NodeCore::propose`] with a state change, [`NodeCore::persisted`] when the shim finished a
//! [`Action::Persist`]. Outputs: [`Action`]s drained with [`NodeCore::take_actions`].
//!
//! Persistence is asynchronous, like io_uring: the node asks for a write with a number and keeps
//! the Raft messages that depend on it (votes, append acks) until the completion arrives. That
//! ordering is what makes a vote survive power loss, and the simulator checks it.

use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, HardState,
    Message as RaftMessage, Snapshot,
};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Frame, FrameError, PeerMessage, Ping, Pong};
use crate::command::{Command, NodeStatus, Reply, StatusReport};
use crate::events::MAX_EVENTS;
use crate::ids::{ClusterId, NodeId};
use crate::lease::LeaseTracker;
use crate::scheduler::{Liveness, NodeLiveness};
use crate::state::{
    decode_state, encode_state, Admin, ApplyError, ClusterState, NodeInfo, Role, StateChange,
    StateDecodeError,
};
use crate::storage::{DurableState, LogStore};
use crate::timing::Timing;

/// After a stall, do not replay more Raft ticks than this in one call.
const MAX_TICKS_PER_CALL: u64 = 40;
/// Node leases waiting for their commit index to be applied (one per answered ping round).
const MAX_PENDING_LEASES: usize = 16;
/// How many of the newest timeline events `status` shows.
const RECENT_EVENTS: usize = 8;
/// Bound on ready rounds handled per input (raft-rs converges in a few).
const MAX_READY_ROUNDS: usize = 16;

/// Something the shim (or the simulator) must do for the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send frame bytes to a node.
    Send { to: NodeId, bytes: Vec<u8> },
    /// Make these durable (write + sync), in order, then call `persisted(number)`.
    Persist {
        number: u64,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        /// A snapshot from the leader: replaces every entry up to its index.
        snapshot: Option<Snapshot>,
    },
    /// Durably store this snapshot of applied state, then drop log entries up to its index.
    Compact { snapshot: Snapshot },
    /// A committed entry was applied (for checkers and metrics).
    Applied { index: u64, term: u64, digest: u64 },
    /// A proposal made on this node was applied (or refused) by the cluster.
    Completed {
        request: u64,
        outcome: Result<String, String>,
    },
    /// This node was removed from the cluster; the shim should stop it.
    Removed,
    /// Something an operator would want in the log.
    Note { message: String },
}

/// Why a proposal was not accepted for replication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("{0}")]
    Invalid(#[from] ApplyError),
    #[error("no leader is known (the cluster may have lost quorum); nothing was changed")]
    NoLeader,
    #[error("this node was removed from the cluster")]
    Removed,
    #[error("another membership change is still being committed; try again in a moment")]
    MembershipChangePending,
    #[error("raft refused the proposal: {0}")]
    Raft(String),
}

/// Why a node could not be restored from its durable state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    State(#[from] StateDecodeError),
    #[error("invalid timing: {0}")]
    Timing(String),
    #[error("raft could not start: {0}")]
    Raft(String),
}

/// What a command needs done: an answer now, or a change replicated first.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Answer(Reply),
    Propose(StateChange),
    /// Join tokens need randomness, which only the shim has.
    MakeToken {
        ttl_secs: u64,
    },
    /// An online verify of a volume this node is primary of: the data path runs it.
    Verify {
        volume: crate::volume::VolumeId,
        repair: bool,
    },
}

/// A state change as it travels through the Raft log.
#[derive(Serialize, Deserialize)]
struct Proposal {
    origin: NodeId,
    request: u64,
    change: StateChange,
}

/// A Ready whose persistence the shim has not confirmed, with the messages it holds back.
struct PendingReady {
    number: u64,
    needs_disk: bool,
    /// It installs a snapshot from the leader.
    has_snapshot: bool,
    done: bool,
    messages: Vec<RaftMessage>,
}

/// Deliberate rule-breaking switches for the simulator's mutation tests.
#[cfg(feature = "mutations")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Mutations {
    /// Grant the leader lease without a quorum and without the new-leader blackout.
    pub lease_without_quorum: bool,
    /// Send votes and append acks before they are durable.
    pub send_before_persist: bool,
}

/// One cluster member.
pub struct NodeCore {
    id: NodeId,
    cluster: ClusterId,
    timing: Timing,
    raw: RawNode<LogStore>,
    state: ClusterState,
    applied: u64,
    removed: bool,
    now: u64,
    next_tick_at: u64,
    next_ping_at: u64,
    leases: LeaseTracker,
    last_heard: BTreeMap<NodeId, u64>,
    /// (lease remaining as reported, when we heard it) per peer.
    peer_leases: BTreeMap<NodeId, (u64, u64)>,
    pending: VecDeque<PendingReady>,
    /// (role, term) at the end of the last step, to notice elections.
    seen_role: (StateRole, u64),
    /// Node ids handed to joins proposed here but not applied yet.
    reserved_id: NodeId,
    actions: Vec<Action>,
    /// Our own source for election timeouts (raft-rs would use the OS's), so that a seeded
    /// simulation replays exactly; the daemon seeds it randomly.
    election_rng: SplitMix64,
    /// (role, term, timeout) when we last chose the election timeout.
    election_key: (StateRole, u64, usize),
    /// Followers a snapshot was handed to the shim for, to report once the Ready is done.
    snapshots_sent: Vec<NodeId>,
    /// (term, when): the first moment this node held its leader lease in that term. Nodes it
    /// has not heard from since count as gone from then on (see [`NodeCore::liveness`]).
    leader_lease_since: Option<(u64, u64)>,
    /// A node lease granted by the leader but not in force yet: (until, the leader's commit
    /// index then). It takes effect once this node applied that index, so a node never acts
    /// on a state older than what the leader had committed when it granted the lease.
    pending_node_leases: VecDeque<(u64, u64)>,
    /// The term in which this node, as leader, applied everything committed at the start of
    /// its term; its own node lease counts from then.
    leader_caught_up_term: u64,
    /// (leader, term) of the last leader other than this node that it saw.
    last_other_leader: Option<(NodeId, u64)>,
    /// The leader of the term right before this node's own, if it saw one: that node's
    /// leases lapsed before this node's leader lease began (see [`NodeCore::liveness`]).
    previous_leader: Option<NodeId>,
    #[cfg(feature = "mutations")]
    pub mutations: Mutations,
}

/// A tiny deterministic random source (SplitMix64) for election timeouts.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The durable state of a brand-new cluster founded by `first` (log index 1 is a snapshot).
pub fn bootstrap(cluster: ClusterId, first: NodeInfo) -> DurableState {
    let state = ClusterState::founded_by(cluster, first.clone());
    let mut snapshot = Snapshot::default();
    snapshot.data = encode_state(&state).into();
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = vec![first.id];
    let mut hard_state = HardState::default();
    hard_state.term = 1;
    hard_state.commit = 1;
    DurableState {
        hard_state,
        snapshot,
        entries: Vec::new(),
    }
}

impl NodeCore {
    /// Starts node `id` from what the shim persisted (an empty `DurableState` for a joiner).
    pub fn restore(
        cluster: ClusterId,
        id: NodeId,
        durable: DurableState,
        timing: Timing,
        now: u64,
    ) -> Result<NodeCore, RestoreError> {
        timing
            .validate()
            .map_err(|error| RestoreError::Timing(error.0))?;
        let snapshot_index = durable.snapshot.get_metadata().index;
        let state = if snapshot_index == 0 {
            ClusterState::empty(cluster)
        } else {
            decode_state(&durable.snapshot.data, cluster)?
        };
        let config = raft::Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            applied: snapshot_index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let store = LogStore::from_durable(durable);
        let raw =
            RawNode::new(&config, store, &logger).map_err(|e| RestoreError::Raft(e.to_string()))?;
        let mut seed = id ^ now.rotate_left(32);
        for byte in cluster.0 {
            seed = seed.rotate_left(8) ^ u64::from(byte);
        }
        let mut core = NodeCore {
            id,
            cluster,
            timing,
            raw,
            reserved_id: state.next_node_id,
            state,
            applied: snapshot_index,
            removed: false,
            now,
            next_tick_at: now + timing.tick_ms,
            next_ping_at: now,
            leases: LeaseTracker::new(timing.lease_timeout_ms),
            last_heard: BTreeMap::new(),
            peer_leases: BTreeMap::new(),
            pending: VecDeque::new(),
            seen_role: (StateRole::Follower, 0),
            actions: Vec::new(),
            election_rng: SplitMix64(seed),
            election_key: (StateRole::Follower, u64::MAX, 0),
            snapshots_sent: Vec::new(),
            leader_lease_since: None,
            last_other_leader: None,
            pending_node_leases: VecDeque::new(),
            leader_caught_up_term: 0,
            previous_leader: None,
            #[cfg(feature = "mutations")]
            mutations: Mutations::default(),
        };
        core.choose_election_timeout();
        Ok(core)
    }

    /// Reseeds the election-timeout source: the daemon passes OS randomness, the simulator a
    /// seeded value. Nodes must not share a seed, or their elections collide.
    pub fn seed_elections(&mut self, seed: u64) {
        self.election_rng = SplitMix64(seed);
        self.election_key = (StateRole::Follower, u64::MAX, 0);
        self.choose_election_timeout();
    }

    /// Replaces raft-rs's election timeout (drawn from the OS) with one from our own source
    /// whenever raft-rs resets it, keeping it in raft-rs's range [min, 2·min).
    fn choose_election_timeout(&mut self) {
        let raft = &self.raw.raft;
        let key = (raft.state, raft.term, raft.randomized_election_timeout());
        if key == self.election_key {
            return;
        }
        let min = self.timing.election_ticks.max(1);
        let timeout = min + (self.election_rng.next() % min as u64) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
        self.election_key = (key.0, key.1, timeout);
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn leader(&self) -> Option<NodeId> {
        Some(self.raw.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Drains what the shim must do, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Whether this node is the leader holding the quorum-confirmed leader lease.
    pub fn holds_leader_lease(&self, now: u64) -> bool {
        self.is_leader() && self.leases.holds_leader_lease(now, self.term())
    }

    /// How much longer this node may act alone (0: it must not write or run services).
    pub fn node_lease_remaining(&self, now: u64) -> u64 {
        self.lease_remaining(now)
    }

    /// Whether this node may act alone now (run services, write shared legs).
    pub fn holds_node_lease(&self, now: u64) -> bool {
        self.lease_remaining(now) > 0
    }

    /// How long this node may still act alone. A leader's own node lease is its quorum
    /// confirmation, counted once it has applied what was committed when its term began; a
    /// new leader's blackout holds back only its *leader* lease (its decisions about other
    /// nodes), so a leader change does not stop every node's services.
    fn lease_remaining(&self, now: u64) -> u64 {
        if self.removed {
            return 0;
        }
        let granted = self.leases.node_lease_remaining(now);
        if self.is_leader() && self.leader_caught_up_term == self.term() {
            granted.max(self.leases.leader_confirmed_remaining(now, self.term()))
        } else {
            granted
        }
    }

    /// Whether this node, as leader, grants node leases: a quorum confirmed it in its term
    /// and an entry of its term is committed (so its commit index covers everything earlier
    /// leaders committed, and a node that applied it has seen every placement and fence).
    fn grants_node_leases(&self, now: u64) -> bool {
        self.is_leader()
            && self.raw.raft.commit_to_current_term()
            && self.leases.leader_confirmed_remaining(now, self.term()) > 0
    }

    /// Puts a pending node lease in force once its commit index is applied, and notes when a
    /// leader has caught up with its term.
    fn settle_leases(&mut self) {
        let (applied, now) = (self.applied, self.now);
        for &(until, commit) in &self.pending_node_leases {
            if applied >= commit {
                self.leases.extend_node_lease(until);
            }
        }
        self.pending_node_leases
            .retain(|&(until, commit)| applied < commit && until > now);
        let caught_up = self.raw.raft.commit_to_current_term()
            && self.applied >= self.raw.raft.raft_log.committed;
        if self.is_leader() && caught_up {
            self.leader_caught_up_term = self.term();
        }
    }

    /// Advances time: Raft ticks and ping rounds.
    pub fn tick(&mut self, now: u64) {
        if self.removed {
            return;
        }
        self.now = self.now.max(now);
        let mut ticks = 0;
        // A node whose newest snapshot is not durable yet must not campaign: raft-rs already
        // treats the snapshot as stable while its applied index still points below it, and an
        // election would read entries the snapshot replaced. Its clock simply pauses briefly.
        let snapshot_pending = self.pending.iter().any(|p| p.has_snapshot && !p.done);
        while self.now >= self.next_tick_at && ticks < MAX_TICKS_PER_CALL {
            if !snapshot_pending {
                self.raw.tick();
            }
            self.next_tick_at += self.timing.tick_ms;
            ticks += 1;
        }
        if self.now >= self.next_tick_at {
            self.next_tick_at = self.now + self.timing.tick_ms;
        }
        self.note_leader_lease();
        if self.now >= self.next_ping_at {
            self.send_pings();
            self.next_ping_at = self.now + self.timing.ping_interval_ms;
        }
        self.after_input();
    }

    /// Handles frame bytes from the network. An error means the bytes were refused untouched.
    pub fn receive(&mut self, now: u64, bytes: &[u8]) -> Result<(), FrameError> {
        let frame = codec::decode(self.cluster, self.id, bytes)?;
        if self.removed {
            return Ok(());
        }
        self.now = self.now.max(now);
        self.last_heard.insert(frame.from, self.now);
        match frame.message {
            PeerMessage::Raft(message) => {
                if let Err(error) = self.raw.step(message) {
                    self.note(format!(
                        "raft ignored a message from node {}: {error}",
                        frame.from
                    ));
                }
            }
            PeerMessage::Ping(ping) => self.answer_ping(frame.from, ping),
            PeerMessage::Pong(pong) => self.on_pong(frame.from, pong),
            PeerMessage::Evicted => self.on_evicted(frame.from),
            PeerMessage::OpenReplication { volume } => self.note(format!(
                "node {} opened replication of volume {volume} on the cluster link; ignored",
                frame.from
            )),
        }
        self.after_input();
        Ok(())
    }

    /// Proposes a change; the outcome arrives later as [`Action::Completed`] with `request`.
    pub fn propose(&mut self, request: u64, change: StateChange) -> Result<(), ProposeError> {
        if self.removed {
            return Err(ProposeError::Removed);
        }
        self.state.validate(&change)?;
        if self.leader().is_none() {
            return Err(ProposeError::NoLeader);
        }
        let conf_change = conf_change_for(&self.state, &change);
        if conf_change.is_some() && self.is_leader() && self.raw.raft.has_pending_conf() {
            // raft-rs would turn it into an empty entry, and the proposer would never hear back.
            return Err(ProposeError::MembershipChangePending);
        }
        let proposal = Proposal {
            origin: self.id,
            request,
            change,
        };
        let bytes = serde_json::to_vec(&proposal).unwrap_or_default();
        let result = match conf_change {
            Some(conf_change) => self.raw.propose_conf_change(bytes, conf_change),
            None => self.raw.propose(Vec::new(), bytes),
        };
        result.map_err(|error| match error {
            raft::Error::ProposalDropped => ProposeError::NoLeader,
            other => ProposeError::Raft(other.to_string()),
        })?;
        self.after_input();
        Ok(())
    }

    /// The shim made `Persist { number }` (and every earlier one) durable.
    pub fn persisted(&mut self, number: u64) {
        for pending in self.pending.iter_mut() {
            if pending.number <= number {
                pending.done = true;
            }
        }
        self.release_persisted();
        self.after_input();
    }

    /// Builds the change that admits a new node, picking its id and role.
    pub fn prepare_join(
        &mut self,
        name: &str,
        addr: &str,
        site: Option<String>,
        witness: bool,
        token_digest: &str,
        now_unix: u64,
    ) -> Result<StateChange, ApplyError> {
        self.state.check_token(token_digest, now_unix)?;
        if self.state.node_by_name(name).is_some() {
            return Err(ApplyError::NameTaken(name.to_string()));
        }
        let id = self.reserved_id.max(self.state.next_node_id);
        self.reserved_id = id + 1;
        let node = NodeInfo {
            id,
            name: name.to_string(),
            addr: addr.to_string(),
            site,
            role: self.state.role_for_joiner(witness),
            admin: Admin::Online,
        };
        Ok(StateChange::AddNode {
            node,
            token_digest: token_digest.to_string(),
            now_unix,
        })
    }

    /// Decides what an operator command means on this node. `now_unix` (wall-clock seconds)
    /// is only read, for quarantines in group reports and explanations.
    pub fn plan_command(&self, now: u64, now_unix: u64, command: &Command) -> Plan {
        let gone = |id: NodeId| self.is_gone(now, id);
        if let Some(plan) = crate::volume_plan::plan(&self.state, self.id, command, gone) {
            return plan;
        }
        if let Some(plan) = crate::group_plan::plan(self, now, now_unix, command) {
            return plan;
        }
        let by_name = |name: &str| {
            self.state
                .node_by_name(name)
                .map(|node| node.id)
                .ok_or_else(|| format!("no node named {name:?} in this cluster"))
        };
        let admin = |name: &str, admin: Admin| match by_name(name) {
            Ok(id) => Plan::Propose(StateChange::SetAdmin { id, admin }),
            Err(message) => Plan::Answer(Reply::Refused { message }),
        };
        match command {
            Command::Status => Plan::Answer(Reply::Status(self.status(now))),
            Command::NodeList => Plan::Answer(Reply::Nodes {
                nodes: self.status(now).nodes,
            }),
            Command::NodeStandby { name } => admin(name, Admin::Standby),
            Command::NodeOnline { name } => admin(name, Admin::Online),
            Command::NodeRemove { name } => match by_name(name) {
                Ok(id) => Plan::Propose(StateChange::RemoveNode { id }),
                Err(message) => Plan::Answer(Reply::Refused { message }),
            },
            Command::Events { since, limit } => Plan::Answer(Reply::Events {
                events: self.state.timeline.since(*since, (*limit).min(MAX_EVENTS)),
                next_seq: self.state.timeline.next_seq,
                names: self
                    .state
                    .nodes
                    .values()
                    .map(|node| (node.id, node.name.clone()))
                    .collect(),
            }),
            Command::CreateJoinToken { ttl_secs } => Plan::MakeToken {
                ttl_secs: *ttl_secs,
            },
            _ => Plan::Answer(Reply::Refused {
                message: format!("command {command:?} is not handled by this node"),
            }),
        }
    }

    /// Remembers when this node first held its leader lease in the current term.
    fn note_leader_lease(&mut self) {
        let term = self.term();
        let fresh = self.leader_lease_since.is_none_or(|(seen, _)| seen != term);
        if fresh && self.holds_leader_lease(self.now) {
            self.leader_lease_since = Some((term, self.now));
        }
    }

    /// What the scheduler needs to know about every member, as the leader sees it; `None`
    /// unless this node is the leader holding its lease (only it may place groups).
    ///
    /// A node's lease ends at most `lease_timeout` after the leader last answered its ping,
    /// which is when the leader last heard it. A node not heard since this leader got its
    /// lease may still hold a lease granted by the previous leader, which lapsed by then plus
    /// `lease_timeout` at the latest; so gone time counts from the later of the two moments.
    /// The leader of the term just before this one is the exception: its own leader lease
    /// lapsed before this node's blackout ended, and any node lease it held before it led
    /// lapsed before its own blackout did; so it counts as last heard `lease_timeout` before
    /// this node's lease began (a killed leader fails over a lease sooner).
    pub fn liveness(&self, now: u64, failover_timeout_ms: u64) -> Option<Liveness> {
        let (term, since) = self.leader_lease_since?;
        if term != self.term() || !self.holds_leader_lease(now) {
            return None;
        }
        let mut liveness = Liveness::new(failover_timeout_ms);
        for node in self.state.nodes.values() {
            let status = self.node_status(now, node, self.leader());
            let holds_lease = status.lease_remaining_ms > 0;
            let floor = if Some(node.id) == self.previous_leader {
                since.saturating_sub(self.timing.lease_timeout_ms)
            } else {
                since
            };
            let heard = self
                .last_heard
                .get(&node.id)
                .copied()
                .unwrap_or(0)
                .max(floor);
            let offline_for_ms = if node.id == self.id || (status.online && holds_lease) {
                0
            } else {
                now.saturating_sub(heard)
            };
            let live = NodeLiveness {
                online: status.online,
                holds_lease,
                offline_for_ms,
            };
            liveness.nodes.insert(node.id, live);
        }
        Some(liveness)
    }

    /// Whether node `id` is offline and no longer holds a lease, as this node sees it.
    fn is_gone(&self, now: u64, id: NodeId) -> bool {
        if id == self.id {
            return false;
        }
        match self.state.nodes.get(&id) {
            Some(node) => {
                let status = self.node_status(now, node, self.leader());
                !status.online && status.lease_remaining_ms == 0
            }
            None => true,
        }
    }

    /// The cluster as this node sees it.
    pub fn status(&self, now: u64) -> StatusReport {
        let leader = self.leader();
        let nodes: Vec<NodeStatus> = self
            .state
            .nodes
            .values()
            .map(|node| self.node_status(now, node, leader))
            .collect();
        let voters: Vec<&NodeStatus> = nodes.iter().filter(|node| node.role.votes()).collect();
        let voters_online = voters.iter().filter(|node| node.online).count();
        StatusReport {
            cluster: self.cluster,
            this_node: self.id,
            leader,
            term: self.term(),
            quorum: leader.is_some() && voters_online * 2 > voters.len(),
            voters_online,
            voters_total: voters.len(),
            commit_index: self.commit_index(),
            applied_index: self.applied,
            nodes,
            recent_events: self.state.timeline.since(0, RECENT_EVENTS),
            groups: self.group_summaries(),
        }
    }

    fn group_summaries(&self) -> Vec<crate::command::GroupSummary> {
        let name = |node: Option<NodeId>| {
            node.map(|id| {
                self.state
                    .nodes
                    .get(&id)
                    .map_or_else(|| format!("node {id}"), |info| info.name.clone())
            })
        };
        self.state
            .groups
            .values()
            .map(|group| crate::command::GroupSummary {
                name: group.spec.name.clone(),
                enabled: group.spec.enabled,
                placed_on: name(group.status.node),
                held_by: name(group.status.holder),
            })
            .collect()
    }

    fn node_status(&self, now: u64, node: &NodeInfo, leader: Option<NodeId>) -> NodeStatus {
        let (online, last_seen_ms, lease_remaining_ms) = if node.id == self.id {
            (true, Some(0), self.lease_remaining(now))
        } else {
            let seen = self
                .last_heard
                .get(&node.id)
                .map(|&at| now.saturating_sub(at));
            let lease = self
                .peer_leases
                .get(&node.id)
                .map_or(0, |&(remaining, at)| {
                    remaining.saturating_sub(now.saturating_sub(at))
                });
            let online = seen.is_some_and(|ago| ago <= self.timing.node_timeout_ms);
            (online, seen, lease)
        };
        NodeStatus {
            id: node.id,
            name: node.name.clone(),
            addr: node.addr.clone(),
            site: node.site.clone(),
            role: node.role,
            admin: node.admin,
            online,
            last_seen_ms,
            is_leader: leader == Some(node.id),
            lease_remaining_ms,
        }
    }

    fn note(&mut self, message: String) {
        self.actions.push(Action::Note { message });
    }

    fn send(&mut self, to: NodeId, message: PeerMessage) {
        let frame = Frame {
            from: self.id,
            to,
            message,
        };
        let bytes = codec::encode(self.cluster, &frame);
        self.actions.push(Action::Send { to, bytes });
    }

    fn peers(&self) -> Vec<NodeId> {
        self.state
            .nodes
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn send_pings(&mut self) {
        let seq = self.leases.start_round(self.now, self.term());
        // A leader that is a quorum by itself (the only voter) confirms its own round.
        let alone = std::collections::BTreeSet::new();
        if self.is_leader() && self.quorum_confirms(&alone) {
            let until = self.now + self.leases.lease_timeout();
            self.leases.extend_leader_lease(self.term(), until);
        }
        let ping = Ping {
            seq,
            term: self.term(),
            lease_remaining_ms: self.lease_remaining(self.now),
        };
        for peer in self.peers() {
            self.send(peer, PeerMessage::Ping(ping));
        }
    }

    fn answer_ping(&mut self, from: NodeId, ping: Ping) {
        let was_removed = from < self.state.next_node_id && !self.state.nodes.contains_key(&from);
        if was_removed && self.state.nodes.contains_key(&self.id) {
            self.send(from, PeerMessage::Evicted);
            return;
        }
        self.peer_leases
            .insert(from, (ping.lease_remaining_ms, self.now));
        let pong = Pong {
            seq: ping.seq,
            term: self.term(),
            leader_with_lease: self.grants_node_leases(self.now),
            commit: self.commit_index(),
        };
        self.send(from, PeerMessage::Pong(pong));
    }

    /// A member says we were removed. Members are authenticated by the shim (mutual TLS), and
    /// only a node that still lists the sender as a member believes it.
    fn on_evicted(&mut self, from: NodeId) {
        if self.state.nodes.contains_key(&from) && !self.removed {
            self.note(format!(
                "node {from} reports that this node was removed from the cluster"
            ));
            self.removed = true;
            self.actions.push(Action::Removed);
        }
    }

    fn on_pong(&mut self, from: NodeId, pong: Pong) {
        let is_voter = self.raw.raft.prs().conf().voters().contains(from);
        let my_term = self.term();
        let leading = self.is_leader();
        let lease_timeout = self.leases.lease_timeout();
        let Some(round) = self.leases.record_ack(pong.seq, from, pong.term) else {
            return;
        };
        let until = round.sent_at + lease_timeout;
        let round_term = round.term;
        let acks = round.acks.clone();
        if leading && round_term == my_term && is_voter && self.quorum_confirms(&acks) {
            self.leases.extend_leader_lease(round_term, until);
        }
        if pong.leader_with_lease {
            while self.pending_node_leases.len() >= MAX_PENDING_LEASES {
                self.pending_node_leases.pop_front();
            }
            self.pending_node_leases.push_back((until, pong.commit));
            self.settle_leases();
        }
    }

    fn quorum_confirms(&self, acks: &std::collections::BTreeSet<NodeId>) -> bool {
        #[cfg(feature = "mutations")]
        if self.mutations.lease_without_quorum {
            return true;
        }
        // raft-rs wants its own hasher; let the call site pick the set's type.
        let mut confirmed = std::collections::HashSet::default();
        confirmed.extend(acks.iter().copied());
        confirmed.insert(self.id);
        self.raw.raft.prs().has_quorum(&confirmed)
    }

    /// After every input: drive Raft's Ready loop and notice role changes.
    fn after_input(&mut self) {
        for _ in 0..MAX_READY_ROUNDS {
            if !self.raw.has_ready() {
                if self.snapshots_sent.is_empty() {
                    break;
                }
                // A snapshot handed to the shim counts as sent. If it is lost, the follower
                // rejects the next append and the leader sends another; without this report
                // raft-rs would wait for the follower forever.
                for to in std::mem::take(&mut self.snapshots_sent) {
                    self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
                }
                continue;
            }
            self.handle_ready();
        }
        self.settle_leases();
        self.choose_election_timeout();
        self.notice_role_change();
    }

    fn notice_role_change(&mut self) {
        let now_role = (self.raw.raft.state, self.term());
        let leader = self.raw.raft.leader_id;
        if leader != raft::INVALID_ID && leader != self.id {
            self.last_other_leader = Some((leader, now_role.1));
        }
        if now_role == self.seen_role {
            return;
        }
        if now_role.0 == StateRole::Leader {
            self.previous_leader = self
                .last_other_leader
                .filter(|&(_, term)| term + 1 == now_role.1)
                .map(|(leader, _)| leader);
            self.leases.became_leader(self.now, now_role.1);
            #[cfg(feature = "mutations")]
            if self.mutations.lease_without_quorum {
                self.leases.skip_blackout();
            }
            self.note(format!("became leader of term {}", now_role.1));
        } else if self.seen_role.0 == StateRole::Leader {
            self.note(format!("stepped down as leader in term {}", now_role.1));
        }
        self.seen_role = now_role;
    }

    fn handle_ready(&mut self) {
        let mut ready = self.raw.ready();
        self.send_raft(ready.take_messages());
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        if let Some(snapshot) = &snapshot {
            self.install_snapshot(snapshot);
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed);
        let entries = ready.take_entries();
        self.raw.mut_store().append(&entries);
        let hard_state = ready.hs().cloned();
        if let Some(hard_state) = &hard_state {
            self.raw.mut_store().set_hard_state(hard_state.clone());
        }
        let number = ready.number();
        let has_snapshot = snapshot.is_some();
        let needs_disk = has_snapshot || !entries.is_empty() || hard_state.is_some();
        let messages = ready.take_persisted_messages();
        if needs_disk {
            self.actions.push(Action::Persist {
                number,
                hard_state,
                entries,
                snapshot,
            });
        }
        self.raw.advance_append_async(ready);
        self.pending.push_back(PendingReady {
            number,
            needs_disk,
            has_snapshot,
            done: false,
            messages,
        });
        #[cfg(feature = "mutations")]
        if self.mutations.send_before_persist {
            let early: Vec<RaftMessage> = self
                .pending
                .iter_mut()
                .flat_map(|p| std::mem::take(&mut p.messages))
                .collect();
            self.send_raft(early);
        }
        self.release_persisted();
    }

    /// Tells Raft about every leading pending Ready that is durable, and sends what it held.
    fn release_persisted(&mut self) {
        let mut released = None;
        while let Some(front) = self.pending.front() {
            if front.needs_disk && !front.done {
                break;
            }
            let Some(front) = self.pending.pop_front() else {
                break;
            };
            released = Some(front.number);
            self.send_raft(front.messages);
        }
        if let Some(number) = released {
            self.raw.on_persist_ready(number);
            self.catch_up_raft_applied();
        }
    }

    /// Tells Raft how far this node has applied once that is durable. A snapshot from the
    /// leader is applied when it arrives but may only be reported once persisted; until it is,
    /// Raft's own applied index lags, and an election would ask the store for entries the
    /// snapshot replaced.
    fn catch_up_raft_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let reportable = self.applied.min(log.committed).min(log.persisted);
        if reportable > log.applied {
            self.raw.advance_apply_to(reportable);
        }
    }

    fn send_raft(&mut self, messages: Vec<RaftMessage>) {
        for mut message in messages {
            let to = message.to;
            if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                self.snapshots_sent.push(to);
            }
            // raft-rs keeps the original sender in a proposal it forwards again; the frame
            // says who sends it, and the receiver checks that the two agree.
            message.from = self.id;
            self.send(to, PeerMessage::Raft(message));
        }
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        match decode_state(&snapshot.data, self.cluster) {
            Ok(state) => {
                self.reserved_id = self.reserved_id.max(state.next_node_id);
                self.state = state;
            }
            Err(error) => self.note(format!("snapshot from the leader refused: {error}")),
        }
        self.raw.mut_store().install_snapshot(snapshot);
        self.applied = snapshot.get_metadata().index;
        self.note(format!("installed a snapshot at index {}", self.applied));
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        let mut last_term = None;
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            self.applied = entry.index;
            last_term = Some(entry.term);
            let digest = u64::from(crc32c::crc32c(&entry.data)) << 32
                | u64::from(crc32c::crc32c(&entry.context));
            self.actions.push(Action::Applied {
                index: entry.index,
                term: entry.term,
                digest,
            });
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => self.apply_proposal(&entry.data, None),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    match decode_conf_change(&entry) {
                        Some(conf_change) => self.apply_proposal(&entry.context, Some(conf_change)),
                        None => self.note(format!(
                            "entry {} holds a malformed membership change",
                            entry.index
                        )),
                    }
                }
            }
        }
        if let Some(term) = last_term {
            let data = encode_state(&self.state);
            self.raw.mut_store().set_serving(self.applied, term, data);
            self.raw.advance_apply_to(self.applied);
            self.maybe_compact();
        }
    }

    fn apply_proposal(&mut self, bytes: &[u8], conf_change: Option<ConfChangeV2>) {
        let Ok(proposal) = serde_json::from_slice::<Proposal>(bytes) else {
            self.note(format!(
                "entry {} holds a malformed proposal; skipped",
                self.applied
            ));
            return;
        };
        if !self.state.first_time(proposal.origin, proposal.request) {
            // The network delivered a forwarded proposal twice; its first copy was applied
            // and answered.
            return self.note(format!(
                "entry {} repeats request {} of node {}; applied once",
                self.applied, proposal.request, proposal.origin
            ));
        }
        let expected = conf_change_for(&self.state, &proposal.change);
        let outcome = if expected != conf_change {
            Err("the membership change does not match its proposal".to_string())
        } else {
            self.state
                .apply(&proposal.change)
                .map_err(|error| error.to_string())
        };
        if let (Ok(_), Some(conf_change)) = (&outcome, &conf_change) {
            match self.raw.apply_conf_change(conf_change) {
                Ok(conf_state) => self.raw.mut_store().set_conf_state(conf_state),
                Err(error) => self.note(format!("raft refused a membership change: {error}")),
            }
        }
        if let (Ok(message), true) = (&outcome, is_forced(&proposal.change)) {
            self.note(format!(
                "WARNING: an operator forced a promotion: {message}"
            ));
        }
        if outcome.is_ok() && proposal.change == (StateChange::RemoveNode { id: self.id }) {
            self.removed = true;
            self.actions.push(Action::Removed);
        }
        if proposal.origin == self.id {
            self.actions.push(Action::Completed {
                request: proposal.request,
                outcome,
            });
        }
    }

    fn maybe_compact(&mut self) {
        if self.raw.store().entries_since_snapshot() as u64 >= self.timing.compact_every {
            let snapshot = self.raw.mut_store().compact_to_serving();
            self.actions.push(Action::Compact { snapshot });
        }
    }
}

fn is_forced(change: &StateChange) -> bool {
    matches!(
        change,
        StateChange::Volume(crate::volume::VolumeChange::Promote { force: true, .. })
    )
}

/// The Raft membership change a state change needs, if any.
fn conf_change_for(state: &ClusterState, change: &StateChange) -> Option<ConfChangeV2> {
    let (change_type, node_id) = match change {
        StateChange::AddNode { node, .. } if node.role == Role::Learner => {
            (ConfChangeType::AddLearnerNode, node.id)
        }
        StateChange::AddNode { node, .. } => (ConfChangeType::AddNode, node.id),
        StateChange::RemoveNode { id } if state.nodes.contains_key(id) => {
            (ConfChangeType::RemoveNode, *id)
        }
        StateChange::RemoveNode { id } => (ConfChangeType::RemoveNode, *id),
        _ => return None,
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = node_id;
    let mut conf_change = ConfChangeV2::default();
    conf_change.set_changes(vec![single].into());
    Some(conf_change)
}

fn decode_conf_change(entry: &Entry) -> Option<ConfChangeV2> {
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&entry.data).ok(),
        _ => {
            let v1 = ConfChange::parse_from_bytes(&entry.data).ok()?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut conf_change = ConfChangeV2::default();
            conf_change.set_changes(vec![single].into());
            Some(conf_change)
        }
    }
}
