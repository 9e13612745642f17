//! Faults and the workload client of the data-path world.
//!
//! Why together: both are the outside world acting on the cluster at random moments drawn
//! from the seed. Faults: process crashes (the kernel's cache survives, writes in flight may
//! land), power loss (unflushed cache blocks vanish, a random subset survives), link cuts
//! both ways and one way, slow links, nodes cut off from the control plane, disk write
//! errors, full disks, slow disks, a whole-cluster power loss, and operator mistakes
//! (promote without force onto any leg, forced promotion onto a stale leg). The control
//! plane's failover promotes another leg (a takeover) once the primary is gone.
//!
//! The client writes (1–8 blocks, some FUA), flushes, trims, zeroes and reads through the
//! node it believes is primary. It re-resolves that node only now and then, so requests keep
//! going to a deposed primary for a while: the data world models no node lease, so the core
//! alone must keep those from being acknowledged (stricter than the daemon, which also stops
//! writing without a lease).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;
use tandem_core::volume::LegState;

use super::disk::BLOCK;
use super::history::block_bytes;
use super::world::{Ev, World, FAILOVER_MS};
use super::Rule;

/// Requests the client keeps in flight at most.
const QUEUE_DEPTH: usize = 8;

#[derive(Debug, Default)]
pub struct Client {
    pub next_id: u64,
    pub target: Option<usize>,
    /// Request id → node it went to.
    pub outstanding: BTreeMap<u64, usize>,
    pub acked_after_heal: u64,
    pub stopped: bool,
}

/// The end of a fault.
#[derive(Clone, Copy, Debug)]
pub enum Heal {
    Restart(usize),
    Link(usize, usize),
    /// A cut connection's ends notice (TCP gives up on it).
    Break(u64),
    Delay(usize, usize),
    Control(usize),
    Disk(usize),
    /// The end of the fault phase: everything heals.
    All,
}

impl World {
    pub fn client_resolve(&mut self) {
        self.client.target = self.control.primary.map(|p| (p - 1) as usize);
        if !self.client.stopped {
            let delay = self.rng.gen_range(300..=2500);
            self.at(delay, Ev::ClientResolve);
        }
    }

    pub fn client_issue(&mut self) {
        if let Some(healed) = self.healed_at {
            let quiet = self.now >= healed + 3000 && self.client.acked_after_heal > 0;
            if quiet || self.now >= healed + self.opts.settle_bound_ms / 2 {
                self.client.stopped = true;
                return;
            }
        }
        let delay = self.rng.gen_range(1..=15);
        self.at(delay, Ev::ClientIssue);
        let Some(target) = self.client.target else {
            return;
        };
        let serving = self.nodes[target].up && self.nodes[target].primary.is_some();
        if !serving {
            self.client.target = self.control.primary.map(|p| (p - 1) as usize);
            return;
        }
        if self.client.outstanding.len() >= QUEUE_DEPTH {
            return;
        }
        self.client.next_id += 1;
        let id = self.client.next_id;
        let roll = self.rng.gen_range(0..100);
        if roll < 25 {
            return self.client_read(target);
        }
        self.client_request(target, id, roll);
    }

    fn client_request(&mut self, target: usize, id: u64, roll: u32) {
        let blocks = self.size / BLOCK;
        let count = self.rng.gen_range(1..=8u64).min(blocks);
        let first = self.rng.gen_range(0..=blocks - count);
        let fua = self.rng.gen_range(0..10) == 0;
        let (offset, len) = (first * BLOCK, count * BLOCK);
        let now = self.now;
        let Some(primary) = self.nodes[target].primary.as_mut() else {
            return;
        };
        let (result, what) = if roll < 80 {
            let data: Vec<u8> = (first..first + count)
                .flat_map(|b| block_bytes(id, b))
                .collect();
            (
                primary.core.client_write(now, id, offset, data, fua),
                "write",
            )
        } else if roll < 90 {
            (primary.core.client_flush(now, id), "flush")
        } else if roll < 95 {
            (primary.core.client_trim(now, id, offset, len, fua), "trim")
        } else {
            (
                primary.core.client_write_zeroes(now, id, offset, len, fua),
                "zeroes",
            )
        };
        if let Err(error) = result {
            return self.log(format!(
                "client {what} {id} refused by n{}: {error}",
                target + 1
            ));
        }
        primary.requests.push(id);
        match what {
            "flush" => self.history.issue_flush(id),
            "write" => self.history.issue(id, first, count, true, fua),
            _ => self.history.issue(id, first, count, false, fua),
        }
        self.client.outstanding.insert(id, target);
        let fua = if fua { " fua" } else { "" };
        self.log(format!(
            "client {what}{fua} {id} blocks {first}+{count} -> n{}",
            target + 1
        ));
        self.primary_actions(target);
    }

