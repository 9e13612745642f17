use std::collections::BTreeSet;

use proptest::prelude::*;

use crate::legmeta::*;

/// Extent size in these tests (the smallest allowed).
const E: u64 = 4096;

type Block = [u8; META_BLOCK];

fn config(extents: u64, slots: u32) -> AlConfig {
    AlConfig::new(extents * E, E, slots, al_ring_blocks(slots), 0).unwrap()
}

struct Disk {
    config: AlConfig,
    ring: Vec<Block>,
}

impl Disk {
    fn new(config: AlConfig) -> Disk {
        Disk {
            config,
            ring: ActivityLog::initial_ring(&config),
        }
    }

    fn write(&mut self, transaction: &AlTransaction) {
        let block = self.config.ring_block(transaction.seq()) as usize;
        self.ring[block] = transaction.encode();
    }

    fn recover(&self) -> Result<Recovered, MetaError> {
        let refs: Vec<&[u8]> = self.ring.iter().map(|b| b.as_slice()).collect();
        ActivityLog::recover(&self.config, &refs)
    }
}

fn persist_first(decision: AlDecision) -> AlTransaction {
    match decision {
        AlDecision::PersistFirst(transaction) => transaction,
        other => panic!("expected PersistFirst, got {other:?}"),
    }
}

/// Begins a write and, if it needs a transaction, persists it.
fn write(log: &mut ActivityLog, disk: &mut Disk, offset: u64, len: u64) -> AlDecision {
    let decision = log.begin_write(offset, len).unwrap();
    if let AlDecision::PersistFirst(transaction) = &decision {
        disk.write(transaction);
        log.transaction_persisted(transaction.seq()).unwrap();
    }
    decision
}

#[test]
fn a_cold_extent_is_persisted_before_the_write_then_writes_proceed() {
    let config = config(16, 4);
    let mut log = ActivityLog::new(config);
    let t = persist_first(log.begin_write(3 * E + 10, 100).unwrap());
    assert_eq!(t.seq(), u64::from(config.ring_blocks()));
    assert_eq!(t.added().collect::<Vec<_>>(), vec![3]);
    assert_eq!(t.evicted().count(), 0);
    assert_eq!(log.pending_seq(), Some(t.seq()));
    log.transaction_persisted(t.seq()).unwrap();
    assert_eq!(log.begin_write(3 * E, E).unwrap(), AlDecision::Proceed);
    assert_eq!(log.in_flight(3), 2);
    log.end_write(3 * E + 10, 100).unwrap();
    log.end_write(3 * E, E).unwrap();
    assert_eq!(log.in_flight(3), 0);
    assert_eq!(log.hot_extents(), vec![3]);
    assert_eq!(log.begin_write(0, 0).unwrap(), AlDecision::Proceed);
}

