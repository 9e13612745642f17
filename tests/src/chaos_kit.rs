//! The real-host chaos run (issue #5, tier 4, root): real `tandem` daemons `a`, `b` and a
//! witness `w` in network namespaces ([`Rig`]), a group holding volume `db` (so the cluster
//! fails it over by itself), a verifying writer on the volume through NBD, and a seeded random
//! schedule of faults: `kill -9` of a daemon, a node's link down, iptables drops in one
//! direction, SIGSTOP of a daemon beyond its lease, a leg's file system filled up. Each fault
//! is healed after a bounded time; at the end everything is healed, the run waits until the
//! legs are UpToDate again, reads the whole volume back, runs `tandem volume verify`, and
//! prints a table (faults by kind, writes acknowledged and lost, periods with two writers,
//! the longest unavailability, the time to converge).
//!
//! Exists because the simulator does not run the data path, and the failover tests each check
//! one fault: only a long random mix on real daemons shows that no acknowledged write is lost
//! and no two nodes write at once whatever the order of faults.
//!
//! Two writers, exactly: every acknowledged write (of the writer, and of probes that keep
//! writing to every node that still serves the volume, see `writer.rs`) is attributed to the
//! node that acknowledged it. Such a write is a two-writer write when it was sent after another
//! node's `promoted` event in the timeline and its own node was not promoted again between
//! that event and 1 s after the write (a node's `promoted` is stamped when its agent sees the
//! committed promotion, a little after its export may have accepted its first write). Each
//! (writing node, other node's promotion) pair with such writes is one two-writer period. The
//! timeline's role intervals (`promoted` until `demoted`, `self-fenced` or a `kill -9`) are
//! also compared and their overlaps reported: a frozen (SIGSTOPped) node keeps its role on the
//! timeline until it runs again and notices its lease is gone, without writing anything.
//!
//! Cleanup, on success and on failure (Drop): SIGCONT to a paused daemon, links up and drop
//! rules gone, daemons killed by PID, the small file systems of the legs unmounted; then the
//! [`Rig`] removes the rest (state dirs, namespaces).

pub mod analysis;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::failover_kit::{alive, parse_events, unix_ms, Ev, Rig};
use crate::nbd_client::NbdClient;
use crate::{cli, run_ok, run_program, text, wait_for};
use writer::{check_reads, Exports, History, Rng, Verdict, BLOCK};

/// The volume's size; each leg lives on its own tmpfs of [`LEG_FS_MIB`].
const VOLUME_MIB: u64 = 64;
const LEG_FS_MIB: u64 = 72;
/// Hang guard for convergence after the final heal.
const CONVERGE_LIMIT: Duration = Duration::from_secs(180);
/// How long after its own `promoted` stamp a node's first writes may precede that stamp.
const PROMOTION_SLACK_MS: u64 = 1_000;
/// The data nodes (the witness holds no leg).
const DATA: [&str; 2] = ["a", "b"];
const ALL: [&str; 3] = ["a", "b", "w"];

/// The kinds of fault the schedule draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `kill -9` of a daemon, restarted after the hold.
    Kill,
    /// The node's link down, up after the hold.
    LinkDown,
    /// iptables in `node`'s namespace drops what `from` sends (all packets, or only on
    /// connections `from` opened), removed after the hold.
    OneWayDrop,
    /// SIGSTOP of a daemon for 2–4 s (beyond its 1 s lease), then SIGCONT.
    Pause,
    /// The file system of the leg of the node that is not the primary (when the fault
    /// starts) filled up, the filler removed after the hold.
    DiskFull,
    /// The same for the primary's leg: its failed writes are refused to the client, and what
    /// its peer took of them is resynced from the primary's leg (the regression test in
    /// `tests/chaos.rs` found it missing).
    PrimaryDiskFull,
}

