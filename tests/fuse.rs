//! Tier-4 tests (root, real kernel) of the FUSE image export: a real ext4 is made on a loop
//! device attached to the image, files are written and fsynced through it, and everything is
//! then verified from the leg file itself (fsck clean, every byte intact), and fsync from the
//! filesystem is shown to reach `VolumeIo::flush`.
//!
//! Every loop device, mount and temporary directory is recorded by its exact path when it is
//! made and removed by a guard on success and on failure; nothing is found by name patterns.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_linux::fuse_export::FuseExport;
use tandem_linux::leg::Leg;
use tandem_linux::volume_io::VolumeIo;
use tandem_tests::{run_ok, Devices};

const MIB: u64 = 1 << 20;
const VOLUME_SIZE: u64 = 256 * MIB;
const BLOCK: u64 = 4096;
/// `_IO(0x00, 1)`: maps a file's logical block to the filesystem's physical block.
const FIBMAP: libc::c_ulong = 1;

fn require_root_and_fuse() {
    tandem_tests::require_root_and_fuse("tests/fuse.rs");
}

fn run(program: &str, args: &[&str]) -> Output {
    tandem_tests::run_program(program, args)
}

fn text(output: &Output) -> String {
    tandem_tests::text(output)
}

/// Everything a test made, removed in reverse order on drop (success or panic).
struct Guard {
    root: PathBuf,
    devices: Devices,
    export: Option<FuseExport>,
}

impl Guard {
    fn new(label: &str) -> Guard {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "tandem-fuse-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&root).expect("create the test directory");
        Guard {
            root,
            devices: Devices::default(),
            export: None,
        }
    }

    fn attach_loop(&mut self, file: &Path, extra: &[&str]) -> String {
        self.devices.attach_loop(file, extra)
    }

    fn detach_loop(&mut self, device: &str) {
        self.devices.detach_loop(device)
    }

    fn mount(&mut self, device: &str, dir: &Path, options: &str) {
        self.devices.mount(device, dir, options)
    }

    fn unmount(&mut self, dir: &Path) {
        self.devices.unmount(dir)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let clean = self.devices.release();
        drop(self.export.take());
        if clean {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!(
                "cleanup: left {} (a mount inside it is still busy)",
                self.root.display()
            );
        }
    }
}

/// Deterministic, incompressible bytes for `seed`.
fn pattern(seed: u64, length: usize) -> Vec<u8> {
    tandem_tests::random_bytes(length, seed)
}

fn timed<T>(what: &str, step: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = step();
    eprintln!("{what}: {:.2?}", started.elapsed());
    result
}

/// Starts the export, attaches a loop device to the image and makes ext4 on it.
fn export_with_ext4(guard: &mut Guard, io: Arc<dyn VolumeIo>) -> String {
    let export = FuseExport::start(&guard.root.join("images/db"), "db", io).expect("start");
    let image = export.image_path();
    guard.export = Some(export);
    assert_eq!(
        image.file_name().and_then(|name| name.to_str()),
        Some("db.img")
    );
    let metadata = std::fs::metadata(&image).expect("stat the image");
    assert!(metadata.is_file());
    assert_eq!(metadata.len(), VOLUME_SIZE);
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
    assert_eq!(metadata.uid(), 0);
    let listing: Vec<_> = std::fs::read_dir(image.parent().expect("mount dir"))
        .expect("list the mount dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(listing, vec!["db.img"]);
    let device = guard.attach_loop(&image, &[]);
    timed("mkfs.ext4 through the image", || {
        run_ok("mkfs.ext4", &["-q", "-b", "4096", &device])
    });
    device
}

/// The files written through ext4: name and content.
fn test_files() -> Vec<(String, Vec<u8>)> {
    let sizes = [
        0,
        1,
        4096,
        MIB as usize + 13,
        8 * MIB as usize,
        3 * MIB as usize,
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| {
            let name = if index == 5 {
                format!("sub/dir/file-{index}")
            } else {
                format!("file-{index}")
            };
            (name, pattern(index as u64 + 1, size))
        })
        .collect()
}

fn write_and_fsync(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create a directory on ext4");
    }
    let mut file = File::create(path).expect("create a file on ext4");
    file.write_all(content).expect("write a file on ext4");
    file.sync_all().expect("fsync a file on ext4");
}

