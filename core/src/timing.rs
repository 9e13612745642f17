//! The time constants of the cluster, in one place, with the reasons for their defaults.
//!
//! All values are milliseconds on the caller's monotonic clock (the core never reads one).
//! See docs/architecture.md ("Timing") for the reasoning in prose.

use serde::{Deserialize, Serialize};

/// How often things happen and how long silence is tolerated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// One Raft logical tick.
    pub tick_ms: u64,
    /// Raft election timeout in ticks (randomised by raft-rs in `[n, 2n)`).
    pub election_ticks: usize,
    /// Raft leader heartbeat in ticks.
    pub heartbeat_ticks: usize,
    /// How often every node pings every other node (liveness and leases).
    pub ping_interval_ms: u64,
    /// A peer silent for longer than this is shown offline.
    pub node_timeout_ms: u64,
    /// A lease lasts this long after the ping round that a quorum confirmed was sent.
    pub lease_timeout_ms: u64,
    /// Take a state snapshot and drop older log entries once this many entries were applied.
    pub compact_every: u64,
}

impl Default for Timing {
    /// Defaults, justified:
    /// - 50 ms ticks, election after 10..20 ticks (0.5..1.0 s): a killed leader is replaced in
    ///   about a second, well inside the 2 s promise, while a 100 ms heartbeat (2 ticks) gives
    ///   five heartbeats per minimum election timeout, so one delayed packet never starts an
    ///   election.
    /// - pings every 150 ms and `node_timeout` 1000 ms: a peer must miss six pings in a row
    ///   before it is shown offline, which survives scheduling stalls of a loaded 2-core box,
    ///   yet stays under the 1.5 s ceiling.
    /// - `lease_timeout` 1000 ms: renewed every ping, so it only lapses after ~6 lost rounds;
    ///   failover may only happen after `lease_timeout` + a margin, so it bounds failover time.
    fn default() -> Self {
        Timing {
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            ping_interval_ms: 150,
            node_timeout_ms: 1000,
            lease_timeout_ms: 1000,
            compact_every: 1000,
        }
    }
}

/// A timing combination that cannot work, with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timing: {0}")]
pub struct TimingError(pub String);

