//! A leg's metadata on disk: a sidecar file `<state-dir>/meta/vol<V>-leg<L>.meta` laid out by
//! `tandem_core::legmeta` (two superblock copies, the activity-log ring, one bitmap area per
//! peer slot).
//!
//! Exists so that a leg is tied to its cluster, volume and leg (a wrong, foreign or corrupt
//! metadata file is refused with its path and the leg is not touched), and so that a primary's
//! per-peer out-of-sync bitmaps survive a restart: a clean stop writes them and clears
//! `primary_open`; a primary that finds `primary_open` set crashed, and its bitmaps are not
//! trusted (the peers then need a full resync). Nothing here ever "repairs" metadata.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tandem_core::legmeta::{
    pick_newest, superblock_probe, ActivityLog, AlTransaction, Expectation, LayoutParams,
    MetaError, MetaLayout, OutOfSync, Placement, Recovered, Superblock, META_BLOCK,
};
use tandem_core::volume::LegId;
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
}

/// An open metadata file and its current superblock.
pub struct MetaStore {
    file: File,
    path: PathBuf,
    superblock: Superblock,
}

impl MetaStore {
    /// Where the metadata of `leg` of volume `volume` lives.
    pub fn path_for(state_dir: &Path, volume: u64, leg: LegId) -> PathBuf {
        state_dir
            .join("meta")
            .join(format!("vol{volume}-leg{leg}.meta"))
    }

    /// Opens the metadata at `path` for a leg with `data_size` bytes of data, creating it when
    /// the file does not exist yet; anything unexpected in an existing file is refused.
    pub fn open(
        path: &Path,
        expect: Expectation,
        data_size: u64,
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
            let layout = MetaLayout::new(LayoutParams::new(Placement::Sidecar, data_size))
                .map_err(refused)?;
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
        };
        if length == 0 {
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
        self.file
            .set_len(layout.metadata().end())
            .map_err(|e| self.io_error(e))?;
        for (index, block) in ring.iter().enumerate() {
            let at = ring_at + (index * META_BLOCK) as u64;
            self.file
                .write_all_at(block, at)
                .map_err(|e| self.io_error(e))?;
        }
        let superblock = self.superblock.clone();
        self.write_superblock(superblock)
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
        let pages = layout.new_bitmap().page_count() as usize;
        let mut bytes = vec![0u8; pages * META_BLOCK];
        self.file
            .read_exact_at(&mut bytes, area.offset)
            .map_err(|e| self.io_error(e))?;
        let blocks: Vec<&[u8]> = bytes.chunks(META_BLOCK).collect();
        layout
            .decode_bitmap(slot, &blocks)
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
    let io = |source| MetaStoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let [a, b] = superblock_probe(Placement::Sidecar, length).map_err(refused)?;
    let mut copy_a = vec![0u8; META_BLOCK];
    let mut copy_b = vec![0u8; META_BLOCK];
    file.read_exact_at(&mut copy_a, a.offset).map_err(io)?;
    file.read_exact_at(&mut copy_b, b.offset).map_err(io)?;
    let picked = pick_newest(&copy_a, &copy_b, expect).map_err(refused)?;
    if let Some(damage) = picked.other_damage {
        tracing::warn!(
            "leg metadata {}: one superblock copy is damaged ({damage}); using the other",
            path.display()
        );
    }
    Ok(picked.superblock)
}
