use proptest::prelude::*;

use crate::legmeta::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

fn layout(params: LayoutParams) -> MetaLayout {
    MetaLayout::new(params).expect("valid layout")
}

fn error(params: LayoutParams) -> MetaError {
    MetaLayout::new(params).expect_err("layout should be refused")
}

#[test]
fn default_internal_layout_of_a_1_tib_device() {
    let l = layout(LayoutParams::new(Placement::Internal, TIB));
    // 2^28 grains / 32640 bits per page = 8224.1 -> 8225 pages per peer.
    assert_eq!(l.bitmap_pages_reserved(), 8225);
    assert_eq!(l.al_ring_blocks(), 8);
    let metadata_len = (3 * 8225 + 8 + 2) * 4096;
    assert_eq!(
        l.metadata(),
        Region {
            offset: TIB - metadata_len,
            len: metadata_len
        }
    );
    assert_eq!(
        l.data(),
        Region {
            offset: 0,
            len: TIB - metadata_len
        }
    );
    assert_eq!(
        l.superblock(SuperblockCopy::A),
        Region {
            offset: TIB - 4096,
            len: 4096
        }
    );
    assert_eq!(
        l.superblock(SuperblockCopy::B),
        Region {
            offset: TIB - 8192,
            len: 4096
        }
    );
    let meta_start = TIB - metadata_len;
    assert_eq!(
        l.bitmap(0),
        Some(Region {
            offset: meta_start,
            len: 8225 * 4096
        })
    );
    assert_eq!(
        l.bitmap(2).map(|r| r.offset),
        Some(meta_start + 2 * 8225 * 4096)
    );
    assert_eq!(l.bitmap(3), None);
    assert_eq!(
        l.al_ring(),
        Region {
            offset: meta_start + 3 * 8225 * 4096,
            len: 8 * 4096
        }
    );
    assert_eq!(l.al_ring().end(), TIB - 8192);
    // Under 0.01 % of the device.
    assert!(metadata_len * 10_000 < TIB);
    // The data area proper (1 TiB minus the metadata) needs one page less than reserved.
    assert_eq!(l.new_bitmap().page_count(), 8224);
    assert_eq!(
        l.al_config().extent_count(),
        (TIB - metadata_len).div_ceil(4 * MIB)
    );
}

#[test]
fn sidecar_layout_puts_superblocks_first_and_keeps_the_whole_device_as_data() {
    let l = layout(LayoutParams::new(Placement::Sidecar, 10 * GIB));
    let pages = (10 * GIB / 4096).div_ceil(32640);
    assert_eq!(l.bitmap_pages_reserved() as u64, pages);
    assert_eq!(
        l.data(),
        Region {
            offset: 0,
            len: 10 * GIB
        }
    );
    assert_eq!(l.superblock(SuperblockCopy::A).offset, 0);
    assert_eq!(l.superblock(SuperblockCopy::B).offset, 4096);
    assert_eq!(
        l.al_ring(),
        Region {
            offset: 8192,
            len: 8 * 4096
        }
    );
    assert_eq!(l.bitmap(0).map(|r| r.offset), Some(8192 + 8 * 4096));
    assert_eq!(
        l.metadata(),
        Region {
            offset: 0,
            len: (2 + 8 + 3 * pages) * 4096
        }
    );
    assert_eq!(l.bitmap(2).map(|r| r.end()), Some(l.metadata().end()));
}

#[test]
fn big_block_size_leaves_an_aligned_data_area_before_the_metadata() {
    let mut params = LayoutParams::new(Placement::Internal, GIB);
    params.block_size = 64 * 1024;
    let l = layout(params);
    assert_eq!(l.data_size() % (64 * 1024), 0);
    assert!(l.data().end() <= l.metadata().offset);
    assert!(l.metadata().offset - l.data().end() < 64 * 1024);
    assert_eq!(l.metadata().end(), GIB);
}

#[test]
fn many_al_slots_need_a_longer_ring() {
    assert_eq!(min_al_ring_blocks(1), 2);
    assert_eq!(min_al_ring_blocks(824), 2);
    assert_eq!(min_al_ring_blocks(825), 3);
    assert_eq!(min_al_ring_blocks(DEFAULT_AL_SLOTS), 3);
    assert_eq!(al_ring_blocks(DEFAULT_AL_SLOTS), MIN_AL_RING_BLOCKS);
    assert_eq!(al_ring_blocks(MAX_AL_SLOTS), 81);
    let mut params = LayoutParams::new(Placement::Sidecar, TIB);
    params.al_slots = MAX_AL_SLOTS;
    assert_eq!(layout(params).al_ring().len, 81 * 4096);
}

