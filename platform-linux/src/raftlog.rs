//! The durable Raft log: what this node promised the cluster, kept across crashes.
//!
//! raft-rs is sans-IO: before the daemon may send the messages of a `Ready`, the entries and
//! hard state in it must be on disk, and after a crash exactly that must come back. A lost or
//! altered entry would let this node break a promise it made to the quorum (one writer, no lost
//! acknowledged write), so the rules are strict: a record whose checksum fails, a bad header or
//! a file of another cluster is an error naming the file and byte offset, never repaired; only
//! an incomplete final record, which a crash in the middle of an append leaves and which was
//! never acknowledged, is cut off (and reported in [`Recovered::torn_tail`]).
//!
//! Layout of the directory (e.g. `<state>/raft`):
//! * `log`: header, then records `[len u32 LE][crc32c u32 LE][kind u8][payload]`, the crc
//!   covering len, kind and payload. Kinds: an `Entry` (appending index i replaces every entry
//!   >= i on replay) or a `HardState` (the last one wins).
//! * `snapshot`: header, then one record holding a `Snapshot`; the kind says whether it came
//!   from local compaction or from the leader. Absent until the first one.
//!
//! Both headers are `magic[8] version u32 cluster[16] base_index u64 crc32c u32` (little
//! endian). In `log`, base_index is the snapshot index the file was last rewritten against, so
//! recovery can tell a snapshot install that was interrupted before the log was rewritten.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tandem_core::storage::splice;

use protobuf::Message;
use raft::eraftpb::{Entry, HardState, Snapshot};
use tandem_core::ClusterId;

use crate::statedir::{sync_parent, write_atomic};

const LOG_FILE: &str = "log";
const SNAPSHOT_FILE: &str = "snapshot";
const LOG_MAGIC: [u8; 8] = *b"TDMRLOG\0";
const SNAPSHOT_MAGIC: [u8; 8] = *b"TDMSNAP\0";
/// The only on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 16 + 8 + 4;
const RECORD_HEADER_LEN: usize = 4 + 4 + 1;
/// Largest log record accepted; a larger length field is corruption, not a torn tail.
const MAX_RECORD_LEN: u32 = 64 << 20;
/// A torn write leaves whole sectors unwritten (zeros); used to recognise one.
const SECTOR: usize = 512;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT_COMPACTED: u8 = 3;
const KIND_SNAPSHOT_INSTALLED: u8 = 4;

/// The Raft log of one node, on disk and mirrored in memory (for compaction and metrics).
#[derive(Debug)]
pub struct DurableLog {
    log_path: PathBuf,
    snapshot_path: PathBuf,
    cluster: ClusterId,
    file: File,
    hard_state: HardState,
    /// (index, term) of the stored snapshot.
    snapshot: Option<(u64, u64)>,
    entries: Vec<Entry>,
    /// Set when a write or fsync failed: the file's state is unknown, so no more writes.
    poisoned: bool,
}

/// What [`DurableLog::open`] found: the state to hand to raft-rs.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Set when an incomplete final record (a crash during an append) was cut off.
    pub torn_tail: Option<TornTail>,
}

/// An incomplete final record removed at open: where it began and how many bytes it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub discarded_bytes: u64,
}

