//! Mirrored volumes in the replicated cluster state: legs, their states, the primary, epochs.
//!
//! This is the "one brain" of DESIGN.md §3 for storage: which leg is up to date and which node
//! may write are decided only by committed [`VolumeChange`]s, applied identically everywhere.
//! The rules of DESIGN.md §5 that the state itself can enforce live here:
//! - a node becomes primary only onto an `UpToDate` leg it reaches (rule 2), each promotion
//!   committing a new epoch;
//! - a leg leaves `UpToDate` only through a committed change (rule 1), and every leg-state change
//!   names the epoch it was decided in, so a stale proposal from an old primary is refused;
//! - `--force` is the one way around the rules, and it is recorded in the state for good.

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// A volume's number, never reused within a cluster.
pub type VolumeId = u64;
/// A leg's number within its volume (0, 1, ...).
pub type LegId = u32;

/// The largest volume we accept (1 PiB): a typo guard, not a technical limit.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;
/// The data block size of every volume (NBD's preferred block size, the page size).
pub const BLOCK_SIZE: u64 = 4096;
/// How many legs one volume may have.
pub const MAX_LEGS: usize = 8;

/// What a leg holds compared to the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegState {
    /// Has every acknowledged write: may be promoted, must receive every write.
    UpToDate,
    /// Was cut off and missed writes (the primary tracks which); needs a resync.
    Outdated,
    /// Being filled by a full sync; its contents are not a usable disk yet.
    Inconsistent,
}

impl LegState {
    pub fn as_str(self) -> &'static str {
        match self {
            LegState::UpToDate => "UpToDate",
            LegState::Outdated => "Outdated",
            LegState::Inconsistent => "Inconsistent",
        }
    }
}

/// One copy of a volume's data, reachable by one node or (shared array) several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegInfo {
    pub id: LegId,
    pub nodes: Vec<NodeId>,
    /// Block device, partition or file (created sparse when missing).
    pub path: String,
    pub state: LegState,
    /// Leg-state changes committed for this leg, those that changed nothing included: the
    /// primary's engine is told of each, since it may be waiting for exactly that commit
    /// (an `Outdated` it proposed for a leg that already was).
    #[serde(default)]
    pub commits: u64,
}

/// A promotion that broke the rules on an operator's order, kept in the state for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedPromotion {
    pub epoch: u64,
    pub node: NodeId,
    pub leg: LegId,
    /// The leg's state before the force.
    pub was: LegState,
}

/// A mirrored disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    pub legs: Vec<LegInfo>,
    /// The one node that may write, if any.
    pub primary: Option<NodeId>,
    /// Raised by every promotion; secondaries reject replication from any other epoch.
    pub epoch: u64,
    #[serde(default)]
    pub forced: Vec<ForcedPromotion>,
    /// Legs the promotion of this epoch outdated because it took over from a gone primary
    /// (they were UpToDate until then): the new primary tracks exactly what they miss from now.
    #[serde(default)]
    pub takeover_outdated: Vec<LegId>,
    /// The legs' metadata granularities, fixed at creation.
    #[serde(default)]
    pub granularity: Granularity,
}

/// The metadata granularities of a volume's legs, chosen when it is created (the defaults are
/// justified in `legmeta`: [`crate::legmeta::DEFAULT_GRAIN`],
/// [`crate::legmeta::DEFAULT_EXTENT_SIZE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granularity {
    /// Bytes of data per out-of-sync bit: what a reconnect resyncs at least per changed spot.
    pub bitmap_grain: u32,
    /// Bytes per activity-log extent: a primary crash resyncs whole hot extents.
    pub al_extent: u32,
}

/// The largest bitmap grain (a resync never sends more than this per changed spot).
pub const MAX_BITMAP_GRAIN: u32 = 1 << 20;
/// The largest activity-log extent.
pub const MAX_AL_EXTENT: u32 = 1 << 30;

impl Default for Granularity {
    fn default() -> Granularity {
        Granularity {
            bitmap_grain: crate::legmeta::DEFAULT_GRAIN,
            al_extent: crate::legmeta::DEFAULT_EXTENT_SIZE,
        }
    }
}

