//! Removing mounts and loop devices left under a directory: what a node's power loss takes
//! with it, and what the demo and the tests must not leave behind.
//!
//! Everything is found by path (mount points and loop backing files below `root`), never by
//! name patterns, so nothing outside the caller's own directory is touched.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Lazily unmounts every mount point at or below `root`, deepest first.
pub fn unmount_below(root: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
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
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let source = fields
                .iter()
                .position(|field| *field == "-")
                .and_then(|dash| fields.get(dash + 2));
            if source == Some(&device) {
                if let Some(point) = fields.get(4) {
                    unmount_lazily(Path::new(&point.replace("\\040", " ")));
                }
            }
        }
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

/// Aborts the FUSE connection of every FUSE mount at or below `root` (through the fusectl
/// file system, mounted on demand): pending and future requests fail at once instead of
/// waiting for a server that is gone.
pub fn abort_fuse_below(root: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let connections = Path::new("/sys/fs/fuse/connections");
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(device), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let fstype = fields
            .iter()
            .position(|field| *field == "-")
            .and_then(|dash| fields.get(dash + 1));
        let is_fuse = fstype.is_some_and(|t| *t == "fuse" || t.starts_with("fuse."));
        let point = PathBuf::from(point.replace("\\040", " "));
        if !is_fuse || !point.starts_with(root) {
            continue;
        }
        let Some(minor) = device.split(':').nth(1) else {
            continue;
        };
        if !connections.join(minor).exists() {
            let _ = std::process::Command::new("mount")
                .args(["-t", "fusectl", "fusectl"])
                .arg(connections)
                .output();
        }
        let _ = std::fs::write(connections.join(minor).join("abort"), "1");
    }
}
