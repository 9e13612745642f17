//! The event loop of the data-path world, its control plane and its checkers.
//!
//! Why it is shaped this way: everything happens as an event at a simulated millisecond,
//! taken from one queue in (time, insertion) order, so a seed replays exactly. The control
//! plane stands in for Raft's committed state: one `VolumeInfo` changed only through
//! `tandem_core::volume::{promote, set_leg_state}`; nodes learn it a little later, and not at
//! all while they are cut off from it. After every event the checkers run (rule 2 at every
//! landed write, rule 3 at every promotion, rule 1 on the primary's leg, rule 4 after the heal).

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::volume::{self, LegId, LegSpec, LegState, VolumeInfo};
use tandem_core::NodeId;

use super::disk::BLOCK;
use super::faults::Client;
use super::history::History;
use super::nodes::{Conn, Node};
use super::{DataViolation, Rule, VolumeOptions, VolumeReport};

/// Trace lines kept for a failure report.
const TRACE_LINES: usize = 3000;
/// The control plane promotes another leg once the primary was gone this long.
pub const FAILOVER_MS: u64 = 1650;
/// How often the full rule-1 check of the primary's leg runs.
const CHECK_EVERY_MS: u64 = 20;

/// Something scheduled to happen.
#[derive(Clone, Debug)]
pub enum Ev {
    DiskDone {
        node: usize,
        incarnation: u64,
        key: u64,
    },
    /// A frame arrives at one end of a connection.
    Deliver {
        conn: u64,
        to_secondary: bool,
        bytes: Vec<u8>,
    },
    /// One end learns that its connection closed.
    Closed {
        conn: u64,
        to_secondary: bool,
    },
    PumpInbox {
        conn: u64,
    },
    Tick {
        node: usize,
        role: u64,
    },
    Dial {
        node: usize,
        role: u64,
        leg: LegId,
    },
    Learn {
        node: usize,
    },
    Commit {
        node: usize,
        leg: LegId,
        state: LegState,
        epoch: u64,
    },
    ControlTick,
    ClientIssue,
    ClientResolve,
    Fault,
    Heal(super::faults::Heal),
    Check,
}

/// The whole simulated data path.
pub struct World {
    pub opts: VolumeOptions,
    pub rng: ChaCha8Rng,
    pub now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_event: u64,
    pub size: u64,
    pub nodes: Vec<Node>,
    pub control: VolumeInfo,
    /// Per node: whether the control plane can hear it (and it the control plane).
    pub reachable: Vec<bool>,
    /// When the control plane first saw the primary gone.
    pub primary_gone_since: Option<u64>,
    pub conns: BTreeMap<u64, Conn>,
    pub next_conn: u64,
    /// Directed cuts `[from][to]` and extra delays.
    pub cut: Vec<Vec<bool>>,
    pub delay: Vec<Vec<u64>>,
    pub client: Client,
    pub history: History,
    /// Epoch → the node whose writes landed on some leg in it.
    writers: BTreeMap<u64, NodeId>,
    /// Epoch → the node the control plane promoted in it.
    pub epoch_primary: BTreeMap<u64, NodeId>,
    /// Per node: legs whose state a commit re-affirmed since the node last learned the
    /// state (reported to its primary even when unchanged; see `report_every_commit`).
    pub recommitted: Vec<Vec<LegId>>,
    /// Per node: lost power since its leg was last committed UpToDate (ground truth).
    pub lost_power: Vec<bool>,
    pub next_role: u64,
    pub fault_end: u64,
    pub healed_at: Option<u64>,
    pub report: VolumeReport,
    violation: Option<DataViolation>,
    trace: VecDeque<String>,
    digest: DefaultHasher,
    done: bool,
}

