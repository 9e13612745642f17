//! Plays a scenario file (`harness/scenarios/*.toml`, issue #5) against real `tandem` daemons,
//! each in its own network namespace, and judges its expectations on what really happened.
//!
//! Exists because issue #5 asks for one format that runs both in the simulator and on real
//! hosts: the simulator runner (`tandem_harness::sim_runner`) shows what the core decides;
//! this one shows that the daemons, the data path and the resources really do it. It reads the
//! same parsed [`Scenario`] (its `plan` already resolves `for`s, pauses and heals) and keeps the
//! simulator runner's semantics for every expectation (`judge`).
//!
//! A run: form the cluster of the file's nodes (`cluster`), create the layout's volumes and
//! groups, wait until every group runs where it is placed with every leg UpToDate (the file's
//! t = 0), then carry out each effect at its time (real timing jitters by some tens of ms;
//! the file's bounds were chosen for real failover times), sampling where each group runs and
//! the legs' states all along (`observe`), sending the writes through NBD (`workload`). At
//! the file's `duration` everything heals; the run goes on until every group runs on one
//! node and every leg is UpToDate (or a limit), then reads every block back through the final
//! primary and from every leg's file, runs `tandem volume verify`, and judges.
//!
//! What a real host cannot do is not faked: a step whose effect cannot be carried out here
//! (`slow_disk`, which would need dm-delay under the leg; `fill_disk`, not built) is shown as
//! "simulator only", and a scenario with such a step is reported as skipped, with the reason
//! (its expectations were written with the step in effect). A `power_off` kills the daemon and
//! its services and removes its IPs, but the page cache survives: only the simulator covers
//! lost caches.

pub mod cluster;
pub mod judge;
pub mod observe;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_harness::scenario::{describe, fmt_ms, Action, Effect, Scenario};
use tandem_harness::sim_runner::Row;

use crate::chaos_kit::analysis::two_writer_periods;
use crate::chaos_kit::writer::{Ack, BLOCK};
use crate::failover_kit::{unix_ms, Ev};
use crate::nbd_client::NbdClient;
use cluster::{Cluster, VOLUME_MIB};
use judge::{Judge, Records};
use observe::Sample;
use workload::{WriteState, Writer};

/// Hang guard: the layout running where placed, every leg UpToDate.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// Hang guard: after the final heal, every group running and every leg UpToDate.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);
/// Samples keep coming this long after the cluster settled.
const SETTLED_TAIL: Duration = Duration::from_secs(1);
/// The least time between two samples.
const SAMPLE_GAP: Duration = Duration::from_millis(50);

/// One row of the steps table.
#[derive(Clone, Debug)]
pub struct StepRow {
    pub planned_ms: u64,
    /// When it was carried out (scenario time); `None`: not carried out.
    pub actual_ms: Option<u64>,
    pub step: usize,
    pub what: String,
    pub outcome: String,
}

/// The outcome of one scenario against real daemons.
#[derive(Clone, Debug)]
pub struct RealReport {
    pub name: String,
    pub file: String,
    /// Why the scenario was not run on real hosts.
    pub skipped: Option<String>,
    pub steps: Vec<StepRow>,
    /// The first row is the real cluster's own check after the final heal; then one per
    /// `[[expect]]`.
    pub rows: Vec<Row>,
    /// The cluster's timeline from t = 0 (`tandem events`), one line per event.
    pub timeline: Vec<String>,
    /// Where the daemons' logs were kept (a failed run only).
    pub logs: Option<std::path::PathBuf>,
    pub wall: Duration,
}

