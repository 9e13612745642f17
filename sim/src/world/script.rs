//! Scripted runs in the world (see [`crate::script`]): the script's phase, its steps, the
//! samples its expectations are judged on, and the bookkeeping of writes and commands.

use std::collections::BTreeMap;

use tandem_core::{ClusterState, Command, NodeId, Plan, Reply, Role, StateChange};

use super::{ActiveFault, Phase, World};
use crate::checkers::Violation;
use crate::config::Shape;
use crate::events::Event;
use crate::faults::FaultKind;
use crate::machine::guard;
use crate::resources::FakeKind;
use crate::script::{
    CommandState, Echo, GroupSample, LegSample, Sample, Script, ScriptAction, ScriptLog,
    WriteRecord, WriteState, SAMPLE_MS,
};
use crate::trace::{Trace, TraceEvent};

/// A scripted write stays valid this long (it must outlive any run).
const WRITE_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A scripted run's state.
pub(super) struct Scripted {
    script: Script,
    echo: Option<Echo>,
    log: ScriptLog,
    /// Script fault key -> the world's fault id.
    faults: BTreeMap<u32, u64>,
    /// Request number -> index in `log.writes`.
    writes: BTreeMap<u64, usize>,
    /// Request number -> step tag of an operator command.
    commands: BTreeMap<u64, usize>,
}

impl World {
    /// A world that runs `script` instead of the seed's random fault schedule.
    pub fn scripted(
        seed: u64,
        options: crate::Options,
        script: Script,
        echo: Option<Echo>,
    ) -> World {
        let mut world = World::new(seed, options);
        world.scenario.shape = Shape {
            voters: script.data_nodes,
            witness: script.witness,
        };
        world.scenario.layout = Some(script.layout);
        world.scenario.membership = false;
        world.scenario.fault_ms = script.run_ms;
        world.trace.keep_story();
        world.script = Some(Scripted {
            script,
            echo,
            log: ScriptLog::default(),
            faults: BTreeMap::new(),
            writes: BTreeMap::new(),
            commands: BTreeMap::new(),
        });
        world
    }

    /// Runs a scripted world to the end: the verdict, when it ended, the trace, the log.
    pub fn run_scripted(mut self) -> (Result<super::RunReport, Violation>, u64, Trace, ScriptLog) {
        let result = self.run_phases();
        if let Err(violation) = &result {
            let text = violation.to_string();
            self.trace
                .record(self.now, None, TraceEvent::Violation(text));
        } else {
            self.check_writes();
        }
        let report = result.map(|()| self.report());
        let log = self.script.take().map(|s| s.log).unwrap_or_default();
        (report, self.now, self.trace, log)
    }

