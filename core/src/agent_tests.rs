//! The agent's behaviour, scenario by scenario: proposals are committed at once (applied to
//! the state), resource operations are completed by the test.

use super::*;
use crate::group::{HealthCheck, Monitor, ServiceSpec};
use crate::ids::ClusterId;
use crate::state::{Admin, NodeInfo, Role};
use crate::volume::{LegSpec, LegState};

const A: NodeId = 1;
const B: NodeId = 2;

struct World {
    state: ClusterState,
    agent: Agent,
    now: u64,
    lease: bool,
    runs: Vec<(u64, usize, OpKind)>,
    events: Vec<Event>,
    proposed: Vec<StateChange>,
    cancelled: Vec<u64>,
}

fn node(id: NodeId, name: &str) -> NodeInfo {
    NodeInfo {
        id,
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        site: None,
        role: Role::Voter,
        admin: Admin::Online,
    }
}

fn service() -> ResourceSpec {
    ResourceSpec::Service {
        service: ServiceSpec::Exec {
            command: vec!["/usr/bin/srv".into()],
            health: HealthCheck::ProcessAlive,
        },
        monitor: Monitor {
            interval_ms: Some(1_000),
            timeout_ms: None,
        },
    }
}

fn ip() -> ResourceSpec {
    ResourceSpec::Ip {
        cidr: "10.0.0.5/24".into(),
        interface: None,
        monitor: Monitor::default(),
    }
}

impl World {
    /// Nodes a and b, volume `db` with legs on both (both UpToDate), group `db`
    /// (volume, ip, service) placed on `on`.
    fn new(me: NodeId, on: NodeId) -> World {
        let mut state = ClusterState::founded_by(ClusterId([3; 16]), node(A, "a"));
        state.nodes.insert(B, node(B, "b"));
        let legs = vec![
            LegSpec {
                nodes: vec![A],
                path: "/l/a".into(),
            },
            LegSpec {
                nodes: vec![B],
                path: "/l/b".into(),
            },
        ];
        let create = VolumeChange::Create {
            name: "db".into(),
            size: 1 << 20,
            legs,
            granularity: Default::default(),
        };
        state.apply(&StateChange::Volume(create)).unwrap();
        let volume = state.volume_by_name("db").unwrap().id;
        let up = VolumeChange::SetLegState {
            volume,
            leg: 1,
            state: LegState::UpToDate,
            epoch: 0,
        };
        state.apply(&StateChange::Volume(up)).unwrap();
        // The agent's first round (its clean-up after a daemon start) saw no groups.
        let mut agent = Agent::new(me);
        agent.tick(Inputs {
            now: 0,
            now_unix_ms: 1_700_000_000_000,
            state: &state,
            holds_lease: true,
        });
        assert!(agent.take_actions().is_empty());
        let volume_res = ResourceSpec::Volume {
            volume: "db".into(),
            monitor: Monitor::default(),
        };
        let mut spec = GroupSpec::new("db", vec![volume_res, ip(), service()]);
        spec.max_restarts = 2;
        state
            .apply(&StateChange::Group(GroupChange::Create { spec }))
            .unwrap();
        let place = GroupChange::Placed {
            group: "db".into(),
            node: Some(on),
            epoch: 0,
        };
        state.apply(&StateChange::Group(place)).unwrap();
        World {
            state,
            agent,
            now: 1_000,
            lease: true,
            runs: Vec::new(),
            events: Vec::new(),
            proposed: Vec::new(),
            cancelled: Vec::new(),
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            now: self.now,
            now_unix_ms: 1_700_000_000_000 + self.now,
            state: &self.state,
            holds_lease: self.lease,
        }
    }

