//! What a run is made of: the caller's options and the scenario the seed picks.
//!
//! Everything a run does follows from `(seed, Options)`. The options are few and all have a
//! command-line spelling, so a failure can print the one command that replays it exactly.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::Timing;

pub use crate::layout::Layout;

/// A deliberate rule-break, to prove a checker fires. Some are switched on in every node's
/// core (they need the core's `mutations` feature); others are bugs planted in the
/// simulator's own driver of the agent (the part the daemon's `agent_host` plays).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutation {
    /// Leader lease granted without a quorum and without the new-leader blackout.
    LeaseWithoutQuorum,
    /// Votes and append acks sent before they are durable.
    SendBeforePersist,
    /// Driver bug: the agent is always told that this node holds its lease, so a node cut
    /// off from the cluster never stops its groups by itself.
    IgnoreLeaseLoss,
    /// Driver bug: the resources of a group placed on this node are started at once, without
    /// waiting for the committed `Acquire` (so without waiting for the old holder to stop).
    SkipAcquire,
}

impl Mutation {
    pub const ALL: [Mutation; 4] = [
        Mutation::LeaseWithoutQuorum,
        Mutation::SendBeforePersist,
        Mutation::IgnoreLeaseLoss,
        Mutation::SkipAcquire,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::LeaseWithoutQuorum => "lease-without-quorum",
            Mutation::SendBeforePersist => "send-before-persist",
            Mutation::IgnoreLeaseLoss => "ignore-lease-loss",
            Mutation::SkipAcquire => "skip-acquire",
        }
    }

    /// Whether the mutation lives in the core (needs `--features mutations`).
    pub fn in_core(self) -> bool {
        matches!(
            self,
            Mutation::LeaseWithoutQuorum | Mutation::SendBeforePersist
        )
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mutation name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown mutation {given:?}; known: lease-without-quorum, send-before-persist, \
     ignore-lease-loss, skip-acquire"
)]
pub struct UnknownMutation {
    pub given: String,
}

impl FromStr for Mutation {
    type Err = UnknownMutation;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Mutation::ALL
            .into_iter()
            .find(|mutation| mutation.name() == text)
            .ok_or_else(|| UnknownMutation {
                given: text.to_string(),
            })
    }
}

/// What the network may do to `MsgSnapshot` frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SnapshotLoss {
    /// Like any other frame: lost, partitioned or dropped when the receiver is down.
    #[default]
    Random,
    /// Never lost on the network, not even across a partition (frames to a stopped process
    /// are still lost). A stop-gap while the core does not recover from a lost snapshot.
    Never,
    /// The first one of the run is lost; every other frame is as `Random`. Reproduces the
    /// lost-snapshot liveness bug deterministically, whatever the random streams do.
    First,
}

impl SnapshotLoss {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotLoss::Random => "random",
            SnapshotLoss::Never => "never",
            SnapshotLoss::First => "first",
        }
    }
}

impl FromStr for SnapshotLoss {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            SnapshotLoss::Random,
            SnapshotLoss::Never,
            SnapshotLoss::First,
        ]
        .into_iter()
        .find(|loss| loss.name() == text)
        .ok_or_else(|| format!("unknown snapshot loss {text:?}; known: random, never, first"))
    }
}

/// Which faults strike, and how often.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultMix {
    /// Every kind of fault.
    #[default]
    Standard,
    /// Mostly power loss (single machines and the whole cluster) and slow disks, which keep
    /// many writes in flight when the power goes: the mix that tests durability.
    PowerLoss,
    /// Only network splits: partitions, isolated nodes, one-way cuts (no process ever
    /// stops or freezes, no frame is lost otherwise).
    Partitions,
    /// No machine or network faults at all: only the workloads (operator actions, membership
    /// changes, resource failures, hangs and crashes, services started by hand).
    None,
}

impl FaultMix {
    pub fn name(self) -> &'static str {
        match self {
            FaultMix::Standard => "standard",
            FaultMix::PowerLoss => "power-loss",
            FaultMix::Partitions => "partitions",
            FaultMix::None => "none",
        }
    }
}

impl FromStr for FaultMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            FaultMix::Standard,
            FaultMix::PowerLoss,
            FaultMix::Partitions,
            FaultMix::None,
        ]
        .into_iter()
        .find(|mix| mix.name() == text)
        .ok_or_else(|| {
            format!("unknown fault mix {text:?}; known: standard, power-loss, partitions, none")
        })
    }
}

/// How to run a seed. The defaults are what `tandem-sim --seed N` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The fault phase lasts between these many seconds (the seed picks).
    pub fault_secs: (u64, u64),
    /// After the heal, a leader must be agreed and a proposal committed within this.
    pub heal_bound_ms: u64,
    pub mutations: BTreeSet<Mutation>,
    pub snapshot_loss: SnapshotLoss,
    pub fault_mix: FaultMix,
    /// Whether the operator sometimes proposes on a follower (which forwards to the leader).
    pub propose_on_followers: bool,
    /// Print every trace line as it happens.
    pub echo_trace: bool,
    /// Resource groups: a volume, groups on it, the agent and the placement loop on every
    /// node, fake resources with faults, and the group checkers.
    pub groups: bool,
    /// Fake resources fail, hang and crash now and then during the fault phase.
    pub resource_faults: bool,
    /// The longest a fake stop takes (it is drawn between 10 ms and this).
    pub stop_max_ms: u64,
    /// A crash of the tandem process (not of the machine) leaves the group's virtual IPs on
    /// the interface, as the kernel does; without it, everything the process started dies
    /// with it (`PR_SET_PDEATHSIG`, which the daemon sets only for `exec` services).
    pub crash_leaves_ips: bool,
    /// The daemon's watchdog (`platform-linux/src/watchdog.rs`): a process frozen past the
    /// lease it last announced, while its node holds a group, is killed (its services and
    /// virtual IPs with it) and restarted a second later. Off: a frozen process keeps running
    /// its resources until it resumes (the model before the watchdog existed).
    pub watchdog: bool,
    /// After the heal, every group must run where it is placed within this.
    pub settle_bound_ms: u64,
}

