//! Resource groups in the replicated cluster state: what runs together, and where it may run.
//!
//! A group is an ordered list of resources (DESIGN.md §2) that runs on one node: started in
//! order, stopped in reverse. The operator's wish ([`GroupSpec`]) and the runtime facts the
//! cluster has committed ([`GroupStatus`]: the current node, failures, quarantines, a pin) are
//! kept apart, so a spec edit never loses history and the scheduler sees both in one place.
//!
//! Everything here is validated before it enters the state (DESIGN.md §5 rule 5): an error names
//! the group, the resource (by position and identity) and what is wrong. Time arrives inside the
//! changes (`at_unix`, decided by the proposer), so `apply` stays deterministic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::state::{ClusterState, Role};

/// Monitor interval used when a resource does not set one (Pacemaker's usual 10 s).
pub const DEFAULT_MONITOR_INTERVAL_MS: u64 = 10_000;
/// Monitor timeout used when a resource does not set one: twice the default interval, so a
/// slow but healthy check on a loaded box is not mistaken for a failure.
pub const DEFAULT_MONITOR_TIMEOUT_MS: u64 = 20_000;
/// The longest interval or timeout we accept (one day): a typo guard.
pub const MAX_MONITOR_MS: u64 = 86_400_000;
/// Local restarts allowed within the window before the group fails over.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// The window in which failures count towards `max_restarts` (5 minutes).
pub const DEFAULT_RESTART_WINDOW_SECS: u64 = 300;
/// How long a flapping group is kept away from a node (10 minutes).
pub const DEFAULT_QUARANTINE_SECS: u64 = 600;
/// How many resources one group may hold.
pub const MAX_RESOURCES: usize = 32;

/// How often and how patiently a resource is checked. `None` takes the documented default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Monitor {
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.unwrap_or(DEFAULT_MONITOR_INTERVAL_MS)
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_MONITOR_TIMEOUT_MS)
    }
}

/// How an `exec` service is judged healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HealthCheck {
    /// The started process is still running.
    ProcessAlive,
    /// This command (argv, no shell) exits 0.
    Command { command: Vec<String> },
    /// A TCP connect to `host:port` succeeds (`host` defaults to 127.0.0.1).
    Tcp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        port: u16,
    },
    /// An HTTP GET of `url` answers 2xx.
    Http { url: String },
}

/// A service: a process we start, a systemd unit, or an OCF resource agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServiceSpec {
    /// Runs `command` (argv, no shell: nothing to quote or inject).
    Exec {
        command: Vec<String>,
        #[serde(default = "process_alive")]
        health: HealthCheck,
    },
    Systemd {
        unit: String,
    },
    /// `/usr/lib/ocf/resource.d/PROVIDER/AGENT`, given `OCF_RESKEY_<param>` variables.
    Ocf {
        provider: String,
        agent: String,
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
}

fn process_alive() -> HealthCheck {
    HealthCheck::ProcessAlive
}

/// One thing a node can start, stop and monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Unknown keys are refused (a typo in cluster.toml must not silently become a default).
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ResourceSpec {
    /// Be primary of the volume (by name).
    Volume {
        volume: String,
        #[serde(default)]
        monitor: Monitor,
    },
    /// Mount the volume's image at `mountpoint` (mkfs on first use when `mkfs`).
    Filesystem {
        volume: String,
        mountpoint: String,
        fstype: String,
        #[serde(default)]
        mkfs: bool,
        /// Mount options (`-o`), comma-separated; empty for none.
        #[serde(default)]
        options: String,
        #[serde(default)]
        monitor: Monitor,
    },
    /// A virtual IP (`10.0.0.5/24`, `fd00::5/64`); on `interface`, or on the interface whose
    /// subnet holds it when `None`.
    Ip {
        cidr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
        #[serde(default)]
        monitor: Monitor,
    },
    Service {
        service: ServiceSpec,
        #[serde(default)]
        monitor: Monitor,
    },
}

impl ResourceSpec {
    pub fn monitor(&self) -> &Monitor {
        match self {
            ResourceSpec::Volume { monitor, .. }
            | ResourceSpec::Filesystem { monitor, .. }
            | ResourceSpec::Ip { monitor, .. }
            | ResourceSpec::Service { monitor, .. } => monitor,
        }
    }

    /// The volume this resource needs, if any.
    pub fn volume(&self) -> Option<&str> {
        match self {
            ResourceSpec::Volume { volume, .. } | ResourceSpec::Filesystem { volume, .. } => {
                Some(volume)
            }
            _ => None,
        }
    }
}

impl fmt::Display for ResourceSpec {
    /// A short identity used in errors, explanations and duplicate checks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceSpec::Volume { volume, .. } => write!(f, "volume {volume}"),
            ResourceSpec::Filesystem { mountpoint, .. } => write!(f, "filesystem {mountpoint}"),
            ResourceSpec::Ip { cidr, .. } => write!(f, "ip {cidr}"),
            ResourceSpec::Service { service, .. } => match service {
                ServiceSpec::Exec { command, .. } => {
                    write!(f, "exec {}", command.first().map_or("", String::as_str))
                }
                ServiceSpec::Systemd { unit } => write!(f, "systemd {unit}"),
                ServiceSpec::Ocf {
                    provider, agent, ..
                } => write!(f, "ocf {provider}:{agent}"),
            },
        }
    }
}

