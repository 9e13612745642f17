//! The superblock: who a leg belongs to, its geometry, its last known state, its peer slots.
//!
//! It is stored twice (copies A and B) with a generation counter: generation `g` is always
//! written to copy A when `g` is even and to copy B when odd, so a torn write damages at most
//! the copy being written and the other still holds the previous generation.
//! [`pick_newest`] chooses the newer valid copy; it never repairs anything itself.
//!
//! Format version 1, one 4 KiB block, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `"TANDEMLM"` |
//! | 8..12 | format version (1) |
//! | 12..16 | crc32c of the block with this field left out |
//! | 16..24 | generation |
//! | 24..40 | cluster id |
//! | 40..48 | volume id |
//! | 48..52 | leg id |
//! | 52 | placement (1 internal, 2 sidecar) |
//! | 53 | leg state (1 UpToDate, 2 Outdated, 3 Inconsistent) |
//! | 54 | leg flags (bit 0: open as primary) |
//! | 56..64 | device size |
//! | 64..72 | data size (must match the layout) |
//! | 72..76, 76..80, 80..84 | block size, bitmap grain, extent size |
//! | 84..88, 88..92 | activity-log slots, ring blocks (must match the layout) |
//! | 92..94 | max peers |
//! | 96..104 | last epoch seen |
//! | 112..624 | 32 peer slots × (node u64, peer leg u32, flags u8: bit 0 in use, bit 1 bitmap valid) |
//!
//! Unused bytes are zero.

use crate::ids::{ClusterId, NodeId};
use crate::volume::{LegId, LegState, VolumeId};

use super::bytes::{as_block, block_crc, get_bytes, get_u16, get_u32, get_u64, put, seal, Block};
use super::layout::{LayoutParams, MetaLayout, Placement, MAX_PEER_SLOTS};
use super::{MetaError, META_BLOCK};

pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"TANDEMLM";
/// The on-disk format version of every structure in this module.
pub const FORMAT_VERSION: u32 = 1;

const AT_VERSION: usize = 8;
const AT_CRC: usize = 12;
const AT_GENERATION: usize = 16;
const AT_CLUSTER: usize = 24;
const AT_VOLUME: usize = 40;
const AT_LEG: usize = 48;
const AT_PLACEMENT: usize = 52;
const AT_STATE: usize = 53;
const AT_FLAGS: usize = 54;
const AT_DEVICE_SIZE: usize = 56;
const AT_DATA_SIZE: usize = 64;
const AT_BLOCK_SIZE: usize = 72;
const AT_GRAIN: usize = 76;
const AT_EXTENT_SIZE: usize = 80;
const AT_AL_SLOTS: usize = 84;
const AT_AL_RING: usize = 88;
const AT_MAX_PEERS: usize = 92;
const AT_EPOCH: usize = 96;
const AT_PEERS: usize = 112;
const PEER_LEN: usize = 16;

const FLAG_PRIMARY_OPEN: u8 = 1;
const PEER_IN_USE: u8 = 1;
const PEER_BITMAP_VALID: u8 = 2;

/// Which of the two superblock copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SuperblockCopy {
    A,
    B,
}

impl SuperblockCopy {
    /// Where generation `generation` is written: A for even, B for odd.
    pub fn for_generation(generation: u64) -> SuperblockCopy {
        if generation.is_multiple_of(2) {
            SuperblockCopy::A
        } else {
            SuperblockCopy::B
        }
    }

    pub fn label(self) -> char {
        match self {
            SuperblockCopy::A => 'A',
            SuperblockCopy::B => 'B',
        }
    }
}

/// The identity a superblock must carry to be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub cluster: ClusterId,
    pub volume: VolumeId,
    pub leg: LegId,
}

/// What this leg knows about one peer leg, and whether its bitmap on disk can be trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSlot {
    pub in_use: bool,
    /// The node that last served the peer leg (a shared leg is reachable by several).
    pub node: NodeId,
    pub peer_leg: LegId,
    /// The slot's bitmap on disk is complete: a reconnect may resync only its dirty grains.
    /// When false the peer needs a full resync.
    pub bitmap_valid: bool,
}

