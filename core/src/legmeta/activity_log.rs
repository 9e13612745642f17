//! The activity log (AL): which coarse extents of the data area may have writes in flight, so
//! that after a primary crash only those extents are resynced instead of the whole leg.
//!
//! The rule (DESIGN.md rule 3): an extent is recorded as *hot* on disk before the first write
//! into it is submitted. The in-memory [`ActivityLog`] keeps at most `slots` hot extents in a
//! slot table, least recently used first out; an extent with writes in flight is never
//! evicted. Every change to the table is one [`AlTransaction`] that fits one 4 KiB block of a
//! ring on disk (block `seq % ring_blocks`). Only one transaction is outstanding at a time: it
//! is the only block that can be torn by a crash.
//!
//! Transactions carry the slots they changed *and* a rotating slice of the whole table (its
//! "context", [`AL_CONTEXT_PER_BLOCK`] slots each, DRBD's scheme): any `ring_blocks - 1`
//! consecutive transactions together describe every slot, so recovery rebuilds the table from
//! the ring alone even when its newest block is torn ([`ActivityLog::recover`]).
//!
//! Block format (version 1, little-endian):
//! `magic "TNAL" | version u32 | seq u64 | slots u32 | context start u32 | updates u16 |
//!  context entries u16 | crc32c u32 | 64 × (slot u32, added u32, evicted u32) |
//!  824 × extent u32` with `u32::MAX` meaning "no extent".

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use super::bytes::{as_block, block_crc, get_bytes, get_u16, get_u32, get_u64, put, seal, Block};
use super::layout::{MAX_EXTENTS, MIN_GRAIN};
use super::superblock::FORMAT_VERSION;
use super::{MetaError, META_BLOCK};

/// Slot changes one transaction can carry; also the most extents one write may touch.
pub const AL_MAX_UPDATES: usize = 64;
/// Table slots described by each transaction's context.
pub const AL_CONTEXT_PER_BLOCK: usize = 824;
/// The largest slot table (with 4 MiB extents, 256 GiB hot; an 81-block ring).
pub const MAX_AL_SLOTS: u32 = 65_534;
/// The ring is at least this long (32 KiB, as DRBD's), even when fewer blocks would do.
pub const MIN_AL_RING_BLOCKS: u32 = 8;

const MAGIC: [u8; 4] = *b"TNAL";
const AT_VERSION: usize = 4;
const AT_SEQ: usize = 8;
const AT_SLOTS: usize = 16;
const AT_CONTEXT_START: usize = 20;
const AT_UPDATE_COUNT: usize = 24;
const AT_CONTEXT_COUNT: usize = 26;
const AT_CRC: usize = 28;
const AT_UPDATES: usize = 32;
const UPDATE_LEN: usize = 12;
const AT_CONTEXT: usize = AT_UPDATES + AL_MAX_UPDATES * UPDATE_LEN;
const EMPTY: u32 = u32::MAX;
const _: () = assert!(AT_CONTEXT + AL_CONTEXT_PER_BLOCK * 4 == META_BLOCK);

/// The fewest ring blocks that still rebuild every slot when the newest block is torn.
pub fn min_al_ring_blocks(slots: u32) -> u32 {
    context_chunks(slots) + 1
}

/// The ring size a layout reserves for `slots` slots.
pub fn al_ring_blocks(slots: u32) -> u32 {
    min_al_ring_blocks(slots).max(MIN_AL_RING_BLOCKS)
}

fn context_chunks(slots: u32) -> u32 {
    slots.div_ceil(AL_CONTEXT_PER_BLOCK as u32).max(1)
}

/// The slice of the table transaction `seq` describes: `(start, count)`.
fn context_span(seq: u64, slots: u32) -> (u32, u32) {
    let chunk = (seq % u64::from(context_chunks(slots))) as u32;
    let start = chunk * AL_CONTEXT_PER_BLOCK as u32;
    (start, (slots - start).min(AL_CONTEXT_PER_BLOCK as u32))
}

/// The activity log's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlConfig {
    data_size: u64,
    extent_size: u64,
    slots: u32,
    ring_blocks: u32,
    ring_offset: u64,
}

