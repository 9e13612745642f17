//! The agent: what one node does about the groups the cluster placed on it.
//!
//! A pure state machine, driven by the shim (or the simulator) with the committed state, the
//! time and whether this node holds its lease; it answers with resource operations to run
//! (start, stop, monitor), changes to propose and timeline events. The shim only runs what it
//! is told and reports each outcome back with [`Agent::completed`].
//!
//! The rules it follows (DESIGN.md §5 rule 2, issue #4):
//! - A group runs here only while it is placed here, enabled, not quarantined here, and this
//!   node holds its lease. Before starting anything the node *acquires* the group (a committed
//!   `GroupChange::Acquire`, refused while another node still holds it); after stopping
//!   everything it *releases* it. So a switchover never overlaps the two nodes.
//! - Resources start in order and stop in reverse, one at a time. A `volume` resource is no
//!   process: starting it proposes the promotion (a takeover when the leader fenced the old
//!   primary), stopping it proposes the demotion; it is up when the state says so.
//! - Without a lease the node stops everything at once, by itself (self-fencing), and does not
//!   wait for commits it cannot get. It releases the group when it is back, unless the leader
//!   fenced it meanwhile.
//! - A failed start or monitor is recorded in the cluster (`RecordFailure`); within
//!   `max_restarts` the group is restarted here from the failed resource on, beyond it the
//!   group stops here and the committed quarantine sends it elsewhere.
//! - After a restart of the daemon, resources of groups this node held (or was fenced from)
//!   may still be running, and virtual IPs of any group may be left on an interface: they are
//!   stopped first (stop is harmless when nothing runs), like Pacemaker's probes.

use std::collections::BTreeMap;

use crate::events::{Event, EventKind};
use crate::group::{Group, GroupChange, GroupSpec, ResourceSpec};
use crate::ids::NodeId;
use crate::state::{ClusterState, StateChange};
use crate::volume::{VolumeChange, VolumeInfo};

/// A proposal not reflected in the state after this long is made again.
pub const PROPOSAL_RETRY_MS: u64 = 2_000;
/// A restart after a failure waits this long (a failure that repeats at once, such as a busy
/// mount point, must not use up every restart within milliseconds).
pub const RESTART_DELAY_MS: u64 = 1_000;
/// A failed stop is tried again after this long.
pub const STOP_RETRY_MS: u64 = 5_000;
/// ... and after this long when the node has no lease (it must be stopped before the cluster
/// moves its groups).
pub const STOP_RETRY_NO_LEASE_MS: u64 = 100;
/// A group that used up its restarts waits this long for its quarantine to commit before it
/// is tried again (the failure record may have been lost in a leader change).
pub const GIVE_UP_MS: u64 = 10_000;

/// What the shim must run for a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Start,
    Stop,
    Monitor,
}

/// How a resource operation ended (the runner's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    NotRunning,
    Failed(String),
}

/// Something the agent wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAction {
    /// Run `kind` on resource `index` of `group` (with the spec given), then call
    /// [`Agent::completed`] with `op`. Never two operations at once on one resource.
    Run {
        op: u64,
        group: String,
        index: usize,
        kind: OpKind,
        spec: ResourceSpec,
    },
    Propose(StateChange),
    Event(Event),
    /// Abandon operation `op` (its outcome no longer matters): a start or monitor in flight
    /// when the lease was lost must not delay self-fencing. The resource is stopped next.
    Cancel {
        op: u64,
    },
}

/// What the agent knows of one resource here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Res {
    Stopped,
    Started,
    /// May be running (after a failure or a daemon restart): stop it before anything else.
    Dirty,
}

