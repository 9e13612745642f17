//! `filesystem` resources: the volume's image (a FUSE file exported by the volume engine) on a
//! loop device, formatted on first use when asked, mounted at the mountpoint.
//!
//! Start: `losetup --find --show IMAGE` (the device recorded in `<state-dir>/run/<group>-
//! <index>.loop`, the image's device and inode in `.loop-id`), `mkfs.<fstype>` only when
//! `mkfs` is set and `blkid -p` finds no filesystem at all, then `mount`; a failed mount gets
//! one `fsck -y` (`e2fsck -y` for ext*) and one retry, and an fsck that could not repair (exit
//! code 4 or more) fails the start. The image is never mounted twice: a mountpoint already
//! mounted from something else, or the image mounted through another loop device, fails the
//! start untouched.
//!
//! Stop: unmount; when busy, the processes using the mount (cwd, root, executable, open or
//! mapped files under it, from `/proc`) get SIGTERM, then SIGKILL after 2 s, and the unmount
//! is retried; the last resort is a lazy unmount. Then the loop device is detached, but only
//! the one we attached and recorded, and only while it still serves this image (the same
//! file by device and inode, also when the image's FUSE mount was detached lazily meanwhile
//! and sysfs shows another path for it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_core::group::ResourceSpec;

use super::process::{self, Capture};
use super::{find_program, procfs, Outcome, Place, ResourceError, RunnerContext};

/// How long processes holding a busy mount get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// The local checks: the tools exist.
pub(crate) fn check_local(spec: &ResourceSpec, place: &Place) -> Result<(), ResourceError> {
    let ResourceSpec::Filesystem { fstype, mkfs, .. } = spec else {
        return Ok(());
    };
    let mut tools = vec![
        "losetup".to_string(),
        "mount".to_string(),
        "blkid".to_string(),
    ];
    if *mkfs {
        tools.push(format!("mkfs.{fstype}"));
    }
    tools.push(fsck_program(fstype).to_string());
    for tool in tools {
        if find_program(&tool).is_none() {
            return Err(place.unusable(format!("{tool} is not installed (not found on $PATH)")));
        }
    }
    Ok(())
}

fn fsck_program(fstype: &str) -> &'static str {
    if fstype.starts_with("ext") {
        "e2fsck"
    } else {
        "fsck"
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub dev: (u32, u32),
    pub point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let dash = fields.iter().position(|field| *field == "-")?;
            Some(MountEntry {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
            })
        })
        .collect()
}

fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// The topmost mount at `point`.
fn mount_at(point: &Path) -> Option<MountEntry> {
    mounts()
        .into_iter()
        .rev()
        .find(|entry| entry.point == point)
}

/// The (major, minor) of a device node.
fn device_number(device: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device).ok()?.rdev();
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?))
}

/// The file a loop device serves, from sysfs.
/// How long a stop waits for a loop device the kernel detaches late.
const DETACH_WAIT: Duration = Duration::from_secs(3);