/// Why the log could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no raft log at {} (was this node initialised?)", path.display())]
    Missing { path: PathBuf },
    #[error("{} already exists; refusing to create a new raft log over it", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("{} is corrupt at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{} belongs to cluster {found}, not to this node's cluster {expected}", path.display())]
    Foreign {
        path: PathBuf,
        expected: ClusterId,
        found: ClusterId,
    },
    #[error("{} has format version {version}; this tandem reads only version {FORMAT_VERSION}", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("refusing to write {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("an earlier write to {} failed; no more writes until the daemon restarts and recovers the log", path.display())]
    Poisoned { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn encode_header(magic: [u8; 8], cluster: ClusterId, base_index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(cluster.as_bytes());
    out.extend_from_slice(&base_index.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
    out
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks a file header and returns its base index.
fn decode_header(
    path: &Path,
    bytes: &[u8],
    magic: [u8; 8],
    cluster: ClusterId,
) -> Result<u64, LogError> {
    if bytes.len() < HEADER_LEN {
        let reason = format!(
            "the file has {} bytes, fewer than its {HEADER_LEN}-byte header",
            bytes.len()
        );
        return Err(corrupt(path, bytes.len() as u64, reason));
    }
    if bytes[..8] != magic {
        return Err(corrupt(
            path,
            0,
            "bad magic: not a tandem raft file of this kind",
        ));
    }
    let stored_crc = le_u32(bytes, HEADER_LEN - 4);
    if crc32c::crc32c(&bytes[..HEADER_LEN - 4]) != stored_crc {
        return Err(corrupt(path, 0, "header checksum mismatch"));
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let mut found = [0u8; 16];
    found.copy_from_slice(&bytes[12..28]);
    if found != cluster.0 {
        return Err(LogError::Foreign {
            path: path.to_path_buf(),
            expected: cluster,
            found: ClusterId(found),
        });
    }
    Ok(le_u64(bytes, 28))
}

fn record_crc(len: u32, kind: u8, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &[kind]);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one framed record to `out`; refuses payloads over `max_len`.
fn encode_record(
    out: &mut Vec<u8>,
    path: &Path,
    kind: u8,
    payload: &[u8],
    max_len: u32,
) -> Result<(), LogError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= max_len)
        .ok_or_else(|| LogError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "a record of {} bytes exceeds the {max_len}-byte limit",
                payload.len()
            ),
        })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(len, kind, payload).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

fn encode_message(path: &Path, message: &dyn Message) -> Result<Vec<u8>, LogError> {
    message.write_to_bytes().map_err(|err| LogError::Invalid {
        path: path.to_path_buf(),
        reason: format!("cannot encode a raft message: {err}"),
    })
}

/// One checksummed record found in a file.
struct Record<'a> {
    offset: u64,
    kind: u8,
    payload: &'a [u8],
}

/// The records of a file body and, if its end is an incomplete record, where that began.
struct Scan<'a> {
    records: Vec<Record<'a>>,
    torn_at: Option<u64>,
}

/// Reads records from `start` to the end of `bytes`. A complete record with a bad checksum
/// is corruption, except when it is the last one and holds a zeroed sector: that is an
/// append cut short by a crash (the file grew, the data never reached the disk).
fn scan_records<'a>(
    path: &Path,
    bytes: &'a [u8],
    start: usize,
    max_len: u32,
) -> Result<Scan<'a>, LogError> {
    let mut records = Vec::new();
    let mut pos = start;
    while pos < bytes.len() {
        let offset = pos as u64;
        if bytes.len() - pos < RECORD_HEADER_LEN {
            return Ok(Scan {
                records,
                torn_at: Some(offset),
            });
        }
        let len = le_u32(bytes, pos);
        if len > max_len {
            let reason = format!("record length {len} exceeds the {max_len}-byte limit");
            return Err(corrupt(path, offset, reason));
        }
        let end = pos + RECORD_HEADER_LEN + len as usize;
        if end > bytes.len() {
            return Ok(Scan {
                records,
                torn_at: Some(offset),
            });
        }
        let kind = bytes[pos + 8];
        let payload = &bytes[pos + RECORD_HEADER_LEN..end];
        if record_crc(len, kind, payload) != le_u32(bytes, pos + 4) {
            if end == bytes.len() && holds_zero_sector(bytes, pos, end) {
                return Ok(Scan {
                    records,
                    torn_at: Some(offset),
                });
            }
            return Err(corrupt(
                path,
                offset,
                "checksum mismatch in a complete record",
            ));
        }
        records.push(Record {
            offset,
            kind,
            payload,
        });
        pos = end;
    }
    Ok(Scan {
        records,
        torn_at: None,
    })
}

/// Whether `bytes[start..end]` contains a whole, sector-aligned run of zeros.
fn holds_zero_sector(bytes: &[u8], start: usize, end: usize) -> bool {
    let first = start.div_ceil(SECTOR) * SECTOR;
    (first..end)
        .step_by(SECTOR)
        .filter(|at| at + SECTOR <= end)
        .any(|at| bytes[at..at + SECTOR].iter().all(|&byte| byte == 0))
}

/// A snapshot file: the snapshot and whether it was installed from the leader.
struct StoredSnapshot {
    snapshot: Snapshot,
    installed: bool,
}

