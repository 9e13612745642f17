//! tandem's deterministic core: every decision, no I/O.
//!
//! Nothing in this crate reads a clock, spawns a thread, touches a socket or a file, or calls
//! into the OS. Time arrives as a parameter (`now`, milliseconds on a monotonic clock chosen by
//! the caller), bytes arrive as slices, and everything the node wants done leaves as an
//! [`Action`]. That is what lets `tandem-sim` drive the very same code deterministically.

// rust-protobuf messages (raft-rs's eraftpb) are built by assigning fields to a default value.
#![allow(clippy::field_reassign_with_default)]

pub mod hex;
pub mod ids;

pub use ids::{ClusterId, NodeId, ParseClusterIdError};
pub mod agent;
pub mod apply;
pub mod codec;
pub mod command;
#[cfg(feature = "mutations")]
pub mod data_mutations;
pub mod events;
pub mod group;
pub mod group_plan;
pub mod lease;
pub mod legmeta;
pub mod nbd;
pub mod node;
pub mod placement;
pub mod replication;
pub mod scheduler;
pub mod state;
pub mod storage;
pub mod timing;
pub mod volume;
pub mod volume_plan;

pub use command::{Command, NodeStatus, Reply, StatusReport};
pub use node::{bootstrap, Action, NodeCore, Plan, ProposeError, RestoreError};
pub use raft;
pub use state::{Admin, ClusterState, NodeInfo, Role, StateChange};
pub use storage::DurableState;
pub use timing::Timing;
