//! The one typed command enum and status model behind the CLI, the API and the dashboard.
//!
//! A front end turns user input into a [`Command`], sends it to the local daemon and renders
//! the [`Reply`]. None of them has logic of its own: what a command means is decided by
//! `NodeCore::plan_command` (in `node.rs`), so every front end behaves the same.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::apply::{ClusterFile, GroupDef, PlannedStep};
use crate::events::Recorded;
use crate::group::{Failback, ResourceSpec};
use crate::ids::{ClusterId, NodeId};
use crate::state::{Admin, Role};

/// Everything an operator can ask of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Nodes, quorum and leases at a glance.
    Status,
    NodeList,
    NodeStandby {
        name: String,
    },
    NodeOnline {
        name: String,
    },
    NodeRemove {
        name: String,
    },
    /// A join token valid for `ttl_secs` seconds.
    CreateJoinToken {
        ttl_secs: u64,
    },
    /// A new mirrored volume of `size` bytes over `legs`.
    VolumeCreate {
        name: String,
        size: u64,
        legs: Vec<LegRequest>,
        #[serde(default)]
        granularity: crate::volume::Granularity,
    },
    VolumeList,
    VolumeShow {
        name: String,
    },
    /// Make `node` the volume's primary (a new epoch); `force` only for disaster recovery.
    VolumePromote {
        name: String,
        node: String,
        force: bool,
    },
    /// Compare every UpToDate peer leg with the primary's, block by block by checksum;
    /// `repair` resyncs mismatching blocks from the primary. Runs on the primary's node.
    VolumeVerify {
        name: String,
        repair: bool,
    },
    /// The primary stops writing; the volume has no primary.
    VolumeDemote {
        name: String,
    },
    VolumeDelete {
        name: String,
    },
    /// A new resource group; node names are resolved and the group is checked against the
    /// cluster (its volumes and preferred nodes must exist) before it is proposed.
    GroupCreate {
        group: GroupDef,
    },
    /// Replaces a group's definition, keeping its placement, failures, quarantines and pin
    /// (`tandem apply`). Its volumes cannot change while it is placed.
    GroupUpdate {
        group: GroupDef,
    },
    GroupList,
    GroupShow {
        name: String,
    },
    /// Pin the group to `node` until `GroupClear`.
    GroupMove {
        name: String,
        node: String,
    },
    /// Drop the group's pin, failure history and quarantines.
    GroupClear {
        name: String,
    },
    GroupEnable {
        name: String,
    },
    /// The group is stopped and placed nowhere.
    GroupDisable {
        name: String,
    },
    /// Forget a group that is placed nowhere (disable it and let it stop first).
    GroupDelete {
        name: String,
    },
    /// Why the group runs where it runs: the scheduler's reasoning, node by node.
    Explain {
        group: String,
    },
    /// The ordered steps that would make the cluster match `file` (`tandem apply`); changes
    /// nothing. `prune` also deletes what the file does not declare.
    ApplyPlan {
        file: ClusterFile,
        prune: bool,
    },
    /// The failover timeline: events numbered `since` and later, at most `limit` (newest).
    Events {
        since: u64,
        limit: usize,
    },
}

/// A leg as typed by the operator: `n1,n2:/dev/mapper/arrayX`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRequest {
    pub nodes: Vec<String>,
    pub path: String,
}

impl std::str::FromStr for LegRequest {
    type Err = String;

    /// Parses `NODE[,NODE...]:PATH`.
    fn from_str(text: &str) -> Result<LegRequest, String> {
        let (nodes, path) = text
            .split_once(':')
            .ok_or_else(|| format!("leg {text:?}: expected NODE[,NODE...]:PATH"))?;
        let nodes: Vec<String> = nodes.split(',').map(|n| n.trim().to_string()).collect();
        if nodes.iter().any(String::is_empty) {
            return Err(format!("leg {text:?}: an empty node name"));
        }
        if !path.starts_with('/') {
            return Err(format!("leg {text:?}: the path must be absolute"));
        }
        Ok(LegRequest {
            nodes,
            path: path.to_string(),
        })
    }
}

