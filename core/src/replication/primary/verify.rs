//! Online verify: comparing an `UpToDate` peer leg with the local one, region by region, by
//! digest, and (with `repair`) resyncing the regions that differ.
//!
//! Why: DESIGN.md rule 4 promises byte-identical legs once faults heal; verify is how an
//! operator (`tandem volume verify NAME`) proves it, or finds silent corruption. Only digests
//! cross the network ([`wire::verify_digest`], 8 bytes per 4 KiB block).
//!
//! The walk goes from offset 0 to the end in requests of [`Tuning::verify_chunk`] bytes: a
//! local `Read` and a `VerifyRequest` to the peer at once; when both the local data and the
//! peer's digests are in, the blocks are compared and the mismatching ones recorded.
//!
//! No false mismatches from client writes: a verify request holds its range like a resync
//! chunk does. It is issued only where no client request holds or awaits the range (clients
//! go first; a request is clipped before the first busy block) and no resync chunk to that
//! peer is in flight there; a client write that arrives later waits until the comparison is
//! done. Writes the peer was sent before the request reach its disk before its read (the
//! secondary orders overlapping operations by arrival), so both reads see the same writes.
//!
//! Repair: each mismatching block is marked in the peer's bitmap and the ordinary resync
//! (`resync` module) copies it. The peer stays `UpToDate` and `Sync`: every client write still
//! waits for its ack, so acknowledgements keep meaning "both legs have it" and nothing is
//! frozen or proposed; a repair chunk holds its range only until the peer acked it, like any
//! resync chunk. When the bitmap is clean again the peer is sent a flush, so the repaired
//! data is durable there (`maybe_end_repair`). Crash-suspect ranges a `Sync` peer reports are
//! repaired the same way.
//!
//! Pace: at most [`Tuning::verify_window`] requests in flight per peer
//! ([`Tuning::verify_window_busy`] under client load) and a token bucket at
//! [`Tuning::verify_max_rate`] ([`Tuning::verify_busy_rate`] under client load).
//!
//! A verify ends early (`aborted`) when the link goes down, the peer leaves `Sync`, or a local
//! read fails; mismatches found until then stay recorded (and marked, with `repair`).
//!
//! [`Tuning::verify_chunk`]: super::Tuning::verify_chunk
//! [`Tuning::verify_window`]: super::Tuning::verify_window
//! [`Tuning::verify_window_busy`]: super::Tuning::verify_window_busy
//! [`Tuning::verify_max_rate`]: super::Tuning::verify_max_rate
//! [`Tuning::verify_busy_rate`]: super::Tuning::verify_busy_rate

use std::collections::BTreeMap;

use super::{Effect, LinkState, PeerMode, Primary, Purpose};
use crate::replication::wire::{self, Message, VERIFY_BLOCK};
use crate::replication::{overlaps, DiskKind, ReplError};
use crate::volume::{LegId, LegState};

/// Mismatching ranges listed at most per verify (adjacent blocks are merged first); beyond
/// it they are still counted in [`VerifyStatus::mismatched_bytes`] and, with `repair`,
/// still repaired.
pub const MAX_VERIFY_MISMATCHES: usize = 65_536;

/// A verify of one peer leg at a glance ([`Primary::verify_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyStatus {
    /// Bytes compared so far.
    pub done_bytes: u64,
    /// The volume's size.
    pub total_bytes: u64,
    /// Mismatching byte ranges `(offset, len)` in [`VERIFY_BLOCK`] units, ascending, adjacent
    /// ones merged; at most [`MAX_VERIFY_MISMATCHES`].
    pub mismatches: Vec<(u64, u64)>,
    /// All mismatching bytes found, listed or not.
    pub mismatched_bytes: u64,
    /// Mismatches are marked out of sync and resynced.
    pub repair: bool,
    /// Nothing more will be compared (done, or aborted).
    pub finished: bool,
    /// Why it ended before the end of the volume.
    pub aborted: Option<String>,
}

/// The state of one peer's verify.
#[derive(Debug)]
pub(super) struct VerifyRun {
    repair: bool,
    /// Where the next request starts.
    cursor: u64,
    done: u64,
    /// Requests in flight by seq.
    ops: BTreeMap<u64, VerifyOp>,
    /// Start → length, merged.
    mismatches: BTreeMap<u64, u64>,
    mismatched_bytes: u64,
    finished: bool,
    aborted: Option<String>,
}

#[derive(Debug)]
struct VerifyOp {
    range: (u64, u64),
    local: Option<Vec<u64>>,
    remote: Option<Vec<u64>>,
}

