use proptest::prelude::*;

use crate::legmeta::*;

const G: u64 = 4096;

fn map(size: u64) -> OutOfSync {
    OutOfSync::new(size, G).unwrap()
}

fn runs(map: &OutOfSync) -> Vec<(u64, u64)> {
    map.dirty_runs().collect()
}

fn encode_all(map: &OutOfSync, slot: u16) -> Vec<[u8; META_BLOCK]> {
    (0..map.page_count())
        .map(|page| map.encode_page(slot, page).unwrap())
        .collect()
}

fn decode_all(
    map: &OutOfSync,
    slot: u16,
    area: u64,
    pages: &[[u8; META_BLOCK]],
) -> Result<OutOfSync, MetaError> {
    let refs: Vec<&[u8]> = pages.iter().map(|page| page.as_slice()).collect();
    OutOfSync::decode(map.data_size(), map.grain(), slot, area, &refs)
}

#[test]
fn mark_touches_every_partly_covered_grain() {
    let mut m = map(100 * G);
    m.mark(G - 1, 2).unwrap();
    assert_eq!(runs(&m), vec![(0, 2 * G)]);
    assert_eq!(m.dirty_grains(), 2);
    assert!(m.is_dirty(G, 1).unwrap());
    assert!(!m.is_dirty(2 * G, 10 * G).unwrap());
    assert!(!m.is_dirty(0, 0).unwrap());
}

#[test]
fn clear_only_removes_fully_covered_grains() {
    let mut m = map(100 * G);
    m.mark(0, 10 * G).unwrap();
    m.clear(G / 2, 3 * G).unwrap(); // covers grains 1 and 2 fully, 0 and 3 partly
    assert_eq!(runs(&m), vec![(0, G), (3 * G, 7 * G)]);
    m.clear(3 * G + 1, G - 1).unwrap(); // tail of grain 3 only
    assert!(m.is_dirty(3 * G, G).unwrap());
    m.clear(3 * G, G).unwrap();
    assert!(!m.is_dirty(3 * G, G).unwrap());
}

#[test]
fn the_short_last_grain_counts_at_its_real_length_and_clears_at_the_end() {
    let size = 10 * G + 100;
    let mut m = map(size);
    assert_eq!(m.grains(), 11);
    m.mark(size - 1, 1).unwrap();
    assert_eq!(m.dirty_bytes(), 100);
    assert_eq!(runs(&m), vec![(10 * G, 100)]);
    m.mark(0, size).unwrap();
    assert_eq!(m.dirty_bytes(), size);
    assert_eq!(runs(&m), vec![(0, size)]);
    m.clear(10 * G, 100).unwrap();
    assert_eq!(m.dirty_bytes(), 10 * G);
    m.clear(10 * G - 1, 101).unwrap(); // covers grain 10 (short) fully, grain 9 partly
    assert_eq!(m.dirty_grains(), 10);
}

#[test]
fn ranges_outside_the_data_area_are_refused() {
    let mut m = map(10 * G);
    let out = MetaError::OutOfBounds {
        offset: 9 * G,
        len: 2 * G,
        data_size: 10 * G,
    };
    assert_eq!(m.mark(9 * G, 2 * G), Err(out.clone()));
    assert_eq!(m.clear(9 * G, 2 * G), Err(out.clone()));
    assert_eq!(m.is_dirty(9 * G, 2 * G), Err(out));
    assert!(m.mark(u64::MAX, 2).is_err());
    assert_eq!(m.mark(10 * G, 0), Ok(()));
    assert_eq!(m.dirty_grains(), 0);
}

#[test]
fn shapes_are_checked() {
    assert!(matches!(
        OutOfSync::new(10, 3000),
        Err(MetaError::NotPowerOfTwo { .. })
    ));
    assert!(matches!(
        OutOfSync::new(0, G),
        Err(MetaError::OutOfRange { .. })
    ));
    let mut a = map(10 * G);
    let b = OutOfSync::new(10 * G, 2 * G).unwrap();
    assert_eq!(
        a.merge(&b),
        Err(MetaError::BitmapShapeMismatch {
            size: 10 * G,
            grain: G,
            other_size: 10 * G,
            other_grain: 2 * G
        })
    );
}

#[test]
fn merge_adds_the_other_bitmaps_grains() {
    let mut a = map(100_000 * G);
    let mut b = map(100_000 * G);
    a.mark(0, G).unwrap();
    b.mark(70_000 * G, 3 * G).unwrap();
    a.take_dirty_pages();
    a.merge(&b).unwrap();
    assert_eq!(runs(&a), vec![(0, G), (70_000 * G, 3 * G)]);
    assert_eq!(a.take_dirty_pages(), vec![2]);
}

