//! The volumes this node hosts, following the committed state: while this node is a volume's
//! primary (in a given epoch) it runs the primary engine and the NBD frontend; while it holds
//! a leg of a volume that another node writes, it accepts that primary's replication stream.
//!
//! The daemon calls [`VolumeHost::reconcile`] after every applied change. This module decides
//! nothing about the cluster, it only follows the committed state (the core decides, shims
//! obey). One lock per volume makes sure this node never writes a leg as primary and as
//! secondary at once: an old role's task must have ended before the new one touches the leg.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_core::command::VolumeStatus;
use tandem_core::legmeta::Expectation;
use tandem_core::replication::{Ident, PeerLeg, Primary};
use tandem_core::volume::{LegId, LegState, VolumeId, VolumeInfo};
use tandem_core::{ClusterId, ClusterState, NodeId, StateChange};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::meta_store::{MetaLocation, MetaStore};
use crate::repl_primary::{self, EngineContext, EngineInput, PeerTarget, PrimarySetup, SyncBoard};
use crate::repl_secondary::{self, Carried, SessionSpec};
use crate::transport::{ByteStream, PeerAddress};

/// How long a clean daemon stop waits for its primaries to drain.
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A primary's peer legs: the core's view of each, the remote ones' dial targets, the local
/// ones' secondary engine specs.
type PeerLegs = (Vec<PeerLeg>, Vec<PeerTarget>, Vec<SessionSpec>);

/// A volume this node is primary of.
struct Hosted {
    epoch: u64,
    /// The leg the engine writes itself (the others it reaches are written as peers).
    my_leg: LegId,
    task: Option<JoinHandle<()>>,
    inputs: mpsc::Sender<EngineInput>,
    /// Leg states last reported to the engine, with the leg's commit count then.
    reported: BTreeMap<LegId, (LegState, u64)>,
    board: SyncBoard,
}

impl Drop for Hosted {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What the host needs from the daemon.
pub struct HostContext {
    pub me: NodeId,
    pub cluster: ClusterId,
    pub state_dir: PathBuf,
    pub tls: Arc<rustls::ClientConfig>,
    pub proposals: mpsc::Sender<StateChange>,
    /// The node lease, checked before every write.
    pub lease: Arc<crate::volume_io::LeaseGate>,
}

/// Primaries and secondaries of the volumes on this node.
pub struct VolumeHost {
    context: HostContext,
    hosted: BTreeMap<VolumeId, Hosted>,
    sessions: BTreeMap<VolumeId, JoinHandle<()>>,
    epochs: BTreeMap<VolumeId, watch::Sender<u64>>,
    /// One lock per leg: a dual-array primary writes two legs of one volume at once.
    leg_locks: BTreeMap<(VolumeId, LegId), Arc<Mutex<()>>>,
    /// Demoted primaries still draining (they hold their leg lock until done).
    draining: Vec<JoinHandle<()>>,
    /// (volume, epoch, leg) whose crash mark on a leg here was checked since it is UpToDate.
    marks_checked: std::collections::BTreeSet<(VolumeId, u64, LegId)>,
    /// What ended secondary sessions left unconfirmed, per volume.
    carried: BTreeMap<VolumeId, Carried>,
}

impl Drop for VolumeHost {
    fn drop(&mut self) {
        for task in self.sessions.values().chain(&self.draining) {
            task.abort();
        }
    }
}

impl VolumeHost {
    pub fn new(context: HostContext) -> VolumeHost {
        VolumeHost {
            context,
            hosted: BTreeMap::new(),
            sessions: BTreeMap::new(),
            epochs: BTreeMap::new(),
            leg_locks: BTreeMap::new(),
            draining: Vec::new(),
            marks_checked: Default::default(),
            carried: BTreeMap::new(),
        }
    }

    /// Where volume `name`'s NBD socket is while this node is primary.
    pub fn socket_path(state_dir: &Path, name: &str) -> PathBuf {
        state_dir.join(format!("nbd-{name}.sock"))
    }

    fn carried(&mut self, volume: VolumeId) -> Carried {
        self.carried.entry(volume).or_default().clone()
    }

    fn leg_lock(&mut self, volume: VolumeId, leg: LegId) -> Arc<Mutex<()>> {
        self.leg_locks.entry((volume, leg)).or_default().clone()
    }

