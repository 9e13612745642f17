//! The event trace: one line per thing that happened, for replaying a failing seed by eye.
//!
//! Lines are kept as small structs and only formatted when printed, so tracing every message
//! costs little. Memory stays bounded: only the last [`TRACE_LINES`] lines are kept (a ring
//! buffer), while a running hash of *every* line lets the determinism test compare two whole
//! runs. With `echo` on (`--trace`), every line is also printed as it happens.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use raft::eraftpb::MessageType;
use tandem_core::NodeId;

/// How many trace lines are kept in memory and printed on failure.
pub const TRACE_LINES: usize = 4000;

/// A one-line summary of a frame, decoded once when it is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    Raft {
        kind: MessageType,
        term: u64,
        index: u64,
        log_term: u64,
        commit: u64,
        entries: usize,
        reject: bool,
        snapshot: Option<u64>,
    },
    Ping {
        seq: u64,
        term: u64,
    },
    Pong {
        seq: u64,
        term: u64,
        lease: bool,
    },
    Evicted,
    /// A kind of frame this simulator does not model yet (it is still delivered).
    Other,
}

/// Why a message never arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropWhy {
    /// A partition (or one-way cut) blocks the link.
    Partitioned,
    /// The network lost it.
    Lost,
    /// The receiver is not running (or restarted since it was sent).
    ReceiverDown,
}

/// Something that happened in the simulated world.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    Started {
        incarnation: u32,
        snapshot: u64,
        entries: usize,
        term: u64,
    },
    Stopped {
        why: &'static str,
        kept_writes: usize,
        lost_writes: usize,
    },
    Paused {
        until: u64,
    },
    Send {
        to: NodeId,
        msg: Msg,
        delay: u64,
    },
    Duplicated {
        to: NodeId,
        delay: u64,
    },
    Dropped {
        to: NodeId,
        msg: Msg,
        why: DropWhy,
    },
    Deliver {
        from: NodeId,
        msg: Msg,
    },
    Lost {
        from: NodeId,
        msg: Msg,
    },
    Persist {
        number: u64,
        entries: usize,
        last_index: Option<u64>,
        hard_state: Option<(u64, u64, u64)>,
        snapshot: Option<u64>,
        done_at: u64,
    },
    Compact {
        index: u64,
        done_at: u64,
    },
    Durable {
        persisted: Option<u64>,
    },
    Applied {
        index: u64,
        term: u64,
        digest: u64,
    },
    Proposed {
        request: u64,
        what: String,
        refused: Option<String>,
    },
    Completed {
        request: u64,
        outcome: Result<String, String>,
    },
    Note(String),
    /// The agent asked for a fake resource operation.
    AgentRun {
        op: u64,
        kind: &'static str,
        group: String,
        index: usize,
        what: String,
        takes_ms: u64,
        fate: String,
    },
    /// A fake resource operation completed and the agent was told.
    OpDone {
        op: u64,
        kind: &'static str,
        group: String,
        index: usize,
        outcome: String,
    },
    /// A timeline event of the agent (or the placement loop's decision, through `Proposed`).
    AgentEvent(String),
    /// The ground truth changed outside an operation: a resource crashed, was started by
    /// hand, or died with its process or machine.
    Resource(String),
    /// A checker's verdict worth a line (the group settle check).
    Check(String),
    Fault(String),
    FaultEnd(String),
    Phase(String),
    Violation(String),
}

impl TraceEvent {
    /// Whether the line tells the run's story rather than its traffic.
    fn is_story(&self) -> bool {
        !matches!(
            self,
            TraceEvent::Send { .. }
                | TraceEvent::Duplicated { .. }
                | TraceEvent::Dropped { .. }
                | TraceEvent::Deliver { .. }
                | TraceEvent::Lost { .. }
                | TraceEvent::Persist { .. }
                | TraceEvent::Compact { .. }
                | TraceEvent::Durable { .. }
                | TraceEvent::Applied { .. }
                | TraceEvent::AgentRun { .. }
                | TraceEvent::OpDone { .. }
        )
    }
}