#[test]
fn while_a_transaction_is_outstanding_writes_wait_for_it_or_for_a_retry() {
    let mut log = ActivityLog::new(config(16, 4));
    let t = persist_first(log.begin_write(0, 2 * E).unwrap());
    assert_eq!(t.added().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(
        log.begin_write(E, 10).unwrap(),
        AlDecision::AfterPersist { seq: t.seq() }
    );
    assert_eq!(log.begin_write(5 * E, 10).unwrap(), AlDecision::Wait);
    assert_eq!(
        log.begin_write(E, 2 * E).unwrap(),
        AlDecision::Wait,
        "extent 2 is cold"
    );
    assert_eq!(log.in_flight(1), 2);
    log.transaction_persisted(t.seq()).unwrap();
    assert!(matches!(
        log.begin_write(5 * E, 10).unwrap(),
        AlDecision::PersistFirst(_)
    ));
}

#[test]
fn the_least_recently_used_idle_extent_is_evicted() {
    let config = config(16, 2);
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    for extent in [0, 1] {
        write(&mut log, &mut disk, extent * E, 1);
        log.end_write(extent * E, 1).unwrap();
    }
    assert_eq!(write(&mut log, &mut disk, 0, 1), AlDecision::Proceed); // 0 is now the most recent
    log.end_write(0, 1).unwrap();
    let t = persist_first(write(&mut log, &mut disk, 2 * E, 1));
    assert_eq!(
        t.updates(),
        &[AlUpdate {
            slot: 1,
            added: 2,
            evicted: Some(1)
        }]
    );
    assert_eq!(log.hot_extents(), vec![0, 2]);
}

#[test]
fn an_extent_with_writes_in_flight_is_never_evicted() {
    let config = config(16, 2);
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    write(&mut log, &mut disk, 0, 1);
    write(&mut log, &mut disk, E, 1);
    assert_eq!(log.begin_write(2 * E, 1).unwrap(), AlDecision::Wait);
    assert_eq!(log.pending_seq(), None, "a Wait records nothing");
    log.end_write(E, 1).unwrap();
    let t = persist_first(log.begin_write(2 * E, 1).unwrap());
    assert_eq!(t.evicted().collect::<Vec<_>>(), vec![1]);
    // A write over extents 0..=2 with 2 slots can never fit.
    assert!(matches!(
        log.begin_write(0, 3 * E),
        Err(MetaError::WriteTooLarge {
            extents: 3,
            max: 2,
            ..
        })
    ));
}

#[test]
fn a_write_never_evicts_an_extent_it_touches() {
    let config = config(16, 2);
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    write(&mut log, &mut disk, 0, 1);
    log.end_write(0, 1).unwrap();
    write(&mut log, &mut disk, 5 * E, 1);
    log.end_write(5 * E, 1).unwrap();
    // Touches 0 (hot, idle, least recently used) and 1 (cold): must evict 5, not 0.
    let t = persist_first(log.begin_write(E - 1, 2).unwrap());
    assert_eq!(t.evicted().collect::<Vec<_>>(), vec![5]);
    assert_eq!(t.added().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn misuse_is_refused_without_changing_anything() {
    let config = config(16, 4);
    let mut log = ActivityLog::new(config);
    assert_eq!(
        log.begin_write(15 * E, 2 * E),
        Err(MetaError::OutOfBounds {
            offset: 15 * E,
            len: 2 * E,
            data_size: 16 * E
        })
    );
    assert!(matches!(
        log.begin_write(u64::MAX, 2),
        Err(MetaError::OutOfBounds { .. })
    ));
    assert_eq!(
        log.end_write(0, 1),
        Err(MetaError::AlEndWithoutBegin { extent: 0 })
    );
    assert_eq!(
        log.transaction_persisted(3),
        Err(MetaError::AlNothingPending { found: 3 })
    );
    let t = persist_first(log.begin_write(0, E + 1).unwrap());
    assert_eq!(
        log.transaction_persisted(t.seq() + 1),
        Err(MetaError::AlWrongSeq {
            expected: t.seq(),
            found: t.seq() + 1
        })
    );
    log.transaction_persisted(t.seq()).unwrap();
    log.end_write(0, 1).unwrap();
    // Extent 0 has nothing left in flight, extent 1 has one write: refused as a whole.
    assert_eq!(
        log.end_write(0, E + 1),
        Err(MetaError::AlEndWithoutBegin { extent: 0 })
    );
    assert_eq!(log.in_flight(1), 1);
    let big = config.max_extents_per_write();
    assert_eq!(big, 4);
}

#[test]
fn at_most_64_extents_per_write() {
    let mut log = ActivityLog::new(config(1000, 1237));
    assert!(matches!(
        log.begin_write(0, 64 * E),
        Ok(AlDecision::PersistFirst(_))
    ));
    assert!(matches!(
        log.begin_write(E, 64 * E + 1),
        Err(MetaError::WriteTooLarge {
            extents: 65,
            max: 64,
            ..
        })
    ));
}

#[test]
fn transactions_round_trip_and_refuse_damage() {
    let mut log = ActivityLog::new(config(100, 8));
    let t = persist_first(log.begin_write(E, 3 * E).unwrap());
    let block = t.encode();
    assert_eq!(AlTransaction::decode(&block), Ok(t.clone()));
    let mut bad = block;
    bad[0] = b'X';
    assert!(matches!(
        AlTransaction::decode(&bad),
        Err(MetaError::AlMagic { .. })
    ));
    let mut bad = block;
    bad[3000] ^= 1;
    assert!(matches!(
        AlTransaction::decode(&bad),
        Err(MetaError::AlChecksum { .. })
    ));
    let mut bad = block;
    bad[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert!(matches!(
        AlTransaction::decode(&bad),
        Err(MetaError::UnsupportedVersion {
            what: "activity-log block",
            found: 7,
            ..
        })
    ));
    assert!(matches!(
        AlTransaction::decode(&block[..10]),
        Err(MetaError::WrongLength { .. })
    ));
    let mut bad = block;
    bad[24..26].copy_from_slice(&65u16.to_le_bytes());
    reseal(&mut bad);
    assert!(matches!(
        AlTransaction::decode(&bad),
        Err(MetaError::InvalidField {
            field: "update count",
            offset: 24,
            found: 65,
            ..
        })
    ));
}

fn reseal(block: &mut Block) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..28]), &block[32..]);
    block[28..32].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_fresh_ring_recovers_to_nothing_hot() {
    let config = config(16, 4);
    let recovered = Disk::new(config).recover().unwrap();
    assert_eq!(recovered.hot_extents, Vec::<u64>::new());
    assert_eq!(recovered.last_seq, u64::from(config.ring_blocks()) - 1);
    assert_eq!(recovered.torn_block, None);
    assert_eq!(ActivityLog::resume(&recovered), ActivityLog::new(config));
}

#[test]
fn a_torn_last_transaction_is_ignored_and_reported() {
    let config = config(16, 4);
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    write(&mut log, &mut disk, 0, 1);
    let t = persist_first(log.begin_write(7 * E, 1).unwrap());
    let block = config.ring_block(t.seq()) as usize;
    disk.ring[block][..512].copy_from_slice(&t.encode()[..512]); // the crash tears it
    let recovered = disk.recover().unwrap();
    assert_eq!(recovered.hot_extents, vec![0]);
    assert_eq!(recovered.torn_block, Some(block as u32));
    assert_eq!(recovered.last_seq, t.seq() - 1);
    // Resuming reuses the torn block's sequence number and position.
    let mut resumed = ActivityLog::resume(&recovered);
    let again = persist_first(resumed.begin_write(7 * E, 1).unwrap());
    assert_eq!(again.seq(), t.seq());
}

#[test]
fn corruption_in_the_middle_of_the_ring_is_reported_with_its_place() {
    let config = AlConfig::new(16 * E, E, 4, 8, 1 << 20).unwrap();
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    write(&mut log, &mut disk, 0, 1); // seq 8 -> block 0
    disk.ring[5][100] ^= 1;
    let err = disk.recover().unwrap_err();
    assert!(matches!(
        &err,
        MetaError::AlRingBlock { block: 5, offset, source }
            if *offset == (1 << 20) + 5 * 4096 && matches!(**source, MetaError::AlChecksum { .. })
    ));
    assert!(err
        .to_string()
        .starts_with("activity-log ring block 5 (byte 1069056)"));
}

#[test]
fn a_stale_block_from_an_earlier_lap_is_reported() {
    let config = config(16, 4);
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    let stale = disk.ring[2];
    for extent in 0..6 {
        write(&mut log, &mut disk, extent * E, 1);
        log.end_write(extent * E, 1).unwrap();
    }
    // Transactions 8..=13 went to blocks 0..=5; block 2 silently lost its write of 10.
    disk.ring[2] = stale;
    assert_eq!(
        disk.recover().unwrap_err(),
        MetaError::AlRingOutOfOrder {
            block: 2,
            offset: 2 * 4096,
            expected: 10,
            found: 2
        }
    );
}

#[test]
fn a_ring_that_is_not_ours_is_refused() {
    let config = config(16, 4);
    let mut disk = Disk::new(config);
    disk.ring.pop();
    assert_eq!(
        disk.recover().unwrap_err(),
        MetaError::AlRingLength {
            expected: 8,
            found: 7
        }
    );
    let zeros = Disk {
        config,
        ring: vec![[0; META_BLOCK]; 8],
    };
    assert!(matches!(
        zeros.recover(),
        Err(MetaError::AlRingEmpty { .. })
    ));
    // A ring written with another slot count: no block fits this configuration.
    let other = Disk {
        config,
        ring: ActivityLog::initial_ring(&self::config(16, 5)),
    };
    let err = other.recover().unwrap_err();
    assert!(
        err.to_string()
            .contains("differs from the configured slot count"),
        "{err}"
    );
    // Only the first transaction of a ring ever written.
    let mut unformatted = Disk {
        config,
        ring: vec![[0; META_BLOCK]; 8],
    };
    unformatted.ring[0] = ActivityLog::initial_ring(&config)[0];
    assert_eq!(
        unformatted.recover().unwrap_err(),
        MetaError::AlRingUnformatted {
            newest: 0,
            ring_blocks: 8,
            first: 7
        }
    );
}

#[test]
fn an_extent_beyond_the_data_area_is_reported_with_its_offset() {
    let wide = config(100, 4);
    let mut log = ActivityLog::new(wide);
    let mut disk = Disk::new(wide);
    write(&mut log, &mut disk, 50 * E, 1); // seq 8 -> block 0
    write(&mut log, &mut disk, E, 1); // seq 9 -> block 1
                                      // Blocks 0 and 1 both name extent 50 (block 1 in its context, slot 0). Block 0 sits where
                                      // a torn newest block would; block 1 is corruption, reported at the context entry.
    let narrow = Disk {
        config: config(16, 4),
        ring: disk.ring,
    };
    let err = narrow.recover().unwrap_err();
    assert_eq!(
        err.to_string(),
        "activity-log ring block 1 (byte 4096): activity-log block field extent at byte 800 \
         holds 50: beyond the last extent of the data area"
    );
}

#[test]
fn configurations_are_checked() {
    assert!(matches!(
        AlConfig::new(E, 3000, 4, 8, 0),
        Err(MetaError::NotPowerOfTwo { .. })
    ));
    assert!(matches!(
        AlConfig::new(E, 2048, 4, 8, 0),
        Err(MetaError::OutOfRange {
            field: "activity-log extent size",
            ..
        })
    ));
    assert!(matches!(
        AlConfig::new(0, E, 4, 8, 0),
        Err(MetaError::OutOfRange { .. })
    ));
    assert!(matches!(
        AlConfig::new(E, E, 0, 8, 0),
        Err(MetaError::OutOfRange { .. })
    ));
    assert!(matches!(
        AlConfig::new(E, E, 2000, 3, 0),
        Err(MetaError::OutOfRange {
            field: "activity-log ring blocks",
            value: 3,
            min: 4,
            ..
        })
    ));
    assert!(matches!(
        AlConfig::new(1 << 50, E, 4, 8, 0),
        Err(MetaError::TooManyExtents { .. })
    ));
    let config = AlConfig::new(10 * E + 1, E, 4, 8, 1 << 20).unwrap();
    assert_eq!(config.extent_count(), 11);
    assert_eq!(config.extent_range(10), (10 * E, 1));
    assert_eq!(config.block_offset(9), (1 << 20) + 4096);
}

#[test]
fn recovered_extents_become_merged_byte_ranges_clipped_to_the_data() {
    let config = AlConfig::new(10 * E + 100, E, 8, 8, 0).unwrap();
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    for offset in [0, E, 3 * E, 10 * E] {
        write(&mut log, &mut disk, offset, 1);
    }
    let recovered = disk.recover().unwrap();
    assert_eq!(recovered.hot_extents, vec![0, 1, 3, 10]);
    assert_eq!(
        recovered.resync_ranges(),
        vec![(0, 2 * E), (3 * E, E), (10 * E, 100)]
    );
}

#[test]
fn context_rebuilds_a_large_table_from_a_minimal_ring() {
    let slots = 2000;
    let ring = min_al_ring_blocks(slots);
    assert_eq!(ring, 4);
    let config = AlConfig::new(3000 * E, E, slots, ring, 0).unwrap();
    let mut log = ActivityLog::new(config);
    let mut disk = Disk::new(config);
    // 1500 extents in 30 transactions of 50, far more than the ring holds.
    for batch in 0..30 {
        write(&mut log, &mut disk, batch * 50 * E, 50 * E);
    }
    let recovered = disk.recover().unwrap();
    assert_eq!(recovered.hot_extents, (0..1500).collect::<Vec<_>>());
    // Tear the next one: the remaining 3 blocks still describe all 2000 slots.
    let t = persist_first(log.begin_write(2000 * E, E).unwrap());
    disk.ring[config.ring_block(t.seq()) as usize][..8].copy_from_slice(&[0xff; 8]);
    let recovered = disk.recover().unwrap();
    assert_eq!(recovered.hot_extents.len(), 1500);
}

// ---- the safety property -------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Begin {
        offset: u64,
        len: u64,
    },
    End(prop::sample::Index),
    Persist,
    /// Recover from what a crash now would leave (0: outstanding transaction not written,
    /// 1: written whole, 2..: torn after `(n - 1) * 512` bytes), check, and keep going.
    Check(u8),
    /// The same, then resume from the recovered state.
    Crash(u8),
}

