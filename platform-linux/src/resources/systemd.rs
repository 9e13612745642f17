//! `systemd` services: `systemctl start|stop|is-active UNIT`, each bounded by its timeout.
//!
//! systemd already supervises the unit; we only ask it to start and stop, and read its state:
//! `active` (or `reloading`) is running, `inactive` is not running, `failed` and the transient
//! states are failures the agent acts on. `systemctl` output goes to the resource's log.

use std::path::PathBuf;
use std::time::Duration;

use super::process::{self, Capture};
use super::{find_program, Outcome, Place, ResourceError, RunnerContext};

/// `systemctl`'s exit code when a unit is unknown (LSB "program is not installed").
const UNIT_NOT_FOUND: i32 = 5;

/// The local check: `systemctl` is installed.
pub(crate) fn check_local(place: &Place) -> Result<(), ResourceError> {
    match find_program("systemctl") {
        Some(_) => Ok(()),
        None => Err(place.unusable(
            "systemctl is not found on $PATH: systemd services need systemd on this node",
        )),
    }
}

pub(crate) struct Systemd {
    unit: String,
    log: PathBuf,
}

impl Systemd {
    pub fn new(unit: &str, ctx: &RunnerContext) -> Systemd {
        Systemd {
            unit: unit.to_string(),
            log: ctx.log_path(),
        }
    }

    async fn systemctl(&self, verb: &str, limit_ms: u64) -> Result<process::Ran, String> {
        let program = find_program("systemctl").ok_or("systemctl is not found on $PATH")?;
        let mut command = std::process::Command::new(program);
        command.args([verb, "--", &self.unit]);
        let what = format!("systemctl {verb} {}", self.unit);
        let capture = if verb == "is-active" {
            Capture::Pipe
        } else {
            Capture::Log(&self.log)
        };
        process::run(command, &what, capture, Duration::from_millis(limit_ms)).await
    }

    pub async fn start(&mut self, limit_ms: u64) -> Outcome {
        let ran = match self.systemctl("start", limit_ms).await {
            Ok(ran) => ran,
            Err(reason) => return Outcome::Failed(reason),
        };
        if !ran.status.success() {
            return Outcome::Failed(format!(
                "systemctl start {} failed: {}",
                self.unit,
                ran.describe()
            ));
        }
        match self.monitor(limit_ms).await {
            Outcome::NotRunning => Outcome::Failed(format!(
                "unit {} is inactive right after systemctl start",
                self.unit
            )),
            other => other,
        }
    }

    pub async fn stop(&mut self, limit_ms: u64) -> Outcome {
        match self.systemctl("stop", limit_ms).await {
            Ok(ran) if ran.status.success() => Outcome::NotRunning,
            // An unknown unit is not running: stopping it is done.
            Ok(ran) if ran.code() == Some(UNIT_NOT_FOUND) => Outcome::NotRunning,
            Ok(ran) => Outcome::Failed(format!(
                "systemctl stop {} failed: {}",
                self.unit,
                ran.describe()
            )),
            Err(reason) => Outcome::Failed(reason),
        }
    }

    pub async fn monitor(&mut self, limit_ms: u64) -> Outcome {
        let ran = match self.systemctl("is-active", limit_ms).await {
            Ok(ran) => ran,
            Err(reason) => return Outcome::Failed(reason),
        };
        let state = ran.stdout.trim();
        match state {
            "active" | "reloading" => Outcome::Running,
            "inactive" => Outcome::NotRunning,
            "" => Outcome::Failed(format!(
                "systemctl is-active {} answered nothing: {}",
                self.unit,
                ran.describe()
            )),
            other => Outcome::Failed(format!("unit {} is {other}", self.unit)),
        }
    }
}
