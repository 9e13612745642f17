//! Benchmark: the volume data path. fio runs the same four jobs against six targets on the
//! same disk (the temp dir), all in one run:
//!
//! 1. a raw file, libaio with O_DIRECT (the disk itself);
//! 2. `nbdkit file` on a file, fio's nbd engine (the unreplicated NBD baseline);
//! 3. a tandem volume with one leg on a single-node cluster, fio's nbd engine;
//! 4. a tandem volume with two synchronous legs on two daemons (plus a witness), nbd engine;
//! 5. `nbdkit file` → `nbdfuse` → loop device, libaio with O_DIRECT on the loop device (the
//!    filesystem path built from existing tools);
//! 6. the two-leg volume's FUSE image → loop device, libaio with O_DIRECT on the loop device.
//!
//! Jobs: sequential write 1 MiB QD16 (MB/s), random write 4 KiB QD32 (IOPS), QD1 4 KiB write
//! each followed by an fsync (p50/p99 of write + sync, µs) and sequential read 1 MiB QD16
//! (MB/s). Each target is prefilled once through its own path first, so no job pays for
//! allocating a sparse file. Tandem rows are printed as ratios to `nbdkit file` (the FUSE row
//! to the nbdkit + nbdfuse chain), next to the project's targets. Nothing is asserted.
//!
//! Everything is torn down after each target and on any failure (the `Bench` guard): loop
//! devices detached by their recorded paths, the nbdfuse mount unmounted by its path,
//! nbdkit/nbdfuse stopped by PID, tandem daemons killed by PID (`TestCluster`), temp dirs
//! removed. Needs root (FUSE, loop devices). `scripts/bench-volume` builds and runs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::{
    cli, detach_loop, require_root_and_fuse, run_program, text, wait_for, TestCluster,
};

const SIZE_MIB: u64 = 256;
const SIZE: u64 = SIZE_MIB << 20;
const VOLUME: &str = "db";

