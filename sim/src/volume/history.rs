//! The workload client's history of the volume, and the rule-1 checker built on it.
//!
//! Why it exists: "no acknowledged write is lost" can only be checked against what the client
//! was told. Every block written by the workload carries the id of its write, so a read tells
//! exactly which version a block holds. Per 4 KiB block the history keeps every version in the
//! order the client issued them, and two indexes into that list:
//!
//! - `floor`: the newest acknowledged version. A read must return it or a *later* version
//!   (one still in flight, or one that failed but may have landed), never an older one.
//! - `durable`: the newest version acknowledged with FUA, or acknowledged before a FLUSH
//!   that was then acknowledged.
//!
//! The exact rule after power loss: when the volume continues from a leg that lost power
//! since it last became UpToDate (its node is the primary when the power goes, or becomes
//! the primary later), writes that were acknowledged but not made durable may be gone: every
//! block's floor drops to its durable version. Nothing else lowers a floor, except a forced
//! promotion, which the operator ordered knowing it may lose writes: then every version of
//! the block is acceptable until the next acknowledged write.

use std::collections::BTreeMap;

use super::disk::BLOCK;

/// What a block holds, as far as the checker can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Zero,
    Data(u64),
}

#[derive(Clone, Debug)]
struct Version {
    content: Content,
    acked: bool,
}

/// One block's versions.
#[derive(Clone, Debug)]
struct BlockHistory {
    versions: Vec<Version>,
    floor: usize,
    durable: usize,
}

/// A request the client issued, until it completes.
#[derive(Clone, Debug)]
pub struct Issued {
    pub blocks: Vec<(u64, usize)>,
    pub fua: bool,
    /// For a flush: the floors when it was issued (what it makes durable).
    pub flush_floors: Option<Vec<usize>>,
    /// A plain write in flight when the volume's leg lost power: a copy may already have
    /// been in that leg's cache and vanished, so a later acknowledgement (from a deposed
    /// primary) promises nothing.
    pub excused: bool,
}

/// The client's view of the volume.
#[derive(Debug)]
pub struct History {
    blocks: Vec<BlockHistory>,
    issued: BTreeMap<u64, Issued>,
    pub acked_writes: u64,
    pub acked_flushes: u64,
    pub failed: u64,
    /// Acknowledgements of writes in flight across a power loss of the volume's leg.
    pub excused: u64,
}

/// The bytes of block `block` written by write `id`: a header, then a fill.
pub fn block_bytes(id: u64, block: u64) -> Vec<u8> {
    let mut bytes = vec![(id % 251) as u8 | 1; BLOCK as usize];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    bytes[8..16].copy_from_slice(&block.to_le_bytes());
    bytes
}

/// What a block read back holds (`Err` describes bytes no write produced).
pub fn classify(block: u64, bytes: &[u8]) -> Result<Content, String> {
    if bytes.iter().all(|&b| b == 0) {
        return Ok(Content::Zero);
    }
    let id = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if bytes == block_bytes(id, block).as_slice() {
        Ok(Content::Data(id))
    } else {
        Err(format!(
            "block {block} holds bytes no write produced (header id {id})"
        ))
    }
}

impl History {
    pub fn new(size: u64) -> History {
        let initial = BlockHistory {
            versions: vec![Version {
                content: Content::Zero,
                acked: true,
            }],
            floor: 0,
            durable: 0,
        };
        History {
            blocks: vec![initial; size.div_ceil(BLOCK) as usize],
            issued: BTreeMap::new(),
            acked_writes: 0,
            acked_flushes: 0,
            failed: 0,
            excused: 0,
        }
    }

    /// A request accepted by a primary: a write (`data: true`) or a zeroing of `blocks`.
    pub fn issue(&mut self, id: u64, first: u64, count: u64, data: bool, fua: bool) {
        let mut blocks = Vec::new();
        for block in first..first + count {
            let Some(history) = self.blocks.get_mut(block as usize) else {
                continue;
            };
            let content = if data {
                Content::Data(id)
            } else {
                Content::Zero
            };
            history.versions.push(Version {
                content,
                acked: false,
            });
            blocks.push((block, history.versions.len() - 1));
        }
        let issued = Issued {
            blocks,
            fua,
            flush_floors: None,
            excused: false,
        };
        self.issued.insert(id, issued);
    }

