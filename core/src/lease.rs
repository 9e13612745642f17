//! Leases: the right to act alone, confirmed by a quorum, that expires by itself.
//!
//! Every node pings every other node each `ping_interval`. A ping round remembers when it was
//! sent and in which Raft term. A lease always starts from the *send* time of a confirmed round,
//! so a lease can only end early, never late, whatever the network delay.
//!
//! - **Leader lease**: the Raft leader of term T holds it until `sent + lease_timeout` for the
//!   newest round that a quorum of voters answered *in term T*. A newly elected leader waits one
//!   `lease_timeout` (the blackout) first: any earlier leader's lease came from rounds sent
//!   before the new leader's voters moved to the new term, so it has lapsed by then.
//! - **Node lease**: any other node holds it while the leader, holding its own leader lease,
//!   answers its pings in the node's term. A node without one must stop writing and stop its
//!   services (DESIGN.md §5.2).

use std::collections::{BTreeSet, VecDeque};

use crate::ids::NodeId;

/// More rounds than this in flight means pings are not being answered; drop the oldest.
const MAX_ROUNDS: usize = 64;

/// One ping round: who answered it in its term.
#[derive(Debug)]
pub struct Round {
    pub seq: u64,
    pub sent_at: u64,
    pub term: u64,
    pub acks: BTreeSet<NodeId>,
}

/// The lease bookkeeping of one node.
#[derive(Debug)]
pub struct LeaseTracker {
    lease_timeout: u64,
    rounds: VecDeque<Round>,
    next_seq: u64,
    /// (term, until): the leader lease, valid only while still leader of that term.
    leader_lease: Option<(u64, u64)>,
    node_lease_until: u64,
    /// (term, until): a new leader of `term` holds no leader lease before `until`.
    blackout: (u64, u64),
}

impl LeaseTracker {
    pub fn new(lease_timeout: u64) -> LeaseTracker {
        LeaseTracker {
            lease_timeout,
            rounds: VecDeque::new(),
            next_seq: 1,
            leader_lease: None,
            node_lease_until: 0,
            blackout: (0, 0),
        }
    }

    pub fn lease_timeout(&self) -> u64 {
        self.lease_timeout
    }

    /// Starts a ping round and returns its sequence number.
    pub fn start_round(&mut self, now: u64, term: u64) -> u64 {
        let timeout = self.lease_timeout;
        self.rounds.retain(|round| round.sent_at + timeout > now);
        while self.rounds.len() >= MAX_ROUNDS {
            self.rounds.pop_front();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.rounds.push_back(Round {
            seq,
            sent_at: now,
            term,
            acks: BTreeSet::new(),
        });
        seq
    }

    /// Records that `from` answered round `seq` in `term`; returns the round if it counts.
    pub fn record_ack(&mut self, seq: u64, from: NodeId, term: u64) -> Option<&Round> {
        let round = self.rounds.iter_mut().find(|round| round.seq == seq)?;
        if round.term != term {
            return None;
        }
        round.acks.insert(from);
        Some(round)
    }

    /// A new leader of `term` starts its blackout.
    pub fn became_leader(&mut self, now: u64, term: u64) {
        self.leader_lease = None;
        self.blackout = (term, now + self.lease_timeout);
    }

    /// The new leader skips its blackout (only the `lease_without_quorum` mutation does this).
    pub fn skip_blackout(&mut self) {
        self.blackout = (0, 0);
    }

    pub fn extend_leader_lease(&mut self, term: u64, until: u64) {
        let current = match self.leader_lease {
            Some((lease_term, lease_until)) if lease_term == term => lease_until,
            _ => 0,
        };
        self.leader_lease = Some((term, current.max(until)));
    }

    pub fn extend_node_lease(&mut self, until: u64) {
        self.node_lease_until = self.node_lease_until.max(until);
    }

    /// Whether the leader of `term` (the caller checks it still leads) holds the leader lease.
    pub fn holds_leader_lease(&self, now: u64, term: u64) -> bool {
        let (blackout_term, blackout_until) = self.blackout;
        if blackout_term == term && now < blackout_until {
            return false;
        }
        matches!(self.leader_lease, Some((lease_term, until)) if lease_term == term && now < until)
    }

    /// How long the leader lease of `term` still runs.
    pub fn leader_lease_remaining(&self, now: u64, term: u64) -> u64 {
        if !self.holds_leader_lease(now, term) {
            return 0;
        }
        self.leader_lease
            .map_or(0, |(_, until)| until.saturating_sub(now))
    }

    /// How long the quorum confirmation of `term` still runs, blackout or not: what a new
    /// leader may grant node leases on (see `NodeCore::grants_node_leases`).
    pub fn leader_confirmed_remaining(&self, now: u64, term: u64) -> u64 {
        match self.leader_lease {
            Some((lease_term, until)) if lease_term == term => until.saturating_sub(now),
            _ => 0,
        }
    }

    pub fn node_lease_remaining(&self, now: u64) -> u64 {
        self.node_lease_until.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_lease_counts_from_send_time_and_lapses() {
        let mut leases = LeaseTracker::new(1000);
        let seq = leases.start_round(100, 3);
        let round = leases.record_ack(seq, 2, 3).expect("same-term ack counts");
        assert_eq!(round.sent_at, 100);
        leases.extend_leader_lease(3, 1100);
        assert!(leases.holds_leader_lease(1099, 3));
        assert!(!leases.holds_leader_lease(1100, 3));
        assert!(
            !leases.holds_leader_lease(500, 4),
            "a lease of term 3 is not one of term 4"
        );
    }

    #[test]
    fn acks_from_another_term_do_not_count() {
        let mut leases = LeaseTracker::new(1000);
        let seq = leases.start_round(0, 3);
        assert!(leases.record_ack(seq, 2, 4).is_none());
        assert!(
            leases.record_ack(seq + 7, 2, 3).is_none(),
            "unknown rounds are ignored"
        );
    }

    #[test]
    fn a_new_leader_waits_out_the_blackout() {
        let mut leases = LeaseTracker::new(1000);
        leases.became_leader(5000, 7);
        leases.extend_leader_lease(7, 6500);
        assert!(!leases.holds_leader_lease(5999, 7));
        assert!(leases.holds_leader_lease(6000, 7));
    }

    #[test]
    fn rounds_are_bounded() {
        let mut leases = LeaseTracker::new(u64::MAX / 2);
        for now in 0..1000 {
            leases.start_round(now, 1);
        }
        assert!(leases.rounds.len() <= MAX_ROUNDS);
    }
}
