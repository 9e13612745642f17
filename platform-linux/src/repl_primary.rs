//! The primary end of a volume on this node: one engine task that owns
//! `tandem_core::replication::Primary` and the local leg, one dialer task per peer leg, and a
//! [`VolumeIo`] handle the frontends (NBD, FUSE) call.
//!
//! Exists so the frontends never touch a leg directly once a volume is mirrored: every write
//! goes through the core, which acknowledges it only when every UpToDate leg has it (DESIGN.md
//! §5 rule 1). The engine carries out the core's actions: frames to peers, disk operations on
//! the leg, completions to waiting clients, and leg-state proposals to the daemon, which
//! commits them through Raft and reports them back with [`EngineInput::LegState`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::command::{SyncStatus, VerifyReport};
use tandem_core::legmeta::{ActivityLog, AlDecision, Expectation};
use tandem_core::replication::{
    LinkState, PeerMode, Primary, PrimaryAction, Suspect, VerifyStatus,
};
use tandem_core::volume::{LegId, LegState, VolumeChange, VolumeId};
use tandem_core::{ClusterId, NodeId, StateChange};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::disk_ring::{DiskDone, DiskRing, RingReader};
use crate::fuse_export::FuseExport;
use crate::leg::{open_leg, Leg};
use crate::meta_store::{clip_ranges, MetaLocation, MetaStore};
use crate::nbd_serve::NbdFrontend;
use crate::repl_secondary::{self, read_frames, SessionSpec};
use crate::transport::{self, PeerAddress};
use crate::volume_io::VolumeIo;

/// Inputs queued for the engine.
const ENGINE_QUEUE: usize = 1024;
/// Frames queued for one peer; a peer this far behind is treated as lost.
const PEER_QUEUE: usize = 4096;
/// How often the core gets `tick` (timeouts, resync pacing).
const TICK: Duration = Duration::from_millis(50);
/// Bound on action rounds after one input.
const MAX_DRAIN_ROUNDS: usize = 4096;

/// A client request for the engine.
pub enum ClientOp {
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Zeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
}

impl ClientOp {
    /// The bytes the request changes, if any.
    fn range(&self) -> Option<(u64, u64)> {
        match self {
            ClientOp::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            ClientOp::Flush => None,
            ClientOp::Trim { offset, len, .. } | ClientOp::Zeroes { offset, len, .. } => {
                Some((*offset, *len))
            }
        }
    }
}

/// What the engine task reacts to.
pub enum EngineInput {
    Client {
        op: ClientOp,
        done: std::sync::mpsc::Sender<bool>,
    },
    PeerUp {
        leg: LegId,
        generation: u64,
        writer: mpsc::Sender<Vec<u8>>,
    },
    PeerFrame {
        leg: LegId,
        generation: u64,
        bytes: Vec<u8>,
    },
    PeerDown {
        leg: LegId,
        generation: u64,
    },
    /// The cluster committed a leg state of this volume.
    LegState {
        leg: LegId,
        state: LegState,
        epoch: u64,
    },
    /// Demoted: refuse new requests, let in-flight ones complete on every leg, flush, end.
    Stop,
    /// Start an online verify of every UpToDate peer leg.
    Verify {
        repair: bool,
        answer: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
}

/// How long a demoted primary waits for its in-flight requests before giving up.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Where a peer leg is reached, for its dialer.
pub struct PeerTarget {
    pub leg: LegId,
    pub node: NodeId,
    pub address: PeerAddress,
    /// The other nodes that reach the leg (a shared array), tried in turn while the one in
    /// use cannot be reached: a shared leg outlives any one of its servers.
    pub others: Vec<(NodeId, PeerAddress)>,
}

/// Each peer leg's replication as the engine last saw it, for `volume show`.
pub type SyncBoard = Arc<std::sync::Mutex<BTreeMap<LegId, SyncStatus>>>;

/// What the engine needs to dial peers and report leg states.
pub struct EngineContext {
    pub cluster: ClusterId,
    pub me: NodeId,
    pub volume: VolumeId,
    pub tls: Arc<rustls::ClientConfig>,
    pub proposals: mpsc::Sender<StateChange>,
    pub board: SyncBoard,
    pub lease: Arc<crate::volume_io::LeaseGate>,
}

/// The frontends' handle on a mirrored volume.
pub struct EngineHandle {
    inputs: mpsc::Sender<EngineInput>,
    leg: Arc<Leg>,
    /// Reads go straight to the local leg through its ring (they change nothing to replicate).
    reader: RingReader,
    lease: Arc<crate::volume_io::LeaseGate>,
}

impl EngineHandle {
    fn call(&self, op: ClientOp) -> io::Result<()> {
        self.lease.check()?;
        let (done, answer) = std::sync::mpsc::channel();
        self.inputs
            .blocking_send(EngineInput::Client { op, done })
            .map_err(|_| io::Error::other("the volume is no longer primary here"))?;
        match answer.recv() {
            Ok(true) => Ok(()),
            // Requests waiting when the lease lapsed are failed unacknowledged.
            Ok(false) if !self.lease.holds() => Err(io::Error::other(
                "this node lost its lease while the request waited: not acknowledged",
            )),
            Ok(false) => Err(io::Error::other("the write failed on a leg")),
            Err(_) => Err(io::Error::other("the volume stopped being primary here")),
        }
    }
}

impl VolumeIo for EngineHandle {
    fn size(&self) -> u64 {
        self.leg.size()
    }

