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

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

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

/// The file as written. Every key is known; anything else is refused by the parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    name: String,
    description: String,
    layout: Spanned<String>,
    duration: Option<Spanned<String>>,
    cluster: Spanned<ClusterDef>,
    #[serde(default)]
    step: Vec<Spanned<StepDef>>,
    #[serde(default)]
    expect: Vec<Spanned<ExpectDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterDef {
    nodes: Vec<String>,
    #[serde(default)]
    witnesses: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StepDef {
    at: String,
    #[serde(rename = "do")]
    action: String,
    label: Option<String>,
    node: Option<String>,
    from: Option<String>,
    to: Option<String>,
    sides: Option<Vec<Vec<String>>>,
    #[serde(rename = "for")]
    lasting: Option<String>,
    by: Option<String>,
    count: Option<u32>,
    every: Option<String>,
    volume: Option<String>,
    command: Option<String>,
    group: Option<String>,
    force: Option<bool>,
    on: Option<String>,
    /// `heal`: the label of the fault to end.
    fault: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDef {
    check: String,
    group: Option<String>,
    node: Option<String>,
    volume: Option<String>,
    step: Option<String>,
    contains: Option<String>,
    after: Option<String>,
    within: Option<String>,
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
    let def: FileDef = toml::from_str(text).map_err(|error| ScenarioError::Parse {
        file: file.to_string(),
        message: error.to_string().trim_end().to_string(),
    })?;
    Checker { file, text }.scenario(def)
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

/// Checks a parsed file and builds the [`Scenario`].
struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn error(
        &self,
        line: usize,
        place: impl Into<String>,
        problem: impl Into<String>,
    ) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_string(),
            line,
            place: place.into(),
            problem: problem.into(),
        }
    }

    fn scenario(&self, def: FileDef) -> Result<Scenario, ScenarioError> {
        let layout = self.layout(&def.layout)?;
        let cluster_line = self.line(def.cluster.span());
        let cluster = def.cluster.into_inner();
        let names = Names::new(self, cluster_line, &cluster, layout)?;
        let steps = self.steps(&names, def.step)?;
        let last = steps.last().map_or(0, |step| step.at_ms);
        let duration_ms = match &def.duration {
            Some(text) => self.duration(text, &steps)?,
            None => last + DEFAULT_TAIL_MS,
        };
        let plan = Timeline::new(self, &steps, names.all()).resolve()?;
        self.writes_in_time(&plan, &steps, duration_ms)?;
        let mut expects = Vec::new();
        for (index, spanned) in def.expect.into_iter().enumerate() {
            let line = self.line(spanned.span());
            let place = format!("expect {}", index + 1);
            let expect = ExpectChecker {
                names: &names,
                steps: &steps,
                def: spanned.into_inner(),
            }
            .expect((index + 1, line), duration_ms)
            .map_err(|problem| self.error(line, place, problem))?;
            expects.push(expect);
        }
        if expects.is_empty() {
            return Err(self.error(1, "expect", "a scenario needs at least one [[expect]]"));
        }
        Ok(Scenario {
            file: self.file.to_string(),
            name: def.name,
            description: def.description.trim().to_string(),
            layout,
            nodes: cluster.nodes,
            witnesses: cluster.witnesses,
            duration_ms,
            steps,
            expects,
            plan,
        })
    }

    fn layout(&self, text: &Spanned<String>) -> Result<Layout, ScenarioError> {
        let found = Layout::ALL
            .into_iter()
            .find(|layout| layout.name() == text.get_ref());
        found.ok_or_else(|| {
            let problem = format!(
                "unknown layout {:?}; known: active-standby, active-active, three-legs",
                text.get_ref()
            );
            self.error(self.line(text.span()), "layout", problem)
        })
    }

    fn steps(
        &self,
        names: &Names,
        defs: Vec<Spanned<StepDef>>,
    ) -> Result<Vec<Step>, ScenarioError> {
        let mut steps: Vec<Step> = Vec::new();
        for (index, spanned) in defs.into_iter().enumerate() {
            let checker = StepChecker {
                checker: self,
                names,
                number: index + 1,
                line: self.line(spanned.span()),
            };
            let previous = steps.last().map_or(0, |step| step.at_ms);
            steps.push(checker.step(spanned.into_inner(), previous)?);
        }
        Ok(steps)
    }

    /// Every write of a `count` must be sent before the faults phase ends.
    fn writes_in_time(
        &self,
        plan: &[Planned],
        steps: &[Step],
        duration_ms: u64,
    ) -> Result<(), ScenarioError> {
        let late = (plan.iter())
            .find(|p| matches!(p.effect, Effect::Write { .. }) && p.at_ms >= duration_ms);
        match late.and_then(|p| steps.get(p.step - 1).map(|step| (p, step))) {
            Some((planned, step)) => Err(self.error(
                step.line,
                format!("step {} (do = \"write\")", step.number),
                format!(
                    "{} would be sent at {}, not before the scenario's duration {}",
                    planned.what,
                    fmt_ms(planned.at_ms),
                    fmt_ms(duration_ms)
                ),
            )),
            None => Ok(()),
        }
    }

    /// `duration`, which must come after every step.
    fn duration(&self, text: &Spanned<String>, steps: &[Step]) -> Result<u64, ScenarioError> {
        let line = self.line(text.span());
        let ms = parse_duration(text.get_ref()).map_err(|e| self.error(line, "duration", e))?;
        match steps.iter().find(|step| step.at_ms >= ms) {
            Some(late) => Err(self.error(
                late.line,
                format!("step {}", late.number),
                format!(
                    "at {} is not before the scenario's duration {}",
                    fmt_ms(late.at_ms),
                    fmt_ms(ms)
                ),
            )),
            None => Ok(ms),
        }
    }
}