impl VerifyRun {
    fn new(repair: bool) -> VerifyRun {
        VerifyRun {
            repair,
            cursor: 0,
            done: 0,
            ops: BTreeMap::new(),
            mismatches: BTreeMap::new(),
            mismatched_bytes: 0,
            finished: false,
            aborted: None,
        }
    }

    fn running(&self) -> bool {
        !self.finished
    }

    /// Records a mismatching block, merged with its neighbours.
    fn record(&mut self, offset: u64, len: u64) {
        self.mismatched_bytes += len;
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&before, &before_len)) = self.mismatches.range(..=offset).next_back() {
            if before + before_len >= offset {
                start = before;
                end = end.max(before + before_len);
                self.mismatches.remove(&before);
            }
        }
        if let Some(after_len) = self.mismatches.remove(&end) {
            end += after_len;
        }
        let merged = (start, end) != (offset, offset + len);
        if merged || self.mismatches.len() < MAX_VERIFY_MISMATCHES {
            self.mismatches.insert(start, end - start);
        }
    }
}

impl Primary {
    /// Starts comparing peer leg `leg` with the local leg, block by block; with `repair`,
    /// mismatching blocks are resynced from here. Only for a connected peer committed
    /// `UpToDate` and in step (`Sync`); one verify per peer at a time. Follow it with
    /// [`Primary::verify_status`].
    pub fn start_verify(&mut self, now: u64, leg: LegId, repair: bool) -> Result<(), ReplError> {
        self.advance(now);
        let index = self.peer_index(leg)?;
        let peer = &self.peers[index];
        let refuse = |reason: String| Err(ReplError::VerifyRefused { leg, reason });
        if peer.committed != LegState::UpToDate || peer.mode != PeerMode::Sync {
            let state = peer.committed.as_str();
            return refuse(format!(
                "it is {state} ({:?}); only an UpToDate leg in step is compared",
                peer.mode
            ));
        }
        if peer.link != LinkState::Up {
            return refuse(format!("it is not connected ({:?})", peer.link));
        }
        if let Some(run) = peer.verify.as_ref().filter(|run| run.running()) {
            let size = self.size;
            return refuse(format!(
                "a verify of it is running ({} of {size} bytes done)",
                run.done
            ));
        }
        let peer = &mut self.peers[index];
        peer.verify = Some(VerifyRun::new(repair));
        peer.verify_tokens = self.tuning.verify_chunk as i64;
        let what = if repair {
            "verify and repair"
        } else {
            "verify"
        };
        self.note(format!("{what} of peer leg {leg} started"));
        self.pump();
        Ok(())
    }

    /// The current or last verify of peer leg `leg`, if one was started.
    pub fn verify_status(&self, leg: LegId) -> Option<VerifyStatus> {
        let peer = self.peers.iter().find(|peer| peer.leg == leg)?;
        let run = peer.verify.as_ref()?;
        Some(VerifyStatus {
            done_bytes: run.done,
            total_bytes: self.size,
            mismatches: run.mismatches.iter().map(|(&at, &len)| (at, len)).collect(),
            mismatched_bytes: run.mismatched_bytes,
            repair: run.repair,
            finished: run.finished,
            aborted: run.aborted.clone(),
        })
    }