impl Kind {
    pub const EVERY: [Kind; 6] = [
        Kind::Kill,
        Kind::LinkDown,
        Kind::OneWayDrop,
        Kind::Pause,
        Kind::DiskFull,
        Kind::PrimaryDiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill -9",
            Kind::LinkDown => "link down",
            Kind::OneWayDrop => "iptables one-way drop",
            Kind::Pause => "SIGSTOP beyond the lease",
            Kind::DiskFull => "secondary's leg file system full",
            Kind::PrimaryDiskFull => "primary's leg file system full",
        }
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    pub node: &'static str,
    /// For [`Kind::OneWayDrop`]: whose packets `node` drops.
    pub from: Option<&'static str>,
    /// For [`Kind::OneWayDrop`]: only packets of connections `from` opened.
    pub conntrack: bool,
    pub hold_ms: u64,
    /// Quiet time after the heal, before the next fault.
    pub gap_ms: u64,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.node)?;
        if let Some(from) = self.from {
            let how = if self.conntrack {
                "connections"
            } else {
                "packets"
            };
            write!(f, " <- {from} ({how})")?;
        }
        write!(f, " for {} ms, then {} ms quiet", self.hold_ms, self.gap_ms)
    }
}

/// A seeded random schedule of faults of `kinds` filling `duration` (holds and gaps).
pub fn schedule(seed: u64, duration: Duration, kinds: &[Kind]) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut faults = Vec::new();
    let mut total = 0u64;
    while total < duration.as_millis() as u64 {
        let kind = kinds[(rng.draw() % kinds.len() as u64) as usize];
        let pick = |rng: &mut Rng, among: &[&'static str]| among[rng.draw() as usize % among.len()];
        let mut fault = Fault {
            kind,
            node: pick(&mut rng, &DATA),
            from: None,
            conntrack: false,
            hold_ms: rng.range(2_000, 6_000),
            gap_ms: rng.range(2_000, 5_000),
        };
        match kind {
            Kind::Kill | Kind::LinkDown => {
                // The witness now and then: a voter gone changes no primary but the quorum.
                if rng.one_in(5) {
                    fault.node = "w";
                }
                if kind == Kind::Kill {
                    fault.hold_ms = rng.range(500, 4_000);
                }
            }
            Kind::OneWayDrop => {
                fault.node = pick(&mut rng, &ALL);
                let others: Vec<&'static str> =
                    ALL.iter().copied().filter(|n| *n != fault.node).collect();
                fault.from = Some(pick(&mut rng, &others));
                fault.conntrack = rng.one_in(2);
            }
            Kind::Pause => fault.hold_ms = rng.range(2_000, 4_000),
            Kind::DiskFull | Kind::PrimaryDiskFull => {}
        }
        total += fault.hold_ms + fault.gap_ms;
        faults.push(fault);
    }
    faults
}

/// `fault` with the node of a leg fault resolved against the current `primary` (when
/// nobody is primary, the schedule's node stays).
fn resolve(fault: &Fault, primary: Option<&str>) -> Fault {
    let mut fault = fault.clone();
    let Some(primary) = DATA.iter().find(|n| Some(**n) == primary) else {
        return fault;
    };
    match fault.kind {
        Kind::DiskFull => fault.node = DATA.iter().find(|n| *n != primary).expect("two nodes"),
        Kind::PrimaryDiskFull => fault.node = primary,
        _ => {}
    }
    fault
}

/// A fault as it was injected.
#[derive(Clone, Debug)]
pub struct Injected {
    pub fault: Fault,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The primary (per `volume show`) when it was injected.
    pub primary: Option<String>,
}

