use proptest::prelude::*;

use crate::ids::ClusterId;
use crate::legmeta::*;

const GIB: u64 = 1 << 30;

fn expectation() -> Expectation {
    Expectation {
        cluster: ClusterId([7; 16]),
        volume: 42,
        leg: 1,
    }
}

fn sample() -> Superblock {
    let layout = MetaLayout::new(LayoutParams::new(Placement::Internal, 10 * GIB)).unwrap();
    let e = expectation();
    let mut sb = Superblock::new(e.cluster, e.volume, e.leg, layout);
    sb.last_epoch = 9;
    sb.state = LegState::UpToDate;
    sb.primary_open = true;
    *sb.peer_mut(0).unwrap() = PeerSlot {
        in_use: true,
        node: 3,
        peer_leg: 0,
        bitmap_valid: true,
    };
    sb
}

/// Re-computes the checksum after a deliberate edit, so that the field check is what fires.
fn reseal(block: &mut [u8; META_BLOCK]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..12]), &block[16..]);
    block[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip() {
    let sb = sample();
    let decoded = Superblock::decode(&sb.encode(), expectation()).unwrap();
    assert_eq!(decoded, sb);
    assert_eq!(decoded.peers().len(), 3);
    assert_eq!(decoded.layout().data_size(), sb.layout().data_size());
}

#[test]
fn bad_magic_is_not_tandem_metadata() {
    let mut block = sample().encode();
    block[..8].copy_from_slice(b"EXT4\0\0\0\0");
    let err = Superblock::decode(&block, expectation()).unwrap_err();
    assert!(matches!(err, MetaError::NotTandemMetadata { found } if &found == b"EXT4\0\0\0\0"));
    assert!(err.to_string().starts_with("not tandem metadata"));
    let zeros = [0u8; META_BLOCK];
    assert!(matches!(
        Superblock::decode(&zeros, expectation()),
        Err(MetaError::NotTandemMetadata { found }) if found == [0; 8]
    ));
}

#[test]
fn unknown_version_is_refused() {
    let mut block = sample().encode();
    block[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut block);
    assert_eq!(
        Superblock::decode(&block, expectation()),
        Err(MetaError::UnsupportedVersion {
            what: "superblock",
            found: 2,
            supported: 1
        })
    );
}

#[test]
fn checksum_mismatch_is_refused() {
    let mut block = sample().encode();
    block[100] ^= 0x40;
    let err = Superblock::decode(&block, expectation()).unwrap_err();
    assert!(
        matches!(err, MetaError::SuperblockChecksum { stored, computed } if stored != computed)
    );
}

#[test]
fn foreign_cluster_volume_and_leg_are_distinct_errors_naming_both_values() {
    let block = sample().encode();
    let mut e = expectation();
    e.cluster = ClusterId([8; 16]);
    let err = Superblock::decode(&block, e).unwrap_err();
    assert_eq!(
        err,
        MetaError::ForeignCluster {
            expected: e.cluster,
            found: ClusterId([7; 16])
        }
    );
    assert!(
        err.to_string().contains(&"07".repeat(16)) && err.to_string().contains(&"08".repeat(16))
    );

    let mut e = expectation();
    e.volume = 43;
    let err = Superblock::decode(&block, e).unwrap_err();
    assert_eq!(
        err,
        MetaError::ForeignVolume {
            expected: 43,
            found: 42
        }
    );
    assert_eq!(
        err.to_string(),
        "superblock belongs to volume 42, expected volume 43"
    );

    let mut e = expectation();
    e.leg = 0;
    let err = Superblock::decode(&block, e).unwrap_err();
    assert_eq!(
        err,
        MetaError::ForeignLeg {
            expected: 0,
            found: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "superblock belongs to leg 1, expected leg 0"
    );
}

#[test]
fn wrong_length_is_refused() {
    let block = sample().encode();
    assert_eq!(
        Superblock::decode(&block[..512], expectation()),
        Err(MetaError::WrongLength {
            what: "superblock",
            expected: 4096,
            found: 512
        })
    );
}

#[test]
fn fields_no_tandem_writes_are_refused_even_with_a_valid_checksum() {
    let cases: [(usize, u8, &str); 4] = [
        (52, 0, "placement"),
        (53, 9, "leg state"),
        (54, 0x80, "leg flags"),
        (112 + 12, 0x10, "peer slot flags"),
    ];
    for (offset, value, field) in cases {
        let mut block = sample().encode();
        block[offset] = value;
        reseal(&mut block);
        let err = Superblock::decode(&block, expectation()).unwrap_err();
        assert!(
            matches!(err, MetaError::InvalidField { field: f, offset: o, .. } if f == field && o == offset as u64),
            "{field}: {err}"
        );
    }
}

#[test]
fn geometry_that_does_not_add_up_is_refused() {
    let mut block = sample().encode();
    block[76..80].copy_from_slice(&12288u32.to_le_bytes()); // grain
    reseal(&mut block);
    let err = Superblock::decode(&block, expectation()).unwrap_err();
    assert_eq!(
        err,
        MetaError::SuperblockGeometry(Box::new(MetaError::NotPowerOfTwo {
            field: "bitmap grain",
            value: 12288
        }))
    );

    let mut block = sample().encode();
    block[64..72].copy_from_slice(&(5 * GIB).to_le_bytes()); // data size
    reseal(&mut block);
    let err = Superblock::decode(&block, expectation()).unwrap_err();
    assert!(matches!(
        err,
        MetaError::InvalidField {
            field: "data size",
            offset: 64,
            ..
        }
    ));

    let mut block = sample().encode();
    block[88..92].copy_from_slice(&3u32.to_le_bytes()); // ring blocks
    reseal(&mut block);
    let err = Superblock::decode(&block, expectation()).unwrap_err();
    assert!(matches!(
        err,
        MetaError::InvalidField {
            field: "activity-log ring blocks",
            ..
        }
    ));
}

#[test]
fn generations_alternate_between_the_copies() {
    let sb = sample();
    assert_eq!((sb.generation(), sb.copy()), (0, SuperblockCopy::A));
    let next = sb.bumped();
    assert_eq!((next.generation(), next.copy()), (1, SuperblockCopy::B));
    assert_eq!(next.bumped().copy(), SuperblockCopy::A);
}

fn pair(a_generation: u64) -> (Superblock, Superblock) {
    let mut a = sample();
    while a.generation() < a_generation {
        a = a.bumped();
    }
    (a.clone(), a.bumped())
}

#[test]
fn pick_newest_takes_the_higher_generation() {
    let (a, b) = pair(4); // A = 4, B = 5
    let picked = pick_newest(&a.encode(), &b.encode(), expectation()).unwrap();
    assert_eq!(
        (
            picked.copy,
            picked.superblock.generation(),
            picked.other_damage
        ),
        (SuperblockCopy::B, 5, None)
    );
    let older_b = sample().bumped().bumped().bumped(); // B = 3
    let picked = pick_newest(&a.encode(), &older_b.encode(), expectation()).unwrap();
    assert_eq!(
        (picked.copy, picked.superblock.generation()),
        (SuperblockCopy::A, 4)
    );
}

#[test]
fn torn_a_falls_back_to_good_b_and_says_so() {
    let old_a = sample().bumped().bumped(); // generation 2, in A
    let b = old_a.bumped(); // generation 3, in B
    let new_a = b.bumped(); // generation 4 is being written to A when the power fails
    let mut torn = new_a.encode();
    torn[2048..].copy_from_slice(&old_a.encode()[2048..]);
    torn[100] ^= 1; // the new half and the old half differ somewhere
    let picked = pick_newest(&torn, &b.encode(), expectation()).unwrap();
    assert_eq!(picked.copy, SuperblockCopy::B);
    assert_eq!(picked.superblock, b);
    assert!(matches!(
        picked.other_damage,
        Some(MetaError::SuperblockChecksum { .. })
    ));
}

#[test]
fn torn_b_falls_back_to_good_a_and_unwritten_b_is_reported() {
    let a = sample();
    let torn = [0u8; META_BLOCK];
    let picked = pick_newest(&a.encode(), &torn, expectation()).unwrap();
    assert_eq!((picked.copy, picked.superblock), (SuperblockCopy::A, a));
    assert!(matches!(
        picked.other_damage,
        Some(MetaError::NotTandemMetadata { .. })
    ));
}

#[test]
fn both_copies_bad_is_an_error_naming_both() {
    let mut a = sample().encode();
    a[200] ^= 1;
    let b = [0u8; META_BLOCK];
    let err = pick_newest(&a, &b, expectation()).unwrap_err();
    assert!(matches!(
        &err,
        MetaError::NoValidSuperblock { a, b }
            if matches!(**a, MetaError::SuperblockChecksum { .. })
            && matches!(**b, MetaError::NotTandemMetadata { .. })
    ));
    assert!(err
        .to_string()
        .contains("copy A: superblock checksum mismatch"));
}

#[test]
fn a_foreign_copy_is_never_skipped_over() {
    let (a, b) = pair(2);
    let mut foreign = a.clone();
    foreign.cluster = ClusterId([9; 16]);
    let err = pick_newest(&foreign.encode(), &b.encode(), expectation()).unwrap_err();
    assert!(matches!(err, MetaError::ForeignCluster { .. }));
    let mut newer = b.clone();
    newer.volume = 1;
    let err = pick_newest(&a.encode(), &newer.encode(), expectation()).unwrap_err();
    assert!(matches!(
        err,
        MetaError::ForeignVolume {
            expected: 42,
            found: 1
        }
    ));
}

#[test]
fn a_generation_in_the_wrong_copy_is_refused() {
    let (a, b) = pair(2);
    let err = pick_newest(&b.encode(), &a.encode(), expectation()).unwrap_err();
    assert_eq!(
        err,
        MetaError::SuperblockMisplaced {
            copy: 'A',
            generation: 3,
            expected: 'B'
        }
    );
}

#[test]
fn device_size_change_is_refused() {
    let sb = sample();
    assert_eq!(sb.check_device_size(10 * GIB), Ok(()));
    assert_eq!(
        sb.check_device_size(11 * GIB),
        Err(MetaError::DeviceSizeChanged {
            recorded: 10 * GIB,
            actual: 11 * GIB
        })
    );
}

fn arb_state() -> impl Strategy<Value = LegState> {
    prop_oneof![
        Just(LegState::UpToDate),
        Just(LegState::Outdated),
        Just(LegState::Inconsistent)
    ]
}

fn arb_superblock() -> impl Strategy<Value = Superblock> {
    let layout =
        super::layout::arb_params().prop_filter_map("valid layout", |p| MetaLayout::new(p).ok());
    let peers = prop::collection::vec(
        (any::<bool>(), any::<u64>(), any::<u32>(), any::<bool>()),
        32,
    );
    (
        layout,
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        arb_state(),
        any::<bool>(),
        peers,
        0u64..6,
    )
        .prop_map(
            |(layout, cluster, volume, leg, epoch, state, open, peers, bumps)| {
                let mut sb = Superblock::new(ClusterId(cluster), volume, leg, layout);
                sb.last_epoch = epoch;
                sb.state = state;
                sb.primary_open = open;
                for (slot, (in_use, node, peer_leg, bitmap_valid)) in peers.into_iter().enumerate()
                {
                    if let Some(peer) = sb.peer_mut(slot as u16) {
                        *peer = PeerSlot {
                            in_use,
                            node,
                            peer_leg,
                            bitmap_valid,
                        };
                    }
                }
                (0..bumps).fold(sb, |sb, _| sb.bumped())
            },
        )
}

fn expect_of(sb: &Superblock) -> Expectation {
    Expectation {
        cluster: sb.cluster,
        volume: sb.volume,
        leg: sb.leg,
    }
}

proptest! {
    #[test]
    fn superblock_round_trips(sb in arb_superblock()) {
        let block = sb.encode();
        prop_assert_eq!(Superblock::decode(&block, expect_of(&sb)), Ok(sb.clone()));
        let next = sb.bumped();
        let (a, b) = match sb.copy() {
            SuperblockCopy::A => (block, next.encode()),
            SuperblockCopy::B => (next.encode(), block),
        };
        let picked = pick_newest(&a, &b, expect_of(&sb)).unwrap();
        prop_assert_eq!(picked.superblock, next);
    }

    #[test]
    fn any_single_byte_corruption_of_a_superblock_is_detected(
        sb in arb_superblock(),
        at in 0usize..META_BLOCK,
        flip in 1u8..=255,
    ) {
        let mut block = sb.encode();
        block[at] ^= flip;
        prop_assert!(Superblock::decode(&block, expect_of(&sb)).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        short in prop::collection::vec(any::<u8>(), 0..64),
        seed in any::<u64>(),
        plant in any::<bool>(),
    ) {
        prop_assert!(Superblock::decode(&short, expectation()).is_err());
        let mut block: [u8; META_BLOCK] = super::noise(seed, META_BLOCK).try_into().unwrap();
        if plant {
            // Valid magic, version, identity and checksum around random fields.
            block[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
            block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            block[24..40].copy_from_slice(&[7; 16]);
            block[40..48].copy_from_slice(&42u64.to_le_bytes());
            block[48..52].copy_from_slice(&1u32.to_le_bytes());
            reseal(&mut block);
        }
        let _ = Superblock::decode(&block, expectation());
        let _ = pick_newest(&block, &block, expectation());
    }
}
