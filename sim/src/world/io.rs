//! Moving inputs into cores and their actions out: frames, disk writes, restarts; and the
//! safety checks that run after every step.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use raft::eraftpb::MessageType;
use rand::Rng;
use tandem_core::codec::{self, PeerMessage};
use tandem_core::{Action, NodeCore, NodeId};

use super::{World, TICK_MS};
use crate::checkers::Violation;
use crate::config::SnapshotLoss;
use crate::disk::Write;
use crate::events::{Event, Input};
use crate::machine::guard;
use crate::net::Fate;
use crate::trace::{DropWhy, Msg, TraceEvent};

/// What one batch of actions announced, for the apply checker.
#[derive(Default)]
struct Batch {
    applied: Vec<(u64, u64, u64)>,
    snapshots: Vec<(u64, u64)>,
    removed: bool,
}

impl World {
    /// Hands `input` to process `incarnation` of `id`: lost if that process is gone,
    /// postponed while it is paused.
    pub(super) fn on_input(
        &mut self,
        id: NodeId,
        incarnation: u32,
        input: Input,
    ) -> Result<(), Violation> {
        let Some(machine) = self.machines.get(&id) else {
            return Ok(());
        };
        if !machine.running() || machine.incarnation != incarnation {
            if let Input::Frame { from, msg, .. } = input {
                self.trace
                    .record(self.now, Some(id), TraceEvent::Lost { from, msg });
            }
            return Ok(());
        }
        if machine.paused_until > self.now {
            let event = Event::Input {
                node: id,
                incarnation,
                input,
            };
            self.queue.push(machine.paused_until, event);
            return Ok(());
        }
        let local = machine.local(self.now);
        match input {
            Input::Tick => {
                self.call(id, |core| core.tick(local))?;
                let next = Event::Input {
                    node: id,
                    incarnation,
                    input: Input::Tick,
                };
                self.queue.push(self.now + TICK_MS, next);
            }
            Input::Frame { from, bytes, msg } => {
                self.trace
                    .record(self.now, Some(id), TraceEvent::Deliver { from, msg });
                let received = self.call(id, |core| core.receive(local, &bytes))?;
                received.map_err(|error| Violation::BadFrame {
                    from,
                    to: id,
                    reason: error.to_string(),
                })?;
            }
            Input::Persisted(number) => self.call(id, |core| core.persisted(number))?,
            Input::AgentRound => self.agent_round(id, incarnation)?,
            Input::OpDone { op } => self.op_done(id, op)?,
        }
        Ok(())
    }

    /// Calls into `id`'s core, performs the actions it asks for, then runs the checkers.
    pub(super) fn call<T>(
        &mut self,
        id: NodeId,
        call: impl FnOnce(&mut NodeCore) -> T,
    ) -> Result<T, Violation> {
        let core = self
            .machines
            .get_mut(&id)
            .and_then(|machine| machine.core.as_mut())
            .ok_or_else(|| Violation::Setup(format!("n{id} has no running process")))?;
        let (value, actions) = guard(id, || {
            let value = call(core);
            (value, core.take_actions())
        })?;
        self.perform(id, actions)?;
        self.after_step(id)?;
        Ok(value)
    }

    fn perform(&mut self, id: NodeId, actions: Vec<Action>) -> Result<(), Violation> {
        let mut batch = Batch::default();
        for action in actions {
            match action {
                Action::Send { to, bytes } => self.send(id, to, bytes)?,
                Action::Persist {
                    number,
                    hard_state,
                    entries,
                    snapshot,
                } => {
                    if let Some(snapshot) = &snapshot {
                        let meta = snapshot.get_metadata();
                        batch.snapshots.push((meta.index, meta.term));
                    }
                    let write = Write::Persist {
                        number,
                        hard_state,
                        entries,
                        snapshot,
                    };
                    self.submit(id, write)?;
                }
                Action::Compact { snapshot } => self.submit(id, Write::Compact { snapshot })?,
                Action::Applied {
                    index,
                    term,
                    digest,
                } => {
                    let event = TraceEvent::Applied {
                        index,
                        term,
                        digest,
                    };
                    self.trace.record(self.now, Some(id), event);
                    batch.applied.push((index, term, digest));
                }
                Action::Completed { request, outcome } => {
                    self.on_completed(id, request, outcome)?
                }
                Action::Removed => batch.removed = true,
                Action::Note { message } => {
                    self.trace
                        .record(self.now, Some(id), TraceEvent::Note(message))
                }
                #[allow(unreachable_patterns)]
                other => {
                    let text = format!("action the simulator does not model: {other:?}");
                    self.trace
                        .record(self.now, Some(id), TraceEvent::Note(text));
                }
            }
        }
        self.checkers.batch(id, &batch.applied, &batch.snapshots)?;
        if batch.removed {
            self.stop_removed(id)?;
        }
        Ok(())
    }

