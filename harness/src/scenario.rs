//! The scenario file: a named, timed list of faults, workload steps and expected outcomes, in
//! one TOML format (see `harness/README.md` for the reference).
//!
//! Why it exists: the same file must run in the simulator and against real daemons, so this
//! module knows nothing of either. It parses (unknown keys refused, with their line), checks
//! everything that can be checked without running (node, group and volume names, durations,
//! time order, what is broken before it is healed, what is down before it is restarted) and
//! resolves the steps into a [`Planned`] timeline of plain effects that a runner carries out
//! in order: `for = "5s"` becomes a later end, a pause's matching `resume` becomes its length,
//! a heal without a label ends exactly the faults in effect then, `count` writes become one
//! write each. Every error names the file, the line and the step or expectation.
//!
//! This file holds the types a runner uses; `check` turns the parsed TOML into them and
//! `timeline` walks the steps in time order to resolve them.

mod check;
mod timeline;

use std::fmt;
use std::path::Path;

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read it: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not this format (an unknown key, a missing one, a wrong type): the
    /// message from the TOML parser names the line and column.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}:{line}: {place}: {problem}")]
    Invalid {
        file: String,
        line: usize,
        /// `step 3 (do = "heal")`, `expect 2 (check = "refused")`, `cluster`...
        place: String,
        problem: String,
    },
}

/// The groups and volumes a cluster is set up with (a topology preset, DESIGN.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Volume `v1` on the first two data nodes; group `g1` on it prefers the first.
    ActiveStandby,
    /// Volumes `v1`, `v2` on the first two data nodes; `g1` prefers the first, `g2` the second.
    ActiveActive,
    /// Volume `v1` on the first three data nodes with `g1` on it; `g2` (no volume) prefers
    /// the third.
    ThreeLegs,
}

impl Layout {
    const ALL: [Layout; 3] = [
        Layout::ActiveStandby,
        Layout::ActiveActive,
        Layout::ThreeLegs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layout::ActiveStandby => "active-standby",
            Layout::ActiveActive => "active-active",
            Layout::ThreeLegs => "three-legs",
        }
    }

    /// Data nodes it needs.
    pub fn min_data_nodes(self) -> usize {
        match self {
            Layout::ThreeLegs => 3,
            _ => 2,
        }
    }

    pub fn groups(self) -> &'static [&'static str] {
        match self {
            Layout::ActiveStandby => &["g1"],
            _ => &["g1", "g2"],
        }
    }

    pub fn volumes(self) -> &'static [&'static str] {
        match self {
            Layout::ActiveActive => &["v1", "v2"],
            _ => &["v1"],
        }
    }
}

/// A parsed, checked scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub file: String,
    pub name: String,
    pub description: String,
    pub layout: Layout,
    /// Data nodes, in order (the layout's first, second... node).
    pub nodes: Vec<String>,
    pub witnesses: Vec<String>,
    /// How long the faults phase lasts; then every fault still in effect heals.
    pub duration_ms: u64,
    pub steps: Vec<Step>,
    pub expects: Vec<Expect>,
    /// The steps resolved into effects, in time order.
    pub plan: Vec<Planned>,
}

/// One `[[step]]` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based, in file order.
    pub number: usize,
    pub line: usize,
    pub at_ms: u64,
    pub label: Option<String>,
    pub action: Action,
}

/// What a step does (node names as in the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Kill {
        node: String,
        for_ms: Option<u64>,
    },
    Restart {
        node: String,
    },
    PowerOff {
        node: String,
        for_ms: Option<u64>,
    },
    PowerOn {
        node: String,
    },
    Partition {
        sides: Vec<Vec<String>>,
        for_ms: Option<u64>,
    },
    Isolate {
        node: String,
        for_ms: Option<u64>,
    },
    CutOneWay {
        from: String,
        to: String,
        for_ms: Option<u64>,
    },
    Heal {
        label: Option<String>,
    },
    Pause {
        node: String,
        for_ms: Option<u64>,
    },
    Resume {
        node: String,
    },
    SlowDisk {
        node: String,
        by_ms: u64,
        for_ms: Option<u64>,
    },
    FillDisk {
        node: String,
    },
    FreeDisk {
        node: String,
    },
    Write {
        volume: String,
        count: u32,
        every_ms: u64,
    },
    Operator {
        command: OperatorCommand,
        on: Option<String>,
    },
}

