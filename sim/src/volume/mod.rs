//! The data-path world: real `tandem_core::replication` primaries and secondaries on fake
//! leg disks, a fake replication network and a stand-in for the committed cluster state,
//! driven by one seed with faults, a workload client and checkers of DESIGN.md §5 rules 1–4.
//!
//! Why it exists separately from the Raft world (`crate::world`): the data path's rules are
//! about bytes on legs and what the client was told, not about Raft. Keeping it a
//! self-contained world lets every seed run tens of thousands of disk operations in
//! milliseconds, while the control plane is reduced to what the data path sees of it: a
//! `VolumeInfo` changed only through the real `tandem_core::volume` functions, commits that
//! arrive late or never (a partitioned proposer), and the epochs they carry.
//!
//! Modules: [`disk`] (the fake leg with a volatile cache), [`history`] (what the client was
//! told, and the rule-1 check), [`world`] (the event loop and the control plane),
//! [`nodes`] (how a node drives its primary or secondary, like the daemon's
//! `repl_primary.rs` / `repl_secondary.rs` / `volumes.rs`), [`faults`] (fault injection and
//! the workload client).

pub mod disk;
pub mod faults;
pub mod history;
pub mod nodes;
pub mod world;

use std::fmt;

/// A bug planted in the core on purpose (needs the `mutations` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMutation {
    /// The primary acknowledges before its UpToDate peers have the write.
    AckBeforePeer,
    /// Secondaries accept hellos and data of any epoch.
    SkipEpochCheck,
    /// `volume::promote` accepts a non-UpToDate leg without force.
    PromoteOutdated,
}

impl DataMutation {
    pub const ALL: [DataMutation; 3] = [
        DataMutation::AckBeforePeer,
        DataMutation::SkipEpochCheck,
        DataMutation::PromoteOutdated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataMutation::AckBeforePeer => "ack-before-peer",
            DataMutation::SkipEpochCheck => "skip-epoch-check",
            DataMutation::PromoteOutdated => "promote-outdated",
        }
    }
}

impl fmt::Display for DataMutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DataMutation {
    type Err = String;
    fn from_str(text: &str) -> Result<DataMutation, String> {
        DataMutation::ALL
            .into_iter()
            .find(|m| m.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown mutation {text:?}; known: ack-before-peer, skip-epoch-check, \
                     promote-outdated"
                )
            })
    }
}

/// How a run is shaped; the seed picks everything else.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// 2 or 3 data nodes; `None`: the seed picks.
    pub nodes: Option<usize>,
    /// Simulated milliseconds of faults, as a range the seed picks from.
    pub fault_ms: (u64, u64),
    /// After the heal, legs must be identical and the workload must have progressed.
    pub settle_bound_ms: u64,
    pub mutation: Option<DataMutation>,
    /// Print every trace line as it happens.
    pub echo: bool,
    /// Every committed leg-state change is reported to the primary, even one that changed
    /// nothing, as the daemon does (`report_leg_states` compares the commit count). Off, a
    /// primary whose Outdated proposal changes nothing waits forever (the old daemon).
    pub report_every_commit: bool,
    /// Inject disk write errors and full disks on the primary's own leg too.
    pub primary_disk_errors: bool,
}

pub const DEFAULT_FAULT_MS: (u64, u64) = (15_000, 30_000);
pub const DEFAULT_SETTLE_MS: u64 = 30_000;

impl Default for VolumeOptions {
    fn default() -> VolumeOptions {
        VolumeOptions {
            nodes: None,
            fault_ms: DEFAULT_FAULT_MS,
            settle_bound_ms: DEFAULT_SETTLE_MS,
            mutation: None,
            echo: false,
            report_every_commit: true,
            primary_disk_errors: true,
        }
    }
}

impl VolumeOptions {
    /// The command that replays `seed` with these options and prints its trace.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command = String::from("cargo run --release -p tandem-sim --bin volume-sim");
        if self.mutation.is_some() {
            command.push_str(" --features mutations");
        }
        command.push_str(&format!(" -- --seed {seed}"));
        if let Some(nodes) = self.nodes {
            command.push_str(&format!(" --nodes {nodes}"));
        }
        if self.fault_ms != DEFAULT_FAULT_MS {
            command.push_str(&format!(
                " --fault-ms {}-{}",
                self.fault_ms.0, self.fault_ms.1
            ));
        }
        if self.settle_bound_ms != DEFAULT_SETTLE_MS {
            command.push_str(&format!(" --settle-ms {}", self.settle_bound_ms));
        }
        if let Some(mutation) = self.mutation {
            command.push_str(&format!(" --mutation {mutation}"));
        }
        if !self.report_every_commit {
            command.push_str(" --daemon-leg-reports");
        }
        if !self.primary_disk_errors {
            command.push_str(" --no-primary-disk-errors");
        }
        command.push_str(" --trace");
        command
    }
}