/// The decoded superblock. Its layout is always valid (it was recomputed on decode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub cluster: ClusterId,
    pub volume: VolumeId,
    pub leg: LegId,
    layout: MetaLayout,
    /// The highest epoch this leg has seen committed.
    pub last_epoch: u64,
    /// The leg's state as last known locally (the committed cluster state is authoritative).
    pub state: LegState,
    /// Set and persisted before this node's first write as primary, cleared after a clean
    /// demotion (all writes ended and flushed). Found set at startup: the node crashed while
    /// primary, so the activity log's hot extents must be resynced.
    pub primary_open: bool,
    peers: Vec<PeerSlot>,
    generation: u64,
}

/// The copy [`pick_newest`] chose, and what was wrong with the other one, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picked {
    pub superblock: Superblock,
    pub copy: SuperblockCopy,
    /// Why the other copy was not usable (torn or never written). It is not repaired here:
    /// the next generation write lands on it.
    pub other_damage: Option<MetaError>,
}

impl Superblock {
    /// A fresh superblock (generation 0, state Inconsistent, no peers in use). At format the
    /// shim writes it to copy A and [`bumped`](Self::bumped) to copy B.
    pub fn new(cluster: ClusterId, volume: VolumeId, leg: LegId, layout: MetaLayout) -> Self {
        let peers = vec![PeerSlot::default(); usize::from(layout.params().max_peers)];
        Superblock {
            cluster,
            volume,
            leg,
            layout,
            last_epoch: 0,
            state: LegState::Inconsistent,
            primary_open: false,
            peers,
            generation: 0,
        }
    }

