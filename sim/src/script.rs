//! Scripted runs: a fixed list of faults, writes and operator commands at given times, instead
//! of the seed's random fault schedule (the simulator side of `harness/` scenario files).
//!
//! Why it exists: a scenario file tells one failure story (a power cut mid-write, a
//! partitioned primary...) and must replay it exactly, in the simulator as against real
//! daemons. The seed still drives everything the story leaves open (network delays, disk
//! latencies, election timeouts, process clocks), and every checker still runs after every
//! step. A scripted run differs from a random one only in what happens during the fault
//! phase: the cluster forms as usual, the layout's groups are created, and the script begins
//! (its t = 0) once every group runs where it is placed; then only the script's steps happen
//! (no random faults, no random operator, no resource faults); at the script's end every
//! fault heals and the usual liveness and eventual-placement checks follow.
//!
//! The run also records what a scenario's expectations are judged on: a [`Sample`] of where
//! each group runs and of each volume's legs every [`SAMPLE_MS`], the outcome of every write
//! and operator command, and, at the end, which acknowledged writes any node is missing.
//! Judging is the harness's job, not the simulator's.

use std::collections::{BTreeMap, BTreeSet};

use tandem_core::volume::LegState;
use tandem_core::{Command, NodeId};

use crate::faults::FaultKind;
use crate::layout::Layout;
use crate::{Options, RunReport, SimFailure, Trace};

/// Where groups run and the legs' states are sampled this often (simulated ms).
pub const SAMPLE_MS: u64 = 100;

/// What a scripted run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Data nodes (ids 1..=data_nodes), 2 to 5.
    pub data_nodes: usize,
    /// A witness (the next id after the data nodes).
    pub witness: bool,
    pub layout: Layout,
    /// How long the script's phase lasts (its steps must come before); then everything heals.
    pub run_ms: u64,
    /// In time order.
    pub steps: Vec<ScriptStep>,
}

/// One thing to do at `at_ms` after the script begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptStep {
    pub at_ms: u64,
    /// The caller's number for this step (outcomes refer to it).
    pub tag: usize,
    /// How the caller describes it (echoed and traced).
    pub what: String,
    pub action: ScriptAction,
}

/// The things a script can do. `key`s name faults that a later [`ScriptAction::End`] ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptAction {
    /// The tandem process dies (SIGKILL): a random prefix of its disk writes in flight lands.
    Kill { node: NodeId },
    /// The machine loses power: every unflushed write and everything running on it is gone.
    PowerOff { node: NodeId },
    /// The process (or the machine) starts again from its disk.
    Start { node: NodeId },
    /// Frames on these directed links are dropped until the fault ends.
    Cut {
        key: u32,
        kind: FaultKind,
        links: BTreeSet<(NodeId, NodeId)>,
    },
    /// The process is frozen (SIGSTOP) for `ms`.
    Pause { node: NodeId, ms: u64 },
    /// Every write to the node's disk takes up to `extra_ms` longer until the fault ends.
    SlowDisk {
        key: u32,
        node: NodeId,
        extra_ms: u64,
    },
    /// Ends the fault started under `key`.
    End { key: u32 },
    /// A client write, sent to the node that is primary of `volume`. The simulator has no
    /// volume data path: the write is a record committed through Raft (the same path of
    /// persistence before acknowledgement); it is acknowledged when the primary's node
    /// reports it applied.
    Write { volume: String },
    /// An operator command, as the CLI sends it to the daemon on `on` (default: the leader).
    Command {
        on: Option<NodeId>,
        command: Command,
    },
}

/// What became of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Sent; no acknowledgement (yet, or ever: its node died first).
    InFlight,
    Acknowledged,
    /// Never accepted (no primary, the primary down, the proposal refused).
    Failed(String),
}

/// One write of the script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub tag: usize,
    /// Script time it was sent.
    pub at_ms: u64,
    /// The node it was sent to.
    pub node: Option<NodeId>,
    pub id: String,
    pub state: WriteState,
    /// Running members whose committed state lacked it at the end of a run that passed.
    pub missing_on: Vec<NodeId>,
}

/// What became of an operator command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandState {
    /// Proposed; not answered yet (or never: its node died first).
    Pending,
    Done(String),
    Refused(String),
}

/// Where one group is, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSample {
    /// Nodes running every resource of the group that is a process or an IP (started by the
    /// cluster; copies started by hand do not count).
    pub full: Vec<NodeId>,
    /// Nodes running any of them.
    pub any: Vec<NodeId>,
    /// The primary of each of its volumes, in the freshest committed state of a running node.
    pub primaries: Vec<Option<NodeId>>,
}

impl GroupSample {
    /// The group runs on `node`, entirely, and nowhere else.
    pub fn runs_only_on(&self, node: NodeId) -> bool {
        self.full == [node] && self.any == [node] && self.primaries.iter().all(|&p| p == Some(node))
    }
}

/// The state of one leg, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegSample {
    pub nodes: Vec<NodeId>,
    pub state: LegState,
}

/// One instant of the run, as the judge of expectations sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Script time.
    pub at_ms: u64,
    pub groups: BTreeMap<String, GroupSample>,
    pub legs: BTreeMap<String, Vec<LegSample>>,
    /// Machines whose process is not running.
    pub down: Vec<NodeId>,
}

/// Everything a scripted run recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptLog {
    /// Global simulated time of the script's t = 0 (`None`: the cluster never got there).
    pub started_at: Option<u64>,
    /// Script time at which every fault healed.
    pub healed_at: Option<u64>,
    pub samples: Vec<Sample>,
    pub writes: Vec<WriteRecord>,
    /// By step tag.
    pub commands: BTreeMap<usize, CommandState>,
    /// Steps carried out: (script time, tag, what happened).
    pub steps: Vec<(u64, usize, String)>,
}

/// The outcome of a scripted run.
pub struct ScriptOutcome {
    /// The checkers' verdict (and the run's numbers).
    pub result: Result<RunReport, Box<SimFailure>>,
    pub log: ScriptLog,
    pub trace: Trace,
}

/// Prints (or collects) one line per step as it happens.
pub type Echo = Box<dyn FnMut(&str)>;

/// Runs `script` with `seed`. `options` are those of a random run; the script turns off what
/// it replaces (random faults, operator workload, resource faults). `echo` sees one line per
/// step as it is carried out.
pub fn run_script(
    seed: u64,
    options: &Options,
    script: &Script,
    echo: Option<Echo>,
) -> ScriptOutcome {
    crate::machine::quiet_core_panics();
    let options = Options {
        groups: true,
        resource_faults: false,
        ..options.clone()
    };
    let world = crate::world::World::scripted(seed, options.clone(), script.clone(), echo);
    let (result, at_ms, trace, log) = world.run_scripted();
    let result = result.map_err(|violation| {
        Box::new(SimFailure {
            seed,
            at_ms,
            violation,
            replay: format!(
                "the same scenario file with --seed {seed} (add --trace for every event)"
            ),
            trace: trace.render(),
            trace_digest: trace.digest(),
        })
    });
    ScriptOutcome { result, log, trace }
}
