//! The simulated world: machines, network, clock and the event loop that drives them.
//!
//! A run goes through three phases. *Setup*: node 1 founds the cluster (`bootstrap`) and the
//! others join through the real join path (token, `prepare_join`, `AddNode`), without faults.
//! *Faults*: for the scenario's duration, the operator proposes changes while faults strike.
//! *Heal*: every fault stops and every stopped machine restarts; within the heal bound a
//! leader must be agreed by every live member and a proposal must commit everywhere.
//!
//! The world is split by concern: `io` moves bytes between cores, disks and the network and
//! runs the checkers after each step; `operator` is the setup and the workload; `chaos`
//! carries out faults; `liveness` is the heal-phase probe.

mod chaos;
mod groups;
mod io;
mod liveness;
mod operator;
mod script;
mod settle;

pub use groups::GroupStats;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::{bootstrap, Admin, ClusterId, NodeInfo, Role};

use crate::checkers::{Checkers, Violation};
use crate::config::{Layout, Options, Scenario, Shape};
use crate::disk::Disk;
use crate::events::{Event, Queue};
use crate::faults::FaultKind;
use crate::machine::Machine;
use crate::net::{NetStats, Network};
use crate::trace::{Trace, TraceEvent};
use crate::workload::{WorkStats, Workload};

use liveness::Probe;

/// A process's Raft/ping driver runs this often (the daemon's ticker is 10 ms too).
const TICK_MS: u64 = 10;
/// The cluster must have formed by then.
const SETUP_DEADLINE_MS: u64 = 30_000;
/// A runaway run (an event storm) stops here instead of running forever.
const MAX_EVENTS: u64 = 20_000_000;
/// Wall-clock seconds are simulated from this Unix time (join-token expiry needs them).
const UNIX_BASE: u64 = 1_700_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Setup,
    Faults {
        until: u64,
    },
    Heal {
        since: u64,
    },
    /// Raft recovered after the heal; the groups must settle (see `settle`).
    Settle,
    Done,
}

/// What one successful run did, for the summary table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    pub seed: u64,
    pub shape: Shape,
    pub membership: bool,
    pub compact_every: u64,
    /// Simulated time at the end of the run.
    pub sim_ms: u64,
    pub fault_ms: u64,
    /// From the heal until the liveness probe committed everywhere.
    pub recovery_ms: u64,
    pub faults: BTreeMap<FaultKind, u64>,
    pub leaders_elected: usize,
    pub committed_index: u64,
    pub restarts: u64,
    pub events: u64,
    pub work: WorkStats,
    pub net: NetStats,
    /// Hash of every trace line: equal for two runs of the same seed and options.
    pub trace_digest: u64,
    pub trace_lines: u64,
    /// The groups of the run (`None`: groups off).
    pub layout: Option<Layout>,
    pub groups: GroupStats,
}

/// A fault that is in effect until its `FaultOver` event (or the heal).
enum ActiveFault {
    Network(String),
    SlowDisk(tandem_core::NodeId),
}

/// Everything in one simulated run.
pub struct World {
    seed: u64,
    options: Options,
    scenario: Scenario,
    cluster: ClusterId,
    now: u64,
    phase: Phase,
    queue: Queue,
    machines: BTreeMap<tandem_core::NodeId, Machine>,
    net: Network,
    disk_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    clock_rng: ChaCha8Rng,
    workload: Workload,
    checkers: Checkers,
    trace: Trace,
    active: BTreeMap<u64, ActiveFault>,
    next_fault_id: u64,
    fault_counts: BTreeMap<FaultKind, u64>,
    /// Joins proposed (node id -> when), started once a member has applied them.
    pending_joins: BTreeMap<tandem_core::NodeId, u64>,
    probe: Probe,
    restarts: u64,
    events: u64,
    recovery_ms: u64,
    /// For `SnapshotLoss::First`.
    lost_first_snapshot: bool,
    /// The group workload's choices and timing.
    group_rng: ChaCha8Rng,
    /// How fake resource operations end.
    res_rng: ChaCha8Rng,
    group_stats: GroupStats,
    settle: settle::Settle,
    /// A scripted run (`crate::script`): its steps replace the random fault schedule.
    script: Option<script::Scripted>,
}

/// One independent random stream per concern, all derived from the seed.
fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