    fn read(&self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
        self.reader.read(offset, length)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let data = data.to_vec();
        self.call(ClientOp::Write { offset, data, fua })
    }

    fn flush(&self) -> io::Result<()> {
        self.call(ClientOp::Flush)
    }

    fn write_zeroes(&self, offset: u64, length: u64, _may_trim: bool) -> io::Result<()> {
        let (len, fua) = (length, false);
        self.call(ClientOp::Zeroes { offset, len, fua })
    }

    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        let (len, fua) = (length, false);
        self.call(ClientOp::Trim { offset, len, fua })
    }

    fn describe(&self) -> String {
        format!("mirrored volume on {}", self.leg.path().display())
    }
}

/// Everything a primary needs to run; the volume host builds it from the committed state.
pub struct PrimarySetup {
    pub my_leg: LegId,
    /// Legs this epoch's takeover outdated (see `VolumeInfo::takeover_outdated`).
    pub takeover_legs: Vec<LegId>,
    pub leg_path: std::path::PathBuf,
    pub meta: MetaLocation,
    pub size: u64,
    /// The volume's metadata granularities (for new metadata).
    pub granularity: tandem_core::volume::Granularity,
    pub peers: Vec<PeerTarget>,
    /// Other legs this node reaches (a dual array), each written by a secondary engine here.
    pub local_peers: Vec<SessionSpec>,
    pub context: EngineContext,
    pub socket: std::path::PathBuf,
    /// Where the FUSE images are mounted (`<state-dir>/images`).
    pub images: std::path::PathBuf,
    pub name: String,
    pub leg_lock: Arc<tokio::sync::Mutex<()>>,
    /// What this node's secondary sessions left unconfirmed: resynced to every UpToDate peer.
    pub carried: crate::repl_secondary::Carried,
}

/// A channel to a primary's engine, made before the engine runs.
pub fn engine_channel() -> (mpsc::Sender<EngineInput>, mpsc::Receiver<EngineInput>) {
    mpsc::channel(ENGINE_QUEUE)
}

/// Runs a volume's primary: takes the leg lock, opens the leg, dials the peers, serves NBD,
/// and drives the engine until the task is aborted (the volume host does that when the state
/// says this node is no longer primary in this epoch).
pub async fn run_primary(
    setup: PrimarySetup,
    primary: Primary,
    inputs: mpsc::Sender<EngineInput>,
    receiver: mpsc::Receiver<EngineInput>,
) {
    let exclusive = setup.leg_lock.clone().lock_owned().await;
    let _flush = FlushOnEnd(setup.leg_path.clone());
    let (leg, primary, keeper) = match prepare(&setup, primary) {
        Ok(prepared) => prepared,
        Err(error) => return tracing::error!("volume {}: cannot be primary: {error}", setup.name),
    };
    // The ring holds the leg lock until its last operation finished.
    let (ring, disk_done) = match DiskRing::start(leg.clone(), Box::new(exclusive)) {
        Ok(ring) => ring,
        Err(error) => return tracing::error!("volume {}: io_uring: {error}", setup.name),
    };
    let mut dialers = JoinSet::new();
    let context = &setup.context;
    let mut peer_legs: Vec<LegId> = setup.peers.iter().map(|peer| peer.leg).collect();
    peer_legs.extend(setup.local_peers.iter().map(|spec| spec.leg));
    for spec in setup.local_peers {
        dialers.spawn(link_local(spec, inputs.clone()));
    }
    for peer in setup.peers {
        let identity = (context.cluster, context.me, context.volume);
        dialers.spawn(dial_peer(
            peer,
            inputs.clone(),
            context.tls.clone(),
            identity,
        ));
    }
    let handle: Arc<dyn VolumeIo> = Arc::new(EngineHandle {
        inputs,
        leg: leg.clone(),
        reader: ring.reader(),
        lease: setup.context.lease.clone(),
    });
    let _image = start_image(&setup.images, &setup.name, handle.clone());
    let _frontend = match NbdFrontend::start(&setup.socket, &setup.name, handle) {
        Ok(frontend) => frontend,
        Err(error) => {
            return tracing::error!(
                "volume {}: NBD socket {}: {error}",
                setup.name,
                setup.socket.display()
            );
        }
    };
    tracing::info!(
        "volume {} primary here in epoch {}: NBD on {}",
        setup.name,
        primary.epoch(),
        setup.socket.display()
    );
    let disk = (ring, disk_done);
    run_engine(
        primary,
        leg,
        disk,
        receiver,
        setup.context,
        peer_legs,
        keeper,
    )
    .await;
}

