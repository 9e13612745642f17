//! The resource runners: how this node starts, stops and monitors one resource of a group.
//!
//! The core's agent logic decides *when* a resource starts, stops or is checked; this module
//! does it on Linux, one [`Runner`] per resource (DESIGN.md §3: the core decides, shims obey).
//! Kinds: `exec` (a process we start), `systemd` (a unit), `ocf` (a resource agent), `ip` (a
//! virtual IP over netlink) and `filesystem` (the volume's image on a loop device, mounted).
//! `volume` resources (be primary) belong to the volume engine, not to a runner.
//!
//! Every operation enforces its own timeout and, when it runs out, kills what it spawned (the
//! child's whole process group) and answers `Failed("<what> timed out after N ms")`. Errors
//! name the group, the resource (position and identity) and the problem (DESIGN.md §5 rule 5).
//! Files: logs in `<state-dir>/logs/<group>-<index>.log`, pid and loop-device records in
//! `<state-dir>/run/`, so a restarted daemon (or `tandem resource stop`) finds leftovers.

mod arp;
mod exec;
mod filesystem;
mod health;
mod ip;
mod ocf;
mod ocf_meta;
mod process;
mod procfs;
mod systemd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::group::{
    GroupError, GroupSpec, ResourceSpec, ServiceSpec, DEFAULT_MONITOR_INTERVAL_MS,
    DEFAULT_MONITOR_TIMEOUT_MS,
};

pub use ocf_meta::parse_duration_ms;

/// Start timeout when neither the spec nor an OCF agent's meta-data gives one. Longer than
/// Pacemaker's 20 s: a spec cannot set it yet, and a start wrongly declared failed is an outage.
pub const DEFAULT_START_TIMEOUT_MS: u64 = 60_000;
/// Stop timeout when an OCF agent's meta-data gives none (same reasoning as the start).
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 60_000;
/// How long cleanup after a timed-out operation may take (killing the process group, reaping).
const CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// What a runner needs from the node.
#[derive(Clone, Debug)]
pub struct RunnerContext {
    pub group: String,
    /// Position of the resource in its group.
    pub index: usize,
    /// `<state-dir>`: logs go to `<state-dir>/logs/`, pid files to `<state-dir>/run/`.
    pub state_dir: PathBuf,
    /// For `filesystem`: the volume's FUSE image file (resolved by the volume engine).
    pub image: Option<PathBuf>,
}

impl RunnerContext {
    /// `<group>-<index>` with anything but letters, digits, `-`, `_` and `.` replaced by `_`:
    /// a file name and an `OCF_RESOURCE_INSTANCE`.
    pub fn instance(&self) -> String {
        instance_name(&self.group, self.index)
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{}.log", self.instance()))
    }

    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// `<state-dir>/run/<group>-<index>.<extension>`.
    pub fn run_file(&self, extension: &str) -> PathBuf {
        self.run_dir()
            .join(format!("{}.{extension}", self.instance()))
    }
}

/// `<group>-<index>`, sanitized (see [`RunnerContext::instance`]).
pub(crate) fn instance_name(group: &str, index: usize) -> String {
    format!("{group}-{index}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What an operation found. `start` answers `Running` on success, `stop` `NotRunning`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    NotRunning,
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Running => f.write_str("running"),
            Outcome::NotRunning => f.write_str("not running"),
            Outcome::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// How long each operation may take, and how often the monitor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Timeouts {
    pub start_ms: u64,
    pub stop_ms: u64,
    pub monitor_ms: u64,
    pub interval_ms: u64,
}

/// Why a resource cannot be run here; names the group, the resource and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The spec itself is invalid (the core's checks).
    #[error("group {group}, resource {index} ({resource}): {reason}")]
    Invalid {
        group: String,
        index: usize,
        resource: String,
        reason: String,
    },
    /// The spec is fine but this node cannot run it (missing agent, interface, program...).
    #[error("group {group}, resource {index} ({resource}): {reason}")]
    Unusable {
        group: String,
        index: usize,
        resource: String,
        reason: String,
    },
    /// A required OCF parameter is missing.
    #[error(
        "group {group}, resource {index} ({resource}): the agent requires parameter {param:?} \
         (OCF_RESKEY_{param}), which is not given"
    )]
    MissingParam {
        group: String,
        index: usize,
        resource: String,
        param: String,
    },
    /// `volume` resources are run by the volume engine, not by a runner.
    #[error(
        "group {group}, resource {index} ({resource}): volume resources are run by the volume \
         engine, not by a resource runner"
    )]
    NotARunnerResource {
        group: String,
        index: usize,
        resource: String,
    },
}

