//! Scheduler regression tests: every `scheduler_scenarios/*.toml` is a cluster (nodes, what
//! the leader observes of them, volumes, groups) and the placement and explanation we expect.
//! A failing scenario prints its file name and a diff; all failures are reported together.
//! Then a property test: on random states the scheduler never places a group on an
//! ineligible node, and is deterministic.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde::Deserialize;
use tandem_core::group::{self, Failback, Group, GroupChange, GroupSpec, ResourceSpec};
use tandem_core::scheduler::{self, Decision, Liveness, NodeLiveness};
use tandem_core::state::{Admin, ClusterState, NodeInfo, Role, StateChange};
use tandem_core::volume::{LegInfo, LegState, VolumeInfo};
use tandem_core::{ClusterId, NodeId};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[allow(dead_code)]
    description: String,
    #[serde(default = "default_now")]
    now: u64,
    #[serde(default = "default_failover")]
    failover_timeout_ms: u64,
    nodes: Vec<NodeDef>,
    #[serde(default)]
    volumes: Vec<VolumeDef>,
    groups: Vec<GroupDef>,
    expect: BTreeMap<String, Expect>,
}

fn default_now() -> u64 {
    1_000_000
}
fn default_failover() -> u64 {
    3000
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeDef {
    name: String,
    #[serde(default = "voter")]
    role: Role,
    site: Option<String>,
    #[serde(default = "yes")]
    online: bool,
    /// Defaults to `online`.
    lease: Option<bool>,
    #[serde(default)]
    offline_for_ms: u64,
    #[serde(default = "online")]
    admin: Admin,
}

fn voter() -> Role {
    Role::Voter
}
fn online() -> Admin {
    Admin::Online
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeDef {
    name: String,
    legs: Vec<LegDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegDef {
    nodes: Vec<String>,
    #[serde(default = "up_to_date")]
    state: LegState,
}

fn up_to_date() -> LegState {
    LegState::UpToDate
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDef {
    name: String,
    resources: Vec<ResourceSpec>,
    #[serde(default)]
    preferred: Vec<String>,
    #[serde(default)]
    failback: Failback,
    #[serde(default)]
    stickiness: u32,
    #[serde(default = "yes")]
    enabled: bool,
    /// Where the group runs now.
    on: Option<String>,
    pinned: Option<String>,
    /// Node name -> quarantined until (unix seconds).
    #[serde(default)]
    quarantined: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// A node name, or "none".
    on: String,
    /// Substrings the rendered explanation must contain.
    #[serde(default)]
    explain: Vec<String>,
}

/// Nodes get ids 1, 2, ... in file order.
struct Names(Vec<String>);

impl Names {
    fn id(&self, name: &str) -> Result<NodeId, String> {
        self.0
            .iter()
            .position(|n| n == name)
            .map(|index| index as NodeId + 1)
            .ok_or_else(|| format!("unknown node name {name:?}"))
    }

    fn name(&self, id: Option<NodeId>) -> String {
        id.and_then(|id| self.0.get(id as usize - 1).cloned())
            .unwrap_or_else(|| "none".into())
    }
}

fn build(scenario: &Scenario) -> Result<(ClusterState, Liveness, Names), String> {
    let names = Names(scenario.nodes.iter().map(|n| n.name.clone()).collect());
    let mut state = ClusterState::empty(ClusterId([7; 16]));
    let mut liveness = Liveness::new(scenario.failover_timeout_ms);
    for (index, def) in scenario.nodes.iter().enumerate() {
        let id = index as NodeId + 1;
        let info = NodeInfo {
            id,
            name: def.name.clone(),
            addr: format!("127.0.0.{id}:7000"),
            site: def.site.clone(),
            role: def.role,
            admin: def.admin,
        };
        state.nodes.insert(id, info);
        let live = NodeLiveness {
            online: def.online,
            holds_lease: def.lease.unwrap_or(def.online),
            offline_for_ms: def.offline_for_ms,
        };
        liveness.nodes.insert(id, live);
    }
    state.next_node_id = names.0.len() as NodeId + 1;
    for def in &scenario.volumes {
        add_volume(&mut state, &names, def)?;
    }
    for def in &scenario.groups {
        add_group(&mut state, &names, def)?;
    }
    Ok((state, liveness, names))
}

fn add_volume(state: &mut ClusterState, names: &Names, def: &VolumeDef) -> Result<(), String> {
    let id = state.next_volume_id;
    state.next_volume_id += 1;
    let mut legs = Vec::new();
    for (index, leg) in def.legs.iter().enumerate() {
        let nodes = leg
            .nodes
            .iter()
            .map(|n| names.id(n))
            .collect::<Result<_, _>>()?;
        legs.push(LegInfo {
            id: index as u32,
            nodes,
            path: format!("/dev/leg{index}"),
            state: leg.state,
            commits: 0,
        });
    }
    let volume = VolumeInfo {
        id,
        name: def.name.clone(),
        size: 1 << 30,
        legs,
        primary: None,
        epoch: 1,
        forced: Vec::new(),
        takeover_outdated: Vec::new(),
        granularity: Default::default(),
    };
    state.volumes.insert(id, volume);
    Ok(())
}

fn add_group(state: &mut ClusterState, names: &Names, def: &GroupDef) -> Result<(), String> {
    let mut spec = GroupSpec::new(&def.name, def.resources.clone());
    spec.preferred = def
        .preferred
        .iter()
        .map(|n| names.id(n))
        .collect::<Result<_, _>>()?;
    spec.failback = def.failback;
    spec.stickiness = def.stickiness;
    spec.enabled = def.enabled;
    let create = StateChange::Group(GroupChange::Create { spec });
    state.apply(&create).map_err(|e| e.to_string())?;
    let on = def.on.as_deref().map(|n| names.id(n)).transpose()?;
    let pinned = def.pinned.as_deref().map(|n| names.id(n)).transpose()?;
    let mut quarantined = BTreeMap::new();
    for (name, until) in &def.quarantined {
        quarantined.insert(names.id(name)?, *until);
    }
    let group = state.groups.get_mut(&def.name).ok_or("group vanished")?;
    group.status.node = on;
    group.status.pinned = pinned;
    group.status.quarantined_until = quarantined;
    Ok(())
}

/// Runs one scenario; `Err` is the diff to print.
fn run(scenario: &Scenario) -> Result<(), String> {
    let (state, liveness, names) = build(scenario)?;
    let decisions = scheduler::schedule(&state, &liveness, scenario.now);
    let again = scheduler::schedule(&state, &liveness, scenario.now);
    if decisions != again {
        return Err("two runs on the same input disagree".into());
    }
    let mut diff = String::new();
    for group in state.groups.keys() {
        if !scenario.expect.contains_key(group) {
            diff += &format!("  group {group}: no [expect.{group}] in the scenario\n");
        }
    }
    for (group, expect) in &scenario.expect {
        let Some(decision) = decisions.iter().find(|d| &d.group == group) else {
            diff += &format!("  group {group}: expected, but the scenario has no such group\n");
            continue;
        };
        diff += &compare(decision, expect, &names);
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(diff)
    }
}

fn compare(decision: &Decision, expect: &Expect, names: &Names) -> String {
    let mut diff = String::new();
    let got = names.name(decision.place_on);
    if got != expect.on {
        diff += &format!(
            "  group {}: placement\n  - expected: {}\n  + got:      {got}\n",
            decision.group, expect.on
        );
    }
    let text = decision.reason.to_string();
    for wanted in &expect.explain {
        if !text.contains(wanted.as_str()) {
            diff += &format!("  group {}: explanation lacks {wanted:?}\n", decision.group);
        }
    }
    if !diff.is_empty() {
        diff += &format!(
            "  explanation was:\n    {}\n",
            text.trim_end().replace('\n', "\n    ")
        );
    }
    diff
}

#[test]
fn scheduler_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scheduler_scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenario directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} scenarios", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let outcome = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| toml::from_str::<Scenario>(&text).map_err(|e| e.to_string()))
            .and_then(|scenario| run(&scenario));
        if let Err(diff) = outcome {
            failures.push(format!("FAILED {name}\n{diff}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn explain_names_an_unknown_group() {
    let state = ClusterState::empty(ClusterId([7; 16]));
    let error = scheduler::explain(&state, &Liveness::new(3000), 0, "nope").unwrap_err();
    assert_eq!(error.to_string(), "no group named \"nope\"");
}

#[test]
fn failover_timeout_must_exceed_lease_plus_margin() {
    let timing = tandem_core::Timing::default();
    let minimum = scheduler::min_failover_timeout_ms(&timing);
    assert!(minimum > timing.lease_timeout_ms);
    assert!(scheduler::check_failover_timeout(minimum, &timing).is_err());
    assert!(scheduler::check_failover_timeout(minimum + 1, &timing).is_ok());
    let default = scheduler::default_failover_timeout_ms(&timing);
    assert!(scheduler::check_failover_timeout(default, &timing).is_ok());
}

/// A random cluster: up to 6 nodes, 3 volumes, 4 groups, random liveness and history.
fn arbitrary_cluster() -> impl Strategy<Value = (ClusterState, Liveness, u64)> {
    let node = (
        0u8..6,
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        0u64..6000,
    );
    let volume = proptest::collection::vec((0u64..8, 0u8..3), 1..4);
    let group = (
        proptest::collection::vec(0usize..3, 0..3),
        proptest::collection::vec(1u64..8, 0..4),
        (any::<bool>(), 0u32..3, any::<bool>()),
        (0u64..8, 0u64..8, 0u64..8),
    );
    (
        proptest::collection::vec(node, 1..7),
        proptest::collection::vec(volume, 1..4),
        proptest::collection::vec(group, 1..5),
        2000u64..4000,
    )
        .prop_map(|(nodes, volumes, groups, failover)| {
            let mut state = ClusterState::empty(ClusterId([7; 16]));
            let mut liveness = Liveness::new(failover);
            for (index, (role, standby, site, online, lease, offline)) in
                nodes.into_iter().enumerate()
            {
                let id = index as NodeId + 1;
                let role = [Role::Witness, Role::Learner][..]
                    .get(role as usize)
                    .copied()
                    .unwrap_or(Role::Voter);
                let site = ["p", "r"].get(site as usize).map(|s| s.to_string());
                let admin = if standby {
                    Admin::Standby
                } else {
                    Admin::Online
                };
                let name = format!("n{id}");
                let addr = String::new();
                let info = NodeInfo {
                    id,
                    name,
                    addr,
                    site,
                    role,
                    admin,
                };
                state.nodes.insert(id, info);
                let offline_for_ms = if online && lease { 0 } else { offline };
                let live = NodeLiveness {
                    online,
                    holds_lease: lease,
                    offline_for_ms,
                };
                liveness.nodes.insert(id, live);
            }
            for (index, legs) in volumes.into_iter().enumerate() {
                random_volume(&mut state, index, legs);
            }
            for (index, group) in groups.into_iter().enumerate() {
                random_group(&mut state, index, group);
            }
            (state, liveness, 1000)
        })
}

fn random_volume(state: &mut ClusterState, index: usize, legs: Vec<(u64, u8)>) {
    let states = [
        LegState::UpToDate,
        LegState::Outdated,
        LegState::Inconsistent,
    ];
    let mut seen = Vec::new();
    let legs = legs
        .into_iter()
        .enumerate()
        .map(|(leg, (node, s))| {
            // Legs may name any node id, even unknown ones; a node reaches one leg at most.
            let nodes: Vec<NodeId> = [node, node + 1]
                .into_iter()
                .filter(|n| !seen.contains(n))
                .collect();
            seen.extend(&nodes);
            LegInfo {
                id: leg as u32,
                nodes,
                path: "/dev/x".into(),
                state: states[s as usize % 3],
                commits: 0,
            }
        })
        .collect();
    let id = index as u64 + 1;
    let volume = VolumeInfo {
        id,
        name: format!("v{index}"),
        size: 4096,
        legs,
        primary: None,
        epoch: 1,
        forced: Vec::new(),
        takeover_outdated: Vec::new(),
        granularity: Default::default(),
    };
    state.volumes.insert(id, volume);
}

type GroupShape = (Vec<usize>, Vec<u64>, (bool, u32, bool), (u64, u64, u64));

fn random_group(state: &mut ClusterState, index: usize, shape: GroupShape) {
    let (volumes, preferred, (auto, stickiness, enabled), (on, pin, quarantine)) = shape;
    let mut resources: Vec<ResourceSpec> = Vec::new();
    for v in volumes {
        let resource = ResourceSpec::Volume {
            volume: format!("v{v}"),
            monitor: Default::default(),
        };
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    let mut spec = GroupSpec::new(&format!("g{index}"), resources);
    let mut unique = preferred;
    unique.dedup();
    spec.preferred = unique;
    spec.failback = if auto {
        Failback::Auto
    } else {
        Failback::Manual
    };
    spec.stickiness = stickiness;
    spec.enabled = enabled;
    let mut group = Group {
        spec,
        status: Default::default(),
    };
    // 0 means "none"; ids past the members name nodes that were removed.
    group.status.node = (on > 0).then_some(on);
    group.status.pinned = (pin > 0).then_some(pin);
    if quarantine > 0 {
        group.status.quarantined_until.insert(quarantine, 1500);
    }
    state.groups.insert(group.spec.name.clone(), group);
}

/// The eligibility rule restated without the scheduler's code, as a second oracle.
fn independently_eligible(
    state: &ClusterState,
    liveness: &Liveness,
    now: u64,
    group: &Group,
    node: NodeId,
) -> bool {
    let Some(info) = state.nodes.get(&node) else {
        return false;
    };
    let live = liveness.of(node);
    let quarantined = group
        .status
        .quarantined_until
        .get(&node)
        .is_some_and(|&until| until > now);
    let legs_ok = group.spec.volumes().iter().all(|name| {
        state.volume_by_name(name).is_some_and(|volume| {
            volume
                .legs
                .iter()
                .any(|leg| leg.nodes.contains(&node) && leg.state == LegState::UpToDate)
        })
    });
    info.role != Role::Witness
        && info.admin == Admin::Online
        && live.online
        && live.holds_lease
        && !quarantined
        && legs_ok
}

proptest! {
    #[test]
    fn never_places_on_an_ineligible_node_and_is_deterministic(
        (state, liveness, now) in arbitrary_cluster()
    ) {
        let decisions = scheduler::schedule(&state, &liveness, now);
        prop_assert_eq!(&decisions, &scheduler::schedule(&state, &liveness, now));
        prop_assert_eq!(decisions.len(), state.groups.len());
        for decision in &decisions {
            let group = &state.groups[&decision.group];
            let Some(node) = decision.place_on else { continue };
            let eligible = scheduler::eligibility(&state, &liveness, now, group, node).is_ok();
            // The one exception: a gone node keeps its group until the failover timeout.
            let waiting = decision.current == Some(node)
                && state.nodes.contains_key(&node)
                && liveness.is_gone(node)
                && liveness.of(node).offline_for_ms < liveness.failover_timeout_ms;
            prop_assert!(eligible || waiting, "{}", decision.reason);
            if !waiting {
                prop_assert!(independently_eligible(&state, &liveness, now, group, node));
            }
            if waiting {
                prop_assert!(!decision.changes_placement());
            }
            prop_assert!(group.spec.enabled || waiting);
        }
        for decision in &decisions {
            let explained = scheduler::explain(&state, &liveness, now, &decision.group);
            prop_assert_eq!(explained.as_ref(), Ok(&decision.reason));
        }
    }
}

#[test]
fn group_changes_apply_through_the_state() {
    let text = include_str!("scheduler_scenarios/01_active_standby_failover.toml");
    let scenario: Scenario = toml::from_str(text).expect("scenario parses");
    let (mut state, _, _) = build(&scenario).expect("scenario builds");
    let apply = |state: &mut ClusterState, change: GroupChange| {
        state
            .apply(&StateChange::Group(change))
            .map_err(|e| e.to_string())
    };
    let placed = |node, epoch| GroupChange::Placed {
        group: "db".into(),
        node,
        epoch,
    };
    assert!(apply(&mut state, placed(Some(2), 0)).is_ok());
    let stale = apply(&mut state, placed(Some(1), 0)).unwrap_err();
    assert!(
        stale.contains("decided at epoch 0, the group is at epoch 1"),
        "{stale}"
    );
    let witness = apply(
        &mut state,
        GroupChange::Move {
            group: "db".into(),
            to: 3,
        },
    )
    .unwrap_err();
    assert!(witness.contains("a witness"), "{witness}");
    assert!(apply(
        &mut state,
        GroupChange::Move {
            group: "db".into(),
            to: 1
        }
    )
    .is_ok());
    assert_eq!(state.groups["db"].status.pinned, Some(1));
    let busy = apply(&mut state, GroupChange::Delete { group: "db".into() }).unwrap_err();
    assert!(busy.contains("still runs on node 2"), "{busy}");
    let volume = state.volume_by_name("db").map(|v| v.id).unwrap_or(0);
    let delete = StateChange::Volume(tandem_core::volume::VolumeChange::Delete { volume });
    let in_use = state.apply(&delete).unwrap_err().to_string();
    assert!(in_use.contains("used by group db"), "{in_use}");
    for at in [10, 20, 30, 40] {
        let failure = GroupChange::RecordFailure {
            group: "db".into(),
            node: 2,
            at_unix: at,
        };
        apply(&mut state, failure).expect("failure recorded");
    }
    assert!(state.groups["db"].status.quarantine_of(2, 40).is_some());
    assert!(apply(&mut state, GroupChange::Clear { group: "db".into() }).is_ok());
    let status = &state.groups["db"].status;
    assert_eq!((status.pinned, status.quarantined_until.len()), (None, 0));
    assert!(apply(&mut state, placed(None, 1)).is_ok());
    assert!(apply(&mut state, GroupChange::Delete { group: "db".into() }).is_ok());
    let missing = group::check_against(
        &state,
        &GroupSpec::new(
            "x",
            vec![ResourceSpec::Volume {
                volume: "nope".into(),
                monitor: Default::default(),
            }],
        ),
    );
    assert!(missing.is_err_and(|e| e.to_string().contains("needs volume nope")));
}
