//! Runs a scenario in the seeded simulator and judges its expectations.
//!
//! Why it exists: the simulator (`tandem-sim`) knows how to run a cluster of real cores on a
//! fake clock with every checker after every step, and a scripted run
//! ([`tandem_sim::script`]) replaces its random fault schedule with a fixed list; this module
//! is the bridge from a scenario file to that list (node names to ids, labelled faults to
//! keys, operator commands to the core's `Command`) and from what the run recorded back to a
//! verdict per expectation. The seed still decides everything the scenario leaves open, so a
//! scenario is run with a few seeds; the same seed replays exactly.
//!
//! What the simulator cannot express is refused before running, with the step's line:
//! `fill_disk`/`free_disk` (the simulator has no volume data path and so no full disk).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tandem_core::{Command, NodeId};
use tandem_sim::faults::FaultKind;
use tandem_sim::script::{CommandState, Sample, ScriptLog, ScriptOutcome, WriteState};
use tandem_sim::{Options, Script, ScriptAction, ScriptStep, Violation};

use crate::scenario::{
    fmt_ms, Answer, Check, CutKind, Effect, Expect, Layout, OperatorCommand, Scenario,
};

/// Why a scenario cannot run in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{file}:{line}: step {step}: `{what}` is not modelled by the simulator ({why})")]
    NotModelled {
        file: String,
        line: usize,
        step: usize,
        what: String,
        why: String,
    },
}

/// The verdict on one expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub what: String,
    pub pass: bool,
    pub detail: String,
}

/// The outcome of one scenario run.
pub struct Report {
    pub name: String,
    pub seed: u64,
    /// The first row is the simulator's own checkers; then one per `[[expect]]`.
    pub rows: Vec<Row>,
    /// Simulated time of the whole run (setup, scenario, heal, settle), ms.
    pub sim_ms: u64,
    /// The run's story (see [`tandem_sim::Trace::keep_story`]), when something failed.
    pub trace: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|row| row.pass)
    }

    /// The pass/fail table.
    pub fn table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|row| row.what.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{:<width$}  result  detail", "expectation");
        for row in &self.rows {
            let result = if row.pass { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "{:<width$}  {result:<6}  {}", row.what, row.detail);
        }
        out
    }
}

/// How a scenario's names map to simulator node ids: data nodes 1..=n, then the witness.
fn ids(scenario: &Scenario) -> BTreeMap<String, NodeId> {
    scenario
        .nodes
        .iter()
        .chain(&scenario.witnesses)
        .enumerate()
        .map(|(index, name)| (name.clone(), index as NodeId + 1))
        .collect()
}

/// The simulator's script for `scenario`.
pub fn to_script(scenario: &Scenario) -> Result<Script, RunError> {
    let ids = ids(scenario);
    let id = |name: &str| ids.get(name).copied().unwrap_or(0);
    let mut steps = Vec::new();
    for planned in &scenario.plan {
        let key = |fault: usize| fault as u32;
        let action = match &planned.effect {
            Effect::Kill { node } => ScriptAction::Kill { node: id(node) },
            Effect::PowerOff { node } => ScriptAction::PowerOff { node: id(node) },
            Effect::Start { node } => ScriptAction::Start { node: id(node) },
            Effect::Cut { fault, kind, links } => ScriptAction::Cut {
                key: key(*fault),
                kind: match kind {
                    CutKind::Partition => FaultKind::Partition,
                    CutKind::Isolate => FaultKind::Isolate,
                    CutKind::OneWay => FaultKind::OneWay,
                },
                links: links.iter().map(|(a, b)| (id(a), id(b))).collect(),
            },
            Effect::Pause { node, ms } => ScriptAction::Pause {
                node: id(node),
                ms: *ms,
            },
            Effect::SlowDisk { fault, node, by_ms } => ScriptAction::SlowDisk {
                key: key(*fault),
                node: id(node),
                extra_ms: *by_ms,
            },
            Effect::EndFault { fault } => ScriptAction::End { key: key(*fault) },
            Effect::Write { volume } => ScriptAction::Write {
                volume: volume.clone(),
            },
            Effect::Operator { command, on } => ScriptAction::Command {
                on: on.as_deref().map(id),
                command: to_command(command, &ids),
            },
            Effect::FillDisk { .. } => {
                let line = scenario.steps.get(planned.step - 1).map_or(0, |s| s.line);
                return Err(RunError::NotModelled {
                    file: scenario.file.clone(),
                    line,
                    step: planned.step,
                    what: planned.what.clone(),
                    why: "it has no volume data path, so no disk to fill".into(),
                });
            }
        };
        steps.push(ScriptStep {
            at_ms: planned.at_ms,
            tag: planned.step,
            what: planned.what.clone(),
            action,
        });
    }
    Ok(Script {
        data_nodes: scenario.nodes.len(),
        witness: !scenario.witnesses.is_empty(),
        layout: match scenario.layout {
            Layout::ActiveStandby => tandem_sim::config::Layout::ActiveStandby,
            Layout::ActiveActive => tandem_sim::config::Layout::ActiveActive,
            Layout::ThreeLegs => tandem_sim::config::Layout::ThreeLegs,
        },
        run_ms: scenario.duration_ms,
        steps,
    })
}