impl fmt::Display for LegRequest {
    /// `n1,n2:/dev/mapper/x`, the form it is typed in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.nodes.join(","), self.path)
    }
}

/// Parses a size such as `4096`, `512M`, `10G` or `1T` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?}: expected a number with an optional K, M, G or T"))?;
    let shift = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "size {text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(StatusReport),
    Nodes {
        nodes: Vec<NodeStatus>,
    },
    Done {
        message: String,
    },
    Token {
        token: String,
        expires_unix: u64,
    },
    Volumes {
        volumes: Vec<VolumeStatus>,
    },
    Groups {
        groups: Vec<GroupReport>,
    },
    /// Boxed: the largest reply, kept out of every other one's size.
    Explain(Box<ExplainReport>),
    /// What `tandem apply` would do, in order; `notes` are what it leaves alone and why.
    ApplyPlan {
        steps: Vec<PlannedStep>,
        notes: Vec<String>,
    },
    /// Timeline events in time order; ask again with `since: next_seq` for newer ones.
    Events {
        events: Vec<Recorded>,
        next_seq: u64,
        /// (id, name) of every node, to show names (a list: JSON map keys are strings).
        names: Vec<(NodeId, String)>,
    },
    /// The command was refused or failed; the message says why (CLI exit code 1).
    Refused {
        message: String,
    },
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: ClusterId,
    /// The node that answered.
    pub this_node: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Whether a majority of voters is online as seen from this node, and a leader is known.
    pub quorum: bool,
    pub voters_online: usize,
    pub voters_total: usize,
    pub commit_index: u64,
    pub applied_index: u64,
    pub nodes: Vec<NodeStatus>,
    /// The newest timeline events.
    #[serde(default)]
    pub recent_events: Vec<Recorded>,
    /// Every group in one line: where it is placed and which node holds (runs) it.
    #[serde(default)]
    pub groups: Vec<GroupSummary>,
}

/// A group at a glance, for `tandem status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub name: String,
    pub enabled: bool,
    /// Where the cluster placed it.
    pub placed_on: Option<String>,
    /// The node that acquired it and may be running its resources.
    pub held_by: Option<String>,
}

/// One node's line in a status table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    pub site: Option<String>,
    pub role: Role,
    pub admin: Admin,
    pub online: bool,
    /// Milliseconds since this node last heard from it (`None`: never; 0 for itself).
    pub last_seen_ms: Option<u64>,
    pub is_leader: bool,
    /// How long its lease still runs, in milliseconds (0 = it holds none), as last reported.
    pub lease_remaining_ms: u64,
}

/// One volume as the status model shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub primary: Option<String>,
    pub epoch: u64,
    pub legs: Vec<LegStatus>,
    /// Forced promotions, loudly kept: "epoch 3: node b forced onto leg 1 (was Outdated)".
    pub forced: Vec<String>,
    /// Which legs each node reaches (a shared leg: several nodes; a dual array: a node
    /// reaching several legs), in node order.
    #[serde(default)]
    pub reach: Vec<NodeReach>,
    /// The legs' metadata granularities.
    #[serde(default)]
    pub granularity: crate::volume::Granularity,
}

/// The legs one node reaches, and the one it writes itself as primary (the others it writes
/// as peers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReach {
    pub node: String,
    pub legs: Vec<u32>,
    /// The first UpToDate leg among them (`VolumeInfo::own_leg`), if any.
    pub writes: Option<u32>,
}

/// One leg's line in a volume table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegStatus {
    pub id: u32,
    pub nodes: Vec<String>,
    pub path: String,
    pub state: String,
    /// The replication link as the primary sees it; present when the answering node is the
    /// volume's primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
}

