//! One simulated server: a `NodeCore` process (absent while down), its clock and its disk.
//!
//! Like the real daemon, each process has its own monotonic clock that starts at an arbitrary
//! value when the process starts, so nothing may compare instants across nodes or across
//! restarts. Every call into the core is guarded: a panic inside the core (raft-rs panics on
//! some broken invariants) becomes a [`Violation`] that names the node, and the panic message
//! is captured instead of printed.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use tandem_core::{ClusterId, NodeCore, NodeId, Timing};

use crate::checkers::Violation;
use crate::config::Mutation;
use crate::disk::Disk;
use crate::host::Host;
use crate::resources::Fakes;

thread_local! {
    static IN_CORE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps panics raised inside guarded core calls off stderr (their message is reported in the
/// violation instead). Other panics still reach the previous hook. Installed once per process.
pub fn quiet_core_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_CORE.with(Cell::get) {
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `call` on the core of `node`, turning a panic into a violation.
pub fn guard<T>(node: NodeId, call: impl FnOnce() -> T) -> Result<T, Violation> {
    IN_CORE.with(|flag| flag.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(call));
    IN_CORE.with(|flag| flag.set(false));
    result.map_err(|payload| {
        let captured = LAST_PANIC.with(|last| last.borrow_mut().take());
        Violation::CorePanic {
            node,
            message: captured.unwrap_or_else(|| payload_text(&payload)),
        }
    })
}

fn payload_text(payload: &Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// One server of the simulated cluster.
pub struct Machine {
    pub id: NodeId,
    /// The running process; `None` while the machine is down (or after removal).
    pub core: Option<NodeCore>,
    /// Counts process starts; frames and disk completions for an older one are lost.
    pub incarnation: u32,
    /// (global time, process clock reading) when the current process started.
    clock: (u64, u64),
    pub disk: Disk,
    /// The node learned that it was removed; it never runs again.
    pub removed: bool,
    /// Inputs arriving before this global time wait (a frozen process).
    pub paused_until: u64,
    /// Extra disk latency from slow-disk faults (by fault id).
    pub slow_disk: BTreeMap<u64, u64>,
    /// The applied index whose state the checkers last hashed (hashing is not free).
    pub state_checked: Option<u64>,
    /// The agent side of the process (with groups on); lives and dies with `core`.
    pub host: Option<Host>,
    /// What runs on this machine (outlives the process: see [`crate::resources`]).
    pub fakes: Fakes,
    /// Global time at which the process's node lease (the leader's: its leader lease) ends or
    /// ended, as last observed; 0 if it never held one.
    pub lease_until: u64,
}

impl Machine {
    pub fn new(id: NodeId, disk: Disk) -> Machine {
        Machine {
            id,
            core: None,
            incarnation: 0,
            clock: (0, 0),
            disk,
            removed: false,
            paused_until: 0,
            slow_disk: BTreeMap::new(),
            state_checked: None,
            host: None,
            fakes: Fakes::default(),
            lease_until: 0,
        }
    }

    /// This machine's process clock at global time `now`.
    pub fn local(&self, now: u64) -> u64 {
        now.saturating_sub(self.clock.0) + self.clock.1
    }

    pub fn running(&self) -> bool {
        self.core.is_some()
    }

    /// Starts a process from what the disk holds, its clock reading `clock_base`.
    pub fn start(
        &mut self,
        cluster: ClusterId,
        timing: Timing,
        now: u64,
        clock_base: u64,
        mutations: &BTreeSet<Mutation>,
    ) -> Result<(), Violation> {
        let durable = self.disk.durable_state();
        let id = self.id;
        let restored = guard(id, || {
            NodeCore::restore(cluster, id, durable, timing, clock_base)
        })?;
        let mut core = restored.map_err(|error| Violation::Restore {
            node: id,
            reason: error.to_string(),
        })?;
        switch_on(&mut core, mutations)?;
        self.core = Some(core);
        self.incarnation += 1;
        self.clock = (now, clock_base);
        self.paused_until = 0;
        self.state_checked = None;
        Ok(())
    }

    /// Stops the process. The first `keep` disk writes in flight reach the disk, the rest
    /// vanish. Returns (kept, lost).
    pub fn stop(&mut self, keep: usize) -> Result<(usize, usize), Violation> {
        self.core = None;
        self.host = None;
        self.paused_until = 0;
        self.disk
            .crash(keep)
            .map_err(|reason| Violation::DiskRefused {
                node: self.id,
                reason,
            })
    }

    /// The extra latency slow-disk faults add now.
    pub fn disk_slowdown(&self) -> u64 {
        self.slow_disk.values().copied().max().unwrap_or(0)
    }
}

#[cfg(feature = "mutations")]
fn switch_on(core: &mut NodeCore, mutations: &BTreeSet<Mutation>) -> Result<(), Violation> {
    core.mutations.lease_without_quorum = mutations.contains(&Mutation::LeaseWithoutQuorum);
    core.mutations.send_before_persist = mutations.contains(&Mutation::SendBeforePersist);
    Ok(())
}

#[cfg(not(feature = "mutations"))]
fn switch_on(_core: &mut NodeCore, mutations: &BTreeSet<Mutation>) -> Result<(), Violation> {
    // The simulator's own driver mutations need no hook in the core.
    if !mutations.iter().any(|mutation| mutation.in_core()) {
        return Ok(());
    }
    Err(Violation::Setup(
        "this build has no mutation hooks; run it with `--features mutations`".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_guarded_call_becomes_a_violation() {
        quiet_core_panics();
        let result: Result<(), Violation> = guard(4, || panic!("boom {}", 42));
        match result {
            Err(Violation::CorePanic { node: 4, message }) => {
                assert!(message.contains("boom 42"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(guard(4, || 7), Ok(7));
    }
}
