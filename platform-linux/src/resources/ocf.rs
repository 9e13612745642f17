//! OCF resource agents (`/usr/lib/ocf/resource.d/PROVIDER/AGENT`): the thousands of service
//! scripts Pacemaker users already have, run the way Pacemaker runs them.
//!
//! An action is `AGENT start|stop|monitor|meta-data` with the environment of the OCF
//! resource-agent API: `OCF_ROOT`, `OCF_RESOURCE_INSTANCE` (`<group>-<index>`),
//! `OCF_RESOURCE_TYPE`, `OCF_RESOURCE_PROVIDER`, one `OCF_RESKEY_<name>` per parameter,
//! `OCF_RESKEY_CRM_meta_timeout` and `OCF_RESKEY_CRM_meta_interval` (ms; the interval is 0 but
//! for the recurring monitor), and `HA_RSCTMP` (`<state-dir>/run/ocf`). The exit code says what
//! happened (ocf-returncodes): 0 success, 7 not running, anything else a failure, reported with
//! its OCF name and the last lines the agent wrote (agents log to the resource's log file).
//!
//! The agent's meta-data is read once, when the runner is made: missing required parameters
//! are refused there, and its advised timeouts become the defaults. `validate-all` is not run:
//! many agents' validation needs the service's binaries, which a standby may lack until its
//! shared storage is mounted. `TANDEM_OCF_ROOT` overrides the OCF root (tests).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::ocf_meta::{self, AgentMeta};
use super::process::{self, Capture, Ran};
use super::{is_executable, Outcome, Place, ResourceError, RunnerContext, Timeouts};

/// The standard OCF root.
const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";
/// How long `meta-data` may take (agents advise 5 s for it).
const META_DATA_TIMEOUT: Duration = Duration::from_secs(5);

/// `$TANDEM_OCF_ROOT`, else `/usr/lib/ocf`.
pub(crate) fn ocf_root() -> PathBuf {
    std::env::var_os("TANDEM_OCF_ROOT")
        .filter(|root| !root.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_OCF_ROOT), PathBuf::from)
}

/// The OCF name and meaning of an agent's exit code.
pub(crate) fn exit_meaning(code: i32) -> &'static str {
    match code {
        0 => "OCF_SUCCESS: success",
        1 => "OCF_ERR_GENERIC: generic error",
        2 => "OCF_ERR_ARGS: invalid arguments or parameters",
        3 => "OCF_ERR_UNIMPLEMENTED: action not implemented",
        4 => "OCF_ERR_PERM: insufficient permissions",
        5 => "OCF_ERR_INSTALLED: required software is not installed",
        6 => "OCF_ERR_CONFIGURED: the configuration is invalid",
        7 => "OCF_NOT_RUNNING: not running",
        8 => "OCF_RUNNING_PROMOTED: running as promoted, which tandem does not use",
        9 => "OCF_FAILED_PROMOTED: failed while promoted",
        190 => "OCF_DEGRADED: running but degraded",
        191 => "OCF_DEGRADED_PROMOTED: promoted but degraded",
        _ => "not an OCF exit code",
    }
}

/// "exit code 5 (OCF_ERR_INSTALLED: ...); output: ..." for messages.
fn describe(ran: &Ran) -> String {
    let mut text = match ran.code() {
        Some(code) => format!("exit code {code} ({})", exit_meaning(code)),
        None => process::describe_status(ran.status),
    };
    if !ran.tail.is_empty() {
        text.push_str(&format!("; agent output: {}", ran.tail));
    }
    text
}

/// The local checks: the agent exists and is executable, its meta-data parses, every required
/// parameter is given. Returns the meta-data.
pub(crate) fn check_local(
    provider: &str,
    agent: &str,
    params: &BTreeMap<String, String>,
    place: &Place,
) -> Result<AgentMeta, ResourceError> {
    let root = ocf_root();
    let path = root.join("resource.d").join(provider).join(agent);
    if !path.exists() {
        return Err(place.unusable(format!(
            "OCF agent {} does not exist (is the package providing ocf:{provider}:{agent} \
             installed? TANDEM_OCF_ROOT overrides {DEFAULT_OCF_ROOT})",
            path.display()
        )));
    }
    if !is_executable(&path) {
        return Err(place.unusable(format!(
            "OCF agent {} is not an executable file",
            path.display()
        )));
    }
    let mut command = Command::new(&path);
    command.arg("meta-data");
    let instance = super::instance_name(&place.group, place.index);
    base_env(&mut command, &root, provider, agent, &instance);
    let what = format!("{} meta-data", path.display());
    let ran = process::run_blocking(command, &what, META_DATA_TIMEOUT)
        .map_err(|reason| place.unusable(reason))?;
    if !ran.status.success() {
        return Err(place.unusable(format!("{what} failed: {}", describe(&ran))));
    }
    let meta = ocf_meta::parse(&ran.stdout)
        .map_err(|reason| place.unusable(format!("{what}: {reason}")))?;
    if let Some(missing) = meta
        .params
        .iter()
        .find(|param| param.required && !params.contains_key(&param.name))
    {
        return Err(ResourceError::MissingParam {
            group: place.group.clone(),
            index: place.index,
            resource: place.resource.clone(),
            param: missing.name.clone(),
        });
    }
    for name in params.keys() {
        if !meta.params.iter().any(|param| &param.name == name) {
            tracing::warn!(
                "group {}, resource {} ({}): parameter {name:?} is not in the agent's meta-data",
                place.group,
                place.index,
                place.resource
            );
        }
    }
    Ok(meta)
}