impl RealReport {
    /// Every row passed (a skipped scenario has none).
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|row| row.pass)
    }

    /// `scenario NAME: expectation WHAT: DETAIL` for every failed row.
    pub fn failures(&self) -> Vec<String> {
        (self.rows.iter().filter(|row| !row.pass))
            .map(|row| {
                format!(
                    "scenario {}: expectation \"{}\" failed: {}",
                    self.name, row.what, row.detail
                )
            })
            .collect()
    }

    /// The steps table and the pass/fail table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>8}  {:>8}  {:<4}  {:<32}  outcome",
            "planned", "actual", "step", "what"
        );
        for step in &self.steps {
            let actual = step.actual_ms.map_or_else(|| "-".to_string(), fmt_ms);
            let _ = writeln!(
                out,
                "{:>8}  {actual:>8}  {:<4}  {:<32}  {}",
                fmt_ms(step.planned_ms),
                step.step,
                step.what,
                step.outcome
            );
        }
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "SKIPPED on real hosts: {why}");
            return out;
        }
        let width = self
            .rows
            .iter()
            .map(|row| row.what.len())
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "\n{:<width$}  result  detail", "expectation");
        for row in &self.rows {
            let result = if row.pass { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "{:<width$}  {result:<6}  {}", row.what, row.detail);
        }
        if !self.passed() {
            let _ = writeln!(out, "\nthe cluster's timeline from t=0 (tandem events):");
            for line in &self.timeline {
                let _ = writeln!(out, "  {line}");
            }
            if let Some(logs) = &self.logs {
                let _ = writeln!(out, "the daemons' logs are kept in {}", logs.display());
            }
        }
        out
    }
}

/// The steps of `scenario` a real host cannot carry out: `(step, why)`.
pub fn simulator_only(scenario: &Scenario) -> Vec<(usize, String)> {
    (scenario.steps.iter())
        .filter_map(|step| {
            let why = match step.action {
                Action::SlowDisk { .. } => "simulator only: a real slow disk needs dm-delay or an I/O throttle under the leg",
                Action::FillDisk { .. } | Action::FreeDisk { .. } => {
                    "simulator only: this runner does not fill a leg's file system (not built)"
                }
                _ => return None,
            };
            Some((step.number, why.to_string()))
        })
        .collect()
}

/// Runs `scenario` in lab `tag` (at most 10 characters of a-z, 0-9, _); `echo` prints each
/// step as it is carried out. Panics when the cluster cannot be built or never gets ready.
pub fn run(scenario: &Scenario, tag: &str, echo: bool) -> RealReport {
    let clock = Instant::now();
    let mut report = RealReport {
        name: scenario.name.clone(),
        file: scenario.file.clone(),
        skipped: None,
        steps: Vec::new(),
        rows: Vec::new(),
        timeline: Vec::new(),
        logs: None,
        wall: Duration::ZERO,
    };
    let unsupported = simulator_only(scenario);
    if let Some((step, why)) = unsupported.first() {
        report.steps = (scenario.steps.iter())
            .map(|s| StepRow {
                planned_ms: s.at_ms,
                actual_ms: None,
                step: s.number,
                what: describe(s),
                outcome: (unsupported.iter().find(|(n, _)| *n == s.number)).map_or_else(
                    || "not run (scenario skipped)".into(),
                    |(_, why)| why.clone(),
                ),
            })
            .collect();
        report.skipped = Some(format!(
            "step {step} is {why}; the expectations were written with it in effect"
        ));
        return report;
    }
    let mut run = Run::start(scenario, tag, echo);
    run.play();
    run.heal_and_settle();
    report.rows = run.judge();
    report.steps = std::mem::take(&mut run.steps);
    report.timeline = std::mem::take(&mut run.timeline);
    if !report.passed() {
        report.logs = Some(run.keep_logs(tag));
    }
    report.wall = clock.elapsed();
    report
}

/// The node each group of the layout is placed on first.
fn home_nodes(scenario: &Scenario) -> Vec<(String, String)> {
    let homes: &[usize] = match scenario.layout {
        tandem_harness::scenario::Layout::ActiveStandby => &[0],
        tandem_harness::scenario::Layout::ActiveActive => &[0, 1],
        tandem_harness::scenario::Layout::ThreeLegs => &[0, 2],
    };
    (scenario.layout.groups().iter().zip(homes))
        .map(|(group, &i)| (group.to_string(), scenario.nodes[i].clone()))
        .collect()
}

