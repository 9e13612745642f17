//! What the daemon's `agent_host` holds, per simulated process: the core's [`Agent`] and
//! [`Placer`], the fake operations in flight, and the resyncs the volume engine would be
//! running. It lives and dies with the process: a crash loses it, and the restarted process
//! starts with new ones (the agent's first round then cleans up, as after a daemon restart).

use std::collections::BTreeMap;

use tandem_core::agent::{Agent, OpKind};
use tandem_core::placement::Placer;
use tandem_core::NodeId;

use crate::resources::{FakeKind, OpPlan};

/// The agent and the placement loop run this often (the daemon's `AGENT_ROUND_MS`).
pub const AGENT_ROUND_MS: u64 = 50;

/// A fake operation in flight.
#[derive(Clone, Debug)]
pub struct PendingOp {
    pub group: String,
    pub index: usize,
    pub kind: OpKind,
    pub fake: FakeKind,
    pub plan: OpPlan,
    /// The resource, for the trace.
    pub what: String,
}

/// The agent side of one process.
pub struct Host {
    pub agent: Agent,
    pub placer: Placer,
    /// Operations in flight, by the agent's op id.
    pub ops: BTreeMap<u64, PendingOp>,
    /// (volume, leg, epoch) -> when the stand-in resync of that leg completes.
    pub resync: BTreeMap<(u64, u32, u64), u64>,
}

impl Host {
    pub fn new(me: NodeId) -> Host {
        Host {
            agent: Agent::new(me),
            placer: Placer::new(),
            ops: BTreeMap::new(),
            resync: BTreeMap::new(),
        }
    }
}
