//! Carrying out faults, ending them, and the heal that ends them all.

use rand::Rng;
use tandem_core::timing::{
    watchdog_escalate_ms, WATCHDOG_POLL_MS, WATCHDOG_RESTART_MS, WATCHDOG_SILENT_MIN_MS,
    WATCHDOG_SILENT_WITHOUT_LEASE_MS, WATCHDOG_SLACK_MS,
};
use tandem_core::NodeId;

use super::{ActiveFault, Phase, World};
use crate::checkers::Violation;
use crate::events::Event;
use crate::faults::{self, Fault, View};
use crate::machine::Machine;
use crate::trace::TraceEvent;

impl World {
    /// Draws and injects the next fault, and schedules the one after.
    pub(super) fn on_next_fault(&mut self) -> Result<(), Violation> {
        let Phase::Faults { until } = self.phase else {
            return Ok(());
        };
        if self.now >= until {
            return Ok(());
        }
        let view = self.fault_view();
        if let Some(fault) = faults::choose(&mut self.fault_rng, &view, self.options.fault_mix) {
            self.inject(fault)?;
        }
        let gap = faults::next_gap(&mut self.fault_rng);
        self.queue.push(self.now + gap, Event::NextFault);
        Ok(())
    }

    fn fault_view(&self) -> View {
        let alive = self.machines.values().filter(|machine| !machine.removed);
        let voters = self
            .machines
            .values()
            .filter_map(|machine| machine.core.as_ref())
            .map(|core| core.state().voter_count())
            .max()
            .unwrap_or(0);
        View {
            nodes: alive.clone().map(|machine| machine.id).collect(),
            running: alive
                .filter(|machine| machine.running())
                .map(|machine| machine.id)
                .collect(),
            voters,
        }
    }

    fn inject(&mut self, fault: Fault) -> Result<(), Violation> {
        *self.fault_counts.entry(fault.kind()).or_default() += 1;
        let id = self.next_fault_id;
        self.next_fault_id += 1;
        let now = self.now;
        match fault {
            Fault::Stop {
                node,
                power_loss,
                down_ms,
            } => {
                let why = if power_loss { "power loss" } else { "crash" };
                self.record_fault(Some(node), format!("{why}, down for {down_ms} ms"));
                self.stop(node, why, power_loss)?;
                self.queue.push(now + down_ms, Event::Restart { node });
            }
            Fault::StopAll { down_ms } => {
                self.record_fault(None, "power loss on every machine".to_string());
                for (node, ms) in down_ms {
                    self.stop(node, "cluster power loss", true)?;
                    self.queue.push(now + ms, Event::Restart { node });
                }
            }
            Fault::Pause { node, ms } => self.pause(node, ms),
            Fault::Cut {
                kind,
                links,
                ms,
                what,
            } => {
                self.record_fault(None, format!("{kind}: {what} for {ms} ms"));
                self.net.block(id, links);
                self.active.insert(id, ActiveFault::Network(what));
                self.queue.push(now + ms, Event::FaultOver { id });
            }
            Fault::Lossy { quality, ms } => {
                let what = format!(
                    "lossy network: drop {:.0}%, duplicate {:.0}%, delay up to {} ms",
                    quality.drop * 100.0,
                    quality.duplicate * 100.0,
                    quality.delay_max
                );
                self.record_fault(None, format!("{what} for {ms} ms"));
                self.net.degrade(id, quality);
                self.active.insert(id, ActiveFault::Network(what));
                self.queue.push(now + ms, Event::FaultOver { id });
            }
            Fault::SlowDisk { node, extra_ms, ms } => {
                let what = format!("slow disk: up to {extra_ms} ms more per write for {ms} ms");
                self.record_fault(Some(node), what);
                if let Some(machine) = self.machines.get_mut(&node) {
                    machine.slow_disk.insert(id, extra_ms);
                }
                self.active.insert(id, ActiveFault::SlowDisk(node));
                self.queue.push(now + ms, Event::FaultOver { id });
            }
        }
        Ok(())
    }

    pub(super) fn pause(&mut self, node: NodeId, ms: u64) {
        let until = self.now + ms;
        if let Some(machine) = self.machines.get_mut(&node) {
            machine.paused_until = machine.paused_until.max(until);
        }
        self.record_fault(Some(node), format!("process paused for {ms} ms"));
        self.trace
            .record(self.now, Some(node), TraceEvent::Paused { until });
        self.arm_watchdog(node);
    }

    /// The watchdog's deadline for a process frozen now, as `watchdog::Watch` computes it
    /// from the pets (the last one sent at the freeze): the end of the last lease it
    /// announced plus the slack, but never within `WATCHDOG_SILENT_MIN_MS` of the last pet
    /// (a second of silence if it never held a lease); plus one poll of the watchdog.
    fn arm_watchdog(&mut self, node: NodeId) {
        let Some(machine) = self.machines.get(&node) else {
            return;
        };
        if !self.options.watchdog || !machine.running() {
            return;
        }
        // What the agent may run here (the pets' `holding`, a start in flight included), or
        // the resources it started.
        let holding = agent_holds(machine);
        if !holding && machine.fakes.managed_groups().is_empty() {
            return;
        }
        let silent_from = self.now + WATCHDOG_SILENT_MIN_MS;
        let deadline = if machine.lease_until > 0 {
            (machine.lease_until + WATCHDOG_SLACK_MS).max(silent_from) + WATCHDOG_POLL_MS
        } else {
            self.now + WATCHDOG_SILENT_WITHOUT_LEASE_MS + WATCHDOG_POLL_MS
        };
        if deadline < machine.paused_until {
            let event = Event::Watchdog {
                node,
                incarnation: machine.incarnation,
            };
            self.queue.push(deadline, event);
        }
    }

