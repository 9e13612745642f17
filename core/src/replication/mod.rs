//! The replication link: how a primary mirrors every write of a volume onto its peer legs.
//!
//! # Why this module exists
//!
//! DESIGN.md rule 1 ("no acknowledged write is lost") is decided here and nowhere else: the
//! [`Primary`] acknowledges a client write only when the local leg and every `UpToDate` peer
//! leg have it, freezes acknowledgements when an `UpToDate` peer goes away until the cluster has
//! *committed* that leg as `Outdated`, records what the peer then misses in its out-of-sync
//! bitmap, and resyncs exactly that when the peer returns. The [`Secondary`] is the other end:
//! it refuses any primary but the one of the current epoch (rule 2), turns replicated writes
//! into disk operations and acknowledges them only once the disk has done them.
//!
//! Both ends are sans-IO state machines like the rest of the core: bytes arrive as slices,
//! time as `now` in milliseconds, and disk work leaves as [`DiskOp`]s with ids whose completions
//! come back later (io_uring style). Frames are built by [`wire`]; the shim carries them over
//! the cluster's mutual-TLS connections and the simulator carries the very same bytes.
//!
//! # Pieces
//!
//! - [`wire`]: the versioned, checksummed frame format of the link.
//! - [`secondary`]: the receiving end, one per (volume, leg) on a secondary node.
//! - [`primary`]: the sending end, one per volume on its primary node: client writes, flushes,
//!   peer failures, the freeze, bitmaps and resync.
//!
//! # Driving them (the shim's side)
//!
//! - **Frames** are self-delimiting: read [`wire::HEADER_LEN`] bytes, ask [`wire::frame_len`]
//!   for the rest (oversized frames are refused from the header), hand the whole frame over.
//! - **Primary** (a new one for every epoch in which this node is primary): open a connection
//!   to each peer leg's node and call `peer_connected`; feed its frames to `peer_message`, call
//!   `peer_lost` when it closes; call `tick` every 100 ms or so. Client requests go to the
//!   `client_*` inputs; answer the client on [`PrimaryAction::Complete`]. Submit
//!   [`PrimaryAction::Disk`] operations and report them with `disk_done` / `disk_read_done`.
//!   Propose [`PrimaryAction::ProposeLegState`] to the cluster, and report every committed
//!   leg state of the volume with `leg_state_committed`. Persist changed bitmap pages
//!   (`peer_bitmap_mut(leg).take_dirty_pages()`) in the order `legmeta` prescribes.
//!   After a takeover (this node promoted over a primary that was lost, whose leg was
//!   `UpToDate` until then and is now committed `Outdated`), call `track_from_now(leg)` for
//!   that leg right after `Primary::new`. `start_verify` / `verify_status` run an online
//!   verify (`tandem volume verify`).
//! - **Secondary**: call `set_epoch` whenever the committed epoch of the volume changes, feed
//!   frames to `on_message`, submit its disk operations and report them with `disk_done`,
//!   or `disk_read_done` with the bytes for a `Read` (a verify), call `link_lost` when the
//!   connection closes. A leg whose node crashed as the primary is opened with
//!   `with_suspect_ranges(recovered.resync_ranges())` (its activity log's hot extents) in
//!   every session until the leg is committed `UpToDate` again.
//! - After every input, drain `take_actions` and carry them out in order.

pub mod primary;
pub mod secondary;
pub mod wire;

#[cfg(test)]
mod tests;

pub use primary::{
    LinkState, PeerLeg, PeerMode, PeerStatus, Primary, PrimaryAction, Tuning, VerifyStatus,
    DEFAULT_MAX_CLIENT_REQUESTS, MAX_SKIP_RANGES, MAX_VERIFY_MISMATCHES,
};
pub use secondary::{Secondary, SecondaryAction, MAX_SECONDARY_OPS, MAX_UNCONFIRMED};
pub use wire::{
    Message, RefuseCode, Suspect, WireError, MAX_DATA, MAX_SUSPECT_RANGES, PROTOCOL_VERSION,
    VERIFY_BLOCK,
};

use crate::ids::{ClusterId, NodeId};
use crate::legmeta::MetaError;
use crate::volume::{LegId, VolumeId};

/// Who this end of a link is: the cluster, the volume and this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    pub cluster: ClusterId,
    pub volume: VolumeId,
    pub node: NodeId,
}

/// One disk operation for the shim to submit; its completion comes back with the same `id`
/// (`disk_done`, or `disk_read_done` for a read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOp {
    pub id: u64,
    pub kind: DiskKind,
}

/// What a [`DiskOp`] does, in bytes of the leg's data area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskKind {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// Completes with the bytes read (`disk_read_done`).
    Read {
        offset: u64,
        len: u64,
    },
    /// Makes every write completed before this was submitted durable.
    Flush,
    Trim {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
}

/// Why an input was refused. Every variant names what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplError {
    #[error("malformed replication frame: {0}")]
    Wire(#[from] WireError),
    #[error("refused ({code}): {reason}")]
    Refused { code: RefuseCode, reason: String },
    #[error("peer leg {leg} refused the link ({code}): {reason}")]
    PeerRefused {
        leg: LegId,
        code: RefuseCode,
        reason: String,
    },
    #[error("range offset {offset} len {len} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("empty range at offset {offset}: length must be above zero")]
    EmptyRange { offset: u64 },
    #[error("request of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error("busy: {what} ({current} in flight, limit {limit}); retry after completions")]
    Busy {
        what: &'static str,
        current: u64,
        limit: u64,
    },
    #[error("volume has no peer leg {leg}")]
    UnknownLeg { leg: LegId },
    #[error("no disk operation with id {id} is outstanding")]
    UnknownDiskOp { id: u64 },
    #[error("disk operation {id}: {reason}")]
    BadCompletion { id: u64, reason: String },
    #[error("unexpected {kind} message from {from}: {reason}")]
    Unexpected {
        kind: &'static str,
        from: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot verify peer leg {leg}: {reason}")]
    VerifyRefused { leg: LegId, reason: String },
    #[error("bitmap: {0}")]
    Bitmap(#[from] MetaError),
}

/// Checks that `offset..offset + len` is a non-empty range inside a volume of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<(), ReplError> {
    if len == 0 {
        return Err(ReplError::EmptyRange { offset });
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ReplError::OutOfRange { offset, len, size }),
    }
}

/// Whether two byte ranges `(offset, len)` overlap.
pub(crate) fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}