impl Granularity {
    /// Both powers of two; the grain from 4 KiB to 1 MiB, the extent from the grain to 1 GiB.
    pub fn check(&self) -> Result<(), VolumeError> {
        let bad = |reason: String| Err(VolumeError::BadGranularity(reason));
        let (grain, extent) = (self.bitmap_grain, self.al_extent);
        let min = crate::legmeta::MIN_GRAIN;
        if !grain.is_power_of_two() || !(min..=MAX_BITMAP_GRAIN).contains(&grain) {
            return bad(format!(
                "bitmap grain {grain} must be a power of two from {min} to {MAX_BITMAP_GRAIN} bytes"
            ));
        }
        if !extent.is_power_of_two() || !(grain..=MAX_AL_EXTENT).contains(&extent) {
            return bad(format!(
                "activity-log extent {extent} must be a power of two from the bitmap grain \
                 ({grain}) to {MAX_AL_EXTENT} bytes"
            ));
        }
        Ok(())
    }
}

impl VolumeInfo {
    /// The first leg `node` reaches, if any (a node may reach several: a dual array).
    pub fn leg_of(&self, node: NodeId) -> Option<&LegInfo> {
        self.legs.iter().find(|leg| leg.nodes.contains(&node))
    }

    /// Every leg `node` reaches, in leg order.
    pub fn legs_of(&self, node: NodeId) -> impl Iterator<Item = &LegInfo> {
        self.legs
            .iter()
            .filter(move |leg| leg.nodes.contains(&node))
    }

    /// The leg `node` writes as primary itself: the first UpToDate leg it reaches, else the
    /// first leg it reaches (which a promotion then refuses, naming it). Deterministic, so the
    /// promotion rule and the daemon agree on it; the other legs the node reaches are written
    /// as peers, with the same rules as remote legs.
    pub fn own_leg(&self, node: NodeId) -> Option<&LegInfo> {
        self.legs_of(node)
            .find(|leg| leg.state == LegState::UpToDate)
            .or_else(|| self.leg_of(node))
    }

    pub fn leg(&self, id: LegId) -> Option<&LegInfo> {
        self.legs.iter().find(|leg| leg.id == id)
    }

    fn leg_mut(&mut self, id: LegId) -> Option<&mut LegInfo> {
        self.legs.iter_mut().find(|leg| leg.id == id)
    }
}

/// A leg as the operator asks for it: which nodes reach which path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegSpec {
    pub nodes: Vec<NodeId>,
    pub path: String,
}

/// A change to the volumes, decided by a proposer and applied by all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum VolumeChange {
    /// A new volume. Its first leg holds the initial contents (UpToDate); the others start
    /// Inconsistent and are filled by a full initial sync.
    Create {
        name: String,
        size: u64,
        legs: Vec<LegSpec>,
        #[serde(default)]
        granularity: Granularity,
    },
    /// Deletes a volume that has no primary. Leg contents are left alone.
    Delete { volume: VolumeId },
    /// Makes `node` the primary under a new epoch. Without `force`, only onto an UpToDate leg
    /// and only when no other node is primary, unless `takeover`: the old primary is gone
    /// (its lease lapsed), and its legs become Outdated since they may hold writes nobody
    /// acknowledged.
    Promote {
        volume: VolumeId,
        node: NodeId,
        force: bool,
        #[serde(default)]
        takeover: bool,
    },
    /// The primary stops writing (after a flush): the volume has no primary.
    Demote { volume: VolumeId, epoch: u64 },
    /// A leg's state changes, as decided in `epoch` (refused when the epoch moved on).
    SetLegState {
        volume: VolumeId,
        leg: LegId,
        state: LegState,
        epoch: u64,
    },
}

