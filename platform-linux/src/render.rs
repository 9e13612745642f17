//! Human renderings of replies: the tables `tandem status` and `tandem node list` print.
//!
//! `--json` bypasses this module and prints the reply as it is; everything shown here comes
//! from the typed status model, nothing is computed.

use std::fmt::Write as _;

use std::collections::BTreeMap;
use tandem_core::apply::PlannedStep;
use tandem_core::command::{ExplainReport, GroupReport, SyncStatus, VolumeStatus};
use tandem_core::group::{Failback, HealthCheck, ResourceSpec, ServiceSpec};

use tandem_core::events::Recorded;
use tandem_core::{NodeId, NodeStatus, Reply, StatusReport};

/// Renders a reply for a terminal.
pub fn reply(reply: &Reply) -> String {
    match reply {
        Reply::Status(status) => status_table(status),
        Reply::Nodes { nodes } => node_table(nodes),
        Reply::Done { message } => format!("{message}\n"),
        Reply::Token {
            token,
            expires_unix,
        } => {
            format!("{token}\n(valid until {expires_unix} unix time; pass it to `tandem join --token`)\n")
        }
        Reply::Volumes { volumes } => volume_table(volumes),
        Reply::Groups { groups } => group_table(groups),
        Reply::Explain(report) => explain(report),
        Reply::ApplyPlan { steps, notes } => apply_plan(steps, notes, true),
        Reply::Events { events, names, .. } => {
            self::events(events, &names.iter().cloned().collect(), true)
        }
        Reply::Refused { message } => format!("refused: {message}\n"),
    }
}

/// A size in binary units, the way operators type them (`--size 10G`).
fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `up sync`, or `up behind 42% 12.0 MiB/s ETA 8s` during a resync.
pub fn sync_summary(sync: &SyncStatus) -> String {
    let mut text = format!("{} {}", sync.link, sync.mode);
    if sync.out_of_sync_bytes > 0 || sync.done_bytes < sync.total_bytes {
        let _ = write!(
            text,
            " {}% {}/s",
            percent(sync.done_bytes, sync.total_bytes),
            human_bytes(sync.rate_bytes_per_sec)
        );
        if let Some(eta) = sync.eta_secs {
            let _ = write!(text, " ETA {eta}s");
        }
    }
    text
}

fn percent(done: u64, total: u64) -> u64 {
    done.saturating_mul(100).checked_div(total).unwrap_or(100)
}

/// Bytes with one decimal in the largest binary unit that fits.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift {
            return format!("{:.1} {unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes} B")
}

/// One progress line per leg for `tandem volume resync --watch`.
pub fn resync_progress(volume: &VolumeStatus) -> String {
    let mut out = String::new();
    for leg in &volume.legs {
        let Some(sync) = &leg.sync else {
            let _ = writeln!(
                out,
                "leg {} {:<13} (ask the primary for progress)",
                leg.id, leg.state
            );
            continue;
        };
        let done = percent(sync.done_bytes, sync.total_bytes);
        let filled = (done as usize * 30 / 100).min(30);
        let _ = writeln!(
            out,
            "leg {} {:<13} [{}{}] {:>3}% {}/s ETA {} resynced {}",
            leg.id,
            leg.state,
            "#".repeat(filled),
            ".".repeat(30 - filled),
            done,
            human_bytes(sync.rate_bytes_per_sec),
            sync.eta_secs
                .map_or("-".to_string(), |eta| format!("{eta}s")),
            human_bytes(sync.resync_bytes_sent)
        );
    }
    out
}

