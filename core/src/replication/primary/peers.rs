//! The primary's view of each peer leg: its connection, its acks, its failures, and the
//! committed leg states that move it between [`PeerMode`]s.
//!
//! Why a module of its own: this is the freeze protocol of DESIGN.md rule 1, the part that
//! must be exactly right. A peer that must ack (`Sync`, `Promoting`) and fails becomes
//! `Failing`: requests it lacks stay held, `Outdated` is proposed, and only the committed
//! `Outdated` releases them into its bitmap ([`Primary::leg_state_committed`]).
//!
//! It also takes a returning ex-primary's crash-suspect ranges from its `HelloAck`. After a
//! takeover the new primary knows the old one's leg was `UpToDate` until then, so it starts
//! that peer with an empty bitmap recording every write from now
//! ([`Primary::track_from_now`]) instead of all dirty; the old primary's leg may differ only
//! there and in its activity log's hot extents (writes in flight at the crash, on its disk
//! only or on ours only), which it names when it connects. Both are marked before its resync
//! starts, so the resync covers exactly their union.

use std::collections::BTreeMap;

use super::{
    Effect, LinkState, Local, Peer, PeerLeg, PeerMode, PeerStatus, Primary, PrimaryAction,
    ReplError,
};
use crate::legmeta::OutOfSync;
use crate::replication::check_range;
use crate::replication::overlaps;
use crate::replication::wire::{self, Message, Suspect, PROTOCOL_VERSION};
use crate::volume::{LegId, LegState};

impl Peer {
    pub(super) fn new(leg: PeerLeg, size: u64, grain: u64) -> Result<Peer, ReplError> {
        let mut oos = OutOfSync::new(size, grain)?;
        let mode = if leg.state == LegState::UpToDate {
            PeerMode::Sync
        } else {
            oos.mark_all();
            PeerMode::Behind
        };
        Ok(Peer {
            leg: leg.leg,
            node: leg.node,
            committed: leg.state,
            mode,
            link: LinkState::Down,
            link_since: 0,
            heard_at: 0,
            ping: None,
            oos,
            proposal: None,
            unacked: BTreeMap::new(),
            resync: BTreeMap::new(),
            cursor: 0,
            tokens: 0,
            paused_until: 0,
            resync_bytes: 0,
            zero_bytes: 0,
            done: 0,
            data_gen: 0,
            flushed_gen: 0,
            sync_flush: None,
            repairing: false,
            verify: None,
            verify_tokens: 0,
            unflushed: Default::default(),
            sent_count: 0,
            confirmed_below: 0,
        })
    }
}

impl Primary {
    pub(super) fn peer_index(&self, leg: LegId) -> Result<usize, ReplError> {
        self.peers
            .iter()
            .position(|peer| peer.leg == leg)
            .ok_or(ReplError::UnknownLeg { leg })
    }