impl AlConfig {
    /// Checks and builds a geometry. `ring_offset` only serves error messages (absolute byte
    /// offsets); `ring_blocks` must be at least [`min_al_ring_blocks`]`(slots)`.
    pub fn new(
        data_size: u64,
        extent_size: u64,
        slots: u32,
        ring_blocks: u32,
        ring_offset: u64,
    ) -> Result<AlConfig, MetaError> {
        if !extent_size.is_power_of_two() {
            return Err(MetaError::NotPowerOfTwo {
                field: "activity-log extent size",
                value: extent_size,
            });
        }
        let range = |field, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(MetaError::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                })
            }
        };
        range(
            "activity-log extent size",
            extent_size,
            MIN_GRAIN.into(),
            u64::MAX,
        )?;
        range("activity-log data size", data_size, 1, u64::MAX)?;
        range("activity-log slots", slots.into(), 1, MAX_AL_SLOTS.into())?;
        let min_ring = min_al_ring_blocks(slots.max(1));
        range(
            "activity-log ring blocks",
            ring_blocks.into(),
            min_ring.into(),
            u32::MAX.into(),
        )?;
        let extents = data_size.div_ceil(extent_size);
        if extents > MAX_EXTENTS {
            return Err(MetaError::TooManyExtents {
                data_size,
                extent_size,
                extents,
                max: MAX_EXTENTS,
            });
        }
        Ok(Self::from_layout(
            data_size,
            extent_size,
            slots,
            ring_blocks,
            ring_offset,
        ))
    }

    pub(crate) fn from_layout(
        data_size: u64,
        extent_size: u64,
        slots: u32,
        ring_blocks: u32,
        ring_offset: u64,
    ) -> AlConfig {
        AlConfig {
            data_size,
            extent_size,
            slots,
            ring_blocks,
            ring_offset,
        }
    }

    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    pub fn extent_size(&self) -> u64 {
        self.extent_size
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn ring_blocks(&self) -> u32 {
        self.ring_blocks
    }

    pub fn extent_count(&self) -> u64 {
        self.data_size.div_ceil(self.extent_size)
    }

    /// The most extents one write may touch: `min(slots, 64)`.
    pub fn max_extents_per_write(&self) -> u64 {
        u64::from(self.slots).min(AL_MAX_UPDATES as u64)
    }

    /// The ring block transaction `seq` is written to.
    pub fn ring_block(&self, seq: u64) -> u32 {
        (seq % u64::from(self.ring_blocks)) as u32
    }

    /// The absolute byte offset transaction `seq` is written at.
    pub fn block_offset(&self, seq: u64) -> u64 {
        self.ring_offset + u64::from(self.ring_block(seq)) * META_BLOCK as u64
    }

    /// The bytes of extent `extent` as `(offset, len)`, clipped to the data area.
    pub fn extent_range(&self, extent: u64) -> (u64, u64) {
        let start = extent.saturating_mul(self.extent_size).min(self.data_size);
        (start, self.extent_size.min(self.data_size - start))
    }
}

/// One slot change: `slot` now holds `added`; it held `evicted` before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlUpdate {
    pub slot: u32,
    pub added: u64,
    pub evicted: Option<u64>,
}

/// One activity-log block: the shim writes [`encode`](Self::encode)`()` at
/// [`AlConfig::block_offset`]`(seq)`, flushes, then calls
/// [`ActivityLog::transaction_persisted`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlTransaction {
    seq: u64,
    slots: u32,
    updates: Vec<AlUpdate>,
    context_start: u32,
    context: Vec<Option<u64>>,
}

impl AlTransaction {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn updates(&self) -> &[AlUpdate] {
        &self.updates
    }