    /// Starts, stops and informs primaries and secondaries to match `state`.
    pub fn reconcile(&mut self, state: &ClusterState) {
        self.clear_crash_marks(state);
        let me = self.context.me;
        for volume in state.volumes.values() {
            if volume.leg_of(me).is_some() {
                let sender = self
                    .epochs
                    .entry(volume.id)
                    .or_insert_with(|| watch::channel(volume.epoch).0);
                sender.send_if_modified(|epoch| {
                    std::mem::replace(epoch, volume.epoch) != volume.epoch
                });
            }
        }
        self.epochs.retain(|id, _| state.volumes.contains_key(id));
        self.sessions.retain(|id, session| {
            let keep = state.volumes.get(id).is_some_and(|v| v.primary != Some(me))
                && !session.is_finished();
            if !keep {
                session.abort();
            }
            keep
        });
        self.hosted.retain(|id, hosted| {
            let keep = state
                .volumes
                .get(id)
                .is_some_and(|v| v.primary == Some(me) && v.epoch == hosted.epoch);
            if !keep {
                tracing::info!(
                    "volume {id}: no longer primary here in epoch {}; stopped",
                    hosted.epoch
                );
            }
            keep
        });
        for volume in state.volumes.values().filter(|v| v.primary == Some(me)) {
            if !self.hosted.contains_key(&volume.id) {
                match self.start_primary(state, volume) {
                    Ok(hosted) => {
                        self.hosted.insert(volume.id, hosted);
                    }
                    Err(error) => {
                        tracing::error!("volume {}: cannot be primary: {error}", volume.name)
                    }
                }
            }
            if let Some(hosted) = self.hosted.get_mut(&volume.id) {
                report_leg_states(hosted, volume);
            }
        }
    }

    fn start_primary(
        &mut self,
        state: &ClusterState,
        volume: &VolumeInfo,
    ) -> Result<Hosted, String> {
        let me = self.context.me;
        let own = volume.own_leg(me).ok_or("this node reaches no leg of it")?;
        let my_leg = own.id;
        let (peers, targets, local) = self.peer_legs(state, volume, my_leg)?;
        let ident = Ident {
            cluster: self.context.cluster,
            volume: volume.id,
            node: me,
        };
        let primary = Primary::new(
            ident,
            my_leg,
            volume.size,
            volume.epoch,
            peers,
            u64::from(volume.granularity.bitmap_grain),
        )
        .map_err(|error| error.to_string())?;
        let board = SyncBoard::default();
        let context = EngineContext {
            cluster: self.context.cluster,
            me,
            volume: volume.id,
            tls: self.context.tls.clone(),
            proposals: self.context.proposals.clone(),
            board: board.clone(),
            lease: self.context.lease.clone(),
        };
        let setup = PrimarySetup {
            my_leg,
            takeover_legs: volume.takeover_outdated.clone(),
            leg_path: PathBuf::from(&own.path),
            meta: MetaLocation::for_leg(&self.context.state_dir, volume.id, own),
            size: volume.size,
            granularity: volume.granularity,
            peers: targets,
            local_peers: local,
            context,
            socket: Self::socket_path(&self.context.state_dir, &volume.name),
            images: self.context.state_dir.join("images"),
            name: volume.name.clone(),
            leg_lock: self.leg_lock(volume.id, my_leg),
            carried: self.carried(volume.id),
        };
        let (inputs, receiver) = repl_primary::engine_channel();
        let task = tokio::spawn(repl_primary::run_primary(
            setup,
            primary,
            inputs.clone(),
            receiver,
        ));
        let reported = volume
            .legs
            .iter()
            .map(|leg| (leg.id, (leg.state, leg.commits)))
            .collect();
        Ok(Hosted {
            epoch: volume.epoch,
            my_leg,
            task: Some(task),
            inputs,
            reported,
            board,
        })
    }

