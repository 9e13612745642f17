//! The operator: what to propose next, and the bookkeeping of proposals in flight.
//!
//! Most proposals are ordinary state changes (standby/online, join tokens); in some seeds the
//! operator also adds and removes nodes. Membership changes go one at a time, never remove
//! the next-to-last voter, and are bounded per run. A proposal may never complete (its leader
//! crashed, or raft-rs turned a concurrent membership change into an empty entry); after
//! [`ANSWER_TIMEOUT_MS`] it is given up, as the daemon's 10 s timeout does.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::{Admin, ClusterState, NodeId};

/// A proposal unanswered for this long is given up.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;
const MAX_JOINS: u32 = 3;
const MAX_REMOVALS: u32 = 2;

/// What the operator wants to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    SetAdmin { id: NodeId, admin: Admin },
    Token,
    Join { witness: bool },
    Remove { id: NodeId },
}

/// A proposal waiting for its `Completed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding {
    pub node: NodeId,
    pub at: u64,
    pub membership: bool,
}

/// Counters for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkStats {
    pub proposed: u64,
    /// `propose` itself refused (no leader known, invalid change...).
    pub rejected: u64,
    pub committed: u64,
    /// Committed but refused by the state machine (every node refuses it alike).
    pub refused: u64,
    /// Never answered within the timeout.
    pub unanswered: u64,
    pub joins: u64,
    pub removals: u64,
}

/// The operator's memory.
pub struct Workload {
    rng: ChaCha8Rng,
    membership: bool,
    next_request: u64,
    next_token: u64,
    next_name: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    joins: u32,
    removals: u32,
    pub stats: WorkStats,
}

impl Workload {
    pub fn new(rng: ChaCha8Rng, membership: bool) -> Workload {
        Workload {
            rng,
            membership,
            next_request: 1,
            next_token: 1,
            next_name: 2,
            outstanding: BTreeMap::new(),
            joins: 0,
            removals: 0,
            stats: WorkStats::default(),
        }
    }

    /// How long until the operator acts again.
    pub fn next_gap(&mut self) -> u64 {
        self.rng.gen_range(100..=700)
    }

    /// Whether to send the next proposal to a random node rather than the leader.
    pub fn via_follower(&mut self) -> bool {
        self.rng.gen_bool(0.15)
    }

