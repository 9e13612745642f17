//! What the volume commands mean: operator words (names) to committed changes (ids), and the
//! volume status model. Kept apart from `node.rs` so the Raft node stays about Raft.

use crate::command::{Command, LegRequest, LegStatus, NodeReach, Reply, VolumeStatus};
use crate::ids::NodeId;
use crate::node::Plan;
use crate::state::{ClusterState, StateChange};
use crate::volume::{Granularity, LegSpec, LegState, VolumeChange, VolumeInfo};

/// The plan for a volume command, or `None` when `command` is not about volumes. `gone(node)`
/// says whether a node is offline and its lease has lapsed, as this node sees it.
pub fn plan(
    state: &ClusterState,
    me: NodeId,
    command: &Command,
    gone: impl Fn(NodeId) -> bool,
) -> Option<Plan> {
    let plan = match command {
        Command::VolumeCreate {
            name,
            size,
            legs,
            granularity,
        } => create(state, name, *size, legs, *granularity),
        Command::VolumeList => Ok(Plan::Answer(Reply::Volumes {
            volumes: state.volumes.values().map(|v| status(state, v)).collect(),
        })),
        Command::VolumeShow { name } => volume(state, name).map(|v| {
            Plan::Answer(Reply::Volumes {
                volumes: vec![status(state, v)],
            })
        }),
        Command::VolumePromote { name, node, force } => promote(state, name, node, *force, &gone),
        Command::VolumeVerify { name, repair } => verify(state, me, name, *repair),
        Command::VolumeDemote { name } => volume(state, name).map(|v| {
            change(VolumeChange::Demote {
                volume: v.id,
                epoch: v.epoch,
            })
        }),
        Command::VolumeDelete { name } => {
            volume(state, name).map(|v| change(VolumeChange::Delete { volume: v.id }))
        }
        _ => return None,
    };
    Some(plan.unwrap_or_else(|message| Plan::Answer(Reply::Refused { message })))
}

fn change(change: VolumeChange) -> Plan {
    Plan::Propose(StateChange::Volume(change))
}

fn volume<'a>(state: &'a ClusterState, name: &str) -> Result<&'a VolumeInfo, String> {
    state
        .volume_by_name(name)
        .ok_or_else(|| format!("no volume named {name:?} in this cluster"))
}

fn node_id(state: &ClusterState, name: &str) -> Result<NodeId, String> {
    state
        .node_by_name(name)
        .map(|node| node.id)
        .ok_or_else(|| format!("no node named {name:?} in this cluster"))
}

/// A promotion. When another node is primary: if it is alive, it must be demoted first (the
/// demotion drains and flushes it, so the legs stay identical); if it is gone, this is a
/// takeover that outdates its legs.
fn promote(
    state: &ClusterState,
    name: &str,
    node: &str,
    force: bool,
    gone: &dyn Fn(NodeId) -> bool,
) -> Result<Plan, String> {
    let volume = volume(state, name)?;
    let target = node_id(state, node)?;
    let old = volume.primary.filter(|&primary| primary != target);
    let takeover = match old {
        Some(old) if gone(old) => true,
        Some(old) if !force => {
            let old = state.nodes.get(&old).map_or("?", |info| info.name.as_str());
            return Err(format!(
                "volume {name} is primary on {old}, which is alive: run `tandem volume demote \
                 {name}` first (it drains and flushes {old}), then promote {node}"
            ));
        }
        _ => false,
    };
    let change = StateChange::Volume(VolumeChange::Promote {
        volume: volume.id,
        node: target,
        force,
        takeover,
    });
    state.validate(&change).map_err(|error| error.to_string())?;
    Ok(Plan::Propose(change))
}

/// Verify runs where the data is written: on the primary's node.
fn verify(state: &ClusterState, me: NodeId, name: &str, repair: bool) -> Result<Plan, String> {
    let volume = volume(state, name)?;
    match volume.primary {
        Some(primary) if primary == me => Ok(Plan::Verify {
            volume: volume.id,
            repair,
        }),
        Some(primary) => {
            let node = state.nodes.get(&primary).map_or("?", |n| n.name.as_str());
            Err(format!(
                "volume {name} is primary on {node}: run verify there"
            ))
        }
        None => Err(format!("volume {name} has no primary: promote it first")),
    }
}