/// The default length of the fault phase, in seconds.
pub const DEFAULT_FAULT_SECS: (u64, u64) = (30, 60);

impl Default for Options {
    fn default() -> Self {
        Options {
            fault_secs: DEFAULT_FAULT_SECS,
            heal_bound_ms: 10_000,
            mutations: BTreeSet::new(),
            snapshot_loss: SnapshotLoss::Random,
            fault_mix: FaultMix::Standard,
            propose_on_followers: true,
            echo_trace: false,
            groups: true,
            resource_faults: true,
            stop_max_ms: DEFAULT_STOP_MAX_MS,
            crash_leaves_ips: false,
            watchdog: true,
            settle_bound_ms: DEFAULT_SETTLE_BOUND_MS,
        }
    }
}

/// The default upper bound of a fake stop's duration.
pub const DEFAULT_STOP_MAX_MS: u64 = 300;
/// The default bound for groups to settle after the heal.
pub const DEFAULT_SETTLE_BOUND_MS: u64 = 20_000;

impl Options {
    /// The command that replays `seed` with these options, trace on.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command = String::from("cargo run -p tandem-sim");
        if self.mutations.iter().any(|mutation| mutation.in_core()) {
            command.push_str(" --features mutations");
        }
        command.push_str(&format!(" -- --seed {seed}"));
        if self.fault_secs != DEFAULT_FAULT_SECS {
            let (low, high) = self.fault_secs;
            command.push_str(&format!(" --fault-secs {low}-{high}"));
        }
        if self.heal_bound_ms != Options::default().heal_bound_ms {
            command.push_str(&format!(" --heal-bound-ms {}", self.heal_bound_ms));
        }
        if self.snapshot_loss != SnapshotLoss::Random {
            command.push_str(&format!(" --snapshot-loss {}", self.snapshot_loss.name()));
        }
        if self.fault_mix != FaultMix::Standard {
            command.push_str(&format!(" --faults {}", self.fault_mix.name()));
        }
        if !self.propose_on_followers {
            command.push_str(" --leader-proposals-only");
        }
        if !self.groups {
            command.push_str(" --no-groups");
        }
        if !self.resource_faults {
            command.push_str(" --no-resource-faults");
        }
        if self.stop_max_ms != DEFAULT_STOP_MAX_MS {
            command.push_str(&format!(" --stop-max-ms {}", self.stop_max_ms));
        }
        if self.crash_leaves_ips {
            command.push_str(" --crash-leaves-ips");
        }
        if !self.watchdog {
            command.push_str(" --no-watchdog");
        }
        if self.settle_bound_ms != DEFAULT_SETTLE_BOUND_MS {
            command.push_str(&format!(" --settle-bound-ms {}", self.settle_bound_ms));
        }
        for mutation in &self.mutations {
            command.push_str(&format!(" --mutation {mutation}"));
        }
        command.push_str(" --trace");
        command
    }
}

/// The cluster a run starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Data voters (node 1 founds the cluster, the others join).
    pub voters: usize,
    /// Plus a witness (the two-node topology).
    pub witness: bool,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} voters", self.voters)?;
        if self.witness {
            write!(f, " + witness")?;
        }
        Ok(())
    }
}

/// What the seed chose for this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub shape: Shape,
    /// How long faults are injected, after the cluster is formed.
    pub fault_ms: u64,
    /// Whether the workload also joins and removes nodes.
    pub membership: bool,
    pub timing: Timing,
    /// The volumes and groups the operator creates once the cluster has formed (`None`:
    /// groups are off).
    pub layout: Option<Layout>,
}

impl Scenario {
    pub fn pick(rng: &mut ChaCha8Rng, options: &Options) -> Scenario {
        let shape = match rng.gen_range(0..20) {
            0..=7 => Shape {
                voters: 3,
                witness: false,
            },
            8..=14 => Shape {
                voters: 5,
                witness: false,
            },
            _ => Shape {
                voters: 2,
                witness: true,
            },
        };
        let (low, high) = options.fault_secs;
        let fault_ms = rng.gen_range(low.min(high) * 1000..=high.max(low) * 1000);
        let membership = rng.gen_bool(0.4);
        // Small compaction intervals make lagging nodes catch up through snapshots.
        let compact_every = [4, 16, 64, 1000][rng.gen_range(0..4)];
        let layout = options.groups.then(|| Layout::pick(rng, shape));
        Scenario {
            shape,
            fault_ms,
            membership,
            layout,
            timing: Timing {
                compact_every,
                ..Timing::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_command_carries_every_non_default_option() {
        let options = Options::default();
        assert_eq!(
            options.replay_command(7),
            "cargo run -p tandem-sim -- --seed 7 --trace"
        );
        let options = Options {
            fault_secs: (5, 10),
            mutations: BTreeSet::from([Mutation::SendBeforePersist]),
            ..Options::default()
        };
        assert_eq!(
            options.replay_command(9),
            "cargo run -p tandem-sim --features mutations -- --seed 9 --fault-secs 5-10 \
             --mutation send-before-persist --trace"
        );
    }

    #[test]
    fn mutation_names_round_trip() {
        for mutation in Mutation::ALL {
            assert_eq!(mutation.name().parse::<Mutation>(), Ok(mutation));
        }
        assert!("nope".parse::<Mutation>().is_err());
    }
}
