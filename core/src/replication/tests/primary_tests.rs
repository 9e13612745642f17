//! A primary with its secondaries through the in-memory harness: rule 1 (no acknowledged write
//! lost), the freeze, bitmaps, resync, flush and FUA ordering, bounds.

use super::harness::*;
use crate::replication::wire::{decode, Message};
use crate::replication::{LinkState, PeerMode, PrimaryAction, ReplError, Tuning};
use crate::volume::LegState;

const UP: LegState = LegState::UpToDate;

fn dirty_runs(h: &Harness, leg: u32) -> Vec<(u64, u64)> {
    h.primary
        .peer_bitmap(leg)
        .expect("bitmap")
        .dirty_runs()
        .collect()
}

/// Grain-rounded union of byte ranges, as merged runs.
fn grain_runs(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut grains: Vec<u64> = ranges
        .iter()
        .flat_map(|&(offset, len)| offset / GRAIN..(offset + len).div_ceil(GRAIN))
        .collect();
    grains.sort_unstable();
    grains.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for g in grains {
        match runs.last_mut() {
            Some(run) if run.0 + run.1 == g * GRAIN => run.1 += GRAIN,
            _ => runs.push((g * GRAIN, GRAIN)),
        }
    }
    runs
}

#[test]
fn writes_reach_every_leg_and_the_legs_are_identical() {
    let mut h = Harness::new(&[UP, UP]);
    h.connect_all();
    h.settle();
    h.seed(7);
    let mut reqs = Vec::new();
    for i in 0..40u64 {
        let offset = (i * 7 % 60) * 4096 + (i % 3) * UNIT;
        reqs.push(h.write(offset, UNIT * (1 + i % 9), i % 5 == 0));
        if i % 4 == 0 {
            for _ in 0..3 {
                h.complete_random();
            }
            h.deliver_all();
        }
    }
    for _ in 0..10_000 {
        let moved = h.complete_random() | h.deliver_all();
        if !moved {
            break;
        }
    }
    h.settle();
    assert!(reqs.iter().all(|r| h.completed.get(r) == Some(&true)));
    h.assert_identical();
    // The final content is the last write of each unit.
    let tags = h.pdisk.tags();
    for (unit, &tag) in tags.iter().enumerate() {
        let unit = unit as u64;
        let last = h
            .writes
            .iter()
            .filter(|(_, w)| w.offset / UNIT <= unit && unit < (w.offset + w.len) / UNIT)
            .map(|(&r, _)| r)
            .max()
            .unwrap_or(0);
        assert_eq!(tag, last, "unit {unit}");
    }
}

#[test]
fn a_write_is_not_completed_before_the_up_to_date_peer_acked_it() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.legs[0].hold = true;
    let req = h.write(0, 4096, false);
    h.deliver_all();
    h.complete_all_disks();
    h.deliver_all();
    assert!(
        !h.is_completed(req),
        "local and peer disks done, but the ack is held"
    );
    assert_eq!(h.legs[0].to_pri.len(), 1);
    h.legs[0].hold = false;
    h.deliver_all();
    assert_eq!(h.completed.get(&req), Some(&true));
}

#[test]
fn pipelined_writes_complete_in_any_order() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let first = h.write(0, 4096, false);
    let second = h.write(65536, 4096, false);
    h.deliver_all();
    assert_eq!(h.pdisk.pending.len(), 2, "both in flight at once");
    assert_eq!(h.legs[0].disk.pending.len(), 2);
    h.complete_primary(1, true);
    h.complete_secondary(0, 1, true);
    h.deliver_all();
    assert!(h.is_completed(second) && !h.is_completed(first));
    h.settle();
    assert!(h.is_completed(first));
}

#[test]
fn overlapping_writes_wait_for_each_other() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let first = h.write(0, 8192, false);
    let second = h.write(4096, 512, false);
    assert_eq!(h.pdisk.pending.len(), 1, "the second waits for the first");
    h.complete_primary(0, true);
    assert_eq!(h.pdisk.pending.len(), 1, "now the second runs");
    h.settle();
    assert!(h.is_completed(first) && h.is_completed(second));
    assert_eq!(tag(&h.pdisk.data, 8), second);
    h.assert_identical();
}