    /// The legs a primary writing `my_leg` replicates to: the core's view of each, the remote
    /// ones' dial targets, and the specs of the local ones' secondary engines.
    fn peer_legs(
        &mut self,
        state: &ClusterState,
        volume: &VolumeInfo,
        my_leg: LegId,
    ) -> Result<PeerLegs, String> {
        let me = self.context.me;
        let (mut peers, mut targets, mut local) = (Vec::new(), Vec::new(), Vec::new());
        for leg in volume.legs.iter().filter(|leg| leg.id != my_leg) {
            if leg.nodes.contains(&me) {
                // Another leg this node reaches (a dual array): written by a secondary engine
                // in this daemon, over an in-memory link.
                peers.push(PeerLeg {
                    leg: leg.id,
                    node: me,
                    state: leg.state,
                });
                local.push(self.session_spec(volume, leg, "this node (local leg)")?);
            } else if let Some((peer, target)) = remote_target(state, leg)? {
                peers.push(peer);
                targets.push(target);
            }
        }
        Ok((peers, targets, local))
    }

    /// A leg this node wrote as primary before a crash keeps `primary_open` (so its hot extents
    /// are reported as suspect) until the cluster commits it UpToDate again under another
    /// primary: then the resync is done and the mark is cleared. A shared leg's mark is in the
    /// leg itself: a leg the current primary reaches is left to that primary (it may be the
    /// leg it writes, whose mark is its own), which clears the marks of its other legs here.
    fn clear_crash_marks(&mut self, state: &ClusterState) {
        let me = self.context.me;
        for volume in state.volumes.values() {
            let Some(primary) = volume.primary else {
                continue;
            };
            let own = self.hosted.get(&volume.id).map(|hosted| hosted.my_leg);
            for leg in volume.legs_of(me) {
                let primarys_own = if primary == me {
                    own.is_none_or(|own| own == leg.id)
                } else {
                    leg.nodes.contains(&primary)
                };
                if leg.state != LegState::UpToDate || primarys_own {
                    continue;
                }
                if !self.marks_checked.insert((volume.id, volume.epoch, leg.id)) {
                    continue;
                }
                let location = MetaLocation::for_leg(&self.context.state_dir, volume.id, leg);
                clear_crash_mark(self.context.cluster, volume, leg.id, &location);
            }
        }
    }

    /// A clean stop of the daemon: every primary drains (in-flight requests complete on every
    /// leg), flushes and writes its bitmaps, so the next start trusts them. Bounded: a primary
    /// that cannot finish in time is left to the crash path (full resync of lagging peers).
    pub async fn shutdown(&mut self) {
        let mut tasks = Vec::new();
        for hosted in self.hosted.values_mut() {
            let _ = hosted.inputs.try_send(EngineInput::Stop);
            tasks.extend(hosted.task.take());
        }
        tasks.append(&mut self.draining);
        for task in tasks {
            if tokio::time::timeout(SHUTDOWN_LIMIT, task).await.is_err() {
                tracing::warn!("a volume did not stop within {SHUTDOWN_LIMIT:?}");
            }
        }
        self.hosted.clear();
    }

