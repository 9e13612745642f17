//! What each peer acknowledged but may still hold only in its volatile write cache.
//!
//! Why this exists: a secondary acks a plain write once it is in its disk's cache (DESIGN.md
//! §5: a plain write is accepted, FLUSH and FUA are durable). If that secondary then loses
//! power, the cached writes vanish, yet the primary's bitmap for it says it has them. The
//! simulator found this (seeds 1143, 1156, 1184): the leg was resynced incompletely,
//! committed UpToDate, and a later failover onto it lost acknowledged writes.
//!
//! So the primary keeps, per peer, the writes the peer acked that no flush it acked covers yet
//! (like DRBD's transfer log up to the last barrier ack). When the link to the peer goes down
//! for any reason, those ranges join the peer's out-of-sync bitmap, and its resync rewrites
//! them. A flush the peer acks clears every write sent before it; FUA writes
//! are durable when acked and never recorded. The primary sends a background flush to a peer
//! with unflushed ranges every [`super::Tuning::peer_flush_interval_ms`], so the record stays
//! small and a disconnect rarely costs more than the last second of writes.
//!
//! Memory is bounded: past [`MAX_UNFLUSHED_RANGES`] ranges the two closest neighbours merge,
//! which only ever makes the record larger than the truth (more resync), never smaller.

/// Ranges kept per record before neighbours are merged.
pub const MAX_UNFLUSHED_RANGES: usize = 1024;

/// Sorted, disjoint, non-adjacent byte ranges `(offset, len)`, at most a bounded number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.ranges.len()
    }

    pub(super) fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Adds `[offset, offset + len)`, merging what it overlaps or touches; past the bound the
    /// two ranges with the smallest gap between them become one.
    pub(super) fn insert(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut start, mut end) = (offset, offset.saturating_add(len));
        let first = self.ranges.partition_point(|&(o, l)| o + l < start);
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].0 <= end {
            let (o, l) = self.ranges[last];
            start = start.min(o);
            end = end.max(o + l);
            last += 1;
        }
        self.ranges
            .splice(first..last, std::iter::once((start, end - start)));
        if self.ranges.len() > MAX_UNFLUSHED_RANGES {
            self.merge_closest();
        }
    }

    fn merge_closest(&mut self) {
        let gap = |i: usize| {
            let (o, l) = self.ranges[i];
            self.ranges[i + 1].0 - (o + l)
        };
        let Some(i) = (0..self.ranges.len() - 1).min_by_key(|&i| gap(i)) else {
            return;
        };
        let (o, _) = self.ranges[i];
        let (next_o, next_l) = self.ranges.remove(i + 1);
        self.ranges[i] = (o, next_o + next_l - o);
    }

    pub(super) fn absorb(&mut self, other: RangeSet) {
        for (offset, len) in other.ranges {
            self.insert(offset, len);
        }
    }
}

/// One peer's acked-but-maybe-cached writes, split by the flush that will cover them.
///
/// Messages to a peer are numbered in the order they are sent on its link (`order`). The
/// secondary submits a flush only after every data operation that arrived before it has
/// completed, so a flush covers every write *sent* before it, whenever that write is acked.
#[derive(Clone, Debug, Default)]
pub(super) struct Unflushed {
    /// Acked, and not sent before the tracked flush.
    open: RangeSet,
    /// The tracked flush in flight: its seq, its send order, and the acked writes it covers.
    flushing: Option<Flushing>,
    /// When a flush last became the tracked one.
    rotated_at: u64,
}

#[derive(Clone, Debug)]
struct Flushing {
    seq: u64,
    order: u64,
    covers: RangeSet,
}

impl Unflushed {
    /// The peer acked a write of `range`, sent as number `order`, that may sit in its cache.
    pub(super) fn acked(&mut self, (offset, len): (u64, u64), order: u64) {
        match &mut self.flushing {
            Some(flushing) if order < flushing.order => flushing.covers.insert(offset, len),
            _ => self.open.insert(offset, len),
        }
    }

    /// A flush went to the peer as `seq`, sent as number `order`: if no tracked flush is in
    /// flight, it covers every write acked so far (and those sent before it, acked later).
    pub(super) fn flush_sent(&mut self, seq: u64, order: u64, now: u64) {
        if self.flushing.is_none() {
            let covers = std::mem::take(&mut self.open);
            self.flushing = Some(Flushing { seq, order, covers });
            self.rotated_at = now;
        }
    }