#[derive(Clone, Debug)]
struct LocalGroup {
    /// The spec this node runs (a spec edited meanwhile applies once the group is stopped).
    spec: GroupSpec,
    res: Vec<Res>,
    /// (op id, resource index, kind) in flight: one at a time, except the stops of a node
    /// that lost its lease, which all run at once (see [`Agent::self_fence`]).
    in_flight: Vec<(u64, usize, OpKind)>,
    next_monitor: Vec<u64>,
    /// Restart from this resource once everything after it is stopped.
    restart_from: Option<usize>,
    /// Out of restarts here: do not start before this time.
    given_up_until: u64,
    /// Stop failed: do not try again before this time.
    stop_retry_at: u64,
    /// Last proposal and when (to avoid proposing it every tick).
    proposed: Option<(StateChange, u64)>,
    /// When we last said why the group waits (said again only now and then).
    waiting_said_at: Option<u64>,
    /// Resources whose first monitor after a start has not passed yet.
    awaiting_health: Option<Vec<usize>>,
    /// Whether the group was fully stopped the last time we looked (for the Stopped event).
    was_running: bool,
    /// Only a cleanup after a daemon restart: the group is not ours, failures do not block.
    cleanup_only: bool,
    /// After a failure: start nothing before this time.
    restart_not_before: u64,
}

impl LocalGroup {
    fn new(spec: &GroupSpec, dirty: bool, cleanup_only: bool) -> LocalGroup {
        let count = spec.resources.len();
        let res = if dirty { Res::Dirty } else { Res::Stopped };
        LocalGroup {
            spec: spec.clone(),
            res: vec![res; count],
            in_flight: Vec::new(),
            next_monitor: vec![0; count],
            restart_from: None,
            given_up_until: 0,
            stop_retry_at: 0,
            proposed: None,
            waiting_said_at: None,
            awaiting_health: None,
            was_running: dirty,
            cleanup_only,
            restart_not_before: 0,
        }
    }

    fn all_stopped(&self) -> bool {
        self.res.iter().all(|&r| r == Res::Stopped)
    }
}

/// The inputs of one round.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Monotonic milliseconds.
    pub now: u64,
    /// Wall clock, for events and failure records.
    pub now_unix_ms: u64,
    pub state: &'a ClusterState,
    pub holds_lease: bool,
}

/// The agent of one node.
#[derive(Debug)]
pub struct Agent {
    me: NodeId,
    groups: BTreeMap<String, LocalGroup>,
    next_op: u64,
    actions: Vec<AgentAction>,
    started: bool,
    had_lease: bool,
    /// The daemon is stopping: every group is stopped and released here.
    stopping: bool,
}

impl Agent {
    pub fn new(me: NodeId) -> Agent {
        Agent {
            me,
            groups: BTreeMap::new(),
            next_op: 1,
            actions: Vec::new(),
            started: false,
            had_lease: false,
            stopping: false,
        }
    }

    /// The daemon is stopping: stop every group here (in reverse order) and release it, so
    /// another node may take it at once instead of after the failover timeout.
    pub fn shut_down(&mut self) {
        self.stopping = true;
    }

    /// Whether nothing runs here any more and no group is still held by this node (or it can
    /// no longer release one: no lease).
    pub fn is_quiet(&self, state: &ClusterState, holds_lease: bool) -> bool {
        let stopped = self
            .groups
            .values()
            .all(|local| local.all_stopped() && local.in_flight.is_empty());
        let holds_any = state
            .groups
            .values()
            .any(|group| group.status.holder == Some(self.me));
        stopped && (!holds_any || !holds_lease)
    }

    /// What the agent wants done since the last call.
    pub fn take_actions(&mut self) -> Vec<AgentAction> {
        std::mem::take(&mut self.actions)
    }