fn read_snapshot(path: &Path, cluster: ClusterId) -> Result<Option<StoredSnapshot>, LogError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(path)(err)),
    };
    let base = decode_header(path, &bytes, SNAPSHOT_MAGIC, cluster)?;
    let scan = scan_records(path, &bytes, HEADER_LEN, u32::MAX)?;
    if let Some(offset) = scan.torn_at {
        // Snapshot files are written whole and renamed into place: they are never torn.
        return Err(corrupt(path, offset, "incomplete snapshot record"));
    }
    let record = match scan.records.as_slice() {
        [record] => record,
        [] => return Err(corrupt(path, HEADER_LEN as u64, "no snapshot record")),
        [_, extra, ..] => return Err(corrupt(path, extra.offset, "data after the snapshot")),
    };
    let installed = match record.kind {
        KIND_SNAPSHOT_COMPACTED => false,
        KIND_SNAPSHOT_INSTALLED => true,
        kind => {
            let reason = format!("unknown snapshot record kind {kind}");
            return Err(corrupt(path, record.offset, reason));
        }
    };
    let snapshot = Snapshot::parse_from_bytes(record.payload)
        .map_err(|err| corrupt(path, record.offset, format!("undecodable snapshot: {err}")))?;
    let index = snapshot.get_metadata().index;
    if index != base {
        let reason = format!("header says snapshot index {base}, the snapshot says {index}");
        return Err(corrupt(path, 0, reason));
    }
    Ok(Some(StoredSnapshot {
        snapshot,
        installed,
    }))
}

/// Raises the hard state's commit (and term) to a snapshot's, as raft-rs expects after one.
fn covering(mut hard_state: HardState, snapshot: Option<(u64, u64)>) -> HardState {
    if let Some((index, term)) = snapshot {
        hard_state.commit = hard_state.commit.max(index);
        hard_state.term = hard_state.term.max(term);
    }
    hard_state
}

/// Replays log records into (hard state, entries). Entries at or below the snapshot index
/// are superseded by it; `drop_entries` discards all (an interrupted leader snapshot install).
fn replay(
    path: &Path,
    records: &[Record<'_>],
    snapshot: Option<(u64, u64)>,
    drop_entries: bool,
) -> Result<(HardState, Vec<Entry>), LogError> {
    let mut hard_state = HardState::default();
    let mut entries: Vec<Entry> = Vec::new();
    let floor = snapshot.map(|(index, _)| index);
    for record in records {
        let undecodable =
            |what: &str, err| corrupt(path, record.offset, format!("undecodable {what}: {err}"));
        match record.kind {
            KIND_HARD_STATE => {
                hard_state = HardState::parse_from_bytes(record.payload)
                    .map_err(|err| undecodable("hard state", err))?;
            }
            KIND_ENTRY => {
                let entry = Entry::parse_from_bytes(record.payload)
                    .map_err(|err| undecodable("entry", err))?;
                if drop_entries || floor.is_some_and(|floor| entry.index <= floor) {
                    continue;
                }
                let next = entries.last().map(|last| last.index + 1);
                if let Some(next) = next.or(floor.map(|floor| floor + 1)) {
                    if entry.index > next {
                        let reason = format!(
                            "entry {} leaves a gap after entry {}",
                            entry.index,
                            next - 1
                        );
                        return Err(corrupt(path, record.offset, reason));
                    }
                }
                splice(&mut entries, std::slice::from_ref(&entry));
            }
            kind => {
                let reason = format!("unknown record kind {kind}");
                return Err(corrupt(path, record.offset, reason));
            }
        }
    }
    Ok((covering(hard_state, snapshot), entries))
}

fn open_for_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))
}

