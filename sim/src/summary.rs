//! The soak summary: totals over many seeds, printed as a table by the `tandem-sim` binary.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::checkers::Violation;
use crate::faults::FaultKind;
use crate::world::{GroupStats, RunReport};

/// Totals over the seeds run so far.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    /// (seed, headline) of every failed seed.
    pub failures: Vec<(u64, String)>,
    pub faults: BTreeMap<FaultKind, u64>,
    pub leaders_elected: u64,
    pub entries_committed: u64,
    pub proposals_committed: u64,
    pub proposals_unanswered: u64,
    pub joins: u64,
    pub removals: u64,
    pub restarts: u64,
    pub frames_sent: u64,
    pub frames_lost: u64,
    pub events: u64,
    pub sim_ms: u64,
    pub max_recovery_ms: u64,
    pub wall: Duration,
    /// Failed seeds per broken rule.
    pub rules: BTreeMap<&'static str, u64>,
    /// Seeds that ran resource groups, per layout.
    pub layouts: BTreeMap<&'static str, u64>,
    /// Group totals over the seeds that passed.
    pub groups: GroupStats,
}

impl Summary {
    pub fn add(&mut self, report: &RunReport) {
        self.seeds += 1;
        for (kind, count) in &report.faults {
            *self.faults.entry(*kind).or_default() += count;
        }
        self.leaders_elected += report.leaders_elected as u64;
        self.entries_committed += report.committed_index;
        self.proposals_committed += report.work.committed;
        self.proposals_unanswered += report.work.unanswered;
        self.joins += report.work.joins;
        self.removals += report.work.removals;
        self.restarts += report.restarts;
        self.frames_sent += report.net.sent;
        self.frames_lost += report.net.lost + report.net.partitioned;
        self.events += report.events;
        self.sim_ms += report.sim_ms;
        self.max_recovery_ms = self.max_recovery_ms.max(report.recovery_ms);
        if let Some(layout) = report.layout {
            *self.layouts.entry(layout.name()).or_default() += 1;
        }
        let (total, run) = (&mut self.groups, &report.groups);
        total.ops += run.ops;
        total.ops_failed += run.ops_failed;
        total.hangs += run.hangs;
        total.crashes += run.crashes;
        total.hand_starts += run.hand_starts;
        total.operator_actions += run.operator_actions;
        total.proposals += run.proposals;
        total.started += run.started;
        total.self_fenced += run.self_fenced;
        total.resyncs += run.resyncs;
        total.settled_running += run.settled_running;
        total.settled_idle += run.settled_idle;
        total.hand_copies_left += run.hand_copies_left;
        total.settle_ms = total.settle_ms.max(run.settle_ms);
    }

    /// Records a failed seed by its headline and the rule it broke.
    pub fn fail(&mut self, seed: u64, headline: String, violation: &Violation) {
        self.seeds += 1;
        self.failures.push((seed, headline));
        *self.rules.entry(violation.rule()).or_default() += 1;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.wall.as_secs_f64().max(1e-9);
        let row = |f: &mut fmt::Formatter<'_>, name: &str, value: String| {
            writeln!(f, "  {name:<34} {value:>14}")
        };
        writeln!(f, "tandem-sim summary")?;
        row(f, "seeds run", self.seeds.to_string())?;
        row(f, "failures", self.failures.len().to_string())?;
        row(f, "wall time (s)", format!("{secs:.1}"))?;
        row(
            f,
            "seeds per second",
            format!("{:.2}", self.seeds as f64 / secs),
        )?;
        row(f, "simulated time (s)", (self.sim_ms / 1000).to_string())?;
        row(f, "events", self.events.to_string())?;
        row(
            f,
            "leaders elected (terms)",
            self.leaders_elected.to_string(),
        )?;
        row(f, "entries committed", self.entries_committed.to_string())?;
        row(
            f,
            "proposals committed",
            self.proposals_committed.to_string(),
        )?;
        row(
            f,
            "proposals unanswered",
            self.proposals_unanswered.to_string(),
        )?;
        row(
            f,
            "nodes joined / removed",
            format!("{} / {}", self.joins, self.removals),
        )?;
        row(f, "process restarts", self.restarts.to_string())?;
        row(
            f,
            "frames sent / dropped",
            format!("{} / {}", self.frames_sent, self.frames_lost),
        )?;
        row(
            f,
            "slowest recovery after heal (ms)",
            self.max_recovery_ms.to_string(),
        )?;
        if !self.layouts.is_empty() {
            let g = &self.groups;
            let layouts: Vec<String> = self
                .layouts
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            writeln!(f, "  resource groups (seeds that passed):")?;
            writeln!(f, "    layouts: {}", layouts.join(", "))?;
            let row = |f: &mut fmt::Formatter<'_>, name: &str, value: String| {
                writeln!(f, "    {name:<32} {value:>14}")
            };
            row(f, "resource operations run", g.ops.to_string())?;
            row(
                f,
                "operations failed / hung",
                format!("{} / {}", g.ops_failed, g.hangs),
            )?;
            row(
                f,
                "crashed / started by hand",
                format!("{} / {}", g.crashes, g.hand_starts),
            )?;
            row(f, "operator group actions", g.operator_actions.to_string())?;
            row(f, "agent and placer proposals", g.proposals.to_string())?;
            row(
                f,
                "groups started / self-fenced",
                format!("{} / {}", g.started, g.self_fenced),
            )?;
            row(f, "legs resynced (stand-in)", g.resyncs.to_string())?;
            row(
                f,
                "settled: running / idle",
                format!("{} / {}", g.settled_running, g.settled_idle),
            )?;
            row(
                f,
                "hand-started copies left",
                g.hand_copies_left.to_string(),
            )?;
            row(f, "slowest settle after heal (ms)", g.settle_ms.to_string())?;
        }
        if !self.rules.is_empty() {
            writeln!(f, "  failed seeds by rule:")?;
            for (rule, count) in &self.rules {
                writeln!(f, "    {rule:<50} {count:>6}")?;
            }
        }
        writeln!(f, "  faults injected:")?;
        for kind in FaultKind::ALL {
            let count = self.faults.get(&kind).copied().unwrap_or(0);
            writeln!(f, "    {:<32} {count:>14}", kind.name())?;
        }
        for (_, failure) in &self.failures {
            writeln!(f, "FAILED {failure}")?;
        }
        Ok(())
    }
}
