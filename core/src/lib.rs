//! tandem's deterministic core: every decision, no I/O.
//!
//! Nothing in this crate reads a clock, spawns a thread, touches a socket or a file, or calls
//! into the OS. Time arrives as a parameter (`now`, milliseconds on a monotonic clock chosen by
//! the caller), bytes arrive as slices, and everything the node wants done leaves as an
//! [`Action`]. That is what lets `tandem-sim` drive the very same code deterministically.

pub mod hex;
pub mod ids;

pub use ids::{ClusterId, NodeId, ParseClusterIdError};
