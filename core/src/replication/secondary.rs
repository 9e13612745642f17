//! The receiving end of a replication link: one per (volume, leg) on a secondary node.
//!
//! Why this exists: a secondary must take writes only from the one primary the cluster
//! committed, in the current epoch (DESIGN.md rule 2), must never touch its disk for a frame
//! that is malformed, misaddressed or out of range (rule 5), and must acknowledge a write only
//! once its disk has done it, so that the primary's acknowledgement to its client means "both
//! legs have it" (rule 1).
//!
//! Life of a link:
//! 1. The primary sends `Hello`; it is accepted only for this cluster, volume, leg and size in
//!    the committed epoch ([`Secondary::set_epoch`]), and answered with `HelloAck`. Anything
//!    else is answered with `Refuse` naming the field, and the leg stays as it was.
//! 2. Data messages (`Write`, `Trim`, `WriteZeroes`, `Flush`, `ResyncData`) carry the sender's
//!    epoch; one from any epoch but the attached and committed one is refused and the link is
//!    dropped. Accepted ones become [`DiskOp`]s; [`Secondary::disk_done`] completes them and
//!    sends the `Ack`.
//! 3. When the committed epoch moves past the attached one, the link is dropped at once.
//!
//! Ordering on the disk: an operation waits until every earlier operation it overlaps has
//! completed, so that overlapping writes land in the order the primary sent them whatever the
//! disk's completion order; a `Flush` is submitted only after every earlier data operation has
//! completed; a `fua` write is followed by a flush before its ack.
//!
//! Actions produced while handling [`Secondary::on_message`] concern the connection that
//! delivered the bytes (`Send` answers on it, `Drop` closes it); acks produced by
//! [`Secondary::disk_done`] go to the attached primary's connection.
//!
//! Online verify: a `VerifyRequest` becomes a disk `Read` queued like any other operation (it
//! waits for earlier overlapping writes, later overlapping writes wait for it), so the digests
//! describe exactly the writes the primary sent before asking. The read completes with
//! [`Secondary::disk_read_done`], which answers with one digest per [`VERIFY_BLOCK`]. A read
//! the disk fails is answered with a failed `Ack`, as a failed write is: the primary then
//! treats the leg as failing.
//!
//! Crash-suspect ranges: a leg whose node was the primary and crashed may hold writes that
//! nobody acknowledged, inside its activity log's hot extents. The shim hands those ranges to
//! every session until the leg is committed `UpToDate` again
//! ([`Secondary::with_suspect_ranges`]); each `HelloAck` names them, so the new primary
//! resyncs them besides what was written since the takeover.

use std::collections::BTreeMap;

use super::wire::{
    self, Message, RefuseCode, Suspect, MAX_SUSPECT_RANGES, MAX_VERIFY_LEN, PROTOCOL_VERSION,
    VERIFY_BLOCK,
};
use super::{check_range, overlaps, DiskKind, DiskOp, Ident, ReplError};
use crate::ids::{ClusterId, NodeId};
use crate::volume::LegId;

/// Operations queued or on the disk at once; a primary that sends more is refused.
pub const MAX_SECONDARY_OPS: usize = 2048;