/// One line: when, on which node, what.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceLine {
    pub at: u64,
    pub node: Option<NodeId>,
    pub event: TraceEvent,
}

/// The bounded trace of one run.
pub struct Trace {
    lines: VecDeque<TraceLine>,
    hasher: DefaultHasher,
    count: u64,
    echo: bool,
    /// With [`Trace::keep_story`]: every line of the story, from the start (see `is_story`).
    story: Option<Vec<TraceLine>>,
}

impl Trace {
    pub fn new(echo: bool) -> Trace {
        Trace {
            lines: VecDeque::with_capacity(TRACE_LINES),
            hasher: DefaultHasher::new(),
            count: 0,
            echo,
            story: None,
        }
    }

    /// Also keeps every line of the run's story (faults, starts and stops, leaders,
    /// proposals, agent events, resources, checks: no frames, no disk writes), however long
    /// the run: a scripted run shows it when an expectation fails.
    pub fn keep_story(&mut self) {
        self.story.get_or_insert_with(Vec::new);
    }

    /// The story kept since [`Trace::keep_story`], oldest first.
    pub fn story(&self) -> &[TraceLine] {
        self.story.as_deref().unwrap_or(&[])
    }

    pub fn record(&mut self, at: u64, node: Option<NodeId>, event: TraceEvent) {
        let line = TraceLine { at, node, event };
        line.hash(&mut self.hasher);
        self.count += 1;
        if self.echo {
            println!("{line}");
        }
        if let Some(story) = self.story.as_mut().filter(|_| line.event.is_story()) {
            story.push(line.clone());
        }
        if self.lines.len() >= TRACE_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// A hash of every line recorded, in order: equal digests mean identical runs.
    pub fn digest(&self) -> u64 {
        self.hasher.clone().finish()
    }

    /// How many lines were recorded in all (not only those still kept).
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn lines(&self) -> impl Iterator<Item = &TraceLine> {
        self.lines.iter()
    }

    /// The kept lines, one per line of text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.count > self.lines.len() as u64 {
            out.push_str(&format!(
                "(the first {} of {} lines are not kept)\n",
                self.count - self.lines.len() as u64,
                self.count
            ));
        }
        for line in &self.lines {
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={:>6}.{:03}s ", self.at / 1000, self.at % 1000)?;
        match self.node {
            Some(node) => write!(f, "n{node:<3} ")?,
            None => write!(f, "--   ")?,
        }
        write!(f, "{}", self.event)
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Raft {
                kind,
                term,
                index,
                log_term,
                commit,
                entries,
                reject,
                snapshot,
            } => {
                write!(f, "{kind:?} term={term} index={index} log_term={log_term}")?;
                write!(f, " commit={commit}")?;
                if *entries > 0 {
                    write!(f, " entries={entries}")?;
                }
                if *reject {
                    write!(f, " reject")?;
                }
                if let Some(snapshot) = snapshot {
                    write!(f, " snapshot@{snapshot}")?;
                }
                Ok(())
            }
            Msg::Ping { seq, term } => write!(f, "Ping seq={seq} term={term}"),
            Msg::Pong { seq, term, lease } => {
                write!(f, "Pong seq={seq} term={term} leader_lease={lease}")
            }
            Msg::Evicted => write!(f, "Evicted"),
            Msg::Other => write!(f, "(another kind of frame)"),
        }
    }
}