/// Every group runs on exactly one node and every leg is UpToDate.
fn settled(sample: &Sample) -> bool {
    let groups = (sample.groups.values()).all(|g| g.full.len() == 1 && g.runs_only_on(&g.full[0]));
    let legs = !sample.legs.is_empty()
        && (sample.legs.values())
            .all(|legs| !legs.is_empty() && legs.iter().all(|l| l.state == "UpToDate"));
    groups && legs
}

/// One run in progress.
struct Run<'a> {
    scenario: &'a Scenario,
    cluster: Cluster,
    writers: BTreeMap<String, Writer>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
    t0: Instant,
    t0_unix_ms: u64,
    steps: Vec<StepRow>,
    commands: BTreeMap<usize, judge::CommandState>,
    /// After the final heal: how long until the cluster settled (`None`: not within the limit).
    settle: Option<Duration>,
    /// The cluster's timeline from t = 0 (`tandem events`), one line per event.
    timeline: Vec<String>,
    echo: bool,
}

/// Something due at a scenario time.
enum Due<'p> {
    Planned(&'p tandem_harness::scenario::Planned),
    Resume { node: String, step: usize },
}

impl<'a> Run<'a> {
    /// Forms the cluster, waits for t = 0, starts the writers and the sampler.
    fn start(scenario: &'a Scenario, tag: &str, echo: bool) -> Run<'a> {
        let cluster = Cluster::form(tag, scenario.layout, &scenario.nodes, &scenario.witnesses);
        let homes = home_nodes(scenario);
        let start = Instant::now();
        loop {
            let sample = observe::sample(&cluster.target, &BTreeSet::new(), Instant::now());
            let placed = (homes.iter()).all(|(group, node)| {
                sample
                    .groups
                    .get(group)
                    .is_some_and(|g| g.runs_only_on(node))
            });
            if placed && settled(&sample) {
                break;
            }
            assert!(
                start.elapsed() < READY_LIMIT,
                "{}: the layout never ran where placed within {READY_LIMIT:?}; last sample: {sample:?}",
                scenario.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for (_, node) in &homes {
            cluster.rig.cluster.node(node).wait_lease();
        }
        let blocks = (VOLUME_MIB << 20) / BLOCK;
        let writers = (scenario.layout.volumes().iter())
            .map(|v| (v.to_string(), Writer::start(v, cluster.sockets(v), blocks)))
            .collect();
        if echo {
            eprintln!("{}: ready after {:?}; t=0", scenario.name, start.elapsed());
        }
        let mut run = Run {
            scenario,
            cluster,
            writers,
            samples: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            sampler: None,
            t0: Instant::now(),
            t0_unix_ms: unix_ms(),
            steps: Vec::new(),
            commands: BTreeMap::new(),
            settle: None,
            timeline: Vec::new(),
            echo,
        };
        run.start_sampler();
        run
    }

    fn start_sampler(&mut self) {
        let (target, quiet) = (self.cluster.target.clone(), self.cluster.quiet.clone());
        let (samples, stop, t0) = (self.samples.clone(), self.stop.clone(), self.t0);
        self.sampler = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let quiet = quiet.lock().expect("quiet nodes").clone();
                let sample = observe::sample(&target, &quiet, t0);
                samples.lock().expect("samples").push(sample);
                std::thread::sleep(SAMPLE_GAP.saturating_sub(began.elapsed()));
            }
        }));
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn sleep_until(&self, at_ms: u64) {
        let now = self.now_ms();
        if at_ms > now {
            std::thread::sleep(Duration::from_millis(at_ms - now));
        }
    }

