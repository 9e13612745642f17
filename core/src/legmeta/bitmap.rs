//! The per-peer out-of-sync bitmap: one bit per grain of the data area, set when the peer leg
//! may lack data this leg has (a write made while the peer was away, or one that failed there).
//!
//! Reconnection resyncs exactly the dirty grains ([`OutOfSync::dirty_runs`]), in the
//! direction the committed cluster state says (DESIGN.md rule 3); this type only keeps the set.
//!
//! On disk a bitmap is a run of 4 KiB pages, each self-describing and separately checksummed so
//! that only changed pages need rewriting:
//! `magic "TNBM" | peer slot u16 | reserved u16 | page index u32 | crc32c u32 | 510 × u64 words`
//! (little-endian; grain `g` is bit `g % 64` of word `g / 64`, so byte `g / 8`, bit `g % 8` of
//! the payload). One page covers [`BITMAP_BITS_PER_PAGE`] grains: 127.5 MiB of data at 4 KiB.

use std::ops::Range;

use super::bytes::{as_block, block_crc, get_bytes, get_u16, get_u32, get_u64, put, seal, Block};
use super::{MetaError, META_BLOCK};

pub const BITMAP_PAGE_HEADER: usize = 16;
pub const BITMAP_WORDS_PER_PAGE: usize = (META_BLOCK - BITMAP_PAGE_HEADER) / 8;
pub const BITMAP_BITS_PER_PAGE: u64 = BITMAP_WORDS_PER_PAGE as u64 * 64;

const MAGIC: [u8; 4] = *b"TNBM";
const AT_SLOT: usize = 4;
const AT_PAGE: usize = 8;
const AT_CRC: usize = 12;

/// Which grains a peer leg may be missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfSync {
    data_size: u64,
    grain: u64,
    grains: u64,
    /// Bits past `grains` are always zero.
    words: Vec<u64>,
    /// Pages changed since the last `take_dirty_pages*`, indexed by page.
    changed: Vec<bool>,
}

impl OutOfSync {
    /// An all-clean bitmap of `data_size` bytes in `grain`-byte grains (a power of two).
    pub fn new(data_size: u64, grain: u64) -> Result<OutOfSync, MetaError> {
        Self::check_shape(data_size, grain)?;
        Ok(Self::for_layout(data_size, grain))
    }

    /// Checks a shape without allocating; returns the page count.
    fn check_shape(data_size: u64, grain: u64) -> Result<u32, MetaError> {
        if !grain.is_power_of_two() {
            return Err(MetaError::NotPowerOfTwo {
                field: "bitmap grain",
                value: grain,
            });
        }
        if data_size == 0 {
            return Err(MetaError::OutOfRange {
                field: "bitmap data size",
                value: 0,
                min: 1,
                max: u64::MAX,
            });
        }
        let pages = data_size.div_ceil(grain).div_ceil(BITMAP_BITS_PER_PAGE);
        u32::try_from(pages).map_err(|_| MetaError::OutOfRange {
            field: "bitmap pages",
            value: pages,
            min: 1,
            max: u32::MAX.into(),
        })
    }

    /// For shapes already validated by a layout.
    pub(crate) fn for_layout(data_size: u64, grain: u64) -> OutOfSync {
        let grains = data_size.div_ceil(grain);
        let words = grains.div_ceil(64) as usize;
        let pages = words.div_ceil(BITMAP_WORDS_PER_PAGE);
        OutOfSync {
            data_size,
            grain,
            grains,
            words: vec![0; words],
            changed: vec![false; pages],
        }
    }

    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    pub fn grain(&self) -> u64 {
        self.grain
    }

    /// Number of grains (the last one may be shorter than `grain`).
    pub fn grains(&self) -> u64 {
        self.grains
    }

    /// Number of on-disk pages.
    pub fn page_count(&self) -> u32 {
        self.changed.len() as u32
    }