#[test]
fn ext4_on_a_loop_device_on_the_image_survives_to_the_leg() {
    require_root_and_fuse();
    let started = Instant::now();
    let mut guard = Guard::new("ext4");
    let leg_path = guard.root.join("leg.img");
    let leg = Leg::open(&leg_path, VOLUME_SIZE).expect("open the leg");
    let device = export_with_ext4(&mut guard, Arc::new(leg));
    let mnt = guard.root.join("mnt");
    guard.mount(&device, &mnt, "rw");
    let files = test_files();
    timed("write and fsync the files", || {
        for (name, content) in &files {
            write_and_fsync(&mnt.join(name), content);
        }
        // This file system only: a global sync would also wait on other tests' devices.
        run_ok("sync", &["-f", mnt.to_str().expect("utf-8 path")]);
    });
    timed("umount, detach, stop the export", || {
        guard.unmount(&mnt);
        guard.detach_loop(&device);
        let export = guard.export.take().expect("the export");
        let image = export.image_path();
        drop(export);
        assert!(
            !image.exists(),
            "{} is still there after drop",
            image.display()
        );
    });

    // Now only the leg file: a new, read-only loop device on it.
    let raw = guard.attach_loop(&leg_path, &["--read-only"]);
    let fsck = timed("fsck.ext4 -n -f on the leg", || {
        run("fsck.ext4", &["-n", "-f", &raw])
    });
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "fsck is not clean: {}",
        text(&fsck)
    );
    let check = guard.root.join("check");
    guard.mount(&raw, &check, "ro");
    for (name, content) in &files {
        let read = std::fs::read(check.join(name)).expect("read a file from the leg");
        assert!(
            read == *content,
            "{name}: {} bytes read, {} written, or different",
            read.len(),
            content.len()
        );
    }
    guard.unmount(&check);
    guard.detach_loop(&raw);
    eprintln!("whole test: {:.2?}", started.elapsed());
}

/// What reached the volume, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Write {
        offset: u64,
        length: u64,
        fua: bool,
    },
    Zero {
        offset: u64,
        length: u64,
        may_trim: bool,
    },
    Flush,
}

/// A `Leg` that records every write and flush.
struct Recording {
    leg: Leg,
    events: Mutex<Vec<Event>>,
}

