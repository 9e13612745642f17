//! A leg's metadata on disk, laid out by `tandem_core::legmeta` (two superblock copies, the
//! activity-log ring, one bitmap area per peer slot), in one of two places:
//! - a **sidecar** file `<state-dir>/meta/vol<V>-leg<L>.meta` for a leg one node reaches;
//! - **internal**, at the end of the leg itself, for a leg several nodes reach (a shared
//!   array): whichever node opens the leg next (a takeover after a crash) must see the
//!   superblock's `primary_open` flag and the activity log the last writer left, which a
//!   sidecar in the crashed node's state dir would hide. The volume's data is the first
//!   `size` bytes of the leg; a leg file too short is grown (sparse), a block device too
//!   small is refused naming its size and the size needed.
//!
//! Exists so that a leg is tied to its cluster, volume and leg (a wrong, foreign or corrupt
//! metadata file is refused with its path and the leg is not touched), and so that a primary's
//! per-peer out-of-sync bitmaps survive a restart: a clean stop writes them and clears
//! `primary_open`; a primary that finds `primary_open` set crashed, and its bitmaps are not
//! trusted (the peers then need a full resync). Nothing here ever "repairs" metadata.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tandem_core::legmeta::SUPERBLOCK_MAGIC;
use tandem_core::legmeta::{
    pick_newest, superblock_probe, ActivityLog, AlTransaction, Expectation, LayoutParams,
    MetaError, MetaLayout, OutOfSync, Placement, Recovered, Superblock, META_BLOCK,
};
use tandem_core::volume::{Granularity, LegId, LegInfo};
use tandem_core::NodeId;

/// Why a leg's metadata cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum MetaStoreError {
    #[error("leg metadata {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("leg metadata {path}: {source}; refusing to use this leg (nothing was changed)")]
    Refused { path: PathBuf, source: MetaError },
    #[error(
        "leg {path}: it holds {actual} bytes, too small for the volume's {data} bytes of data \
         and its internal metadata: {needed} bytes needed; refusing to use this leg (nothing \
         was changed)"
    )]
    TooSmall {
        path: PathBuf,
        actual: u64,
        data: u64,
        needed: u64,
    },
    #[error(
        "leg metadata {path}: the superblocks at the end of the leg are blank but the \
         activity log next to them is not: damaged or foreign metadata; refusing to use this \
         leg (nothing was changed)"
    )]
    BlankSuperblocks { path: PathBuf },
    #[error("leg {path}: {what} is not a file or block device")]
    NotADisk { path: PathBuf, what: String },
}

/// Where a leg's metadata lives (decided by the committed state alone, so every node that
/// reaches the leg looks in the same place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaLocation {
    /// A file in this node's state dir; the whole leg is data.
    Sidecar(PathBuf),
    /// At the end of the leg at this path (file or block device).
    Internal(PathBuf),
}

impl MetaLocation {
    /// Internal for a leg more than one node reaches, a sidecar otherwise.
    pub fn for_leg(state_dir: &Path, volume: u64, leg: &LegInfo) -> MetaLocation {
        if leg.nodes.len() > 1 {
            MetaLocation::Internal(PathBuf::from(&leg.path))
        } else {
            MetaLocation::Sidecar(MetaStore::path_for(state_dir, volume, leg.id))
        }
    }

    /// The file the metadata is read from and written to.
    pub fn path(&self) -> &Path {
        match self {
            MetaLocation::Sidecar(path) | MetaLocation::Internal(path) => path,
        }
    }
}

/// The layout parameters of new metadata: the defaults, with the volume's granularities.
fn layout_params(placement: Placement, device: u64, granularity: Granularity) -> LayoutParams {
    LayoutParams {
        grain: granularity.bitmap_grain,
        extent_size: granularity.al_extent,
        ..LayoutParams::new(placement, device)
    }
}

