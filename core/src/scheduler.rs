//! The scheduler: from the committed cluster state and the leader's liveness observations to
//! the desired placement of every group, with the reasons.
//!
//! It is a pure function, run by the Raft leader, which commits its decisions as
//! `GroupChange::Placed`. Being pure makes it table-testable (core/tests/scheduler_scenarios,
//! in the spirit of Pacemaker's scheduler regression tests) and lets `tandem explain` replay
//! exactly the reasoning that placed a group.
//!
//! The rules, in order of precedence:
//! 1. A node is *eligible* for a group only if it is a member that may hold resources (never a
//!    witness), online, holding a lease, not in standby, not quarantined for that group, and
//!    reaches an `UpToDate` leg of every volume of the group. Topologies need no special code:
//!    legs decide reachability, so an N+1 spare (a leg on every Ni's volume) or a dual array
//!    (shared legs reached by several nodes) fall out of this rule.
//! 2. A group whose node is *gone* (offline, or without a lease) stays placed there until the
//!    node has been gone for `failover_timeout_ms`. A gone node stops its own services only
//!    when its lease lapses, and it cannot tell us when that happened; moving earlier could run
//!    the group twice (two IPs, two writers of a shared leg). See [`min_failover_timeout_ms`].
//! 3. A disabled group is placed nowhere. An explicit move pins the group to its target while
//!    the target is eligible; otherwise the pin is reported as refused and the rules go on.
//! 4. A group stays on its node while that node is eligible (stickiness), unless
//!    `failback = auto` and a node more than `stickiness` places ahead in `preferred` is
//!    eligible. Groups are never moved for load alone: every move is an outage.
//! 5. Otherwise it goes to the best eligible node: on a failover, nodes of the old node's site
//!    first (DR: local failover inside a site); then `preferred` order; then the fewest groups;
//!    then the lowest id. Every tie is broken, so the result is deterministic.

use std::collections::BTreeMap;
use std::fmt;

use crate::group::{Failback, Group, GroupError};
use crate::ids::NodeId;
use crate::state::{Admin, ClusterState, Role};
use crate::timing::Timing;
use crate::volume::{LegId, LegState};

/// Extra time on top of `lease_timeout` before a gone node's groups move. It covers what the
/// lease arithmetic does not: clocks running at slightly different rates, the gone node's tick
/// granularity in noticing that its lease lapsed, and the time it takes to stop its services
/// and drop its IPs after noticing.
pub const FAILOVER_MARGIN_MS: u64 = 500;

/// The smallest safe `failover_timeout_ms`: a node the leader last heard from at `t` lost its
/// lease by `t + lease_timeout` (leases start at the *send* time of a confirmed ping round, so
/// they never outlive the last exchange by more than that), and has stopped its services by
/// `t + lease_timeout + margin`. A failover timeout must exceed this.
pub fn min_failover_timeout_ms(timing: &Timing) -> u64 {
    timing.lease_timeout_ms + FAILOVER_MARGIN_MS
}

/// The default failover timeout: one ping interval beyond the minimum, so a node that was
/// just about to be heard from again is not failed over for nothing.
pub fn default_failover_timeout_ms(timing: &Timing) -> u64 {
    min_failover_timeout_ms(timing) + timing.ping_interval_ms
}

/// A failover timeout that would allow two nodes to run a group at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "failover timeout {given} ms is unsafe: it must exceed lease_timeout ({lease} ms) + \
     margin ({FAILOVER_MARGIN_MS} ms) = {minimum} ms"
)]
pub struct FailoverTimeoutError {
    pub given: u64,
    pub lease: u64,
    pub minimum: u64,
}

/// Refuses a failover timeout that does not exceed `lease_timeout + margin`.
pub fn check_failover_timeout(given: u64, timing: &Timing) -> Result<(), FailoverTimeoutError> {
    let minimum = min_failover_timeout_ms(timing);
    if given > minimum {
        Ok(())
    } else {
        Err(FailoverTimeoutError {
            given,
            lease: timing.lease_timeout_ms,
            minimum,
        })
    }
}

/// What the leader observes about one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLiveness {
    /// Answers pings.
    pub online: bool,
    /// Holds a node lease granted by the leader (the leader itself: its leader lease).
    pub holds_lease: bool,
    /// How long since the leader last heard from it with a lease (0 while online with one).
    pub offline_for_ms: u64,
}

/// The leader's observations, and how long a gone node's groups wait before they move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Must exceed `lease_timeout + margin` ([`check_failover_timeout`]).
    pub failover_timeout_ms: u64,
    /// A node missing here is unknown: treated as gone for 0 ms, the safe assumption of a
    /// leader that has not observed it yet.
    pub nodes: BTreeMap<NodeId, NodeLiveness>,
}

