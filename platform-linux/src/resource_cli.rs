//! `tandem resource start|stop|monitor|check`: run one resource by hand, without the cluster.
//!
//! The operator's tool for what Pacemaker users do with `crm_resource --force-start`: try a
//! resource spec on this node, stop a leftover, ask whether it runs. It uses the same runners
//! as the daemon, and the same files under the state directory (`--group` and `--index` name
//! them), so it can stop what a daemon started. Services it starts are detached: they keep
//! running after the command exits. Tests drive runners this way inside network namespaces.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tandem_core::group::ResourceSpec;

use crate::resources::{self, Outcome, Runner, RunnerContext};

/// Exit code of `monitor` for "not running" (as OCF's `OCF_NOT_RUNNING`).
pub const EXIT_NOT_RUNNING: u8 = 7;

#[derive(clap::Subcommand, Debug)]
pub enum ResourceVerb {
    /// Start the resource and wait until it runs. Exit 0 running, 1 failed, 2 usage or invalid
    /// spec.
    Start(ResourceArgs),
    /// Stop the resource (stopping a stopped one succeeds). Exit 0 stopped, 1 failed, 2 usage or
    /// invalid spec.
    Stop(ResourceArgs),
    /// Check the resource once. Exit 0 running, 7 not running (as OCF), 1 failed, 2 usage or
    /// invalid spec.
    Monitor(ResourceArgs),
    /// Validate the spec on this node and print the timeouts a runner would use. Exit 0 valid,
    /// 2 invalid.
    Check(ResourceArgs),
}

#[derive(clap::Args, Debug)]
pub struct ResourceArgs {
    /// The resource as JSON, e.g. '{"type":"ip","cidr":"10.0.0.5/24"}' or
    /// '{"type":"service","service":{"kind":"ocf","provider":"heartbeat","agent":"Dummy"}}'.
    #[arg(long)]
    pub spec: String,
    /// The group it belongs to; with --index it names the log and pid files
    /// (<state-dir>/logs/<group>-<index>.log, <state-dir>/run/<group>-<index>.pid).
    #[arg(long, default_value = "manual")]
    pub group: String,
    /// The resource's position in its group.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// For a filesystem: the volume's image file to put on a loop device.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// This operation's timeout in milliseconds, instead of the spec's or the agent's default.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Start,
    Stop,
    Monitor,
    Check,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Monitor => "monitor",
            Operation::Check => "check",
        }
    }
}

/// Runs the subcommand; returns the process exit code.
pub async fn run(state_dir: &Path, verb: ResourceVerb, json: bool) -> ExitCode {
    let (operation, args) = match verb {
        ResourceVerb::Start(args) => (Operation::Start, args),
        ResourceVerb::Stop(args) => (Operation::Stop, args),
        ResourceVerb::Monitor(args) => (Operation::Monitor, args),
        ResourceVerb::Check(args) => (Operation::Check, args),
    };
    // Start and check validate everything (an ip's interface too); stop and monitor only what
    // they need, so a VIP whose subnet address is gone can still be stopped.
    let full = matches!(operation, Operation::Start | Operation::Check);
    let mut runner = match make_runner(state_dir, &args, full).await {
        Ok(runner) => runner,
        Err(message) => {
            eprintln!("tandem: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(ms) = args.timeout_ms {
        let mut timeouts = runner.timeouts();
        match operation {
            Operation::Start => timeouts.start_ms = ms,
            Operation::Stop => timeouts.stop_ms = ms,
            Operation::Monitor => timeouts.monitor_ms = ms,
            Operation::Check => {}
        }
        runner.set_timeouts(timeouts);
    }
    runner.detach_services();
    let outcome = match operation {
        Operation::Start => runner.start().await,
        Operation::Stop => runner.stop().await,
        Operation::Monitor => runner.monitor().await,
        Operation::Check => return print_check(&runner, json),
    };
    print_outcome(&runner, operation, &outcome, json);
    ExitCode::from(exit_code(operation, &outcome))
}

/// Parses and validates the spec and builds the runner (an OCF agent's meta-data runs here,
/// so off the async threads).
async fn make_runner(state_dir: &Path, args: &ResourceArgs, full: bool) -> Result<Runner, String> {
    let spec: ResourceSpec = serde_json::from_str(&args.spec)
        .map_err(|error| format!("--spec is not a valid resource: {error}"))?;
    let ctx = RunnerContext {
        group: args.group.clone(),
        index: args.index,
        state_dir: state_dir.to_path_buf(),
        image: args.image.clone(),
    };
    tokio::task::spawn_blocking(move || {
        if full {
            resources::validate(&spec, &ctx.group, ctx.index)?;
        }
        Runner::new(&spec, ctx)
    })
    .await
    .map_err(|error| format!("validating the resource failed: {error}"))?
    .map_err(|error| error.to_string())
}

/// 0 for the answer the operation wants, 7 for a monitor's "not running", else 1.
fn exit_code(operation: Operation, outcome: &Outcome) -> u8 {
    match (operation, outcome) {
        (Operation::Start | Operation::Monitor, Outcome::Running) => 0,
        (Operation::Stop, Outcome::NotRunning) => 0,
        (Operation::Monitor, Outcome::NotRunning) => EXIT_NOT_RUNNING,
        _ => 1,
    }
}

fn print_outcome(runner: &Runner, operation: Operation, outcome: &Outcome, json: bool) {
    if json {
        let (state, reason) = match outcome {
            Outcome::Running => ("running", None),
            Outcome::NotRunning => ("not-running", None),
            Outcome::Failed(reason) => ("failed", Some(reason.as_str())),
        };
        let value = serde_json::json!({
            "operation": operation.name(),
            "resource": runner.identity(),
            "outcome": state,
            "reason": reason,
        });
        println!("{value}");
    } else {
        println!("{}: {} {outcome}", runner.identity(), operation.name());
    }
}

fn print_check(runner: &Runner, json: bool) -> ExitCode {
    let t = runner.timeouts();
    if json {
        let value = serde_json::json!({ "resource": runner.identity(), "timeouts": t });
        println!("{value}");
    } else {
        println!(
            "{}: valid on this node; start timeout {} ms, stop timeout {} ms, monitor timeout \
             {} ms, monitor interval {} ms",
            runner.identity(),
            t.start_ms,
            t.stop_ms,
            t.monitor_ms,
            t.interval_ms
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let failed = Outcome::Failed("x".into());
        assert_eq!(exit_code(Operation::Start, &Outcome::Running), 0);
        assert_eq!(exit_code(Operation::Start, &failed), 1);
        assert_eq!(exit_code(Operation::Start, &Outcome::NotRunning), 1);
        assert_eq!(exit_code(Operation::Stop, &Outcome::NotRunning), 0);
        assert_eq!(exit_code(Operation::Stop, &failed), 1);
        assert_eq!(exit_code(Operation::Monitor, &Outcome::Running), 0);
        assert_eq!(exit_code(Operation::Monitor, &Outcome::NotRunning), 7);
        assert_eq!(exit_code(Operation::Monitor, &failed), 1);
    }
}