    /// `offset..offset + len` as bytes, refused when it leaves the data area; `None` if empty.
    fn bytes_of(&self, offset: u64, len: u64) -> Result<Option<(u64, u64)>, MetaError> {
        let out = MetaError::OutOfBounds {
            offset,
            len,
            data_size: self.data_size,
        };
        let end = offset.checked_add(len).ok_or_else(|| out.clone())?;
        if end > self.data_size {
            return Err(out);
        }
        Ok((len > 0).then_some((offset, end)))
    }

    /// Marks every grain the range touches, even partly.
    pub fn mark(&mut self, offset: u64, len: u64) -> Result<(), MetaError> {
        if let Some((start, end)) = self.bytes_of(offset, len)? {
            self.update(start / self.grain, (end - 1) / self.grain + 1, true);
        }
        Ok(())
    }

    /// Marks everything (a full resync).
    pub fn mark_all(&mut self) {
        self.update(0, self.grains, true);
    }

    /// Clears only the grains the range covers completely (the last grain ends at the end of
    /// the data area): a partly covered grain may still hold other unsynced bytes.
    pub fn clear(&mut self, offset: u64, len: u64) -> Result<(), MetaError> {
        if let Some((start, end)) = self.bytes_of(offset, len)? {
            let first = start.div_ceil(self.grain);
            let stop = if end == self.data_size {
                self.grains
            } else {
                end / self.grain
            };
            if first < stop {
                self.update(first, stop, false);
            }
        }
        Ok(())
    }

    /// Whether any grain the range touches is dirty (looks only at the range's own words).
    pub fn is_dirty(&self, offset: u64, len: u64) -> Result<bool, MetaError> {
        Ok(match self.bytes_of(offset, len)? {
            None => false,
            Some((start, end)) => self
                .find(start / self.grain, (end - 1) / self.grain + 1, true)
                .is_some(),
        })
    }

    /// The first dirty grain at or after grain `from_grain` (a grain index, not a byte
    /// offset), or `None` when every grain from there on is clean. Clean stretches are skipped
    /// a 64-grain word at a time, so a resync walk over a mostly clean bitmap costs one pass
    /// over its words, not one probe per grain.
    pub fn next_dirty(&self, from_grain: u64) -> Option<u64> {
        self.find(from_grain, self.grains, true)
    }

    pub fn dirty_grains(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// Bytes to resync: dirty grains, the short last grain counted at its real length.
    pub fn dirty_bytes(&self) -> u64 {
        let full = self.dirty_grains() * self.grain;
        let last = self.grains - 1;
        if self.bit(last) {
            full - (self.grains * self.grain - self.data_size)
        } else {
            full
        }
    }

    /// Dirty byte ranges `(offset, len)`, adjacent grains merged, in ascending order.
    pub fn dirty_runs(&self) -> DirtyRuns<'_> {
        DirtyRuns { map: self, next: 0 }
    }

    /// Adds every dirty grain of `other` (same shape required).
    pub fn merge(&mut self, other: &OutOfSync) -> Result<(), MetaError> {
        if (self.data_size, self.grain) != (other.data_size, other.grain) {
            return Err(MetaError::BitmapShapeMismatch {
                size: self.data_size,
                grain: self.grain,
                other_size: other.data_size,
                other_grain: other.grain,
            });
        }
        for (index, (word, theirs)) in self.words.iter_mut().zip(&other.words).enumerate() {
            let merged = *word | theirs;
            if merged != *word {
                *word = merged;
                self.changed[index / BITMAP_WORDS_PER_PAGE] = true;
            }
        }
        Ok(())
    }

    fn bit(&self, grain: u64) -> bool {
        self.words
            .get((grain / 64) as usize)
            .is_some_and(|word| word & (1 << (grain % 64)) != 0)
    }

    /// Sets or clears grains `start..stop` (`start < stop <= grains`), noting changed pages.
    fn update(&mut self, start: u64, stop: u64, set: bool) {
        if start >= stop {
            return;
        }
        for index in (start / 64)..=((stop - 1) / 64) {
            let base = index * 64;
            let lo = start.saturating_sub(base);
            let hi = (stop - base).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let Some(word) = self.words.get_mut(index as usize) else {
                return;
            };
            let new = if set { *word | mask } else { *word & !mask };
            if new != *word {
                *word = new;
                self.changed[index as usize / BITMAP_WORDS_PER_PAGE] = true;
            }
        }
    }