    /// Extents this transaction makes hot.
    pub fn added(&self) -> impl Iterator<Item = u64> + '_ {
        self.updates.iter().map(|update| update.added)
    }

    /// Extents this transaction makes cold. Before writing it, write every peer bitmap's
    /// dirty pages covering them ([`super::OutOfSync::take_dirty_pages_in`]).
    pub fn evicted(&self) -> impl Iterator<Item = u64> + '_ {
        self.updates.iter().filter_map(|update| update.evicted)
    }

    pub fn context_start(&self) -> u32 {
        self.context_start
    }

    pub fn context(&self) -> &[Option<u64>] {
        &self.context
    }

    pub fn encode(&self) -> Block {
        let extent = |value: Option<u64>| value.map_or(EMPTY, |extent| extent as u32);
        let mut block = [0u8; META_BLOCK];
        put(&mut block, 0, &MAGIC);
        put(&mut block, AT_VERSION, &FORMAT_VERSION.to_le_bytes());
        put(&mut block, AT_SEQ, &self.seq.to_le_bytes());
        put(&mut block, AT_SLOTS, &self.slots.to_le_bytes());
        put(
            &mut block,
            AT_CONTEXT_START,
            &self.context_start.to_le_bytes(),
        );
        put(
            &mut block,
            AT_UPDATE_COUNT,
            &(self.updates.len() as u16).to_le_bytes(),
        );
        put(
            &mut block,
            AT_CONTEXT_COUNT,
            &(self.context.len() as u16).to_le_bytes(),
        );
        for (index, update) in self.updates.iter().take(AL_MAX_UPDATES).enumerate() {
            let at = AT_UPDATES + index * UPDATE_LEN;
            put(&mut block, at, &update.slot.to_le_bytes());
            put(
                &mut block,
                at + 4,
                &extent(Some(update.added)).to_le_bytes(),
            );
            put(&mut block, at + 8, &extent(update.evicted).to_le_bytes());
        }
        let context = self.context.iter().take(AL_CONTEXT_PER_BLOCK);
        for (index, entry) in context.enumerate() {
            put(
                &mut block,
                AT_CONTEXT + index * 4,
                &extent(*entry).to_le_bytes(),
            );
        }
        seal(&mut block, AT_CRC);
        block
    }

    /// Decodes one block, checking magic, version, checksum and the block's own consistency
    /// (geometry against a configuration is checked by [`ActivityLog::recover`]).
    pub fn decode(bytes: &[u8]) -> Result<AlTransaction, MetaError> {
        let block = as_block(bytes, "activity-log block")?;
        let magic: [u8; 4] = get_bytes(block, 0);
        if magic != MAGIC {
            return Err(MetaError::AlMagic { found: magic });
        }
        let version = get_u32(block, AT_VERSION);
        if version != FORMAT_VERSION {
            return Err(MetaError::UnsupportedVersion {
                what: "activity-log block",
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored = get_u32(block, AT_CRC);
        let computed = block_crc(block, AT_CRC);
        if stored != computed {
            return Err(MetaError::AlChecksum { stored, computed });
        }
        decode_body(block)
    }
}

fn invalid(field: &'static str, offset: usize, found: u64, reason: &'static str) -> MetaError {
    MetaError::InvalidField {
        what: "activity-log block",
        field,
        offset: offset as u64,
        found,
        reason,
    }
}

fn decode_body(block: &Block) -> Result<AlTransaction, MetaError> {
    let slots = get_u32(block, AT_SLOTS);
    if slots == 0 || slots > MAX_AL_SLOTS {
        return Err(invalid("slots", AT_SLOTS, slots.into(), "out of range"));
    }
    let updates = usize::from(get_u16(block, AT_UPDATE_COUNT));
    if updates > AL_MAX_UPDATES {
        return Err(invalid(
            "update count",
            AT_UPDATE_COUNT,
            updates as u64,
            "above 64",
        ));
    }
    let count = get_u16(block, AT_CONTEXT_COUNT);
    let start = get_u32(block, AT_CONTEXT_START);
    if usize::from(count) > AL_CONTEXT_PER_BLOCK
        || u64::from(start) + u64::from(count) > slots.into()
    {
        let reason = "context runs past the slot table or the block";
        return Err(invalid(
            "context count",
            AT_CONTEXT_COUNT,
            count.into(),
            reason,
        ));
    }
    let extent = |raw: u32| (raw != EMPTY).then_some(u64::from(raw));
    let mut parsed = Vec::with_capacity(updates);
    for index in 0..updates {
        let at = AT_UPDATES + index * UPDATE_LEN;
        let slot = get_u32(block, at);
        if slot >= slots {
            return Err(invalid(
                "update slot",
                at,
                slot.into(),
                "beyond the slot table",
            ));
        }
        let Some(added) = extent(get_u32(block, at + 4)) else {
            return Err(invalid(
                "update extent",
                at + 4,
                EMPTY.into(),
                "adds no extent",
            ));
        };
        let evicted = extent(get_u32(block, at + 8));
        parsed.push(AlUpdate {
            slot,
            added,
            evicted,
        });
    }
    let context = (0..usize::from(count))
        .map(|index| extent(get_u32(block, AT_CONTEXT + index * 4)))
        .collect();
    Ok(AlTransaction {
        seq: get_u64(block, AT_SEQ),
        slots,
        updates: parsed,
        context_start: start,
        context,
    })
}

/// What [`ActivityLog::begin_write`] tells the shim to do with a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlDecision {
    /// Every touched extent is hot on disk: submit the write now.
    Proceed,
    /// Write and flush this transaction, call `transaction_persisted(seq)`, then submit the
    /// write. The write is already counted in flight.
    PersistFirst(AlTransaction),
    /// The touched extents are in transaction `seq`, issued but not yet persisted: submit the
    /// write once `transaction_persisted(seq)` has been called. Already counted in flight.
    AfterPersist { seq: u64 },
    /// Nothing was recorded: a transaction is outstanding and this write needs another, or
    /// every slot it could use holds an extent with writes in flight. Retry after the next
    /// `transaction_persisted` or `end_write`.
    Wait,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    extent: u64,
    in_flight: u32,
    last_use: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    seq: u64,
    added: BTreeSet<u64>,
}

/// The in-memory activity log of a primary; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityLog {
    config: AlConfig,
    table: Vec<Option<Slot>>,
    /// extent -> slot index, for every occupied slot.
    index: BTreeMap<u64, usize>,
    next_seq: u64,
    pending: Option<Pending>,
    clock: u64,
}