/// Whether a group returns to a more preferred node once that node is eligible again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failback {
    /// Stay where it runs; the operator moves it back (`tandem group move`). Every move is an
    /// outage, so this is the default.
    #[default]
    Manual,
    /// Move back to a more preferred node (see [`GroupSpec::stickiness`]).
    Auto,
}

/// The operator's wish for a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub resources: Vec<ResourceSpec>,
    /// Nodes in order of preference; nodes not listed are used after them.
    #[serde(default)]
    pub preferred: Vec<NodeId>,
    #[serde(default)]
    pub failback: Failback,
    /// With `failback = auto`, the group moves back only to a node more than `stickiness`
    /// places ahead of its current node in `preferred` (a node not listed counts as placed
    /// after every listed one). 0: any more preferred node. Never moves a group for load.
    #[serde(default)]
    pub stickiness: u32,
    /// Local restarts allowed within `restart_window_secs`; one more failure fails over.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window")]
    pub restart_window_secs: u64,
    /// How long a node is barred for this group after too many failures.
    #[serde(default = "default_quarantine")]
    pub quarantine_secs: u64,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

pub(crate) fn default_max_restarts() -> u32 {
    DEFAULT_MAX_RESTARTS
}
pub(crate) fn default_restart_window() -> u64 {
    DEFAULT_RESTART_WINDOW_SECS
}
pub(crate) fn default_quarantine() -> u64 {
    DEFAULT_QUARANTINE_SECS
}
pub(crate) fn default_enabled() -> bool {
    true
}

impl GroupSpec {
    /// A group with every setting at its default.
    pub fn new(name: &str, resources: Vec<ResourceSpec>) -> GroupSpec {
        GroupSpec {
            name: name.to_string(),
            resources,
            preferred: Vec::new(),
            failback: Failback::Manual,
            stickiness: 0,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_window_secs: DEFAULT_RESTART_WINDOW_SECS,
            quarantine_secs: DEFAULT_QUARANTINE_SECS,
            enabled: true,
        }
    }

    /// The volumes the group needs, in order, without repeats.
    pub fn volumes(&self) -> Vec<&str> {
        let mut volumes: Vec<&str> = Vec::new();
        for name in self.resources.iter().filter_map(ResourceSpec::volume) {
            if !volumes.contains(&name) {
                volumes.push(name);
            }
        }
        volumes
    }

    /// Checks everything that needs no cluster state.
    pub fn validate(&self) -> Result<(), GroupError> {
        let group = &self.name;
        if !is_name(&self.name, 64) {
            return Err(GroupError::BadName(self.name.clone()));
        }
        if self.resources.is_empty() {
            return Err(GroupError::Empty(group.clone()));
        }
        if self.resources.len() > MAX_RESOURCES {
            return Err(GroupError::TooManyResources {
                group: group.clone(),
                count: self.resources.len(),
            });
        }
        if self.restart_window_secs == 0 || self.quarantine_secs == 0 {
            return Err(GroupError::BadSetting {
                group: group.clone(),
                reason: "restart_window_secs and quarantine_secs must be above zero".into(),
            });
        }
        let mut seen: Vec<String> = Vec::new();
        let mut volumes_before: Vec<&str> = Vec::new();
        for (index, resource) in self.resources.iter().enumerate() {
            let bad = |reason: String| GroupError::BadResource {
                group: group.clone(),
                index,
                resource: resource.to_string(),
                reason,
            };
            check_resource(resource).map_err(bad)?;
            if let ResourceSpec::Filesystem { volume, .. } = resource {
                if !volumes_before.contains(&volume.as_str()) {
                    return Err(bad(format!(
                        "its volume {volume} must appear in the group as a volume resource \
                         before it (the volume is made primary first)"
                    )));
                }
            }
            if let ResourceSpec::Volume { volume, .. } = resource {
                volumes_before.push(volume);
            }
            let identity = resource.to_string();
            if seen.contains(&identity) {
                return Err(bad("it appears twice in the group".into()));
            }
            seen.push(identity);
        }
        let mut preferred = self.preferred.clone();
        preferred.sort_unstable();
        if let Some(pair) = preferred.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(GroupError::BadSetting {
                group: group.clone(),
                reason: format!("node {} is listed twice in preferred", pair[0]),
            });
        }
        Ok(())
    }
}

