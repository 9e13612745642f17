//! How a simulated node drives the real replication core: the shim of the data-path world.
//!
//! Why it mirrors the daemon: the point is to test the core as the daemon uses it. Like
//! `platform-linux/src/volumes.rs`, a node follows the committed state it has learned: while
//! it is the primary of the current epoch it runs a `Primary` (new for every epoch, with
//! `track_from_now` for the legs the takeover outdated, and its whole leg marked out of sync
//! for UpToDate peers after a crash as primary — the activity log's hot extents, widened to
//! the whole leg); otherwise it accepts replication streams, each a new `Secondary` session
//! (as `repl_secondary.rs`), reporting its whole leg crash-suspect after a crash as primary.
//! A node never runs a new role while disk operations of its previous one are in flight (the
//! daemon's leg lock). Frames travel on ordered connections that a cut breaks.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use tandem_core::replication::{
    wire, DiskKind, DiskOp, Ident, Message, PeerLeg, Primary, PrimaryAction, Secondary,
    SecondaryAction, Suspect,
};
use tandem_core::volume::{LegId, LegState, VolumeInfo};
use tandem_core::{ClusterId, NodeId};

use super::disk::{FakeDisk, FlushSnapshot};
use super::world::{Ev, World};
use super::Rule;

/// Bitmap grain, as the daemon's.
const GRAIN: u64 = 4096;
/// Primary tick period (the daemon's `TICK`).
const TICK_MS: u64 = 50;
/// How long a Hello of a newer epoch waits for the node to learn it (`EPOCH_CATCH_UP`).
const CATCH_UP_MS: u64 = 3000;

/// What a node's metadata remembers across crashes (the superblock).
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// It ran as primary and did not stop cleanly (`primary_open`).
    pub primary_open: bool,
    /// The last epoch it ran as primary in.
    pub last_primary_epoch: u64,
    /// It lost power while its leg served this epoch as a secondary, and no primary has
    /// heard its report since (`Secondary::with_cache_lost_in`; the daemon's cache marker).
    pub cache_lost_in: Option<u64>,
}

/// Injected disk behaviour.
#[derive(Clone, Debug, Default)]
pub struct DiskFaults {
    pub error_percent: u32,
    pub full: bool,
    pub slow: bool,
}

pub struct PrimaryRole {
    pub core: Primary,
    pub id: u64,
    pub epoch: u64,
    reported: BTreeMap<LegId, LegState>,
    pub links: BTreeMap<LegId, u64>,
    /// Client request ids this primary holds.
    pub requests: Vec<u64>,
}

pub struct Session {
    pub core: Secondary,
    pub id: u64,
    pub conn: u64,
}

/// Who submitted a disk operation, and whose write it is (for rule 2).
#[derive(Clone, Debug)]
struct PendingDisk {
    role: u64,
    op: DiskOp,
    snapshot: Option<FlushSnapshot>,
    writer: Option<(u64, NodeId)>,
}

pub struct Node {
    pub index: usize,
    pub leg: LegId,
    pub up: bool,
    pub incarnation: u64,
    pub disk: FakeDisk,
    pub faults: DiskFaults,
    pub known: Option<VolumeInfo>,
    pub meta: Meta,
    pub primary: Option<PrimaryRole>,
    pub session: Option<Session>,
    /// What ended secondary sessions left unconfirmed (`Secondary::unconfirmed`), reported to
    /// the next primary, or marked by this node if it becomes the primary. In memory, as in
    /// the daemon: a crash loses it.
    pub carried: Suspect,
    pending: BTreeMap<u64, PendingDisk>,
    next_key: u64,
}

impl Node {
    pub fn new(index: usize, size: u64) -> Node {
        Node {
            index,
            leg: index as LegId,
            up: true,
            incarnation: 1,
            disk: FakeDisk::new(size),
            faults: DiskFaults::default(),
            known: None,
            meta: Meta::default(),
            primary: None,
            session: None,
            carried: Suspect::none(),
            pending: BTreeMap::new(),
            next_key: 1,
        }
    }

