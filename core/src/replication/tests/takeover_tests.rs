//! The resync after a takeover: primary A crashes with writes in flight, B takes over and
//! tracks A's leg from then on, A comes back as a secondary naming its activity log's hot
//! extents as suspect; the resync covers exactly those plus what B wrote since.

use super::harness::*;
use crate::legmeta::{al_ring_blocks, ActivityLog, AlConfig, AlDecision};
use crate::replication::{Ident, PeerMode, ReplError, Secondary, Suspect};
use crate::volume::{LegId, LegState};

const UP: LegState = LegState::UpToDate;
const EXTENT: u64 = 16 * 1024;
const A: LegId = 0;
const B: LegId = 1;

/// Primary A's activity log, persisted into an in-memory ring as the shim would.
struct Al {
    config: AlConfig,
    log: ActivityLog,
    ring: Vec<[u8; 4096]>,
    /// Writes admitted and not yet ended: (request, offset, len).
    open: Vec<(u64, u64, u64)>,
}

impl Al {
    fn new() -> Al {
        let config = AlConfig::new(SIZE, EXTENT, 4, al_ring_blocks(4), 0).expect("config");
        Al {
            config,
            log: ActivityLog::new(config),
            ring: ActivityLog::initial_ring(&config),
            open: Vec::new(),
        }
    }

    /// A client write on `h`, its extents made hot on disk first.
    fn write(&mut self, h: &mut Harness, offset: u64, len: u64) -> u64 {
        match self.log.begin_write(offset, len).expect("begin") {
            AlDecision::PersistFirst(transaction) => {
                let block = self.config.ring_block(transaction.seq()) as usize;
                self.ring[block] = transaction.encode();
                self.log
                    .transaction_persisted(transaction.seq())
                    .expect("persisted");
            }
            AlDecision::Proceed | AlDecision::AfterPersist { .. } => {}
            AlDecision::Wait => panic!("the test keeps fewer writes in flight than slots"),
        }
        let req = h.write(offset, len, false);
        self.open.push((req, offset, len));
        req
    }

    /// Ends the writes that completed.
    fn end_completed(&mut self, h: &Harness) {
        let (done, open): (Vec<_>, Vec<_>) = (self.open.iter()).partition(|w| h.is_completed(w.0));
        for (_, offset, len) in done {
            self.log.end_write(offset, len).expect("end");
        }
        self.open = open;
    }

    /// What a restart of A recovers from the ring: its hot extents as byte ranges.
    fn recover(&self) -> Vec<(u64, u64)> {
        let ring: Vec<&[u8]> = self.ring.iter().map(|block| &block[..]).collect();
        ActivityLog::recover(&self.config, &ring)
            .expect("recover")
            .resync_ranges()
    }
}

/// Bytes in the grain-rounded union of byte ranges.
fn grain_union(ranges: &[(u64, u64)]) -> u64 {
    let mut grains: Vec<u64> = (ranges.iter())
        .flat_map(|&(offset, len)| offset / GRAIN..(offset + len).div_ceil(GRAIN))
        .collect();
    grains.sort_unstable();
    grains.dedup();
    grains.len() as u64 * GRAIN
}

/// What is left after A crashed.
struct Crashed {
    a_disk: Vec<u8>,
    b_disk: Vec<u8>,
    /// A's hot extents, recovered from its activity log.
    hot: Vec<(u64, u64)>,
    next_req: u64,
}

/// A takeover's outcome: B as primary, A's suspect ranges, what B wrote since the takeover.
struct TookOver {
    b: Harness,
    hot: Vec<(u64, u64)>,
    written: Vec<(u64, u64)>,
}

/// Phase one: A is primary of epoch 3 with B UpToDate; A "crashes" with one write on its own
/// disk only and one on B's only.
fn crash_a() -> Crashed {
    let mut a = Harness::new(&[UP]);
    a.connect_all();
    a.settle();
    let mut al = Al::new();
    for i in 0..24u64 {
        al.write(
            &mut a,
            (i * 7 % 60) * GRAIN + (i % 3) * UNIT,
            UNIT * (2 + i % 7),
        );
        if i % 3 == 2 {
            a.settle();
            al.end_completed(&a);
        }
    }
    a.settle();
    al.end_completed(&a);
    // On B's disk only: B wrote it and acked, the ack never reached A, A's write is pending.
    let on_b = al.write(&mut a, 9 * EXTENT + 3 * UNIT, 4 * UNIT);
    a.legs[0].hold = true;
    assert!(a.deliver_to_secondary(0));
    assert!(a.complete_secondary(0, 0, true));
    // On A's disk only: never sent on.
    let on_a = al.write(&mut a, 2 * EXTENT + GRAIN, 2 * GRAIN);
    assert!(a.complete_primary(1, true));
    assert!(!a.is_completed(on_b) && !a.is_completed(on_a));
    let (a_disk, b_disk) = (a.pdisk.data.clone(), a.legs[0].disk.data.clone());
    let hot = al.recover();
    let inside = |at: usize| {
        let at = at as u64;
        hot.iter()
            .any(|&(offset, len)| offset <= at && at < offset + len)
    };
    let differing: Vec<usize> = (0..a_disk.len())
        .filter(|&i| a_disk[i] != b_disk[i])
        .collect();
    assert!(!differing.is_empty(), "the legs diverged at the crash");
    assert!(
        differing.iter().all(|&at| inside(at)),
        "only inside hot extents"
    );
    Crashed {
        a_disk,
        b_disk,
        hot,
        next_req: a.next_req + 1000,
    }
}