/// Why a volume change was refused; every node refuses it identically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("a volume named {0:?} already exists")]
    NameTaken(String),
    #[error("volume name {0:?} is invalid: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("volume size {size} is invalid: {reason}")]
    BadSize { size: u64, reason: String },
    #[error("a volume needs 1 to {MAX_LEGS} legs, got {0}")]
    LegCount(usize),
    #[error("leg {leg}: {reason}")]
    BadLeg { leg: usize, reason: String },
    #[error("no volume with id {0}")]
    NoSuchVolume(VolumeId),
    #[error("{0}")]
    BadGranularity(String),
    #[error("volume {volume} has no leg {leg}")]
    NoSuchLeg { volume: String, leg: LegId },
    #[error("volume {volume} is primary on node {node}; demote it first")]
    InUse { volume: String, node: NodeId },
    #[error("node {node} reaches no leg of volume {volume}")]
    NoLegOnNode { volume: String, node: NodeId },
    #[error(
        "refusing to promote volume {volume} on node {node}: its leg {leg} is {state}, not \
         UpToDate (UpToDate legs: {up_to_date}); resync it first, or use --force to accept \
         losing what it missed"
    )]
    LegNotUpToDate {
        volume: String,
        node: NodeId,
        leg: LegId,
        state: &'static str,
        up_to_date: String,
    },
    #[error("stale change for volume {volume}: decided in epoch {given}, the volume is at epoch {current}")]
    StaleEpoch {
        volume: String,
        given: u64,
        current: u64,
    },
    #[error("volume {volume} would have no UpToDate leg left")]
    LastUpToDate { volume: String },
}

/// Checks a new volume's name, size and legs against the known nodes.
pub fn check_new_volume(
    name: &str,
    size: u64,
    legs: &[LegSpec],
    node_exists: impl Fn(NodeId) -> bool,
) -> Result<(), VolumeError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let size_error = |reason: &str| VolumeError::BadSize {
        size,
        reason: reason.to_string(),
    };
    if size == 0 {
        return Err(size_error("it must be above zero"));
    }
    if !size.is_multiple_of(BLOCK_SIZE) {
        return Err(size_error("it must be a multiple of 4096 bytes"));
    }
    if size > MAX_VOLUME_SIZE {
        return Err(size_error("it is above 1 PiB"));
    }
    if legs.is_empty() || legs.len() > MAX_LEGS {
        return Err(VolumeError::LegCount(legs.len()));
    }
    for (index, leg) in legs.iter().enumerate() {
        check_leg(index, leg, &legs[..index], &node_exists)?;
    }
    Ok(())
}

/// One leg of a new volume, against the legs before it. A node may reach several legs (a dual
/// array: two shared arrays, both attached to both servers), but not the same path twice: two
/// legs on one disk would be no mirror at all.
fn check_leg(
    index: usize,
    leg: &LegSpec,
    earlier: &[LegSpec],
    node_exists: impl Fn(NodeId) -> bool,
) -> Result<(), VolumeError> {
    let bad = |reason: String| VolumeError::BadLeg { leg: index, reason };
    if leg.nodes.is_empty() {
        return Err(bad("it names no node".into()));
    }
    if !leg.path.starts_with('/') || leg.path.contains('\0') {
        return Err(bad(format!("path {:?} must be absolute", leg.path)));
    }
    for (position, node) in leg.nodes.iter().enumerate() {
        if !node_exists(*node) {
            return Err(bad(format!("node {node} is not a member")));
        }
        if leg.nodes[..position].contains(node) {
            return Err(bad(format!("node {node} is listed twice")));
        }
        let same_disk = earlier
            .iter()
            .position(|other| other.path == leg.path && other.nodes.contains(node));
        if let Some(other) = same_disk {
            return Err(bad(format!(
                "node {node} already reaches {} through leg {other}: two legs on one disk \
                 mirror nothing",
                leg.path
            )));
        }
    }
    Ok(())
}

/// Builds the volume a `Create` makes (after [`check_new_volume`]).
pub fn new_volume(id: VolumeId, name: &str, size: u64, legs: &[LegSpec]) -> VolumeInfo {
    let legs = legs
        .iter()
        .enumerate()
        .map(|(index, spec)| LegInfo {
            id: index as LegId,
            nodes: spec.nodes.clone(),
            path: spec.path.clone(),
            state: if index == 0 {
                LegState::UpToDate
            } else {
                LegState::Inconsistent
            },
            commits: 0,
        })
        .collect();
    VolumeInfo {
        id,
        name: name.to_string(),
        size,
        legs,
        primary: None,
        epoch: 0,
        forced: Vec::new(),
        takeover_outdated: Vec::new(),
        granularity: Granularity::default(),
    }
}