#[test]
fn a_lost_peer_freezes_acks_until_outdated_is_committed_and_its_bitmap_is_exact() {
    let mut h = Harness::new(&[UP]);
    h.auto_commit = false;
    h.connect_all();
    h.settle();
    let acked = h.write(0, 4096, false);
    let unacked = h.write(3 * GRAIN + 512, 1024, false);
    h.deliver_all();
    // The peer completes and acks only the first.
    h.complete_secondary(0, 0, true);
    h.deliver_all();
    h.legs[0].hold = true;
    h.complete_all_disks();
    h.lose(1);
    let later = h.write(10 * GRAIN, 2 * GRAIN + 512, false);
    h.complete_all_disks();
    assert!(h.is_completed(acked), "acked by the peer before the loss");
    assert!(!h.is_completed(unacked), "unacked write held");
    assert!(!h.is_completed(later), "new write held");
    assert_eq!(
        h.proposals.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        vec![(1, LegState::Outdated)]
    );
    let status = h.primary.peer_status(1).expect("status");
    assert_eq!(status.mode, PeerMode::Failing);
    // Only the write it acked but never flushed is recorded yet (its cache may be gone);
    // the held ones join when Outdated is committed.
    assert_eq!(dirty_runs(&h, 1), vec![(0, 4096)]);
    h.tick(600);
    assert_eq!(h.proposals.len(), 2, "proposed again after repropose_ms");
    h.commit_one();
    assert!(
        h.is_completed(unacked) && h.is_completed(later),
        "released by the commit"
    );
    h.proposals.clear();
    let expected = grain_runs(&[
        (0, 4096),
        (3 * GRAIN + 512, 1024),
        (10 * GRAIN, 2 * GRAIN + 512),
    ]);
    assert_eq!(dirty_runs(&h, 1), expected);
    // A write while it is behind and away is recorded and completes at once.
    let away = h.write(40 * GRAIN, 512, false);
    h.complete_all_disks();
    assert!(h.is_completed(away));
    let expected = grain_runs(&[
        (0, 4096),
        (3 * GRAIN + 512, 1024),
        (10 * GRAIN, 2 * GRAIN + 512),
        (40 * GRAIN, 512),
    ]);
    assert_eq!(dirty_runs(&h, 1), expected);
}

#[test]
fn reconnect_resyncs_only_the_dirty_regions_then_proposes_up_to_date() {
    let mut h = Harness::new(&[UP, UP]);
    h.connect_all();
    h.settle();
    for i in 0..8 {
        h.write(i * 4 * GRAIN, 4 * GRAIN, false);
    }
    // Flushed on both peers, and confirmed (a tick): the lost link owes nothing from before
    // it (`unflushed_tests`), and the peer reports nothing unconfirmed when it returns.
    h.flush();
    h.settle();
    h.tick(10);
    h.settle();
    h.lose(2);
    h.settle();
    assert_eq!(h.legs[1].committed, LegState::Outdated);
    let mut written = 0;
    for i in 0..10u64 {
        let offset = i * 5 * GRAIN + 1024;
        h.write(offset, 2048 + i * 512, false);
        written += 2048 + i * 512;
    }
    h.settle();
    let dirty = h.primary.peer_status(2).expect("status").dirty_bytes;
    assert!(
        dirty >= written && dirty <= written + 10 * 2 * GRAIN,
        "{dirty} vs {written}"
    );
    h.events.clear();
    h.connect(2);
    h.settle();
    let sent = h.primary.resync_bytes_sent(2);
    assert_eq!(sent, dirty, "exactly the dirty grains");
    assert!(sent <= written + 10 * 2 * GRAIN);
    let position = |e: &Event| h.events.iter().position(|x| x == e).expect("event");
    assert!(
        position(&Event::PeerFlushDone(2)) < position(&Event::Proposed(2, LegState::UpToDate)),
        "what the resync sent is flushed before the leg is proposed UpToDate"
    );
    assert_eq!(
        h.primary.peer_status(2).expect("status").mode,
        PeerMode::Sync
    );
    assert_eq!(h.primary.progress(2), (dirty, dirty));
    assert_eq!(
        h.primary.resync_bytes_sent(1),
        0,
        "the other peer was never behind"
    );
    h.assert_identical();
}