/// The kernel defers a loop detach while anything still holds the device open (udev probing
/// it after the unmount, say); waits for that to pass, and says so if it does not.
async fn wait_detached(device: &Path) {
    let deadline = tokio::time::Instant::now() + DETACH_WAIT;
    while backing_file(device).is_some() {
        if tokio::time::Instant::now() >= deadline {
            return tracing::info!(
                "{}: the kernel detaches it once its last user closes it",
                device.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Every loop device serving `image`.
fn loops_of(image: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .filter(|name| name.starts_with("loop"))
        .map(|name| PathBuf::from("/dev").join(name))
        .filter(|device| backing_file(device).as_deref() == Some(image))
        .collect()
}

/// Time left until `deadline`, as an error once it has passed.
fn left(deadline: Instant, limit_ms: u64, what: &str) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(format!("{what} timed out after {limit_ms} ms"))
    } else {
        Ok(left)
    }
}

pub(crate) struct Filesystem {
    image: PathBuf,
    mountpoint: PathBuf,
    fstype: String,
    mkfs: bool,
    options: String,
    record: PathBuf,
    /// `<group>-<index>.loop-id`: the image's `st_dev st_ino` when it was attached, to know
    /// the device again once sysfs shows its backing file under another path.
    identity_record: PathBuf,
    log: PathBuf,
}

impl Filesystem {
    pub fn new(
        spec: &ResourceSpec,
        ctx: &RunnerContext,
        place: &Place,
    ) -> Result<Filesystem, ResourceError> {
        let ResourceSpec::Filesystem {
            mountpoint,
            fstype,
            mkfs,
            options,
            ..
        } = spec
        else {
            return Err(place.unusable("not a filesystem resource"));
        };
        let image = ctx.image.clone().ok_or_else(|| {
            place.unusable("no image given: a filesystem needs its volume's image file")
        })?;
        Ok(Filesystem {
            image,
            mountpoint: PathBuf::from(mountpoint),
            fstype: fstype.clone(),
            mkfs: *mkfs,
            options: options.clone(),
            record: ctx.run_file("loop"),
            identity_record: ctx.run_file("loop-id"),
            log: ctx.log_path(),
        })
    }

    fn read_only(&self) -> bool {
        self.options.split(',').any(|option| option == "ro")
    }

    /// The mountpoint as the kernel reports it (symlinks resolved).
    fn point(&self) -> PathBuf {
        self.mountpoint
            .canonicalize()
            .unwrap_or_else(|_| self.mountpoint.clone())
    }

    fn image(&self) -> PathBuf {
        self.image
            .canonicalize()
            .unwrap_or_else(|_| self.image.clone())
    }

    /// The recorded loop device, if it still serves our image.
    fn our_device(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(&self.record).ok()?;
        let device = PathBuf::from(text.trim());
        if backing_file(&device).as_deref() == Some(self.image().as_path()) {
            Some(device)
        } else {
            None
        }
    }

    /// The recorded loop device, if it still serves the file we attached: our image, or the
    /// same file (device and inode) seen through a lazily detached mount. When the volume
    /// engine detaches the FUSE image lazily (a demotion or a fence while the file system is
    /// still mounted), sysfs shows the backing file relative to the detached mount
    /// (`/<vol>.img`), and the path no longer tells it is ours; the stop must still detach it.
    fn attached_device(&self) -> Option<PathBuf> {
        if let Some(device) = self.our_device() {
            return Some(device);
        }
        let text = std::fs::read_to_string(&self.record).ok()?;
        let device = PathBuf::from(text.trim());
        let identity = std::fs::read_to_string(&self.identity_record).ok()?;
        let mut numbers = identity.split_whitespace().map(str::parse::<u64>);
        let recorded = (numbers.next()?.ok()?, numbers.next()?.ok()?);
        (loop_backing_identity(&device) == Some(recorded)).then_some(device)
    }

    /// Whether the mountpoint is a mount of `device`.
    fn mounted_from(&self, device: &Path) -> bool {
        let Some(number) = device_number(device) else {
            return false;
        };
        mount_at(&self.point()).is_some_and(|entry| entry.dev == number)
    }

    pub async fn start(&mut self, limit_ms: u64) -> Outcome {
        match self.try_start(limit_ms).await {
            Ok(()) => Outcome::Running,
            Err(reason) => Outcome::Failed(format!(
                "filesystem {}: {reason}",
                self.mountpoint.display()
            )),
        }
    }

    async fn try_start(&mut self, limit_ms: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(limit_ms);
        let image = self.image();
        if !image.exists() {
            return Err(format!(
                "image {} does not exist (is the volume primary on this node?)",
                image.display()
            ));
        }
        let ours = self.our_device();
        if let Some(device) = &ours {
            if self.mounted_from(device) {
                return Ok(());
            }
        }
        self.refuse_double_mount(&image)?;
        let device = match ours {
            Some(device) => device,
            None => self.attach(&image, deadline, limit_ms).await?,
        };
        let result = self.format_and_mount(&device, deadline, limit_ms).await;
        if result.is_err() {
            self.detach(&device).await;
        }
        result
    }

    /// Fails when the mountpoint is taken, or the image is mounted through a loop device.
    fn refuse_double_mount(&self, image: &Path) -> Result<(), String> {
        if let Some(entry) = mount_at(&self.point()) {
            return Err(format!(
                "{} is already mounted ({} from {}); refusing to mount over it",
                entry.point.display(),
                entry.fstype,
                entry.source
            ));
        }
        let table = mounts();
        for device in loops_of(image) {
            let number = device_number(&device);
            if let Some(entry) = table.iter().find(|entry| Some(entry.dev) == number) {
                return Err(format!(
                    "image {} is already mounted through {} at {}; refusing to mount it twice",
                    image.display(),
                    device.display(),
                    entry.point.display()
                ));
            }
        }
        Ok(())
    }

    /// `losetup --find --show`, recorded.
    async fn attach(
        &self,
        image: &Path,
        deadline: Instant,
        limit_ms: u64,
    ) -> Result<PathBuf, String> {
        let mut command = Command::new("losetup");
        command.args(["--find", "--show"]);
        if self.read_only() {
            command.arg("--read-only");
        }
        command.arg(image);
        let limit = left(deadline, limit_ms, "losetup")?;
        let ran = process::run(command, "losetup", Capture::Pipe, limit).await?;
        let device = ran.stdout.trim();
        if !ran.status.success() || !device.starts_with("/dev/loop") {
            return Err(format!(
                "losetup --find --show {} failed: {}",
                image.display(),
                ran.describe()
            ));
        }
        let device = PathBuf::from(device);
        if let Some(dir) = self.record.parent() {
            super::ensure_dir(dir)?;
        }
        std::fs::write(&self.record, format!("{}\n", device.display()))
            .map_err(|error| format!("cannot record {}: {error}", self.record.display()))?;
        match loop_backing_identity(&device) {
            Some((dev, ino)) => std::fs::write(&self.identity_record, format!("{dev} {ino}\n"))
                .map_err(|error| {
                    format!("cannot record {}: {error}", self.identity_record.display())
                })?,
            None => tracing::warn!(
                "cannot read the backing file identity of {} (LOOP_GET_STATUS64)",
                device.display()
            ),
        }
        Ok(device)
    }

    async fn format_and_mount(
        &self,
        device: &Path,
        deadline: Instant,
        limit_ms: u64,
    ) -> Result<(), String> {
        if self.mkfs && !self.has_filesystem(device, deadline, limit_ms).await? {
            self.make_filesystem(device, deadline, limit_ms).await?;
        }
        super::ensure_dir(&self.mountpoint)?;
        let first = match self.mount(device, deadline, limit_ms).await? {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        tracing::warn!(
            "mount of {} failed ({first}); running fsck",
            device.display()
        );
        self.fsck(device, deadline, limit_ms).await?;
        match self.mount(device, deadline, limit_ms).await? {
            Ok(()) => Ok(()),
            Err(second) => Err(format!(
                "mount failed before fsck ({first}) and after it ({second})"
            )),
        }
    }

    /// `blkid -p`: exit 0 found something, 2 found nothing; anything else (8: ambivalent) fails,
    /// since formatting over something we do not understand could destroy data.
    async fn has_filesystem(
        &self,
        device: &Path,
        deadline: Instant,
        limit_ms: u64,
    ) -> Result<bool, String> {
        let mut command = Command::new("blkid");
        command
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(device);
        let ran = process::run(
            command,
            "blkid",
            Capture::Pipe,
            left(deadline, limit_ms, "blkid")?,
        )
        .await?;
        match ran.code() {
            Some(0) => Ok(true),
            Some(2) => Ok(false),
            _ => Err(format!(
                "blkid -p {} could not tell whether it holds a filesystem ({}); not formatting it",
                device.display(),
                ran.describe()
            )),
        }
    }

    async fn make_filesystem(
        &self,
        device: &Path,
        deadline: Instant,
        limit_ms: u64,
    ) -> Result<(), String> {
        let program = format!("mkfs.{}", self.fstype);
        let mut command = Command::new(&program);
        if self.fstype.starts_with("ext") {
            command.args(["-F", "-q"]);
        }
        command.arg(device);
        tracing::info!("no filesystem on {}: {program}", device.display());
        let ran = process::run(
            command,
            &program,
            Capture::Log(&self.log),
            left(deadline, limit_ms, &program)?,
        )
        .await?;
        if ran.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {} failed: {}",
                device.display(),
                ran.describe()
            ))
        }
    }

    /// Ok(Err(reason)) when mount ran and failed (fsck may help), Err when it could not run.
    async fn mount(
        &self,
        device: &Path,
        deadline: Instant,
        limit_ms: u64,
    ) -> Result<Result<(), String>, String> {
        let mut command = Command::new("mount");
        command.args(["-t", &self.fstype]);
        if !self.options.is_empty() {
            command.args(["-o", &self.options]);
        }
        command.arg(device).arg(&self.mountpoint);
        let ran = process::run(
            command,
            "mount",
            Capture::Pipe,
            left(deadline, limit_ms, "mount")?,
        )
        .await?;
        Ok(if ran.status.success() {
            Ok(())
        } else {
            Err(ran.describe())
        })
    }

    /// `e2fsck -y` (ext*) or `fsck -t TYPE -y`; exit code 4 or more: errors left uncorrected.
    async fn fsck(&self, device: &Path, deadline: Instant, limit_ms: u64) -> Result<(), String> {
        let program = fsck_program(&self.fstype);
        let mut command = Command::new(program);
        if program == "fsck" {
            command.args(["-t", &self.fstype]);
        }
        command.arg("-y").arg(device);
        let ran = process::run(
            command,
            program,
            Capture::Log(&self.log),
            left(deadline, limit_ms, program)?,
        )
        .await?;
        match ran.code() {
            Some(code) if code < 4 => Ok(()),
            _ => Err(format!(
                "{program} -y {} could not repair it: {}",
                device.display(),
                ran.describe()
            )),
        }
    }

    /// Detaches `device` if it is the one we recorded and it still serves our image.
    async fn detach(&self, device: &Path) {
        if self.attached_device().as_deref() != Some(device) {
            tracing::warn!(
                "not detaching {}: not the loop device we attached for {}",
                device.display(),
                self.image.display()
            );
            self.forget_records();
            return;
        }
        let mut command = Command::new("losetup");
        command.arg("-d").arg(device);
        match process::run(
            command,
            "losetup -d",
            Capture::Pipe,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(ran) if ran.status.success() => wait_detached(device).await,
            Ok(ran) => tracing::warn!("losetup -d {} failed: {}", device.display(), ran.describe()),
            Err(reason) => tracing::warn!("{reason}"),
        }
        self.forget_records();
    }

    fn forget_records(&self) {
        let _ = std::fs::remove_file(&self.record);
        let _ = std::fs::remove_file(&self.identity_record);
    }
}