fn volume_table(volumes: &[VolumeStatus]) -> String {
    if volumes.is_empty() {
        return "no volumes\n".to_string();
    }
    let mut out = String::new();
    for volume in volumes {
        let _ = writeln!(
            out,
            "volume {} (id {})  size {}  primary {}  epoch {}  grain {}  al-extent {}",
            volume.name,
            volume.id,
            human_size(volume.size),
            volume.primary.as_deref().unwrap_or("none"),
            volume.epoch,
            human_size(volume.granularity.bitmap_grain.into()),
            human_size(volume.granularity.al_extent.into())
        );
        let _ = writeln!(
            out,
            "  {:<4} {:<13} {:<16} {:<28} PATH",
            "LEG", "STATE", "NODES", "REPLICATION"
        );
        for leg in &volume.legs {
            let _ = writeln!(
                out,
                "  {:<4} {:<13} {:<16} {:<28} {}",
                leg.id,
                leg.state,
                leg.nodes.join(","),
                leg.sync.as_ref().map_or("-".to_string(), sync_summary),
                leg.path
            );
        }
        if volume.legs.iter().any(|leg| leg.nodes.len() > 1) {
            for reach in &volume.reach {
                let legs: Vec<String> = reach.legs.iter().map(u32::to_string).collect();
                let writes = reach.writes.map_or("no UpToDate leg".to_string(), |leg| {
                    format!("writes leg {leg}")
                });
                let _ = writeln!(
                    out,
                    "  node {} reaches legs {} (as primary: {writes})",
                    reach.node,
                    legs.join(",")
                );
            }
        }
        for forced in &volume.forced {
            let _ = writeln!(out, "  FORCED PROMOTION: {forced}");
        }
    }
    out
}

fn group_table(groups: &[GroupReport]) -> String {
    if groups.is_empty() {
        return "no groups\n".to_string();
    }
    let mut out = format!(
        "{:<20} {:<8} {:<12} {:>5} {:>9}  {}\n",
        "GROUP", "ENABLED", "NODE", "EPOCH", "RESOURCES", "QUARANTINED ON"
    );
    for group in groups {
        let quarantined: Vec<&str> = group.quarantines.iter().map(|q| q.node.as_str()).collect();
        let node = match (&group.node, &group.pinned) {
            (Some(node), Some(pin)) if node == pin => format!("{node} (pin)"),
            (node, _) => node.clone().unwrap_or_else(|| "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<12} {:>5} {:>9}  {}",
            group.name,
            if group.enabled { "yes" } else { "no" },
            node,
            group.epoch,
            group.resources.len(),
            if quarantined.is_empty() {
                "-".to_string()
            } else {
                quarantined.join(",")
            }
        );
    }
    out
}

/// `tandem group show`: settings, resources with their monitors, and the committed facts.
pub fn group_details(group: &GroupReport) -> String {
    let mut out = format!(
        "group {}  {}  node {}  epoch {}  pinned to {}\n",
        group.name,
        if group.enabled { "enabled" } else { "DISABLED" },
        group.node.as_deref().unwrap_or("none"),
        group.epoch,
        group.pinned.as_deref().unwrap_or("-"),
    );
    let preferred = if group.preferred.is_empty() {
        "-".to_string()
    } else {
        group.preferred.join(",")
    };
    let failback = match group.failback {
        Failback::Manual => "manual".to_string(),
        Failback::Auto => format!("auto (stickiness {})", group.stickiness),
    };
    let _ = writeln!(
        out,
        "  preferred {preferred}  failback {failback}  restarts {} per {} s, then quarantine {} s",
        group.max_restarts, group.restart_window_secs, group.quarantine_secs
    );
    let _ = writeln!(
        out,
        "  {:<3} {:<28} {:<15} DETAILS",
        "#", "RESOURCE", "MONITOR"
    );
    for (index, resource) in group.resources.iter().enumerate() {
        let monitor = format!(
            "{} / {}",
            duration(resource.monitor_interval_ms),
            duration(resource.monitor_timeout_ms)
        );
        let _ = writeln!(
            out,
            "  {index:<3} {:<28} {monitor:<15} {}",
            resource.what,
            resource_details(&resource.spec)
        );
    }
    for (node, times) in &group.failures {
        let times: Vec<String> = times.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "  failures on {node} at {} (unix seconds)",
            times.join(", ")
        );
    }
    for quarantine in &group.quarantines {
        let _ = writeln!(
            out,
            "  QUARANTINED on {} until {} ({} s left; `tandem group clear` lifts it)",
            quarantine.node, quarantine.until_unix, quarantine.left_secs
        );
    }
    out
}

