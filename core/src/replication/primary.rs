//! The sending end of a replication link: one per volume, on its primary node.
//!
//! Why this exists: it is where DESIGN.md rule 1 is kept. Every client request goes to the
//! local leg and to the peer legs; [`Primary`] decides when the client may be told "done":
//!
//! - A write is acknowledged when the local leg completed it and every peer that must have it
//!   acked it: a peer leg whose committed state is `UpToDate` (or that is being promoted to
//!   it). Many writes are in flight at once; they complete in any order.
//! - `FLUSH` is sent to those peers at once (every write acknowledged before it has already
//!   been acked by them) and acknowledged after the local flush and their flush acks. `fua` is
//!   carried to the peers, which flush that write before acking it.
//! - When such a peer is lost, fails a write or stops acking, the primary **freezes**:
//!   the requests it has not acked, and every new one, are held, and it proposes the leg
//!   `Outdated`. Only when the cluster *committed* that ([`Primary::leg_state_committed`]) are
//!   the held requests released, and their ranges recorded in the peer's out-of-sync bitmap.
//! - `Outdated` or `Inconsistent` peers get writes while connected, but nobody waits for them;
//!   what they may lack stays set in their bitmap, and a resync copies exactly that (see the
//!   `resync` submodule); when it is clean and flushed there, the primary proposes the leg
//!   `UpToDate`, and holds acknowledgements for it from then on.
//!
//! Overlapping requests never run at once: a write waits until every earlier overlapping write
//! completed locally and every resync of that range was acked, so the local disk, the wire and
//! (the secondary keeps arrival order for overlapping operations) every peer apply overlapping
//! writes in the same order, and a resync never carries data older than a write it races.
//!
//! Everything is bounded: client requests in flight ([`Tuning::max_client_requests`], beyond it
//! [`ReplError::Busy`]), the bytes they hold, the unacked messages per peer, the resync and
//! verify windows.
//!
//! Two more duties live in submodules: online verify of an `UpToDate` peer (`verify`), and
//! crash-suspect ranges a returning ex-primary reports in its `HelloAck` (`peers`), which
//! together with [`Primary::track_from_now`] keep the resync after a takeover small.

mod peers;
mod resync;
mod unflushed;
mod verify;

pub use resync::MAX_SKIP_RANGES;
pub use unflushed::MAX_UNFLUSHED_RANGES;
pub use verify::{VerifyStatus, MAX_VERIFY_MISMATCHES};

use std::collections::{BTreeMap, BTreeSet};

use super::secondary::MAX_SECONDARY_OPS;
use super::wire::{self, Message, MAX_DATA, MAX_VERIFY_LEN, VERIFY_BLOCK};
use super::{check_range, overlaps, DiskKind, DiskOp, Ident, ReplError};
use crate::ids::NodeId;
use crate::legmeta::{OutOfSync, MIN_GRAIN};
use crate::volume::{LegId, LegState, MAX_LEGS, MAX_VOLUME_SIZE};

/// Requests completed before a `Confirm` goes out between ticks: keeps what a secondary
/// must remember small under a high request rate.
pub const CONFIRM_STEP: u64 = 64;

/// Client requests in flight before [`Primary::client_write`] answers `Busy`.
pub const DEFAULT_MAX_CLIENT_REQUESTS: usize = 256;