#[test]
fn writes_during_resync_reach_the_peer_and_clear_only_when_acked() {
    let mut h = Harness::with_tuning(
        &[LegState::Outdated],
        Tuning {
            resync_window: 1,
            ..test_tuning()
        },
    );
    let mut map = crate::legmeta::OutOfSync::new(SIZE, GRAIN).expect("map");
    map.mark(0, 8 * GRAIN).expect("mark");
    h.primary.set_peer_bitmap(1, map).expect("load");
    h.connect(1);
    h.deliver_all();
    // The first resync chunk (16 KiB at 0) is being read; a write into the dirty region at 6
    // grains is sent to the peer without waiting, and its grain stays dirty until acked.
    let req = h.write(6 * GRAIN, GRAIN, false);
    h.complete_primary(1, true);
    h.legs[0].hold = true;
    h.deliver_all();
    assert!(h.is_completed(req), "a behind peer is not waited for");
    let bitmap = h.primary.peer_bitmap(1).expect("bitmap");
    assert!(bitmap.is_dirty(6 * GRAIN, GRAIN).expect("range"));
    h.legs[0].hold = false;
    h.settle();
    assert_eq!(
        h.primary.peer_status(1).expect("status").mode,
        PeerMode::Sync
    );
    h.assert_identical();
    let sent = h.primary.resync_bytes_sent(1);
    assert!(sent <= 8 * GRAIN, "{sent}");
}

#[test]
fn a_flush_is_acknowledged_only_after_the_peer_flushed() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let write = h.write(0, 4096, false);
    h.settle();
    assert!(h.is_completed(write));
    h.events.clear();
    let flush = h.flush();
    h.deliver_all();
    // Local flush done, the peer's flush submitted but not done.
    h.complete_primary(0, true);
    h.deliver_all();
    assert!(!h.is_completed(flush));
    assert_eq!(h.legs[0].disk.pending.len(), 1);
    h.settle();
    let position = |e: &Event| h.events.iter().position(|x| x == e).expect("event");
    assert!(position(&Event::PeerFlushDone(1)) < position(&Event::Complete(flush)));
    assert!(position(&Event::LocalFlushDone) < position(&Event::Complete(flush)));
}

#[test]
fn a_fua_write_is_acknowledged_only_after_the_peer_flushed_it() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let req = h.write(8192, 4096, true);
    h.deliver_all();
    h.complete_primary(0, true); // local write
    h.complete_primary(0, true); // local flush
    h.complete_secondary(0, 0, true); // peer write
    h.deliver_all();
    assert!(!h.is_completed(req), "the peer has not flushed it yet");
    assert!(matches!(
        h.legs[0].disk.pending[0].op.kind,
        crate::replication::DiskKind::Flush
    ));
    h.complete_secondary(0, 0, true);
    h.deliver_all();
    assert!(h.is_completed(req));
    let unit = (8192 / UNIT) as usize;
    assert_eq!(h.legs[0].disk.durable[unit], req);
    assert_eq!(h.pdisk.durable[unit], req);
}

#[test]
fn stale_epoch_secondary_refuses_the_primary_and_a_new_epoch_drops_the_link() {
    let mut h = Harness::new(&[UP]);
    h.legs[0].sec.set_epoch(4);
    h.auto_commit = false;
    h.connect(1);
    h.deliver_all();
    assert!(
        h.events.contains(&Event::DropLink(1)),
        "refused hello drops the link"
    );
    assert!(
        h.notes
            .iter()
            .any(|n| n.contains("epoch 3") && n.contains("older epoch")),
        "{:#?}",
        h.notes
    );
    assert_eq!(
        h.primary.peer_status(1).expect("status").mode,
        PeerMode::Failing
    );

    // Attached in epoch 3; the cluster commits epoch 4: the link is dropped at once.
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.legs[0].sec.set_epoch(4);
    h.drain();
    assert!(h.events.contains(&Event::SecondaryDrop(1)));
    assert!(!h.legs[0].up);
    assert_eq!(h.legs[0].sec.attached(), None);
}

