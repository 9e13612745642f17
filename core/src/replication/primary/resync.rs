//! Resync: copying to a behind peer exactly the grains its bitmap says it may lack (and to an
//! in-step peer being repaired after a verify, see the `verify` module).
//!
//! Why a module of its own: resync competes with client writes for the same ranges and the
//! same bandwidth. The walk goes through the peer's dirty grains from a cursor (wrapping once
//! when grains behind it were dirtied again), in chunks of [`Tuning::resync_chunk`] bytes:
//! a local `Read`, then `ResyncData`; grains are cleared when the peer acks. A chunk never
//! overlaps a client request in flight or waiting (clients go first), and a client write
//! waits for an overlapping chunk to be acked, so resync data is never older than a write it
//! races. Known-zero ranges of an initial full sync ([`Primary::set_skip_ranges`]) are sent as
//! `WriteZeroes` with no read at all.
//!
//! The pace: at most [`Tuning::resync_window`] chunks in flight per peer, only
//! [`Tuning::resync_window_busy`] while client requests are in flight, and a token bucket
//! refilled from `now` at [`Tuning::resync_max_rate`] (or [`Tuning::resync_busy_rate`] under
//! client load) bytes per second.
//!
//! [`Tuning::resync_chunk`]: super::Tuning::resync_chunk
//! [`Tuning::resync_window`]: super::Tuning::resync_window
//! [`Tuning::resync_window_busy`]: super::Tuning::resync_window_busy
//! [`Tuning::resync_max_rate`]: super::Tuning::resync_max_rate
//! [`Tuning::resync_busy_rate`]: super::Tuning::resync_busy_rate

use super::{Effect, LinkState, PeerMode, Primary, Purpose, ResyncOp};
use crate::replication::wire::{self, Message};
use crate::replication::{check_range, overlaps, DiskKind, ReplError};
use crate::volume::LegId;

/// Known-zero ranges kept at most; dropping one only costs reading it.
pub const MAX_SKIP_RANGES: usize = 65_536;
/// Busy dirty grains skipped per search for the next resync chunk.
const MAX_BUSY_SKIPS: usize = 64;

/// The next piece of a peer's resync.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    offset: u64,
    len: u64,
    /// Known zero: sent as `WriteZeroes`, nothing read.
    zero: bool,
}

impl Primary {
    /// Byte ranges `(offset, len)` known to be zero on the local leg (holes of a fresh volume):
    /// an initial full sync sends them as `WriteZeroes` instead of reading them. Rounded
    /// inward to whole grains; a client write or trim into one removes that part.
    pub fn set_skip_ranges(&mut self, ranges: &[(u64, u64)]) -> Result<(), ReplError> {
        if ranges.len() > MAX_SKIP_RANGES {
            return Err(ReplError::TooLarge {
                len: ranges.len() as u64,
                max: MAX_SKIP_RANGES as u64,
            });
        }
        let grain = self.grain;
        let mut spans = Vec::with_capacity(ranges.len());
        for &(offset, len) in ranges {
            check_range(offset, len, self.size)?;
            let end = offset + len;
            let start = offset.div_ceil(grain) * grain;
            let stop = if end == self.size {
                end
            } else {
                end / grain * grain
            };
            if start < stop {
                spans.push((start, stop));
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
        for (start, stop) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(stop),
                _ => merged.push((start, stop)),
            }
        }
        self.skip = merged;
        Ok(())
    }

    /// A client changed `range`: it is no longer known to be zero (whole grains).
    pub(super) fn forget_skip(&mut self, (offset, len): (u64, u64)) {
        if self.skip.is_empty() {
            return;
        }
        let grain = self.grain;
        let start = offset / grain * grain;
        let stop = ((offset + len).div_ceil(grain) * grain).min(self.size);
        let mut kept = Vec::with_capacity(self.skip.len() + 1);
        for &(s, e) in &self.skip {
            if e <= start || s >= stop {
                kept.push((s, e));
                continue;
            }
            if s < start {
                kept.push((s, start));
            }
            if e > stop {
                kept.push((stop, e));
            }
        }
        kept.truncate(MAX_SKIP_RANGES);
        self.skip = kept;
    }

