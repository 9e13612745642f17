//! A secondary's volatile cache: writes it acked but never flushed are resynced after its
//! link drops, because its node may have lost power (simulator seeds 1143, 1156, 1184).

use super::harness::*;
use crate::volume::LegState;

const UP: LegState = LegState::UpToDate;

fn dirty(h: &Harness, leg: u32) -> Vec<(u64, u64)> {
    h.primary
        .peer_bitmap(leg)
        .expect("bitmap")
        .dirty_runs()
        .collect()
}

#[test]
fn a_secondary_that_loses_power_gets_back_what_it_acked_but_never_flushed() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let req = h.write(8 * GRAIN, 2 * GRAIN, false);
    h.settle();
    assert!(h.is_completed(req), "acked by both legs");
    h.assert_identical();
    h.power_loss(1);
    assert_ne!(
        h.legs[0].disk.data, h.pdisk.data,
        "the peer's cache held the write and lost it"
    );
    assert_eq!(dirty(&h, 1), vec![(8 * GRAIN, 2 * GRAIN)]);
    h.heal();
    h.assert_identical();
}

#[test]
fn what_the_peer_flushed_is_not_resynced_after_a_lost_link() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let req = h.write(8 * GRAIN, GRAIN, false);
    let flush = h.flush();
    h.settle();
    assert!(h.is_completed(req) && h.is_completed(flush));
    h.power_loss(1);
    h.assert_identical();
    h.settle();
    assert!(dirty(&h, 1).is_empty(), "flushed there, nothing to resync");
}

#[test]
fn an_acked_fua_write_is_not_resynced_after_a_lost_link() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let req = h.write(4 * GRAIN, GRAIN, true);
    h.settle();
    assert!(h.is_completed(req));
    h.power_loss(1);
    h.settle();
    assert!(dirty(&h, 1).is_empty(), "a FUA write is durable when acked");
}

#[test]
fn an_idle_peer_with_unflushed_writes_gets_a_background_flush() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.write(0, GRAIN, false);
    h.settle();
    let flushes_before = h
        .events
        .iter()
        .filter(|e| **e == Event::PeerFlushDone(1))
        .count();
    let interval = test_tuning().peer_flush_interval_ms;
    h.tick(interval);
    h.settle();
    let flushes = h
        .events
        .iter()
        .filter(|e| **e == Event::PeerFlushDone(1))
        .count();
    assert_eq!(flushes, flushes_before + 1, "one background flush");
    h.tick(interval * 3);
    h.settle();
    let again = h
        .events
        .iter()
        .filter(|e| **e == Event::PeerFlushDone(1))
        .count();
    assert_eq!(again, flushes, "nothing unflushed, no more flushes");
    h.power_loss(1);
    h.settle();
    assert!(
        dirty(&h, 1).is_empty(),
        "the background flush made it durable"
    );
    h.assert_identical();
}

#[test]
fn resync_data_the_peer_acked_but_never_flushed_is_resynced_again() {
    let mut h = Harness::new(&[LegState::Outdated]);
    h.write(2 * GRAIN, 3 * GRAIN, false);
    h.write(20 * GRAIN, GRAIN, false);
    h.settle();
    h.connect_all();
    // Run the resync to the point where only the peer's flush before `UpToDate` is left.
    for _ in 0..1_000 {
        let mut moved = h.deliver_all();
        while h.complete_primary(0, true) {
            moved = true;
        }
        let pending = &h.legs[0].disk.pending;
        if let Some(i) = pending
            .iter()
            .position(|p| !matches!(p.op.kind, crate::replication::DiskKind::Flush))
        {
            h.complete_secondary(0, i, true);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(
        h.legs[0]
            .disk
            .pending
            .iter()
            .any(|p| matches!(p.op.kind, crate::replication::DiskKind::Flush)),
        "the resync ends with a flush of the peer"
    );
    assert_eq!(
        h.legs[0].disk.data, h.pdisk.data,
        "resync data applied (cached)"
    );
    h.power_loss(1);
    assert_ne!(
        h.legs[0].disk.data, h.pdisk.data,
        "the resync data was only cached"
    );
    h.heal();
    h.assert_identical();
}
