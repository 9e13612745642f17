//! tandem's fault-injection harness (DESIGN.md §3 `harness/`, §6): scenario files in one
//! TOML format, and the runner that replays them in the simulator.
//!
//! - [`scenario`]: the format, its checks and its resolution into a timeline of effects.
//!   It knows neither the simulator nor the daemon, so a runner against real daemons in
//!   network namespaces can read the same files.
//! - [`sim_runner`]: carries a scenario out in the seeded simulator (`tandem-sim`), with the
//!   simulator's checkers after every step, and judges the scenario's expectations.

pub mod scenario;
pub mod sim_runner;

pub use scenario::{load, parse, Scenario, ScenarioError};
pub use sim_runner::{run, Report, RunError};