/// The device size whose internal layout leaves exactly `data_size` bytes of data: the
/// metadata grows with the device (its bitmaps cover the whole device), so this is the
/// smallest fixed point of `size = data + metadata(size)`.
pub fn internal_device_size(data_size: u64, granularity: Granularity) -> Result<u64, MetaError> {
    let mut device = data_size;
    for _ in 0..64 {
        let metadata = MetaLayout::new(layout_params(Placement::Sidecar, device, granularity))?
            .metadata()
            .len;
        let next = data_size.checked_add(metadata).ok_or(MetaError::Overflow {
            what: "leg size with internal metadata",
        })?;
        if next == device {
            return Ok(device);
        }
        device = next;
    }
    Err(MetaError::Overflow {
        what: "leg size with internal metadata",
    })
}

/// Clips ranges (activity-log extents) to the volume's data: an internal layout on a block
/// device bigger than needed has extents past the volume's end.
pub fn clip_ranges(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .filter(|&&(offset, _)| offset < size)
        .map(|&(offset, len)| (offset, len.min(size - offset)))
        .collect()
}

/// An open metadata file and its current superblock.
pub struct MetaStore {
    file: File,
    path: PathBuf,
    superblock: Superblock,
    /// The volume's data size (an internal layout's data area may be larger).
    data_size: u64,
}

impl MetaStore {
    /// Where the metadata of `leg` of volume `volume` lives.
    pub fn path_for(state_dir: &Path, volume: u64, leg: LegId) -> PathBuf {
        state_dir
            .join("meta")
            .join(format!("vol{volume}-leg{leg}.meta"))
    }

    /// Opens a leg's metadata for a volume of `data_size` bytes, creating it when there is
    /// none yet; anything unexpected in existing metadata is refused and left as it is.
    /// New metadata is laid out with the volume's `granularity`; existing metadata keeps
    /// the granularities its superblock records.
    pub fn open(
        location: &MetaLocation,
        expect: Expectation,
        data_size: u64,
        granularity: Granularity,
    ) -> Result<MetaStore, MetaStoreError> {
        match location {
            MetaLocation::Sidecar(path) => Self::open_sidecar(path, expect, data_size, granularity),
            MetaLocation::Internal(path) => {
                Self::open_internal(path, expect, data_size, granularity)
            }
        }
    }

    /// Opens the sidecar file at `path`, creating it when the file does not exist yet.
    fn open_sidecar(
        path: &Path,
        expect: Expectation,
        data_size: u64,
        granularity: Granularity,
    ) -> Result<MetaStore, MetaStoreError> {
        let io = |source| MetaStoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        let refused = |source| MetaStoreError::Refused {
            path: path.to_path_buf(),
            source,
        };
        let superblock = if length == 0 {
            let params = layout_params(Placement::Sidecar, data_size, granularity);
            let layout = MetaLayout::new(params).map_err(refused)?;
            Superblock::new(expect.cluster, expect.volume, expect.leg, layout)
        } else {
            let superblock = read_superblock(&file, path, length, expect)?;
            superblock.check_device_size(data_size).map_err(refused)?;
            superblock
        };
        let mut store = MetaStore {
            file,
            path: path.to_path_buf(),
            superblock,
            data_size,
        };
        if length == 0 {
            store.format()?;
        }
        Ok(store)
    }

    /// Opens the metadata at the end of the leg at `path`. A leg with no metadata yet (blank
    /// superblocks and activity log: a new file, a zeroed device) is formatted; a missing or
    /// short leg file is first created or grown sparse to the size the layout needs.
    fn open_internal(
        path: &Path,
        expect: Expectation,
        data_size: u64,
        granularity: Granularity,
    ) -> Result<MetaStore, MetaStoreError> {
        let refused = |source| MetaStoreError::Refused {
            path: path.to_path_buf(),
            source,
        };
        let needed = internal_device_size(data_size, granularity).map_err(refused)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| MetaStoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let device_size = size_for_internal(&file, path, data_size, needed)?;
        let [a, b] = superblock_probe(Placement::Internal, device_size).map_err(refused)?;
        let copy_a = read_block(&file, path, a.offset)?;
        let copy_b = read_block(&file, path, b.offset)?;
        let blank = is_zero(&copy_a) && is_zero(&copy_b);
        let superblock = if blank {
            let params = layout_params(Placement::Internal, device_size, granularity);
            let layout = MetaLayout::new(params).map_err(refused)?;
            ensure_ring_blank(&file, path, &layout)?;
            Superblock::new(expect.cluster, expect.volume, expect.leg, layout)
        } else {
            let superblock = pick_copy(&copy_a, &copy_b, path, expect)?;
            superblock.check_device_size(device_size).map_err(refused)?;
            superblock
        };
        if superblock.layout().data_size() < data_size {
            return Err(MetaStoreError::TooSmall {
                path: path.to_path_buf(),
                actual: device_size,
                data: data_size,
                needed,
            });
        }
        let mut store = MetaStore {
            file,
            path: path.to_path_buf(),
            superblock,
            data_size,
        };
        if blank {
            store.format()?;
        }
        Ok(store)
    }