/// Limits and rates of a [`Primary`]; [`Tuning::default`] suits production.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Client requests in flight (not yet completed), at most 1024.
    pub max_client_requests: usize,
    /// Client payload bytes held at once (at least [`MAX_DATA`]).
    pub max_client_bytes: u64,
    /// Bytes per resync read (rounded up to the grain).
    pub resync_chunk: u64,
    /// Bytes per `WriteZeroes` sent for a known-zero range during a full sync.
    pub resync_zero_chunk: u64,
    /// Resync requests in flight per peer when no client request is in flight.
    pub resync_window: usize,
    /// ... and while client requests are in flight (foreground load).
    pub resync_window_busy: usize,
    /// Hard maximum of resync bytes per second per peer (`u64::MAX`: unlimited).
    pub resync_max_rate: u64,
    /// Resync bytes per second per peer while client requests are in flight.
    pub resync_busy_rate: u64,
    /// A peer that leaves a message unacked this long is dropped (and outdated if needed).
    pub ack_timeout_ms: u64,
    /// A link silent this long gets a `Ping` (the secondary answers at once, disk or not).
    pub ping_interval_ms: u64,
    /// A `Ping` unanswered this long drops the link: a silently cut connection (a one-way
    /// firewall drop) is noticed even when no write is waiting, well before `ack_timeout_ms`.
    pub ping_timeout_ms: u64,
    /// A connection whose `Hello` is not answered this long is dropped.
    pub hello_timeout_ms: u64,
    /// A peer that acked writes and has not flushed them for this long gets a flush: what a
    /// lost link must resync (writes possibly lost from its cache) stays about this recent.
    pub peer_flush_interval_ms: u64,
    /// A leg-state proposal not committed after this long is proposed again.
    pub repropose_ms: u64,
    /// After a failed local resync read, that peer's resync pauses this long.
    pub read_retry_ms: u64,
    /// Unacked messages per peer before the link is dropped (at most what a secondary
    /// queues, [`MAX_SECONDARY_OPS`]).
    pub max_peer_unacked: usize,
    /// Bytes per verify request: a multiple of [`VERIFY_BLOCK`], at most [`MAX_VERIFY_LEN`].
    pub verify_chunk: u64,
    /// Verify requests in flight per peer when no client request is in flight.
    pub verify_window: usize,
    /// ... and while client requests are in flight.
    pub verify_window_busy: usize,
    /// Hard maximum of verified bytes per second per peer (`u64::MAX`: unlimited).
    pub verify_max_rate: u64,
    /// Verified bytes per second per peer while client requests are in flight.
    pub verify_busy_rate: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            max_client_requests: DEFAULT_MAX_CLIENT_REQUESTS,
            max_client_bytes: 128 << 20,
            resync_chunk: 256 << 10,
            resync_zero_chunk: 64 << 20,
            resync_window: 16,
            resync_window_busy: 2,
            resync_max_rate: 1 << 30,
            resync_busy_rate: 100 << 20,
            ack_timeout_ms: 10_000,
            ping_interval_ms: 500,
            ping_timeout_ms: 3_000,
            hello_timeout_ms: 5_000,
            peer_flush_interval_ms: 1_000,
            repropose_ms: 2_000,
            read_retry_ms: 1_000,
            max_peer_unacked: 1024,
            verify_chunk: 1 << 20,
            verify_window: 4,
            verify_window_busy: 1,
            verify_max_rate: 1 << 30,
            verify_busy_rate: 100 << 20,
        }
    }
}

impl Tuning {
    fn check(&self, grain: u64) -> Result<(), ReplError> {
        let bad = |what: &str| Err(ReplError::Config(what.to_string()));
        if self.max_client_requests == 0 || self.max_client_requests > MAX_SECONDARY_OPS / 2 {
            return bad("max_client_requests must be between 1 and 1024");
        }
        if self.max_peer_unacked == 0 || self.max_peer_unacked > MAX_SECONDARY_OPS {
            return bad("max_peer_unacked must be between 1 and 2048 (what a secondary queues)");
        }
        if self.max_client_bytes < MAX_DATA as u64 {
            return bad("max_client_bytes must hold at least one maximum request (32 MiB)");
        }
        if self.resync_chunk == 0 || self.resync_chunk > MAX_DATA as u64 {
            return bad("resync_chunk must be between 1 byte and 32 MiB");
        }
        if self.resync_zero_chunk < grain {
            return bad("resync_zero_chunk must be at least one grain");
        }
        let windows = [self.resync_window, self.resync_window_busy];
        if windows.iter().any(|&w| w == 0 || w > MAX_SECONDARY_OPS / 4) {
            return bad("resync windows must be between 1 and 512");
        }
        if self.peer_flush_interval_ms == 0 {
            return bad("peer_flush_interval_ms must be above zero");
        }
        if self.resync_max_rate == 0 || self.resync_busy_rate == 0 {
            return bad("resync rates must be above zero");
        }
        let chunk = self.verify_chunk;
        if chunk == 0 || !chunk.is_multiple_of(VERIFY_BLOCK) || chunk > MAX_VERIFY_LEN {
            return bad("verify_chunk must be a multiple of 4 KiB, at most 32 MiB");
        }
        let windows = [self.verify_window, self.verify_window_busy];
        if windows.iter().any(|&w| w == 0 || w > MAX_SECONDARY_OPS / 4) {
            return bad("verify windows must be between 1 and 512");
        }
        if self.verify_max_rate == 0 || self.verify_busy_rate == 0 {
            return bad("verify rates must be above zero");
        }
        Ok(())
    }
}

