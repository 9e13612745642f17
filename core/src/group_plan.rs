//! What the `group`, `explain` and `apply` commands mean: operator words (group and node
//! names) to committed group changes, the group status model, and the scheduler's reasoning
//! for `tandem explain`. Kept apart from `node.rs` so the Raft node stays about Raft, like
//! `volume_plan.rs` for volumes.
//!
//! Every change is checked against the state here first, with messages that name the group,
//! the resource and the problem, and then again by `apply` on every node once committed.

use std::collections::BTreeMap;

use crate::apply::{self, node_name, GroupDef};
use crate::command::{
    Command, ExplainReport, GroupReport, QuarantineReport, Reply, ResourceReport, VerdictReport,
};
use crate::group::{Group, GroupChange, GroupSpec};
use crate::ids::NodeId;
use crate::node::{NodeCore, Plan};
use crate::scheduler::{self, Liveness, NodeLiveness};
use crate::state::{ClusterState, StateChange};
use crate::timing::Timing;

/// The failover timeout `explain` reasons with: the one place to change when it becomes
/// configurable.
pub fn failover_timeout_ms(timing: &Timing) -> u64 {
    scheduler::default_failover_timeout_ms(timing)
}

/// Whose liveness facts an explanation uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewpoint {
    pub liveness: Liveness,
    /// This node is the leader holding its lease: its reasoning is the decision.
    pub decides: bool,
    pub me: NodeId,
    pub leader: Option<NodeId>,
}

/// The plan for a group, explain or apply command on `core`, or `None` when `command` is
/// about something else.
pub fn plan(core: &NodeCore, now: u64, now_unix: u64, command: &Command) -> Option<Plan> {
    plan_in(core.state(), now_unix, command, || viewpoint(core, now))
}

/// [`plan`] on a bare state; `viewpoint` is asked only by `explain`.
pub fn plan_in(
    state: &ClusterState,
    now_unix: u64,
    command: &Command,
    viewpoint: impl FnOnce() -> Viewpoint,
) -> Option<Plan> {
    let answer = match command {
        Command::GroupList => Ok(Reply::Groups {
            groups: state
                .groups
                .values()
                .map(|group| report(state, group, now_unix))
                .collect(),
        }),
        Command::GroupShow { name } => group(state, name).map(|group| Reply::Groups {
            groups: vec![report(state, group, now_unix)],
        }),
        Command::Explain { group } => explain(state, now_unix, group, viewpoint()),
        Command::ApplyPlan { file, prune } => {
            apply::plan(state, file, *prune).map(|plan| Reply::ApplyPlan {
                steps: plan.steps,
                notes: plan.notes,
            })
        }
        _ => {
            return change_for(state, command).map(|change| match change {
                Ok(change) => Plan::Propose(change),
                Err(message) => Plan::Answer(Reply::Refused { message }),
            })
        }
    };
    Some(Plan::Answer(
        answer.unwrap_or_else(|message| Reply::Refused { message }),
    ))
}

/// The checked state change of a group command that changes something, or `None` when
/// `command` is not one.
pub fn change_for(state: &ClusterState, command: &Command) -> Option<Result<StateChange, String>> {
    let change = match command {
        Command::GroupCreate { group } => create(state, group),
        Command::GroupUpdate { group } => update(state, group),
        Command::GroupMove { name, node } => move_to(state, name, node),
        Command::GroupClear { name } => named(state, name, |group| GroupChange::Clear { group }),
        Command::GroupEnable { name } => named(state, name, |group| GroupChange::Enable { group }),
        Command::GroupDisable { name } => {
            named(state, name, |group| GroupChange::Disable { group })
        }
        Command::GroupDelete { name } => delete(state, name),
        _ => return None,
    };
    Some(change.and_then(|change| {
        let change = StateChange::Group(change);
        state.validate(&change).map_err(|error| error.to_string())?;
        Ok(change)
    }))
}

fn group<'a>(state: &'a ClusterState, name: &str) -> Result<&'a Group, String> {
    state
        .groups
        .get(name)
        .ok_or_else(|| format!("no group named {name:?} in this cluster"))
}

fn named(
    state: &ClusterState,
    name: &str,
    change: impl FnOnce(String) -> GroupChange,
) -> Result<GroupChange, String> {
    group(state, name).map(|group| change(group.spec.name.clone()))
}

