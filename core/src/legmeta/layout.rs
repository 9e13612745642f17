//! Where each piece of a leg's metadata lives, computed from a handful of parameters.
//!
//! Two placements:
//!
//! - **Internal**: the metadata sits at the end of the leg's own device, the data area first.
//!   The two superblock copies are the device's last two 4 KiB blocks (copy A last), so the
//!   shim finds them from the device size alone ([`superblock_probe`]) before it knows any other
//!   parameter:
//!   `[data | gap < block size | bitmap slot 0 | … | bitmap slot n-1 | AL ring | SB B | SB A]`.
//! - **Sidecar**: the metadata lives in a separate file; the whole device is data:
//!   `[SB A | SB B | AL ring | bitmap slot 0 | … | bitmap slot n-1]`.
//!
//! Offsets in a [`MetaLayout`] are byte offsets in the metadata's container (the device for
//! internal metadata, the sidecar file otherwise); [`MetaLayout::data`] is always on the device.
//! Everything is 4 KiB aligned.
//!
//! Each bitmap area is sized for the whole *device* (an upper bound of the data size, which for
//! internal metadata depends on the metadata size): at most one page per peer is wasted, and the
//! sizes need no fixed-point iteration.

use super::activity_log::{al_ring_blocks, AlConfig, MAX_AL_SLOTS};
use super::bitmap::{OutOfSync, BITMAP_BITS_PER_PAGE};
use super::superblock::SuperblockCopy;
use super::{MetaError, META_BLOCK};

/// The data block size: the unit the data area is sized in. 4 KiB is the page size and NBD's
/// preferred block size (it matches `crate::volume::BLOCK_SIZE`).
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// Bytes of data per out-of-sync bit: 4 KiB, as DRBD.
///
/// For a 1 TiB leg that is 2^28 bits: 32 MiB of bitmap per peer slot on disk (8 225 pages) and
/// in memory while the slot is in use (≈0.003 % of the data). In exchange a reconnect resyncs
/// at most 4 KiB per scattered small write made while the peer was away: the grain equals the
/// block and page size, so a 4 KiB random write dirties exactly what it changed. A 64 KiB
/// grain would shrink the bitmap to 2 MiB/TiB but resync up to 16× the written bytes for
/// random 4 KiB writes, i.e. longer windows with a degraded mirror. Memory is the cheaper of
/// the two.
pub const DEFAULT_GRAIN: u32 = 4096;

/// Bytes per activity-log extent: 4 MiB, as DRBD.
///
/// The first write into a cold extent costs one synchronous 4 KiB metadata write + flush
/// before the data write may start; a sequential stream pays that once per 4 MiB (under 0.1 %
/// extra bytes). A primary crash forces a resync of every hot extent, i.e. up to
/// `slots × extent size` bytes (see [`DEFAULT_AL_SLOTS`]). Smaller extents shrink that resync
/// but multiply metadata flushes for scattered writes; larger ones do the opposite.
pub const DEFAULT_EXTENT_SIZE: u32 = 4 << 20;

/// Hot activity-log extents: 1237, DRBD's long-standing default.
///
/// With 4 MiB extents the hot set covers 4.83 GiB: a working set up to that size is written
/// with no metadata writes at all, and a primary crash resyncs at most 4.83 GiB — about 5 s at
/// 1 GB/s (10 GbE), 45 s at 110 MB/s (1 GbE) — instead of the whole leg. Each transaction
/// carries 824 slots of context, so 1237 slots need a ring of only 3 blocks (we keep 8).
pub const DEFAULT_AL_SLOTS: u32 = 1237;

/// Peer bitmap slots reserved at format: 3, enough for a 4-leg volume, at 32 MiB per TiB per
/// slot. Adding a leg later needs a free slot, hence more than the 1 of a 2-leg volume.
pub const DEFAULT_MAX_PEERS: u16 = 3;

/// Peer slots the superblock format has room for (a fixed part of format version 1).
pub const MAX_PEER_SLOTS: u16 = 32;
// A volume may have up to MAX_LEGS legs; each leg needs one slot per other leg.
const _: () = assert!(crate::volume::MAX_LEGS <= MAX_PEER_SLOTS as usize + 1);

pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
pub const MIN_GRAIN: u32 = 4096;
/// Extent numbers are stored as `u32`, with `u32::MAX` meaning "empty slot".
pub const MAX_EXTENTS: u64 = u32::MAX as u64;

const BLOCK: u64 = META_BLOCK as u64;

/// Where the metadata lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// At the end of the leg's device.
    Internal,
    /// In a separate file; the whole device is data.
    Sidecar,
}

/// A byte range in a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What a layout is computed from. [`LayoutParams::new`] fills in the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayoutParams {
    pub placement: Placement,
    /// Size of the leg's device (block device, partition or file) in bytes.
    pub device_size: u64,
    pub block_size: u32,
    pub extent_size: u32,
    pub grain: u32,
    pub al_slots: u32,
    pub max_peers: u16,
}

