//! The one interface every frontend (NBD, the FUSE image) uses to reach a volume's data.
//!
//! Exists so frontends do not care what is behind a volume: today the primary's local leg,
//! with replication the primary's engine that mirrors each write to the other legs before it
//! acknowledges. Semantics are DESIGN.md §5's volatile-cache disk: `write` is acknowledged
//! when accepted, `flush` makes everything acknowledged before it durable, `fua` makes that
//! one write durable before it returns. Calls block; async callers run them on the blocking
//! pool (`spawn_blocking`) or under `block_in_place`.

use std::io;

/// Block access to one volume, safe to share between threads.
pub trait VolumeIo: Send + Sync {
    /// The volume's size in bytes.
    fn size(&self) -> u64;
    fn read(&self, offset: u64, length: usize) -> io::Result<Vec<u8>>;
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
    /// Zeroes a range; `may_trim` lets it deallocate.
    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool) -> io::Result<()>;
    /// Discards a range (contents afterwards unspecified).
    fn trim(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Names the backing store in log lines.
    fn describe(&self) -> String;
}

/// How long a write waits for the node's first lease (a cluster that is starting) before it
/// fails.
pub const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a write waits once a lease it had lapsed: long enough to bridge a leader change,
/// short enough that a partitioned node's file system fails fast and unmounts.
pub const LEASE_WAIT_AFTER_LOSS: std::time::Duration = std::time::Duration::from_millis(300);

/// Whether this node may write now: the daemon publishes how long its node lease lasts, the
/// write paths check it before every write (DESIGN.md §5 rule 2: a node without a lease stops
/// writing; a shared leg relies on it). Lock-free: one atomic load per write.
#[derive(Debug)]
pub struct LeaseGate {
    origin: std::time::Instant,
    /// Milliseconds since `origin` until which the lease holds.
    until_ms: std::sync::atomic::AtomicU64,
    /// Whether a lease was ever published.
    ever_held: std::sync::atomic::AtomicBool,
}

impl LeaseGate {
    /// A gate that is shut until the daemon first publishes a lease.
    pub fn new() -> LeaseGate {
        LeaseGate {
            origin: std::time::Instant::now(),
            until_ms: std::sync::atomic::AtomicU64::new(0),
            ever_held: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The lease lasts `remaining_ms` from now.
    pub fn publish(&self, remaining_ms: u64) {
        use std::sync::atomic::Ordering;
        let now = self.elapsed_ms();
        if remaining_ms > 0 {
            self.until_ms
                .store(now.saturating_add(remaining_ms), Ordering::Release);
            self.ever_held.store(true, Ordering::Release);
        } else {
            // No lease: it ended now at the latest (never later than it was going to).
            self.until_ms.fetch_min(now, Ordering::AcqRel);
        }
    }

    /// Whether the lease holds now.
    pub fn holds(&self) -> bool {
        self.elapsed_ms() < self.until_ms.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Lets a write through while the lease holds. Without one the write waits for up to
    /// [`LEASE_WAIT`] while the node never had a lease (a cluster that is starting), or
    /// [`LEASE_WAIT_AFTER_LOSS`] after one lapsed; then it fails, never performed.
    /// Blocking: callers are FUSE worker threads and blocking tasks.
    pub fn check(&self) -> io::Result<()> {
        if !self.ever_held.load(std::sync::atomic::Ordering::Acquire) {
            return self.check_within(LEASE_WAIT);
        }
        // Counted from when the lease lapsed, not per write: once it is gone for longer,
        // every write fails at once and a file system on top unmounts quickly.
        let until = self.until_ms.load(std::sync::atomic::Ordering::Acquire);
        let since_lapse = self.elapsed_ms().saturating_sub(until);
        let left = (LEASE_WAIT_AFTER_LOSS.as_millis() as u64).saturating_sub(since_lapse);
        self.check_within(std::time::Duration::from_millis(left))
    }

    fn check_within(&self, wait: std::time::Duration) -> io::Result<()> {
        let start = std::time::Instant::now();
        while !self.holds() {
            if start.elapsed() >= wait {
                return Err(io::Error::other(format!(
                    "this node holds no lease (no quorum confirmed it) after waiting {} ms: \
                     writes are refused",
                    wait.as_millis()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    fn elapsed_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

impl Default for LeaseGate {
    fn default() -> Self {
        LeaseGate::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{LeaseGate, LEASE_WAIT_AFTER_LOSS};

    #[test]
    fn the_gate_opens_only_while_a_published_lease_lasts() {
        let gate = std::sync::Arc::new(LeaseGate::new());
        let short = std::time::Duration::from_millis(30);
        assert!(gate.check_within(short).is_err(), "shut before any lease");
        gate.publish(10_000);
        assert!(gate.check_within(short).is_ok());
        gate.publish(0);
        let error = gate.check_within(short).unwrap_err();
        assert!(error.to_string().contains("no lease"), "{error}");
        // Long after the lapse, a write fails without waiting again (its allowance is used
        // up: the error says it waited 0 ms).
        std::thread::sleep(LEASE_WAIT_AFTER_LOSS);
        let error = gate.check().unwrap_err();
        assert!(error.to_string().contains("after waiting 0 ms"), "{error}");
        // A write waiting for the lease goes through once it returns.
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.check_within(std::time::Duration::from_secs(10)))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        gate.publish(10_000);
        assert!(waiter.join().unwrap().is_ok());
    }
}
