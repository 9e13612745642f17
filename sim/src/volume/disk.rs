//! A fake leg disk with a volatile write cache, for the data-path world.
//!
//! Why it exists: DESIGN.md §5's data-path semantics are those of a disk with a volatile
//! write cache. Completed writes sit in the cache (readable at once) until a flush makes them
//! durable; a power loss keeps only a random subset of the cached blocks (4 KiB granularity)
//! and every flushed one. The disk also fails writes on purpose (injected I/O errors), refuses
//! writes into blocks it has not allocated while "full" (ENOSPC on a thin leg), and can be
//! slow; the world decides completion times, this module only keeps the bytes.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The cache and allocation granularity.
pub const BLOCK: u64 = 4096;

/// One leg's bytes: what survives a power loss, and what only the cache holds.
#[derive(Debug, Clone)]
pub struct FakeDisk {
    durable: Vec<u8>,
    /// Block → (generation, contents) of cached blocks not yet durable.
    cache: BTreeMap<u64, (u64, Vec<u8>)>,
    generation: u64,
    /// Per block: the generation of its durable contents (flushes may complete out of
    /// order; an older snapshot never overwrites a newer durable version).
    durable_generation: Vec<u64>,
    allocated: Vec<bool>,
}

/// The cached blocks a flush covers: those completed before it was submitted.
pub type FlushSnapshot = Vec<(u64, u64, Vec<u8>)>;

impl FakeDisk {
    pub fn new(size: u64) -> FakeDisk {
        FakeDisk {
            durable: vec![0; size as usize],
            cache: BTreeMap::new(),
            generation: 0,
            durable_generation: vec![0; size.div_ceil(BLOCK) as usize],
            allocated: vec![false; size.div_ceil(BLOCK) as usize],
        }
    }

    pub fn size(&self) -> u64 {
        self.durable.len() as u64
    }

    fn block(&self, block: u64) -> &[u8] {
        match self.cache.get(&block) {
            Some((_, bytes)) => bytes,
            None => {
                let at = (block * BLOCK) as usize;
                let end = (at + BLOCK as usize).min(self.durable.len());
                &self.durable[at..end]
            }
        }
    }