#[test]
fn an_outdated_connected_peer_gets_writes_but_is_not_waited_for() {
    let mut h = Harness::new(&[LegState::Outdated]);
    let mut map = crate::legmeta::OutOfSync::new(SIZE, GRAIN).expect("map");
    map.mark(50 * GRAIN, 1).expect("mark");
    h.primary.set_peer_bitmap(1, map).expect("load");
    h.auto_commit = false;
    h.connect(1);
    h.deliver_all();
    h.legs[0].hold = true;
    let req = h.write(0, 4096, false);
    h.deliver_all();
    assert_eq!(
        h.pdisk.pending.len(),
        2,
        "the resync read of grain 50 and the write"
    );
    h.complete_primary(1, true);
    assert!(h.is_completed(req), "completed without the peer");
    assert_eq!(h.legs[0].disk.pending.len(), 1, "but the peer got it");
    assert_eq!(dirty_runs(&h, 1), vec![(0, GRAIN), (50 * GRAIN, GRAIN)]);
    h.legs[0].hold = false;
    h.settle();
    assert!(dirty_runs(&h, 1).is_empty());
    assert_eq!(
        h.primary.resync_bytes_sent(1),
        GRAIN,
        "grain 0 was cleared by the write's ack"
    );
    assert_eq!(h.proposals.back().map(|p| p.1), Some(LegState::UpToDate));
}

#[test]
fn a_full_sync_sends_known_zero_ranges_as_write_zeroes() {
    let mut h = Harness::new(&[LegState::Inconsistent]);
    // The primary's leg holds data in its first half; the second half is a hole.
    for i in 0..8 {
        h.pdisk.data[(i * 16 * 1024) as usize..][..16 * 1024].fill(i as u8 + 1);
    }
    h.legs[0].disk.data.fill(0xEE);
    h.primary
        .set_skip_ranges(&[(SIZE / 2 + 100, SIZE / 2 - 100)])
        .expect("skip");
    h.connect(1);
    h.settle();
    let data = h.primary.resync_bytes_sent(1);
    let zeroes = h.primary.resync_zero_bytes_sent(1);
    assert_eq!(data, SIZE / 2 + GRAIN, "the skip range is rounded inward");
    assert_eq!(zeroes, SIZE / 2 - GRAIN);
    assert_eq!(h.primary.progress(1), (SIZE, SIZE));
    assert_eq!(h.legs[0].committed, UP);
    h.assert_identical();
}

#[test]
fn a_write_into_a_skip_range_is_synced_as_data() {
    let mut h = Harness::new(&[LegState::Inconsistent]);
    h.primary.set_skip_ranges(&[(0, SIZE)]).expect("skip");
    h.legs[0].disk.data.fill(0xEE);
    h.write(5 * GRAIN + 512, 512, false);
    h.settle();
    h.connect(1);
    h.settle();
    assert_eq!(h.primary.resync_bytes_sent(1), GRAIN);
    assert_eq!(h.primary.resync_zero_bytes_sent(1), SIZE - GRAIN);
    h.assert_identical();
}

#[test]
fn the_resync_rate_is_capped() {
    let rate = 64 * 1024;
    let mut h = Harness::with_tuning(
        &[LegState::Inconsistent],
        Tuning {
            resync_chunk: 4096,
            resync_max_rate: rate,
            ..test_tuning()
        },
    );
    h.connect(1);
    for _ in 0..100 {
        h.deliver_all();
        h.complete_all_disks();
        h.deliver_all();
        h.tick(10);
    }
    let sent = h.primary.resync_bytes_sent(1);
    // One second: the rate plus the starting budget (a chunk) plus one chunk of overshoot.
    assert!(sent <= rate + 3 * 4096, "{sent}");
    assert!(sent >= rate / 2, "{sent}");
}

#[test]
fn resync_backs_off_while_client_requests_are_in_flight() {
    let mut h = Harness::with_tuning(
        &[LegState::Inconsistent],
        Tuning {
            resync_chunk: 4096,
            resync_window: 8,
            resync_window_busy: 1,
            ..test_tuning()
        },
    );
    h.connect(1);
    h.deliver_all();
    assert_eq!(h.primary.peer_status(1).expect("s").resync_in_flight, 8);
    h.settle();
    let mut h = Harness::with_tuning(
        &[LegState::Inconsistent],
        Tuning {
            resync_chunk: 4096,
            resync_window: 8,
            resync_window_busy: 1,
            ..test_tuning()
        },
    );
    let req = h.write(SIZE - 4096, 4096, false);
    h.connect(1);
    h.deliver_all();
    assert_eq!(h.primary.peer_status(1).expect("s").resync_in_flight, 1);
    h.settle();
    assert!(h.is_completed(req));
    h.assert_identical();
}