/// `5s`, `500ms`, `2m`: the way `--monitor-interval` takes it.
fn duration(ms: u64) -> String {
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// What a resource's identity does not already say.
fn resource_details(spec: &ResourceSpec) -> String {
    match spec {
        ResourceSpec::Volume { .. } => "primary here".into(),
        ResourceSpec::Filesystem {
            volume,
            fstype,
            mkfs,
            options,
            ..
        } => {
            let mut text = format!("volume {volume}, {fstype}");
            if *mkfs {
                text.push_str(", mkfs");
            }
            if !options.is_empty() {
                let _ = write!(text, ", options {options}");
            }
            text
        }
        ResourceSpec::Ip { interface, .. } => match interface {
            Some(interface) => format!("on {interface}"),
            None => "on the interface whose subnet holds it".into(),
        },
        ResourceSpec::Service { service, .. } => match service {
            ServiceSpec::Exec { command, health } => {
                format!("{}; health {}", argv(command), health_text(health))
            }
            ServiceSpec::Systemd { unit } => format!("unit {unit}"),
            ServiceSpec::Ocf { params, .. } => {
                let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                params.join(" ")
            }
        },
    }
}

fn argv(command: &[String]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|word| {
            if word.is_empty() || word.contains(char::is_whitespace) {
                format!("{word:?}")
            } else {
                word.clone()
            }
        })
        .collect();
    words.join(" ")
}

fn health_text(health: &HealthCheck) -> String {
    match health {
        HealthCheck::ProcessAlive => "process".into(),
        HealthCheck::Command { command } => format!("cmd:{}", argv(command)),
        HealthCheck::Tcp { host, port } => match host {
            Some(host) => format!("tcp:{host}:{port}"),
            None => format!("tcp:{port}"),
        },
        HealthCheck::Http { url } => url.clone(),
    }
}

/// `tandem explain`: whose view, then the scheduler's explanation.
fn explain(report: &ExplainReport) -> String {
    format!("{}\n{}", report.view, report.text)
}

/// The plan `tandem apply` prints before it carries it out (or instead, with --dry-run).
pub fn apply_plan(steps: &[PlannedStep], notes: &[String], dry_run: bool) -> String {
    let mut out = String::new();
    if steps.is_empty() {
        out.push_str("nothing to do: the cluster matches the file\n");
    } else {
        let what = if dry_run { "would apply" } else { "applying" };
        let _ = writeln!(out, "plan ({what} {} step(s)):", steps.len());
        for (n, step) in steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. {}", n + 1, step.description);
        }
    }
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    if dry_run && !steps.is_empty() {
        out.push_str("dry run: nothing was changed\n");
    }
    out
}

/// One line per step carried out by `tandem apply`.
pub fn step_outcome(n: usize, total: usize, step: &PlannedStep, outcome: &Reply) -> String {
    match outcome {
        Reply::Done { message } => format!("[{n}/{total}] {}: {message}\n", step.description),
        Reply::Refused { message } => format!(
            "[{n}/{total}] {}: refused: {message}\nstopped: the steps after this one were not applied\n",
            step.description
        ),
        other => format!("[{n}/{total}] {}\n{}", step.description, reply(other)),
    }
}

fn status_table(status: &StatusReport) -> String {
    let leader = status
        .leader
        .and_then(|id| status.nodes.iter().find(|node| node.id == id))
        .map_or("none".to_string(), |node| node.name.clone());
    let quorum = if status.quorum { "yes" } else { "NO" };
    let mut out = format!(
        "cluster {}  leader {} (term {})  quorum: {} ({}/{} voters online)\n",
        status.cluster, leader, status.term, quorum, status.voters_online, status.voters_total
    );
    if !status.quorum {
        out.push_str("WARNING: no quorum: no leases are granted, nothing can fail over until a majority of voters is back\n");
    }
    out.push_str(&node_table(&status.nodes));
    if !status.groups.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<20} {:<8} {:<12} RUNNING ON",
            "GROUP", "ENABLED", "PLACED ON"
        );
        for group in &status.groups {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<12} {}",
                group.name,
                if group.enabled { "yes" } else { "no" },
                group.placed_on.as_deref().unwrap_or("-"),
                group.held_by.as_deref().unwrap_or("-")
            );
        }
    }
    if !status.recent_events.is_empty() {
        let names = status
            .nodes
            .iter()
            .map(|node| (node.id, node.name.clone()))
            .collect();
        out.push_str("\nrecent events (tandem events shows more):\n");
        out.push_str(&events(&status.recent_events, &names, false));
    }
    out
}

