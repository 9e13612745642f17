//! `tandem volume verify NAME [--repair]`: starts an online verify on the primary's node and
//! follows it to the end, then prints what it found per leg.
//!
//! Kept out of `main.rs` because it is a small workflow (start, poll the status model, report),
//! not a single command; every step goes through the typed command enum like the rest.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tandem_core::command::{VerifyReport, VolumeStatus};
use tandem_core::{Command, Reply};

use crate::render::human_bytes;
use crate::{control, render, statedir::StateDir};

/// Starts the verify and waits until every verified leg reports finished.
pub async fn run(root: &Path, name: &str, repair: bool, json: bool) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(root)?;
    let socket = dir.control_socket_path();
    let start = Command::VolumeVerify {
        name: name.to_string(),
        repair,
    };
    let reply = control::call(root, &socket, &start).await?;
    if let Reply::Refused { .. } = reply {
        print!("{}", render::reply(&reply));
        return Ok(ExitCode::from(1));
    }
    let show = Command::VolumeShow {
        name: name.to_string(),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = control::call(root, &socket, &show).await?;
        let Reply::Volumes { volumes } = reply else {
            print!("{}", render::reply(&reply));
            return Ok(ExitCode::from(1));
        };
        let Some(volume) = volumes.into_iter().next() else {
            return Ok(ExitCode::from(1));
        };
        let reports = reports(&volume);
        if reports.is_empty() || reports.iter().any(|(_, report)| !report.finished) {
            continue;
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&volume)?);
        } else {
            print!("{}", summary(&reports));
        }
        let clean = reports
            .iter()
            .all(|(_, r)| r.aborted.is_none() && (r.mismatched_bytes == 0 || r.repair));
        return Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
}

fn reports(volume: &VolumeStatus) -> Vec<(u32, VerifyReport)> {
    volume
        .legs
        .iter()
        .filter_map(|leg| Some((leg.id, leg.sync.as_ref()?.verify.clone()?)))
        .collect()
}

fn summary(reports: &[(u32, VerifyReport)]) -> String {
    let mut out = String::new();
    for (leg, report) in reports {
        let verdict = match (&report.aborted, report.mismatched_bytes, report.repair) {
            (Some(reason), _, _) => format!("ABORTED: {reason}"),
            (None, 0, _) => "identical".to_string(),
            (None, bytes, true) => format!(
                "{} differed and are being resynced from the primary",
                human_bytes(bytes)
            ),
            (None, bytes, false) => format!(
                "{} DIFFER (run with --repair to resync them)",
                human_bytes(bytes)
            ),
        };
        out.push_str(&format!(
            "leg {leg}: compared {}: {verdict}\n",
            human_bytes(report.done_bytes)
        ));
        for (offset, len) in &report.mismatches {
            out.push_str(&format!("  mismatch at offset {offset}, {len} bytes\n"));
        }
    }
    out
}
