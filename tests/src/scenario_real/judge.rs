//! The verdict on each expectation of a scenario run against real daemons, with the same
//! semantics as the simulator runner's (`harness/src/sim_runner.rs`): the same windows, "some
//! instant" and "every instant" over the samples in the window, the same failure when a
//! window holds no sample, the same wording of the details. Only the observations differ:
//! samples of real state (`observe`), real writes read back (`workload`), the real CLI's
//! answers, and for `one_writer` what a real host can show instead of the simulator's
//! checkers (see [`Judge::one_writer`]).
//!
//! Exists apart from the runner so that the judging is pure (records in, rows out) and its
//! own tests can feed it records of a run that went wrong.

use std::collections::BTreeMap;

use tandem_harness::scenario::{fmt_ms, Answer, Check, Expect, Scenario};
use tandem_harness::sim_runner::Row;

use super::observe::{GroupAt, Sample};
use super::workload::{WriteRecord, WriteState};

/// What became of an operator command (the simulator's `CommandState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandState {
    /// No answer within the runner's limit.
    Pending,
    Done(String),
    Refused(String),
}

/// Everything a run recorded, in scenario time.
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub samples: Vec<Sample>,
    pub writes: Vec<WriteRecord>,
    /// Per acknowledged write (by volume and version): the nodes whose leg lacks it at the end.
    pub missing: BTreeMap<(String, u64), Vec<String>>,
    /// By step number.
    pub commands: BTreeMap<usize, CommandState>,
    /// Acknowledged writes from a node after another node's promotion (chaos run's check).
    pub two_writers: Vec<String>,
    /// The scenario's t = 0 in Unix ms.
    pub t0_unix_ms: u64,
}

pub struct Judge<'a> {
    pub scenario: &'a Scenario,
    pub records: &'a Records,
}

fn row(pass: bool, detail: String) -> Row {
    Row {
        what: String::new(),
        pass,
        detail,
    }
}

fn window_text(from: u64, to: u64) -> String {
    match to {
        u64::MAX => format!("from {} to the end", fmt_ms(from)),
        to => format!("between {} and {}", fmt_ms(from), fmt_ms(to)),
    }
}

fn no_sample(from: u64, to: u64) -> Row {
    row(
        false,
        format!("no sample {} (the run ended first)", window_text(from, to)),
    )
}

fn names(nodes: &[String]) -> String {
    if nodes.is_empty() {
        "nowhere".into()
    } else {
        nodes.join(" and ")
    }
}