/// An operator command, as typed at the CLI (DESIGN.md §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorCommand {
    NodeStandby {
        node: String,
    },
    NodeOnline {
        node: String,
    },
    NodeRemove {
        node: String,
    },
    VolumePromote {
        volume: String,
        node: String,
        force: bool,
    },
    VolumeDemote {
        volume: String,
    },
    GroupMove {
        group: String,
        node: String,
    },
    GroupClear {
        group: String,
    },
    GroupEnable {
        group: String,
    },
    GroupDisable {
        group: String,
    },
}

impl fmt::Display for OperatorCommand {
    /// The `tandem` command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorCommand::NodeStandby { node } => write!(f, "node standby {node}"),
            OperatorCommand::NodeOnline { node } => write!(f, "node online {node}"),
            OperatorCommand::NodeRemove { node } => write!(f, "node remove {node}"),
            OperatorCommand::VolumePromote {
                volume,
                node,
                force,
            } => {
                write!(f, "volume promote {volume} --node {node}")?;
                if *force {
                    write!(f, " --force")?;
                }
                Ok(())
            }
            OperatorCommand::VolumeDemote { volume } => write!(f, "volume demote {volume}"),
            OperatorCommand::GroupMove { group, node } => write!(f, "group move {group} {node}"),
            OperatorCommand::GroupClear { group } => write!(f, "group clear {group}"),
            OperatorCommand::GroupEnable { group } => write!(f, "group enable {group}"),
            OperatorCommand::GroupDisable { group } => write!(f, "group disable {group}"),
        }
    }
}

/// The operator commands a scenario may use.
pub const COMMANDS: [&str; 9] = [
    "node standby",
    "node online",
    "node remove",
    "volume promote",
    "volume demote",
    "group move",
    "group clear",
    "group enable",
    "group disable",
];

/// One `[[expect]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub number: usize,
    pub line: usize,
    /// The window the check looks at: from `after_ms`, for `within_ms` (to the end if none).
    pub after_ms: u64,
    pub within_ms: Option<u64>,
    pub check: Check,
}

/// What must be true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every acknowledged write is held by every node at the end.
    NoLostWrites,
    /// Never two nodes running a group, never a primary other than its holder.
    OneWriter,
    /// At some instant in the window the group runs entirely on `node` and nowhere else.
    GroupRunsOn { group: String, node: String },
    /// At every instant in the window the group runs entirely on `node` and nowhere else.
    GroupStaysOn { group: String, node: String },
    /// At no instant in the window does any resource of the group run on `node` (no false
    /// failover to it).
    GroupNeverOn { group: String, node: String },
    /// At some instant in the window the group runs entirely on one node.
    GroupRuns { group: String },
    /// The operator step labelled `step` was refused (its message containing `contains`).
    Refused {
        step: String,
        contains: Option<String>,
    },
    /// The operator step labelled `step` was carried out.
    Accepted { step: String },
    /// At some instant in the window every leg (of `volume`, or of every volume) is UpToDate.
    LegsConverge { volume: Option<String> },
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.check {
            Check::NoLostWrites => write!(f, "no acknowledged write lost")?,
            Check::OneWriter => write!(f, "one writer")?,
            Check::GroupRunsOn { group, node } => write!(f, "{group} runs on {node}")?,
            Check::GroupStaysOn { group, node } => write!(f, "{group} stays on {node}")?,
            Check::GroupNeverOn { group, node } => write!(f, "{group} never on {node}")?,
            Check::GroupRuns { group } => write!(f, "{group} runs")?,
            Check::Refused { step, .. } => write!(f, "step '{step}' refused")?,
            Check::Accepted { step } => write!(f, "step '{step}' accepted")?,
            Check::LegsConverge { volume: Some(v) } => write!(f, "legs of {v} converge")?,
            Check::LegsConverge { volume: None } => write!(f, "every leg converges")?,
        }
        let after = fmt_ms(self.after_ms);
        match self.within_ms {
            Some(within) => write!(f, " (from {after}, within {})", fmt_ms(within)),
            None if self.after_ms > 0 => write!(f, " (from {after})"),
            None => Ok(()),
        }
    }
}

