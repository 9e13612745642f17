//! tandem's seeded deterministic simulator (DESIGN.md §6, tier 2).
//!
//! Many real [`tandem_core::NodeCore`]s run in one process on a fake millisecond clock, a fake
//! network and fake disks, all driven by one seed through `rand_chacha`. Faults (crashes,
//! power loss, pauses, partitions including one-way ones, lossy links, slow disks) strike for
//! a while, then heal; safety checkers run after every step and liveness is checked after the
//! heal. A failing seed reports the command that replays it exactly, and the trace of its
//! last events.
//!
//! Module map: [`config`] (options and the seed's scenario), [`world`] (the event loop and
//! phases), [`machine`] (a process, its clock and guarded core calls), [`disk`], [`net`],
//! [`faults`], [`workload`], [`checkers`], [`trace`], [`events`], [`summary`]; for resource
//! groups: [`layout`] (the volumes and groups a run creates), [`host`] (the agent and the
//! placement loop of one process, as the daemon's `agent_host`), [`resources`] (the fake
//! resources: what really runs where); [`script`] runs a fixed list of steps (the harness's
//! scenario files) instead of the random fault schedule.

// rust-protobuf messages (raft-rs's eraftpb) are built by assigning fields to a default value.
#![allow(clippy::field_reassign_with_default)]

pub mod checkers;
pub mod config;
pub mod disk;
pub mod events;
pub mod faults;
pub mod host;
pub mod layout;
pub mod machine;
pub mod net;
pub mod resources;
pub mod script;
pub mod summary;
pub mod trace;
pub mod volume;
pub mod workload;
pub mod world;

pub use checkers::Violation;
pub use config::{FaultMix, Mutation, Options, Scenario, Shape, SnapshotLoss};
pub use script::{run_script, Script, ScriptAction, ScriptOutcome, ScriptStep};
pub use summary::Summary;
pub use trace::Trace;
pub use world::RunReport;

/// A seed that broke a rule (or could not run), with how to replay it.
#[derive(Debug, thiserror::Error)]
#[error(
    "seed {seed} failed at t={at_ms} ms: {violation}\nreplay: {replay}\n\
     --- trace: the last events ---\n{trace}"
)]
pub struct SimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub violation: Violation,
    /// The exact command that replays this run with its trace.
    pub replay: String,
    /// The last trace lines, oldest first.
    pub trace: String,
    /// Hash of every trace line (for determinism checks).
    pub trace_digest: u64,
}

impl SimFailure {
    /// The first line of the failure, without the trace.
    pub fn headline(&self) -> String {
        format!(
            "seed {} failed at t={} ms: {}\n  replay: {}",
            self.seed, self.at_ms, self.violation, self.replay
        )
    }
}

/// Runs one seed to the end.
pub fn run_seed(seed: u64, options: &Options) -> Result<RunReport, Box<SimFailure>> {
    run_seed_traced(seed, options).0
}

/// Runs one seed and also returns its trace (the determinism test compares them).
pub fn run_seed_traced(
    seed: u64,
    options: &Options,
) -> (Result<RunReport, Box<SimFailure>>, Trace) {
    machine::quiet_core_panics();
    let world = world::World::new(seed, options.clone());
    let (result, at_ms, trace) = world.run();
    let result = result.map_err(|violation| {
        Box::new(SimFailure {
            seed,
            at_ms,
            violation,
            replay: options.replay_command(seed),
            trace: trace.render(),
            trace_digest: trace.digest(),
        })
    });
    (result, trace)
}

/// The outcome of one seed.
pub type SeedResult = Result<RunReport, Box<SimFailure>>;

/// Runs `seeds` on `jobs` threads (seeds are handed out in order). `each` sees every result
/// as it comes; once it returns `true`, no further seed is started. Returns the results
/// sorted by seed.
pub fn run_seeds<F>(
    seeds: std::ops::Range<u64>,
    options: &Options,
    jobs: usize,
    each: F,
) -> Vec<(u64, SeedResult)>
where
    F: Fn(u64, &SeedResult) -> bool + Sync,
{
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let result = run_seed(seed, options);
                if each(seed, &result) {
                    stop.store(true, Ordering::Relaxed);
                }
                let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                results.push((seed, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(seed, _)| *seed);
    results
}
