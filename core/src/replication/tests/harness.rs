//! A deterministic in-test world for the replication link: one [`Primary`], one or two
//! [`Secondary`]s, an in-memory network (one ordered queue per direction and peer) and
//! in-memory disks whose operations complete only when a test says so, in any order.
//!
//! Written data is self-describing: every 512-byte unit of a client write starts with the
//! request id that wrote it, so the harness can check at each `Complete` that the write (or a
//! later one over it) is on every leg committed `UpToDate`, and, for `fua` and `FLUSH`, that
//! it is durable there (a disk's durable image is what its completed flushes captured).

use std::collections::{BTreeMap, VecDeque};

use crate::ids::ClusterId;
use crate::replication::{
    DiskKind, DiskOp, Ident, PeerLeg, PeerMode, Primary, PrimaryAction, Secondary, SecondaryAction,
    Tuning,
};
use crate::volume::{LegId, LegState};

pub const SIZE: u64 = 256 * 1024;
pub const GRAIN: u64 = 4096;
pub const UNIT: u64 = 512;
pub const CLUSTER: ClusterId = ClusterId([5; 16]);
pub const VOLUME: u64 = 7;
pub const EPOCH: u64 = 3;
pub const PRIMARY_NODE: u64 = 1;
pub const MY_LEG: LegId = 0;

/// The request id a unit of written data carries (0: never written).
pub fn tag(data: &[u8], unit: u64) -> u64 {
    let at = (unit * UNIT) as usize;
    let mut bytes = [0u8; 8];
    if let Some(slice) = data.get(at..at + 8) {
        bytes.copy_from_slice(slice);
    }
    u64::from_le_bytes(bytes)
}

