//! Tests of the leg-metadata module: unit tests for every error case and the layout arithmetic,
//! property tests for the codecs, the bitmap model and the activity log's safety property.

mod activity_log;
mod bitmap;
mod layout;
mod superblock;

/// `len` pseudo-random bytes from a seed (xorshift64*): cheaper than asking proptest for
/// every byte of a 4 KiB block, and just as arbitrary for a decoder.
pub(super) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}
