//! The volumes and resource groups a run's operator creates once the cluster has formed.
//!
//! Data nodes are the first voters (n1, n2, n3...): with the two-node topology n1 and n2 hold
//! the legs and n3 is the witness. Legs start UpToDate (the replication data path is not
//! simulated; a takeover outdates the old primary's leg and the world's stand-in for the
//! volume engine resyncs it). Every group is `[volume, ip, service]` (or `[ip, service]` for
//! a group without a volume), with short monitor intervals so that failures are noticed
//! within the run.

use std::fmt;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::group::{Failback, GroupSpec, HealthCheck, Monitor, ResourceSpec, ServiceSpec};
use tandem_core::NodeId;

use crate::config::Shape;

/// Monitor interval of the fake resources.
pub const MONITOR_INTERVAL_MS: u64 = 1_000;
/// Monitor timeout of the fake resources: a hung monitor fails after this long.
pub const MONITOR_TIMEOUT_MS: u64 = 2_000;

/// Which groups a run has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Volume `v1` with legs on n1 and n2; group `g1` prefers n1, fails back by hand.
    ActiveStandby,
    /// Volumes `v1` and `v2`, both with legs on n1 and n2; `g1` prefers n1, `g2` prefers n2,
    /// both fail back automatically (so they also switch over, not only fail over).
    ActiveActive,
    /// Three data nodes: volume `v1` with legs on n1, n2 and n3, group `g1` on it preferring
    /// n1 then n2; and `g2` without a volume (an IP and a service) preferring n3, failing
    /// back automatically.
    ThreeLegs,
}

impl Layout {
    pub fn pick(rng: &mut ChaCha8Rng, shape: Shape) -> Layout {
        let data_nodes = shape.voters;
        match rng.gen_range(0..3) {
            0 => Layout::ActiveStandby,
            1 => Layout::ActiveActive,
            _ if data_nodes >= 3 => Layout::ThreeLegs,
            _ => Layout::ActiveActive,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::ActiveStandby => "active-standby",
            Layout::ActiveActive => "active-active",
            Layout::ThreeLegs => "three-legs",
        }
    }

    /// The volumes: name and the node of each leg (one node per leg).
    pub fn volumes(self) -> Vec<(String, Vec<NodeId>)> {
        match self {
            Layout::ActiveStandby => vec![("v1".into(), vec![1, 2])],
            Layout::ActiveActive => vec![("v1".into(), vec![1, 2]), ("v2".into(), vec![1, 2])],
            Layout::ThreeLegs => vec![("v1".into(), vec![1, 2, 3])],
        }
    }

    /// The groups, in creation order.
    pub fn groups(self) -> Vec<GroupSpec> {
        match self {
            Layout::ActiveStandby => vec![group(1, Some("v1"), &[1, 2], Failback::Manual)],
            Layout::ActiveActive => vec![
                group(1, Some("v1"), &[1, 2], Failback::Auto),
                group(2, Some("v2"), &[2, 1], Failback::Auto),
            ],
            Layout::ThreeLegs => vec![
                group(1, Some("v1"), &[1, 2], Failback::Manual),
                group(2, None, &[3], Failback::Auto),
            ],
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn monitor() -> Monitor {
    Monitor {
        interval_ms: Some(MONITOR_INTERVAL_MS),
        timeout_ms: Some(MONITOR_TIMEOUT_MS),
    }
}

/// Group `g<n>`: `[volume, ip, service]`, or `[ip, service]` without a volume.
fn group(n: u32, volume: Option<&str>, preferred: &[NodeId], failback: Failback) -> GroupSpec {
    let mut resources = Vec::new();
    if let Some(volume) = volume {
        resources.push(ResourceSpec::Volume {
            volume: volume.to_string(),
            monitor: monitor(),
        });
    }
    resources.push(ResourceSpec::Ip {
        cidr: format!("10.0.{n}.100/24"),
        interface: None,
        monitor: monitor(),
    });
    resources.push(ResourceSpec::Service {
        service: ServiceSpec::Exec {
            command: vec![format!("/usr/bin/service-{n}")],
            health: HealthCheck::ProcessAlive,
        },
        monitor: monitor(),
    });
    let mut spec = GroupSpec::new(&format!("g{n}"), resources);
    spec.preferred = preferred.to_vec();
    spec.failback = failback;
    // Short enough that quarantines end and failures age out within a run.
    spec.max_restarts = 2;
    spec.restart_window_secs = 60;
    spec.quarantine_secs = 30;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_is_valid() {
        for layout in [
            Layout::ActiveStandby,
            Layout::ActiveActive,
            Layout::ThreeLegs,
        ] {
            for spec in layout.groups() {
                spec.validate().unwrap();
                for volume in spec.volumes() {
                    assert!(layout.volumes().iter().any(|(name, _)| name == volume));
                }
            }
        }
    }
}