    fn refused(&self, source: MetaError) -> MetaStoreError {
        MetaStoreError::Refused {
            path: self.path.clone(),
            source,
        }
    }

    fn io_error(&self, source: std::io::Error) -> MetaStoreError {
        MetaStoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes the fresh superblock and activity-log ring into an empty file.
    fn format(&mut self) -> Result<(), MetaStoreError> {
        let layout = self.superblock.layout().clone();
        let ring = ActivityLog::initial_ring(&layout.al_config());
        let ring_at = layout.al_ring().offset;
        if layout.params().placement == Placement::Sidecar {
            self.file
                .set_len(layout.metadata().end())
                .map_err(|e| self.io_error(e))?;
        }
        for (index, block) in ring.iter().enumerate() {
            let at = ring_at + (index * META_BLOCK) as u64;
            self.file
                .write_all_at(block, at)
                .map_err(|e| self.io_error(e))?;
        }
        let superblock = self.superblock.clone();
        self.write_superblock(superblock)?;
        // Both copies valid from the start: a blank second copy would read as damage.
        let second = self.superblock.bumped();
        self.write_superblock(second)
    }

    /// Writes `next` (a bumped superblock) to the copy its generation names, syncs, adopts it.
    fn write_superblock(&mut self, next: Superblock) -> Result<(), MetaStoreError> {
        let region = next.layout().superblock(next.copy());
        self.file
            .write_all_at(&next.encode(), region.offset)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| self.io_error(e))?;
        self.superblock = next;
        Ok(())
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// Records `primary_open` (set before the first write as primary, cleared after a clean
    /// stop) and the epoch.
    pub fn set_primary_open(&mut self, open: bool, epoch: u64) -> Result<(), MetaStoreError> {
        let mut next = self.superblock.bumped();
        next.primary_open = open;
        next.last_epoch = next.last_epoch.max(epoch);
        self.write_superblock(next)
    }

    /// The slot that tracks peer leg `leg` (assigned and persisted on first use).
    pub fn slot_for(&mut self, leg: LegId, node: NodeId) -> Result<Option<u16>, MetaStoreError> {
        let peers = self.superblock.peers();
        if let Some(slot) = peers.iter().position(|p| p.in_use && p.peer_leg == leg) {
            return Ok(Some(slot as u16));
        }
        let Some(free) = peers.iter().position(|p| !p.in_use) else {
            return Ok(None);
        };
        let mut next = self.superblock.bumped();
        if let Some(entry) = next.peer_mut(free as u16) {
            entry.in_use = true;
            entry.peer_leg = leg;
            entry.node = node;
            entry.bitmap_valid = false;
        }
        self.write_superblock(next)?;
        Ok(Some(free as u16))
    }

    /// Loads slot `slot`'s bitmap if the superblock says it is complete.
    pub fn load_bitmap(&self, slot: u16) -> Result<Option<OutOfSync>, MetaStoreError> {
        let valid = self
            .superblock
            .peers()
            .get(usize::from(slot))
            .is_some_and(|p| p.bitmap_valid);
        let layout = self.superblock.layout();
        let Some(area) = layout.bitmap(slot).filter(|_| valid) else {
            return Ok(None);
        };
        // Sized for the volume's data (the core's bitmaps are), not the layout's data area.
        let grain = u64::from(layout.params().grain);
        let empty = OutOfSync::new(self.data_size, grain).map_err(|s| self.refused(s))?;
        let pages = empty.page_count() as usize;
        let mut bytes = vec![0u8; pages * META_BLOCK];
        self.file
            .read_exact_at(&mut bytes, area.offset)
            .map_err(|e| self.io_error(e))?;
        let blocks: Vec<&[u8]> = bytes.chunks(META_BLOCK).collect();
        OutOfSync::decode(self.data_size, grain, slot, area.offset, &blocks)
            .map(Some)
            .map_err(|s| self.refused(s))
    }

    /// Writes the given pages of `bitmap` into slot `slot` (no sync; see [`Self::sync`]).
    pub fn store_pages(
        &self,
        slot: u16,
        bitmap: &OutOfSync,
        pages: &[u32],
    ) -> Result<(), MetaStoreError> {
        let Some(area) = self.superblock.layout().bitmap(slot) else {
            return Ok(());
        };
        for &page in pages {
            let block = bitmap
                .encode_page(slot, page)
                .map_err(|s| self.refused(s))?;
            let at = area.offset + u64::from(page) * META_BLOCK as u64;
            self.file
                .write_all_at(&block, at)
                .map_err(|e| self.io_error(e))?;
        }
        Ok(())
    }

    /// Marks slots' bitmaps complete (after all their pages were written and synced).
    pub fn set_bitmaps_valid(&mut self, slots: &[u16], valid: bool) -> Result<(), MetaStoreError> {
        let mut next = self.superblock.bumped();
        for &slot in slots {
            if let Some(entry) = next.peer_mut(slot) {
                entry.bitmap_valid = valid;
            }
        }
        self.write_superblock(next)
    }

    /// Rebuilds the activity log from its ring: what may have been in flight at a crash.
    pub fn read_activity_log(&self) -> Result<Recovered, MetaStoreError> {
        let config = self.superblock.layout().al_config();
        let ring = self.superblock.layout().al_ring();
        let length = usize::try_from(ring.len)
            .map_err(|_| self.io_error(std::io::Error::other("ring size")))?;
        let mut bytes = vec![0u8; length];
        self.file
            .read_exact_at(&mut bytes, ring.offset)
            .map_err(|e| self.io_error(e))?;
        let blocks: Vec<&[u8]> = bytes.chunks(META_BLOCK).collect();
        ActivityLog::recover(&config, &blocks).map_err(|s| self.refused(s))
    }

    /// Writes one activity-log transaction and makes it durable (before the data it covers).
    pub fn write_transaction(&self, transaction: &AlTransaction) -> Result<(), MetaStoreError> {
        let config = self.superblock.layout().al_config();
        let at = config.block_offset(transaction.seq());
        self.file
            .write_all_at(&transaction.encode(), at)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| self.io_error(e))
    }

