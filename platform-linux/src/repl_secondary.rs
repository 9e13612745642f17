//! The secondary end of a volume's replication on this node: one task per replication stream
//! a primary opened, driving `tandem_core::replication::Secondary` and this node's leg.
//!
//! Exists to keep the data path of a secondary in one place: frames in, disk operations on the
//! leg, acknowledgements out, only after the disk did the work. The committed epoch arrives
//! through a watch channel; when it moves on, the core drops the old primary's link (rule 2).
//! The session holds the volume's leg lock for its whole life, so this node never writes the
//! leg as a secondary and as a primary at the same time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::legmeta::Expectation;
use tandem_core::replication::{wire, Ident, Message, Secondary, SecondaryAction, Suspect};
use tandem_core::volume::LegId;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, Mutex};

use crate::cache_marker::{self, CacheMarker};
use crate::disk_ring::{DiskDone, DiskRing, RingStopped};
use crate::leg::Leg;
use crate::meta_store::{clip_ranges, MetaLocation, MetaStore};
use crate::transport::ByteStream;

/// Bound on action rounds after one input (each disk completion may release more work).
const MAX_DRAIN_ROUNDS: usize = 4096;
/// Frames read ahead of the session.
const READ_AHEAD: usize = 256;

/// What ended secondary sessions of a volume on this node left unconfirmed
/// (`Secondary::unconfirmed`): reported as suspect to the next primary that connects, or
/// marked for resync by this node if it becomes the primary (`repl_primary::prepare`). After
/// a takeover the surviving legs may differ exactly there. In memory: a crash of this daemon
/// loses it (docs/reliability.md).
pub type Carried = Arc<std::sync::Mutex<Suspect>>;

/// Takes what a volume's ended sessions left unconfirmed (nothing, if the lock is poisoned:
/// a panic elsewhere already stopped the data path).
pub fn take_carried(carried: &Carried) -> Suspect {
    carried
        .lock()
        .map(|mut suspect| std::mem::take(&mut *suspect))
        .unwrap_or_default()
}

/// The session's core; when the session ends, however it ends (the task may be aborted), what
/// it left unconfirmed is carried to the volume's next session or primary.
struct CarryOnDrop {
    secondary: Secondary,
    carried: Carried,
    cache: Option<CacheWatch>,
}

/// A private leg's cache marker (`cache_marker`), as this session found it.
struct CacheWatch {
    marker: CacheMarker,
    boot: String,
    /// The marker is from another boot: the cache may have been lost in this epoch.
    lost_in: Option<u64>,
}

/// Reads (and, when it is of this boot already or missing, renews) the cache marker of a
/// private leg before the session accepts anything; shared legs are written through and
/// have none.
fn watch_cache(meta: &MetaLocation, epoch: u64) -> std::io::Result<Option<CacheWatch>> {
    let MetaLocation::Sidecar(path) = meta else {
        return Ok(None);
    };
    let marker = CacheMarker::next_to(path);
    let boot = cache_marker::boot_id()?;
    let lost_in = marker.lost_in(&boot)?;
    if lost_in.is_none() {
        marker.record(&boot, epoch)?;
    }
    Ok(Some(CacheWatch {
        marker,
        boot,
        lost_in,
    }))
}

impl Drop for CarryOnDrop {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.as_ref().filter(|c| c.lost_in.is_some()) {
            if self.secondary.report_heard() {
                // A primary heard that the cache may be lost: the marker may start anew.
                let epoch = self.secondary.epoch();
                if let Err(error) = cache.marker.record(&cache.boot, epoch) {
                    tracing::warn!("{}: {error}", cache.marker.path().display());
                }
            }
        }
        let unconfirmed = self.secondary.unconfirmed();
        if let Ok(mut carried) = self.carried.lock() {
            // A union: with a dual array, sessions on two legs of one volume may both end
            // before the next primary or session takes what they left.
            *carried = std::mem::take(&mut *carried).union(unconfirmed);
        }
    }
}