fn arb_ops(extents: u64, max_write: u64) -> impl Strategy<Value = Vec<Op>> {
    let size = extents * E;
    let begin = (0..size, 1..=max_write * E).prop_map(move |(offset, len)| Op::Begin {
        offset,
        len: len.min(size - offset),
    });
    let op = prop_oneof![
        6 => begin,
        4 => any::<prop::sample::Index>().prop_map(Op::End),
        3 => Just(Op::Persist),
        2 => (0u8..9).prop_map(Op::Check),
        1 => (0u8..9).prop_map(Op::Crash),
    ];
    prop::collection::vec(op, 1..120)
}

struct Sim {
    log: ActivityLog,
    disk: Disk,
    pending: Option<AlTransaction>,
    /// Submitted to the disks and not yet ended: must be covered by the recovered hot set.
    active: Vec<(u64, u64)>,
    /// Admitted but waiting for the outstanding transaction: not yet on any disk.
    waiting: Vec<(u64, u64)>,
}

fn extents_of(config: &AlConfig, (offset, len): (u64, u64)) -> std::ops::RangeInclusive<u64> {
    offset / config.extent_size()..=(offset + len - 1) / config.extent_size()
}

impl Sim {
    fn busy(&self) -> BTreeSet<u64> {
        let config = *self.log.config();
        (self.active.iter().chain(&self.waiting))
            .flat_map(|&write| extents_of(&config, write))
            .collect()
    }

