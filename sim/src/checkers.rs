//! The safety checkers, run after every simulated step, and the violations they report.
//!
//! They watch only what the core reports to its shim (`Applied`, snapshots it persists, its
//! role and term, its lease answers) and the state it exposes, so they check the same
//! promises an operator relies on (DESIGN.md §5):
//! - election safety: at most one leader per term, ever;
//! - committed entries never change: every node applies the same (term, digest) at each
//!   index, in order, across restarts; a snapshot never contradicts a committed entry;
//! - every node holds the same cluster state at the same applied index;
//! - lease safety: at no instant do two nodes hold the leader lease;
//! - with resource groups, on the ground truth of the fake resources and on every node's
//!   committed state: one active node per group ([`Violation::GroupTwice`], see
//!   [`one_active`]) and one writer per volume ([`Violation::WriterNotHolder`], see
//!   [`one_writer`]).
//!
//! Liveness (a leader and commits after the faults heal; then every group running where it
//! is placed, [`Violation::GroupsUnsettled`]) is checked by the world, which knows when the
//! heal began.

use std::collections::{BTreeMap, BTreeSet};

use tandem_core::group::ResourceSpec;
use tandem_core::{ClusterState, NodeId};

/// A broken promise, or a run that could not be carried out. The message names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("election safety: two leaders in term {term}: n{first} and n{second}")]
    TwoLeaders {
        term: u64,
        first: NodeId,
        second: NodeId,
    },
    #[error("lease safety: {} hold the leader lease at the same instant", describe_holders(.holders))]
    LeaseOverlap { holders: Vec<(NodeId, u64)> },
    #[error(
        "committed entry changed: index {index} was applied as (term {term}, digest \
         {digest:016x}), but n{node} applied (term {found_term}, digest {found_digest:016x})"
    )]
    CommittedChanged {
        node: NodeId,
        index: u64,
        term: u64,
        digest: u64,
        found_term: u64,
        found_digest: u64,
    },
    #[error("apply order: n{node} applied index {index} after index {previous}")]
    ApplyOrder {
        node: NodeId,
        index: u64,
        previous: u64,
    },
    #[error(
        "committed entry changed: n{node} took a snapshot at index {index} of term {term}, \
         but the entry committed there has term {committed_term}"
    )]
    SnapshotConflict {
        node: NodeId,
        index: u64,
        term: u64,
        committed_term: u64,
    },
    #[error("apply order: n{node} reports applied index {reported}, but announced {announced}")]
    AppliedMismatch {
        node: NodeId,
        reported: u64,
        announced: u64,
    },
    #[error("state divergence: n{node} holds a different cluster state at applied index {index}")]
    StateDiverged { node: NodeId, index: u64 },
    #[error("core panic on n{node}: {message}")]
    CorePanic { node: NodeId, message: String },
    #[error("durability: n{node} asked for a write the real Raft log refuses: {reason}")]
    DiskRefused { node: NodeId, reason: String },
    #[error("wire: n{from} sent a frame to n{to} that does not decode: {reason}")]
    BadFrame {
        from: NodeId,
        to: NodeId,
        reason: String,
    },
    #[error("restart: n{node} cannot start from its durable state: {reason}")]
    Restore { node: NodeId, reason: String },
    #[error(
        "one active node per group: group {group} runs on {} at the same instant{detail}",
        describe_nodes(.nodes)
    )]
    GroupTwice {
        group: String,
        nodes: Vec<NodeId>,
        detail: String,
    },
    #[error(
        "one active node per group (self-fencing deadline): n{node} still runs {group}[{index}] \
         {late_ms} ms after its node lease lapsed at t={lapsed_at} ({process}); the leader may \
         fence it {deadline_ms} ms after the lapse and start the group elsewhere"
    )]
    SelfFenceLate {
        node: NodeId,
        group: String,
        index: usize,
        lapsed_at: u64,
        late_ms: u64,
        deadline_ms: u64,
        process: String,
    },
    #[error(
        "one writer: n{node}'s committed state at index {index} shows volume {volume} primary \
         on n{primary} while group {group} is held by {} (last fenced: {})",
        describe_node(.holder),
        describe_node(.fenced)
    )]
    WriterNotHolder {
        node: NodeId,
        index: u64,
        group: String,
        volume: String,
        primary: NodeId,
        holder: Option<NodeId>,
        fenced: Option<NodeId>,
    },
    #[error("eventual placement: {0}")]
    GroupsUnsettled(String),
    #[error("liveness: {0}")]
    Liveness(String),
    #[error("simulator: {0}")]
    Setup(String),
}

