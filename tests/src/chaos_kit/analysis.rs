//! What a chaos run's records mean: two-writer periods from the acknowledgements and the
//! timeline, overlaps of the timeline's role intervals, the longest time without an
//! acknowledged write, and the printed table. Pure functions over the records, so the method
//! is readable in one place (the module documentation of `chaos_kit` states it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::writer::{Ack, History};
use super::{Injected, Kind, Report, PROMOTION_SLACK_MS};
use crate::failover_kit::Ev;

/// The `promoted` events (time, node), by time.
fn promotions(timeline: &[Ev]) -> Vec<(u64, String)> {
    let mut promoted: Vec<(u64, String)> = timeline
        .iter()
        .filter(|e| e.kind == "promoted")
        .map(|e| (e.at_unix_ms, e.node.clone()))
        .collect();
    promoted.sort();
    promoted
}

/// Two-writer periods: acknowledged writes of a node sent after another node's promotion,
/// its own node not promoted again between that promotion and [`PROMOTION_SLACK_MS`] after
/// the write. One line per (writing node, other node's promotion).
pub fn two_writer_periods(acks: &[Ack], timeline: &[Ev]) -> Vec<String> {
    let promoted = promotions(timeline);
    let mut periods: BTreeMap<(String, u64), (usize, u64, u64)> = BTreeMap::new();
    for ack in acks {
        let Some((at, other)) = promoted.iter().rev().find(|(at, _)| *at <= ack.sent_ms) else {
            continue;
        };
        if *other == ack.node {
            continue;
        }
        let again = promoted.iter().any(|(p, node)| {
            *node == ack.node && *p >= *at && *p <= ack.sent_ms + PROMOTION_SLACK_MS
        });
        if again {
            continue;
        }
        let entry =
            periods
                .entry((ack.node.clone(), *at))
                .or_insert((0, ack.sent_ms, ack.acked_ms));
        entry.0 += 1;
        entry.2 = entry.2.max(ack.acked_ms);
    }
    periods
        .into_iter()
        .map(|((node, at), (count, first, last))| {
            format!(
                "{node} acknowledged {count} write(s) sent {}..{} ms after another node's \
                 promotion at {at}",
                first - at,
                last - at
            )
        })
        .collect()
}

/// A node's role interval on the timeline.
#[derive(Debug)]
struct Role {
    node: String,
    from: u64,
    to: u64,
}

/// Role intervals: `promoted` until the node's next `demoted` or `self-fenced` event or the
/// `kill -9` of its daemon (open: `u64::MAX`).
fn roles(timeline: &[Ev], injected: &[Injected]) -> Vec<Role> {
    let mut ends: Vec<(u64, String, bool)> = timeline
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "promoted" | "demoted" | "self-fenced"))
        .map(|e| (e.at_unix_ms, e.node.clone(), e.kind == "promoted"))
        .collect();
    for kill in injected.iter().filter(|i| i.fault.kind == Kind::Kill) {
        ends.push((kill.start_ms, kill.fault.node.to_string(), false));
    }
    ends.sort();
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut roles = Vec::new();
    for (at, node, promoted) in ends {
        if promoted {
            open.entry(node).or_insert(at);
        } else if let Some(from) = open.remove(&node) {
            roles.push(Role { node, from, to: at });
        }
    }
    roles.extend(open.into_iter().map(|(node, from)| Role {
        node,
        from,
        to: u64::MAX,
    }));
    roles
}