    /// The ranges verify requests hold (client writes wait for them).
    pub(super) fn verify_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.peers
            .iter()
            .filter_map(|peer| peer.verify.as_ref())
            .flat_map(|run| run.ops.values().map(|op| op.range))
    }

    /// Whether `seq` is a verify request in flight to peer `index`.
    pub(super) fn is_verify_seq(&self, index: usize, seq: u64) -> bool {
        self.peers[index]
            .verify
            .as_ref()
            .is_some_and(|run| run.ops.contains_key(&seq))
    }

    /// Ends a running verify of peer `index` early: its requests stop holding their ranges
    /// (late replies are ignored), what was found stays.
    pub(super) fn abort_verify(&mut self, index: usize, reason: String) {
        let leg = self.peers[index].leg;
        let Some(run) = self.peers[index]
            .verify
            .as_mut()
            .filter(|run| run.running())
        else {
            return;
        };
        run.ops.clear();
        run.finished = true;
        run.aborted = Some(reason.clone());
        let done = run.done;
        self.note(format!(
            "verify of peer leg {leg} aborted after {done} bytes: {reason}"
        ));
    }

    /// A verify runs only while its peer is connected and in step.
    pub(super) fn check_verify(&mut self, index: usize) {
        let peer = &self.peers[index];
        let reason = if peer.link != LinkState::Up {
            format!("the link is {:?}", peer.link)
        } else if peer.mode != PeerMode::Sync || peer.committed != LegState::UpToDate {
            format!(
                "the leg is {} ({:?}), no longer UpToDate",
                peer.committed.as_str(),
                peer.mode
            )
        } else {
            return;
        };
        self.abort_verify(index, reason);
    }

    /// The verify rate in force (bytes per second).
    pub(super) fn verify_rate_now(&self) -> u64 {
        if self.requests.is_empty() {
            self.tuning.verify_max_rate
        } else {
            self.tuning
                .verify_max_rate
                .min(self.tuning.verify_busy_rate)
        }
    }

    /// Issues as many verify requests to peer `index` as the window, budget and locks allow,
    /// and ends the verify when everything was compared.
    pub(super) fn verify_peer(&mut self, index: usize) {
        let window = if self.requests.is_empty() {
            self.tuning.verify_window
        } else {
            self.tuning.verify_window_busy
        };
        let unlimited = self.verify_rate_now() == u64::MAX;
        for _ in 0..window {
            let peer = &self.peers[index];
            let Some(run) = peer.verify.as_ref().filter(|run| run.running()) else {
                return;
            };
            let ready = run.ops.len() < window
                && run.cursor < self.size
                && (unlimited || peer.verify_tokens > 0);
            if !ready {
                break;
            }
            let Some(range) = self.next_verify_range(index, run.cursor) else {
                break;
            };
            self.issue_verify(index, range, unlimited);
        }
        self.maybe_end_verify(index);
    }

    /// The next request from `cursor`: up to a chunk, clipped before the first block a client
    /// request or a resync chunk of this peer holds; `None` when the first block is busy.
    fn next_verify_range(&self, index: usize, cursor: u64) -> Option<(u64, u64)> {
        let end = cursor
            .saturating_add(self.tuning.verify_chunk)
            .min(self.size);
        let span = (cursor, end - cursor);
        let held_requests = self.requests.values().filter_map(|r| r.holds_range());
        let held_resync = self.peers[index].resync.values().map(|op| op.range);
        let first_busy = held_requests
            .chain(held_resync)
            .filter(|&held| overlaps(held, span))
            .map(|(offset, _)| offset)
            .min();
        let stop = match first_busy {
            Some(offset) => offset / VERIFY_BLOCK * VERIFY_BLOCK,
            None => end,
        };
        (stop > cursor).then(|| (cursor, stop - cursor))
    }

    fn issue_verify(&mut self, index: usize, range: (u64, u64), unlimited: bool) {
        let seq = self.new_seq();
        let (offset, len) = range;
        let epoch = self.epoch;
        let peer = &mut self.peers[index];
        let leg = peer.leg;
        if !unlimited {
            peer.verify_tokens = peer.verify_tokens.saturating_sub(len as i64);
        }
        let Some(run) = peer.verify.as_mut() else {
            return;
        };
        run.cursor = offset + len;
        let op = VerifyOp {
            range,
            local: None,
            remote: None,
        };
        run.ops.insert(seq, op);
        self.submit_disk(
            Purpose::VerifyRead { leg, seq },
            DiskKind::Read { offset, len },
        );
        let request = Message::VerifyRequest {
            epoch,
            seq,
            offset,
            len,
        };
        self.send_to(
            index,
            seq,
            (Some(range), Effect::Read),
            wire::encode(&request),
        );
    }

    fn maybe_end_verify(&mut self, index: usize) {
        let size = self.size;
        let leg = self.peers[index].leg;
        let Some(run) = self.peers[index].verify.as_mut() else {
            return;
        };
        if !run.running() || run.cursor < size || !run.ops.is_empty() {
            return;
        }
        run.finished = true;
        let (bytes, ranges, repair) = (run.mismatched_bytes, run.mismatches.len(), run.repair);
        let outcome = match (bytes, repair) {
            (0, _) => "the legs are identical".to_string(),
            (_, false) => format!("{bytes} bytes differ in {ranges} ranges"),
            (_, true) => format!("{bytes} bytes differ in {ranges} ranges; resyncing them"),
        };
        self.note(format!("verify of peer leg {leg} finished: {outcome}"));
    }

    /// The local read of verify request `seq` to peer leg `leg` completed with `data`.
    pub(super) fn verify_read_done(
        &mut self,
        id: u64,
        leg: LegId,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), ReplError> {
        let Ok(index) = self.peer_index(leg) else {
            return Ok(());
        };
        let Some((offset, len)) = self.verify_op(index, seq).map(|op| op.range) else {
            // The verify was aborted while reading.
            return Ok(());
        };
        if data.len() as u64 != len {
            self.verify_read_failed(leg, seq);
            return Err(ReplError::BadCompletion {
                id,
                reason: format!("read of {len} bytes at {offset} returned {}", data.len()),
            });
        }
        if let Some(op) = self.verify_op(index, seq) {
            op.local = Some(wire::verify_digests(&data));
        }
        self.compare(index, seq);
        Ok(())
    }

    /// The local read of verify request `seq` failed: the verify ends (the local leg is the
    /// reference; an operator must look at it).
    pub(super) fn verify_read_failed(&mut self, leg: LegId, seq: u64) {
        let Ok(index) = self.peer_index(leg) else {
            return;
        };
        if let Some((offset, len)) = self.verify_op(index, seq).map(|op| op.range) {
            let reason = format!("the local read of {len} bytes at {offset} failed");
            self.abort_verify(index, reason);
        }
    }

    fn verify_op(&mut self, index: usize, seq: u64) -> Option<&mut VerifyOp> {
        let run = self.peers[index].verify.as_mut()?;
        run.ops.get_mut(&seq)
    }

    /// Peer `index` answered verify request `seq` with the digests of `range`.
    pub(super) fn on_verify_reply(
        &mut self,
        index: usize,
        epoch: u64,
        seq: u64,
        range: (u64, u64),
        digests: Vec<u64>,
    ) -> Result<(), ReplError> {
        let was_unacked = self.peers[index].unacked.remove(&seq).is_some();
        let current = epoch == self.epoch;
        let expected = match self.verify_op(index, seq) {
            Some(op) if current => Some(op.range),
            // A reply to a verify aborted while the link stayed up.
            None if current && was_unacked => return Ok(()),
            _ => None,
        };
        let reason = match expected {
            Some(asked)
                if asked == range && digests.len() as u64 == range.1.div_ceil(VERIFY_BLOCK) =>
            {
                if let Some(op) = self.verify_op(index, seq) {
                    op.remote = Some(digests);
                }
                self.compare(index, seq);
                return Ok(());
            }
            Some(asked) => format!(
                "seq {seq} answers {} digests for {range:?}, the request was {asked:?}",
                digests.len()
            ),
            None if !current => format!("epoch {epoch}, the link is epoch {}", self.epoch),
            None => format!("seq {seq} is no verify request in flight"),
        };
        let leg = self.peers[index].leg;
        self.peer_failed(index, format!("unexpected verify-reply: {reason}"));
        Err(ReplError::Unexpected {
            kind: "verify-reply",
            from: format!("peer leg {leg}"),
            reason,
        })
    }

    /// Compares request `seq` once both sides are in; records (and marks) what differs.
    fn compare(&mut self, index: usize, seq: u64) {
        let peer = &mut self.peers[index];
        let Some(run) = peer.verify.as_mut() else {
            return;
        };
        let complete = run
            .ops
            .get(&seq)
            .is_some_and(|op| op.local.is_some() && op.remote.is_some());
        if !complete {
            return;
        }
        let Some(op) = run.ops.remove(&seq) else {
            return;
        };
        let (offset, len) = op.range;
        let (local, remote) = (op.local.unwrap_or_default(), op.remote.unwrap_or_default());
        let mut marked = false;
        for (block, (mine, theirs)) in local.iter().zip(&remote).enumerate() {
            if mine == theirs {
                continue;
            }
            let at = offset + block as u64 * VERIFY_BLOCK;
            let block_len = VERIFY_BLOCK.min(offset + len - at);
            run.record(at, block_len);
            if run.repair && peer.oos.mark(at, block_len).is_ok() {
                marked = true;
            }
        }
        run.done += len;
        peer.repairing |= marked;
    }

    /// A `Sync` peer whose repair resync is done: flush it there, then it is no longer
    /// repairing (the same flush-before-trust step a promotion takes).
    pub(super) fn maybe_end_repair(&mut self, index: usize) {
        let peer = &self.peers[index];
        let candidate = peer.repairing
            && peer.mode == PeerMode::Sync
            && peer.link == LinkState::Up
            && peer.resync.is_empty()
            && peer.sync_flush.is_none()
            && peer.oos.next_dirty(0).is_none();
        if !candidate {
            return;
        }
        let (leg, generation) = (peer.leg, peer.data_gen);
        if peer.flushed_gen != generation {
            let seq = self.new_seq();
            let bytes = wire::encode(&Message::Flush {
                epoch: self.epoch,
                seq,
            });
            self.peers[index].sync_flush = Some((seq, generation));
            self.send_to(index, seq, (None, Effect::Flush), bytes);
            return;
        }
        self.peers[index].repairing = false;
        self.note(format!("peer leg {leg}: repair resync done and flushed"));
    }
}
