//! Deliberate rule-breaking switches for the data path, used only by the simulator's mutation
//! tests (`sim/tests/volumes.rs`) to prove that its data-path checkers fire.
//!
//! Why a thread-local and not a field: `volume::promote` is a free function applied
//! identically on every node, and the simulator runs one seed per thread, so a per-thread
//! switch reaches the replication engines and the volume rules without changing any
//! signature. The module exists only with the `mutations` feature; production builds do not
//! contain it, and even in a test build every switch is off until a test turns it on.

use std::cell::Cell;

/// Which data-path rules to break on this thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataMutations {
    /// The primary acknowledges a request once its local leg completed it, without waiting
    /// for the peers that must have it (breaks rule 1).
    pub ack_before_peer: bool,
    /// A secondary accepts hellos and data frames of any epoch (breaks rule 2).
    pub skip_epoch_check: bool,
    /// `volume::promote` accepts a leg that is not UpToDate without `force` (breaks rule 2).
    pub promote_outdated: bool,
}

thread_local! {
    static CURRENT: Cell<DataMutations> = const { Cell::new(DataMutations {
        ack_before_peer: false,
        skip_epoch_check: false,
        promote_outdated: false,
    }) };
}

/// Switches the mutations of this thread (all off: `DataMutations::default()`).
pub fn set(mutations: DataMutations) {
    CURRENT.with(|current| current.set(mutations));
}

/// The mutations in force on this thread.
pub fn get() -> DataMutations {
    CURRENT.with(|current| current.get())
}