/// Checks one `[[expect]]`.
struct ExpectChecker<'a> {
    names: &'a Names,
    steps: &'a [Step],
    def: ExpectDef,
}

impl ExpectChecker<'_> {
    fn expect(self, (number, line): (usize, usize), duration_ms: u64) -> Result<Expect, String> {
        let def = &self.def;
        let duration = |key: &str, text: &Option<String>| match text {
            Some(text) => (parse_duration(text).map(Some)).map_err(|e| format!("{key}: {e}")),
            None => Ok(None),
        };
        // Legs can only converge once the faults heal: by default, judge from then on.
        let default_after = if def.check == "legs_converge" {
            duration_ms
        } else {
            0
        };
        let after_ms = duration("after", &def.after)?.unwrap_or(default_after);
        let within_ms = duration("within", &def.within)?;
        let (check, used) = self.check()?;
        let given = [
            ("group", def.group.is_some()),
            ("node", def.node.is_some()),
            ("volume", def.volume.is_some()),
            ("step", def.step.is_some()),
            ("contains", def.contains.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(key, set)| *set && !used.contains(key)) {
            return Err(format!("`{key}` does not apply to check {:?}", def.check));
        }
        Ok(Expect {
            number,
            line,
            after_ms,
            within_ms,
            check,
        })
    }

    /// The check, and the keys it uses besides `check`, `after` and `within`.
    fn check(&self) -> Result<(Check, &'static [&'static str]), String> {
        let def = &self.def;
        Ok(match def.check.as_str() {
            "no_lost_writes" => {
                let writes = (self.steps.iter()).any(|s| matches!(s.action, Action::Write { .. }));
                if !writes {
                    return Err("no_lost_writes needs at least one `write` step".into());
                }
                (Check::NoLostWrites, &[])
            }
            "one_writer" => (Check::OneWriter, &[]),
            "group_runs_on" => {
                let (group, node) = (self.group()?, self.node()?);
                (Check::GroupRunsOn { group, node }, &["group", "node"])
            }
            "group_stays_on" => {
                let (group, node) = (self.group()?, self.node()?);
                (Check::GroupStaysOn { group, node }, &["group", "node"])
            }
            "group_never_on" => {
                let (group, node) = (self.group()?, self.node()?);
                (Check::GroupNeverOn { group, node }, &["group", "node"])
            }
            "group_runs" => (
                Check::GroupRuns {
                    group: self.group()?,
                },
                &["group"],
            ),
            "refused" => {
                let (step, contains) = (self.operator_step()?, def.contains.clone());
                (Check::Refused { step, contains }, &["step", "contains"])
            }
            "accepted" => (
                Check::Accepted {
                    step: self.operator_step()?,
                },
                &["step"],
            ),
            "legs_converge" => {
                if let Some(volume) = &def.volume {
                    self.names.volume(volume)?;
                }
                let volume = def.volume.clone();
                (Check::LegsConverge { volume }, &["volume"])
            }
            other => {
                return Err(format!(
                    "unknown check {other:?}; known: no_lost_writes, one_writer, group_runs_on, \
                     group_stays_on, group_never_on, group_runs, refused, accepted, legs_converge"
                ))
            }
        })
    }

    fn group(&self) -> Result<String, String> {
        let group = self.def.group.clone().ok_or("needs `group`")?;
        self.names.group(&group).map(|_| group)
    }

    fn node(&self) -> Result<String, String> {
        let node = self.def.node.clone().ok_or("needs `node`")?;
        self.names.data_node(&node).map(|_| node)
    }

    /// `step`: the label of an operator step.
    fn operator_step(&self) -> Result<String, String> {
        let label = (self.def.step.clone()).ok_or("needs `step`: the label of an operator step")?;
        let found = (self.steps.iter()).find(|s| s.label.as_deref() == Some(label.as_str()));
        match found {
            Some(Step {
                action: Action::Operator { .. },
                ..
            }) => Ok(label),
            Some(step) => Err(format!(
                "step {} labelled {label:?} is not an operator step",
                step.number
            )),
            None => Err(format!("no step is labelled {label:?}")),
        }
    }
}

