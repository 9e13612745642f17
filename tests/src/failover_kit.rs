//! Helpers for the failover tests (`tests/failover.rs`, tier 4, root): a [`Rig`] is a
//! [`LabCluster`] of two data nodes `a`, `b` and a witness `w`, each in its own network
//! namespace, with what those tests need on top of it: the timeline as typed [`Ev`]s, waits on
//! events, volumes and groups, the PID of a group's service from its pid file, virtual IPs per
//! namespace, and [`Rig::power_loss`], which makes a node vanish the way a power cut does.
//!
//! All nodes share one mount namespace here, so a killed node's mount and loop device would
//! stay behind (on a real machine they vanish with the power); `power_loss` removes them by
//! their exact paths (`tandem_linux::host_cleanup`). On drop, the rig kills every daemon it
//! started by PID (SIGKILL: quick, and the clean stop has its own test), kills the daemonized services it was told about (by
//! the PID in their pid file, checked against the process's name), then lets the
//! [`LabCluster`] release the mounts and loop devices below its directory, remove it and the
//! namespaces. On a failed test it prints the timeline and the resource logs before the
//! daemons' logs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_linux::host_cleanup;

use crate::lab_cluster::{count_in, http_call, http_within, LabCluster};
use crate::{require_root_and_fuse, run_program, text};

/// How long a killed daemon may take to be reaped before its FUSE connections are aborted.
const REAP_LIMIT: Duration = Duration::from_secs(10);
/// Hang guard for one failover or switchover.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// One timeline event, with the node's name resolved.
#[derive(Clone, Debug)]
pub struct Ev {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub node: String,
    pub group: Option<String>,
    pub kind: String,
    pub detail: String,
}

impl Ev {
    /// Whether this is a `kind` event of `node` about `group`.
    pub fn is(&self, node: &str, group: &str, kind: &str) -> bool {
        self.node == node && self.group.as_deref() == Some(group) && self.kind == kind
    }
}

impl std::fmt::Display for Ev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {} {} {}: {}",
            self.seq,
            self.at_unix_ms,
            self.node,
            self.kind,
            self.group.as_deref().unwrap_or("-"),
            self.detail
        )
    }
}

/// Milliseconds since the Unix epoch (the clock the daemons stamp events with).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A lab cluster `a`, `b` + witness `w`, cleaned up on drop (see the module documentation).
pub struct Rig {
    pub cluster: LabCluster,
    /// Pid files of services that daemonize (nginx) and the process name to expect: such a
    /// service does not die with the daemon, so the rig kills it on drop.
    daemonized: Vec<(PathBuf, String)>,
    /// Held for the rig's life (declared last: released after the cleanup).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// One failover scenario at a time: each runs three daemons, an ext4 file system and a
/// service; seven at once on a 2-core machine starve the daemons' pings long enough to lose
/// leases, which is a real self-fence but not what these tests are about
/// (`scripts/bench-failover --load` measures behaviour under load).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Rig {
    /// Forms the cluster in lab `tag` (at most 10 characters of a-z, 0-9, _).
    pub fn form(tag: &str) -> Rig {
        Rig::form_with(tag, &["a", "b"], &["w"])
    }