    /// Escalation (issue #5): the watchdog fences a process that still holds resources
    /// `watchdog_escalate_ms` (450 ms by default) after the end of the lease it announced,
    /// frozen or not (a stop that failed or hangs). Armed for every new lease end the process
    /// reports; the check comes one poll of the watchdog later, and does nothing if the lease
    /// was renewed since.
    pub(super) fn arm_escalation(&mut self, node: NodeId, lease_until: u64) {
        let Some(machine) = self.machines.get(&node) else {
            return;
        };
        if !self.options.watchdog || !machine.running() || !self.has_groups() {
            return;
        }
        let event = Event::Watchdog {
            node,
            incarnation: machine.incarnation,
        };
        let escalate_ms = watchdog_escalate_ms(&self.scenario.timing);
        let at = (lease_until + escalate_ms + WATCHDOG_POLL_MS).max(self.now);
        self.queue.push(at, event);
    }

    /// The watchdog looks (`Watch::verdict`): a process still frozen past the deadline armed at
    /// the freeze, or one whose agent still holds resources past the escalation deadline, is
    /// killed (its services and virtual IPs go with it) and restarted, as systemd would, a
    /// second later.
    pub(super) fn on_watchdog(&mut self, node: NodeId, incarnation: u32) -> Result<(), Violation> {
        let now = self.now;
        let Some(machine) = self.machines.get(&node) else {
            return Ok(());
        };
        if !machine.running() || machine.incarnation != incarnation {
            return Ok(());
        }
        // What the last pet said: the agent may still run something of a group.
        let holding = agent_holds(machine);
        // A freeze's event is armed for its deadline (never earlier than the lease's end plus
        // the slack) while it runs something; an escalation's may find the process frozen
        // too, but for a lease renewed since.
        let lease_until = machine.lease_until;
        let runs_something = holding || !machine.fakes.managed_groups().is_empty();
        let frozen = machine.paused_until > now
            && runs_something
            && (lease_until == 0 || now >= lease_until + WATCHDOG_SLACK_MS + WATCHDOG_POLL_MS);
        let escalate = holding
            && lease_until > 0
            && now >= lease_until + watchdog_escalate_ms(&self.scenario.timing) + WATCHDOG_POLL_MS;
        if escalate {
            self.group_stats.watchdog_escalations += 1;
            let why = "killed by its watchdog: still holding resources past its lease";
            self.stop(node, why, false)?;
        } else if frozen {
            self.group_stats.watchdog_frozen += 1;
            self.stop(node, "killed by its watchdog: frozen past its lease", false)?;
        } else {
            return Ok(());
        }
        self.queue
            .push(now + WATCHDOG_RESTART_MS, Event::Restart { node });
        Ok(())
    }

    pub(super) fn record_fault(&mut self, node: Option<NodeId>, what: String) {
        self.trace.record(self.now, node, TraceEvent::Fault(what));
    }

    /// Ends fault `id` (if it is still in effect).
    pub(super) fn end_fault(&mut self, id: u64) {
        let Some(fault) = self.active.remove(&id) else {
            return;
        };
        match fault {
            ActiveFault::Network(what) => {
                self.net.unblock(id);
                self.net.restore(id);
                self.trace
                    .record(self.now, None, TraceEvent::FaultEnd(what));
            }
            ActiveFault::SlowDisk(node) => {
                if let Some(machine) = self.machines.get_mut(&node) {
                    machine.slow_disk.remove(&id);
                }
                let what = "slow disk".to_string();
                self.trace
                    .record(self.now, Some(node), TraceEvent::FaultEnd(what));
            }
        }
    }

    /// All faults stop: the network heals, slow disks recover, stopped machines restart
    /// (pauses already under way run out by themselves, within 3 s).
    pub(super) fn on_heal(&mut self) -> Result<(), Violation> {
        self.phase = Phase::Heal { since: self.now };
        let what = format!(
            "heal: all faults stop; a leader and a commit are due within {} ms",
            self.options.heal_bound_ms
        );
        self.trace.record(self.now, None, TraceEvent::Phase(what));
        let active: Vec<u64> = self.active.keys().copied().collect();
        for id in active {
            self.end_fault(id);
        }
        self.net.heal();
        let stopped: Vec<NodeId> = self
            .machines
            .values()
            .filter(|machine| !machine.running() && !machine.removed)
            .map(|machine| machine.id)
            .collect();
        for node in stopped {
            let delay = self.fault_rng.gen_range(0..=500);
            self.queue.push(self.now + delay, Event::Restart { node });
        }
        self.queue.push(self.now + 20, Event::Probe);
        Ok(())
    }
}

/// What the process's last pet said: its agent may run something of a group (as the daemon's
/// `watchdog_pet` computes it).
fn agent_holds(machine: &Machine) -> bool {
    match (&machine.core, &machine.host) {
        (Some(core), Some(host)) => core
            .state()
            .groups
            .keys()
            .any(|name| host.agent.is_active(name)),
        _ => false,
    }
}