impl World {
    pub fn new(seed: u64, options: Options) -> World {
        let mut setup_rng = stream(seed, 0);
        let scenario = Scenario::pick(&mut setup_rng, &options);
        let cluster = ClusterId(setup_rng.gen());
        let trace = Trace::new(options.echo_trace);
        World {
            seed,
            workload: Workload::new(stream(seed, 4), scenario.membership),
            options,
            scenario,
            cluster,
            now: 0,
            phase: Phase::Setup,
            queue: Queue::default(),
            machines: BTreeMap::new(),
            net: Network::new(stream(seed, 1)),
            disk_rng: stream(seed, 2),
            fault_rng: stream(seed, 3),
            clock_rng: stream(seed, 5),
            checkers: Checkers::default(),
            trace,
            active: BTreeMap::new(),
            next_fault_id: 1,
            fault_counts: BTreeMap::new(),
            pending_joins: BTreeMap::new(),
            probe: Probe::Waiting,
            restarts: 0,
            events: 0,
            recovery_ms: 0,
            lost_first_snapshot: false,
            group_rng: stream(seed, 6),
            res_rng: stream(seed, 7),
            group_stats: GroupStats::default(),
            settle: settle::Settle::default(),
            script: None,
        }
    }

    /// Runs to the end. Returns the outcome, the simulated time it ended at, and the trace.
    pub fn run(mut self) -> (Result<RunReport, Violation>, u64, Trace) {
        let result = self.run_phases();
        if let Err(violation) = &result {
            let text = violation.to_string();
            self.trace
                .record(self.now, None, TraceEvent::Violation(text));
        }
        let report = result.map(|()| self.report());
        (report, self.now, self.trace)
    }

    fn run_phases(&mut self) -> Result<(), Violation> {
        self.found()?;
        while self.phase != Phase::Done {
            let Some((at, event)) = self.queue.pop() else {
                return Err(Violation::Setup("the event queue ran dry".into()));
            };
            self.now = at;
            self.events += 1;
            if self.events > MAX_EVENTS {
                return Err(Violation::Setup(format!(
                    "more than {MAX_EVENTS} events: the run does not settle"
                )));
            }
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Input {
                node,
                incarnation,
                input,
            } => self.on_input(node, incarnation, input),
            Event::DiskDone { node, seq } => self.on_disk_done(node, seq),
            Event::Restart { node } => self.restart(node),
            Event::Watchdog { node, incarnation } => self.on_watchdog(node, incarnation),
            Event::NextFault => self.on_next_fault(),
            Event::FaultOver { id } => {
                self.end_fault(id);
                Ok(())
            }
            Event::Operator => self.on_operator(),
            Event::Setup => self.on_setup(),
            Event::Heal => {
                self.script_healed();
                self.on_heal()
            }
            Event::Probe => self.on_probe(),
            Event::GroupOperator => self.on_group_operator(),
            Event::ResourceChaos => self.on_resource_chaos(),
            Event::Settle => self.on_settle(),
            Event::Script { index } => self.on_script_step(index),
            Event::Sample => self.on_sample(),
        }
    }

    /// `tandem init` on node 1, then the setup driver that joins the others.
    fn found(&mut self) -> Result<(), Violation> {
        let shape = self.scenario.shape;
        let what = format!(
            "seed {}: {shape}, {} s of faults, membership changes {}, compact every {}",
            self.seed,
            self.scenario.fault_ms / 1000,
            if self.scenario.membership {
                "on"
            } else {
                "off"
            },
            self.scenario.timing.compact_every,
        );
        let what = match self.scenario.layout {
            Some(layout) => format!("{what}, groups {layout}"),
            None => format!("{what}, no groups"),
        };
        self.trace.record(0, None, TraceEvent::Phase(what));
        let first = NodeInfo {
            id: 1,
            name: "node-1".into(),
            addr: node_addr(1),
            site: None,
            role: Role::Voter,
            admin: Admin::Online,
        };
        let durable = bootstrap(self.cluster, first);
        let disk =
            Disk::founded(&durable).map_err(|reason| Violation::DiskRefused { node: 1, reason })?;
        self.machines.insert(1, Machine::new(1, disk));
        self.restart(1)?;
        self.queue.push(100, Event::Setup);
        Ok(())
    }

    fn unix_now(&self) -> u64 {
        UNIX_BASE + self.now / 1000
    }

    fn report(&self) -> RunReport {
        let (fault_ms, compact_every) =
            (self.scenario.fault_ms, self.scenario.timing.compact_every);
        RunReport {
            seed: self.seed,
            shape: self.scenario.shape,
            membership: self.scenario.membership,
            compact_every,
            sim_ms: self.now,
            fault_ms,
            recovery_ms: self.recovery_ms,
            faults: self.fault_counts.clone(),
            leaders_elected: self.checkers.leaders_elected(),
            committed_index: self.checkers.committed_index(),
            restarts: self.restarts,
            events: self.events,
            work: self.workload.stats,
            net: self.net.stats,
            trace_digest: self.trace.digest(),
            trace_lines: self.trace.count(),
            layout: self.scenario.layout,
            groups: self.group_stats,
        }
    }
}

/// The address a node would listen on (only shown in the state).
fn node_addr(id: tandem_core::NodeId) -> String {
    format!("10.0.0.{id}:7788")
}
