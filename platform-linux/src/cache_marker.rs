//! Whether this node may have lost a leg's disk cache since it last served the leg as a
//! secondary.
//!
//! Why this exists: a secondary acknowledges plain writes from its page cache. If its node
//! loses power, those writes are gone. The primary that sent them tracks what this leg acked
//! but never flushed and resyncs it (`core::replication` `unflushed`), but that primary may
//! be gone too: the simulator found a primary crash, then this secondary's power loss, then a
//! takeover by a third leg that kept this leg UpToDate without the writes its cache lost
//! (seed 51780). So the leg remembers the boot it served in: a marker file next to its
//! sidecar metadata holds the kernel's boot id and the epoch, written and synced before the
//! session accepts anything. A marker from another boot means the cache may be lost; a
//! primary of a later epoch is then told the whole leg is suspect
//! (`Secondary::with_cache_lost_in`), and if this node is promoted itself it resyncs its whole
//! leg to its peers. The marker is renewed once a primary heard that report.
//!
//! Shared legs need none: they are written through (`leg::open_shared`), so no cache holds
//! their writes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the kernel publishes the id of the current boot (new at every boot).
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The marker of one leg: `<sidecar metadata path>.cache`.
#[derive(Clone, Debug)]
pub struct CacheMarker {
    path: PathBuf,
}

/// The id of the running boot.
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string(BOOT_ID)?.trim().to_string())
}

/// What a marker's `contents` say for the running `boot`: `None` when it was written in this
/// boot, else the epoch it names. Unreadable contents name epoch 0 (every later primary then
/// hears the whole leg is suspect: the safe reading).
pub fn lost_in(contents: &str, boot: &str) -> Option<u64> {
    let mut words = contents.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u64>)) {
        (Some(written), Some(Ok(_))) if written == boot => None,
        (Some(_), Some(Ok(epoch))) => Some(epoch),
        _ => Some(0),
    }
}

impl CacheMarker {
    /// The marker of the leg whose sidecar metadata is at `meta_path`.
    pub fn next_to(meta_path: &Path) -> CacheMarker {
        let mut path = meta_path.as_os_str().to_owned();
        path.push(".cache");
        CacheMarker {
            path: PathBuf::from(path),
        }
    }

    /// The epoch the leg served when its cache may have been lost, if a marker from another
    /// boot says so; no marker yet: nothing was ever served here.
    pub fn lost_in(&self, boot: &str) -> io::Result<Option<u64>> {
        match fs::read_to_string(&self.path) {
            Ok(contents) => Ok(lost_in(&contents, boot)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Records that the leg serves `epoch` in `boot`, durably (written aside, synced,
    /// renamed, the directory synced).
    pub fn record(&self, boot: &str, epoch: u64) -> io::Result<()> {
        let fresh = self.path.with_extension("cache.new");
        let mut file = File::create(&fresh)?;
        writeln!(file, "{boot} {epoch}")?;
        file.sync_all()?;
        fs::rename(&fresh, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_of_this_boot_means_nothing_was_lost() {
        assert_eq!(lost_in("abc 7\n", "abc"), None);
        assert_eq!(lost_in("abc 7\n", "xyz"), Some(7));
        assert_eq!(lost_in("garbage", "xyz"), Some(0));
        assert_eq!(lost_in("", "xyz"), Some(0));
    }

    #[test]
    fn a_recorded_marker_reads_back_and_a_missing_one_is_no_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = CacheMarker::next_to(&dir.path().join("vol1-leg2.meta"));
        assert!(marker.path().ends_with("vol1-leg2.meta.cache"));
        assert_eq!(marker.lost_in("boot-a").expect("read"), None);
        marker.record("boot-a", 5).expect("record");
        assert_eq!(marker.lost_in("boot-a").expect("read"), None);
        assert_eq!(marker.lost_in("boot-b").expect("read"), Some(5));
        marker.record("boot-b", 6).expect("record");
        assert_eq!(marker.lost_in("boot-b").expect("read"), None);
    }

    #[test]
    fn the_running_boot_has_an_id() {
        assert!(!boot_id().expect("boot id").is_empty());
    }
}
