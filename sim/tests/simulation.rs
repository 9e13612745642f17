//! The simulator's own tests at the Raft level (resource groups off; `groups.rs` has theirs):
//! a seed sweep that must pass, mutation tests that prove the checkers fire, the failure
//! message, determinism, and regressions for core bugs found.
//!
//! All in one test binary so that the harness runs them side by side on the machine's cores.

use std::collections::BTreeSet;

use tandem_sim::{
    run_seed, run_seed_traced, run_seeds, FaultMix, Mutation, Options, SeedResult, SimFailure,
    SnapshotLoss, Violation,
};

/// Seeds in the sweep, and how long each one's fault phase lasts (seconds).
const SWEEP_SEEDS: u64 = 300;
const SWEEP_FAULT_SECS: (u64, u64) = (10, 20);
/// Seeds a mutation test may try before the checker must have fired.
const MUTATION_BUDGET: u64 = 100;
const JOBS: usize = 2;

fn sweep_options() -> Options {
    Options {
        fault_secs: SWEEP_FAULT_SECS,
        groups: false,
        ..Options::default()
    }
}

fn failures(results: &[(u64, SeedResult)]) -> Vec<&SimFailure> {
    results
        .iter()
        .filter_map(|(_, result)| result.as_ref().err().map(|failure| &**failure))
        .collect()
}

/// The CI sweep. It once found two core bugs (a lost snapshot never resent; election
/// timeouts from the OS's randomness), kept below as regression tests.
#[test]
fn a_sweep_of_seeds_passes_every_checker() {
    let options = sweep_options();
    let results = run_seeds(1..SWEEP_SEEDS + 1, &options, JOBS, |_, _| false);
    let failed = failures(&results);
    if let Some(first) = failed.first() {
        let others: Vec<String> = failed.iter().skip(1).map(|f| f.headline()).collect();
        panic!(
            "{} of {SWEEP_SEEDS} seeds failed; the first in full:\n{first}\nothers:\n{}",
            failed.len(),
            others.join("\n")
        );
    }
    let committed: u64 = results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .map(|report| report.work.committed)
        .sum();
    assert!(
        committed > SWEEP_SEEDS * 10,
        "the workload barely ran: {committed}"
    );
}

/// Runs seeds with `mutations` until `wanted` recognises a failure; returns it.
fn first_caught(
    mutations: &[Mutation],
    fault_mix: FaultMix,
    wanted: impl Fn(&Violation) -> bool + Sync,
) -> (Option<Box<SimFailure>>, Vec<String>) {
    let options = Options {
        mutations: mutations.iter().copied().collect::<BTreeSet<_>>(),
        fault_mix,
        // Keep the known core bugs out of the way of the mutation being tested.
        snapshot_loss: SnapshotLoss::Never,
        propose_on_followers: false,
        ..sweep_options()
    };
    let results = run_seeds(
        1..MUTATION_BUDGET + 1,
        &options,
        JOBS,
        |_, result| matches!(result, Err(failure) if wanted(&failure.violation)),
    );
    let mut caught = None;
    let mut other = Vec::new();
    for (_, result) in results {
        match result {
            Err(failure) if caught.is_none() && wanted(&failure.violation) => {
                caught = Some(failure)
            }
            Err(failure) => other.push(failure.headline()),
            Ok(_) => {}
        }
    }
    (caught, other)
}

#[test]
fn the_lease_checker_catches_leases_without_quorum() {
    let (caught, other) = first_caught(
        &[Mutation::LeaseWithoutQuorum],
        FaultMix::Standard,
        |violation| matches!(violation, Violation::LeaseOverlap { .. }),
    );
    let failure = caught.unwrap_or_else(|| {
        panic!("no lease violation within {MUTATION_BUDGET} seeds; other failures: {other:#?}")
    });
    let text = failure.to_string();
    assert!(text.contains("lease safety"), "{}", failure.headline());
    eprintln!("lease-without-quorum caught: {}", failure.headline());
}

/// What losing a promised vote or append ack can break.
fn lost_durability(violation: &Violation) -> bool {
    match violation {
        Violation::TwoLeaders { .. }
        | Violation::CommittedChanged { .. }
        | Violation::SnapshotConflict { .. }
        | Violation::StateDiverged { .. } => true,
        // raft-rs itself panics when a restarted node's log contradicts what it committed.
        Violation::CorePanic { message, .. } => {
            message.contains("commit") || message.contains("conflict")
        }
        _ => false,
    }
}

#[test]
fn the_safety_checkers_catch_sends_before_persist() {
    let (caught, other) = first_caught(
        &[Mutation::SendBeforePersist],
        FaultMix::PowerLoss,
        lost_durability,
    );
    let failure = caught.unwrap_or_else(|| {
        panic!("no safety violation within {MUTATION_BUDGET} seeds; other failures: {other:#?}")
    });
    eprintln!("send-before-persist caught: {}", failure.headline());
}