    /// A connection to peer leg `leg` is open: the handshake starts. An older connection to
    /// that leg counts as lost.
    pub fn peer_connected(&mut self, now: u64, leg: LegId) -> Result<(), ReplError> {
        self.advance(now);
        let index = self.peer_index(leg)?;
        if self.peers[index].link != LinkState::Down {
            self.peer_failed(index, "a new connection replaces it".into());
        }
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            cluster: self.ident.cluster.0,
            volume: self.ident.volume,
            leg,
            from_node: self.ident.node,
            epoch: self.epoch,
            size: self.size,
        };
        let peer = &mut self.peers[index];
        peer.link = LinkState::Connecting;
        peer.link_since = self.now;
        peer.heard_at = self.now;
        peer.ping = None;
        let bytes = wire::encode(&hello);
        self.actions.push(PrimaryAction::Send { leg, bytes });
        self.pump();
        Ok(())
    }

    /// The connection to peer leg `leg` closed.
    pub fn peer_lost(&mut self, leg: LegId) -> Result<(), ReplError> {
        let index = self.peer_index(leg)?;
        self.close_link(index, "connection lost", false);
        self.outdate(index, "its connection was lost".into());
        self.pump();
        Ok(())
    }

    /// One frame from peer leg `leg`. A malformed or unexpected frame drops the link (and
    /// outdates the leg if it had to ack).
    pub fn peer_message(&mut self, leg: LegId, bytes: &[u8]) -> Result<(), ReplError> {
        let index = self.peer_index(leg)?;
        if self.peers[index].link == LinkState::Down {
            return Ok(());
        }
        self.peers[index].heard_at = self.now;
        let result = match wire::decode(bytes) {
            Ok(message) => self.on_peer_message(index, message),
            Err(error) => {
                self.peer_failed(index, format!("malformed frame: {error}"));
                Err(error.into())
            }
        };
        self.pump();
        result
    }

    fn on_peer_message(&mut self, index: usize, message: Message) -> Result<(), ReplError> {
        let leg = self.peers[index].leg;
        match message {
            Message::HelloAck { epoch, suspect } => self.on_hello_ack(index, epoch, suspect),
            Message::VerifyReply {
                epoch,
                seq,
                offset,
                len,
                digests,
            } => self.on_verify_reply(index, epoch, seq, (offset, len), digests),
            Message::Ack { epoch, seq, ok } if epoch == self.epoch => {
                self.on_ack(index, seq, ok);
                Ok(())
            }
            Message::Refuse { code, text } => {
                self.peer_failed(index, format!("refused ({code}): {text}"));
                Err(ReplError::PeerRefused {
                    leg,
                    code,
                    reason: text,
                })
            }
            Message::Ping { seq } => {
                let bytes = wire::encode(&Message::Pong { seq });
                self.actions.push(PrimaryAction::Send { leg, bytes });
                Ok(())
            }
            Message::Pong { seq } => {
                let peer = &mut self.peers[index];
                if peer.ping.is_some_and(|(sent, _)| sent == seq) {
                    peer.ping = None;
                }
                Ok(())
            }
            other => {
                let reason = match other {
                    Message::Ack { epoch, .. } => {
                        format!("ack of epoch {epoch}, link is epoch {}", self.epoch)
                    }
                    _ => "a primary does not accept it".to_string(),
                };
                self.peer_failed(index, format!("unexpected {}: {reason}", other.kind_name()));
                Err(ReplError::Unexpected {
                    kind: other.kind_name(),
                    from: format!("peer leg {leg}"),
                    reason,
                })
            }
        }
    }

    fn on_hello_ack(
        &mut self,
        index: usize,
        epoch: u64,
        suspect: Suspect,
    ) -> Result<(), ReplError> {
        let leg = self.peers[index].leg;
        if self.peers[index].link != LinkState::Connecting || epoch != self.epoch {
            let reason = format!(
                "hello-ack of epoch {epoch} while {:?} in epoch {}",
                self.peers[index].link, self.epoch
            );
            self.peer_failed(index, reason.clone());
            return Err(ReplError::Unexpected {
                kind: "hello-ack",
                from: format!("peer leg {leg}"),
                reason,
            });
        }
        let peer = &mut self.peers[index];
        peer.link = LinkState::Up;
        peer.link_since = self.now;
        peer.cursor = 0;
        // The next tick confirms to the new link even without progress: it tells the
        // secondary its suspect report was heard.
        peer.confirmed_below = 0;
        let mode = peer.mode;
        self.note(format!("peer leg {leg} connected ({mode:?})"));
        self.mark_suspect(index, suspect);
        self.send_unsent(index);
        Ok(())
    }

    /// Marks what a connecting peer reports as crash-suspect in its bitmap, before its resync
    /// starts. A range outside the volume makes the whole leg suspect (the safe reading).
    fn mark_suspect(&mut self, index: usize, suspect: Suspect) {
        if suspect.is_none() {
            return;
        }
        let (leg, size) = (self.peers[index].leg, self.size);
        let ranges = match suspect {
            Suspect::Ranges(ranges) => ranges,
            Suspect::Everything => Vec::new(),
        };
        let bad = ranges
            .iter()
            .find(|&&(offset, len)| check_range(offset, len, size).is_err());
        let peer = &mut self.peers[index];
        let text = if let Some(&(offset, len)) = bad {
            peer.oos.mark_all();
            format!("reports a suspect range of {len} bytes at {offset}, outside the volume")
        } else if ranges.is_empty() {
            peer.oos.mark_all();
            "reports its whole leg suspect".to_string()
        } else {
            let bytes: u64 = ranges.iter().map(|&(_, len)| len).sum();
            for &(offset, len) in &ranges {
                let _ = peer.oos.mark(offset, len);
            }
            format!(
                "reports {} crash-suspect ranges ({bytes} bytes)",
                ranges.len()
            )
        };
        if peer.mode == PeerMode::Sync {
            peer.repairing = true;
        }
        let dirty = peer.oos.dirty_bytes();
        self.note(format!(
            "peer leg {leg} {text}: marked for resync ({dirty} bytes dirty)"
        ));
    }

    /// Starts peer leg `leg` with an empty bitmap that records every write from now, instead
    /// of all dirty. For a leg committed `Outdated` whose history this node knows: it took
    /// over from that leg's node, and the leg was `UpToDate` until the takeover, so it can
    /// lack only what is written from now on and what its node reports as crash-suspect when
    /// it connects. Must come before any request and before that peer connects.
    pub fn track_from_now(&mut self, leg: LegId) -> Result<(), ReplError> {
        let index = self.peer_index(leg)?;
        let peer = &self.peers[index];
        if peer.committed != LegState::Outdated {
            return Err(ReplError::Config(format!(
                "track_from_now: leg {leg} is {}, only an Outdated leg may start clean",
                peer.committed.as_str()
            )));
        }
        if self.next_seq != 1 || peer.link != LinkState::Down {
            return Err(ReplError::Config(format!(
                "track_from_now: leg {leg} must be set up before any request and before it \
                 connects"
            )));
        }
        self.peers[index].oos = OutOfSync::new(self.size, self.grain)?;
        self.note(format!(
            "peer leg {leg}: tracking writes from now (it was UpToDate until the takeover)"
        ));
        Ok(())
    }

    /// Sends the requests that waited for this peer's link, in arrival order.
    fn send_unsent(&mut self, index: usize) {
        let leg = self.peers[index].leg;
        let seqs: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.unsent.contains(&leg))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in seqs {
            let bytes = self.request_frame(seq);
            let range = self.requests.get(&seq).and_then(|r| r.range);
            if let Some(request) = self.requests.get_mut(&seq) {
                request.unsent.retain(|&l| l != leg);
            }
            let effect = self.request_effect(seq);
            self.send_to(index, seq, (range, effect), bytes);
            self.release_data(seq);
            if self.peers[index].link != LinkState::Up {
                return;
            }
        }
    }

    fn on_ack(&mut self, index: usize, seq: u64, ok: bool) {
        let Some(sent) = self.peers[index].unacked.remove(&seq) else {
            return;
        };
        let leg = self.peers[index].leg;
        if !ok {
            self.peer_failed(index, format!("seq {seq} failed on its disk"));
            return;
        }
        if self.is_verify_seq(index, seq) {
            let reason = format!("ack of verify seq {seq}: a verify is answered with digests");
            self.peer_failed(index, reason);
            return;
        }
        match sent.effect {
            Effect::Cached => self.peers[index].unflushed.acked(sent.range, sent.order),
            Effect::Flush => self.peers[index].unflushed.flush_acked(seq),
            Effect::Durable | Effect::Read => {}
        }
        let peer = &self.peers[index];
        let clears =
            peer.mode == PeerMode::Behind || (peer.mode == PeerMode::Sync && peer.repairing);
        if clears && !self.failed_locally(seq) {
            self.clear_synced(index, sent.range);
        }
        let peer = &mut self.peers[index];
        peer.resync.remove(&seq);
        if let Some((_, generation)) = peer.sync_flush.filter(|&(flush, _)| flush == seq) {
            peer.flushed_gen = generation;
            peer.sync_flush = None;
        }
        if let Some(request) = self.requests.get_mut(&seq) {
            request.need.retain(|&l| l != leg);
        }
    }

    /// Peer `index` acked `range`: it now has the grains the range covers completely, except
    /// those another unacked message to it also touches (that one may still change them).
    pub(super) fn clear_synced(&mut self, index: usize, (offset, len): (u64, u64)) {
        if len == 0 {
            return;
        }
        let (grain, size) = (self.grain, self.size);
        let peer = &mut self.peers[index];
        let end = offset + len;
        let first = offset.div_ceil(grain);
        let stop = if end == size {
            peer.oos.grains()
        } else {
            end / grain
        };
        if first >= stop {
            return;
        }
        let span = (first * grain, (stop * grain).min(size) - first * grain);
        let others: Vec<(u64, u64)> = peer
            .unacked
            .values()
            .map(|sent| sent.range)
            .filter(|&range| overlaps(range, span))
            .collect();
        for g in first..stop {
            let at = g * grain;
            let grain_range = (at, grain.min(size - at));
            if others.iter().any(|&other| overlaps(other, grain_range)) {
                continue;
            }
            if peer.oos.is_dirty(at, grain_range.1).unwrap_or(false)
                && peer.oos.clear(at, grain_range.1).is_ok()
            {
                peer.done += grain_range.1;
            }
        }
    }

    /// The cluster committed peer leg `leg` as `state` in `epoch`.
    pub fn leg_state_committed(
        &mut self,
        leg: LegId,
        state: LegState,
        epoch: u64,
    ) -> Result<(), ReplError> {
        if leg == self.my_leg {
            self.note(format!("own leg {leg} committed {}", state.as_str()));
            return Ok(());
        }
        let index = self.peer_index(leg)?;
        if epoch != self.epoch {
            self.note(format!(
                "ignored leg {leg} {} of epoch {epoch}: this primary is epoch {}",
                state.as_str(),
                self.epoch
            ));
            return Ok(());
        }
        let peer = &mut self.peers[index];
        peer.committed = state;
        if peer.proposal.is_some_and(|(proposed, _)| proposed == state) {
            peer.proposal = None;
        }
        if state == LegState::Inconsistent {
            peer.oos.mark_all();
        }
        self.apply_committed(index, state);
        self.pump();
        Ok(())
    }

    fn apply_committed(&mut self, index: usize, state: LegState) {
        let leg = self.peers[index].leg;
        match (self.peers[index].mode, state) {
            (PeerMode::Behind, LegState::Outdated | LegState::Inconsistent) => {}
            (_, LegState::Outdated | LegState::Inconsistent) => self.release(index),
            (PeerMode::Promoting, LegState::UpToDate) => {
                self.peers[index].mode = PeerMode::Sync;
                self.note(format!("peer leg {leg} is UpToDate"));
            }
            (PeerMode::Sync | PeerMode::Failing, LegState::UpToDate) => {}
            (PeerMode::Behind, LegState::UpToDate) => {
                if self.in_sync(index) {
                    self.peers[index].mode = PeerMode::Sync;
                } else {
                    self.hold_all_for(leg);
                    self.peers[index].mode = PeerMode::Sync;
                    self.outdate(
                        index,
                        "it was committed UpToDate while it lacks data".into(),
                    );
                }
            }
        }
    }

    /// Every started, uncompleted request waits for `leg` too.
    fn hold_all_for(&mut self, leg: LegId) {
        for request in self.requests.values_mut() {
            if request.local != Local::Waiting && !request.need.contains(&leg) {
                request.need.push(leg);
            }
        }
    }

    /// The leg is committed not UpToDate: requests held for it are released, and what it did
    /// not ack is recorded in its bitmap.
    fn release(&mut self, index: usize) {
        let leg = self.peers[index].leg;
        let mut marked = 0u64;
        for request in self.requests.values_mut() {
            if !request.need.contains(&leg) {
                continue;
            }
            request.need.retain(|&l| l != leg);
            request.unsent.retain(|&l| l != leg);
            if let Some((offset, len)) = request.range {
                if self.peers[index].oos.mark(offset, len).is_ok() {
                    marked += 1;
                }
            }
        }
        let seqs: Vec<u64> = self.requests.keys().copied().collect();
        for seq in seqs {
            self.release_data(seq);
        }
        let peer = &mut self.peers[index];
        peer.mode = PeerMode::Behind;
        peer.repairing = false;
        peer.done = 0;
        peer.cursor = 0;
        if peer
            .proposal
            .is_some_and(|(state, _)| state == LegState::UpToDate)
        {
            // A promotion overtaken by this commit: not repeated (it would be refused, or be
            // re-checked by `apply_committed` if it commits after all).
            peer.proposal = None;
        }
        self.note(format!(
            "peer leg {leg} committed behind: {marked} held requests released into its bitmap"
        ));
    }

    /// Whether peer `index` has everything: connected, clean, nothing in flight.
    fn in_sync(&self, index: usize) -> bool {
        let peer = &self.peers[index];
        peer.link == LinkState::Up
            && peer.unacked.is_empty()
            && peer.resync.is_empty()
            && !peer.oos.is_dirty(0, self.size).unwrap_or(true)
    }

    /// A peer that must ack cannot: freeze its requests and propose it `Outdated`.
    pub(super) fn outdate(&mut self, index: usize, reason: String) {
        if !self.peers[index].mode.must_ack() {
            return;
        }
        self.peers[index].mode = PeerMode::Failing;
        let leg = self.peers[index].leg;
        self.note(format!(
            "peer leg {leg} failed ({reason}): acknowledgements held until it is committed Outdated"
        ));
        self.propose(index, LegState::Outdated);
    }

    /// The link to peer `index` is unusable: close it, and outdate the leg if it must ack.
    pub(super) fn peer_failed(&mut self, index: usize, reason: String) {
        self.close_link(index, &reason, true);
        self.outdate(index, reason);
    }

    /// Forgets the connection state of peer `index`; `tell_shim` asks the shim to close it.
    pub(super) fn close_link(&mut self, index: usize, reason: &str, tell_shim: bool) {
        let peer = &mut self.peers[index];
        if peer.link == LinkState::Down {
            return;
        }
        let leg = peer.leg;
        peer.link = LinkState::Down;
        peer.link_since = self.now;
        let cached = peer.unflushed.take_all(self.now);
        let cached_bytes: u64 = cached.ranges().iter().map(|&(_, len)| len).sum();
        for &(offset, len) in cached.ranges() {
            let _ = peer.oos.mark(offset, len);
        }
        peer.unacked.clear();
        peer.resync.clear();
        peer.sync_flush = None;
        for request in self.requests.values_mut() {
            request.unsent.retain(|&l| l != leg);
        }
        if tell_shim {
            let reason = reason.to_string();
            self.actions.push(PrimaryAction::DropLink { leg, reason });
        }
        self.note(format!("link to peer leg {leg} down: {reason}"));
        if !cached.is_empty() {
            self.note(format!(
                "peer leg {leg}: {} ranges ({cached_bytes} bytes) it acked but never flushed \
                 marked out of sync (a power loss there may have lost them)",
                cached.len()
            ));
        }
        self.abort_verify(index, format!("the link went down ({reason})"));
    }

    pub(super) fn propose(&mut self, index: usize, state: LegState) {
        let peer = &mut self.peers[index];
        peer.proposal = Some((state, self.now));
        let leg = peer.leg;
        let epoch = self.epoch;
        self.actions
            .push(PrimaryAction::ProposeLegState { leg, state, epoch });
    }

    /// A behind peer that is connected, clean and idle gets a flush (so that what it was
    /// sent is durable there), then is proposed `UpToDate`; from then on requests wait for it.
    pub(super) fn maybe_promote(&mut self, index: usize) {
        let peer = &self.peers[index];
        let candidate = peer.mode == PeerMode::Behind
            && peer.link == LinkState::Up
            && peer.resync.is_empty()
            && peer.sync_flush.is_none();
        if !candidate || !self.in_sync(index) {
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
        self.peers[index].mode = PeerMode::Promoting;
        self.note(format!("peer leg {leg} is in sync: proposing UpToDate"));
        self.propose(index, LegState::UpToDate);
    }

    /// Time passes: timeouts, repeated proposals, resync budgets.
    pub fn tick(&mut self, now: u64) {
        self.advance(now);
        for index in 0..self.peers.len() {
            self.check_timeouts(index);
            self.flush_if_due(index);
            let peer = &self.peers[index];
            if let Some((state, at)) = peer.proposal {
                if self.now.saturating_sub(at) >= self.tuning.repropose_ms {
                    self.propose(index, state);
                }
            }
        }
        self.pump();
        self.send_confirms(true);
    }

    /// A connected peer holding acked writes unflushed for a while gets a flush of its own,
    /// so what a disconnect must resync stays small (`unflushed`).
    fn flush_if_due(&mut self, index: usize) {
        let peer = &self.peers[index];
        let interval = self.tuning.peer_flush_interval_ms;
        if peer.link != LinkState::Up || !peer.unflushed.flush_due(self.now, interval) {
            return;
        }
        let seq = self.new_seq();
        let bytes = wire::encode(&Message::Flush {
            epoch: self.epoch,
            seq,
        });
        self.send_to(index, seq, (None, Effect::Flush), bytes);
    }

    fn check_timeouts(&mut self, index: usize) {
        let peer = &self.peers[index];
        let now = self.now;
        let reason = match peer.link {
            LinkState::Connecting
                if now.saturating_sub(peer.link_since) >= self.tuning.hello_timeout_ms =>
            {
                format!("no hello-ack within {} ms", self.tuning.hello_timeout_ms)
            }
            LinkState::Up => {
                let oldest = peer.unacked.iter().min_by_key(|(_, sent)| sent.at);
                match oldest {
                    Some((seq, sent))
                        if now.saturating_sub(sent.at) >= self.tuning.ack_timeout_ms =>
                    {
                        format!("seq {seq} unacknowledged for {} ms", now - sent.at)
                    }
                    _ => return self.keep_alive(index),
                }
            }
            _ => return,
        };
        self.peer_failed(index, reason);
    }

    /// Pings a link that has been silent for a while; drops it when the ping goes
    /// unanswered (the connection is cut without either end being told).
    fn keep_alive(&mut self, index: usize) {
        let now = self.now;
        let (interval, timeout) = (self.tuning.ping_interval_ms, self.tuning.ping_timeout_ms);
        let peer = &mut self.peers[index];
        match peer.ping {
            Some((_, sent)) if now.saturating_sub(sent) >= timeout => {
                let reason = format!("no answer to a ping within {timeout} ms");
                self.peer_failed(index, reason);
            }
            Some(_) => {}
            None if now.saturating_sub(peer.heard_at) >= interval => {
                peer.ping = Some((now, now));
                let leg = peer.leg;
                let bytes = wire::encode(&Message::Ping { seq: now });
                self.actions.push(PrimaryAction::Send { leg, bytes });
            }
            None => {}
        }
    }

    /// A peer leg at a glance.
    pub fn peer_status(&self, leg: LegId) -> Option<PeerStatus> {
        let peer = self.peers.iter().find(|peer| peer.leg == leg)?;
        Some(PeerStatus {
            leg,
            node: peer.node,
            committed: peer.committed,
            mode: peer.mode,
            link: peer.link,
            dirty_bytes: peer.oos.dirty_bytes(),
            resync_in_flight: peer.resync.len(),
            unacked: peer.unacked.len(),
            proposed: peer.proposal.map(|(state, _)| state),
        })
    }

    /// Peer leg `leg`'s out-of-sync bitmap (for persisting its changed pages).
    pub fn peer_bitmap(&self, leg: LegId) -> Option<&OutOfSync> {
        self.peers.iter().find(|p| p.leg == leg).map(|p| &p.oos)
    }

    /// Mutable access, for [`OutOfSync::take_dirty_pages`]. To mark ranges, use
    /// [`Primary::mark_out_of_sync`]: grains marked here on an `UpToDate` peer are not
    /// resynced until something else starts its repair.
    pub fn peer_bitmap_mut(&mut self, leg: LegId) -> Option<&mut OutOfSync> {
        self.peers
            .iter_mut()
            .find(|p| p.leg == leg)
            .map(|p| &mut p.oos)
    }

    /// Loads a peer's bitmap from its metadata (same size and grain required). Refused for a
    /// peer whose requests are in flight.
    pub fn set_peer_bitmap(&mut self, leg: LegId, map: OutOfSync) -> Result<(), ReplError> {
        let index = self.peer_index(leg)?;
        if (map.data_size(), map.grain()) != (self.size, self.grain) {
            return Err(ReplError::Config(format!(
                "bitmap for leg {leg} is {} bytes in {}-byte grains, the volume is {} bytes in \
                 {}-byte grains",
                map.data_size(),
                map.grain(),
                self.size,
                self.grain
            )));
        }
        let peer = &mut self.peers[index];
        if !peer.unacked.is_empty() || !peer.resync.is_empty() {
            return Err(ReplError::Config(format!(
                "bitmap for leg {leg} cannot be replaced while messages to it are in flight"
            )));
        }
        peer.repairing = peer.mode == PeerMode::Sync && map.next_dirty(0).is_some();
        peer.oos = map;
        self.pump();
        Ok(())
    }

    /// Marks byte ranges `(offset, len)` out of sync for peer leg `leg`: they are resynced
    /// from this leg. E.g. this leg's activity-log hot extents after this node crashed as the
    /// primary and was promoted again (`legmeta::Recovered::resync_ranges`), for every peer.
    /// A peer committed `UpToDate` stays so and keeps acking every write; the ranges are
    /// repaired in step (see the `verify` module). All ranges are checked before any is marked.
    pub fn mark_out_of_sync(&mut self, leg: LegId, ranges: &[(u64, u64)]) -> Result<(), ReplError> {
        let index = self.peer_index(leg)?;
        for &(offset, len) in ranges {
            check_range(offset, len, self.size)?;
        }
        let peer = &mut self.peers[index];
        for &(offset, len) in ranges {
            peer.oos.mark(offset, len)?;
        }
        if peer.mode == PeerMode::Sync && !ranges.is_empty() {
            peer.repairing = true;
        }
        self.pump();
        Ok(())
    }

    /// Resync bytes of data sent to peer leg `leg` (known-zero ranges not counted).
    pub fn resync_bytes_sent(&self, leg: LegId) -> u64 {
        self.peers
            .iter()
            .find(|p| p.leg == leg)
            .map_or(0, |p| p.resync_bytes)
    }

    /// Bytes of known-zero ranges sent to peer leg `leg` as `WriteZeroes`.
    pub fn resync_zero_bytes_sent(&self, leg: LegId) -> u64 {
        self.peers
            .iter()
            .find(|p| p.leg == leg)
            .map_or(0, |p| p.zero_bytes)
    }

    /// `(done, total)` bytes of the current resync of peer leg `leg`.
    pub fn progress(&self, leg: LegId) -> (u64, u64) {
        self.peers
            .iter()
            .find(|p| p.leg == leg)
            .map_or((0, 0), |p| (p.done, p.done + p.oos.dirty_bytes()))
    }
}
