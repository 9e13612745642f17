//! The real-host chaos run (issue #5; tier 4, root): real daemons in network namespaces, a
//! verifying writer on the mirrored volume through NBD, and a seeded random schedule of
//! `kill -9`, link down, iptables one-way drops, SIGSTOP beyond the lease and full leg file
//! systems (`tandem_tests::chaos_kit` describes the method). Each run must end with zero lost
//! writes, zero periods with two writers, converged legs and a clean `tandem volume verify`.
//!
//! The short run is in the default suite. The long one is `scripts/chaos SECONDS [--seed N]`
//! (the ignored test below, reading `TANDEM_CHAOS_SECONDS` and `TANDEM_CHAOS_SEED`).
//! `TANDEM_CHAOS_SEED` also replays the short run with another seed; with
//! `TANDEM_CHAOS_KEEP_LOGS` set, the daemons' logs, the timeline and the faults are kept in a
//! directory under the temp dir (always kept when a run fails).

use std::time::Duration;

use tandem_tests::chaos_kit::{schedule, Chaos, Kind, Report};

/// Runs `seconds` of faults of `kinds` from `seed` in lab `tag`; prints and returns the table.
fn chaos(tag: &str, seed: u64, seconds: u64, kinds: &[Kind]) -> Report {
    let faults = schedule(seed, Duration::from_secs(seconds), kinds);
    eprintln!(
        "chaos run: seed {seed}, {seconds} s, {} faults:",
        faults.len()
    );
    for fault in &faults {
        eprintln!("  {fault}");
    }
    let mut chaos = Chaos::start(tag, seed);
    chaos.run(&faults);
    let report = chaos.finish();
    eprintln!("{report}");
    if std::env::var_os("TANDEM_CHAOS_KEEP_LOGS").is_some() {
        eprintln!("logs and timeline kept in {}", chaos.keep_logs().display());
    }
    // Asserted while the rig still runs: a failure keeps the logs and the timeline.
    assert_safe(&report);
    report
}

/// The safety rules and convergence, with the table in every message.
fn assert_safe(report: &Report) {
    assert!(
        report.verdict.lost.is_empty(),
        "acknowledged writes lost:\n{report}"
    );
    assert!(
        report.two_writers.is_empty(),
        "periods with two writers:\n{report}"
    );
    assert!(report.verify_ok, "verify found differences:\n{report}");
    assert!(report.acked > 0, "no write was acknowledged:\n{report}");
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

#[test]
fn a_short_chaos_run_loses_no_write_and_never_has_two_writers() {
    let seed = env_u64("TANDEM_CHAOS_SEED").unwrap_or(1);
    chaos("chaos", seed, 75, &Kind::EVERY);
}

#[test]
#[ignore = "long: scripts/chaos SECONDS [--seed N]"]
fn a_chaos_run_of_given_length() {
    let seconds = env_u64("TANDEM_CHAOS_SECONDS").unwrap_or(600);
    let seed = env_u64("TANDEM_CHAOS_SEED").unwrap_or_else(|| {
        let now = tandem_tests::failover_kit::unix_ms();
        now % 1_000_000
    });
    chaos("chaoslong", seed, seconds, &Kind::EVERY);
}

/// Found by the first chaos run (seed 1 of the first schedule, 2026-11-28; here 20 s of that fault alone): when the
/// primary's own leg fails a write (ENOSPC) that its peer wrote, the client gets an error,
/// but the peer keeps the new data and nothing marks the block out of sync: after the heal
/// both legs are UpToDate and `tandem volume verify` reports mismatches (DESIGN.md §5 rule
/// 4). No acknowledged write is lost (the write was refused). Fixed: the primary resyncs a
/// range its own leg failed to every peer once they answered it.
#[test]
fn regression_a_write_failed_by_the_primarys_full_leg_leaves_the_legs_identical() {
    chaos("chaosfull", 1, 20, &[Kind::PrimaryDiskFull]);
}
