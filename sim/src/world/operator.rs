//! The operator: forming the cluster during setup, then the workload of the fault phase.
//!
//! Joins follow the real path: a join token is committed, a member runs `prepare_join`, the
//! `AddNode` it returns is proposed, and the new node's process starts (with an empty disk,
//! like a joiner's `DurableLog::create`) once a member has applied it.

use tandem_core::group::GroupChange;
use tandem_core::volume::VolumeChange;
use tandem_core::{NodeId, StateChange};

use super::liveness::Probe;
use super::{node_addr, Phase, World};
use crate::checkers::Violation;
use crate::disk::Disk;
use crate::events::Event;
use crate::faults;
use crate::machine::Machine;
use crate::trace::TraceEvent;
use crate::workload::Plan;

/// Setup waits this long for a proposed join to show up before proposing another.
const JOIN_TIMEOUT_MS: u64 = 15_000;
/// Join tokens made by the operator are valid this long.
const TOKEN_TTL_SECS: u64 = 3600;

impl World {
    /// One step of cluster formation: join the next node, or start the fault phase.
    pub(super) fn on_setup(&mut self) -> Result<(), Violation> {
        if self.phase != Phase::Setup {
            return Ok(());
        }
        if self.now > super::SETUP_DEADLINE_MS {
            return Err(Violation::Liveness(format!(
                "setup: the cluster did not form within {} s\n{}",
                super::SETUP_DEADLINE_MS / 1000,
                self.describe_nodes()
            )));
        }
        self.queue.push(self.now + 100, Event::Setup);
        self.workload.expire(self.now);
        self.start_admitted()?;
        let Some(leader) = self.leaders().first().copied() else {
            return Ok(());
        };
        let shape = self.scenario.shape;
        let wanted = shape.voters + usize::from(shape.witness);
        let (members, voters, commit) = match self.core_of(leader) {
            Some(core) => (
                core.state().nodes.len(),
                core.state().voter_count(),
                core.commit_index(),
            ),
            None => return Ok(()),
        };
        if members >= wanted && !self.join_in_progress() {
            if self.all_caught_up(commit) && self.group_setup(leader)? {
                if self.script.is_none() {
                    self.begin_faults();
                } else if self.settled().is_ok() {
                    self.begin_script()?;
                }
            }
            return Ok(());
        }
        if self.workload.has_outstanding() || self.join_in_progress() {
            return Ok(());
        }
        let witness = shape.witness && voters >= shape.voters;
        self.propose_plan(leader, Plan::Join { witness })
    }

    fn all_caught_up(&self, commit: u64) -> bool {
        self.machines.values().all(|machine| {
            machine
                .core
                .as_ref()
                .is_some_and(|core| core.applied_index() >= commit)
        })
    }

    fn begin_faults(&mut self) {
        let until = self.now + self.scenario.fault_ms;
        self.phase = Phase::Faults { until };
        self.workload.reset_budgets();
        let what = format!("cluster formed; faults until t={until}");
        self.trace.record(self.now, None, TraceEvent::Phase(what));
        let first_fault = self.now + faults::next_gap(&mut self.fault_rng);
        self.queue.push(first_fault, Event::NextFault);
        self.queue.push(self.now + 100, Event::Operator);
        self.queue.push(until, Event::Heal);
        if self.has_groups() {
            self.queue.push(self.now + 1_000, Event::GroupOperator);
            self.queue.push(self.now + 1_500, Event::ResourceChaos);
        }
    }

    /// The workload of the fault phase: one proposal on the leader (sometimes elsewhere).
    pub(super) fn on_operator(&mut self) -> Result<(), Violation> {
        if !matches!(self.phase, Phase::Faults { .. }) {
            return Ok(());
        }
        let gap = self.workload.next_gap();
        self.queue.push(self.now + gap, Event::Operator);
        self.workload.expire(self.now);
        self.start_admitted()?;
        let leaders = self.leaders();
        let via_follower = self.workload.via_follower() || leaders.is_empty();
        if via_follower && !self.options.propose_on_followers {
            return Ok(());
        }
        let target = if via_follower {
            let running = self.running();
            self.workload.pick(&running).copied()
        } else {
            self.workload.pick(&leaders).copied()
        };
        let Some(target) = target else {
            return Ok(());
        };
        let core = self.machines.get(&target).and_then(|m| m.core.as_ref());
        let plan = match core {
            Some(core) => self.workload.plan(core.state()),
            None => None,
        };
        match plan {
            Some(plan) => self.propose_plan(target, plan),
            None => Ok(()),
        }
    }