/// A client waiting for its request, with the byte range it changes (for the activity log).
type Waiting = (std::sync::mpsc::Sender<bool>, Option<(u64, u64)>);

/// The engine's state besides the core.
struct Engine {
    primary: Primary,
    leg: Arc<Leg>,
    /// The leg's io_uring: disk operations are submitted here and complete later.
    ring: DiskRing,
    context: EngineContext,
    started: Instant,
    links: HashMap<LegId, (u64, mpsc::Sender<Vec<u8>>)>,
    /// Clients waiting, with the range their request covers (for the activity log).
    waiting: HashMap<u64, Waiting>,
    /// Requests whose clients were answered with an error when the lease lapsed, but which
    /// the core still carries: their activity-log extent stays hot until the core is done.
    abandoned: HashMap<u64, Option<(u64, u64)>>,
    next_request: u64,
    /// When the demotion began, if it did.
    stopping_since: Option<Instant>,
    peer_legs: Vec<LegId>,
    keeper: BitmapKeeper,
    /// Per peer leg: (resynced bytes, at ms, rate in bytes/s) at the last publication.
    rates: HashMap<LegId, (u64, u64, u64)>,
}

async fn run_engine(
    primary: Primary,
    leg: Arc<Leg>,
    (ring, mut disk_done): (DiskRing, mpsc::UnboundedReceiver<DiskDone>),
    mut inputs: mpsc::Receiver<EngineInput>,
    context: EngineContext,
    peer_legs: Vec<LegId>,
    keeper: BitmapKeeper,
) {
    let mut engine = Engine {
        primary,
        leg,
        ring,
        context,
        started: Instant::now(),
        links: HashMap::new(),
        waiting: HashMap::new(),
        abandoned: HashMap::new(),
        next_request: 1,
        stopping_since: None,
        peer_legs,
        keeper,
        rates: HashMap::new(),
    };
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            input = inputs.recv() => match input {
                Some(input) => {
                    engine.primary.set_time(engine.now());
                    engine.on_input(input)
                }
                None => break,
            },
            Some(done) = disk_done.recv() => {
                engine.primary.set_time(engine.now());
                engine.disk_completed(done)
            }
            _ = ticker.tick() => {
                let now = engine.now();
                engine.primary.tick(now);
                engine.fail_waiting_without_lease();
            }
        }
        engine.drain();
        engine.keeper.write_changed(&mut engine.primary);
        let now = engine.now();
        engine.publish(now);
        if engine.drained() {
            break;
        }
    }
}