    /// Commits what the agent proposed (as the cluster would) and collects the rest.
    fn collect(&mut self) {
        for action in self.agent.take_actions() {
            match action {
                AgentAction::Run {
                    op, index, kind, ..
                } => self.runs.push((op, index, kind)),
                AgentAction::Propose(change) => {
                    self.proposed.push(change.clone());
                    // Refusals are fine: the agent retries or the state says no.
                    let _ = self.state.apply(&change);
                }
                AgentAction::Event(event) => self.events.push(event),
                AgentAction::Cancel { op } => {
                    self.cancelled.push(op);
                    self.runs.retain(|(id, ..)| *id != op);
                }
            }
        }
    }

    fn tick(&mut self, advance: u64) {
        self.now += advance;
        let inputs = Inputs {
            now: self.now,
            now_unix_ms: 1_700_000_000_000 + self.now,
            state: &self.state,
            holds_lease: self.lease,
        };
        self.agent.tick(inputs);
        self.collect();
    }

    /// Completes the one operation in flight, which must be `kind` on `index`.
    fn complete(&mut self, index: usize, kind: OpKind, outcome: Outcome) {
        let position = self
            .runs
            .iter()
            .position(|&(_, at, was)| (at, was) == (index, kind))
            .unwrap_or_else(|| panic!("no {kind:?} of {index} in flight: {:?}", self.runs));
        let (op, ..) = self.runs.remove(position);
        let inputs = Inputs {
            now: self.now,
            now_unix_ms: 1_700_000_000_000 + self.now,
            state: &self.state,
            holds_lease: self.lease,
        };
        self.agent.completed(inputs, op, outcome);
        self.collect();
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.events.iter().map(|e| e.kind).collect()
    }

    /// Applies a group change as if the cluster had committed it.
    fn commit(&mut self, change: GroupChange) {
        self.state.apply(&StateChange::Group(change)).unwrap();
    }

    /// The leader places the group on `node` (at the current placement epoch).
    fn place(&mut self, node: Option<NodeId>) {
        let epoch = self.group().epoch;
        self.commit(GroupChange::Placed {
            group: "db".into(),
            node,
            epoch,
        });
    }

    fn group(&self) -> &crate::group::GroupStatus {
        &self.state.groups["db"].status
    }

    fn primary(&self) -> Option<NodeId> {
        self.state.volume_by_name("db").unwrap().primary
    }

    /// Acquire, promote, start ip and service, first monitors: the group is healthy.
    fn start_all(&mut self) {
        self.tick(10); // acquire committed
        self.tick(10); // promotion committed
        self.tick(10); // promoted: starts the ip
        self.complete(1, OpKind::Start, Outcome::Running);
        self.complete(2, OpKind::Start, Outcome::Running);
        self.tick(10); // all started: monitors
        self.complete(1, OpKind::Monitor, Outcome::Running);
        self.tick(0);
        self.complete(2, OpKind::Monitor, Outcome::Running);
    }
}

#[test]
fn a_placed_group_is_acquired_promoted_started_in_order_and_healthy() {
    let mut world = World::new(A, A);
    world.start_all();
    assert_eq!(world.group().holder, Some(A));
    assert_eq!(world.primary(), Some(A));
    use EventKind::*;
    assert_eq!(world.kinds(), vec![Promoted, Started, Healthy]);
    assert!(world.runs.is_empty());
}

#[test]
fn a_group_held_by_another_node_is_not_started() {
    let mut world = World::new(B, A);
    world.commit(GroupChange::Acquire {
        group: "db".into(),
        node: A,
        epoch: 1,
    });
    world.commit(GroupChange::Placed {
        group: "db".into(),
        node: Some(B),
        epoch: 1,
    });
    for _ in 0..5 {
        world.tick(500);
    }
    assert!(world.runs.is_empty());
    assert!(world.proposed.is_empty(), "{:?}", world.proposed);
    // Once A released, B acquires and starts.
    world.commit(GroupChange::Release {
        group: "db".into(),
        node: A,
    });
    world.tick(10);
    assert_eq!(world.group().holder, Some(B));
}