    /// The end of the known-zero span holding `offset`, if any.
    fn skip_end(&self, offset: u64) -> Option<u64> {
        let index = self.skip.partition_point(|&(start, _)| start <= offset);
        let (_, end) = *self.skip.get(index.checked_sub(1)?)?;
        (end > offset).then_some(end)
    }

    /// The start of the first known-zero span after `offset`.
    fn next_skip_start(&self, offset: u64) -> Option<u64> {
        let index = self.skip.partition_point(|&(start, _)| start <= offset);
        self.skip.get(index).map(|&(start, _)| start)
    }

    /// The resync rate in force (bytes per second).
    fn rate_now(&self) -> u64 {
        if self.requests.is_empty() {
            self.tuning.resync_max_rate
        } else {
            self.tuning
                .resync_max_rate
                .min(self.tuning.resync_busy_rate)
        }
    }

    /// Adds the budget earned since the last refill to every peer's bucket.
    pub(super) fn refill(&mut self) {
        let elapsed = self.now.saturating_sub(self.rate_at);
        if elapsed == 0 {
            return;
        }
        self.rate_at = self.now;
        let (cap, earned) = budget(self.rate_now(), self.tuning.resync_chunk, elapsed);
        let verify = budget(self.verify_rate_now(), self.tuning.verify_chunk, elapsed);
        for peer in &mut self.peers {
            peer.tokens = peer.tokens.saturating_add(earned).min(cap);
            peer.verify_tokens = peer.verify_tokens.saturating_add(verify.1).min(verify.0);
        }
    }

    /// Issues as many resync chunks to peer `index` as the window, budget and locks allow.
    pub(super) fn resync_peer(&mut self, index: usize) {
        let busy = !self.requests.is_empty();
        let window = if busy {
            self.tuning.resync_window_busy
        } else {
            self.tuning.resync_window
        };
        let unlimited = self.rate_now() == u64::MAX;
        for _ in 0..window {
            let peer = &self.peers[index];
            let repairing = peer.mode == PeerMode::Sync && peer.repairing;
            let ready = (peer.mode == PeerMode::Behind || repairing)
                && peer.link == LinkState::Up
                && self.now >= peer.paused_until
                && peer.resync.len() < window
                && (unlimited || peer.tokens > 0);
            if !ready {
                return;
            }
            let Some(chunk) = self.next_chunk(index) else {
                return;
            };
            self.issue_chunk(index, chunk, unlimited);
        }
    }

    /// Whether a grain-sized `range` of peer `index` is busy: a resync chunk or another message
    /// to that peer covers it (its ack may clear it), or a client request holds or awaits it.
    fn busy_for_resync(&self, index: usize, range: (u64, u64)) -> bool {
        let peer = &self.peers[index];
        peer.resync.values().any(|op| overlaps(op.range, range))
            || peer
                .unacked
                .values()
                .any(|sent| overlaps(sent.range, range))
            || self
                .requests
                .values()
                .any(|r| r.holds_range().is_some_and(|held| overlaps(held, range)))
    }

    /// The next dirty, idle chunk of peer `index` from its cursor (wrapping once), or `None`
    /// when it is clean or everything dirty is busy.
    fn next_chunk(&self, index: usize) -> Option<Chunk> {
        let (grain, size) = (self.grain, self.size);
        let map = &self.peers[index].oos;
        let cursor = self.peers[index].cursor / grain;
        let grain_range = |g: u64| (g * grain, grain.min(size - g * grain));
        let (mut from, mut wrapped) = (cursor, false);
        let mut first = None;
        for _ in 0..MAX_BUSY_SKIPS {
            match map.next_dirty(from) {
                Some(g) if wrapped && g >= cursor => return None,
                Some(g) if self.busy_for_resync(index, grain_range(g)) => from = g + 1,
                Some(g) => {
                    first = Some(g);
                    break;
                }
                None if !wrapped && cursor > 0 => (from, wrapped) = (0, true),
                None => return None,
            }
        }
        let offset = first? * grain;
        let zero_end = self.skip_end(offset);
        let (limit, boundary) = match zero_end {
            Some(end) => (self.tuning.resync_zero_chunk, end),
            None => (
                self.tuning.resync_chunk,
                self.next_skip_start(offset).unwrap_or(size),
            ),
        };
        let mut end = (offset + grain).min(size);
        for _ in 1..limit.div_ceil(grain) {
            if end >= boundary.min(size) {
                break;
            }
            let next = (end, grain.min(size - end));
            if !map.is_dirty(next.0, next.1).unwrap_or(false) || self.busy_for_resync(index, next) {
                break;
            }
            end += next.1;
        }
        Some(Chunk {
            offset,
            len: end - offset,
            zero: zero_end.is_some(),
        })
    }