/// What the cluster has committed about a group at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Where the group runs (or is being started), as last committed by the leader.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// Raised by every committed placement; a decision made against an older placement is
    /// refused, like a volume's epoch fences stale leg changes.
    #[serde(default)]
    pub epoch: u64,
    /// Failure times (unix seconds) per node, within the restart window.
    #[serde(default)]
    pub failures: BTreeMap<NodeId, Vec<u64>>,
    /// Nodes barred for this group until the given time (unix seconds).
    #[serde(default)]
    pub quarantined_until: BTreeMap<NodeId, u64>,
    /// Set by an explicit move: the scheduler keeps the group there until `Clear`.
    #[serde(default)]
    pub pinned: Option<NodeId>,
    /// The node that may have resources of the group running: it acquired the group before
    /// starting anything and has not released it. Another node may start the group only once
    /// this is empty, so a switchover never runs the group twice (DESIGN.md §5 rule 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<NodeId>,
    /// The last holder the leader declared fenced: it was gone past the failover timeout, so
    /// its lease lapsed and it stopped by itself. Its volumes may be taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<NodeId>,
}

impl GroupStatus {
    /// Whether `node` is barred for this group at `now_unix`, and until when.
    pub fn quarantine_of(&self, node: NodeId, now_unix: u64) -> Option<u64> {
        self.quarantined_until
            .get(&node)
            .copied()
            .filter(|&until| until > now_unix)
    }
}

/// A group: the wish and the facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub spec: GroupSpec,
    #[serde(default)]
    pub status: GroupStatus,
}

/// A change to the groups, decided by a proposer and applied by all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum GroupChange {
    Create {
        spec: GroupSpec,
    },
    /// Replaces the spec of the group named `spec.name`, keeping its status (placement,
    /// failures, quarantines, pin). Refused while the group is placed if its set of volumes
    /// would change: the node running it holds the old volumes.
    Update {
        spec: GroupSpec,
    },
    /// Deletes a group that is placed nowhere (disable it and let it stop first).
    Delete {
        group: String,
    },
    Enable {
        group: String,
    },
    Disable {
        group: String,
    },
    /// Pins the group to `to` until `Clear`.
    Move {
        group: String,
        to: NodeId,
    },
    /// Drops the pin, the failure history and every quarantine of the group.
    Clear {
        group: String,
    },
    /// The group failed on `node` (a monitor or a start failed) at `at_unix`.
    RecordFailure {
        group: String,
        node: NodeId,
        at_unix: u64,
    },
    /// The leader's decision, made against placement `epoch`.
    Placed {
        group: String,
        node: Option<NodeId>,
        epoch: u64,
    },
    /// `node`, where the group is placed at `epoch`, is about to start it.
    Acquire {
        group: String,
        node: NodeId,
        epoch: u64,
    },
    /// `node` has stopped every resource of the group.
    Release {
        group: String,
        node: NodeId,
    },
    /// The leader declares the holder `node` fenced: gone past the failover timeout.
    Fence {
        group: String,
        node: NodeId,
    },
}

/// Why a group or a group change was refused; every node refuses it identically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group name {0:?} is invalid: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("group {0} has no resources")]
    Empty(String),
    #[error("group {group} has {count} resources, at most {MAX_RESOURCES} are allowed")]
    TooManyResources { group: String, count: usize },
    #[error("group {group}, resource {index} ({resource}): {reason}")]
    BadResource {
        group: String,
        index: usize,
        resource: String,
        reason: String,
    },
    #[error("group {group}: {reason}")]
    BadSetting { group: String, reason: String },
    #[error("a group named {0:?} already exists")]
    NameTaken(String),
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
    #[error("group {group} needs volume {volume}, which does not exist")]
    NoSuchVolume { group: String, volume: String },
    #[error("group {group} names node {node}, which is not a member")]
    NoSuchNode { group: String, node: NodeId },
    #[error("group {group} names node {node}, a witness: witnesses never run resources")]
    Witness { group: String, node: NodeId },
    #[error("group {group} cannot run on node {node}: it reaches no leg of volume {volume}")]
    NoLeg {
        group: String,
        node: NodeId,
        volume: String,
    },
    #[error("group {group} still runs on node {node}; disable it and wait until it stopped")]
    StillPlaced { group: String, node: NodeId },
    #[error("volume {volume} is used by group {group}; delete the group first")]
    VolumeInUse { volume: String, group: String },
    #[error(
        "group {group} is placed on node {node}: its volumes cannot change while it is placed \
         ({old} -> {new}); disable it and wait until it stopped, then update it"
    )]
    VolumesChangeWhilePlaced {
        group: String,
        node: NodeId,
        old: String,
        new: String,
    },
    #[error("group {group} is held by node {holder}, which has not released it yet")]
    HeldElsewhere { group: String, holder: NodeId },
    #[error("group {group} is not placed on node {node} at epoch {epoch}")]
    NotPlacedHere {
        group: String,
        node: NodeId,
        epoch: u64,
    },
    #[error(
        "group {group} cannot be released by node {node}: it is still primary of volume {volume}"
    )]
    StillPrimary {
        group: String,
        volume: String,
        node: NodeId,
    },
    #[error(
        "group {group} cannot be acquired: volume {volume} is primary on node {primary}, which \
         was not fenced"
    )]
    PrimaryElsewhere {
        group: String,
        volume: String,
        primary: NodeId,
    },
    #[error("group {group} is not held by node {node}")]
    NotHolder { group: String, node: NodeId },
    #[error("stale placement of group {group}: decided at epoch {given}, the group is at epoch {current}")]
    StalePlacement {
        group: String,
        given: u64,
        current: u64,
    },
}