impl Liveness {
    pub fn new(failover_timeout_ms: u64) -> Liveness {
        Liveness {
            failover_timeout_ms,
            nodes: BTreeMap::new(),
        }
    }

    pub fn of(&self, node: NodeId) -> NodeLiveness {
        self.nodes.get(&node).copied().unwrap_or_default()
    }

    /// Offline or without a lease: it may still be running its groups until its lease lapses.
    pub fn is_gone(&self, node: NodeId) -> bool {
        let live = self.of(node);
        !live.online || !live.holds_lease
    }
}

/// Why a node cannot run a group now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    NotMember,
    Witness,
    Offline {
        for_ms: u64,
        failover_after_ms: u64,
    },
    NoLease {
        for_ms: u64,
        failover_after_ms: u64,
    },
    Standby,
    Quarantined {
        until_unix: u64,
        left_secs: u64,
    },
    NoVolume {
        volume: String,
    },
    NoLeg {
        volume: String,
    },
    LegNotUpToDate {
        volume: String,
        leg: LegId,
        state: &'static str,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::NotMember => write!(f, "not a member of the cluster"),
            Ineligible::Witness => write!(f, "witness (never runs resources)"),
            Ineligible::Offline {
                for_ms,
                failover_after_ms,
            } => write!(
                f,
                "offline for {for_ms} ms, failover after {failover_after_ms} ms"
            ),
            Ineligible::NoLease {
                for_ms,
                failover_after_ms,
            } => write!(
                f,
                "holds no lease (for {for_ms} ms, failover after {failover_after_ms} ms)"
            ),
            Ineligible::Standby => write!(f, "in standby"),
            Ineligible::Quarantined {
                until_unix,
                left_secs,
            } => write!(
                f,
                "quarantined for this group after repeated failures until {until_unix} \
                 ({left_secs} s left)"
            ),
            Ineligible::NoVolume { volume } => write!(f, "volume {volume} does not exist"),
            Ineligible::NoLeg { volume } => write!(f, "reaches no leg of volume {volume}"),
            Ineligible::LegNotUpToDate { volume, leg, state } => {
                write!(f, "no UpToDate leg of volume {volume} (leg {leg} {state})")
            }
        }
    }
}

/// One node's verdict for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeVerdict {
    pub node: NodeId,
    pub name: String,
    /// `Ok(load)`: eligible, running `load` other groups.
    pub verdict: Result<usize, Ineligible>,
    /// Position in the group's `preferred` list.
    pub preferred_rank: Option<usize>,
}

