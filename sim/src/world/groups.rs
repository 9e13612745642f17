//! Resource groups in the simulated world: what the daemon's `agent_host` does, on every
//! simulated process, plus the fake resources and the group workload.
//!
//! - Every 50 ms of its own clock, each process runs a round like the daemon's: the leader
//!   holding its lease runs the placement loop ([`tandem_core::placement::Placer`]), every
//!   node runs its [`tandem_core::agent::Agent`] with the committed state and whether it holds
//!   its node lease. The agent's proposals (and the placer's) go to `NodeCore::propose`
//!   (refusals are fine: both retry); its timeline events are traced, not proposed.
//! - A `Run` becomes a fake operation ([`crate::resources`]) that completes after a seeded
//!   delay as an input of that process (lost if the process dies first, postponed while it is
//!   frozen); the agent is then told the outcome.
//! - The volume engine is not simulated: a `volume` resource is only proposals. As its
//!   stand-in, the primary of a volume resyncs a leg that is not UpToDate (after a takeover)
//!   once the leg's node runs and is reachable, after a seeded delay, by proposing the leg
//!   UpToDate in the current epoch, as the real engine does when a resync ends.
//! - The operator: at setup, the layout's volumes (legs set UpToDate) and groups are created
//!   through committed changes; during the faults, moves, clears, disables, enables and
//!   standby/online now and then, plus services started by hand on a node that does not run
//!   the group. Resources also crash while running.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rand::seq::SliceRandom;
use rand::Rng;
use tandem_core::agent::{AgentAction, Inputs, OpKind, Outcome};
use tandem_core::events::EventKind;
use tandem_core::group::{GroupChange, ResourceSpec};
use tandem_core::volume::{LegSpec, LegState, VolumeChange};
use tandem_core::{scheduler, Admin, ClusterState, NodeId, Role, StateChange};

use super::{Phase, World};
use crate::checkers::{self, Violation};
use crate::config::Mutation;
use crate::events::{Event, Input};
use crate::host::{Host, PendingOp, AGENT_ROUND_MS};
use crate::machine::{guard, Machine};
use crate::resources::{self, FakeKind, Fate};
use crate::trace::TraceEvent;

/// Leg size of the layout's volumes (only a number in the state).
const VOLUME_SIZE: u64 = 1 << 30;
/// A stand-in resync takes between these many ms.
const RESYNC_MS: (u64, u64) = (500, 3_000);
/// A resync's UpToDate proposal is made again after this long while the state lags.
const RESYNC_RETRY_MS: u64 = 2_000;

/// What the group side of a run did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Fake operations the agents asked for.
    pub ops: u64,
    /// Of which failed (fault, hang, or a monitor finding the resource down).
    pub ops_failed: u64,
    /// Operations that hung until their timeout.
    pub hangs: u64,
    /// Resources that crashed while running.
    pub crashes: u64,
    /// Resources the operator started by hand where the group was not placed.
    pub hand_starts: u64,
    /// Group operator actions proposed (move, clear, disable, enable, standby, online).
    pub operator_actions: u64,
    /// Proposals of the agents and placement loops.
    pub proposals: u64,
    /// Groups started (agent `started` events).
    pub started: u64,
    /// Nodes that stopped their groups on losing the lease (agent `self-fenced` events).
    pub self_fenced: u64,
    /// Legs the stand-in volume engine resynced.
    pub resyncs: u64,
    /// Groups running where they are placed when the run settled.
    pub settled_running: u64,
    /// Groups with no eligible node (or disabled) when the run settled.
    pub settled_idle: u64,
    /// Copies started by hand still running at the end (tandem does not look for them).
    pub hand_copies_left: u64,
    /// From the heal until every group ran where placed.
    pub settle_ms: u64,
    /// Processes the watchdog killed because they were frozen past their lease.
    pub watchdog_frozen: u64,
    /// Processes the watchdog killed because they still held resources past their lease
    /// (escalation of a stop that failed or ran long).
    pub watchdog_escalations: u64,
}

impl World {
    /// Whether this run has groups.
    pub(super) fn has_groups(&self) -> bool {
        self.scenario.layout.is_some()
    }