/// 1..=`max` letters, digits, '-', '_' or '.', and not `.` or `..`.
fn is_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn check_argv(what: &str, argv: &[String]) -> Result<(), String> {
    if argv.first().is_none_or(|program| program.is_empty()) {
        return Err(format!("{what} is empty"));
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

/// Checks one resource on its own; the error is the reason, the caller adds where.
fn check_resource(resource: &ResourceSpec) -> Result<(), String> {
    check_monitor(resource.monitor())?;
    match resource {
        ResourceSpec::Volume { volume, .. } => check_volume_name(volume),
        ResourceSpec::Filesystem {
            volume,
            mountpoint,
            fstype,
            options,
            ..
        } => {
            check_volume_name(volume)?;
            if !mountpoint.starts_with('/') || mountpoint == "/" || mountpoint.contains('\0') {
                return Err(format!(
                    "mountpoint {mountpoint:?} must be an absolute path other than /"
                ));
            }
            if !is_name(fstype, 32) {
                return Err(format!("filesystem type {fstype:?} is not a valid name"));
            }
            if options.chars().any(|c| c.is_whitespace() || c == '\0') {
                return Err(format!(
                    "mount options {options:?} must be comma-separated, without spaces"
                ));
            }
            Ok(())
        }
        ResourceSpec::Ip {
            cidr, interface, ..
        } => {
            parse_cidr(cidr)?;
            match interface {
                Some(name) if !is_name(name, 15) => Err(format!(
                    "interface {name:?} is not a valid interface name (1-15 letters, digits, \
                     '-', '_' or '.')"
                )),
                _ => Ok(()),
            }
        }
        ResourceSpec::Service { service, .. } => check_service(service),
    }
}

fn check_volume_name(volume: &str) -> Result<(), String> {
    if is_name(volume, 64) {
        Ok(())
    } else {
        Err(format!("volume name {volume:?} is invalid"))
    }
}

fn check_monitor(monitor: &Monitor) -> Result<(), String> {
    for (what, value) in [
        ("monitor interval_ms", monitor.interval_ms),
        ("monitor timeout_ms", monitor.timeout_ms),
    ] {
        if let Some(ms) = value {
            if ms == 0 || ms > MAX_MONITOR_MS {
                return Err(format!(
                    "{what} {ms} must be between 1 and {MAX_MONITOR_MS}"
                ));
            }
        }
    }
    Ok(())
}

fn check_service(service: &ServiceSpec) -> Result<(), String> {
    match service {
        ServiceSpec::Exec { command, health } => {
            check_argv("the command", command)?;
            match health {
                HealthCheck::ProcessAlive => Ok(()),
                HealthCheck::Command { command } => check_argv("the health command", command),
                HealthCheck::Tcp { port: 0, .. } => Err("health check TCP port 0".into()),
                HealthCheck::Tcp { host, .. } => match host {
                    Some(host) if host.is_empty() || host.contains(['/', ' ', '\0']) => {
                        Err(format!("health check host {host:?} is invalid"))
                    }
                    _ => Ok(()),
                },
                HealthCheck::Http { url } => {
                    let ok = (url.starts_with("http://") || url.starts_with("https://"))
                        && !url.contains(|c: char| c.is_whitespace() || c == '\0');
                    if ok {
                        Ok(())
                    } else {
                        Err(format!(
                            "health check URL {url:?} must be http:// or https://"
                        ))
                    }
                }
            }
        }
        ServiceSpec::Systemd { unit } => {
            let ok = !unit.is_empty()
                && unit.len() <= 255
                && unit
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
            if ok {
                Ok(())
            } else {
                Err(format!("systemd unit {unit:?} is not a valid unit name"))
            }
        }
        ServiceSpec::Ocf {
            provider,
            agent,
            params,
        } => check_ocf(provider, agent, params),
    }
}

fn check_ocf(provider: &str, agent: &str, params: &BTreeMap<String, String>) -> Result<(), String> {
    for (what, name) in [("provider", provider), ("agent", agent)] {
        if !is_name(name, 64) {
            return Err(format!(
                "OCF {what} {name:?} is invalid: it becomes part of a path under \
                 /usr/lib/ocf/resource.d, so only letters, digits, '-', '_' and '.' are allowed"
            ));
        }
    }
    for (key, value) in params {
        let key_ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(format!(
                "OCF parameter name {key:?} is invalid (it becomes OCF_RESKEY_{key})"
            ));
        }
        if value.contains('\0') {
            return Err(format!("OCF parameter {key} contains a NUL byte"));
        }
    }
    Ok(())
}

/// Parses `ADDRESS/PREFIX`, refusing a prefix longer than the address.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let invalid = |why: &str| format!("{cidr:?} is not a valid CIDR address: {why}");
    let (address, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| invalid("expected ADDRESS/PREFIX, e.g. 10.0.0.5/24"))?;
    let address: IpAddr = address.parse().map_err(|_| invalid("bad address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid("bad prefix length"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid(&format!("prefix longer than {max}")));
    }
    if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
        return Err(invalid("not a unicast address a node can own"));
    }
    Ok((address, prefix))
}

