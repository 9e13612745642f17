//! The fake network: decides the fate of every frame a node sends.
//!
//! A frame is blocked by a partition, lost, delivered once, or delivered twice, each delivery
//! after its own random delay (so frames overtake each other: reordering). Partitions are sets
//! of blocked *directed* links, so a one-way cut (A hears B, B does not hear A) is just one
//! direction blocked. Several faults can be active at once; each is removed by its id, and
//! `heal` removes them all. Nothing here knows about nodes crashing: the world checks that.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::NodeId;

/// How a link behaves: loss, duplication and delay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quality {
    pub drop: f64,
    pub duplicate: f64,
    pub delay_min: u64,
    pub delay_max: u64,
    /// Chance of a long delay (up to `spike_max` ms): the usual source of reordering.
    pub spike: f64,
    pub spike_max: u64,
}

impl Quality {
    /// A healthy LAN, with rare hiccups.
    pub const NORMAL: Quality = Quality {
        drop: 0.002,
        duplicate: 0.002,
        delay_min: 1,
        delay_max: 4,
        spike: 0.01,
        spike_max: 60,
    };

    /// After the heal: no loss, no duplicates, short delays.
    pub const HEALED: Quality = Quality {
        drop: 0.0,
        duplicate: 0.0,
        delay_min: 1,
        delay_max: 4,
        spike: 0.0,
        spike_max: 0,
    };

    /// The worst of two: used when several degradations overlap.
    fn worst(self, other: Quality) -> Quality {
        Quality {
            drop: self.drop.max(other.drop),
            duplicate: self.duplicate.max(other.duplicate),
            delay_min: self.delay_min.max(other.delay_min),
            delay_max: self.delay_max.max(other.delay_max),
            spike: self.spike.max(other.spike),
            spike_max: self.spike_max.max(other.spike_max),
        }
    }
}

/// What happens to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Partitioned,
    Lost,
    /// Delivered after each of these delays (two for a duplicate).
    Deliver(Vec<u64>),
}

/// Counters for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub partitioned: u64,
    pub lost: u64,
    pub duplicated: u64,
}

/// The network between all simulated nodes.
pub struct Network {
    rng: ChaCha8Rng,
    base: Quality,
    degraded: BTreeMap<u64, Quality>,
    blocked: BTreeMap<u64, BTreeSet<(NodeId, NodeId)>>,
    pub stats: NetStats,
}

impl Network {
    pub fn new(rng: ChaCha8Rng) -> Network {
        Network {
            rng,
            base: Quality::NORMAL,
            degraded: BTreeMap::new(),
            blocked: BTreeMap::new(),
            stats: NetStats::default(),
        }
    }

    /// The fate of a frame sent now from `from` to `to`.
    pub fn fate(&mut self, from: NodeId, to: NodeId) -> Fate {
        self.stats.sent += 1;
        if self.is_blocked(from, to) {
            self.stats.partitioned += 1;
            return Fate::Partitioned;
        }
        let quality = self.quality();
        if quality.drop > 0.0 && self.rng.gen_bool(quality.drop) {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        let mut delays = vec![self.delay(quality)];
        if quality.duplicate > 0.0 && self.rng.gen_bool(quality.duplicate) {
            self.stats.duplicated += 1;
            delays.push(self.delay(quality));
        }
        Fate::Deliver(delays)
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked
            .values()
            .any(|links| links.contains(&(from, to)))
    }

    /// Blocks these directed links until `unblock(id)`.
    pub fn block(&mut self, id: u64, links: BTreeSet<(NodeId, NodeId)>) {
        self.blocked.insert(id, links);
    }

    pub fn unblock(&mut self, id: u64) {
        self.blocked.remove(&id);
    }

    /// Makes every link at least this bad until `restore(id)`.
    pub fn degrade(&mut self, id: u64, quality: Quality) {
        self.degraded.insert(id, quality);
    }

    pub fn restore(&mut self, id: u64) {
        self.degraded.remove(&id);
    }

    /// Ends every fault: no partitions, no loss, short delays from now on.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.degraded.clear();
        self.base = Quality::HEALED;
    }

    fn quality(&self) -> Quality {
        self.degraded
            .values()
            .fold(self.base, |quality, &other| quality.worst(other))
    }

    fn delay(&mut self, quality: Quality) -> u64 {
        if quality.spike > 0.0 && self.rng.gen_bool(quality.spike) {
            return self
                .rng
                .gen_range(quality.delay_min..=quality.spike_max.max(quality.delay_min));
        }
        self.rng
            .gen_range(quality.delay_min..=quality.delay_max.max(quality.delay_min))
    }
}

/// The directed links cut by splitting `nodes` into `groups` (every link between groups).
pub fn split_links(groups: &[BTreeSet<NodeId>]) -> BTreeSet<(NodeId, NodeId)> {
    let mut links = BTreeSet::new();
    for (i, a) in groups.iter().enumerate() {
        for (j, b) in groups.iter().enumerate() {
            if i == j {
                continue;
            }
            for &from in a {
                for &to in b {
                    links.insert((from, to));
                }
            }
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn partitions_block_only_their_links_and_heal() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(1));
        let groups = [BTreeSet::from([1, 2]), BTreeSet::from([3])];
        net.block(7, split_links(&groups));
        net.block(8, BTreeSet::from([(1, 2)]));
        assert!(net.is_blocked(1, 3) && net.is_blocked(3, 2) && net.is_blocked(1, 2));
        assert!(!net.is_blocked(2, 1), "one-way cut");
        net.unblock(8);
        assert!(!net.is_blocked(1, 2));
        net.heal();
        assert!(matches!(net.fate(1, 3), Fate::Deliver(_)));
        assert!(matches!(net.fate(3, 1), Fate::Deliver(delays) if delays.len() == 1));
    }

    #[test]
    fn the_worst_degradation_wins() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(2));
        let lossy = Quality {
            drop: 1.0,
            ..Quality::NORMAL
        };
        net.degrade(1, lossy);
        assert_eq!(net.fate(1, 2), Fate::Lost);
        net.restore(1);
        net.heal();
        assert!(matches!(net.fate(1, 2), Fate::Deliver(_)));
    }
}