/// What [`ActivityLog::recover`] rebuilt from the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Extents that may have had writes in flight at the crash, ascending: resync them.
    pub hot_extents: Vec<u64>,
    /// The newest valid transaction.
    pub last_seq: u64,
    /// The ring block that was torn (the one after the newest), reported for the log.
    pub torn_block: Option<u32>,
    config: AlConfig,
    table: Vec<Option<u64>>,
}

impl Recovered {
    /// The hot extents as byte ranges `(offset, len)`, adjacent extents merged: mark these
    /// out of sync in every peer bitmap after a primary crash.
    pub fn resync_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &extent in &self.hot_extents {
            let (offset, len) = self.config.extent_range(extent);
            match ranges.last_mut() {
                Some((start, run)) if *start + *run == offset => *run += len,
                _ => ranges.push((offset, len)),
            }
        }
        ranges
    }
}

impl ActivityLog {
    /// The log of a freshly formatted ring ([`ActivityLog::initial_ring`]): nothing hot.
    pub fn new(config: AlConfig) -> ActivityLog {
        ActivityLog {
            config,
            table: vec![None; config.slots as usize],
            index: BTreeMap::new(),
            next_seq: config.ring_blocks.into(),
            pending: None,
            clock: 0,
        }
    }

    /// The blocks to write into the ring at format (block `i` holds transaction `i`).
    pub fn initial_ring(config: &AlConfig) -> Vec<Block> {
        (0..u64::from(config.ring_blocks))
            .map(|seq| {
                let (context_start, count) = context_span(seq, config.slots);
                AlTransaction {
                    seq,
                    slots: config.slots,
                    updates: Vec::new(),
                    context_start,
                    context: vec![None; count as usize],
                }
                .encode()
            })
            .collect()
    }

    /// Continues after a crash from what [`recover`](Self::recover) found: the same hot set
    /// (nothing in flight), next transaction `last_seq + 1` (overwriting a torn block).
    pub fn resume(recovered: &Recovered) -> ActivityLog {
        let mut log = ActivityLog::new(recovered.config);
        for (slot, extent) in recovered.table.iter().enumerate() {
            if let Some(extent) = *extent {
                log.table[slot] = Some(Slot {
                    extent,
                    in_flight: 0,
                    last_use: 0,
                });
                log.index.insert(extent, slot);
            }
        }
        log.next_seq = recovered.last_seq.saturating_add(1);
        log
    }

    pub fn config(&self) -> &AlConfig {
        &self.config
    }

    /// The hot extents, ascending.
    pub fn hot_extents(&self) -> Vec<u64> {
        self.index.keys().copied().collect()
    }