impl Engine {
    /// A node that lost its lease must stop writing (DESIGN.md §5 rule 2), and requests
    /// frozen until a lost peer is committed Outdated would wait forever without quorum. They
    /// were never acknowledged, so they are answered with an error now: the file system on
    /// top sees I/O errors, its unmount can finish, and the agent can stop the group.
    fn fail_waiting_without_lease(&mut self) {
        if self.waiting.is_empty() || self.context.lease.holds() {
            return;
        }
        tracing::warn!(
            "volume {}: this node lost its lease: {} waiting request(s) fail (never \
             acknowledged)",
            self.context.volume,
            self.waiting.len()
        );
        for (request, (done, range)) in self.waiting.drain() {
            let _ = done.send(false);
            self.abandoned.insert(request, range);
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn on_input(&mut self, input: EngineInput) {
        let now = self.now();
        let result = match input {
            EngineInput::Client { done, .. } if self.stopping_since.is_some() => {
                let _ = done.send(false);
                return;
            }
            EngineInput::Client { op, done } => return self.on_client(now, op, done),
            EngineInput::Stop => {
                self.stopping_since.get_or_insert_with(Instant::now);
                return;
            }
            EngineInput::Verify { repair, answer } => {
                let _ = answer.send(self.start_verify(now, repair));
                return;
            }
            EngineInput::PeerUp {
                leg,
                generation,
                writer,
            } => {
                self.links.insert(leg, (generation, writer));
                self.primary.peer_connected(now, leg)
            }
            EngineInput::PeerFrame {
                leg,
                generation,
                bytes,
            } if self.is_current(leg, generation) => self.primary.peer_message(leg, &bytes),
            EngineInput::PeerDown { leg, generation } if self.is_current(leg, generation) => {
                self.links.remove(&leg);
                self.primary.peer_lost(leg)
            }
            EngineInput::PeerFrame { .. } | EngineInput::PeerDown { .. } => Ok(()),
            EngineInput::LegState { leg, state, epoch } => {
                self.primary.leg_state_committed(leg, state, epoch)
            }
        };
        if let Err(error) = result {
            tracing::warn!("volume {}: {error}", self.context.volume);
        }
    }

    /// Demoted and done: nothing in flight (or the wait gave up), and the leg flushed.
    fn drained(&mut self) -> bool {
        let Some(since) = self.stopping_since else {
            return false;
        };
        let in_flight = self.primary.in_flight();
        if in_flight > 0 && since.elapsed() < DRAIN_LIMIT {
            return false;
        }
        if in_flight > 0 {
            tracing::error!(
                "volume {}: demoted with {in_flight} requests still waiting for a leg after {:?}; \
                 their ranges may differ between legs until the next resync",
                self.context.volume,
                DRAIN_LIMIT
            );
        }
        let leg = self.leg.clone();
        if let Err(error) = tokio::task::block_in_place(|| leg.flush()) {
            tracing::error!(
                "leg {}: flush on demotion failed: {error}",
                leg.path().display()
            );
        }
        self.keeper.close_clean(&mut self.primary);
        tracing::info!(
            "volume {}: demoted cleanly; frontend stopped",
            self.context.volume
        );
        true
    }

    /// Starts a verify of every peer leg that can be verified (committed UpToDate, link up).
    fn start_verify(&mut self, now: u64, repair: bool) -> Result<String, String> {
        let mut started = Vec::new();
        let mut refused = Vec::new();
        for &leg in &self.peer_legs {
            match self.primary.start_verify(now, leg, repair) {
                Ok(()) => started.push(leg.to_string()),
                Err(error) => refused.push(format!("leg {leg}: {error}")),
            }
        }
        if started.is_empty() {
            let reason = if refused.is_empty() {
                "the volume has no peer leg".to_string()
            } else {
                refused.join("; ")
            };
            return Err(format!("nothing to verify: {reason}"));
        }
        let what = if repair {
            "verify with repair"
        } else {
            "verify"
        };
        Ok(format!("{what} started on leg {}", started.join(", ")))
    }

    /// Refreshes the sync board from the core (after every input, so status is current).
    fn publish(&mut self, now: u64) {
        let mut board = BTreeMap::new();
        for &leg in &self.peer_legs {
            let Some(peer) = self.primary.peer_status(leg) else {
                continue;
            };
            let (done, total) = self.primary.progress(leg);
            let (last_done, last_at, last_rate) =
                self.rates.get(&leg).copied().unwrap_or((done, now, 0));
            let rate = if now >= last_at + 1000 {
                let rate = done.saturating_sub(last_done) * 1000 / (now - last_at);
                self.rates.insert(leg, (done, now, rate));
                rate
            } else {
                self.rates.entry(leg).or_insert((done, now, last_rate));
                last_rate
            };
            let remaining = total.saturating_sub(done);
            board.insert(
                leg,
                SyncStatus {
                    link: link_name(peer.link).to_string(),
                    mode: mode_name(peer.mode).to_string(),
                    out_of_sync_bytes: peer.dirty_bytes,
                    done_bytes: done,
                    total_bytes: total,
                    resync_bytes_sent: self.primary.resync_bytes_sent(leg),
                    resync_zero_bytes_sent: self.primary.resync_zero_bytes_sent(leg),
                    rate_bytes_per_sec: rate,
                    eta_secs: (rate > 0 && remaining > 0).then(|| remaining.div_ceil(rate)),
                    verify: self.primary.verify_status(leg).map(verify_report),
                },
            );
        }
        if let Ok(mut shared) = self.context.board.lock() {
            *shared = board;
        }
    }

    fn is_current(&self, leg: LegId, generation: u64) -> bool {
        self.links
            .get(&leg)
            .is_some_and(|(current, _)| *current == generation)
    }

    fn on_client(&mut self, now: u64, op: ClientOp, done: std::sync::mpsc::Sender<bool>) {
        let request = self.next_request;
        self.next_request += 1;
        let range = op.range();
        if let Some((offset, len)) = range {
            if let Err(error) = self.keeper.begin_write(&mut self.primary, offset, len) {
                tracing::warn!("volume {}: request refused: {error}", self.context.volume);
                let _ = done.send(false);
                return;
            }
        }
        let accepted = match op {
            ClientOp::Write { offset, data, fua } => {
                self.primary.client_write(now, request, offset, data, fua)
            }
            ClientOp::Flush => self.primary.client_flush(now, request),
            ClientOp::Trim { offset, len, fua } => {
                self.primary.client_trim(now, request, offset, len, fua)
            }
            ClientOp::Zeroes { offset, len, fua } => self
                .primary
                .client_write_zeroes(now, request, offset, len, fua),
        };
        match accepted {
            Ok(()) => {
                self.waiting.insert(request, (done, range));
            }
            Err(error) => {
                tracing::warn!("volume {}: request refused: {error}", self.context.volume);
                if let Some((offset, len)) = range {
                    self.keeper.end_write(offset, len);
                }
                let _ = done.send(false);
            }
        }
    }

    /// Carries out the core's actions until it has none.
    fn drain(&mut self) {
        for _ in 0..MAX_DRAIN_ROUNDS {
            let actions = self.primary.take_actions();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.perform(action);
            }
        }
        tracing::error!(
            "volume {}: the replication core kept producing work",
            self.context.volume
        );
    }

    fn perform(&mut self, action: PrimaryAction) {
        match action {
            PrimaryAction::Send { leg, bytes } => self.send(leg, bytes),
            PrimaryAction::Disk(op) => self.run_disk(op),
            PrimaryAction::Complete { req_id, ok } => {
                if let Some((done, range)) = self.waiting.remove(&req_id) {
                    if let Some((offset, len)) = range {
                        self.keeper.end_write(offset, len);
                    }
                    let _ = done.send(ok);
                } else if let Some(Some((offset, len))) = self.abandoned.remove(&req_id) {
                    self.keeper.end_write(offset, len);
                }
            }
            PrimaryAction::ProposeLegState { leg, state, epoch } => {
                let change = StateChange::Volume(VolumeChange::SetLegState {
                    volume: self.context.volume,
                    leg,
                    state,
                    epoch,
                });
                if self.context.proposals.try_send(change).is_err() {
                    tracing::warn!(
                        "volume {}: leg-state proposal queue full; the core retries",
                        self.context.volume
                    );
                }
            }
            PrimaryAction::DropLink { leg, reason } => {
                tracing::warn!(
                    "volume {}: dropping the link to leg {leg}: {reason}",
                    self.context.volume
                );
                self.links.remove(&leg);
            }
            PrimaryAction::Note(note) => tracing::info!("volume {}: {note}", self.context.volume),
        }
    }

    fn send(&mut self, leg: LegId, bytes: Vec<u8>) {
        let Some((_, writer)) = self.links.get(&leg) else {
            return;
        };
        if writer.try_send(bytes).is_err() {
            tracing::warn!(
                "volume {}: leg {leg} is not keeping up; link dropped",
                self.context.volume
            );
            self.links.remove(&leg);
            if let Err(error) = self.primary.peer_lost(leg) {
                tracing::warn!("volume {}: {error}", self.context.volume);
            }
        }
    }

    fn run_disk(&mut self, op: tandem_core::replication::DiskOp) {
        let id = op.id;
        if let Err(error) = self.ring.submit(op) {
            tracing::error!("leg {}: {error}", self.leg.path().display());
            if let Err(error) = self.primary.disk_done(id, false) {
                tracing::error!("replication core refused a completion: {error}");
            }
        }
    }

    /// A disk operation the ring finished.
    fn disk_completed(&mut self, done: DiskDone) {
        let reported = match done.result {
            Ok(Some(data)) => self.primary.disk_read_done(done.id, data),
            Ok(None) => self.primary.disk_done(done.id, true),
            Err(error) => {
                tracing::error!("leg {}: {error}", self.leg.path().display());
                self.primary.disk_done(done.id, false)
            }
        };
        if let Err(error) = reported {
            tracing::error!("replication core refused a completion: {error}");
        }
    }
}

fn verify_report(status: VerifyStatus) -> VerifyReport {
    const SHOWN: usize = 64;
    VerifyReport {
        done_bytes: status.done_bytes,
        total_bytes: status.total_bytes,
        mismatches: status.mismatches.into_iter().take(SHOWN).collect(),
        mismatched_bytes: status.mismatched_bytes,
        repair: status.repair,
        finished: status.finished,
        aborted: status.aborted,
    }
}

fn link_name(link: LinkState) -> &'static str {
    match link {
        LinkState::Down => "down",
        LinkState::Connecting => "connecting",
        LinkState::Up => "up",
    }
}