impl World {
    pub fn new(seed: u64, opts: VolumeOptions) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let count = opts
            .nodes
            .unwrap_or_else(|| rng.gen_range(2..=3))
            .clamp(2, 3);
        let size = rng.gen_range(64..=256u64) * BLOCK;
        let fault_ms = rng.gen_range(opts.fault_ms.0..=opts.fault_ms.1.max(opts.fault_ms.0));
        let specs: Vec<LegSpec> = (1..=count as NodeId)
            .map(|node| LegSpec {
                nodes: vec![node],
                path: format!("/dev/leg{node}"),
            })
            .collect();
        let control = volume::new_volume(1, "v1", size, &specs);
        let nodes = (0..count).map(|i| Node::new(i, size)).collect();
        let report = VolumeReport {
            nodes: count,
            size,
            ..VolumeReport::default()
        };
        World {
            opts,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            size,
            nodes,
            control,
            reachable: vec![true; count],
            primary_gone_since: None,
            conns: BTreeMap::new(),
            next_conn: 1,
            cut: vec![vec![false; count]; count],
            delay: vec![vec![0; count]; count],
            client: Client::default(),
            history: History::new(size),
            writers: BTreeMap::new(),
            epoch_primary: BTreeMap::new(),
            lost_power: vec![false; count],
            recommitted: vec![Vec::new(); count],
            next_role: 1,
            fault_end: fault_ms,
            healed_at: None,
            report,
            violation: None,
            trace: VecDeque::new(),
            digest: DefaultHasher::new(),
            done: false,
        }
    }

    /// A hash of every trace line so far (two runs of a seed must agree).
    pub fn digest(&self) -> u64 {
        self.digest.finish()
    }

    pub fn at(&mut self, delay: u64, event: Ev) {
        let id = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now + delay, id)));
        self.events.insert(id, event);
    }

    /// One trace line (kept in a ring, hashed, echoed with `--trace`).
    pub fn log(&mut self, line: String) {
        let line = format!("{:>7} {line}", self.now);
        line.hash(&mut self.digest);
        if self.opts.echo {
            println!("{line}");
        }
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    /// Records a broken rule (the first one ends the run).
    pub fn violate(&mut self, rule: Rule, detail: String) {
        if self.violation.is_none() {
            self.log(format!("VIOLATION {rule}: {detail}"));
            self.violation = Some(DataViolation { rule, detail });
        }
    }

    /// Runs the seed to its end: the first violation, or convergence after the heal.
    pub fn run(mut self) -> Result<VolumeReport, (u64, DataViolation, String)> {
        self.start();
        let hard_end = self.fault_end + self.opts.settle_bound_ms + 10_000;
        while !self.done && self.violation.is_none() {
            let Some(Reverse((time, id))) = self.queue.pop() else {
                self.violate(Rule::Harness, "the event queue ran dry".into());
                break;
            };
            let Some(event) = self.events.remove(&id) else {
                continue;
            };
            self.now = time;
            if self.now > hard_end {
                self.violate(Rule::Harness, "the run did not end".into());
                break;
            }
            self.report.events += 1;
            self.handle(event);
        }
        self.report.sim_ms = self.now;
        self.report.acked_writes = self.history.acked_writes;
        self.report.acked_flushes = self.history.acked_flushes;
        self.report.failed_requests = self.history.failed;
        self.report.trace_digest = self.digest();
        match self.violation.take() {
            None => Ok(self.report),
            Some(violation) => {
                let trace: Vec<String> = self.trace.drain(..).collect();
                Err((self.now, violation, trace.join("\n")))
            }
        }
    }

    /// The volume is created with node 1's leg UpToDate and promoted there; the other legs
    /// start Inconsistent and get a full initial sync.
    fn start(&mut self) {
        self.log(format!(
            "volume of {} KiB on {} nodes, faults for {} ms",
            self.size / 1024,
            self.nodes.len(),
            self.fault_end
        ));
        self.promote(0, false, false, "initial");
        for node in 0..self.nodes.len() {
            self.at(1, Ev::Learn { node });
        }
        self.at(100, Ev::ControlTick);
        self.at(50, Ev::ClientResolve);
        self.at(60, Ev::ClientIssue);
        self.at(500, Ev::Fault);
        self.at(CHECK_EVERY_MS, Ev::Check);
    }

    fn handle(&mut self, event: Ev) {
        match event {
            Ev::DiskDone {
                node,
                incarnation,
                key,
            } => self.disk_done(node, incarnation, key),
            Ev::Deliver {
                conn,
                to_secondary,
                bytes,
            } => self.deliver(conn, to_secondary, bytes),
            Ev::Closed { conn, to_secondary } => self.closed(conn, to_secondary),
            Ev::PumpInbox { conn } => self.pump_inbox(conn),
            Ev::Tick { node, role } => self.tick(node, role),
            Ev::Dial { node, role, leg } => self.dial(node, role, leg),
            Ev::Learn { node } => self.learn(node),
            Ev::Commit {
                node,
                leg,
                state,
                epoch,
            } => self.commit(node, leg, state, epoch),
            Ev::ControlTick => self.control_tick(),
            Ev::ClientIssue => self.client_issue(),
            Ev::ClientResolve => self.client_resolve(),
            Ev::Fault => self.fault(),
            Ev::Heal(heal) => self.heal(heal),
            Ev::Check => self.periodic_check(),
        }
    }

    /// A node learns the committed state (if it is up and reaches the control plane).
    fn learn(&mut self, node: usize) {
        if !self.nodes[node].up || !self.reachable[node] {
            return;
        }
        let known = self.control.clone();
        self.nodes[node].known = Some(known);
        self.reconcile(node);
    }

    /// Everyone learns the committed state, each after its own delay.
    pub fn broadcast(&mut self) {
        for node in 0..self.nodes.len() {
            let delay = self.rng.gen_range(1..=30);
            self.at(delay, Ev::Learn { node });
        }
    }

    /// A leg-state proposal reaches the control plane and is applied (or refused).
    fn commit(&mut self, node: usize, leg: LegId, state: LegState, epoch: u64) {
        if !self.reachable[node] {
            self.log(format!(
                "n{} proposal leg {leg} {} lost: cut off",
                node + 1,
                state.as_str()
            ));
            return;
        }
        match volume::set_leg_state(&mut self.control, leg, state, epoch) {
            Ok(text) => {
                self.log(format!("commit: {text}"));
                if self.opts.report_every_commit {
                    for legs in &mut self.recommitted {
                        legs.push(leg);
                    }
                }
                if state == LegState::UpToDate {
                    if let Some(owner) = self.leg_owner(leg) {
                        self.lost_power[owner] = false;
                    }
                }
                self.broadcast();
            }
            Err(error) => self.log(format!("commit refused: {error}")),
        }
    }

    pub fn leg_owner(&self, leg: LegId) -> Option<usize> {
        self.control
            .leg(leg)
            .and_then(|l| l.nodes.first())
            .map(|&n| (n - 1) as usize)
    }

    /// Promotes `node` through `volume::promote`, checking rule 2's promotion half.
    pub fn promote(&mut self, node: usize, force: bool, takeover: bool, why: &str) -> bool {
        let id = (node + 1) as NodeId;
        let before = self.control.leg_of(id).map(|l| l.state);
        match volume::promote(&mut self.control, id, force, takeover) {
            Ok(text) => {
                let epoch = self.control.epoch;
                self.log(format!("promote ({why}): {text}"));
                self.epoch_primary.insert(epoch, id);
                self.report.promotions += 1;
                let forced = self.control.forced.iter().any(|f| f.epoch == epoch);
                if forced {
                    self.report.forced_promotions += 1;
                    self.history.forced();
                } else if before != Some(LegState::UpToDate) {
                    let state = before.map_or("missing", LegState::as_str);
                    self.violate(
                        Rule::StalePromotion,
                        format!("n{id} promoted in epoch {epoch} onto a leg that was {state}, not forced"),
                    );
                }
                if std::mem::take(&mut self.lost_power[node]) {
                    self.log(format!(
                        "n{id} lost power since its leg was UpToDate: unflushed writes may be gone"
                    ));
                    self.history.power_loss();
                }
                self.primary_gone_since = None;
                self.broadcast();
                true
            }
            Err(error) => {
                self.report.refused_promotions += 1;
                self.log(format!("promote n{id} ({why}) refused: {error}"));
                false
            }
        }
    }

    /// Rule 2 at the moment a write lands on a leg: one writer per epoch, and it is the
    /// node promoted in that epoch.
    pub fn landed(&mut self, leg_node: usize, epoch: u64, writer: NodeId) {
        let first = *self.writers.entry(epoch).or_insert(writer);
        let primary = self.epoch_primary.get(&epoch).copied();
        if first != writer {
            self.violate(
                Rule::TwoWriters,
                format!(
                    "writes of n{first} and n{writer} both landed in epoch {epoch} (on n{}'s leg)",
                    leg_node + 1
                ),
            );
        } else if primary != Some(writer) {
            self.violate(
                Rule::TwoWriters,
                format!(
                    "a write of n{writer} landed on n{}'s leg in epoch {epoch}, whose primary is {}",
                    leg_node + 1,
                    primary.map_or("nobody".into(), |p| format!("n{p}"))
                ),
            );
        }
    }

    /// Rule 1 on the whole leg of the committed primary, then (after the heal) rule 4.
    fn periodic_check(&mut self) {
        self.check_primary_leg();
        if self.healed_at.is_some() {
            self.check_convergence();
        }
        if !self.done {
            self.at(CHECK_EVERY_MS, Ev::Check);
        }
    }

    pub fn check_primary_leg(&mut self) {
        let Some(primary) = self.control.primary else {
            return;
        };
        let node = (primary - 1) as usize;
        let blocks = self.size / BLOCK;
        for block in 0..blocks {
            let bytes = self.nodes[node].disk.read(block * BLOCK, BLOCK);
            if let Err(detail) = self.history.check_block(block, &bytes) {
                let epoch = self.control.epoch;
                self.violate(
                    Rule::AckedWriteLost,
                    format!("on n{primary}'s leg (primary in epoch {epoch}): {detail}"),
                );
                return;
            }
        }
    }

    /// After the heal: every leg UpToDate and byte-identical, the primary serving, the
    /// workload progressed; within the settle bound.
    fn check_convergence(&mut self) {
        let Some(healed) = self.healed_at else {
            return;
        };
        match self.converged() {
            Ok(()) => {
                self.report.converged_after_ms = self.now - healed;
                self.log(format!("converged {} ms after the heal", self.now - healed));
                self.done = true;
            }
            Err(why) if self.now >= healed + self.opts.settle_bound_ms => {
                let bound = self.opts.settle_bound_ms;
                self.violate(
                    Rule::NoConvergence,
                    format!("{bound} ms after the heal: {why}"),
                );
            }
            Err(_) => {}
        }
    }

    fn converged(&self) -> Result<(), String> {
        if self.client.acked_after_heal == 0 {
            return Err("no write was acknowledged since the heal".into());
        }
        if !self.client.stopped || self.history.in_flight() > 0 {
            return Err(format!(
                "{} client requests in flight",
                self.history.in_flight()
            ));
        }
        let Some(primary) = self.control.primary else {
            return Err("no primary".into());
        };
        let serving = self.nodes[(primary - 1) as usize].primary_epoch();
        if serving != Some(self.control.epoch) {
            return Err(format!(
                "n{primary} is not serving epoch {}",
                self.control.epoch
            ));
        }
        if let Some(leg) = self
            .control
            .legs
            .iter()
            .find(|l| l.state != LegState::UpToDate)
        {
            return Err(format!("leg {} is {}", leg.id, leg.state.as_str()));
        }
        let first = self.nodes[0].disk.contents();
        for node in &self.nodes[1..] {
            let other = node.disk.contents();
            if let Some(at) = first.iter().zip(&other).position(|(a, b)| a != b) {
                return Err(format!(
                    "n1's and n{}'s legs differ at byte {at} (block {})",
                    node.index + 1,
                    at as u64 / BLOCK
                ));
            }
        }
        Ok(())
    }
}