#[test]
fn grain_not_a_power_of_two_is_refused() {
    let mut params = LayoutParams::new(Placement::Internal, GIB);
    params.grain = 3 * 4096;
    assert_eq!(
        error(params),
        MetaError::NotPowerOfTwo {
            field: "bitmap grain",
            value: 12288
        }
    );
    assert!(error(params).to_string().contains("bitmap grain = 12288"));
}

#[test]
fn grain_below_4_kib_is_refused() {
    let mut params = LayoutParams::new(Placement::Internal, GIB);
    params.grain = 512;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "bitmap grain",
            ..
        }
    ));
}

#[test]
fn extent_smaller_than_grain_is_refused() {
    let mut params = LayoutParams::new(Placement::Internal, GIB);
    params.grain = 64 * 1024;
    params.extent_size = 16 * 1024;
    assert_eq!(
        error(params),
        MetaError::ExtentSmallerThanGrain {
            extent: 16384,
            grain: 65536
        }
    );
}

#[test]
fn extent_not_a_power_of_two_is_refused() {
    let mut params = LayoutParams::new(Placement::Internal, GIB);
    params.extent_size = 3 * 1024 * 1024;
    assert!(matches!(
        error(params),
        MetaError::NotPowerOfTwo { value: 3145728, .. }
    ));
}

#[test]
fn block_size_must_be_a_power_of_two_in_range() {
    let mut params = LayoutParams::new(Placement::Sidecar, GIB);
    params.block_size = 512;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "block size",
            ..
        }
    ));
    params.block_size = 6000;
    assert!(matches!(
        error(params),
        MetaError::NotPowerOfTwo {
            field: "block size",
            ..
        }
    ));
    params.block_size = 2 << 20;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "block size",
            ..
        }
    ));
}

#[test]
fn device_size_not_a_multiple_of_the_block_size_is_refused() {
    let params = LayoutParams::new(Placement::Sidecar, GIB + 512);
    let err = error(params);
    assert_eq!(
        err,
        MetaError::NotMultiple {
            field: "device size",
            value: GIB + 512,
            unit_name: "block size",
            unit: 4096,
        }
    );
    assert!(err
        .to_string()
        .contains("not a multiple of the block size (4096)"));
}

#[test]
fn device_too_small_for_data_and_metadata_is_refused() {
    // 3 peers of 1 page + 8 ring blocks + 2 superblocks = 13 blocks of metadata.
    let params = LayoutParams::new(Placement::Internal, 13 * 4096);
    assert_eq!(
        error(params),
        MetaError::DeviceTooSmall {
            device_size: 13 * 4096,
            metadata_len: 13 * 4096,
            block_size: 4096
        }
    );
    let params = LayoutParams::new(Placement::Internal, 4096);
    assert!(matches!(error(params), MetaError::DeviceTooSmall { .. }));
    let fits = layout(LayoutParams::new(Placement::Internal, 14 * 4096));
    assert_eq!(fits.data_size(), 4096);
    let params = LayoutParams::new(Placement::Sidecar, 0);
    assert!(matches!(
        error(params),
        MetaError::DeviceTooSmall { device_size: 0, .. }
    ));
}

#[test]
fn slot_and_peer_counts_are_bounded() {
    let mut params = LayoutParams::new(Placement::Sidecar, GIB);
    params.al_slots = 0;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "activity-log slots",
            ..
        }
    ));
    params.al_slots = MAX_AL_SLOTS + 1;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "activity-log slots",
            ..
        }
    ));
    params.al_slots = 64;
    params.max_peers = 0;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "max peers",
            ..
        }
    ));
    params.max_peers = MAX_PEER_SLOTS + 1;
    assert!(matches!(
        error(params),
        MetaError::OutOfRange {
            field: "max peers",
            value: 33,
            ..
        }
    ));
}

#[test]
fn too_many_extents_for_u32_extent_numbers_is_refused() {
    let mut params = LayoutParams::new(Placement::Sidecar, 64 * TIB);
    params.extent_size = 4096;
    let err = error(params);
    assert_eq!(
        err,
        MetaError::TooManyExtents {
            data_size: 64 * TIB,
            extent_size: 4096,
            extents: 64 * TIB / 4096,
            max: MAX_EXTENTS,
        }
    );
}