/// What a session needs to start.
#[derive(Clone)]
pub struct SessionSpec {
    pub ident: Ident,
    pub leg: LegId,
    pub leg_path: PathBuf,
    /// Where the leg's metadata lives (identity checked before the leg is touched).
    pub meta: MetaLocation,
    pub size: u64,
    /// The volume's metadata granularities (for new metadata).
    pub granularity: tandem_core::volume::Granularity,
    pub epoch: watch::Receiver<u64>,
    pub leg_lock: Arc<Mutex<()>>,
    pub peer: String,
    pub carried: Carried,
}

/// Runs one replication stream from a primary until it closes or is dropped.
pub async fn run(spec: SessionSpec, stream: Box<dyn ByteStream>) {
    let exclusive = spec.leg_lock.clone().lock_owned().await;
    let expect = Expectation {
        cluster: spec.ident.cluster,
        volume: spec.ident.volume,
        leg: spec.leg,
    };
    let store = match MetaStore::open(&spec.meta, expect, spec.size, spec.granularity) {
        Ok(store) => store,
        Err(error) => return tracing::error!("replication from {} refused: {error}", spec.peer),
    };
    let cache = match watch_cache(&spec.meta, *spec.epoch.borrow()) {
        Ok(cache) => cache,
        Err(error) => {
            return tracing::error!(
                "replication from {} refused: cache marker: {error}",
                spec.peer
            )
        }
    };
    let suspect = suspect_ranges(&store, spec.size).union(take_carried(&spec.carried));
    let leg = match crate::leg::open_leg(&spec.meta, &spec.leg_path, spec.size) {
        Ok(leg) => Arc::new(leg),
        Err(error) => {
            return tracing::error!("replication from {}: {error}", spec.peer);
        }
    };
    // The ring holds the leg lock until its last operation finished.
    let (ring, mut disk_done) = match DiskRing::start(leg.clone(), Box::new(exclusive)) {
        Ok(ring) => ring,
        Err(error) => {
            return tracing::error!("replication from {}: io_uring: {error}", spec.peer);
        }
    };
    tracing::info!(
        "volume {}: replication stream from {} onto leg {}",
        spec.ident.volume,
        spec.peer,
        spec.leg_path.display()
    );
    let started = Instant::now();
    let mut epoch = spec.epoch.clone();
    let secondary = Secondary::new(spec.ident, spec.leg, spec.size, *epoch.borrow());
    // Dropped before the ring (declared after it), so the carry is written before the leg
    // lock is released to the next session or primary.
    let mut secondary = secondary.with_suspect(suspect);
    if let Some(epoch) = cache.as_ref().and_then(|c| c.lost_in) {
        tracing::warn!(
            "volume {}: this node restarted since leg {} last served epoch {epoch}: its disk \
             cache may have been lost, a later primary resyncs the whole leg",
            spec.ident.volume,
            spec.leg
        );
        secondary = secondary.with_cache_lost_in(epoch);
    }
    let mut session = CarryOnDrop {
        secondary,
        carried: spec.carried.clone(),
        cache,
    };
    let secondary = &mut session.secondary;
    let (reader, mut writer) = tokio::io::split(stream);
    let (frames_tx, mut frames) = mpsc::channel(READ_AHEAD);
    let reader_task = tokio::spawn(read_frames(reader, frames_tx, spec.peer.clone()));
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(bytes) => {
                    catch_up_epoch(&bytes, &mut epoch, secondary).await;
                    let now = started.elapsed().as_millis() as u64;
                    if let Err(error) = secondary.on_message(now, &bytes) {
                        tracing::warn!("replication from {}: {error}", spec.peer);
                    }
                }
                None => {
                    secondary.link_lost();
                    break;
                }
            },
            changed = epoch.changed() => {
                if changed.is_err() {
                    break;
                }
                secondary.set_epoch(*epoch.borrow());
            }
            Some(done) = disk_done.recv() => disk_completed(secondary, &leg, done),
        }
        if !drain(secondary, &ring, &mut writer, &spec.peer).await {
            break;
        }
    }
    reader_task.abort();
    drop(session);
    drop(ring);
    let _ = tokio::task::block_in_place(|| leg.flush());
    tracing::info!(
        "volume {}: replication stream from {} ended",
        spec.ident.volume,
        spec.peer
    );
}

/// How long a Hello from a newer epoch waits for this node to apply that epoch.
const EPOCH_CATCH_UP: Duration = Duration::from_secs(3);