    pub fn id(&self) -> NodeId {
        (self.index + 1) as NodeId
    }

    /// The epoch this node serves as primary, if any.
    pub fn primary_epoch(&self) -> Option<u64> {
        self.primary.as_ref().map(|p| p.epoch)
    }

    /// The process died: roles gone, in-flight operations dropped (the world decides what
    /// of them reached the disk).
    pub fn stop(&mut self) -> Vec<DiskOp> {
        self.up = false;
        self.incarnation += 1;
        self.primary = None;
        self.session = None;
        self.carried = Suspect::none();
        self.known = None;
        let pending = std::mem::take(&mut self.pending);
        pending.into_values().map(|p| p.op).collect()
    }
}

/// One replication connection from a primary to a secondary node.
pub struct Conn {
    pub primary: usize,
    pub secondary: usize,
    pub leg: LegId,
    pub role: u64,
    pub open: bool,
    /// Frames arrived at the secondary, not handled yet (a Hello may wait for its epoch).
    inbox: VecDeque<Vec<u8>>,
    hold_since: Option<u64>,
    /// Arrival time of the last frame each way (connections are ordered).
    last_to_secondary: u64,
    last_to_primary: u64,
}

fn ident(node: NodeId) -> Ident {
    Ident {
        cluster: ClusterId([7; 16]),
        volume: 1,
        node,
    }
}

impl World {
    /// Brings node `node`'s roles in line with the committed state it knows.
    pub fn reconcile(&mut self, node: usize) {
        let Some(known) = self.nodes[node].known.clone() else {
            return;
        };
        let me = self.nodes[node].id();
        if known.primary != Some(me) {
            if self.nodes[node].primary.is_some() {
                self.log(format!("n{me} no longer primary (epoch {})", known.epoch));
                self.drop_primary(node);
            }
            let mine = known.leg_of(me).map(|l| l.state);
            if mine == Some(LegState::UpToDate) && known.primary.is_some() {
                self.nodes[node].meta.primary_open = false;
            }
            if let Some(session) = self.nodes[node].session.as_mut() {
                session.core.set_epoch(known.epoch);
                self.secondary_actions(node);
            }
            return;
        }
        if self.nodes[node].primary_epoch() == Some(known.epoch) {
            let again = std::mem::take(&mut self.recommitted[node]);
            if let Some(role) = self.nodes[node].primary.as_mut() {
                for leg in again {
                    role.reported.remove(&leg);
                }
            }
            self.report_leg_states(node, &known);
            return;
        }
        self.drop_primary(node);
        self.end_session(node, "this node became primary");
        if !self.nodes[node].pending.is_empty() {
            return; // the leg lock: retried when the last old operation completes
        }
        self.start_primary(node, &known);
    }

    fn start_primary(&mut self, node: usize, known: &VolumeInfo) {
        let me = self.nodes[node].id();
        let peers: Vec<PeerLeg> = known
            .legs
            .iter()
            .filter(|l| l.id != self.nodes[node].leg)
            .map(|l| PeerLeg {
                leg: l.id,
                node: l.nodes.first().copied().unwrap_or(0),
                state: l.state,
            })
            .collect();
        let created = Primary::new(
            ident(me),
            self.nodes[node].leg,
            self.size,
            known.epoch,
            peers.clone(),
            GRAIN,
        );
        let mut core = match created {
            Ok(core) => core,
            Err(error) => return self.violate(Rule::Harness, format!("Primary::new: {error}")),
        };
        self.prepare_primary(node, &mut core, known, &peers);
        let id = self.next_role;
        self.next_role += 1;
        self.nodes[node].meta.primary_open = true;
        self.nodes[node].meta.last_primary_epoch = known.epoch;
        let reported = known.legs.iter().map(|l| (l.id, l.state)).collect();
        self.nodes[node].primary = Some(PrimaryRole {
            core,
            id,
            epoch: known.epoch,
            reported,
            links: BTreeMap::new(),
            requests: Vec::new(),
        });
        self.log(format!(
            "n{me} starts as primary in epoch {} (role {id})",
            known.epoch
        ));
        self.primary_actions(node);
        for peer in peers {
            self.at(
                1,
                Ev::Dial {
                    node,
                    role: id,
                    leg: peer.leg,
                },
            );
        }
        self.at(TICK_MS, Ev::Tick { node, role: id });
    }