/// The spec of a definition, its volumes checked resource by resource.
fn checked_spec(state: &ClusterState, def: &GroupDef) -> Result<GroupSpec, String> {
    let spec = def.to_spec(state)?;
    for (index, resource) in spec.resources.iter().enumerate() {
        if let Some(volume) = resource.volume() {
            if state.volume_by_name(volume).is_none() {
                return Err(format!(
                    "group {}, resource {index} ({resource}): volume {volume} does not exist \
                     (create it first: `tandem volume create`, or declare it in cluster.toml)",
                    spec.name
                ));
            }
        }
    }
    Ok(spec)
}

fn create(state: &ClusterState, def: &GroupDef) -> Result<GroupChange, String> {
    if state.groups.contains_key(&def.name) {
        return Err(format!(
            "a group named {:?} already exists (`tandem apply` updates groups)",
            def.name
        ));
    }
    let spec = checked_spec(state, def)?;
    Ok(GroupChange::Create { spec })
}

fn update(state: &ClusterState, def: &GroupDef) -> Result<GroupChange, String> {
    group(state, &def.name)?;
    let spec = checked_spec(state, def)?;
    Ok(GroupChange::Update { spec })
}

fn move_to(state: &ClusterState, name: &str, node: &str) -> Result<GroupChange, String> {
    let group = group(state, name)?;
    let target = state
        .node_by_name(node)
        .ok_or_else(|| format!("no node named {node:?} in this cluster"))?;
    if target.role == crate::state::Role::Witness {
        return Err(format!(
            "group {name} cannot move to {node}: it is a witness, and witnesses never run \
             resources"
        ));
    }
    for volume in group.spec.volumes() {
        let reaches = state
            .volume_by_name(volume)
            .is_some_and(|info| info.leg_of(target.id).is_some());
        if !reaches {
            return Err(format!(
                "group {name} cannot move to {node}: {node} reaches no leg of its volume {volume}"
            ));
        }
    }
    Ok(GroupChange::Move {
        group: name.to_string(),
        to: target.id,
    })
}

fn delete(state: &ClusterState, name: &str) -> Result<GroupChange, String> {
    let group = group(state, name)?;
    if let Some(node) = group.status.node {
        let node = node_name(state, node);
        let how = if group.spec.enabled {
            format!("disable it first (`tandem group disable {name}`) and wait until it stopped")
        } else {
            "it is disabled: wait until it stopped".to_string()
        };
        return Err(format!(
            "group {name} is still placed on {node}: {how}, then delete it"
        ));
    }
    Ok(GroupChange::Delete {
        group: name.to_string(),
    })
}

/// The status model of one group, with node names resolved; only running quarantines.
pub fn report(state: &ClusterState, group: &Group, now_unix: u64) -> GroupReport {
    let (spec, status) = (&group.spec, &group.status);
    let name = |id: NodeId| node_name(state, id);
    let resources = spec
        .resources
        .iter()
        .map(|resource| ResourceReport {
            what: resource.to_string(),
            monitor_interval_ms: resource.monitor().interval_ms(),
            monitor_timeout_ms: resource.monitor().timeout_ms(),
            spec: resource.clone(),
        })
        .collect();
    let failures: BTreeMap<String, Vec<u64>> = status
        .failures
        .iter()
        .filter(|(_, times)| !times.is_empty())
        .map(|(&node, times)| (name(node), times.clone()))
        .collect();
    let quarantines = status
        .quarantined_until
        .keys()
        .filter_map(|&node| {
            let until_unix = status.quarantine_of(node, now_unix)?;
            Some(QuarantineReport {
                node: name(node),
                until_unix,
                left_secs: until_unix - now_unix,
            })
        })
        .collect();
    GroupReport {
        name: spec.name.clone(),
        enabled: spec.enabled,
        node: status.node.map(name),
        epoch: status.epoch,
        pinned: status.pinned.map(name),
        preferred: spec.preferred.iter().map(|&id| name(id)).collect(),
        failback: spec.failback,
        stickiness: spec.stickiness,
        max_restarts: spec.max_restarts,
        restart_window_secs: spec.restart_window_secs,
        quarantine_secs: spec.quarantine_secs,
        resources,
        failures,
        quarantines,
    }
}

/// The leader's liveness when this node is the leader holding its lease, else this node's
/// own view of its peers.
fn viewpoint(core: &NodeCore, now: u64) -> Viewpoint {
    let timeout = failover_timeout_ms(core.timing());
    let (liveness, decides) = match core.liveness(now, timeout) {
        Some(liveness) => (liveness, true),
        None => (own_liveness(core, now, timeout), false),
    };
    Viewpoint {
        liveness,
        decides,
        me: core.id(),
        leader: core.leader(),
    }
}