/// The timeline: UTC time with milliseconds, node, what, group, detail.
pub fn events(events: &[Recorded], names: &BTreeMap<NodeId, String>, header: bool) -> String {
    let mut out = String::new();
    if header {
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<11} {:<12} DETAIL",
            "TIME (UTC)", "NODE", "EVENT", "GROUP"
        );
    }
    for recorded in events {
        let event = &recorded.event;
        let node = names
            .get(&event.node)
            .cloned()
            .unwrap_or_else(|| event.node.to_string());
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<11} {:<12} {}",
            clock_time(event.at_unix_ms),
            node,
            event.kind.as_str(),
            event.group.as_deref().unwrap_or("-"),
            event.detail
        );
    }
    out
}

/// `HH:MM:SS.mmm` of a unix time in milliseconds (UTC).
fn clock_time(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    let (hours, rest) = (day_ms / 3_600_000, day_ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    format!(
        "{hours:02}:{minutes:02}:{:02}.{:03}",
        rest / 1000,
        rest % 1000
    )
}

fn node_table(nodes: &[NodeStatus]) -> String {
    let mut out = format!(
        "{:<16} {:>3} {:<8} {:<8} {:<8} {:<8} {:<11} {}\n",
        "NODE", "ID", "ROLE", "SITE", "STATE", "ADMIN", "LAST SEEN", "LEASE"
    );
    for node in nodes {
        let name = if node.is_leader {
            format!("{} *", node.name)
        } else {
            node.name.clone()
        };
        let _ = writeln!(
            out,
            "{:<16} {:>3} {:<8} {:<8} {:<8} {:<8} {:<11} {}",
            name,
            node.id,
            node.role.as_str(),
            node.site.as_deref().unwrap_or("-"),
            if node.online { "online" } else { "OFFLINE" },
            node.admin.as_str(),
            last_seen(node.last_seen_ms),
            lease(node.lease_remaining_ms),
        );
    }
    out
}

fn last_seen(ago: Option<u64>) -> String {
    match ago {
        None => "never".into(),
        Some(ms) if ms < 1000 => "now".into(),
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
    }
}

fn lease(remaining_ms: u64) -> String {
    if remaining_ms == 0 {
        "none".into()
    } else {
        format!("held ({remaining_ms} ms)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::events::{Event, EventKind};
    use tandem_core::{Admin, ClusterId, Role};

    fn node(id: u64, online: bool) -> NodeStatus {
        NodeStatus {
            id,
            name: format!("n{id}"),
            addr: "127.0.0.1:1".into(),
            site: None,
            role: Role::Voter,
            admin: Admin::Online,
            online,
            last_seen_ms: online.then_some(10),
            is_leader: id == 1,
            lease_remaining_ms: if online { 900 } else { 0 },
        }
    }

    #[test]
    fn status_table_names_leader_quorum_and_offline_nodes() {
        let status = StatusReport {
            cluster: ClusterId([1; 16]),
            this_node: 1,
            leader: Some(1),
            term: 3,
            quorum: false,
            voters_online: 1,
            voters_total: 2,
            commit_index: 5,
            applied_index: 5,
            nodes: vec![node(1, true), node(2, false)],
            recent_events: vec![Recorded {
                seq: 0,
                event: Event::new(
                    3_723_004,
                    2,
                    Some("db"),
                    EventKind::Started,
                    "2 resource(s) started here".into(),
                ),
            }],
            groups: vec![tandem_core::command::GroupSummary {
                name: "db".into(),
                enabled: true,
                placed_on: Some("n2".into()),
                held_by: Some("n2".into()),
            }],
        };
        let text = reply(&Reply::Status(status));
        assert!(text.contains("01:02:03.004 n2"), "{text}");
        assert!(
            text.contains("db                   yes      n2           n2"),
            "{text}"
        );
        assert!(text.contains("started     db"), "{text}");
        assert!(text.contains("leader n1 (term 3)"), "{text}");
        assert!(text.contains("quorum: NO (1/2 voters online)"), "{text}");
        assert!(text.contains("n1 *"), "{text}");
        assert!(text.contains("OFFLINE"), "{text}");
        assert!(text.contains("never"), "{text}");
    }
}