    /// Reads go straight to the primary's leg, as the daemon's frontends do; checked only
    /// when the node is the committed primary of the current epoch.
    fn client_read(&mut self, target: usize) {
        let node = &self.nodes[target];
        if node.primary_epoch() != Some(self.control.epoch) {
            return;
        }
        let blocks = self.size / BLOCK;
        let count = self.rng.gen_range(1..=8u64).min(blocks);
        let first = self.rng.gen_range(0..=blocks - count);
        self.report.reads_checked += 1;
        for block in first..first + count {
            let bytes = self.nodes[target].disk.read(block * BLOCK, BLOCK);
            if let Err(detail) = self.history.check_block(block, &bytes) {
                let epoch = self.control.epoch;
                return self.violate(
                    Rule::AckedWriteLost,
                    format!("client read from n{} (epoch {epoch}): {detail}", target + 1),
                );
            }
        }
    }

    /// The control plane's failover: once the primary is gone (down or cut off from it)
    /// for `FAILOVER_MS`, promote another reachable node (a takeover; `volume::promote`
    /// refuses legs that are not UpToDate).
    pub fn control_tick(&mut self) {
        self.at(100, Ev::ControlTick);
        let Some(primary) = self.control.primary else {
            return;
        };
        let p = (primary - 1) as usize;
        if self.nodes[p].up && self.reachable[p] {
            self.primary_gone_since = None;
            return;
        }
        let since = *self.primary_gone_since.get_or_insert(self.now);
        if self.now < since + FAILOVER_MS {
            return;
        }
        let mut candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| n != p && self.nodes[n].up && self.reachable[n])
            .collect();
        candidates.shuffle(&mut self.rng);
        for node in candidates {
            if self.promote(node, false, true, "failover") {
                return;
            }
        }
        let stale = since + 5000 < self.now && self.healed_at.is_none();
        if stale && self.rng.gen_range(0..50) == 0 {
            self.forced_promotion(p);
        }
    }

    /// The operator's mistake: no UpToDate leg is reachable, so force a stale one.
    fn forced_promotion(&mut self, primary: usize) {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| n != primary && self.nodes[n].up && self.reachable[n])
            .collect();
        if let Some(&node) = candidates.choose(&mut self.rng) {
            self.promote(node, true, true, "operator --force");
        }
    }

    pub fn fault(&mut self) {
        if self.now >= self.fault_end {
            return self.heal(Heal::All);
        }
        let delay = self.rng.gen_range(150..=1200);
        self.at(delay, Ev::Fault);
        let count = self.nodes.len();
        let node = self.rng.gen_range(0..count);
        let other = (node + self.rng.gen_range(1..count)) % count;
        let heal_after = self.rng.gen_range(100..=3000);
        match self.rng.gen_range(0..100) {
            0..=11 => self.crash(node, false, heal_after),
            12..=21 => self.crash(node, true, heal_after),
            22..=23 => {
                for n in 0..count {
                    self.crash(n, true, heal_after);
                }
            }
            24..=37 => self.cut_link(node, other, true, heal_after),
            38..=47 => self.cut_link(node, other, false, heal_after),
            48..=55 => {
                self.delay[node][other] = self.rng.gen_range(20..=300);
                self.log(format!("fault: link n{}->n{} slow", node + 1, other + 1));
                self.at(heal_after, Ev::Heal(Heal::Delay(node, other)));
            }
            56..=67 => {
                self.reachable[node] = false;
                self.report.control_partitions += 1;
                self.log(format!(
                    "fault: n{} cut off from the control plane",
                    node + 1
                ));
                self.at(heal_after + 500, Ev::Heal(Heal::Control(node)));
            }
            68..=87 => self.disk_fault(node, heal_after),
            88..=96 => self.operator_promote(node),
            _ => self.operator_force(node),
        }
    }

    fn disk_fault(&mut self, node: usize, heal_after: u64) {
        self.report.disk_faults += 1;
        let faults = &mut self.nodes[node].faults;
        let what = match self.rng.gen_range(0..3) {
            0 => {
                faults.error_percent = self.rng.gen_range(5..=40);
                format!("{}% write errors", faults.error_percent)
            }
            1 => {
                faults.full = true;
                "full".to_string()
            }
            _ => {
                faults.slow = true;
                "slow".to_string()
            }
        };
        self.log(format!("fault: n{}'s disk {what}", node + 1));
        self.at(heal_after, Ev::Heal(Heal::Disk(node)));
    }

    /// The operator promotes a node without force: refused unless its leg is UpToDate and
    /// the primary is gone.
    fn operator_promote(&mut self, node: usize) {
        if self.control.primary == Some((node + 1) as u64) {
            return;
        }
        let state = self.control.leg(node as u32).map(|l| l.state);
        let gone = self
            .primary_gone_since
            .is_some_and(|since| self.now >= since + FAILOVER_MS);
        let why = format!("operator, leg {}", state.map_or("?", LegState::as_str));
        self.promote(node, false, gone, &why);
    }

    /// The operator forces `node` primary while the primary is down or cut off: a knowing
    /// break of the rules (recorded as forced, its losses excused), whatever its leg holds.
    fn operator_force(&mut self, node: usize) {
        let Some(primary) = self.control.primary else {
            return;
        };
        let p = (primary - 1) as usize;
        let gone = !self.nodes[p].up || !self.reachable[p];
        let stale = self.control.leg(node as u32).map(|l| l.state) != Some(LegState::UpToDate);
        if p != node && gone && stale && self.nodes[node].up && self.reachable[node] {
            self.promote(node, true, true, "operator --force");
        }
    }

    fn cut_link(&mut self, a: usize, b: usize, both: bool, heal_after: u64) {
        self.report.link_cuts += 1;
        self.cut[a][b] = true;
        if both {
            self.cut[b][a] = true;
        }
        let way = if both { "<->" } else { "->" };
        self.log(format!("fault: link n{}{way}n{} cut", a + 1, b + 1));
        let broken: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.open
                    && ((c.primary == a && c.secondary == b)
                        || (c.primary == b && c.secondary == a))
            })
            .map(|(&id, _)| id)
            .collect();
        for conn in broken {
            let notice = self.rng.gen_range(50..=1000);
            self.at(notice, Ev::Heal(Heal::Break(conn)));
        }
        self.at(heal_after, Ev::Heal(Heal::Link(a, b)));
    }

    /// A process crash (`power: false`) or a power loss of `node`, restarted later.
    pub fn crash(&mut self, node: usize, power: bool, heal_after: u64) {
        if !self.nodes[node].up {
            return;
        }
        let me = self.nodes[node].id();
        let served = self.nodes[node].known.as_ref().map_or(0, |k| k.epoch);
        self.drop_primary(node);
        self.end_session(node, "the node died");
        let in_flight = self.nodes[node].stop();
        if power {
            self.report.power_losses += 1;
            let keep = self.rng.gen_range(0..=100);
            let (kept, lost) = self.nodes[node].disk.power_loss(&mut self.rng, keep);
            self.log(format!("fault: n{me} POWER LOSS ({kept} cached blocks kept, {lost} lost, {} ops in flight lost)", in_flight.len()));
            if self.control.primary == Some(me) {
                // The volume continues from this leg (restart in place) or from a peer that
                // has every acknowledged write: either way only flushed ones are promised.
                self.history.power_loss();
            } else {
                self.lost_power[node] = true;
                // The daemon's marker (boot id and served epoch) tells the restarted node.
                let meta = &mut self.nodes[node].meta;
                meta.cache_lost_in = Some(meta.cache_lost_in.map_or(served, |e| e.min(served)));
            }
        } else {
            self.report.crashes += 1;
            for op in &in_flight {
                if self.rng.gen_bool(0.5) {
                    self.maybe_land(node, op);
                }
            }
            self.log(format!(
                "fault: n{me} process crash ({} ops in flight)",
                in_flight.len()
            ));
        }
        self.at(heal_after, Ev::Heal(Heal::Restart(node)));
    }

    pub fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::Restart(node) => {
                if !self.nodes[node].up {
                    self.nodes[node].up = true;
                    self.log(format!("n{} restarts", node + 1));
                    self.at(5, Ev::Learn { node });
                }
            }
            Heal::Break(conn) => self.close_conn(conn, "the cut broke it"),
            Heal::Link(a, b) => {
                self.cut[a][b] = false;
                self.cut[b][a] = false;
            }
            Heal::Delay(a, b) => self.delay[a][b] = 0,
            Heal::Control(node) => {
                if !self.reachable[node] {
                    self.reachable[node] = true;
                    self.log(format!("n{} reaches the control plane again", node + 1));
                    self.at(5, Ev::Learn { node });
                }
            }
            Heal::Disk(node) => self.nodes[node].faults = Default::default(),
            Heal::All => self.heal_all(),
        }
    }

    fn heal_all(&mut self) {
        self.log("heal: every fault ends".into());
        self.healed_at = Some(self.now);
        for node in 0..self.nodes.len() {
            for other in 0..self.nodes.len() {
                self.heal(Heal::Link(node, other));
                self.heal(Heal::Delay(node, other));
            }
            self.heal(Heal::Disk(node));
            self.heal(Heal::Control(node));
            self.heal(Heal::Restart(node));
        }
    }
}
