//! The timeline of a scenario: its steps walked in time order against what is down, frozen
//! or broken at each instant (a heal needs something to heal, a restart a node that is down),
//! and resolved into the plain effects a runner carries out.

use std::collections::BTreeMap;

use super::check::Checker;
use super::{action_name, describe, Action, CutKind, Effect, Planned, ScenarioError, Step};

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
pub(super) struct Timeline<'a> {
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
    pub(super) fn new(
        checker: &'a Checker<'a>,
        steps: &'a [Step],
        all: Vec<String>,
    ) -> Timeline<'a> {
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

    pub(super) fn resolve(mut self) -> Result<Vec<Planned>, ScenarioError> {
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