impl DurableLog {
    /// Makes a new, empty log in `dir` (created with mode 0700 if needed). Refuses a
    /// directory that already holds a log or a snapshot.
    pub fn create(dir: &Path, cluster: ClusterId) -> Result<DurableLog, LogError> {
        let log_path = dir.join(LOG_FILE);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        for path in [&log_path, &snapshot_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(LogError::AlreadyExists { path: path.clone() });
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        sync_parent(dir).map_err(io_error(dir))?;
        let header = encode_header(LOG_MAGIC, cluster, 0);
        write_atomic(&log_path, &header, 0o600).map_err(io_error(&log_path))?;
        Ok(DurableLog {
            file: open_for_append(&log_path)?,
            log_path,
            snapshot_path,
            cluster,
            hard_state: HardState::default(),
            snapshot: None,
            entries: Vec::new(),
            poisoned: false,
        })
    }

    /// Opens the log in `dir` and recovers its state. Cuts off an incomplete final record
    /// (reported in `torn_tail`); refuses anything else that is not exactly as written.
    pub fn open(dir: &Path, cluster: ClusterId) -> Result<(DurableLog, Recovered), LogError> {
        let log_path = dir.join(LOG_FILE);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let stored = read_snapshot(&snapshot_path, cluster)?;
        let bytes = fs::read(&log_path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => LogError::Missing {
                path: log_path.clone(),
            },
            _ => io_error(&log_path)(err),
        })?;
        let base = decode_header(&log_path, &bytes, LOG_MAGIC, cluster)?;
        let snapshot = stored.as_ref().map(|stored| {
            let meta = stored.snapshot.get_metadata();
            (meta.index, meta.term)
        });
        let snapshot_index = snapshot.map(|(index, _)| index);
        if base > snapshot_index.unwrap_or(0) {
            let reason = format!(
                "the log was written after a snapshot at index {base}, but {} {}",
                snapshot_path.display(),
                snapshot_index.map_or("is missing".into(), |index| format!("has index {index}"))
            );
            return Err(corrupt(&log_path, 28, reason));
        }
        let interrupted_install =
            stored.as_ref().is_some_and(|stored| stored.installed) && snapshot_index > Some(base);
        let scan = scan_records(&log_path, &bytes, HEADER_LEN, MAX_RECORD_LEN)?;
        let (hard_state, entries) =
            replay(&log_path, &scan.records, snapshot, interrupted_install)?;
        let torn_tail = scan.torn_at.map(|offset| TornTail {
            offset,
            discarded_bytes: bytes.len() as u64 - offset,
        });
        let mut log = DurableLog {
            file: open_for_append(&log_path)?,
            log_path,
            snapshot_path,
            cluster,
            hard_state,
            snapshot,
            entries,
            poisoned: false,
        };
        if interrupted_install {
            // Finish what the crash interrupted: the log must now start after the snapshot.
            let hard_state = log.hard_state.clone();
            log.rewrite_log(snapshot_index.unwrap_or(0), &hard_state, &[])?;
        } else if let Some(torn) = torn_tail {
            log.cut_torn_tail(torn.offset)?;
        }
        let recovered = Recovered {
            hard_state: log.hard_state.clone(),
            snapshot: stored.map(|stored| stored.snapshot),
            entries: log.entries.clone(),
            torn_tail,
        };
        Ok((log, recovered))
    }

    /// Stores `hard_state` and `entries` (and first `snapshot`, one received from the
    /// leader), durable when it returns. An entry with index i replaces the entries >= i.
    /// A snapshot replaces the whole log: entries after it may conflict with the leader's,
    /// so, as in raft-rs's `MemStorage::apply_snapshot`, only the `entries` given survive.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), LogError> {
        self.check_usable()?;
        if let Some(snapshot) = snapshot {
            return self.install(hard_state, entries, snapshot);
        }
        self.check_follows(entries)?;
        let mut buf = Vec::new();
        if let Some(hard_state) = hard_state {
            let payload = encode_message(&self.log_path, hard_state)?;
            encode_record(
                &mut buf,
                &self.log_path,
                KIND_HARD_STATE,
                &payload,
                MAX_RECORD_LEN,
            )?;
        }
        for entry in entries {
            let payload = encode_message(&self.log_path, entry)?;
            encode_record(
                &mut buf,
                &self.log_path,
                KIND_ENTRY,
                &payload,
                MAX_RECORD_LEN,
            )?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.write_durably(&buf)?;
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        splice(&mut self.entries, entries);
        Ok(())
    }