/// Where a resource sits, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Place {
    pub group: String,
    pub index: usize,
    pub resource: String,
}

impl Place {
    fn new(spec: &ResourceSpec, group: &str, index: usize) -> Place {
        Place {
            group: group.to_string(),
            index,
            resource: spec.to_string(),
        }
    }

    /// A "cannot run here" error at this place.
    pub(crate) fn unusable(&self, reason: impl Into<String>) -> ResourceError {
        ResourceError::Unusable {
            group: self.group.clone(),
            index: self.index,
            resource: self.resource.clone(),
            reason: reason.into(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> ResourceError {
        ResourceError::Invalid {
            group: self.group.clone(),
            index: self.index,
            resource: self.resource.clone(),
            reason: reason.into(),
        }
    }
}

/// The core's own checks of one resource, through a one-resource group (the core checks a
/// resource only as part of a group; a filesystem needs its volume before it).
fn core_check(spec: &ResourceSpec, place: &Place) -> Result<(), ResourceError> {
    let mut resources = Vec::new();
    if let ResourceSpec::Filesystem { volume, .. } = spec {
        resources.push(ResourceSpec::Volume {
            volume: volume.clone(),
            monitor: Default::default(),
        });
    }
    resources.push(spec.clone());
    match GroupSpec::new(&place.group, resources).validate() {
        Ok(()) => Ok(()),
        Err(GroupError::BadResource { reason, .. }) => Err(place.invalid(reason)),
        Err(other) => Err(place.invalid(other.to_string())),
    }
}

/// The local checks only (no process is started, except an OCF agent's `meta-data`): used
/// before `group create` is sent, and by [`Runner::new`] (which leaves out the ip interface
/// lookup, see there).
pub fn validate(spec: &ResourceSpec, group: &str, index: usize) -> Result<(), ResourceError> {
    let place = Place::new(spec, group, index);
    core_check(spec, &place)?;
    check_kind(spec, &place)?;
    match spec {
        ResourceSpec::Ip {
            cidr, interface, ..
        } => ip::check_local(cidr, interface.as_deref(), &place).map(drop),
        ResourceSpec::Service {
            service:
                ServiceSpec::Ocf {
                    provider,
                    agent,
                    params,
                },
            ..
        } => ocf::check_local(provider, agent, params, &place).map(drop),
        _ => Ok(()),
    }
}

/// The checks of [`validate`] after the core's, but the ip interface lookup and the OCF
/// meta-data (which `Ocf::new` reads itself).
fn check_kind(spec: &ResourceSpec, place: &Place) -> Result<(), ResourceError> {
    let index = place.index;
    match spec {
        ResourceSpec::Volume { .. } => Err(ResourceError::NotARunnerResource {
            group: place.group.clone(),
            index,
            resource: place.resource.clone(),
        }),
        ResourceSpec::Filesystem { .. } => filesystem::check_local(spec, place),
        ResourceSpec::Ip { .. } => Ok(()),
        ResourceSpec::Service { service, .. } => match service {
            ServiceSpec::Exec { command, health } => exec::check_local(command, health, place),
            ServiceSpec::Systemd { .. } => systemd::check_local(place),
            // The meta-data is read (and checked) once, by `Ocf::new`.
            ServiceSpec::Ocf { .. } => Ok(()),
        },
    }
}

/// The kind-specific part of a runner.
enum Kind {
    Exec(exec::Exec),
    Systemd(systemd::Systemd),
    Ocf(ocf::Ocf),
    Ip(ip::Ip),
    Filesystem(filesystem::Filesystem),
}

/// Starts, stops and monitors one resource.
pub struct Runner {
    identity: String,
    timeouts: Timeouts,
    kind: Kind,
}

impl Runner {
    /// Validates locally (see [`validate`]) and prepares the runner; no resource is touched.
    /// An OCF agent's `meta-data` runs here (bounded by 5 s), so call it off the async threads
    /// (`spawn_blocking`). An ip's interface is looked up at each start and monitor instead:
    /// a VIP must stay stoppable after the address that chose its interface is gone.
    pub fn new(spec: &ResourceSpec, ctx: RunnerContext) -> Result<Runner, ResourceError> {
        let place = Place::new(spec, &ctx.group, ctx.index);
        core_check(spec, &place)?;
        check_kind(spec, &place)?;
        let monitor = *spec.monitor();
        let mut timeouts = Timeouts {
            start_ms: DEFAULT_START_TIMEOUT_MS,
            stop_ms: DEFAULT_STOP_TIMEOUT_MS,
            monitor_ms: DEFAULT_MONITOR_TIMEOUT_MS,
            interval_ms: DEFAULT_MONITOR_INTERVAL_MS,
        };
        let kind = match spec {
            ResourceSpec::Volume { .. } => {
                return Err(ResourceError::NotARunnerResource {
                    group: place.group,
                    index: place.index,
                    resource: place.resource,
                })
            }
            ResourceSpec::Filesystem { .. } => {
                Kind::Filesystem(filesystem::Filesystem::new(spec, &ctx, &place)?)
            }
            ResourceSpec::Ip {
                cidr, interface, ..
            } => Kind::Ip(ip::Ip::new(cidr, interface.as_deref(), &place)?),
            ResourceSpec::Service { service, .. } => {
                Self::service_kind(service, &ctx, &place, &mut timeouts)?
            }
        };
        timeouts.monitor_ms = monitor.timeout_ms.unwrap_or(timeouts.monitor_ms);
        timeouts.interval_ms = monitor.interval_ms.unwrap_or(timeouts.interval_ms);
        Ok(Runner {
            identity: spec.to_string(),
            timeouts,
            kind,
        })
    }

    fn service_kind(
        service: &ServiceSpec,
        ctx: &RunnerContext,
        place: &Place,
        timeouts: &mut Timeouts,
    ) -> Result<Kind, ResourceError> {
        Ok(match service {
            ServiceSpec::Exec { command, health } => {
                Kind::Exec(exec::Exec::new(command, health, ctx))
            }
            ServiceSpec::Systemd { unit } => Kind::Systemd(systemd::Systemd::new(unit, ctx)),
            ServiceSpec::Ocf {
                provider,
                agent,
                params,
            } => {
                let ocf = ocf::Ocf::new(provider, agent, params, ctx, place)?;
                ocf.apply_defaults(timeouts);
                Kind::Ocf(ocf)
            }
        })
    }

    /// The timeouts in force: the spec's monitor settings, else the OCF agent's meta-data
    /// defaults, else the core's monitor defaults and [`DEFAULT_START_TIMEOUT_MS`] /
    /// [`DEFAULT_STOP_TIMEOUT_MS`] (a spec cannot set start and stop timeouts yet).
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Replaces the timeouts (the operator tool's `--timeout-ms`, or a caller that knows better).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// Lets `exec` services outlive the calling process. Only the `tandem resource` operator
    /// tool calls this: under the daemon a service must die with it (its node loses its lease).
    pub fn detach_services(&mut self) {
        if let Kind::Exec(exec) = &mut self.kind {
            exec.detach();
        }
    }

    /// The resource's short identity (`exec nginx`, `ip 10.0.0.5/24`, ...).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Starts the resource; `Running` once it is up (for `exec`: once its health check passes).
    pub async fn start(&mut self) -> Outcome {
        let limit = self.timeouts.start_ms;
        let what = format!("start of {}", self.identity);
        let outcome = {
            let work = async {
                match &mut self.kind {
                    Kind::Exec(exec) => exec.start(limit, self.timeouts.monitor_ms).await,
                    Kind::Systemd(systemd) => systemd.start(limit).await,
                    Kind::Ocf(ocf) => ocf.start(limit).await,
                    Kind::Ip(ip) => within(&what, limit, ip.start()).await,
                    Kind::Filesystem(fs) => fs.start(limit).await,
                }
            };
            bounded(&what, limit, work).await
        };
        if outcome.is_none() {
            self.cleanup_after_timeout().await;
        }
        outcome.unwrap_or_else(|| timed_out(&what, limit))
    }

    /// Stops the resource; stopping something already stopped is success (`NotRunning`).
    pub async fn stop(&mut self) -> Outcome {
        let limit = self.timeouts.stop_ms;
        let what = format!("stop of {}", self.identity);
        let outcome = {
            let work = async {
                match &mut self.kind {
                    Kind::Exec(exec) => exec.stop(limit).await,
                    Kind::Systemd(systemd) => systemd.stop(limit).await,
                    Kind::Ocf(ocf) => ocf.stop(limit).await,
                    Kind::Ip(ip) => within(&what, limit, ip.stop()).await,
                    Kind::Filesystem(fs) => fs.stop(limit).await,
                }
            };
            bounded(&what, limit, work).await
        };
        if outcome.is_none() {
            self.cleanup_after_timeout().await;
        }
        outcome.unwrap_or_else(|| timed_out(&what, limit))
    }

    /// Checks the resource: `Running`, `NotRunning` (cleanly stopped) or `Failed(why)`.
    pub async fn monitor(&mut self) -> Outcome {
        let limit = self.timeouts.monitor_ms;
        let interval = self.timeouts.interval_ms;
        let what = format!("monitor of {}", self.identity);
        let work = async {
            match &mut self.kind {
                Kind::Exec(exec) => exec.monitor(limit).await,
                Kind::Systemd(systemd) => systemd.monitor(limit).await,
                Kind::Ocf(ocf) => ocf.monitor(limit, interval).await,
                Kind::Ip(ip) => within(&what, limit, ip.monitor()).await,
                Kind::Filesystem(fs) => fs.monitor(limit).await,
            }
        };
        bounded(&what, limit, work)
            .await
            .unwrap_or_else(|| timed_out(&what, limit))
    }

    /// After the outer deadline cut an operation short: the `exec` child started by a timed-out
    /// start must not stay behind (other kinds' children die with their guards).
    async fn cleanup_after_timeout(&mut self) {
        if let Kind::Exec(exec) = &mut self.kind {
            let _ = tokio::time::timeout(CLEANUP_GRACE, exec.kill_now()).await;
        }
    }
}

/// Runs `work` for at most `limit_ms` plus a little slack (the kinds enforce the limit
/// themselves and clean up; this is the backstop). `None` when the backstop fired.
async fn bounded(
    what: &str,
    limit_ms: u64,
    work: impl std::future::Future<Output = Outcome>,
) -> Option<Outcome> {
    let backstop = Duration::from_millis(limit_ms) + CLEANUP_GRACE;
    match tokio::time::timeout(backstop, work).await {
        Ok(outcome) => Some(outcome),
        Err(_) => {
            tracing::warn!("{what} overran its {limit_ms} ms limit; cleaning up");
            None
        }
    }
}

/// Runs `work` for at most `limit_ms` (for kinds that spawn nothing, so there is nothing to
/// clean up when the limit cuts them short).
async fn within(
    what: &str,
    limit_ms: u64,
    work: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    tokio::time::timeout(Duration::from_millis(limit_ms), work)
        .await
        .unwrap_or_else(|_| timed_out(what, limit_ms))
}

/// The standard answer of an operation that ran out of time.
pub(crate) fn timed_out(what: &str, limit_ms: u64) -> Outcome {
    Outcome::Failed(format!("{what} timed out after {limit_ms} ms"))
}

/// Creates `dir` (and parents), as an error message on failure.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))
}

/// Finds `program` on `$PATH` (an absolute or relative path is taken as given).
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// A regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The daemon drives runners from spawned tasks: every operation's future must be `Send`.
    #[test]
    fn operations_are_send() {
        let spec = ResourceSpec::Ip {
            cidr: "10.99.0.5/24".into(),
            interface: None,
            monitor: Default::default(),
        };
        let ctx = RunnerContext {
            group: "g".into(),
            index: 0,
            state_dir: std::env::temp_dir(),
            image: None,
        };
        let Ok(mut runner) = Runner::new(&spec, ctx) else {
            panic!("an ip runner needs no interface lookup in new");
        };
        assert_send(&runner.start());
        assert_send(&runner.stop());
        assert_send(&runner.monitor());
        assert_send(&runner);
    }

    #[test]
    fn errors_name_group_resource_and_problem() {
        let spec = ResourceSpec::Ip {
            cidr: "10.0.0.300/24".into(),
            interface: None,
            monitor: Default::default(),
        };
        let Err(error) = validate(&spec, "web", 2) else {
            panic!("an invalid CIDR is refused");
        };
        let text = error.to_string();
        assert!(
            text.starts_with("group web, resource 2 (ip 10.0.0.300/24): "),
            "{text}"
        );
        let volume = ResourceSpec::Volume {
            volume: "v".into(),
            monitor: Default::default(),
        };
        assert!(matches!(
            validate(&volume, "web", 0),
            Err(ResourceError::NotARunnerResource { .. })
        ));
        assert_eq!(instance_name("a b", 3), "a_b-3");
    }
}