    /// The outstanding transaction, if any.
    pub fn pending_seq(&self) -> Option<u64> {
        self.pending.as_ref().map(|pending| pending.seq)
    }

    /// Writes in flight into `extent`.
    pub fn in_flight(&self, extent: u64) -> u32 {
        self.index
            .get(&extent)
            .and_then(|&slot| self.table.get(slot))
            .and_then(Option::as_ref)
            .map_or(0, |slot| slot.in_flight)
    }

    /// The extents a byte range touches; `None` when empty.
    fn touched(&self, offset: u64, len: u64) -> Result<Option<RangeInclusive<u64>>, MetaError> {
        let data_size = self.config.data_size;
        let end = offset.checked_add(len).filter(|&end| end <= data_size);
        let Some(end) = end else {
            return Err(MetaError::OutOfBounds {
                offset,
                len,
                data_size,
            });
        };
        if len == 0 {
            return Ok(None);
        }
        let extents = offset / self.config.extent_size..=(end - 1) / self.config.extent_size;
        let count = extents.end() - extents.start() + 1;
        let max = self.config.max_extents_per_write();
        if count > max {
            return Err(MetaError::WriteTooLarge {
                offset,
                len,
                extents: count,
                max,
            });
        }
        Ok(Some(extents))
    }

    /// Decides whether a write of `len` bytes at `offset` may be submitted; see
    /// [`AlDecision`]. Every decision but `Wait` counts the write in flight until
    /// [`end_write`](Self::end_write) with the same range.
    pub fn begin_write(&mut self, offset: u64, len: u64) -> Result<AlDecision, MetaError> {
        let Some(extents) = self.touched(offset, len)? else {
            return Ok(AlDecision::Proceed);
        };
        let mut cold = Vec::new();
        let mut awaits = None;
        for extent in extents.clone() {
            if !self.index.contains_key(&extent) {
                cold.push(extent);
            } else if let Some(pending) = &self.pending {
                if pending.added.contains(&extent) {
                    awaits = Some(pending.seq);
                }
            }
        }
        if cold.is_empty() {
            self.reserve(extents);
            return Ok(match awaits {
                Some(seq) => AlDecision::AfterPersist { seq },
                None => AlDecision::Proceed,
            });
        }
        if self.pending.is_some() {
            return Ok(AlDecision::Wait);
        }
        let Some(slots) = self.free_slots(cold.len(), &extents) else {
            return Ok(AlDecision::Wait);
        };
        let transaction = self.record(&cold, &slots);
        self.reserve(extents);
        Ok(AlDecision::PersistFirst(transaction))
    }

    /// `needed` slots for new extents: empty ones first, then the least recently used
    /// extents with nothing in flight (never one the write itself touches).
    fn free_slots(&self, needed: usize, touched: &RangeInclusive<u64>) -> Option<Vec<usize>> {
        let mut chosen: Vec<usize> = (self.table.iter().enumerate())
            .filter(|(_, slot)| slot.is_none())
            .map(|(index, _)| index)
            .take(needed)
            .collect();
        if chosen.len() < needed {
            let mut victims: Vec<(u64, usize)> = (self.table.iter().enumerate())
                .filter_map(|(index, slot)| {
                    let slot = slot.as_ref()?;
                    let idle = slot.in_flight == 0 && !touched.contains(&slot.extent);
                    idle.then_some((slot.last_use, index))
                })
                .collect();
            victims.sort_unstable();
            let missing = needed - chosen.len();
            chosen.extend(victims.into_iter().take(missing).map(|(_, index)| index));
        }
        (chosen.len() == needed).then_some(chosen)
    }

    /// Puts `cold[i]` into slot `slots[i]` and returns the transaction recording it.
    fn record(&mut self, cold: &[u64], slots: &[usize]) -> AlTransaction {
        let seq = self.next_seq;
        let mut updates = Vec::with_capacity(cold.len());
        for (&extent, &slot) in cold.iter().zip(slots) {
            let fresh = Slot {
                extent,
                in_flight: 0,
                last_use: 0,
            };
            let evicted = self.table[slot].replace(fresh).map(|old| old.extent);
            if let Some(old) = evicted {
                self.index.remove(&old);
            }
            self.index.insert(extent, slot);
            updates.push(AlUpdate {
                slot: slot as u32,
                added: extent,
                evicted,
            });
        }
        let (context_start, count) = context_span(seq, self.config.slots);
        let span = context_start as usize..(context_start + count) as usize;
        let context = self.table[span]
            .iter()
            .map(|slot| slot.as_ref().map(|slot| slot.extent))
            .collect();
        self.next_seq += 1;
        self.pending = Some(Pending {
            seq,
            added: cold.iter().copied().collect(),
        });
        AlTransaction {
            seq,
            slots: self.config.slots,
            updates,
            context_start,
            context,
        }
    }