    /// Puts a frame on the network.
    fn send(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) -> Result<(), Violation> {
        let msg = summarize(self.cluster, from, to, &bytes)
            .map_err(|reason| Violation::BadFrame { from, to, reason })?;
        let receiver = self
            .machines
            .get(&to)
            .filter(|machine| machine.running())
            .map(|machine| machine.incarnation);
        let fate = self.net.fate(from, to);
        let fate = self.snapshot_fate(&msg, fate);
        let delays = match (fate, receiver) {
            (Fate::Partitioned, _) => Err(DropWhy::Partitioned),
            (Fate::Lost, _) => Err(DropWhy::Lost),
            (Fate::Deliver(_), None) => Err(DropWhy::ReceiverDown),
            (Fate::Deliver(delays), Some(incarnation)) => Ok((delays, incarnation)),
        };
        let (delays, incarnation) = match delays {
            Ok(found) => found,
            Err(why) => {
                let event = TraceEvent::Dropped { to, msg, why };
                self.trace.record(self.now, Some(from), event);
                return Ok(());
            }
        };
        for (copy, &delay) in delays.iter().enumerate() {
            let event = if copy == 0 {
                TraceEvent::Send {
                    to,
                    msg: msg.clone(),
                    delay,
                }
            } else {
                TraceEvent::Duplicated { to, delay }
            };
            self.trace.record(self.now, Some(from), event);
            let input = Input::Frame {
                from,
                bytes: bytes.clone(),
                msg: msg.clone(),
            };
            let event = Event::Input {
                node: to,
                incarnation,
                input,
            };
            self.queue.push(self.now + delay, event);
        }
        Ok(())
    }

    /// Applies `Options::snapshot_loss` to the network's verdict on a frame.
    fn snapshot_fate(&mut self, msg: &Msg, fate: Fate) -> Fate {
        let is_snapshot =
            matches!(msg, Msg::Raft { kind, .. } if *kind == MessageType::MsgSnapshot);
        if !is_snapshot {
            return fate;
        }
        match self.options.snapshot_loss {
            SnapshotLoss::Random => fate,
            SnapshotLoss::Never => match fate {
                Fate::Partitioned | Fate::Lost => Fate::Deliver(vec![1]),
                delivered => delivered,
            },
            SnapshotLoss::First if !self.lost_first_snapshot => {
                self.lost_first_snapshot = true;
                Fate::Lost
            }
            SnapshotLoss::First => fate,
        }
    }

    /// Submits a write to `id`'s disk; it becomes durable after a random delay.
    fn submit(&mut self, id: NodeId, write: Write) -> Result<(), Violation> {
        let machine = self
            .machines
            .get_mut(&id)
            .ok_or_else(|| Violation::Setup(format!("n{id} has no disk")))?;
        let roll = self.disk_rng.gen_range(0..100);
        let mut delay = match roll {
            0..=74 => self.disk_rng.gen_range(0..=3),
            75..=94 => self.disk_rng.gen_range(4..=15),
            _ => self.disk_rng.gen_range(20..=60),
        };
        let slowdown = machine.disk_slowdown();
        if slowdown > 0 {
            delay += self.disk_rng.gen_range(0..=slowdown);
        }
        let mut event = trace_write(&write);
        let (seq, done_at) = machine.disk.submit(write, self.now, delay);
        if let TraceEvent::Persist { done_at: at, .. } | TraceEvent::Compact { done_at: at, .. } =
            &mut event
        {
            *at = done_at;
        }
        self.trace.record(self.now, Some(id), event);
        self.queue.push(done_at, Event::DiskDone { node: id, seq });
        Ok(())
    }

    /// Writes up to `seq` reached `id`'s disk: they are durable; tell the process.
    pub(super) fn on_disk_done(&mut self, id: NodeId, seq: u64) -> Result<(), Violation> {
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        let before = machine.disk.in_flight();
        let persisted = machine
            .disk
            .complete(seq)
            .map_err(|reason| Violation::DiskRefused { node: id, reason })?;
        if machine.disk.in_flight() == before {
            return Ok(()); // a completion for writes a crash already settled
        }
        let incarnation = machine.incarnation;
        self.trace
            .record(self.now, Some(id), TraceEvent::Durable { persisted });
        match persisted {
            Some(number) => self.on_input(id, incarnation, Input::Persisted(number)),
            None => Ok(()),
        }
    }