/// A new primary dials as soon as its promotion is applied on its own node; this node may
/// apply the same commit a moment later. Rather than refuse the Hello (which would cost the
/// primary a reconnect, or outdate this leg), wait briefly for the committed epoch to arrive.
async fn catch_up_epoch(bytes: &[u8], epoch: &mut watch::Receiver<u64>, secondary: &mut Secondary) {
    let Ok(Message::Hello { epoch: wanted, .. }) = wire::decode(bytes) else {
        return;
    };
    let waited = epoch.wait_for(|current| *current >= wanted);
    let reached = match tokio::time::timeout(EPOCH_CATCH_UP, waited).await {
        Ok(Ok(current)) => Some(*current),
        _ => None,
    };
    if let Some(current) = reached {
        secondary.set_epoch(current);
    }
}

/// What this leg may hold that no other leg has: if this node crashed while primary, the
/// activity log's hot extents (sent in the HelloAck, so the new primary resyncs them too).
fn suspect_ranges(store: &MetaStore, size: u64) -> Suspect {
    if !store.superblock().primary_open {
        return Suspect::none();
    }
    match store.read_activity_log() {
        Ok(recovered) => Suspect::Ranges(clip_ranges(&recovered.resync_ranges(), size)),
        Err(error) => {
            tracing::warn!("{error}; the whole leg is suspect");
            Suspect::Everything
        }
    }
}

/// Reports a finished disk operation to the core.
fn disk_completed(secondary: &mut Secondary, leg: &Leg, done: DiskDone) {
    let reported = match done.result {
        Ok(Some(data)) => secondary.disk_read_done(done.id, data),
        Ok(None) => secondary.disk_done(done.id, true),
        Err(error) => {
            tracing::error!("leg {}: {error}", leg.path().display());
            secondary.disk_done(done.id, false)
        }
    };
    if let Err(error) = reported {
        tracing::error!("replication core refused a completion: {error}");
    }
}

/// Carries out the core's actions (disk operations are submitted, their completions come
/// back through the session loop); `false` when the link must close.
async fn drain(
    secondary: &mut Secondary,
    ring: &DiskRing,
    writer: &mut WriteHalf<Box<dyn ByteStream>>,
    peer: &str,
) -> bool {
    for _ in 0..MAX_DRAIN_ROUNDS {
        let actions = secondary.take_actions();
        if actions.is_empty() {
            // TLS may keep the tail of a record buffered until flushed.
            return writer.flush().await.is_ok();
        }
        for action in actions {
            match action {
                SecondaryAction::Send(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        return false;
                    }
                }
                SecondaryAction::Disk(op) => {
                    let id = op.id;
                    if ring.submit(op).is_err() {
                        tracing::error!("replication from {peer}: {}", RingStopped);
                        if let Err(error) = secondary.disk_done(id, false) {
                            tracing::error!("replication core refused a completion: {error}");
                        }
                    }
                }
                SecondaryAction::Drop { reason } => {
                    tracing::warn!("replication from {peer} dropped: {reason}");
                    return false;
                }
                SecondaryAction::Note(note) => tracing::info!("replication from {peer}: {note}"),
            }
        }
    }
    tracing::error!("replication from {peer}: the core kept producing work; dropping the link");
    false
}

/// Reads whole replication frames (header checked before buffering) into `frames`.
pub async fn read_frames(
    mut reader: ReadHalf<Box<dyn ByteStream>>,
    frames: mpsc::Sender<Vec<u8>>,
    peer: String,
) {
    let mut header = [0u8; wire::HEADER_LEN];
    loop {
        if reader.read_exact(&mut header).await.is_err() {
            return;
        }
        let total = match wire::frame_len(&header) {
            Ok(total) => total,
            Err(error) => {
                return tracing::warn!("malformed replication frame from {peer}: {error}");
            }
        };
        let mut bytes = header.to_vec();
        bytes.resize(total, 0);
        if reader
            .read_exact(&mut bytes[wire::HEADER_LEN..])
            .await
            .is_err()
        {
            return;
        }
        if frames.send(bytes).await.is_err() {
            return;
        }
    }
}