    /// What the daemon does before the first request of a new primary (`prepare` and
    /// `BitmapKeeper::open`): track the legs its takeover outdated from now, repair the
    /// whole leg onto the UpToDate peers after a crash here as primary, and what this node's
    /// secondary sessions left unconfirmed (`repl_secondary::Carried`).
    fn prepare_primary(
        &mut self,
        node: usize,
        core: &mut Primary,
        known: &VolumeInfo,
        peers: &[PeerLeg],
    ) {
        let meta = self.nodes[node].meta.clone();
        if meta.last_primary_epoch < known.epoch {
            for &leg in &known.takeover_outdated {
                if let Err(error) = core.track_from_now(leg) {
                    self.violate(Rule::Harness, format!("track_from_now: {error}"));
                }
            }
        }
        let carried = match std::mem::take(&mut self.nodes[node].carried) {
            Suspect::Everything => vec![(0, self.size)],
            Suspect::Ranges(ranges) => ranges,
        };
        // After a crash here as primary the whole leg (the daemon: its hot extents); after a
        // power loss as a secondary the whole leg too (what its cache lost, its peers have);
        // after serving as a secondary, what the old primary never confirmed.
        let repair = if meta.primary_open || meta.cache_lost_in.is_some() {
            vec![(0, self.size)]
        } else {
            carried
        };
        self.nodes[node].meta.cache_lost_in = None;
        if !repair.is_empty() {
            for peer in peers.iter().filter(|p| p.state == LegState::UpToDate) {
                if let Err(error) = core.mark_out_of_sync(peer.leg, &repair) {
                    self.violate(Rule::Harness, format!("mark_out_of_sync: {error}"));
                }
            }
        }
    }

    /// Committed leg states the engine has not been told yet (`report_leg_states`).
    fn report_leg_states(&mut self, node: usize, known: &VolumeInfo) {
        let Some(role) = self.nodes[node].primary.as_mut() else {
            return;
        };
        let mut errors = Vec::new();
        for leg in &known.legs {
            if role.reported.get(&leg.id) == Some(&leg.state) {
                continue;
            }
            role.reported.insert(leg.id, leg.state);
            if let Err(error) = role
                .core
                .leg_state_committed(leg.id, leg.state, known.epoch)
            {
                errors.push(error.to_string());
            }
        }
        for error in errors {
            self.log(format!("n{} leg_state_committed: {error}", node + 1));
        }
        self.primary_actions(node);
    }

    /// The primary role ends (demoted, or a newer epoch): its requests are never answered.
    pub fn drop_primary(&mut self, node: usize) {
        let Some(role) = self.nodes[node].primary.take() else {
            return;
        };
        for request in role.requests {
            self.history.abandon(request);
            self.client.outstanding.remove(&request);
        }
        for conn in role.links.into_values() {
            self.close_conn(conn, "the primary role ended");
        }
    }

    pub fn end_session(&mut self, node: usize, why: &str) {
        if let Some(session) = self.nodes[node].session.take() {
            let conn = session.conn;
            self.retire_session(node, session);
            self.close_conn(conn, why);
        }
    }

    /// A secondary session ends: what it applied unconfirmed is carried to the next one.
    fn retire_session(&mut self, node: usize, mut session: Session) {
        self.nodes[node].carried = session.core.unconfirmed();
        if session.core.report_heard() {
            self.nodes[node].meta.cache_lost_in = None;
        }
    }

    /// Closes a connection; each end that is still attached learns it after a moment.
    pub fn close_conn(&mut self, id: u64, why: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.open {
            return;
        }
        conn.open = false;
        let (p, s) = (conn.primary, conn.secondary);
        self.log(format!("conn {id} n{}->n{} closed: {why}", p + 1, s + 1));
        let (a, b) = (self.rng.gen_range(1..=20), self.rng.gen_range(1..=20));
        self.at(
            a,
            Ev::Closed {
                conn: id,
                to_secondary: false,
            },
        );
        self.at(
            b,
            Ev::Closed {
                conn: id,
                to_secondary: true,
            },
        );
    }