    /// The first grain in `from..stop` whose bit equals `set` (`stop` is capped at the grain
    /// count); only the words covering that span are read.
    fn find(&self, from: u64, stop: u64, set: bool) -> Option<u64> {
        let stop = stop.min(self.grains);
        if from >= stop {
            return None;
        }
        let first = (from / 64) as usize;
        let last = ((stop - 1) / 64) as usize;
        let words = self.words.get(first..=last)?;
        for (offset, &word) in words.iter().enumerate() {
            let mut word = if set { word } else { !word };
            if offset == 0 {
                word &= u64::MAX << (from % 64);
            }
            if word != 0 {
                let grain = (first + offset) as u64 * 64 + u64::from(word.trailing_zeros());
                return (grain < stop).then_some(grain);
            }
        }
        None
    }

    /// Pages changed since the last call (ascending); they are now considered written.
    pub fn take_dirty_pages(&mut self) -> Vec<u32> {
        let pages = 0..self.page_count();
        self.take_changed(pages)
    }

    /// Like [`take_dirty_pages`](Self::take_dirty_pages), restricted to the pages covering a
    /// byte range: what must be written before an activity-log transaction evicts that range.
    pub fn take_dirty_pages_in(&mut self, offset: u64, len: u64) -> Result<Vec<u32>, MetaError> {
        let pages = self.pages_covering(offset, len)?;
        Ok(self.take_changed(pages))
    }

    /// The pages holding the bits of a byte range.
    pub fn pages_covering(&self, offset: u64, len: u64) -> Result<Range<u32>, MetaError> {
        Ok(match self.bytes_of(offset, len)? {
            None => 0..0,
            Some((start, end)) => {
                let first = start / self.grain / BITMAP_BITS_PER_PAGE;
                let last = (end - 1) / self.grain / BITMAP_BITS_PER_PAGE;
                first as u32..last as u32 + 1
            }
        })
    }

    fn take_changed(&mut self, pages: Range<u32>) -> Vec<u32> {
        let mut taken = Vec::new();
        for page in pages {
            if let Some(changed) = self.changed.get_mut(page as usize) {
                if std::mem::take(changed) {
                    taken.push(page);
                }
            }
        }
        taken
    }

    /// The on-disk bytes of page `page` for peer slot `slot`.
    pub fn encode_page(&self, slot: u16, page: u32) -> Result<Block, MetaError> {
        let pages = self.page_count();
        if page >= pages {
            return Err(MetaError::NoSuchPage { page, pages });
        }
        let mut block = [0u8; META_BLOCK];
        put(&mut block, 0, &MAGIC);
        put(&mut block, AT_SLOT, &slot.to_le_bytes());
        put(&mut block, AT_PAGE, &page.to_le_bytes());
        let first = page as usize * BITMAP_WORDS_PER_PAGE;
        let words = self.words.iter().skip(first).take(BITMAP_WORDS_PER_PAGE);
        for (index, word) in words.enumerate() {
            put(
                &mut block,
                BITMAP_PAGE_HEADER + index * 8,
                &word.to_le_bytes(),
            );
        }
        seal(&mut block, AT_CRC);
        Ok(block)
    }

    /// Rebuilds a bitmap from all its pages, read from the area starting at byte
    /// `area_offset` (used only to name offsets in errors). Refuses a page with a bad magic or
    /// checksum, a page from another slot or position, and bits beyond the data area.
    pub fn decode(
        data_size: u64,
        grain: u64,
        slot: u16,
        area_offset: u64,
        pages: &[&[u8]],
    ) -> Result<OutOfSync, MetaError> {
        let expected = Self::check_shape(data_size, grain)? as usize;
        if pages.len() != expected {
            return Err(MetaError::BitmapPageCount {
                expected,
                found: pages.len(),
            });
        }
        let mut map = Self::for_layout(data_size, grain);
        for (page, bytes) in pages.iter().enumerate() {
            let offset = area_offset.saturating_add(page as u64 * META_BLOCK as u64);
            map.load_page(slot, page as u32, offset, bytes)?;
        }
        Ok(map)
    }