#[test]
fn only_pages_that_changed_are_reported_dirty() {
    let per_page = BITMAP_BITS_PER_PAGE * G;
    let mut m = map(3 * per_page);
    assert_eq!(m.page_count(), 3);
    m.mark(per_page - G, 2 * G).unwrap(); // last grain of page 0, first of page 1
    m.mark(2 * per_page + 5 * G, G).unwrap();
    assert_eq!(m.take_dirty_pages(), vec![0, 1, 2]);
    assert_eq!(m.take_dirty_pages(), Vec::<u32>::new());
    m.mark(per_page, G).unwrap(); // already set: no change
    assert_eq!(m.take_dirty_pages(), Vec::<u32>::new());
    m.clear(0, per_page).unwrap();
    m.mark(2 * per_page, G).unwrap();
    assert_eq!(m.pages_covering(per_page - 1, 2).unwrap(), 0..2);
    assert_eq!(
        m.take_dirty_pages_in(per_page, G).unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(m.take_dirty_pages_in(0, G).unwrap(), vec![0]);
    assert_eq!(m.take_dirty_pages(), vec![2]);
    m.mark_all();
    assert_eq!(m.take_dirty_pages(), vec![0, 1, 2]);
    assert_eq!(m.dirty_bytes(), 3 * per_page);
}

#[test]
fn encode_page_beyond_the_bitmap_is_refused() {
    let m = map(10 * G);
    assert_eq!(
        m.encode_page(0, 1),
        Err(MetaError::NoSuchPage { page: 1, pages: 1 })
    );
}

fn two_page_map() -> OutOfSync {
    let mut m = map(BITMAP_BITS_PER_PAGE * G + 100 * G);
    m.mark(3 * G, 5 * G).unwrap();
    m.mark(BITMAP_BITS_PER_PAGE * G + 7 * G, G).unwrap();
    m
}

#[test]
fn bad_page_checksum_names_the_page_and_its_offset() {
    let m = two_page_map();
    let mut pages = encode_all(&m, 2);
    pages[1][1000] ^= 4;
    let err = decode_all(&m, 2, 1 << 20, &pages).unwrap_err();
    assert!(matches!(
        err,
        MetaError::BitmapChecksum { slot: 2, page: 1, offset, stored, computed }
            if offset == (1 << 20) + 4096 && stored != computed
    ));
    assert!(err
        .to_string()
        .starts_with("bitmap page 1 of peer slot 2 (byte 1052672): checksum mismatch"));
}

#[test]
fn bad_page_magic_is_refused() {
    let m = two_page_map();
    let mut pages = encode_all(&m, 0);
    pages[0] = [0; META_BLOCK];
    assert!(matches!(
        decode_all(&m, 0, 0, &pages),
        Err(MetaError::BitmapMagic {
            slot: 0,
            page: 0,
            offset: 0,
            found: [0, 0, 0, 0]
        })
    ));
}

#[test]
fn pages_in_the_wrong_place_or_slot_are_refused() {
    let m = two_page_map();
    let mut pages = encode_all(&m, 0);
    pages.swap(0, 1);
    assert!(matches!(
        decode_all(&m, 0, 0, &pages),
        Err(MetaError::BitmapMisplaced {
            offset: 0,
            expected_page: 0,
            found_page: 1,
            ..
        })
    ));
    let pages = encode_all(&m, 1);
    assert!(matches!(
        decode_all(&m, 0, 0, &pages),
        Err(MetaError::BitmapMisplaced {
            expected_slot: 0,
            found_slot: 1,
            ..
        })
    ));
}

#[test]
fn bits_beyond_the_data_area_are_refused() {
    let small = map(100 * G);
    let bigger = {
        let mut m = map(200 * G);
        m.mark(150 * G, G).unwrap();
        m
    };
    let pages = encode_all(&bigger, 0);
    assert_eq!(
        decode_all(&small, 0, 0, &pages),
        Err(MetaError::BitmapBeyondEnd {
            slot: 0,
            page: 0,
            offset: 0
        })
    );
}

#[test]
fn wrong_page_count_and_length_are_refused() {
    let m = two_page_map();
    let pages = encode_all(&m, 0);
    assert_eq!(
        decode_all(&m, 0, 0, &pages[..1]),
        Err(MetaError::BitmapPageCount {
            expected: 2,
            found: 1
        })
    );
    let short: Vec<&[u8]> = vec![&pages[0][..100], &pages[1]];
    assert!(matches!(
        OutOfSync::decode(m.data_size(), G, 0, 0, &short),
        Err(MetaError::WrongLength {
            what: "bitmap page",
            ..
        })
    ));
}

#[test]
fn layout_decodes_a_slot_at_its_offset() {
    let layout = MetaLayout::new(LayoutParams::new(Placement::Sidecar, 1 << 30)).unwrap();
    let mut m = layout.new_bitmap();
    m.mark(12345, 678).unwrap();
    let pages = encode_all(&m, 1);
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    assert_eq!(
        layout.decode_bitmap(1, &refs).as_ref(),
        Ok(&{
            let mut clean = m.clone();
            clean.take_dirty_pages();
            clean
        })
    );
    let mut bad = pages.clone();
    bad[0][20] ^= 1;
    let refs: Vec<&[u8]> = bad.iter().map(|p| p.as_slice()).collect();
    let offset = layout.bitmap(1).unwrap().offset;
    assert!(
        matches!(layout.decode_bitmap(1, &refs), Err(MetaError::BitmapChecksum { offset: o, .. }) if o == offset)
    );
}

#[derive(Clone, Debug)]
enum Op {
    Mark(u64, u64),
    Clear(u64, u64),
}

/// Ranges biased towards grain and page boundaries.
fn arb_case() -> impl Strategy<Value = (u64, Vec<Op>)> {
    let size = prop_oneof![
        (1u64..200 * G),
        (BITMAP_BITS_PER_PAGE * G - 3 * G..BITMAP_BITS_PER_PAGE * G * 3 + 5 * G),
    ];
    size.prop_flat_map(|size| {
        let point = prop_oneof![
            0..=size,
            (0..=size / G).prop_map(|g| g * G),
            (0..=size / (BITMAP_BITS_PER_PAGE * G)).prop_map(|p| p * BITMAP_BITS_PER_PAGE * G),
            Just(size),
        ];
        let fuzz = prop_oneof![Just(0u64), Just(1), Just(G - 1), 0..3 * G];
        let range = (point.clone(), point, fuzz).prop_map(|(a, b, fuzz)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (lo, hi - lo, fuzz)
        });
        let op = (any::<bool>(), range).prop_map(move |(mark, (offset, len, fuzz))| {
            let len = (len + fuzz).min(size - offset);
            if mark {
                Op::Mark(offset, len)
            } else {
                Op::Clear(offset, len)
            }
        });
        (Just(size), prop::collection::vec(op, 1..20))
    })
}

