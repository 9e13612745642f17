//! The scenario library runs in the simulator and passes; bad scenario files are refused with
//! clear errors; and a scenario whose expectation is wrong, or whose cluster breaks a rule,
//! fails (a runner that cannot fail proves nothing).

use std::path::{Path, PathBuf};

use tandem_harness::scenario::{self, parse_duration, ScenarioError};
use tandem_harness::sim_runner::{self, Report, RunError};
use tandem_sim::{Mutation, Options};

/// Seeds each library scenario runs with here (`tandem-harness run FILE --seeds 100` for more).
const SEEDS: [u64; 2] = [1, 2];

fn library() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("harness/scenarios")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn run(text: &str, seed: u64) -> Report {
    let scenario = scenario::parse("test.toml", text).expect("a valid scenario");
    sim_runner::run(&scenario, seed, None, false).expect("runs in the simulator")
}

fn shows(report: &Report) -> String {
    let trace = report.trace.as_deref().unwrap_or("");
    format!("seed {}:\n{}\n{trace}", report.seed, report.table())
}

#[test]
fn every_library_scenario_passes_in_the_simulator() {
    let files = library();
    assert!(
        files.len() >= 6,
        "the library has {} scenarios",
        files.len()
    );
    for file in files {
        let scenario = scenario::load(&file).unwrap_or_else(|error| panic!("{error}"));
        for seed in SEEDS {
            let report = sim_runner::run(&scenario, seed, None, false)
                .unwrap_or_else(|error| panic!("{error}"));
            assert!(report.passed(), "{}: {}", file.display(), shows(&report));
            assert_eq!(report.rows.len(), scenario.expects.len() + 1);
        }
    }
}

#[test]
fn a_scenario_replays_exactly_with_its_seed() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/power-cut-mid-write.toml");
    let scenario = scenario::load(&file).unwrap();
    let script = sim_runner::to_script(&scenario).unwrap();
    let options = Options::default();
    let first = tandem_sim::run_script(5, &options, &script, None);
    let second = tandem_sim::run_script(5, &options, &script, None);
    assert_eq!(first.trace.digest(), second.trace.digest());
    assert_eq!(first.log, second.log);
    let other = tandem_sim::run_script(6, &options, &script, None);
    assert_ne!(first.trace.digest(), other.trace.digest());
}

/// The partitioned primary, but the expectation puts the group on the wrong node.
const WRONG_NODE: &str = r#"
name = "wrong"
description = "expects the group to stay on the partitioned node"
layout = "active-standby"
duration = "12s"
[cluster]
nodes = ["a", "b"]
witnesses = ["w"]
[[step]]
at = "1s"
do = "partition"
sides = [["a"], ["b", "w"]]
[[step]]
at = "2s"
do = "operator"
command = "group move"
group = "g1"
node = "a"
label = "pin"
[[expect]]
check = "group_stays_on"
group = "g1"
node = "a"
[[expect]]
check = "group_runs_on"
group = "g1"
node = "a"
after = "3s"
within = "5s"
[[expect]]
check = "refused"
step = "pin"
[[expect]]
check = "group_never_on"
group = "g1"
node = "b"
[[expect]]
check = "one_writer"
"#;

#[test]
fn a_wrong_expectation_fails() {
    let report = run(WRONG_NODE, 1);
    let verdict: Vec<(&str, bool)> = report
        .rows
        .iter()
        .map(|r| (r.what.as_str(), r.pass))
        .collect();
    assert_eq!(
        verdict,
        [
            ("simulator checkers after every step", true),
            ("g1 stays on a", false),
            ("g1 runs on a (from 3s, within 5s)", false),
            ("step 'pin' refused", false),
            ("g1 never on b", false),
            ("one writer", true),
        ],
        "{}",
        shows(&report)
    );
    assert!(!report.passed());
    assert!(
        report.rows[1].detail.starts_with("left a: at t="),
        "{}",
        shows(&report)
    );
    let trace = report.trace.as_deref().unwrap_or("");
    assert!(
        trace.contains("note: scenario step 1: partition a | b w")
            && trace.contains("became leader"),
        "a failure shows the run's story:\n{trace}"
    );
}

