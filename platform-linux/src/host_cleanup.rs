//! Removing mounts and loop devices left under a directory: what a node's power loss takes
//! with it, and what the demo and the tests must not leave behind.
//!
//! Everything is found by path (mount points and loop backing files below `root`), never by
//! name patterns, so nothing outside the caller's own directory is touched.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`: what this module needs of it.
struct Mount {
    point: PathBuf,
    /// `major:minor` of the mounted file system (for FUSE: the connection number is minor).
    device: String,
    fstype: String,
    source: String,
}

/// The current mounts; none when mountinfo cannot be read.
fn mounts() -> Vec<Mount> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|field| *field == "-")?;
            Some(Mount {
                point: PathBuf::from(fields.get(4)?.replace("\\040", " ")),
                device: fields.get(2)?.to_string(),
                fstype: fields.get(dash + 1)?.to_string(),
                source: fields.get(dash + 2)?.to_string(),
            })
        })
        .collect()
}

/// Lazily unmounts every mount point at or below `root`, deepest first.
pub fn unmount_below(root: &Path) {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|mount| mount.point)
        .filter(|point| point.starts_with(root))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        unmount_lazily(&point);
    }
}

/// `umount -l`: detaches `point` now; the kernel finishes when the last user is gone.
pub fn unmount_lazily(point: &Path) {
    if let Ok(path) = CString::new(point.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 with a valid NUL-terminated path and a flag constant.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Loop devices whose backing file lies at or below `root`, as `/dev/loopN`.
pub fn loops_below(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        let backing = entry.path().join("loop/backing_file");
        let Ok(file) = std::fs::read_to_string(backing) else {
            continue;
        };
        // The kernel appends " (deleted)" when the file is gone.
        let file = file.trim().trim_end_matches(" (deleted)");
        if Path::new(file).starts_with(root) {
            devices.push(format!("/dev/{name}"));
        }
    }
    devices
}

/// Unmounts what is mounted from `device` (lazily), then detaches it.
pub fn detach_loop(device: &str) {
    for mount in mounts().into_iter().filter(|mount| mount.source == device) {
        unmount_lazily(&mount.point);
    }
    let _ = std::process::Command::new("losetup")
        .args(["-d", device])
        .output();
}

/// Everything below `root`: FUSE connections there are aborted first (what a power loss does
/// to a dead server's mounts; nothing can then hang waiting on them), then file systems on loop
/// devices backed by files there, the loop devices, then every mount point there.
pub fn release_below(root: &Path) {
    abort_fuse_below(root);
    for device in loops_below(root) {
        detach_loop(&device);
    }
    unmount_below(root);
}

/// Aborts the FUSE connection of every FUSE mount at or below `root`: pending and future
/// requests fail at once instead of waiting for a server that is gone. The fusectl file
/// system is mounted for this if it is not, and unmounted again afterwards.
pub fn abort_fuse_below(root: &Path) {
    let connections: Vec<String> = mounts()
        .into_iter()
        .filter(|m| {
            m.point.starts_with(root) && (m.fstype == "fuse" || m.fstype.starts_with("fuse."))
        })
        .filter_map(|m| m.device.split(':').nth(1).map(str::to_string))
        .collect();
    if connections.is_empty() {
        return;
    }
    let control = Path::new("/sys/fs/fuse/connections");
    let mounted_here = !mounts().iter().any(|m| m.point == control)
        && std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(control)
            .status()
            .is_ok_and(|status| status.success());
    for connection in connections {
        let _ = std::fs::write(control.join(connection).join("abort"), "1");
    }
    if mounted_here {
        unmount_lazily(control);
    }
}
