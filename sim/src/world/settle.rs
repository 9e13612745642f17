//! Eventual placement, checked after the heal (once the Raft probe passed): within
//! `Options::settle_bound_ms` of the heal, every group must run where it is placed, and keep
//! doing so for [`SETTLE_HOLD_MS`].
//!
//! The operator first undoes the fault phase's group actions, as one would after an incident:
//! every data node back online, every group enabled and cleared (pin, failures, quarantines),
//! proposed on the leader every [`CLEANUP_EVERY_MS`] until committed. Then, judged on the
//! leader's committed state and liveness (the leader holding its lease) and on the ground
//! truth of the fake resources:
//! - a group that is enabled and has an eligible node (the scheduler's own `eligibility`) is
//!   placed on a node, held by it, that node is primary of its volumes and runs every other
//!   resource of it (started by the cluster), and no other node runs any of its resources;
//! - any other group runs nowhere.
//!
//! Copies the operator started by hand are not judged (tandem does not look for resources of
//! groups a node does not run; see `docs/reliability.md`); they are counted.

use std::fmt::Write as _;

use tandem_core::group::GroupChange;
use tandem_core::{scheduler, Admin, NodeId, Role, StateChange};

use super::{Phase, World};
use crate::checkers::Violation;
use crate::events::Event;
use crate::resources::FakeKind;
use crate::trace::TraceEvent;

/// How often the settle check looks.
const SETTLE_EVERY_MS: u64 = 100;
/// The placement must hold this long.
pub const SETTLE_HOLD_MS: u64 = 1_000;
/// The operator's clean-up proposals are repeated this often until committed.
const CLEANUP_EVERY_MS: u64 = 2_000;

/// Where the settle check is.
#[derive(Clone, Debug, Default)]
pub struct Settle {
    /// The heal began then.
    pub heal: u64,
    /// The placement has held since then.
    pub ok_since: Option<u64>,
    /// When the operator last proposed clean-ups.
    pub cleanup_at: Option<u64>,
    /// Why it has not settled yet (for the violation).
    pub last_reason: String,
}

/// What a settled run looks like, for the trace and the summary.
pub(super) struct Settled {
    text: String,
    running: u64,
    idle: u64,
}

impl World {
    /// The Raft probe passed: with groups, wait for them to settle; without, the run is done.
    pub(super) fn begin_settle(&mut self, heal: u64) {
        if !self.has_groups() {
            self.phase = Phase::Done;
            return;
        }
        self.settle = Settle {
            heal,
            ..Settle::default()
        };
        self.phase = Phase::Settle;
        self.queue.push(self.now, Event::Settle);
    }

    pub(super) fn on_settle(&mut self) -> Result<(), Violation> {
        if self.phase != Phase::Settle {
            return Ok(());
        }
        let heal = self.settle.heal;
        if self.now > heal + self.options.settle_bound_ms {
            return Err(Violation::GroupsUnsettled(format!(
                "{} ms after the heal, {}\n{}{}",
                self.options.settle_bound_ms,
                self.settle.last_reason,
                self.describe_nodes(),
                self.describe_groups()
            )));
        }
        self.queue.push(self.now + SETTLE_EVERY_MS, Event::Settle);
        self.start_admitted()?;
        self.clean_up()?;
        match self.settled() {
            Ok(settled) => {
                let since = *self.settle.ok_since.get_or_insert(self.now);
                if self.now >= since + SETTLE_HOLD_MS {
                    self.group_stats.settle_ms = since - heal;
                    self.group_stats.settled_running = settled.running;
                    self.group_stats.settled_idle = settled.idle;
                    self.group_stats.hand_copies_left = self
                        .machines
                        .values()
                        .map(|m| m.fakes.iter().filter(|(_, _, r)| r.by_hand).count() as u64)
                        .sum();
                    let what = format!(
                        "eventual placement: {} ({} ms after the heal, held {} ms)",
                        settled.text,
                        since - heal,
                        SETTLE_HOLD_MS
                    );
                    self.trace.record(self.now, None, TraceEvent::Check(what));
                    self.phase = Phase::Done;
                }
            }
            Err(reason) => {
                self.settle.ok_since = None;
                self.settle.last_reason = reason;
            }
        }
        Ok(())
    }

    /// The leader that holds its lease, if any.
    pub(super) fn lease_leader(&self) -> Option<NodeId> {
        self.leaders().into_iter().find(|&id| {
            let machine = &self.machines[&id];
            machine
                .core
                .as_ref()
                .is_some_and(|core| core.holds_leader_lease(machine.local(self.now)))
        })
    }