impl Judge<'_> {
    /// One row per `[[expect]]`.
    pub fn rows(&self) -> Vec<Row> {
        (self.scenario.expects.iter())
            .map(|expect| Row {
                what: expect.to_string(),
                ..self.expect(expect)
            })
            .collect()
    }

    fn expect(&self, expect: &Expect) -> Row {
        match &expect.check {
            Check::NoLostWrites => self.no_lost_writes(),
            Check::OneWriter => self.one_writer(),
            Check::GroupRunsOn { group, node } => self.some_sample(
                expect,
                group,
                |s| s.runs_only_on(node),
                &format!("entirely on {node} only"),
            ),
            Check::GroupStaysOn { group, node } => self.every_sample(expect, group, node),
            Check::GroupNeverOn { group, node } => self.never_on(expect, group, node),
            Check::GroupRuns { group } => self.some_sample(
                expect,
                group,
                |s| s.full.len() == 1 && s.runs_only_on(&s.full[0]),
                "entirely on one node",
            ),
            Check::Refused { step, contains } => self.command(step, Some(contains.as_deref())),
            Check::Accepted { step } => self.command(step, None),
            Check::LegsConverge { volume } => self.legs(expect, volume.as_deref()),
        }
    }

    fn no_lost_writes(&self) -> Row {
        let writes = &self.records.writes;
        let acked: Vec<&WriteRecord> = (writes.iter())
            .filter(|w| w.state == WriteState::Acknowledged)
            .collect();
        let in_flight = writes
            .iter()
            .filter(|w| w.state == WriteState::InFlight)
            .count();
        let failed = writes.len() - acked.len() - in_flight;
        let lost: Vec<String> = (acked.iter())
            .filter_map(|w| {
                let missing = self.records.missing.get(&(w.volume.clone(), w.version))?;
                Some(format!(
                    "{} write {} (block {}, sent t={}) missing on {}",
                    w.volume,
                    w.version,
                    w.block,
                    fmt_ms(w.sent_unix_ms.saturating_sub(self.records.t0_unix_ms)),
                    names(missing)
                ))
            })
            .collect();
        let (pass, detail) = tandem_harness::scenario::lost_writes_verdict(
            acked.len(),
            in_flight,
            failed,
            &lost,
            "every acknowledged write read back from every leg",
        );
        row(pass, detail)
    }

    /// Never two nodes running a group at once (a node seen running it before and after
    /// another node was seen running it), never a node running a group whose volume's
    /// committed primary is another node (in two samples in a row: a switchover between the
    /// reads of one sample is not one), and no write acknowledged by a node after another
    /// node's promotion (the chaos run's two-writer check over the writer's records).
    fn one_writer(&self) -> Row {
        let mut broken = Vec::new();
        let mut moves = 0;
        let mut last: BTreeMap<&str, String> = BTreeMap::new();
        let mut mismatch_before: BTreeMap<&str, bool> = BTreeMap::new();
        for sample in &self.records.samples {
            for (group, at) in &sample.groups {
                if let Some((a, b)) = &at.overlap {
                    broken.push(format!(
                        "at t={} {group} ran on {a} and {b}",
                        fmt_ms(sample.at_ms)
                    ));
                }
                let mismatch = holder_not_primary(at);
                let twice = mismatch_before.get(group.as_str()) == Some(&true);
                mismatch_before.insert(group, mismatch.is_some());
                if let Some(holder) = mismatch.filter(|_| twice) {
                    broken.push(format!(
                        "at t={} {group} ran on {holder} while its volume's primary was another node",
                        fmt_ms(sample.at_ms)
                    ));
                }
                if let [node] = &at.full[..] {
                    if last
                        .insert(group, node.clone())
                        .is_some_and(|before| before != *node)
                    {
                        moves += 1;
                    }
                }
            }
        }
        broken.extend(self.records.two_writers.iter().cloned());
        match broken.first() {
            Some(first) => row(
                false,
                format!("broken {first} ({} finding(s) in all)", broken.len()),
            ),
            None => row(
                true,
                format!(
                    "never two nodes running a group nor a primary other than its holder \
                     ({} samples), no write acknowledged by a deposed primary; {moves} \
                     hand-over(s) seen",
                    self.records.samples.len()
                ),
            ),
        }
    }

    fn window(&self, expect: &Expect) -> (u64, u64, Vec<&Sample>) {
        let from = expect.after_ms;
        let to = expect.within_ms.map_or(u64::MAX, |within| from + within);
        let samples = (self.records.samples.iter())
            .filter(|s| s.at_ms >= from && s.end_ms <= to)
            .collect();
        (from, to, samples)
    }

    fn describe(sample: &Sample, group: &str) -> String {
        match sample.groups.get(group) {
            Some(at) => {
                let primaries: Vec<String> = (at.primaries.iter())
                    .map(|p| p.clone().unwrap_or_else(|| "none".into()))
                    .collect();
                format!(
                    "at t={} it ran fully on {}, partly on {}, primary {}",
                    fmt_ms(sample.at_ms),
                    names(&at.full),
                    names(&at.any),
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

    fn some_sample(
        &self,
        expect: &Expect,
        group: &str,
        ok: impl Fn(&GroupAt) -> bool,
        what: &str,
    ) -> Row {
        let (from, to, samples) = self.window(expect);
        let found = samples
            .iter()
            .find(|s| s.groups.get(group).is_some_and(&ok));
        match (found, samples.last()) {
            (Some(sample), _) => row(true, Self::describe(sample, group)),
            (None, Some(last)) => row(
                false,
                format!(
                    "never {what} {}; last: {}",
                    window_text(from, to),
                    Self::describe(last, group)
                ),
            ),
            (None, None) => no_sample(from, to),
        }
    }

    fn every_sample(&self, expect: &Expect, group: &str, node: &str) -> Row {
        let (from, to, samples) = self.window(expect);
        let bad =
            (samples.iter()).find(|s| !s.groups.get(group).is_some_and(|g| g.runs_only_on(node)));
        match (bad, samples.len()) {
            (_, 0) => no_sample(from, to),
            (Some(sample), _) => row(
                false,
                format!("left {node}: {}", Self::describe(sample, group)),
            ),
            (None, count) => row(
                true,
                format!(
                    "on {node} only in all {count} samples {}",
                    window_text(from, to)
                ),
            ),
        }
    }

    fn never_on(&self, expect: &Expect, group: &str, node: &str) -> Row {
        let (from, to, samples) = self.window(expect);
        let bad = (samples.iter()).find(|s| {
            s.groups
                .get(group)
                .is_some_and(|g| g.any.iter().any(|n| n == node))
        });
        match (bad, samples.len()) {
            (_, 0) => no_sample(from, to),
            (Some(sample), _) => row(
                false,
                format!("ran on {node}: {}", Self::describe(sample, group)),
            ),
            (None, count) => row(
                true,
                format!(
                    "not on {node} in any of {count} samples {}",
                    window_text(from, to)
                ),
            ),
        }
    }

    fn command(&self, label: &str, refused: Option<Option<&str>>) -> Row {
        let Some(step) = (self.scenario.steps.iter()).find(|s| s.label.as_deref() == Some(label))
        else {
            return row(false, format!("no step labelled {label:?}"));
        };
        let answer = self
            .records
            .commands
            .get(&step.number)
            .map(|state| match state {
                CommandState::Done(text) => Answer::Done(text),
                CommandState::Refused(why) => Answer::Refused(why),
                CommandState::Pending => Answer::Pending,
            });
        let (pass, detail) = tandem_harness::scenario::command_verdict(answer, refused);
        row(pass, detail)
    }

    fn legs(&self, expect: &Expect, volume: Option<&str>) -> Row {
        let (from, to, samples) = self.window(expect);
        let converged = |sample: &Sample| {
            !sample.legs.is_empty()
                && (sample.legs.iter())
                    .filter(|(name, _)| volume.is_none_or(|v| v == name.as_str()))
                    .all(|(_, legs)| {
                        !legs.is_empty() && legs.iter().all(|leg| leg.state == "UpToDate")
                    })
        };
        let describe = |sample: &Sample| {
            let legs: Vec<String> = (sample.legs.iter())
                .flat_map(|(name, legs)| {
                    (legs.iter()).map(move |leg| format!("{name}@{:?}:{}", leg.nodes, leg.state))
                })
                .collect();
            format!("at t={}: {}", fmt_ms(sample.at_ms), legs.join(" "))
        };
        let behind = (self.records.samples.iter())
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
                    window_text(from, to),
                    describe(last)
                ),
            ),
            (None, None) => row(false, format!("no sample {}", window_text(from, to))),
        }
    }
}

