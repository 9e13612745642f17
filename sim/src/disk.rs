//! The fake disk holding one node's Raft log, with the durability rules of a real one.
//!
//! It mirrors `platform-linux/src/raftlog.rs`: a `Persist` appends a hard state and entries
//! (an entry at index i replaces every entry >= i) or installs a leader's snapshot (which
//! replaces the whole log); a `Compact` stores a snapshot of applied state and drops the
//! entries it covers. The writes the real log would refuse (gaps, entries inside the snapshot,
//! older snapshots) are refused here too, because the real daemon would stop on them.
//!
//! Unlike the real shim, writes are asynchronous like io_uring: each is submitted and becomes
//! durable later, in submission order. Only durable writes survive. A process crash keeps a
//! random prefix of the writes still in flight (the kernel may already have written them);
//! power loss keeps none of them.

use std::collections::VecDeque;
use tandem_core::storage::splice;

use raft::eraftpb::{Entry, HardState, Snapshot};
use tandem_core::DurableState;

/// A write the core asked for.
#[derive(Clone, Debug)]
pub enum Write {
    Persist {
        number: u64,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
    },
    Compact {
        snapshot: Snapshot,
    },
}

/// A write submitted but not yet durable.
struct InFlight {
    seq: u64,
    write: Write,
}

/// What is on the platter.
#[derive(Clone, Debug, Default)]
struct Image {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

/// One node's disk: the durable image and the writes in flight.
pub struct Disk {
    image: Image,
    in_flight: VecDeque<InFlight>,
    next_seq: u64,
    /// When the last submitted write becomes durable (writes complete in order).
    last_done_at: u64,
}

impl Disk {
    /// The empty log a joining node starts with.
    pub fn empty() -> Disk {
        Disk {
            image: Image::default(),
            in_flight: VecDeque::new(),
            next_seq: 1,
            last_done_at: 0,
        }
    }

    /// The log `tandem init` writes: the founding snapshot installed, durable.
    pub fn founded(durable: &DurableState) -> Result<Disk, String> {
        let mut disk = Disk::empty();
        disk.apply(Write::Persist {
            number: 0,
            hard_state: Some(durable.hard_state.clone()),
            entries: durable.entries.clone(),
            snapshot: Some(durable.snapshot.clone()),
        })?;
        Ok(disk)
    }

    /// Submits a write that becomes durable `delay` ms from `now` (but never before the
    /// writes submitted earlier). Returns its sequence number and completion time.
    pub fn submit(&mut self, write: Write, now: u64, delay: u64) -> (u64, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let done_at = (now + delay).max(self.last_done_at);
        self.last_done_at = done_at;
        self.in_flight.push_back(InFlight { seq, write });
        (seq, done_at)
    }

    /// Makes every write up to `seq` durable. Returns the highest `Persist` number among
    /// them, or an error when the real log would have refused one of them.
    pub fn complete(&mut self, seq: u64) -> Result<Option<u64>, String> {
        let mut persisted = None;
        while self.in_flight.front().is_some_and(|write| write.seq <= seq) {
            let Some(done) = self.in_flight.pop_front() else {
                break;
            };
            if let Write::Persist { number, .. } = &done.write {
                persisted = Some(*number);
            }
            self.apply(done.write)?;
        }
        Ok(persisted)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The process died: the first `keep` writes in flight reached the disk, the rest did
    /// not. Returns (kept, lost), or an error if a kept write is one the log would refuse.
    pub fn crash(&mut self, keep: usize) -> Result<(usize, usize), String> {
        let total = self.in_flight.len();
        let keep = keep.min(total);
        let kept: Vec<InFlight> = self.in_flight.drain(..keep).collect();
        self.in_flight.clear();
        for write in kept {
            self.apply(write.write)?;
        }
        Ok((keep, total - keep))
    }

    /// What a restarting node reads back (as `DurableLog::open` returns it).
    pub fn durable_state(&self) -> DurableState {
        let mut hard_state = self.image.hard_state.clone();
        if let Some(snapshot) = &self.image.snapshot {
            let meta = snapshot.get_metadata();
            hard_state.commit = hard_state.commit.max(meta.index);
            hard_state.term = hard_state.term.max(meta.term);
        }
        DurableState {
            hard_state,
            snapshot: self.image.snapshot.clone().unwrap_or_default(),
            entries: self.image.entries.clone(),
        }
    }

    fn apply(&mut self, write: Write) -> Result<(), String> {
        match write {
            Write::Persist {
                hard_state,
                entries,
                snapshot: Some(snapshot),
                ..
            } => self.install(hard_state, entries, snapshot),
            Write::Persist {
                hard_state,
                entries,
                snapshot: None,
                ..
            } => {
                self.check_follows(&entries)?;
                if let Some(hard_state) = hard_state {
                    self.image.hard_state = hard_state;
                }
                splice(&mut self.image.entries, &entries);
                Ok(())
            }
            Write::Compact { snapshot } => self.compact(snapshot),
        }
    }

    fn snapshot_index(&self) -> Option<u64> {
        self.image
            .snapshot
            .as_ref()
            .map(|snapshot| snapshot.get_metadata().index)
    }

    fn last_index(&self) -> u64 {
        self.image
            .entries
            .last()
            .map(|entry| entry.index)
            .or(self.snapshot_index())
            .unwrap_or(0)
    }

    /// The checks of `DurableLog::check_follows`.
    fn check_follows(&self, entries: &[Entry]) -> Result<(), String> {
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(format!(
                    "entries not consecutive: {} then {}",
                    pair[0].index, pair[1].index
                ));
            }
        }
        let Some(first) = entries.first().map(|entry| entry.index) else {
            return Ok(());
        };
        if let Some(snapshot) = self.snapshot_index().filter(|&index| first <= index) {
            return Err(format!(
                "entry {first} is already covered by the snapshot at {snapshot}"
            ));
        }
        let has_base = !self.image.entries.is_empty() || self.image.snapshot.is_some();
        if has_base && first > self.last_index() + 1 {
            return Err(format!(
                "entry {first} would leave a gap after entry {}",
                self.last_index()
            ));
        }
        Ok(())
    }