fn mode_name(mode: PeerMode) -> &'static str {
    match mode {
        PeerMode::Sync => "sync",
        PeerMode::Failing => "failing",
        PeerMode::Behind => "behind",
        PeerMode::Promoting => "promoting",
    }
}

/// Opens the metadata (refusing a foreign or corrupt file before the leg is touched) and the
/// leg, and builds the core with the persisted bitmaps and the leg's holes.
fn prepare(
    setup: &PrimarySetup,
    mut primary: Primary,
) -> Result<(Arc<Leg>, Primary, BitmapKeeper), String> {
    let context = &setup.context;
    let expect = Expectation {
        cluster: context.cluster,
        volume: context.volume,
        leg: setup.my_leg,
    };
    let store = MetaStore::open(&setup.meta, expect, setup.size, setup.granularity)
        .map_err(|e| e.to_string())?;
    let leg = open_leg(&setup.meta, &setup.leg_path, setup.size).map_err(|e| e.to_string())?;
    let leg = Arc::new(leg);
    let holes = leg.holes(tandem_core::replication::MAX_SKIP_RANGES);
    if let Err(error) = primary.set_skip_ranges(&holes) {
        tracing::warn!(
            "volume {}: holes not used for the initial sync: {error}",
            setup.name
        );
    }
    // Every peer leg, remote or local (a dual array's other legs): each gets a bitmap slot
    // and, after a crash, the hot extents.
    let mut peers: Vec<(LegId, NodeId)> = setup.peers.iter().map(|p| (p.leg, p.node)).collect();
    peers.extend(setup.local_peers.iter().map(|s| (s.leg, context.me)));
    if store.superblock().last_epoch < primary.epoch() {
        // The first run of a takeover epoch: the outdated legs had everything until now.
        for &leg in &setup.takeover_legs {
            primary.track_from_now(leg).map_err(|e| e.to_string())?;
        }
    }
    let keeper = BitmapKeeper::open(store, &peers, &mut primary, setup)?;
    let cache_lost = cache_lost_here(setup, primary.epoch())?;
    let unconfirmed = match crate::repl_secondary::take_carried(&setup.carried) {
        _ if cache_lost => vec![(0, setup.size)],
        Suspect::Everything => vec![(0, setup.size)],
        Suspect::Ranges(ranges) => ranges,
    };
    if !unconfirmed.is_empty() {
        // Writes this leg applied as a secondary that the old primary never confirmed: the
        // other surviving legs may lack them (or have them while this leg does not).
        let what = "ranges applied unconfirmed under the old primary";
        let marks = (&unconfirmed[..], &setup.takeover_legs[..]);
        resync_to_up_to_date_peers(&mut primary, &peers, marks, &setup.name, what)?;
    }
    Ok((leg, primary, keeper))
}

