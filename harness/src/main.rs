//! `tandem-harness`: check, list and run scenario files in the simulator.
//!
//! ```text
//! tandem-harness run FILE [--seed N] [--seeds K] [--quiet] [--trace]
//!                                  run it: one line per step, then a pass/fail table
//! tandem-harness check FILE...     validate only
//! tandem-harness list [DIR]        the library (harness/scenarios)
//! ```
//! Exit status: 0 every expectation passed (or every file is valid), 1 one failed, 2 a bad
//! file or bad arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_harness::scenario::{self, fmt_ms, Scenario};
use tandem_harness::sim_runner;

#[derive(Parser, Debug)]
#[command(
    name = "tandem-harness",
    about = "Fault-injection scenario files, run in the simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run a scenario in the simulator: one line per step, then a pass/fail table.
    Run {
        file: PathBuf,
        /// The seed (network delays, disk latencies, election timeouts...).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run this many seeds, from --seed on.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        seeds: u64,
        /// Print every simulator event as it happens.
        #[arg(long, conflicts_with = "quiet")]
        trace: bool,
        /// One line per seed instead of the steps and the table (failures in full).
        #[arg(long)]
        quiet: bool,
    },
    /// Validate scenario files without running them.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the scenarios of a directory (default: the library).
    List { dir: Option<PathBuf> },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Sub::Run {
            file,
            seed,
            seeds,
            trace,
            quiet,
        } => run(&file, seed..seed.saturating_add(seeds), trace, quiet),
        Sub::Check { files } => check(&files),
        Sub::List { dir } => list(&dir.unwrap_or_else(library)),
    }
}

/// `harness/scenarios` of this source tree.
fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn run(file: &Path, seeds: std::ops::Range<u64>, trace: bool, quiet: bool) -> ExitCode {
    let scenario = match scenario::load(file) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    println!(
        "scenario {}: {}",
        scenario.name,
        first_line(&scenario.description)
    );
    let mut failed = 0;
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let echo: Option<sim_runner::Echo> = match quiet {
            true => None,
            false => {
                println!("--- seed {seed}");
                Some(Box::new(|line: &str| println!("{line}")))
            }
        };
        let report = match sim_runner::run(&scenario, seed, echo, trace) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
        if quiet && report.passed() {
            println!("seed {seed}: pass");
            continue;
        }
        if quiet {
            println!("--- seed {seed}: FAIL");
        }
        println!("\n{}", report.table());
        if !report.passed() {
            failed += 1;
            if let Some(tail) = &report.trace {
                println!("--- trace\n{tail}");
            }
            println!(
                "replay: cargo run -p tandem-harness -- run {} --seed {seed} --trace",
                file.display()
            );
        }
    }
    if count > 1 {
        println!("{} of {count} seeds passed", count - failed);
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    each_scenario(files, |file, scenario| {
        println!(
            "{}: ok ({}, {} steps, {} expectations, {})",
            file.display(),
            scenario.name,
            scenario.steps.len(),
            scenario.expects.len(),
            fmt_ms(scenario.duration_ms)
        )
    })
}

/// Loads each file and hands it to `show`; a file that does not load is reported, and the
/// exit code is then 2.
fn each_scenario(files: &[PathBuf], show: impl Fn(&Path, &Scenario)) -> ExitCode {
    let mut bad = false;
    for file in files {
        match scenario::load(file) {
            Ok(scenario) => show(file, &scenario),
            Err(error) => {
                eprintln!("error: {error}");
                bad = true;
            }
        }
    }
    if bad {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The `*.toml` files of `dir`, sorted.
fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn list(dir: &Path) -> ExitCode {
    let files = match scenario_files(dir) {
        Ok(files) => files,
        Err(error) => {
            eprintln!("error: {}: {error}", dir.display());
            return ExitCode::from(2);
        }
    };
    each_scenario(&files, print_entry)
}

fn print_entry(file: &Path, scenario: &Scenario) {
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    println!(
        "{name:<32} {:<16} {:>2} steps {:>2} expectations  {}",
        scenario.layout.name(),
        scenario.steps.len(),
        scenario.expects.len(),
        first_line(&scenario.description)
    );
}

/// The description's first sentence, on one line.
fn first_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.find(". ") {
        Some(end) => joined[..=end].to_string(),
        None => joined,
    }
}
