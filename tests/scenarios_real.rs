//! Tier-4 tests (root): scenario files from `harness/scenarios/` played against real daemons
//! in network namespaces (`tandem_tests::scenario_real`), a subset small enough for the
//! default suite (15–25 s each on the shared 2-core machine); `scripts/scenario-real` plays
//! them all. Also: a wrong expectation is reported as failed, with what was seen.
//!
//! Each run takes the failover rig's lock (`failover_kit::Rig`), so no two clusters run at
//! once with the other root tests.

use std::path::PathBuf;

use tandem_harness::Scenario;
use tandem_tests::scenario_real::{run, RealReport};

fn library(file: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../harness/scenarios")
        .join(file);
    tandem_harness::load(&path).unwrap_or_else(|error| panic!("{error}"))
}

/// Runs `scenario` in lab `tag`, prints its tables, and fails naming every failed expectation.
fn passes(scenario: &Scenario, tag: &str) -> RealReport {
    let report = run(scenario, tag, true);
    eprintln!("{}\n{}", report.name, report.table());
    assert!(
        report.skipped.is_none(),
        "{}: skipped: {:?}",
        report.name,
        report.skipped
    );
    assert!(report.passed(), "{}", report.failures().join("\n"));
    report
}

/// Fails now and then on the shared machine, for real reasons that are not this runner's
/// (docs/reliability.md, "Scenario files against real daemons"): with `a` cut off, `b` and
/// the witness are the quorum, and a Raft-log fsync stall of 1.5 s on the witness's loaded
/// disk lets `b`'s lease lapse: `b` self-fences and restarts g1 in place, so "g1 stays on b"
/// fails.
#[test]
#[ignore = "fails about 1 run in 15 on the loaded 2-core machine: a 1.5 s fsync stall of the witness's Raft log lapses b's lease and g1 restarts in place (docs/reliability.md)"]
fn partitioned_primary_on_real_daemons() {
    passes(&library("partitioned-primary.toml"), "scpart");
}

#[test]
fn flapping_link_on_real_daemons() {
    passes(&library("flapping-link.toml"), "scflap");
}

#[test]
fn stale_leg_forced_after_a_kill_on_real_daemons() {
    passes(&library("stale-leg-forced.toml"), "scstale");
}

/// Found a product bug (docs/reliability.md, "Scenario files against real daemons"): of the
/// two contradicting moves, the first one's demotion of v1 could commit after the second kept
/// g1 on a, and a ran g1 without its volume until the volume's next monitor. Fixed in the
/// agent (the volume resource is checked against the committed state on every step; core
/// test `a_volume_demoted_behind_the_agents_back_is_noticed_at_once_and_restarted`).
#[test]
fn operator_mistakes_on_real_daemons() {
    passes(&library("operator-mistakes.toml"), "scoper");
}

#[test]
fn whole_site_power_loss_on_real_daemons() {
    passes(&library("whole-site-power-loss.toml"), "scsite");
}

/// A scenario that expects g1 to run on b while nothing happens: the runner must report that
/// expectation as failed (and the ones that hold as passed).
#[test]
fn a_wrong_expectation_is_reported_as_failed() {
    let text = r#"
name = "wrong-node"
description = "Nothing happens; the file wrongly expects g1 to run on b."
layout = "active-standby"
duration = "3s"

[cluster]
nodes = ["a", "b"]
witnesses = ["w"]

[[step]]
at = "0s"
do = "write"
count = 5
every = "100ms"

[[expect]]
check = "group_runs_on"
group = "g1"
node = "b"

[[expect]]
check = "group_stays_on"
group = "g1"
node = "a"

[[expect]]
check = "no_lost_writes"
"#;
    let scenario = tandem_harness::parse("wrong-node.toml", text).expect("a valid scenario");
    let report = run(&scenario, "scwrong", true);
    eprintln!("{}", report.table());
    assert!(
        !report.passed(),
        "a wrong expectation passed:\n{}",
        report.table()
    );
    let failures = report.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("scenario wrong-node: expectation \"g1 runs on b\" failed")
            && failures[0].contains("never entirely on b only")
            && failures[0].contains("ran fully on a"),
        "{failures:?}"
    );
}

/// A scenario with a step a real host cannot carry out is skipped, with the reason, and its
/// cluster never built.
#[test]
fn a_scenario_with_a_simulator_only_step_is_skipped() {
    let report = run(&library("power-cut-mid-write.toml"), "scslow", false);
    let why = report.skipped.as_deref().unwrap_or_default();
    assert!(why.contains("step 1 is simulator only"), "{why}");
    assert!(report.rows.is_empty());
    assert!(report
        .table()
        .contains("simulator only: a real slow disk needs dm-delay"));
}
