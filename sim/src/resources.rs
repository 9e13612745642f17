//! Fake resources: the ground truth of what runs on each simulated machine, and how the fake
//! runner's operations end.
//!
//! Per machine and per (group, resource index) a resource is either running or not; a
//! `volume` resource is no process (the agent handles it through proposals) and never appears
//! here. An operation takes effect at the instant it completes: a start makes the resource run
//! (or, when it fails or hangs, leaves it half-started or not), a stop ends it (unless the
//! stop fails), a monitor reports what is true then. A copy started by hand (the operator
//! mistake of DESIGN.md §6) is marked as such: the cluster did not start it.
//!
//! What dies when: a machine's power loss takes everything on it (processes die, virtual IPs
//! and mounts vanish with the kernel). A crash of the tandem process alone kills the `exec`
//! services it started, because the daemon starts them with `PR_SET_PDEATHSIG(SIGKILL)`;
//! a virtual IP stays on its interface (the kernel keeps addresses) unless the simulator is
//! told to idealise that away (`Options::crash_leaves_ips == false`, the default: everything
//! the process started dies with it). Copies started by hand are not the daemon's children
//! and survive a process crash either way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::agent::OpKind;
use tandem_core::group::ResourceSpec;

/// How long a fake start may take before the runner gives up (the daemon's default is 60 s;
/// scaled down so that hangs resolve within a run).
pub const START_TIMEOUT_MS: u64 = 3_000;
/// Fake operations take at least this long.
pub const OP_MIN_MS: u64 = 10;
/// And at most this long (stops: `Options::stop_max_ms`).
pub const OP_MAX_MS: u64 = 300;

/// What a fake resource is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeKind {
    /// A virtual IP: survives a crash of the tandem process (the kernel keeps it).
    Ip,
    /// A service or a mount: dies with the tandem process (PDEATHSIG) in the default model.
    Process,
}

impl FakeKind {
    /// The fake behind a resource; `None` for a volume (no process).
    pub fn of(spec: &ResourceSpec) -> Option<FakeKind> {
        match spec {
            ResourceSpec::Volume { .. } => None,
            ResourceSpec::Ip { .. } => Some(FakeKind::Ip),
            ResourceSpec::Filesystem { .. } | ResourceSpec::Service { .. } => {
                Some(FakeKind::Process)
            }
        }
    }
}

/// One running resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub kind: FakeKind,
    /// Started by the operator by hand, not by the cluster.
    pub by_hand: bool,
    /// Global time it started.
    pub since: u64,
}

/// What runs on one machine.
#[derive(Clone, Debug, Default)]
pub struct Fakes {
    running: BTreeMap<(String, usize), Running>,
}

impl Fakes {
    pub fn is_running(&self, group: &str, index: usize) -> bool {
        self.running.contains_key(&(group.to_string(), index))
    }

    pub fn get(&self, group: &str, index: usize) -> Option<&Running> {
        self.running.get(&(group.to_string(), index))
    }

    /// Starts a resource (already running: the cluster adopts a copy started by hand).
    pub fn start(&mut self, group: &str, index: usize, kind: FakeKind, by_hand: bool, now: u64) {
        let entry = self
            .running
            .entry((group.to_string(), index))
            .or_insert(Running {
                kind,
                by_hand,
                since: now,
            });
        entry.by_hand &= by_hand;
    }

    /// Ends a resource; whether it was running.
    pub fn stop(&mut self, group: &str, index: usize) -> bool {
        self.running.remove(&(group.to_string(), index)).is_some()
    }

    /// The tandem process died: what it started dies with it, except virtual IPs when
    /// `leaves_ips`. Copies started by hand survive. Returns what died.
    pub fn process_died(&mut self, leaves_ips: bool) -> Vec<(String, usize)> {
        let survives =
            |running: &Running| running.by_hand || (leaves_ips && running.kind == FakeKind::Ip);
        self.kill(|running| !survives(running))
    }

    /// The machine lost power: everything is gone. Returns what died.
    pub fn power_lost(&mut self) -> Vec<(String, usize)> {
        self.kill(|_| true)
    }

    fn kill(&mut self, dies: impl Fn(&Running) -> bool) -> Vec<(String, usize)> {
        let dead: Vec<(String, usize)> = self
            .running
            .iter()
            .filter(|(_, running)| dies(running))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &dead {
            self.running.remove(key);
        }
        dead
    }

    /// Groups with a resource the cluster started running here.
    pub fn managed_groups(&self) -> BTreeSet<&str> {
        self.running
            .iter()
            .filter(|(_, running)| !running.by_hand)
            .map(|((group, _), _)| group.as_str())
            .collect()
    }