    /// A snapshot from the leader replaces the whole log (`DurableLog::install`).
    fn install(
        &mut self,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Snapshot,
    ) -> Result<(), String> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        if let Some(current) = self.snapshot_index().filter(|&current| index < current) {
            return Err(format!(
                "snapshot at index {index} is older than the stored one at {current}"
            ));
        }
        if let Some(first) = entries.first().filter(|first| first.index != index + 1) {
            return Err(format!(
                "entries after a snapshot at {index} must start at {}, not {}",
                index + 1,
                first.index
            ));
        }
        let mut hard_state = hard_state.unwrap_or_else(|| self.image.hard_state.clone());
        hard_state.commit = hard_state.commit.max(index);
        hard_state.term = hard_state.term.max(term);
        self.image = Image {
            hard_state,
            snapshot: Some(snapshot),
            entries,
        };
        Ok(())
    }

    /// Stores a snapshot of applied state and drops the entries it covers.
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), String> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        if let Some(current) = self.snapshot_index().filter(|&current| index < current) {
            return Err(format!(
                "compaction to index {index} is behind the stored snapshot at {current}"
            ));
        }
        if index > self.last_index() {
            return Err(format!(
                "compaction to index {index} is past the last durable entry {}",
                self.last_index()
            ));
        }
        if let Some(entry) = self.image.entries.iter().find(|entry| entry.index == index) {
            if entry.term != term {
                return Err(format!(
                    "snapshot term {term} differs from entry {index}'s term {}",
                    entry.term
                ));
            }
        }
        self.image.entries.retain(|entry| entry.index > index);
        let hard_state = &mut self.image.hard_state;
        hard_state.commit = hard_state.commit.max(index);
        hard_state.term = hard_state.term.max(term);
        self.image.snapshot = Some(snapshot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut entry = Entry::default();
        entry.index = index;
        entry.term = term;
        entry
    }

    fn persist(number: u64, entries: Vec<Entry>) -> Write {
        let mut hard_state = HardState::default();
        hard_state.term = 1;
        Write::Persist {
            number,
            hard_state: Some(hard_state),
            entries,
            snapshot: None,
        }
    }

    #[test]
    fn writes_become_durable_in_order_and_crashes_keep_a_prefix() {
        let mut disk = Disk::empty();
        let (first, done_first) = disk.submit(persist(1, vec![entry(1, 1)]), 0, 10);
        let (_, done_second) = disk.submit(persist(2, vec![entry(2, 1)]), 0, 1);
        assert!(
            done_second >= done_first,
            "completion order follows submission"
        );
        let (_, _) = disk.submit(persist(3, vec![entry(3, 1)]), 0, 1);
        assert_eq!(disk.complete(first), Ok(Some(1)));
        assert_eq!(disk.crash(1), Ok((1, 1)));
        let durable = disk.durable_state();
        assert_eq!(durable.entries.len(), 2);
        assert_eq!(disk.in_flight(), 0);
    }

    #[test]
    fn power_loss_keeps_only_completed_writes() {
        let mut disk = Disk::empty();
        disk.submit(persist(1, vec![entry(1, 1)]), 0, 1);
        assert_eq!(disk.crash(0), Ok((0, 1)));
        assert!(disk.durable_state().entries.is_empty());
    }

    #[test]
    fn refuses_what_the_real_log_refuses() {
        let mut disk = Disk::empty();
        let (seq, _) = disk.submit(persist(1, vec![entry(1, 1), entry(3, 1)]), 0, 1);
        assert!(disk.complete(seq).is_err());
        let mut disk = Disk::empty();
        let (seq, _) = disk.submit(persist(1, vec![entry(1, 1)]), 0, 1);
        disk.complete(seq).unwrap();
        let (seq, _) = disk.submit(persist(2, vec![entry(3, 1)]), 0, 1);
        assert!(disk.complete(seq).unwrap_err().contains("gap"));
    }

    #[test]
    fn compaction_drops_covered_entries() {
        let mut disk = Disk::empty();
        let (seq, _) = disk.submit(persist(1, (1..=5).map(|i| entry(i, 1)).collect()), 0, 1);
        disk.complete(seq).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 3;
        snapshot.mut_metadata().term = 1;
        let (seq, _) = disk.submit(Write::Compact { snapshot }, 0, 1);
        assert_eq!(disk.complete(seq), Ok(None));
        let durable = disk.durable_state();
        assert_eq!(durable.snapshot.get_metadata().index, 3);
        assert_eq!(durable.entries.len(), 2);
        assert_eq!(durable.hard_state.commit, 3);
    }
}