/// Why a group runs where it runs, or why it cannot run anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub group: String,
    pub current: Option<NodeId>,
    pub place_on: Option<NodeId>,
    /// One sentence: the rule that decided.
    pub summary: String,
    /// Every member, plus any non-member the group names, in id order.
    pub nodes: Vec<NodeVerdict>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "group {}: {}", self.group, self.summary)?;
        for node in &self.nodes {
            write!(f, "  {}: ", node.name)?;
            match (&node.verdict, node.preferred_rank) {
                (Ok(load), Some(rank)) => {
                    write!(f, "eligible (load {load}; preferred #{})", rank + 1)?
                }
                (Ok(load), None) => write!(f, "eligible (load {load}; not preferred)")?,
                (Err(why), _) => write!(f, "{why}")?,
            }
            if Some(node.node) == self.current {
                write!(f, " [current]")?;
            }
            if Some(node.node) == self.place_on {
                write!(f, " [chosen]")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The desired placement of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub group: String,
    /// Where the group is committed to run now.
    pub current: Option<NodeId>,
    pub place_on: Option<NodeId>,
    pub reason: Explanation,
}

impl Decision {
    /// Whether the leader must commit a new placement.
    pub fn changes_placement(&self) -> bool {
        self.current != self.place_on
    }
}

/// Whether `node` may run `group` now, and if not, why.
pub fn eligibility(
    state: &ClusterState,
    liveness: &Liveness,
    now_unix: u64,
    group: &Group,
    node: NodeId,
) -> Result<(), Ineligible> {
    let info = state.nodes.get(&node).ok_or(Ineligible::NotMember)?;
    if info.role == Role::Witness {
        return Err(Ineligible::Witness);
    }
    let live = liveness.of(node);
    let (for_ms, failover_after_ms) = (live.offline_for_ms, liveness.failover_timeout_ms);
    if !live.online {
        return Err(Ineligible::Offline {
            for_ms,
            failover_after_ms,
        });
    }
    if !live.holds_lease {
        return Err(Ineligible::NoLease {
            for_ms,
            failover_after_ms,
        });
    }
    if info.admin == Admin::Standby {
        return Err(Ineligible::Standby);
    }
    if let Some(until_unix) = group.status.quarantine_of(node, now_unix) {
        return Err(Ineligible::Quarantined {
            until_unix,
            left_secs: until_unix - now_unix,
        });
    }
    for volume in group.spec.volumes() {
        let no_volume = || Ineligible::NoVolume {
            volume: volume.to_string(),
        };
        let info = state.volume_by_name(volume).ok_or_else(no_volume)?;
        // Every leg the node reaches counts (dual-array: both shared legs), not only the first.
        let mut reached = info.legs.iter().filter(|leg| leg.nodes.contains(&node));
        let first = reached.clone().next().ok_or_else(|| Ineligible::NoLeg {
            volume: volume.to_string(),
        })?;
        if !reached.any(|leg| leg.state == LegState::UpToDate) {
            return Err(Ineligible::LegNotUpToDate {
                volume: volume.to_string(),
                leg: first.id,
                state: first.state.as_str(),
            });
        }
    }
    Ok(())
}

/// The desired placement of every group, in group-name order. Groups are placed one after
/// the other and each placement counts towards the load seen by the next.
pub fn schedule(state: &ClusterState, liveness: &Liveness, now_unix: u64) -> Vec<Decision> {
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for node in state.groups.values().filter_map(|g| g.status.node) {
        *load.entry(node).or_default() += 1;
    }
    let mut decisions = Vec::with_capacity(state.groups.len());
    for group in state.groups.values() {
        let context = Context {
            state,
            liveness,
            now_unix,
            group,
            load: &load,
        };
        let decision = context.decide();
        if decision.changes_placement() {
            if let Some(old) = decision.current.and_then(|node| load.get_mut(&node)) {
                *old = old.saturating_sub(1);
            }
            if let Some(new) = decision.place_on {
                *load.entry(new).or_default() += 1;
            }
        }
        decisions.push(decision);
    }
    decisions
}

/// Why `group` runs where it runs (the same reasoning as [`schedule`], which it runs).
pub fn explain(
    state: &ClusterState,
    liveness: &Liveness,
    now_unix: u64,
    group: &str,
) -> Result<Explanation, GroupError> {
    schedule(state, liveness, now_unix)
        .into_iter()
        .find(|decision| decision.group == group)
        .map(|decision| decision.reason)
        .ok_or_else(|| GroupError::NoSuchGroup(group.to_string()))
}

/// Everything one group's decision looks at.
struct Context<'a> {
    state: &'a ClusterState,
    liveness: &'a Liveness,
    now_unix: u64,
    group: &'a Group,
    /// Groups per node, this group included where it runs now.
    load: &'a BTreeMap<NodeId, usize>,
}

