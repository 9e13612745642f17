//! The leader's placement loop: turns the scheduler's decisions into committed changes.
//!
//! The scheduler ([`crate::scheduler`]) is a pure function from state to desired placement.
//! Only the Raft leader holding its lease acts on it, through this small stateful wrapper that
//! the shim (or the simulator) calls on every tick. It proposes:
//! - `GroupChange::Placed` when a group's desired node differs from its committed one;
//! - `GroupChange::Fence` when a group's holder has been gone past the failover timeout: by
//!   then its lease lapsed and it stopped everything by itself (DESIGN.md §5 rule 2), so
//!   another node may acquire the group and take its volumes over;
//! - timeline events: a node went silent (detected), a placement (decided), a fence.
//!
//! It remembers what it proposed so that a decision is not proposed again every tick while it
//! is being committed; a proposal lost in a leader change is retried after [`RETRY_MS`].

use std::collections::BTreeMap;

use crate::events::{Event, EventKind};
use crate::group::GroupChange;
use crate::ids::NodeId;
use crate::scheduler::{self, Liveness};
use crate::state::{ClusterState, StateChange};

/// A proposal not reflected in the state after this long is made again.
pub const RETRY_MS: u64 = 2_000;

/// The leader's memory between ticks.
#[derive(Debug, Default)]
pub struct Placer {
    /// Per group: (the placement epoch we proposed against, when).
    placed: BTreeMap<String, (u64, u64)>,
    /// Per group: (the holder we proposed to fence, when).
    fenced: BTreeMap<String, (NodeId, u64)>,
    /// Whether each node was online at the previous tick (to notice it going silent).
    online: BTreeMap<NodeId, bool>,
}

impl Placer {
    pub fn new() -> Placer {
        Placer::default()
    }

    /// Forgets everything (this node stopped leading): a new term starts from scratch.
    pub fn reset(&mut self) {
        *self = Placer::default();
    }

    /// One round: the changes to propose now, events last (as one batch).
    pub fn tick(
        &mut self,
        now: u64,
        now_unix_ms: u64,
        me: NodeId,
        state: &ClusterState,
        liveness: &Liveness,
    ) -> Vec<StateChange> {
        let mut events = self.detect(now_unix_ms, me, state, liveness);
        let mut changes = Vec::new();
        for (name, group) in &state.groups {
            let Some(holder) = group.status.holder else {
                continue;
            };
            let live = liveness.of(holder);
            let gone_long = liveness.is_gone(holder)
                && live.offline_for_ms >= liveness.failover_timeout_ms
                && holder != me;
            if !gone_long || self.recently(&self.fenced, name, holder, now) {
                continue;
            }
            self.fenced.insert(name.clone(), (holder, now));
            changes.push(StateChange::Group(GroupChange::Fence {
                group: name.clone(),
                node: holder,
            }));
            let detail = format!(
                "node {} gone for {} ms (failover timeout {} ms): its lease has lapsed, so it \
                 has stopped the group by itself",
                node_name(state, holder),
                live.offline_for_ms,
                liveness.failover_timeout_ms
            );
            events.push(Event::new(
                now_unix_ms,
                me,
                Some(name),
                EventKind::Fenced,
                detail,
            ));
        }
        let now_unix = now_unix_ms / 1000;
        for decision in scheduler::schedule(state, liveness, now_unix) {
            if !decision.changes_placement() {
                continue;
            }
            let Some(group) = state.groups.get(&decision.group) else {
                continue;
            };
            let epoch = group.status.epoch;
            if self.recently(&self.placed, &decision.group, epoch, now) {
                continue;
            }
            self.placed.insert(decision.group.clone(), (epoch, now));
            changes.push(StateChange::Group(GroupChange::Placed {
                group: decision.group.clone(),
                node: decision.place_on,
                epoch,
            }));
            let detail = decision.reason.summary.clone();
            let group_name = Some(decision.group.as_str());
            events.push(Event::new(
                now_unix_ms,
                me,
                group_name,
                EventKind::Decided,
                detail,
            ));
        }
        if !events.is_empty() {
            events.truncate(crate::events::MAX_BATCH);
            changes.push(StateChange::Events { events });
        }
        changes
    }

    /// Whether `key` was proposed for `name` less than [`RETRY_MS`] ago.
    fn recently<K: PartialEq + Copy>(
        &self,
        memo: &BTreeMap<String, (K, u64)>,
        name: &str,
        key: K,
        now: u64,
    ) -> bool {
        memo.get(name)
            .is_some_and(|&(seen, at)| seen == key && now.saturating_sub(at) < RETRY_MS)
    }