    pub fn closed(&mut self, id: u64, to_secondary: bool) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (p, s, leg, role) = (conn.primary, conn.secondary, conn.leg, conn.role);
        if to_secondary {
            if self.nodes[s].session.as_ref().is_some_and(|x| x.conn == id) {
                if let Some(mut session) = self.nodes[s].session.take() {
                    session.core.link_lost();
                    self.retire_session(s, session);
                }
            }
            return;
        }
        let Some(primary) = self.nodes[p].primary.as_mut() else {
            return;
        };
        if primary.id != role || primary.links.get(&leg) != Some(&id) {
            return;
        }
        primary.links.remove(&leg);
        let result = primary.core.peer_lost(leg);
        self.note_error(p, result.err());
        self.primary_actions(p);
        let delay = self.rng.gen_range(50..=500);
        self.at(delay, Ev::Dial { node: p, role, leg });
    }

    /// The primary dials a peer leg's node (the daemon's dialer, with its retries).
    pub fn dial(&mut self, node: usize, role: u64, leg: LegId) {
        let Some(primary) = self.nodes[node].primary.as_ref() else {
            return;
        };
        if primary.id != role || primary.links.contains_key(&leg) {
            return;
        }
        let Some(target) = self.leg_owner(leg) else {
            return;
        };
        let t = &self.nodes[target];
        let reachable = t.up && !self.cut[node][target] && !self.cut[target][node];
        let free =
            t.primary.is_none() && t.session.is_none() && t.pending.is_empty() && t.known.is_some();
        if !reachable || !free {
            let delay = self.rng.gen_range(100..=500);
            self.at(delay, Ev::Dial { node, role, leg });
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                primary: node,
                secondary: target,
                leg,
                role,
                open: true,
                inbox: VecDeque::new(),
                hold_since: None,
                last_to_secondary: 0,
                last_to_primary: 0,
            },
        );
        self.open_session(target, id);
        self.log(format!(
            "conn {id} n{}->n{} (leg {leg}) open",
            node + 1,
            target + 1
        ));
        if let Some(primary) = self.nodes[node].primary.as_mut() {
            primary.links.insert(leg, id);
            let result = primary.core.peer_connected(self.now, leg);
            self.note_error(node, result.err());
        }
        self.primary_actions(node);
    }

    fn open_session(&mut self, target: usize, conn: u64) {
        if let Some(old) = self.nodes[target].session.take() {
            let old_conn = old.conn;
            self.retire_session(target, old);
            self.close_conn(old_conn, "a new primary connection replaces it");
        }
        let t = &self.nodes[target];
        let epoch = t.known.as_ref().map_or(0, |k| k.epoch);
        let core = Secondary::new(ident(t.id()), t.leg, self.size, epoch);
        let own = if t.meta.primary_open {
            Suspect::Everything
        } else {
            Suspect::none()
        };
        let mut core = core.with_suspect(own.union(t.carried.clone()));
        if let Some(epoch) = t.meta.cache_lost_in {
            core = core.with_cache_lost_in(epoch);
        }
        let id = self.next_role;
        self.next_role += 1;
        self.nodes[target].session = Some(Session { core, id, conn });
    }

    /// Sends a frame on a connection: ordered, delayed, lost with the connection if cut.
    fn send_frame(&mut self, id: u64, to_secondary: bool, bytes: Vec<u8>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if !conn.open {
            return;
        }
        let (from, to) = if to_secondary {
            (conn.primary, conn.secondary)
        } else {
            (conn.secondary, conn.primary)
        };
        if self.cut[from][to] {
            return self.close_conn(id, "the link is cut");
        }
        self.report.frames += 1;
        let base = self.rng.gen_range(1..=4) + self.delay[from][to];
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let last = if to_secondary {
            &mut conn.last_to_secondary
        } else {
            &mut conn.last_to_primary
        };
        let arrive = (self.now + base).max(*last);
        *last = arrive;
        let delay = arrive - self.now;
        self.at(
            delay,
            Ev::Deliver {
                conn: id,
                to_secondary,
                bytes,
            },
        );
    }

    pub fn deliver(&mut self, id: u64, to_secondary: bool, bytes: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.open {
            return;
        }
        if to_secondary {
            conn.inbox.push_back(bytes);
            return self.pump_inbox(id);
        }
        let (p, leg, role) = (conn.primary, conn.leg, conn.role);
        let Some(primary) = self.nodes[p].primary.as_mut() else {
            return;
        };
        if primary.id != role || primary.links.get(&leg) != Some(&id) {
            return;
        }
        primary.core.set_time(self.now);
        let result = primary.core.peer_message(leg, &bytes);
        self.note_error(p, result.err());
        self.primary_actions(p);
    }

    /// Hands arrived frames to the session in order; a Hello of an epoch this node has not
    /// learned yet waits for it (up to `CATCH_UP_MS`), and so does everything behind it.
    pub fn pump_inbox(&mut self, id: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let s = conn.secondary;
            let Some(front) = conn.inbox.front() else {
                return;
            };
            let known = self.nodes[s].known.as_ref().map_or(0, |k| k.epoch);
            let wanted = match wire::decode(front) {
                Ok(Message::Hello { epoch, .. }) => epoch,
                _ => 0,
            };
            if wanted > known {
                let since = *conn.hold_since.get_or_insert(self.now);
                if self.now < since + CATCH_UP_MS {
                    self.at(20, Ev::PumpInbox { conn: id });
                    return;
                }
            }
            conn.hold_since = None;
            let Some(bytes) = conn.inbox.pop_front() else {
                return;
            };
            let Some(session) = self.nodes[s].session.as_mut().filter(|x| x.conn == id) else {
                return;
            };
            if wanted > 0 && wanted <= known {
                session.core.set_epoch(known);
            }
            if let Err(error) = session.core.on_message(self.now, &bytes) {
                self.log(format!("n{} secondary: {error}", s + 1));
            }
            self.secondary_actions(s);
        }
    }

    pub fn tick(&mut self, node: usize, role: u64) {
        let Some(primary) = self.nodes[node].primary.as_mut() else {
            return;
        };
        if primary.id != role {
            return;
        }
        primary.core.tick(self.now);
        self.primary_actions(node);
        self.at(TICK_MS, Ev::Tick { node, role });
    }

    fn note_error(&mut self, node: usize, error: Option<tandem_core::replication::ReplError>) {
        if let Some(error) = error {
            self.log(format!("n{} primary: {error}", node + 1));
        }
    }

    /// Carries out a primary's actions until it has none.
    pub fn primary_actions(&mut self, node: usize) {
        loop {
            let Some(primary) = self.nodes[node].primary.as_mut() else {
                return;
            };
            let actions = primary.core.take_actions();
            if actions.is_empty() {
                return;
            }
            let (role, epoch) = (primary.id, primary.epoch);
            for action in actions {
                self.primary_action(node, role, epoch, action);
            }
        }
    }

    fn primary_action(&mut self, node: usize, role: u64, epoch: u64, action: PrimaryAction) {
        let me = self.nodes[node].id();
        match action {
            PrimaryAction::Send { leg, bytes } => {
                let conn = self.nodes[node]
                    .primary
                    .as_ref()
                    .and_then(|p| p.links.get(&leg).copied());
                if let Some(conn) = conn {
                    self.send_frame(conn, true, bytes);
                }
            }
            PrimaryAction::Disk(op) => self.submit(node, role, op, Some((epoch, me))),
            PrimaryAction::Complete { req_id, ok } => self.completed(node, req_id, ok),
            PrimaryAction::ProposeLegState { leg, state, epoch } => {
                self.log(format!(
                    "n{me} proposes leg {leg} {} (epoch {epoch})",
                    state.as_str()
                ));
                if self.reachable[node] {
                    let delay = self.rng.gen_range(3..=40);
                    self.at(
                        delay,
                        Ev::Commit {
                            node,
                            leg,
                            state,
                            epoch,
                        },
                    );
                }
            }
            PrimaryAction::DropLink { leg, reason } => {
                let conn = self.nodes[node]
                    .primary
                    .as_mut()
                    .and_then(|p| p.links.remove(&leg));
                if let Some(conn) = conn {
                    self.close_conn(conn, &reason);
                }
                let delay = self.rng.gen_range(100..=500);
                self.at(delay, Ev::Dial { node, role, leg });
            }
            PrimaryAction::Note(text) => self.log(format!("n{me} primary: {text}")),
        }
    }

    fn completed(&mut self, node: usize, req_id: u64, ok: bool) {
        let mut epoch = 0;
        if let Some(primary) = self.nodes[node].primary.as_mut() {
            primary.requests.retain(|&r| r != req_id);
            epoch = primary.epoch;
        }
        // A primary deposed by a forced promotion may still acknowledge (the operator made
        // two writers knowingly): its acknowledgements promise nothing any more.
        let deposed = self.control.forced.iter().any(|f| f.epoch > epoch);
        if ok && deposed {
            self.log(format!(
                "n{} acknowledges request {req_id} after a forced promotion: excused",
                node + 1
            ));
            self.report.excused_acks += 1;
            self.history.complete(req_id, false);
            self.client.outstanding.remove(&req_id);
            return;
        }
        self.client.outstanding.remove(&req_id);
        let is_write = self.history.is_write(req_id);
        self.history.complete(req_id, ok);
        if ok && is_write && self.healed_at.is_some() {
            self.client.acked_after_heal += 1;
        }
        self.log(format!(
            "n{} completes request {req_id}: {}",
            node + 1,
            if ok { "ok" } else { "FAILED" }
        ));
    }

    /// Carries out a secondary session's actions until it has none.
    pub fn secondary_actions(&mut self, node: usize) {
        loop {
            let Some(session) = self.nodes[node].session.as_mut() else {
                return;
            };
            let actions = session.core.take_actions();
            if actions.is_empty() {
                return;
            }
            let (role, conn) = (session.id, session.conn);
            let writer = session
                .core
                .attached()
                .map(|(_, from)| (session.core.epoch(), from));
            for action in actions {
                match action {
                    SecondaryAction::Send(bytes) => self.send_frame(conn, false, bytes),
                    SecondaryAction::Disk(op) => self.submit(node, role, op, writer),
                    SecondaryAction::Drop { reason } => {
                        if let Some(session) = self.nodes[node].session.take() {
                            self.retire_session(node, session);
                        }
                        self.close_conn(conn, &reason);
                    }
                    SecondaryAction::Note(text) => {
                        self.log(format!("n{} secondary: {text}", node + 1))
                    }
                }
            }
        }
    }

    /// Submits a disk operation; it completes after the disk's delay.
    fn submit(&mut self, node: usize, role: u64, op: DiskOp, writer: Option<(u64, NodeId)>) {
        self.report.disk_ops += 1;
        let n = &mut self.nodes[node];
        let snapshot = matches!(op.kind, DiskKind::Flush).then(|| n.disk.flush_snapshot());
        let key = n.next_key;
        n.next_key += 1;
        let incarnation = n.incarnation;
        let slow = n.faults.slow;
        n.pending.insert(
            key,
            PendingDisk {
                role,
                op,
                snapshot,
                writer,
            },
        );
        let delay = if slow {
            self.rng.gen_range(30..=400)
        } else {
            self.rng.gen_range(0..=3)
        };
        self.at(
            delay,
            Ev::DiskDone {
                node,
                incarnation,
                key,
            },
        );
    }

    /// A disk operation completes: its effect on the disk, then its report to the role
    /// that submitted it (if that role still exists).
    pub fn disk_done(&mut self, node: usize, incarnation: u64, key: u64) {
        if self.nodes[node].incarnation != incarnation {
            return;
        }
        let Some(pending) = self.nodes[node].pending.remove(&key) else {
            return;
        };
        let (ok, data) = self.apply(node, &pending);
        let id = pending.op.id;
        let what = describe(&pending.op.kind);
        let ok_text = if ok { "ok" } else { "FAILED" };
        self.log(format!(
            "n{} disk {id} (role {}) {what}: {ok_text}",
            node + 1,
            pending.role
        ));
        let n = &mut self.nodes[node];
        if let Some(primary) = n.primary.as_mut().filter(|p| p.id == pending.role) {
            primary.core.set_time(self.now);
            let result = match data {
                Some(data) => primary.core.disk_read_done(id, data),
                None => primary.core.disk_done(id, ok),
            };
            self.note_error(node, result.err());
            self.primary_actions(node);
        } else if let Some(session) = n.session.as_mut().filter(|s| s.id == pending.role) {
            let result = match data {
                Some(data) => session.core.disk_read_done(id, data),
                None => session.core.disk_done(id, ok),
            };
            if let Err(error) = result {
                self.log(format!("n{} secondary: {error}", node + 1));
            }
            self.secondary_actions(node);
        }
        let n = &self.nodes[node];
        let awaited = n.known.as_ref().is_some_and(|k| k.primary == Some(n.id()));
        if awaited && n.pending.is_empty() && n.primary.is_none() {
            self.reconcile(node);
        }
    }

    /// What the operation does to the disk: `(ok, bytes read)`.
    fn apply(&mut self, node: usize, pending: &PendingDisk) -> (bool, Option<Vec<u8>>) {
        let primary_leg = self.nodes[node].primary.is_some();
        let inject = !primary_leg || self.opts.primary_disk_errors;
        let fail = inject && self.rng.gen_range(0..100) < self.nodes[node].faults.error_percent;
        let n = &mut self.nodes[node];
        let range = match &pending.op.kind {
            DiskKind::Read { offset, len } => return (true, Some(n.disk.read(*offset, *len))),
            DiskKind::Flush => {
                if fail {
                    return (false, None);
                }
                if let Some(snapshot) = &pending.snapshot {
                    n.disk.flush_done(snapshot);
                }
                return (true, None);
            }
            DiskKind::Write { offset, data } => (*offset, data.len() as u64),
            DiskKind::Trim { offset, len } | DiskKind::WriteZeroes { offset, len } => {
                (*offset, *len)
            }
        };
        let full = inject && n.faults.full && n.disk.needs_allocation(range.0, range.1);
        if fail || full {
            return (false, None);
        }
        match &pending.op.kind {
            DiskKind::Write { offset, data } => n.disk.write(*offset, data),
            _ => n.disk.zero(range.0, range.1),
        }
        if let Some((epoch, writer)) = pending.writer {
            self.landed(node, epoch, writer);
        }
        (true, None)
    }

    /// A write in flight when the process died may still reach the disk.
    pub fn maybe_land(&mut self, node: usize, op: &DiskOp) {
        let n = &mut self.nodes[node];
        match &op.kind {
            DiskKind::Write { offset, data } => n.disk.write(*offset, data),
            DiskKind::Trim { offset, len } | DiskKind::WriteZeroes { offset, len } => {
                n.disk.zero(*offset, *len)
            }
            _ => {}
        }
    }
}

/// A disk operation in a trace line: kind, first block and length in blocks.
fn describe(kind: &DiskKind) -> String {
    let blocks = |offset: u64, len: u64| format!("{}+{}", offset / 4096, len.div_ceil(4096));
    match kind {
        DiskKind::Write { offset, data } => format!("write {}", blocks(*offset, data.len() as u64)),
        DiskKind::Read { offset, len } => format!("read {}", blocks(*offset, *len)),
        DiskKind::Flush => "flush".into(),
        DiskKind::Trim { offset, len } => format!("trim {}", blocks(*offset, *len)),
        DiskKind::WriteZeroes { offset, len } => format!("zeroes {}", blocks(*offset, *len)),
    }
}
