//! The event queue: everything that will happen, ordered by (simulated time, insertion order).
//!
//! Ties at the same millisecond are broken by insertion order, never by anything that could
//! vary between runs, so a seed always replays the same sequence.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tandem_core::NodeId;

use crate::trace::Msg;

/// An input for one node's process.
#[derive(Clone, Debug)]
pub enum Input {
    Tick,
    Frame {
        from: NodeId,
        bytes: Vec<u8>,
        msg: Msg,
    },
    Persisted(u64),
    /// A round of the agent and the placement loop.
    AgentRound,
    /// A fake resource operation completes.
    OpDone {
        op: u64,
    },
}

/// Something scheduled to happen.
#[derive(Clone, Debug)]
pub enum Event {
    /// An input for process `incarnation` of `node` (lost if that process is gone).
    Input {
        node: NodeId,
        incarnation: u32,
        input: Input,
    },
    /// `node`'s disk finished the writes up to `seq`.
    DiskDone {
        node: NodeId,
        seq: u64,
    },
    Restart {
        node: NodeId,
    },
    /// The watchdog of process `incarnation` of `node` looks whether it is still frozen.
    Watchdog {
        node: NodeId,
        incarnation: u32,
    },
    NextFault,
    FaultOver {
        id: u64,
    },
    Operator,
    Setup,
    Heal,
    Probe,
    /// The operator does something to a group (fault phase).
    GroupOperator,
    /// A resource crashes, or the operator starts one by hand (fault phase).
    ResourceChaos,
    /// After the heal: have the groups settled where they are placed?
    Settle,
    /// A scripted run's step `index` is due.
    Script {
        index: usize,
    },
    /// A scripted run records where groups run now.
    Sample,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that the max-heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Pending events, earliest first.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Scheduled>,
    next_seq: u64,
}

impl Queue {
    pub fn push(&mut self, at: u64, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Scheduled { at, seq, event });
    }

    pub fn pop(&mut self) -> Option<(u64, Event)> {
        self.heap
            .pop()
            .map(|scheduled| (scheduled.at, scheduled.event))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_insertion_order() {
        let mut queue = Queue::default();
        queue.push(5, Event::Heal);
        queue.push(3, Event::Probe);
        queue.push(5, Event::Setup);
        queue.push(3, Event::Operator);
        let order: Vec<String> = std::iter::from_fn(|| queue.pop())
            .map(|(at, event)| format!("{at}:{event:?}"))
            .collect();
        assert_eq!(order, ["3:Probe", "3:Operator", "5:Heal", "5:Setup"]);
    }
}