/// Applies a failure: prune failures outside the window, and quarantine the node once the
/// failures within it exceed `max_restarts`. Returns a line for the log.
pub fn record_failure(group: &mut Group, node: NodeId, at_unix: u64) -> String {
    let spec = &group.spec;
    let since = at_unix.saturating_sub(spec.restart_window_secs);
    let failures = group.status.failures.entry(node).or_default();
    failures.retain(|&at| at > since && at <= at_unix);
    failures.push(at_unix);
    let count = failures.len();
    if count > spec.max_restarts as usize {
        let until = at_unix.saturating_add(spec.quarantine_secs);
        group.status.failures.remove(&node);
        group.status.quarantined_until.insert(node, until);
        return format!(
            "group {} failed {count} times on node {node} within {} s: quarantined there \
             until {until} (unix seconds)",
            spec.name, spec.restart_window_secs
        );
    }
    format!(
        "group {} failed on node {node} ({count} of {} restarts within {} s)",
        spec.name,
        spec.max_restarts + 1,
        spec.restart_window_secs
    )
}

/// Checks a group against the cluster: its volumes and nodes exist, no witness is named.
pub fn check_against(state: &ClusterState, spec: &GroupSpec) -> Result<(), GroupError> {
    spec.validate()?;
    for volume in spec.volumes() {
        if state.volume_by_name(volume).is_none() {
            return Err(GroupError::NoSuchVolume {
                group: spec.name.clone(),
                volume: volume.to_string(),
            });
        }
    }
    for &node in &spec.preferred {
        check_node(state, &spec.name, node)?;
    }
    Ok(())
}

/// `node` is a member that may hold resources.
fn check_node(state: &ClusterState, group: &str, node: NodeId) -> Result<(), GroupError> {
    let group = group.to_string();
    match state.nodes.get(&node) {
        None => Err(GroupError::NoSuchNode { group, node }),
        Some(info) if info.role == Role::Witness => Err(GroupError::Witness { group, node }),
        Some(_) => Ok(()),
    }
}

fn group_mut<'a>(state: &'a mut ClusterState, name: &str) -> Result<&'a mut Group, GroupError> {
    state
        .groups
        .get_mut(name)
        .ok_or_else(|| GroupError::NoSuchGroup(name.to_string()))
}

/// Applies one committed group change to the state.
pub(crate) fn apply(state: &mut ClusterState, change: &GroupChange) -> Result<String, GroupError> {
    match change {
        GroupChange::Create { spec } => {
            if state.groups.contains_key(&spec.name) {
                return Err(GroupError::NameTaken(spec.name.clone()));
            }
            check_against(state, spec)?;
            let group = Group {
                spec: spec.clone(),
                status: GroupStatus::default(),
            };
            state.groups.insert(spec.name.clone(), group);
            Ok(format!("group {} created", spec.name))
        }
        GroupChange::Update { spec } => update(state, spec),
        GroupChange::Delete { group } => {
            let status = &group_mut(state, group)?.status;
            if let Some(holder) = status.holder {
                let group = group.clone();
                return Err(GroupError::HeldElsewhere { group, holder });
            }
            if let Some(node) = status.node {
                let group = group.clone();
                return Err(GroupError::StillPlaced { group, node });
            }
            state.groups.remove(group);
            Ok(format!("group {group} deleted"))
        }
        GroupChange::Enable { group } | GroupChange::Disable { group } => {
            let enabled = matches!(change, GroupChange::Enable { .. });
            group_mut(state, group)?.spec.enabled = enabled;
            let word = if enabled { "enabled" } else { "disabled" };
            Ok(format!("group {group} {word}"))
        }
        GroupChange::Move { group, to } => move_group(state, group, *to),
        GroupChange::Clear { group } => {
            let status = &mut group_mut(state, group)?.status;
            status.pinned = None;
            status.failures.clear();
            status.quarantined_until.clear();
            Ok(format!(
                "group {group}: pin, failures and quarantines cleared"
            ))
        }
        GroupChange::RecordFailure {
            group,
            node,
            at_unix,
        } => {
            check_node(state, group, *node)?;
            Ok(record_failure(group_mut(state, group)?, *node, *at_unix))
        }
        GroupChange::Acquire { group, node, epoch } => acquire(state, group, *node, *epoch),
        GroupChange::Release { group, node } | GroupChange::Fence { group, node } => {
            if matches!(change, GroupChange::Release { .. }) {
                still_primary(state, group, *node)?;
            }
            let status = &mut group_mut(state, group)?.status;
            if status.holder != Some(*node) {
                let (group, node) = (group.clone(), *node);
                return Err(GroupError::NotHolder { group, node });
            }
            status.holder = None;
            if matches!(change, GroupChange::Fence { .. }) {
                status.fenced = Some(*node);
                return Ok(format!(
                    "group {group}: node {node} declared fenced (gone past the failover timeout)"
                ));
            }
            Ok(format!("group {group} released by node {node}"))
        }
        GroupChange::Placed { group, node, epoch } => {
            if let Some(node) = node {
                check_node(state, group, *node)?;
            }
            let status = &mut group_mut(state, group)?.status;
            if *epoch != status.epoch {
                let (group, given, current) = (group.clone(), *epoch, status.epoch);
                return Err(GroupError::StalePlacement {
                    group,
                    given,
                    current,
                });
            }
            status.node = *node;
            status.epoch += 1;
            Ok(match node {
                Some(node) => format!("group {group} placed on node {node} (epoch {})", epoch + 1),
                None => format!("group {group} placed nowhere (epoch {})", epoch + 1),
            })
        }
    }
}