/// A peer leg as the committed cluster state describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLeg {
    pub leg: LegId,
    pub node: NodeId,
    pub state: LegState,
}

/// What the shim must do for a [`Primary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryAction {
    /// A frame for the connection to peer leg `leg`.
    Send {
        leg: LegId,
        bytes: Vec<u8>,
    },
    Disk(DiskOp),
    /// Answer client request `req_id` (`ok: false`: the local leg failed it).
    Complete {
        req_id: u64,
        ok: bool,
    },
    /// Ask the cluster to commit `SetLegState`; the answer comes as `leg_state_committed`.
    ProposeLegState {
        leg: LegId,
        state: LegState,
        epoch: u64,
    },
    /// Close the connection to peer leg `leg` (already treated as lost here).
    DropLink {
        leg: LegId,
        reason: String,
    },
    Note(String),
}

/// How the primary treats a peer leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// Committed `UpToDate`: every request waits for its ack.
    Sync,
    /// Was `Sync` (or `Promoting`) and failed: `Outdated` proposed, requests it lacks frozen.
    Failing,
    /// Committed `Outdated` or `Inconsistent`: its bitmap says what it lacks; resynced when up.
    Behind,
    /// Resynced, `UpToDate` proposed: requests wait for its ack again.
    Promoting,
}

impl PeerMode {
    fn must_ack(self) -> bool {
        matches!(self, PeerMode::Sync | PeerMode::Promoting)
    }
}

/// The connection to a peer leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Down,
    /// `Hello` sent, no `HelloAck` yet.
    Connecting,
    Up,
}

/// A peer leg at a glance, for status and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub leg: LegId,
    pub node: NodeId,
    pub committed: LegState,
    pub mode: PeerMode,
    pub link: LinkState,
    pub dirty_bytes: u64,
    pub resync_in_flight: usize,
    pub unacked: usize,
    pub proposed: Option<LegState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqKind {
    Write,
    Trim,
    Zeroes,
    Flush,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    /// Not started: an earlier overlapping request or resync holds the range.
    Waiting,
    /// On the local disk.
    Busy,
    /// A `fua` request's local flush.
    Flushing,
    Done,
}

#[derive(Debug)]
struct Request {
    req_id: u64,
    kind: ReqKind,
    /// `None` for a flush.
    range: Option<(u64, u64)>,
    /// A write's data, kept until every peer that must have it was sent it.
    data: Vec<u8>,
    fua: bool,
    local: Local,
    local_ok: bool,
    /// Peers whose ack (or committed `Outdated`) the completion waits for.
    need: Vec<LegId>,
    /// Peers in `need` that were connecting when it started: sent when their link comes up.
    unsent: Vec<LegId>,
}

impl Request {
    /// Holds its range against other writes and resync.
    fn holds_range(&self) -> Option<(u64, u64)> {
        match self.local {
            Local::Done => None,
            _ => self.range,
        }
    }
}

/// What a disk op id was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Request(u64),
    ResyncRead { leg: LegId, seq: u64 },
    VerifyRead { leg: LegId, seq: u64 },
}

/// A message sent to a peer and not yet acked.
#[derive(Clone, Copy, Debug)]
struct Sent {
    range: (u64, u64),
    at: u64,
    effect: Effect,
    /// Its number in the link's send order.
    order: u64,
}

/// What a message does to the peer's leg once acked, for the unflushed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// A write acked from the peer's volatile cache.
    Cached,
    /// A FUA write: durable when acked.
    Durable,
    /// A flush: what was acked before it is durable when it is acked.
    Flush,
    /// Nothing written (a verify request).
    Read,
}