/// One effect of the resolved timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at_ms: u64,
    /// The step it comes from.
    pub step: usize,
    /// One line for humans: `power_off a`, `end of step 3 (partition a | b w)`...
    pub what: String,
    pub effect: Effect,
}

/// What a runner does. Faults that last are named by the number of the step that began them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Kill {
        node: String,
    },
    PowerOff {
        node: String,
    },
    /// Start a killed process or power a machine on.
    Start {
        node: String,
    },
    /// Drop every frame on these directed (from, to) links until `EndFault`.
    Cut {
        fault: usize,
        kind: CutKind,
        links: Vec<(String, String)>,
    },
    Pause {
        node: String,
        ms: u64,
    },
    SlowDisk {
        fault: usize,
        node: String,
        by_ms: u64,
    },
    FillDisk {
        fault: usize,
        node: String,
    },
    EndFault {
        fault: usize,
    },
    Write {
        volume: String,
    },
    Operator {
        command: OperatorCommand,
        on: Option<String>,
    },
}

/// What kind of network cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutKind {
    Partition,
    Isolate,
    OneWay,
}

/// The faults phase lasts this long after the last step unless `duration` says otherwise.
const DEFAULT_TAIL_MS: u64 = 10_000;
/// At most this many writes per step, and this long a scenario.
const MAX_COUNT: u32 = 10_000;
const MAX_DURATION_MS: u64 = 3_600_000;

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text)
}

/// Parses and checks scenario `text` (named `file` in errors).
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let def: check::FileDef = toml::from_str(text).map_err(|error| ScenarioError::Parse {
        file: file.to_string(),
        message: error.to_string().trim_end().to_string(),
    })?;
    check::Checker { file, text }.scenario(def)
}

/// Formats milliseconds the way a scenario writes them.
pub fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "bad duration {text:?}: use a number with ms, s or m (\"500ms\", \"2s\", \"1.5s\", \"1m\")"
        )
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let ms = value * scale;
    if !ms.is_finite() || ms > MAX_DURATION_MS as f64 || ms.fract() != 0.0 {
        return Err(format!(
            "bad duration {text:?}: a whole number of milliseconds up to 1 hour"
        ));
    }
    Ok(ms as u64)
}

/// The step's `do`.
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Kill { .. } => "kill",
        Action::Restart { .. } => "restart",
        Action::PowerOff { .. } => "power_off",
        Action::PowerOn { .. } => "power_on",
        Action::Partition { .. } => "partition",
        Action::Isolate { .. } => "isolate",
        Action::CutOneWay { .. } => "cut_one_way",
        Action::Heal { .. } => "heal",
        Action::Pause { .. } => "pause",
        Action::Resume { .. } => "resume",
        Action::SlowDisk { .. } => "slow_disk",
        Action::FillDisk { .. } => "fill_disk",
        Action::FreeDisk { .. } => "free_disk",
        Action::Write { .. } => "write",
        Action::Operator { .. } => "operator",
    }
}

/// One line for a step: `power_off a for 3s`, `partition a | b w`...
pub fn describe(step: &Step) -> String {
    let name = action_name(&step.action);
    let lasting =
        |for_ms: &Option<u64>| for_ms.map_or_else(String::new, |ms| format!(" for {}", fmt_ms(ms)));
    match &step.action {
        Action::Kill { node, for_ms }
        | Action::PowerOff { node, for_ms }
        | Action::Isolate { node, for_ms } => {
            format!("{name} {node}{}", lasting(for_ms))
        }
        Action::Pause { node, for_ms } => format!("{name} {node}{}", lasting(for_ms)),
        Action::Restart { node } | Action::PowerOn { node } | Action::Resume { node } => {
            format!("{name} {node}")
        }
        Action::FillDisk { node } | Action::FreeDisk { node } => format!("{name} {node}"),
        Action::Partition { sides, for_ms } => {
            let sides: Vec<String> = sides.iter().map(|side| side.join(" ")).collect();
            format!("{name} {}{}", sides.join(" | "), lasting(for_ms))
        }
        Action::CutOneWay { from, to, for_ms } => {
            format!("{name} {from} -> {to}{}", lasting(for_ms))
        }
        Action::Heal { label } => match label {
            Some(label) => format!("heal {label}"),
            None => "heal".to_string(),
        },
        Action::SlowDisk {
            node,
            by_ms,
            for_ms,
        } => {
            format!("{name} {node} by {}{}", fmt_ms(*by_ms), lasting(for_ms))
        }
        Action::Write {
            volume,
            count,
            every_ms,
        } if *count > 1 => {
            format!("write {count} to {volume} every {}", fmt_ms(*every_ms))
        }
        Action::Write { volume, .. } => format!("write to {volume}"),
        Action::Operator { command, on } => match on {
            Some(on) => format!("operator on {on}: tandem {command}"),
            None => format!("operator: tandem {command}"),
        },
    }
}