/// The names a scenario may use.
struct Names {
    nodes: Vec<String>,
    witnesses: Vec<String>,
    layout: Layout,
}

impl Names {
    fn new(
        checker: &Checker,
        line: usize,
        cluster: &ClusterDef,
        layout: Layout,
    ) -> Result<Names, ScenarioError> {
        let problem = |text: String| Err(checker.error(line, "cluster", text));
        let all: Vec<&String> = cluster.nodes.iter().chain(&cluster.witnesses).collect();
        for (index, name) in all.iter().enumerate() {
            let ok = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return problem(format!(
                    "node name {name:?}: use 1-32 letters, digits, '-' or '_'"
                ));
            }
            if all[..index].contains(name) {
                return problem(format!("node name {name:?} is used twice"));
            }
        }
        if !(2..=5).contains(&cluster.nodes.len()) {
            return problem(format!("2 to 5 data nodes, got {}", cluster.nodes.len()));
        }
        if cluster.nodes.len() < layout.min_data_nodes() {
            return problem(format!(
                "layout {} needs {} data nodes, got {}",
                layout.name(),
                layout.min_data_nodes(),
                cluster.nodes.len()
            ));
        }
        if cluster.witnesses.len() > 1 {
            return problem(format!(
                "at most one witness, got {}",
                cluster.witnesses.len()
            ));
        }
        Ok(Names {
            nodes: cluster.nodes.clone(),
            witnesses: cluster.witnesses.clone(),
            layout,
        })
    }

    fn node(&self, name: &str) -> Result<(), String> {
        if self.nodes.iter().chain(&self.witnesses).any(|n| n == name) {
            return Ok(());
        }
        Err(format!(
            "unknown node {name:?}; the cluster has {}",
            self.nodes
                .iter()
                .chain(&self.witnesses)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn data_node(&self, name: &str) -> Result<(), String> {
        self.node(name)?;
        if self.witnesses.iter().any(|w| w == name) {
            return Err(format!(
                "{name:?} is a witness: it runs no group and holds no leg"
            ));
        }
        Ok(())
    }

    fn group(&self, name: &str) -> Result<(), String> {
        let groups = self.layout.groups();
        if groups.contains(&name) {
            return Ok(());
        }
        Err(format!(
            "unknown group {name:?}; layout {} has {}",
            self.layout.name(),
            groups.join(", ")
        ))
    }

    fn volume(&self, name: &str) -> Result<(), String> {
        let volumes = self.layout.volumes();
        if volumes.contains(&name) {
            return Ok(());
        }
        Err(format!(
            "unknown volume {name:?}; layout {} has {}",
            self.layout.name(),
            volumes.join(", ")
        ))
    }

    fn all(&self) -> Vec<String> {
        self.nodes.iter().chain(&self.witnesses).cloned().collect()
    }
}

/// Checks one `[[step]]`.
struct StepChecker<'a> {
    checker: &'a Checker<'a>,
    names: &'a Names,
    number: usize,
    line: usize,
}

impl StepChecker<'_> {
    fn error(&self, action: &str, problem: impl Into<String>) -> ScenarioError {
        let place = format!("step {} (do = {action:?})", self.number);
        self.checker.error(self.line, place, problem)
    }

    fn step(&self, def: StepDef, previous_ms: u64) -> Result<Step, ScenarioError> {
        let kind = def.action.clone();
        let at_ms = parse_duration(&def.at).map_err(|e| self.error(&kind, format!("at: {e}")))?;
        if at_ms < previous_ms {
            return Err(self.error(
                &kind,
                format!(
                    "time goes backwards: at {} comes after a step at {}; list steps in time order",
                    fmt_ms(at_ms),
                    fmt_ms(previous_ms)
                ),
            ));
        }
        let label = def.label.clone();
        let action = self
            .action(def)
            .map_err(|problem| self.error(&kind, problem))?;
        Ok(Step {
            number: self.number,
            line: self.line,
            at_ms,
            label,
            action,
        })
    }

    fn action(&self, def: StepDef) -> Result<Action, String> {
        let mut keys = Keys::new(&def);
        let action = match def.action.as_str() {
            "kill" => Action::Kill {
                node: keys.node()?,
                for_ms: keys.lasting()?,
            },
            "restart" => Action::Restart { node: keys.node()? },
            "power_off" => Action::PowerOff {
                node: keys.node()?,
                for_ms: keys.lasting()?,
            },
            "power_on" => Action::PowerOn { node: keys.node()? },
            "partition" => Action::Partition {
                sides: self.sides(keys.sides()?)?,
                for_ms: keys.lasting()?,
            },
            "isolate" => Action::Isolate {
                node: keys.node()?,
                for_ms: keys.lasting()?,
            },
            "cut_one_way" => {
                let (from, to) = keys.endpoints()?;
                if from == to {
                    return Err(format!("from and to are both {from:?}"));
                }
                Action::CutOneWay {
                    from,
                    to,
                    for_ms: keys.lasting()?,
                }
            }
            "heal" => Action::Heal {
                label: keys.fault(),
            },
            "pause" => Action::Pause {
                node: keys.node()?,
                for_ms: keys.lasting()?,
            },
            "resume" => Action::Resume { node: keys.node()? },
            "slow_disk" => Action::SlowDisk {
                node: keys.node()?,
                by_ms: keys.by()?,
                for_ms: keys.lasting()?,
            },
            "fill_disk" => Action::FillDisk { node: keys.node()? },
            "free_disk" => Action::FreeDisk { node: keys.node()? },
            "write" => {
                let volume = keys.volume()?.unwrap_or_else(|| "v1".to_string());
                let (count, every_ms) = keys.count_every()?;
                Action::Write {
                    volume,
                    count,
                    every_ms,
                }
            }
            "operator" => Action::Operator {
                command: keys.command()?,
                on: keys.on()?,
            },
            other => {
                return Err(format!(
                    "unknown step {other:?}; known: kill, restart, power_off, power_on, \
                     partition, isolate, cut_one_way, heal, pause, resume, slow_disk, \
                     fill_disk, free_disk, write, operator"
                ))
            }
        };
        keys.finish(self.names)?;
        Ok(action)
    }

    fn sides(&self, sides: Vec<Vec<String>>) -> Result<Vec<Vec<String>>, String> {
        if sides.len() < 2 || sides.iter().any(Vec::is_empty) {
            return Err("`sides` needs two or more non-empty lists of nodes".into());
        }
        let mut seen = Vec::new();
        for node in sides.iter().flatten() {
            if seen.contains(node) {
                return Err(format!("node {node:?} is on two sides"));
            }
            seen.push(node.clone());
        }
        Ok(sides)
    }
}