/// The data a client write `req_id` of `len` bytes at `offset` (512-aligned) carries.
pub fn payload(req_id: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    for unit in offset / UNIT..(offset + len) / UNIT {
        let mut block = vec![(req_id * 31 + unit) as u8; UNIT as usize];
        block[..8].copy_from_slice(&req_id.to_le_bytes());
        block[8..16].copy_from_slice(&unit.to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

#[derive(Debug)]
pub struct Pending {
    pub op: DiskOp,
    /// For a flush: the unit tags at submission, durable when it completes.
    snapshot: Option<Vec<u64>>,
    /// For a flush: the data at submission.
    image: Option<Vec<u8>>,
}

/// A disk with a volatile cache: `data` is what reads see, `durable` the tag of each unit
/// that survives power loss.
#[derive(Debug)]
pub struct MemDisk {
    pub data: Vec<u8>,
    pub durable: Vec<u64>,
    /// What `data` becomes after a power loss: each unit as its newest completed flush saw it.
    pub durable_data: Vec<u8>,
    pub pending: Vec<Pending>,
}

pub enum Done {
    Ok(u64, bool),
    Read(u64, Vec<u8>),
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk {
            data: vec![0; SIZE as usize],
            durable: vec![0; (SIZE / UNIT) as usize],
            durable_data: vec![0; SIZE as usize],
            pending: Vec::new(),
        }
    }

    pub fn tags(&self) -> Vec<u64> {
        (0..SIZE / UNIT).map(|unit| tag(&self.data, unit)).collect()
    }

    fn submit(&mut self, op: DiskOp) {
        let flush = matches!(op.kind, DiskKind::Flush);
        let snapshot = flush.then(|| self.tags());
        let image = flush.then(|| self.data.clone());
        self.pending.push(Pending {
            op,
            snapshot,
            image,
        });
    }

    /// Power loss: what no completed flush captured is gone, and nothing pending completes.
    pub fn power_loss(&mut self) {
        self.data.clone_from(&self.durable_data);
        self.pending.clear();
    }

    /// Completes pending operation `index`, applying it; `ok: false` fails it untouched.
    fn complete(&mut self, index: usize, ok: bool) -> Option<(Done, DiskKind)> {
        if index >= self.pending.len() {
            return None;
        }
        let Pending {
            op,
            snapshot,
            image,
        } = self.pending.remove(index);
        let id = op.id;
        let kind = op.kind.clone();
        if !ok {
            return Some((Done::Ok(id, false), kind));
        }
        let done = match op.kind {
            DiskKind::Write { offset, data } => {
                let at = offset as usize;
                self.data[at..at + data.len()].copy_from_slice(&data);
                Done::Ok(id, true)
            }
            DiskKind::Read { offset, len } => Done::Read(
                id,
                self.data[offset as usize..(offset + len) as usize].to_vec(),
            ),
            DiskKind::Flush => {
                let image = image.unwrap_or_default();
                for (unit, new) in snapshot.unwrap_or_default().into_iter().enumerate() {
                    if new >= self.durable[unit] {
                        self.durable[unit] = new;
                        let at = unit * UNIT as usize..(unit + 1) * UNIT as usize;
                        self.durable_data[at.clone()].copy_from_slice(&image[at]);
                    }
                }
                Done::Ok(id, true)
            }
            DiskKind::Trim { offset, len } | DiskKind::WriteZeroes { offset, len } => {
                self.data[offset as usize..(offset + len) as usize].fill(0);
                Done::Ok(id, true)
            }
        };
        Some((done, kind))
    }
}

#[derive(Debug)]
pub struct Leg {
    pub id: LegId,
    pub sec: Secondary,
    pub disk: MemDisk,
    pub up: bool,
    pub to_sec: VecDeque<Vec<u8>>,
    pub to_pri: VecDeque<Vec<u8>>,
    /// Messages to the primary stay queued.
    pub hold: bool,
    pub committed: LegState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Complete(u64),
    LocalFlushDone,
    PeerFlushDone(LegId),
    PeerWriteDone(LegId),
    Proposed(LegId, LegState),
    DropLink(LegId),
    SecondaryDrop(LegId),
}

#[derive(Clone, Copy, Debug)]
pub struct WriteRec {
    pub offset: u64,
    pub len: u64,
    pub fua: bool,
}

pub struct Harness {
    pub primary: Primary,
    /// The primary's own leg (0 unless built by [`Harness::build`]).
    pub my_leg: LegId,
    pub pdisk: MemDisk,
    pub legs: Vec<Leg>,
    pub now: u64,
    pub next_req: u64,
    pub completed: BTreeMap<u64, bool>,
    pub proposals: VecDeque<(LegId, LegState, u64)>,
    pub auto_commit: bool,
    pub events: Vec<Event>,
    pub notes: Vec<String>,
    pub writes: BTreeMap<u64, WriteRec>,
    /// Flush request → the writes completed before it was submitted.
    pub flushes: BTreeMap<u64, Vec<u64>>,
    rng: u64,
}

pub fn test_tuning() -> Tuning {
    Tuning {
        resync_chunk: 16 * 1024,
        resync_window: 4,
        resync_window_busy: 1,
        resync_max_rate: u64::MAX,
        resync_busy_rate: u64::MAX,
        ack_timeout_ms: 1_000,
        hello_timeout_ms: 1_000,
        repropose_ms: 500,
        read_retry_ms: 100,
        verify_chunk: 16 * 1024,
        verify_window: 4,
        verify_window_busy: 1,
        verify_max_rate: u64::MAX,
        verify_busy_rate: u64::MAX,
        ..Tuning::default()
    }
}

impl Harness {
    /// A primary on leg 0 with peer legs 1.. in the given committed states.
    pub fn new(states: &[LegState]) -> Harness {
        Harness::with_tuning(states, test_tuning())
    }

    pub fn with_tuning(states: &[LegState], tuning: Tuning) -> Harness {
        let peers: Vec<(LegId, LegState)> = (states.iter().enumerate())
            .map(|(index, &state)| (index as LegId + 1, state))
            .collect();
        Harness::build(MY_LEG, EPOCH, &peers, tuning, |primary| primary)
    }

    /// The node that holds leg `leg` (leg 0 is on node 1, and so on).
    pub fn node_of(leg: LegId) -> u64 {
        PRIMARY_NODE + u64::from(leg)
    }

    /// A primary on leg `my_leg` in `epoch` with the given peer legs; `setup` may adjust the
    /// primary before anything happens (e.g. `track_from_now`).
    pub fn build(
        my_leg: LegId,
        epoch: u64,
        peer_legs: &[(LegId, LegState)],
        tuning: Tuning,
        setup: impl FnOnce(Primary) -> Primary,
    ) -> Harness {
        let ident = Ident {
            cluster: CLUSTER,
            volume: VOLUME,
            node: Harness::node_of(my_leg),
        };
        let mut peers = Vec::new();
        let mut legs = Vec::new();
        for &(leg, state) in peer_legs {
            let node = Harness::node_of(leg);
            peers.push(PeerLeg { leg, node, state });
            let sec_ident = Ident { node, ..ident };
            legs.push(Leg {
                id: leg,
                sec: Secondary::new(sec_ident, leg, SIZE, epoch),
                disk: MemDisk::new(),
                up: false,
                to_sec: VecDeque::new(),
                to_pri: VecDeque::new(),
                hold: false,
                committed: state,
            });
        }
        let primary = Primary::new(ident, my_leg, SIZE, epoch, peers, GRAIN)
            .and_then(|p| p.with_tuning(tuning))
            .expect("test primary");
        Harness {
            primary: setup(primary),
            my_leg,
            pdisk: MemDisk::new(),
            legs,
            now: 1_000,
            next_req: 1,
            completed: BTreeMap::new(),
            proposals: VecDeque::new(),
            auto_commit: true,
            events: Vec::new(),
            notes: Vec::new(),
            writes: BTreeMap::new(),
            flushes: BTreeMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    pub fn random(&mut self, bound: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % bound.max(1) as u64) as usize
    }

    fn leg_index(&self, leg: LegId) -> usize {
        self.legs.iter().position(|l| l.id == leg).expect("leg")
    }

    // ---- client ----------------------------------------------------------------------------

    pub fn try_write(&mut self, offset: u64, len: u64, fua: bool) -> Option<u64> {
        let req = self.next_req;
        self.next_req += 1;
        let data = payload(req, offset, len);
        let result = self.primary.client_write(self.now, req, offset, data, fua);
        self.drain();
        result.ok().map(|()| {
            self.writes.insert(req, WriteRec { offset, len, fua });
            req
        })
    }

    pub fn write(&mut self, offset: u64, len: u64, fua: bool) -> u64 {
        self.try_write(offset, len, fua).expect("write accepted")
    }

    pub fn flush(&mut self) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let done: Vec<u64> = self
            .completed
            .iter()
            .filter(|(r, ok)| **ok && self.writes.contains_key(r))
            .map(|(&r, _)| r)
            .collect();
        self.primary
            .client_flush(self.now, req)
            .expect("flush accepted");
        self.flushes.insert(req, done);
        self.drain();
        req
    }

    pub fn is_completed(&self, req: u64) -> bool {
        self.completed.contains_key(&req)
    }

    // ---- network ---------------------------------------------------------------------------

    pub fn connect(&mut self, leg: LegId) {
        let index = self.leg_index(leg);
        if self.legs[index].up {
            return;
        }
        self.legs[index].up = true;
        self.primary.peer_connected(self.now, leg).expect("connect");
        self.drain();
    }

    pub fn connect_all(&mut self) {
        let legs: Vec<LegId> = self.legs.iter().map(|l| l.id).collect();
        for leg in legs {
            self.connect(leg);
        }
    }

    /// The connection breaks (both ends notice).
    pub fn lose(&mut self, leg: LegId) {
        let index = self.leg_index(leg);
        if !self.legs[index].up {
            return;
        }
        self.cut(index);
        self.primary.peer_lost(leg).expect("lost");
        self.drain();
    }

    /// Leg `leg`'s node loses power: its cache is gone and its connection breaks.
    pub fn power_loss(&mut self, leg: LegId) {
        let index = self.leg_index(leg);
        self.legs[index].disk.power_loss();
        self.lose(leg);
    }

    fn cut(&mut self, index: usize) {
        let leg = &mut self.legs[index];
        leg.up = false;
        leg.to_sec.clear();
        leg.to_pri.clear();
        leg.sec.link_lost();
    }

    /// Delivers one message primary → secondary; false when none is queued.
    pub fn deliver_to_secondary(&mut self, index: usize) -> bool {
        let Some(bytes) = self.legs[index].to_sec.pop_front() else {
            return false;
        };
        let now = self.now;
        if let Err(error) = self.legs[index].sec.on_message(now, &bytes) {
            self.notes.push(format!("secondary {index}: {error}"));
        }
        self.drain();
        true
    }

    /// Delivers one message secondary → primary; false when none is queued or held.
    pub fn deliver_to_primary(&mut self, index: usize) -> bool {
        if self.legs[index].hold {
            return false;
        }
        let Some(bytes) = self.legs[index].to_pri.pop_front() else {
            return false;
        };
        let leg = self.legs[index].id;
        if let Err(error) = self.primary.peer_message(leg, &bytes) {
            self.notes.push(format!("primary from leg {leg}: {error}"));
        }
        self.drain();
        true
    }

    pub fn deliver_all(&mut self) -> bool {
        let mut any = false;
        for _ in 0..100_000 {
            let mut moved = false;
            for index in 0..self.legs.len() {
                moved |= self.deliver_to_secondary(index);
                moved |= self.deliver_to_primary(index);
            }
            if !moved {
                break;
            }
            any = true;
        }
        any
    }

    // ---- disks -----------------------------------------------------------------------------

    /// Completes the primary's pending disk op `index`.
    pub fn complete_primary(&mut self, index: usize, ok: bool) -> bool {
        let Some((done, kind)) = self.pdisk.complete(index, ok) else {
            return false;
        };
        if matches!(kind, DiskKind::Flush) {
            self.events.push(Event::LocalFlushDone);
        }
        let result = match done {
            Done::Ok(id, ok) => self.primary.disk_done(id, ok),
            Done::Read(id, data) => self.primary.disk_read_done(id, data),
        };
        result.expect("primary completion");
        self.drain();
        true
    }

    /// Completes secondary `leg_index`'s pending disk op `index`.
    pub fn complete_secondary(&mut self, leg_index: usize, index: usize, ok: bool) -> bool {
        let leg = &mut self.legs[leg_index];
        let Some((done, kind)) = leg.disk.complete(index, ok) else {
            return false;
        };
        let event = match kind {
            DiskKind::Flush => Event::PeerFlushDone(leg.id),
            _ => Event::PeerWriteDone(leg.id),
        };
        self.events.push(event);
        match done {
            Done::Ok(id, ok) => leg.sec.disk_done(id, ok).expect("secondary completion"),
            Done::Read(id, data) => leg.sec.disk_read_done(id, data).expect("secondary read"),
        }
        self.drain();
        true
    }

    pub fn complete_all_disks(&mut self) -> bool {
        let mut any = false;
        for _ in 0..100_000 {
            let mut moved = self.complete_primary(0, true);
            for index in 0..self.legs.len() {
                moved |= self.complete_secondary(index, 0, true);
            }
            if !moved {
                break;
            }
            any = true;
        }
        any
    }

    /// Completes one pending disk op anywhere, chosen at random.
    pub fn complete_random(&mut self) -> bool {
        let mut choices = Vec::new();
        for index in 0..self.pdisk.pending.len() {
            choices.push((None, index));
        }
        for (leg, l) in self.legs.iter().enumerate() {
            for index in 0..l.disk.pending.len() {
                choices.push((Some(leg), index));
            }
        }
        if choices.is_empty() {
            return false;
        }
        match choices[self.random(choices.len())] {
            (None, index) => self.complete_primary(index, true),
            (Some(leg), index) => self.complete_secondary(leg, index, true),
        }
    }

    // ---- cluster state ---------------------------------------------------------------------

    /// Commits the oldest pending proposal; false when none.
    pub fn commit_one(&mut self) -> bool {
        let Some((leg, state, epoch)) = self.proposals.pop_front() else {
            return false;
        };
        let index = self.leg_index(leg);
        self.legs[index].committed = state;
        self.primary
            .leg_state_committed(leg, state, epoch)
            .expect("commit");
        self.drain();
        true
    }

    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.primary.tick(self.now);
        self.drain();
    }

    /// Runs everything (network, disks, commits when automatic, ticks) until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..20_000 {
            let mut moved = self.deliver_all();
            moved |= self.complete_all_disks();
            if self.auto_commit {
                moved |= self.commit_one();
            }
            if moved {
                continue;
            }
            if self.quiet() {
                return;
            }
            self.tick(10);
        }
        panic!("did not settle: {:#?}", self.statuses());
    }

    fn quiet(&self) -> bool {
        let busy_peer = self.legs.iter().any(|leg| {
            let status = self.primary.peer_status(leg.id).expect("status");
            let verifying = (self.primary.verify_status(leg.id)).is_some_and(|v| !v.finished);
            let behind = status.mode != PeerMode::Sync || status.dirty_bytes > 0 || verifying;
            leg.up && behind && status.proposed.is_none() && !leg.hold
        });
        let frozen_by_test = !self.auto_commit;
        (self.primary.in_flight() == 0 || frozen_by_test)
            && !busy_peer
            && (self.proposals.is_empty() || frozen_by_test)
    }

    /// Reconnects every leg and settles until all are `UpToDate` again.
    pub fn heal(&mut self) {
        self.auto_commit = true;
        for leg in &mut self.legs {
            leg.hold = false;
        }
        for _ in 0..20 {
            self.settle();
            self.connect_all();
            self.settle();
            let all_sync = self.legs.iter().all(|leg| {
                self.primary.peer_status(leg.id).map(|s| s.mode) == Some(PeerMode::Sync)
            });
            if all_sync {
                return;
            }
        }
        panic!("did not heal: {:#?}", self.statuses());
    }

    pub fn statuses(&self) -> Vec<String> {
        self.legs
            .iter()
            .map(|leg| format!("{:?} up={}", self.primary.peer_status(leg.id), leg.up))
            .collect()
    }

    // ---- checks ----------------------------------------------------------------------------

    pub fn assert_identical(&self) {
        for leg in &self.legs {
            assert!(
                leg.disk.data == self.pdisk.data,
                "leg {} differs from the primary's leg; first difference at byte {:?}",
                leg.id,
                leg.disk
                    .data
                    .iter()
                    .zip(&self.pdisk.data)
                    .position(|(a, b)| a != b)
            );
        }
    }

    /// The disks (local first) of the legs committed UpToDate now.
    fn up_to_date_disks(&self) -> Vec<(LegId, &MemDisk)> {
        let mut disks = vec![(self.my_leg, &self.pdisk)];
        for leg in &self.legs {
            if leg.committed == LegState::UpToDate {
                disks.push((leg.id, &leg.disk));
            }
        }
        disks
    }

    /// Rule 1 at the moment request `req` completes.
    fn check_completion(&self, req: u64) {
        if let Some(write) = self.writes.get(&req) {
            self.check_has(req, *write, write.fua);
        }
        if let Some(before) = self.flushes.get(&req) {
            for &earlier in before {
                if let Some(write) = self.writes.get(&earlier) {
                    self.check_has(earlier, *write, true);
                }
            }
        }
    }

    fn check_has(&self, req: u64, write: WriteRec, durable: bool) {
        for (leg, disk) in self.up_to_date_disks() {
            for unit in write.offset / UNIT..(write.offset + write.len) / UNIT {
                let have = if durable {
                    disk.durable[unit as usize]
                } else {
                    tag(&disk.data, unit)
                };
                assert!(
                    have >= req,
                    "request {req} completed but UpToDate leg {leg} {} unit {unit} from \
                     request {have} (durable check: {durable})",
                    if durable { "has durably" } else { "holds" }
                );
            }
        }
    }

    /// Routes every action of every machine until none is left.
    pub fn drain(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for action in self.primary.take_actions() {
                moved = true;
                self.on_primary_action(action);
            }
            for index in 0..self.legs.len() {
                for action in self.legs[index].sec.take_actions() {
                    moved = true;
                    self.on_secondary_action(index, action);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn on_primary_action(&mut self, action: PrimaryAction) {
        match action {
            PrimaryAction::Send { leg, bytes } => {
                let index = self.leg_index(leg);
                if self.legs[index].up {
                    self.legs[index].to_sec.push_back(bytes);
                }
            }
            PrimaryAction::Disk(op) => self.pdisk.submit(op),
            PrimaryAction::Complete { req_id, ok } => {
                assert!(
                    self.completed.insert(req_id, ok).is_none(),
                    "request {req_id} completed twice"
                );
                self.events.push(Event::Complete(req_id));
                if ok {
                    self.check_completion(req_id);
                }
            }
            PrimaryAction::ProposeLegState { leg, state, epoch } => {
                self.events.push(Event::Proposed(leg, state));
                self.proposals.push_back((leg, state, epoch));
            }
            PrimaryAction::DropLink { leg, .. } => {
                self.events.push(Event::DropLink(leg));
                let index = self.leg_index(leg);
                self.cut(index);
            }
            PrimaryAction::Note(text) => self.notes.push(text),
        }
    }

    fn on_secondary_action(&mut self, index: usize, action: SecondaryAction) {
        match action {
            SecondaryAction::Send(bytes) => {
                if self.legs[index].up {
                    self.legs[index].to_pri.push_back(bytes);
                }
            }
            SecondaryAction::Disk(op) => self.legs[index].disk.submit(op),
            SecondaryAction::Drop { .. } => {
                let leg = self.legs[index].id;
                self.events.push(Event::SecondaryDrop(leg));
                if self.legs[index].up {
                    self.cut(index);
                    self.primary.peer_lost(leg).expect("lost");
                }
            }
            SecondaryAction::Note(text) => self.notes.push(text),
        }
    }
}