    /// Starts (or restarts) `id`'s process from its disk.
    pub(super) fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let clock_base = self.clock_rng.gen_range(0..1_000_000);
        let first_tick = self.clock_rng.gen_range(1..=TICK_MS);
        let (cluster, timing, now) = (self.cluster, self.scenario.timing, self.now);
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        if machine.running() || machine.removed {
            return Ok(());
        }
        let durable = machine.disk.durable_state();
        machine.start(cluster, timing, now, clock_base, &self.options.mutations)?;
        let meta = durable.snapshot.get_metadata();
        let event = TraceEvent::Started {
            incarnation: machine.incarnation,
            snapshot: meta.index,
            entries: durable.entries.len(),
            term: durable.hard_state.term,
        };
        let incarnation = machine.incarnation;
        self.restarts += u64::from(incarnation > 1);
        self.trace.record(now, Some(id), event);
        self.checkers.restored(id, meta.index, meta.term)?;
        let tick = Event::Input {
            node: id,
            incarnation,
            input: Input::Tick,
        };
        self.queue.push(now + first_tick, tick);
        self.host_started(id);
        self.after_step(id)
    }

    /// Stops `id`'s process; `keep` of its writes in flight reach the disk.
    pub(super) fn stop(
        &mut self,
        id: NodeId,
        why: &'static str,
        power_loss: bool,
    ) -> Result<(), Violation> {
        let Some(machine) = self.machines.get_mut(&id) else {
            return Ok(());
        };
        if !machine.running() {
            return Ok(());
        }
        let in_flight = machine.disk.in_flight();
        let keep = if power_loss {
            0
        } else {
            self.fault_rng.gen_range(0..=in_flight)
        };
        let (kept_writes, lost_writes) = machine.stop(keep)?;
        let event = TraceEvent::Stopped {
            why,
            kept_writes,
            lost_writes,
        };
        self.trace.record(self.now, Some(id), event);
        self.resources_died(id, power_loss)
    }

    /// The node learned it was removed: like the daemon, it stops for good.
    fn stop_removed(&mut self, id: NodeId) -> Result<(), Violation> {
        if let Some(machine) = self.machines.get_mut(&id) {
            machine.core = None;
            machine.removed = true;
            let event = TraceEvent::Stopped {
                why: "removed from the cluster",
                kept_writes: 0,
                lost_writes: 0,
            };
            self.trace.record(self.now, Some(id), event);
            self.workload.stats.removals += 1;
        }
        // The daemon exits: like a crash of the process, for what it started.
        self.resources_died(id, false)
    }

    /// The checks after every step of `id`: its leadership, its applied state, and the
    /// leases of every node at this instant.
    pub(super) fn after_step(&mut self, id: NodeId) -> Result<(), Violation> {
        if let Some(machine) = self.machines.get_mut(&id) {
            if let Some(core) = &machine.core {
                if core.is_leader() {
                    self.checkers.leader(core.term(), id)?;
                }
                let reported = core.applied_index();
                let announced = self.checkers.announced(id);
                if reported != announced {
                    return Err(Violation::AppliedMismatch {
                        node: id,
                        reported,
                        announced,
                    });
                }
                if machine.state_checked != Some(reported) {
                    let encoded = tandem_core::state::encode_state(core.state());
                    let mut hasher = DefaultHasher::new();
                    hasher.write(&encoded);
                    self.checkers.state(id, reported, hasher.finish())?;
                    machine.state_checked = Some(reported);
                    self.check_writer(id)?;
                }
            }
        }
        self.check_leases()?;
        self.note_lease(id);
        self.check_groups()
    }

    fn check_leases(&self) -> Result<(), Violation> {
        let mut holders = Vec::new();
        for machine in self.machines.values() {
            if let Some(core) = &machine.core {
                if core.holds_leader_lease(machine.local(self.now)) {
                    holders.push((machine.id, core.term()));
                }
            }
        }
        self.checkers.leases(&holders)
    }
}

/// Decodes a frame the way its receiver will, for the trace and to catch malformed output.
fn summarize(
    cluster: tandem_core::ClusterId,
    from: NodeId,
    to: NodeId,
    bytes: &[u8],
) -> Result<Msg, String> {
    let frame = codec::decode(cluster, to, bytes).map_err(|error| error.to_string())?;
    if frame.from != from {
        return Err(format!("the frame claims to come from n{}", frame.from));
    }
    Ok(match frame.message {
        PeerMessage::Raft(message) => Msg::Raft {
            kind: message.get_msg_type(),
            term: message.term,
            index: message.index,
            log_term: message.log_term,
            commit: message.commit,
            entries: message.entries.len(),
            reject: message.reject,
            snapshot: message
                .snapshot
                .as_ref()
                .map(|snapshot| snapshot.get_metadata().index)
                .filter(|&index| index > 0),
        },
        PeerMessage::Ping(ping) => Msg::Ping {
            seq: ping.seq,
            term: ping.term,
        },
        PeerMessage::Pong(pong) => Msg::Pong {
            seq: pong.seq,
            term: pong.term,
            lease: pong.leader_with_lease,
        },
        PeerMessage::Evicted => Msg::Evicted,
        #[allow(unreachable_patterns)]
        _ => Msg::Other,
    })
}

fn trace_write(write: &Write) -> TraceEvent {
    match write {
        Write::Persist {
            number,
            hard_state,
            entries,
            snapshot,
        } => TraceEvent::Persist {
            number: *number,
            entries: entries.len(),
            last_index: entries.last().map(|entry| entry.index),
            hard_state: hard_state.as_ref().map(|hs| (hs.term, hs.vote, hs.commit)),
            snapshot: snapshot.as_ref().map(|s| s.get_metadata().index),
            done_at: 0,
        },
        Write::Compact { snapshot } => TraceEvent::Compact {
            index: snapshot.get_metadata().index,
            done_at: 0,
        },
    }
}
