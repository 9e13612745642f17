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
}
