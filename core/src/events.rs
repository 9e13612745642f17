//! The failover timeline: what happened to groups and nodes, when, and on which node.
//!
//! Every step of a failover or switchover (detected, decided, stopped, demoted, promoted,
//! started, healthy) is an [`Event`] stamped with the wall-clock time of the node where it
//! happened. Events travel through the Raft log like any other change, so `tandem events` on
//! any node shows one cluster-wide timeline, and a node that was partitioned while it stopped
//! its services delivers those events (with their original times) once it is back. The state
//! keeps only the newest [`MAX_EVENTS`]; applying the same event twice (a retried batch) keeps
//! one copy.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// How many events the cluster state keeps.
pub const MAX_EVENTS: usize = 500;
/// The most events one batch may carry.
pub const MAX_BATCH: usize = 64;
/// Longest detail text kept.
pub const MAX_DETAIL: usize = 300;

/// The steps of a failover or switchover, and the other things an operator wants to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A failure was noticed: a node went silent, a monitor or a start failed.
    Detected,
    /// The leader decided where a group runs.
    Decided,
    /// The leader declared a gone node fenced (its lease lapsed long enough ago).
    Fenced,
    /// A node lost its lease and stopped its groups by itself.
    SelfFenced,
    /// Every resource of a group is stopped on this node.
    Stopped,
    /// This node is no longer a volume's primary.
    Demoted,
    /// This node became a volume's primary.
    Promoted,
    /// Every resource of a group is started on this node.
    Started,
    /// Every resource of a started group passed its first monitor.
    Healthy,
    /// A group is restarted on the same node after a failure.
    Restarting,
    /// Something failed; the detail says what.
    Failed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Detected => "detected",
            EventKind::Decided => "decided",
            EventKind::Fenced => "fenced",
            EventKind::SelfFenced => "self-fenced",
            EventKind::Stopped => "stopped",
            EventKind::Demoted => "demoted",
            EventKind::Promoted => "promoted",
            EventKind::Started => "started",
            EventKind::Healthy => "healthy",
            EventKind::Restarting => "restarting",
            EventKind::Failed => "failed",
        }
    }
}

/// One entry of the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time on `node` when it happened, in unix milliseconds.
    pub at_unix_ms: u64,
    /// Where it happened (the leader, for decisions).
    pub node: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: EventKind,
    pub detail: String,
}

impl Event {
    pub fn new(
        at_unix_ms: u64,
        node: NodeId,
        group: Option<&str>,
        kind: EventKind,
        detail: String,
    ) -> Event {
        let mut detail = detail;
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Event {
            at_unix_ms,
            node,
            group: group.map(str::to_string),
            kind,
            detail,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} {}", self.node, self.kind.as_str())?;
        if let Some(group) = &self.group {
            write!(f, " group {group}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// An event as the cluster stores it: with its place in the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// The bounded timeline in the cluster state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    #[serde(default)]
    pub events: VecDeque<Recorded>,
    /// The sequence number the next event gets.
    #[serde(default)]
    pub next_seq: u64,
}

/// A batch of events that does not fit the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("an event batch holds {0} events, at most {MAX_BATCH} are allowed")]
    TooMany(usize),
    #[error("an event batch is empty")]
    Empty,
}

impl Timeline {
    /// Checks a batch before it is proposed or applied.
    pub fn validate(batch: &[Event]) -> Result<(), EventError> {
        match batch.len() {
            0 => Err(EventError::Empty),
            n if n > MAX_BATCH => Err(EventError::TooMany(n)),
            _ => Ok(()),
        }
    }

    /// Appends a batch, skipping events already recorded (a batch proposed again after a
    /// leader change may commit twice), and drops the oldest beyond [`MAX_EVENTS`].
    pub fn record(&mut self, batch: &[Event]) -> Result<usize, EventError> {
        Self::validate(batch)?;
        let mut added = 0;
        for event in batch {
            if self.events.iter().any(|recorded| &recorded.event == event) {
                continue;
            }
            self.events.push_back(Recorded {
                seq: self.next_seq,
                event: event.clone(),
            });
            self.next_seq += 1;
            added += 1;
            while self.events.len() > MAX_EVENTS {
                self.events.pop_front();
            }
        }
        Ok(added)
    }

    /// Events with `seq >= since`, sorted by time (then by sequence), at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Recorded> {
        let mut events: Vec<Recorded> = self
            .events
            .iter()
            .filter(|recorded| recorded.seq >= since)
            .cloned()
            .collect();
        events.sort_by_key(|recorded| (recorded.event.at_unix_ms, recorded.seq));
        let skip = events.len().saturating_sub(limit);
        events.split_off(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: u64, kind: EventKind) -> Event {
        Event::new(at, 1, Some("db"), kind, format!("at {at}"))
    }

    #[test]
    fn a_batch_committed_twice_is_recorded_once() {
        let mut timeline = Timeline::default();
        let batch = vec![event(10, EventKind::Stopped), event(20, EventKind::Started)];
        assert_eq!(timeline.record(&batch), Ok(2));
        assert_eq!(timeline.record(&batch), Ok(0));
        assert_eq!(timeline.events.len(), 2);
        assert_eq!(timeline.next_seq, 2);
    }

    #[test]
    fn the_timeline_is_bounded_and_keeps_the_newest() {
        let mut timeline = Timeline::default();
        for at in 0..(MAX_EVENTS as u64 + 10) {
            timeline.record(&[event(at, EventKind::Detected)]).unwrap();
        }
        assert_eq!(timeline.events.len(), MAX_EVENTS);
        assert_eq!(timeline.events.front().map(|r| r.seq), Some(10));
    }

    #[test]
    fn late_events_sort_by_their_own_time() {
        let mut timeline = Timeline::default();
        timeline.record(&[event(300, EventKind::Started)]).unwrap();
        // A partitioned node delivers its stop after it healed: it happened earlier.
        timeline.record(&[event(100, EventKind::Stopped)]).unwrap();
        let kinds: Vec<EventKind> = timeline.since(0, 10).iter().map(|r| r.event.kind).collect();
        assert_eq!(kinds, vec![EventKind::Stopped, EventKind::Started]);
        assert_eq!(timeline.since(1, 10).len(), 1);
        assert_eq!(timeline.since(0, 1)[0].event.kind, EventKind::Started);
    }

    #[test]
    fn bad_batches_are_refused() {
        let mut timeline = Timeline::default();
        assert_eq!(timeline.record(&[]), Err(EventError::Empty));
        let many = vec![event(1, EventKind::Failed); MAX_BATCH + 1];
        assert_eq!(
            timeline.record(&many),
            Err(EventError::TooMany(MAX_BATCH + 1))
        );
        let long = Event::new(1, 1, None, EventKind::Failed, "é".repeat(400));
        assert!(long.detail.len() <= MAX_DETAIL);
    }
}
