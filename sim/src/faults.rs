//! The random fault schedule: which fault strikes next, where, and for how long.
//!
//! Faults are drawn one at a time from their own random stream, so the schedule of a seed
//! does not shift when, say, the network draws a different number of delays. This module only
//! decides; the world carries a fault out (stops a process, blocks links, slows a disk) and
//! undoes it when its time is up or when the heal phase begins.

use std::collections::BTreeSet;
use std::fmt;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::NodeId;

use crate::config::FaultMix;
use crate::net::{split_links, Quality};

/// The kinds of fault, for choosing and for the summary's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The process dies; writes in flight survive as a random prefix.
    Crash,
    /// The machine loses power; every write in flight vanishes.
    PowerLoss,
    /// Every machine loses power at once.
    ClusterPowerLoss,
    /// The process stops running for a while (a VM freeze, a long GC pause).
    Pause,
    /// The nodes split into groups that cannot hear each other.
    Partition,
    /// One node is cut off from all others.
    Isolate,
    /// Some links fail in one direction only.
    OneWay,
    /// Every link loses, duplicates and delays many frames.
    Lossy,
    /// One node's disk becomes slow.
    SlowDisk,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Crash,
        FaultKind::PowerLoss,
        FaultKind::ClusterPowerLoss,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Isolate,
        FaultKind::OneWay,
        FaultKind::Lossy,
        FaultKind::SlowDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::ClusterPowerLoss => "cluster-power-loss",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Isolate => "isolate",
            FaultKind::OneWay => "one-way",
            FaultKind::Lossy => "lossy-network",
            FaultKind::SlowDisk => "slow-disk",
        }
    }

    /// How often each kind is drawn in `mix`, relative to the others.
    fn weight(self, mix: FaultMix) -> u32 {
        match mix {
            FaultMix::None => return 0,
            FaultMix::Partitions => {
                return match self {
                    FaultKind::Partition => 14,
                    FaultKind::Isolate => 12,
                    FaultKind::OneWay => 10,
                    _ => 0,
                }
            }
            FaultMix::Standard | FaultMix::PowerLoss => {}
        }
        if mix == FaultMix::PowerLoss {
            return match self {
                FaultKind::PowerLoss => 30,
                FaultKind::ClusterPowerLoss => 15,
                FaultKind::SlowDisk => 25,
                FaultKind::Partition | FaultKind::Isolate => 10,
                _ => 0,
            };
        }
        match self {
            FaultKind::Crash => 14,
            FaultKind::PowerLoss => 12,
            FaultKind::ClusterPowerLoss => 3,
            FaultKind::Pause => 8,
            FaultKind::Partition => 14,
            FaultKind::Isolate => 12,
            FaultKind::OneWay => 10,
            FaultKind::Lossy => 8,
            FaultKind::SlowDisk => 12,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A concrete fault to carry out now.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Stop `node` (losing in-flight writes if `power_loss`); restart it after `down_ms`.
    Stop {
        node: NodeId,
        power_loss: bool,
        down_ms: u64,
    },
    /// Power loss on every node; each restarts after its own delay.
    StopAll {
        down_ms: Vec<(NodeId, u64)>,
    },
    Pause {
        node: NodeId,
        ms: u64,
    },
    /// Block these directed links for `ms`.
    Cut {
        kind: FaultKind,
        links: BTreeSet<(NodeId, NodeId)>,
        ms: u64,
        what: String,
    },
    Lossy {
        quality: Quality,
        ms: u64,
    },
    SlowDisk {
        node: NodeId,
        extra_ms: u64,
        ms: u64,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Stop {
                power_loss: false, ..
            } => FaultKind::Crash,
            Fault::Stop { .. } => FaultKind::PowerLoss,
            Fault::StopAll { .. } => FaultKind::ClusterPowerLoss,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Cut { kind, .. } => *kind,
            Fault::Lossy { .. } => FaultKind::Lossy,
            Fault::SlowDisk { .. } => FaultKind::SlowDisk,
        }
    }
}

/// What the fault chooser may strike.
pub struct View {
    /// Every node with a process (running or down), excluding removed ones.
    pub nodes: Vec<NodeId>,
    /// The subset that is running now.
    pub running: Vec<NodeId>,
    /// Voters in the cluster state, for keeping most crashes below the quorum line.
    pub voters: usize,
}

/// Draws the next fault, or `None` when the drawn kind has nothing to strike.
pub fn choose(rng: &mut ChaCha8Rng, view: &View, mix: FaultMix) -> Option<Fault> {
    let total: u32 = FaultKind::ALL.iter().map(|kind| kind.weight(mix)).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.gen_range(0..total);
    let mut kind = FaultKind::Crash;
    for candidate in FaultKind::ALL {
        if pick < candidate.weight(mix) {
            kind = candidate;
            break;
        }
        pick -= candidate.weight(mix);
    }
    build(rng, view, kind)
}

/// Gap until the next fault is drawn.
pub fn next_gap(rng: &mut ChaCha8Rng) -> u64 {
    rng.gen_range(300..=2500)
}