    fn load_page(
        &mut self,
        slot: u16,
        page: u32,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), MetaError> {
        let block = as_block(bytes, "bitmap page")?;
        check_page_header(block, slot, page, offset)?;
        let first = page as usize * BITMAP_WORDS_PER_PAGE;
        for index in 0..BITMAP_WORDS_PER_PAGE {
            let word = get_u64(block, BITMAP_PAGE_HEADER + index * 8);
            let grain0 = (first + index) as u64 * 64;
            let valid_bits = self.grains.saturating_sub(grain0).min(64);
            let valid_mask = if valid_bits == 64 {
                u64::MAX
            } else {
                (1u64 << valid_bits) - 1
            };
            if word & !valid_mask != 0 {
                return Err(MetaError::BitmapBeyondEnd { slot, page, offset });
            }
            if let Some(slot_word) = self.words.get_mut(first + index) {
                *slot_word = word;
            }
        }
        Ok(())
    }
}

fn check_page_header(block: &Block, slot: u16, page: u32, offset: u64) -> Result<(), MetaError> {
    let magic: [u8; 4] = get_bytes(block, 0);
    if magic != MAGIC {
        return Err(MetaError::BitmapMagic {
            slot,
            page,
            offset,
            found: magic,
        });
    }
    let stored = get_u32(block, AT_CRC);
    let computed = block_crc(block, AT_CRC);
    if stored != computed {
        return Err(MetaError::BitmapChecksum {
            slot,
            page,
            offset,
            stored,
            computed,
        });
    }
    let (found_slot, found_page) = (get_u16(block, AT_SLOT), get_u32(block, AT_PAGE));
    if (found_slot, found_page) != (slot, page) {
        return Err(MetaError::BitmapMisplaced {
            offset,
            expected_slot: slot,
            expected_page: page,
            found_slot,
            found_page,
        });
    }
    Ok(())
}

/// Iterator over merged dirty byte ranges; see [`OutOfSync::dirty_runs`].
pub struct DirtyRuns<'a> {
    map: &'a OutOfSync,
    next: u64,
}

impl Iterator for DirtyRuns<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let map = self.map;
        let start = map.find(self.next, map.grains, true)?;
        let stop = map.find(start, map.grains, false).unwrap_or(map.grains);
        self.next = stop;
        let begin = start * map.grain;
        let end = (stop * map.grain).min(map.data_size);
        Some((begin, end - begin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn next_dirty_skips_clean_words_and_respects_the_end() {
        let mut map = OutOfSync::new(1000 * 4096 + 100, 4096).expect("map");
        assert_eq!(map.next_dirty(0), None);
        map.mark(3 * 4096, 1).expect("mark");
        map.mark(700 * 4096, 2 * 4096).expect("mark");
        map.mark(1000 * 4096, 1).expect("mark the short last grain");
        assert_eq!(map.next_dirty(0), Some(3));
        assert_eq!(map.next_dirty(3), Some(3));
        assert_eq!(map.next_dirty(4), Some(700));
        assert_eq!(map.next_dirty(701), Some(701));
        assert_eq!(map.next_dirty(702), Some(1000));
        assert_eq!(map.next_dirty(1001), None);
        assert_eq!(map.next_dirty(u64::MAX), None);
        assert!(!map.is_dirty(4 * 4096, 696 * 4096).expect("range"));
        assert!(map.is_dirty(4 * 4096, 696 * 4096 + 1).expect("range"));
    }

    proptest! {
        #[test]
        fn next_dirty_matches_a_probe_per_grain(
            grains in 1u64..400,
            marks in proptest::collection::vec((0u64..400, 1u64..70), 0..12),
            from in 0u64..420,
        ) {
            let grain = 4096;
            let mut map = OutOfSync::new(grains * grain, grain).expect("map");
            for (at, len) in marks {
                let at = at % grains;
                let len = len.min(grains - at);
                map.mark(at * grain, len * grain).expect("mark");
            }
            let probed = (from..grains).find(|&g| map.bit(g));
            prop_assert_eq!(map.next_dirty(from), probed);
        }
    }
}