#[test]
fn a_broken_rule_fails_the_scenario() {
    // The driver never tells the agent it lost its lease: the partitioned node keeps its
    // group while b takes it over.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/partitioned-primary.toml");
    let scenario = scenario::load(&file).unwrap();
    let options = Options {
        mutations: [Mutation::IgnoreLeaseLoss].into(),
        ..Options::default()
    };
    let report = sim_runner::run_with(&scenario, 1, &options, None).unwrap();
    let failed: Vec<&str> = (report.rows.iter())
        .filter(|row| !row.pass)
        .map(|row| row.what.as_str())
        .collect();
    assert!(
        failed.contains(&"simulator checkers after every step") && failed.contains(&"one writer"),
        "{}",
        shows(&report)
    );
    assert!(
        report.rows[0].detail.contains("one active node per group"),
        "{}",
        shows(&report)
    );
}

const GOOD: &str = r#"name = "ok"
description = "a valid file"
layout = "active-standby"
[cluster]
nodes = ["a", "b"]
witnesses = ["w"]
[[step]]
at = "1s"
do = "kill"
node = "a"
[[step]]
at = "3s"
do = "restart"
node = "a"
[[expect]]
check = "one_writer"
"#;

fn error(text: &str) -> String {
    match scenario::parse("bad.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn the_good_file_parses_and_resolves() {
    let scenario = scenario::parse("ok.toml", GOOD).unwrap();
    assert_eq!(scenario.duration_ms, 13_000, "the last step + 10 s");
    let plan: Vec<(u64, &str)> = (scenario.plan.iter())
        .map(|p| (p.at_ms, p.what.as_str()))
        .collect();
    assert_eq!(plan, [(1000, "kill a"), (3000, "restart a")]);
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    let text = GOOD.replace(
        "node = \"a\"\n[[step]]",
        "node = \"a\"\nspeed = 3\n[[step]]",
    );
    let message = error(&text);
    assert!(
        message.starts_with("bad.toml: TOML parse error at line 11"),
        "{message}"
    );
    assert!(message.contains("unknown field `speed`"), "{message}");
}

#[test]
fn an_unknown_node_is_refused() {
    let message = error(&GOOD.replace("node = \"a\"\n[[step]]", "node = \"c\"\n[[step]]"));
    assert_eq!(
        message,
        "bad.toml:7: step 1 (do = \"kill\"): unknown node \"c\"; the cluster has a, b, w"
    );
}

#[test]
fn time_going_backwards_is_refused() {
    let message = error(&GOOD.replace("at = \"3s\"", "at = \"500ms\""));
    assert_eq!(
        message,
        "bad.toml:11: step 2 (do = \"restart\"): time goes backwards: at 500ms comes after a \
         step at 1s; list steps in time order"
    );
}

#[test]
fn a_bad_duration_is_refused() {
    let message = error(&GOOD.replace("at = \"3s\"", "at = \"3 sec\""));
    assert!(
        message.starts_with("bad.toml:11: step 2 (do = \"restart\"): at: bad duration \"3 sec\""),
        "{message}"
    );
    assert_eq!(parse_duration("1.5s"), Ok(1500));
    assert_eq!(parse_duration("250ms"), Ok(250));
    assert_eq!(parse_duration("2m"), Ok(120_000));
    for bad in ["", "5", "-1s", "1.0005s", "2h", "s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn healing_what_was_never_broken_is_refused() {
    let text = GOOD.replace("do = \"restart\"\nnode = \"a\"", "do = \"heal\"");
    assert_eq!(
        error(&text),
        "bad.toml:11: step 2 (do = \"heal\"): nothing to heal: no network cut or slow disk is in \
         effect (never broken, or healed already)"
    );
    let text = GOOD.replace(
        "do = \"restart\"\nnode = \"a\"",
        "do = \"heal\"\nfault = \"split\"",
    );
    assert!(error(&text).contains("heal of \"split\": no fault with that label is in effect"));
}

#[test]
fn steps_that_contradict_the_timeline_are_refused() {
    let restart_running = GOOD.replace("do = \"kill\"", "do = \"pause\"\nfor = \"1s\"");
    assert_eq!(
        error(&restart_running),
        "bad.toml:12: step 2 (do = \"restart\"): a is not down: nothing to start"
    );
    let twice = GOOD.replace("do = \"restart\"", "do = \"power_off\"");
    assert_eq!(
        error(&twice),
        "bad.toml:11: step 2 (do = \"power_off\"): a is already down (since step 1)"
    );
    let twins = GOOD
        .replace(
            "node = \"a\"\n[[step]]",
            "node = \"a\"\nlabel = \"x\"\n[[step]]",
        )
        .replace("do = \"restart\"", "do = \"restart\"\nlabel = \"x\"");
    assert_eq!(
        error(&twins),
        "bad.toml:12: step 2: label \"x\" already names step 1"
    );
    let pause = GOOD.replace("do = \"kill\"", "do = \"pause\"");
    assert!(error(&pause).contains("the pause of a has neither `for` nor a later resume"));
}

#[test]
fn unknown_kinds_and_misplaced_keys_are_refused() {
    let message = error(&GOOD.replace("do = \"kill\"", "do = \"explode\""));
    assert!(
        message
            .starts_with("bad.toml:7: step 1 (do = \"explode\"): unknown step \"explode\"; known:"),
        "{message}"
    );
    let message =
        error(&GOOD.replace("do = \"kill\"", "do = \"kill\"\nsides = [[\"a\"], [\"b\"]]"));
    assert_eq!(
        message,
        "bad.toml:7: step 1 (do = \"kill\"): `sides` does not apply to this step"
    );
    let message = error(&GOOD.replace(
        "check = \"one_writer\"",
        "check = \"group_runs_on\"\ngroup = \"g9\"\nnode = \"a\"",
    ));
    assert_eq!(
        message,
        "bad.toml:15: expect 1: unknown group \"g9\"; layout active-standby has g1"
    );
    let message = error(&GOOD.replace("check = \"one_writer\"", "check = \"no_lost_writes\""));
    assert!(
        message.contains("no_lost_writes needs at least one `write` step"),
        "{message}"
    );
    let late = GOOD
        .replace(
            "layout = \"active-standby\"",
            "layout = \"active-standby\"\nduration = \"5s\"",
        )
        .replace(
            "do = \"restart\"\nnode = \"a\"",
            "do = \"write\"\ncount = 5\nevery = \"1s\"",
        );
    assert!(
        error(&late)
            .contains("write 3/5 to v1 would be sent at 5s, not before the scenario's duration 5s"),
        "{}",
        error(&late)
    );
    let message = error(&GOOD.replace("layout = \"active-standby\"", "layout = \"three-legs\""));
    assert_eq!(
        message,
        "bad.toml:4: cluster: layout three-legs needs 3 data nodes, got 2"
    );
}

#[test]
fn a_full_disk_is_refused_by_the_simulator_runner() {
    let text = GOOD
        .replace("do = \"kill\"", "do = \"fill_disk\"")
        .replace("do = \"restart\"", "do = \"free_disk\"");
    let scenario = scenario::parse("disk.toml", &text).expect("valid for a real runner");
    match sim_runner::run(&scenario, 1, None, false) {
        Err(RunError::NotModelled { line, step, .. }) => assert_eq!((line, step), (7, 1)),
        Ok(_) => panic!("the simulator has no disk to fill"),
    }
}

#[test]
fn a_missing_file_names_its_path() {
    match scenario::load(Path::new("/nonexistent/x.toml")) {
        Err(ScenarioError::Read { file, .. }) => assert_eq!(file, "/nonexistent/x.toml"),
        other => panic!("{other:?}"),
    }
}

/// Open gaps: the strict flapping link (the group also keeps running on a the whole time)
/// and the strict active-active node loss (the other node's group keeps running). Both fail
/// today on some seeds, for one reason (docs/reliability.md, "Scenario files"): a node's lease
/// lapses during a leader change. Run with `--ignored`.
#[test]
#[ignore]
fn a_leader_change_leaves_groups_running_in_place() {
    let gaps = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gaps");
    for (file, seeds) in [
        ("flapping-link-in-place.toml", [11, 27]),
        ("active-active-other-group-in-place.toml", [3, 10]),
    ] {
        let scenario = scenario::load(&gaps.join(file)).unwrap();
        for seed in seeds {
            let report = sim_runner::run(&scenario, seed, None, false).unwrap();
            assert!(report.passed(), "{file}: {}", shows(&report));
        }
    }
}