    fn reserve(&mut self, extents: RangeInclusive<u64>) {
        for extent in extents {
            self.clock += 1;
            let slot = self
                .index
                .get(&extent)
                .and_then(|&slot| self.table.get_mut(slot));
            if let Some(Some(slot)) = slot {
                slot.in_flight = slot.in_flight.saturating_add(1);
                slot.last_use = self.clock;
            }
        }
    }

    /// The outstanding transaction `seq` is on stable storage: writes waiting for it may go.
    pub fn transaction_persisted(&mut self, seq: u64) -> Result<(), MetaError> {
        match &self.pending {
            None => Err(MetaError::AlNothingPending { found: seq }),
            Some(pending) if pending.seq != seq => Err(MetaError::AlWrongSeq {
                expected: pending.seq,
                found: seq,
            }),
            Some(_) => {
                self.pending = None;
                Ok(())
            }
        }
    }

    /// A write admitted by [`begin_write`](Self::begin_write) completed (or was abandoned).
    /// Refused, changing nothing, if some touched extent has no write in flight.
    pub fn end_write(&mut self, offset: u64, len: u64) -> Result<(), MetaError> {
        let Some(extents) = self.touched(offset, len)? else {
            return Ok(());
        };
        if let Some(extent) = extents.clone().find(|&extent| self.in_flight(extent) == 0) {
            return Err(MetaError::AlEndWithoutBegin { extent });
        }
        for extent in extents {
            let slot = self
                .index
                .get(&extent)
                .and_then(|&slot| self.table.get_mut(slot));
            if let Some(Some(slot)) = slot {
                slot.in_flight -= 1;
            }
        }
        Ok(())
    }
}

impl ActivityLog {
    /// Rebuilds the hot set from the ring's blocks (all `ring_blocks` of them, in ring order)
    /// after a crash.
    ///
    /// Valid transactions must hold consecutive sequence numbers, each in block
    /// `seq % ring_blocks`. The one block allowed to be unreadable is the one after the
    /// newest: the transaction being written when the crash came, whose writes had not been
    /// submitted. Any other unreadable or out-of-place block is corruption and reported.
    pub fn recover(config: &AlConfig, ring: &[&[u8]]) -> Result<Recovered, MetaError> {
        let blocks = config.ring_blocks as usize;
        if ring.len() != blocks {
            return Err(MetaError::AlRingLength {
                expected: blocks,
                found: ring.len(),
            });
        }
        let decoded: Vec<Result<AlTransaction, MetaError>> =
            ring.iter().map(|bytes| decode_for(config, bytes)).collect();
        let window = pick_window(config, decoded)?;
        let newest = window.transactions.last().map_or(0, |last| last.seq);
        let table = replay(config, &window.transactions)?;
        let mut hot_extents: Vec<u64> = table.iter().flatten().copied().collect();
        hot_extents.sort_unstable();
        Ok(Recovered {
            hot_extents,
            last_seq: newest,
            torn_block: window.torn_block,
            config: *config,
            table,
        })
    }
}