    /// Asks the primary engine of `volume` to start an online verify.
    pub fn start_verify(
        &self,
        volume: VolumeId,
        repair: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<String, String>>, String> {
        let hosted = self
            .hosted
            .get(&volume)
            .ok_or("this node is not serving the volume as primary (yet)")?;
        let (answer, receiver) = tokio::sync::oneshot::channel();
        hosted
            .inputs
            .try_send(EngineInput::Verify { repair, answer })
            .map_err(|_| "the volume's engine is busy or stopping; try again".to_string())?;
        Ok(receiver)
    }

    /// Adds what this node knows as primary (link, resync progress) to a volume listing.
    pub fn annotate(&self, volumes: &mut [VolumeStatus]) {
        for volume in volumes {
            let Some(hosted) = self.hosted.get(&volume.id) else {
                continue;
            };
            let Ok(board) = hosted.board.lock() else {
                continue;
            };
            for leg in &mut volume.legs {
                leg.sync = board.get(&leg.id).cloned();
            }
        }
    }

    /// What a secondary engine on this node's `leg` of `volume` needs, for a stream from
    /// `peer` (a remote primary, or this node's own primary engine for a dual array).
    fn session_spec(
        &mut self,
        volume: &VolumeInfo,
        leg: &tandem_core::volume::LegInfo,
        peer: &str,
    ) -> Result<SessionSpec, String> {
        let epoch = self
            .epochs
            .get(&volume.id)
            .ok_or("the volume's epoch is not followed here yet")?
            .subscribe();
        Ok(SessionSpec {
            ident: Ident {
                cluster: self.context.cluster,
                volume: volume.id,
                node: self.context.me,
            },
            leg: leg.id,
            leg_path: PathBuf::from(&leg.path),
            meta: MetaLocation::for_leg(&self.context.state_dir, volume.id, leg),
            size: volume.size,
            granularity: volume.granularity,
            epoch,
            leg_lock: self.leg_lock(volume.id, leg.id),
            peer: peer.to_string(),
            carried: self.carried(volume.id),
        })
    }

    /// A primary opened a replication stream to this node for `volume`.
    pub fn accept_replication(
        &mut self,
        state: &ClusterState,
        from: NodeId,
        volume: VolumeId,
        peer: &str,
        stream: Box<dyn ByteStream>,
    ) {
        let me = self.context.me;
        let Some(info) = state.volumes.get(&volume) else {
            return tracing::warn!(
                "replication stream from {peer} for unknown volume {volume}; dropped"
            );
        };
        // The primary dials a node only for legs it does not reach itself.
        let Some(leg) = info.legs_of(me).find(|leg| !leg.nodes.contains(&from)) else {
            return tracing::warn!(
                "replication stream from {peer} for volume {}: no leg here it does not reach \
                 itself; dropped",
                info.name
            );
        };
        if info.primary == Some(me) {
            return tracing::warn!("replication stream from {peer} (node {from}) for volume {}: this node is its primary; dropped", info.name);
        }
        let leg = leg.clone();
        let spec = match self.session_spec(info, &leg, peer) {
            Ok(spec) => spec,
            Err(error) => return tracing::warn!("replication stream from {peer}: {error}"),
        };
        if let Some(old) = self.sessions.remove(&volume) {
            old.abort();
        }
        self.sessions
            .insert(volume, tokio::spawn(repl_secondary::run(spec, stream)));
    }
}

/// A leg of other nodes: the core's view of it and where its dialer finds it (its first
/// node, then the others that reach it).
fn remote_target(
    state: &ClusterState,
    leg: &tandem_core::volume::LegInfo,
) -> Result<Option<(PeerLeg, PeerTarget)>, String> {
    let mut reach = Vec::new();
    for &node in &leg.nodes {
        let info = state
            .nodes
            .get(&node)
            .ok_or_else(|| format!("leg {} names unknown node {node}", leg.id))?;
        let address = PeerAddress {
            name: info.name.clone(),
            addr: info.addr.clone(),
        };
        reach.push((node, address));
    }
    let mut reach = reach.into_iter();
    let Some((node, address)) = reach.next() else {
        return Ok(None);
    };
    let peer = PeerLeg {
        leg: leg.id,
        node,
        state: leg.state,
    };
    let target = PeerTarget {
        leg: leg.id,
        node,
        address,
        others: reach.collect(),
    };
    Ok(Some((peer, target)))
}

/// Clears a leg's crash mark (`primary_open`) once its resync is done.
fn clear_crash_mark(cluster: ClusterId, volume: &VolumeInfo, leg: LegId, location: &MetaLocation) {
    let expect = Expectation {
        cluster,
        volume: volume.id,
        leg,
    };
    let cleared = tokio::task::block_in_place(|| {
        let mut store = MetaStore::open(location, expect, volume.size, volume.granularity)?;
        if store.superblock().primary_open {
            store.set_primary_open(false, volume.epoch)?;
            tracing::info!(
                "volume {}: leg {leg} resynced after a crash of its primary",
                volume.name
            );
        }
        Ok::<(), crate::meta_store::MetaStoreError>(())
    });
    if let Err(error) = cleared {
        tracing::warn!("{error}");
    }
}

/// Tells a primary's engine about every committed leg state it has not heard yet.
fn report_leg_states(hosted: &mut Hosted, volume: &VolumeInfo) {
    for leg in &volume.legs {
        // Also a commit that changed nothing: the engine may wait for exactly that one.
        if hosted.reported.get(&leg.id) == Some(&(leg.state, leg.commits)) {
            continue;
        }
        let input = EngineInput::LegState {
            leg: leg.id,
            state: leg.state,
            epoch: volume.epoch,
        };
        if hosted.inputs.try_send(input).is_ok() {
            hosted.reported.insert(leg.id, (leg.state, leg.commits));
        }
    }
}