fn main() {
    let runtime: u64 = std::env::args()
        .skip_while(|arg| arg != "--runtime")
        .nth(1)
        .map(|n| n.parse().expect("--runtime takes whole seconds"))
        .unwrap_or(10);
    require_root_and_fuse("bench-volume");
    for tool in ["fio", "nbdkit", "nbdfuse", "losetup", "fusermount3"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(found, "bench-volume needs {tool} on PATH");
    }
    let started = Instant::now();
    let mut bench = Bench::new(runtime);
    println!(
        "volume data path: {SIZE_MIB} MiB per target, {runtime} s per job; {}; {} cores; {}; {}",
        one_line("date", &["-u", "+%F %H:%M UTC"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        one_line("uname", &["-sr"]),
        one_line("fio", &["--version"]),
    );
    println!("temp dir: {}", bench.root.display());

    let raw = bench.raw_file();
    let nbdkit = bench.nbdkit_nbd();
    let one_leg = bench.tandem_nbd(1);
    let chain = bench.nbdkit_nbdfuse_loop();
    let (two_legs, fuse) = bench.tandem_two_legs_nbd_and_fuse();

    let rows = [
        Row::plain("raw file, libaio O_DIRECT", raw),
        Row::plain("nbdkit file, NBD (baseline)", nbdkit),
        Row::versus("tandem 1 leg, NBD", one_leg, nbdkit, None),
        Row::versus(
            "tandem 2 legs sync, NBD",
            two_legs,
            nbdkit,
            Some(Targets::TWO_LEGS),
        ),
        Row::plain("nbdkit → nbdfuse → loop (baseline)", chain),
        Row::versus(
            "tandem 2 legs FUSE image → loop",
            fuse,
            chain,
            Some(Targets::FUSE),
        ),
    ];
    print_tables(&rows, &bench.notes);
    drop(bench);
    println!(
        "\nwhole benchmark: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The first line of a program's stdout, or "?" when it cannot run.
fn one_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// How fio reaches a target.
enum Access {
    /// fio's nbd engine (libnbd) on this URI.
    Nbd(String),
    /// libaio with O_DIRECT on a file or block device.
    Direct(PathBuf),
}

/// The four figures of one target.
#[derive(Clone, Copy, Default)]
struct Measured {
    seq_write_mbs: f64,
    rand_write_iops: f64,
    fsync: Fsync,
    seq_read_mbs: f64,
}

/// QD1 4 KiB write + fsync: fio reports the write's completion latency and the sync's latency
/// separately (µs here); `cycles` is writes per second, each one write + one sync.
#[derive(Clone, Copy, Default)]
struct Fsync {
    write_p50: f64,
    write_p99: f64,
    sync_p50: f64,
    sync_p99: f64,
    cycles: f64,
}

impl Fsync {
    fn p50(&self) -> f64 {
        self.write_p50 + self.sync_p50
    }

    fn p99(&self) -> f64 {
        self.write_p99 + self.sync_p99
    }

    /// The exact mean of one write + sync, from the rate at QD1.
    fn mean(&self) -> f64 {
        if self.cycles > 0.0 {
            1e6 / self.cycles
        } else {
            0.0
        }
    }
}

/// Everything the benchmark started, removed in dependency order: loop devices, then FUSE
/// mounts, then processes (latest first), then clusters, then the temp dir.
struct Bench {
    root: PathBuf,
    runtime: u64,
    loops: Vec<String>,
    mounts: Vec<PathBuf>,
    children: Vec<(String, Child)>,
    clusters: Vec<TestCluster>,
    notes: Vec<String>,
}

impl Bench {
    fn new(runtime: u64) -> Bench {
        let root = std::env::temp_dir().join(format!("tandem-bench-volume-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("create the benchmark's temp dir");
        Bench {
            root,
            runtime,
            loops: Vec::new(),
            mounts: Vec::new(),
            children: Vec::new(),
            clusters: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A sparse file of the volume's size in the temp dir.
    fn data_file(&self, name: &str) -> PathBuf {
        let path = self.root.join(name);
        let file = fs::File::create(&path).expect("create a data file in the temp dir");
        file.set_len(SIZE).expect("size the data file");
        path
    }

    // ---- targets ----

    fn raw_file(&mut self) -> Measured {
        let path = self.data_file("raw.img");
        let measured = self.measure("raw file", &Access::Direct(path.clone()));
        let _ = fs::remove_file(path);
        measured
    }

    fn nbdkit_nbd(&mut self) -> Measured {
        let file = self.data_file("nbdkit.img");
        let socket = self.start_nbdkit("nbdkit", &file);
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        let measured = self.measure("nbdkit file", &Access::Nbd(uri));
        self.teardown();
        let _ = fs::remove_file(file);
        measured
    }

    fn nbdkit_nbdfuse_loop(&mut self) -> Measured {
        let file = self.data_file("chain.img");
        let socket = self.start_nbdkit("nbdkit-chain", &file);
        let mount = self.root.join("nbdfuse");
        fs::create_dir_all(&mount).expect("create the nbdfuse mount point");
        let image = mount.join("disk");
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        let log = self.log_file("nbdfuse");
        let child = Command::new("nbdfuse")
            .arg(&image)
            .arg(&uri)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start nbdfuse");
        // Recorded before it is known to be up, so a half-made mount is still removed.
        self.mounts.push(mount.clone());
        self.children.push(("nbdfuse".into(), child));
        self.wait_up("nbdfuse's file", || {
            fs::metadata(&image).is_ok_and(|m| m.len() == SIZE)
        });
        let device = self.attach_loop(&image, "nbdkit+nbdfuse");
        let measured = self.measure("nbdkit → nbdfuse → loop", &Access::Direct(device.into()));
        self.teardown();
        let _ = fs::remove_file(file);
        measured
    }

    fn tandem_nbd(&mut self, legs: usize) -> Measured {
        let socket = self.tandem_volume(legs);
        let measured = self.measure(
            &format!("tandem {legs} leg(s), NBD"),
            &Access::Nbd(volume_uri(&socket)),
        );
        self.teardown();
        measured
    }

    /// The two-leg volume through NBD, then through its FUSE image on a loop device.
    fn tandem_two_legs_nbd_and_fuse(&mut self) -> (Measured, Measured) {
        let socket = self.tandem_volume(2);
        let nbd = self.measure("tandem 2 legs, NBD", &Access::Nbd(volume_uri(&socket)));
        let image = socket
            .parent()
            .expect("state dir")
            .join(format!("images/{VOLUME}/{VOLUME}.img"));
        wait_for("the volume's FUSE image", Duration::from_secs(30), || {
            fs::metadata(&image)
                .is_ok_and(|m| m.len() == SIZE)
                .then_some(())
        });
        let device = self.attach_loop(&image, "tandem FUSE image");
        let fuse = self.measure("tandem 2 legs, FUSE → loop", &Access::Direct(device.into()));
        self.teardown();
        (nbd, fuse)
    }

    // ---- setup helpers ----

    fn log_file(&self, label: &str) -> fs::File {
        fs::File::create(self.root.join(format!("{label}.log"))).expect("create a log file")
    }

    /// Polls `up` every 20 ms for up to 15 s; fails early, with the logs, if a process died.
    fn wait_up(&mut self, what: &str, mut up: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !up() {
            for (label, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{label} exited ({status}) while waiting for {what}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "gave up after 15 s waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nbdkit file` on `file`, serving on a Unix socket in the temp dir.
    fn start_nbdkit(&mut self, label: &str, file: &Path) -> PathBuf {
        let socket = self.root.join(format!("{label}.sock"));
        let log = self.log_file(label);
        let child = Command::new("nbdkit")
            .arg("--foreground")
            .arg("--unix")
            .arg(&socket)
            .arg("--exit-with-parent")
            .arg("file")
            .arg(file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start nbdkit");
        self.children.push((label.into(), child));
        self.wait_up("nbdkit's socket", || socket.exists());
        socket
    }

    /// `losetup --find --show file`, recorded by the device path it printed.
    fn attach_loop(&mut self, file: &Path, what: &str) -> String {
        let file_text = file.to_str().expect("utf-8 path");
        let output = run_program("losetup", &["--find", "--show", file_text]);
        assert!(
            output.status.success(),
            "losetup on {what}: {}",
            text(&output)
        );
        let device = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(
            device.starts_with("/dev/loop"),
            "losetup printed {device:?}"
        );
        self.loops.push(device.clone());
        let dio = one_line(
            "losetup",
            &["--list", "--noheadings", "--output", "DIO", &device],
        );
        self.notes.push(format!(
            "loop device on the {what}: direct I/O to its backing file = {}",
            dio.trim()
        ));
        device
    }

    /// A cluster with a promoted volume of `legs` legs (one per data node; a witness joins
    /// when there are two); returns the primary's NBD socket.
    fn tandem_volume(&mut self, legs: usize) -> PathBuf {
        let (names, witnesses): (&[&str], &[&str]) = match legs {
            1 => (&["a"], &[]),
            _ => (&["a", "b"], &["w"]),
        };
        println!("== tandem cluster: data nodes {names:?}, witnesses {witnesses:?}");
        let cluster = TestCluster::form(&format!("bench-volume-{legs}"), names, witnesses);
        let a = cluster.node("a").dir.clone();
        let mut args = vec![
            "volume".to_string(),
            "create".into(),
            VOLUME.into(),
            "--size".into(),
            format!("{SIZE_MIB}M"),
        ];
        for node in names {
            args.push("--leg".into());
            args.push(format!(
                "{node}:{}",
                cluster.root.join(format!("{node}.leg")).display()
            ));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.clusters.push(cluster);
        let output = cli(&a, &args);
        assert!(output.status.success(), "volume create: {}", text(&output));
        let output = cli(&a, &["volume", "promote", VOLUME, "--node", "a"]);
        assert!(output.status.success(), "volume promote: {}", text(&output));
        if legs > 1 {
            let synced = Instant::now();
            wait_for("leg 1 UpToDate", Duration::from_secs(120), || {
                let output = cli(&a, &["volume", "show", VOLUME, "--json"]);
                let reply: Value = serde_json::from_slice(&output.stdout).ok()?;
                (reply["volumes"][0]["legs"][1]["state"] == "UpToDate").then_some(())
            });
            println!(
                "   leg 1 UpToDate after {:.1} s",
                synced.elapsed().as_secs_f64()
            );
        }
        let socket = a.join(format!("nbd-{VOLUME}.sock"));
        wait_for("the volume's NBD socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        });
        socket
    }

    // ---- fio ----

    /// Prefills the target once, then runs the four measured jobs.
    fn measure(&mut self, label: &str, access: &Access) -> Measured {
        println!("== {label}");
        let prefill = Instant::now();
        self.fio(
            access,
            "prefill",
            &["--rw=write", "--bs=1M", "--iodepth=16", "--end_fsync=1"],
            false,
        );
        println!(
            "   prefill {SIZE_MIB} MiB: {:.1} s",
            prefill.elapsed().as_secs_f64()
        );
        let job = self.fio(
            access,
            "seq-write",
            &["--rw=write", "--bs=1M", "--iodepth=16"],
            true,
        );
        let seq_write_mbs = number(&job["write"]["bw_bytes"]) / 1e6;
        println!("   seq write 1M QD16: {seq_write_mbs:.0} MB/s");
        let job = self.fio(
            access,
            "rand-write",
            &[
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=32",
                "--randrepeat=0",
                "--norandommap",
            ],
            true,
        );
        let rand_write_iops = number(&job["write"]["iops"]);
        println!("   rand write 4K QD32: {rand_write_iops:.0} IOPS");
        let job = self.fio(
            access,
            "write-fsync",
            &["--rw=write", "--bs=4k", "--iodepth=1", "--fsync=1"],
            true,
        );
        let fsync = Fsync {
            write_p50: percentile(&job["write"]["clat_ns"], "50.000000"),
            write_p99: percentile(&job["write"]["clat_ns"], "99.000000"),
            sync_p50: percentile(&job["sync"]["lat_ns"], "50.000000"),
            sync_p99: percentile(&job["sync"]["lat_ns"], "99.000000"),
            cycles: number(&job["write"]["iops"]),
        };
        println!(
            "   QD1 4K write+fsync: p50 {:.0} µs, p99 {:.0} µs (write p50 {:.0} + sync p50 {:.0}; mean cycle {:.0} µs)",
            fsync.p50(),
            fsync.p99(),
            fsync.write_p50,
            fsync.sync_p50,
            fsync.mean()
        );
        let job = self.fio(
            access,
            "seq-read",
            &["--rw=read", "--bs=1M", "--iodepth=16"],
            true,
        );
        let seq_read_mbs = number(&job["read"]["bw_bytes"]) / 1e6;
        println!("   seq read 1M QD16: {seq_read_mbs:.0} MB/s");
        Measured {
            seq_write_mbs,
            rand_write_iops,
            fsync,
            seq_read_mbs,
        }
    }

    /// Runs one fio job (bounded in time) and returns its JSON job object.
    fn fio(&mut self, access: &Access, job: &str, args: &[&str], timed: bool) -> Value {
        let output = self.root.join(format!("fio-{job}.json"));
        let stderr = self.root.join(format!("fio-{job}.stderr"));
        let _ = fs::remove_file(&output);
        let mut command = Command::new("fio");
        command
            .current_dir(&self.root)
            .arg(format!("--name={job}"))
            .arg("--output-format=json")
            .arg(format!("--output={}", output.display()))
            .arg(format!("--size={SIZE_MIB}m"));
        match access {
            Access::Nbd(uri) => command.arg("--ioengine=nbd").arg(format!("--uri={uri}")),
            Access::Direct(path) => command
                .args(["--ioengine=libaio", "--direct=1"])
                .arg(format!("--filename={}", path.display())),
        };
        if timed {
            command
                .arg(format!("--runtime={}", self.runtime))
                .arg("--time_based");
        }
        command.args(args);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("fio stderr file"))
            .spawn()
            .expect("start fio");
        let limit = Duration::from_secs(if timed { self.runtime + 120 } else { 600 });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("fio {job} did not finish within {limit:?}; killed it");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(error) => panic!("waiting for fio {job}: {error}"),
            }
        };
        let errors = fs::read_to_string(&stderr).unwrap_or_default();
        let report = fs::read_to_string(&output).unwrap_or_default();
        assert!(
            status.success(),
            "fio {job} failed ({status}): {errors}\n{report}"
        );
        // fio may print notes before the JSON document.
        let json = report.find('{').map_or("", |start| &report[start..]);
        let parsed: Value = serde_json::from_str(json)
            .unwrap_or_else(|error| panic!("fio {job} JSON: {error}: {report}"));
        let result = parsed["jobs"][0].clone();
        assert_eq!(
            result["error"].as_i64(),
            Some(0),
            "fio {job} reported an error: {errors}"
        );
        result
    }

    // ---- teardown ----

    /// Removes everything the current target made; safe to call more than once.
    fn teardown(&mut self) {
        for device in self.loops.drain(..).rev() {
            if let Err(error) = detach_loop(&device) {
                eprintln!("cleanup: {error}");
            }
        }
        for dir in self.mounts.drain(..).rev() {
            unmount_fuse(&dir);
        }
        for (label, mut child) in self.children.drain(..).rev() {
            stop_child(&label, &mut child);
        }
        // Each cluster's Drop kills its daemons by PID, unmounts their images, removes its dir.
        self.clusters.clear();
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for label in ["nbdkit", "nbdkit-chain", "nbdfuse"] {
                let log =
                    fs::read_to_string(self.root.join(format!("{label}.log"))).unwrap_or_default();
                if !log.trim().is_empty() {
                    eprintln!("---- {label} log ----\n{}", log.trim());
                }
            }
        }
        self.teardown();
        if mounted_below(&self.root) {
            eprintln!(
                "cleanup: a mount is still below {}; left it in place",
                self.root.display()
            );
        } else if let Err(error) = fs::remove_dir_all(&self.root) {
            eprintln!("cleanup: removing {}: {error}", self.root.display());
        }
    }
}

/// Mount points listed in /proc/self/mountinfo.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .collect()
}

fn mounted_below(root: &Path) -> bool {
    mount_points().iter().any(|point| point.starts_with(root))
}

/// Unmounts the FUSE mount at exactly `dir` (if it is mounted): `fusermount3 -u`, then
/// `umount`, then a lazy `umount -l`.
fn unmount_fuse(dir: &Path) {
    if !mount_points().iter().any(|point| point == dir) {
        return;
    }
    let dir_text = dir.to_string_lossy().to_string();
    let attempts: [(&str, &[&str]); 3] = [
        ("fusermount3", &["-u"]),
        ("umount", &[]),
        ("umount", &["-l"]),
    ];
    for (program, flags) in attempts {
        let mut args = flags.to_vec();
        args.push(&dir_text);
        if run_program(program, &args).status.success() {
            return;
        }
    }
    eprintln!("cleanup: cannot unmount {dir_text}");
}

/// Stops a child by its PID: SIGTERM, up to 5 s to exit, then SIGKILL.
fn stop_child(label: &str, child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the PID of a child we spawned and have not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("cleanup: {label} (pid {pid}) ignored SIGTERM for 5 s; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

fn volume_uri(socket: &Path) -> String {
    format!("nbd+unix:///{VOLUME}?socket={}", socket.display())
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("fio JSON: expected a number, got {value}"))
}

/// A completion-latency percentile from fio's JSON, in µs.
fn percentile(latency: &Value, key: &str) -> f64 {
    number(&latency["percentile"][key]) / 1000.0
}

// ---- the table ----

/// Targets printed next to the ratios (not asserted): minimum ratios for the three
/// throughput columns and the largest allowed p50 increase of write+fsync, in µs.
#[derive(Clone, Copy)]
struct Targets {
    seq_write: f64,
    rand_write: f64,
    seq_read: f64,
    fsync_p50_extra_us: f64,
}

impl Targets {
    const TWO_LEGS: Targets = Targets {
        seq_write: 0.7,
        rand_write: 0.7,
        seq_read: 0.95,
        fsync_p50_extra_us: 150.0,
    };
    const FUSE: Targets = Targets {
        seq_write: 1.0,
        rand_write: 1.0,
        seq_read: 1.0,
        fsync_p50_extra_us: 0.0,
    };
}

struct Row {
    label: &'static str,
    measured: Measured,
    baseline: Option<(Measured, Option<Targets>)>,
}

impl Row {
    fn plain(label: &'static str, measured: Measured) -> Row {
        Row {
            label,
            measured,
            baseline: None,
        }
    }

    fn versus(
        label: &'static str,
        measured: Measured,
        baseline: Measured,
        targets: Option<Targets>,
    ) -> Row {
        Row {
            label,
            measured,
            baseline: Some((baseline, targets)),
        }
    }
}

fn ratio_cell(value: f64, baseline: f64, target: Option<f64>, decimals: usize) -> String {
    let mut cell = format!("{value:.decimals$}");
    if baseline > 0.0 {
        let ratio = value / baseline;
        cell += &format!(" ({ratio:.2}×");
        if let Some(target) = target {
            let mark = if ratio >= target { "✓" } else { "✗" };
            cell += &format!(", ≥{target:.2} {mark}");
        }
        cell += ")";
    }
    cell
}

fn fsync_cell(fsync: &Fsync, baseline: Option<(&Fsync, Option<f64>)>) -> String {
    let mut cell = format!("{:.0} / {:.0}", fsync.p50(), fsync.p99());
    if let Some((base, target)) = baseline {
        let extra = fsync.p50() - base.p50();
        cell += &format!(" (p50 {extra:+.0} µs");
        if let Some(target) = target {
            let mark = if extra <= target { "✓" } else { "✗" };
            cell += &format!(", ≤{target:+.0} {mark}");
        }
        cell += ")";
    }
    cell
}

fn print_tables(rows: &[Row], notes: &[String]) {
    println!();
    println!(
        "| target | seq write 1M QD16 (MB/s) | rand write 4K QD32 (IOPS) | QD1 4K write+fsync p50 / p99 (µs) | seq read 1M QD16 (MB/s) |"
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        let m = &row.measured;
        let cells = match &row.baseline {
            None => [
                format!("{:.0}", m.seq_write_mbs),
                format!("{:.0}", m.rand_write_iops),
                fsync_cell(&m.fsync, None),
                format!("{:.0}", m.seq_read_mbs),
            ],
            Some((base, targets)) => [
                ratio_cell(
                    m.seq_write_mbs,
                    base.seq_write_mbs,
                    targets.map(|t| t.seq_write),
                    0,
                ),
                ratio_cell(
                    m.rand_write_iops,
                    base.rand_write_iops,
                    targets.map(|t| t.rand_write),
                    0,
                ),
                fsync_cell(
                    &m.fsync,
                    Some((&base.fsync, targets.map(|t| t.fsync_p50_extra_us))),
                ),
                ratio_cell(
                    m.seq_read_mbs,
                    base.seq_read_mbs,
                    targets.map(|t| t.seq_read),
                    0,
                ),
            ],
        };
        println!("| {} | {} |", row.label, cells.join(" | "));
    }
    println!();
    println!(
        "Ratios: tandem NBD rows against `nbdkit file` over NBD, the FUSE row against the \
         nbdkit → nbdfuse → loop chain, all measured in this run. ✓/✗ compare with the targets \
         (printed, not asserted)."
    );
    println!();
    println!("QD1 write+fsync detail (µs): fio reports each 4 KiB write's completion latency and");
    println!("the following fsync's latency separately; the table shows the sum of their p50s and");
    println!("of their p99s (the p99 sum is an estimate, not the exact p99 of the pair); the mean");
    println!("is exact (1 / write rate at QD1).");
    println!();
    println!("| target | write p50 | write p99 | sync p50 | sync p99 | mean write+sync |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let f = &row.measured.fsync;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            row.label,
            f.write_p50,
            f.write_p99,
            f.sync_p50,
            f.sync_p99,
            f.mean()
        );
    }
    if !notes.is_empty() {
        println!();
        for note in notes {
            println!("note: {note}");
        }
    }
}