    /// Whether any resource of `group` may be running here: one not known stopped, or one
    /// whose start is in flight (an `ip addr add` or a spawned service takes effect before the
    /// start reports back; the watchdog must count it, or a daemon frozen mid-start would not
    /// be fenced).
    pub fn is_active(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| {
            !g.all_stopped()
                || g.in_flight
                    .iter()
                    .any(|&(_, _, kind)| kind == OpKind::Start)
        })
    }

    /// One round: look at the state and decide the next step of every group.
    pub fn tick(&mut self, inputs: Inputs<'_>) {
        if !self.started {
            self.started = true;
            self.adopt_after_restart(inputs.state);
        }
        self.notice_lease(inputs);
        self.had_lease = inputs.holds_lease;
        for (name, group) in &inputs.state.groups {
            let held_here = group.status.holder == Some(self.me);
            if !self.groups.contains_key(name) && (held_here || self.wants(inputs, group)) {
                let local = LocalGroup::new(&group.spec, false, false);
                self.groups.insert(name.clone(), local);
            }
        }
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            self.step_group(inputs, &name);
        }
    }

    /// The outcome of an operation the agent asked for.
    pub fn completed(&mut self, inputs: Inputs<'_>, op: u64, outcome: Outcome) {
        let Some((name, local)) = self
            .groups
            .iter_mut()
            .find(|(_, g)| g.in_flight.iter().any(|&(id, _, _)| id == op))
        else {
            return;
        };
        let name = name.clone();
        let Some(position) = local.in_flight.iter().position(|&(id, _, _)| id == op) else {
            return;
        };
        let (_, index, kind) = local.in_flight.remove(position);
        match (kind, outcome) {
            (OpKind::Start, Outcome::Running) => {
                local.res[index] = Res::Started;
                local.next_monitor[index] = inputs.now + monitor_interval(&local.spec, index);
            }
            (OpKind::Stop, Outcome::NotRunning | Outcome::Running) => {
                local.res[index] = Res::Stopped;
                local.stop_retry_at = 0;
            }
            (OpKind::Monitor, Outcome::Running) => self.monitor_passed(inputs, &name, index),
            (OpKind::Stop, Outcome::Failed(why)) => self.stop_failed(inputs, &name, index, why),
            (kind, outcome) => self.resource_failed(inputs, &name, index, kind, outcome),
        }
        self.step_group(inputs, &name);
    }

    /// Whether `group` should run on this node now.
    fn wants(&self, inputs: Inputs<'_>, group: &Group) -> bool {
        let status = &group.status;
        let now_unix = inputs.now_unix_ms / 1000;
        let given_up = self
            .groups
            .get(&group.spec.name)
            .is_some_and(|local| local.given_up_until > inputs.now);
        inputs.holds_lease
            && !self.stopping
            && group.spec.enabled
            && status.node == Some(self.me)
            && status.quarantine_of(self.me, now_unix).is_none()
            && !given_up
    }

    /// After a (re)start of the daemon: whatever this node may have left running is stopped
    /// before anything else happens.
    fn adopt_after_restart(&mut self, state: &ClusterState) {
        for (name, group) in &state.groups {
            let status = &group.status;
            let ours = [status.holder, status.node, status.fenced].contains(&Some(self.me));
            let mut local = LocalGroup::new(&group.spec, ours, !ours);
            // A volume resource is what the committed state says, not a process to probe.
            for (index, spec) in group.spec.resources.iter().enumerate() {
                if let ResourceSpec::Volume { volume, .. } = spec {
                    let primary = state.volume_by_name(volume).and_then(|v| v.primary);
                    let here = primary == Some(self.me);
                    local.res[index] = if here { Res::Started } else { Res::Stopped };
                }
            }
            if !ours {
                for (index, spec) in group.spec.resources.iter().enumerate() {
                    if matches!(spec, ResourceSpec::Ip { .. }) {
                        local.res[index] = Res::Dirty;
                    }
                }
                if local.all_stopped() {
                    continue;
                }
            }
            self.groups.insert(name.clone(), local);
        }
    }

    fn notice_lease(&mut self, inputs: Inputs<'_>) {
        if !inputs.holds_lease {
            self.cancel_starts_and_monitors();
        }
        if self.had_lease && !inputs.holds_lease {
            // A stop that failed with a lease waits 5 s to be retried; now it may not wait.
            for local in self.groups.values_mut() {
                local.stop_retry_at = local.stop_retry_at.min(inputs.now);
            }
        }
        if self.had_lease && !inputs.holds_lease {
            let active: Vec<String> = self
                .groups
                .iter()
                .filter(|(_, g)| !g.all_stopped())
                .map(|(name, _)| name.clone())
                .collect();
            if !active.is_empty() {
                let detail = format!(
                    "lost the lease (no quorum confirmed it): stopping {} here by itself",
                    active.join(", ")
                );
                self.event(inputs, None, EventKind::SelfFenced, detail);
            }
        }
    }

    /// Without a lease nothing may delay the stops: a start or monitor in flight (which may
    /// hang until its timeout) is abandoned and its resource counted as possibly running.
    fn cancel_starts_and_monitors(&mut self) {
        for local in self.groups.values_mut() {
            let (abandon, keep): (Vec<_>, Vec<_>) = local
                .in_flight
                .drain(..)
                .partition(|&(_, _, kind)| kind != OpKind::Stop);
            local.in_flight = keep;
            for (op, index, _) in abandon {
                local.res[index] = Res::Dirty;
                self.actions.push(AgentAction::Cancel { op });
            }
        }
    }

    /// The next step for one group, if nothing is in flight for it.
    fn step_group(&mut self, inputs: Inputs<'_>, name: &str) {
        let Some(local) = self.groups.get(name) else {
            return;
        };
        if !inputs.holds_lease && !local.cleanup_only {
            return self.self_fence(inputs, name);
        }
        if !local.in_flight.is_empty() {
            return;
        }
        let committed = inputs.state.groups.get(name);
        let wanted = committed.is_some_and(|g| self.wants(inputs, g)) && !local.cleanup_only;
        if wanted {
            self.run_wanted(inputs, name);
        } else {
            self.wind_down(inputs, name);
        }
    }

    /// Without a lease: every resource that may run is stopped at once, not one after the
    /// other, because all of them must be down before the leader's failover timeout runs out
    /// (`failover_timeout - lease_timeout` after the lease lapsed). The volume is no process:
    /// the write path already refuses writes without a lease. What is left afterwards (the
    /// Stopped event, the release once the lease is back) is [`Agent::wind_down`]'s.
    fn self_fence(&mut self, inputs: Inputs<'_>, name: &str) {
        let Some(local) = self.groups.get(name) else {
            return;
        };
        if local.stop_retry_at > inputs.now {
            return;
        }
        let busy: Vec<usize> = local.in_flight.iter().map(|&(_, index, _)| index).collect();
        let to_stop: Vec<usize> = (0..local.res.len())
            .rev()
            .filter(|&index| local.res[index] != Res::Stopped && !busy.contains(&index))
            .collect();
        if to_stop.is_empty() && busy.is_empty() {
            return self.wind_down(inputs, name);
        }
        for index in to_stop {
            self.stop_resource(inputs, name, index);
        }
    }

    /// The group should not run here: stop it in reverse order, then release it.
    fn wind_down(&mut self, inputs: Inputs<'_>, name: &str) {
        let Some(local) = self.groups.get(name) else {
            return;
        };
        if let Some(index) = local.res.iter().rposition(|&r| r != Res::Stopped) {
            if local.stop_retry_at <= inputs.now {
                self.stop_resource(inputs, name, index);
            }
            return;
        }
        let was_running = local.was_running;
        let cleanup_only = local.cleanup_only;
        if was_running {
            let detail = if cleanup_only {
                "left-overs from before the daemon restarted are stopped".to_string()
            } else {
                format!(
                    "every resource is stopped ({})",
                    why_not_here(inputs, name, self.me)
                )
            };
            self.event(inputs, Some(name), EventKind::Stopped, detail);
            if let Some(local) = self.groups.get_mut(name) {
                local.was_running = false;
                local.awaiting_health = None;
                local.restart_from = None;
            }
        }
        let holder = inputs.state.groups.get(name).and_then(|g| g.status.holder);
        if holder == Some(self.me) && inputs.holds_lease {
            // A promotion may have committed after the volume resource was stopped (or a
            // self-fenced node could not demote): demote before letting another node in.
            if let Some(demote) = self.demotion_left(inputs, name) {
                return self.propose(inputs, name, demote);
            }
            let release = GroupChange::Release {
                group: name.to_string(),
                node: self.me,
            };
            self.propose(inputs, name, StateChange::Group(release));
            return;
        }
        let keep = self
            .groups
            .get(name)
            .is_some_and(|local| local.given_up_until > inputs.now);
        if holder != Some(self.me) && !keep {
            self.groups.remove(name);
        }
    }

    /// A demotion of a volume of group `name` that the committed state still has primary here.
    fn demotion_left(&self, inputs: Inputs<'_>, name: &str) -> Option<StateChange> {
        let local = self.groups.get(name)?;
        local.spec.volumes().into_iter().find_map(|volume| {
            let info = inputs.state.volume_by_name(volume)?;
            (info.primary == Some(self.me)).then_some(StateChange::Volume(VolumeChange::Demote {
                volume: info.id,
                epoch: info.epoch,
            }))
        })
    }

    /// The group should run here: acquire it, start what is stopped, monitor what runs.
    fn run_wanted(&mut self, inputs: Inputs<'_>, name: &str) {
        let Some(group) = inputs.state.groups.get(name) else {
            return;
        };
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        if local.all_stopped() && local.spec != group.spec {
            local.spec = group.spec.clone();
            local.res = vec![Res::Stopped; local.spec.resources.len()];
            local.next_monitor = vec![0; local.spec.resources.len()];
        }
        if let Some(from) = local.restart_from {
            match local.res.iter().rposition(|&r| r != Res::Stopped) {
                Some(index) if index >= from => return self.stop_resource(inputs, name, index),
                _ => local.restart_from = None,
            }
        }
        if let Some(index) = local.res.iter().rposition(|&r| r == Res::Dirty) {
            return self.stop_resource(inputs, name, index);
        }
        match group.status.holder {
            Some(holder) if holder == self.me => {}
            Some(_) => return,
            None => {
                let acquire = GroupChange::Acquire {
                    group: name.to_string(),
                    node: self.me,
                    epoch: group.status.epoch,
                };
                return self.propose(inputs, name, StateChange::Group(acquire));
            }
        }
        if let Some(index) = local.res.iter().position(|&r| r == Res::Stopped) {
            if local.restart_not_before > inputs.now {
                return;
            }
            return self.start_resource(inputs, name, index);
        }
        self.all_started(inputs, name);
    }

    /// Every resource runs: announce it once, then keep monitoring.
    fn all_started(&mut self, inputs: Inputs<'_>, name: &str) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        if !local.was_running {
            local.was_running = true;
            local.awaiting_health = Some((0..local.res.len()).collect());
            local
                .next_monitor
                .iter_mut()
                .for_each(|at| *at = inputs.now);
            let detail = format!("{} resource(s) started here", local.res.len());
            self.event(inputs, Some(name), EventKind::Started, detail);
        }
        let Some(local) = self.groups.get(name) else {
            return;
        };
        // A volume resource is the committed state, so it is checked on every step: a
        // demotion that commits late (two contradicting moves) is noticed at once, not at
        // the next monitor.
        let lost_volume = (local.spec.resources.iter().enumerate()).find_map(|(i, spec)| {
            let ResourceSpec::Volume { volume, .. } = spec else {
                return None;
            };
            let primary = volume_named(inputs.state, volume).ok()?.primary;
            (primary != Some(self.me)).then_some(i)
        });
        let due = (0..local.res.len()).find(|&i| local.next_monitor[i] <= inputs.now);
        if let Some(index) = lost_volume.or(due) {
            self.monitor_resource(inputs, name, index);
        }
    }

    fn start_resource(&mut self, inputs: Inputs<'_>, name: &str, index: usize) {
        let Some(local) = self.groups.get(name) else {
            return;
        };
        let spec = local.spec.resources[index].clone();
        let ResourceSpec::Volume { volume, .. } = &spec else {
            return self.run(name, index, OpKind::Start, spec);
        };
        match self.promotion(inputs, name, volume) {
            Ok(None) => self.volume_is(inputs, name, index, Res::Started, volume),
            Ok(Some(change)) => self.propose(inputs, name, change),
            Err(why) => self.wait(inputs, name, why),
        }
    }

    /// What it takes to make this node the primary of `volume` for group `name`.
    pub(crate) fn promotion(
        &self,
        inputs: Inputs<'_>,
        name: &str,
        volume: &str,
    ) -> Result<Option<StateChange>, String> {
        let info = volume_named(inputs.state, volume)?;
        let fenced = inputs.state.groups.get(name).and_then(|g| g.status.fenced);
        let takeover = match info.primary {
            Some(primary) if primary == self.me => return Ok(None),
            None => false,
            Some(primary) if Some(primary) == fenced => true,
            Some(primary) if !inputs.state.nodes.contains_key(&primary) => true,
            Some(primary) => {
                return Err(format!(
                    "volume {volume} is primary on node {primary}, which has not demoted it \
                     and was not fenced; waiting"
                ))
            }
        };
        Ok(Some(StateChange::Volume(VolumeChange::Promote {
            volume: info.id,
            node: self.me,
            force: false,
            takeover,
        })))
    }

    fn stop_resource(&mut self, inputs: Inputs<'_>, name: &str, index: usize) {
        let Some(local) = self.groups.get(name) else {
            return;
        };
        let spec = local.spec.resources[index].clone();
        let ResourceSpec::Volume { volume, .. } = &spec else {
            return self.run(name, index, OpKind::Stop, spec);
        };
        let info = match volume_named(inputs.state, volume) {
            Ok(info) => info,
            Err(_) => return self.volume_is(inputs, name, index, Res::Stopped, volume),
        };
        if info.primary != Some(self.me) {
            return self.volume_is(inputs, name, index, Res::Stopped, volume);
        }
        if !inputs.holds_lease {
            // No demotion can commit without a lease; the data path refuses writes without
            // one, and the leader fences this node before anyone takes the volume over.
            return self.volume_is(inputs, name, index, Res::Stopped, volume);
        }
        let demote = VolumeChange::Demote {
            volume: info.id,
            epoch: info.epoch,
        };
        self.propose(inputs, name, StateChange::Volume(demote));
    }

    /// A volume resource reached `res` as the committed state says; events for the timeline.
    fn volume_is(&mut self, inputs: Inputs<'_>, name: &str, index: usize, res: Res, vol: &str) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        let before = local.res[index];
        local.res[index] = res;
        local.proposed = None;
        local.next_monitor[index] = inputs.now + monitor_interval(&local.spec, index);
        let primary = volume_named(inputs.state, vol).ok().and_then(|v| v.primary);
        let (kind, detail) = match res {
            Res::Started => (EventKind::Promoted, format!("primary of volume {vol}")),
            _ if primary == Some(self.me) => (
                EventKind::Demoted,
                format!("stopped writing volume {vol} (no lease: cannot commit a demotion)"),
            ),
            _ => (
                EventKind::Demoted,
                format!("no longer primary of volume {vol}"),
            ),
        };
        if before != res && !(before == Res::Dirty && primary != Some(self.me)) {
            self.event(inputs, Some(name), kind, detail);
        }
        self.step_group(inputs, name);
    }

    fn monitor_resource(&mut self, inputs: Inputs<'_>, name: &str, index: usize) {
        let Some(local) = self.groups.get(name) else {
            return;
        };
        let spec = local.spec.resources[index].clone();
        let ResourceSpec::Volume { volume, .. } = &spec else {
            return self.run(name, index, OpKind::Monitor, spec);
        };
        let primary = volume_named(inputs.state, volume)
            .ok()
            .and_then(|v| v.primary);
        if primary == Some(self.me) {
            self.monitor_passed(inputs, name, index);
            self.step_group(inputs, name);
        } else {
            let why = format!("this node is no longer primary of volume {volume}");
            self.resource_failed(inputs, name, index, OpKind::Monitor, Outcome::Failed(why));
            self.step_group(inputs, name);
        }
    }

    fn monitor_passed(&mut self, inputs: Inputs<'_>, name: &str, index: usize) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        local.next_monitor[index] = inputs.now + monitor_interval(&local.spec, index);
        let Some(waiting) = local.awaiting_health.as_mut() else {
            return;
        };
        waiting.retain(|&i| i != index);
        if waiting.is_empty() {
            local.awaiting_health = None;
            let detail = "every resource passed its first monitor".to_string();
            self.event(inputs, Some(name), EventKind::Healthy, detail);
        }
    }

    /// A start or monitor failed: record it, then restart here or give up here.
    fn resource_failed(
        &mut self,
        inputs: Inputs<'_>,
        name: &str,
        index: usize,
        kind: OpKind,
        outcome: Outcome,
    ) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        local.res[index] = Res::Dirty;
        if local.cleanup_only {
            return;
        }
        let resource = local.spec.resources[index].to_string();
        let why = match outcome {
            Outcome::Failed(why) => why,
            Outcome::NotRunning => "it is not running".to_string(),
            Outcome::Running => "unexpected answer".to_string(),
        };
        let what = match kind {
            OpKind::Start => "start",
            OpKind::Stop => "stop",
            OpKind::Monitor => "monitor",
        };
        let detail = format!("{what} of resource {index} ({resource}) failed: {why}");
        self.event(inputs, Some(name), EventKind::Detected, detail);
        let at_unix = inputs.now_unix_ms / 1000;
        let record = GroupChange::RecordFailure {
            group: name.to_string(),
            node: self.me,
            at_unix,
        };
        self.actions
            .push(AgentAction::Propose(StateChange::Group(record)));
        self.restart_or_give_up(inputs, name, index, at_unix);
    }

    fn restart_or_give_up(&mut self, inputs: Inputs<'_>, name: &str, index: usize, at: u64) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        let spec = &local.spec;
        let since = at.saturating_sub(spec.restart_window_secs);
        let earlier = inputs
            .state
            .groups
            .get(name)
            .and_then(|g| g.status.failures.get(&self.me))
            .map_or(0, |times| times.iter().filter(|&&t| t > since).count());
        let (kind, detail) = if earlier + 1 > spec.max_restarts as usize {
            local.given_up_until = inputs.now + GIVE_UP_MS;
            let detail = format!(
                "{} failures within {} s exceed max_restarts {}: stopping here, the group \
                 fails over",
                earlier + 1,
                spec.restart_window_secs,
                spec.max_restarts
            );
            (EventKind::Failed, detail)
        } else {
            local.restart_from = Some(index);
            local.was_running = false;
            local.restart_not_before = inputs.now + RESTART_DELAY_MS;
            let detail = format!(
                "restart {} of {} from resource {index}",
                earlier + 1,
                spec.max_restarts
            );
            (EventKind::Restarting, detail)
        };
        self.event(inputs, Some(name), kind, detail);
    }

    fn stop_failed(&mut self, inputs: Inputs<'_>, name: &str, index: usize, why: String) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        let resource = local.spec.resources[index].to_string();
        if local.cleanup_only {
            // Not our group: a left-over we could not stop must not block anything.
            local.res[index] = Res::Stopped;
            let detail = format!("cleanup stop of resource {index} ({resource}) failed: {why}");
            return self.event(inputs, Some(name), EventKind::Failed, detail);
        }
        local.res[index] = Res::Dirty;
        // Without a lease the node must be stopped by the failover timeout: retry at once.
        let wait = if inputs.holds_lease {
            STOP_RETRY_MS
        } else {
            STOP_RETRY_NO_LEASE_MS
        };
        local.stop_retry_at = inputs.now + wait;
        let detail = format!(
            "stop of resource {index} ({resource}) failed: {why}; the group stays held by \
             this node, tried again in {wait} ms"
        );
        self.event(inputs, Some(name), EventKind::Failed, detail);
    }

    fn run(&mut self, name: &str, index: usize, kind: OpKind, spec: ResourceSpec) {
        let busy = self
            .groups
            .get(name)
            .is_some_and(|local| local.in_flight.iter().any(|&(_, at, _)| at == index));
        if busy {
            return; // never two operations at once on one resource
        }
        let op = self.next_op;
        self.next_op += 1;
        if let Some(local) = self.groups.get_mut(name) {
            local.in_flight.push((op, index, kind));
        }
        self.actions.push(AgentAction::Run {
            op,
            group: name.to_string(),
            index,
            kind,
            spec,
        });
    }

    /// Proposes `change` unless the same one was proposed less than a retry interval ago.
    fn propose(&mut self, inputs: Inputs<'_>, name: &str, change: StateChange) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        let recent = local.proposed.as_ref().is_some_and(|(last, at)| {
            *last == change && inputs.now.saturating_sub(*at) < PROPOSAL_RETRY_MS
        });
        if !recent && inputs.holds_lease {
            local.proposed = Some((change.clone(), inputs.now));
            self.actions.push(AgentAction::Propose(change));
        }
    }

    fn wait(&mut self, inputs: Inputs<'_>, name: &str, why: String) {
        let Some(local) = self.groups.get_mut(name) else {
            return;
        };
        let recent = local
            .waiting_said_at
            .is_some_and(|at| inputs.now.saturating_sub(at) < PROPOSAL_RETRY_MS * 5);
        if !recent {
            local.waiting_said_at = Some(inputs.now);
            self.event(inputs, Some(name), EventKind::Failed, why);
        }
    }

    fn event(&mut self, inputs: Inputs<'_>, group: Option<&str>, kind: EventKind, detail: String) {
        let event = Event::new(inputs.now_unix_ms, self.me, group, kind, detail);
        self.actions.push(AgentAction::Event(event));
    }
}