/// `(st_dev, st_ino)` of the file a loop device serves, from `LOOP_GET_STATUS64` (the kernel
/// encodes `lo_device` as `stat` does for 32-bit device numbers): unlike the path in sysfs,
/// it survives a lazy unmount of the file's file system.
fn loop_backing_identity(device: &Path) -> Option<(u64, u64)> {
    /// `struct loop_info64` of `<linux/loop.h>` (only two fields are read).
    #[repr(C)]
    #[allow(dead_code)]
    struct LoopInfo64 {
        lo_device: u64,
        lo_inode: u64,
        lo_rdevice: u64,
        lo_offset: u64,
        lo_sizelimit: u64,
        lo_number: u32,
        lo_encrypt_type: u32,
        lo_encrypt_key_size: u32,
        lo_flags: u32,
        lo_file_name: [u8; 64],
        lo_crypt_name: [u8; 64],
        lo_encrypt_key: [u8; 32],
        lo_init: [u64; 2],
    }
    const LOOP_GET_STATUS64: u64 = 0x4C05;
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(device).ok()?;
    // SAFETY: an all-zero loop_info64 is valid (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 on an open loop device fills a loop_info64, which `info` is.
    let done = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_GET_STATUS64 as _, &mut info) };
    (done == 0).then_some((info.lo_device, info.lo_inode))
}