    pub fn sync(&self) -> Result<(), MetaStoreError> {
        self.file.sync_data().map_err(|e| self.io_error(e))
    }
}

/// Reads both superblock copies and picks the newest valid one; refuses the rest.
fn read_superblock(
    file: &File,
    path: &Path,
    length: u64,
    expect: Expectation,
) -> Result<Superblock, MetaStoreError> {
    let refused = |source| MetaStoreError::Refused {
        path: path.to_path_buf(),
        source,
    };
    let [a, b] = superblock_probe(Placement::Sidecar, length).map_err(refused)?;
    let copy_a = read_block(file, path, a.offset)?;
    let copy_b = read_block(file, path, b.offset)?;
    pick_copy(&copy_a, &copy_b, path, expect)
}

/// The newest valid superblock of two copies (one damaged copy is logged, both refused).
fn pick_copy(
    copy_a: &[u8],
    copy_b: &[u8],
    path: &Path,
    expect: Expectation,
) -> Result<Superblock, MetaStoreError> {
    let picked = pick_newest(copy_a, copy_b, expect).map_err(|source| MetaStoreError::Refused {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(damage) = picked.other_damage {
        tracing::warn!(
            "leg metadata {}: one superblock copy is damaged ({damage}); using the other",
            path.display()
        );
    }
    Ok(picked.superblock)
}

fn read_block(file: &File, path: &Path, offset: u64) -> Result<Vec<u8>, MetaStoreError> {
    let mut block = vec![0u8; META_BLOCK];
    file.read_exact_at(&mut block, offset)
        .map_err(|source| MetaStoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(block)
}

/// Asks the kernel to forget this host's cached pages of a device (dirty ones are written
/// first); a failure only costs coherence the epoch rules do not rely on, so it is logged.
fn drop_cached_pages(file: &File) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: posix_fadvise on a valid, open descriptor with plain integer arguments.
    let result = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if result != 0 {
        tracing::debug!("posix_fadvise(DONTNEED) failed: errno {result}");
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

/// The size of a leg that will hold internal metadata: a block device must already be big
/// enough; a leg file is grown (sparse) to `needed` bytes, unless its end already holds
/// metadata (then it shrank, or belongs to a bigger volume: refused).
fn size_for_internal(
    file: &File,
    path: &Path,
    data: u64,
    needed: u64,
) -> Result<u64, MetaStoreError> {
    let io = |source| MetaStoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_small = |actual| MetaStoreError::TooSmall {
        path: path.to_path_buf(),
        actual,
        data,
        needed,
    };
    let kind = file.metadata().map_err(io)?.file_type();
    if kind.is_block_device() {
        // Another server may have written this shared device since this host last read it:
        // drop any cached pages of it first, so the metadata (and data) read are the device's.
        drop_cached_pages(file);
        let size = crate::leg::block_device_size(file).map_err(io)?;
        return if size < needed {
            Err(too_small(size))
        } else {
            Ok(size)
        };
    }
    if !kind.is_file() {
        return Err(MetaStoreError::NotADisk {
            path: path.to_path_buf(),
            what: format!("{kind:?}"),
        });
    }
    let length = file.metadata().map_err(io)?.len();
    if length >= needed {
        return Ok(length);
    }
    let block = META_BLOCK as u64;
    if length >= block && length.is_multiple_of(block) {
        let last = read_block(file, path, length - block)?;
        if last.starts_with(&SUPERBLOCK_MAGIC) {
            return Err(too_small(length));
        }
    }
    file.set_len(needed).map_err(io)?;
    Ok(needed)
}

/// A blank superblock pair is only a new leg if the activity log beside it is blank too;
/// anything else is damaged metadata, refused rather than formatted over.
fn ensure_ring_blank(file: &File, path: &Path, layout: &MetaLayout) -> Result<(), MetaStoreError> {
    let ring = layout.al_ring();
    let blocks = ring.len / META_BLOCK as u64;
    for index in 0..blocks {
        let block = read_block(file, path, ring.offset + index * META_BLOCK as u64)?;
        if !is_zero(&block) {
            return Err(MetaStoreError::BlankSuperblocks {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::ClusterId;

    const SIZE: u64 = 8 << 20;

    fn expect(volume: u64, leg: LegId) -> Expectation {
        Expectation {
            cluster: ClusterId([7; 16]),
            volume,
            leg,
        }
    }

    fn internal(dir: &tempfile::TempDir) -> MetaLocation {
        MetaLocation::Internal(dir.path().join("shared.img"))
    }

    #[test]
    fn internal_layouts_leave_exactly_the_volume_size_for_data() {
        for size in [4096, 1 << 20, SIZE, (1 << 30) + 4096, 1 << 40] {
            let device = internal_device_size(size, Granularity::default()).unwrap();
            let layout = MetaLayout::new(LayoutParams::new(Placement::Internal, device)).unwrap();
            assert_eq!(layout.data_size(), size, "device {device}");
            assert!(device > size);
        }
    }

    #[test]
    fn internal_metadata_lives_at_the_end_of_the_leg_and_moves_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let location = internal(&dir);
        let mut first =
            MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default()).unwrap();
        let length = std::fs::metadata(location.path()).unwrap().len();
        assert_eq!(
            length,
            internal_device_size(SIZE, Granularity::default()).unwrap()
        );
        let last = std::fs::read(location.path()).unwrap();
        assert!(last[last.len() - META_BLOCK..].starts_with(&SUPERBLOCK_MAGIC));
        assert!(
            last[..SIZE as usize].iter().all(|&b| b == 0),
            "data untouched"
        );
        first.set_primary_open(true, 3).unwrap();
        let slot = first.slot_for(1, 2).unwrap().unwrap();
        let mut bitmap = OutOfSync::new(SIZE, 4096).unwrap();
        bitmap.mark(5 << 20, 8192).unwrap();
        let pages: Vec<u32> = (0..bitmap.page_count()).collect();
        first.store_pages(slot, &bitmap, &pages).unwrap();
        first.sync().unwrap();
        first.set_bitmaps_valid(&[slot], true).unwrap();
        drop(first);
        // Another node opening the same shared leg sees the crash flag and the bitmap.
        let second =
            MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default()).unwrap();
        assert!(second.superblock().primary_open);
        assert_eq!(second.superblock().last_epoch, 3);
        let loaded = second.load_bitmap(slot).unwrap().expect("a valid bitmap");
        assert_eq!(loaded.dirty_bytes(), 8192);
        assert!(second
            .read_activity_log()
            .unwrap()
            .resync_ranges()
            .is_empty());
    }

    #[test]
    fn corrupt_or_foreign_internal_metadata_is_refused_with_the_path_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let location = internal(&dir);
        drop(MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default()).unwrap());
        let foreign = MetaStore::open(&location, expect(2, 0), SIZE, Granularity::default())
            .err()
            .unwrap();
        assert!(
            foreign
                .to_string()
                .contains("belongs to volume 1, expected volume 2"),
            "{foreign}"
        );
        let mut bytes = std::fs::read(location.path()).unwrap();
        let end = bytes.len();
        bytes[end - 2 * META_BLOCK..].fill(0xee);
        std::fs::write(location.path(), &bytes).unwrap();
        let refused = MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default())
            .err()
            .unwrap();
        let message = refused.to_string();
        assert!(
            message.contains(&location.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("not tandem metadata"), "{message}");
        assert_eq!(
            std::fs::read(location.path()).unwrap(),
            bytes,
            "nothing written"
        );
        // Blank superblocks over a used activity log: damaged, not new.
        bytes[end - 2 * META_BLOCK..].fill(0);
        std::fs::write(location.path(), &bytes).unwrap();
        let refused = MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default())
            .err()
            .unwrap();
        assert!(
            matches!(refused, MetaStoreError::BlankSuperblocks { .. }),
            "{refused}"
        );
        assert_eq!(
            std::fs::read(location.path()).unwrap(),
            bytes,
            "nothing written"
        );
    }

    #[test]
    fn a_leg_too_small_for_data_and_internal_metadata_is_refused_naming_the_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let location = internal(&dir);
        drop(MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default()).unwrap());
        let before = std::fs::read(location.path()).unwrap();
        let refused = MetaStore::open(&location, expect(1, 0), 2 * SIZE, Granularity::default())
            .err()
            .unwrap();
        let needed = internal_device_size(2 * SIZE, Granularity::default()).unwrap();
        let message = refused.to_string();
        assert!(
            matches!(refused, MetaStoreError::TooSmall { actual, needed: n, .. }
                if actual == before.len() as u64 && n == needed),
            "{message}"
        );
        assert!(
            message.contains(&location.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains(&needed.to_string()), "{message}");
        assert_eq!(std::fs::read(location.path()).unwrap(), before);
    }

    #[test]
    fn a_short_leg_file_without_metadata_is_grown_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let location = internal(&dir);
        std::fs::write(location.path(), vec![0x5au8; SIZE as usize]).unwrap();
        let store = MetaStore::open(&location, expect(1, 0), SIZE, Granularity::default()).unwrap();
        assert!(!store.superblock().primary_open);
        let bytes = std::fs::read(location.path()).unwrap();
        assert_eq!(
            bytes.len() as u64,
            internal_device_size(SIZE, Granularity::default()).unwrap()
        );
        assert!(bytes[..SIZE as usize].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn hot_ranges_are_clipped_to_the_volume() {
        let ranges = [(0, 4096), (8 << 20, 4 << 20), (20 << 20, 4 << 20)];
        assert_eq!(
            clip_ranges(&ranges, 10 << 20),
            vec![(0, 4096), (8 << 20, 2 << 20)]
        );
    }
}
