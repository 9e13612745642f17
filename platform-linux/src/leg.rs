//! A leg on this node: the file, partition or block device that holds one copy of a volume.
//!
//! Exists so every byte the data path touches goes through one small type with honest
//! durability: `write` is accepted into the page cache (the volatile write cache of DESIGN.md
//! §5), `flush` and FUA writes reach the medium with `fdatasync`. Opening checks the leg is big
//! enough and creates a missing file sparse, naming the path in every error.
//!
//! Blocking calls: callers on the async runtime wrap them in `block_in_place`. The replication
//! engines do not call them for their data path: they submit through the leg's io_uring
//! (`disk_ring`) and get completions back.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a leg cannot be used; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum LegError {
    #[error("leg {path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("leg {path}: it holds {actual} bytes, the volume needs {needed}")]
    TooSmall {
        path: PathBuf,
        actual: u64,
        needed: u64,
    },
    #[error("leg {path}: {what} is not a file or block device")]
    NotADisk { path: PathBuf, what: String },
}

/// Opens a volume's leg as its metadata's place says: a leg with internal metadata is one
/// several servers reach (a shared array) and is written through ([`Leg::open_shared`]).
pub fn open_leg(
    meta: &crate::meta_store::MetaLocation,
    path: &Path,
    size: u64,
) -> Result<Leg, LegError> {
    match meta {
        crate::meta_store::MetaLocation::Internal(_) => Leg::open_shared(path, size),
        crate::meta_store::MetaLocation::Sidecar(_) => Leg::open(path, size),
    }
}

/// An open leg of `size` bytes.
pub struct Leg {
    file: File,
    path: PathBuf,
    size: u64,
}

impl Leg {
    /// Opens (or creates, sparse) the leg at `path` for a volume of `size` bytes.
    pub fn open(path: &Path, size: u64) -> Result<Leg, LegError> {
        Leg::open_with(path, size, false)
    }

    /// Like [`Leg::open`], for a leg other servers reach too (a shared array): every write
    /// is durable when it completes (`O_DSYNC`), so this host's page cache never holds dirty
    /// data of the leg. A daemon killed on a host whose kernel keeps running then leaves
    /// nothing for the kernel to write back after another server has taken the leg over.
    pub fn open_shared(path: &Path, size: u64) -> Result<Leg, LegError> {
        Leg::open_with(path, size, true)
    }

    fn open_with(path: &Path, size: u64, write_through: bool) -> Result<Leg, LegError> {
        let open_error = |source| LegError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = if write_through { libc::O_DSYNC } else { 0 };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
            .map_err(open_error)?;
        let kind = file.metadata().map_err(open_error)?.file_type();
        let actual = if kind.is_file() {
            let len = file.metadata().map_err(open_error)?.len();
            if len < size {
                file.set_len(size).map_err(open_error)?;
            }
            size.max(len)
        } else if kind.is_block_device() {
            block_device_size(&file).map_err(open_error)?
        } else {
            return Err(LegError::NotADisk {
                path: path.to_path_buf(),
                what: format!("{kind:?}"),
            });
        };
        if actual < size {
            return Err(LegError::TooSmall {
                path: path.to_path_buf(),
                actual,
                needed: size,
            });
        }
        Ok(Leg {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read(&self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; length];
        self.file.read_exact_at(&mut data, offset)?;
        Ok(data)
    }

    /// Writes into the volatile cache; with `fua`, durable before returning.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every write accepted so far durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Zeroes a range: deallocated when `may_trim`, else allocated zeros.
    pub fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool) -> io::Result<()> {
        let mode = if may_trim {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        if fallocate(&self.file, mode, offset, length).is_ok() {
            return Ok(());
        }
        self.write_zero_buffers(offset, length)
    }

    /// Discards a range. NBD leaves the contents unspecified, but legs must stay identical,
    /// so a discarded range always reads back as zeroes (a hole, or written zeroes).
    pub fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        self.write_zeroes(offset, length, true)
    }

    /// The holes of a file leg (ranges that read as zeroes without being stored), at most
    /// `limit` of them; empty for block devices or when the file system cannot tell.
    pub fn holes(&self, limit: usize) -> Vec<(u64, u64)> {
        let fd = self.file.as_raw_fd();
        let mut holes = Vec::new();
        let mut position: i64 = 0;
        let size = i64::try_from(self.size).unwrap_or(i64::MAX);
        while position < size && holes.len() < limit {
            // SAFETY: lseek on a valid descriptor with integer arguments.
            let hole = unsafe { libc::lseek(fd, position, libc::SEEK_HOLE) };
            if hole < 0 || hole >= size {
                break;
            }
            // SAFETY: as above.
            let data = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
            let end = if data < 0 { size } else { data.min(size) };
            holes.push((hole as u64, (end - hole) as u64));
            position = end;
        }
        holes
    }

    /// Carries out one disk operation of the replication core; a read returns its bytes.
    pub fn run(&self, kind: tandem_core::replication::DiskKind) -> io::Result<Option<Vec<u8>>> {
        use tandem_core::replication::DiskKind;
        let length = |len: u64| usize::try_from(len).map_err(|_| io::Error::other("length"));
        match kind {
            DiskKind::Write { offset, data } => self.write(offset, &data, false).map(|_| None),
            DiskKind::Read { offset, len } => self.read(offset, length(len)?).map(Some),
            DiskKind::Flush => self.flush().map(|_| None),
            DiskKind::Trim { offset, len } => self.trim(offset, len).map(|_| None),
            DiskKind::WriteZeroes { offset, len } => {
                self.write_zeroes(offset, len, true).map(|_| None)
            }
        }
    }

    /// The descriptor, for the leg's io_uring (`disk_ring`).
    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        self.file.as_raw_fd()
    }

