//! Scripted runs (`tandem_sim::script`, what `harness/` scenario files run on): the script's
//! steps happen at their times, writes and commands are recorded, and the samples show where
//! the group runs. The harness judges scenarios on exactly this record.

use tandem_core::Command;
use tandem_sim::config::Layout;
use tandem_sim::script::{CommandState, WriteState};
use tandem_sim::{run_script, Options, Script, ScriptAction, ScriptStep};

fn step(at_ms: u64, tag: usize, action: ScriptAction) -> ScriptStep {
    ScriptStep {
        at_ms,
        tag,
        what: format!("step {tag}"),
        action,
    }
}

#[test]
fn a_scripted_power_cut_moves_the_group_and_keeps_acknowledged_writes() {
    let mut steps: Vec<ScriptStep> = (0..20)
        .map(|k| {
            let volume = "v1".to_string();
            step(k * 100, 1, ScriptAction::Write { volume })
        })
        .collect();
    let promote = Command::VolumePromote {
        name: "v1".into(),
        node: "node-2".into(),
        force: true,
    };
    steps.push(step(
        500,
        2,
        ScriptAction::Command {
            on: None,
            command: promote,
        },
    ));
    steps.push(step(1_000, 3, ScriptAction::PowerOff { node: 1 }));
    steps.push(step(8_000, 4, ScriptAction::Start { node: 1 }));
    steps.sort_by_key(|step| step.at_ms);
    let script = Script {
        data_nodes: 2,
        witness: true,
        layout: Layout::ActiveStandby,
        run_ms: 12_000,
        steps,
    };
    let outcome = run_script(3, &Options::default(), &script, None);
    if let Err(failure) = &outcome.result {
        panic!("{failure}");
    }
    let log = &outcome.log;
    assert!(log.started_at.is_some() && log.healed_at == Some(12_000));
    let acked = (log.writes.iter()).filter(|w| w.state == WriteState::Acknowledged);
    assert!(acked.clone().count() >= 5, "{:?}", log.writes);
    assert!(
        acked.clone().all(|w| w.missing_on.is_empty()),
        "{:?}",
        log.writes
    );
    match log.commands.get(&2) {
        Some(CommandState::Refused(why)) => assert!(why.contains("which node 1 holds"), "{why}"),
        other => panic!("the forced promotion was not refused: {other:?}"),
    }
    let g1 = |at: u64| {
        log.samples
            .iter()
            .find(|s| s.at_ms >= at)
            .map(|s| &s.groups["g1"])
    };
    assert!(g1(0).is_some_and(|g| g.runs_only_on(1)), "{:?}", g1(0));
    let moved = (log.samples.iter()).find(|s| s.at_ms > 1_000 && s.groups["g1"].runs_only_on(2));
    assert!(
        moved.is_some_and(|s| s.at_ms < 8_000),
        "g1 never ran on n2 while n1 was down"
    );
    assert!(log
        .steps
        .iter()
        .any(|(at, tag, _)| (*at, *tag) == (1_000, 3)));
}