/// Overlaps of role intervals of different nodes, and how many began while the node that
/// held the role first was paused (SIGSTOP).
pub fn role_overlaps(timeline: &[Ev], injected: &[Injected]) -> (Vec<String>, usize) {
    let roles = roles(timeline, injected);
    let mut overlaps = Vec::new();
    let mut frozen = 0;
    for first in &roles {
        for second in &roles {
            if first.node == second.node || second.from < first.from || second.from >= first.to {
                continue;
            }
            let paused = injected.iter().any(|i| {
                i.fault.kind == Kind::Pause
                    && i.fault.node == first.node
                    && i.start_ms <= second.from
                    && second.from <= i.end_ms
            });
            frozen += usize::from(paused);
            let end = if first.to == u64::MAX {
                "still".to_string()
            } else {
                format!("until {}", first.to)
            };
            overlaps.push(format!(
                "{} promoted at {} while {} held the role since {} ({end}){}",
                second.node,
                second.from,
                first.node,
                first.from,
                if paused { ", frozen by SIGSTOP" } else { "" }
            ));
        }
    }
    (overlaps, frozen)
}

/// The longest time between two successive acknowledged writer requests: `(ms, ended at)`.
pub fn longest_gap(history: &History) -> (u64, u64) {
    let acked: Vec<u64> = history.ops.iter().filter_map(|op| op.acked_ms).collect();
    acked
        .windows(2)
        .map(|w| (w[1].saturating_sub(w[0]), w[1]))
        .max()
        .unwrap_or_default()
}

/// Per injected fault: ms from its heal until the first sample with every leg UpToDate,
/// if that came before the next fault started (or, for the last, before `end`).
pub fn settle_times(samples: &[(u64, bool)], injected: &[Injected], end: u64) -> Vec<Option<u64>> {
    injected
        .iter()
        .enumerate()
        .map(|(index, fault)| {
            let until = injected.get(index + 1).map_or(end, |next| next.start_ms);
            samples
                .iter()
                .find(|(at, up)| *up && *at >= fault.end_ms && *at <= until)
                .map(|(at, _)| at - fault.end_ms)
        })
        .collect()
}

/// Median and maximum of the settle times that settled, and how many did not.
fn settle_summary(settle: &[Option<u64>]) -> String {
    let mut settled: Vec<u64> = settle.iter().flatten().copied().collect();
    settled.sort_unstable();
    let missed = settle.len() - settled.len();
    let (Some(median), Some(max)) = (settled.get(settled.len() / 2), settled.last()) else {
        return format!("none settled before the next fault ({missed})");
    };
    format!(
        "median {:.1} s, max {:.1} s; {missed} of {} not before the next fault",
        *median as f64 / 1000.0,
        *max as f64 / 1000.0,
        settle.len()
    )
}

/// The faults active (between injection and heal) at `at`, or the one just healed.
pub fn faults_around(injected: &[Injected], from: u64, to: u64) -> String {
    let hit: Vec<String> = injected
        .iter()
        .filter(|i| i.start_ms <= to && i.end_ms + 5_000 >= from)
        .map(|i| {
            format!(
                "{} (primary {})",
                i.fault,
                i.primary.as_deref().unwrap_or("none")
            )
        })
        .collect();
    if hit.is_empty() {
        "no fault".into()
    } else {
        hit.join("; ")
    }
}

