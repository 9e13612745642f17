//! The data-path world of the simulator (sim/src/volume): real replication primaries and
//! secondaries on fake disks with power loss, write errors and full disks, failover through
//! `core::volume`, and the checkers of DESIGN.md §5 rules 1–4.
//!
//! What runs: a sweep that must pass every checker, determinism, one test per planted core
//! bug (`mutations` feature) showing that a sweep finds it with the right checker within its
//! seed budget and prints the replay command, and the seeds of the bugs the world found.

use std::collections::BTreeMap;

use tandem_sim::volume::{
    run_volume_seed, DataMutation, Rule, VolumeFailure, VolumeOptions, VolumeReport,
};

const SWEEP_SEEDS: u64 = 200;
const SWEEP_FAULT_MS: (u64, u64) = (10_000, 20_000);

fn sweep_options() -> VolumeOptions {
    VolumeOptions {
        fault_ms: SWEEP_FAULT_MS,
        ..VolumeOptions::default()
    }
}

/// Runs `seeds` on two threads; every result, by seed.
fn sweep(
    seeds: std::ops::Range<u64>,
    options: &VolumeOptions,
) -> BTreeMap<u64, Result<VolumeReport, Box<VolumeFailure>>> {
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let result = run_volume_seed(seed, options);
                let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                results.insert(seed, result);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_sweep_of_the_data_path_passes_every_checker() {
    let started = std::time::Instant::now();
    let results = sweep(1..SWEEP_SEEDS + 1, &sweep_options());
    let mut total = VolumeReport::default();
    for (seed, result) in &results {
        match result {
            Ok(report) => total.add(report),
            Err(failure) => panic!("seed {seed} failed:\n{failure}"),
        }
    }
    eprintln!(
        "data-path sweep: {SWEEP_SEEDS} seeds in {:.1} s, {} acked writes, {} flushes, {} \
         promotions ({} refused), {} power losses, {} crashes",
        started.elapsed().as_secs_f64(),
        total.acked_writes,
        total.acked_flushes,
        total.promotions,
        total.refused_promotions,
        total.power_losses,
        total.crashes
    );
    assert!(
        total.acked_writes > SWEEP_SEEDS * 100,
        "the workload barely ran"
    );
    assert!(total.promotions > SWEEP_SEEDS, "no failover happened");
    assert!(total.power_losses > SWEEP_SEEDS, "too few power losses");
}

#[test]
fn a_seed_replays_exactly() {
    let options = sweep_options();
    for seed in [3, 17] {
        let first = run_volume_seed(seed, &options).map(|r| r.trace_digest);
        let second = run_volume_seed(seed, &options).map(|r| r.trace_digest);
        match (first, second) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {seed} ran differently twice"),
            _ => panic!("seed {seed} failed"),
        }
    }
}

/// Sweeps `budget` seeds with `mutation` and returns the first failure of `rule`; every
/// failure must name the mutation in its replay command.
fn finds(mutation: DataMutation, nodes: Option<usize>, budget: u64, rule: Rule) -> u64 {
    let options = VolumeOptions {
        mutation: Some(mutation),
        nodes,
        ..sweep_options()
    };
    let results = sweep(1..budget + 1, &options);
    let mut other = BTreeMap::new();
    for (seed, result) in &results {
        let Err(failure) = result else {
            continue;
        };
        assert!(
            failure.replay.contains(&format!("--mutation {mutation}"))
                && failure.replay.contains("--features mutations"),
            "replay command: {}",
            failure.replay
        );
        if failure.violation.rule == rule {
            eprintln!("{mutation} found:\n{}", failure.headline());
            return *seed;
        }
        *other.entry(failure.violation.rule.to_string()).or_insert(0) += 1;
    }
    panic!("{mutation}: no {rule} violation in {budget} seeds (other failures: {other:?})");
}

#[test]
fn acking_before_the_peer_has_the_write_is_caught_by_rule_1() {
    finds(DataMutation::AckBeforePeer, None, 40, Rule::AckedWriteLost);
}

#[test]
fn skipping_the_epoch_check_is_caught_by_the_two_writers_rule() {
    finds(DataMutation::SkipEpochCheck, Some(3), 120, Rule::TwoWriters);
}

#[test]
fn promoting_an_outdated_leg_is_caught_by_the_promotion_rule() {
    finds(
        DataMutation::PromoteOutdated,
        None,
        40,
        Rule::StalePromotion,
    );
}

/// Seed 124 (with the sweep's fault phase) found that a write the primary's own leg failed
/// but the peer applied left the legs different for good; the primary now resyncs that range
/// from its leg (core fix in `Primary::local_failed_at`, pinned by the core unit test
/// `a_write_the_local_leg_failed_is_resynced_so_the_legs_converge`; later changes to the
/// fault mix changed what this seed does, so here it is a plain regression seed).
#[test]
fn seed_124_a_write_the_primarys_leg_failed_does_not_leave_the_legs_different() {
    if let Err(failure) = run_volume_seed(124, &sweep_options()) {
        panic!("{failure}");
    }
}