/// The chaos run's rig; see the module documentation.
pub struct Chaos {
    pub rig: Rig,
    leg_fs: Vec<PathBuf>,
    paused: Option<(i32, &'static str)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub history: Arc<Mutex<History>>,
    timeline: Arc<Mutex<BTreeMap<u64, Ev>>>,
    /// Samples of "every leg UpToDate" (unix ms, as `w` saw it), every 500 ms.
    legs: Arc<Mutex<Vec<(u64, bool)>>>,
    pub injected: Vec<Injected>,
    started: Instant,
    seed: u64,
}

impl Chaos {
    /// Forms the cluster in lab `tag`, creates volume `db` with each leg on its own small
    /// tmpfs and group `g = [volume db]` preferring a, waits until a is primary with both legs
    /// UpToDate, and starts the writer, the probes and the timeline collector.
    pub fn start(tag: &str, seed: u64) -> Chaos {
        let rig = Rig::form(tag);
        let mut chaos = Chaos {
            rig,
            leg_fs: Vec::new(),
            paused: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            history: Arc::default(),
            timeline: Arc::default(),
            legs: Arc::default(),
            injected: Vec::new(),
            started: Instant::now(),
            seed,
        };
        chaos.create_volume_and_group();
        chaos.start_clients();
        chaos
    }

    fn create_volume_and_group(&mut self) {
        let mut legs = Vec::new();
        for node in DATA {
            let dir = self.rig.root().join(format!("fs-{node}"));
            std::fs::create_dir_all(&dir).expect("create a leg's mount point");
            let size = format!("size={LEG_FS_MIB}m");
            run_ok(
                "mount",
                &["-t", "tmpfs", "-o", &size, "tmpfs", path_str(&dir)],
            );
            self.leg_fs.push(dir.clone());
            legs.push(format!("{node}:{}", dir.join("db.img").display()));
        }
        let size = format!("{VOLUME_MIB}M");
        let args = [
            "volume", "create", "db", "--size", &size, "--leg", &legs[0], "--leg", &legs[1],
        ];
        self.rig.ok("a", &args);
        let group = ["group", "create", "g", "--prefer", "a,b", "--volume", "db"];
        self.rig.ok("a", &group);
        self.rig.wait_event("w", 0, "a", "g", "promoted");
        self.rig.wait_legs_up_to_date("w", "db", CONVERGE_LIMIT);
        self.rig.cluster.node("a").wait_lease();
    }

    /// The exports of `db` on the data nodes.
    fn exports(&self) -> Exports {
        Exports {
            volume: "db".into(),
            sockets: DATA
                .iter()
                .map(|n| (n.to_string(), self.rig.dir(n).join("nbd-db.sock")))
                .collect(),
        }
    }

    /// Blocks the writer uses: all but the last one per data node (the probes').
    fn writer_blocks() -> u64 {
        (VOLUME_MIB << 20) / BLOCK - DATA.len() as u64
    }

