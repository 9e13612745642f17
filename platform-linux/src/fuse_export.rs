//! The FUSE image export: while this node is a volume's primary, the volume appears as one
//! regular file, `<mount_dir>/<volume>.img`, that a loop device can attach so a real
//! filesystem (ext4, xfs…) can be made and mounted on it.
//!
//! It exists so a volume can carry an ordinary kernel filesystem with nothing but stock
//! kernel parts (FUSE and the loop driver), no NBD client needed. Every operation on the
//! image goes to the volume's [`VolumeIo`], with DESIGN.md §5's volatile-cache semantics
//! kept end to end:
//!
//! - the file is opened with `FOPEN_DIRECT_IO` and writeback caching is never requested, so
//!   no FUSE page cache sits between the loop device and the volume: a write the kernel
//!   reports done has reached `VolumeIo::write`;
//! - `fsync`/`fdatasync` call `VolumeIo::flush`; the loop driver turns every cache flush of
//!   the filesystem on top (journal commits, its `fsync`) into an `fsync` of the image;
//! - writes on a file opened `O_SYNC`/`O_DSYNC` are FUA writes;
//! - `fallocate(PUNCH_HOLE)` and `fallocate(ZERO_RANGE)` must read back zeros, so both are
//!   `VolumeIo::write_zeroes` (deallocating only for PUNCH_HOLE). The loop driver sends
//!   `REQ_OP_WRITE_ZEROES` as PUNCH_HOLE, so an advisory `trim` would be wrong here.
//!
//! Dropping the export fences it first (waits for in-flight I/O, then every later request
//! fails with EIO), so a demoted primary cannot keep writing through a loop device that is
//! still attached; then it unmounts, lazily if the image is still in use.
//!
//! The mount is made without the C libfuse (fuser's pure-Rust mount): `mount(2)` as root,
//! `fusermount3` otherwise. Requests are served by a few threads of this process. A dead
//! mount left at the directory by a crashed daemon is detached by the next `start`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, Session, WriteFlags,
};

use crate::volume_io::VolumeIo;

/// The image file's inode (the root directory is `INodeNo::ROOT`, 1).
const IMAGE: INodeNo = INodeNo(2);
/// How long the kernel may cache names and attributes: they never change while mounted.
const TTL: Duration = Duration::from_secs(3600);
/// Largest write the kernel sends in one request (it caps this at its own `max_pages`).
const MAX_WRITE: u32 = 1 << 20;
/// Threads serving requests: the loop driver keeps several in flight, and a `flush` blocks
/// one thread for a whole `fdatasync`.
const SERVING_THREADS: usize = 4;
/// How long `Drop` waits for the serving threads after a clean unmount.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// `fh` bit meaning "opened O_SYNC/O_DSYNC": every write on it is FUA.
const FH_SYNC: u64 = 1;
const DEV_FUSE: &str = "/dev/fuse";

/// Why an image export could not start; every variant names the mount directory.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("FUSE image {dir}: volume name {name:?} cannot name an image file")]
    BadName { dir: PathBuf, name: String },
    #[error("FUSE image {dir}: cannot prepare the mount directory: {source}")]
    MountDir { dir: PathBuf, source: io::Error },
    #[error("FUSE image {dir}: the mount directory is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("FUSE image {dir}: the mount directory is busy: something is already mounted there")]
    Busy { dir: PathBuf },
    #[error(
        "FUSE image {dir}: {DEV_FUSE} is missing (load the fuse kernel module: modprobe fuse)"
    )]
    NoFuseDevice { dir: PathBuf },
    #[error(
        "FUSE image {dir}: mounting directly was not permitted and fusermount3 is missing \
         (install the fuse3 package, or run the daemon as root)"
    )]
    NoFusermount { dir: PathBuf },
    #[error("FUSE image {dir}: cannot mount: {source}")]
    Mount { dir: PathBuf, source: io::Error },
}