    /// Turns a plan into a state change and proposes it on `target`.
    pub(super) fn propose_plan(&mut self, target: NodeId, plan: Plan) -> Result<(), Violation> {
        let change = match &plan {
            Plan::SetAdmin { id, admin } => StateChange::SetAdmin {
                id: *id,
                admin: *admin,
            },
            Plan::Token => self.token_change(),
            Plan::Join { witness } => match self.join_change(target, *witness)? {
                Some(change) => change,
                None => return self.propose_plan(target, Plan::Token),
            },
            Plan::Remove { id } => StateChange::RemoveNode { id: *id },
        };
        self.propose(target, change, Some(&plan)).map(|_| ())
    }

    fn token_change(&mut self) -> StateChange {
        let unix = self.unix_now();
        StateChange::AddJoinToken {
            digest: self.workload.token_digest(),
            expires_unix: unix + TOKEN_TTL_SECS,
            now_unix: unix,
        }
    }

    /// The `AddNode` for a new node, prepared by `target`; `None` without a valid token.
    fn join_change(
        &mut self,
        target: NodeId,
        witness: bool,
    ) -> Result<Option<StateChange>, Violation> {
        let unix = self.unix_now();
        let token = self.core_of(target).and_then(|core| {
            core.state()
                .join_tokens
                .iter()
                .rev()
                .find(|token| token.expires_unix > unix)
                .map(|token| token.digest.clone())
        });
        let Some(token) = token else {
            return Ok(None);
        };
        let name = self.workload.node_name();
        let addr = node_addr(self.machines.len() as u64 + 1);
        let prepared = self.call(target, |core| {
            core.prepare_join(&name, &addr, None, witness, &token, unix)
        })?;
        match prepared {
            Ok(change) => Ok(Some(change)),
            Err(error) => {
                let event = TraceEvent::Proposed {
                    request: 0,
                    what: format!("join {name}"),
                    refused: Some(error.to_string()),
                };
                self.trace.record(self.now, Some(target), event);
                Ok(None)
            }
        }
    }

    /// Proposes `change` on `target`; returns the request number if it was accepted.
    pub(super) fn propose(
        &mut self,
        target: NodeId,
        change: StateChange,
        plan: Option<&Plan>,
    ) -> Result<Option<u64>, Violation> {
        let request = self.workload.request();
        let what = describe(&change);
        let joiner = match &change {
            StateChange::AddNode { node, .. } => Some(node.id),
            _ => None,
        };
        let proposed = self.call(target, |core| core.propose(request, change))?;
        let refused = proposed.as_ref().err().map(|error| error.to_string());
        let event = TraceEvent::Proposed {
            request,
            what,
            refused,
        };
        self.trace.record(self.now, Some(target), event);
        if proposed.is_err() {
            self.workload.rejected();
            return Ok(None);
        }
        self.workload.proposed(request, target, self.now, plan);
        if let Some(joiner) = joiner.filter(|id| !self.machines.contains_key(id)) {
            self.pending_joins.entry(joiner).or_insert(self.now);
        }
        Ok(Some(request))
    }

    /// A proposal made on `node` completed.
    pub(super) fn on_completed(
        &mut self,
        node: NodeId,
        request: u64,
        outcome: Result<String, String>,
    ) -> Result<(), Violation> {
        self.workload.completed(node, request, outcome.is_ok());
        self.script_completed(request, &outcome);
        let ok = outcome.is_ok();
        let event = TraceEvent::Completed { request, outcome };
        self.trace.record(self.now, Some(node), event);
        if let Probe::Committing {
            request: probe,
            leader,
        } = self.probe
        {
            if probe == request && leader == node {
                self.probe_committed(ok);
            }
        }
        Ok(())
    }

    /// Starts the process of every proposed joiner that some member has applied. A join
    /// is never given up: its `AddNode` may commit long after it was proposed, and a voter
    /// whose process never starts would count against the quorum forever.
    pub(super) fn start_admitted(&mut self) -> Result<(), Violation> {
        let pending: Vec<NodeId> = self.pending_joins.keys().copied().collect();
        for id in pending {
            if self.machines.contains_key(&id) {
                // Two members prepared the same id; the later AddNode is refused on apply.
                self.pending_joins.remove(&id);
                continue;
            }
            let admitted = self.machines.values().any(|machine| {
                machine
                    .core
                    .as_ref()
                    .is_some_and(|core| core.state().nodes.contains_key(&id))
            });
            if admitted {
                self.pending_joins.remove(&id);
                self.machines.insert(id, Machine::new(id, Disk::empty()));
                self.workload.stats.joins += 1;
                self.restart(id)?;
            }
        }
        Ok(())
    }