fn monitor_interval(spec: &GroupSpec, index: usize) -> u64 {
    spec.resources
        .get(index)
        .map_or(crate::group::DEFAULT_MONITOR_INTERVAL_MS, |r| {
            r.monitor().interval_ms()
        })
}

fn volume_named<'a>(state: &'a ClusterState, name: &str) -> Result<&'a VolumeInfo, String> {
    state
        .volume_by_name(name)
        .ok_or_else(|| format!("volume {name} does not exist"))
}

/// A short reason why a group is not wanted here, for the Stopped event.
fn why_not_here(inputs: Inputs<'_>, name: &str, me: NodeId) -> String {
    let Some(group) = inputs.state.groups.get(name) else {
        return "the group was deleted".to_string();
    };
    let status = &group.status;
    if !inputs.holds_lease {
        "this node lost its lease".to_string()
    } else if !group.spec.enabled {
        "the group is disabled".to_string()
    } else if status
        .quarantine_of(me, inputs.now_unix_ms / 1000)
        .is_some()
    {
        "quarantined here after repeated failures".to_string()
    } else if status.node != Some(me) {
        match status.node {
            Some(node) => format!("the group is placed on node {node}"),
            None => "the group is placed nowhere".to_string(),
        }
    } else {
        "out of restarts here".to_string()
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
