//! The heal-phase liveness probe: once faults stop, within the heal bound, every live member
//! must agree on one leader, and a proposal made there must commit and be applied by every
//! live member. A live member is a running node that the leader's state lists as a member.

use std::fmt::Write as _;

use tandem_core::{NodeId, StateChange};

use super::{Phase, World};
use crate::checkers::Violation;
use crate::events::Event;
use crate::trace::TraceEvent;

/// How often the probe looks.
const PROBE_EVERY_MS: u64 = 20;

/// Where the probe is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Waiting for a leader every live member agrees on.
    Waiting,
    /// A probe proposal is on its way through `leader`.
    Committing { request: u64, leader: NodeId },
    /// It committed at the leader; waiting for every live member to apply `target`.
    Applying { leader: NodeId, target: u64 },
}

impl World {
    pub(super) fn on_probe(&mut self) -> Result<(), Violation> {
        let Phase::Heal { since } = self.phase else {
            return Ok(());
        };
        if self.now > since + self.options.heal_bound_ms {
            return Err(Violation::Liveness(format!(
                "{} ms after the heal, {}\n{}",
                self.options.heal_bound_ms,
                self.probe_status(),
                self.describe_nodes()
            )));
        }
        self.queue.push(self.now + PROBE_EVERY_MS, Event::Probe);
        self.start_admitted()?;
        let agreed = self.agreed_leader();
        match self.probe {
            Probe::Waiting => {
                if let Some(leader) = agreed {
                    self.propose_probe(leader)?;
                }
            }
            Probe::Committing { leader, .. } => {
                if agreed != Some(leader) {
                    self.probe = Probe::Waiting;
                }
            }
            Probe::Applying { leader, target } => {
                if self.members_applied(leader, target) {
                    self.recovery_ms = self.now - since;
                    let what = format!(
                        "liveness: n{leader} leads, index {target} applied by every live \
                         member, {} ms after the heal",
                        self.recovery_ms
                    );
                    self.trace.record(self.now, None, TraceEvent::Phase(what));
                    self.begin_settle(since);
                }
            }
        }
        Ok(())
    }

    fn propose_probe(&mut self, leader: NodeId) -> Result<(), Violation> {
        let unix = self.unix_now();
        let change = StateChange::AddJoinToken {
            digest: format!("probe-{}", self.now),
            expires_unix: unix + 60,
            now_unix: unix,
        };
        if let Some(request) = self.propose(leader, change, None)? {
            self.probe = Probe::Committing { request, leader };
        }
        Ok(())
    }

    /// The probe proposal completed on its leader.
    pub(super) fn probe_committed(&mut self, ok: bool) {
        let Probe::Committing { leader, .. } = self.probe else {
            return;
        };
        self.probe = match self.core_of(leader) {
            Some(core) if ok => Probe::Applying {
                leader,
                target: core.applied_index(),
            },
            _ => Probe::Waiting,
        };
    }

    /// The running members listed in `leader`'s state.
    fn live_members(&self, leader: NodeId) -> Vec<NodeId> {
        let Some(core) = self.core_of(leader) else {
            return Vec::new();
        };
        core.state()
            .nodes
            .keys()
            .copied()
            .filter(|id| self.core_of(*id).is_some())
            .collect()
    }

    /// A leader that every live member follows in its term, with every member running.
    fn agreed_leader(&self) -> Option<NodeId> {
        self.leaders().into_iter().find(|&leader| {
            let Some(core) = self.core_of(leader) else {
                return false;
            };
            let term = core.term();
            let all_running = core.state().nodes.keys().all(|id| {
                self.machines
                    .get(id)
                    .is_none_or(|machine| machine.running() || machine.removed)
            });
            all_running
                && self.live_members(leader).iter().all(|&member| {
                    self.core_of(member)
                        .is_some_and(|m| m.leader() == Some(leader) && m.term() == term)
                })
        })
    }

    fn members_applied(&self, leader: NodeId, target: u64) -> bool {
        self.live_members(leader).iter().all(|&member| {
            self.core_of(member)
                .is_some_and(|core| core.applied_index() >= target)
        })
    }

    fn probe_status(&self) -> String {
        match self.probe {
            Probe::Waiting => "no leader is agreed on by every live member".to_string(),
            Probe::Committing { request, leader } => {
                format!("probe proposal r{request} made on n{leader} has not committed")
            }
            Probe::Applying { leader, target } => format!(
                "probe committed at index {target} on n{leader}, not yet applied by every \
                 live member"
            ),
        }
    }

    /// One line per machine: what it believes. For liveness failures.
    pub(super) fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for machine in self.machines.values() {
            let _ = write!(out, "  n{}: ", machine.id);
            match &machine.core {
                None if machine.removed => out.push_str("removed\n"),
                None => out.push_str("down\n"),
                Some(core) => {
                    let _ = writeln!(
                        out,
                        "{}term {}, leader {:?}, is_leader {}, commit {}, applied {}, \
                         members {:?}",
                        if machine.paused_until > self.now {
                            "PAUSED, "
                        } else {
                            ""
                        },
                        core.term(),
                        core.leader(),
                        core.is_leader(),
                        core.commit_index(),
                        core.applied_index(),
                        core.state().nodes.keys().collect::<Vec<_>>(),
                    );
                }
            }
        }
        out
    }
}