/// Liveness as a node that is not the deciding leader sees it: online, holding a lease as
/// last reported, and silent for as long as it has not heard from a peer.
fn own_liveness(core: &NodeCore, now: u64, failover_timeout_ms: u64) -> Liveness {
    let mut liveness = Liveness::new(failover_timeout_ms);
    for node in core.status(now).nodes {
        let holds_lease = node.lease_remaining_ms > 0;
        let offline_for_ms = if node.online && holds_lease {
            0
        } else {
            node.last_seen_ms.unwrap_or(0)
        };
        let live = NodeLiveness {
            online: node.online,
            holds_lease,
            offline_for_ms,
        };
        liveness.nodes.insert(node.id, live);
    }
    liveness
}

/// The first line of an explanation: whose reasoning it is.
fn view_line(state: &ClusterState, view: &Viewpoint) -> String {
    let me = node_name(state, view.me);
    match view.leader {
        _ if view.decides => {
            format!("the leader's decision ({me} leads and holds its leader lease)")
        }
        Some(leader) if leader == view.me => format!(
            "this node's view ({me} leads but does not hold its leader lease yet: nothing is \
             placed until it does)"
        ),
        Some(leader) => format!(
            "this node's view ({me}); {} leads and decides: run `tandem explain` there for its \
             decision",
            node_name(state, leader)
        ),
        None => format!("this node's view ({me}); no leader is known, so nothing is placed now"),
    }
}