/// The volume behind the image; `None` once the export is fenced. Each request holds the
/// read lock for the length of its I/O, so fencing (the write lock) waits for in-flight I/O.
type Backend = Arc<RwLock<Option<Arc<dyn VolumeIo>>>>;

/// The thread running the FUSE session; it ends when the mount's connection ends.
type Serving = std::thread::JoinHandle<io::Result<()>>;

/// A mounted image export of one volume; dropping it fences and unmounts it.
pub struct FuseExport {
    mount_dir: PathBuf,
    image: PathBuf,
    volume: String,
    backend: Backend,
    /// The device number of this mount's root, to tell it from a later mount at the same path.
    mounted_dev: Option<u64>,
    serving: Option<Serving>,
}

impl FuseExport {
    /// Mounts a filesystem at `mount_dir` (created 0700 if missing) holding one file,
    /// `<volume_name>.img`, of `io.size()` bytes, served on background threads.
    pub fn start(
        mount_dir: &Path,
        volume_name: &str,
        io: Arc<dyn VolumeIo>,
    ) -> Result<FuseExport, FuseError> {
        let file_name = image_file_name(volume_name).ok_or_else(|| FuseError::BadName {
            dir: mount_dir.to_path_buf(),
            name: volume_name.to_string(),
        })?;
        let dir = prepare_mount_dir(mount_dir)?;
        if !Path::new(DEV_FUSE).exists() {
            return Err(FuseError::NoFuseDevice { dir });
        }
        let size = io.size();
        let backend: Backend = Arc::new(RwLock::new(Some(io)));
        let filesystem = ImageFs::new(volume_name, &file_name, size, Arc::clone(&backend));
        let serving = mount(filesystem, &dir, volume_name)?;
        let mounted_dev = std::fs::metadata(&dir).ok().map(|metadata| metadata.dev());
        tracing::info!(
            "volume {volume_name}: FUSE image {} ({size} bytes)",
            dir.join(&file_name).display()
        );
        Ok(FuseExport {
            image: dir.join(&file_name),
            mount_dir: dir,
            volume: volume_name.to_string(),
            backend,
            mounted_dev,
            serving: Some(serving),
        })
    }

    /// The image file a loop device can attach.
    pub fn image_path(&self) -> PathBuf {
        self.image.clone()
    }

    /// Where the export is mounted (canonical path).
    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    /// Stops every later request from reaching the volume, after in-flight ones finish.
    fn fence(&self) {
        let mut backend = self.backend.write().unwrap_or_else(PoisonError::into_inner);
        *backend = None;
    }

    /// Whether the mount at `mount_dir` is still this export's (or a dead FUSE mount).
    fn still_mounted_here(&self) -> bool {
        match std::fs::metadata(&self.mount_dir) {
            Ok(metadata) => self.mounted_dev.is_none_or(|dev| dev == metadata.dev()),
            Err(error) => error.raw_os_error() == Some(libc::ENOTCONN),
        }
    }
}

impl Drop for FuseExport {
    fn drop(&mut self) {
        self.fence();
        let Some(serving) = self.serving.take() else {
            return;
        };
        let (volume, dir) = (&self.volume, &self.mount_dir);
        if !self.still_mounted_here() {
            // Unmounted by someone else (perhaps another mount is there now): leave it; the
            // serving threads end when the last user of this mount closes it.
            tracing::warn!(
                "volume {volume}: FUSE image {} was unmounted elsewhere",
                dir.display()
            );
            return;
        }
        match unmount(dir, 0) {
            Ok(()) => join_serving(serving, volume),
            Err(error) => {
                tracing::warn!(
                    "volume {volume}: FUSE image {} still in use ({error}); detaching it lazily, \
                     its I/O now fails with EIO",
                    dir.display()
                );
                if let Err(error) = unmount(dir, libc::MNT_DETACH) {
                    tracing::error!(
                        "volume {volume}: cannot detach FUSE image {}: {error}",
                        dir.display()
                    );
                }
                // The serving threads end when the last user closes the image.
            }
        }
    }
}

