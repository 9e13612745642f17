//! The one interface every frontend (NBD, the FUSE image) uses to reach a volume's data.
//!
//! Exists so frontends do not care what is behind a volume: today the primary's local leg,
//! with replication the primary's engine that mirrors each write to the other legs before it
//! acknowledges. Semantics are DESIGN.md §5's volatile-cache disk: `write` is acknowledged
//! when accepted, `flush` makes everything acknowledged before it durable, `fua` makes that
//! one write durable before it returns. Calls block; async callers run them on the blocking
//! pool (`spawn_blocking`) or under `block_in_place`.

use std::io;

/// Block access to one volume, safe to share between threads.
pub trait VolumeIo: Send + Sync {
    /// The volume's size in bytes.
    fn size(&self) -> u64;
    fn read(&self, offset: u64, length: usize) -> io::Result<Vec<u8>>;
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
    /// Zeroes a range; `may_trim` lets it deallocate.
    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool) -> io::Result<()>;
    /// Discards a range (contents afterwards unspecified).
    fn trim(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Names the backing store in log lines.
    fn describe(&self) -> String;
}
