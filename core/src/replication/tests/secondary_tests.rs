//! The secondary on its own: who it attaches to, what it refuses, how it orders its disk.

use crate::ids::ClusterId;
use crate::replication::wire::{
    decode, encode, verify_digests, Message, RefuseCode, Suspect, MAX_SUSPECT_RANGES,
    MAX_VERIFY_LEN, PROTOCOL_VERSION, VERIFY_BLOCK,
};
use crate::replication::{DiskKind, DiskOp, Ident, ReplError, Secondary, SecondaryAction};

const CLUSTER: ClusterId = ClusterId([5; 16]);
const SIZE: u64 = 1 << 20;

fn secondary(epoch: u64) -> Secondary {
    let ident = Ident {
        cluster: CLUSTER,
        volume: 7,
        node: 2,
    };
    Secondary::new(ident, 1, SIZE, epoch)
}

fn hello(epoch: u64) -> Message {
    Message::Hello {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER.0,
        volume: 7,
        leg: 1,
        from_node: 1,
        epoch,
        size: SIZE,
    }
}

fn write(epoch: u64, seq: u64, offset: u64, len: usize, fua: bool) -> Vec<u8> {
    encode(&Message::Write {
        epoch,
        seq,
        offset,
        data: vec![seq as u8; len],
        fua,
    })
}

/// Sent messages and disk ops among the actions.
fn split(actions: Vec<SecondaryAction>) -> (Vec<Message>, Vec<DiskOp>, Vec<String>) {
    let (mut sent, mut disk, mut drops) = (Vec::new(), Vec::new(), Vec::new());
    for action in actions {
        match action {
            SecondaryAction::Send(bytes) => sent.push(decode(&bytes).expect("own frame")),
            SecondaryAction::Disk(op) => disk.push(op),
            SecondaryAction::Drop { reason } => drops.push(reason),
            SecondaryAction::Note(_) => {}
        }
    }
    (sent, disk, drops)
}

fn attached(epoch: u64) -> Secondary {
    let mut s = secondary(epoch);
    s.on_message(0, &encode(&hello(epoch))).expect("hello");
    let (sent, _, _) = split(s.take_actions());
    let suspect = Suspect::none();
    assert_eq!(sent, vec![Message::HelloAck { epoch, suspect }]);
    s
}

fn refusal(sent: &[Message]) -> (RefuseCode, String) {
    match sent {
        [Message::Refuse { code, text }] => (*code, text.clone()),
        other => panic!("expected one refusal, got {other:?}"),
    }
}

/// A hello with one field changed.
fn bad_hello(field: &str) -> Message {
    let Message::Hello {
        mut version,
        mut cluster,
        mut volume,
        mut leg,
        from_node,
        epoch,
        mut size,
    } = hello(3)
    else {
        unreachable!()
    };
    match field {
        "cluster" => cluster = [9; 16],
        "volume 8" => volume = 8,
        "leg 2" => leg = 2,
        "size 4096" => size = 4096,
        _ => version = 99,
    }
    Message::Hello {
        version,
        cluster,
        volume,
        leg,
        from_node,
        epoch,
        size,
    }
}

#[test]
fn hello_with_a_wrong_field_is_refused_naming_the_field() {
    let cases = [
        ("cluster", RefuseCode::Cluster),
        ("volume 8", RefuseCode::Volume),
        ("leg 2", RefuseCode::Leg),
        ("size 4096", RefuseCode::Size),
        ("protocol version 99", RefuseCode::Version),
    ];
    for (field, code) in cases {
        let mut s = secondary(3);
        let error = s.on_message(0, &encode(&bad_hello(field))).unwrap_err();
        assert!(error.to_string().contains(field), "{field}: {error}");
        let (sent, disk, _) = split(s.take_actions());
        let (got, text) = refusal(&sent);
        assert_eq!(got, code);
        assert!(text.contains(field), "{text}");
        assert!(disk.is_empty());
        assert_eq!(s.attached(), None, "{field}");
    }
}