/// The simulator names node `n` `node-n`: the command the CLI would send, with those names.
fn to_command(command: &OperatorCommand, ids: &BTreeMap<String, NodeId>) -> Command {
    let name = |node: &String| format!("node-{}", ids.get(node).copied().unwrap_or(0));
    match command {
        OperatorCommand::NodeStandby { node } => Command::NodeStandby { name: name(node) },
        OperatorCommand::NodeOnline { node } => Command::NodeOnline { name: name(node) },
        OperatorCommand::NodeRemove { node } => Command::NodeRemove { name: name(node) },
        OperatorCommand::VolumePromote {
            volume,
            node,
            force,
        } => Command::VolumePromote {
            name: volume.clone(),
            node: name(node),
            force: *force,
        },
        OperatorCommand::VolumeDemote { volume } => Command::VolumeDemote {
            name: volume.clone(),
        },
        OperatorCommand::GroupMove { group, node } => Command::GroupMove {
            name: group.clone(),
            node: name(node),
        },
        OperatorCommand::GroupClear { group } => Command::GroupClear {
            name: group.clone(),
        },
        OperatorCommand::GroupEnable { group } => Command::GroupEnable {
            name: group.clone(),
        },
        OperatorCommand::GroupDisable { group } => Command::GroupDisable {
            name: group.clone(),
        },
    }
}

/// Runs `scenario` with `seed`; `echo` sees one line per step as it happens; `trace` prints
/// every simulator event.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    echo: Option<Echo>,
    trace: bool,
) -> Result<Report, RunError> {
    let options = Options {
        echo_trace: trace,
        ..Options::default()
    };
    run_with(scenario, seed, &options, echo)
}

/// [`run`] with the simulator's options (a mutation, to show that the checkers fire).
pub fn run_with(
    scenario: &Scenario,
    seed: u64,
    options: &Options,
    echo: Option<Echo>,
) -> Result<Report, RunError> {
    let script = to_script(scenario)?;
    let outcome = tandem_sim::run_script(seed, options, &script, echo);
    Ok(judge(scenario, seed, &outcome))
}

/// The verdict on every expectation.
pub fn judge(scenario: &Scenario, seed: u64, outcome: &ScriptOutcome) -> Report {
    let ids = ids(scenario);
    let judge = Judge {
        scenario,
        ids: &ids,
        log: &outcome.log,
        violation: outcome
            .result
            .as_ref()
            .err()
            .map(|f| (&f.violation, f.at_ms)),
    };
    let mut rows = vec![judge.safety(outcome)];
    rows.extend(scenario.expects.iter().map(|expect| Row {
        what: expect.to_string(),
        ..judge.expect(expect)
    }));
    let sim_ms = match &outcome.result {
        Ok(report) => report.sim_ms,
        Err(failure) => failure.at_ms,
    };
    let mut report = Report {
        name: scenario.name.clone(),
        seed,
        rows,
        sim_ms,
        trace: None,
    };
    if !report.passed() {
        let story: Vec<String> = (outcome.trace.story().iter())
            .map(|line| line.to_string())
            .collect();
        report.trace = Some(tail(&story, TRACE_TAIL, outcome.log.started_at));
    }
    report
}