impl Recording {
    fn new(path: &Path, size: u64) -> Arc<Recording> {
        Arc::new(Recording {
            leg: Leg::open(path, size).expect("open the leg"),
            events: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, event: Event) {
        self.events.lock().expect("events").push(event);
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }
}

impl VolumeIo for Recording {
    fn size(&self) -> u64 {
        self.leg.size()
    }

    fn read(&self, offset: u64, length: usize) -> std::io::Result<Vec<u8>> {
        self.leg.read(offset, length)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        self.leg.write(offset, data, fua)?;
        // A FUA write is durable itself, but it is not a flush: it is recorded as a write.
        self.record(Event::Write {
            offset,
            length: data.len() as u64,
            fua,
        });
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.leg.flush()?;
        self.record(Event::Flush);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool) -> std::io::Result<()> {
        self.leg.write_zeroes(offset, length, may_trim)?;
        self.record(Event::Zero {
            offset,
            length,
            may_trim,
        });
        Ok(())
    }

    fn trim(&self, offset: u64, length: u64) -> std::io::Result<()> {
        self.leg.trim(offset, length)
    }

    fn describe(&self) -> String {
        format!("recording {}", self.leg.describe())
    }
}

/// The byte offset on the volume of `file`'s first block (ext4 block size 4096).
fn first_block_offset(file: &File) -> u64 {
    let mut block: libc::c_int = 0;
    // SAFETY: FIBMAP reads and writes one c_int through the pointer, on an open file.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), FIBMAP as _, &mut block) };
    assert_eq!(result, 0, "FIBMAP: {}", std::io::Error::last_os_error());
    assert!(
        block > 0,
        "the file's first block is not allocated after fsync"
    );
    u64::try_from(block).expect("positive block") * BLOCK
}

#[test]
fn fsync_through_ext4_reaches_volume_flush_after_the_data_write() {
    require_root_and_fuse();
    let mut guard = Guard::new("fsync");
    let leg_path = guard.root.join("leg.img");
    let recording = Recording::new(&leg_path, VOLUME_SIZE);
    let device = export_with_ext4(&mut guard, recording.clone());
    let mnt = guard.root.join("mnt");
    guard.mount(&device, &mnt, "rw");
    let content = pattern(42, 64 * 1024);
    let path = mnt.join("durable");
    let mut file = File::create(&path).expect("create");
    file.write_all(&content).expect("write");
    let mark = recording.events().len();
    timed("fsync of a 64 KiB file", || file.sync_all().expect("fsync"));
    let events = recording.events();
    let data_at = first_block_offset(&file);
    let on_leg = File::open(&leg_path).expect("open the leg file");
    let mut stored = vec![0u8; BLOCK as usize];
    on_leg
        .read_exact_at(&mut stored, data_at)
        .expect("read the leg");
    assert!(
        stored[..] == content[..BLOCK as usize],
        "the data is not on the leg after fsync"
    );
    let covers = |event: &Event| match *event {
        Event::Write { offset, length, .. } | Event::Zero { offset, length, .. } => {
            offset <= data_at && data_at < offset + length
        }
        Event::Flush => false,
    };
    // The last write of that block carried the file's data (the leg holds it).
    let data_write = events
        .iter()
        .rposition(covers)
        .expect("the file's data block never reached the volume");
    let flushes_after = events[data_write..]
        .iter()
        .enumerate()
        .filter(|(index, event)| **event == Event::Flush && data_write + index >= mark)
        .count();
    assert!(
        flushes_after >= 1,
        "fsync did not call VolumeIo::flush after the data write; events since the write: {:?}",
        &events[data_write..]
    );
    eprintln!(
        "fsync: {} volume events during it, data at {data_at}, {flushes_after} flushes after it",
        events.len() - mark
    );
    drop(file);
    guard.unmount(&mnt);
    guard.detach_loop(&device);
}

fn errno_of(result: std::io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|error| error.raw_os_error())
}

fn fallocate(file: &File, mode: i32, offset: u64, length: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on an open file with plain integer arguments.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A 16 MiB export on a recording leg, its image opened read-write.
fn image_rig(label: &str) -> (Guard, Arc<Recording>, File) {
    require_root_and_fuse();
    let mut guard = Guard::new(label);
    let recording = Recording::new(&guard.root.join("leg.img"), 16 * MIB);
    let export =
        FuseExport::start(&guard.root.join("images/db"), "db", recording.clone()).expect("start");
    let image = export.image_path();
    guard.export = Some(export);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("open the image");
    (guard, recording, file)
}

#[test]
fn a_write_is_on_the_volume_when_it_returns_and_fsync_and_o_dsync_make_it_durable() {
    let (guard, recording, file) = image_rig("direct");
    let leg = File::open(guard.root.join("leg.img")).expect("open the leg file");
    // No FUSE page cache: a returned write is on the volume, but not yet flushed.
    let data = pattern(7, 8192);
    file.write_all_at(&data, 8192).expect("write");
    let mut on_leg = vec![0u8; data.len()];
    leg.read_exact_at(&mut on_leg, 8192).expect("read the leg");
    assert!(on_leg == data, "a returned write is not on the volume");
    let events = recording.events();
    let plain = Event::Write {
        offset: 8192,
        length: 8192,
        fua: false,
    };
    assert!(events.contains(&plain), "{events:?}");
    assert!(!events.contains(&Event::Flush), "{events:?}");
    file.sync_data().expect("fdatasync");
    assert_eq!(recording.events().last(), Some(&Event::Flush));
    file.sync_all().expect("fsync");
    assert_eq!(recording.events().last(), Some(&Event::Flush));

    // A file opened O_DSYNC writes with FUA.
    let image = guard.export.as_ref().expect("export").image_path();
    let sync_file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(image)
        .expect("open O_DSYNC");
    sync_file
        .write_all_at(&data[..4096], 0)
        .expect("O_DSYNC write");
    let fua_write = Event::Write {
        offset: 0,
        length: 4096,
        fua: true,
    };
    assert_eq!(recording.events().last(), Some(&fua_write));
}

#[test]
fn the_image_keeps_the_volume_size_and_zeroes_punched_ranges() {
    let (guard, recording, file) = image_rig("size");
    let size = 16 * MIB;
    // Reads are short at the end and empty past it; writes past it are refused.
    let mut buffer = vec![0u8; 4096];
    let at_end = file
        .read_at(&mut buffer, size - 100)
        .expect("read at the end");
    assert_eq!(at_end, 100);
    let past_end = file.read_at(&mut buffer, size).expect("read past the end");
    assert_eq!(past_end, 0);
    assert_eq!(errno_of(file.write_at(&buffer, size)), Some(libc::ENOSPC));
    // Resizing is refused, the same size is fine; nothing else can be created there.
    assert_eq!(errno_of(file.set_len(0)), Some(libc::EPERM));
    assert_eq!(errno_of(file.set_len(2 * size)), Some(libc::EPERM));
    file.set_len(size).expect("set_len to the same size");
    let image = guard.export.as_ref().expect("export").image_path();
    assert_eq!(std::fs::metadata(&image).expect("stat").len(), size);
    let stray = image.with_file_name("stray");
    assert_eq!(errno_of(File::create(stray)), Some(libc::EPERM));

    // PUNCH_HOLE and ZERO_RANGE read back zeros and reach the volume as write_zeroes.
    file.write_all_at(&pattern(9, 8192), 8192).expect("write");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&file, punch, 8192, 4096).expect("punch a hole");
    fallocate(&file, libc::FALLOC_FL_ZERO_RANGE, 12288, 4096).expect("zero a range");
    let mut back = vec![1u8; 8192];
    file.read_exact_at(&mut back, 8192).expect("read back");
    assert!(
        back.iter().all(|&byte| byte == 0),
        "punched/zeroed range is not zero"
    );
    let events = recording.events();
    let punched = Event::Zero {
        offset: 8192,
        length: 4096,
        may_trim: true,
    };
    let zeroed = Event::Zero {
        offset: 12288,
        length: 4096,
        may_trim: false,
    };
    assert!(events.contains(&punched), "{events:?}");
    assert!(events.contains(&zeroed), "{events:?}");
}

/// Whether a thread of this process has the name `name`.
fn thread_named(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("list this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .any(|comm| comm.trim_end() == name)
}

#[test]
fn dropping_an_export_still_in_use_fences_it_and_detaches_it() {
    require_root_and_fuse();
    let mut guard = Guard::new("busy");
    let leg_path = guard.root.join("leg.img");
    let recording = Recording::new(&leg_path, 16 * MIB);
    // Its own volume name, so its serving thread ("fuse-busy") can be told from the others.
    let export = FuseExport::start(&guard.root.join("images/busy"), "busy", recording.clone())
        .expect("start");
    assert!(
        thread_named("fuse-busy"),
        "no serving thread named after the volume"
    );
    let image = export.image_path();
    guard.export = Some(export);
    let device = guard.attach_loop(&image, &[]);
    let of = format!("of={device}");
    let if_ = format!("if={device}");
    let dd_write = ["if=/dev/zero", &of, "bs=64k", "count=4", "oflag=direct"];
    run_ok("dd", &dd_write);
    let before = recording.events().len();

    // The loop device still holds the image: the drop must not hang, must detach the mount
    // and must fence the volume (a demoted primary writes nothing more).
    timed("drop of a busy export", || drop(guard.export.take()));
    assert!(
        !image.exists(),
        "{} is still reachable after drop",
        image.display()
    );
    let write = run("dd", &dd_write);
    assert!(
        !write.status.success(),
        "a write after the drop succeeded: {}",
        text(&write)
    );
    let read = run(
        "dd",
        &[&if_, "of=/dev/null", "bs=64k", "count=4", "iflag=direct"],
    );
    assert!(
        !read.status.success(),
        "a read after the drop succeeded: {}",
        text(&read)
    );
    assert_eq!(
        recording.events().len(),
        before,
        "the volume saw I/O after the drop"
    );
    // Once the loop device lets go of the image, the detached mount ends and so does its
    // serving thread.
    guard.detach_loop(&device);
    let deadline = Instant::now() + Duration::from_secs(10);
    while thread_named("fuse-busy") {
        assert!(
            Instant::now() < deadline,
            "the serving thread outlived the mount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child process of `a_dead_mount_left_by_a_crash_is_cleared_by_the_next_start`.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HELPER_DIR: &str = "TANDEM_FUSE_TEST_HELPER_DIR";

#[test]
#[ignore = "helper process of a_dead_mount_left_by_a_crash_is_cleared_by_the_next_start"]
fn helper_serves_an_export_until_killed() {
    let Some(dir) = std::env::var_os(HELPER_DIR).map(PathBuf::from) else {
        return;
    };
    let leg = Leg::open(&dir.join("leg.img"), 16 * MIB).expect("open the leg");
    let export = FuseExport::start(&dir.join("images/db"), "db", Arc::new(leg)).expect("start");
    // Killed by the parent long before this; bounded in case the parent died first.
    std::thread::sleep(Duration::from_secs(60));
    drop(export);
}

#[test]
fn a_dead_mount_left_by_a_crash_is_cleared_by_the_next_start() {
    require_root_and_fuse();
    let mut guard = Guard::new("crash");
    let mount_dir = guard.root.join("images/db");
    let image = mount_dir.join("db.img");
    let helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_serves_an_export_until_killed",
            "--ignored",
        ])
        .env(HELPER_DIR, &guard.root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the helper process");
    let mut helper = Child(helper);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !image.exists() {
        assert!(
            Instant::now() < deadline,
            "the helper's export never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // From here the mount is recorded, so a failure below still removes it.
    guard.devices.adopt_mount(&mount_dir);
    helper.0.kill().expect("kill -9 the helper");
    helper.0.wait().expect("reap the helper");
    // `stat` may be answered from the kernel's cache; listing the directory asks the server.
    let dead = std::fs::read_dir(&mount_dir).map(|_| ());
    assert_eq!(
        errno_of(dead),
        Some(libc::ENOTCONN),
        "the mount is not dead"
    );

    // A second export at the same place is refused while the first is alive…
    let leg_path = guard.root.join("leg.img");
    let leg: Arc<dyn VolumeIo> = Arc::new(Leg::open(&leg_path, 16 * MIB).expect("open"));
    let export = FuseExport::start(&mount_dir, "db", leg.clone()).expect("start after a crash");
    guard.devices.forget_mount(&mount_dir);
    let busy = FuseExport::start(&mount_dir, "db", leg)
        .err()
        .expect("a second export");
    let message = busy.to_string();
    assert!(
        message.contains("busy") && message.contains(&*mount_dir.to_string_lossy()),
        "{message}"
    );
    // …and the live one serves.
    let data = pattern(3, 4096);
    // (`fs::write` would truncate, which the fixed-size image refuses.)
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|file| file.write_all_at(&data, 0))
        .expect("write through the new export");
    let mut back = vec![0u8; 4096];
    File::open(&image)
        .expect("open")
        .read_exact_at(&mut back, 0)
        .expect("read");
    assert!(back == data, "the new export does not serve the volume");
    drop(export);
    assert!(!image.exists(), "the export is still mounted after drop");
}