impl Timing {
    /// Refuses combinations that would make liveness or leases meaningless.
    pub fn validate(&self) -> Result<(), TimingError> {
        let fail = |why: String| Err(TimingError(why));
        if self.tick_ms == 0 || self.ping_interval_ms == 0 || self.compact_every == 0 {
            return fail("tick_ms, ping_interval_ms and compact_every must be above zero".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return fail(format!(
                "election_ticks ({}) must exceed heartbeat_ticks ({}), which must be above zero",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.node_timeout_ms < 2 * self.ping_interval_ms {
            return fail(format!(
                "node_timeout_ms ({}) must be at least two ping intervals ({})",
                self.node_timeout_ms,
                2 * self.ping_interval_ms
            ));
        }
        if self.lease_timeout_ms < 2 * self.ping_interval_ms {
            return fail(format!(
                "lease_timeout_ms ({}) must be at least two ping intervals ({})",
                self.lease_timeout_ms,
                2 * self.ping_interval_ms
            ));
        }
        Ok(())
    }
}

/// The daemon's watchdog (`platform-linux/src/watchdog.rs`, modelled by the simulator): it
/// acts this long after the lease the daemon last announced ran out (a slow daemon is not a
/// frozen one; its own self-fencing goes first).
pub const WATCHDOG_SLACK_MS: u64 = 200;
/// A daemon that runs resources but never announced a lease: silent this long, the watchdog
/// takes it for frozen.
pub const WATCHDOG_SILENT_WITHOUT_LEASE_MS: u64 = 1000;
/// The watchdog never acts on a daemon it heard from this recently (pets come every 100 ms).
pub const WATCHDOG_SILENT_MIN_MS: u64 = 200;
/// How often the watchdog looks at the time when no pet arrives.
pub const WATCHDOG_POLL_MS: u64 = 50;
/// How long after the watchdog killed a frozen daemon a service manager starts it again.
pub const WATCHDOG_RESTART_MS: u64 = 1000;
/// What the fence itself may take: SIGKILL of the daemon (its exec services follow through
/// PDEATHSIG as the kernel reaps it), one `ip addr del` per virtual IP and one
/// `systemctl kill` per systemd unit (a fork and exec each: milliseconds, 100 on a loaded box).
pub const WATCHDOG_FENCE_MS: u64 = 100;
/// Kept free between the end of the fence and the earliest takeover: scheduling jitter of the
/// watchdog's own timer on a loaded machine.
pub const WATCHDOG_SAFETY_MS: u64 = 50;

/// How long a node has, after its lease lapsed, before another node may take its groups over:
/// the leader fences a holder it last heard from at `t` at `t + failover_timeout`, and the
/// holder's lease lapsed by `t + lease_timeout` (`scheduler::min_failover_timeout_ms`). So
/// this is `FAILOVER_MARGIN_MS + ping_interval_ms`, 650 ms by default, never 500 or less. (The
/// cluster's arithmetic assumes every node runs the same timing.)
pub fn self_fence_budget_ms(timing: &Timing) -> u64 {
    crate::scheduler::default_failover_timeout_ms(timing).saturating_sub(timing.lease_timeout_ms)
}

/// Escalation (issue #5): a daemon that still pets, but still holds running resources this
/// long after the lease it announced ran out, is fenced like a frozen one: a stop failed or
/// hangs (Pacemaker fences a node whose stop failed). It is the budget minus one poll of the
/// watchdog, the fence and the safety margin, so the fence is over strictly before any other
/// node may take over: 450 ms by default. Why not sooner: an ordinary stop without a lease
/// takes up to ~350 ms after the lapse (writes held at the lapse wait `LEASE_WAIT_AFTER_LOSS`,
/// 300 ms, then fail and the file system unmounts), and the daemon pets at once when it stops
/// holding; escalating sooner kills healthy self-fencing nodes.
pub fn watchdog_escalate_ms(timing: &Timing) -> u64 {
    self_fence_budget_ms(timing)
        .saturating_sub(WATCHDOG_POLL_MS + WATCHDOG_FENCE_MS + WATCHDOG_SAFETY_MS)
}

// Whatever the timing, escalation comes after the frozen rule's slack, and a frozen daemon is
// fenced within the smallest budget (`FAILOVER_MARGIN_MS`, checked by
// `scheduler::check_failover_timeout`). The lease end the watchdog uses is the one the daemon
// measured on the shared monotonic clock, so the pipe adds no delay to it.
const _: () = assert!(
    crate::scheduler::FAILOVER_MARGIN_MS
        > WATCHDOG_SLACK_MS + WATCHDOG_POLL_MS + WATCHDOG_FENCE_MS + WATCHDOG_SAFETY_MS
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_within_promises() {
        let timing = Timing::default();
        assert_eq!(timing.validate(), Ok(()));
        assert!(timing.node_timeout_ms <= 1500);
        // Worst-case election timeout stays well below the 2 s leader-replacement promise.
        assert!(2 * timing.election_ticks as u64 * timing.tick_ms < 2000);
    }

    #[test]
    fn the_watchdog_fences_before_the_failover_timeout_runs_out() {
        for ping_interval_ms in [1, 50, 150, 400] {
            let timing = Timing {
                ping_interval_ms,
                ..Timing::default()
            };
            let budget =
                crate::scheduler::default_failover_timeout_ms(&timing) - timing.lease_timeout_ms;
            assert_eq!(self_fence_budget_ms(&timing), budget);
            let escalated = watchdog_escalate_ms(&timing) + WATCHDOG_POLL_MS + WATCHDOG_FENCE_MS;
            assert!(
                escalated < budget,
                "ping {ping_interval_ms}: {escalated} >= {budget}"
            );
            let frozen = WATCHDOG_SLACK_MS + WATCHDOG_POLL_MS + WATCHDOG_FENCE_MS;
            assert!(frozen < budget, "ping {ping_interval_ms}");
            assert!(watchdog_escalate_ms(&timing) > WATCHDOG_SLACK_MS);
        }
        assert_eq!(watchdog_escalate_ms(&Timing::default()), 450);
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        let timing = Timing {
            node_timeout_ms: 100,
            ..Timing::default()
        };
        let error = timing.validate().unwrap_err();
        assert!(error.to_string().contains("node_timeout_ms"), "{error}");
        let timing = Timing {
            election_ticks: 2,
            ..Timing::default()
        };
        assert!(timing.validate().is_err());
    }
}