#[test]
fn a_failure_names_its_replay_command_and_carries_a_trace() {
    let options = Options {
        mutations: BTreeSet::from([Mutation::LeaseWithoutQuorum]),
        snapshot_loss: SnapshotLoss::Never,
        propose_on_followers: false,
        ..sweep_options()
    };
    let results = run_seeds(1..MUTATION_BUDGET + 1, &options, JOBS, |_, result| {
        result.is_err()
    });
    let failure = failures(&results)
        .first()
        .map(|failure| failure.to_string())
        .expect("a mutated core fails some seed");
    let seed = results
        .iter()
        .find(|(_, result)| result.is_err())
        .map(|(seed, _)| *seed)
        .unwrap_or_default();
    let command = format!(
        "cargo run -p tandem-sim --features mutations -- --seed {seed} --fault-secs 10-20 \
         --snapshot-loss never --leader-proposals-only --no-groups --mutation \
         lease-without-quorum --trace"
    );
    assert!(failure.contains(&command), "{failure}");
    let trace_lines = failure
        .lines()
        .filter(|line| line.starts_with("t="))
        .count();
    assert!(
        trace_lines > 100,
        "only {trace_lines} trace lines:\n{failure}"
    );
    assert!(failure.contains("VIOLATION"), "{failure}");
}

/// Regression: raft-rs draws its election timeout from `rand::thread_rng()`; the core now
/// overrides it from its own seeded source, so the same seed gives the same run.
#[test]
fn the_same_seed_gives_the_same_trace() {
    let options = sweep_options();
    for seed in [1, 2, 3] {
        let (first, first_trace) = run_seed_traced(seed, &options);
        let (second, second_trace) = run_seed_traced(seed, &options);
        assert_eq!(first_trace.digest(), second_trace.digest(), "seed {seed}");
        assert_eq!(first_trace.render(), second_trace.render(), "seed {seed}");
        assert_eq!(
            first.map_err(|f| f.headline()),
            second.map_err(|f| f.headline()),
            "seed {seed}"
        );
    }
}

/// Regression for a core bug the simulator found: the core never called raft-rs's
/// `report_snapshot`, so when a `MsgSnapshot` (or the follower's answer to it) is lost
/// (network, reconnect, restarting receiver) the leader keeps that follower in the Snapshot
/// state and never sends another one until leadership changes. Here the very first snapshot (to the second node, joining a
/// one-node cluster) is lost: the cluster of two voters can then commit nothing at all, and
/// setup never completes. In random runs it shows as a liveness failure after the heal with
/// one follower stuck far behind (e.g. `--seed 82` and `--seed 175` with
/// `--snapshot-loss random` and a seeded core).
#[test]
fn a_lost_snapshot_does_not_wedge_the_cluster() {
    let options = Options {
        fault_secs: (5, 5),
        snapshot_loss: SnapshotLoss::First,
        groups: false,
        ..Options::default()
    };
    if let Err(failure) = run_seed(1, &options) {
        panic!("{failure}");
    }
}

/// Regression: soak seeds that once made a follower campaign while the snapshot it had just
/// been sent was not yet durable; raft-rs then read entries the snapshot had replaced and
/// panicked ("unexpected error getting unapplied entries ... Compacted"). The core now pauses
/// a node's election clock until its snapshot is persisted.
#[test]
fn seeds_that_found_the_unpersisted_snapshot_election_stay_fixed() {
    let options = Options {
        groups: false,
        ..Options::default()
    };
    for seed in [1177, 1632, 1942] {
        if let Err(failure) = run_seed(seed, &options) {
            panic!("{failure}");
        }
    }
}

/// Core bug found while soaking with groups: a run is not always reproducible. raft-rs draws a
/// new randomized election timeout from `rand::thread_rng()` whenever it changes role
/// (`reset_randomized_election_timeout`); the core replaces it with a seeded one only after the
/// whole input (`choose_election_timeout`), and only when the drawn value differs from its own.
/// When one `NodeCore::tick` runs several Raft ticks (a process catching up after a freeze),
/// raft-rs steps down and campaigns inside that loop on the thread_rng timeout, so the number
/// of pre-votes in the burst differs between runs (in one comparison of
/// `cargo run --release -p tandem-sim -- --seed 128 --no-groups --trace` the traces first
/// differ at t=39.318 s, n2's burst after its pause). Fix: override the timeout after every
/// `raw.tick()` inside the loop, and never let the thread_rng value decide whether to.
#[test]
#[ignore = "core bug: raft-rs's thread_rng election timeout inside a multi-tick call"]
fn a_frozen_process_catching_up_replays_exactly() {
    let options = sweep_options();
    let options = Options {
        fault_secs: tandem_sim::config::DEFAULT_FAULT_SECS,
        ..options
    };
    let digests: BTreeSet<u64> = (0..4)
        .map(|_| run_seed_traced(128, &options).1.digest())
        .collect();
    assert_eq!(
        digests.len(),
        1,
        "seed 128 gave {} different traces",
        digests.len()
    );
}