    /// [`Rig::form`] with other data nodes and witnesses (scenario files name their own).
    pub fn form_with(tag: &str, names: &[&str], witnesses: &[&str]) -> Rig {
        require_root_and_fuse(&format!("tests/failover.rs ({tag})"));
        // A scenario that panicked poisons the lock; the next one still runs.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Rig {
            cluster: LabCluster::form(tag, names, witnesses),
            daemonized: Vec::new(),
            _one_at_a_time: turn,
        }
    }

    /// The names of every node of the rig, in the order they were formed.
    pub fn names(&self) -> Vec<String> {
        self.cluster.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The rig's directory (state dirs, legs, mountpoints); removed on drop.
    pub fn root(&self) -> &Path {
        &self.cluster.root
    }

    /// `node`'s state dir.
    pub fn dir(&self, node: &str) -> &Path {
        &self.cluster.node(node).dir
    }

    /// The CLI of `node` (inside its namespace); must succeed; stdout and stderr back.
    pub fn ok(&self, node: &str, args: &[&str]) -> String {
        let output = self.cluster.cli(node, args);
        assert!(
            output.status.success(),
            "tandem {} on {node} failed: {}",
            args.join(" "),
            text(&output)
        );
        text(&output)
    }

    /// The CLI of `node` with `--json`; must succeed; the parsed reply.
    pub fn json(&self, node: &str, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let output = self.cluster.cli(node, &full);
        assert!(
            output.status.success(),
            "tandem {} on {node} failed: {}",
            full.join(" "),
            text(&output)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("tandem {}: not JSON ({error})", full.join(" ")))
    }

    /// Node ids to names, as `via` sees them.
    fn id_names(&self, via: &str) -> Option<BTreeMap<u64, String>> {
        let status = self.cluster.status(via)?;
        let nodes = status["nodes"].as_array()?;
        Some(
            nodes
                .iter()
                .filter_map(|n| Some((n["id"].as_u64()?, n["name"].as_str()?.to_string())))
                .collect(),
        )
    }

    /// The committed timeline as `via` sees it (by time), or `None` when it does not answer.
    pub fn events(&self, via: &str) -> Option<Vec<Ev>> {
        let names = self.id_names(via)?;
        let output = self
            .cluster
            .cli(via, &["events", "--json", "--limit", "500"]);
        if !output.status.success() {
            return None;
        }
        parse_events(&String::from_utf8_lossy(&output.stdout), &names)
    }

    /// The timeline from whichever node answers first (the last formed first: `w`, `b`, `a`).
    pub fn timeline(&self) -> Vec<Ev> {
        self.names()
            .iter()
            .rev()
            .find_map(|via| self.events(via))
            .unwrap_or_default()
    }

    /// The next sequence number of the timeline: events committed from now on have
    /// `seq >= mark()`.
    pub fn mark(&self) -> u64 {
        self.timeline().iter().map(|e| e.seq + 1).max().unwrap_or(0)
    }

    /// Waits until an event with `seq >= since` of `node` about `group` and of `kind` is
    /// committed (seen through `via`); returns it.
    pub fn wait_event(&self, via: &str, since: u64, node: &str, group: &str, kind: &str) -> Ev {
        let what = format!("event {kind} of {node} for group {group} (seq >= {since})");
        self.wait_event_where(via, &what, |e| e.seq >= since && e.is(node, group, kind))
    }

    /// Waits until an event that `matches` is committed (seen through `via`); returns it.
    /// On timeout the panic message lists the timeline.
    pub fn wait_event_where(&self, via: &str, what: &str, matches: impl Fn(&Ev) -> bool) -> Ev {
        let start = Instant::now();
        loop {
            let events = self.events(via).unwrap_or_default();
            if let Some(found) = events.iter().find(|e| matches(e)) {
                return found.clone();
            }
            if start.elapsed() > FAILOVER_LIMIT {
                let listed: String = events.iter().map(|e| format!("  {e}\n")).collect();
                panic!("gave up after {FAILOVER_LIMIT:?} waiting for {what}; timeline:\n{listed}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The events with `seq >= since`, as `via` sees them, one per line (for messages).
    pub fn describe(&self, via: &str, since: u64) -> String {
        self.events(via)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.seq >= since)
            .map(|e| format!("  {e}\n"))
            .collect()
    }

    /// `tandem group show NAME --json` of `via`: the group's report.
    pub fn group(&self, via: &str, name: &str) -> Value {
        self.json(via, &["group", "show", name])["groups"][0].clone()
    }

    /// `tandem volume show NAME --json` of `via`: the volume's report.
    pub fn volume(&self, via: &str, name: &str) -> Option<Value> {
        let output = self.cluster.cli(via, &["volume", "show", name, "--json"]);
        let reply: Value = serde_json::from_slice(&output.stdout).ok()?;
        Some(reply["volumes"][0].clone())
    }

    /// Waits until every leg of volume `name` is UpToDate as `via` sees it; returns the volume.
    pub fn wait_legs_up_to_date(&self, via: &str, name: &str, limit: Duration) -> Value {
        let mut last = Value::Null;
        let what = format!("every leg of volume {name} UpToDate");
        let start = Instant::now();
        loop {
            if let Some(volume) = self.volume(via, name) {
                let legs = volume["legs"].as_array().cloned().unwrap_or_default();
                if !legs.is_empty() && legs.iter().all(|leg| leg["state"] == "UpToDate") {
                    return volume;
                }
                last = volume;
            }
            assert!(
                start.elapsed() < limit,
                "gave up after {limit:?} waiting for {what}; last seen: {last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `tandem volume create NAME --size SIZE` with legs on a and b (files in the rig's
    /// directory).
    pub fn create_volume(&self, name: &str, size: &str) {
        let leg = |node: &str| {
            format!(
                "{node}:{}",
                self.root().join(format!("{name}-leg-{node}.img")).display()
            )
        };
        let (leg_a, leg_b) = (leg("a"), leg("b"));
        let args = [
            "volume", "create", name, "--size", size, "--leg", &leg_a, "--leg", &leg_b,
        ];
        self.ok("a", &args);
    }

    /// The PID of resource `index` of `group` on `node`, from its pid file, if it is alive.
    pub fn service_pid(&self, node: &str, group: &str, index: usize) -> Option<i32> {
        let file = self
            .dir(node)
            .join("run")
            .join(format!("{group}-{index}.pid"));
        let text = std::fs::read_to_string(file).ok()?;
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// Whether `address` is on an interface of `node`'s namespace.
    pub fn has_address(&self, node: &str, address: Ipv4Addr) -> bool {
        let netns = self.cluster.lab.netns(node).to_string();
        let output = run_program("ip", &["-n", &netns, "-4", "-o", "addr", "show"]);
        assert!(output.status.success(), "ip addr: {}", text(&output));
        let needle = format!(" {address}/");
        String::from_utf8_lossy(&output.stdout).contains(&needle)
    }

    /// The label `net:[INODE]` of `node`'s network namespace, as `readlink /proc/self/ns/net`
    /// prints it inside that namespace.
    pub fn netns_label(&self, node: &str) -> String {
        let path = format!("/run/netns/{}", self.cluster.lab.netns(node));
        let inode = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("stat {path}: {error}"))
            .ino();
        format!("net:[{inode}]")
    }

    /// The network namespace label of process `pid` (see [`Rig::netns_label`]).
    pub fn netns_of(pid: i32) -> Option<String> {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|link| link.display().to_string())
    }

    /// `METHOD path` from the witness to the service at `target`.
    pub fn call(&self, target: SocketAddrV4, method: &str, path: &str) -> Option<(u16, String)> {
        http_call(&self.cluster.lab, "w", target, method, path).ok()
    }

    /// `METHOD path` from the witness with short timeouts (1 s to connect, 3 s for the
    /// answer), for load that must notice a dead server quickly.
    pub fn call_quick(
        &self,
        target: SocketAddrV4,
        method: &str,
        path: &str,
    ) -> Option<(u16, String)> {
        let request = format!("{method} {path} HTTP/1.0\r\n\r\n");
        let limits = (Duration::from_secs(1), Duration::from_secs(3));
        http_within(&self.cluster.lab, "w", target, &request, limits).ok()
    }

    /// `POST /increment` `times` times from the witness; every acknowledged count, in order.
    pub fn increments(&self, target: SocketAddrV4, times: usize) -> Vec<u64> {
        (0..times)
            .map(|n| match self.call(target, "POST", "/increment") {
                Some((200, body)) => {
                    count_in(&body).unwrap_or_else(|| panic!("increment {n}: no count in {body:?}"))
                }
                other => panic!("increment {n} to {target} was not acknowledged: {other:?}"),
            })
            .collect()
    }

    /// `GET /` from the witness: `(count, host)` of the counter service at `target`.
    pub fn read_counter(&self, target: SocketAddrV4) -> (u64, String) {
        let (code, body) = self
            .call(target, "GET", "/")
            .unwrap_or_else(|| panic!("GET / from {target} got no answer"));
        assert_eq!(code, 200, "GET / from {target}: {body}");
        let count = count_in(&body).unwrap_or_else(|| panic!("no count in {body:?}"));
        let host = body
            .split_whitespace()
            .find_map(|word| word.strip_prefix("host="))
            .unwrap_or_default()
            .to_string();
        (count, host)
    }

    /// Records a pid file of a daemonized service (`name`: its process name), killed on drop.
    pub fn track_daemonized(&mut self, pid_file: &Path, name: &str) {
        self.daemonized
            .push((pid_file.to_path_buf(), name.to_string()));
    }

    /// Kills the daemonized service whose pid file is `pid_file` (and its session), as a power
    /// loss of its node would; returns the PID it killed.
    pub fn kill_daemonized(&self, pid_file: &Path, name: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if comm(pid).as_deref() != Some(name) {
            return None;
        }
        kill_session(pid);
        Some(pid)
    }

    /// A power loss of `node`: `kill -9` of its daemon (its exec services die with it), its
    /// link cut, and what the power would take with it on a real machine but stays here,
    /// where all nodes share one mount namespace: its mounts of loop devices over its
    /// volume images (lazily unmounted) and those loop devices (detached). Daemonized services
    /// are the caller's ([`Rig::kill_daemonized`]).
    pub fn power_loss(&mut self, node: &str) {
        // Below the node's state dir: its FUSE images (aborted: a power loss leaves no server
        // to answer), the ext4 mounted from a loop device over them, the loop devices.
        let dir = self.dir(node).to_path_buf();
        self.kill_daemons(&[node]);
        self.cluster.cut(node);
        host_cleanup::release_below(&dir);
        self.drop_extra_addresses(node);
    }

    /// Deletes every IPv4 address of `node`'s link but its own lab address (the virtual IPs a
    /// dead node held: a rebooted machine comes back without them).
    fn drop_extra_addresses(&self, node: &str) {
        let netns = self.cluster.lab.netns(node).to_string();
        let own = self.cluster.lab.address(node);
        let output = run_program(
            "ip",
            &["-n", &netns, "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut words = line.split_whitespace();
            let Some(cidr) = words.by_ref().skip_while(|w| *w != "inet").nth(1) else {
                continue;
            };
            if cidr.split('/').next() == Some(own.to_string().as_str()) {
                continue;
            }
            let deleted = run_program("ip", &["-n", &netns, "addr", "del", cidr, "dev", "eth0"]);
            // The killed daemon's watchdog removes its IPs too and may have been first.
            let gone = text(&deleted).contains("Address not found");
            assert!(
                deleted.status.success() || gone,
                "ip addr del {cidr}: {}",
                text(&deleted)
            );
        }
    }

    /// Kills the daemons of `names` (SIGKILL by PID) and reaps them. A daemon that cannot
    /// finish dying (a thread stuck in the kernel on I/O through its own FUSE image, e.g. in
    /// an unmount) is released by aborting the FUSE connections of the images below its
    /// state dir.
    pub fn kill_daemons(&mut self, names: &[&str]) {
        let mut children: Vec<(String, PathBuf, std::process::Child)> = Vec::new();
        for node in &mut self.cluster.nodes {
            if !names.contains(&node.name.as_str()) {
                continue;
            }
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                children.push((node.name.clone(), node.dir.clone(), child));
            }
        }
        let mut aborted = false;
        let mut deadline = Instant::now() + REAP_LIMIT;
        loop {
            children.retain_mut(|(_, _, child)| matches!(child.try_wait(), Ok(None)));
            if children.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = children.iter().map(|(n, _, _)| n.as_str()).collect();
                if aborted {
                    eprintln!("cleanup: the daemons of {names:?} do not exit; leaving them");
                    return;
                }
                eprintln!(
                    "the daemons of {names:?} are not reaped {REAP_LIMIT:?} after SIGKILL \
                     (stuck on I/O through their own FUSE image): aborting those FUSE \
                     connections"
                );
                for (_, dir, _) in &children {
                    host_cleanup::abort_fuse_below(dir);
                }
                aborted = true;
                deadline = Instant::now() + REAP_LIMIT;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// On a failed test: the timeline and the tail of every resource log.
    fn print_diagnostics(&self) {
        eprintln!("---- timeline ----");
        for event in self.timeline() {
            eprintln!("  {event}");
        }
        for node in &self.cluster.nodes {
            let Ok(entries) = std::fs::read_dir(node.dir.join("logs")) else {
                continue;
            };
            for entry in entries.flatten() {
                let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = body.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                eprintln!(
                    "---- {} on {} (last 30 lines) ----\n{tail}",
                    entry.path().display(),
                    node.name
                );
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        let names = self.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.kill_daemons(&names);
        for (pid_file, name) in &self.daemonized {
            self.kill_daemonized(pid_file, name);
        }
        for node in &self.cluster.nodes {
            for device in recorded_loops(&node.dir) {
                host_cleanup::detach_loop(&device);
            }
        }
        // The LabCluster (dropped next) releases the file systems, loop devices and FUSE
        // images below its directory, prints the daemons' logs when the test failed, removes
        // the directory and the namespaces.
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The lines of `tandem events --json`, node ids resolved through `names`; `None` when a
/// line is not an event.
pub fn parse_events(json_lines: &str, names: &BTreeMap<u64, String>) -> Option<Vec<Ev>> {
    let mut events = Vec::new();
    for line in json_lines.lines() {
        let value: Value = serde_json::from_str(line).ok()?;
        let id = value["node"].as_u64()?;
        events.push(Ev {
            seq: value["seq"].as_u64()?,
            at_unix_ms: value["at_unix_ms"].as_u64()?,
            node: names.get(&id).cloned().unwrap_or_else(|| id.to_string()),
            group: value["group"].as_str().map(str::to_string),
            kind: value["kind"].as_str()?.to_string(),
            detail: value["detail"].as_str().unwrap_or_default().to_string(),
        });
    }
    Some(events)
}

/// The process name (`comm`) of `pid`.
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_string())
}

/// SIGKILL to every process of the session led by `leader` (a daemonized service and its
/// workers), found in /proc by session id; waits until they are gone.
fn kill_session(leader: i32) {
    let members = || -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        let (_, rest) = stat.rsplit_once(')')?;
                        // Fields after the name: state ppid pgrp session ...
                        rest.split_whitespace().nth(3)?.parse::<i32>().ok()
                    })
                    == Some(leader)
            })
            .filter(|&pid| alive(pid))
            .collect()
    };
    for pid in members() {
        if pid > 1 {
            // SAFETY: kill(2) on a member of the session of a service this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !members().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The loop devices the filesystem runner of the node at `dir` recorded
/// (`run/<group>-<index>.loop`) that still serve the file it attached: the image's device and
/// inode in `.loop-id` match the loop device's backing file (which `host_cleanup` cannot find
/// by path once the image's FUSE mount was detached lazily: sysfs then shows `/<vol>.img`).
fn recorded_loops(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("run")) else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    for record in entries.flatten().map(|entry| entry.path()) {
        if record.extension().is_none_or(|ext| ext != "loop") {
            continue;
        }
        let Ok(device) = std::fs::read_to_string(&record) else {
            continue;
        };
        let device = device.trim().to_string();
        let identity = std::fs::read_to_string(record.with_extension("loop-id")).ok();
        let recorded = identity.and_then(|text| {
            let mut numbers = text.split_whitespace().map(str::parse::<u64>);
            Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
        });
        if recorded.is_some() && backing_identity(&device) == recorded {
            devices.push(device);
        }
    }
    devices
}

/// `(st_dev, st_ino)` of the file loop device `device` serves, from `losetup --json`.
fn backing_identity(device: &str) -> Option<(u64, u64)> {
    let output = run_program(
        "losetup",
        &[
            "--list",
            "--json",
            "--output",
            "NAME,BACK-INO,BACK-MAJ:MIN",
            device,
        ],
    );
    let listed: Value = serde_json::from_slice(&output.stdout).ok()?;
    let entry = listed["loopdevices"].as_array()?.first()?.clone();
    let inode = match &entry["back-ino"] {
        Value::Number(number) => number.as_u64()?,
        other => other.as_str()?.trim().parse().ok()?,
    };
    let (major, minor) = entry["back-maj:min"].as_str()?.trim().split_once(':')?;
    let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
    Some((dev, inode))
}