    /// Every running resource: (group, index, what).
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize, &Running)> {
        self.running
            .iter()
            .map(|((group, index), running)| (group.as_str(), *index, running))
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

/// How a fake operation will end, drawn when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fate {
    /// Does what it should.
    Normal,
    /// Fails (a start may leave the resource half-started).
    Fail,
    /// Hangs until the runner's timeout, then fails.
    Hang,
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fate::Normal => "ok",
            Fate::Fail => "will fail",
            Fate::Hang => "will hang",
        })
    }
}

/// A drawn operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpPlan {
    pub fate: Fate,
    /// Completes this long after it starts.
    pub takes_ms: u64,
    /// A failed or hung start leaves the resource running (half-started).
    pub leaves_running: bool,
}

/// Odds of the resource faults, per operation.
const START_FAILS: f64 = 0.04;
const START_HANGS: f64 = 0.02;
const MONITOR_FAILS: f64 = 0.01;
const MONITOR_HANGS: f64 = 0.005;
const STOP_FAILS: f64 = 0.02;

/// Draws how an operation of `kind` on a `fake` will end. Without `faults` every operation is
/// normal. A start that fails may leave the resource half-started; one that hangs is killed
/// by the runner at its timeout (the daemon kills an `exec` child's process group), except an
/// IP, whose address may or may not have been added when the netlink call was abandoned.
pub fn draw(
    rng: &mut ChaCha8Rng,
    kind: OpKind,
    fake: FakeKind,
    faults: bool,
    stop_max_ms: u64,
    monitor_timeout_ms: u64,
) -> OpPlan {
    let roll: f64 = rng.gen();
    let (fails, hangs) = match kind {
        OpKind::Start => (START_FAILS, START_HANGS),
        OpKind::Monitor => (MONITOR_FAILS, MONITOR_HANGS),
        // Stops never hang: they complete within `stop_max_ms`.
        OpKind::Stop => (STOP_FAILS, 0.0),
    };
    let fate = if !faults {
        Fate::Normal
    } else if roll < hangs {
        Fate::Hang
    } else if roll < hangs + fails {
        Fate::Fail
    } else {
        Fate::Normal
    };
    let max = match kind {
        OpKind::Stop => stop_max_ms.max(OP_MIN_MS),
        _ => OP_MAX_MS,
    };
    let takes_ms = match (fate, kind) {
        (Fate::Hang, OpKind::Start) => START_TIMEOUT_MS,
        (Fate::Hang, _) => monitor_timeout_ms,
        _ => rng.gen_range(OP_MIN_MS..=max),
    };
    let leaves_running = kind == OpKind::Start
        && match fate {
            Fate::Normal => false,
            Fate::Fail => rng.gen_bool(0.5),
            Fate::Hang => fake == FakeKind::Ip && rng.gen_bool(0.5),
        };
    OpPlan {
        fate,
        takes_ms,
        leaves_running,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_process_crash_kills_children_but_not_ips_or_hand_started_copies() {
        let mut fakes = Fakes::default();
        fakes.start("g1", 1, FakeKind::Ip, false, 0);
        fakes.start("g1", 2, FakeKind::Process, false, 0);
        fakes.start("g2", 2, FakeKind::Process, true, 0);
        let mut kept = fakes.clone();
        assert_eq!(kept.process_died(true), vec![("g1".to_string(), 2)]);
        assert!(kept.is_running("g1", 1) && kept.is_running("g2", 2));
        assert_eq!(kept.managed_groups(), BTreeSet::from(["g1"]));
        assert_eq!(fakes.process_died(false).len(), 2);
        assert_eq!(fakes.managed_groups(), BTreeSet::new());
        assert_eq!(fakes.power_lost().len(), 1);
        assert!(fakes.is_empty());
    }

    #[test]
    fn the_cluster_adopts_a_copy_started_by_hand() {
        let mut fakes = Fakes::default();
        fakes.start("g1", 2, FakeKind::Process, true, 5);
        fakes.start("g1", 2, FakeKind::Process, false, 9);
        let running = fakes.get("g1", 2).unwrap();
        assert!(!running.by_hand);
        assert_eq!(running.since, 5);
    }

    #[test]
    fn stops_are_bounded_and_never_hang() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..2000 {
            let plan = draw(&mut rng, OpKind::Stop, FakeKind::Ip, true, 300, 2000);
            assert!(plan.fate != Fate::Hang);
            assert!((OP_MIN_MS..=300).contains(&plan.takes_ms));
            let plan = draw(&mut rng, OpKind::Start, FakeKind::Process, false, 300, 2000);
            assert_eq!(plan.fate, Fate::Normal);
        }
    }
}