    /// Carries out every effect of the plan (and the ends of pauses) at its time, then waits
    /// for the end of the faults phase.
    fn play(&mut self) {
        let scenario = self.scenario;
        let mut due: Vec<(u64, Due)> = scenario
            .plan
            .iter()
            .map(|p| (p.at_ms, Due::Planned(p)))
            .collect();
        while !due.is_empty() {
            // The earliest first; among equals, the plan's order (resumes after).
            let next = (0..due.len()).min_by_key(|&i| due[i].0).unwrap_or(0);
            let (at_ms, item) = due.remove(next);
            self.sleep_until(at_ms);
            let actual = self.now_ms();
            let (step, what, outcome) = match item {
                Due::Planned(planned) => {
                    if let Effect::Pause { node, ms } = &planned.effect {
                        due.push((
                            at_ms + ms,
                            Due::Resume {
                                node: node.clone(),
                                step: planned.step,
                            },
                        ));
                    }
                    let outcome = self.carry_out(planned);
                    (planned.step, planned.what.clone(), outcome)
                }
                Due::Resume { node, step } => (
                    step,
                    format!("resume {node}"),
                    Some(self.cluster.resume(&node)),
                ),
            };
            let Some(outcome) = outcome else {
                continue;
            };
            if self.echo {
                eprintln!(
                    "t={} (planned {}) step {step}: {what}: {outcome}",
                    fmt_ms(actual),
                    fmt_ms(at_ms)
                );
            }
            self.steps.push(StepRow {
                planned_ms: at_ms,
                actual_ms: Some(actual),
                step,
                what,
                outcome,
            });
        }
        self.sleep_until(scenario.duration_ms);
    }

    /// Carries out one effect; its outcome (`None` for a write: writes are summed up per step
    /// at the end).
    fn carry_out(&mut self, planned: &tandem_harness::scenario::Planned) -> Option<String> {
        let cluster = &mut self.cluster;
        Some(match &planned.effect {
            Effect::Kill { node } => cluster.kill(node),
            Effect::PowerOff { node } => cluster.power_off(node),
            Effect::Start { node } => cluster.start(node),
            Effect::Cut { fault, kind, links } => cluster.cut(*fault, *kind, links),
            Effect::Pause { node, .. } => cluster.pause(node),
            Effect::EndFault { fault } => cluster.end_fault(*fault),
            Effect::Write { volume } => {
                if let Some(writer) = self.writers.get(volume) {
                    writer.write(planned.step);
                }
                return None;
            }
            Effect::Operator { command, on } => {
                let (node, state) = cluster.operator(command, on.as_deref());
                self.commands.insert(planned.step, state.clone());
                match state {
                    judge::CommandState::Pending => format!("on {node}: no answer"),
                    judge::CommandState::Done(text) => format!("on {node}: done: {text}"),
                    judge::CommandState::Refused(text) => format!("on {node}: {text}"),
                }
            }
            Effect::SlowDisk { .. } | Effect::FillDisk { .. } => {
                "simulator only (not carried out)".into()
            }
        })
    }

