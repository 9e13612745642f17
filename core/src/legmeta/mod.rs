//! On-disk leg metadata, sans-IO: the superblock, the activity log and the per-peer
//! out-of-sync bitmaps.
//!
//! # Why this module exists
//!
//! DESIGN.md rule 3 ("resync from the right side") needs two records that survive a crash on
//! every leg: an **activity log** of coarse extents that may have writes in flight, so that a
//! crashed primary's legs are resynced only where they may differ; and **per-peer bitmaps** of
//! fine grains a peer leg missed, so that a reconnect resyncs only what changed. Rule 5 needs a
//! **superblock** that ties a device to its cluster, volume and leg, so that a wrong or corrupt
//! disk is refused loudly instead of being written over. This module decides everything about
//! those records — layout, byte encoding, checksums, what must be persisted before what — and
//! does no I/O: the shim reads and writes the bytes (io_uring, overlapped I/O, the simulator's
//! fake disk) and feeds completions back.
//!
//! # Pieces
//!
//! - [`MetaLayout`]: where everything lives (internal at the end of the device, or a sidecar
//!   file), 4 KiB aligned.
//! - [`Superblock`]: identity, geometry, last known leg state, peer slots; two copies with a
//!   generation counter, [`pick_newest`] chooses.
//! - [`ActivityLog`]: the hot-extent state machine and its ring of [`AlTransaction`]s;
//!   [`ActivityLog::recover`] rebuilds the hot set after a crash.
//! - [`OutOfSync`]: one peer's bitmap, encoded as checksummed pages.
//!
//! Every structure is one or more 4 KiB blocks ([`META_BLOCK`]), little-endian, each with a
//! magic, the format version and a crc32c; decoding refuses anything else with a [`MetaError`]
//! naming what and where, and never panics on any bytes.
//!
//! # Ordering rules the shim must follow
//!
//! 1. **Activity log before data.** On [`AlDecision::PersistFirst`] write the transaction at
//!    [`AlConfig::block_offset`], flush, call [`ActivityLog::transaction_persisted`], and only
//!    then submit the data write (and those that got [`AlDecision::AfterPersist`]). The flush
//!    also makes durable every local data write completed before it — which is why an extent
//!    whose writes have all ended may be evicted.
//! 2. **Bitmap before eviction.** Before writing a transaction that evicts extents, write
//!    every in-use peer bitmap's changed pages covering them
//!    ([`OutOfSync::take_dirty_pages_in`]): once cold, an extent is no longer covered by the
//!    log, so its out-of-sync bits must already be on disk. Other changed pages may be written
//!    lazily ([`OutOfSync::take_dirty_pages`]); losing a *clear* only costs extra resync.
//! 3. **Superblock generations.** Write [`Superblock::bumped`] to the copy its generation
//!    names, flush, then adopt it; on failure retry the same value, never bump twice.
//! 4. **After a primary crash** ([`Superblock::primary_open`] found set), mark
//!    [`Recovered::resync_ranges`] out of sync in every peer bitmap before anything else.
//!
//! # Default granularities (see each constant for the reasoning)
//!
//! | what | default | why, in one line |
//! |---|---|---|
//! | data block | [`DEFAULT_BLOCK_SIZE`] 4 KiB | page size, NBD's preferred block |
//! | bitmap grain | [`DEFAULT_GRAIN`] 4 KiB | 32 MiB of bitmap per peer per TiB; resync never more than 4 KiB per small write |
//! | AL extent | [`DEFAULT_EXTENT_SIZE`] 4 MiB | one metadata flush per 4 MiB of sequential writes |
//! | AL slots | [`DEFAULT_AL_SLOTS`] 1237 | ≤ 4.83 GiB resynced after a primary crash (~5 s at 10 GbE) |
//! | peer slots | [`DEFAULT_MAX_PEERS`] 3 | room for a 4-leg volume |
//! | placement, leg one node reaches | [`Placement::Sidecar`] | the whole device is data (a disk sized for the volume just works); only that node ever opens the leg |
//! | placement, leg several nodes reach | [`Placement::Internal`] | the node taking the leg over after a crash must see the crash flag and activity log the last writer left; a sidecar would sit in the crashed node's state dir |
//!
//! The placement is not stored anywhere but derived from the committed state (how many nodes
//! reach the leg), so every node looks in the same place. The shim (`meta_store.rs`) sizes an
//! internal layout so its data area is exactly the volume: a leg file is grown to that size, a
//! block device smaller than it is refused naming both sizes.

mod activity_log;
mod bitmap;
mod bytes;
mod error;
mod layout;
mod superblock;

/// Re-exported so that users of this module need no other import for superblock fields.
pub use crate::volume::{LegId, LegState, VolumeId};
pub use activity_log::{
    al_ring_blocks, min_al_ring_blocks, ActivityLog, AlConfig, AlDecision, AlTransaction, AlUpdate,
    Recovered, AL_CONTEXT_PER_BLOCK, AL_MAX_UPDATES, MAX_AL_SLOTS, MIN_AL_RING_BLOCKS,
};
pub use bitmap::{
    DirtyRuns, OutOfSync, BITMAP_BITS_PER_PAGE, BITMAP_PAGE_HEADER, BITMAP_WORDS_PER_PAGE,
};
pub use error::MetaError;
pub use layout::{
    superblock_probe, LayoutParams, MetaLayout, Placement, Region, DEFAULT_AL_SLOTS,
    DEFAULT_BLOCK_SIZE, DEFAULT_EXTENT_SIZE, DEFAULT_GRAIN, DEFAULT_MAX_PEERS, MAX_BLOCK_SIZE,
    MAX_EXTENTS, MAX_PEER_SLOTS, MIN_BLOCK_SIZE, MIN_GRAIN,
};
pub use superblock::{
    pick_newest, Expectation, PeerSlot, Picked, Superblock, SuperblockCopy, FORMAT_VERSION,
    SUPERBLOCK_MAGIC,
};

/// The size of every metadata block: superblock copy, activity-log block, bitmap page.
pub const META_BLOCK: usize = 4096;

#[cfg(test)]
mod tests;