/// Applies a promotion to `volume`.
pub fn promote(
    volume: &mut VolumeInfo,
    node: NodeId,
    force: bool,
    takeover: bool,
) -> Result<String, VolumeError> {
    let name = volume.name.clone();
    let leg = volume
        .own_leg(node)
        .ok_or(VolumeError::NoLegOnNode {
            volume: name.clone(),
            node,
        })?
        .clone();
    let old_primary = volume.primary.filter(|&primary| primary != node);
    if let Some(primary) = old_primary {
        if !force && !takeover {
            return Err(VolumeError::InUse {
                volume: name,
                node: primary,
            });
        }
    }
    #[cfg(feature = "mutations")]
    let force_rule = force || crate::data_mutations::get().promote_outdated;
    #[cfg(not(feature = "mutations"))]
    let force_rule = force;
    if leg.state != LegState::UpToDate && !force_rule {
        let up_to_date: Vec<String> = volume
            .legs
            .iter()
            .filter(|leg| leg.state == LegState::UpToDate)
            .map(|leg| format!("{} on nodes {:?}", leg.id, leg.nodes))
            .collect();
        return Err(VolumeError::LegNotUpToDate {
            volume: name,
            node,
            leg: leg.id,
            state: leg.state.as_str(),
            up_to_date: if up_to_date.is_empty() {
                "none".into()
            } else {
                up_to_date.join(", ")
            },
        });
    }
    volume.epoch += 1;
    volume.primary = Some(node);
    volume.takeover_outdated.clear();
    if let Some(old) = old_primary {
        for other in volume.legs.iter_mut() {
            if other.id != leg.id && other.nodes.contains(&old) {
                if other.state == LegState::UpToDate {
                    volume.takeover_outdated.push(other.id);
                }
                other.state = LegState::Outdated;
            }
        }
    }
    if force && leg.state != LegState::UpToDate {
        volume.forced.push(ForcedPromotion {
            epoch: volume.epoch,
            node,
            leg: leg.id,
            was: leg.state,
        });
        // The forced leg defines the contents from now on; every other leg must resync.
        for other in volume.legs.iter_mut() {
            other.state = if other.id == leg.id {
                LegState::UpToDate
            } else {
                LegState::Outdated
            };
        }
        return Ok(format!(
            "volume {name} FORCED primary on node {node} in epoch {} (leg {} was {})",
            volume.epoch,
            leg.id,
            leg.state.as_str()
        ));
    }
    Ok(format!(
        "volume {name} is primary on node {node} in epoch {}",
        volume.epoch
    ))
}