/// A resync request to one peer: reading locally, then sent.
#[derive(Clone, Copy, Debug)]
struct ResyncOp {
    range: (u64, u64),
}

#[derive(Debug)]
struct Peer {
    leg: LegId,
    node: NodeId,
    committed: LegState,
    mode: PeerMode,
    link: LinkState,
    link_since: u64,
    /// When the peer was last heard on this link.
    heard_at: u64,
    /// The keepalive `Ping` awaiting its `Pong`: (seq, sent at).
    ping: Option<(u64, u64)>,
    oos: OutOfSync,
    proposal: Option<(LegState, u64)>,
    unacked: BTreeMap<u64, Sent>,
    resync: BTreeMap<u64, ResyncOp>,
    /// Where the resync walk continues.
    cursor: u64,
    /// Rate-limit budget in bytes (may go negative by one chunk).
    tokens: i64,
    paused_until: u64,
    resync_bytes: u64,
    zero_bytes: u64,
    /// Bytes cleared from the bitmap since the peer fell behind.
    done: u64,
    /// Data messages sent while behind; `flushed_gen` of them are known durable there.
    data_gen: u64,
    flushed_gen: u64,
    /// The flush sent before proposing `UpToDate` (or ending a repair): its seq and the
    /// `data_gen` it covers.
    sync_flush: Option<(u64, u64)>,
    /// `Sync` with dirty grains (a verify repair, or suspect ranges it reported): resynced
    /// while every write still waits for its ack.
    repairing: bool,
    /// The current or last verify of this peer.
    verify: Option<verify::VerifyRun>,
    /// Verify rate budget in bytes, like `tokens`.
    verify_tokens: i64,
    /// Acked writes that may still sit in the peer's volatile cache.
    unflushed: unflushed::Unflushed,
    /// Messages sent to it so far (numbers the send order for `unflushed`).
    sent_count: u64,
    /// The last `Confirm` sent on this link: requests below it are on every UpToDate leg.
    confirmed_below: u64,
}

/// The primary end of one volume's replication links.
#[derive(Debug)]
pub struct Primary {
    ident: Ident,
    my_leg: LegId,
    size: u64,
    epoch: u64,
    grain: u64,
    tuning: Tuning,
    now: u64,
    rate_at: u64,
    next_seq: u64,
    next_disk_id: u64,
    peers: Vec<Peer>,
    /// Client requests not yet completed, by seq (arrival order).
    requests: BTreeMap<u64, Request>,
    client_bytes: u64,
    disk: BTreeMap<u64, Purpose>,
    /// Grain-aligned ranges known to be zero locally, sorted, disjoint.
    skip: Vec<(u64, u64)>,
    /// Requests the local leg failed while peers may apply them: their acks must not
    /// clear the range from a bitmap (see `local_failed_at`).
    local_failed: BTreeSet<u64>,
    actions: Vec<PrimaryAction>,
}

impl Primary {
    /// The primary of `ident.volume` on node `ident.node`, writing leg `my_leg` of `size` bytes
    /// in `epoch`, with `peers` as the committed state has them and bitmaps of `grain` bytes.
    /// Peers that are not `UpToDate` start all dirty; load real bitmaps with
    /// [`Primary::set_peer_bitmap`].
    pub fn new(
        ident: Ident,
        my_leg: LegId,
        size: u64,
        epoch: u64,
        peers: Vec<PeerLeg>,
        grain: u64,
    ) -> Result<Primary, ReplError> {
        if size == 0 || size > MAX_VOLUME_SIZE {
            return Err(ReplError::Config(format!(
                "volume size {size} must be between 1 and {MAX_VOLUME_SIZE} bytes"
            )));
        }
        if grain < u64::from(MIN_GRAIN) || grain > MAX_DATA as u64 {
            return Err(ReplError::Config(format!(
                "grain {grain} must be between {MIN_GRAIN} and {MAX_DATA} bytes"
            )));
        }
        if peers.len() >= MAX_LEGS {
            return Err(ReplError::Config(format!(
                "{} peer legs, a volume has at most {MAX_LEGS} legs",
                peers.len()
            )));
        }
        let mut built = Vec::with_capacity(peers.len());
        for peer in &peers {
            if peer.leg == my_leg || built.iter().any(|p: &Peer| p.leg == peer.leg) {
                return Err(ReplError::Config(format!(
                    "peer leg {} is listed twice or is this node's own leg",
                    peer.leg
                )));
            }
            built.push(Peer::new(*peer, size, grain)?);
        }
        Ok(Primary {
            ident,
            my_leg,
            size,
            epoch,
            grain,
            tuning: Tuning::default(),
            now: 0,
            rate_at: 0,
            next_seq: 1,
            next_disk_id: 1,
            peers: built,
            requests: BTreeMap::new(),
            client_bytes: 0,
            disk: BTreeMap::new(),
            skip: Vec::new(),
            local_failed: BTreeSet::new(),
            actions: Vec::new(),
        })
    }