    pub fn layout(&self) -> &MetaLayout {
        &self.layout
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The copy this superblock's generation belongs in.
    pub fn copy(&self) -> SuperblockCopy {
        SuperblockCopy::for_generation(self.generation)
    }

    /// The same content one generation later. Persist it with `encode()` at
    /// `layout().superblock(bumped.copy())`, flush, and only then adopt it. If the write fails,
    /// retry the *same* bumped value: bumping again would aim at the only valid copy.
    pub fn bumped(&self) -> Superblock {
        Superblock {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        }
    }

    /// One slot per possible peer (`max_peers` of them).
    pub fn peers(&self) -> &[PeerSlot] {
        &self.peers
    }

    pub fn peer_mut(&mut self, slot: u16) -> Option<&mut PeerSlot> {
        self.peers.get_mut(usize::from(slot))
    }

    /// Refuses a device whose size changed since format (internal metadata would be lost).
    pub fn check_device_size(&self, actual: u64) -> Result<(), MetaError> {
        let recorded = self.layout.params().device_size;
        if recorded == actual {
            Ok(())
        } else {
            Err(MetaError::DeviceSizeChanged { recorded, actual })
        }
    }

    pub fn encode(&self) -> Block {
        let params = self.layout.params();
        let mut block = [0u8; META_BLOCK];
        put(&mut block, 0, &SUPERBLOCK_MAGIC);
        put(&mut block, AT_VERSION, &FORMAT_VERSION.to_le_bytes());
        put(&mut block, AT_GENERATION, &self.generation.to_le_bytes());
        put(&mut block, AT_CLUSTER, self.cluster.as_bytes());
        put(&mut block, AT_VOLUME, &self.volume.to_le_bytes());
        put(&mut block, AT_LEG, &self.leg.to_le_bytes());
        let placement = match params.placement {
            Placement::Internal => 1u8,
            Placement::Sidecar => 2,
        };
        let flags = if self.primary_open {
            FLAG_PRIMARY_OPEN
        } else {
            0
        };
        put(
            &mut block,
            AT_PLACEMENT,
            &[placement, state_code(self.state), flags],
        );
        put(
            &mut block,
            AT_DEVICE_SIZE,
            &params.device_size.to_le_bytes(),
        );
        put(
            &mut block,
            AT_DATA_SIZE,
            &self.layout.data_size().to_le_bytes(),
        );
        put(&mut block, AT_BLOCK_SIZE, &params.block_size.to_le_bytes());
        put(&mut block, AT_GRAIN, &params.grain.to_le_bytes());
        put(
            &mut block,
            AT_EXTENT_SIZE,
            &params.extent_size.to_le_bytes(),
        );
        put(&mut block, AT_AL_SLOTS, &params.al_slots.to_le_bytes());
        put(
            &mut block,
            AT_AL_RING,
            &self.layout.al_ring_blocks().to_le_bytes(),
        );
        put(&mut block, AT_MAX_PEERS, &params.max_peers.to_le_bytes());
        put(&mut block, AT_EPOCH, &self.last_epoch.to_le_bytes());
        for (index, peer) in self.peers.iter().enumerate() {
            let at = AT_PEERS + index * PEER_LEN;
            let mut flags = 0;
            if peer.in_use {
                flags |= PEER_IN_USE;
            }
            if peer.bitmap_valid {
                flags |= PEER_BITMAP_VALID;
            }
            put(&mut block, at, &peer.node.to_le_bytes());
            put(&mut block, at + 8, &peer.peer_leg.to_le_bytes());
            put(&mut block, at + 12, &[flags]);
        }
        seal(&mut block, AT_CRC);
        block
    }

    /// Decodes one copy and checks, in order: magic, version, checksum, then that it belongs
    /// to the expected cluster, volume and leg, then every field.
    pub fn decode(bytes: &[u8], expected: Expectation) -> Result<Superblock, MetaError> {
        let block = as_block(bytes, "superblock")?;
        let magic: [u8; 8] = get_bytes(block, 0);
        if magic != SUPERBLOCK_MAGIC {
            return Err(MetaError::NotTandemMetadata { found: magic });
        }
        let version = get_u32(block, AT_VERSION);
        if version != FORMAT_VERSION {
            return Err(MetaError::UnsupportedVersion {
                what: "superblock",
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored = get_u32(block, AT_CRC);
        let computed = block_crc(block, AT_CRC);
        if stored != computed {
            return Err(MetaError::SuperblockChecksum { stored, computed });
        }
        check_identity(block, &expected)?;
        decode_body(block, &expected)
    }
}

fn check_identity(block: &Block, expected: &Expectation) -> Result<(), MetaError> {
    let cluster = ClusterId(get_bytes(block, AT_CLUSTER));
    if cluster != expected.cluster {
        return Err(MetaError::ForeignCluster {
            expected: expected.cluster,
            found: cluster,
        });
    }
    let volume = get_u64(block, AT_VOLUME);
    if volume != expected.volume {
        return Err(MetaError::ForeignVolume {
            expected: expected.volume,
            found: volume,
        });
    }
    let leg = get_u32(block, AT_LEG);
    if leg != expected.leg {
        return Err(MetaError::ForeignLeg {
            expected: expected.leg,
            found: leg,
        });
    }
    Ok(())
}

fn invalid(field: &'static str, offset: usize, found: u64, reason: &'static str) -> MetaError {
    MetaError::InvalidField {
        what: "superblock",
        field,
        offset: offset as u64,
        found,
        reason,
    }
}

fn state_code(state: LegState) -> u8 {
    match state {
        LegState::UpToDate => 1,
        LegState::Outdated => 2,
        LegState::Inconsistent => 3,
    }
}

fn decode_layout(block: &Block) -> Result<MetaLayout, MetaError> {
    let placement = match block[AT_PLACEMENT] {
        1 => Placement::Internal,
        2 => Placement::Sidecar,
        other => {
            return Err(invalid(
                "placement",
                AT_PLACEMENT,
                other.into(),
                "not 1 or 2",
            ))
        }
    };
    let params = LayoutParams {
        placement,
        device_size: get_u64(block, AT_DEVICE_SIZE),
        block_size: get_u32(block, AT_BLOCK_SIZE),
        extent_size: get_u32(block, AT_EXTENT_SIZE),
        grain: get_u32(block, AT_GRAIN),
        al_slots: get_u32(block, AT_AL_SLOTS),
        max_peers: get_u16(block, AT_MAX_PEERS),
    };
    let layout =
        MetaLayout::new(params).map_err(|error| MetaError::SuperblockGeometry(Box::new(error)))?;
    let data_size = get_u64(block, AT_DATA_SIZE);
    if data_size != layout.data_size() {
        let reason = "differs from the data size the layout parameters give";
        return Err(invalid("data size", AT_DATA_SIZE, data_size, reason));
    }
    let ring = get_u32(block, AT_AL_RING);
    if ring != layout.al_ring_blocks() {
        let reason = "differs from the ring size the slot count gives";
        return Err(invalid(
            "activity-log ring blocks",
            AT_AL_RING,
            ring.into(),
            reason,
        ));
    }
    Ok(layout)
}

fn decode_peers(block: &Block, count: u16) -> Result<Vec<PeerSlot>, MetaError> {
    let mut peers = Vec::with_capacity(usize::from(count));
    for index in 0..usize::from(count.min(MAX_PEER_SLOTS)) {
        let at = AT_PEERS + index * PEER_LEN;
        let flags = block[at + 12];
        if flags & !(PEER_IN_USE | PEER_BITMAP_VALID) != 0 {
            return Err(invalid(
                "peer slot flags",
                at + 12,
                flags.into(),
                "unknown bits",
            ));
        }
        peers.push(PeerSlot {
            in_use: flags & PEER_IN_USE != 0,
            node: get_u64(block, at),
            peer_leg: get_u32(block, at + 8),
            bitmap_valid: flags & PEER_BITMAP_VALID != 0,
        });
    }
    Ok(peers)
}

fn decode_body(block: &Block, expected: &Expectation) -> Result<Superblock, MetaError> {
    let layout = decode_layout(block)?;
    let state = match block[AT_STATE] {
        1 => LegState::UpToDate,
        2 => LegState::Outdated,
        3 => LegState::Inconsistent,
        other => {
            return Err(invalid(
                "leg state",
                AT_STATE,
                other.into(),
                "not 1, 2 or 3",
            ))
        }
    };
    let flags = block[AT_FLAGS];
    if flags & !FLAG_PRIMARY_OPEN != 0 {
        return Err(invalid("leg flags", AT_FLAGS, flags.into(), "unknown bits"));
    }
    let peers = decode_peers(block, layout.params().max_peers)?;
    Ok(Superblock {
        cluster: expected.cluster,
        volume: expected.volume,
        leg: expected.leg,
        layout,
        last_epoch: get_u64(block, AT_EPOCH),
        state,
        primary_open: flags & FLAG_PRIMARY_OPEN != 0,
        peers,
        generation: get_u64(block, AT_GENERATION),
    })
}

/// Damage a torn or never-completed write can leave; anything else (a foreign id, a newer
/// version, a field no tandem writes) is refused outright rather than skipped.
fn is_damage(error: &MetaError) -> bool {
    matches!(
        error,
        MetaError::NotTandemMetadata { .. } | MetaError::SuperblockChecksum { .. }
    )
}

fn check_placement(copy: SuperblockCopy, superblock: &Superblock) -> Result<(), MetaError> {
    let expected = superblock.copy();
    if expected == copy {
        Ok(())
    } else {
        Err(MetaError::SuperblockMisplaced {
            copy: copy.label(),
            generation: superblock.generation,
            expected: expected.label(),
        })
    }
}

/// Chooses between the two copies: the valid one with the higher generation wins. One damaged
/// copy (bad magic or checksum: a torn write) is tolerated and reported; both damaged is an
/// error, and so is any other problem in either copy.
pub fn pick_newest(a: &[u8], b: &[u8], expected: Expectation) -> Result<Picked, MetaError> {
    let decoded_a = Superblock::decode(a, expected);
    let decoded_b = Superblock::decode(b, expected);
    for decoded in [&decoded_a, &decoded_b] {
        if let Err(error) = decoded {
            if !is_damage(error) {
                return Err(error.clone());
            }
        }
    }
    if let Ok(superblock) = &decoded_a {
        check_placement(SuperblockCopy::A, superblock)?;
    }
    if let Ok(superblock) = &decoded_b {
        check_placement(SuperblockCopy::B, superblock)?;
    }
    let picked = |superblock, copy, other_damage| Picked {
        superblock,
        copy,
        other_damage,
    };
    match (decoded_a, decoded_b) {
        (Ok(a), Ok(b)) if a.generation > b.generation => Ok(picked(a, SuperblockCopy::A, None)),
        (Ok(_), Ok(b)) => Ok(picked(b, SuperblockCopy::B, None)),
        (Ok(a), Err(damage)) => Ok(picked(a, SuperblockCopy::A, Some(damage))),
        (Err(damage), Ok(b)) => Ok(picked(b, SuperblockCopy::B, Some(damage))),
        (Err(a), Err(b)) => Err(MetaError::NoValidSuperblock {
            a: Box::new(a),
            b: Box::new(b),
        }),
    }
}