    /// A flush accepted by a primary.
    pub fn issue_flush(&mut self, id: u64) {
        let floors = self.blocks.iter().map(|b| b.floor).collect();
        let issued = Issued {
            blocks: Vec::new(),
            fua: false,
            flush_floors: Some(floors),
            excused: false,
        };
        self.issued.insert(id, issued);
    }

    /// Request `id` completed (`ok`: acknowledged). Unknown ids are ignored.
    pub fn complete(&mut self, id: u64, ok: bool) {
        let Some(issued) = self.issued.remove(&id) else {
            return;
        };
        if !ok {
            self.failed += 1;
            return;
        }
        if issued.excused {
            self.excused += 1;
            return;
        }
        if let Some(floors) = issued.flush_floors {
            self.acked_flushes += 1;
            for (history, floor) in self.blocks.iter_mut().zip(floors) {
                history.durable = history.durable.max(floor);
            }
            return;
        }
        self.acked_writes += 1;
        for (block, index) in issued.blocks {
            let history = &mut self.blocks[block as usize];
            history.versions[index].acked = true;
            history.floor = history.floor.max(index);
            if issued.fua {
                history.durable = history.durable.max(index);
            }
        }
    }

    /// Forgets a request that will never complete (its primary is gone); it stays a
    /// possible version of its blocks.
    pub fn abandon(&mut self, id: u64) {
        self.issued.remove(&id);
    }

    /// The volume continues from a leg that lost power: unflushed acknowledged writes may
    /// be gone.
    pub fn power_loss(&mut self) {
        for history in &mut self.blocks {
            history.floor = history.durable.min(history.floor);
        }
        for issued in self.issued.values_mut() {
            if issued.flush_floors.is_none() && !issued.fua {
                issued.excused = true;
            }
        }
    }

    /// A forced promotion: the operator accepted losing anything.
    pub fn forced(&mut self) {
        for history in &mut self.blocks {
            history.floor = 0;
            history.durable = 0;
        }
    }

    /// Checks one block's bytes against its allowed versions.
    pub fn check_block(&self, block: u64, bytes: &[u8]) -> Result<(), String> {
        let content = classify(block, bytes)?;
        let Some(history) = self.blocks.get(block as usize) else {
            return Ok(());
        };
        let allowed = history.versions[history.floor..]
            .iter()
            .any(|v| v.content == content);
        if allowed {
            return Ok(());
        }
        let newest = &history.versions[history.floor];
        let describe = |c: Content| match c {
            Content::Zero => "zeros".to_string(),
            Content::Data(id) => format!("write {id}"),
        };
        Err(format!(
            "block {block} (offset {}) holds {}, but {} was acknowledged after it ({} versions \
             issued, {} acknowledged)",
            block * BLOCK,
            describe(content),
            describe(newest.content),
            history.versions.len(),
            history.versions.iter().filter(|v| v.acked).count()
        ))
    }

    /// Whether request `id` is an outstanding write (not a flush).
    pub fn is_write(&self, id: u64) -> bool {
        self.issued
            .get(&id)
            .is_some_and(|issued| issued.flush_floors.is_none())
    }

    /// Requests issued and not completed.
    pub fn in_flight(&self) -> usize {
        self.issued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledged_write_must_be_read_back_or_a_later_one() {
        let mut history = History::new(4 * BLOCK);
        history.issue(1, 0, 2, true, false);
        assert!(history.check_block(0, &[0; 4096]).is_ok(), "not acked yet");
        history.complete(1, true);
        assert!(history.check_block(0, &[0; 4096]).is_err());
        assert!(history.check_block(0, &block_bytes(1, 0)).is_ok());
        history.issue(2, 0, 1, true, false);
        assert!(
            history.check_block(0, &block_bytes(2, 0)).is_ok(),
            "in flight"
        );
        assert!(
            history.check_block(0, &block_bytes(2, 1)).is_err(),
            "wrong block"
        );
    }

    #[test]
    fn power_loss_keeps_only_what_was_flushed() {
        let mut history = History::new(2 * BLOCK);
        history.issue(1, 0, 1, true, false);
        history.complete(1, true);
        history.issue_flush(2);
        history.complete(2, true);
        history.issue(3, 0, 1, true, false);
        history.complete(3, true);
        history.power_loss();
        assert!(history.check_block(0, &block_bytes(1, 0)).is_ok());
        assert!(history.check_block(0, &[0; 4096]).is_err());
    }
}