#[test]
fn absurd_device_sizes_fail_cleanly() {
    let mut params = LayoutParams::new(Placement::Internal, u64::MAX - 4095);
    assert!(MetaLayout::new(params).is_err());
    params.extent_size = 1 << 31;
    params.grain = 1 << 31;
    params.max_peers = MAX_PEER_SLOTS;
    // 2^33 extents do not fit u32 extent numbers.
    assert!(matches!(error(params), MetaError::TooManyExtents { .. }));
    // Fits: huge grains keep the bitmap small.
    params.device_size = 1 << 62;
    let l = layout(params);
    assert!(l.data().end() <= l.metadata().offset);
}

#[test]
fn superblock_probe_finds_both_copies_from_the_size_alone() {
    let l = layout(LayoutParams::new(Placement::Internal, 100 * GIB));
    let probe = superblock_probe(Placement::Internal, 100 * GIB).unwrap();
    assert_eq!(
        probe,
        [
            l.superblock(SuperblockCopy::A),
            l.superblock(SuperblockCopy::B)
        ]
    );
    let l = layout(LayoutParams::new(Placement::Sidecar, 100 * GIB));
    let probe = superblock_probe(Placement::Sidecar, 0).unwrap();
    assert_eq!(
        probe,
        [
            l.superblock(SuperblockCopy::A),
            l.superblock(SuperblockCopy::B)
        ]
    );
    assert!(matches!(
        superblock_probe(Placement::Internal, GIB + 1),
        Err(MetaError::NotMultiple { .. })
    ));
    assert!(matches!(
        superblock_probe(Placement::Internal, 4096),
        Err(MetaError::DeviceTooSmall { .. })
    ));
}

#[test]
fn decode_bitmap_refuses_an_unknown_peer_slot() {
    let l = layout(LayoutParams::new(Placement::Sidecar, GIB));
    assert!(matches!(
        l.decode_bitmap(3, &[]),
        Err(MetaError::OutOfRange {
            field: "peer slot",
            value: 3,
            ..
        })
    ));
}

pub(super) fn arb_params() -> impl Strategy<Value = LayoutParams> {
    (
        prop_oneof![Just(Placement::Internal), Just(Placement::Sidecar)],
        0u32..=4,
        0u32..=5,
        0u32..=12,
        1u32..=3000,
        1u16..=MAX_PEER_SLOTS,
        1u64..=1 << 22,
    )
        .prop_map(
            |(placement, block_shift, grain_shift, extent_shift, al_slots, max_peers, blocks)| {
                let block_size = 4096u32 << block_shift;
                let grain = 4096u32 << grain_shift;
                LayoutParams {
                    placement,
                    device_size: blocks * u64::from(block_size),
                    block_size,
                    extent_size: grain << extent_shift,
                    grain,
                    al_slots,
                    max_peers,
                }
            },
        )
}

fn overlaps(a: Region, b: Region) -> bool {
    a.offset < b.end() && b.offset < a.end()
}

proptest! {
    #[test]
    fn every_layout_is_aligned_disjoint_and_inside_its_container(params in arb_params()) {
        let Ok(l) = MetaLayout::new(params) else { return Ok(()); };
        let mut regions = vec![
            l.superblock(SuperblockCopy::A),
            l.superblock(SuperblockCopy::B),
            l.al_ring(),
        ];
        regions.extend((0..params.max_peers).filter_map(|slot| l.bitmap(slot)));
        prop_assert!(l.bitmap(params.max_peers).is_none());
        for (i, a) in regions.iter().enumerate() {
            prop_assert_eq!(a.offset % 4096, 0);
            prop_assert_eq!(a.len % 4096, 0);
            prop_assert!(a.offset >= l.metadata().offset && a.end() <= l.metadata().end());
            for b in &regions[i + 1..] {
                prop_assert!(!overlaps(*a, *b), "{:?} overlaps {:?}", a, b);
            }
        }
        let total: u64 = regions.iter().map(|r| r.len).sum();
        prop_assert_eq!(total, l.metadata().len);
        prop_assert_eq!(l.data_size() % u64::from(params.block_size), 0);
        prop_assert!(l.data_size() >= u64::from(params.block_size));
        prop_assert!(l.new_bitmap().page_count() <= l.bitmap_pages_reserved());
        match params.placement {
            Placement::Internal => {
                prop_assert!(l.data().end() <= l.metadata().offset);
                prop_assert_eq!(l.metadata().end(), params.device_size);
            }
            Placement::Sidecar => prop_assert_eq!(l.data_size(), params.device_size),
        }
    }
}