/// A node releases a group only after demoting its volumes (a promotion that committed late
/// must be undone first, or the next holder could never promote).
fn still_primary(state: &ClusterState, group: &str, node: NodeId) -> Result<(), GroupError> {
    let spec = &state
        .groups
        .get(group)
        .ok_or_else(|| GroupError::NoSuchGroup(group.to_string()))?
        .spec;
    for volume in spec.volumes() {
        if state
            .volume_by_name(volume)
            .is_some_and(|info| info.primary == Some(node))
        {
            return Err(GroupError::StillPrimary {
                group: group.to_string(),
                volume: volume.to_string(),
                node,
            });
        }
    }
    Ok(())
}

/// A node acquires a group only while each of its volumes is primary nowhere, on itself, or on
/// the node the leader fenced (a takeover): never while another live writer has it.
fn primary_elsewhere(state: &ClusterState, group: &str, node: NodeId) -> Result<(), GroupError> {
    let status_and_spec = state
        .groups
        .get(group)
        .ok_or_else(|| GroupError::NoSuchGroup(group.to_string()))?;
    let fenced = status_and_spec.status.fenced;
    for volume in status_and_spec.spec.volumes() {
        let primary = state.volume_by_name(volume).and_then(|info| info.primary);
        if let Some(primary) = primary.filter(|&p| p != node && Some(p) != fenced) {
            return Err(GroupError::PrimaryElsewhere {
                group: group.to_string(),
                volume: volume.to_string(),
                primary,
            });
        }
    }
    Ok(())
}

/// `node` takes the group it is placed on, once nobody else holds it.
fn acquire(
    state: &mut ClusterState,
    group: &str,
    node: NodeId,
    epoch: u64,
) -> Result<String, GroupError> {
    primary_elsewhere(state, group, node)?;
    let status = &mut group_mut(state, group)?.status;
    if status.node != Some(node) || status.epoch != epoch {
        let group = group.to_string();
        return Err(GroupError::NotPlacedHere { group, node, epoch });
    }
    match status.holder {
        Some(holder) if holder != node => Err(GroupError::HeldElsewhere {
            group: group.to_string(),
            holder,
        }),
        _ => {
            status.holder = Some(node);
            Ok(format!("group {group} acquired by node {node}"))
        }
    }
}

/// Replaces a group's spec, keeping its status; its volumes stay fixed while it is placed.
fn update(state: &mut ClusterState, spec: &GroupSpec) -> Result<String, GroupError> {
    check_against(state, spec)?;
    let group = group_mut(state, &spec.name)?;
    if let Some(node) = group.status.node {
        let mut old = group.spec.volumes();
        let mut new = spec.volumes();
        old.sort_unstable();
        new.sort_unstable();
        if old != new {
            return Err(GroupError::VolumesChangeWhilePlaced {
                group: spec.name.clone(),
                node,
                old: old.join(","),
                new: new.join(","),
            });
        }
    }
    group.spec = spec.clone();
    Ok(format!("group {} updated", spec.name))
}