#[test]
fn a_secondary_at_epoch_3_refuses_hello_and_writes_from_epoch_2() {
    let mut s = secondary(3);
    let error = s.on_message(0, &encode(&hello(2))).unwrap_err();
    assert!(
        matches!(
            error,
            ReplError::Refused {
                code: RefuseCode::StaleEpoch,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("epoch 2"), "{error}");
    assert!(error.to_string().contains("epoch 3"), "{error}");
    assert_eq!(s.attached(), None);
    let (sent, _, _) = split(s.take_actions());
    assert_eq!(refusal(&sent).0, RefuseCode::StaleEpoch);

    // Attached in epoch 3, a write that says epoch 2 (an old primary's frame) is refused.
    let mut s = attached(3);
    let error = s.on_message(0, &write(2, 1, 0, 512, false)).unwrap_err();
    assert!(error.to_string().contains("from epoch 2"), "{error}");
    let (sent, disk, drops) = split(s.take_actions());
    assert_eq!(refusal(&sent).0, RefuseCode::StaleEpoch);
    assert!(disk.is_empty(), "nothing touched");
    assert_eq!(drops.len(), 1, "the link is dropped");
    assert_eq!(s.attached(), None);
}

#[test]
fn a_hello_from_a_future_epoch_is_refused_until_the_state_catches_up() {
    let mut s = secondary(3);
    let error = s.on_message(0, &encode(&hello(4))).unwrap_err();
    assert!(matches!(
        error,
        ReplError::Refused {
            code: RefuseCode::FutureEpoch,
            ..
        }
    ));
    s.take_actions();
    s.set_epoch(4);
    s.on_message(0, &encode(&hello(4))).expect("now current");
    assert_eq!(s.attached(), Some((4, 1)));
}

#[test]
fn a_new_epoch_drops_the_attached_link_and_its_writes() {
    let mut s = attached(3);
    s.on_message(0, &write(3, 1, 0, 512, false)).expect("write");
    let (_, disk, _) = split(s.take_actions());
    assert_eq!(disk.len(), 1);
    s.set_epoch(4);
    let (sent, _, drops) = split(s.take_actions());
    assert_eq!(refusal(&sent).0, RefuseCode::StaleEpoch);
    assert_eq!(drops.len(), 1);
    assert!(drops[0].contains("from 3 to 4"), "{}", drops[0]);
    assert_eq!(s.attached(), None);
    // The write already on the disk completes, but is not acknowledged.
    s.disk_done(disk[0].id, true).expect("done");
    let (sent, _, _) = split(s.take_actions());
    assert!(sent.is_empty(), "{sent:?}");
    // Further epoch-3 frames are refused.
    let error = s.on_message(0, &write(3, 2, 0, 512, false)).unwrap_err();
    assert!(matches!(
        error,
        ReplError::Refused {
            code: RefuseCode::NotAttached,
            ..
        }
    ));
    // Epochs never go back.
    s.set_epoch(2);
    assert_eq!(s.epoch(), 4);
}

#[test]
fn out_of_range_writes_are_refused_with_offset_len_and_size() {
    let mut s = attached(3);
    let error = s
        .on_message(0, &write(3, 1, SIZE - 100, 512, false))
        .unwrap_err();
    assert_eq!(
        error,
        ReplError::OutOfRange {
            offset: SIZE - 100,
            len: 512,
            size: SIZE
        }
    );
    let text = error.to_string();
    assert!(text.contains(&format!("offset {}", SIZE - 100)) && text.contains("len 512"));
    assert!(text.contains(&SIZE.to_string()), "{text}");
    let (sent, disk, _) = split(s.take_actions());
    assert_eq!(refusal(&sent).0, RefuseCode::OutOfRange);
    assert!(disk.is_empty());
    let mut s = attached(3);
    let trim = encode(&Message::Trim {
        epoch: 3,
        seq: 1,
        offset: u64::MAX - 1,
        len: 10,
        fua: false,
    });
    assert!(matches!(
        s.on_message(0, &trim),
        Err(ReplError::OutOfRange { .. })
    ));
}

#[test]
fn malformed_frames_and_writes_before_hello_touch_nothing() {
    let mut s = secondary(3);
    let error = s.on_message(0, b"not a frame at all").unwrap_err();
    assert!(matches!(error, ReplError::Wire(_)), "{error}");
    let error = s.on_message(0, &write(3, 1, 0, 512, false)).unwrap_err();
    assert!(error.to_string().contains("hello"), "{error}");
    let (_, disk, _) = split(s.take_actions());
    assert!(disk.is_empty());
    let mut frame = write(3, 1, 0, 512, false);
    frame[40] ^= 1;
    let mut s = attached(3);
    assert!(matches!(s.on_message(0, &frame), Err(ReplError::Wire(_))));
    let (_, disk, drops) = split(s.take_actions());
    assert!(disk.is_empty());
    assert_eq!(drops.len(), 1);
}

#[test]
fn acks_wait_for_the_disk_and_fua_waits_for_a_flush() {
    let mut s = attached(3);
    s.on_message(0, &write(3, 1, 0, 512, true)).expect("write");
    let (sent, disk, _) = split(s.take_actions());
    assert!(sent.is_empty());
    assert!(matches!(disk[0].kind, DiskKind::Write { offset: 0, .. }));
    s.disk_done(disk[0].id, true).expect("done");
    let (sent, flush, _) = split(s.take_actions());
    assert!(sent.is_empty(), "no ack before the flush");
    assert_eq!(flush[0].kind, DiskKind::Flush);
    s.disk_done(flush[0].id, true).expect("flushed");
    let (sent, _, _) = split(s.take_actions());
    assert_eq!(
        sent,
        vec![Message::Ack {
            epoch: 3,
            seq: 1,
            ok: true
        }]
    );
    // A failed write is acked as failed, without a flush.
    s.on_message(0, &write(3, 2, 0, 512, true)).expect("write");
    let (_, disk, _) = split(s.take_actions());
    s.disk_done(disk[0].id, false).expect("failed");
    let (sent, disk, _) = split(s.take_actions());
    assert!(disk.is_empty());
    assert_eq!(
        sent,
        vec![Message::Ack {
            epoch: 3,
            seq: 2,
            ok: false
        }]
    );
    assert!(matches!(
        s.disk_done(999, true),
        Err(ReplError::UnknownDiskOp { id: 999 })
    ));
}

#[test]
fn overlapping_writes_run_in_order_and_a_flush_waits_for_earlier_writes() {
    let mut s = attached(3);
    s.on_message(0, &write(3, 1, 0, 4096, false)).expect("w1");
    s.on_message(0, &write(3, 2, 8192, 512, false))
        .expect("w2 elsewhere");
    s.on_message(0, &write(3, 3, 1024, 512, false))
        .expect("w3 overlaps w1");
    s.on_message(0, &encode(&Message::Flush { epoch: 3, seq: 4 }))
        .expect("flush");
    let (_, disk, _) = split(s.take_actions());
    let offsets: Vec<_> = disk.iter().map(|op| op.kind.clone()).collect();
    assert_eq!(
        disk.len(),
        2,
        "w3 waits for w1, the flush for all: {offsets:?}"
    );
    s.disk_done(disk[0].id, true).expect("w1 done");
    let (sent, more, _) = split(s.take_actions());
    assert_eq!(sent.len(), 1);
    assert_eq!(more.len(), 1, "w3 now runs");
    assert!(matches!(more[0].kind, DiskKind::Write { offset: 1024, .. }));
    s.disk_done(more[0].id, true).expect("w3 done");
    let (_, none, _) = split(s.take_actions());
    assert!(none.is_empty(), "w2 still running: no flush yet");
    s.disk_done(disk[1].id, true).expect("w2 done");
    let (_, flush, _) = split(s.take_actions());
    assert_eq!(flush.len(), 1);
    assert_eq!(flush[0].kind, DiskKind::Flush);
    s.disk_done(flush[0].id, true).expect("flushed");
    let (sent, _, _) = split(s.take_actions());
    assert_eq!(
        sent,
        vec![Message::Ack {
            epoch: 3,
            seq: 4,
            ok: true
        }]
    );
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn a_reconnect_does_not_ack_operations_of_the_old_connection() {
    let mut s = attached(3);
    s.on_message(0, &write(3, 1, 0, 512, false)).expect("write");
    let (_, disk, _) = split(s.take_actions());
    s.link_lost();
    s.on_message(0, &encode(&hello(3))).expect("hello again");
    s.take_actions();
    s.disk_done(disk[0].id, true).expect("done");
    let (sent, _, _) = split(s.take_actions());
    assert!(sent.is_empty(), "old-session ack suppressed: {sent:?}");
}

#[test]
fn pings_are_answered_and_replies_from_a_primary_are_refused() {
    let mut s = attached(3);
    s.on_message(0, &encode(&Message::Ping { seq: 5 }))
        .expect("ping");
    let (sent, _, _) = split(s.take_actions());
    assert_eq!(sent, vec![Message::Pong { seq: 5 }]);
    let error = s
        .on_message(
            0,
            &encode(&Message::HelloAck {
                epoch: 3,
                suspect: Suspect::none(),
            }),
        )
        .unwrap_err();
    assert!(error.to_string().contains("hello-ack"), "{error}");
}

fn verify(epoch: u64, seq: u64, offset: u64, len: u64) -> Vec<u8> {
    encode(&Message::VerifyRequest {
        epoch,
        seq,
        offset,
        len,
    })
}

#[test]
fn a_verify_reads_after_earlier_writes_and_answers_with_digests() {
    let mut s = attached(3);
    s.on_message(0, &write(3, 1, 4096, 512, false))
        .expect("write");
    s.on_message(0, &verify(3, 2, 0, 3 * VERIFY_BLOCK))
        .expect("verify");
    s.on_message(0, &write(3, 3, 8192, 512, false))
        .expect("later write");
    s.on_message(0, &encode(&Message::Flush { epoch: 3, seq: 4 }))
        .expect("flush");
    let (_, disk, _) = split(s.take_actions());
    assert_eq!(
        disk.len(),
        1,
        "the read waits for the write, the later write for the read"
    );
    s.disk_done(disk[0].id, true).expect("write done");
    let (sent, disk, _) = split(s.take_actions());
    assert_eq!(sent.len(), 1, "ack of the write");
    let kinds: Vec<&DiskKind> = disk.iter().map(|op| &op.kind).collect();
    assert_eq!(
        kinds,
        vec![&DiskKind::Read {
            offset: 0,
            len: 3 * VERIFY_BLOCK
        }],
        "the flush waits for the later write, not for the read"
    );
    let data: Vec<u8> = (0..3 * VERIFY_BLOCK).map(|i| (i % 251) as u8).collect();
    s.disk_read_done(disk[0].id, data.clone()).expect("read");
    let (sent, disk, _) = split(s.take_actions());
    assert_eq!(
        sent,
        vec![Message::VerifyReply {
            epoch: 3,
            seq: 2,
            offset: 0,
            len: 3 * VERIFY_BLOCK,
            digests: verify_digests(&data),
        }]
    );
    assert!(matches!(disk[0].kind, DiskKind::Write { offset: 8192, .. }));
}

#[test]
fn the_last_verify_block_may_be_short() {
    let mut s = attached(3);
    let last = SIZE - VERIFY_BLOCK;
    s.on_message(0, &verify(3, 1, last - VERIFY_BLOCK, 2 * VERIFY_BLOCK))
        .expect("ends at the end");
    let (_, disk, _) = split(s.take_actions());
    s.disk_read_done(disk[0].id, vec![0; 2 * VERIFY_BLOCK as usize])
        .expect("read");
    let (sent, _, _) = split(s.take_actions());
    assert!(matches!(&sent[..], [Message::VerifyReply { digests, .. }] if digests.len() == 2));
}

#[test]
fn bad_verify_requests_are_refused_naming_what_is_wrong() {
    let cases: [(Vec<u8>, RefuseCode, &str); 5] = [
        (
            verify(2, 1, 0, 4096),
            RefuseCode::StaleEpoch,
            "from epoch 2",
        ),
        (
            verify(3, 1, SIZE, 4096),
            RefuseCode::OutOfRange,
            "outside the volume",
        ),
        (
            verify(3, 1, 512, 4096),
            RefuseCode::Protocol,
            "not on a 4096-byte block",
        ),
        (
            verify(3, 1, 0, 4096 + 512),
            RefuseCode::Protocol,
            "ends inside a 4096-byte block",
        ),
        (
            verify(3, 1, 0, MAX_VERIFY_LEN + 4096),
            RefuseCode::Protocol,
            "exceeds the 33554432-byte limit",
        ),
    ];
    for (frame, code, text) in cases {
        let mut s = attached(3);
        let error = s.on_message(0, &frame).unwrap_err();
        let (sent, disk, drops) = split(s.take_actions());
        let (got, reason) = refusal(&sent);
        assert_eq!(got, code, "{reason}");
        assert!(reason.contains(text), "{text}: {reason} / {error}");
        assert!(disk.is_empty(), "{text}: nothing read");
        assert_eq!(drops.len(), 1, "{text}: the link is dropped");
    }
    let mut s = secondary(3);
    let error = s.on_message(0, &verify(3, 1, 0, 4096)).unwrap_err();
    assert!(
        error.to_string().contains("no primary is attached"),
        "{error}"
    );
}

#[test]
fn read_completions_are_checked() {
    let mut s = attached(3);
    s.on_message(0, &verify(3, 1, 0, 4096)).expect("verify");
    s.on_message(0, &write(3, 2, 8192, 512, false))
        .expect("write");
    let (_, disk, _) = split(s.take_actions());
    let (read, write) = (disk[0].id, disk[1].id);
    let error = s.disk_read_done(write, vec![0; 512]).unwrap_err();
    assert!(error.to_string().contains("not a read"), "{error}");
    let error = s.disk_read_done(999, vec![]).unwrap_err();
    assert_eq!(error, ReplError::UnknownDiskOp { id: 999 });
    // A read reported without its data counts as failed: the primary hears a failed ack.
    let error = s.disk_done(read, true).unwrap_err();
    assert!(error.to_string().contains("disk_read_done"), "{error}");
    let (sent, _, _) = split(s.take_actions());
    let failed = |seq| Message::Ack {
        epoch: 3,
        seq,
        ok: false,
    };
    assert_eq!(sent, vec![failed(1)]);
    // A short read, too.
    s.on_message(0, &verify(3, 3, 0, 4096)).expect("verify");
    let (_, disk, _) = split(s.take_actions());
    let error = s.disk_read_done(disk[0].id, vec![0; 100]).unwrap_err();
    assert!(error.to_string().contains("returned 100"), "{error}");
    let (sent, _, _) = split(s.take_actions());
    assert_eq!(sent, vec![failed(3)]);
    let error = s
        .on_message(
            0,
            &encode(&Message::VerifyReply {
                epoch: 3,
                seq: 1,
                offset: 0,
                len: 0,
                digests: vec![],
            }),
        )
        .unwrap_err();
    assert!(error.to_string().contains("verify-reply"), "{error}");
}

#[test]
fn suspect_ranges_are_merged_and_sent_in_every_hello_ack() {
    let ranges = vec![
        (8192, 4096),
        (0, 4096),
        (4096, 4096),
        (65536, 4096),
        (66000, 10),
    ];
    let mut s = secondary(3).with_suspect_ranges(ranges);
    let merged = Suspect::Ranges(vec![(0, 12288), (65536, 4096)]);
    assert_eq!(s.suspect(), &merged);
    for _ in 0..2 {
        s.on_message(0, &encode(&hello(3))).expect("hello");
        let (sent, _, _) = split(s.take_actions());
        let ack = Message::HelloAck {
            epoch: 3,
            suspect: merged.clone(),
        };
        assert_eq!(sent, vec![ack]);
        s.link_lost();
    }
    let outside = secondary(3).with_suspect_ranges(vec![(SIZE - 10, 20)]);
    assert_eq!(outside.suspect(), &Suspect::Everything);
    let many: Vec<(u64, u64)> = (0..MAX_SUSPECT_RANGES as u64 + 1)
        .map(|i| (i * 2 * 64, 64))
        .collect();
    let many = secondary(3).with_suspect_ranges(many);
    assert_eq!(many.suspect(), &Suspect::Everything);
    let fits: Vec<(u64, u64)> = (0..MAX_SUSPECT_RANGES as u64)
        .map(|i| (i * 2 * 64, 64))
        .collect();
    let fits = secondary(3).with_suspect_ranges(fits);
    assert!(matches!(fits.suspect(), Suspect::Ranges(r) if r.len() == MAX_SUSPECT_RANGES));
}

// ---- unconfirmed operations (what a takeover must reconcile) -------------------------------

fn confirm(epoch: u64, below: u64) -> Vec<u8> {
    encode(&Message::Confirm { epoch, below })
}

#[test]
fn applied_writes_stay_unconfirmed_until_a_confirm_covers_them() {
    let mut s = attached(4);
    s.on_message(1, &write(4, 10, 0, 4096, false)).expect("w10");
    s.on_message(1, &write(4, 11, 8192, 4096, false))
        .expect("w11");
    s.on_message(1, &write(4, 12, 65536, 512, false))
        .expect("w12");
    assert_eq!(
        s.unconfirmed(),
        Suspect::Ranges(vec![(0, 4096), (8192, 4096), (65536, 512)])
    );
    s.on_message(2, &confirm(4, 12)).expect("confirm");
    assert_eq!(s.unconfirmed(), Suspect::Ranges(vec![(65536, 512)]));
    s.on_message(3, &confirm(4, 13)).expect("confirm");
    assert!(s.unconfirmed().is_none());
}

#[test]
fn a_confirm_of_another_epoch_confirms_nothing() {
    let mut s = attached(4);
    s.on_message(1, &write(4, 10, 0, 4096, false)).expect("w10");
    s.on_message(2, &confirm(3, 100))
        .expect("old epoch ignored, not refused");
    assert_eq!(s.unconfirmed(), Suspect::Ranges(vec![(0, 4096)]));
}

#[test]
fn its_own_suspect_report_stays_unconfirmed_until_a_primary_confirms() {
    let mut s = secondary(4).with_suspect_ranges(vec![(4096, 4096)]);
    s.on_message(0, &encode(&hello(4))).expect("hello");
    assert_eq!(s.unconfirmed(), Suspect::Ranges(vec![(4096, 4096)]));
    s.on_message(1, &confirm(4, 1)).expect("confirm");
    assert!(s.unconfirmed().is_none(), "the primary heard the report");
}

#[test]
fn too_many_unconfirmed_operations_make_the_whole_leg_suspect() {
    let mut s = attached(4);
    for seq in 0..=crate::replication::MAX_UNCONFIRMED as u64 {
        s.on_message(1, &write(4, seq + 1, 0, 512, false))
            .expect("write");
        // Keep the disk queue short: complete what was submitted.
        for action in s.take_actions() {
            if let SecondaryAction::Disk(op) = action {
                s.disk_done(op.id, true).expect("done");
            }
        }
    }
    assert_eq!(s.unconfirmed(), Suspect::Everything);
}

#[test]
fn a_new_primary_on_the_same_session_hears_what_the_old_one_left_unconfirmed() {
    let mut s = attached(4);
    s.on_message(1, &write(4, 10, 0, 4096, false)).expect("w10");
    s.on_message(2, &confirm(4, 5)).expect("confirm");
    s.set_epoch(5);
    s.take_actions();
    s.on_message(3, &encode(&hello(5)))
        .expect("hello of the new primary");
    let (sent, _, _) = split(s.take_actions());
    let reported = sent.iter().find_map(|m| match m {
        Message::HelloAck { suspect, .. } => Some(suspect.clone()),
        _ => None,
    });
    assert_eq!(reported, Some(Suspect::Ranges(vec![(0, 4096)])));
}

#[test]
fn a_leg_that_lost_its_cache_is_whole_suspect_to_a_primary_of_a_later_epoch_only() {
    let hello_ack = |s: &mut Secondary| {
        let (sent, _, _) = split(s.take_actions());
        sent.iter().find_map(|m| match m {
            Message::HelloAck { suspect, .. } => Some(suspect.clone()),
            _ => None,
        })
    };
    // The primary of the epoch it served tracks what it acked unflushed: nothing to add.
    let mut same = secondary(4).with_cache_lost_in(4);
    same.on_message(0, &encode(&hello(4))).expect("hello");
    assert_eq!(hello_ack(&mut same), Some(Suspect::none()));
    // A later primary cannot know what the cache lost.
    let mut later = secondary(5).with_cache_lost_in(4);
    later.on_message(0, &encode(&hello(5))).expect("hello");
    assert_eq!(hello_ack(&mut later), Some(Suspect::Everything));
    assert!(!later.report_heard());
    later.on_message(1, &confirm(5, 1)).expect("confirm");
    assert!(later.report_heard());
}