#[test]
fn beyond_the_request_limit_writes_are_busy() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    for i in 0..256u64 {
        h.write((i % 64) * GRAIN, 512, false);
    }
    let error = h
        .primary
        .client_write(h.now, 999, 0, vec![0; 512], false)
        .unwrap_err();
    assert!(
        matches!(error, ReplError::Busy { limit: 256, .. }),
        "{error}"
    );
    assert!(matches!(
        h.primary
            .client_write(h.now, 999, SIZE, vec![0; 512], false),
        Err(ReplError::OutOfRange { .. } | ReplError::Busy { .. })
    ));
    h.settle();
    assert_eq!(h.completed.len(), 256);
    assert!(matches!(
        h.primary
            .client_write(h.now, 999, SIZE - 256, vec![0; 512], false),
        Err(ReplError::OutOfRange {
            offset: _,
            len: 512,
            size: SIZE
        })
    ));
}

#[test]
fn a_silent_up_to_date_peer_is_outdated_after_the_ack_timeout() {
    let mut h = Harness::new(&[UP]);
    h.auto_commit = false;
    h.connect_all();
    h.settle();
    let req = h.write(0, 4096, false);
    h.complete_all_disks();
    h.legs[0].hold = true;
    h.deliver_all();
    h.tick(999);
    assert!(h.proposals.is_empty());
    h.tick(1);
    assert!(h.events.contains(&Event::DropLink(1)));
    assert_eq!(h.proposals.front().map(|p| p.1), Some(LegState::Outdated));
    assert!(!h.is_completed(req));
    h.commit_one();
    assert!(h.is_completed(req));
    assert_eq!(dirty_runs(&h, 1), vec![(0, GRAIN)]);
}

#[test]
fn writes_wait_for_a_connecting_up_to_date_peer_instead_of_outdating_it() {
    let mut h = Harness::new(&[UP]);
    h.auto_commit = false;
    h.connect(1);
    let req = h.write(0, 4096, false);
    h.complete_all_disks();
    assert!(!h.is_completed(req));
    h.settle();
    assert!(h.is_completed(req));
    assert!(h.proposals.is_empty(), "never outdated");
    h.assert_identical();
}

#[test]
fn a_write_while_an_up_to_date_peer_was_never_connected_outdates_it() {
    let mut h = Harness::new(&[UP]);
    h.auto_commit = false;
    let req = h.write(0, 4096, false);
    h.complete_all_disks();
    assert!(!h.is_completed(req));
    assert_eq!(h.proposals.front().map(|p| p.1), Some(LegState::Outdated));
    h.commit_one();
    assert!(h.is_completed(req));
    h.heal();
    h.assert_identical();
}

#[test]
fn a_peer_lost_while_promoted_freezes_again() {
    let mut h = Harness::new(&[LegState::Outdated]);
    h.auto_commit = false;
    let map = crate::legmeta::OutOfSync::new(SIZE, GRAIN).expect("map");
    h.primary.set_peer_bitmap(1, map).expect("clean");
    h.connect(1);
    h.settle();
    assert_eq!(
        h.primary.peer_status(1).expect("s").mode,
        PeerMode::Promoting
    );
    let req = h.write(0, 4096, false);
    h.complete_primary(0, true);
    assert!(!h.is_completed(req), "a promoting peer is waited for");
    h.lose(1);
    assert_eq!(h.primary.peer_status(1).expect("s").mode, PeerMode::Failing);
    h.commit_one(); // UpToDate commits first: the leg stays frozen
    assert!(!h.is_completed(req));
    assert_eq!(h.legs[0].committed, UP);
    h.commit_one(); // then Outdated
    assert!(h.is_completed(req));
    assert_eq!(dirty_runs(&h, 1), vec![(0, GRAIN)]);
    h.heal();
    h.assert_identical();
}

#[test]
fn trim_and_write_zeroes_are_replicated() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.write(0, 16 * 1024, false);
    h.settle();
    h.primary
        .client_write_zeroes(h.now, 100, 4096, 4096, true)
        .expect("zeroes");
    h.primary
        .client_trim(h.now, 101, 8192, 4096, false)
        .expect("trim");
    h.drain();
    h.settle();
    assert!(h.is_completed(100) && h.is_completed(101));
    assert!(h.pdisk.data[4096..12288].iter().all(|&b| b == 0));
    h.assert_identical();
}

#[test]
fn a_local_disk_error_fails_the_client_request() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let req = h.write(0, 4096, false);
    h.complete_primary(0, false);
    h.settle();
    assert_eq!(h.completed.get(&req), Some(&false));
    // The peer applied the write the local leg failed (a full disk, found by the real-host
    // chaos run): the range is resynced from this leg, so the legs stay identical.
    h.assert_identical();
}