/// The environment every action gets, parameters aside.
fn base_env(
    command: &mut Command,
    root: &std::path::Path,
    provider: &str,
    agent: &str,
    instance: &str,
) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OCF_RESKEY_") {
            command.env_remove(&key);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
    command
        .env("OCF_ROOT", root)
        .env("OCF_RA_VERSION_MAJOR", "1")
        .env("OCF_RA_VERSION_MINOR", "0")
        .env("OCF_RESOURCE_INSTANCE", instance)
        .env("OCF_RESOURCE_TYPE", agent)
        .env("OCF_RESOURCE_PROVIDER", provider);
}

pub(crate) struct Ocf {
    provider: String,
    agent: String,
    root: PathBuf,
    params: BTreeMap<String, String>,
    instance: String,
    log: PathBuf,
    rsctmp: PathBuf,
    meta: AgentMeta,
}

impl Ocf {
    pub fn new(
        provider: &str,
        agent: &str,
        params: &BTreeMap<String, String>,
        ctx: &RunnerContext,
        place: &Place,
    ) -> Result<Ocf, ResourceError> {
        let meta = check_local(provider, agent, params, place)?;
        Ok(Ocf {
            provider: provider.to_string(),
            agent: agent.to_string(),
            root: ocf_root(),
            params: params.clone(),
            instance: ctx.instance(),
            log: ctx.log_path(),
            rsctmp: ctx.run_dir().join("ocf"),
            meta,
        })
    }

    /// The agent's advised timeouts and monitor interval, where it gives them.
    pub fn apply_defaults(&self, timeouts: &mut Timeouts) {
        let meta = &self.meta;
        timeouts.start_ms = meta.start_ms.unwrap_or(timeouts.start_ms);
        timeouts.stop_ms = meta.stop_ms.unwrap_or(timeouts.stop_ms);
        timeouts.monitor_ms = meta.monitor_ms.unwrap_or(timeouts.monitor_ms);
        timeouts.interval_ms = meta.monitor_interval_ms.unwrap_or(timeouts.interval_ms);
    }

    /// Runs `AGENT action` within `limit_ms`.
    async fn action(&self, action: &str, limit_ms: u64, interval_ms: u64) -> Result<Ran, String> {
        super::ensure_dir(&self.rsctmp)?;
        let path = self
            .root
            .join("resource.d")
            .join(&self.provider)
            .join(&self.agent);
        let mut command = Command::new(&path);
        command.arg(action);
        base_env(
            &mut command,
            &self.root,
            &self.provider,
            &self.agent,
            &self.instance,
        );
        for (key, value) in &self.params {
            command.env(format!("OCF_RESKEY_{key}"), value);
        }
        command
            .env("OCF_RESKEY_CRM_meta_timeout", limit_ms.to_string())
            .env("OCF_RESKEY_CRM_meta_interval", interval_ms.to_string())
            .env("HA_RSCTMP", &self.rsctmp);
        let what = format!("{action} of ocf {}:{}", self.provider, self.agent);
        process::run(
            command,
            &what,
            Capture::Log(&self.log),
            Duration::from_millis(limit_ms),
        )
        .await
    }

    fn failed(&self, action: &str, ran: &Ran) -> Outcome {
        Outcome::Failed(format!(
            "{action} of ocf {}:{} failed: {}",
            self.provider,
            self.agent,
            describe(ran)
        ))
    }

    pub async fn start(&mut self, limit_ms: u64) -> Outcome {
        match self.action("start", limit_ms, 0).await {
            Ok(ran) if ran.code() == Some(0) => Outcome::Running,
            Ok(ran) => self.failed("start", &ran),
            Err(reason) => Outcome::Failed(reason),
        }
    }

    pub async fn stop(&mut self, limit_ms: u64) -> Outcome {
        match self.action("stop", limit_ms, 0).await {
            // The API says stop of a stopped resource answers 0; some agents answer 7.
            Ok(ran) if matches!(ran.code(), Some(0 | 7)) => Outcome::NotRunning,
            Ok(ran) => self.failed("stop", &ran),
            Err(reason) => Outcome::Failed(reason),
        }
    }

    pub async fn monitor(&mut self, limit_ms: u64, interval_ms: u64) -> Outcome {
        match self.action("monitor", limit_ms, interval_ms).await {
            Ok(ran) if ran.code() == Some(0) => Outcome::Running,
            Ok(ran) if ran.code() == Some(7) => Outcome::NotRunning,
            Ok(ran) => self.failed("monitor", &ran),
            Err(reason) => Outcome::Failed(reason),
        }
    }
}
