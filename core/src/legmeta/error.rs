//! The one error type of the leg-metadata module.
//!
//! Every variant says what was wrong and where: the field or structure, a byte offset when one
//! is known (absolute in the metadata container when the caller told us where the structure
//! lives), and the expected value next to the one found.

use crate::ids::ClusterId;
use crate::volume::{LegId, VolumeId};

/// Why a layout cannot be built, metadata bytes are refused, or an activity-log / bitmap
/// operation is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    // ---- layout ----------------------------------------------------------------------------
    #[error("{field} = {value} is not a power of two")]
    NotPowerOfTwo { field: &'static str, value: u64 },
    #[error("{field} = {value} is out of range: it must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("activity-log extent size {extent} is smaller than the bitmap grain {grain}")]
    ExtentSmallerThanGrain { extent: u64, grain: u64 },
    #[error("{field} = {value} is not a multiple of the {unit_name} ({unit})")]
    NotMultiple {
        field: &'static str,
        value: u64,
        unit_name: &'static str,
        unit: u64,
    },
    #[error(
        "device of {device_size} bytes is too small: metadata needs {metadata_len} bytes and \
         at least one {block_size}-byte data block must remain"
    )]
    DeviceTooSmall {
        device_size: u64,
        metadata_len: u64,
        block_size: u64,
    },
    #[error(
        "{data_size} bytes of data in {extent_size}-byte extents is {extents} extents, more \
         than the {max} an activity log can number"
    )]
    TooManyExtents {
        data_size: u64,
        extent_size: u64,
        extents: u64,
        max: u64,
    },
    #[error("{what} overflows 64 bits")]
    Overflow { what: &'static str },

    // ---- superblock ------------------------------------------------------------------------
    #[error("{what} must be {expected} bytes, got {found}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("not tandem metadata: superblock magic is {found:02x?}, expected \"TANDEMLM\"")]
    NotTandemMetadata { found: [u8; 8] },
    #[error("unsupported {what} format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("superblock checksum mismatch: stored {stored:08x}, content hashes to {computed:08x}")]
    SuperblockChecksum { stored: u32, computed: u32 },
    #[error("superblock belongs to cluster {found}, this is cluster {expected}")]
    ForeignCluster {
        expected: ClusterId,
        found: ClusterId,
    },
    #[error("superblock belongs to volume {found}, expected volume {expected}")]
    ForeignVolume { expected: VolumeId, found: VolumeId },
    #[error("superblock belongs to leg {found}, expected leg {expected}")]
    ForeignLeg { expected: LegId, found: LegId },
    #[error("{what} field {field} at byte {offset} holds {found}: {reason}")]
    InvalidField {
        what: &'static str,
        field: &'static str,
        offset: u64,
        found: u64,
        reason: &'static str,
    },
    #[error("superblock describes an impossible layout: {0}")]
    SuperblockGeometry(Box<MetaError>),
    #[error("no valid superblock: copy A: {a}; copy B: {b}")]
    NoValidSuperblock {
        a: Box<MetaError>,
        b: Box<MetaError>,
    },
    #[error(
        "superblock copy {copy} holds generation {generation}, which belongs in copy {expected}: \
         misplaced or stale write"
    )]
    SuperblockMisplaced {
        copy: char,
        generation: u64,
        expected: char,
    },
    #[error("the device is {actual} bytes but its superblock was written for {recorded} bytes")]
    DeviceSizeChanged { recorded: u64, actual: u64 },

    // ---- activity log ----------------------------------------------------------------------
    #[error("activity-log block magic is {found:02x?}, expected \"TNAL\"")]
    AlMagic { found: [u8; 4] },
    #[error(
        "activity-log block checksum mismatch: stored {stored:08x}, content hashes to \
         {computed:08x}"
    )]
    AlChecksum { stored: u32, computed: u32 },
    #[error("activity-log ring block {block} (byte {offset}): {source}")]
    AlRingBlock {
        block: u32,
        offset: u64,
        source: Box<MetaError>,
    },
    #[error(
        "activity-log ring block {block} (byte {offset}) holds transaction {found}, expected \
         {expected}: a lost or misdirected write"
    )]
    AlRingOutOfOrder {
        block: u32,
        offset: u64,
        expected: u64,
        found: u64,
    },
    #[error("activity-log ring has {found} blocks, expected {expected}")]
    AlRingLength { expected: usize, found: usize },
    #[error("activity-log ring holds no valid transaction (first block: {first})")]
    AlRingEmpty { first: Box<MetaError> },
    #[error(
        "activity-log ring's newest transaction is {newest}, but a formatted ring of \
         {ring_blocks} blocks starts at transaction {first}: the ring was never formatted"
    )]
    AlRingUnformatted {
        newest: u64,
        ring_blocks: u32,
        first: u64,
    },
    #[error("activity-log ring leaves slot {slot} undescribed: the ring is incomplete")]
    AlRingIncomplete { slot: u32 },
    #[error("activity-log ring lists extent {extent} in slots {first} and {second}")]
    AlDuplicateExtent {
        extent: u64,
        first: u32,
        second: u32,
    },
    #[error("write of {len} bytes at offset {offset} lies outside the {data_size}-byte data area")]
    OutOfBounds {
        offset: u64,
        len: u64,
        data_size: u64,
    },
    #[error(
        "write at offset {offset} of {len} bytes touches {extents} activity-log extents, at \
         most {max} per write: split it"
    )]
    WriteTooLarge {
        offset: u64,
        len: u64,
        extents: u64,
        max: u64,
    },
    #[error("end of a write into extent {extent}, which has no write in flight")]
    AlEndWithoutBegin { extent: u64 },
    #[error("activity-log transaction {found} reported persisted, but none is outstanding")]
    AlNothingPending { found: u64 },
    #[error("activity-log transaction {found} reported persisted, but {expected} is outstanding")]
    AlWrongSeq { expected: u64, found: u64 },

    // ---- bitmaps ---------------------------------------------------------------------------
    #[error(
        "bitmap page {page} of peer slot {slot} (byte {offset}): magic is {found:02x?}, \
         expected \"TNBM\""
    )]
    BitmapMagic {
        slot: u16,
        page: u32,
        offset: u64,
        found: [u8; 4],
    },
    #[error(
        "bitmap page {page} of peer slot {slot} (byte {offset}): checksum mismatch, stored \
         {stored:08x}, content hashes to {computed:08x}"
    )]
    BitmapChecksum {
        slot: u16,
        page: u32,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error(
        "bitmap page at byte {offset} should be page {expected_page} of peer slot \
         {expected_slot}, it says page {found_page} of slot {found_slot}"
    )]
    BitmapMisplaced {
        offset: u64,
        expected_slot: u16,
        expected_page: u32,
        found_slot: u16,
        found_page: u32,
    },
    #[error(
        "bitmap page {page} of peer slot {slot} (byte {offset}) marks grains beyond the end of \
         the data area"
    )]
    BitmapBeyondEnd { slot: u16, page: u32, offset: u64 },
    #[error("bitmap has {found} pages, expected {expected}")]
    BitmapPageCount { expected: usize, found: usize },
    #[error("bitmap page {page} does not exist: the bitmap has {pages} pages")]
    NoSuchPage { page: u32, pages: u32 },
    #[error(
        "bitmaps differ in shape ({size} bytes in {grain}-byte grains vs {other_size} bytes in \
         {other_grain}-byte grains)"
    )]
    BitmapShapeMismatch {
        size: u64,
        grain: u64,
        other_size: u64,
        other_grain: u64,
    },
}