    /// Replaces the default [`Tuning`].
    pub fn with_tuning(mut self, tuning: Tuning) -> Result<Primary, ReplError> {
        tuning.check(self.grain)?;
        self.tuning = tuning;
        for peer in &mut self.peers {
            peer.tokens = self.tuning.resync_chunk as i64;
            peer.verify_tokens = self.tuning.verify_chunk as i64;
        }
        Ok(self)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Client requests not yet completed.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    pub fn take_actions(&mut self) -> Vec<PrimaryAction> {
        std::mem::take(&mut self.actions)
    }

    /// A client write of `data` at `offset`; `fua`: durable on every `UpToDate` leg first.
    pub fn client_write(
        &mut self,
        now: u64,
        req_id: u64,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> Result<(), ReplError> {
        let len = data.len() as u64;
        self.admit(now, Some((offset, len)), len)?;
        self.enqueue(req_id, ReqKind::Write, Some((offset, len)), data, fua);
        Ok(())
    }

    /// A client flush: every write acknowledged before it becomes durable on every
    /// `UpToDate` leg before it is acknowledged.
    pub fn client_flush(&mut self, now: u64, req_id: u64) -> Result<(), ReplError> {
        self.admit(now, None, 0)?;
        self.enqueue(req_id, ReqKind::Flush, None, Vec::new(), false);
        Ok(())
    }

    /// A client trim (discard) of `len` bytes at `offset`.
    pub fn client_trim(
        &mut self,
        now: u64,
        req_id: u64,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), ReplError> {
        self.admit(now, Some((offset, len)), 0)?;
        self.enqueue(req_id, ReqKind::Trim, Some((offset, len)), Vec::new(), fua);
        Ok(())
    }

    /// A client request to zero `len` bytes at `offset`.
    pub fn client_write_zeroes(
        &mut self,
        now: u64,
        req_id: u64,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), ReplError> {
        self.admit(now, Some((offset, len)), 0)?;
        self.enqueue(
            req_id,
            ReqKind::Zeroes,
            Some((offset, len)),
            Vec::new(),
            fua,
        );
        Ok(())
    }

    /// Checks a request against the volume and the in-flight limits.
    fn admit(&mut self, now: u64, range: Option<(u64, u64)>, bytes: u64) -> Result<(), ReplError> {
        self.advance(now);
        if let Some((offset, len)) = range {
            check_range(offset, len, self.size)?;
        }
        if bytes > MAX_DATA as u64 {
            return Err(ReplError::TooLarge {
                len: bytes,
                max: MAX_DATA as u64,
            });
        }
        let limit = self.tuning.max_client_requests;
        if self.requests.len() >= limit {
            return Err(ReplError::Busy {
                what: "client requests",
                current: self.requests.len() as u64,
                limit: limit as u64,
            });
        }
        let limit = self.tuning.max_client_bytes;
        if self.client_bytes + bytes > limit {
            return Err(ReplError::Busy {
                what: "client bytes",
                current: self.client_bytes,
                limit,
            });
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        req_id: u64,
        kind: ReqKind,
        range: Option<(u64, u64)>,
        data: Vec<u8>,
        fua: bool,
    ) {
        let seq = self.new_seq();
        self.client_bytes += data.len() as u64;
        let request = Request {
            req_id,
            kind,
            range,
            data,
            fua,
            local: Local::Waiting,
            local_ok: true,
            need: Vec::new(),
            unsent: Vec::new(),
        };
        self.requests.insert(seq, request);
        self.pump();
    }

    /// A local disk operation completed (`ok: false`: it failed). Reads complete with
    /// [`Primary::disk_read_done`] instead; a read reported here counts as failed.
    pub fn disk_done(&mut self, id: u64, ok: bool) -> Result<(), ReplError> {
        let purpose = self
            .disk
            .remove(&id)
            .ok_or(ReplError::UnknownDiskOp { id })?;
        let result = match purpose {
            Purpose::Request(seq) => {
                self.local_done(seq, ok);
                Ok(())
            }
            Purpose::ResyncRead { leg, seq } => {
                self.resync_read_failed(leg, seq);
                read_reported_as_done(id, ok)
            }
            Purpose::VerifyRead { leg, seq } => {
                self.verify_read_failed(leg, seq);
                read_reported_as_done(id, ok)
            }
        };
        self.pump();
        result
    }

    fn local_done(&mut self, seq: u64, ok: bool) {
        if !ok {
            self.local_failed_at(seq);
        }
        let Some(request) = self.requests.get_mut(&seq) else {
            return;
        };
        request.local_ok &= ok;
        let needs_flush = request.local == Local::Busy
            && request.fua
            && request.local_ok
            && request.kind != ReqKind::Flush;
        if needs_flush {
            request.local = Local::Flushing;
            self.submit_disk(Purpose::Request(seq), DiskKind::Flush);
            return;
        }
        request.local = Local::Done;
        if !request.local_ok {
            let text = format!(
                "the local leg failed client request {} ({:?} {:?})",
                request.req_id, request.kind, request.range
            );
            self.note(text);
        }
    }

    /// Request `seq` failed on the local leg, but the peers it was sent to may apply it: the
    /// legs may now differ in its range (simulator seed 124). The range is marked out of sync
    /// for every peer, so it is resynced from this leg and the legs converge on what this
    /// leg holds (the client was told the request failed, so either content is allowed);
    /// acks of the request itself must not clear those bits.
    fn local_failed_at(&mut self, seq: u64) {
        let Some((offset, len)) = self.requests.get(&seq).and_then(|r| r.range) else {
            return;
        };
        self.local_failed.insert(seq);
        for peer in &mut self.peers {
            let marked = peer.oos.mark(offset, len).is_ok();
            if marked && matches!(peer.mode, PeerMode::Sync | PeerMode::Promoting) {
                peer.repairing = true;
            }
        }
    }

    /// Whether an ack of `seq` may clear its range from a peer's bitmap.
    pub(super) fn failed_locally(&self, seq: u64) -> bool {
        self.local_failed.contains(&seq)
    }

    /// Runs everything that can run: waiting requests, resync, promotions, completions.
    fn pump(&mut self) {
        for index in 0..self.peers.len() {
            self.check_verify(index);
        }
        self.start_ready_requests();
        for index in 0..self.peers.len() {
            self.resync_peer(index);
            self.verify_peer(index);
            self.maybe_promote(index);
            self.maybe_end_repair(index);
        }
        self.complete_ready();
        self.send_confirms(false);
        if !self.local_failed.is_empty() {
            let (requests, peers) = (&self.requests, &self.peers);
            self.local_failed.retain(|seq| {
                requests.contains_key(seq) || peers.iter().any(|p| p.unacked.contains_key(seq))
            });
        }
    }

    /// Starts waiting requests whose range no earlier request or resync holds (FIFO among
    /// overlapping ones; flushes start at once).
    fn start_ready_requests(&mut self) {
        let mut held: Vec<(u64, u64)> = self
            .peers
            .iter()
            .flat_map(|peer| peer.resync.values().map(|op| op.range))
            .chain(self.verify_ranges())
            .collect();
        let mut ready = Vec::new();
        for (&seq, request) in &self.requests {
            if let Some(range) = request.range {
                if request.local == Local::Waiting && !held.iter().any(|&h| overlaps(h, range)) {
                    ready.push(seq);
                }
                if request.local != Local::Done {
                    held.push(range);
                }
            } else if request.local == Local::Waiting {
                ready.push(seq);
            }
        }
        for seq in ready {
            self.start(seq);
        }
    }

    fn start(&mut self, seq: u64) {
        let Some(request) = self.requests.get_mut(&seq) else {
            return;
        };
        request.local = Local::Busy;
        let (kind, range) = (request.kind, request.range);
        let disk = match (kind, range) {
            (ReqKind::Write, Some((offset, _))) => DiskKind::Write {
                offset,
                data: request.data.clone(),
            },
            (ReqKind::Trim, Some((offset, len))) => DiskKind::Trim { offset, len },
            (ReqKind::Zeroes, Some((offset, len))) => DiskKind::WriteZeroes { offset, len },
            _ => DiskKind::Flush,
        };
        self.submit_disk(Purpose::Request(seq), disk);
        if let (ReqKind::Write | ReqKind::Trim, Some(range)) = (kind, range) {
            self.forget_skip(range);
        }
        let mut frame = None;
        let mut down = Vec::new();
        for index in 0..self.peers.len() {
            let (leg, mode, link) = {
                let peer = &self.peers[index];
                (peer.leg, peer.mode, peer.link)
            };
            let send = match mode {
                PeerMode::Sync | PeerMode::Promoting => {
                    self.need(seq, leg, link == LinkState::Connecting);
                    if link == LinkState::Down {
                        down.push(index);
                    }
                    link == LinkState::Up
                }
                PeerMode::Failing => {
                    self.need(seq, leg, false);
                    false
                }
                PeerMode::Behind => self.mark_behind(index, range) && link == LinkState::Up,
            };
            if send {
                let bytes = frame.get_or_insert_with(|| self.request_frame(seq)).clone();
                let effect = self.request_effect(seq);
                self.send_to(index, seq, (range, effect), bytes);
            }
        }
        for index in down {
            self.outdate(index, "it is not connected".into());
        }
        self.release_data(seq);
    }

    /// Request `seq` waits for peer `leg` (and is sent to it when its link comes up).
    fn need(&mut self, seq: u64, leg: LegId, unsent: bool) {
        if let Some(request) = self.requests.get_mut(&seq) {
            request.need.push(leg);
            if unsent {
                request.unsent.push(leg);
            }
        }
    }

    /// A request reaching a behind peer: its range joins the peer's bitmap. Returns whether
    /// it should be sent (data requests only; flushes are not needed there).
    fn mark_behind(&mut self, index: usize, range: Option<(u64, u64)>) -> bool {
        let Some((offset, len)) = range else {
            return false;
        };
        if let Err(error) = self.peers[index].oos.mark(offset, len) {
            self.note(format!("bitmap mark failed: {error}"));
        }
        true
    }

    /// Drops a request's data once every peer that must get it was sent it.
    fn release_data(&mut self, seq: u64) {
        if let Some(request) = self.requests.get_mut(&seq) {
            if request.unsent.is_empty() && request.local != Local::Waiting {
                self.client_bytes = self.client_bytes.saturating_sub(request.data.len() as u64);
                request.data = Vec::new();
            }
        }
    }

    /// The frame carrying request `seq` to a peer.
    fn request_frame(&self, seq: u64) -> Vec<u8> {
        let Some(request) = self.requests.get(&seq) else {
            return Vec::new();
        };
        let epoch = self.epoch;
        let fua = request.fua;
        let message = match (request.kind, request.range) {
            (ReqKind::Write, Some((offset, _))) => Message::Write {
                epoch,
                seq,
                offset,
                data: request.data.clone(),
                fua,
            },
            (ReqKind::Trim, Some((offset, len))) => Message::Trim {
                epoch,
                seq,
                offset,
                len,
                fua,
            },
            (ReqKind::Zeroes, Some((offset, len))) => Message::WriteZeroes {
                epoch,
                seq,
                offset,
                len,
                fua,
            },
            _ => Message::Flush { epoch, seq },
        };
        wire::encode(&message)
    }

    /// Tells connected peers which requests are on every UpToDate leg (everything below the
    /// oldest one not completed), so they forget them: what a secondary applied and never saw
    /// confirmed, it reports as suspect to the next primary (`Secondary::unconfirmed`).
    /// `every_change`: send any progress (on ticks); otherwise only steps of [`CONFIRM_STEP`].
    fn send_confirms(&mut self, every_change: bool) {
        let below = self
            .requests
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq);
        let epoch = self.epoch;
        for peer in &mut self.peers {
            let step = below.saturating_sub(peer.confirmed_below);
            if peer.link != LinkState::Up || step == 0 || (!every_change && step < CONFIRM_STEP) {
                continue;
            }
            peer.confirmed_below = below;
            let bytes = wire::encode(&Message::Confirm { epoch, below });
            self.actions.push(PrimaryAction::Send {
                leg: peer.leg,
                bytes,
            });
        }
    }

    /// What client request `seq` does to a peer's leg.
    fn request_effect(&self, seq: u64) -> Effect {
        match self.requests.get(&seq) {
            Some(request) if request.range.is_none() => Effect::Flush,
            Some(request) if request.fua => Effect::Durable,
            _ => Effect::Cached,
        }
    }

    /// Completes every request whose local part is done and whose needed peers all acked.
    fn complete_ready(&mut self) {
        let ready: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.local == Local::Done && (r.need.is_empty() || ack_early()))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in ready {
            if let Some(request) = self.requests.remove(&seq) {
                self.client_bytes = self.client_bytes.saturating_sub(request.data.len() as u64);
                self.actions.push(PrimaryAction::Complete {
                    req_id: request.req_id,
                    ok: request.local_ok,
                });
            }
        }
    }

    /// `now` moved on: refill the resync budgets.
    fn advance(&mut self, now: u64) {
        if now > self.now {
            self.now = now;
        }
        self.refill();
    }

    fn new_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn submit_disk(&mut self, purpose: Purpose, kind: DiskKind) {
        let id = self.next_disk_id;
        self.next_disk_id += 1;
        self.disk.insert(id, purpose);
        self.actions.push(PrimaryAction::Disk(DiskOp { id, kind }));
    }

    /// Sends a frame to peer `index` and remembers it until acked.
    fn send_to(
        &mut self,
        index: usize,
        seq: u64,
        (range, effect): (Option<(u64, u64)>, Effect),
        bytes: Vec<u8>,
    ) {
        let now = self.now;
        let peer = &mut self.peers[index];
        peer.sent_count += 1;
        let order = peer.sent_count;
        let sent = Sent {
            range: range.unwrap_or((0, 0)),
            at: now,
            effect,
            order,
        };
        if effect == Effect::Flush {
            peer.unflushed.flush_sent(seq, order, now);
        }
        peer.unacked.insert(seq, sent);
        let resync = peer.resync.contains_key(&seq);
        if range.is_some() && (peer.mode == PeerMode::Behind || resync) {
            peer.data_gen += 1;
        }
        let leg = peer.leg;
        let over = peer.unacked.len() > self.tuning.max_peer_unacked;
        self.actions.push(PrimaryAction::Send { leg, bytes });
        if over {
            let reason = format!(
                "more than {} messages unacknowledged",
                self.tuning.max_peer_unacked
            );
            self.peer_failed(index, reason);
        }
    }

    fn note(&mut self, text: String) {
        let volume = self.ident.volume;
        self.actions
            .push(PrimaryAction::Note(format!("volume {volume}: {text}")));
    }
}

/// The `ack_before_peer` mutation: complete requests without waiting for peers.
#[cfg(feature = "mutations")]
fn ack_early() -> bool {
    crate::data_mutations::get().ack_before_peer
}

#[cfg(not(feature = "mutations"))]
fn ack_early() -> bool {
    false
}

/// A read reported through `disk_done`: failed (`ok: false`) is fine, "done" is the shim's
/// mistake (a read completes with its data, through `disk_read_done`) and counts as failed.
fn read_reported_as_done(id: u64, ok: bool) -> Result<(), ReplError> {
    if ok {
        return Err(ReplError::BadCompletion {
            id,
            reason: "a read completes with its data (disk_read_done)".into(),
        });
    }
    Ok(())
}