fn describe_holders(holders: &[(NodeId, u64)]) -> String {
    holders
        .iter()
        .map(|(node, term)| format!("n{node} (term {term})"))
        .collect::<Vec<_>>()
        .join(" and ")
}

impl Violation {
    /// The rule broken, in a few words (for the soak summary's tally).
    pub fn rule(&self) -> &'static str {
        match self {
            Violation::TwoLeaders { .. } => "election safety",
            Violation::LeaseOverlap { .. } => "lease safety",
            Violation::CommittedChanged { .. } | Violation::SnapshotConflict { .. } => {
                "committed entry changed"
            }
            Violation::ApplyOrder { .. } | Violation::AppliedMismatch { .. } => "apply order",
            Violation::StateDiverged { .. } => "state divergence",
            Violation::CorePanic { .. } => "core panic",
            Violation::DiskRefused { .. } => "durability",
            Violation::BadFrame { .. } => "wire",
            Violation::Restore { .. } => "restart",
            Violation::GroupTwice { .. } => "one active node per group: overlap",
            Violation::SelfFenceLate { .. } => "one active node per group: self-fencing deadline",
            Violation::WriterNotHolder { .. } => "one writer",
            Violation::GroupsUnsettled(_) => "eventual placement",
            Violation::Liveness(_) => "liveness",
            Violation::Setup(_) => "simulator",
        }
    }

    /// Whether this is one of the resource-group rules.
    pub fn is_group_rule(&self) -> bool {
        matches!(
            self,
            Violation::GroupTwice { .. }
                | Violation::SelfFenceLate { .. }
                | Violation::WriterNotHolder { .. }
                | Violation::GroupsUnsettled(_)
        )
    }
}