    /// The peer acked flush `seq`: what it covered is durable there.
    pub(super) fn flush_acked(&mut self, seq: u64) {
        if self.flushing.as_ref().is_some_and(|f| f.seq == seq) {
            self.flushing = None;
        }
    }

    /// Whether a background flush is due: unflushed ranges, no tracked flush in flight, and
    /// `interval` since the last one (or the record is half full).
    pub(super) fn flush_due(&self, now: u64, interval: u64) -> bool {
        self.flushing.is_none()
            && !self.open.is_empty()
            && (now.saturating_sub(self.rotated_at) >= interval
                || self.open.len() >= MAX_UNFLUSHED_RANGES / 2)
    }

    /// The link went down: everything not known durable, for the bitmap; the record restarts
    /// empty.
    pub(super) fn take_all(&mut self, now: u64) -> RangeSet {
        let mut all = std::mem::take(&mut self.open);
        if let Some(flushing) = self.flushing.take() {
            all.absorb(flushing.covers);
        }
        self.rotated_at = now;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(o, l) in ranges {
            s.insert(o, l);
        }
        s
    }

    #[test]
    fn inserts_merge_overlapping_and_touching_ranges() {
        let s = set(&[(100, 10), (0, 10), (10, 5), (200, 50), (105, 100)]);
        assert_eq!(s.ranges(), &[(0, 15), (100, 150)]);
        let s = set(&[(50, 10), (0, 10), (20, 10)]);
        assert_eq!(s.ranges(), &[(0, 10), (20, 10), (50, 10)]);
        assert!(set(&[(5, 0)]).is_empty());
    }

    #[test]
    fn past_the_bound_the_closest_neighbours_merge_into_a_superset() {
        let mut s = RangeSet::default();
        for i in 0..MAX_UNFLUSHED_RANGES as u64 {
            s.insert(i * 100, 10);
        }
        s.insert(MAX_UNFLUSHED_RANGES as u64 * 100 + 5, 10);
        assert_eq!(s.len(), MAX_UNFLUSHED_RANGES);
        for i in 0..=MAX_UNFLUSHED_RANGES as u64 {
            let at = if i == MAX_UNFLUSHED_RANGES as u64 {
                i * 100 + 5
            } else {
                i * 100
            };
            let covered = s.ranges().iter().any(|&(o, l)| o <= at && at + 10 <= o + l);
            assert!(covered, "range at {at} lost by the merge");
        }
    }

    #[test]
    fn a_flush_ack_clears_only_what_was_acked_before_the_flush_was_sent() {
        let mut u = Unflushed::default();
        u.acked((0, 4096), 1);
        u.flush_sent(7, 3, 10);
        u.acked((4096, 4096), 2); // sent before the flush, acked after it was sent
        u.acked((8192, 4096), 4);
        u.flush_sent(8, 5, 11); // a second flush while 7 is in flight does not rotate
        u.flush_acked(8);
        u.flush_acked(7);
        let left = u.take_all(12);
        assert_eq!(left.ranges(), &[(8192, 4096)]);
        assert!(u.take_all(13).is_empty());
    }

    #[test]
    fn a_lost_link_returns_the_open_and_the_flushing_ranges() {
        let mut u = Unflushed::default();
        u.acked((0, 4096), 1);
        u.flush_sent(3, 2, 0);
        u.acked((4096, 4096), 3);
        assert_eq!(u.take_all(1).ranges(), &[(0, 8192)]);
    }

    #[test]
    fn a_background_flush_is_due_after_the_interval_only_with_unflushed_ranges() {
        let mut u = Unflushed::default();
        assert!(!u.flush_due(5_000, 1_000));
        u.acked((0, 4096), 1);
        assert!(!u.flush_due(999, 1_000));
        assert!(u.flush_due(1_000, 1_000));
        u.flush_sent(1, 2, 1_000);
        u.acked((4096, 4096), 3);
        assert!(!u.flush_due(5_000, 1_000), "one tracked flush at a time");
        u.flush_acked(1);
        assert!(u.flush_due(5_000, 1_000));
    }
}
