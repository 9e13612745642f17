//! Random schedules: writes, flushes, message deliveries, disk completions in any order, holds,
//! link losses, reconnects, commits and time, then heal and quiesce.
//!
//! Checked throughout (by the harness, at every `Complete`): the write is on every leg that is
//! committed `UpToDate` at that moment, durably for `fua` writes and for the writes a `FLUSH`
//! covers. Checked at the end: every accepted request completed, every leg is `UpToDate`
//! again and byte-identical to the primary's. Online verifies (some repairing) start at random
//! moments; one that ran to the end must have found the legs identical.

use proptest::prelude::*;

use super::harness::*;
use crate::replication::PeerMode;
use crate::volume::LegState;

#[derive(Clone, Debug)]
enum Step {
    Write { unit: u64, units: u64, fua: bool },
    Flush,
    ToSecondary { peer: usize },
    ToPrimary { peer: usize },
    Disk { pick: usize },
    Hold { peer: usize, on: bool },
    Lose { peer: usize },
    Connect { peer: usize },
    Commit,
    Tick { ms: u64 },
    Verify { peer: usize, repair: bool },
}

fn step() -> impl Strategy<Value = Step> {
    let units = SIZE / UNIT;
    prop_oneof![
        6 => (0..units - 16, 1u64..=16, prop::bool::weighted(0.2))
            .prop_map(|(unit, units, fua)| Step::Write { unit, units, fua }),
        1 => Just(Step::Flush),
        6 => (0usize..2).prop_map(|peer| Step::ToSecondary { peer }),
        6 => (0usize..2).prop_map(|peer| Step::ToPrimary { peer }),
        10 => (0usize..1000).prop_map(|pick| Step::Disk { pick }),
        1 => (0usize..2, any::<bool>()).prop_map(|(peer, on)| Step::Hold { peer, on }),
        1 => (0usize..2).prop_map(|peer| Step::Lose { peer }),
        1 => (0usize..2).prop_map(|peer| Step::Connect { peer }),
        2 => Just(Step::Commit),
        1 => (1u64..400).prop_map(|ms| Step::Tick { ms }),
        1 => (0usize..2, any::<bool>()).prop_map(|(peer, repair)| Step::Verify { peer, repair }),
    ]
}

fn initial_state() -> impl Strategy<Value = LegState> {
    prop_oneof![
        3 => Just(LegState::UpToDate),
        1 => Just(LegState::Outdated),
        1 => Just(LegState::Inconsistent),
    ]
}

fn run(states: &[LegState], steps: &[Step]) {
    let mut h = Harness::new(states);
    h.connect_all();
    h.settle();
    h.auto_commit = false;
    let peers = h.legs.len();
    let mut accepted = Vec::new();
    for step in steps {
        match *step {
            Step::Write { unit, units, fua } => {
                accepted.extend(h.try_write(unit * UNIT, units * UNIT, fua));
            }
            Step::Flush => accepted.push(h.flush()),
            Step::ToSecondary { peer } => {
                h.deliver_to_secondary(peer % peers);
            }
            Step::ToPrimary { peer } => {
                h.deliver_to_primary(peer % peers);
            }
            Step::Disk { pick } => complete_nth(&mut h, pick),
            Step::Hold { peer, on } => h.legs[peer % peers].hold = on,
            Step::Lose { peer } => h.lose(peer as u32 % peers as u32 + 1),
            Step::Connect { peer } => h.connect(peer as u32 % peers as u32 + 1),
            Step::Commit => {
                h.commit_one();
            }
            Step::Tick { ms } => h.tick(ms),
            Step::Verify { peer, repair } => verify(&mut h, peer as u32 % peers as u32 + 1, repair),
        }
    }
    h.heal();
    for leg in &h.legs {
        check_verify(&h, leg.id);
    }
    for req in &accepted {
        assert!(h.is_completed(*req), "request {req} never completed");
    }
    for leg in &h.legs {
        assert_eq!(leg.committed, LegState::UpToDate, "leg {}", leg.id);
        let status = h.primary.peer_status(leg.id).expect("status");
        assert_eq!(status.mode, PeerMode::Sync);
        assert_eq!(status.dirty_bytes, 0);
    }
    h.assert_identical();
}

/// Starts a verify of `leg` if it may run (refusals are expected: not UpToDate, not
/// connected, one running), after checking the previous one.
fn verify(h: &mut Harness, leg: u32, repair: bool) {
    check_verify(h, leg);
    if h.primary.start_verify(h.now, leg, repair).is_ok() {
        h.drain();
    }
}

/// A verify that ran to the end found no difference: nothing was corrupted.
fn check_verify(h: &Harness, leg: u32) {
    if let Some(status) = h.primary.verify_status(leg) {
        if status.finished && status.aborted.is_none() {
            assert_eq!(status.mismatches, vec![], "leg {leg}: {status:?}");
            assert_eq!(status.done_bytes, SIZE);
        }
    }
}

/// Completes the `pick`-th pending disk operation (modulo their number), anywhere.
fn complete_nth(h: &mut Harness, pick: usize) {
    let mut total = h.pdisk.pending.len();
    for leg in &h.legs {
        total += leg.disk.pending.len();
    }
    if total == 0 {
        return;
    }
    let mut n = pick % total;
    if n < h.pdisk.pending.len() {
        h.complete_primary(n, true);
        return;
    }
    n -= h.pdisk.pending.len();
    for index in 0..h.legs.len() {
        let pending = h.legs[index].disk.pending.len();
        if n < pending {
            h.complete_secondary(index, n, true);
            return;
        }
        n -= pending;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_lose_no_acknowledged_write_and_converge(
        states in prop::collection::vec(initial_state(), 1..=2),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        run(&states, &steps);
    }
}

#[test]
fn a_known_schedule_with_two_peers_converges() {
    let steps = [
        Step::Write {
            unit: 0,
            units: 8,
            fua: false,
        },
        Step::ToSecondary { peer: 0 },
        Step::Lose { peer: 1 },
        Step::Write {
            unit: 4,
            units: 8,
            fua: true,
        },
        Step::Disk { pick: 0 },
        Step::Commit,
        Step::Flush,
        Step::Connect { peer: 1 },
        Step::Tick { ms: 100 },
    ];
    run(&[LegState::UpToDate, LegState::UpToDate], &steps);
}