    fn issue_chunk(&mut self, index: usize, chunk: Chunk, unlimited: bool) {
        let seq = self.new_seq();
        let range = (chunk.offset, chunk.len);
        let epoch = self.epoch;
        let peer = &mut self.peers[index];
        let leg = peer.leg;
        peer.cursor = chunk.offset + chunk.len;
        peer.resync.insert(seq, ResyncOp { range });
        if chunk.zero {
            peer.zero_bytes += chunk.len;
            let bytes = wire::encode(&Message::WriteZeroes {
                epoch,
                seq,
                offset: chunk.offset,
                len: chunk.len,
                fua: false,
            });
            self.send_to(index, seq, (Some(range), Effect::Cached), bytes);
        } else {
            if !unlimited {
                peer.tokens = peer.tokens.saturating_sub(chunk.len as i64);
            }
            let read = DiskKind::Read {
                offset: chunk.offset,
                len: chunk.len,
            };
            self.submit_disk(Purpose::ResyncRead { leg, seq }, read);
        }
    }

    /// A local read (resync or verify) completed with `data`.
    pub fn disk_read_done(&mut self, id: u64, data: Vec<u8>) -> Result<(), ReplError> {
        let purpose = match self.disk.get(&id) {
            Some(&Purpose::Request(_)) => {
                return Err(ReplError::BadCompletion {
                    id,
                    reason: "it is not a read; complete it with disk_done".into(),
                })
            }
            Some(&purpose) => purpose,
            None => return Err(ReplError::UnknownDiskOp { id }),
        };
        self.disk.remove(&id);
        let result = match purpose {
            Purpose::ResyncRead { leg, seq } => self.send_resync_data(id, leg, seq, data),
            Purpose::VerifyRead { leg, seq } => self.verify_read_done(id, leg, seq, data),
            Purpose::Request(_) => Ok(()),
        };
        self.pump();
        result
    }

    fn send_resync_data(
        &mut self,
        id: u64,
        leg: LegId,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), ReplError> {
        let Ok(index) = self.peer_index(leg) else {
            return Ok(());
        };
        // Gone when the link dropped while reading: the data is not needed any more.
        let Some(op) = self.peers[index].resync.get(&seq).copied() else {
            return Ok(());
        };
        let (offset, len) = op.range;
        if data.len() as u64 != len {
            self.resync_read_failed(leg, seq);
            return Err(ReplError::BadCompletion {
                id,
                reason: format!("read of {len} bytes at {offset} returned {}", data.len()),
            });
        }
        let epoch = self.epoch;
        let bytes = wire::encode(&Message::ResyncData {
            epoch,
            seq,
            offset,
            data,
        });
        self.peers[index].resync_bytes += len;
        self.send_to(index, seq, (Some(op.range), Effect::Cached), bytes);
        Ok(())
    }

    /// A resync read failed locally: that chunk is dropped (its grains stay dirty) and the
    /// peer's resync pauses for a while.
    pub(super) fn resync_read_failed(&mut self, leg: LegId, seq: u64) {
        let Ok(index) = self.peer_index(leg) else {
            return;
        };
        let until = self.now + self.tuning.read_retry_ms;
        let peer = &mut self.peers[index];
        if let Some(op) = peer.resync.remove(&seq) {
            peer.paused_until = until;
            peer.cursor = op.range.0;
            let (offset, len) = op.range;
            self.note(format!(
                "resync read of {len} bytes at {offset} for leg {leg} failed; retrying later"
            ));
        }
    }
}

/// A token bucket's cap (a tenth of a second at `rate`, at least one `chunk`) and what
/// `elapsed_ms` earned at `rate` bytes per second.
fn budget(rate: u64, chunk: u64, elapsed_ms: u64) -> (i64, i64) {
    let cap = (rate / 10).max(chunk).min(i64::MAX as u64) as i64;
    let earned = (u128::from(rate) * u128::from(elapsed_ms) / 1000).min(i64::MAX as u128) as i64;
    (cap, earned)
}