impl Context<'_> {
    fn decide(&self) -> Decision {
        let verdicts = self.verdicts();
        let (place_on, summary) = self.choose(&verdicts);
        let status = &self.group.status;
        let reason = Explanation {
            group: self.group.spec.name.clone(),
            current: status.node,
            place_on,
            summary,
            nodes: verdicts,
        };
        Decision {
            group: self.group.spec.name.clone(),
            current: status.node,
            place_on,
            reason,
        }
    }

    fn name(&self, node: NodeId) -> String {
        self.state
            .nodes
            .get(&node)
            .map_or_else(|| format!("node {node}"), |info| info.name.clone())
    }

    fn rank(&self, node: NodeId) -> Option<usize> {
        self.group.spec.preferred.iter().position(|&p| p == node)
    }

    /// The verdict of every member and of every non-member the group names.
    fn verdicts(&self) -> Vec<NodeVerdict> {
        let status = &self.group.status;
        let mut ids: Vec<NodeId> = self.state.nodes.keys().copied().collect();
        ids.extend(status.node.iter().chain(status.pinned.iter()));
        ids.extend(self.group.spec.preferred.iter());
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|node| {
                let own = usize::from(status.node == Some(node));
                let load = self
                    .load
                    .get(&node)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(own);
                let verdict =
                    eligibility(self.state, self.liveness, self.now_unix, self.group, node);
                NodeVerdict {
                    node,
                    name: self.name(node),
                    verdict: verdict.map(|()| load),
                    preferred_rank: self.rank(node),
                }
            })
            .collect()
    }

    /// The best eligible node: same site as `anchor` first, then preference, load, id.
    fn best(&self, verdicts: &[NodeVerdict], anchor: Option<NodeId>) -> Option<NodeId> {
        let site_of = |node: NodeId| self.state.nodes.get(&node).and_then(|n| n.site.as_ref());
        let anchor_site = anchor.and_then(site_of);
        verdicts
            .iter()
            .filter_map(|v| v.verdict.as_ref().ok().map(|load| (v, *load)))
            .filter(|(v, _)| Some(v.node) != anchor)
            .min_by_key(|(v, load)| {
                let other_site = anchor_site.is_some() && site_of(v.node) != anchor_site;
                let rank = v.preferred_rank.unwrap_or(usize::MAX);
                (other_site, rank, *load, v.node)
            })
            .map(|(v, _)| v.node)
    }

    /// Applies the rules of the module comment, in order.
    fn choose(&self, verdicts: &[NodeVerdict]) -> (Option<NodeId>, String) {
        let status = &self.group.status;
        if let Some(current) = status.node {
            let waiting = self.state.nodes.contains_key(&current)
                && self.liveness.is_gone(current)
                && self.liveness.of(current).offline_for_ms < self.liveness.failover_timeout_ms;
            if waiting {
                let why = self.why_not(verdicts, current);
                let summary = format!(
                    "stays on {} for now: {} is {why}; it may still run the group until its \
                     lease lapses",
                    self.name(current),
                    self.name(current)
                );
                return (Some(current), summary);
            }
        }
        if !self.group.spec.enabled {
            return (None, "disabled: placed nowhere".into());
        }
        let mut note = String::new();
        if let Some(pin) = status.pinned {
            if is_eligible(verdicts, pin) {
                let summary = format!(
                    "runs on {}: pinned there by an explicit move (`tandem group clear` \
                     releases it)",
                    self.name(pin)
                );
                return (Some(pin), summary);
            }
            let why = self.why_not(verdicts, pin);
            note = format!(
                "move to {} refused: {} is {why}; ",
                self.name(pin),
                self.name(pin)
            );
        }
        let (place_on, summary) = match status.node {
            Some(current) => self.placed_from(verdicts, current),
            None => match self.best(verdicts, None) {
                Some(best) => (Some(best), format!("starts on {}", self.name(best))),
                None => (None, "cannot run anywhere: no node is eligible".into()),
            },
        };
        (place_on, format!("{note}{summary}"))
    }

    /// Stay, fail back, or fail over from the node the group runs on.
    fn placed_from(&self, verdicts: &[NodeVerdict], current: NodeId) -> (Option<NodeId>, String) {
        let here = self.name(current);
        if is_eligible(verdicts, current) {
            if self.group.spec.failback == Failback::Auto {
                if let Some(better) = self.failback_target(verdicts, current) {
                    let summary = format!(
                        "fails back from {here} to {}: more preferred and eligible \
                         (failback auto, stickiness {})",
                        self.name(better),
                        self.group.spec.stickiness
                    );
                    return (Some(better), summary);
                }
            }
            let policy = match self.group.spec.failback {
                Failback::Manual => "failback manual",
                Failback::Auto => "no node far enough ahead in preferred",
            };
            let summary = format!("stays on {here}: still eligible ({policy})");
            return (Some(current), summary);
        }
        let why = self.why_not(verdicts, current);
        match self.best(verdicts, Some(current)) {
            Some(best) => {
                let summary = format!("moves from {here} to {}: {here} is {why}", self.name(best));
                (Some(best), summary)
            }
            None => {
                let summary =
                    format!("cannot run anywhere: {here} is {why}, and no other node is eligible");
                (None, summary)
            }
        }
    }

    /// With auto failback: the most preferred eligible node, if it is more than
    /// `stickiness` places ahead of `current`.
    fn failback_target(&self, verdicts: &[NodeVerdict], current: NodeId) -> Option<NodeId> {
        let listed = self.group.spec.preferred.len();
        let current_rank = self.rank(current).unwrap_or(listed);
        let best = self.best(verdicts, None)?;
        let best_rank = self.rank(best).unwrap_or(listed);
        let stickiness = self.group.spec.stickiness as usize;
        (best != current && best_rank.saturating_add(stickiness) < current_rank).then_some(best)
    }

    fn why_not(&self, verdicts: &[NodeVerdict], node: NodeId) -> String {
        match verdicts.iter().find(|v| v.node == node).map(|v| &v.verdict) {
            Some(Ok(_)) => "eligible".into(),
            Some(Err(why)) => why.to_string(),
            None => Ineligible::NotMember.to_string(),
        }
    }
}

fn is_eligible(verdicts: &[NodeVerdict], node: NodeId) -> bool {
    verdicts.iter().any(|v| v.node == node && v.verdict.is_ok())
}