    fn begin(&mut self, offset: u64, len: u64) -> Result<(), TestCaseError> {
        let config = *self.log.config();
        let touched: BTreeSet<u64> = extents_of(&config, (offset, len)).collect();
        let decision = self.log.begin_write(offset, len);
        if touched.len() as u64 > config.max_extents_per_write() {
            let too_large = matches!(decision, Err(MetaError::WriteTooLarge { .. }));
            prop_assert!(too_large, "expected WriteTooLarge, got {:?}", decision);
            return Ok(());
        }
        let all_busy: BTreeSet<u64> = self.busy().union(&touched).copied().collect();
        match decision.unwrap() {
            AlDecision::Proceed => self.active.push((offset, len)),
            AlDecision::AfterPersist { seq } => {
                prop_assert_eq!(Some(seq), self.pending.as_ref().map(|t| t.seq()));
                self.waiting.push((offset, len));
            }
            AlDecision::PersistFirst(t) => {
                prop_assert!(self.pending.is_none(), "two outstanding transactions");
                let busy = self.busy();
                for evicted in t.evicted() {
                    prop_assert!(!busy.contains(&evicted) && !touched.contains(&evicted));
                }
                self.pending = Some(t);
                self.waiting.push((offset, len));
            }
            AlDecision::Wait => {
                // Only when another transaction is outstanding, or the slots cannot hold
                // every extent with writes in flight plus this write's.
                prop_assert!(self.pending.is_some() || all_busy.len() > config.slots() as usize);
            }
        }
        prop_assert!(self.log.hot_extents().len() <= config.slots() as usize);
        Ok(())
    }