    fn unix_ms(&self) -> u64 {
        super::UNIX_BASE * 1000 + self.now
    }

    fn resource_faults_on(&self) -> bool {
        self.options.resource_faults && matches!(self.phase, Phase::Faults { .. })
    }

    /// Setup: the next change that creates the layout's volumes and groups, proposed on
    /// `leader`. `true` once the leader's state has all of them.
    pub(super) fn group_setup(&mut self, leader: NodeId) -> Result<bool, Violation> {
        let Some(layout) = self.scenario.layout else {
            return Ok(true);
        };
        let Some(core) = self.core_of(leader) else {
            return Ok(false);
        };
        let Some(change) = missing_setup(core.state(), layout) else {
            return Ok(true);
        };
        if !self.workload.has_outstanding() {
            self.propose(leader, change, None)?;
        }
        Ok(false)
    }

    /// A process started: a new agent and placer, and its first round.
    pub(super) fn host_started(&mut self, id: NodeId) {
        if !self.has_groups() {
            return;
        }
        let phase = self.clock_rng.gen_range(1..=AGENT_ROUND_MS);
        let Some(machine) = self.machines.get_mut(&id) else {
            return;
        };
        machine.host = Some(Host::new(id));
        let event = Event::Input {
            node: id,
            incarnation: machine.incarnation,
            input: Input::AgentRound,
        };
        self.queue.push(self.now + phase, event);
    }

    /// The process of `id` died (with its machine when `power_loss`): what dies with it.
    pub(super) fn resources_died(&mut self, id: NodeId, power_loss: bool) -> Result<(), Violation> {
        let leaves_ips = self.options.crash_leaves_ips;
        let now = self.now;
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        machine.host = None;
        machine.lease_until = machine.lease_until.min(now);
        let dead = if power_loss {
            machine.fakes.power_lost()
        } else {
            machine.fakes.process_died(leaves_ips)
        };
        if !dead.is_empty() {
            let how = if power_loss {
                "gone with the power"
            } else {
                "killed with the tandem process (PDEATHSIG)"
            };
            let what = format!("{} {how}", list(&dead));
            self.trace
                .record(self.now, Some(id), TraceEvent::Resource(what));
        }
        self.check_groups()
    }

    /// One round of the agent and the placement loop on `id`, as `agent_host::round`.
    pub(super) fn agent_round(&mut self, id: NodeId, incarnation: u32) -> Result<(), Violation> {
        let next = Event::Input {
            node: id,
            incarnation,
            input: Input::AgentRound,
        };
        self.queue.push(self.now + AGENT_ROUND_MS, next);
        let now_unix_ms = self.unix_ms();
        let lie = self.options.mutations.contains(&Mutation::IgnoreLeaseLoss);
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        let local = machine.local(self.now);
        let Machine { core, host, .. } = machine;
        let (Some(core), Some(host)) = (core.as_ref(), host.as_mut()) else {
            return Ok(());
        };
        let (mut proposals, actions, holds) = guard(id, || {
            let failover = scheduler::default_failover_timeout_ms(core.timing());
            let mut proposals = Vec::new();
            match core.liveness(local, failover) {
                Some(liveness) => proposals.extend(host.placer.tick(
                    local,
                    now_unix_ms,
                    id,
                    core.state(),
                    &liveness,
                )),
                None => host.placer.reset(),
            }
            let holds = core.holds_node_lease(local);
            host.agent.tick(Inputs {
                now: local,
                now_unix_ms,
                state: core.state(),
                holds_lease: holds || lie,
            });
            (proposals, host.agent.take_actions(), holds)
        })?;
        self.note_lease(id);
        if holds && self.options.mutations.contains(&Mutation::SkipAcquire) {
            self.skip_acquire(id);
        }
        self.perform_agent(id, actions, &mut proposals)?;
        self.resync(id, holds, &mut proposals);
        for change in proposals {
            self.propose_driver(id, change)?;
        }
        self.check_groups()
    }

