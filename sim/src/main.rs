//! `tandem-sim`: run many seeds (soak) or replay one with its trace.
//!
//! ```text
//! tandem-sim --seeds 500 [--start 1] [--jobs 2]     soak: a summary table, failures listed
//! tandem-sim --seed 42 [--trace]                    replay one seed (trace: every event)
//! ```
//! Resource groups (a volume, groups on it, the agent and placement loop on every node, fake
//! resources that fail, hang and crash) are part of every run; `--no-groups` leaves them out.
//! Exit status: 0 when every seed passed, 1 when one failed, 2 for bad arguments.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Instant;

use clap::{ArgGroup, Parser};
use tandem_sim::config::{FaultMix, SnapshotLoss, DEFAULT_FAULT_SECS};
use tandem_sim::{run_seed, run_seeds, Mutation, Options, SimFailure, Summary};

#[derive(Parser, Debug)]
#[command(
    name = "tandem-sim",
    about = "Seeded deterministic simulation of a tandem cluster with faults and safety checkers",
    group(ArgGroup::new("mode").required(true).args(["seed", "seeds"]))
)]
struct Cli {
    /// Replay this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Soak: run this many seeds, starting at --start.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: Option<u64>,
    /// First seed of a soak.
    #[arg(long, conflicts_with = "seed")]
    start: Option<u64>,
    /// Print every event of the replayed seed as it happens.
    #[arg(long, conflicts_with = "seeds")]
    trace: bool,
    /// Seconds of faults, as MIN-MAX (the seed picks within) or one number.
    #[arg(long, value_parser = parse_fault_secs)]
    fault_secs: Option<(u64, u64)>,
    /// After the heal, a leader and a commit must come within this many ms.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    heal_bound_ms: u64,
    /// Switch on a mutation on every node: lease-without-quorum or send-before-persist (in
    /// the core: needs `--features mutations`), ignore-lease-loss or skip-acquire (in the
    /// simulator's agent driver). Repeatable.
    #[arg(long)]
    mutation: Vec<Mutation>,
    /// Leave resource groups out (Raft, leases and membership only).
    #[arg(long)]
    no_groups: bool,
    /// Fake resources never fail, hang or crash, and nobody starts one by hand.
    #[arg(long)]
    no_resource_faults: bool,
    /// The longest a fake stop takes, in ms.
    #[arg(long, default_value_t = tandem_sim::config::DEFAULT_STOP_MAX_MS,
          value_parser = clap::value_parser!(u64).range(10..))]
    stop_max_ms: u64,
    /// A crash of the tandem process leaves virtual IPs up (as the kernel does) instead of
    /// taking everything it started with it.
    #[arg(long)]
    crash_leaves_ips: bool,
    /// No watchdog: a frozen process keeps its resources running until it resumes.
    #[arg(long)]
    no_watchdog: bool,
    /// After the heal, every group must run where it is placed within this many ms.
    #[arg(long, default_value_t = tandem_sim::config::DEFAULT_SETTLE_BOUND_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    settle_bound_ms: u64,
    /// What the network may do to Raft snapshot frames: random (like any frame), never
    /// (a stop-gap while the core cannot recover a lost snapshot), first (lose the first).
    #[arg(long, default_value = "random")]
    snapshot_loss: SnapshotLoss,
    /// Which faults strike: standard (every kind), power-loss (power loss and slow disks),
    /// partitions (network splits only) or none (only the workloads).
    #[arg(long = "faults", default_value = "standard")]
    fault_mix: FaultMix,
    /// Propose only on leaders, never on followers (which forward proposals).
    #[arg(long)]
    leader_proposals_only: bool,
    /// Threads for a soak (default: the number of CPUs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: Option<u64>,
}

fn parse_fault_secs(text: &str) -> Result<(u64, u64), String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|_| format!("{part:?} is not a whole number of seconds"))
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (number(low)?, number(high)?),
        None => (number(text)?, number(text)?),
    };
    if low > high || high == 0 || high > 3600 {
        return Err(format!(
            "expected MIN-MAX with 0 <= MIN <= MAX <= 3600 and MAX > 0, got {text:?}"
        ));
    }
    Ok((low, high))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.mutation.iter().any(|m| m.in_core()) && !cfg!(feature = "mutations") {
        eprintln!(
            "error: --mutation needs the core's mutation hooks; run with \
             `cargo run -p tandem-sim --features mutations -- ...`"
        );
        return ExitCode::from(2);
    }
    let options = Options {
        fault_secs: cli.fault_secs.unwrap_or(DEFAULT_FAULT_SECS),
        heal_bound_ms: cli.heal_bound_ms,
        mutations: cli.mutation.iter().copied().collect::<BTreeSet<_>>(),
        snapshot_loss: cli.snapshot_loss,
        fault_mix: cli.fault_mix,
        propose_on_followers: !cli.leader_proposals_only,
        echo_trace: cli.trace,
        groups: !cli.no_groups,
        resource_faults: !cli.no_resource_faults,
        stop_max_ms: cli.stop_max_ms,
        crash_leaves_ips: cli.crash_leaves_ips,
        watchdog: !cli.no_watchdog,
        settle_bound_ms: cli.settle_bound_ms,
    };
    match (cli.seed, cli.seeds) {
        (Some(seed), _) => replay(seed, &options),
        (None, Some(count)) => {
            let jobs = cli.jobs.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
            });
            soak(cli.start.unwrap_or(1), count, jobs, &options)
        }
        (None, None) => ExitCode::from(2),
    }
}

fn replay(seed: u64, options: &Options) -> ExitCode {
    let started = Instant::now();
    match run_seed(seed, options) {
        Ok(report) => {
            let mut summary = Summary::default();
            summary.add(&report);
            summary.wall = started.elapsed();
            println!(
                "seed {seed}: passed ({}, {} s simulated, trace digest {:016x})",
                report.shape,
                report.sim_ms / 1000,
                report.trace_digest
            );
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if options.echo_trace {
                eprintln!("{}", failure.headline());
            } else {
                eprintln!("{failure}");
            }
            ExitCode::from(1)
        }
    }
}

fn soak(start: u64, count: u64, jobs: u64, options: &Options) -> ExitCode {
    let started = Instant::now();
    let Some(end) = start.checked_add(count) else {
        eprintln!("error: --start {start} plus --seeds {count} overflows");
        return ExitCode::from(2);
    };
    let results = run_seeds(start..end, options, jobs as usize, |_, result| {
        if let Err(failure) = result {
            eprintln!("{}", failure.headline());
        }
        false
    });
    let mut summary = Summary::default();
    let mut first: Option<&SimFailure> = None;
    for (seed, result) in &results {
        match result {
            Ok(report) => summary.add(report),
            Err(failure) => {
                summary.fail(*seed, failure.headline(), &failure.violation);
                first = first.or(Some(failure));
            }
        }
    }
    summary.wall = started.elapsed();
    if let Some(failure) = first {
        eprintln!("\nthe lowest failing seed in full:\n{failure}");
    }
    print!("{summary}");
    if first.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