    fn end(&mut self, index: prop::sample::Index) -> Result<(), TestCaseError> {
        if self.active.is_empty() {
            return Ok(());
        }
        let (offset, len) = self.active.swap_remove(index.index(self.active.len()));
        prop_assert_eq!(self.log.end_write(offset, len), Ok(()));
        Ok(())
    }

    fn persist(&mut self) -> Result<(), TestCaseError> {
        if let Some(t) = self.pending.take() {
            self.disk.write(&t);
            prop_assert_eq!(self.log.transaction_persisted(t.seq()), Ok(()));
            self.active.append(&mut self.waiting);
        }
        Ok(())
    }

    /// The ring a crash now would leave.
    fn crashed_ring(&self, mode: u8) -> Vec<Block> {
        let mut ring = self.disk.ring.clone();
        if let Some(t) = &self.pending {
            let block = &mut ring[self.disk.config.ring_block(t.seq()) as usize];
            match mode {
                0 => {}
                1 => *block = t.encode(),
                torn => {
                    let cut = (usize::from(torn) - 1) * 512;
                    block[..cut].copy_from_slice(&t.encode()[..cut]);
                    block[cut..].fill(0xA5);
                }
            }
        }
        ring
    }

    fn check(&mut self, mode: u8, crash: bool) -> Result<(), TestCaseError> {
        let config = self.disk.config;
        let ring = self.crashed_ring(mode);
        let refs: Vec<&[u8]> = ring.iter().map(|b| b.as_slice()).collect();
        let recovered = ActivityLog::recover(&config, &refs);
        prop_assert!(recovered.is_ok(), "recovery failed: {:?}", recovered);
        let recovered = recovered.unwrap();
        let hot: BTreeSet<u64> = recovered.hot_extents.iter().copied().collect();
        for &write in &self.active {
            for extent in extents_of(&config, write) {
                prop_assert!(
                    hot.contains(&extent),
                    "extent {} has a write in flight but is not in the recovered set {:?}",
                    extent,
                    hot
                );
            }
        }
        if crash {
            self.log = ActivityLog::resume(&recovered);
            self.disk.ring = ring;
            self.pending = None;
            self.active.clear();
            self.waiting.clear();
        }
        Ok(())
    }
}