    /// Carries out what the agent asked for; its proposals join `proposals`.
    fn perform_agent(
        &mut self,
        id: NodeId,
        actions: Vec<AgentAction>,
        proposals: &mut Vec<StateChange>,
    ) -> Result<(), Violation> {
        for action in actions {
            match action {
                AgentAction::Run {
                    op,
                    group,
                    index,
                    kind,
                    spec,
                } => self.start_op(id, op, group, index, kind, &spec),
                AgentAction::Propose(change) => proposals.push(change),
                AgentAction::Cancel { op } => self.cancel_op(id, op),
                AgentAction::Event(event) => {
                    match event.kind {
                        EventKind::Started => self.group_stats.started += 1,
                        EventKind::SelfFenced => self.group_stats.self_fenced += 1,
                        _ => {}
                    }
                    let line = TraceEvent::AgentEvent(event.to_string());
                    self.trace.record(self.now, Some(id), line);
                }
            }
        }
        Ok(())
    }

    /// Starts a fake operation; it completes as an input of this process.
    fn start_op(
        &mut self,
        id: NodeId,
        op: u64,
        group: String,
        index: usize,
        kind: OpKind,
        spec: &ResourceSpec,
    ) {
        let Some(fake) = FakeKind::of(spec) else {
            // The agent handles volumes through proposals and never runs them.
            let what = format!("the agent asked to run a volume resource: {group}[{index}]");
            self.trace
                .record(self.now, Some(id), TraceEvent::Note(what));
            return;
        };
        let faults = self.resource_faults_on();
        let timeout = spec.monitor().timeout_ms();
        let plan = resources::draw(
            &mut self.res_rng,
            kind,
            fake,
            faults,
            self.options.stop_max_ms,
            timeout,
        );
        self.group_stats.ops += 1;
        self.group_stats.hangs += u64::from(plan.fate == Fate::Hang);
        let Some(machine) = self.machines.get_mut(&id) else {
            return;
        };
        let Some(host) = machine.host.as_mut() else {
            return;
        };
        let what = spec.to_string();
        let line = TraceEvent::AgentRun {
            op,
            kind: kind_name(kind),
            group: group.clone(),
            index,
            what: what.clone(),
            takes_ms: plan.takes_ms,
            fate: plan.fate.to_string(),
        };
        host.ops.insert(
            op,
            PendingOp {
                group,
                index,
                kind,
                fake,
                plan,
                what,
            },
        );
        let event = Event::Input {
            node: id,
            incarnation: machine.incarnation,
            input: Input::OpDone { op },
        };
        self.trace.record(self.now, Some(id), line);
        self.queue.push(self.now + plan.takes_ms, event);
    }

    /// The agent abandoned an operation (its lease lapsed). Like the daemon aborting the
    /// task: no completion comes; an abandoned start may have started its resource (the
    /// agent stops it next), a monitor changes nothing.
    fn cancel_op(&mut self, id: NodeId, op: u64) {
        let now = self.now;
        let Some(machine) = self.machines.get_mut(&id) else {
            return;
        };
        let Some(pending) = machine.host.as_mut().and_then(|host| host.ops.remove(&op)) else {
            return;
        };
        if pending.kind == OpKind::Start {
            machine
                .fakes
                .start(&pending.group, pending.index, pending.fake, false, now);
        }
        let line = format!(
            "op {op} abandoned ({} {})",
            kind_name(pending.kind),
            pending.what
        );
        self.trace.record(now, Some(id), TraceEvent::Note(line));
    }

