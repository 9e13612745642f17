//! Checking a parsed scenario file: names, durations, keys that apply to each step and
//! check, and the order of steps; every error names the file, the line and the place.

use serde::Deserialize;
use toml::Spanned;

use super::timeline::Timeline;
use super::{
    fmt_ms, parse_duration, Action, Check, Effect, Expect, Layout, OperatorCommand, Planned,
    Scenario, ScenarioError, Step, COMMANDS, DEFAULT_TAIL_MS, MAX_COUNT,
};

/// The file as written. Every key is known; anything else is refused by the parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
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

/// Checks a parsed file and builds the [`Scenario`].
pub(super) struct Checker<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl Checker<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    pub(super) fn error(
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

    pub(super) fn scenario(&self, def: FileDef) -> Result<Scenario, ScenarioError> {
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
            let step = checker.step(spanned.into_inner(), previous)?;
            let label = step.label.as_deref();
            if let Some(twin) = steps
                .iter()
                .find(|s| label.is_some() && s.label.as_deref() == label)
            {
                let problem = format!(
                    "label {:?} already names step {}",
                    label.unwrap_or(""),
                    twin.number
                );
                return Err(self.error(step.line, format!("step {}", step.number), problem));
            }
            steps.push(step);
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