    /// The cluster formed and every group runs where placed: the script's t = 0.
    pub(super) fn begin_script(&mut self) -> Result<(), Violation> {
        self.check_ids()?;
        let Some(scripted) = self.script.as_mut() else {
            return Ok(());
        };
        scripted.log.started_at = Some(self.now);
        let until = self.now + scripted.script.run_ms;
        let due: Vec<(usize, u64)> = scripted
            .script
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| (index, step.at_ms))
            .collect();
        self.phase = Phase::Faults { until };
        let what =
            format!("scenario begins: every group runs where placed; faults heal at t={until}");
        self.trace.record(self.now, None, TraceEvent::Phase(what));
        for (index, at_ms) in due {
            self.queue.push(self.now + at_ms, Event::Script { index });
        }
        self.queue.push(until, Event::Heal);
        self.queue.push(self.now, Event::Sample);
        Ok(())
    }

    /// Node ids are what the script assumes: data nodes first, then the witness.
    fn check_ids(&self) -> Result<(), Violation> {
        let shape = self.scenario.shape;
        let wanted = shape.voters + usize::from(shape.witness);
        let state = self
            .best_state()
            .ok_or_else(|| Violation::Setup("no running node".into()))?;
        for id in 1..=wanted as NodeId {
            let witness = id as usize > shape.voters;
            let role = state.nodes.get(&id).map(|node| node.role);
            if role.is_none() || (role == Some(Role::Witness)) != witness {
                return Err(Violation::Setup(format!(
                    "the scenario expects n{id} to be a {}, the cluster has {role:?}",
                    if witness { "witness" } else { "data node" }
                )));
            }
        }
        Ok(())
    }

    fn script_ms(&self) -> u64 {
        let start = self.script.as_ref().and_then(|s| s.log.started_at);
        self.now.saturating_sub(start.unwrap_or(self.now))
    }

    /// Notes a step's outcome: in the log, the trace and the echo.
    fn step_note(&mut self, tag: usize, text: String) {
        let at = self.script_ms();
        let line = format!("scenario step {tag}: {text}");
        self.trace.record(self.now, None, TraceEvent::Note(line));
        if let Some(scripted) = self.script.as_mut() {
            let line = format!("t={:>3}.{:03}s  step {tag:<2} {text}", at / 1000, at % 1000);
            if let Some(echo) = scripted.echo.as_mut() {
                echo(&line);
            }
            scripted.log.steps.push((at, tag, text));
        }
    }

    pub(super) fn on_script_step(&mut self, index: usize) -> Result<(), Violation> {
        if !matches!(self.phase, Phase::Faults { .. }) {
            // A `for` that outlasts the script: the heal already ended it.
            return Ok(());
        }
        let Some(step) = self
            .script
            .as_ref()
            .and_then(|s| s.script.steps.get(index))
            .cloned()
        else {
            return Ok(());
        };
        let (tag, what) = (step.tag, step.what.clone());
        match step.action {
            ScriptAction::Kill { node } => {
                self.count_fault(FaultKind::Crash);
                self.step_note(tag, what);
                self.stop(node, "killed (scenario)", false)
            }
            ScriptAction::PowerOff { node } => {
                self.count_fault(FaultKind::PowerLoss);
                self.step_note(tag, what);
                self.stop(node, "power off (scenario)", true)
            }
            ScriptAction::Start { node } => {
                self.step_note(tag, what);
                self.restart(node)
            }
            ScriptAction::Cut { key, kind, links } => {
                self.count_fault(kind);
                let id = self.new_fault_key(key);
                self.net.block(id, links);
                self.active.insert(id, ActiveFault::Network(what.clone()));
                self.step_note(tag, what);
                Ok(())
            }
            ScriptAction::Pause { node, ms } => {
                self.count_fault(FaultKind::Pause);
                self.step_note(tag, what);
                self.pause(node, ms);
                Ok(())
            }
            ScriptAction::SlowDisk {
                key,
                node,
                extra_ms,
            } => {
                self.count_fault(FaultKind::SlowDisk);
                let id = self.new_fault_key(key);
                if let Some(machine) = self.machines.get_mut(&node) {
                    machine.slow_disk.insert(id, extra_ms);
                }
                self.active.insert(id, ActiveFault::SlowDisk(node));
                self.step_note(tag, what);
                Ok(())
            }
            ScriptAction::End { key } => {
                let id = self.script.as_mut().and_then(|s| s.faults.remove(&key));
                self.step_note(tag, what);
                if let Some(id) = id {
                    self.end_fault(id);
                }
                Ok(())
            }
            ScriptAction::Write { volume } => self.script_write(index, tag, &volume),
            ScriptAction::Command { on, command } => self.script_command(index, tag, on, command),
        }
    }

    fn count_fault(&mut self, kind: FaultKind) {
        *self.fault_counts.entry(kind).or_default() += 1;
    }

    fn new_fault_key(&mut self, key: u32) -> u64 {
        let id = self.next_fault_id;
        self.next_fault_id += 1;
        if let Some(scripted) = self.script.as_mut() {
            scripted.faults.insert(key, id);
        }
        id
    }

    /// A node's process that is frozen: the step waits for the thaw, as a client would.
    fn frozen_until(&self, node: NodeId) -> Option<u64> {
        let machine = self.machines.get(&node)?;
        (machine.running() && machine.paused_until > self.now).then_some(machine.paused_until)
    }

    /// A client write to the primary of `volume`.
    fn script_write(&mut self, index: usize, tag: usize, volume: &str) -> Result<(), Violation> {
        let primary = self
            .best_state()
            .and_then(|state| state.volume_by_name(volume).and_then(|v| v.primary));
        if let Some(until) = primary.and_then(|node| self.frozen_until(node)) {
            self.queue.push(until, Event::Script { index });
            return Ok(());
        }
        let number = self.script.as_ref().map_or(0, |s| s.log.writes.len());
        let id = format!("write-{number}");
        let mut record = WriteRecord {
            tag,
            at_ms: self.script_ms(),
            node: primary,
            id: id.clone(),
            state: WriteState::InFlight,
            missing_on: Vec::new(),
        };
        let sent = match primary {
            None => Err(format!("volume {volume} has no primary")),
            Some(node) if self.core_of(node).is_none() => {
                Err(format!("its primary n{node} is down"))
            }
            Some(node) => {
                let unix = self.unix_now();
                let change = StateChange::AddJoinToken {
                    digest: id.clone(),
                    expires_unix: unix + WRITE_TTL_SECS,
                    now_unix: unix,
                };
                self.script_propose(node, change)?
            }
        };
        let text = match &sent {
            Ok(_) => format!(
                "{} -> sent {id} to n{}",
                self.step_what(index),
                primary.unwrap_or(0)
            ),
            Err(why) => format!("{} -> {id} not sent: {why}", self.step_what(index)),
        };
        if let Err(why) = &sent {
            record.state = WriteState::Failed(why.clone());
        }
        if let Some(scripted) = self.script.as_mut() {
            if let Ok(request) = sent {
                scripted.writes.insert(request, scripted.log.writes.len());
            }
            scripted.log.writes.push(record);
        }
        self.step_note(tag, text);
        Ok(())
    }

    fn step_what(&self, index: usize) -> String {
        self.script
            .as_ref()
            .and_then(|s| s.script.steps.get(index))
            .map_or_else(String::new, |step| step.what.clone())
    }

    /// An operator command on `on` (default: the leader, else any running node).
    fn script_command(
        &mut self,
        index: usize,
        tag: usize,
        on: Option<NodeId>,
        command: Command,
    ) -> Result<(), Violation> {
        let target = on
            .or_else(|| self.leaders().first().copied())
            .or_else(|| self.running().first().copied());
        if let Some(until) = target.and_then(|node| self.frozen_until(node)) {
            self.queue.push(until, Event::Script { index });
            return Ok(());
        }
        let what = self.step_what(index);
        let unix = self.unix_now();
        let plan = match target.and_then(|node| self.machines.get(&node).map(|m| (node, m))) {
            Some((node, machine)) => match &machine.core {
                Some(core) => {
                    let local = machine.local(self.now);
                    Some((
                        node,
                        guard(node, || core.plan_command(local, unix, &command))?,
                    ))
                }
                None => None,
            },
            None => None,
        };
        let state = match plan {
            None => CommandState::Refused("no running daemon to send it to".into()),
            Some((_, Plan::Answer(Reply::Refused { message }))) => CommandState::Refused(message),
            Some((_, Plan::Answer(_))) => CommandState::Done("answered".into()),
            Some((node, Plan::Propose(change))) => match self.script_propose(node, change)? {
                Ok(request) => {
                    if let Some(scripted) = self.script.as_mut() {
                        scripted.commands.insert(request, tag);
                    }
                    CommandState::Pending
                }
                Err(why) => CommandState::Refused(why),
            },
            Some(_) => CommandState::Refused("not modelled by the simulator".into()),
        };
        let text = match &state {
            CommandState::Pending => format!("{what} -> proposed on n{}", target.unwrap_or(0)),
            CommandState::Done(text) => format!("{what} -> {text}"),
            CommandState::Refused(why) => format!("{what} -> REFUSED: {why}"),
        };
        if let Some(scripted) = self.script.as_mut() {
            scripted.log.commands.insert(tag, state);
        }
        self.step_note(tag, text);
        Ok(())
    }

    /// Proposes `change` on `node`: the request number, or why `propose` refused it.
    fn script_propose(
        &mut self,
        node: NodeId,
        change: StateChange,
    ) -> Result<Result<u64, String>, Violation> {
        let request = self.workload.request();
        let what = super::operator::describe(&change);
        let proposed = self.call(node, |core| core.propose(request, change))?;
        let refused = proposed.as_ref().err().map(|error| error.to_string());
        let event = TraceEvent::Proposed {
            request,
            what,
            refused: refused.clone(),
        };
        self.trace.record(self.now, Some(node), event);
        Ok(match refused {
            Some(why) => Err(why),
            None => Ok(request),
        })
    }

    /// A proposal completed: a scripted write is acknowledged, a command answered.
    pub(super) fn script_completed(&mut self, request: u64, outcome: &Result<String, String>) {
        let Some(scripted) = self.script.as_mut() else {
            return;
        };
        if let Some(index) = scripted.writes.remove(&request) {
            if let Some(record) = scripted.log.writes.get_mut(index) {
                record.state = match outcome {
                    Ok(_) => WriteState::Acknowledged,
                    Err(why) => WriteState::Failed(why.clone()),
                };
            }
        }
        if let Some(tag) = scripted.commands.remove(&request) {
            let state = match outcome {
                Ok(text) => CommandState::Done(text.clone()),
                Err(why) => CommandState::Refused(why.clone()),
            };
            let line = match &state {
                CommandState::Refused(why) => {
                    format!("command of step {tag} REFUSED on commit: {why}")
                }
                _ => format!(
                    "command of step {tag} done: {}",
                    outcome.as_ref().map_or("", String::as_str)
                ),
            };
            scripted.log.commands.insert(tag, state);
            self.step_note(tag, line);
        }
    }

    /// Every fault heals now (the end of the script's phase).
    pub(super) fn script_healed(&mut self) {
        let at = self.script_ms();
        if let Some(scripted) = self.script.as_mut() {
            scripted.log.healed_at = Some(at);
            if let Some(echo) = scripted.echo.as_mut() {
                echo(&format!(
                    "t={:>3}.{:03}s  every fault heals; liveness and eventual placement are checked",
                    at / 1000,
                    at % 1000
                ));
            }
        }
    }

    /// Records where every group runs and the legs' states, now.
    pub(super) fn on_sample(&mut self) -> Result<(), Violation> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        self.queue.push(self.now + SAMPLE_MS, Event::Sample);
        let sample = self.sample();
        if let Some(scripted) = self.script.as_mut() {
            scripted.log.samples.push(sample);
        }
        Ok(())
    }

    fn sample(&self) -> Sample {
        let mut sample = Sample {
            at_ms: self.script_ms(),
            ..Sample::default()
        };
        sample.down = (self.machines.values())
            .filter(|m| !m.running())
            .map(|m| m.id)
            .collect();
        let Some(state) = self.best_state() else {
            return sample;
        };
        for (name, group) in &state.groups {
            let fakes: Vec<usize> = (group.spec.resources.iter().enumerate())
                .filter(|(_, spec)| FakeKind::of(spec).is_some())
                .map(|(index, _)| index)
                .collect();
            let mut entry = GroupSample::default();
            for machine in self.machines.values() {
                let runs = |&index: &usize| {
                    (machine.fakes.get(name, index)).is_some_and(|running| !running.by_hand)
                };
                if fakes.iter().all(runs) {
                    entry.full.push(machine.id);
                }
                if fakes.iter().any(runs) {
                    entry.any.push(machine.id);
                }
            }
            entry.primaries = (group.spec.volumes().iter())
                .map(|volume| state.volume_by_name(volume).and_then(|v| v.primary))
                .collect();
            if fakes.is_empty() {
                // Only volumes: it runs where they are primary.
                entry.full = entry.primaries.iter().flatten().copied().collect();
                entry.full.sort_unstable();
                entry.full.dedup();
                entry.any = entry.full.clone();
            }
            sample.groups.insert(name.clone(), entry);
        }
        for volume in state.volumes.values() {
            let legs = (volume.legs.iter())
                .map(|leg| LegSample {
                    nodes: leg.nodes.clone(),
                    state: leg.state,
                })
                .collect();
            sample.legs.insert(volume.name.clone(), legs);
        }
        sample
    }

    /// The freshest committed state of a running node: the leader holding its lease, else the
    /// running node that applied the most.
    fn best_state(&self) -> Option<&ClusterState> {
        if let Some(core) = self.lease_leader().and_then(|id| self.core_of(id)) {
            return Some(core.state());
        }
        (self.machines.values())
            .filter_map(|machine| machine.core.as_ref())
            .max_by_key(|core| core.applied_index())
            .map(|core| core.state())
    }

    /// At the end of a run that passed: which running members lack an acknowledged write.
    fn check_writes(&mut self) {
        let members: Vec<(NodeId, Vec<String>)> = (self.machines.values())
            .filter_map(|machine| machine.core.as_ref().map(|core| (machine.id, core)))
            .map(|(id, core)| {
                let tokens = core.state().join_tokens.iter();
                (id, tokens.map(|token| token.digest.clone()).collect())
            })
            .collect();
        let Some(scripted) = self.script.as_mut() else {
            return;
        };
        for record in &mut scripted.log.writes {
            if record.state != WriteState::Acknowledged {
                continue;
            }
            record.missing_on = (members.iter())
                .filter(|(_, tokens)| !tokens.contains(&record.id))
                .map(|(id, _)| *id)
                .collect();
        }
    }
}