    /// A fake operation completes: its effect on the ground truth, then the agent is told.
    pub(super) fn op_done(&mut self, id: NodeId, op: u64) -> Result<(), Violation> {
        let now = self.now;
        let now_unix_ms = self.unix_ms();
        let lie = self.options.mutations.contains(&Mutation::IgnoreLeaseLoss);
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        let local = machine.local(now);
        let Some(pending) = machine.host.as_mut().and_then(|host| host.ops.remove(&op)) else {
            return Ok(());
        };
        let PendingOp {
            group,
            index,
            kind,
            fake,
            plan,
            what,
        } = pending;
        let fakes = &mut machine.fakes;
        let outcome = match (kind, plan.fate) {
            (OpKind::Start, Fate::Normal) => {
                fakes.start(&group, index, fake, false, now);
                Outcome::Running
            }
            (OpKind::Start, fate) => {
                if plan.leaves_running {
                    fakes.start(&group, index, fake, false, now);
                }
                Outcome::Failed(match fate {
                    Fate::Hang => format!(
                        "start of {what} timed out after {} ms",
                        resources::START_TIMEOUT_MS
                    ),
                    _ => format!("start of {what} failed (fake fault)"),
                })
            }
            (OpKind::Stop, Fate::Normal) => {
                fakes.stop(&group, index);
                Outcome::NotRunning
            }
            (OpKind::Stop, _) => Outcome::Failed(format!("stop of {what} failed (fake fault)")),
            (OpKind::Monitor, Fate::Normal) if fakes.is_running(&group, index) => Outcome::Running,
            (OpKind::Monitor, Fate::Normal) => Outcome::NotRunning,
            (OpKind::Monitor, Fate::Fail) => {
                Outcome::Failed(format!("monitor of {what} failed (fake fault)"))
            }
            (OpKind::Monitor, Fate::Hang) => Outcome::Failed(format!(
                "monitor of {what} timed out after {} ms",
                plan.takes_ms
            )),
        };
        let failed = matches!(
            (&outcome, kind),
            (Outcome::Failed(_), _) | (Outcome::NotRunning, OpKind::Monitor)
        );
        self.group_stats.ops_failed += u64::from(failed);
        let line = TraceEvent::OpDone {
            op,
            kind: kind_name(kind),
            group,
            index,
            outcome: describe_outcome(&outcome),
        };
        self.trace.record(now, Some(id), line);
        self.check_groups()?;
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        let Machine { core, host, .. } = machine;
        let (Some(core), Some(host)) = (core.as_ref(), host.as_mut()) else {
            return Ok(());
        };
        let actions = guard(id, || {
            let inputs = Inputs {
                now: local,
                now_unix_ms,
                state: core.state(),
                holds_lease: core.holds_node_lease(local) || lie,
            };
            host.agent.completed(inputs, op, outcome);
            host.agent.take_actions()
        })?;
        let mut proposals = Vec::new();
        self.perform_agent(id, actions, &mut proposals)?;
        for change in proposals {
            self.propose_driver(id, change)?;
        }
        self.check_groups()
    }

    /// The `skip-acquire` mutation: start every resource of a group placed here at once.
    fn skip_acquire(&mut self, id: NodeId) {
        let now = self.now;
        let Some(machine) = self.machines.get_mut(&id) else {
            return;
        };
        let Some(core) = machine.core.as_ref() else {
            return;
        };
        let mut started = Vec::new();
        for (name, group) in &core.state().groups {
            if group.status.node != Some(id) || !group.spec.enabled {
                continue;
            }
            for (index, spec) in group.spec.resources.iter().enumerate() {
                if let Some(kind) = FakeKind::of(spec) {
                    if !machine.fakes.is_running(name, index) {
                        machine.fakes.start(name, index, kind, false, now);
                        started.push((name.clone(), index));
                    }
                }
            }
        }
        if !started.is_empty() {
            let what = format!(
                "MUTATION skip-acquire: {} started without acquiring the group",
                list(&started)
            );
            self.trace.record(now, Some(id), TraceEvent::Resource(what));
        }
    }