    fn start_clients(&mut self) {
        let (stop, history) = (self.stop.clone(), self.history.clone());
        let (exports, seed) = (self.exports(), self.seed);
        let blocks = Chaos::writer_blocks();
        self.threads.push(std::thread::spawn(move || {
            writer::run_writer(exports, blocks, seed, stop, history)
        }));
        for (index, node) in DATA.iter().enumerate() {
            let (stop, history, exports) =
                (self.stop.clone(), self.history.clone(), self.exports());
            let block = blocks + index as u64;
            let node = node.to_string();
            self.threads.push(std::thread::spawn(move || {
                writer::run_probe(exports, node, block, stop, history)
            }));
        }
        let (stop, legs, dir) = (
            self.stop.clone(),
            self.legs.clone(),
            self.rig.dir("w").to_path_buf(),
        );
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let up = legs_up_to_date(&dir);
                legs.lock().expect("legs").push((unix_ms(), up));
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
        let (stop, timeline) = (self.stop.clone(), self.timeline.clone());
        let dirs: Vec<PathBuf> = ALL.iter().map(|n| self.rig.dir(n).to_path_buf()).collect();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                collect_timeline(&dirs, &timeline);
                std::thread::sleep(Duration::from_secs(2));
            }
        }));
    }

    /// Seconds since the run started, for log lines.
    fn clock(&self) -> String {
        format!("{:7.1}s", self.started.elapsed().as_secs_f64())
    }

    /// The primary of `db` as the first answering node sees it.
    pub fn primary(&self) -> Option<String> {
        ["w", "a", "b"].iter().find_map(|via| {
            let volume = self.rig.volume(via, "db")?;
            volume["primary"].as_str().map(str::to_string)
        })
    }

    /// Injects every fault of `faults` in turn, each healed after its hold.
    pub fn run(&mut self, faults: &[Fault]) {
        self.started = Instant::now();
        for (index, fault) in faults.iter().enumerate() {
            let primary = self.primary();
            let fault = &resolve(fault, primary.as_deref());
            eprintln!(
                "{} inject {fault} (primary {})",
                self.clock(),
                primary.as_deref().unwrap_or("none")
            );
            let start_ms = unix_ms();
            self.inject(fault);
            std::thread::sleep(Duration::from_millis(fault.hold_ms));
            self.heal(fault);
            let end_ms = unix_ms();
            self.injected.push(Injected {
                fault: fault.clone(),
                start_ms,
                end_ms,
                primary,
            });
            // After the last fault the final heal and convergence follow at once.
            if index + 1 < faults.len() {
                std::thread::sleep(Duration::from_millis(fault.gap_ms));
            }
        }
    }

    fn inject(&mut self, fault: &Fault) {
        let lab = &self.rig.cluster.lab;
        match fault.kind {
            Kind::Kill => self.rig.cluster.kill(fault.node),
            Kind::LinkDown => self.rig.cluster.cut(fault.node),
            Kind::OneWayDrop => {
                let from = fault.from.expect("a drop has a source");
                let done = if fault.conntrack {
                    lab.drop_connections_from(fault.node, from)
                } else {
                    lab.drop_inbound_from(fault.node, from)
                };
                done.unwrap_or_else(|error| panic!("iptables in {}: {error}", fault.node));
            }
            Kind::Pause => {
                let pid = self.daemon_pid(fault.node);
                // SAFETY: kill(2) on the PID of a daemon this rig started and has not reaped.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                self.paused = Some((pid, fault.node));
            }
            Kind::DiskFull | Kind::PrimaryDiskFull => fill(&self.leg_dir(fault.node)),
        }
    }

    fn heal(&mut self, fault: &Fault) {
        match fault.kind {
            Kind::Kill => self.rig.cluster.start(fault.node),
            Kind::LinkDown => self.rig.cluster.heal(fault.node),
            Kind::OneWayDrop => self
                .rig
                .cluster
                .lab
                .clear_drops(fault.node)
                .unwrap_or_else(|error| panic!("iptables in {}: {error}", fault.node)),
            Kind::Pause => self.resume(),
            Kind::DiskFull | Kind::PrimaryDiskFull => unfill(&self.leg_dir(fault.node)),
        }
    }

    fn daemon_pid(&self, node: &str) -> i32 {
        let pid = self.rig.cluster.pid(node).expect("the daemon runs");
        i32::try_from(pid).expect("a pid")
    }

    fn resume(&mut self) {
        if let Some((pid, node)) = self.paused.take() {
            // SAFETY: kill(2) on the PID of a daemon this rig started and paused.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            self.restart_if_dead(node);
        }
    }

    /// A daemon frozen past its lease while it ran the group is killed by its watchdog; it
    /// is started again here, as a service manager would.
    fn restart_if_dead(&mut self, node: &'static str) {
        let pid = self.rig.cluster.pid(node);
        let dead = pid.is_none_or(|pid| !alive(i32::try_from(pid).unwrap_or(i32::MAX)));
        if dead {
            eprintln!(
                "{} {node}'s daemon is gone (its watchdog fenced it): starting it again",
                self.clock()
            );
            self.rig.cluster.kill(node);
            self.rig.cluster.start(node);
        }
    }

    fn leg_dir(&self, node: &str) -> PathBuf {
        self.rig.root().join(format!("fs-{node}"))
    }

    /// Heals whatever may still be broken: every daemon running, links up, no drop rules,
    /// no filler files, nobody paused.
    fn heal_everything(&mut self) {
        self.resume();
        self.rig
            .cluster
            .lab
            .heal_all()
            .unwrap_or_else(|error| panic!("heal the lab: {error}"));
        for node in DATA {
            unfill(&self.leg_dir(node));
        }
        for node in ALL {
            self.restart_if_dead(node);
        }
    }

    /// Heals everything, waits for convergence, stops the clients, reads the volume back,
    /// verifies the legs and checks for two writers. Returns the report (not yet asserted).
    pub fn finish(&mut self) -> Report {
        let fault_phase_end = unix_ms();
        self.heal_everything();
        let healed = Instant::now();
        eprintln!(
            "{} healed everything; waiting for convergence",
            self.clock()
        );
        self.rig.wait_legs_up_to_date("w", "db", CONVERGE_LIMIT);
        let primary = wait_for("a primary after the heal", CONVERGE_LIMIT, || {
            self.primary()
        });
        self.wait_all_online();
        let converge = healed.elapsed();
        // The volume takes writes again: one acknowledged after the convergence.
        let since = unix_ms();
        wait_for(
            "a write acknowledged after the heal",
            CONVERGE_LIMIT,
            || {
                let history = self.history.lock().expect("history");
                let acked = history.ops.iter().rev().find_map(|op| op.acked_ms);
                acked.filter(|&at| at > since)
            },
        );
        self.stop_clients();
        self.collect_until_quiet();
        let verdict = self.read_back(&primary);
        let verify = self.rig.cluster.cli(&primary, &["volume", "verify", "db"]);
        let verify_ok = verify.status.success() && text(&verify).contains("identical");
        let mut report = self.report(fault_phase_end, verdict);
        report.converge = converge;
        report.final_primary = primary;
        report.verify = text(&verify).trim().to_string();
        report.verify_ok = verify_ok;
        report.mismatches = self.explain_mismatches(&report.verify);
        report
    }

    /// Waits until every node answers and every node sees all three online: a node cut off
    /// by a one-way drop may need its TCP retransmissions to come back after the heal.
    fn wait_all_online(&self) {
        for node in ALL {
            self.rig.cluster.wait_online(node, ALL.len());
        }
    }

    /// Collects the timeline from every node until no new event arrived for 4 s (a node
    /// retries the events it recorded while cut off every 2 s until they are committed);
    /// 60 s at most.
    fn collect_until_quiet(&self) {
        let start = Instant::now();
        let mut last = (Vec::new(), Instant::now());
        while start.elapsed() < Duration::from_secs(60) {
            let newest = collect_timeline(&self.dirs(), &self.timeline);
            if newest != last.0 {
                last = (newest, Instant::now());
            } else if last.1.elapsed() >= Duration::from_secs(4) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("newest timeline event each of {ALL:?} shows: {:?}", last.0);
    }

    /// For every `mismatch at offset N` in a verify report: what each leg holds there and
    /// the writer's last requests for that block.
    fn explain_mismatches(&self, verify: &str) -> Vec<String> {
        let history = self.history.lock().expect("history");
        let mut lines = Vec::new();
        for offset in verify.lines().filter_map(|line| {
            let rest = line.trim().strip_prefix("mismatch at offset ")?;
            rest.split(',').next()?.parse::<u64>().ok()
        }) {
            let block = offset / BLOCK;
            let legs: Vec<String> = DATA
                .iter()
                .map(|node| {
                    let path = self.leg_dir(node).join("db.img");
                    let data = read_at(&path, offset, BLOCK as usize);
                    format!("leg {node}: {:?}", writer::classify(block, &data))
                })
                .collect();
            let ops: Vec<String> = history
                .ops
                .iter()
                .filter(|op| op.block == block)
                .rev()
                .take(4)
                .map(|op| format!("{op:?}"))
                .collect();
            lines.push(format!(
                "block {block}: {}; last requests: {}",
                legs.join(", "),
                ops.join("; ")
            ));
        }
        lines
    }

    /// Copies the daemons' logs and the timeline to a directory that outlives the rig (for a
    /// failed run); returns it.
    pub fn keep_logs(&self) -> PathBuf {
        let kept = std::env::temp_dir().join(format!(
            "tandem-chaos-seed{}-{}",
            self.seed,
            std::process::id()
        ));
        let _ = std::fs::create_dir_all(&kept);
        for node in ALL {
            let log = self.rig.dir(node).with_extension("log");
            let _ = std::fs::copy(&log, kept.join(format!("{node}.log")));
        }
        let timeline: String = self
            .timeline
            .lock()
            .map(|t| t.values().map(|e| format!("{e}\n")).collect())
            .unwrap_or_default();
        let _ = std::fs::write(kept.join("timeline.txt"), timeline);
        let faults: String = self
            .injected
            .iter()
            .map(|i| {
                format!(
                    "{} {} {} (primary {:?})\n",
                    i.start_ms, i.end_ms, i.fault, i.primary
                )
            })
            .collect();
        let _ = std::fs::write(kept.join("faults.txt"), faults);
        kept
    }

    /// The table's numbers from the records.
    fn report(&self, fault_phase_end: u64, verdict: Verdict) -> Report {
        let history = self.history.lock().expect("history");
        let timeline: Vec<Ev> = self
            .timeline
            .lock()
            .expect("timeline")
            .values()
            .cloned()
            .collect();
        let acked: Vec<&writer::Op> = history
            .ops
            .iter()
            .filter(|op| op.acked_ms.is_some())
            .collect();
        let mut acks: Vec<writer::Ack> = acked
            .iter()
            .map(|op| writer::Ack {
                node: op.node.clone(),
                sent_ms: op.sent_ms,
                acked_ms: op.acked_ms.unwrap_or_default(),
            })
            .collect();
        acks.extend(history.probes.iter().cloned());
        let mut faults = BTreeMap::new();
        for injected in &self.injected {
            *faults.entry(injected.fault.kind.name()).or_insert(0) += 1;
        }
        let (gap, gap_end) = analysis::longest_gap(&history);
        let (role_overlaps, role_overlaps_frozen) =
            analysis::role_overlaps(&timeline, &self.injected);
        let run_start = unix_ms() - self.started.elapsed().as_millis() as u64;
        let samples = self.legs.lock().expect("legs").clone();
        Report {
            seed: self.seed,
            fault_secs: fault_phase_end.saturating_sub(run_start) / 1000,
            faults,
            requests: history.ops.len(),
            acked: acked.len(),
            acked_flushed: acked
                .iter()
                .filter(|op| op.version <= history.flushed_upto)
                .count(),
            discards_acked: acked.iter().filter(|op| op.discard).count(),
            reconnects: history.reconnects,
            probe_acks: history.probes.len(),
            verdict,
            two_writers: analysis::two_writer_periods(&acks, &timeline),
            role_overlaps,
            role_overlaps_frozen,
            promotions: timeline.iter().filter(|e| e.kind == "promoted").count(),
            settle_ms: analysis::settle_times(&samples, &self.injected, u64::MAX),
            longest_gap_ms: gap,
            longest_gap_at: format!(
                "ending {:.1} s into the run; {}",
                gap_end.saturating_sub(run_start) as f64 / 1000.0,
                analysis::faults_around(&self.injected, gap_end - gap, gap_end)
            ),
            ..Report::default()
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        ALL.iter().map(|n| self.rig.dir(n).to_path_buf()).collect()
    }

    fn stop_clients(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a client thread panicked");
        }
    }

    /// Reads every writer block back from `primary` and checks it against the history.
    fn read_back(&self, primary: &str) -> Verdict {
        let socket = self.rig.dir(primary).join("nbd-db.sock");
        let mut client = wait_for("the final primary's export", CONVERGE_LIMIT, || {
            NbdClient::connect(&socket, "db").ok()
        });
        let history = self.history.lock().expect("history");
        check_reads(&mut client, Chaos::writer_blocks(), &history)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chaos run failed; logs kept in {}",
                self.keep_logs().display()
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        self.resume();
        let _ = self.rig.cluster.lab.heal_all();
        for node in ALL {
            self.rig.cluster.kill(node);
        }
        for dir in &self.leg_fs {
            let dir = path_str(dir);
            if !run_program("umount", &[dir]).status.success() {
                let _ = run_program("umount", &["-l", dir]);
            }
        }
        // The clients fail fast now that the daemons are gone; wait for them (bounded by
        // their reply limit) so none outlives the rig.
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Fills the file system at `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("filler")).expect("create the filler");
    let chunk = vec![0xffu8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    // The last page or two, if a partial chunk still fits.
    while file.write_all(&chunk[..4096]).is_ok() {}
}

/// `len` bytes of the file at `path` from `offset` (zeroes where it is short).
fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; len];
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.read_at(&mut data, offset);
    }
    data
}

fn unfill(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("filler"));
}

/// Whether `volume show db` of the node at `dir` lists legs, all UpToDate.
fn legs_up_to_date(dir: &Path) -> bool {
    let output = cli(dir, &["volume", "show", "db", "--json"]);
    let Ok(reply) = serde_json::from_slice::<Value>(&output.stdout) else {
        return false;
    };
    let legs = reply["volumes"][0]["legs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    !legs.is_empty() && legs.iter().all(|leg| leg["state"] == "UpToDate")
}

/// Merges the timeline as every answering node of `dirs` sees it into `into` (by sequence
/// number, so events pushed out of the daemons' newest-500 window are kept, and a node whose
/// applied state lags adds nothing wrong). Returns the newest sequence number each node
/// showed (`None`: it did not answer).
fn collect_timeline(dirs: &[PathBuf], into: &Mutex<BTreeMap<u64, Ev>>) -> Vec<Option<u64>> {
    let mut newest = Vec::new();
    for dir in dirs {
        let events = events_of(dir);
        newest.push(events.as_ref().and_then(|e| e.iter().map(|e| e.seq).max()));
        let mut timeline = into.lock().expect("timeline");
        for event in events.into_iter().flatten() {
            timeline.insert(event.seq, event);
        }
    }
    newest
}

/// `tandem events --json` of the node at `dir` (through its control socket), names resolved.
fn events_of(dir: &Path) -> Option<Vec<Ev>> {
    let status = cli(dir, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).ok()?;
    let names: BTreeMap<u64, String> = status["nodes"]
        .as_array()?
        .iter()
        .filter_map(|n| Some((n["id"].as_u64()?, n["name"].as_str()?.to_string())))
        .collect();
    let output = cli(dir, &["events", "--json", "--limit", "500"]);
    if !output.status.success() {
        return None;
    }
    parse_events(&String::from_utf8_lossy(&output.stdout), &names)
}

/// What a chaos run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub fault_secs: u64,
    pub faults: BTreeMap<&'static str, usize>,
    pub requests: usize,
    pub acked: usize,
    pub acked_flushed: usize,
    pub discards_acked: usize,
    pub reconnects: u64,
    pub probe_acks: usize,
    pub verdict: Verdict,
    /// Two-writer periods from the acknowledgements (asserted).
    pub two_writers: Vec<String>,
    /// Overlaps of the timeline's role intervals, and which of them had a frozen node.
    pub role_overlaps: Vec<String>,
    pub role_overlaps_frozen: usize,
    pub promotions: usize,
    pub longest_gap_ms: u64,
    pub longest_gap_at: String,
    pub converge: Duration,
    /// Per healed fault, ms from its heal until every leg was UpToDate again (`None`: not
    /// before the next fault).
    pub settle_ms: Vec<Option<u64>>,
    pub final_primary: String,
    pub verify: String,
    pub verify_ok: bool,
    /// For each block verify reported: each leg's content and the writer's last requests.
    pub mismatches: Vec<String>,
}