#[test]
fn a_moved_group_stops_in_reverse_demotes_then_releases() {
    let mut world = World::new(A, A);
    world.start_all();
    world.place(Some(B));
    world.tick(10);
    world.complete(2, OpKind::Stop, Outcome::NotRunning);
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    assert_eq!(
        world.primary(),
        None,
        "the demotion was proposed and committed"
    );
    world.tick(10);
    assert_eq!(world.group().holder, None);
    let kinds = world.kinds();
    assert_eq!(
        kinds[kinds.len() - 2..],
        [EventKind::Demoted, EventKind::Stopped]
    );
}

#[test]
fn losing_the_lease_stops_everything_without_waiting_for_commits() {
    let mut world = World::new(A, A);
    world.start_all();
    world.lease = false;
    let proposals_before = world.proposed.len();
    world.tick(10);
    // Both stops run at once: the failover timeout does not wait for them one by one.
    assert_eq!(world.runs.len(), 2, "{:?}", world.runs);
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    world.complete(2, OpKind::Stop, Outcome::NotRunning);
    world.tick(10);
    assert!(!world.agent.is_active("db"));
    assert_eq!(
        world.proposed.len(),
        proposals_before,
        "nothing proposed without a lease"
    );
    assert_eq!(world.primary(), Some(A), "no demotion could commit");
    use EventKind::*;
    assert!(world.kinds().ends_with(&[SelfFenced, Demoted, Stopped]));
    // The lease returns while the group is still placed here: it starts again.
    world.lease = true;
    world.tick(10);
    world.complete(1, OpKind::Start, Outcome::Running);
    world.complete(2, OpKind::Start, Outcome::Running);
}

#[test]
fn a_monitor_failure_restarts_from_the_failed_resource_then_gives_up() {
    let mut world = World::new(A, A);
    world.start_all();
    for round in 0..2 {
        // Only the service's 1 s monitor is due (the ip keeps the 10 s default).
        world.tick(1_000);
        world.complete(2, OpKind::Monitor, Outcome::Failed("exit 1".into()));
        // Restart: only the service (the failed one) is stopped and started again, after
        // the restart delay.
        world.complete(2, OpKind::Stop, Outcome::NotRunning);
        assert!(
            world.runs.is_empty(),
            "no start before {RESTART_DELAY_MS} ms"
        );
        world.tick(RESTART_DELAY_MS);
        world.complete(2, OpKind::Start, Outcome::Running);
        let failures = world.group().failures.get(&A).map_or(0, Vec::len);
        assert_eq!(failures, round + 1);
        world.tick(10);
        world.complete(1, OpKind::Monitor, Outcome::Running);
        world.tick(0);
        world.complete(2, OpKind::Monitor, Outcome::Running);
        world.now += 1_000; // failures in distinct seconds
    }
    assert!(world.kinds().contains(&EventKind::Restarting));
    // The third failure exceeds max_restarts = 2: quarantined here, the group stops.
    world.tick(1_000);
    world.complete(2, OpKind::Monitor, Outcome::NotRunning);
    assert!(world.group().quarantined_until.contains_key(&A));
    world.complete(2, OpKind::Stop, Outcome::NotRunning);
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    world.tick(10);
    assert_eq!(world.group().holder, None, "released for another node");
    assert!(world.kinds().contains(&EventKind::Failed));
}

#[test]
fn a_fenced_primary_is_taken_over() {
    let mut world = World::new(B, A);
    // A ran the group and died; the leader fenced it and placed the group on B.
    world.commit(GroupChange::Acquire {
        group: "db".into(),
        node: A,
        epoch: 1,
    });
    let volume = world.state.volume_by_name("db").unwrap().id;
    let promote = VolumeChange::Promote {
        volume,
        node: A,
        force: false,
        takeover: false,
    };
    world.state.apply(&StateChange::Volume(promote)).unwrap();
    world.tick(10);
    assert!(world.proposed.is_empty(), "nothing while A holds the group");
    world.commit(GroupChange::Fence {
        group: "db".into(),
        node: A,
    });
    world.commit(GroupChange::Placed {
        group: "db".into(),
        node: Some(B),
        epoch: 1,
    });
    world.tick(10);
    world.tick(10);
    let takeover = world.proposed.iter().any(|change| {
        matches!(
            change,
            StateChange::Volume(VolumeChange::Promote {
                node: B,
                takeover: true,
                ..
            })
        )
    });
    assert!(takeover, "{:?}", world.proposed);
    assert_eq!(world.primary(), Some(B));
}