fn create(
    state: &ClusterState,
    name: &str,
    size: u64,
    legs: &[LegRequest],
    granularity: Granularity,
) -> Result<Plan, String> {
    let mut specs = Vec::with_capacity(legs.len());
    for leg in legs {
        let nodes = leg
            .nodes
            .iter()
            .map(|node| node_id(state, node))
            .collect::<Result<Vec<_>, _>>()?;
        specs.push(LegSpec {
            nodes,
            path: leg.path.clone(),
        });
    }
    let change = StateChange::Volume(VolumeChange::Create {
        name: name.to_string(),
        size,
        legs: specs,
        granularity,
    });
    state.validate(&change).map_err(|error| error.to_string())?;
    Ok(Plan::Propose(change))
}

/// The status model of one volume, with node names resolved.
pub fn status(state: &ClusterState, volume: &VolumeInfo) -> VolumeStatus {
    let name_of = |id: NodeId| {
        state
            .nodes
            .get(&id)
            .map_or_else(|| format!("#{id}"), |node| node.name.clone())
    };
    VolumeStatus {
        id: volume.id,
        name: volume.name.clone(),
        size: volume.size,
        primary: volume.primary.map(name_of),
        epoch: volume.epoch,
        legs: volume
            .legs
            .iter()
            .map(|leg| LegStatus {
                id: leg.id,
                nodes: leg.nodes.iter().map(|&id| name_of(id)).collect(),
                path: leg.path.clone(),
                state: leg.state.as_str().to_string(),
                sync: None,
            })
            .collect(),
        forced: volume
            .forced
            .iter()
            .map(|force| {
                format!(
                    "epoch {}: node {} forced onto leg {} (was {})",
                    force.epoch,
                    name_of(force.node),
                    force.leg,
                    force.was.as_str()
                )
            })
            .collect(),
        reach: reach(volume, name_of),
        granularity: volume.granularity,
    }
}

/// Which legs each node of `volume` reaches, and which one it writes itself as primary.
fn reach(volume: &VolumeInfo, name_of: impl Fn(NodeId) -> String) -> Vec<NodeReach> {
    let mut nodes: Vec<NodeId> = volume
        .legs
        .iter()
        .flat_map(|leg| leg.nodes.iter().copied())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
        .into_iter()
        .map(|node| NodeReach {
            node: name_of(node),
            legs: volume.legs_of(node).map(|leg| leg.id).collect(),
            writes: volume
                .own_leg(node)
                .filter(|leg| leg.state == LegState::UpToDate)
                .map(|leg| leg.id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::new_volume;

    #[test]
    fn the_status_lists_the_legs_each_node_reaches_and_the_one_it_would_write() {
        let legs = [
            LegSpec {
                nodes: vec![2, 1],
                path: "/arrays/x".into(),
            },
            LegSpec {
                nodes: vec![1, 2],
                path: "/arrays/y".into(),
            },
            LegSpec {
                nodes: vec![3],
                path: "/dr/leg".into(),
            },
        ];
        let mut volume = new_volume(1, "db", 1 << 20, &legs);
        volume.legs[0].state = LegState::Outdated;
        volume.legs[1].state = LegState::UpToDate;
        let shown = reach(&volume, |id| format!("n{id}"));
        let expected = [
            ("n1", vec![0, 1], Some(1)),
            ("n2", vec![0, 1], Some(1)),
            ("n3", vec![2], None),
        ];
        assert_eq!(shown.len(), expected.len());
        for (reach, (node, legs, writes)) in shown.iter().zip(expected) {
            assert_eq!(
                (reach.node.as_str(), &reach.legs, reach.writes),
                (node, &legs, writes)
            );
        }
    }
}
