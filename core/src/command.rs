//! The one typed command enum and status model behind the CLI, the API and the dashboard.
//!
//! A front end turns user input into a [`Command`], sends it to the local daemon and renders
//! the [`Reply`]. None of them has logic of its own: what a command means is decided by
//! `NodeCore::plan_command` (in `node.rs`), so every front end behaves the same.

use serde::{Deserialize, Serialize};

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