    /// Writes zeros over a range (where fallocate cannot).
    pub fn write_zero_buffers(&self, offset: u64, length: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK as usize];
        let mut done = 0;
        while done < length {
            let step = CHUNK.min(length - done);
            self.file
                .write_all_at(&zeros[..step as usize], offset + done)?;
            done += step;
        }
        Ok(())
    }
}

impl crate::volume_io::VolumeIo for Leg {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
        Leg::read(self, offset, length)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        Leg::write(self, offset, data, fua)
    }

    fn flush(&self) -> io::Result<()> {
        Leg::flush(self)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool) -> io::Result<()> {
        Leg::write_zeroes(self, offset, length, may_trim)
    }

    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        Leg::trim(self, offset, length)
    }

    fn describe(&self) -> String {
        format!("leg {}", self.path.display())
    }
}

fn fallocate(file: &File, mode: i32, offset: u64, length: u64) -> io::Result<()> {
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate on a valid, open file descriptor with plain integer arguments.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn block_device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut handle = file.try_clone()?;
    handle.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_leg_is_created_sparse_and_round_trips_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leg.img");
        let leg = Leg::open(&path, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        leg.write(4096, &[7u8; 4096], true).unwrap();
        assert_eq!(leg.read(4096, 4096).unwrap(), vec![7u8; 4096]);
        leg.write_zeroes(4096, 4096, false).unwrap();
        assert_eq!(leg.read(4096, 4096).unwrap(), vec![0u8; 4096]);
        leg.flush().unwrap();
    }

    #[test]
    fn a_shared_leg_is_written_through_and_a_private_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leg.img");
        let sync_flag = |leg: &Leg| {
            // SAFETY: F_GETFL on a descriptor this test owns; no memory is passed.
            let flags = unsafe { libc::fcntl(leg.raw_fd(), libc::F_GETFL) };
            assert!(flags >= 0, "fcntl: {}", io::Error::last_os_error());
            flags & libc::O_DSYNC == libc::O_DSYNC
        };
        let shared = dir.path().join("shared.img");
        let internal = crate::meta_store::MetaLocation::Internal(shared.clone());
        assert!(sync_flag(&open_leg(&internal, &shared, 1 << 20).unwrap()));
        let sidecar = crate::meta_store::MetaLocation::Sidecar(dir.path().join("m"));
        assert!(!sync_flag(&open_leg(&sidecar, &path, 1 << 20).unwrap()));
    }

    #[test]
    fn bad_legs_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = dir.path().join("no/such/dir/leg.img");
        let error = Leg::open(&missing_dir, 4096).err().unwrap().to_string();
        assert!(error.contains("no/such/dir/leg.img"), "{error}");
        let error = Leg::open(dir.path(), 4096).err().unwrap().to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
    }
}