fn describe_nodes(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(|node| format!("n{node}"))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn describe_node(node: &Option<NodeId>) -> String {
    node.map_or_else(|| "nobody".to_string(), |node| format!("n{node}"))
}

/// One active node per group, on the ground truth: at no instant do two machines both run a
/// resource of the same group that the cluster started there (the instant is the world's
/// global time; a start takes effect when it completes, a stop when it completes, so a
/// resource counts from the end of its start to the end of its stop).
///
/// Nothing is excused: no lease, no margin. A node that lost its lease must have stopped
/// before the leader fences it (`failover_timeout > lease_timeout + FAILOVER_MARGIN_MS`,
/// core::scheduler), and no other node starts the group before that fence commits, so the
/// margin is already spent by the time a second node could run the group; any overlap is
/// a broken promise, wherever the fault lies (a slow stop, an operation in flight, a frozen
/// or dead daemon that could not stop). Copies the operator started by hand are not the
/// cluster's and are left out (DESIGN.md §6: the operator mistake; see `docs/reliability.md`).
///
/// `running`: per machine, the groups with a cluster-started resource running there.
pub fn one_active(running: &[(NodeId, BTreeSet<&str>)]) -> Result<(), Violation> {
    let mut by_group: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for (node, groups) in running {
        for group in groups {
            by_group.entry(group).or_default().push(*node);
        }
    }
    match by_group.into_iter().find(|(_, nodes)| nodes.len() > 1) {
        Some((group, nodes)) => Err(Violation::GroupTwice {
            group: group.to_string(),
            nodes,
            detail: String::new(),
        }),
        None => Ok(()),
    }
}

/// The self-fencing deadline, on the ground truth: a machine whose node lease lapsed at
/// `lease_until` runs no resource the cluster started there once `deadline_ms` have passed,
/// whatever its process is doing (running, frozen, dead).
///
/// `deadline_ms` is `failover_timeout - lease_timeout` (core::scheduler: `FAILOVER_MARGIN_MS`
/// plus one ping interval): the leader fences a holder it last heard from at `t` at `t +
/// failover_timeout`, and the holder's lease, counted from the send time of a ping the leader
/// answered, lapsed by `t + lease_timeout`. So this is the time the design gives a node to stop
/// by itself; past it, the leader may fence it and another node start the group at any moment,
/// and whether the two overlap ([`one_active`]) is luck. Leases are observed after every call
/// into a process; a frozen or dead process's lease simply runs out.
///
/// `running`: (group, index) of each cluster-started resource running on the machine.
pub fn self_fence_deadline(
    node: NodeId,
    now: u64,
    lease_until: u64,
    deadline_ms: u64,
    running: &[(&str, usize)],
    process: impl FnOnce() -> String,
) -> Result<(), Violation> {
    let late_ms = now.saturating_sub(lease_until + deadline_ms);
    match running.first() {
        Some((group, index)) if now > lease_until + deadline_ms => Err(Violation::SelfFenceLate {
            node,
            group: group.to_string(),
            index: *index,
            lapsed_at: lease_until,
            late_ms,
            deadline_ms,
            process: process(),
        }),
        _ => Ok(()),
    }
}

/// One writer, on a node's committed state at `index`: the primary of a group's volume is
/// always nobody, the group's holder, or the holder the leader last fenced (a takeover is
/// pending: the fenced node's lease lapsed, so it no longer writes). Promotions happen only
/// after the acquire, demotions before the release, and a takeover only from the fenced
/// node, so any other primary is a node writing (or free to write) a volume whose group
/// another node runs, or none.
pub fn one_writer(node: NodeId, index: u64, state: &ClusterState) -> Result<(), Violation> {
    for (name, group) in &state.groups {
        let status = &group.status;
        for spec in &group.spec.resources {
            let ResourceSpec::Volume { volume, .. } = spec else {
                continue;
            };
            let Some(primary) = state.volume_by_name(volume).and_then(|info| info.primary) else {
                continue;
            };
            if status.holder.is_none() || [status.holder, status.fenced].contains(&Some(primary)) {
                continue;
            }
            return Err(Violation::WriterNotHolder {
                node,
                index,
                group: name.clone(),
                volume: volume.clone(),
                primary,
                holder: status.holder,
                fenced: status.fenced,
            });
        }
    }
    Ok(())
}

/// What the checkers remember across the run.
#[derive(Default)]
pub struct Checkers {
    /// term -> the node seen leading it.
    leaders: BTreeMap<u64, NodeId>,
    /// index -> (term, digest) of the entry first applied there.
    committed: BTreeMap<u64, (u64, u64)>,
    /// applied index -> hash of the cluster state after it.
    states: BTreeMap<u64, u64>,
    /// node -> the last index it applied in its current incarnation.
    applied: BTreeMap<NodeId, u64>,
}

impl Checkers {
    /// `node` says it leads `term`.
    pub fn leader(&mut self, term: u64, node: NodeId) -> Result<(), Violation> {
        match self.leaders.insert(term, node) {
            Some(first) if first != node => Err(Violation::TwoLeaders {
                term,
                first,
                second: node,
            }),
            _ => Ok(()),
        }
    }

    /// `node` restarted from a snapshot of the state at `index` (of `term`).
    pub fn restored(&mut self, node: NodeId, index: u64, term: u64) -> Result<(), Violation> {
        self.snapshot_term(node, index, term)?;
        self.applied.insert(node, index);
        Ok(())
    }

    /// What one input made `node` report: the entries it applied, in order, and the
    /// snapshots from the leader it installed (which let its applied index jump).
    pub fn batch(
        &mut self,
        node: NodeId,
        applied: &[(u64, u64, u64)],
        snapshots: &[(u64, u64)],
    ) -> Result<(), Violation> {
        let before = self.applied.get(&node).copied().unwrap_or(0);
        for &(index, term) in snapshots {
            self.snapshot_term(node, index, term)?;
            if index < before {
                return Err(Violation::ApplyOrder {
                    node,
                    index,
                    previous: before,
                });
            }
        }
        let mut previous = before;
        for &(index, term, digest) in applied {
            let after_snapshot = snapshots
                .iter()
                .any(|&(snapshot, _)| snapshot + 1 == index && snapshot >= previous);
            if index != previous + 1 && !after_snapshot {
                return Err(Violation::ApplyOrder {
                    node,
                    index,
                    previous,
                });
            }
            self.agree(node, index, term, digest)?;
            previous = index;
        }
        let newest_snapshot = snapshots.iter().map(|&(index, _)| index).max();
        self.applied
            .insert(node, previous.max(newest_snapshot.unwrap_or(0)));
        Ok(())
    }

    /// The index `node` applied up to, as announced through `Applied` and snapshots.
    pub fn announced(&self, node: NodeId) -> u64 {
        self.applied.get(&node).copied().unwrap_or(0)
    }

    fn snapshot_term(&self, node: NodeId, index: u64, term: u64) -> Result<(), Violation> {
        match self.committed.get(&index) {
            Some(&(committed_term, _)) if committed_term != term => {
                Err(Violation::SnapshotConflict {
                    node,
                    index,
                    term,
                    committed_term,
                })
            }
            _ => Ok(()),
        }
    }

    /// Every node applies the same entry at `index`.
    fn agree(&mut self, node: NodeId, index: u64, term: u64, digest: u64) -> Result<(), Violation> {
        match self.committed.get(&index) {
            Some(&(first_term, first_digest)) if (first_term, first_digest) != (term, digest) => {
                Err(Violation::CommittedChanged {
                    node,
                    index,
                    term: first_term,
                    digest: first_digest,
                    found_term: term,
                    found_digest: digest,
                })
            }
            Some(_) => Ok(()),
            None => {
                self.committed.insert(index, (term, digest));
                Ok(())
            }
        }
    }

    /// `node` holds a cluster state hashing to `hash` after applying up to `index`.
    pub fn state(&mut self, node: NodeId, index: u64, hash: u64) -> Result<(), Violation> {
        if index == 0 {
            return Ok(());
        }
        match self.states.get(&index) {
            Some(&first) if first != hash => Err(Violation::StateDiverged { node, index }),
            Some(_) => Ok(()),
            None => {
                self.states.insert(index, hash);
                Ok(())
            }
        }
    }

    /// The nodes (with their terms) that hold the leader lease at one instant.
    pub fn leases(&self, holders: &[(NodeId, u64)]) -> Result<(), Violation> {
        if holders.len() > 1 {
            return Err(Violation::LeaseOverlap {
                holders: holders.to_vec(),
            });
        }
        Ok(())
    }

    /// How many terms had a leader.
    pub fn leaders_elected(&self) -> usize {
        self.leaders.len()
    }

    /// The highest index any node applied.
    pub fn committed_index(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_is_caught() {
        let mut checkers = Checkers::default();
        checkers.leader(2, 1).unwrap();
        checkers.leader(2, 1).unwrap();
        checkers.leader(3, 2).unwrap();
        let error = checkers.leader(2, 3).unwrap_err();
        assert!(error.to_string().starts_with("election safety"), "{error}");
    }

    #[test]
    fn a_changed_or_skipped_entry_is_caught() {
        let mut checkers = Checkers::default();
        checkers.restored(1, 1, 1).unwrap();
        checkers.restored(2, 1, 1).unwrap();
        checkers.batch(1, &[(2, 1, 10), (3, 1, 11)], &[]).unwrap();
        checkers.batch(2, &[(2, 1, 10)], &[]).unwrap();
        assert!(matches!(
            checkers.batch(2, &[(4, 1, 12)], &[]),
            Err(Violation::ApplyOrder { .. })
        ));
        checkers.restored(3, 1, 1).unwrap();
        assert!(matches!(
            checkers.batch(3, &[(2, 2, 10)], &[]),
            Err(Violation::CommittedChanged { .. })
        ));
        assert!(matches!(
            checkers.batch(3, &[], &[(2, 5)]),
            Err(Violation::SnapshotConflict { .. })
        ));
        checkers.restored(4, 0, 0).unwrap();
        checkers.batch(4, &[(4, 1, 12)], &[(3, 1)]).unwrap();
        assert_eq!(checkers.announced(4), 4);
        assert_eq!(checkers.committed_index(), 4);
    }

    #[test]
    fn a_group_running_on_two_machines_is_caught() {
        let one = BTreeSet::from(["g1"]);
        let both = BTreeSet::from(["g1", "g2"]);
        one_active(&[(1, one.clone()), (2, BTreeSet::from(["g2"]))]).unwrap();
        let error = one_active(&[(1, both), (3, one)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "one active node per group: group g1 runs on n1 and n3 at the same instant"
        );
    }

    #[test]
    fn a_node_still_running_past_its_self_fencing_deadline_is_caught() {
        let process = || "process FROZEN".to_string();
        self_fence_deadline(2, 1_650, 1_000, 650, &[("g1", 1)], process).unwrap();
        self_fence_deadline(2, 9_000, 1_000, 650, &[], process).unwrap();
        let error = self_fence_deadline(2, 1_700, 1_000, 650, &[("g1", 1)], process).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "one active node per group (self-fencing deadline): n2 still runs g1[1] 50 ms \
                 after its node lease lapsed at t=1000 (process FROZEN)"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_primary_other_than_the_holder_or_the_fenced_node_is_caught() {
        use tandem_core::group::{GroupChange, GroupSpec, Monitor};
        use tandem_core::volume::{LegSpec, VolumeChange};
        use tandem_core::{Admin, ClusterId, NodeInfo, Role, StateChange};
        let node = |id: NodeId| NodeInfo {
            id,
            name: format!("n{id}"),
            addr: String::new(),
            site: None,
            role: Role::Voter,
            admin: Admin::Online,
        };
        let mut state = ClusterState::founded_by(ClusterId([1; 16]), node(1));
        state.nodes.insert(2, node(2));
        let legs = (1..=2)
            .map(|id| LegSpec {
                nodes: vec![id],
                path: format!("/l/{id}"),
            })
            .collect();
        let apply = |state: &mut ClusterState, change: StateChange| {
            state.apply(&change).unwrap();
        };
        let create = VolumeChange::Create {
            name: "v".into(),
            size: 1 << 20,
            legs,
            granularity: Default::default(),
        };
        apply(&mut state, StateChange::Volume(create));
        let volume = ResourceSpec::Volume {
            volume: "v".into(),
            monitor: Monitor::default(),
        };
        let spec = GroupSpec::new("g", vec![volume]);
        apply(&mut state, StateChange::Group(GroupChange::Create { spec }));
        let group = |change| StateChange::Group(change);
        apply(
            &mut state,
            group(GroupChange::Placed {
                group: "g".into(),
                node: Some(1),
                epoch: 0,
            }),
        );
        apply(
            &mut state,
            group(GroupChange::Acquire {
                group: "g".into(),
                node: 1,
                epoch: 1,
            }),
        );
        let promote = VolumeChange::Promote {
            volume: state.volume_by_name("v").unwrap().id,
            node: 1,
            force: false,
            takeover: false,
        };
        apply(&mut state, StateChange::Volume(promote));
        one_writer(1, 9, &state).unwrap();
        // Fenced, then the group is held elsewhere before the takeover: allowed.
        let fence = GroupChange::Fence {
            group: "g".into(),
            node: 1,
        };
        apply(&mut state, group(fence));
        state.groups.get_mut("g").unwrap().status.holder = Some(2);
        one_writer(1, 10, &state).unwrap();
        // Held by n2 while n1, not the fenced node, is primary: caught.
        state.groups.get_mut("g").unwrap().status.fenced = None;
        let error = one_writer(2, 11, &state).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "one writer: n2's committed state at index 11 shows volume v primary on n1 \
                 while group g is held by n2"
            ),
            "{error}"
        );
    }

    #[test]
    fn lease_overlap_and_state_divergence_are_caught() {
        let mut checkers = Checkers::default();
        checkers.leases(&[(1, 4)]).unwrap();
        let error = checkers.leases(&[(1, 4), (2, 5)]).unwrap_err();
        assert!(error.to_string().starts_with("lease safety"), "{error}");
        checkers.state(1, 3, 99).unwrap();
        checkers.state(2, 3, 99).unwrap();
        assert!(checkers.state(3, 3, 98).is_err());
    }
}