/// Whether this node restarted since its private leg last served as a secondary (its page
/// cache, and the writes it held, may be gone: `cache_marker`); the marker is renewed for
/// this boot either way, since the caller resyncs the whole leg when it was.
fn cache_lost_here(setup: &PrimarySetup, epoch: u64) -> Result<bool, String> {
    let MetaLocation::Sidecar(path) = &setup.meta else {
        return Ok(false);
    };
    let marker = crate::cache_marker::CacheMarker::next_to(path);
    let boot = crate::cache_marker::boot_id().map_err(|e| format!("boot id: {e}"))?;
    let place = || marker.path().display().to_string();
    let lost = marker
        .lost_in(&boot)
        .map_err(|e| format!("{}: {e}", place()))?;
    marker
        .record(&boot, epoch)
        .map_err(|e| format!("{}: {e}", place()))?;
    if let Some(served) = lost {
        tracing::warn!(
            "volume {}: this node restarted since its leg last served epoch {served}: what its \
             disk cache held may be gone, so the whole leg is resynced to its UpToDate peers",
            setup.name
        );
    }
    Ok(lost.is_some())
}

/// Ranges where this leg may hold writes an UpToDate peer lacks (or lack writes it has) are
/// resynced to every UpToDate peer from this leg; the peer stays UpToDate (it has every
/// acknowledged write). Two sources, named by `what`: after a crash as primary, the activity
/// log's hot extents (peers that were behind get a full resync, since their bitmaps on disk
/// are not trusted after a crash); after serving as a secondary, what the old primary never
/// confirmed (`repl_secondary::Carried`). A leg this epoch's takeover outdated is tracked from
/// now, so it gets those ranges too: with a shared leg taken over (a dual array), the crashed
/// primary may have written them to it unacknowledged.
fn resync_to_up_to_date_peers(
    primary: &mut Primary,
    peers: &[(LegId, NodeId)],
    (hot, takeover): (&[(u64, u64)], &[LegId]),
    name: &str,
    what: &str,
) -> Result<(), String> {
    let hot_bytes: u64 = hot.iter().map(|&(_, len)| len).sum();
    for &(leg, _) in peers {
        let up_to_date = primary
            .peer_status(leg)
            .is_some_and(|peer| peer.committed == LegState::UpToDate);
        if (up_to_date || takeover.contains(&leg)) && !hot.is_empty() {
            tracing::warn!("volume {name}: resyncing {hot_bytes} bytes of {what} to leg {leg}");
            primary
                .mark_out_of_sync(leg, hot)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Keeps the primary's metadata: the activity log and the per-peer bitmaps.
struct BitmapKeeper {
    store: MetaStore,
    slots: Vec<(LegId, u16)>,
    activity: ActivityLog,
}

impl BitmapKeeper {
    /// Loads the bitmaps a clean stop left (a crash left `primary_open` set: then they are not
    /// trusted and the core's default, all dirty for peers that are behind, stands), then
    /// marks this leg open as primary before the first write.
    fn open(
        mut store: MetaStore,
        peers: &[(LegId, NodeId)],
        primary: &mut Primary,
        setup: &PrimarySetup,
    ) -> Result<BitmapKeeper, String> {
        let name = &setup.name;
        let crashed = store.superblock().primary_open;
        let recovered = store.read_activity_log().map_err(|e| e.to_string())?;
        if crashed {
            tracing::warn!("volume {name}: the last primary run on this leg did not stop cleanly");
            let hot = clip_ranges(&recovered.resync_ranges(), setup.size);
            let marks = (&hot[..], &setup.takeover_legs[..]);
            resync_to_up_to_date_peers(primary, peers, marks, name, "hot extents")?;
        }
        let activity = ActivityLog::resume(&recovered);
        let mut slots = Vec::new();
        for &(leg, node) in peers {
            let Some(slot) = store.slot_for(leg, node).map_err(|e| e.to_string())? else {
                tracing::warn!("volume {name}: no free bitmap slot for leg {leg}; its bitmap lives in memory only");
                continue;
            };
            slots.push((leg, slot));
            // Bitmaps are trusted only from a clean stop as primary in this very epoch.
            let same_epoch = store.superblock().last_epoch == primary.epoch();
            let loaded = if crashed || !same_epoch {
                None
            } else {
                store.load_bitmap(slot).map_err(|e| e.to_string())?
            };
            let behind = primary
                .peer_status(leg)
                .is_some_and(|p| p.committed != LegState::UpToDate);
            if let (Some(bitmap), true) = (loaded, behind) {
                tracing::info!(
                    "volume {name}: leg {leg} owes {} bytes (persisted bitmap)",
                    bitmap.dirty_bytes()
                );
                primary
                    .set_peer_bitmap(leg, bitmap)
                    .map_err(|e| e.to_string())?;
            }
        }
        let in_use: Vec<u16> = slots.iter().map(|&(_, slot)| slot).collect();
        store
            .set_bitmaps_valid(&in_use, false)
            .map_err(|e| e.to_string())?;
        store
            .set_primary_open(true, primary.epoch())
            .map_err(|e| e.to_string())?;
        let mut keeper = BitmapKeeper {
            store,
            slots,
            activity,
        };
        keeper.write_all(primary);
        Ok(keeper)
    }

    /// Before a write: its extents must be hot in the persisted activity log (rule 1 of
    /// `legmeta`); a cold extent costs one transaction write and flush first, after the
    /// bitmap pages that changed (rule 2: an evicted extent's bits must already be on disk).
    fn begin_write(&mut self, primary: &mut Primary, offset: u64, len: u64) -> Result<(), String> {
        match self
            .activity
            .begin_write(offset, len)
            .map_err(|e| e.to_string())?
        {
            AlDecision::Proceed | AlDecision::AfterPersist { .. } => Ok(()),
            AlDecision::PersistFirst(transaction) => {
                self.write_changed(primary);
                let stored =
                    tokio::task::block_in_place(|| self.store.write_transaction(&transaction));
                stored.map_err(|e| e.to_string())?;
                self.activity
                    .transaction_persisted(transaction.seq())
                    .map_err(|e| e.to_string())
            }
            AlDecision::Wait => {
                Err("every activity-log slot holds writes in flight; retry".to_string())
            }
        }
    }

    fn end_write(&mut self, offset: u64, len: u64) {
        if let Err(error) = self.activity.end_write(offset, len) {
            tracing::error!("activity log: {error}");
        }
    }

    /// Writes the pages that changed since the last call (lazily; a crash distrusts them).
    fn write_changed(&mut self, primary: &mut Primary) {
        for &(leg, slot) in &self.slots {
            let Some(bitmap) = primary.peer_bitmap_mut(leg) else {
                continue;
            };
            let pages = bitmap.take_dirty_pages();
            if !pages.is_empty() {
                if let Err(error) = self.store.store_pages(slot, bitmap, &pages) {
                    tracing::error!("{error}");
                }
            }
        }
    }

    fn write_all(&mut self, primary: &mut Primary) {
        for &(leg, slot) in &self.slots {
            if let Some(bitmap) = primary.peer_bitmap(leg) {
                let pages: Vec<u32> = (0..bitmap.page_count()).collect();
                if let Err(error) = self.store.store_pages(slot, bitmap, &pages) {
                    tracing::error!("{error}");
                }
            }
        }
    }

    /// A clean stop: every bitmap written and synced, then marked valid, then primary closed.
    fn close_clean(&mut self, primary: &mut Primary) {
        self.write_all(primary);
        let in_use: Vec<u16> = self.slots.iter().map(|&(_, slot)| slot).collect();
        let closed = self
            .store
            .sync()
            .and_then(|_| self.store.set_bitmaps_valid(&in_use, true))
            .and_then(|_| self.store.set_primary_open(false, primary.epoch()));
        if let Err(error) = closed {
            tracing::error!("{error}");
        }
    }
}

/// The FUSE image of the volume, unmounted off the async threads when dropped.
struct ImageGuard(Option<FuseExport>);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        if let Some(export) = self.0.take() {
            // Unmounting waits for in-flight I/O; keep that off the runtime's threads.
            tokio::task::spawn_blocking(move || drop(export));
        }
    }
}

/// Mounts the volume's image at `<state-dir>/images/<volume>/<volume>.img`; a failure is
/// logged and the volume is still served over NBD.
fn start_image(images: &std::path::Path, name: &str, io: Arc<dyn VolumeIo>) -> ImageGuard {
    let dir = images.join(name);
    match tokio::task::block_in_place(|| FuseExport::start(&dir, name, io)) {
        Ok(export) => {
            tracing::info!("volume {name}: image {}", export.image_path().display());
            ImageGuard(Some(export))
        }
        Err(error) => {
            tracing::error!("volume {name}: no FUSE image: {error}");
            ImageGuard(None)
        }
    }
}

/// Keeps one replication stream to a peer leg open, reconnecting with backoff. A node that
/// cannot be reached is given up for the next one that reaches the leg (only a failed dial
/// moves on: after a link breaks, its node is dialed again first).
async fn dial_peer(
    peer: PeerTarget,
    engine: mpsc::Sender<EngineInput>,
    tls: Arc<rustls::ClientConfig>,
    (cluster, me, volume): (ClusterId, NodeId, VolumeId),
) {
    let leg = peer.leg;
    let mut reach = vec![(peer.node, peer.address)];
    reach.extend(peer.others);
    let mut at = 0;
    let mut backoff = Duration::from_millis(100);
    for generation in 1.. {
        let (node, address) = &reach[at % reach.len()];
        let opened =
            transport::open_replication(address, tls.clone(), cluster, me, *node, volume).await;
        let stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(
                    "volume {volume}: cannot reach leg {leg} on {}: {error}",
                    address.name
                );
                at += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if !carry_link(leg, generation, stream, &engine, &address.name).await {
            return;
        }
        let _ = engine.send(EngineInput::PeerDown { leg, generation }).await;
        tokio::time::sleep(backoff).await;
    }
}

/// Buffer of the in-memory link to a local leg (frames larger than this are carried in parts).
const LOCAL_LINK_BUFFER: usize = 4 << 20;

/// Keeps the link to another leg this node reaches (a dual array): a secondary engine on that
/// leg, in this daemon, fed the very frames a remote leg gets over TLS through an in-memory
/// stream. So a local leg follows the rules of a remote one: a write is acknowledged when it
/// has it, a failed leg is frozen and committed Outdated, then resynced; verify compares it.
async fn link_local(spec: SessionSpec, engine: mpsc::Sender<EngineInput>) {
    let _flush = FlushOnEnd(spec.leg_path.clone());
    let leg = spec.leg;
    let mut backoff = Duration::from_millis(100);
    for generation in 1.. {
        let (ours, theirs) = tokio::io::duplex(LOCAL_LINK_BUFFER);
        let secondary = repl_secondary::run(spec.clone(), Box::new(theirs));
        let name = format!("this node ({})", spec.leg_path.display());
        let carried = carry_link(leg, generation, Box::new(ours), &engine, &name);
        let began = Instant::now();
        let ((), alive) = tokio::join!(secondary, carried);
        if !alive || engine.is_closed() {
            return;
        }
        let _ = engine.send(EngineInput::PeerDown { leg, generation }).await;
        // A link that ran a while ended for a reason of its own: retry soon. One that ends
        // at once (the leg or its metadata refused) backs off up to 2 s between attempts.
        if began.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Flushes a leg when a role on it ends in any way, an abort (demotion, new epoch) included:
/// with a shared array the next writer may be another server, reading the array itself, and
/// it must find every write this one accepted there rather than in this host's page cache.
struct FlushOnEnd(std::path::PathBuf);

impl Drop for FlushOnEnd {
    fn drop(&mut self) {
        let path = self.0.clone();
        let flush = move || {
            let synced = std::fs::File::open(&path).and_then(|file| file.sync_data());
            if let Err(error) = synced {
                tracing::warn!(
                    "leg {}: flush at the end of a role: {error}",
                    path.display()
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(flush)),
            Err(_) => flush(),
        }
    }
}

/// Moves frames both ways until either side ends; `false` when the engine is gone.
async fn carry_link(
    leg: LegId,
    generation: u64,
    stream: Box<dyn transport::ByteStream>,
    engine: &mpsc::Sender<EngineInput>,
    name: &str,
) -> bool {
    let (reader, mut writer) = tokio::io::split(stream);
    let (writer_tx, mut outgoing) = mpsc::channel(PEER_QUEUE);
    let up = EngineInput::PeerUp {
        leg,
        generation,
        writer: writer_tx,
    };
    if engine.send(up).await.is_err() {
        return false;
    }
    tracing::info!("replicating to leg {leg} on {name}");
    let (frames_tx, mut frames) = mpsc::channel(256);
    let reader_task = tokio::spawn(read_frames(reader, frames_tx, name.to_string()));
    loop {
        tokio::select! {
            bytes = outgoing.recv() => match bytes {
                Some(bytes) => {
                    // TLS may keep the tail of a record buffered until flushed: flush whenever
                    // the queue runs dry, or the last frame of a burst can sit unsent.
                    let idle = outgoing.is_empty();
                    let sent = writer.write_all(&bytes).await.is_ok();
                    if !sent || (idle && writer.flush().await.is_err()) {
                        break;
                    }
                }
                None => break,
            },
            frame = frames.recv() => match frame {
                Some(bytes) => {
                    let input = EngineInput::PeerFrame { leg, generation, bytes };
                    if engine.send(input).await.is_err() {
                        reader_task.abort();
                        return false;
                    }
                }
                None => break,
            },
        }
    }
    reader_task.abort();
    tracing::info!("replication link to leg {leg} on {name} closed");
    true
}