    /// The final heal, then samples until every group runs on one node and every leg is
    /// UpToDate (or [`SETTLE_LIMIT`]); then the writers finish and the sampler stops.
    fn heal_and_settle(&mut self) {
        let at_ms = self.now_ms();
        let outcome = self.cluster.heal_everything();
        if self.echo {
            eprintln!("t={} final heal: {outcome}", fmt_ms(at_ms));
        }
        self.steps.push(StepRow {
            planned_ms: self.scenario.duration_ms,
            actual_ms: Some(at_ms),
            step: 0,
            what: "end: heal everything".into(),
            outcome,
        });
        let healed = Instant::now();
        while healed.elapsed() < SETTLE_LIMIT {
            let last = self.samples.lock().expect("samples").last().cloned();
            if last.is_some_and(|s| s.at_ms > at_ms && settled(&s)) {
                self.settle = Some(healed.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(SETTLED_TAIL);
        for writer in self.writers.values_mut() {
            writer.finish();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
        self.sum_up_writes();
    }

    /// One steps-table row per `write` step: what became of its writes.
    fn sum_up_writes(&mut self) {
        let mut per_step: BTreeMap<usize, [usize; 3]> = BTreeMap::new();
        for writer in self.writers.values() {
            for record in writer.records.lock().expect("writer records").iter() {
                let counts = per_step.entry(record.step).or_default();
                counts[match record.state {
                    WriteState::Acknowledged => 0,
                    WriteState::InFlight => 1,
                    WriteState::Failed(_) => 2,
                }] += 1;
            }
        }
        for step in &self.scenario.steps {
            let Some([acked, in_flight, failed]) = per_step.get(&step.number) else {
                continue;
            };
            self.steps.push(StepRow {
                planned_ms: step.at_ms,
                actual_ms: None,
                step: step.number,
                what: describe(step),
                outcome: format!(
                    "NBD writes: {acked} acknowledged, {in_flight} in flight, {failed} not accepted"
                ),
            });
        }
        self.steps.sort_by_key(|s| (s.planned_ms, s.step));
    }

    /// The rows: the real cluster's own check, then one per expectation.
    fn judge(&mut self) -> Vec<Row> {
        let mut records = Records {
            samples: self.samples.lock().expect("samples").clone(),
            t0_unix_ms: self.t0_unix_ms,
            commands: self.commands.clone(),
            ..Records::default()
        };
        let mut verified = Vec::new();
        let primaries = self.final_primaries(&records.samples);
        for (volume, writer) in &self.writers {
            records.writes.extend(
                writer
                    .records
                    .lock()
                    .expect("writer records")
                    .iter()
                    .cloned(),
            );
            let primary = primaries.get(volume).cloned().flatten();
            self.read_back(writer, primary.as_deref(), &mut records);
            verified.push(self.verify(volume, primary.as_deref()));
        }
        let timeline: Vec<Ev> = (self.cluster.rig.names().iter())
            .find_map(|via| self.cluster.rig.events(via))
            .unwrap_or_default();
        records.two_writers = self.two_writers(&timeline);
        self.timeline = (timeline.iter())
            .filter(|e| e.at_unix_ms >= self.t0_unix_ms)
            .map(|e| {
                let at = fmt_ms(e.at_unix_ms - self.t0_unix_ms);
                let group = e.group.as_deref().unwrap_or("-");
                format!("t={at} {} {} {group}: {}", e.node, e.kind, e.detail)
            })
            .collect();
        let mut rows = vec![self.cluster_row(&verified)];
        rows.extend(
            Judge {
                scenario: self.scenario,
                records: &records,
            }
            .rows(),
        );
        rows
    }

    /// Copies every daemon's log (and the timeline) to a directory that outlives the rig.
    fn keep_logs(&self, tag: &str) -> std::path::PathBuf {
        let kept = std::env::temp_dir().join(format!(
            "tandem-scenario-{tag}-{}-{}",
            std::process::id(),
            unix_ms()
        ));
        let _ = std::fs::create_dir_all(&kept);
        for node in self.cluster.rig.names() {
            let log = self.cluster.rig.dir(&node).with_extension("log");
            let _ = std::fs::copy(&log, kept.join(format!("{node}.log")));
        }
        let _ = std::fs::write(kept.join("timeline.txt"), self.timeline.join("\n"));
        kept
    }

    /// Each volume's primary in the last sample.
    fn final_primaries(&self, samples: &[Sample]) -> BTreeMap<String, Option<String>> {
        let Some(last) = samples.last() else {
            return BTreeMap::new();
        };
        (self.cluster.target.groups.iter())
            .flat_map(|g| {
                let at = last.groups.get(&g.name);
                (g.volumes.iter().enumerate()).map(move |(i, v)| {
                    (
                        v.clone(),
                        at.and_then(|at| at.primaries.get(i).cloned().flatten()),
                    )
                })
            })
            .collect()
    }

    /// Reads every block back from every leg's file and through the final primary's export;
    /// records which acknowledged writes each lacks.
    fn read_back(&self, writer: &Writer, primary: Option<&str>, records: &mut Records) {
        let names: Vec<&str> = self.scenario.nodes.iter().map(String::as_str).collect();
        let mut sources: Vec<(String, BlockReader)> = Vec::new();
        for node in self.cluster.leg_nodes(&names) {
            let path = self.cluster.leg_file(&writer.volume, &node);
            sources.push((
                node,
                Box::new(move |block| read_file_at(&path, block * BLOCK)),
            ));
        }
        if let Some(primary) = primary {
            let socket = self
                .cluster
                .rig
                .dir(primary)
                .join(format!("nbd-{}.sock", writer.volume));
            if let Ok(mut client) = NbdClient::connect(&socket, &writer.volume) {
                let read =
                    move |block| client.read(block * BLOCK, BLOCK as u32).unwrap_or_default();
                sources.push((format!("{primary} (through NBD)"), Box::new(read)));
            }
        }
        let acked = writer.records.lock().expect("writer records").clone();
        for (source, read) in sources {
            for lost in writer.check(read).lost {
                let block = (lost.strip_prefix("block "))
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|n| n.parse::<u64>().ok());
                let latest = (acked.iter().rev())
                    .find(|r| Some(r.block) == block && r.state == WriteState::Acknowledged);
                if let Some(record) = latest {
                    let key = (writer.volume.clone(), record.version);
                    records.missing.entry(key).or_default().push(source.clone());
                }
            }
        }
    }

    /// `tandem volume verify VOLUME` on its primary: `(volume, identical, output)`.
    fn verify(&self, volume: &str, primary: Option<&str>) -> (String, bool, String) {
        let Some(primary) = primary else {
            return (volume.to_string(), false, "no primary at the end".into());
        };
        let output = self
            .cluster
            .rig
            .cluster
            .cli(primary, &["volume", "verify", volume]);
        let text = crate::text(&output).trim().to_string();
        let identical = output.status.success() && text.contains("identical");
        (volume.to_string(), identical, text)
    }

    /// Acknowledged writes of a node after another node's promotion for the volume's group.
    fn two_writers(&self, timeline: &[Ev]) -> Vec<String> {
        let mut found = Vec::new();
        for group in &self.cluster.target.groups {
            for volume in &group.volumes {
                let Some(writer) = self.writers.get(volume) else {
                    continue;
                };
                let events: Vec<Ev> = (timeline.iter())
                    .filter(|e| e.group.as_deref() == Some(group.name.as_str()))
                    .cloned()
                    .collect();
                let acks: Vec<Ack> = (writer.records.lock().expect("writer records").iter())
                    .filter_map(|r| {
                        Some(Ack {
                            node: r.node.clone()?,
                            sent_ms: r.sent_unix_ms,
                            acked_ms: r.acked_unix_ms?,
                        })
                    })
                    .collect();
                found.extend(
                    two_writer_periods(&acks, &events)
                        .into_iter()
                        .map(|p| format!("{volume}: {p}")),
                );
            }
        }
        found
    }

    /// The first row: the cluster settled after the final heal and the legs are identical.
    fn cluster_row(&self, verified: &[(String, bool, String)]) -> Row {
        let settle = match self.settle {
            Some(after) => format!("every group ran on one node and every leg was UpToDate {:.1} s after the final heal", after.as_secs_f64()),
            None => format!("NOT settled {SETTLE_LIMIT:?} after the final heal"),
        };
        let verify: Vec<String> = (verified.iter())
            .map(|(volume, ok, text)| match ok {
                true => format!("{volume} legs identical"),
                false => format!("{volume} verify: {text}"),
            })
            .collect();
        let power =
            (self.scenario.steps.iter()).any(|s| matches!(s.action, Action::PowerOff { .. }));
        let note = if power {
            "; power_off kept the page cache (real host)"
        } else {
            ""
        };
        Row {
            what: "real cluster after the final heal".into(),
            pass: self.settle.is_some() && verified.iter().all(|(_, ok, _)| *ok),
            detail: format!("{settle}; {}{note}", verify.join(", ")),
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

/// Reads one block (by number) of a leg or an export.
type BlockReader = Box<dyn FnMut(u64) -> Vec<u8>>;

/// One block of the file at `path` from `offset` (zeroes where it is short).
fn read_file_at(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; BLOCK as usize];
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.read_at(&mut data, offset);
    }
    data
}