    /// The operator undoes the fault phase: nodes online, groups enabled and cleared.
    fn clean_up(&mut self) -> Result<(), Violation> {
        if self
            .settle
            .cleanup_at
            .is_some_and(|at| self.now < at + CLEANUP_EVERY_MS)
        {
            return Ok(());
        }
        let Some(leader) = self.lease_leader() else {
            return Ok(());
        };
        let Some(core) = self.core_of(leader) else {
            return Ok(());
        };
        let state = core.state();
        let mut changes = Vec::new();
        for node in state.nodes.values() {
            if node.role != Role::Witness && node.admin == Admin::Standby {
                changes.push(StateChange::SetAdmin {
                    id: node.id,
                    admin: Admin::Online,
                });
            }
        }
        for (name, group) in &state.groups {
            if !group.spec.enabled {
                let group = name.clone();
                changes.push(StateChange::Group(GroupChange::Enable { group }));
            }
            let status = &group.status;
            let failures = status.failures.values().any(|times| !times.is_empty());
            if status.pinned.is_some() || !status.quarantined_until.is_empty() || failures {
                let group = name.clone();
                changes.push(StateChange::Group(GroupChange::Clear { group }));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.settle.cleanup_at = Some(self.now);
        for change in changes {
            self.propose(leader, change, None)?;
        }
        Ok(())
    }

    /// Whether every group runs where it should, on the leader's view and the ground truth.
    pub(super) fn settled(&self) -> Result<Settled, String> {
        let leader = self
            .lease_leader()
            .ok_or_else(|| "no leader holds its lease".to_string())?;
        let machine = &self.machines[&leader];
        let core = machine.core.as_ref().ok_or("the leader is down")?;
        let local = machine.local(self.now);
        let failover = scheduler::default_failover_timeout_ms(core.timing());
        let liveness = core
            .liveness(local, failover)
            .ok_or_else(|| format!("the leader n{leader} has no liveness view yet"))?;
        let state = core.state();
        let now_unix = self.unix_now();
        let mut placed = Vec::new();
        let mut idle = 0;
        for (name, group) in &state.groups {
            let eligible: Vec<NodeId> = state
                .nodes
                .keys()
                .copied()
                .filter(|&node| {
                    scheduler::eligibility(state, &liveness, now_unix, group, node).is_ok()
                })
                .collect();
            let runners: Vec<NodeId> = self
                .machines
                .values()
                .filter(|m| m.fakes.managed_groups().contains(name.as_str()))
                .map(|m| m.id)
                .collect();
            if !group.spec.enabled || eligible.is_empty() {
                if !runners.is_empty() {
                    return Err(format!(
                        "group {name} should run nowhere (enabled {}, eligible {eligible:?}) \
                         but runs on {runners:?}",
                        group.spec.enabled
                    ));
                }
                idle += 1;
                continue;
            }
            let status = &group.status;
            let node = status.node.ok_or_else(|| {
                format!("group {name} is placed nowhere though {eligible:?} are eligible")
            })?;
            if status.holder != Some(node) {
                return Err(format!(
                    "group {name} is placed on n{node} but held by {:?}",
                    status.holder
                ));
            }
            let fakes = &self.machines.get(&node).ok_or("no such machine")?.fakes;
            for (index, spec) in group.spec.resources.iter().enumerate() {
                match FakeKind::of(spec) {
                    None => {
                        let volume = spec.volume().unwrap_or_default();
                        let primary = state.volume_by_name(volume).and_then(|v| v.primary);
                        if primary != Some(node) {
                            return Err(format!(
                                "group {name} runs on n{node} but volume {volume} is primary \
                                 on {primary:?}"
                            ));
                        }
                    }
                    Some(_) if fakes.get(name, index).is_some_and(|r| !r.by_hand) => {}
                    Some(_) => {
                        return Err(format!(
                            "group {name} is placed on n{node}, but its resource {index} \
                             ({spec}) does not run there"
                        ))
                    }
                }
            }
            if runners != [node] {
                return Err(format!(
                    "group {name} is placed on n{node} but runs on {runners:?}"
                ));
            }
            placed.push(format!("{name} on n{node}"));
        }
        Ok(Settled {
            text: if placed.is_empty() {
                format!("no group can run ({idle} idle)")
            } else {
                format!("{}; {idle} idle", placed.join(", "))
            },
            running: placed.len() as u64,
            idle,
        })
    }

    /// For an unsettled run: every node's view of the groups and what runs there.
    fn describe_groups(&self) -> String {
        let mut out = String::from("groups:\n");
        for machine in self.machines.values() {
            let _ = write!(out, "  n{}: ", machine.id);
            if let Some(core) = &machine.core {
                for (name, group) in &core.state().groups {
                    let status = &group.status;
                    let _ = write!(
                        out,
                        "{name}(enabled {}, node {:?}, holder {:?}, fenced {:?}, pinned {:?}, \
                         epoch {}) ",
                        group.spec.enabled,
                        status.node,
                        status.holder,
                        status.fenced,
                        status.pinned,
                        status.epoch
                    );
                }
                for volume in core.state().volumes.values() {
                    let legs: Vec<String> = volume
                        .legs
                        .iter()
                        .map(|leg| format!("{:?}:{}", leg.nodes, leg.state.as_str()))
                        .collect();
                    let _ = write!(
                        out,
                        "{}(primary {:?}, epoch {}, legs {}) ",
                        volume.name,
                        volume.primary,
                        volume.epoch,
                        legs.join(" ")
                    );
                }
            }
            let running: Vec<String> = machine
                .fakes
                .iter()
                .map(|(group, index, running)| {
                    let hand = if running.by_hand { " by hand" } else { "" };
                    format!("{group}[{index}]{hand}")
                })
                .collect();
            let _ = writeln!(out, "runs [{}]", running.join(", "));
        }
        out
    }
}