/// Where the primary exports `volume`'s image: `<state-dir>/images/<vol>/<vol>.img`; `None`
/// for a name that could escape the directory.
pub fn image_path(state_dir: &Path, volume: &str) -> Option<PathBuf> {
    let file = image_file_name(volume)?;
    Some(state_dir.join("images").join(volume).join(file))
}

/// `<volume>.img`, or `None` when the name could escape the directory or is not a name.
fn image_file_name(volume: &str) -> Option<String> {
    let valid = !volume.is_empty()
        && volume != "."
        && volume != ".."
        && volume.len() <= 250
        && !volume.contains(['/', '\0']);
    valid.then(|| format!("{volume}.img"))
}

/// Creates the directory (0700) if missing, clears a dead FUSE mount left by a crashed
/// daemon, refuses a live mount point; returns the canonical path.
fn prepare_mount_dir(dir: &Path) -> Result<PathBuf, FuseError> {
    let failed = |source| FuseError::MountDir {
        dir: dir.to_path_buf(),
        source,
    };
    if is_dead_mount(dir) {
        tracing::warn!(
            "FUSE image {}: a dead FUSE mount was left there (daemon crash?); detaching it",
            dir.display()
        );
        unmount(dir, libc::MNT_DETACH).map_err(failed)?;
    }
    match std::fs::metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(failed)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(failed)?;
        }
        Err(error) => return Err(failed(error)),
        Ok(metadata) if !metadata.is_dir() => {
            return Err(FuseError::NotADirectory {
                dir: dir.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let dir = dir.canonicalize().map_err(failed)?;
    let own = std::fs::metadata(&dir).map_err(failed)?;
    let parent = std::fs::metadata(dir.join("..")).map_err(failed)?;
    if own.dev() != parent.dev() {
        return Err(FuseError::Busy { dir });
    }
    Ok(dir)
}

/// Mounts `filesystem` at `dir` and starts its serving threads.
///
/// The session runs on our own thread rather than fuser's `BackgroundSession`, whose drop
/// unmounts by path even when the path has meanwhile become someone else's mount: here only
/// `FuseExport::drop` unmounts, after checking the mount is still its own.
fn mount(filesystem: ImageFs, dir: &Path, volume: &str) -> Result<Serving, FuseError> {
    ensure_standard_fds();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("tandem-{volume}")),
        MountOption::Subtype("tandem".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(SERVING_THREADS);
    config.clone_fd = true;
    let mount_error = |source| FuseError::Mount {
        dir: dir.to_path_buf(),
        source,
    };
    // fuser asserts on some unexpected states; a panic here must not take the daemon down.
    let mounted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Session::new(filesystem, dir, &config)
    }));
    let session = match mounted {
        Ok(Ok(session)) => session,
        Ok(Err(source)) if source.kind() == io::ErrorKind::NotFound && dir.is_dir() => {
            return Err(FuseError::NoFusermount {
                dir: dir.to_path_buf(),
            })
        }
        Ok(Err(source)) => return Err(mount_error(source)),
        Err(_) => {
            let panicked = io::Error::other("the FUSE library panicked while mounting");
            return Err(mount_error(panicked));
        }
    };
    // If this fails, dropping the unstarted session unmounts it.
    std::thread::Builder::new()
        .name(format!("fuse-{volume}"))
        .spawn(move || session.run())
        .map_err(mount_error)
}

/// fuser refuses (asserts) if `/dev/fuse` opens as fd 0-2; a daemon started with a closed
/// standard stream gets `/dev/null` there instead.
fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1;
        if closed {
            // SAFETY: a plain open of a constant NUL-terminated path; it takes the lowest free
            // descriptor, which is `fd`, and stays open for the life of the process.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Whether `dir` is a FUSE mount whose server is gone. `statfs` always asks the server
/// (unlike `stat`, which the kernel answers from its attribute cache).
fn is_dead_mount(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs writes one `struct statfs` through the pointer; the path is valid.
    let result = unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) };
    result != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// `umount2(dir, flags)`, never following a symlink at `dir`.
