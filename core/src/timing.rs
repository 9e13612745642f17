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
/// Escalation: a daemon that still pets, but still holds running resources this long after
/// the lease it announced ran out, is fenced like a frozen one (a failed or hung stop;
/// Pacemaker fences a node whose stop failed). Why 300: the agent notices the lapse within
/// one round (50 ms) and stops every resource at once; a stop that has not finished 250 ms
/// later is hung or failing (the agent retries a failed stop every 100 ms without a lease),
/// and waiting longer would eat the budget below.
pub const WATCHDOG_ESCALATE_MS: u64 = 300;
/// What the fence itself may take: SIGKILL of the daemon (its exec services follow through
/// PDEATHSIG as the kernel reaps it), one `ip addr del` per virtual IP and one
/// `systemctl kill` per systemd unit (a fork and exec each: milliseconds, 100 on a loaded box).
pub const WATCHDOG_FENCE_MS: u64 = 100;

/// The latest moment, after the lapse of the lease the daemon announced, by which the
/// watchdog has fenced a node that still holds resources (frozen or not): the escalation
/// deadline, plus one poll of the watchdog's loop, plus the fence itself.
pub const WATCHDOG_FENCED_BY_MS: u64 = WATCHDOG_ESCALATE_MS + WATCHDOG_POLL_MS + WATCHDOG_FENCE_MS;

// The deadline arithmetic. No other node may take over before `failover_timeout` after the
// leader last heard from this node, and this node's lease lapsed by `lease_timeout` after
// that; every valid failover timeout exceeds `lease_timeout + FAILOVER_MARGIN_MS`
// (`scheduler::check_failover_timeout`). So a node has strictly more than
// `FAILOVER_MARGIN_MS` after its lapse, and the watchdog must be done within it, whichever
// rule fires (a frozen daemon: the slack; a live one that still holds: the escalation). The
// lease end the watchdog uses is the one the daemon measured on the shared monotonic clock,
// so the pipe adds no delay to it.
const _: () = assert!(WATCHDOG_FENCED_BY_MS < crate::scheduler::FAILOVER_MARGIN_MS);
const _: () = assert!(WATCHDOG_SLACK_MS < WATCHDOG_ESCALATE_MS);
const _: () = assert!(WATCHDOG_SILENT_MIN_MS <= WATCHDOG_ESCALATE_MS);

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
    fn the_watchdog_fences_before_any_valid_failover_timeout_runs_out() {
        let timing = Timing::default();
        // The tightest failover timeout the scheduler accepts, and the default one.
        let tightest = crate::scheduler::min_failover_timeout_ms(&timing) + 1;
        assert!(crate::scheduler::check_failover_timeout(tightest, &timing).is_ok());
        for failover in [
            tightest,
            crate::scheduler::default_failover_timeout_ms(&timing),
        ] {
            let budget = failover - timing.lease_timeout_ms;
            assert!(WATCHDOG_FENCED_BY_MS < budget, "{failover}");
            let frozen = WATCHDOG_SLACK_MS + WATCHDOG_POLL_MS + WATCHDOG_FENCE_MS;
            assert!(frozen < budget, "{failover}");
        }
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