fn explain(
    state: &ClusterState,
    now_unix: u64,
    group: &str,
    view: Viewpoint,
) -> Result<Reply, String> {
    let explanation = scheduler::explain(state, &view.liveness, now_unix, group)
        .map_err(|_| format!("no group named {group:?} in this cluster"))?;
    let nodes = explanation
        .nodes
        .iter()
        .map(|node| {
            let verdict = match (&node.verdict, node.preferred_rank) {
                (Ok(load), Some(rank)) => {
                    format!("eligible (load {load}; preferred #{})", rank + 1)
                }
                (Ok(load), None) => format!("eligible (load {load}; not preferred)"),
                (Err(why), _) => why.to_string(),
            };
            VerdictReport {
                node: node.name.clone(),
                eligible: node.verdict.is_ok(),
                verdict,
                current: explanation.current == Some(node.node),
                chosen: explanation.place_on == Some(node.node),
            }
        })
        .collect();
    Ok(Reply::Explain(Box::new(ExplainReport {
        view: view_line(state, &view),
        decided_by_leader: view.decides,
        group: explanation.group.clone(),
        summary: explanation.summary.clone(),
        current: explanation.current.map(|id| node_name(state, id)),
        place_on: explanation.place_on.map(|id| node_name(state, id)),
        nodes,
        text: explanation.to_string(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixture_state;
    use crate::group::{HealthCheck, Monitor, ResourceSpec, ServiceSpec};
    use crate::volume::{LegSpec, VolumeChange};

    fn volume(name: &str) -> ResourceSpec {
        ResourceSpec::Volume {
            volume: name.into(),
            monitor: Monitor::default(),
        }
    }

    fn exec(command: &str) -> ResourceSpec {
        ResourceSpec::Service {
            service: ServiceSpec::Exec {
                command: command.split(' ').map(str::to_string).collect(),
                health: HealthCheck::ProcessAlive,
            },
            monitor: Monitor::default(),
        }
    }

    /// The fixture with volume `db` (legs on a and b) and `solo` (a leg on a only).
    fn state() -> ClusterState {
        let mut state = fixture_state();
        for (name, nodes) in [("db", vec![vec![1], vec![2]]), ("solo", vec![vec![1]])] {
            let legs = nodes
                .into_iter()
                .map(|nodes| LegSpec {
                    path: format!("/legs/{name}-{}", nodes[0]),
                    nodes,
                })
                .collect();
            let create = VolumeChange::Create {
                name: name.into(),
                size: 1 << 20,
                legs,
                granularity: Default::default(),
            };
            state.apply(&StateChange::Volume(create)).unwrap();
        }
        state
    }

    fn no_view() -> Viewpoint {
        panic!("only explain asks for a viewpoint")
    }

    fn run(state: &ClusterState, command: Command) -> Plan {
        plan_in(state, 1_000, &command, no_view).expect("a group command")
    }

    /// Proposes and commits; panics on a refusal.
    fn commit(state: &mut ClusterState, command: Command) {
        match run(state, command) {
            Plan::Propose(change) => {
                state.apply(&change).unwrap();
            }
            other => panic!("expected a proposal, got {other:?}"),
        }
    }

    fn refusal(state: &ClusterState, command: Command) -> String {
        match run(state, command) {
            Plan::Answer(Reply::Refused { message }) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn web(preferred: &[&str]) -> GroupDef {
        let mut def = GroupDef::new("web", vec![volume("db"), exec("sleep 600")]);
        def.preferred = preferred.iter().map(|s| s.to_string()).collect();
        def
    }

    fn shown(state: &ClusterState, name: &str) -> GroupReport {
        match run(state, Command::GroupShow { name: name.into() }) {
            Plan::Answer(Reply::Groups { mut groups }) => groups.remove(0),
            other => panic!("expected groups, got {other:?}"),
        }
    }

    #[test]
    fn create_list_show() {
        let mut state = state();
        commit(
            &mut state,
            Command::GroupCreate {
                group: web(&["b", "a"]),
            },
        );
        assert_eq!(state.groups["web"].spec.preferred, vec![2, 1]);
        let report = shown(&state, "web");
        assert_eq!(report.preferred, ["b", "a"]);
        assert_eq!(report.resources[1].what, "exec sleep");
        assert_eq!(report.resources[1].monitor_interval_ms, 10_000);
        assert_eq!((report.node, report.epoch, report.enabled), (None, 0, true));
        let Plan::Answer(Reply::Groups { groups }) = run(&state, Command::GroupList) else {
            panic!("expected a list");
        };
        assert_eq!(groups.len(), 1);
        let missing = refusal(
            &state,
            Command::GroupShow {
                name: "nope".into(),
            },
        );
        assert_eq!(missing, "no group named \"nope\" in this cluster");
    }

    #[test]
    fn bad_groups_are_refused_naming_group_resource_and_problem() {
        let mut state = state();
        let cases: Vec<(GroupDef, &str)> =
            vec![
            (
                GroupDef::new("web", vec![volume("db"), volume("nope")]),
                "group web, resource 1 (volume nope): volume nope does not exist",
            ),
            (web(&["zz"]), "group web: preferred node \"zz\" is not a member"),
            (web(&["a", "w"]), "group web: preferred node w is a witness"),
            (web(&["a", "a"]), "group web: node a is listed twice in preferred"),
            (
                GroupDef::new("we b", vec![volume("db")]),
                "group name \"we b\" is invalid",
            ),
            (
                GroupDef::new(
                    "web",
                    vec![ResourceSpec::Ip {
                        cidr: "10.0.0.300/24".into(),
                        interface: None,
                        monitor: Monitor::default(),
                    }],
                ),
                "group web, resource 0 (ip 10.0.0.300/24): \"10.0.0.300/24\" is not a valid CIDR",
            ),
        ];
        for (def, expected) in cases {
            let message = refusal(&state, Command::GroupCreate { group: def });
            assert!(message.contains(expected), "{message}");
        }
        assert!(state.groups.is_empty());
        commit(&mut state, Command::GroupCreate { group: web(&[]) });
        let again = refusal(&state, Command::GroupCreate { group: web(&[]) });
        assert!(again.contains("already exists"), "{again}");
        let missing = refusal(
            &state,
            Command::GroupUpdate {
                group: GroupDef::new("x", vec![]),
            },
        );
        assert_eq!(missing, "no group named \"x\" in this cluster");
    }

    #[test]
    fn move_clear_enable_disable_update() {
        let mut state = state();
        commit(&mut state, Command::GroupCreate { group: web(&[]) });
        let to = |node: &str| Command::GroupMove {
            name: "web".into(),
            node: node.into(),
        };
        commit(&mut state, to("b"));
        assert_eq!(shown(&state, "web").pinned.as_deref(), Some("b"));
        assert!(refusal(&state, to("w")).contains("it is a witness"));
        assert!(refusal(&state, to("zz")).contains("no node named \"zz\""));
        commit(&mut state, Command::GroupClear { name: "web".into() });
        assert_eq!(shown(&state, "web").pinned, None);
        commit(&mut state, Command::GroupDisable { name: "web".into() });
        assert!(!shown(&state, "web").enabled);
        commit(&mut state, Command::GroupEnable { name: "web".into() });
        assert!(shown(&state, "web").enabled);
        let solo = GroupDef::new("solo", vec![volume("solo")]);
        commit(&mut state, Command::GroupCreate { group: solo });
        let message = refusal(
            &state,
            Command::GroupMove {
                name: "solo".into(),
                node: "b".into(),
            },
        );
        assert!(
            message.contains("b reaches no leg of its volume solo"),
            "{message}"
        );
        commit(&mut state, Command::GroupUpdate { group: web(&["b"]) });
        assert_eq!(shown(&state, "web").preferred, ["b"]);
        assert!(refusal(&state, Command::GroupClear { name: "x".into() }).contains("no group"));
    }

    #[test]
    fn delete_is_refused_while_placed() {
        let mut state = state();
        commit(&mut state, Command::GroupCreate { group: web(&[]) });
        let placed = GroupChange::Placed {
            group: "web".into(),
            node: Some(1),
            epoch: 0,
        };
        state.apply(&StateChange::Group(placed)).unwrap();
        let delete = || Command::GroupDelete { name: "web".into() };
        let message = refusal(&state, delete());
        assert!(
            message.contains("group web is still placed on a"),
            "{message}"
        );
        assert!(message.contains("tandem group disable web"), "{message}");
        let unplaced = GroupChange::Placed {
            group: "web".into(),
            node: None,
            epoch: 1,
        };
        state.apply(&StateChange::Group(unplaced)).unwrap();
        commit(&mut state, delete());
        assert!(state.groups.is_empty());
    }

    #[test]
    fn quarantines_and_failures_are_reported_by_node_name() {
        let mut state = state();
        let mut def = web(&[]);
        def.max_restarts = 0;
        commit(&mut state, Command::GroupCreate { group: def });
        let failure = GroupChange::RecordFailure {
            group: "web".into(),
            node: 2,
            at_unix: 900,
        };
        state.apply(&StateChange::Group(failure)).unwrap();
        let report = shown(&state, "web");
        assert_eq!(report.quarantines.len(), 1);
        assert_eq!(report.quarantines[0].node, "b");
        assert_eq!(report.quarantines[0].left_secs, 900 + 600 - 1_000);
    }

    fn explained(state: &ClusterState, view: Viewpoint) -> ExplainReport {
        let command = Command::Explain {
            group: "web".into(),
        };
        match plan_in(state, 1_000, &command, || view) {
            Some(Plan::Answer(Reply::Explain(report))) => *report,
            other => panic!("expected an explanation, got {other:?}"),
        }
    }

    #[test]
    fn explain_gives_every_node_a_verdict_and_says_whose_view() {
        let mut state = state();
        for volume in state.volumes.values_mut() {
            for leg in &mut volume.legs {
                leg.state = crate::volume::LegState::UpToDate;
            }
        }
        commit(&mut state, Command::GroupCreate { group: web(&["b"]) });
        let mut liveness = Liveness::new(2_000);
        for node in [1, 2, 3] {
            let live = NodeLiveness {
                online: true,
                holds_lease: true,
                offline_for_ms: 0,
            };
            liveness.nodes.insert(node, live);
        }
        let view = Viewpoint {
            liveness: liveness.clone(),
            decides: true,
            me: 1,
            leader: Some(1),
        };
        let report = explained(&state, view);
        assert!(
            report.view.starts_with("the leader's decision (a leads"),
            "{}",
            report.view
        );
        assert_eq!(report.place_on.as_deref(), Some("b"));
        let verdicts: Vec<(&str, bool)> = report
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.eligible))
            .collect();
        assert_eq!(verdicts, [("a", true), ("b", true), ("w", false)]);
        assert!(report.nodes[1].verdict.contains("preferred #1"));
        assert!(report.nodes[2].verdict.contains("witness"));
        assert!(report.text.contains("[chosen]"), "{}", report.text);
        let follower = Viewpoint {
            liveness,
            decides: false,
            me: 2,
            leader: Some(1),
        };
        let report = explained(&state, follower);
        assert!(report
            .view
            .starts_with("this node's view (b); a leads and decides"));
        let unknown = Command::Explain {
            group: "nope".into(),
        };
        let Some(Plan::Answer(Reply::Refused { message })) =
            plan_in(&state, 0, &unknown, || Viewpoint {
                liveness: Liveness::new(2_000),
                decides: false,
                me: 1,
                leader: None,
            })
        else {
            panic!("expected a refusal");
        };
        assert_eq!(message, "no group named \"nope\" in this cluster");
    }

    #[test]
    fn apply_plans_are_answers_and_other_commands_are_not_ours() {
        let state = state();
        let file = crate::apply::ClusterFile {
            volumes: vec![],
            groups: vec![web(&[])],
        };
        let command = Command::ApplyPlan { file, prune: false };
        let Plan::Answer(Reply::ApplyPlan { steps, notes }) = run(&state, command) else {
            panic!("expected a plan");
        };
        assert_eq!(steps.len(), 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(plan_in(&state, 0, &Command::Status, no_view).is_none());
        assert!(change_for(&state, &Command::VolumeList).is_none());
    }
}