/// A peer leg's replication and resync, as its primary reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// `down`, `connecting` or `up`.
    pub link: String,
    /// `sync` (every write waits for it), `failing`, `behind` (resync owed) or `promoting`.
    pub mode: String,
    /// Bytes still out of sync.
    pub out_of_sync_bytes: u64,
    /// Bytes resynced of the current resync, and its total.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Resync data bytes sent to this leg since this node became primary (zero ranges apart).
    pub resync_bytes_sent: u64,
    /// Zero ranges sent as WRITE_ZEROES instead of data.
    pub resync_zero_bytes_sent: u64,
    /// Recent resync rate, bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Estimated seconds to finish at that rate.
    pub eta_secs: Option<u64>,
    /// The last online verify of this leg, if one ran since this node became primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
}

/// An online verify's progress and findings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Mismatching `(offset, length)` ranges, the first ones.
    pub mismatches: Vec<(u64, u64)>,
    pub mismatched_bytes: u64,
    pub repair: bool,
    pub finished: bool,
    pub aborted: Option<String>,
}

/// One group as `tandem group list|show` shows it: the spec with node names, and the
/// committed facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub enabled: bool,
    /// Where it is placed (runs, or is being started or stopped).
    pub node: Option<String>,
    /// Raised by every committed placement.
    pub epoch: u64,
    /// Set by `tandem group move`, until `tandem group clear`.
    pub pinned: Option<String>,
    pub preferred: Vec<String>,
    pub failback: Failback,
    pub stickiness: u32,
    pub max_restarts: u32,
    pub restart_window_secs: u64,
    pub quarantine_secs: u64,
    pub resources: Vec<ResourceReport>,
    /// Failure times (unix seconds) per node name, within the restart window.
    pub failures: BTreeMap<String, Vec<u64>>,
    /// Quarantines still running.
    pub quarantines: Vec<QuarantineReport>,
}

/// One resource of a group, with its effective monitor settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReport {
    /// Its short identity (`volume db`, `exec sleep`), as errors and explanations name it.
    pub what: String,
    pub monitor_interval_ms: u64,
    pub monitor_timeout_ms: u64,
    pub spec: ResourceSpec,
}

/// A node barred for a group after repeated failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineReport {
    pub node: String,
    pub until_unix: u64,
    pub left_secs: u64,
}

/// `tandem explain GROUP`: the scheduler's reasoning as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    /// Whose reasoning this is: the leader's decision, or this node's own view and who leads.
    pub view: String,
    /// Whether this is the leader's decision (the leader holding its lease).
    pub decided_by_leader: bool,
    pub group: String,
    /// The rule that decided, in one sentence.
    pub summary: String,
    pub current: Option<String>,
    pub place_on: Option<String>,
    pub nodes: Vec<VerdictReport>,
    /// The explanation as text, one line per node.
    pub text: String,
}

/// One node's verdict for a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictReport {
    pub node: String,
    pub eligible: bool,
    /// `eligible (load 1; preferred #1)`, or why not.
    pub verdict: String,
    pub current: bool,
    pub chosen: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_a_stable_json_form() {
        let command = Command::NodeStandby { name: "b".into() };
        let text = serde_json::to_string(&command).unwrap();
        assert_eq!(text, r#"{"command":"node-standby","name":"b"}"#);
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), command);
        assert!(serde_json::from_str::<Command>(r#"{"command":"format-disk"}"#).is_err());
        let command = Command::GroupMove {
            name: "web".into(),
            node: "b".into(),
        };
        let text = serde_json::to_string(&command).unwrap();
        assert_eq!(text, r#"{"command":"group-move","name":"web","node":"b"}"#);
        let leg: LegRequest = "a,b:/dev/x".parse().unwrap();
        assert_eq!(leg.to_string(), "a,b:/dev/x");
    }

    #[test]
    fn legs_and_sizes_parse_with_clear_errors() {
        let leg: LegRequest = "n1,n2:/dev/mapper/x".parse().unwrap();
        assert_eq!(leg.nodes, ["n1", "n2"]);
        assert_eq!(leg.path, "/dev/mapper/x");
        assert!("n1".parse::<LegRequest>().unwrap_err().contains("NODE"));
        assert!("n1:rel"
            .parse::<LegRequest>()
            .unwrap_err()
            .contains("absolute"));
        assert!(",:/x".parse::<LegRequest>().unwrap_err().contains("empty"));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }
}