    /// Keeps the log bounded: durably stores `snapshot` (the state machine at its metadata
    /// index), then rewrites the log without the entries it covers. Crash-safe at every
    /// point: each file is replaced by write, fsync, rename, fsync of the directory, and
    /// recovery reads a new snapshot beside an old log correctly.
    pub fn compact(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        self.check_usable()?;
        let meta = snapshot.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let invalid = |reason: String| LogError::Invalid {
            path: self.snapshot_path.clone(),
            reason,
        };
        if let Some((current, _)) = self.snapshot.filter(|(current, _)| index < *current) {
            return Err(invalid(format!(
                "compaction to index {index} is behind the stored snapshot at {current}"
            )));
        }
        if index > self.last_index() {
            return Err(invalid(format!(
                "compaction to index {index} is past the last entry {}",
                self.last_index()
            )));
        }
        if let Some(entry) = self.entries.iter().find(|entry| entry.index == index) {
            if entry.term != term {
                return Err(invalid(format!(
                    "snapshot term {term} differs from entry {index}'s term {}",
                    entry.term
                )));
            }
        }
        self.write_snapshot(snapshot, KIND_SNAPSHOT_COMPACTED)?;
        let keep: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.index > index)
            .cloned()
            .collect();
        let hard_state = covering(self.hard_state.clone(), Some((index, term)));
        self.snapshot = Some((index, term));
        self.rewrite_log(index, &hard_state, &keep)
    }

    /// How many entries the log holds (after the snapshot).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The entries after the snapshot, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last stored hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index of the last entry, or of the snapshot when the log is empty (0 if neither).
    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|entry| entry.index)
            .or(self.snapshot.map(|(index, _)| index))
            .unwrap_or(0)
    }

    fn check_usable(&self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned {
                path: self.log_path.clone(),
            });
        }
        Ok(())
    }

    /// Refuses entries that are not consecutive, fall inside the snapshot or leave a gap.
    fn check_follows(&self, entries: &[Entry]) -> Result<(), LogError> {
        let invalid = |reason: String| {
            Err(LogError::Invalid {
                path: self.log_path.clone(),
                reason,
            })
        };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return invalid(format!(
                    "entries not consecutive: {} then {}",
                    pair[0].index, pair[1].index
                ));
            }
        }
        let Some(first) = entries.first().map(|entry| entry.index) else {
            return Ok(());
        };
        if let Some((snapshot_index, _)) = self.snapshot.filter(|(index, _)| first <= *index) {
            return invalid(format!(
                "entry {first} is already covered by the snapshot at {snapshot_index}"
            ));
        }
        let has_base = !self.entries.is_empty() || self.snapshot.is_some();
        if has_base && first > self.last_index() + 1 {
            return invalid(format!(
                "entry {first} would leave a gap after entry {}",
                self.last_index()
            ));
        }
        Ok(())
    }

    /// A snapshot from the leader: store it, then restart the log right after it.
    fn install(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
        snapshot: &Snapshot,
    ) -> Result<(), LogError> {
        let meta = snapshot.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let invalid = |reason: String| LogError::Invalid {
            path: self.snapshot_path.clone(),
            reason,
        };
        if let Some((current, _)) = self.snapshot.filter(|(current, _)| index < *current) {
            return Err(invalid(format!(
                "snapshot at index {index} is older than the stored one at {current}"
            )));
        }
        if let Some(first) = entries.first().filter(|first| first.index != index + 1) {
            return Err(invalid(format!(
                "entries after a snapshot at {index} must start at {}, not {}",
                index + 1,
                first.index
            )));
        }
        let previous = self.snapshot.replace((index, term));
        let check = self.check_follows(entries);
        self.snapshot = previous;
        check?;
        self.write_snapshot(snapshot, KIND_SNAPSHOT_INSTALLED)?;
        self.snapshot = Some((index, term));
        self.entries.clear();
        let hard_state = hard_state.unwrap_or(&self.hard_state).clone();
        self.rewrite_log(index, &covering(hard_state, Some((index, term))), entries)
    }

    fn write_snapshot(&mut self, snapshot: &Snapshot, kind: u8) -> Result<(), LogError> {
        let index = snapshot.get_metadata().index;
        let mut buf = encode_header(SNAPSHOT_MAGIC, self.cluster, index);
        let payload = encode_message(&self.snapshot_path, snapshot)?;
        encode_record(&mut buf, &self.snapshot_path, kind, &payload, u32::MAX)?;
        let result = write_atomic(&self.snapshot_path, &buf, 0o600);
        result.map_err(|source| self.poison(&self.snapshot_path.clone(), source))
    }

    /// Replaces the log file with header(base) + hard state + `entries`, and reopens it.
    fn rewrite_log(
        &mut self,
        base: u64,
        hard_state: &HardState,
        entries: &[Entry],
    ) -> Result<(), LogError> {
        let path = self.log_path.clone();
        let mut buf = encode_header(LOG_MAGIC, self.cluster, base);
        let payload = encode_message(&path, hard_state)?;
        encode_record(&mut buf, &path, KIND_HARD_STATE, &payload, MAX_RECORD_LEN)?;
        for entry in entries {
            let payload = encode_message(&path, entry)?;
            encode_record(&mut buf, &path, KIND_ENTRY, &payload, MAX_RECORD_LEN)?;
        }
        write_atomic(&path, &buf, 0o600).map_err(|source| self.poison(&path, source))?;
        self.file = open_for_append(&path).inspect_err(|_| self.poisoned = true)?;
        self.hard_state = hard_state.clone();
        self.entries = entries.to_vec();
        Ok(())
    }

    fn write_durably(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let result = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        let path = self.log_path.clone();
        result.map_err(|source| self.poison(&path, source))
    }

    fn cut_torn_tail(&mut self, offset: u64) -> Result<(), LogError> {
        let path = self.log_path.clone();
        let result = self
            .file
            .set_len(offset)
            .and_then(|()| self.file.sync_all());
        result.map_err(|source| self.poison(&path, source))
    }

    /// Marks the log unusable after a failed write or fsync and returns the I/O error.
    fn poison(&mut self, path: &Path, source: io::Error) -> LogError {
        self.poisoned = true;
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