/// A block decoded and checked against the configuration.
fn decode_for(config: &AlConfig, bytes: &[u8]) -> Result<AlTransaction, MetaError> {
    let transaction = AlTransaction::decode(bytes)?;
    if transaction.slots != config.slots {
        let reason = "differs from the configured slot count";
        return Err(invalid("slots", AT_SLOTS, transaction.slots.into(), reason));
    }
    let (start, count) = context_span(transaction.seq, config.slots);
    if (transaction.context_start, transaction.context.len()) != (start, count as usize) {
        let reason = "not the context slice this sequence number carries";
        let found = transaction.context_start.into();
        return Err(invalid("context start", AT_CONTEXT_START, found, reason));
    }
    // Every extent number with the byte offset it was read from.
    let updates = transaction
        .updates
        .iter()
        .enumerate()
        .flat_map(|(index, update)| {
            let at = AT_UPDATES + index * UPDATE_LEN;
            [(at + 4, Some(update.added)), (at + 8, update.evicted)]
        });
    let context = (transaction.context.iter().enumerate())
        .map(|(index, extent)| (AT_CONTEXT + index * 4, *extent));
    let extents = config.extent_count();
    for (at, extent) in updates.chain(context) {
        if let Some(extent) = extent.filter(|&extent| extent >= extents) {
            let reason = "beyond the last extent of the data area";
            return Err(invalid("extent", at, extent, reason));
        }
    }
    Ok(transaction)
}

struct Window {
    /// Ascending by sequence number.
    transactions: Vec<AlTransaction>,
    torn_block: Option<u32>,
}

/// Checks the ring's shape and returns the valid transactions in sequence order.
fn pick_window(
    config: &AlConfig,
    decoded: Vec<Result<AlTransaction, MetaError>>,
) -> Result<Window, MetaError> {
    let ring = u64::from(config.ring_blocks);
    let newest = decoded
        .iter()
        .flatten()
        .map(|transaction| transaction.seq)
        .max();
    let Some(newest) = newest else {
        let first = decoded.into_iter().find_map(Result::err);
        let first = first.unwrap_or(MetaError::AlRingLength {
            expected: ring as usize,
            found: 0,
        });
        return Err(MetaError::AlRingEmpty {
            first: Box::new(MetaError::AlRingBlock {
                block: 0,
                offset: config.block_offset(0),
                source: Box::new(first),
            }),
        });
    };
    if newest < ring - 1 {
        return Err(MetaError::AlRingUnformatted {
            newest,
            ring_blocks: config.ring_blocks,
            first: ring - 1,
        });
    }
    let torn = config.ring_block(newest + 1);
    let mut window = Window {
        transactions: Vec::with_capacity(decoded.len()),
        torn_block: None,
    };
    for (block, result) in decoded.into_iter().enumerate() {
        let block = block as u32;
        // The sequence number this block holds in an intact ring ending at `newest`.
        let expected = newest - (newest - u64::from(block)) % ring;
        let offset = config.ring_offset + u64::from(block) * META_BLOCK as u64;
        match result {
            Ok(transaction) if transaction.seq == expected => {
                window.transactions.push(transaction);
            }
            Ok(transaction) => {
                return Err(MetaError::AlRingOutOfOrder {
                    block,
                    offset,
                    expected,
                    found: transaction.seq,
                })
            }
            Err(_) if block == torn => window.torn_block = Some(block),
            Err(source) => {
                return Err(MetaError::AlRingBlock {
                    block,
                    offset,
                    source: Box::new(source),
                })
            }
        }
    }
    window
        .transactions
        .sort_by_key(|transaction| transaction.seq);
    Ok(window)
}

/// Applies the transactions in order; every slot must end up described.
fn replay(
    config: &AlConfig,
    transactions: &[AlTransaction],
) -> Result<Vec<Option<u64>>, MetaError> {
    // None: not yet described by any transaction; Some(None): described as empty.
    let mut table: Vec<Option<Option<u64>>> = vec![None; config.slots as usize];
    for transaction in transactions {
        for update in &transaction.updates {
            if let Some(entry) = table.get_mut(update.slot as usize) {
                *entry = Some(Some(update.added));
            }
        }
        let start = transaction.context_start as usize;
        for (entry, extent) in table.iter_mut().skip(start).zip(&transaction.context) {
            *entry = Some(*extent);
        }
    }
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut rebuilt = Vec::with_capacity(table.len());
    for (slot, entry) in table.into_iter().enumerate() {
        let slot = slot as u32;
        let Some(extent) = entry else {
            return Err(MetaError::AlRingIncomplete { slot });
        };
        if let Some(extent) = extent {
            if let Some(first) = seen.insert(extent, slot) {
                return Err(MetaError::AlDuplicateExtent {
                    extent,
                    first,
                    second: slot,
                });
            }
        }
        rebuilt.push(extent);
    }
    Ok(rebuilt)
}
