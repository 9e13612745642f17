//! Helpers for end-to-end tests of the real `tandem` binary.
//!
//! A [`TestCluster`] runs real `tandem daemon` processes, each with its own state dir and its own
//! loopback address (127.0.0.x), and talks to them only through the real CLI. Its `Drop` stops
//! every process it started by PID and removes its directory, on success and on failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod chaos_kit;
pub mod failover_kit;
pub mod lab_cluster;
pub mod nbd_client;
pub mod scenario_real;

/// The `tandem` binary under test: `$TANDEM_BIN`, or the one cargo built next to this test.
pub fn tandem_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TANDEM_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("tandem");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// A free TCP port on `ip` (a loopback address).
pub fn free_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Runs the CLI with `--state-dir dir` and returns its output.
pub fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(tandem_bin())
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run tandem")
}

/// Text of stdout and stderr together, for assertions on messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `check` every 20 ms until it yields a value; panics after `limit` (a hang guard).
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node of a test cluster.
pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    pub child: Option<Child>,
}

impl TestNode {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// `tandem status --json` of this node, if its daemon answers.
    pub fn status(&self) -> Option<Value> {
        let output = cli(&self.dir, &["status", "--json"]);
        if !output.status.success() {
            return None;
        }
        let reply: Value = serde_json::from_slice(&output.stdout).ok()?;
        (reply["reply"] == "status").then_some(reply)
    }

    /// Waits until this node sees a leader; returns the leader's id.
    pub fn wait_leader(&self) -> u64 {
        wait_for(
            &format!("a leader seen by {}", self.name),
            Duration::from_secs(20),
            || self.status()?["leader"].as_u64(),
        )
    }

    /// Waits until this node sees `count` nodes online.
    pub fn wait_online(&self, count: usize) -> Value {
        wait_for(
            &format!("{count} nodes online as seen by {}", self.name),
            Duration::from_secs(30),
            || {
                let status = self.status()?;
                let online = status["nodes"]
                    .as_array()?
                    .iter()
                    .filter(|n| n["online"] == true)
                    .count();
                (online == count).then_some(status)
            },
        )
    }

    /// `kill -9` of this node's daemon (by PID), reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A clean stop (SIGTERM) of this node's daemon, waiting for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the PID of a child this harness started and has not reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }

    /// Waits until this node holds its lease (a new leader grants none during its blackout),
    /// so that writes on it go through at once instead of waiting for the lease.
    pub fn wait_lease(&self) {
        wait_for(
            &format!("{} to hold its lease", self.name),
            Duration::from_secs(30),
            || {
                let status = self.status()?;
                let me = status["this_node"].as_u64()?;
                let held = status["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["id"] == me && n["lease_remaining_ms"].as_u64() > Some(0));
                held.then_some(())
            },
        )
    }

    /// A fresh join token from this node. While a new second voter is still starting, a
    /// two-voter cluster has no quorum and refuses; that heals once it is up, so this retries.
    pub fn token(&self) -> String {
        let mut last = String::new();
        let token = wait_for("a join token", Duration::from_secs(20), || {
            let output = cli(&self.dir, &["token", "--json"]);
            last = text(&output);
            let reply: Value = serde_json::from_slice(&output.stdout).ok()?;
            reply["token"].as_str().map(str::to_string)
        });
        assert!(!token.is_empty(), "token failed: {last}");
        token
    }
}

/// The name of node `id` in a status reply.
pub fn node_name(status: &Value, id: u64) -> String {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .and_then(|n| n["name"].as_str())
        .expect("node in status")
        .to_string()
}

/// Releases everything a test's daemons left mounted below `root` (FUSE images of killed
/// daemons, file systems on loop devices over them, the loop devices), so the directory can be
/// removed. Only paths under the test's own root are touched.
pub fn unmount_below(root: &Path) {
    tandem_linux::host_cleanup::release_below(root);
}

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// Real daemons on loopback addresses; stopped and removed on drop.
pub struct TestCluster {
    pub root: PathBuf,
    pub nodes: Vec<TestNode>,
    /// The 127.a.b.0/24 block this cluster uses, so parallel tests never share addresses.
    ip_prefix: String,
}

impl TestCluster {
    pub fn new(label: &str) -> TestCluster {
        let serial = NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!(
            "tandem-test-{label}-{}-{serial}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create test root");
        let ip_prefix = format!("127.{}.{}", std::process::id() % 250 + 1, serial % 250 + 1);
        TestCluster {
            root,
            nodes: Vec::new(),
            ip_prefix,
        }
    }