fn run(config: AlConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut sim = Sim {
        log: ActivityLog::new(config),
        disk: Disk::new(config),
        pending: None,
        active: Vec::new(),
        waiting: Vec::new(),
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Begin { offset, len } => sim.begin(offset, len)?,
            Op::End(index) => sim.end(index)?,
            Op::Persist => sim.persist()?,
            Op::Check(mode) => sim.check(mode, false)?,
            Op::Crash(mode) => sim.check(mode, true)?,
        }
        // After every step, a crash must be survivable (each of the three ways in turn).
        sim.check([0, 1, 4][step % 3], false)?;
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_extent_with_a_write_in_flight_is_recovered_small_table(
        slots in 1u32..=6,
        ops in arb_ops(16, 3),
    ) {
        run(config(16, slots), ops)?;
    }

    #[test]
    fn every_extent_with_a_write_in_flight_is_recovered_large_table(
        slots in 825u32..=900,
        ops in arb_ops(1200, 64),
    ) {
        let config = AlConfig::new(1200 * E, E, slots, min_al_ring_blocks(slots), 0).unwrap();
        run(config, ops)?;
    }

    #[test]
    fn decoding_arbitrary_ring_bytes_never_panics(
        seeds in any::<[u64; 8]>(),
        plant in any::<[bool; 8]>(),
    ) {
        let config = config(16, 4);
        let mut ring: Vec<Vec<u8>> = seeds.iter().map(|&seed| super::noise(seed, META_BLOCK)).collect();
        for (block, plant) in ring.iter_mut().zip(plant) {
            if plant {
                // Valid magic, version and checksum around random content.
                block[..4].copy_from_slice(b"TNAL");
                block[4..8].copy_from_slice(&1u32.to_le_bytes());
                let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..28]), &block[32..]);
                block[28..32].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let refs: Vec<&[u8]> = ring.iter().map(|b| b.as_slice()).collect();
        let _ = ActivityLog::recover(&config, &refs);
    }

    #[test]
    fn any_single_byte_corruption_of_a_transaction_is_detected(
        start in 0u64..1000,
        count in 1u64..=64,
        at in 0usize..META_BLOCK,
        flip in 1u8..=255,
    ) {
        let mut log = ActivityLog::new(config(1000, 900));
        let len = count.min(1000 - start) * E;
        let t = persist_first(log.begin_write(start * E, len).unwrap());
        let mut block = t.encode();
        prop_assert_eq!(AlTransaction::decode(&block), Ok(t));
        block[at] ^= flip;
        prop_assert!(AlTransaction::decode(&block).is_err());
    }
}