    pub fn pick<'a>(&mut self, nodes: &'a [NodeId]) -> Option<&'a NodeId> {
        nodes.choose(&mut self.rng)
    }

    /// The next thing to do, judged from `state` (the target node's view).
    pub fn plan(&mut self, state: &ClusterState) -> Option<Plan> {
        let roll = self.rng.gen_range(0..100);
        if self.membership && roll < 20 && !self.membership_in_flight() {
            if let Some(plan) = self.membership_plan(state) {
                return Some(plan);
            }
        }
        if roll < 40 {
            return Some(Plan::Token);
        }
        let ids: Vec<NodeId> = state.nodes.keys().copied().collect();
        let id = *ids.choose(&mut self.rng)?;
        let admin = if self.rng.gen_bool(0.5) {
            Admin::Standby
        } else {
            Admin::Online
        };
        Some(Plan::SetAdmin { id, admin })
    }

    fn membership_plan(&mut self, state: &ClusterState) -> Option<Plan> {
        if self.rng.gen_bool(0.6) && self.joins < MAX_JOINS {
            return Some(Plan::Join {
                witness: self.rng.gen_bool(0.2),
            });
        }
        if self.removals >= MAX_REMOVALS {
            return None;
        }
        let voters = state.voter_count();
        let removable: Vec<NodeId> = state
            .nodes
            .values()
            .filter(|node| !node.role.votes() || voters > 2)
            .map(|node| node.id)
            .collect();
        let id = *removable.choose(&mut self.rng)?;
        Some(Plan::Remove { id })
    }

    /// A fresh join-token digest.
    pub fn token_digest(&mut self) -> String {
        let digest = format!("token-{}", self.next_token);
        self.next_token += 1;
        digest
    }

    /// A fresh node name (names are never reused, so a retried join never collides).
    pub fn node_name(&mut self) -> String {
        let name = format!("node-{}", self.next_name);
        self.next_name += 1;
        name
    }

    /// Reserves a request number for a proposal about to be made on `node`.
    pub fn request(&mut self) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        request
    }

    /// The proposal `request` was accepted by `node` for replication.
    pub fn proposed(&mut self, request: u64, node: NodeId, at: u64, plan: Option<&Plan>) {
        self.stats.proposed += 1;
        let membership = matches!(plan, Some(Plan::Join { .. } | Plan::Remove { .. }));
        match plan {
            Some(Plan::Join { .. }) => self.joins += 1,
            Some(Plan::Remove { .. }) => self.removals += 1,
            _ => {}
        }
        self.outstanding.insert(
            request,
            Outstanding {
                node,
                at,
                membership,
            },
        );
    }

    pub fn rejected(&mut self) {
        self.stats.rejected += 1;
    }

    /// `node` reported the outcome of `request`. Returns whether it was one we wait for
    /// (a restarted node re-reports proposals of its earlier life; those are not).
    pub fn completed(&mut self, node: NodeId, request: u64, ok: bool) -> bool {
        match self.outstanding.get(&request) {
            Some(outstanding) if outstanding.node == node => {
                self.outstanding.remove(&request);
                if ok {
                    self.stats.committed += 1;
                } else {
                    self.stats.refused += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Gives up proposals unanswered since before `now - ANSWER_TIMEOUT_MS`.
    pub fn expire(&mut self, now: u64) {
        let before = self.outstanding.len();
        self.outstanding
            .retain(|_, outstanding| outstanding.at + ANSWER_TIMEOUT_MS > now);
        self.stats.unanswered += (before - self.outstanding.len()) as u64;
    }

    pub fn has_outstanding(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// Setup's joins do not count against the fault phase's membership budget.
    pub fn reset_budgets(&mut self) {
        self.joins = 0;
        self.removals = 0;
    }

    pub fn membership_in_flight(&self) -> bool {
        self.outstanding
            .values()
            .any(|outstanding| outstanding.membership)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use tandem_core::{ClusterId, NodeInfo, Role};

    use super::*;

    fn state(voters: u64) -> ClusterState {
        let mut state = ClusterState::empty(ClusterId([1; 16]));
        for id in 1..=voters {
            state.nodes.insert(
                id,
                NodeInfo {
                    id,
                    name: format!("n{id}"),
                    addr: String::new(),
                    site: None,
                    role: Role::Voter,
                    admin: Admin::Online,
                },
            );
        }
        state
    }

    #[test]
    fn never_removes_below_two_voters_and_bounds_membership_changes() {
        let mut workload = Workload::new(ChaCha8Rng::seed_from_u64(5), true);
        for at in 0..500 {
            match workload.plan(&state(2)) {
                Some(Plan::Remove { .. }) => panic!("removed one of the last two voters"),
                Some(plan @ Plan::Join { .. }) => {
                    let request = workload.request();
                    workload.proposed(request, 1, at, Some(&plan));
                    assert!(workload.completed(1, request, true));
                }
                _ => {}
            }
        }
        assert_eq!(workload.joins, MAX_JOINS);
    }

    #[test]
    fn unanswered_proposals_expire_and_stale_answers_are_ignored() {
        let mut workload = Workload::new(ChaCha8Rng::seed_from_u64(6), false);
        let request = workload.request();
        workload.proposed(request, 3, 100, Some(&Plan::Token));
        assert!(!workload.completed(2, request, true), "wrong node");
        workload.expire(100 + ANSWER_TIMEOUT_MS);
        assert_eq!(workload.stats.unanswered, 1);
        assert!(!workload.completed(3, request, true));
    }
}