    fn next_addr(&self) -> String {
        let ip = format!("{}.{}", self.ip_prefix, self.nodes.len() + 2);
        format!("{ip}:{}", free_port(&ip))
    }

    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("known node")
    }

    fn node_mut(&mut self, name: &str) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("known node")
    }

    /// `tandem init` of the first node (not started).
    pub fn init(&mut self, name: &str) -> Output {
        let addr = self.next_addr();
        let dir = self.root.join(name);
        let output = cli(&dir, &["init", "--name", name, "--listen", &addr]);
        self.nodes.push(TestNode {
            name: name.into(),
            dir,
            addr,
            child: None,
        });
        output
    }

    /// Starts the daemon of `name`, its log in `<root>/<name>.log`.
    pub fn start(&mut self, name: &str) {
        let node = self.node_mut(name);
        let log = std::fs::File::create(node.dir.with_extension("log")).expect("log file");
        let child = Command::new(tandem_bin())
            .args(["daemon", "--state-dir"])
            .arg(&node.dir)
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start daemon");
        node.child = Some(child);
    }

    /// `kill -9` of the daemon of `name`.
    pub fn kill(&mut self, name: &str) {
        self.node_mut(name).kill();
    }

    /// A clean stop (SIGTERM) of the daemon of `name`, waiting for it to exit.
    pub fn stop(&mut self, name: &str) {
        self.node_mut(name).stop();
    }

    /// A fresh join token from `via`. While a new second voter is still starting, a two-voter
    /// cluster has no quorum and refuses; that heals once it is up, so this retries.
    pub fn token(&self, via: &str) -> String {
        self.node(via).token()
    }

    /// `tandem join` of a new node through `via`, then starts it.
    pub fn join(&mut self, name: &str, via: &str, witness: bool) {
        let token = self.token(via);
        let addr = self.next_addr();
        let dir = self.root.join(name);
        let peer = self.node(via).addr.clone();
        let mut args = vec![
            "join", "--name", name, "--listen", &addr, "--peer", &peer, "--token", &token,
        ];
        if witness {
            args.push("--witness");
        }
        let output = cli(&dir, &args);
        assert!(
            output.status.success(),
            "join of {name} failed: {}",
            text(&output)
        );
        self.nodes.push(TestNode {
            name: name.into(),
            dir,
            addr,
            child: None,
        });
        self.start(name);
    }

    /// Founds a cluster of data nodes `names` (and witnesses) and waits until all are online.
    pub fn form(label: &str, names: &[&str], witnesses: &[&str]) -> TestCluster {
        let mut cluster = TestCluster::new(label);
        let output = cluster.init(names[0]);
        assert!(output.status.success(), "init failed: {}", text(&output));
        cluster.start(names[0]);
        cluster.wait_leader(names[0]);
        for name in &names[1..] {
            cluster.join(name, names[0], false);
        }
        for name in witnesses {
            cluster.join(name, names[0], true);
        }
        let total = names.len() + witnesses.len();
        for name in names.iter().chain(witnesses) {
            cluster.wait_online(name, total);
        }
        cluster
    }

    /// Waits until `name` sees a leader; returns the leader's id.
    pub fn wait_leader(&self, name: &str) -> u64 {
        self.node(name).wait_leader()
    }

    /// Waits until `name` sees `count` nodes online.
    pub fn wait_online(&self, name: &str, count: usize) -> Value {
        self.node(name).wait_online(count)
    }

    /// The name of node `id`.
    pub fn name_of(&self, status: &Value, id: u64) -> String {
        node_name(status, id)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        unmount_below(&self.root);
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("---- log of {} ----\n{}", node.name, node.log());
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Deterministic, incompressible bytes (xorshift64 from `seed`), for data tests write and
/// compare.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Runs a program, panicking with a clear message when it is missing.
pub fn run_program(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {program} (is it installed? .ci/run installs it): {error}")
        })
}

