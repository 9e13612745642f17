//! The Raft log as the core sees it: in memory, mirrored to durable storage by the shim.
//!
//! raft-rs asks a `Storage` for entries and snapshots. This one keeps the log since the last
//! snapshot in memory and serves followers a snapshot that carries the real cluster state
//! (raft-rs's own `MemStorage` serves snapshots without application data). Every change made
//! here is also handed to the shim as an action, so that after a restart the shim can give
//! back exactly what was persisted ([`DurableState`]).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// What survives a restart: the shim persists it and hands it back to `NodeCore::restore`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DurableState {
    pub hard_state: HardState,
    /// The latest snapshot (metadata index 0 when none).
    pub snapshot: Snapshot,
    /// Entries after the snapshot, in order.
    pub entries: Vec<Entry>,
}

/// Replaces every entry with an index >= the first of `new`, then appends `new`: how Raft
/// overwrites an uncommitted suffix. One definition for the core's log, the daemon's durable
/// log and the simulator's fake disk, so all three agree on what a write leaves behind.
pub fn splice(entries: &mut Vec<Entry>, new: &[Entry]) {
    let (Some(first_new), Some(first_old)) = (new.first(), entries.first()) else {
        entries.extend_from_slice(new);
        return;
    };
    if first_new.index <= first_old.index {
        entries.clear();
    } else {
        let keep = (first_new.index - first_old.index) as usize;
        entries.truncate(keep);
    }
    entries.extend_from_slice(new);
}

/// The in-memory log plus the snapshot served to lagging followers.
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last snapshot the log was compacted to (or installed from the leader).
    snapshot: Snapshot,
    /// `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    /// The most recent applied state, handed to followers that need a snapshot.
    serving: Snapshot,
}

impl LogStore {
    pub fn from_durable(durable: DurableState) -> LogStore {
        let conf_state = durable.snapshot.get_metadata().get_conf_state().clone();
        LogStore {
            hard_state: durable.hard_state,
            conf_state,
            serving: durable.snapshot.clone(),
            snapshot: durable.snapshot,
            entries: durable.entries,
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn snapshot_data(&self) -> &[u8] {
        &self.snapshot.data
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Appends entries, replacing any suffix they overlap (Raft may overwrite uncommitted ones).
    pub fn append(&mut self, new: &[Entry]) {
        splice(&mut self.entries, new);
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = snapshot.get_metadata();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot.clone();
        self.serving = snapshot.clone();
    }

    /// Records the state as of `index` (already applied) as the snapshot served to followers.
    pub fn set_serving(&mut self, index: u64, term: u64, data: Vec<u8>) {
        let mut snapshot = Snapshot::default();
        snapshot.data = data.into();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.serving = snapshot;
    }

    /// Makes the serving snapshot the base of the log and drops the entries it covers.
    /// Returns that snapshot for the shim to persist.
    pub fn compact_to_serving(&mut self) -> Snapshot {
        let index = self.serving.get_metadata().index;
        let drop = index.saturating_sub(self.snapshot_index()) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = self.serving.clone();
        self.snapshot.clone()
    }

    pub fn entries_since_snapshot(&self) -> usize {
        self.entries.len()
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.snapshot_index() + 1;
        let mut slice = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut slice, max_size.into());
        Ok(slice)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let snapshot_index = self.snapshot_index();
        if index == snapshot_index {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let position = (index - snapshot_index - 1) as usize;
        self.entries
            .get(position)
            .map(|entry| entry.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.serving.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.serving.clone())
    }
}

#[cfg(test)]
mod splice_tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut entry = Entry::default();
        entry.index = index;
        entry.term = term;
        entry
    }

    fn ids(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn splice_appends_overwrites_a_suffix_or_replaces_everything() {
        let mut log = vec![entry(5, 1), entry(6, 1), entry(7, 1)];
        splice(&mut log, &[entry(8, 1)]);
        assert_eq!(ids(&log), [(5, 1), (6, 1), (7, 1), (8, 1)]);
        splice(&mut log, &[entry(7, 2)]);
        assert_eq!(ids(&log), [(5, 1), (6, 1), (7, 2)]);
        splice(&mut log, &[entry(3, 3)]);
        assert_eq!(ids(&log), [(3, 3)]);
        splice(&mut log, &[]);
        assert_eq!(ids(&log), [(3, 3)]);
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

    #[test]
    fn append_overwrites_the_overlapping_suffix() {
        let mut store = LogStore::from_durable(DurableState::default());
        store.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        store.append(&[entry(2, 2)]);
        assert_eq!(store.last_index().unwrap(), 2);
        assert_eq!(store.term(2).unwrap(), 2);
        assert_eq!(store.term(1).unwrap(), 1);
    }

    #[test]
    fn compaction_keeps_later_entries_and_serves_the_snapshot() {
        let mut store = LogStore::from_durable(DurableState::default());
        store.append(&(1..=10).map(|index| entry(index, 1)).collect::<Vec<_>>());
        store.set_serving(6, 1, b"state".to_vec());
        let snapshot = store.compact_to_serving();
        assert_eq!(snapshot.get_metadata().index, 6);
        assert_eq!(store.first_index().unwrap(), 7);
        assert_eq!(store.term(6).unwrap(), 1);
        assert!(matches!(
            store.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let entries = store
            .entries(7, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(store.snapshot(0, 2).unwrap().data, b"state".to_vec());
    }
}