impl Report {
    /// The table's rows: what was injected and sent, then the results.
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("seed".to_string(), self.seed.to_string()),
            ("fault phase".into(), format!("{} s", self.fault_secs)),
        ];
        for (kind, count) in &self.faults {
            rows.push((format!("faults: {kind}"), count.to_string()));
        }
        let pairs = [
            ("promotions (timeline)", self.promotions.to_string()),
            (
                "requests sent / acknowledged",
                format!("{} / {}", self.requests, self.acked),
            ),
            (
                "acknowledged: discards / covered by a FLUSH",
                format!("{} / {}", self.discards_acked, self.acked_flushed),
            ),
            ("probe writes acknowledged", self.probe_acks.to_string()),
            ("writer (re)connections", self.reconnects.to_string()),
        ];
        rows.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
        rows.extend(self.result_rows());
        rows
    }

    fn result_rows(&self) -> Vec<(String, String)> {
        let verdict = &self.verdict;
        let verify = if self.verify_ok {
            "identical"
        } else {
            "FAILED"
        };
        let rows = [
            (
                "blocks verified / unacknowledged versions found",
                format!("{} / {}", verdict.blocks_checked, verdict.unacked_landed),
            ),
            (
                "**writes lost** (of them flushed)",
                format!("**{}** ({})", verdict.lost.len(), verdict.lost_flushed),
            ),
            (
                "**periods with two writers**",
                format!("**{}**", self.two_writers.len()),
            ),
            (
                "timeline role overlaps (of them with the old node frozen)",
                format!(
                    "{} ({})",
                    self.role_overlaps.len(),
                    self.role_overlaps_frozen
                ),
            ),
            (
                "longest unavailability",
                format!(
                    "{:.1} s ({})",
                    self.longest_gap_ms as f64 / 1000.0,
                    self.longest_gap_at
                ),
            ),
            (
                "legs UpToDate again after each fault's heal (sampled every 0.5 s)",
                settle_summary(&self.settle_ms),
            ),
            (
                "time to converge after the final heal",
                format!("{:.1} s", self.converge.as_secs_f64()),
            ),
            (
                "verify",
                format!(
                    "{verify} ({})",
                    self.verify.lines().last().unwrap_or_default()
                ),
            ),
        ];
        rows.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// The table in Markdown, then one line per lost write, two-writer period, role overlap and
/// verify mismatch (at most 40).
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut table = String::from("| | |\n|---|---|\n");
        for (key, value) in self.rows() {
            let _ = writeln!(table, "| {key} | {value} |");
        }
        for line in self
            .verdict
            .lost
            .iter()
            .chain(&self.two_writers)
            .chain(&self.role_overlaps)
            .chain(&self.mismatches)
            .take(40)
        {
            let _ = writeln!(table, "  {line}");
        }
        f.write_str(&table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: u64, node: &str, kind: &str) -> Ev {
        Ev {
            seq: at,
            at_unix_ms: at,
            node: node.into(),
            group: Some("g".into()),
            kind: kind.into(),
            detail: String::new(),
        }
    }

    fn ack(node: &str, sent_ms: u64) -> Ack {
        Ack {
            node: node.into(),
            sent_ms,
            acked_ms: sent_ms + 1,
        }
    }

    #[test]
    fn a_write_acknowledged_by_the_old_primary_after_a_promotion_is_a_two_writer_period() {
        let timeline = [ev(1_000, "a", "promoted"), ev(10_000, "b", "promoted")];
        // a writes before b's promotion, b a little before its own stamp: both fine.
        let fine = [ack("a", 9_990), ack("b", 9_800), ack("b", 10_500)];
        assert!(two_writer_periods(&fine, &timeline).is_empty());
        // a acknowledges twice after b was promoted: one period.
        let bad = [ack("a", 10_200), ack("a", 10_300), ack("b", 10_400)];
        let periods = two_writer_periods(&bad, &timeline);
        assert_eq!(periods.len(), 1, "{periods:?}");
        assert!(
            periods[0].starts_with("a acknowledged 2 write(s)"),
            "{periods:?}"
        );
    }

    #[test]
    fn a_node_promoted_again_may_write_again() {
        let timeline = [
            ev(1_000, "a", "promoted"),
            ev(5_000, "b", "promoted"),
            ev(9_000, "a", "promoted"),
        ];
        let acks = [ack("a", 8_500), ack("a", 9_500), ack("b", 6_000)];
        assert!(two_writer_periods(&acks, &timeline).is_empty());
    }

    #[test]
    fn role_intervals_overlap_until_demoted_self_fenced_or_killed() {
        let timeline = [
            ev(1_000, "a", "promoted"),
            ev(2_000, "a", "self-fenced"),
            ev(3_000, "b", "promoted"),
            ev(8_000, "a", "promoted"),
            ev(9_000, "b", "demoted"),
        ];
        let (overlaps, frozen) = role_overlaps(&timeline, &[]);
        assert_eq!(overlaps.len(), 1, "{overlaps:?}");
        assert_eq!(frozen, 0);
        assert!(
            overlaps[0].starts_with("a promoted at 8000 while b"),
            "{overlaps:?}"
        );
    }
}