    /// The volume engine's stand-in on `id`: legs of volumes it is primary of that are not
    /// UpToDate get resynced once their node runs and is reachable.
    fn resync(&mut self, id: NodeId, holds: bool, proposals: &mut Vec<StateChange>) {
        let mut wanted = Vec::new();
        if let Some(core) = self.core_of(id).filter(|_| holds) {
            for volume in core.state().volumes.values() {
                if volume.primary != Some(id) {
                    continue;
                }
                for leg in &volume.legs {
                    let reachable = leg.nodes.iter().any(|&peer| {
                        peer != id
                            && self.machines.get(&peer).is_some_and(Machine::running)
                            && !self.net.is_blocked(id, peer)
                            && !self.net.is_blocked(peer, id)
                    });
                    if leg.state != LegState::UpToDate && reachable {
                        let change = VolumeChange::SetLegState {
                            volume: volume.id,
                            leg: leg.id,
                            state: LegState::UpToDate,
                            epoch: volume.epoch,
                        };
                        let key = (volume.id, leg.id, volume.epoch);
                        wanted.push((key, StateChange::Volume(change)));
                    }
                }
            }
        }
        let now = self.now;
        let delay = self.res_rng.gen_range(RESYNC_MS.0..=RESYNC_MS.1);
        let Some(host) = self.machines.get_mut(&id).and_then(|m| m.host.as_mut()) else {
            return;
        };
        host.resync
            .retain(|key, _| wanted.iter().any(|(wanted, _)| wanted == key));
        for (key, change) in wanted {
            match host.resync.get(&key).copied() {
                None => {
                    host.resync.insert(key, now + delay);
                }
                Some(due) if due <= now => {
                    host.resync.insert(key, now + RESYNC_RETRY_MS);
                    self.group_stats.resyncs += 1;
                    proposals.push(change);
                }
                Some(_) => {}
            }
        }
    }

    /// Proposes a change of the agent or the placement loop on `id` (refusals are fine).
    fn propose_driver(&mut self, id: NodeId, change: StateChange) -> Result<(), Violation> {
        let request = self.workload.request();
        let what = super::operator::describe(&change);
        let proposed = self.call(id, |core| core.propose(request, change))?;
        self.group_stats.proposals += 1;
        let event = TraceEvent::Proposed {
            request,
            what,
            refused: proposed.err().map(|error| error.to_string()),
        };
        self.trace.record(self.now, Some(id), event);
        Ok(())
    }

    /// The operator does something to a group now and then during the faults.
    pub(super) fn on_group_operator(&mut self) -> Result<(), Violation> {
        if !matches!(self.phase, Phase::Faults { .. }) {
            return Ok(());
        }
        let gap = self.group_rng.gen_range(1_000..=4_000);
        self.queue.push(self.now + gap, Event::GroupOperator);
        let Some(&leader) = self.leaders().first() else {
            return Ok(());
        };
        let Some(core) = self.machines.get(&leader).and_then(|m| m.core.as_ref()) else {
            return Ok(());
        };
        let state = core.state();
        let names: Vec<String> = state.groups.keys().cloned().collect();
        let Some(name) = names.choose(&mut self.group_rng).cloned() else {
            return Ok(());
        };
        let group = &state.groups[&name];
        let hosts = data_nodes(state, &group.spec.resources);
        let roll = self.group_rng.gen_range(0..100);
        let change = match roll {
            0..=24 => match hosts.choose(&mut self.group_rng) {
                Some(&to) => StateChange::Group(GroupChange::Move { group: name, to }),
                None => return Ok(()),
            },
            25..=44 => StateChange::Group(GroupChange::Clear { group: name }),
            45..=59 if group.spec.enabled => {
                StateChange::Group(GroupChange::Disable { group: name })
            }
            45..=74 => StateChange::Group(GroupChange::Enable { group: name }),
            _ => {
                let Some(&id) = hosts.choose(&mut self.group_rng) else {
                    return Ok(());
                };
                let admin = if self.group_rng.gen_bool(0.5) {
                    Admin::Standby
                } else {
                    Admin::Online
                };
                StateChange::SetAdmin { id, admin }
            }
        };
        self.group_stats.operator_actions += 1;
        self.propose(leader, change, None).map(|_| ())
    }

    /// Now and then during the faults: a running resource crashes, or the operator starts a
    /// resource by hand on a node where its group is not placed.
    pub(super) fn on_resource_chaos(&mut self) -> Result<(), Violation> {
        if !matches!(self.phase, Phase::Faults { .. }) || !self.options.resource_faults {
            return Ok(());
        }
        let gap = self.group_rng.gen_range(1_000..=5_000);
        self.queue.push(self.now + gap, Event::ResourceChaos);
        if self.group_rng.gen_bool(0.75) {
            self.crash_a_resource()
        } else {
            self.start_by_hand()
        }
    }