/// Runs a program that must succeed; returns its trimmed stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run_program(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Refuses, loudly, to run a tier-4 test without root or FUSE (CI runs as root).
pub fn require_root_and_fuse(test: &str) {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} is a tier-4 test: it must run as root (CI does) to use FUSE, loop devices \
         and mount; it is running as uid {euid}"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "{test} needs /dev/fuse (modprobe fuse)"
    );
}

/// Loop devices and mounts a test made, by their exact paths; removed in reverse order on
/// drop, on success and on panic.
#[derive(Default)]
pub struct Devices {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Devices {
    /// `losetup --find --show [extra] file`, recording the device it printed.
    pub fn attach_loop(&mut self, file: &Path, extra: &[&str]) -> String {
        let mut args = vec!["--find", "--show"];
        args.extend_from_slice(extra);
        args.push(file.to_str().expect("utf-8 path"));
        let device = run_ok("losetup", &args);
        assert!(
            device.starts_with("/dev/loop"),
            "losetup printed {device:?}"
        );
        self.loops.push(device.clone());
        device
    }

    pub fn detach_loop(&mut self, device: &str) {
        self.loops.retain(|recorded| recorded != device);
        detach_loop(device).unwrap_or_else(|error| panic!("{error}"));
    }

    pub fn mount(&mut self, device: &str, dir: &Path, options: &str) {
        std::fs::create_dir_all(dir).expect("create a mount point");
        let dir_text = dir.to_str().expect("utf-8 path");
        run_ok("mount", &["-t", "ext4", "-o", options, device, dir_text]);
        self.mounts.push(dir.to_path_buf());
    }

    /// Records a mount someone else made, so it is removed on drop.
    pub fn adopt_mount(&mut self, dir: &Path) {
        self.mounts.push(dir.to_path_buf());
    }

    /// Forgets a recorded mount without unmounting it (its owner took it back).
    pub fn forget_mount(&mut self, dir: &Path) {
        self.mounts.retain(|recorded| recorded != dir);
    }

    pub fn unmount(&mut self, dir: &Path) {
        self.mounts.retain(|recorded| recorded != dir);
        run_ok("umount", &[dir.to_str().expect("utf-8 path")]);
    }

    /// Removes everything recorded; false when a mount stayed busy.
    pub fn release(&mut self) -> bool {
        let mut clean = true;
        for dir in self.mounts.drain(..).rev() {
            let dir_text = dir.to_string_lossy().to_string();
            if !run_program("umount", &[&dir_text]).status.success()
                && !run_program("umount", &["-l", &dir_text]).status.success()
            {
                eprintln!("cleanup: cannot unmount {dir_text}");
                clean = false;
            }
        }
        for device in self.loops.drain(..).rev() {
            if let Err(error) = detach_loop(&device) {
                eprintln!("cleanup: {error}");
            }
        }
        clean
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.release();
    }
}

/// `losetup -d device`, then waits until the kernel has released the backing file.
pub fn detach_loop(device: &str) -> Result<(), String> {
    let output = run_program("losetup", &["-d", device]);
    if !output.status.success() {
        return Err(format!("losetup -d {device}: {}", text(&output)));
    }
    let name = device.trim_start_matches("/dev/");
    let backing = PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backing.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "{device} still has a backing file 10 s after losetup -d"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