#[test]
fn an_unfenced_live_primary_is_never_taken_over() {
    let mut world = World::new(B, B);
    let volume = world.state.volume_by_name("db").unwrap().id;
    let promote = VolumeChange::Promote {
        volume,
        node: A,
        force: false,
        takeover: false,
    };
    world.state.apply(&StateChange::Volume(promote)).unwrap();
    world.tick(10);
    world.tick(10);
    assert_eq!(world.primary(), Some(A));
    // The cluster refuses B's acquire while A, not fenced, is primary: nothing starts.
    assert_eq!(world.group().holder, None);
    assert!(world.runs.is_empty());
    let takeover = world.proposed.iter().any(|change| {
        matches!(
            change,
            StateChange::Volume(VolumeChange::Promote { node: B, .. })
        )
    });
    assert!(!takeover, "{:?}", world.proposed);
}

#[test]
fn after_a_daemon_restart_left_overs_are_stopped_first() {
    let mut world = World::new(A, A);
    world.start_all();
    // The daemon restarts: a new agent knows nothing of what runs.
    world.agent = Agent::new(A);
    world.runs.clear();
    world.tick(10);
    world.complete(2, OpKind::Stop, Outcome::NotRunning);
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    // The volume stayed primary here (it is committed state): no demote, straight restart.
    assert_eq!(world.primary(), Some(A));
    world.complete(1, OpKind::Start, Outcome::Running);
    world.complete(2, OpKind::Start, Outcome::Running);
    // Another node's agent restarting removes a left-over virtual IP of this group only.
    let mut other = Agent::new(B);
    other.tick(world.inputs());
    let runs: Vec<(usize, OpKind)> = other
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            AgentAction::Run { index, kind, .. } => Some((index, kind)),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec![(1, OpKind::Stop)]);
}

#[test]
fn a_failed_stop_keeps_the_group_held_and_is_retried() {
    let mut world = World::new(A, A);
    world.start_all();
    world.place(Some(B));
    world.tick(10);
    world.complete(2, OpKind::Stop, Outcome::Failed("timed out".into()));
    world.tick(1_000);
    assert!(
        world.runs.is_empty(),
        "not retried before {STOP_RETRY_MS} ms"
    );
    assert_eq!(world.group().holder, Some(A));
    world.tick(STOP_RETRY_MS);
    world.complete(2, OpKind::Stop, Outcome::NotRunning);
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    world.tick(10);
    assert_eq!(world.group().holder, None);
}

#[test]
fn a_start_in_flight_is_abandoned_when_the_lease_is_lost() {
    let mut world = World::new(A, A);
    world.tick(10); // acquire
    world.tick(10); // promote
    world.tick(10); // starts the ip
    assert_eq!(
        world.runs.last().map(|r| (r.1, r.2)),
        Some((1, OpKind::Start))
    );
    world.lease = false;
    world.tick(10);
    assert_eq!(
        world.cancelled.len(),
        1,
        "the hung start is abandoned at once"
    );
    // The abandoned resource may be running: it is stopped without waiting.
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    world.tick(10);
    assert!(!world.agent.is_active("db"));
}