    fn crash_a_resource(&mut self) -> Result<(), Violation> {
        let running: Vec<(NodeId, String, usize)> = self
            .machines
            .values()
            .flat_map(|machine| {
                machine
                    .fakes
                    .iter()
                    .filter(|(_, _, running)| !running.by_hand)
                    .map(|(group, index, _)| (machine.id, group.to_string(), index))
            })
            .collect();
        let Some((id, group, index)) = running.choose(&mut self.group_rng).cloned() else {
            return Ok(());
        };
        if let Some(machine) = self.machines.get_mut(&id) {
            machine.fakes.stop(&group, index);
        }
        self.group_stats.crashes += 1;
        let what = format!("{group}[{index}] crashed while running");
        self.trace
            .record(self.now, Some(id), TraceEvent::Resource(what));
        Ok(())
    }

    /// DESIGN.md §6's operator mistake: a service (or an IP) started by hand on a node that
    /// does not run its group.
    fn start_by_hand(&mut self) -> Result<(), Violation> {
        let Some(&leader) = self.leaders().first() else {
            return Ok(());
        };
        let Some(core) = self.machines.get(&leader).and_then(|m| m.core.as_ref()) else {
            return Ok(());
        };
        let state = core.state();
        let mut choices = Vec::new();
        for (name, group) in &state.groups {
            for node in data_nodes(state, &group.spec.resources) {
                if group.status.node == Some(node) || group.status.holder == Some(node) {
                    continue;
                }
                for (index, spec) in group.spec.resources.iter().enumerate() {
                    if let Some(kind) = FakeKind::of(spec) {
                        choices.push((node, name.clone(), index, kind, spec.to_string()));
                    }
                }
            }
        }
        let Some((node, group, index, kind, what)) = choices.choose(&mut self.group_rng).cloned()
        else {
            return Ok(());
        };
        let now = self.now;
        let Some(machine) = self.machines.get_mut(&node).filter(|m| !m.removed) else {
            return Ok(());
        };
        if machine.fakes.is_running(&group, index) {
            return Ok(());
        }
        machine.fakes.start(&group, index, kind, true, now);
        self.group_stats.hand_starts += 1;
        let what = format!("the operator started {group}[{index}] {what} BY HAND here");
        self.trace
            .record(now, Some(node), TraceEvent::Resource(what));
        Ok(())
    }

    /// Notes when `id`'s lease ends, as its process says now (after every call into it), and
    /// has the watchdog look at that end (as the real one learns it from the next pet).
    pub(super) fn note_lease(&mut self, id: NodeId) {
        let now = self.now;
        let Some(machine) = self.machines.get_mut(&id) else {
            return;
        };
        let remaining = match &machine.core {
            Some(core) => core.node_lease_remaining(machine.local(now)),
            None => 0,
        };
        let until = if remaining > 0 {
            now + remaining
        } else {
            machine.lease_until.min(now)
        };
        let changed = until != machine.lease_until;
        machine.lease_until = until;
        if changed && until > 0 {
            self.arm_escalation(id, until);
        }
    }

    /// The one-active checkers on the ground truth, now: no group on two machines, and no
    /// machine running a group past its self-fencing deadline.
    pub(super) fn check_groups(&self) -> Result<(), Violation> {
        if !self.has_groups() {
            return Ok(());
        }
        let timing = &self.scenario.timing;
        let deadline = scheduler::default_failover_timeout_ms(timing) - timing.lease_timeout_ms;
        for machine in self.machines.values() {
            let running: Vec<(&str, usize)> = machine
                .fakes
                .iter()
                .filter(|(_, _, running)| !running.by_hand)
                .map(|(group, index, _)| (group, index))
                .collect();
            let process = || match &machine.core {
                None => "process down".to_string(),
                Some(_) if machine.paused_until > self.now => {
                    format!("process FROZEN until t={}", machine.paused_until)
                }
                Some(_) => "process running".to_string(),
            };
            checkers::self_fence_deadline(
                machine.id,
                self.now,
                machine.lease_until,
                deadline,
                &running,
                process,
            )?;
        }
        let running: Vec<(NodeId, BTreeSet<&str>)> = self
            .machines
            .values()
            .map(|machine| (machine.id, machine.fakes.managed_groups()))
            .filter(|(_, groups)| !groups.is_empty())
            .collect();
        checkers::one_active(&running).map_err(|violation| match violation {
            Violation::GroupTwice { group, nodes, .. } => {
                let detail = self.describe_runners(&group, &nodes);
                Violation::GroupTwice {
                    group,
                    nodes,
                    detail,
                }
            }
            other => other,
        })
    }

