//! Tests of the replication link: the secondary alone, then a primary with one or two
//! secondaries wired through the in-memory [`harness`], then random schedules (proptest),
//! online verify, and the resync after a takeover.

mod harness;
mod primary_tests;
mod random_schedules;
mod secondary_tests;
mod takeover_tests;
mod unflushed_tests;
mod verify_tests;