fn build(rng: &mut ChaCha8Rng, view: &View, kind: FaultKind) -> Option<Fault> {
    match kind {
        FaultKind::Crash | FaultKind::PowerLoss => stop(rng, view, kind == FaultKind::PowerLoss),
        FaultKind::ClusterPowerLoss => Some(Fault::StopAll {
            down_ms: view
                .running
                .iter()
                .map(|&node| (node, rng.gen_range(300..=3000)))
                .collect(),
        }),
        FaultKind::Pause => Some(Fault::Pause {
            node: *view.running.choose(rng)?,
            ms: rng.gen_range(200..=3000),
        }),
        FaultKind::Partition => partition(rng, view),
        FaultKind::Isolate => {
            let node = *view.nodes.choose(rng)?;
            let rest: BTreeSet<NodeId> =
                view.nodes.iter().copied().filter(|&n| n != node).collect();
            Some(Fault::Cut {
                kind,
                links: split_links(&[BTreeSet::from([node]), rest]),
                ms: rng.gen_range(300..=6000),
                what: format!("n{node} isolated"),
            })
        }
        FaultKind::OneWay => one_way(rng, view),
        FaultKind::Lossy => Some(Fault::Lossy {
            quality: Quality {
                drop: rng.gen_range(0.05..0.5),
                duplicate: rng.gen_range(0.0..0.2),
                delay_min: 1,
                delay_max: rng.gen_range(10..=80),
                spike: rng.gen_range(0.0..0.1),
                spike_max: 400,
            },
            ms: rng.gen_range(500..=5000),
        }),
        FaultKind::SlowDisk => Some(Fault::SlowDisk {
            node: *view.running.choose(rng)?,
            extra_ms: rng.gen_range(20..=500),
            ms: rng.gen_range(500..=6000),
        }),
    }
}

/// Crashes one running node. Usually keeps a quorum of voters running; sometimes not.
fn stop(rng: &mut ChaCha8Rng, view: &View, power_loss: bool) -> Option<Fault> {
    let down = view.nodes.len() - view.running.len();
    let tolerated = view.voters.saturating_sub(1) / 2;
    if down >= tolerated.max(1) && !rng.gen_bool(0.15) {
        return None;
    }
    Some(Fault::Stop {
        node: *view.running.choose(rng)?,
        power_loss,
        down_ms: rng.gen_range(200..=5000),
    })
}

fn partition(rng: &mut ChaCha8Rng, view: &View) -> Option<Fault> {
    if view.nodes.len() < 2 {
        return None;
    }
    let count = if view.nodes.len() >= 4 && rng.gen_bool(0.3) {
        3
    } else {
        2
    };
    let mut shuffled = view.nodes.clone();
    shuffled.shuffle(rng);
    let mut groups = vec![BTreeSet::new(); count];
    for (i, &node) in shuffled.iter().enumerate() {
        // The first `count` nodes seed the groups so that none is empty.
        let group = if i < count {
            i
        } else {
            rng.gen_range(0..count)
        };
        groups[group].insert(node);
    }
    let what = groups
        .iter()
        .map(|group| format!("{group:?}"))
        .collect::<Vec<_>>()
        .join(" | ");
    Some(Fault::Cut {
        kind: FaultKind::Partition,
        links: split_links(&groups),
        ms: rng.gen_range(300..=6000),
        what: format!("partition {what}"),
    })
}

/// One direction fails: a single link, everything out of a node, or everything into it.
fn one_way(rng: &mut ChaCha8Rng, view: &View) -> Option<Fault> {
    let node = *view.nodes.choose(rng)?;
    let others: Vec<NodeId> = view.nodes.iter().copied().filter(|&n| n != node).collect();
    let other = *others.choose(rng)?;
    let (links, what): (BTreeSet<(NodeId, NodeId)>, String) = match rng.gen_range(0..3) {
        0 => (
            BTreeSet::from([(node, other)]),
            format!("n{other} cannot hear n{node}"),
        ),
        1 => (
            others.iter().map(|&o| (node, o)).collect(),
            format!("nobody hears n{node}"),
        ),
        _ => (
            others.iter().map(|&o| (o, node)).collect(),
            format!("n{node} hears nobody"),
        ),
    };
    Some(Fault::Cut {
        kind: FaultKind::OneWay,
        links,
        ms: rng.gen_range(300..=6000),
        what,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_kind_gets_drawn_and_targets_known_nodes() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let view = View {
            nodes: vec![1, 2, 3, 4, 5],
            running: vec![1, 2, 3, 4, 5],
            voters: 5,
        };
        let mut seen = BTreeSet::new();
        for _ in 0..2000 {
            if let Some(fault) = choose(&mut rng, &view, FaultMix::Standard) {
                seen.insert(fault.kind());
                if let Fault::Cut { links, .. } = &fault {
                    assert!(!links.is_empty());
                    assert!(links.iter().all(|(a, b)| a != b && *a <= 5 && *b <= 5));
                }
            }
        }
        assert_eq!(seen.len(), FaultKind::ALL.len());
    }

    #[test]
    fn crashes_mostly_keep_a_quorum() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let view = View {
            nodes: vec![1, 2, 3],
            running: vec![1, 2],
            voters: 3,
        };
        let stops = (0..1000)
            .filter(|_| stop(&mut rng, &view, false).is_some())
            .count();
        assert!(stops < 300, "{stops} of 1000 went below quorum");
    }
}