impl LayoutParams {
    /// The defaults for a device of `device_size` bytes.
    pub fn new(placement: Placement, device_size: u64) -> LayoutParams {
        LayoutParams {
            placement,
            device_size,
            block_size: DEFAULT_BLOCK_SIZE,
            extent_size: DEFAULT_EXTENT_SIZE,
            grain: DEFAULT_GRAIN,
            al_slots: DEFAULT_AL_SLOTS,
            max_peers: DEFAULT_MAX_PEERS,
        }
    }
}

/// The computed layout. Only [`MetaLayout::new`] builds one, so every layout is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaLayout {
    params: LayoutParams,
    data: Region,
    metadata: Region,
    superblocks: [Region; 2],
    al_ring: Region,
    al_ring_blocks: u32,
    bitmap_base: u64,
    bitmap_pages: u32,
}

/// The two superblock locations (copy A, copy B) for a device or sidecar file, computable
/// before anything else is known. Internal metadata needs a 4 KiB-aligned device size.
pub fn superblock_probe(
    placement: Placement,
    container_size: u64,
) -> Result<[Region; 2], MetaError> {
    let at = |offset| Region { offset, len: BLOCK };
    match placement {
        Placement::Sidecar => Ok([at(0), at(BLOCK)]),
        Placement::Internal => {
            if !container_size.is_multiple_of(BLOCK) {
                return Err(MetaError::NotMultiple {
                    field: "device size",
                    value: container_size,
                    unit_name: "metadata block size",
                    unit: BLOCK,
                });
            }
            if container_size < 2 * BLOCK {
                return Err(MetaError::DeviceTooSmall {
                    device_size: container_size,
                    metadata_len: 2 * BLOCK,
                    block_size: BLOCK,
                });
            }
            Ok([at(container_size - BLOCK), at(container_size - 2 * BLOCK)])
        }
    }
}

fn power_of_two(field: &'static str, value: u64) -> Result<(), MetaError> {
    if value.is_power_of_two() {
        Ok(())
    } else {
        Err(MetaError::NotPowerOfTwo { field, value })
    }
}