/// The peer applied a write the local leg then failed: the range is resynced from the local
/// leg, so the legs converge (found by the simulator, `sim/tests/volumes.rs` seed 124).
#[test]
fn a_write_the_local_leg_failed_is_resynced_so_the_legs_converge() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    let req = h.write(0, 8192, false);
    h.deliver_all();
    h.complete_secondary(0, 0, true);
    h.deliver_all();
    h.complete_primary(0, false);
    h.settle();
    assert_eq!(h.completed.get(&req), Some(&false));
    h.assert_identical();
}

#[test]
fn a_peer_disk_error_outdates_the_peer() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.auto_commit = false;
    let req = h.write(0, 4096, false);
    h.deliver_all();
    h.complete_secondary(0, 0, false);
    h.deliver_all();
    h.complete_all_disks();
    assert!(!h.is_completed(req));
    assert_eq!(h.proposals.front().map(|p| p.1), Some(LegState::Outdated));
    h.commit_one();
    assert!(h.is_completed(req));
    h.heal();
    h.assert_identical();
}

#[test]
fn malformed_frames_from_a_peer_drop_it_and_bad_inputs_are_refused() {
    let mut h = Harness::new(&[UP]);
    h.auto_commit = false;
    h.connect_all();
    h.settle();
    let error = h.primary.peer_message(1, b"garbage").unwrap_err();
    assert!(matches!(error, ReplError::Wire(_)), "{error}");
    h.drain();
    assert!(h.events.contains(&Event::DropLink(1)));
    assert_eq!(h.primary.peer_status(1).expect("s").link, LinkState::Down);
    assert!(matches!(
        h.primary.peer_message(9, b"x"),
        Err(ReplError::UnknownLeg { leg: 9 })
    ));
    assert!(matches!(
        h.primary.disk_done(12345, true),
        Err(ReplError::UnknownDiskOp { id: 12345 })
    ));
    assert!(matches!(
        h.primary.client_write(h.now, 1, 0, Vec::new(), false),
        Err(ReplError::EmptyRange { offset: 0 })
    ));
}

#[test]
fn the_hello_names_this_primary_and_its_epoch() {
    let mut h = Harness::new(&[UP]);
    h.primary.peer_connected(h.now, 1).expect("connect");
    let hello = h.primary.take_actions().into_iter().find_map(|a| match a {
        PrimaryAction::Send { leg: 1, bytes } => decode(&bytes).ok(),
        _ => None,
    });
    assert_eq!(
        hello,
        Some(Message::Hello {
            version: crate::replication::PROTOCOL_VERSION,
            cluster: CLUSTER.0,
            volume: VOLUME,
            leg: 1,
            from_node: PRIMARY_NODE,
            epoch: EPOCH,
            size: SIZE,
        })
    );
}

#[test]
fn an_operator_outdating_a_connected_peer_records_what_it_has_not_acked() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.auto_commit = false;
    h.legs[0].hold = true;
    let req = h.write(2 * GRAIN, GRAIN, false);
    h.deliver_all();
    h.complete_all_disks();
    assert!(!h.is_completed(req));
    // Committed from elsewhere (an operator), not proposed by this primary.
    h.primary
        .leg_state_committed(1, LegState::Outdated, EPOCH)
        .expect("commit");
    h.legs[0].committed = LegState::Outdated;
    h.drain();
    assert!(h.is_completed(req));
    assert_eq!(dirty_runs(&h, 1), vec![(2 * GRAIN, GRAIN)]);
    // The peer did write it: its ack clears the grain.
    h.legs[0].hold = false;
    h.deliver_all();
    assert!(dirty_runs(&h, 1).is_empty());
    h.heal();
    h.assert_identical();
}