/// The result of `umount2`.
enum Unmounted {
    Done,
    NotMounted,
    Busy,
    Error(String),
}

/// `umount2(point, flags)` on a blocking thread (an unmount flushes and may take a while).
async fn umount(point: &Path, flags: i32) -> Unmounted {
    let Ok(path) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
        return Unmounted::Error(format!("{} contains a NUL byte", point.display()));
    };
    let result = tokio::task::spawn_blocking(move || {
        // SAFETY: umount2 with a valid NUL-terminated path and flag constants.
        if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await;
    match result {
        Ok(Ok(())) => Unmounted::Done,
        Ok(Err(error)) => match error.raw_os_error() {
            Some(libc::EINVAL | libc::ENOENT) => Unmounted::NotMounted,
            Some(libc::EBUSY) => Unmounted::Busy,
            _ => Unmounted::Error(format!("umount {}: {error}", point.display())),
        },
        Err(error) => Unmounted::Error(format!("umount {}: {error}", point.display())),
    }
}

/// SIGTERM to every process using `point`, SIGKILL to those left after [`TERM_GRACE`]; waits
/// (up to `until`) for them to be gone.
async fn kill_users(point: &Path, until: Instant) {
    let users = procfs::users_of(point);
    if users.is_empty() {
        return;
    }
    tracing::warn!(
        "{} is busy: sending SIGTERM to processes {users:?}",
        point.display()
    );
    signal_all(&users, libc::SIGTERM);
    let term_until = (Instant::now() + TERM_GRACE).min(until);
    if wait_gone(&users, term_until).await {
        return;
    }
    let left: Vec<i32> = users
        .into_iter()
        .filter(|&pid| procfs::alive(pid, None))
        .collect();
    tracing::warn!("{}: sending SIGKILL to processes {left:?}", point.display());
    signal_all(&left, libc::SIGKILL);
    wait_gone(&left, (Instant::now() + TERM_GRACE).min(until)).await;
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        if pid > 1 {
            // SAFETY: kill(2) on a process found using our mount, with a signal number.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

async fn wait_gone(pids: &[i32], until: Instant) -> bool {
    loop {
        if pids.iter().all(|&pid| !procfs::alive(pid, None)) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Filesystem {
    /// Running when the mountpoint is a mount of our loop device and answers `statfs` and a
    /// directory read within the limit.
    pub async fn monitor(&mut self, limit_ms: u64) -> Outcome {
        let Some(device) = self.our_device() else {
            return Outcome::NotRunning;
        };
        if !self.mounted_from(&device) {
            return match mount_at(&self.point()) {
                Some(entry) => Outcome::Failed(format!(
                    "{} is mounted from {}, not from our {}",
                    self.mountpoint.display(),
                    entry.source,
                    device.display()
                )),
                None => Outcome::NotRunning,
            };
        }
        let point = self.point();
        match probe_in_child(&point, limit_ms).await {
            Ok(()) => Outcome::Running,
            Err(reason) => Outcome::Failed(format!("{}: {reason}", self.mountpoint.display())),
        }
    }

    /// Unmounts (killing users of a busy mount, lazily as a last resort) and detaches our loop
    /// device. Not mounted is success.
    pub async fn stop(&mut self, limit_ms: u64) -> Outcome {
        let deadline = Instant::now() + Duration::from_millis(limit_ms);
        let device = self.attached_device();
        let point = self.point();
        let ours = match (&device, mount_at(&point)) {
            (Some(device), Some(_)) => self.mounted_from(device),
            // No record: a mount of any loop device serving our image is ours to unmount.
            (None, Some(entry)) => loops_of(&self.image())
                .iter()
                .any(|loop_device| device_number(loop_device) == Some(entry.dev)),
            (_, None) => false,
        };
        if ours {
            if let Err(reason) = self.unmount(&point, deadline).await {
                return Outcome::Failed(format!(
                    "filesystem {}: {reason}",
                    self.mountpoint.display()
                ));
            }
        }
        match device {
            Some(device) => self.detach(&device).await,
            None => self.forget_records(),
        }
        Outcome::NotRunning
    }

    async fn unmount(&self, point: &Path, deadline: Instant) -> Result<(), String> {
        for attempt in 0..3 {
            match umount(point, 0).await {
                Unmounted::Done | Unmounted::NotMounted => return Ok(()),
                Unmounted::Error(reason) => return Err(reason),
                Unmounted::Busy if attempt < 2 => kill_users(point, deadline).await,
                Unmounted::Busy => {}
            }
        }
        tracing::warn!("{} stays busy: lazy unmount (umount -l)", point.display());
        match umount(point, libc::MNT_DETACH).await {
            Unmounted::Done | Unmounted::NotMounted => Ok(()),
            Unmounted::Busy => Err(format!(
                "{} is still busy after a lazy unmount",
                point.display()
            )),
            Unmounted::Error(reason) => Err(reason),
        }
    }
}

/// Checks that the file system at `point` answers: `stat -f` (statfs) and a directory listing,
/// each in a child process, killed after `limit_ms`.
///
/// Never in the daemon itself: the daemon serves the FUSE image this file system lives on. A
/// daemon killed while one of its threads holds a file of that file system open would, on its
/// way out, flush the file system through its own FUSE connection before the kernel closes
/// that connection, and hang forever in the kernel. A child can be killed cleanly.
async fn probe_in_child(point: &Path, limit_ms: u64) -> Result<(), String> {
    let limit = Duration::from_millis(limit_ms);
    let probes: [(&str, &[&str]); 2] = [("stat", &["-f", "-c", "%T"]), ("ls", &["-f"])];
    for (program, args) in probes {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(point)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(limit, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => return Err(format!("cannot run {program}: {error}")),
            Err(_) => {
                return Err(format!(
                    "{program} did not answer within {limit_ms} ms (the file system hangs)"
                ))
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("{program}: {}", stderr.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 36 7:3 / /srv/my\\040data rw,relatime shared:5 - ext4 /dev/loop3 rw\n\
                    garbage line\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1],
            MountEntry {
                dev: (7, 3),
                point: PathBuf::from("/srv/my data"),
                fstype: "ext4".into(),
                source: "/dev/loop3".into(),
            }
        );
        assert_eq!(entries[0].dev, (98, 0));
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\040b\\011c"), "a b\tc");
        assert_eq!(unescape("plain\\"), "plain\\");
        assert_eq!(unescape("x\\99"), "x\\99");
    }
}