/// The keys of one step: each use is recorded, so a key that does not apply is an error.
struct Keys<'a> {
    def: &'a StepDef,
    used: Vec<&'static str>,
}

impl<'a> Keys<'a> {
    fn new(def: &'a StepDef) -> Keys<'a> {
        Keys {
            def,
            used: vec!["at", "do", "label"],
        }
    }

    fn need(&mut self, key: &'static str, value: &Option<String>) -> Result<String, String> {
        self.used.push(key);
        value.clone().ok_or_else(|| format!("needs `{key}`"))
    }

    fn node(&mut self) -> Result<String, String> {
        self.need("node", &self.def.node.clone())
    }

    fn lasting(&mut self) -> Result<Option<u64>, String> {
        self.used.push("for");
        match &self.def.lasting {
            Some(text) => {
                let ms = parse_duration(text).map_err(|e| format!("for: {e}"))?;
                if ms == 0 {
                    return Err("for: must be longer than 0".into());
                }
                Ok(Some(ms))
            }
            None => Ok(None),
        }
    }

    fn sides(&mut self) -> Result<Vec<Vec<String>>, String> {
        self.used.push("sides");
        self.def
            .sides
            .clone()
            .ok_or_else(|| "needs `sides`, e.g. [[\"a\"], [\"b\", \"w\"]]".into())
    }

    fn endpoints(&mut self) -> Result<(String, String), String> {
        let from = self.need("from", &self.def.from.clone())?;
        let to = self.need("to", &self.def.to.clone())?;
        Ok((from, to))
    }

    fn fault(&mut self) -> Option<String> {
        self.used.push("fault");
        self.def.fault.clone()
    }

    fn by(&mut self) -> Result<u64, String> {
        let text = self.need("by", &self.def.by.clone())?;
        parse_duration(&text).map_err(|e| format!("by: {e}"))
    }

    fn volume(&mut self) -> Result<Option<String>, String> {
        self.used.push("volume");
        Ok(self.def.volume.clone())
    }

    fn count_every(&mut self) -> Result<(u32, u64), String> {
        self.used.extend(["count", "every"]);
        let count = self.def.count.unwrap_or(1);
        if count == 0 || count > MAX_COUNT {
            return Err(format!("count: 1 to {MAX_COUNT}, got {count}"));
        }
        let every_ms = match &self.def.every {
            Some(text) => parse_duration(text).map_err(|e| format!("every: {e}"))?,
            None if count > 1 => return Err("a `count` above 1 needs `every`".into()),
            None => 0,
        };
        Ok((count, every_ms))
    }

    fn on(&mut self) -> Result<Option<String>, String> {
        self.used.push("on");
        Ok(self.def.on.clone())
    }

    fn command(&mut self) -> Result<OperatorCommand, String> {
        let command = self.need("command", &self.def.command.clone())?;
        let node = |keys: &mut Keys| keys.need("node", &keys.def.node.clone());
        let group = |keys: &mut Keys| keys.need("group", &keys.def.group.clone());
        let volume = |keys: &mut Keys| keys.need("volume", &keys.def.volume.clone());
        Ok(match command.as_str() {
            "node standby" => OperatorCommand::NodeStandby { node: node(self)? },
            "node online" => OperatorCommand::NodeOnline { node: node(self)? },
            "node remove" => OperatorCommand::NodeRemove { node: node(self)? },
            "volume promote" => {
                self.used.push("force");
                OperatorCommand::VolumePromote {
                    volume: volume(self)?,
                    node: node(self)?,
                    force: self.def.force.unwrap_or(false),
                }
            }
            "volume demote" => OperatorCommand::VolumeDemote {
                volume: volume(self)?,
            },
            "group move" => OperatorCommand::GroupMove {
                group: group(self)?,
                node: node(self)?,
            },
            "group clear" => OperatorCommand::GroupClear {
                group: group(self)?,
            },
            "group enable" => OperatorCommand::GroupEnable {
                group: group(self)?,
            },
            "group disable" => OperatorCommand::GroupDisable {
                group: group(self)?,
            },
            other => {
                return Err(format!(
                    "unknown command {other:?}; known: {}",
                    COMMANDS.join(", ")
                ))
            }
        })
    }

    /// Keys given that the step does not use; names that do not exist.
    fn finish(&self, names: &Names) -> Result<(), String> {
        let def = self.def;
        let given = [
            ("node", def.node.is_some()),
            ("from", def.from.is_some()),
            ("to", def.to.is_some()),
            ("sides", def.sides.is_some()),
            ("for", def.lasting.is_some()),
            ("by", def.by.is_some()),
            ("count", def.count.is_some()),
            ("every", def.every.is_some()),
            ("volume", def.volume.is_some()),
            ("command", def.command.is_some()),
            ("group", def.group.is_some()),
            ("force", def.force.is_some()),
            ("on", def.on.is_some()),
            ("fault", def.fault.is_some()),
        ];
        if let Some((key, _)) = given
            .iter()
            .find(|(key, set)| *set && !self.used.contains(key))
        {
            return Err(format!("`{key}` does not apply to this step"));
        }
        let nodes = [&def.node, &def.from, &def.to, &def.on];
        for name in nodes
            .into_iter()
            .flatten()
            .chain(def.sides.iter().flatten().flatten())
        {
            names.node(name)?;
        }
        if let Some(group) = &def.group {
            names.group(group)?;
        }
        if let Some(volume) = &def.volume {
            names.volume(volume)?;
        }
        Ok(())
    }
}

/// What is broken, down or frozen while the timeline is walked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeState {
    Up,
    /// Down since that step.
    Down(usize),
    /// Frozen by that step until then; whether by its `for` (else until a `resume`).
    Paused(usize, u64, bool),
}