#[test]
fn leg_states_of_another_epoch_are_ignored() {
    let mut h = Harness::new(&[UP]);
    h.auto_commit = false;
    h.connect_all();
    h.settle();
    h.primary
        .leg_state_committed(1, LegState::Outdated, EPOCH - 1)
        .expect("ignored");
    assert_eq!(h.primary.peer_status(1).expect("s").mode, PeerMode::Sync);
    assert!(matches!(
        h.primary.leg_state_committed(9, LegState::Outdated, EPOCH),
        Err(ReplError::UnknownLeg { leg: 9 })
    ));
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    use crate::replication::{Ident, PeerLeg, Primary};
    let ident = Ident {
        cluster: CLUSTER,
        volume: VOLUME,
        node: PRIMARY_NODE,
    };
    let peer = |leg| PeerLeg {
        leg,
        node: 2,
        state: UP,
    };
    let new = |peers, grain| Primary::new(ident, MY_LEG, SIZE, EPOCH, peers, grain);
    let error = new(vec![peer(0)], GRAIN).unwrap_err();
    assert!(error.to_string().contains("own leg"), "{error}");
    let error = new(vec![peer(1), peer(1)], GRAIN).unwrap_err();
    assert!(error.to_string().contains("listed twice"), "{error}");
    let error = new(vec![peer(1)], 512).unwrap_err();
    assert!(error.to_string().contains("grain 512"), "{error}");
    let error = new(vec![peer(1)], 3 * 4096).unwrap_err();
    assert!(error.to_string().contains("power of two"), "{error}");
    let error = Primary::new(ident, MY_LEG, 0, EPOCH, vec![], GRAIN).unwrap_err();
    assert!(error.to_string().contains("size 0"), "{error}");
    let primary = new(vec![peer(1)], GRAIN).expect("ok");
    let error = primary
        .with_tuning(Tuning {
            resync_window: 0,
            ..Tuning::default()
        })
        .unwrap_err();
    assert!(error.to_string().contains("resync windows"), "{error}");
    let mut primary = new(vec![peer(1)], GRAIN).expect("ok");
    let wrong = crate::legmeta::OutOfSync::new(SIZE * 2, GRAIN).expect("map");
    let error = primary.set_peer_bitmap(1, wrong).unwrap_err();
    assert!(error.to_string().contains("bitmap for leg 1"), "{error}");
}

#[test]
fn client_bytes_are_bounded_too() {
    use crate::replication::{Ident, PeerLeg, Primary};
    let ident = Ident {
        cluster: CLUSTER,
        volume: VOLUME,
        node: PRIMARY_NODE,
    };
    let peers = vec![PeerLeg {
        leg: 1,
        node: 2,
        state: UP,
    }];
    let mut primary = Primary::new(ident, MY_LEG, 1 << 30, EPOCH, peers, GRAIN)
        .and_then(|p| {
            p.with_tuning(Tuning {
                max_client_bytes: 32 << 20,
                ..Tuning::default()
            })
        })
        .expect("primary");
    // The UpToDate peer is still connecting: the data is kept for it.
    primary.peer_connected(0, 1).expect("connect");
    primary
        .client_write(0, 1, 0, vec![1; 32 << 20], false)
        .expect("first");
    let error = primary
        .client_write(0, 2, 64 << 20, vec![2; 4096], false)
        .unwrap_err();
    assert!(
        matches!(
            error,
            ReplError::Busy {
                what: "client bytes",
                ..
            }
        ),
        "{error}"
    );
    let error = primary
        .client_write(0, 3, 0, vec![3; (32 << 20) + 1], false)
        .unwrap_err();
    assert!(matches!(error, ReplError::TooLarge { .. }), "{error}");
}

#[test]
fn a_silently_cut_idle_link_is_dropped_after_an_unanswered_ping() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    h.auto_commit = false;
    let tuning = Tuning::default();
    // From now on nothing arrives (a firewall drops the link without closing it); no write is
    // waiting, so only the keepalive can notice.
    let mut waited = 0;
    while h.primary.peer_status(1).expect("s").link == LinkState::Up {
        assert!(
            waited <= tuning.ping_interval_ms + tuning.ping_timeout_ms + 100,
            "still up after {waited} ms of silence"
        );
        h.tick(50);
        waited += 50;
    }
    assert!(
        waited >= tuning.ping_timeout_ms,
        "dropped after only {waited} ms"
    );
    assert_eq!(h.proposals.front().map(|p| p.1), Some(LegState::Outdated));
}

#[test]
fn an_idle_link_that_answers_its_pings_stays_up() {
    let mut h = Harness::new(&[UP]);
    h.connect_all();
    h.settle();
    for _ in 0..200 {
        h.tick(50);
        h.deliver_all();
    }
    assert_eq!(h.primary.peer_status(1).expect("s").link, LinkState::Up);
    assert_eq!(h.primary.peer_status(1).expect("s").mode, PeerMode::Sync);
}