/// Seeds 8, 18 and 35 (seed 11 in an earlier revision of the fault mix) found that a primary whose leg promotion was proposed but never committed, and
/// whose peer then failed, proposes Outdated for a leg already committed Outdated: the
/// commit changes nothing. The simulator reports every committed leg state to the primary
/// (`report_every_commit`), and then the seed converges.
#[test]
fn seeds_8_18_35_a_no_change_outdated_commit_releases_the_frozen_primary() {
    for seed in [8, 18, 35] {
        if let Err(failure) = run_volume_seed(seed, &VolumeOptions::default()) {
            panic!("{failure}");
        }
    }
}

/// Seeds 1143, 1156 and 1184 (from 1000) found that a secondary that loses power loses the
/// acknowledged writes still in its disk cache, and nothing resynced them: the primary's
/// bitmap for it recorded only what it missed after the link dropped. Once the leg was
/// UpToDate again and later promoted, acknowledged writes were gone (rule 1). Fixed in the
/// core's `Primary`: it keeps what each peer acked but has not flushed
/// (`replication/primary/unflushed.rs`) and marks it out of sync when the link drops. The
/// simulator runs the real `Primary`, so this is the daemon's behaviour.
#[test]
fn seeds_1143_1156_1184_a_secondarys_power_loss_is_resynced() {
    for seed in [1143, 1156, 1184] {
        if let Err(failure) = run_volume_seed(seed, &VolumeOptions::default()) {
            panic!("{failure}");
        }
    }
}

/// Seed 51780 (of a 10,000-seed soak from 50001) found the double fault the fix of 1143
/// left: the primary crashed, then a secondary lost power (its unflushed acked writes gone,
/// and the record of them died with the primary), then the third leg took over and kept the
/// power-lost leg UpToDate; acknowledged writes were gone when it was promoted later. Fixed:
/// a leg whose node restarted since it served epoch E as a secondary tells a primary of a
/// later epoch its whole leg is suspect (`Secondary::with_cache_lost_in`; the daemon's boot-id
/// marker, `cache_marker.rs`), and resyncs its whole leg to its peers if promoted itself.
#[test]
fn seed_51780_a_secondarys_power_loss_after_its_primary_died_is_resynced() {
    if let Err(failure) = run_volume_seed(51780, &VolumeOptions::default()) {
        panic!("{failure}");
    }
}

/// Seed 1254 found, in an earlier revision of the fault mix, that with three legs writes the
/// lost primary sent to one surviving secondary but not to the other (never acknowledged)
/// left the two surviving UpToDate legs different after the takeover, for good. Fixed in the
/// core: the primary `Confirm`s what every UpToDate leg has, a secondary names what it applied
/// unconfirmed to the next primary (`Secondary::unconfirmed`), and a node promoted after
/// serving as a secondary resyncs its own unconfirmed ranges to its UpToDate peers. Core tests
/// `after_a_takeover_a_secondary_reports_...` and its control pin the exact case; since the
/// fault mix changed, no seed of 800 three-node seeds reproduced it without the fix, so here it
/// is a plain regression seed.
#[test]
fn seed_1254_surviving_legs_converge_after_a_takeover() {
    if let Err(failure) = run_volume_seed(1254, &VolumeOptions::default()) {
        panic!("{failure}");
    }
}

/// Seed 1892 found the checker's own imprecision: a plain write in flight when the new
/// primary's leg lost power (a copy in its cache vanished) was acknowledged afterwards by the
/// deposed primary and counted as promised. Such acknowledgements are now excused.
#[test]
fn seed_1892_a_write_in_flight_across_the_primarys_power_loss_is_not_promised() {
    if let Err(failure) = run_volume_seed(1892, &VolumeOptions::default()) {
        panic!("{failure}");
    }
}

/// Seed 10048 found a bug in the simulator's own model of a fix since replaced (a restarted
/// secondary reporting its whole leg suspect after a power loss forgot its power loss); kept
/// as a power-loss regression seed.
#[test]
fn seed_10048_a_restarted_secondary_remembers_its_power_loss() {
    if let Err(failure) = run_volume_seed(10048, &VolumeOptions::default()) {
        panic!("{failure}");
    }
}

/// Seed 10331 found it: the operator forced a stale leg primary while the old primary was
/// alive but cut off; the old primary, alone with no UpToDate peer, kept acknowledging. The
/// operator made two writers knowingly: the checker excuses those acknowledgements (and counts
/// the promotion as forced), it does not report a lost write. Since the primary's background
/// flushes and confirmations changed every trace, seed 10580 replays that story (found with
/// `volume-sim --seed N --trace | grep "forced promotion: excused"`).
#[test]
fn seed_10580_a_forced_promotion_excuses_the_deposed_primarys_acknowledgements() {
    match run_volume_seed(10580, &VolumeOptions::default()) {
        Ok(report) => {
            assert!(report.forced_promotions > 0, "no forced promotion");
            assert!(
                report.excused_acks > 0,
                "the deposed primary acknowledged nothing"
            );
        }
        Err(failure) => panic!("{failure}"),
    }
}