/// Walks the steps in time order, checks each against what is in effect, and resolves them
/// into [`Planned`] effects.
struct Timeline<'a> {
    checker: &'a Checker<'a>,
    steps: &'a [Step],
    /// Every node of the cluster.
    all: Vec<String>,
    nodes: BTreeMap<String, NodeState>,
    /// Faults in effect: the step that began it -> its label (or none) and what it is.
    faults: BTreeMap<usize, (Option<String>, FaultWhat)>,
    /// Ends due later: (time, the fault's step).
    ends: Vec<(u64, usize, End)>,
    plan: Vec<Planned>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultWhat {
    Network,
    SlowDisk,
    FullDisk,
}

/// Something a `for` undoes later.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Fault,
    Start(String),
}

impl<'a> Timeline<'a> {
    fn new(checker: &'a Checker<'a>, steps: &'a [Step], all: Vec<String>) -> Timeline<'a> {
        Timeline {
            checker,
            steps,
            all,
            nodes: BTreeMap::new(),
            faults: BTreeMap::new(),
            ends: Vec::new(),
            plan: Vec::new(),
        }
    }

    fn error(&self, step: &Step, problem: impl Into<String>) -> ScenarioError {
        let kind = action_name(&step.action);
        self.checker.error(
            step.line,
            format!("step {} (do = {kind:?})", step.number),
            problem,
        )
    }

    fn resolve(mut self) -> Result<Vec<Planned>, ScenarioError> {
        for step in self.steps {
            self.run_ends(step.at_ms);
            self.thaw(step.at_ms);
            self.step(step)?;
        }
        self.run_ends(u64::MAX);
        self.plan.sort_by_key(|planned| planned.at_ms);
        Ok(self.plan)
    }

    /// Ends from `for` that are due by `now`, in time order.
    fn run_ends(&mut self, now: u64) {
        self.ends.sort_by_key(|(at, step, _)| (*at, *step));
        while let Some((at, fault, end)) =
            self.ends.first().cloned().filter(|(at, _, _)| *at <= now)
        {
            self.ends.remove(0);
            match end {
                End::Fault => {
                    if self.faults.remove(&fault).is_some() {
                        let what = format!("end of step {fault}'s fault (its `for` ran out)");
                        self.push(at, fault, what, Effect::EndFault { fault });
                    }
                }
                End::Start(node) => {
                    if self.nodes.get(&node) == Some(&NodeState::Down(fault)) {
                        self.nodes.insert(node.clone(), NodeState::Up);
                        let what = format!("start {node} (step {fault}'s `for` ran out)");
                        self.push(at, fault, what, Effect::Start { node });
                    }
                }
            }
        }
    }

    fn thaw(&mut self, now: u64) {
        for state in self.nodes.values_mut() {
            if matches!(state, NodeState::Paused(_, until, true) if *until <= now) {
                *state = NodeState::Up;
            }
        }
    }

    fn push(&mut self, at_ms: u64, step: usize, what: String, effect: Effect) {
        self.plan.push(Planned {
            at_ms,
            step,
            what,
            effect,
        });
    }

    fn state(&self, node: &str) -> NodeState {
        self.nodes.get(node).cloned().unwrap_or(NodeState::Up)
    }

    fn step(&mut self, step: &Step) -> Result<(), ScenarioError> {
        let (at, number) = (step.at_ms, step.number);
        let what = describe(step);
        match &step.action {
            Action::Kill { node, for_ms } | Action::PowerOff { node, for_ms } => {
                self.stop(step, node, *for_ms)?
            }
            Action::Restart { node } | Action::PowerOn { node } => {
                if !matches!(self.state(node), NodeState::Down(_)) {
                    return Err(self.error(step, format!("{node} is not down: nothing to start")));
                }
                self.nodes.insert(node.clone(), NodeState::Up);
                self.push(at, number, what, Effect::Start { node: node.clone() });
            }
            Action::Partition { .. } | Action::Isolate { .. } | Action::CutOneWay { .. } => {
                self.cut(step)?
            }
            Action::Heal { label } => self.heal(step, label.as_deref())?,
            Action::Pause { node, for_ms } => self.pause(step, node, *for_ms)?,
            Action::Resume { node } => self.resume(step, node)?,
            Action::SlowDisk { .. } | Action::FillDisk { .. } | Action::FreeDisk { .. } => {
                self.disk(step)?
            }
            Action::Write {
                volume,
                count,
                every_ms,
            } => {
                for k in 0..u64::from(*count) {
                    let what = match count {
                        1 => what.clone(),
                        _ => format!("write {}/{count} to {volume}", k + 1),
                    };
                    let volume = volume.clone();
                    self.push(at + k * every_ms, number, what, Effect::Write { volume });
                }
            }
            Action::Operator { command, on } => {
                let (command, on) = (command.clone(), on.clone());
                self.push(at, number, what, Effect::Operator { command, on });
            }
        }
        Ok(())
    }

    /// `kill` or `power_off`.
    fn stop(&mut self, step: &Step, node: &str, for_ms: Option<u64>) -> Result<(), ScenarioError> {
        if let NodeState::Down(since) = self.state(node) {
            let problem = format!("{node} is already down (since step {since})");
            return Err(self.error(step, problem));
        }
        let (at, number) = (step.at_ms, step.number);
        self.nodes.insert(node.to_string(), NodeState::Down(number));
        let node = node.to_string();
        let effect = match step.action {
            Action::Kill { .. } => Effect::Kill { node: node.clone() },
            _ => Effect::PowerOff { node: node.clone() },
        };
        self.push(at, number, describe(step), effect);
        if let Some(ms) = for_ms {
            self.ends.push((at + ms, number, End::Start(node)));
        }
        Ok(())
    }

    fn resume(&mut self, step: &Step, node: &str) -> Result<(), ScenarioError> {
        match self.state(node) {
            // The pause already lasts until now (see `pause`): nothing more to do.
            NodeState::Paused(_, _, false) => {
                self.nodes.insert(node.to_string(), NodeState::Up);
                Ok(())
            }
            NodeState::Paused(since, _, true) => Err(self.error(
                step,
                format!("{node}'s pause (step {since}) has `for`: it ends by itself"),
            )),
            _ => Err(self.error(step, format!("{node} is not paused: nothing to resume"))),
        }
    }

    /// `slow_disk`, `fill_disk`, `free_disk`.
    fn disk(&mut self, step: &Step) -> Result<(), ScenarioError> {
        let (at, number, what) = (step.at_ms, step.number, describe(step));
        match &step.action {
            Action::SlowDisk {
                node,
                by_ms,
                for_ms,
            } => {
                self.begin_fault(step, FaultWhat::SlowDisk, *for_ms)?;
                let (node, by_ms) = (node.clone(), *by_ms);
                let effect = Effect::SlowDisk {
                    fault: number,
                    node,
                    by_ms,
                };
                self.push(at, number, what, effect);
            }
            Action::FillDisk { node } => {
                if self.full_disk(node).is_some() {
                    return Err(self.error(step, format!("{node}'s disk is already full")));
                }
                self.begin_fault(step, FaultWhat::FullDisk, None)?;
                let node = node.clone();
                self.push(
                    at,
                    number,
                    what,
                    Effect::FillDisk {
                        fault: number,
                        node,
                    },
                );
            }
            Action::FreeDisk { node } => {
                let Some(fault) = self.full_disk(node) else {
                    return Err(self.error(step, format!("{node}'s disk was never filled")));
                };
                self.faults.remove(&fault);
                self.push(at, number, what, Effect::EndFault { fault });
            }
            _ => {}
        }
        Ok(())
    }

    fn full_disk(&self, node: &str) -> Option<usize> {
        self.faults.iter().find_map(|(step, (_, what))| {
            let filled =
                matches!(&self.steps[step - 1].action, Action::FillDisk { node: n } if n == node);
            (*what == FaultWhat::FullDisk && filled).then_some(*step)
        })
    }

    fn begin_fault(
        &mut self,
        step: &Step,
        what: FaultWhat,
        for_ms: Option<u64>,
    ) -> Result<(), ScenarioError> {
        if let Some(label) = &step.label {
            if self
                .faults
                .values()
                .any(|(l, _)| l.as_deref() == Some(label))
            {
                return Err(self.error(
                    step,
                    format!("label {label:?} names a fault still in effect"),
                ));
            }
        }
        self.faults.insert(step.number, (step.label.clone(), what));
        if let Some(ms) = for_ms {
            self.ends.push((step.at_ms + ms, step.number, End::Fault));
        }
        Ok(())
    }

    fn cut(&mut self, step: &Step) -> Result<(), ScenarioError> {
        let all: Vec<String> = self.checker_names();
        let (kind, links, for_ms) = match &step.action {
            Action::Partition { sides, for_ms } => {
                let mut links = Vec::new();
                for (i, side) in sides.iter().enumerate() {
                    for other in sides.iter().skip(i + 1) {
                        for a in side {
                            for b in other {
                                links.push((a.clone(), b.clone()));
                                links.push((b.clone(), a.clone()));
                            }
                        }
                    }
                }
                (CutKind::Partition, links, *for_ms)
            }
            Action::Isolate { node, for_ms } => {
                let links = (all.iter().filter(|n| *n != node))
                    .flat_map(|other| {
                        [(node.clone(), other.clone()), (other.clone(), node.clone())]
                    })
                    .collect();
                (CutKind::Isolate, links, *for_ms)
            }
            Action::CutOneWay { from, to, for_ms } => {
                (CutKind::OneWay, vec![(from.clone(), to.clone())], *for_ms)
            }
            _ => return Ok(()),
        };
        self.begin_fault(step, FaultWhat::Network, for_ms)?;
        let effect = Effect::Cut {
            fault: step.number,
            kind,
            links,
        };
        self.push(step.at_ms, step.number, describe(step), effect);
        Ok(())
    }

    fn checker_names(&self) -> Vec<String> {
        self.all.clone()
    }

    fn pause(&mut self, step: &Step, node: &str, for_ms: Option<u64>) -> Result<(), ScenarioError> {
        match self.state(node) {
            NodeState::Down(since) => {
                return Err(self.error(
                    step,
                    format!("{node} is down (since step {since}): nothing to freeze"),
                ))
            }
            NodeState::Paused(since, ..) => {
                return Err(self.error(step, format!("{node} is already paused (by step {since})")))
            }
            NodeState::Up => {}
        }
        let resume = self.steps.iter().find(|later| {
            later.number > step.number
                && matches!(&later.action, Action::Resume { node: n } if n == node)
        });
        let ms = match (for_ms, resume) {
            (Some(ms), _) => ms,
            (None, Some(resume)) => resume.at_ms - step.at_ms,
            (None, None) => {
                return Err(self.error(
                    step,
                    format!("the pause of {node} has neither `for` nor a later resume"),
                ))
            }
        };
        if ms == 0 {
            return Err(self.error(
                step,
                format!("{node} is resumed at the instant it is paused"),
            ));
        }
        self.nodes.insert(
            node.to_string(),
            NodeState::Paused(step.number, step.at_ms + ms, for_ms.is_some()),
        );
        let effect = Effect::Pause {
            node: node.to_string(),
            ms,
        };
        self.push(step.at_ms, step.number, describe(step), effect);
        Ok(())
    }

    fn heal(&mut self, step: &Step, label: Option<&str>) -> Result<(), ScenarioError> {
        let targets: Vec<usize> = match label {
            Some(label) => {
                let found = self
                    .faults
                    .iter()
                    .find(|(_, (l, _))| l.as_deref() == Some(label));
                match found {
                    Some((_, (_, FaultWhat::FullDisk))) => {
                        return Err(self.error(step, format!("{label:?} is a full disk: use free_disk")))
                    }
                    Some((fault, _)) => vec![*fault],
                    None => {
                        return Err(self.error(
                            step,
                            format!("heal of {label:?}: no fault with that label is in effect (never broken, or healed already)"),
                        ))
                    }
                }
            }
            None => (self.faults.iter())
                .filter(|(_, (_, what))| *what != FaultWhat::FullDisk)
                .map(|(fault, _)| *fault)
                .collect(),
        };
        if targets.is_empty() {
            return Err(self.error(
                step,
                "nothing to heal: no network cut or slow disk is in effect (never broken, or healed already)",
            ));
        }
        for fault in targets {
            self.faults.remove(&fault);
            let what = format!("{} (ends step {fault}'s fault)", describe(step));
            self.push(step.at_ms, step.number, what, Effect::EndFault { fault });
        }
        Ok(())
    }
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