/// The node running the group fully whose volume's committed primary is another node.
fn holder_not_primary(at: &GroupAt) -> Option<String> {
    let [node] = &at.full[..] else {
        return None;
    };
    let other = at
        .primaries
        .iter()
        .any(|p| p.as_ref().is_some_and(|p| p != node));
    other.then(|| node.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        let text = r#"
name = "t"
description = "t"
layout = "active-standby"
duration = "10s"
[cluster]
nodes = ["a", "b"]
witnesses = ["w"]
[[step]]
at = "0s"
do = "write"
[[expect]]
check = "group_stays_on"
group = "g1"
node = "a"
[[expect]]
check = "one_writer"
[[expect]]
check = "no_lost_writes"
"#;
        tandem_harness::parse("t.toml", text).expect("a valid scenario")
    }

    fn sample(at_ms: u64, full: &[&str], primary: &str) -> Sample {
        let nodes: Vec<String> = full.iter().map(|n| n.to_string()).collect();
        let at = GroupAt {
            full: nodes.clone(),
            any: nodes,
            primaries: vec![Some(primary.to_string())],
            overlap: None,
        };
        Sample {
            at_ms,
            end_ms: at_ms + 50,
            groups: BTreeMap::from([("g1".to_string(), at)]),
            legs: BTreeMap::new(),
        }
    }

    fn write(version: u64, state: WriteState) -> WriteRecord {
        WriteRecord {
            step: 1,
            volume: "v1".into(),
            version,
            block: version - 1,
            node: Some("a".into()),
            sent_unix_ms: 0,
            acked_unix_ms: None,
            state,
        }
    }

    #[test]
    fn a_group_seen_on_the_wrong_node_fails_stays_on_and_a_missing_write_fails() {
        let scenario = scenario();
        let mut records = Records {
            samples: vec![sample(0, &["a"], "a"), sample(500, &["b"], "b")],
            writes: vec![
                write(1, WriteState::Acknowledged),
                write(2, WriteState::InFlight),
            ],
            ..Records::default()
        };
        records.missing.insert(("v1".into(), 1), vec!["b".into()]);
        let rows = Judge {
            scenario: &scenario,
            records: &records,
        }
        .rows();
        assert!(!rows[0].pass, "{rows:?}");
        assert!(
            rows[0]
                .detail
                .contains("left a: at t=500ms it ran fully on b"),
            "{rows:?}"
        );
        assert!(rows[1].pass, "{rows:?}");
        assert!(
            !rows[2].pass && rows[2].detail.contains("missing on b"),
            "{rows:?}"
        );
    }

    #[test]
    fn an_overlap_or_a_holder_that_is_not_primary_twice_breaks_one_writer() {
        let scenario = scenario();
        let mut overlapping = sample(100, &["a"], "a");
        overlapping.groups.get_mut("g1").expect("g1").overlap = Some(("a".into(), "b".into()));
        let records = Records {
            samples: vec![sample(0, &["a"], "a"), overlapping],
            ..Records::default()
        };
        let rows = Judge {
            scenario: &scenario,
            records: &records,
        }
        .rows();
        assert!(
            !rows[1].pass && rows[1].detail.contains("ran on a and b"),
            "{rows:?}"
        );
        // Once is a switchover between two reads; twice in a row is a second writer.
        let once = Records {
            samples: vec![sample(0, &["a"], "b"), sample(100, &["b"], "b")],
            ..Records::default()
        };
        assert!(
            Judge {
                scenario: &scenario,
                records: &once
            }
            .rows()[1]
                .pass
        );
        let twice = Records {
            samples: vec![sample(0, &["a"], "b"), sample(100, &["a"], "b")],
            ..Records::default()
        };
        assert!(
            !Judge {
                scenario: &scenario,
                records: &twice
            }
            .rows()[1]
                .pass
        );
    }
}
