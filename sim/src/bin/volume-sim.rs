//! `volume-sim`: the data-path world of the simulator (sim/src/volume): real replication
//! primaries and secondaries on fake disks with power loss, write errors and full disks.
//!
//! ```text
//! volume-sim --seeds 500 [--start 1] [--jobs 2]   soak: a line per seed (--quiet: failures
//!                                                 only), then a summary
//! volume-sim --seed 42 [--trace]                  replay one seed (trace: every event)
//! ```
//! Exit status: 0 when every seed passed, 1 when one failed, 2 for bad arguments.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use tandem_sim::volume::{run_volume_seed, DataMutation, VolumeOptions, VolumeReport};

#[derive(Parser, Debug)]
#[command(
    name = "volume-sim",
    about = "Seeded simulation of tandem's replication data path"
)]
struct Cli {
    /// Replay this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Soak: run this many seeds from --start.
    #[arg(long)]
    seeds: Option<u64>,
    #[arg(long, default_value_t = 1)]
    start: u64,
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// 2 or 3 data nodes (default: the seed picks).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=3))]
    nodes: Option<u64>,
    /// Milliseconds of faults, MIN-MAX.
    #[arg(long, value_parser = parse_range)]
    fault_ms: Option<(u64, u64)>,
    /// Bound on convergence after the heal, in ms.
    #[arg(long)]
    settle_ms: Option<u64>,
    /// Plant a bug in the core (needs --features mutations).
    #[arg(long)]
    mutation: Option<DataMutation>,
    /// Report committed leg states to the primary only when they change, as the daemon did
    /// before it counted commits.
    #[arg(long)]
    daemon_leg_reports: bool,
    /// Inject disk errors and full disks on secondaries only.
    #[arg(long)]
    no_primary_disk_errors: bool,
    /// Print every event of the replayed seed.
    #[arg(long)]
    trace: bool,
    /// In a soak, print only failures and the summary (not one line per seed).
    #[arg(long)]
    quiet: bool,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let parse = |t: &str| t.trim().parse::<u64>().map_err(|e| format!("{t:?}: {e}"));
    match text.split_once('-') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => parse(text).map(|v| (v, v)),
    }
}

fn options(cli: &Cli) -> VolumeOptions {
    let mut options = VolumeOptions {
        nodes: cli.nodes.map(|n| n as usize),
        mutation: cli.mutation,
        echo: cli.trace,
        report_every_commit: !cli.daemon_leg_reports,
        primary_disk_errors: !cli.no_primary_disk_errors,
        ..VolumeOptions::default()
    };
    if let Some(range) = cli.fault_ms {
        options.fault_ms = range;
    }
    if let Some(settle) = cli.settle_ms {
        options.settle_bound_ms = settle;
    }
    options
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = options(&cli);
    if let Some(seed) = cli.seed {
        return match run_volume_seed(seed, &options) {
            Ok(report) => {
                println!("seed {seed}: ok {}", line(&report));
                ExitCode::SUCCESS
            }
            Err(failure) => {
                println!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(count) = cli.seeds else {
        eprintln!("error: give --seed N or --seeds N");
        return ExitCode::from(2);
    };
    soak(&cli, &options, count)
}

fn soak(cli: &Cli, options: &VolumeOptions, count: u64) -> ExitCode {
    let started = Instant::now();
    let next = AtomicU64::new(cli.start);
    let end = cli.start + count;
    let total = Mutex::new((VolumeReport::default(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let result = run_volume_seed(seed, options);
                let mut total = total.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(report) => {
                        if !cli.quiet {
                            println!("seed {seed}: ok {}", line(&report));
                        }
                        total.0.add(&report);
                    }
                    Err(failure) => {
                        println!("FAIL {}", failure.headline());
                        total.1.push(seed);
                    }
                }
            });
        }
    });
    let (report, mut failed) = total.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_unstable();
    println!(
        "{count} seeds from {} in {:.1} s: {} failed {failed:?}\n{}",
        cli.start,
        started.elapsed().as_secs_f64(),
        failed.len(),
        summary(&report)
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn line(r: &VolumeReport) -> String {
    format!(
        "{} nodes, {} KiB, {} ms simulated, {} acked writes, {} flushes, {} promotions \
         ({} refused, {} forced), converged {} ms after the heal",
        r.nodes,
        r.size / 1024,
        r.sim_ms,
        r.acked_writes,
        r.acked_flushes,
        r.promotions,
        r.refused_promotions,
        r.forced_promotions,
        r.converged_after_ms
    )
}

fn summary(r: &VolumeReport) -> String {
    format!(
        "simulated {:.0} s, {} events, {} disk ops, {} frames\n\
         acked writes {}, acked flushes {}, failed requests {}, reads checked {}\n\
         promotions {} (refused {}, forced {}), crashes {}, power losses {}, link cuts {}, \
         control-plane partitions {}, disk faults {}\nslowest convergence after the heal: {} ms",
        r.sim_ms as f64 / 1000.0,
        r.events,
        r.disk_ops,
        r.frames,
        r.acked_writes,
        r.acked_flushes,
        r.failed_requests,
        r.reads_checked,
        r.promotions,
        r.refused_promotions,
        r.forced_promotions,
        r.crashes,
        r.power_losses,
        r.link_cuts,
        r.control_partitions,
        r.disk_faults,
        r.converged_after_ms
    )
}