/// Applies a leg-state change to `volume`, guarded by its epoch.
pub fn set_leg_state(
    volume: &mut VolumeInfo,
    leg: LegId,
    state: LegState,
    epoch: u64,
) -> Result<String, VolumeError> {
    let name = volume.name.clone();
    if epoch != volume.epoch {
        return Err(VolumeError::StaleEpoch {
            volume: name,
            given: epoch,
            current: volume.epoch,
        });
    }
    let others_up = volume
        .legs
        .iter()
        .filter(|other| other.id != leg && other.state == LegState::UpToDate)
        .count();
    let target = volume.leg_mut(leg).ok_or(VolumeError::NoSuchLeg {
        volume: name.clone(),
        leg,
    })?;
    if state != LegState::UpToDate && target.state == LegState::UpToDate && others_up == 0 {
        return Err(VolumeError::LastUpToDate { volume: name });
    }
    target.state = state;
    target.commits += 1;
    Ok(format!(
        "volume {name} leg {leg} is now {} (epoch {epoch})",
        state.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legs() -> Vec<LegSpec> {
        vec![
            LegSpec {
                nodes: vec![1],
                path: "/dev/a".into(),
            },
            LegSpec {
                nodes: vec![2, 3],
                path: "/dev/shared".into(),
            },
        ]
    }

    fn volume() -> VolumeInfo {
        new_volume(1, "db", 1 << 20, &legs())
    }

    #[test]
    fn new_volumes_are_checked_and_the_first_leg_holds_the_data() {
        let members = |node: NodeId| node <= 3;
        assert!(check_new_volume("db", 1 << 20, &legs(), members).is_ok());
        assert!(matches!(
            check_new_volume("d b", 1 << 20, &legs(), members),
            Err(VolumeError::BadName(_))
        ));
        assert!(matches!(
            check_new_volume("db", 1000, &legs(), members),
            Err(VolumeError::BadSize { .. })
        ));
        assert!(matches!(
            check_new_volume("db", 1 << 20, &legs(), |node| node <= 2),
            Err(VolumeError::BadLeg { leg: 1, .. })
        ));
        let mut twice = legs();
        twice[1].nodes = vec![2, 2];
        let refused = check_new_volume("db", 1 << 20, &twice, members).unwrap_err();
        assert!(refused.to_string().contains("listed twice"), "{refused}");
        let volume = volume();
        assert_eq!(volume.legs[0].state, LegState::UpToDate);
        assert_eq!(volume.legs[1].state, LegState::Inconsistent);
        assert_eq!(volume.leg_of(3).map(|leg| leg.id), Some(1));
    }

    fn dual_array() -> Vec<LegSpec> {
        vec![
            LegSpec {
                nodes: vec![1, 2],
                path: "/arrays/a".into(),
            },
            LegSpec {
                nodes: vec![1, 2],
                path: "/arrays/b".into(),
            },
        ]
    }

    #[test]
    fn a_node_may_reach_several_legs_but_not_one_disk_twice() {
        let members = |node: NodeId| node <= 3;
        assert!(check_new_volume("db", 1 << 20, &dual_array(), members).is_ok());
        let volume = new_volume(1, "db", 1 << 20, &dual_array());
        let reached: Vec<LegId> = volume.legs_of(2).map(|leg| leg.id).collect();
        assert_eq!(reached, vec![0, 1]);
        let mut same_disk = dual_array();
        same_disk[1].path = "/arrays/a".into();
        same_disk[1].nodes = vec![3, 2];
        let refused = check_new_volume("db", 1 << 20, &same_disk, members).unwrap_err();
        assert!(
            matches!(refused, VolumeError::BadLeg { leg: 1, .. })
                && refused
                    .to_string()
                    .contains("node 2 already reaches /arrays/a through leg 0"),
            "{refused}"
        );
        // The same path seen by other nodes only is another disk (a local path on each).
        same_disk[1].nodes = vec![3];
        assert!(check_new_volume("db", 1 << 20, &same_disk, members).is_ok());
    }

    #[test]
    fn a_node_reaching_several_legs_writes_its_first_up_to_date_one() {
        let mut volume = new_volume(1, "db", 1 << 20, &dual_array());
        volume.legs[0].state = LegState::Outdated;
        volume.legs[1].state = LegState::UpToDate;
        assert_eq!(volume.own_leg(1).map(|leg| leg.id), Some(1));
        assert_eq!(volume.own_leg(3).map(|leg| leg.id), None);
        promote(&mut volume, 1, false, false).unwrap();
        assert_eq!((volume.primary, volume.epoch), (Some(1), 1));
        assert!(volume.forced.is_empty());
        // Neither leg UpToDate: refused, naming the leg it would have written.
        let mut stale = new_volume(1, "db", 1 << 20, &dual_array());
        stale.legs[0].state = LegState::Outdated;
        stale.legs[1].state = LegState::Inconsistent;
        let refused = promote(&mut stale, 2, false, false).unwrap_err();
        assert!(
            refused.to_string().contains("leg 0 is Outdated"),
            "{refused}"
        );
        assert_eq!((stale.primary, stale.epoch), (None, 0));
    }

    #[test]
    fn a_dual_array_takeover_keeps_one_leg_and_outdates_the_other() {
        let mut volume = new_volume(1, "db", 1 << 20, &dual_array());
        promote(&mut volume, 1, false, false).unwrap();
        set_leg_state(&mut volume, 1, LegState::UpToDate, 1).unwrap();
        // Node 2 is not primary and node 1 is: a plain promotion is refused.
        assert!(matches!(
            promote(&mut volume, 2, false, false),
            Err(VolumeError::InUse { node: 1, .. })
        ));
        promote(&mut volume, 2, false, true).unwrap();
        assert_eq!((volume.primary, volume.epoch), (Some(2), 2));
        assert_eq!(volume.legs[0].state, LegState::UpToDate);
        assert_eq!(volume.legs[1].state, LegState::Outdated);
        assert_eq!(volume.takeover_outdated, vec![1]);
    }

    #[test]
    fn promotion_needs_an_up_to_date_leg_and_raises_the_epoch() {
        let mut volume = volume();
        let refused = promote(&mut volume, 2, false, false).unwrap_err();
        assert!(
            refused.to_string().contains("leg 1 is Inconsistent"),
            "{refused}"
        );
        assert_eq!((volume.epoch, volume.primary), (0, None));
        promote(&mut volume, 1, false, false).unwrap();
        assert_eq!((volume.epoch, volume.primary), (1, Some(1)));
        assert!(matches!(
            promote(&mut volume, 9, false, false),
            Err(VolumeError::NoLegOnNode { .. })
        ));
    }

    #[test]
    fn every_committed_leg_state_is_counted_even_one_that_changes_nothing() {
        let mut volume = volume();
        promote(&mut volume, 1, false, false).unwrap();
        assert_eq!(volume.legs[1].commits, 0);
        set_leg_state(&mut volume, 1, LegState::Outdated, 1).unwrap();
        // The primary proposed Outdated again (its earlier UpToDate never committed): the
        // state stays, the count moves, and the daemon tells the engine (volumes.rs).
        set_leg_state(&mut volume, 1, LegState::Outdated, 1).unwrap();
        assert_eq!(volume.legs[1].state, LegState::Outdated);
        assert_eq!(volume.legs[1].commits, 2);
        assert!(set_leg_state(&mut volume, 1, LegState::UpToDate, 0).is_err());
        assert_eq!(volume.legs[1].commits, 2, "a refused change is not counted");
    }

    #[test]
    fn a_second_writer_is_refused_unless_forced_and_force_is_recorded() {
        let mut volume = volume();
        promote(&mut volume, 1, false, false).unwrap();
        set_leg_state(&mut volume, 1, LegState::UpToDate, 1).unwrap();
        assert!(matches!(
            promote(&mut volume, 2, false, false),
            Err(VolumeError::InUse { node: 1, .. })
        ));
        set_leg_state(&mut volume, 1, LegState::Outdated, 1).unwrap();
        promote(&mut volume, 2, true, false).unwrap();
        assert_eq!(volume.primary, Some(2));
        assert_eq!(volume.forced.len(), 1);
        assert_eq!(volume.forced[0].was, LegState::Outdated);
        assert_eq!(volume.legs[0].state, LegState::Outdated);
        assert_eq!(volume.legs[1].state, LegState::UpToDate);
    }

    #[test]
    fn a_takeover_outdates_the_old_primarys_leg() {
        let mut volume = volume();
        promote(&mut volume, 1, false, false).unwrap();
        set_leg_state(&mut volume, 1, LegState::UpToDate, 1).unwrap();
        promote(&mut volume, 3, false, true).unwrap();
        assert_eq!((volume.primary, volume.epoch), (Some(3), 2));
        assert_eq!(volume.legs[0].state, LegState::Outdated);
        assert_eq!(volume.legs[1].state, LegState::UpToDate);
        assert_eq!(volume.takeover_outdated, vec![0]);
        assert!(volume.forced.is_empty());
    }

    #[test]
    fn leg_state_changes_are_epoch_guarded_and_keep_one_up_to_date_leg() {
        let mut volume = volume();
        promote(&mut volume, 1, false, false).unwrap();
        assert!(matches!(
            set_leg_state(&mut volume, 1, LegState::UpToDate, 0),
            Err(VolumeError::StaleEpoch {
                given: 0,
                current: 1,
                ..
            })
        ));
        assert!(matches!(
            set_leg_state(&mut volume, 0, LegState::Outdated, 1),
            Err(VolumeError::LastUpToDate { .. })
        ));
        assert!(matches!(
            set_leg_state(&mut volume, 7, LegState::Outdated, 1),
            Err(VolumeError::NoSuchLeg { leg: 7, .. })
        ));
    }

    #[test]
    fn granularities_are_powers_of_two_within_bounds() {
        assert!(Granularity::default().check().is_ok());
        let ok = Granularity {
            bitmap_grain: 64 << 10,
            al_extent: 64 << 10,
        };
        assert!(ok.check().is_ok());
        for (grain, extent, says) in [
            (3000, 4 << 20, "bitmap grain 3000"),
            (2048, 4 << 20, "bitmap grain 2048"),
            (2 << 20, 4 << 20, "bitmap grain 2097152"),
            (4096, 6 << 20, "activity-log extent 6291456"),
            (64 << 10, 4096, "activity-log extent 4096"),
        ] {
            let bad = Granularity {
                bitmap_grain: grain,
                al_extent: extent,
            };
            let error = bad.check().unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }
}
