//! `scenario-real [FILE...]` (root): plays scenario files against real daemons in network
//! namespaces and prints, per file, the steps as carried out and the pass/fail table; then one
//! line per file. Default: every file of `harness/scenarios/`. Exit status 0 when every
//! played scenario passed (skipped ones are listed as such), 1 when one failed or could not
//! run, 2 for a file that does not load.

use std::path::PathBuf;
use std::process::ExitCode;

use tandem_tests::scenario_real::run;

fn files(args: &[String]) -> Vec<PathBuf> {
    if !args.is_empty() {
        return args.iter().map(PathBuf::from).collect();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../harness/scenarios");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|path| path.extension().is_some_and(|ext| ext == "toml"));
    found.sort();
    found
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut scenarios = Vec::new();
    for file in files(&args) {
        match tandem_harness::load(&file) {
            Ok(scenario) => scenarios.push(scenario),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
        }
    }
    let mut summary = Vec::new();
    let mut failed = false;
    for (index, scenario) in scenarios.iter().enumerate() {
        println!("== {} ({})", scenario.name, scenario.file);
        let tag = format!("screal{index}");
        let outcome = std::panic::catch_unwind(|| run(scenario, &tag, true));
        let line = match outcome {
            Ok(report) => {
                println!("{}", report.table());
                for failure in report.failures() {
                    println!("{failure}");
                }
                failed |= !report.passed();
                match (&report.skipped, report.passed()) {
                    (Some(why), _) => format!("SKIP  {}: {why}", report.name),
                    (None, true) => {
                        format!("PASS  {} ({:.0} s)", report.name, report.wall.as_secs_f64())
                    }
                    (None, false) => {
                        format!("FAIL  {}: {}", report.name, report.failures().join("; "))
                    }
                }
            }
            Err(_) => {
                failed = true;
                format!("ERROR {}: the run panicked (see above)", scenario.name)
            }
        };
        summary.push(line);
    }
    println!("== summary");
    for line in &summary {
        println!("{line}");
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