/// Found by the simulator (seed 325): a daemon frozen while the first start of a group was in
/// flight said it ran nothing, so its watchdog left it alone while the start took effect.
#[test]
fn a_group_whose_first_start_is_in_flight_is_active() {
    let mut world = World::new(A, A);
    let spec = GroupSpec::new("web", vec![ip()]);
    world
        .state
        .apply(&StateChange::Group(GroupChange::Create { spec }))
        .unwrap();
    let place = GroupChange::Placed {
        group: "web".into(),
        node: Some(A),
        epoch: 0,
    };
    world.state.apply(&StateChange::Group(place)).unwrap();
    world.tick(10); // acquire
    assert!(!world.agent.is_active("web"), "nothing started yet");
    world.tick(10); // starts the ip
    assert!(
        world
            .runs
            .iter()
            .any(|&(_, index, kind)| (index, kind) == (0, OpKind::Start)),
        "{:?}",
        world.runs
    );
    assert!(
        world.agent.is_active("web"),
        "a start in flight may be running"
    );
    world.lease = false;
    world.tick(10);
    world.complete(0, OpKind::Stop, Outcome::NotRunning);
    world.tick(10);
    assert!(!world.agent.is_active("web"));
}

#[test]
fn a_promotion_that_commits_after_the_group_moved_is_demoted_before_release() {
    let mut world = World::new(A, A);
    world.tick(10); // acquire committed
                    // The promotion is proposed but commits only after the group was placed elsewhere.
    let promote = world
        .agent
        .promotion(world.inputs(), "db", "db")
        .unwrap()
        .unwrap();
    world.place(Some(B));
    world.state.apply(&promote).unwrap();
    assert_eq!(world.primary(), Some(A));
    world.tick(10);
    world.tick(10);
    assert_eq!(world.primary(), None, "demoted before releasing");
    world.tick(10);
    assert_eq!(world.group().holder, None);
}

#[test]
fn an_acquire_that_commits_after_the_agent_dropped_the_group_is_released() {
    let mut world = World::new(A, B);
    // An acquire by A that committed late (the group had been placed on A back then).
    world.state.groups.get_mut("db").unwrap().status.holder = Some(A);
    world.tick(10);
    assert_eq!(world.group().holder, None, "A released what it never ran");
}

#[test]
fn a_stopping_daemon_stops_demotes_and_releases_its_groups() {
    let mut world = World::new(A, A);
    world.start_all();
    assert!(!world.agent.is_quiet(&world.state, true));
    world.agent.shut_down();
    world.tick(10);
    world.complete(2, OpKind::Stop, Outcome::NotRunning);
    world.complete(1, OpKind::Stop, Outcome::NotRunning);
    world.tick(10);
    world.tick(10);
    assert_eq!(world.primary(), None);
    assert_eq!(
        world.group().holder,
        None,
        "released: another node may start it at once"
    );
    assert!(world.agent.is_quiet(&world.state, true));
}

/// The real-host scenario runner found it (operator-mistakes: two contradicting moves): the
/// demotion the first move proposed committed after the second move placed the group back
/// here, and the agent, holding the volume resource as started, ran the service without a
/// primary volume until the volume's next monitor, 5 s later. The committed state is the
/// volume resource's truth, so it is checked on every step.
#[test]
fn a_volume_demoted_behind_the_agents_back_is_noticed_at_once_and_restarted() {
    let mut world = World::new(A, A);
    world.start_all();
    let volume = world.state.volume_by_name("db").unwrap();
    let demote = VolumeChange::Demote {
        volume: volume.id,
        epoch: volume.epoch,
    };
    world.state.apply(&StateChange::Volume(demote)).unwrap();
    assert_eq!(world.primary(), None);
    world.tick(10);
    let kinds = world.kinds();
    assert!(
        kinds.contains(&EventKind::Detected) || kinds.contains(&EventKind::Restarting),
        "the lost primary role was not noticed within 10 ms: {kinds:?}"
    );
    for _ in 0..50 {
        world.tick(100);
        let runs: Vec<(usize, OpKind)> = world.runs.iter().map(|&(_, i, k)| (i, k)).collect();
        for (index, kind) in runs {
            let outcome = match kind {
                OpKind::Stop => Outcome::NotRunning,
                _ => Outcome::Running,
            };
            world.complete(index, kind, outcome);
        }
    }
    assert_eq!(
        world.primary(),
        Some(A),
        "promoted again: {:?}",
        world.kinds()
    );
}