fn in_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), MetaError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(MetaError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// Checks every parameter on its own and against each other (not yet the device size
/// against the metadata size, which needs the arithmetic).
fn validate(params: &LayoutParams) -> Result<(), MetaError> {
    let block = u64::from(params.block_size);
    let grain = u64::from(params.grain);
    let extent = u64::from(params.extent_size);
    power_of_two("block size", block)?;
    in_range(
        "block size",
        block,
        MIN_BLOCK_SIZE.into(),
        MAX_BLOCK_SIZE.into(),
    )?;
    power_of_two("bitmap grain", grain)?;
    in_range("bitmap grain", grain, MIN_GRAIN.into(), u32::MAX.into())?;
    power_of_two("activity-log extent size", extent)?;
    if extent < grain {
        return Err(MetaError::ExtentSmallerThanGrain { extent, grain });
    }
    in_range(
        "activity-log slots",
        params.al_slots.into(),
        1,
        MAX_AL_SLOTS.into(),
    )?;
    in_range(
        "max peers",
        params.max_peers.into(),
        1,
        MAX_PEER_SLOTS.into(),
    )?;
    if !params.device_size.is_multiple_of(block) {
        return Err(MetaError::NotMultiple {
            field: "device size",
            value: params.device_size,
            unit_name: "block size",
            unit: block,
        });
    }
    Ok(())
}

/// Pages of bitmap needed for `size` bytes in `grain`-byte grains.
fn bitmap_pages_for(size: u64, grain: u64) -> Result<u32, MetaError> {
    let pages = size.div_ceil(grain).div_ceil(BITMAP_BITS_PER_PAGE);
    u32::try_from(pages).map_err(|_| MetaError::OutOfRange {
        field: "bitmap pages per peer",
        value: pages,
        min: 0,
        max: u32::MAX.into(),
    })
}

impl MetaLayout {
    /// Computes the layout, refusing nonsense parameters with an error naming the parameter.
    pub fn new(params: LayoutParams) -> Result<MetaLayout, MetaError> {
        validate(&params)?;
        let block = u64::from(params.block_size);
        let bitmap_pages = bitmap_pages_for(params.device_size, params.grain.into())?;
        let ring_blocks = al_ring_blocks(params.al_slots);
        let overflow = MetaError::Overflow {
            what: "metadata size",
        };
        let metadata_len = u64::from(bitmap_pages)
            .checked_mul(params.max_peers.into())
            .and_then(|blocks| blocks.checked_add(2 + u64::from(ring_blocks)))
            .and_then(|blocks| blocks.checked_mul(BLOCK))
            .ok_or(overflow)?;
        let too_small = MetaError::DeviceTooSmall {
            device_size: params.device_size,
            metadata_len,
            block_size: block,
        };
        let (data_len, meta_start) = match params.placement {
            Placement::Internal => {
                let meta_start = params.device_size.checked_sub(metadata_len);
                let meta_start = meta_start.ok_or_else(|| too_small.clone())?;
                (meta_start - meta_start % block, meta_start)
            }
            Placement::Sidecar => (params.device_size, 0),
        };
        if data_len < block {
            return Err(too_small);
        }
        let extents = data_len.div_ceil(params.extent_size.into());
        if extents > MAX_EXTENTS {
            return Err(MetaError::TooManyExtents {
                data_size: data_len,
                extent_size: params.extent_size.into(),
                extents,
                max: MAX_EXTENTS,
            });
        }
        Ok(Self::place(
            params,
            data_len,
            meta_start,
            metadata_len,
            bitmap_pages,
            ring_blocks,
        ))
    }

    /// Assigns offsets once the sizes are known to fit.
    fn place(
        params: LayoutParams,
        data_len: u64,
        meta_start: u64,
        metadata_len: u64,
        bitmap_pages: u32,
        ring_blocks: u32,
    ) -> MetaLayout {
        let ring_len = u64::from(ring_blocks) * BLOCK;
        let bitmaps_len = u64::from(bitmap_pages) * BLOCK * u64::from(params.max_peers);
        let at = |offset| Region { offset, len: BLOCK };
        let (superblocks, ring_offset, bitmap_base) = match params.placement {
            Placement::Internal => {
                let end = meta_start + metadata_len;
                let ring_offset = meta_start + bitmaps_len;
                (
                    [at(end - BLOCK), at(end - 2 * BLOCK)],
                    ring_offset,
                    meta_start,
                )
            }
            Placement::Sidecar => ([at(0), at(BLOCK)], 2 * BLOCK, 2 * BLOCK + ring_len),
        };
        MetaLayout {
            params,
            data: Region {
                offset: 0,
                len: data_len,
            },
            metadata: Region {
                offset: meta_start,
                len: metadata_len,
            },
            superblocks,
            al_ring: Region {
                offset: ring_offset,
                len: ring_len,
            },
            al_ring_blocks: ring_blocks,
            bitmap_base,
            bitmap_pages,
        }
    }

    pub fn params(&self) -> &LayoutParams {
        &self.params
    }

    /// The data area on the leg's device (always starts at 0).
    pub fn data(&self) -> Region {
        self.data
    }

    pub fn data_size(&self) -> u64 {
        self.data.len
    }

    /// The whole metadata footprint in its container (for a sidecar: the file's size).
    pub fn metadata(&self) -> Region {
        self.metadata
    }

    pub fn superblock(&self, copy: SuperblockCopy) -> Region {
        match copy {
            SuperblockCopy::A => self.superblocks[0],
            SuperblockCopy::B => self.superblocks[1],
        }
    }

    pub fn al_ring(&self) -> Region {
        self.al_ring
    }

    pub fn al_ring_blocks(&self) -> u32 {
        self.al_ring_blocks
    }

    /// The activity-log geometry, with the ring's offset so that errors name absolute bytes.
    pub fn al_config(&self) -> AlConfig {
        AlConfig::from_layout(
            self.data.len,
            self.params.extent_size.into(),
            self.params.al_slots,
            self.al_ring_blocks,
            self.al_ring.offset,
        )
    }

    /// Pages reserved per peer slot (an [`OutOfSync`] of the data area uses the first
    /// [`OutOfSync::page_count`] of them).
    pub fn bitmap_pages_reserved(&self) -> u32 {
        self.bitmap_pages
    }

    /// The bitmap area of peer slot `slot`, or `None` past `max_peers`.
    pub fn bitmap(&self, slot: u16) -> Option<Region> {
        if slot >= self.params.max_peers {
            return None;
        }
        let len = u64::from(self.bitmap_pages) * BLOCK;
        Some(Region {
            offset: self.bitmap_base + u64::from(slot) * len,
            len,
        })
    }

    /// An all-clean bitmap for this layout's data area.
    pub fn new_bitmap(&self) -> OutOfSync {
        OutOfSync::for_layout(self.data.len, self.params.grain.into())
    }

    /// Decodes peer slot `slot`'s bitmap from its first [`OutOfSync::page_count`] pages.
    pub fn decode_bitmap(&self, slot: u16, pages: &[&[u8]]) -> Result<OutOfSync, MetaError> {
        let area = self.bitmap(slot).ok_or(MetaError::OutOfRange {
            field: "peer slot",
            value: slot.into(),
            min: 0,
            max: u64::from(self.params.max_peers) - 1,
        })?;
        OutOfSync::decode(
            self.data.len,
            self.params.grain.into(),
            slot,
            area.offset,
            pages,
        )
    }
}