impl fmt::Display for DropWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropWhy::Partitioned => "partitioned",
            DropWhy::Lost => "lost by the network",
            DropWhy::ReceiverDown => "receiver down",
        })
    }
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceEvent::Started {
                incarnation,
                snapshot,
                entries,
                term,
            } => write!(
                f,
                "start #{incarnation}: snapshot@{snapshot}, {entries} entries, term {term}"
            ),
            TraceEvent::Stopped {
                why,
                kept_writes,
                lost_writes,
            } => write!(
                f,
                "STOP ({why}): {kept_writes} in-flight writes kept, {lost_writes} lost"
            ),
            TraceEvent::Paused { until } => write!(f, "paused until t={until}"),
            TraceEvent::Send { to, msg, delay } => write!(f, "-> n{to} {msg} (+{delay}ms)"),
            TraceEvent::Duplicated { to, delay } => {
                write!(f, "-> n{to} duplicate of the above (+{delay}ms)")
            }
            TraceEvent::Dropped { to, msg, why } => write!(f, "-x n{to} {msg} ({why})"),
            TraceEvent::Deliver { from, msg } => write!(f, "<- n{from} {msg}"),
            TraceEvent::Lost { from, msg } => write!(f, "lost from n{from}: {msg} (receiver down)"),
            TraceEvent::Persist { .. } => fmt_persist(self, f),
            TraceEvent::Compact { index, done_at } => {
                write!(f, "compact to {index}; durable at t={done_at}")
            }
            TraceEvent::Durable { persisted } => match persisted {
                Some(number) => write!(f, "disk: durable up to persist #{number}"),
                None => write!(f, "disk: compaction durable"),
            },
            TraceEvent::Applied {
                index,
                term,
                digest,
            } => write!(f, "applied {index} (term {term}, digest {digest:016x})"),
            TraceEvent::Proposed {
                request,
                what,
                refused,
            } => match refused {
                None => write!(f, "propose r{request}: {what}"),
                Some(why) => write!(f, "propose r{request}: {what} REFUSED: {why}"),
            },
            TraceEvent::Completed { request, outcome } => match outcome {
                Ok(text) => write!(f, "completed r{request}: {text}"),
                Err(text) => write!(f, "completed r{request} with refusal: {text}"),
            },
            TraceEvent::Note(text) => write!(f, "note: {text}"),
            TraceEvent::AgentRun {
                op,
                kind,
                group,
                index,
                what,
                takes_ms,
                fate,
            } => write!(
                f,
                "agent op{op}: {kind} {group}[{index}] {what} (takes {takes_ms} ms, {fate})"
            ),
            TraceEvent::OpDone {
                op,
                kind,
                group,
                index,
                outcome,
            } => write!(f, "agent op{op} done: {kind} {group}[{index}] -> {outcome}"),
            TraceEvent::AgentEvent(text) => write!(f, "event: {text}"),
            TraceEvent::Resource(text) => write!(f, "resource: {text}"),
            TraceEvent::Check(text) => write!(f, "check: {text}"),
            TraceEvent::Fault(text) => write!(f, "FAULT {text}"),
            TraceEvent::FaultEnd(text) => write!(f, "fault over: {text}"),
            TraceEvent::Phase(text) => write!(f, "=== {text}"),
            TraceEvent::Violation(text) => write!(f, "VIOLATION {text}"),
        }
    }
}

fn fmt_persist(event: &TraceEvent, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let TraceEvent::Persist {
        number,
        entries,
        last_index,
        hard_state,
        snapshot,
        done_at,
    } = event
    else {
        return Ok(());
    };
    write!(f, "persist #{number}: {entries} entries")?;
    if let Some(last) = last_index {
        write!(f, " (to {last})")?;
    }
    if let Some((term, vote, commit)) = hard_state {
        write!(f, ", hard state term={term} vote={vote} commit={commit}")?;
    }
    if let Some(index) = snapshot {
        write!(f, ", snapshot@{index}")?;
    }
    write!(f, "; durable at t={done_at}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_but_the_digest_covers_everything() {
        let mut a = Trace::new(false);
        let mut b = Trace::new(false);
        for at in 0..(TRACE_LINES as u64 + 10) {
            a.record(at, Some(1), TraceEvent::Phase("x".into()));
            b.record(at, Some(1), TraceEvent::Phase("x".into()));
        }
        assert_eq!(a.lines().count(), TRACE_LINES);
        assert_eq!(a.digest(), b.digest());
        b.record(0, None, TraceEvent::Phase("y".into()));
        assert_ne!(a.digest(), b.digest());
        assert!(a.render().starts_with("(the first 10 of"));
    }
}
