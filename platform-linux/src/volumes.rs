//! The volumes this node hosts: opens its legs and runs each volume's NBD frontend exactly
//! while the committed state names this node the volume's primary.
//!
//! The daemon calls [`VolumeHost::reconcile`] after every applied change; this module decides
//! nothing about the cluster, it only follows the committed state (DESIGN.md: the core decides,
//! shims obey). A leg that cannot be opened is logged with its path and retried on the next
//! change; the frontend stays down rather than serving the wrong disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_core::volume::VolumeId;
use tandem_core::{ClusterState, NodeId};

use crate::leg::Leg;
use crate::nbd_serve::NbdFrontend;
use crate::transport::ByteStream;

/// A volume served here: the epoch it was promoted in, and its frontend.
struct Hosted {
    epoch: u64,
    _frontend: NbdFrontend,
}

/// The frontends of the volumes this node is primary of.
pub struct VolumeHost {
    me: NodeId,
    state_dir: PathBuf,
    hosted: BTreeMap<VolumeId, Hosted>,
    /// (volume, epoch) whose leg failed to open, so the error is logged once.
    failed: BTreeMap<VolumeId, u64>,
}

impl VolumeHost {
    pub fn new(me: NodeId, state_dir: &Path) -> VolumeHost {
        VolumeHost {
            me,
            state_dir: state_dir.to_path_buf(),
            hosted: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Where volume `name`'s NBD socket is while this node is primary.
    pub fn socket_path(state_dir: &Path, name: &str) -> PathBuf {
        state_dir.join(format!("nbd-{name}.sock"))
    }

    /// Starts and stops frontends to match `state`.
    pub fn reconcile(&mut self, state: &ClusterState) {
        let wanted: BTreeMap<VolumeId, u64> = state
            .volumes
            .values()
            .filter(|volume| volume.primary == Some(self.me))
            .map(|volume| (volume.id, volume.epoch))
            .collect();
        self.hosted.retain(|id, hosted| {
            let keep = wanted.get(id) == Some(&hosted.epoch);
            if !keep {
                tracing::info!(
                    "volume {id}: no longer primary here in epoch {}; frontend stopped",
                    hosted.epoch
                );
            }
            keep
        });
        self.failed
            .retain(|id, epoch| wanted.get(id) == Some(epoch));
        for (&id, &epoch) in &wanted {
            if self.hosted.contains_key(&id) || self.failed.contains_key(&id) {
                continue;
            }
            match self.start(state, id) {
                Ok(hosted) => {
                    self.hosted.insert(id, hosted);
                }
                Err(error) => {
                    tracing::error!("volume {id}: cannot serve as primary: {error}");
                    self.failed.insert(id, epoch);
                }
            }
        }
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
        let _ = (state, from, stream);
        tracing::warn!("replication stream from {peer} for volume {volume}: not served yet");
    }

    fn start(&self, state: &ClusterState, id: VolumeId) -> Result<Hosted, String> {
        let volume = state.volumes.get(&id).ok_or("not in the state")?;
        let leg = volume
            .leg_of(self.me)
            .ok_or_else(|| format!("no leg of volume {} on this node", volume.name))?;
        let leg =
            Leg::open(Path::new(&leg.path), volume.size).map_err(|error| error.to_string())?;
        let socket = Self::socket_path(&self.state_dir, &volume.name);
        let frontend = NbdFrontend::start(&socket, &volume.name, Arc::new(leg))
            .map_err(|error| format!("NBD socket {}: {error}", socket.display()))?;
        tracing::info!(
            "volume {} primary here in epoch {}: NBD on {}",
            volume.name,
            volume.epoch,
            frontend.socket().display()
        );
        Ok(Hosted {
            epoch: volume.epoch,
            _frontend: frontend,
        })
    }
}
