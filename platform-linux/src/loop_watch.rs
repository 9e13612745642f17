//! Tells the operator when the daemon's event loop stalls, and why.
//!
//! Why: the loop sends heartbeats and lease pings. When it does not run for about a second the
//! node loses its lease and self-fences its groups, and its peers elect another leader. Seen
//! from outside that looks like a network fault; this watch names the real cause in the log
//! (as corosync's "process was not scheduled" warning does): a handler that took too long, or
//! ticks that did not arrive because the process was paused or starved of CPU.

use std::time::{Duration, Instant};

/// The ticker fires every 10 ms; a gap this long means the loop could not run.
const TICK_GAP_WARN: Duration = Duration::from_millis(300);
/// One event's handling (plus carrying out the core's actions) should take microseconds.
const HANDLER_WARN: Duration = Duration::from_millis(100);

/// Watches one event loop.
pub struct LoopWatch {
    last_tick: Option<Instant>,
}

impl Default for LoopWatch {
    fn default() -> Self {
        LoopWatch::new()
    }
}

impl LoopWatch {
    pub fn new() -> LoopWatch {
        LoopWatch { last_tick: None }
    }

    /// The ticker fired at `now`; warns if the previous tick was too long ago.
    pub fn ticked(&mut self, now: Instant) {
        if let Some(warning) = self.tick_gap(now) {
            tracing::warn!("{warning}");
        }
    }

    /// Handling `event` took `took`; warns if that is long enough to hold heartbeats back.
    pub fn handled(&self, event: &str, took: Duration) {
        if let Some(warning) = slow_handler(event, took) {
            tracing::warn!("{warning}");
        }
    }

    fn tick_gap(&mut self, now: Instant) -> Option<String> {
        let gap = self
            .last_tick
            .map(|last| now.saturating_duration_since(last));
        self.last_tick = Some(now);
        let gap = gap.filter(|gap| *gap > TICK_GAP_WARN)?;
        Some(format!(
            "the event loop did not run for {} ms (the process was paused, starved of CPU or \
             blocked): no heartbeats or lease pings went out meanwhile",
            gap.as_millis()
        ))
    }
}

fn slow_handler(event: &str, took: Duration) -> Option<String> {
    (took > HANDLER_WARN).then(|| {
        format!(
            "the event loop spent {} ms on {event}: heartbeats and lease pings waited meanwhile",
            took.as_millis()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_ticks_are_quiet_and_a_gap_is_named_with_its_length() {
        let start = Instant::now();
        let mut watch = LoopWatch::new();
        assert_eq!(
            watch.tick_gap(start),
            None,
            "the first tick has nothing to compare"
        );
        let mut now = start;
        for _ in 0..10 {
            now += Duration::from_millis(10);
            assert_eq!(watch.tick_gap(now), None);
        }
        now += Duration::from_millis(950);
        let warning = watch.tick_gap(now).expect("a 950 ms gap is a stall");
        assert!(warning.contains("did not run for 950 ms"), "{warning}");
        now += Duration::from_millis(10);
        assert_eq!(
            watch.tick_gap(now),
            None,
            "the next regular tick is quiet again"
        );
    }

    #[test]
    fn a_slow_handler_is_named() {
        assert_eq!(slow_handler("a peer frame", Duration::from_millis(3)), None);
        let warning = slow_handler("a log write", Duration::from_millis(420)).expect("slow");
        assert!(warning.contains("420 ms on a log write"), "{warning}");
    }
}