/// The verdict of `no_lost_writes`, the same for every runner: `acked` writes, of which
/// `lost` were not found everywhere (one line each), `in_flight` never answered and `failed`
/// refused; `everywhere` says what a pass means for this runner.
pub fn lost_writes_verdict(
    acked: usize,
    in_flight: usize,
    failed: usize,
    lost: &[String],
    everywhere: &str,
) -> (bool, String) {
    let counts = format!(
        "{acked} acknowledged, {in_flight} never acknowledged (in flight at a fault), \
         {failed} not accepted"
    );
    if acked == 0 {
        return (
            false,
            format!("nothing to judge: no write was acknowledged ({counts})"),
        );
    }
    if lost.is_empty() {
        (true, format!("{counts}; {everywhere}"))
    } else {
        (false, format!("LOST: {}; {counts}", lost.join("; ")))
    }
}

/// How an operator step was answered, as every runner records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    Done(&'a str),
    Refused(&'a str),
    /// Sent, never answered.
    Pending,
}

/// The verdict of `accepted` (`refused: None`) or `refused` (`Some(contains)`: the refusal
/// must contain that text, if given) for a step answered `answer` (`None`: it never ran).
pub fn command_verdict(
    answer: Option<Answer<'_>>,
    refused: Option<Option<&str>>,
) -> (bool, String) {
    match (answer, refused) {
        (Some(Answer::Refused(why)), Some(Some(text))) if !why.contains(text) => (
            false,
            format!("refused, but the message lacks {text:?}: {why}"),
        ),
        (Some(Answer::Refused(why)), Some(_)) => (true, format!("refused: {why}")),
        (Some(Answer::Done(text)), None) => (true, format!("done: {text}")),
        (Some(Answer::Done(text)), Some(_)) => (false, format!("NOT refused: done: {text}")),
        (Some(Answer::Refused(why)), None) => (false, format!("refused: {why}")),
        (Some(Answer::Pending), _) => (false, "never answered".into()),
        (None, _) => (false, "the step never ran".into()),
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    #[test]
    fn command_verdicts_follow_what_the_step_expected() {
        let refused = Some(Answer::Refused("node 1 is primary of volume v1"));
        let done = Some(Answer::Done("group g1 pinned"));
        assert!(command_verdict(refused, Some(Some("primary of volume"))).0);
        assert!(!command_verdict(refused, Some(Some("witness"))).0);
        assert!(command_verdict(refused, Some(None)).0);
        assert!(!command_verdict(refused, None).0);
        assert!(command_verdict(done, None).0);
        assert!(!command_verdict(done, Some(None)).0);
        assert!(!command_verdict(Some(Answer::Pending), None).0);
        assert_eq!(command_verdict(None, None).1, "the step never ran");
    }

    #[test]
    fn lost_writes_verdicts_need_an_acknowledged_write_and_no_loss() {
        assert!(lost_writes_verdict(3, 1, 0, &[], "fine").0);
        assert!(!lost_writes_verdict(0, 1, 2, &[], "fine").0);
        let lost = ["write 7 missing on b".to_string()];
        let (pass, detail) = lost_writes_verdict(3, 0, 0, &lost, "fine");
        assert!(
            !pass && detail.starts_with("LOST: write 7 missing on b"),
            "{detail}"
        );
    }
}