/// What the shim must do for a [`Secondary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecondaryAction {
    /// A frame for the primary.
    Send(Vec<u8>),
    Disk(DiskOp),
    /// Close the connection to the primary; the link is detached.
    Drop {
        reason: String,
    },
    Note(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attachment {
    epoch: u64,
    from_node: NodeId,
    /// Raised by every accepted Hello: acks of operations from an older session are not sent.
    session: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Queued,
    Running,
    /// A `fua` write is on the disk; its flush is running.
    Flushing,
}

#[derive(Debug)]
struct Op {
    session: u64,
    epoch: u64,
    seq: u64,
    /// `None` for a flush.
    range: Option<(u64, u64)>,
    /// The disk work, taken when submitted.
    kind: Option<DiskKind>,
    fua: bool,
    /// A verify read: answered with digests, not an ack.
    verify: bool,
    stage: Stage,
    ok: bool,
}

impl Op {
    /// Its data is not on the disk yet (or, for a verify read, not read yet).
    fn data_pending(&self) -> bool {
        self.range.is_some() && self.stage != Stage::Flushing
    }
}

/// The secondary end of one volume's replication link.
#[derive(Debug)]
pub struct Secondary {
    ident: Ident,
    leg: LegId,
    size: u64,
    epoch: u64,
    attached: Option<Attachment>,
    sessions: u64,
    next_disk_id: u64,
    next_op: u64,
    /// Queued and running operations, in arrival order.
    ops: BTreeMap<u64, Op>,
    /// Disk op id → operation.
    disk: BTreeMap<u64, u64>,
    last_heard: u64,
    /// Sent in every `HelloAck`.
    suspect: Suspect,
    /// Data operations accepted that no `Confirm` covered yet: seq → range.
    unconfirmed: BTreeMap<u64, (u64, u64)>,
    /// More than [`MAX_UNCONFIRMED`] were pending at once: anything may differ.
    unconfirmed_overflow: bool,
    /// A primary confirmed something, so it had our `HelloAck` and its suspect ranges.
    confirmed: bool,
    /// The epoch this leg served when its node may have lost its disk cache (a power loss):
    /// a primary of a later epoch cannot know what was lost, so it hears "everything".
    cache_lost_in: Option<u64>,
    actions: Vec<SecondaryAction>,
}

/// Unconfirmed data operations a secondary remembers before it gives up listing them.
pub const MAX_UNCONFIRMED: usize = MAX_SUSPECT_RANGES;

impl Secondary {
    /// The leg `leg` of `ident.volume` on node `ident.node`, `size` bytes, at the committed
    /// epoch `current_epoch`.
    pub fn new(ident: Ident, leg: LegId, size: u64, current_epoch: u64) -> Secondary {
        Secondary {
            ident,
            leg,
            size,
            epoch: current_epoch,
            attached: None,
            sessions: 0,
            next_disk_id: 1,
            next_op: 1,
            ops: BTreeMap::new(),
            disk: BTreeMap::new(),
            last_heard: 0,
            suspect: Suspect::none(),
            unconfirmed: BTreeMap::new(),
            unconfirmed_overflow: false,
            confirmed: false,
            cache_lost_in: None,
            actions: Vec::new(),
        }
    }

    /// This leg may hold writes nobody acknowledged in these byte ranges `(offset, len)`: the
    /// hot extents of its activity log from when its node was the primary and crashed
    /// (`legmeta::Recovered::resync_ranges`). They are sorted, merged, and sent in every
    /// `HelloAck`; more than [`MAX_SUSPECT_RANGES`] after merging, or any range outside the
    /// leg, and "everything" is sent instead (a full resync, always safe).
    pub fn with_suspect_ranges(self, ranges: Vec<(u64, u64)>) -> Secondary {
        self.with_suspect(Suspect::Ranges(ranges))
    }

    /// Like [`Secondary::with_suspect_ranges`]; [`Suspect::Everything`] when the activity log
    /// could not be read and anything may differ.
    pub fn with_suspect(mut self, suspect: Suspect) -> Secondary {
        self.suspect = match suspect {
            Suspect::Everything => Suspect::Everything,
            Suspect::Ranges(ranges) => self.normalize_suspect(ranges),
        };
        self
    }

    fn normalize_suspect(&mut self, mut ranges: Vec<(u64, u64)>) -> Suspect {
        if let Some(&(offset, len)) = ranges
            .iter()
            .find(|&&(offset, len)| check_range(offset, len, self.size).is_err())
        {
            self.note(format!(
                "suspect range of {len} bytes at {offset} is outside the {}-byte leg: the \
                 whole leg is reported suspect",
                self.size
            ));
            return Suspect::Everything;
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (offset, len) in ranges {
            match merged.last_mut() {
                Some(last) if offset <= last.0 + last.1 => {
                    last.1 = last.1.max(offset + len - last.0);
                }
                _ => merged.push((offset, len)),
            }
        }
        if merged.len() > MAX_SUSPECT_RANGES {
            self.note(format!(
                "{} suspect ranges exceed {MAX_SUSPECT_RANGES}: the whole leg is reported suspect",
                merged.len()
            ));
            return Suspect::Everything;
        }
        Suspect::Ranges(merged)
    }

    /// This leg's node may have lost its disk cache (it lost power) while the leg served
    /// `epoch`. The primary of that epoch tracks what this leg acked unflushed, but it may be
    /// gone: a primary of a later epoch is told the whole leg is suspect (simulator seed
    /// 51780: the primary crashed, this secondary lost power, and a takeover by the third leg
    /// kept this one UpToDate without the writes its cache lost).
    pub fn with_cache_lost_in(mut self, epoch: u64) -> Secondary {
        self.cache_lost_in = Some(epoch);
        self
    }

    /// Whether a primary confirmed anything on this session, i.e. heard its `HelloAck`.
    pub fn report_heard(&self) -> bool {
        self.confirmed
    }

    /// What this leg reports as crash-suspect in its `HelloAck`.
    pub fn suspect(&self) -> &Suspect {
        &self.suspect
    }

    /// What the next primary must hear as suspect when this session is over: the ranges of
    /// data operations no `Confirm` covered (another leg may lack them, or have them while
    /// this one does not), and, if no primary ever confirmed anything here, what this
    /// session was to report itself (nobody may have heard it). After a takeover the
    /// surviving legs may differ exactly there (simulator seed 1254).
    pub fn unconfirmed(&mut self) -> Suspect {
        if self.unconfirmed_overflow {
            return Suspect::Everything;
        }
        let mut ranges: Vec<(u64, u64)> = self.unconfirmed.values().copied().collect();
        if !self.confirmed {
            match &self.suspect {
                Suspect::Everything => return Suspect::Everything,
                Suspect::Ranges(own) => ranges.extend(own),
            }
        }
        self.normalize_suspect(ranges)
    }

    /// `Confirm`: the primary of `epoch` has every request below `below` on every UpToDate
    /// leg. Another epoch's confirmation says nothing about this link and is ignored.
    fn on_confirm(&mut self, epoch: u64, below: u64) {
        if self.attached.is_none_or(|a| a.epoch != epoch) {
            return;
        }
        self.unconfirmed = self.unconfirmed.split_off(&below);
        self.confirmed = true;
    }

    fn remember_unconfirmed(&mut self, seq: u64, range: (u64, u64)) {
        if self.unconfirmed_overflow {
            return;
        }
        self.unconfirmed.insert(seq, range);
        if self.unconfirmed.len() > MAX_UNCONFIRMED {
            self.note(format!(
                "more than {MAX_UNCONFIRMED} operations unconfirmed: after a takeover the \
                 whole leg is reported suspect"
            ));
            self.unconfirmed.clear();
            self.unconfirmed_overflow = true;
        }
    }

    /// The committed epoch this leg accepts.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch and node of the attached primary, if any.
    pub fn attached(&self) -> Option<(u64, NodeId)> {
        self.attached.map(|a| (a.epoch, a.from_node))
    }

    /// Operations queued or on the disk.
    pub fn outstanding(&self) -> usize {
        self.ops.len()
    }

    /// `now` of the last message accepted from the primary.
    pub fn last_heard(&self) -> u64 {
        self.last_heard
    }

    pub fn take_actions(&mut self) -> Vec<SecondaryAction> {
        std::mem::take(&mut self.actions)
    }

    /// The committed cluster state says the volume is now at `epoch`. A link attached in an
    /// older epoch is dropped. Epochs never go down: a lower one is ignored.
    pub fn set_epoch(&mut self, epoch: u64) {
        if epoch < self.epoch {
            self.note(format!(
                "ignored epoch {epoch}: volume {} is already at epoch {}",
                self.ident.volume, self.epoch
            ));
            return;
        }
        self.epoch = epoch;
        if let Some(attached) = self.attached.filter(|a| a.epoch != epoch) {
            let reason = format!(
                "the committed epoch moved from {} to {epoch}: the primary of epoch {} may no \
                 longer write",
                attached.epoch, attached.epoch
            );
            self.send(&Message::Refuse {
                code: RefuseCode::StaleEpoch,
                text: reason.clone(),
            });
            self.detach(reason);
        }
    }

    /// The connection to the primary closed. Operations already on the disk complete, but are
    /// not acknowledged.
    pub fn link_lost(&mut self) {
        if self.attached.take().is_some() {
            self.note("link to the primary lost".into());
        }
    }

    /// One frame from the primary.
    pub fn on_message(&mut self, now: u64, bytes: &[u8]) -> Result<(), ReplError> {
        let message = match wire::decode(bytes) {
            Ok(message) => message,
            Err(error) => {
                self.detach(format!("malformed frame: {error}"));
                return Err(error.into());
            }
        };
        let result = self.handle(message);
        if result.is_ok() {
            self.last_heard = now;
        }
        self.pump();
        result
    }

    fn handle(&mut self, message: Message) -> Result<(), ReplError> {
        let kind = message.kind_name();
        match message {
            Message::Hello {
                version,
                cluster,
                volume,
                leg,
                from_node,
                epoch,
                size,
            } => {
                let hello = HelloFields {
                    version,
                    cluster: ClusterId(cluster),
                    volume,
                    leg,
                    epoch,
                    size,
                };
                self.on_hello(hello, from_node)
            }
            Message::Ping { seq } => {
                self.send(&Message::Pong { seq });
                Ok(())
            }
            Message::Pong { .. } => Ok(()),
            Message::Confirm { epoch, below } => {
                self.on_confirm(epoch, below);
                Ok(())
            }
            Message::VerifyRequest {
                epoch,
                seq,
                offset,
                len,
            } => self.accept_data(kind, DataMessage::verify(epoch, seq, offset, len)),
            Message::HelloAck { .. }
            | Message::Refuse { .. }
            | Message::Ack { .. }
            | Message::VerifyReply { .. } => {
                let reason = format!("a secondary does not accept {kind} messages");
                Err(self.refuse_data(RefuseCode::Protocol, reason))
            }
            data => match DataMessage::from(data) {
                Some(data) => self.accept_data(kind, data),
                None => Err(self.refuse_data(RefuseCode::Protocol, format!("unhandled {kind}"))),
            },
        }
    }

    fn on_hello(&mut self, hello: HelloFields, from_node: NodeId) -> Result<(), ReplError> {
        if let Err((code, reason)) = self.check_hello(&hello) {
            let reason = format!("hello from node {from_node} refused: {reason}");
            self.send(&Message::Refuse {
                code,
                text: reason.clone(),
            });
            return Err(ReplError::Refused { code, reason });
        }
        if self.sessions > 0 {
            // An earlier attachment's unconfirmed operations go into this report.
            self.suspect = self.unconfirmed();
            self.unconfirmed.clear();
            self.unconfirmed_overflow = false;
            self.confirmed = false;
        }
        if let Some(lost) = self.cache_lost_in.filter(|&lost| hello.epoch > lost) {
            self.note(format!(
                "this leg's cache may have been lost in epoch {lost} (power loss); the \
                 primary of epoch {} cannot know what: the whole leg is reported suspect",
                hello.epoch
            ));
            self.suspect = Suspect::Everything;
        }
        self.sessions += 1;
        let replaced = self.attached.replace(Attachment {
            epoch: hello.epoch,
            from_node,
            session: self.sessions,
        });
        if replaced.is_some() {
            self.note("a new connection from the primary replaces the old one".into());
        }
        self.send(&Message::HelloAck {
            epoch: hello.epoch,
            suspect: self.suspect.clone(),
        });
        self.note(format!(
            "attached to the primary on node {from_node} in epoch {}",
            hello.epoch
        ));
        Ok(())
    }

    fn check_hello(&self, hello: &HelloFields) -> Result<(), (RefuseCode, String)> {
        let me = &self.ident;
        if hello.version != PROTOCOL_VERSION {
            return Err((
                RefuseCode::Version,
                format!(
                    "protocol version {} is not supported, this node speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
            ));
        }
        if hello.cluster != me.cluster {
            let reason = format!(
                "cluster {} is not this node's cluster {}",
                hello.cluster, me.cluster
            );
            return Err((RefuseCode::Cluster, reason));
        }
        if hello.volume != me.volume {
            let reason = format!(
                "volume {} is not this link's volume {}",
                hello.volume, me.volume
            );
            return Err((RefuseCode::Volume, reason));
        }
        if hello.leg != self.leg {
            let reason = format!(
                "leg {} is not the leg this node holds (leg {} of volume {})",
                hello.leg, self.leg, me.volume
            );
            return Err((RefuseCode::Leg, reason));
        }
        if hello.size != self.size {
            let reason = format!(
                "size {} bytes does not match leg {} of volume {}, which is {} bytes",
                hello.size, self.leg, me.volume, self.size
            );
            return Err((RefuseCode::Size, reason));
        }
        self.check_epoch("hello", hello.epoch, self.epoch)
    }

    /// A message of `epoch` is accepted only in the committed epoch, which is also the epoch
    /// the link was attached in (`attached`; a new committed epoch detaches the link).
    fn check_epoch(
        &self,
        kind: &str,
        given: u64,
        attached: u64,
    ) -> Result<(), (RefuseCode, String)> {
        if given == attached && given == self.epoch {
            return Ok(());
        }
        #[cfg(feature = "mutations")]
        if crate::data_mutations::get().skip_epoch_check {
            return Ok(());
        }
        let volume = self.ident.volume;
        let current = self.epoch;
        if given < current {
            let reason = format!(
                "{kind} from epoch {given} refused: volume {volume} is at epoch {current}, a \
                 primary of an older epoch may no longer write"
            );
            return Err((RefuseCode::StaleEpoch, reason));
        }
        if given > current {
            let reason = format!(
                "{kind} from epoch {given} refused: this node knows volume {volume} only up to \
                 epoch {current}; retry once the committed state has reached it"
            );
            return Err((RefuseCode::FutureEpoch, reason));
        }
        let reason =
            format!("{kind} from epoch {given} refused: the link was attached in epoch {attached}");
        Err((RefuseCode::StaleEpoch, reason))
    }

    /// Checks a data message and queues its disk work.
    fn accept_data(&mut self, kind: &'static str, data: DataMessage) -> Result<(), ReplError> {
        let DataMessage {
            epoch,
            seq,
            range,
            disk,
            fua,
            verify,
        } = data;
        let Some(attached) = self.attached else {
            let reason =
                format!("{kind} seq {seq} refused: no primary is attached (send hello first)");
            return Err(self.refuse_data(RefuseCode::NotAttached, reason));
        };
        if let Err((code, reason)) = self.check_epoch(kind, epoch, attached.epoch) {
            return Err(self.refuse_data(code, reason));
        }
        if let Some((offset, len)) = range {
            if verify {
                self.check_verify(seq, offset, len)?;
            }
            if let Err(error) = check_range(offset, len, self.size) {
                let reason = format!("{kind} seq {seq}: {error}");
                self.refuse_data(RefuseCode::OutOfRange, reason);
                return Err(error);
            }
        }
        if self.ops.len() >= MAX_SECONDARY_OPS {
            let reason = format!(
                "{kind} seq {seq} refused: {} operations outstanding, limit {MAX_SECONDARY_OPS}",
                self.ops.len()
            );
            return Err(self.refuse_data(RefuseCode::Busy, reason));
        }
        if let Some(range) = range.filter(|_| !verify) {
            self.remember_unconfirmed(seq, range);
        }
        let id = self.next_op;
        self.next_op += 1;
        let op = Op {
            session: attached.session,
            epoch,
            seq,
            range,
            kind: disk,
            fua,
            verify,
            stage: Stage::Queued,
            ok: true,
        };
        self.ops.insert(id, op);
        Ok(())
    }

    /// A verify range must start on a block, end on one or at the end of the leg, and be at
    /// most [`MAX_VERIFY_LEN`] long (its reply stays bounded).
    fn check_verify(&mut self, seq: u64, offset: u64, len: u64) -> Result<(), ReplError> {
        let reason = if len > MAX_VERIFY_LEN {
            format!("verify seq {seq} of {len} bytes exceeds the {MAX_VERIFY_LEN}-byte limit")
        } else if !offset.is_multiple_of(VERIFY_BLOCK) {
            format!("verify seq {seq} at offset {offset} is not on a {VERIFY_BLOCK}-byte block")
        } else if !len.is_multiple_of(VERIFY_BLOCK) && offset.saturating_add(len) != self.size {
            format!(
                "verify seq {seq} of {len} bytes at {offset} ends inside a {VERIFY_BLOCK}-byte \
                 block before the end of the leg"
            )
        } else {
            return Ok(());
        };
        Err(self.refuse_data(RefuseCode::Protocol, reason))
    }

    /// Refuses a data message: tells the primary, drops the link.
    fn refuse_data(&mut self, code: RefuseCode, reason: String) -> ReplError {
        self.send(&Message::Refuse {
            code,
            text: reason.clone(),
        });
        self.detach(reason.clone());
        ReplError::Refused { code, reason }
    }

    /// Submits every queued operation whose turn has come.
    fn pump(&mut self) {
        let mut pending: Vec<(u64, u64)> = Vec::new();
        let mut data_before = false;
        let mut ready = Vec::new();
        for (&id, op) in &self.ops {
            if op.stage == Stage::Queued {
                let go = match op.range {
                    Some(range) => !pending.iter().any(|&other| overlaps(other, range)),
                    None => !data_before,
                };
                if go {
                    ready.push(id);
                }
            }
            if op.data_pending() {
                // A flush need not wait for a verify read; overlapping writes must.
                data_before |= !op.verify;
                pending.extend(op.range);
            }
        }
        for id in ready {
            self.submit(id);
        }
    }

    fn submit(&mut self, id: u64) {
        let disk_id = self.next_disk_id;
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let kind = op.kind.take().unwrap_or(DiskKind::Flush);
        op.stage = Stage::Running;
        self.next_disk_id += 1;
        self.disk.insert(disk_id, id);
        self.actions
            .push(SecondaryAction::Disk(DiskOp { id: disk_id, kind }));
    }

    /// The disk finished operation `id`. Reads complete with [`Secondary::disk_read_done`]
    /// instead; a read reported here counts as failed (its verify is answered as failed).
    pub fn disk_done(&mut self, id: u64, ok: bool) -> Result<(), ReplError> {
        let op_id = self
            .disk
            .remove(&id)
            .ok_or(ReplError::UnknownDiskOp { id })?;
        let Some(op) = self.ops.get_mut(&op_id) else {
            return Err(ReplError::UnknownDiskOp { id });
        };
        let misreported = op.verify && ok;
        op.ok &= ok && !op.verify;
        if op.stage == Stage::Running && op.fua && op.ok && op.range.is_some() {
            op.stage = Stage::Flushing;
            self.submit_flush_of(op_id);
        } else if let Some(op) = self.ops.remove(&op_id) {
            self.finish(op);
        }
        self.pump();
        if misreported {
            return Err(ReplError::BadCompletion {
                id,
                reason: "a read completes with its data (disk_read_done)".into(),
            });
        }
        Ok(())
    }

    /// The disk finished read `id` (a verify) with `data`: the primary gets its digests.
    pub fn disk_read_done(&mut self, id: u64, data: Vec<u8>) -> Result<(), ReplError> {
        let op_id = *self.disk.get(&id).ok_or(ReplError::UnknownDiskOp { id })?;
        let range = match self.ops.get(&op_id) {
            Some(op) if op.verify => op.range.unwrap_or_default(),
            _ => {
                return Err(ReplError::BadCompletion {
                    id,
                    reason: "it is not a read; complete it with disk_done".into(),
                })
            }
        };
        self.disk.remove(&id);
        let Some(mut op) = self.ops.remove(&op_id) else {
            return Err(ReplError::UnknownDiskOp { id });
        };
        let (offset, len) = range;
        let result = if data.len() as u64 == len {
            self.finish_verify(&op, offset, len, &data);
            Ok(())
        } else {
            op.ok = false;
            self.finish(op);
            Err(ReplError::BadCompletion {
                id,
                reason: format!("read of {len} bytes at {offset} returned {}", data.len()),
            })
        };
        self.pump();
        result
    }

    fn finish_verify(&mut self, op: &Op, offset: u64, len: u64, data: &[u8]) {
        if !self.is_current(op) {
            self.note(format!(
                "verify seq {} read after its link ended; not answered",
                op.seq
            ));
            return;
        }
        self.send(&Message::VerifyReply {
            epoch: op.epoch,
            seq: op.seq,
            offset,
            len,
            digests: wire::verify_digests(data),
        });
    }

    /// Whether `op` came from the attached primary's current session.
    fn is_current(&self, op: &Op) -> bool {
        self.attached
            .is_some_and(|a| a.session == op.session && a.epoch == op.epoch)
    }

    fn submit_flush_of(&mut self, op_id: u64) {
        let disk_id = self.next_disk_id;
        self.next_disk_id += 1;
        self.disk.insert(disk_id, op_id);
        self.actions.push(SecondaryAction::Disk(DiskOp {
            id: disk_id,
            kind: DiskKind::Flush,
        }));
    }

    fn finish(&mut self, op: Op) {
        if !self.is_current(&op) {
            self.note(format!(
                "seq {} done on the disk after its link ended; not acknowledged",
                op.seq
            ));
            return;
        }
        if !op.ok {
            self.note(format!("seq {} failed on the disk", op.seq));
        }
        self.send(&Message::Ack {
            epoch: op.epoch,
            seq: op.seq,
            ok: op.ok,
        });
    }

    fn detach(&mut self, reason: String) {
        self.attached = None;
        self.actions.push(SecondaryAction::Drop { reason });
    }

    fn send(&mut self, message: &Message) {
        self.actions
            .push(SecondaryAction::Send(wire::encode(message)));
    }

    fn note(&mut self, text: String) {
        let leg = self.leg;
        let volume = self.ident.volume;
        self.actions.push(SecondaryAction::Note(format!(
            "volume {volume} leg {leg}: {text}"
        )));
    }
}

/// The parts of a data message (write, resync data, trim, write-zeroes, flush).
struct DataMessage {
    epoch: u64,
    seq: u64,
    /// `None` for a flush.
    range: Option<(u64, u64)>,
    disk: Option<DiskKind>,
    fua: bool,
    verify: bool,
}

impl DataMessage {
    /// A verify request: a read of the range.
    fn verify(epoch: u64, seq: u64, offset: u64, len: u64) -> DataMessage {
        DataMessage {
            epoch,
            seq,
            range: Some((offset, len)),
            disk: Some(DiskKind::Read { offset, len }),
            fua: false,
            verify: true,
        }
    }

    fn from(message: Message) -> Option<DataMessage> {
        let (epoch, seq, range, disk, fua) = match message {
            Message::Write {
                epoch,
                seq,
                offset,
                data,
                fua,
            } => {
                let range = (offset, data.len() as u64);
                (
                    epoch,
                    seq,
                    Some(range),
                    Some(DiskKind::Write { offset, data }),
                    fua,
                )
            }
            Message::ResyncData {
                epoch,
                seq,
                offset,
                data,
            } => {
                let range = (offset, data.len() as u64);
                (
                    epoch,
                    seq,
                    Some(range),
                    Some(DiskKind::Write { offset, data }),
                    false,
                )
            }
            Message::Trim {
                epoch,
                seq,
                offset,
                len,
                fua,
            } => (
                epoch,
                seq,
                Some((offset, len)),
                Some(DiskKind::Trim { offset, len }),
                fua,
            ),
            Message::WriteZeroes {
                epoch,
                seq,
                offset,
                len,
                fua,
            } => {
                let disk = DiskKind::WriteZeroes { offset, len };
                (epoch, seq, Some((offset, len)), Some(disk), fua)
            }
            Message::Flush { epoch, seq } => (epoch, seq, None, None, false),
            _ => return None,
        };
        Some(DataMessage {
            epoch,
            seq,
            range,
            disk,
            fua,
            verify: false,
        })
    }
}

struct HelloFields {
    version: u32,
    cluster: ClusterId,
    volume: u64,
    leg: LegId,
    epoch: u64,
    size: u64,
}