/// Pins a group to `to`; refused when `to` could never run it (a witness, a node without a
/// leg of one of its volumes). Whether `to` can run it *now* is the scheduler's call.
fn move_group(state: &mut ClusterState, group: &str, to: NodeId) -> Result<String, GroupError> {
    check_node(state, group, to)?;
    let spec = &state
        .groups
        .get(group)
        .ok_or_else(|| GroupError::NoSuchGroup(group.to_string()))?
        .spec;
    for volume in spec.volumes() {
        let reaches = state
            .volume_by_name(volume)
            .is_some_and(|info| info.leg_of(to).is_some());
        if !reaches {
            return Err(GroupError::NoLeg {
                group: group.to_string(),
                node: to,
                volume: volume.to_string(),
            });
        }
    }
    group_mut(state, group)?.status.pinned = Some(to);
    Ok(format!("group {group} pinned to node {to} until cleared"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str) -> ResourceSpec {
        ResourceSpec::Volume {
            volume: name.into(),
            monitor: Monitor::default(),
        }
    }

    fn fs(volume: &str) -> ResourceSpec {
        ResourceSpec::Filesystem {
            volume: volume.into(),
            mountpoint: "/srv/db".into(),
            fstype: "ext4".into(),
            mkfs: true,
            options: "noatime".into(),
            monitor: Monitor::default(),
        }
    }

    fn ip(cidr: &str) -> ResourceSpec {
        ResourceSpec::Ip {
            cidr: cidr.into(),
            interface: Some("eth0".into()),
            monitor: Monitor::default(),
        }
    }

    fn ocf(provider: &str, agent: &str) -> ResourceSpec {
        ResourceSpec::Service {
            service: ServiceSpec::Ocf {
                provider: provider.into(),
                agent: agent.into(),
                params: BTreeMap::from([("config".to_string(), "/etc/x".to_string())]),
            },
            monitor: Monitor::default(),
        }
    }

    fn error_of(resources: Vec<ResourceSpec>) -> String {
        GroupSpec::new("web", resources)
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_group_validates_and_round_trips() {
        let spec = GroupSpec::new(
            "web",
            vec![
                volume("db"),
                fs("db"),
                ip("10.0.0.5/24"),
                ocf("heartbeat", "IPaddr2"),
            ],
        );
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.volumes(), vec!["db"]);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<GroupSpec>(&json).unwrap(), spec);
        let minimal: GroupSpec =
            serde_json::from_str(r#"{"name":"g","resources":[{"type":"volume","volume":"v"}]}"#)
                .unwrap();
        assert_eq!(minimal, GroupSpec::new("g", vec![volume("v")]));
        assert_eq!(minimal.resources[0].monitor().interval_ms(), 10_000);
    }

    #[test]
    fn bad_groups_are_refused_naming_what_and_where() {
        assert!(error_of(vec![]).contains("group web has no resources"));
        let message = error_of(vec![volume("db"), ip("10.0.0.300/24")]);
        assert!(
            message.contains("resource 1 (ip 10.0.0.300/24)"),
            "{message}"
        );
        assert!(error_of(vec![ip("10.0.0.5/33")]).contains("prefix longer than 32"));
        assert!(error_of(vec![ip("10.0.0.5")]).contains("ADDRESS/PREFIX"));
        let message = error_of(vec![fs("db"), volume("db")]);
        assert!(
            message.contains("resource 0 (filesystem /srv/db)"),
            "{message}"
        );
        assert!(message.contains("before it"), "{message}");
        let message = error_of(vec![volume("db"), volume("db")]);
        assert!(message.contains("appears twice"), "{message}");
        let message = error_of(vec![ocf("../../bin", "sh")]);
        assert!(message.contains("OCF provider \"../../bin\""), "{message}");
        assert!(error_of(vec![ocf("heartbeat", "a/b")]).contains("OCF agent"));
        let exec = ResourceSpec::Service {
            service: ServiceSpec::Exec {
                command: vec![],
                health: HealthCheck::ProcessAlive,
            },
            monitor: Monitor {
                interval_ms: Some(0),
                timeout_ms: None,
            },
        };
        assert!(error_of(vec![exec]).contains("monitor interval_ms 0"));
        assert!(matches!(
            GroupSpec::new("a b", vec![volume("db")]).validate(),
            Err(GroupError::BadName(_))
        ));
    }

    #[test]
    fn failures_beyond_max_restarts_in_the_window_quarantine_the_node() {
        let mut spec = GroupSpec::new("web", vec![volume("db")]);
        spec.max_restarts = 2;
        spec.restart_window_secs = 60;
        spec.quarantine_secs = 600;
        let mut group = Group {
            spec,
            status: GroupStatus::default(),
        };
        record_failure(&mut group, 1, 100);
        record_failure(&mut group, 1, 200); // the first one left the window
        record_failure(&mut group, 1, 210);
        assert_eq!(group.status.quarantine_of(1, 210), None);
        let line = record_failure(&mut group, 1, 220);
        assert!(line.contains("quarantined there until 820"), "{line}");
        assert_eq!(group.status.quarantine_of(1, 819), Some(820));
        assert_eq!(group.status.quarantine_of(1, 820), None);
        assert!(!group.status.failures.contains_key(&1));
    }

    /// One node `a` (id 1) and volumes `db` and `logs` with a leg on it.
    fn state_with_volumes() -> ClusterState {
        use crate::state::{Admin, NodeInfo, StateChange};
        use crate::volume::{LegSpec, VolumeChange};
        let node = NodeInfo {
            id: 1,
            name: "a".into(),
            addr: "127.0.0.1:1".into(),
            site: None,
            role: Role::Voter,
            admin: Admin::Online,
        };
        let mut state = ClusterState::founded_by(crate::ClusterId([1; 16]), node);
        for name in ["db", "logs"] {
            let legs = vec![LegSpec {
                nodes: vec![1],
                path: format!("/tmp/{name}"),
            }];
            let size = 1 << 20;
            let create = VolumeChange::Create {
                name: name.into(),
                size,
                legs,
                granularity: Default::default(),
            };
            state.apply(&StateChange::Volume(create)).unwrap();
        }
        state
    }

    #[test]
    fn only_the_placed_node_acquires_and_only_the_holder_releases() {
        use crate::state::StateChange;
        let mut state = state_with_volumes();
        let spec = GroupSpec::new("web", vec![volume("db")]);
        apply(&mut state, &GroupChange::Create { spec }).unwrap();
        let acquire = |node, epoch| GroupChange::Acquire {
            group: "web".into(),
            node,
            epoch,
        };
        let refused = apply(&mut state, &acquire(1, 0)).unwrap_err();
        assert!(
            matches!(refused, GroupError::NotPlacedHere { .. }),
            "{refused}"
        );
        let placed = GroupChange::Placed {
            group: "web".into(),
            node: Some(1),
            epoch: 0,
        };
        apply(&mut state, &placed).unwrap();
        assert!(
            apply(&mut state, &acquire(1, 0)).is_err(),
            "a stale epoch is refused"
        );
        apply(&mut state, &acquire(1, 1)).unwrap();
        // Its volume is promoted only on the holder, whatever was proposed before.
        let volume = state.volume_by_name("db").unwrap().id;
        let promote = StateChange::Volume(crate::volume::VolumeChange::Promote {
            volume,
            node: 2,
            force: false,
            takeover: false,
        });
        let refused = state.validate(&promote).unwrap_err();
        assert!(refused.to_string().contains("node 1 holds"), "{refused}");
        // A duplicated proposal is applied once.
        assert!(state.first_time(2, 77));
        assert!(!state.first_time(2, 77));
        assert!(state.first_time(3, 77));
        // Placed elsewhere while node 1 still holds it: nobody else may acquire it.
        state.groups.get_mut("web").unwrap().status.node = Some(2);
        let held = apply(&mut state, &acquire(2, 1)).unwrap_err();
        assert!(held.to_string().contains("held by node 1"), "{held}");
        let release = |node| GroupChange::Release {
            group: "web".into(),
            node,
        };
        let refused = apply(&mut state, &release(2)).unwrap_err();
        assert!(matches!(refused, GroupError::NotHolder { .. }), "{refused}");
        state.groups.get_mut("web").unwrap().status.node = None;
        let delete = GroupChange::Delete {
            group: "web".into(),
        };
        let refused = apply(&mut state, &delete).unwrap_err();
        assert!(refused.to_string().contains("held by node 1"), "{refused}");
        let remove = StateChange::RemoveNode { id: 1 };
        assert!(
            state.validate(&remove).is_err(),
            "a node holding a group is not removed"
        );
        apply(&mut state, &release(1)).unwrap();
        let fence = GroupChange::Fence {
            group: "web".into(),
            node: 1,
        };
        assert!(
            apply(&mut state, &fence).is_err(),
            "only a holder is fenced"
        );
        apply(&mut state, &delete).unwrap();
    }

    #[test]
    fn update_keeps_the_status_and_fixes_the_volumes_while_placed() {
        let mut state = state_with_volumes();
        let spec = GroupSpec::new("web", vec![volume("db")]);
        apply(&mut state, &GroupChange::Create { spec: spec.clone() }).unwrap();
        let placed = GroupChange::Placed {
            group: "web".into(),
            node: Some(1),
            epoch: 0,
        };
        apply(&mut state, &placed).unwrap();
        let mut preferred = spec.clone();
        preferred.preferred = vec![1];
        let line = apply(&mut state, &GroupChange::Update { spec: preferred }).unwrap();
        assert_eq!(line, "group web updated");
        assert_eq!(state.groups["web"].spec.preferred, vec![1]);
        assert_eq!(state.groups["web"].status.node, Some(1));
        let more = GroupSpec::new("web", vec![volume("db"), volume("logs")]);
        let refused = apply(&mut state, &GroupChange::Update { spec: more.clone() });
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("(db -> db,logs)"), "{message}");
        assert!(message.contains("disable it and wait"), "{message}");
        state.groups.get_mut("web").unwrap().status.node = None;
        assert!(apply(&mut state, &GroupChange::Update { spec: more }).is_ok());
        let missing = GroupSpec::new("nope", vec![volume("db")]);
        let refused = apply(&mut state, &GroupChange::Update { spec: missing });
        assert_eq!(refused, Err(GroupError::NoSuchGroup("nope".into())));
        let bad = GroupSpec::new("web", vec![volume("gone")]);
        let refused = apply(&mut state, &GroupChange::Update { spec: bad });
        assert!(matches!(refused, Err(GroupError::NoSuchVolume { .. })));
    }

    #[test]
    fn unknown_resource_keys_are_refused() {
        let typo = r#"{"type":"volume","volume":"db","monitr":{}}"#;
        let error = serde_json::from_str::<ResourceSpec>(typo).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `monitr`"),
            "{error}"
        );
        let typo = r#"{"type":"volume","volume":"db","monitor":{"interval":5}}"#;
        assert!(serde_json::from_str::<ResourceSpec>(typo).is_err());
    }
}
