//! Human renderings of replies: the tables `tandem status` and `tandem node list` print.
//!
//! `--json` bypasses this module and prints the reply as it is; everything shown here comes
//! from the typed status model, nothing is computed.

use std::fmt::Write as _;

use tandem_core::command::{SyncStatus, VolumeStatus};
use tandem_core::{NodeStatus, Reply, StatusReport};

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
            "volume {} (id {})  size {}  primary {}  epoch {}",
            volume.name,
            volume.id,
            human_size(volume.size),
            volume.primary.as_deref().unwrap_or("none"),
            volume.epoch
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
        for forced in &volume.forced {
            let _ = writeln!(out, "  FORCED PROMOTION: {forced}");
        }
    }
    out
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
    out
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
        };
        let text = reply(&Reply::Status(status));
        assert!(text.contains("leader n1 (term 3)"), "{text}");
        assert!(text.contains("quorum: NO (1/2 voters online)"), "{text}");
        assert!(text.contains("n1 *"), "{text}");
        assert!(text.contains("OFFLINE"), "{text}");
        assert!(text.contains("never"), "{text}");
    }
}