    /// The current contents (cache over durable) of `len` bytes at `offset`, clamped.
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = offset.saturating_add(len).min(self.size());
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let inner = (at - block * BLOCK) as usize;
            let bytes = self.block(block);
            let take = (bytes.len() - inner).min((end - at) as usize);
            out.extend_from_slice(&bytes[inner..inner + take]);
            at += take as u64;
        }
        out
    }

    /// Whether a write of `len` bytes at `offset` touches a block this disk never allocated.
    pub fn needs_allocation(&self, offset: u64, len: u64) -> bool {
        let first = offset / BLOCK;
        let last = offset.saturating_add(len).saturating_sub(1) / BLOCK;
        (first..=last).any(|b| !self.allocated.get(b as usize).copied().unwrap_or(true))
    }

    /// Puts `data` at `offset` into the cache (whole blocks are read, changed, cached).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let end = (offset + data.len() as u64).min(self.size());
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let inner = (at - block * BLOCK) as usize;
            let mut bytes = self.block(block).to_vec();
            let take = (bytes.len() - inner).min((end - at) as usize);
            let from = (at - offset) as usize;
            bytes[inner..inner + take].copy_from_slice(&data[from..from + take]);
            self.generation += 1;
            self.cache.insert(block, (self.generation, bytes));
            if let Some(slot) = self.allocated.get_mut(block as usize) {
                *slot = true;
            }
            at += take as u64;
        }
    }

    /// Zeroes `len` bytes at `offset` (trim and write-zeroes both read back as zeros here).
    pub fn zero(&mut self, offset: u64, len: u64) {
        let len = len.min(self.size().saturating_sub(offset));
        self.write(offset, &vec![0; len as usize]);
    }

    /// What a flush submitted now will make durable.
    pub fn flush_snapshot(&self) -> FlushSnapshot {
        self.cache
            .iter()
            .map(|(&b, (g, bytes))| (b, *g, bytes.clone()))
            .collect()
    }

    /// A flush completed: the blocks of its snapshot become durable (those rewritten since
    /// stay cached with their newer contents, the snapshot's version is what is durable).
    pub fn flush_done(&mut self, snapshot: &FlushSnapshot) {
        for (block, generation, bytes) in snapshot {
            let newer = self.durable_generation[*block as usize] < *generation;
            if newer {
                self.durable_generation[*block as usize] = *generation;
                self.store_durable(*block, bytes);
            }
            if self
                .cache
                .get(block)
                .is_some_and(|(current, _)| current == generation)
            {
                self.cache.remove(block);
            }
        }
    }

    fn store_durable(&mut self, block: u64, bytes: &[u8]) {
        let at = (block * BLOCK) as usize;
        self.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Power loss: every cached block either made it to the medium or vanished (coin flip
    /// each, `keep_percent` in 100 to survive). Returns (kept, lost) block counts.
    pub fn power_loss(&mut self, rng: &mut ChaCha8Rng, keep_percent: u32) -> (usize, usize) {
        let cache = std::mem::take(&mut self.cache);
        let (mut kept, mut lost) = (0, 0);
        for (block, (generation, bytes)) in cache {
            if rng.gen_range(0..100) < keep_percent {
                self.durable_generation[block as usize] = generation;
                self.store_durable(block, &bytes);
                kept += 1;
            } else {
                lost += 1;
            }
        }
        (kept, lost)
    }

    /// Blocks in the cache.
    pub fn cached_blocks(&self) -> usize {
        self.cache.len()
    }

    /// The whole current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.read(0, self.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn flushed_writes_survive_power_loss_and_unflushed_may_not() {
        let mut disk = FakeDisk::new(4 * BLOCK);
        disk.write(0, &[1; 4096]);
        let snapshot = disk.flush_snapshot();
        disk.write(BLOCK, &[2; 4096]);
        disk.flush_done(&snapshot);
        assert_eq!(disk.read(0, 1), vec![1]);
        assert_eq!(disk.read(BLOCK, 1), vec![2]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        disk.power_loss(&mut rng, 0);
        assert_eq!(disk.read(0, 1), vec![1]);
        assert_eq!(disk.read(BLOCK, 1), vec![0]);
    }

    #[test]
    fn a_block_rewritten_after_a_flush_keeps_the_flushed_version_durable() {
        let mut disk = FakeDisk::new(2 * BLOCK);
        disk.write(0, &[1; 4096]);
        let snapshot = disk.flush_snapshot();
        disk.write(0, &[3; 4096]);
        disk.flush_done(&snapshot);
        assert_eq!(disk.read(0, 1), vec![3]);
        assert_eq!(disk.cached_blocks(), 1);
        disk.power_loss(&mut ChaCha8Rng::seed_from_u64(2), 0);
        assert_eq!(disk.read(0, 1), vec![1], "the flushed version is durable");
    }

    #[test]
    fn flushes_completing_out_of_order_keep_the_newest_durable() {
        let mut disk = FakeDisk::new(BLOCK);
        disk.write(0, &[1; 4096]);
        let older = disk.flush_snapshot();
        disk.write(0, &[2; 4096]);
        let newer = disk.flush_snapshot();
        disk.flush_done(&newer);
        disk.flush_done(&older);
        disk.power_loss(&mut ChaCha8Rng::seed_from_u64(3), 0);
        assert_eq!(disk.read(0, 1), vec![2]);
    }

    #[test]
    fn unaligned_writes_and_reads_round_trip() {
        let mut disk = FakeDisk::new(3 * BLOCK);
        disk.write(4000, &[7; 200]);
        assert_eq!(disk.read(3990, 20)[..10], [0; 10]);
        assert_eq!(disk.read(4000, 200), vec![7; 200]);
        assert!(disk.needs_allocation(2 * BLOCK, 10));
        assert!(!disk.needs_allocation(4000, 100));
    }
}
