//! The safety checkers, run after every simulated step, and the violations they report.
//!
//! They watch only what the core reports to its shim (`Applied`, snapshots it persists, its
//! role and term, its lease answers) and the state it exposes, so they check the same
//! promises an operator relies on (DESIGN.md §5):
//! - election safety: at most one leader per term, ever;
//! - committed entries never change: every node applies the same (term, digest) at each
//!   index, in order, across restarts; a snapshot never contradicts a committed entry;
//! - every node holds the same cluster state at the same applied index;
//! - lease safety: at no instant do two nodes hold the leader lease.
//!
//! Liveness (a leader and commits after the faults heal) is checked by the world, which
//! knows when the heal began.

use std::collections::BTreeMap;

use tandem_core::NodeId;

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