    /// Events for nodes that went silent or came back since the previous tick.
    fn detect(
        &mut self,
        now_unix_ms: u64,
        me: NodeId,
        state: &ClusterState,
        liveness: &Liveness,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for (&node, live) in &liveness.nodes {
            let was = self.online.insert(node, live.online);
            let name = node_name(state, node);
            let detail = match (was, live.online) {
                // A new leader also reports nodes it finds silent when it takes over.
                (Some(true) | None, false) => format!(
                    "node {name} stopped answering (silent for {} ms)",
                    live.offline_for_ms
                ),
                (Some(false), true) => format!("node {name} answers again"),
                _ => continue,
            };
            events.push(Event::new(
                now_unix_ms,
                me,
                None,
                EventKind::Detected,
                detail,
            ));
        }
        self.online
            .retain(|node, _| liveness.nodes.contains_key(node));
        events
    }
}

fn node_name(state: &ClusterState, node: NodeId) -> String {
    state
        .nodes
        .get(&node)
        .map_or_else(|| format!("{node}"), |info| info.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{GroupSpec, ResourceSpec, ServiceSpec};
    use crate::ids::ClusterId;
    use crate::scheduler::NodeLiveness;
    use crate::state::{NodeInfo, Role};

    fn state_with_group() -> ClusterState {
        let node = |id: NodeId, name: &str| NodeInfo {
            id,
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            site: None,
            role: Role::Voter,
            admin: crate::state::Admin::Online,
        };
        let mut state = ClusterState::founded_by(ClusterId([7; 16]), node(1, "a"));
        state.nodes.insert(2, node(2, "b"));
        state.nodes.insert(3, node(3, "w"));
        let service = ResourceSpec::Service {
            service: ServiceSpec::Exec {
                command: vec!["/bin/true".into()],
                health: crate::group::HealthCheck::ProcessAlive,
            },
            monitor: Default::default(),
        };
        let mut spec = GroupSpec::new("web", vec![service]);
        spec.preferred = vec![1, 2];
        let change = StateChange::Group(GroupChange::Create { spec });
        state.apply(&change).unwrap();
        state
    }

    fn liveness(gone: &[(NodeId, u64)]) -> Liveness {
        let mut liveness = Liveness::new(1650);
        for node in 1..=3 {
            let offline = gone.iter().find(|(id, _)| *id == node).map(|(_, ms)| *ms);
            liveness.nodes.insert(
                node,
                NodeLiveness {
                    online: offline.is_none(),
                    holds_lease: offline.is_none(),
                    offline_for_ms: offline.unwrap_or(0),
                },
            );
        }
        liveness
    }

    fn apply_all(state: &mut ClusterState, changes: &[StateChange]) {
        for change in changes {
            state.apply(change).unwrap();
        }
    }

    #[test]
    fn places_once_then_waits_for_the_commit() {
        let state = state_with_group();
        let mut placer = Placer::new();
        let changes = placer.tick(0, 1_000, 1, &state, &liveness(&[]));
        let placed = StateChange::Group(GroupChange::Placed {
            group: "web".into(),
            node: Some(1),
            epoch: 0,
        });
        assert_eq!(changes[0], placed);
        assert!(
            matches!(&changes[1], StateChange::Events { events } if events[0].kind == EventKind::Decided)
        );
        assert!(placer
            .tick(100, 1_100, 1, &state, &liveness(&[]))
            .is_empty());
        // Lost in a leader change: proposed again after the retry interval.
        let again = placer.tick(RETRY_MS + 1, 3_000, 1, &state, &liveness(&[]));
        assert_eq!(again[0], placed);
    }

    #[test]
    fn a_gone_holder_is_fenced_only_past_the_failover_timeout_then_the_group_moves() {
        let mut state = state_with_group();
        let mut placer = Placer::new();
        let changes = placer.tick(0, 0, 2, &state, &liveness(&[]));
        apply_all(&mut state, &changes);
        let acquire = GroupChange::Acquire {
            group: "web".into(),
            node: 1,
            epoch: 1,
        };
        state.apply(&StateChange::Group(acquire)).unwrap();
        // Node 1 goes silent: detected, but nothing moves before the failover timeout.
        let changes = placer.tick(10, 10, 2, &state, &liveness(&[(1, 1000)]));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            matches!(&changes[0], StateChange::Events { events } if events[0].kind == EventKind::Detected)
        );
        let changes = placer.tick(20, 20, 2, &state, &liveness(&[(1, 1700)]));
        assert!(changes.contains(&StateChange::Group(GroupChange::Fence {
            group: "web".into(),
            node: 1
        })));
        apply_all(&mut state, &changes);
        let group = &state.groups["web"].status;
        assert_eq!(
            (group.holder, group.fenced, group.node),
            (None, Some(1), Some(2))
        );
    }
}