    /// Whether a join proposed recently has not shown up in any member's state yet.
    fn join_in_progress(&self) -> bool {
        self.pending_joins
            .values()
            .any(|&since| since + JOIN_TIMEOUT_MS > self.now)
    }

    /// Running processes that believe they lead, by id.
    pub(super) fn leaders(&self) -> Vec<NodeId> {
        self.machines
            .values()
            .filter(|machine| machine.paused_until <= self.now)
            .filter(|machine| machine.core.as_ref().is_some_and(|core| core.is_leader()))
            .map(|machine| machine.id)
            .collect()
    }

    /// Running, unpaused processes, by id.
    pub(super) fn running(&self) -> Vec<NodeId> {
        self.machines
            .values()
            .filter(|machine| machine.running() && machine.paused_until <= self.now)
            .map(|machine| machine.id)
            .collect()
    }

    pub(super) fn core_of(&self, id: NodeId) -> Option<&tandem_core::NodeCore> {
        self.machines
            .get(&id)
            .and_then(|machine| machine.core.as_ref())
    }
}

/// A short description of a change for the trace.
pub(super) fn describe(change: &StateChange) -> String {
    match change {
        StateChange::AddNode { node, .. } => {
            format!("add n{} {} as {}", node.id, node.name, node.role.as_str())
        }
        StateChange::RemoveNode { id } => format!("remove n{id}"),
        StateChange::SetAdmin { id, admin } => format!("n{id} {}", admin.as_str()),
        StateChange::AddJoinToken { digest, .. } => format!("join token {digest}"),
        StateChange::Group(change) => describe_group(change),
        StateChange::Volume(change) => describe_volume(change),
        StateChange::Events { events } => {
            let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
            format!("{} timeline event(s): {}", events.len(), kinds.join(", "))
        }
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

fn describe_group(change: &GroupChange) -> String {
    match change {
        GroupChange::Create { spec } => format!("create group {}", spec.name),
        GroupChange::Update { spec } => format!("update group {}", spec.name),
        GroupChange::Delete { group } => format!("delete group {group}"),
        GroupChange::Enable { group } => format!("enable group {group}"),
        GroupChange::Disable { group } => format!("disable group {group}"),
        GroupChange::Move { group, to } => format!("move group {group} to n{to}"),
        GroupChange::Clear { group } => format!("clear group {group}"),
        GroupChange::RecordFailure { group, node, .. } => {
            format!("record a failure of group {group} on n{node}")
        }
        GroupChange::Acquire { group, node, epoch } => {
            format!("n{node} acquires group {group} (placement epoch {epoch})")
        }
        GroupChange::Release { group, node } => format!("n{node} releases group {group}"),
        GroupChange::Fence { group, node } => format!("fence n{node} from group {group}"),
        GroupChange::Placed { group, node, epoch } => match node {
            Some(node) => format!("place group {group} on n{node} (from epoch {epoch})"),
            None => format!("place group {group} nowhere (from epoch {epoch})"),
        },
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

fn describe_volume(change: &VolumeChange) -> String {
    match change {
        VolumeChange::Create { name, legs, .. } => {
            let nodes: Vec<String> = legs.iter().map(|leg| format!("{:?}", leg.nodes)).collect();
            format!("create volume {name} with legs on {}", nodes.join(" "))
        }
        VolumeChange::Delete { volume } => format!("delete volume {volume}"),
        VolumeChange::Promote {
            volume,
            node,
            force,
            takeover,
        } => format!(
            "promote volume {volume} on n{node}{}{}",
            if *takeover { " (takeover)" } else { "" },
            if *force { " FORCED" } else { "" }
        ),
        VolumeChange::Demote { volume, epoch } => {
            format!("demote volume {volume} (epoch {epoch})")
        }
        VolumeChange::SetLegState {
            volume,
            leg,
            state,
            epoch,
        } => format!(
            "volume {volume} leg {leg} {} (epoch {epoch})",
            state.as_str()
        ),
    }
}
