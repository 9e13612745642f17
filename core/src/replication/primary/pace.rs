//! The resync's pace: a controller that gives resync what bandwidth the foreground leaves.
//!
//! Why this exists: a resync competes with the client for the same disks and link. A fixed
//! cap is either too slow when the volume is idle or too heavy when it is busy. Instead the
//! resync behaves like a background transfer (the idea of LEDBAT): the signal is the mean
//! latency of the client's writes over a control period, compared with the lowest period
//! mean seen recently (the *base*, what the foreground gets without contention). While the
//! latency stays within a margin of the base, the rate grows by a fixed step each period;
//! past the margin it shrinks by 30 %; a period without client writes doubles it. The rate
//! stays between a floor (the resync always progresses) and the hard maximum
//! ([`super::Tuning::resync_max_rate`]).
//!
//! Time and latencies are in milliseconds (the core's clock); a period's mean over many
//! requests still resolves fractions of one, so means are kept in microseconds.

use std::collections::VecDeque;

/// Periods whose means the base is the minimum of (with 200 ms periods: 10 s).
pub const BASE_PERIODS: usize = 50;
/// Latency above the base that still counts as "no contention": half the base, at least
/// this many microseconds.
pub const MIN_MARGIN_US: u64 = 1_000;

/// The controller's state; [`ResyncPace::rate`] is the resync rate in force.
#[derive(Clone, Debug)]
pub(super) struct ResyncPace {
    rate: u64,
    min: u64,
    max: u64,
    period_ms: u64,
    period_start: u64,
    writes: u64,
    latency_sum_ms: u64,
    /// Mean write latency of the recent periods that had writes, in microseconds.
    recent: VecDeque<u64>,
}

impl ResyncPace {
    /// A pace between `min` and `max` bytes per second, deciding every `period_ms`.
    pub(super) fn new(min: u64, max: u64, period_ms: u64) -> ResyncPace {
        let min = min.min(max);
        ResyncPace {
            rate: (max / 4).max(min),
            min,
            max,
            period_ms: period_ms.max(1),
            period_start: 0,
            writes: 0,
            latency_sum_ms: 0,
            recent: VecDeque::with_capacity(BASE_PERIODS),
        }
    }

    /// Bytes per second the resync may use now.
    pub(super) fn rate(&self) -> u64 {
        self.rate
    }

    /// A client write completed `latency_ms` after it arrived.
    pub(super) fn write_completed(&mut self, latency_ms: u64) {
        self.writes += 1;
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(latency_ms);
    }

    /// Time passed: every period that ended decides the next rate.
    pub(super) fn tick(&mut self, now: u64) {
        if now < self.period_start.saturating_add(self.period_ms) {
            return;
        }
        self.decide();
        // Periods that passed with nothing measured (a long gap) count as one idle period.
        self.period_start = now;
    }

    fn decide(&mut self) {
        if self.writes == 0 {
            self.rate = self.rate.saturating_mul(2).clamp(self.min, self.max);
            return;
        }
        let mean_us = self.latency_sum_ms.saturating_mul(1_000) / self.writes;
        self.writes = 0;
        self.latency_sum_ms = 0;
        if self.recent.len() == BASE_PERIODS {
            self.recent.pop_front();
        }
        self.recent.push_back(mean_us);
        let base = self.recent.iter().copied().min().unwrap_or(mean_us);
        let target = base + (base / 2).max(MIN_MARGIN_US);
        self.rate = if mean_us <= target {
            self.rate.saturating_add(self.max / 16)
        } else {
            self.rate / 10 * 7
        }
        .clamp(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Runs `periods` periods of 100 ms with `writes` writes of `latency_ms` each.
    fn run(pace: &mut ResyncPace, now: &mut u64, periods: u64, writes: u64, latency_ms: u64) {
        for _ in 0..periods {
            for _ in 0..writes {
                pace.write_completed(latency_ms);
            }
            *now += 100;
            pace.tick(*now);
        }
    }

    #[test]
    fn an_idle_volume_lets_the_resync_reach_the_hard_maximum_and_no_more() {
        let mut pace = ResyncPace::new(8 * MIB, 1024 * MIB, 100);
        let mut now = 0;
        run(&mut pace, &mut now, 10, 0, 0);
        assert_eq!(pace.rate(), 1024 * MIB);
    }

    #[test]
    fn contention_slows_the_resync_down_to_its_floor_and_it_recovers_after() {
        let mut pace = ResyncPace::new(8 * MIB, 1024 * MIB, 100);
        let mut now = 0;
        run(&mut pace, &mut now, 10, 0, 0);
        // The foreground alone: 1 ms writes set the base.
        run(&mut pace, &mut now, 5, 50, 1);
        assert_eq!(pace.rate(), 1024 * MIB, "no contention: full speed");
        // The resync hurts: writes take 5 ms.
        run(&mut pace, &mut now, 3, 50, 5);
        let after_three = pace.rate();
        assert!(after_three < 1024 * MIB / 2, "{after_three}");
        run(&mut pace, &mut now, 30, 50, 5);
        assert_eq!(pace.rate(), 8 * MIB, "never below the floor");
        // Latency back at the base: the rate grows again, one step per period.
        run(&mut pace, &mut now, 4, 50, 1);
        assert_eq!(pace.rate(), 8 * MIB + 4 * (1024 * MIB / 16));
    }

    #[test]
    fn latency_within_the_margin_of_the_base_is_not_contention() {
        let mut pace = ResyncPace::new(8 * MIB, 1024 * MIB, 100);
        let mut now = 0;
        run(&mut pace, &mut now, 5, 50, 4);
        let before = pace.rate();
        // 5 ms against a 4 ms base: within max(2 ms, 1 ms) of it.
        run(&mut pace, &mut now, 2, 50, 5);
        assert!(pace.rate() >= before, "{} < {before}", pace.rate());
        // 7 ms is beyond 4 + 2.
        run(&mut pace, &mut now, 1, 50, 7);
        assert!(pace.rate() < before);
    }

    #[test]
    fn the_base_forgets_periods_older_than_its_window() {
        let mut pace = ResyncPace::new(8 * MIB, 1024 * MIB, 100);
        let mut now = 0;
        run(&mut pace, &mut now, 1, 50, 1);
        // The workload changes for good: 10 ms writes are its new normal.
        run(&mut pace, &mut now, BASE_PERIODS as u64 - 1, 50, 10);
        assert_eq!(
            pace.rate(),
            8 * MIB,
            "while the old base is remembered it is contention"
        );
        run(&mut pace, &mut now, 20, 50, 10);
        assert_eq!(
            pace.rate(),
            1024 * MIB,
            "10 ms is the base now, not contention"
        );
    }

    #[test]
    fn a_floor_above_the_maximum_is_the_maximum() {
        let pace = ResyncPace::new(64 * MIB, 16 * MIB, 100);
        assert_eq!(pace.rate(), 16 * MIB);
    }
}