    /// The one-writer checker on `id`'s committed state.
    pub(super) fn check_writer(&self, id: NodeId) -> Result<(), Violation> {
        match self.core_of(id) {
            Some(core) if self.has_groups() => {
                checkers::one_writer(id, core.applied_index(), core.state())
            }
            _ => Ok(()),
        }
    }

    /// For a violation: what each node runs of `group`, and what it knows.
    fn describe_runners(&self, group: &str, nodes: &[NodeId]) -> String {
        let mut out = String::new();
        for &node in nodes {
            let Some(machine) = self.machines.get(&node) else {
                continue;
            };
            let local = machine.local(self.now);
            let process = match &machine.core {
                None => "process down".to_string(),
                Some(_) if machine.paused_until > self.now => "process FROZEN".to_string(),
                Some(core) => format!(
                    "lease {} ms left, state says node {:?} holder {:?}",
                    core.node_lease_remaining(local),
                    core.state().groups.get(group).and_then(|g| g.status.node),
                    core.state().groups.get(group).and_then(|g| g.status.holder),
                ),
            };
            let resources: Vec<String> = machine
                .fakes
                .iter()
                .filter(|(name, _, running)| *name == group && !running.by_hand)
                .map(|(_, index, running)| format!("[{index}] since t={}", running.since))
                .collect();
            let _ = write!(out, "; n{node} ({process}) runs {}", resources.join(", "));
        }
        out
    }
}

/// The first change the layout still needs in `state` (volumes, legs UpToDate, groups).
fn missing_setup(state: &ClusterState, layout: crate::layout::Layout) -> Option<StateChange> {
    for (name, nodes) in layout.volumes() {
        let Some(volume) = state.volume_by_name(&name) else {
            let legs = nodes
                .iter()
                .map(|&node| LegSpec {
                    nodes: vec![node],
                    path: format!("/var/lib/tandem/legs/{name}-n{node}"),
                })
                .collect();
            return Some(StateChange::Volume(VolumeChange::Create {
                name,
                size: VOLUME_SIZE,
                legs,
                granularity: Default::default(),
            }));
        };
        if let Some(leg) = volume.legs.iter().find(|l| l.state != LegState::UpToDate) {
            return Some(StateChange::Volume(VolumeChange::SetLegState {
                volume: volume.id,
                leg: leg.id,
                state: LegState::UpToDate,
                epoch: volume.epoch,
            }));
        }
    }
    layout
        .groups()
        .into_iter()
        .find(|spec| !state.groups.contains_key(&spec.name))
        .map(|spec| StateChange::Group(GroupChange::Create { spec }))
}

/// The members that could run a group with these resources: every non-witness member that
/// reaches a leg of each of its volumes.
pub(super) fn data_nodes(state: &ClusterState, resources: &[ResourceSpec]) -> Vec<NodeId> {
    state
        .nodes
        .values()
        .filter(|node| node.role != Role::Witness)
        .map(|node| node.id)
        .filter(|&node| {
            resources
                .iter()
                .filter_map(ResourceSpec::volume)
                .all(|volume| {
                    state
                        .volume_by_name(volume)
                        .is_some_and(|info| info.leg_of(node).is_some())
                })
        })
        .collect()
}

fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Start => "start",
        OpKind::Stop => "stop",
        OpKind::Monitor => "monitor",
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Running => "running".to_string(),
        Outcome::NotRunning => "not running".to_string(),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    }
}

/// `g1[1], g1[2]`.
fn list(resources: &[(String, usize)]) -> String {
    resources
        .iter()
        .map(|(group, index)| format!("{group}[{index}]"))
        .collect::<Vec<_>>()
        .join(", ")
}