/// Phase two: B primary of epoch 4, A's leg Outdated; `track` uses `track_from_now`.
fn take_over(track: bool, suspect: Suspect) -> TookOver {
    let Crashed {
        a_disk,
        b_disk,
        hot,
        next_req,
    } = crash_a();
    let peers = [(A, LegState::Outdated)];
    let mut b = Harness::build(B, EPOCH + 1, &peers, test_tuning(), |mut primary| {
        if track {
            primary.track_from_now(A).expect("track from now");
        }
        primary
    });
    b.pdisk.data = b_disk;
    b.legs[0].disk.data = a_disk;
    b.next_req = next_req;
    let ident = Ident {
        cluster: CLUSTER,
        volume: VOLUME,
        node: Harness::node_of(A),
    };
    let suspect = match suspect {
        Suspect::Ranges(ranges) if ranges.is_empty() => Suspect::Ranges(hot.clone()),
        other => other,
    };
    b.legs[0].sec = Secondary::new(ident, A, SIZE, EPOCH + 1).with_suspect(suspect);
    let mut written = Vec::new();
    for i in 0..6u64 {
        let (offset, len) = ((30 + i * 5) * GRAIN + UNIT, 3 * UNIT);
        b.write(offset, len, false);
        written.push((offset, len));
    }
    b.settle();
    b.connect(A);
    let (offset, len) = (50 * GRAIN, GRAIN);
    b.write(offset, len, false);
    written.push((offset, len));
    b.settle();
    assert_eq!(b.legs[0].committed, UP, "A's leg is UpToDate again");
    b.assert_identical();
    TookOver { b, hot, written }
}

#[test]
fn after_a_takeover_only_the_suspect_ranges_and_later_writes_are_resynced() {
    let TookOver {
        mut b,
        hot,
        written,
    } = take_over(true, Suspect::none());
    let resynced = b.primary.resync_bytes_sent(A) + b.primary.resync_zero_bytes_sent(A);
    let suspect: u64 = hot.iter().map(|&(_, len)| len).sum();
    let since = grain_union(&written);
    eprintln!(
        "takeover resync: {resynced} bytes resynced; suspect {suspect} bytes in {} ranges + \
         written since the takeover {since} bytes (grain-rounded); volume {SIZE} bytes",
        hot.len()
    );
    let union: Vec<(u64, u64)> = hot.iter().chain(&written).copied().collect();
    assert!(resynced <= grain_union(&union), "{resynced}");
    assert!(resynced <= suspect + since);
    assert!(resynced < SIZE / 2, "far from a full resync");
    b.primary
        .start_verify(b.now, A, false)
        .expect("verify starts");
    b.drain();
    b.settle();
    let status = b.primary.verify_status(A).expect("status");
    assert!(
        status.finished && status.mismatches.is_empty(),
        "{status:?}"
    );
}

#[test]
fn without_track_from_now_or_with_everything_suspect_the_whole_leg_is_resynced() {
    let b = take_over(false, Suspect::none()).b;
    let full = b.primary.resync_bytes_sent(A) + b.primary.resync_zero_bytes_sent(A);
    eprintln!("takeover resync without track_from_now: {full} bytes of {SIZE}");
    assert_eq!(full, SIZE);
    let b = take_over(true, Suspect::Everything).b;
    let full = b.primary.resync_bytes_sent(A) + b.primary.resync_zero_bytes_sent(A);
    assert_eq!(full, SIZE);
}

#[test]
fn an_up_to_date_peer_reporting_suspect_ranges_is_repaired_in_step() {
    let mut h = Harness::new(&[UP]);
    h.legs[0].disk.data[..3 * GRAIN as usize].fill(0x5A);
    let ident = Ident {
        cluster: CLUSTER,
        volume: VOLUME,
        node: Harness::node_of(1),
    };
    h.legs[0].sec = Secondary::new(ident, 1, SIZE, EPOCH).with_suspect_ranges(vec![(0, 10_000)]);
    h.connect_all();
    h.settle();
    h.assert_identical();
    assert_eq!(h.primary.resync_bytes_sent(1), 3 * GRAIN);
    let status = h.primary.peer_status(1).expect("status");
    assert_eq!((status.mode, status.dirty_bytes), (PeerMode::Sync, 0));
    assert!(
        !h.events.iter().any(|e| matches!(e, Event::Proposed(..))),
        "{:?}",
        h.events
    );
}

