//! Little-endian field access inside one metadata block, and the block checksum.
//!
//! Every on-disk structure of this module is exactly one [`META_BLOCK`]-byte block. The
//! accessors take a `&[u8; META_BLOCK]` so that the length has already been checked; the
//! offsets are compile-time constants of the format (or bounded by a checked count), never
//! values read from the input.

use super::META_BLOCK;

/// One metadata block.
pub(crate) type Block = [u8; META_BLOCK];

pub(crate) fn as_block<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<&'a Block, super::MetaError> {
    bytes.try_into().map_err(|_| super::MetaError::WrongLength {
        what,
        expected: META_BLOCK,
        found: bytes.len(),
    })
}

fn array<const N: usize>(block: &Block, at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&block[at..at + N]);
    out
}

pub(crate) fn get_u16(block: &Block, at: usize) -> u16 {
    u16::from_le_bytes(array(block, at))
}

pub(crate) fn get_u32(block: &Block, at: usize) -> u32 {
    u32::from_le_bytes(array(block, at))
}

pub(crate) fn get_u64(block: &Block, at: usize) -> u64 {
    u64::from_le_bytes(array(block, at))
}

pub(crate) fn get_bytes<const N: usize>(block: &Block, at: usize) -> [u8; N] {
    array(block, at)
}

pub(crate) fn put(block: &mut Block, at: usize, bytes: &[u8]) {
    block[at..at + bytes.len()].copy_from_slice(bytes);
}

/// crc32c over the whole block except the 4-byte checksum field at `crc_at`.
pub(crate) fn block_crc(block: &Block, crc_at: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&block[..crc_at]), &block[crc_at + 4..])
}

/// Computes the checksum and stores it at `crc_at`.
pub(crate) fn seal(block: &mut Block, crc_at: usize) {
    let crc = block_crc(block, crc_at);
    put(block, crc_at, &crc.to_le_bytes());
}