/// The naive model: one bool per grain.
fn model_apply(model: &mut [bool], size: u64, op: &Op) {
    match *op {
        Op::Mark(offset, len) if len > 0 => {
            for grain in offset / G..=(offset + len - 1) / G {
                model[grain as usize] = true;
            }
        }
        Op::Clear(offset, len) => {
            let first = (offset / G) as usize;
            let last = ((offset + len) / G) as usize;
            for (grain, bit) in model.iter_mut().enumerate().take(last + 1).skip(first) {
                let start = grain as u64 * G;
                let end = (start + G).min(size);
                if offset <= start && end <= offset + len {
                    *bit = false;
                }
            }
        }
        _ => {}
    }
}

fn model_runs(model: &[bool], size: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (grain, _) in model.iter().enumerate().filter(|(_, dirty)| **dirty) {
        let start = grain as u64 * G;
        let len = G.min(size - start);
        match runs.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => runs.push((start, len)),
        }
    }
    runs
}

proptest! {
    #[test]
    fn bitmap_matches_a_naive_model((size, ops) in arb_case(), probe in any::<(u64, u64)>()) {
        let mut m = map(size);
        let mut model = vec![false; size.div_ceil(G) as usize];
        for op in &ops {
            match *op {
                Op::Mark(offset, len) => m.mark(offset, len).unwrap(),
                Op::Clear(offset, len) => m.clear(offset, len).unwrap(),
            }
            model_apply(&mut model, size, op);
        }
        let runs_expected = model_runs(&model, size);
        prop_assert_eq!(runs(&m), runs_expected.clone());
        prop_assert_eq!(m.dirty_grains(), model.iter().filter(|d| **d).count() as u64);
        prop_assert_eq!(m.dirty_bytes(), runs_expected.iter().map(|r| r.1).sum::<u64>());
        let offset = probe.0 % size;
        let len = probe.1 % (size - offset + 1);
        let expected = len > 0 && (offset / G..=(offset + len - 1) / G).any(|g| model[g as usize]);
        prop_assert_eq!(m.is_dirty(offset, len).unwrap(), expected);
    }

    #[test]
    fn bitmap_pages_round_trip((size, ops) in arb_case(), slot in 0u16..32, area in 0u64..1 << 40) {
        let mut m = map(size);
        for op in &ops {
            if let Op::Mark(offset, len) = *op {
                m.mark(offset, len).unwrap();
            }
        }
        m.take_dirty_pages();
        let pages = encode_all(&m, slot);
        prop_assert_eq!(decode_all(&m, slot, area, &pages), Ok(m));
    }

    #[test]
    fn any_single_byte_corruption_of_a_page_is_detected(
        (size, ops) in arb_case(),
        page in any::<prop::sample::Index>(),
        at in 0usize..META_BLOCK,
        flip in 1u8..=255,
    ) {
        let mut m = map(size);
        for op in &ops {
            if let Op::Mark(offset, len) = *op {
                m.mark(offset, len).unwrap();
            }
        }
        let mut pages = encode_all(&m, 3);
        let page = page.index(pages.len());
        pages[page][at] ^= flip;
        prop_assert!(decode_all(&m, 3, 0, &pages).is_err());
    }
}