/// Story lines shown with a failure (every event: `--trace`).
const TRACE_TAIL: usize = 400;

/// The last `lines` of the run's story: faults, stops and starts, leaders, proposals, agent
/// events (no frames, no disk writes).
fn tail(story: &[String], lines: usize, started_at: Option<u64>) -> String {
    let start = story.len().saturating_sub(lines);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "(the run's story{}: no frames or disk writes; --trace prints every event)",
        if start > 0 { ", its last lines" } else { "" }
    );
    if let Some(at) = started_at {
        let _ = writeln!(
            out,
            "(times since the run began; the scenario's t=0 is t={}.{:03}s)",
            at / 1000,
            at % 1000
        );
    }
    for line in &story[start..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

struct Judge<'a> {
    scenario: &'a Scenario,
    ids: &'a BTreeMap<String, NodeId>,
    log: &'a ScriptLog,
    /// The checker that stopped the run, and when (global ms).
    violation: Option<(&'a Violation, u64)>,
}

/// The failing row of an expectation whose window had no sample.
fn no_sample(from: u64, to: u64) -> Row {
    row(
        false,
        format!(
            "no sample {} (the run ended first)",
            Judge::window_text(from, to)
        ),
    )
}

fn row(pass: bool, detail: String) -> Row {
    Row {
        what: String::new(),
        pass,
        detail,
    }
}

impl Judge<'_> {
    fn safety(&self, outcome: &ScriptOutcome) -> Row {
        let what = "simulator checkers after every step".to_string();
        let detail = match &outcome.result {
            Ok(report) => format!(
                "held: {} events, {} s simulated, recovered {} ms and settled {} ms after the heal",
                report.events,
                report.sim_ms / 1000,
                report.recovery_ms,
                report.groups.settle_ms
            ),
            Err(failure) => failure.headline(),
        };
        Row {
            what,
            pass: outcome.result.is_ok(),
            detail,
        }
    }

    fn expect(&self, expect: &Expect) -> Row {
        match &expect.check {
            Check::NoLostWrites => self.no_lost_writes(),
            Check::OneWriter => self.one_writer(),
            Check::GroupRunsOn { group, node } => {
                let id = self.id(node);
                self.some_sample(
                    expect,
                    group,
                    |s| s.runs_only_on(id),
                    &format!("entirely on {node} only"),
                )
            }
            Check::GroupStaysOn { group, node } => {
                self.every_sample(expect, group, self.id(node), node)
            }
            Check::GroupNeverOn { group, node } => {
                self.never_on(expect, group, self.id(node), node)
            }
            Check::GroupRuns { group } => self.some_sample(
                expect,
                group,
                |s| s.full.len() == 1 && s.runs_only_on(s.full[0]),
                "entirely on one node",
            ),
            Check::Refused { step, contains } => self.command(step, Some(contains.as_deref())),
            Check::Accepted { step } => self.command(step, None),
            Check::LegsConverge { volume } => self.legs(expect, volume.as_deref()),
        }
    }

    fn id(&self, node: &str) -> NodeId {
        self.ids.get(node).copied().unwrap_or(0)
    }

    fn name(&self, id: NodeId) -> String {
        (self.ids.iter())
            .find(|(_, &n)| n == id)
            .map_or_else(|| format!("n{id}"), |(name, _)| name.clone())
    }

    fn names(&self, ids: &[NodeId]) -> String {
        if ids.is_empty() {
            return "nowhere".into();
        }
        ids.iter()
            .map(|&id| self.name(id))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Why a run-long judgement could not be made to the end.
    fn stopped(&self) -> Option<String> {
        let (violation, at) = self.violation?;
        Some(format!(
            "not judged: the run stopped at t={} ms ({})",
            at,
            violation.rule()
        ))
    }

    fn no_lost_writes(&self) -> Row {
        if let Some(why) = self.stopped() {
            return row(false, why);
        }
        let writes = &self.log.writes;
        let acked: Vec<_> = writes
            .iter()
            .filter(|w| w.state == WriteState::Acknowledged)
            .collect();
        let in_flight = writes
            .iter()
            .filter(|w| w.state == WriteState::InFlight)
            .count();
        let failed = writes.len() - acked.len() - in_flight;
        let lost: Vec<String> = (acked.iter())
            .filter(|w| !w.missing_on.is_empty())
            .map(|w| {
                format!(
                    "{} (sent t={}) missing on {}",
                    w.id,
                    fmt_ms(w.at_ms),
                    self.names(&w.missing_on)
                )
            })
            .collect();
        let (pass, detail) = crate::scenario::lost_writes_verdict(
            acked.len(),
            in_flight,
            failed,
            &lost,
            "every acknowledged write is on every node",
        );
        row(pass, detail)
    }

    fn one_writer(&self) -> Row {
        if let Some((violation, at)) = self.violation {
            let rules = [
                "one active node per group: overlap",
                "one active node per group: self-fencing deadline",
                "one writer",
            ];
            if rules.contains(&violation.rule()) {
                return row(false, format!("broken at t={at} ms: {violation}"));
            }
            if let Some(why) = self.stopped() {
                return row(false, why);
            }
        }
        let mut moves = 0;
        let mut last: BTreeMap<&str, NodeId> = BTreeMap::new();
        for sample in &self.log.samples {
            for (group, at) in &sample.groups {
                if let [node] = at.full[..] {
                    if last
                        .insert(group, node)
                        .is_some_and(|before| before != node)
                    {
                        moves += 1;
                    }
                }
            }
        }
        row(
            true,
            format!(
                "never two nodes running a group nor a primary other than its holder \
                 (checked after every step); {moves} hand-over(s) seen"
            ),
        )
    }

    /// The samples in the expectation's window.
    fn window<'s>(&'s self, expect: &Expect) -> (u64, u64, Vec<&'s Sample>) {
        let from = expect.after_ms;
        let to = expect.within_ms.map_or(u64::MAX, |within| from + within);
        let samples = (self.log.samples.iter())
            .filter(|s| s.at_ms >= from && s.at_ms <= to)
            .collect();
        (from, to, samples)
    }

    fn describe(&self, sample: &Sample, group: &str) -> String {
        match sample.groups.get(group) {
            Some(at) => {
                let primaries: Vec<String> = (at.primaries.iter())
                    .map(|p| p.map_or_else(|| "none".to_string(), |id| self.name(id)))
                    .collect();
                format!(
                    "at t={} it ran fully on {}, partly on {}, primary {}",
                    fmt_ms(sample.at_ms),
                    self.names(&at.full),
                    self.names(&at.any),
                    if primaries.is_empty() {
                        "-".into()
                    } else {
                        primaries.join(",")
                    }
                )
            }
            None => format!("at t={} the group did not exist", fmt_ms(sample.at_ms)),
        }
    }

    fn window_text(from: u64, to: u64) -> String {
        match to {
            u64::MAX => format!("from {} to the end", fmt_ms(from)),
            to => format!("between {} and {}", fmt_ms(from), fmt_ms(to)),
        }
    }

    fn some_sample(
        &self,
        expect: &Expect,
        group: &str,
        ok: impl Fn(&tandem_sim::script::GroupSample) -> bool,
        what: &str,
    ) -> Row {
        let (from, to, samples) = self.window(expect);
        let found = samples
            .iter()
            .find(|s| s.groups.get(group).is_some_and(&ok));
        match (found, samples.last()) {
            (Some(sample), _) => row(true, self.describe(sample, group)),
            (None, Some(last)) => row(
                false,
                format!(
                    "never {what} {}; last: {}",
                    Self::window_text(from, to),
                    self.describe(last, group)
                ),
            ),
            (None, None) => row(
                false,
                format!(
                    "no sample {} (the run ended first)",
                    Self::window_text(from, to)
                ),
            ),
        }
    }

    fn every_sample(&self, expect: &Expect, group: &str, id: NodeId, node: &str) -> Row {
        let (from, to, samples) = self.window(expect);
        let bad = samples
            .iter()
            .find(|s| !s.groups.get(group).is_some_and(|g| g.runs_only_on(id)));
        match (bad, samples.len()) {
            (_, 0) => no_sample(from, to),
            (Some(sample), _) => row(
                false,
                format!("left {node}: {}", self.describe(sample, group)),
            ),
            (None, count) => row(
                true,
                format!(
                    "on {node} only in all {count} samples {}",
                    Self::window_text(from, to)
                ),
            ),
        }
    }

    fn never_on(&self, expect: &Expect, group: &str, id: NodeId, node: &str) -> Row {
        let (from, to, samples) = self.window(expect);
        let bad = samples
            .iter()
            .find(|s| s.groups.get(group).is_some_and(|g| g.any.contains(&id)));
        match (bad, samples.len()) {
            (_, 0) => no_sample(from, to),
            (Some(sample), _) => row(
                false,
                format!("ran on {node}: {}", self.describe(sample, group)),
            ),
            (None, count) => row(
                true,
                format!(
                    "not on {node} in any of {count} samples {}",
                    Self::window_text(from, to)
                ),
            ),
        }
    }

    fn command(&self, label: &str, refused: Option<Option<&str>>) -> Row {
        let Some(step) = self
            .scenario
            .steps
            .iter()
            .find(|s| s.label.as_deref() == Some(label))
        else {
            return row(false, format!("no step labelled {label:?}"));
        };
        let answer = self
            .log
            .commands
            .get(&step.number)
            .map(|state| match state {
                CommandState::Done(text) => Answer::Done(text),
                CommandState::Refused(why) => Answer::Refused(why),
                CommandState::Pending => Answer::Pending,
            });
        let (pass, detail) = crate::scenario::command_verdict(answer, refused);
        row(pass, detail)
    }

    fn legs(&self, expect: &Expect, volume: Option<&str>) -> Row {
        let (from, to, samples) = self.window(expect);
        let converged = |sample: &Sample| {
            !sample.legs.is_empty()
                && (sample.legs.iter())
                    .filter(|(name, _)| volume.is_none_or(|v| v == name.as_str()))
                    .all(|(_, legs)| {
                        legs.iter()
                            .all(|leg| leg.state == tandem_core::volume::LegState::UpToDate)
                    })
        };
        let describe = |sample: &Sample| {
            let legs: Vec<String> = (sample.legs.iter())
                .flat_map(|(name, legs)| {
                    legs.iter()
                        .map(move |leg| format!("{name}@{:?}:{}", leg.nodes, leg.state.as_str()))
                })
                .collect();
            format!("at t={}: {}", fmt_ms(sample.at_ms), legs.join(" "))
        };
        let behind = (self.log.samples.iter())
            .filter(|s| s.at_ms < from && !converged(s))
            .count();
        let before = match behind {
            0 => "no leg fell behind before the window".to_string(),
            n => format!("a leg was behind in {n} samples before the window"),
        };
        match (samples.iter().find(|s| converged(s)), samples.last()) {
            (Some(sample), _) => row(true, format!("all UpToDate {}; {before}", describe(sample))),
            (None, Some(last)) => row(
                false,
                format!(
                    "not all UpToDate {}; last {}",
                    Self::window_text(from, to),
                    describe(last)
                ),
            ),
            (None, None) => row(false, format!("no sample {}", Self::window_text(from, to))),
        }
    }
}

/// Prints (or collects) one line per step as it happens.
pub type Echo = tandem_sim::script::Echo;