fn unmount(dir: &Path, flags: i32) -> io::Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: umount2 with a valid NUL-terminated path and integer flags.
    let result = unsafe { libc::umount2(path.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits (bounded) for the serving threads to end after an unmount; logs how they ended.
fn join_serving(serving: Serving, volume: &str) {
    let deadline = Instant::now() + JOIN_WAIT;
    while !serving.is_finished() {
        if Instant::now() >= deadline {
            tracing::warn!("volume {volume}: FUSE serving threads still running after unmount");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match serving.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!("volume {volume}: FUSE session ended with: {error}"),
        Err(_) => tracing::error!("volume {volume}: a FUSE serving thread panicked"),
    }
}

/// How many bytes a read of `length` at `offset` returns: short at the end, none past it.
fn read_span(size: u64, offset: u64, length: u32) -> usize {
    let available = size.saturating_sub(offset);
    // Fits: bounded by `length`, a u32.
    available.min(u64::from(length)) as usize
}

/// How many bytes of a write of `length` at `offset` fit: short across the end, ENOSPC at
/// or past it (the image is exactly the volume's size, like a block device).
fn write_span(size: u64, offset: u64, length: usize) -> Result<usize, Errno> {
    if length == 0 {
        return Ok(0);
    }
    if offset >= size {
        return Err(Errno::ENOSPC);
    }
    let available = size - offset;
    Ok(usize::try_from(available).map_or(length, |available| available.min(length)))
}

/// Whether writes on a file opened with `flags` must be durable before they return.
fn wants_fua(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

/// A range to zero on the volume, decided from an `fallocate` request.
#[derive(Debug, PartialEq, Eq)]
struct ZeroRange {
    offset: u64,
    length: u64,
    may_trim: bool,
}

/// What `fallocate(mode, offset, length)` means for an image of `size` bytes: a range to
/// zero, nothing (plain allocation: the image is already all there), or an errno.
fn fallocate_plan(
    size: u64,
    offset: u64,
    length: u64,
    mode: i32,
) -> Result<Option<ZeroRange>, Errno> {
    const KNOWN: i32 =
        libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
    let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
    if mode & !KNOWN != 0 || (punch && zero) || (punch && !keep_size) {
        return Err(Errno::EOPNOTSUPP);
    }
    if length == 0 {
        return Err(Errno::EINVAL);
    }
    let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
    if !keep_size && end > size {
        return Err(Errno::EFBIG);
    }
    if !(punch || zero) || offset >= size {
        return Ok(None);
    }
    Ok(Some(ZeroRange {
        offset,
        length: end.min(size) - offset,
        may_trim: punch,
    }))
}

/// Whether a `setattr` may proceed: the size, mode and owner are fixed; times are ignored.
fn setattr_allowed(
    attr: &FileAttr,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
) -> Result<(), Errno> {
    let same_mode = mode.is_none_or(|mode| mode & 0o7777 == u32::from(attr.perm));
    let same_owner = uid.is_none_or(|uid| uid == attr.uid) && gid.is_none_or(|gid| gid == attr.gid);
    let same_size = size.is_none_or(|size| size == attr.size);
    if same_mode && same_owner && same_size {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

/// The filesystem: a root directory holding the one image file.
struct ImageFs {
    volume: String,
    file_name: String,
    root: FileAttr,
    image: FileAttr,
    backend: Backend,
}

impl ImageFs {
    fn new(volume: &str, file_name: &str, size: u64, backend: Backend) -> ImageFs {
        let now = SystemTime::now();
        // SAFETY: geteuid/getegid cannot fail. The daemon runs as root, so root owns the image.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let attr = |ino, kind, perm, size, nlink| FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        ImageFs {
            volume: volume.to_string(),
            file_name: file_name.to_string(),
            root: attr(INodeNo::ROOT, FileType::Directory, 0o700, 0, 2),
            image: attr(IMAGE, FileType::RegularFile, 0o600, size, 1),
            backend,
        }
    }

    fn attr_of(&self, ino: INodeNo) -> Option<&FileAttr> {
        match ino {
            INodeNo::ROOT => Some(&self.root),
            IMAGE => Some(&self.image),
            _ => None,
        }
    }

    /// Errno for a data operation on `ino` that is not the image.
    fn not_the_image(ino: INodeNo) -> Errno {
        if ino == INodeNo::ROOT {
            Errno::EISDIR
        } else {
            Errno::ENOENT
        }
    }

    /// Runs `op` on the volume unless fenced; an I/O error is logged and becomes EIO.
    fn with_volume<T>(
        &self,
        what: std::fmt::Arguments<'_>,
        op: impl FnOnce(&dyn VolumeIo) -> io::Result<T>,
    ) -> Result<T, Errno> {
        let backend = self.backend.read().unwrap_or_else(PoisonError::into_inner);
        let Some(volume) = backend.as_ref() else {
            return Err(Errno::EIO); // fenced: this export is stopping
        };
        op(volume.as_ref()).map_err(|error| {
            tracing::warn!(
                "volume {}: FUSE image {what} on {} failed: {error}",
                self.volume,
                volume.describe()
            );
            Errno::EIO
        })
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(nearest);
        }
        // Lets the loop driver's asynchronous direct I/O stay asynchronous. Writeback
        // caching is deliberately not requested: it would hold writes in the FUSE page cache.
        if config.capabilities().contains(InitFlags::FUSE_ASYNC_DIO) {
            let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name.as_bytes() == self.file_name.as_bytes() {
            reply.entry(&TTL, &self.image, fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Some(attr) => reply.attr(&TTL, attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match setattr_allowed(attr, mode, uid, gid, size) {
            Ok(()) => reply.attr(&TTL, attr),
            Err(errno) => {
                if size.is_some_and(|size| size != attr.size) {
                    tracing::warn!(
                        "volume {}: refused resizing the FUSE image to {size:?} bytes: \
                         the image is the volume's size",
                        self.volume
                    );
                }
                reply.error(errno)
            }
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != IMAGE {
            return reply.error(Self::not_the_image(ino));
        }
        let fh = if wants_fua(flags.0) { FH_SYNC } else { 0 };
        // Direct I/O: no FUSE page cache between the caller (a loop device) and the volume.
        let open_flags = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        reply.opened(FileHandle(fh), open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != IMAGE {
            return reply.error(Self::not_the_image(ino));
        }
        let length = read_span(self.image.size, offset, size);
        if length == 0 {
            return reply.data(&[]);
        }
        match self.with_volume(format_args!("read at {offset} ({length} bytes)"), |io| {
            io.read(offset, length)
        }) {
            Ok(data) => reply.data(&data),
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != IMAGE {
            return reply.error(Self::not_the_image(ino));
        }
        let length = match write_span(self.image.size, offset, data.len()) {
            Ok(0) => return reply.written(0),
            Ok(length) => length,
            Err(errno) => return reply.error(errno),
        };
        let fua = fh.0 & FH_SYNC != 0 || wants_fua(flags.0);
        let written = self.with_volume(
            format_args!("write at {offset} ({length} bytes, fua {fua})"),
            |io| io.write(offset, &data[..length], fua),
        );
        match written {
            // Fits: `length` is at most `data.len()`, which the kernel bounds by max_write.
            Ok(()) => reply.written(length as u32),
            Err(errno) => reply.error(errno),
        }
    }

    /// `close()`: nothing is buffered here (direct I/O), and close promises no durability.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// `fsync`/`fdatasync`, and the loop driver's `REQ_PREFLUSH`: everything acknowledged
    /// so far becomes durable on the volume (DESIGN.md §5 FLUSH).
    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino != IMAGE {
            return reply.error(Self::not_the_image(ino));
        }
        match self.with_volume(format_args!("flush"), |io| io.flush()) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(if ino == IMAGE {
                Errno::ENOTDIR
            } else {
                Errno::ENOENT
            });
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (IMAGE, FileType::RegularFile, self.file_name.as_str()),
        ];
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(start) {
            if reply.add(*ino, index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.image.size.div_ceil(4096);
        reply.statfs(blocks, 0, 0, 1, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        match self.attr_of(ino) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != IMAGE {
            return reply.error(Self::not_the_image(ino));
        }
        let range = match fallocate_plan(self.image.size, offset, length, mode) {
            Ok(Some(range)) => range,
            Ok(None) => return reply.ok(),
            Err(errno) => return reply.error(errno),
        };
        let zeroed = self.with_volume(
            format_args!("zeroing {} bytes at {}", range.length, range.offset),
            |io| io.write_zeroes(range.offset, range.length, range.may_trim),
        );
        match zeroed {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reads_are_short_at_the_end_and_empty_past_it() {
        assert_eq!(read_span(MIB, 0, 4096), 4096);
        assert_eq!(read_span(MIB, MIB - 100, 4096), 100);
        assert_eq!(read_span(MIB, MIB, 4096), 0);
        assert_eq!(read_span(MIB, u64::MAX, u32::MAX), 0);
        assert_eq!(read_span(u64::MAX, 0, u32::MAX), u32::MAX as usize);
    }

    #[test]
    fn writes_are_short_across_the_end_and_refused_past_it() {
        assert_eq!(write_span(MIB, 0, 4096), Ok(4096));
        assert_eq!(write_span(MIB, MIB - 100, 4096), Ok(100));
        assert_eq!(write_span(MIB, MIB, 4096), Err(Errno::ENOSPC));
        assert_eq!(write_span(MIB, u64::MAX, 1), Err(Errno::ENOSPC));
        assert_eq!(write_span(MIB, MIB, 0), Ok(0));
        assert_eq!(write_span(u64::MAX, 0, 1 << 20), Ok(1 << 20));
    }

    #[test]
    fn o_sync_and_o_dsync_make_writes_fua() {
        assert!(!wants_fua(libc::O_RDWR));
        assert!(!wants_fua(libc::O_RDWR | libc::O_DIRECT));
        assert!(wants_fua(libc::O_RDWR | libc::O_SYNC));
        assert!(wants_fua(libc::O_WRONLY | libc::O_DSYNC));
    }

    #[test]
    fn punch_hole_and_zero_range_zero_the_clamped_range() {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let range = |offset, length, may_trim| {
            Ok(Some(ZeroRange {
                offset,
                length,
                may_trim,
            }))
        };
        assert_eq!(
            fallocate_plan(MIB, 4096, 8192, punch),
            range(4096, 8192, true)
        );
        assert_eq!(
            fallocate_plan(MIB, 4096, MIB, punch),
            range(4096, MIB - 4096, true)
        );
        assert_eq!(fallocate_plan(MIB, MIB, 4096, punch), Ok(None));
        assert_eq!(fallocate_plan(MIB, 0, 4096, zero), range(0, 4096, false));
        assert_eq!(
            fallocate_plan(MIB, 0, 2 * MIB, zero | keep),
            range(0, MIB, false)
        );
        assert_eq!(fallocate_plan(MIB, 0, 2 * MIB, zero), Err(Errno::EFBIG));
    }

    #[test]
    fn fallocate_refuses_what_would_resize_or_is_unknown() {
        let punch = libc::FALLOC_FL_PUNCH_HOLE;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        assert_eq!(fallocate_plan(MIB, 0, 4096, punch), Err(Errno::EOPNOTSUPP));
        assert_eq!(
            fallocate_plan(MIB, 0, 4096, punch | zero | keep),
            Err(Errno::EOPNOTSUPP)
        );
        let collapse = libc::FALLOC_FL_COLLAPSE_RANGE;
        assert_eq!(
            fallocate_plan(MIB, 0, 4096, collapse),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(fallocate_plan(MIB, 0, 0, punch | keep), Err(Errno::EINVAL));
        assert_eq!(fallocate_plan(MIB, u64::MAX, 2, keep), Err(Errno::EFBIG));
        // Plain allocation inside the image: nothing to do; past its end: it would grow.
        assert_eq!(fallocate_plan(MIB, 0, MIB, 0), Ok(None));
        assert_eq!(fallocate_plan(MIB, 0, 2 * MIB, keep), Ok(None));
        assert_eq!(fallocate_plan(MIB, 0, 2 * MIB, 0), Err(Errno::EFBIG));
    }

    fn test_fs(size: u64) -> ImageFs {
        ImageFs::new("db", "db.img", size, Arc::new(RwLock::new(None)))
    }

    #[test]
    fn setattr_keeps_size_mode_and_owner_but_ignores_times() {
        let fs = test_fs(MIB);
        let image = &fs.image;
        assert_eq!(setattr_allowed(image, None, None, None, None), Ok(()));
        assert_eq!(setattr_allowed(image, None, None, None, Some(MIB)), Ok(()));
        assert_eq!(
            setattr_allowed(image, None, None, None, Some(0)),
            Err(Errno::EPERM)
        );
        assert_eq!(
            setattr_allowed(image, None, None, None, Some(2 * MIB)),
            Err(Errno::EPERM)
        );
        assert_eq!(
            setattr_allowed(image, Some(0o100600), None, None, None),
            Ok(())
        );
        assert_eq!(
            setattr_allowed(image, Some(0o644), None, None, None),
            Err(Errno::EPERM)
        );
        let other = image.uid.wrapping_add(1);
        assert_eq!(
            setattr_allowed(image, None, Some(other), None, None),
            Err(Errno::EPERM)
        );
    }

    #[test]
    fn the_tree_is_a_0700_root_with_one_0600_image_of_the_volume_size() {
        let fs = test_fs(3 * MIB);
        assert_eq!(fs.image.size, 3 * MIB);
        assert_eq!(fs.image.perm, 0o600);
        assert_eq!(fs.image.kind, FileType::RegularFile);
        assert_eq!(fs.root.perm, 0o700);
        assert_eq!(fs.root.kind, FileType::Directory);
        assert_eq!(ImageFs::not_the_image(INodeNo::ROOT), Errno::EISDIR);
        assert_eq!(ImageFs::not_the_image(INodeNo(9)), Errno::ENOENT);
    }

    #[test]
    fn a_fenced_export_fails_io_with_eio() {
        let fs = test_fs(MIB);
        let result = fs.with_volume(format_args!("read"), |io| io.read(0, 1));
        assert_eq!(result, Err(Errno::EIO));
    }

    #[test]
    fn image_names_cannot_escape_the_mount_directory() {
        assert_eq!(image_file_name("db").as_deref(), Some("db.img"));
        let state_dir = Path::new("/var/lib/tandem");
        assert_eq!(
            image_path(state_dir, "db"),
            Some(PathBuf::from("/var/lib/tandem/images/db/db.img"))
        );
        assert_eq!(image_path(state_dir, ".."), None);
        assert_eq!(image_file_name("my.vol-1").as_deref(), Some("my.vol-1.img"));
        for bad in ["", ".", "..", "a/b", "../x", "nul\0"] {
            assert_eq!(image_file_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_mount_dir_that_is_a_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let error = prepare_mount_dir(&file).unwrap_err().to_string();
        assert!(
            error.contains("not-a-dir") && error.contains("not a directory"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_mount_dir_is_created_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let mount_dir = dir.path().join("images/db");
        let prepared = prepare_mount_dir(&mount_dir).unwrap();
        let mode = std::fs::metadata(&prepared).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(prepared.is_absolute());
    }
}