/// Which checker fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Rule 1: an acknowledged (or flushed) write is not readable from the primary.
    AckedWriteLost,
    /// Rule 2: two writers in one epoch, or a writer that is not the epoch's primary.
    TwoWriters,
    /// Rule 2: a promotion onto a leg that was not UpToDate, not recorded as forced.
    StalePromotion,
    /// Rule 4: after the heal, legs did not converge (or the workload made no progress).
    NoConvergence,
    /// The core refused an input the shim gave it correctly, or the simulator wedged.
    Harness,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::AckedWriteLost => "rule 1: acknowledged write lost",
            Rule::TwoWriters => "rule 2: two writers",
            Rule::StalePromotion => "rule 2: promotion onto a non-UpToDate leg",
            Rule::NoConvergence => "rule 4: no convergence after the heal",
            Rule::Harness => "harness",
        })
    }
}

/// A broken rule and what exactly was seen.
#[derive(Clone, Debug)]
pub struct DataViolation {
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for DataViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// A seed that broke a rule, with the command that replays it and its last trace lines.
#[derive(Debug)]
pub struct VolumeFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub violation: DataViolation,
    pub replay: String,
    pub trace: String,
}

impl fmt::Display for VolumeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at t={} ms: {}\nreplay: {}\n--- trace: the last events ---\n{}",
            self.seed, self.at_ms, self.violation, self.replay, self.trace
        )
    }
}

impl VolumeFailure {
    pub fn headline(&self) -> String {
        format!(
            "seed {} failed at t={} ms: {}\n  replay: {}",
            self.seed, self.at_ms, self.violation, self.replay
        )
    }
}

/// What one seed did.
#[derive(Clone, Debug, Default)]
pub struct VolumeReport {
    pub nodes: usize,
    pub size: u64,
    pub sim_ms: u64,
    pub events: u64,
    pub disk_ops: u64,
    pub frames: u64,
    pub acked_writes: u64,
    pub acked_flushes: u64,
    pub failed_requests: u64,
    pub reads_checked: u64,
    pub promotions: u64,
    pub refused_promotions: u64,
    pub forced_promotions: u64,
    /// Acknowledgements of a primary deposed by a forced promotion (not promised).
    pub excused_acks: u64,
    pub crashes: u64,
    pub power_losses: u64,
    pub link_cuts: u64,
    pub control_partitions: u64,
    pub disk_faults: u64,
    /// Milliseconds from the heal until the legs were identical.
    pub converged_after_ms: u64,
    /// Hash of every trace line (two runs of one seed must agree).
    pub trace_digest: u64,
}

impl VolumeReport {
    pub fn add(&mut self, other: &VolumeReport) {
        self.sim_ms += other.sim_ms;
        self.events += other.events;
        self.disk_ops += other.disk_ops;
        self.frames += other.frames;
        self.acked_writes += other.acked_writes;
        self.acked_flushes += other.acked_flushes;
        self.failed_requests += other.failed_requests;
        self.reads_checked += other.reads_checked;
        self.promotions += other.promotions;
        self.refused_promotions += other.refused_promotions;
        self.forced_promotions += other.forced_promotions;
        self.excused_acks += other.excused_acks;
        self.crashes += other.crashes;
        self.power_losses += other.power_losses;
        self.link_cuts += other.link_cuts;
        self.control_partitions += other.control_partitions;
        self.disk_faults += other.disk_faults;
        self.converged_after_ms = self.converged_after_ms.max(other.converged_after_ms);
    }
}

/// Runs one seed of the data-path world.
pub fn run_volume_seed(
    seed: u64,
    options: &VolumeOptions,
) -> Result<VolumeReport, Box<VolumeFailure>> {
    if let Err(detail) = switch_mutation(options.mutation) {
        return Err(Box::new(VolumeFailure {
            seed,
            at_ms: 0,
            violation: DataViolation {
                rule: Rule::Harness,
                detail,
            },
            replay: options.replay_command(seed),
            trace: String::new(),
        }));
    }
    let world = world::World::new(seed, options.clone());
    let result = world.run();
    let _ = switch_mutation(None);
    result.map_err(|(at_ms, violation, trace)| {
        Box::new(VolumeFailure {
            seed,
            at_ms,
            violation,
            replay: options.replay_command(seed),
            trace,
        })
    })
}

#[cfg(feature = "mutations")]
fn switch_mutation(mutation: Option<DataMutation>) -> Result<(), String> {
    use tandem_core::data_mutations::{set, DataMutations};
    set(DataMutations {
        ack_before_peer: mutation == Some(DataMutation::AckBeforePeer),
        skip_epoch_check: mutation == Some(DataMutation::SkipEpochCheck),
        promote_outdated: mutation == Some(DataMutation::PromoteOutdated),
    });
    Ok(())
}

#[cfg(not(feature = "mutations"))]
fn switch_mutation(mutation: Option<DataMutation>) -> Result<(), String> {
    match mutation {
        None => Ok(()),
        Some(m) => Err(format!(
            "mutation {m} needs the core's hooks: build with `--features mutations`"
        )),
    }
}