#[test]
fn track_from_now_is_only_for_an_outdated_leg_before_anything_happens() {
    let mut h = Harness::new(&[UP, LegState::Inconsistent]);
    for leg in [1, 2] {
        let error = h.primary.track_from_now(leg).unwrap_err();
        assert!(
            error.to_string().contains("only an Outdated leg"),
            "{error}"
        );
    }
    assert!(matches!(
        h.primary.track_from_now(9),
        Err(ReplError::UnknownLeg { leg: 9 })
    ));
    let mut h = Harness::new(&[LegState::Outdated]);
    h.write(0, 512, false);
    let error = h.primary.track_from_now(1).unwrap_err();
    assert!(error.to_string().contains("before any request"), "{error}");
    let mut h = Harness::new(&[LegState::Outdated]);
    h.primary.track_from_now(1).expect("fresh");
    assert_eq!(h.primary.peer_status(1).expect("status").dirty_bytes, 0);
    h.write(5 * GRAIN, 512, false);
    assert_eq!(
        h.primary.peer_status(1).expect("status").dirty_bytes,
        GRAIN,
        "writes from now are recorded"
    );
}

#[test]
fn ranges_marked_for_an_up_to_date_peer_are_resynced_in_step() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    // As after this node's own crash as the primary: its hot extents may differ on the peer.
    h.legs[0].disk.data[(7 * GRAIN) as usize] ^= 1;
    let error = h.primary.mark_out_of_sync(1, &[(SIZE, 1)]).unwrap_err();
    assert!(matches!(error, ReplError::OutOfRange { .. }), "{error}");
    h.primary
        .mark_out_of_sync(1, &[(6 * GRAIN, 2 * GRAIN)])
        .expect("mark");
    h.drain();
    h.settle();
    h.assert_identical();
    assert_eq!(h.primary.resync_bytes_sent(1), 2 * GRAIN);
    let status = h.primary.peer_status(1).expect("status");
    assert_eq!((status.mode, status.dirty_bytes), (PeerMode::Sync, 0));
    // A bitmap loaded with dirty grains for an UpToDate peer is repaired the same way.
    h.legs[0].disk.data[(30 * GRAIN) as usize] ^= 1;
    let mut map = crate::legmeta::OutOfSync::new(SIZE, GRAIN).expect("map");
    map.mark(30 * GRAIN, 1).expect("mark");
    h.primary.set_peer_bitmap(1, map).expect("load");
    h.drain();
    h.settle();
    h.assert_identical();
    assert!(
        !h.events.iter().any(|e| matches!(e, Event::Proposed(..))),
        "{:?}",
        h.events
    );
}

// ---- three legs: the surviving secondaries may differ (simulator seed 1254) ----------------

const C: LegId = 2;

/// Primary A with secondaries B and C: a first write reaches both and is confirmed; a
/// second reaches only B (A dies before sending it to C, never acknowledged). C takes over in
/// the next epoch. `carry`: B's session hands what it left unconfirmed to its next session,
/// as the shims do. Returns the new primary's world after the heal.
fn takeover_by_c_after_a_write_only_b_has(carry: bool) -> Harness {
    let peers = [(B, UP), (C, UP)];
    let mut old = Harness::build(A, EPOCH, &peers, test_tuning(), |p| p);
    old.connect_all();
    old.settle();
    old.write(0, GRAIN, false);
    old.settle();
    old.tick(10);
    old.settle();
    old.write(16 * GRAIN, GRAIN, false);
    old.complete_primary(0, true);
    assert!(old.deliver_to_secondary(0), "the write goes to B");
    assert!(old.complete_secondary(0, 0, true), "B applies it");
    let carried = old.legs[0].sec.unconfirmed();
    assert_eq!(carried, Suspect::Ranges(vec![(16 * GRAIN, GRAIN)]));
    assert_ne!(
        old.legs[0].disk.data, old.legs[1].disk.data,
        "B and C differ"
    );

    let peers = [(A, LegState::Outdated), (B, UP)];
    let mut new = Harness::build(C, EPOCH + 1, &peers, test_tuning(), |mut primary| {
        primary.track_from_now(A).expect("track from now");
        primary
    });
    new.pdisk.data = old.legs[1].disk.data.clone();
    new.legs[0].disk.data = old.pdisk.data.clone();
    new.legs[1].disk.data = old.legs[0].disk.data.clone();
    let ident = |leg: LegId| Ident {
        cluster: CLUSTER,
        volume: VOLUME,
        node: Harness::node_of(leg),
    };
    new.legs[0].sec =
        Secondary::new(ident(A), A, SIZE, EPOCH + 1).with_suspect_ranges(vec![(16 * GRAIN, GRAIN)]);
    let b_report = if carry { carried } else { Suspect::none() };
    new.legs[1].sec = Secondary::new(ident(B), B, SIZE, EPOCH + 1).with_suspect(b_report);
    new.next_req = old.next_req;
    new.heal();
    new
}

#[test]
fn after_a_takeover_a_secondary_reports_what_it_applied_unconfirmed_and_the_legs_converge() {
    let new = takeover_by_c_after_a_write_only_b_has(true);
    new.assert_identical();
}

#[test]
fn without_that_report_the_surviving_legs_stay_different() {
    let new = takeover_by_c_after_a_write_only_b_has(false);
    assert_ne!(
        new.legs[1].disk.data, new.pdisk.data,
        "B keeps a write C never had, and nobody resyncs it"
    );
}
