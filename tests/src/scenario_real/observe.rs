//! What the real runner looks at: where each group runs and what each volume's legs are, at
//! one instant, as the judge of a scenario's expectations needs it (the real counterpart of
//! the simulator's `script::Sample`).
//!
//! Exists because a real cluster has no global clock to read its state at: every observation
//! is a process (`ip addr`, a pid file, `tandem volume list`) that takes a few milliseconds,
//! so an instant is approximated by a short sequence. The committed primaries and leg states
//! are read first, from every node that can answer, keeping each volume's view with the
//! highest epoch (the freshest committed state). Then the data nodes are observed in a
//! palindrome (`a b c b a`): a node seen running a group both before and after another node
//! was seen running it held it throughout, so two nodes running a group at once is reported
//! only when it surely happened (a switchover between two observations is not an overlap).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::failover_kit::{alive, Rig};
use crate::{run_program, tandem_bin};

/// How long one `tandem` call of an observation may take (a frozen daemon never answers).
const CLI_LIMIT: Duration = Duration::from_secs(2);

/// One group of the layout, as it is observed.
#[derive(Clone, Debug)]
pub struct GroupDef {
    pub name: String,
    pub vip: Ipv4Addr,
    /// The index of its service among its resources (its pid file is `run/<group>-<i>.pid`).
    pub service: usize,
    pub volumes: Vec<String>,
}

/// A data node, as it is observed.
#[derive(Clone, Debug)]
pub struct NodeDef {
    pub name: String,
    pub dir: PathBuf,
    pub netns: String,
    /// `net:[INODE]` of its namespace: a service runs on the node when its process is there.
    pub netns_label: String,
}

/// Everything an observation needs to know about the cluster.
#[derive(Clone, Debug)]
pub struct Target {
    pub data: Vec<NodeDef>,
    /// Every node (witnesses too) and its state dir, to ask for the committed state.
    pub all: Vec<(String, PathBuf)>,
    pub groups: Vec<GroupDef>,
}

/// Where one group is, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupAt {
    /// Nodes running its IP and its service (in every observation of the node).
    pub full: Vec<String>,
    /// Nodes running either (in any observation of the node).
    pub any: Vec<String>,
    /// The committed primary of each of its volumes (`None`: none, or nobody answered).
    pub primaries: Vec<Option<String>>,
    /// Two nodes that surely ran it at once (see the module documentation).
    pub overlap: Option<(String, String)>,
}

impl GroupAt {
    /// The group runs on `node`, entirely, and nowhere else (as the simulator's sample).
    pub fn runs_only_on(&self, node: &str) -> bool {
        self.full == [node]
            && self.any == [node]
            && self.primaries.iter().all(|p| p.as_deref() == Some(node))
    }
}

/// One leg, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegAt {
    pub nodes: Vec<String>,
    pub state: String,
}

/// One observation of a data node (by its index): per group, (its IP there, its service there).
type Seen = (usize, BTreeMap<String, (bool, bool)>);

/// One instant of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Scenario time at which the observation began.
    pub at_ms: u64,
    /// Scenario time at which it ended: the state it shows held at some time in between, so
    /// a window holds the sample only when it holds both.
    pub end_ms: u64,
    pub groups: BTreeMap<String, GroupAt>,
    pub legs: BTreeMap<String, Vec<LegAt>>,
}

/// Observes the cluster now (`t0`: the scenario's t = 0); `quiet` are nodes not to ask (down
/// or frozen).
pub fn sample(target: &Target, quiet: &BTreeSet<String>, t0: Instant) -> Sample {
    let at_ms = t0.elapsed().as_millis() as u64;
    let volumes = committed_volumes(target, quiet);
    let order = palindrome(target.data.len());
    let seen: Vec<Seen> = order
        .iter()
        .map(|&i| (i, observe_node(&target.data[i], &target.groups)))
        .collect();
    let mut groups = BTreeMap::new();
    for group in &target.groups {
        let mut at = group_at(target, &seen, &group.name);
        at.primaries = (group.volumes.iter())
            .map(|v| {
                volumes
                    .get(v)
                    .and_then(|v| v["primary"].as_str().map(str::to_string))
            })
            .collect();
        groups.insert(group.name.clone(), at);
    }
    let legs = volumes
        .iter()
        .map(|(name, volume)| (name.clone(), legs_of(volume)))
        .collect();
    Sample {
        at_ms,
        end_ms: t0.elapsed().as_millis() as u64,
        groups,
        legs,
    }
}

/// `0 1 .. n-1 .. 1 0`.
fn palindrome(n: usize) -> Vec<usize> {
    (0..n).chain((0..n.saturating_sub(1)).rev()).collect()
}

/// Folds the observations of the nodes into where `group` runs.
fn group_at(target: &Target, seen: &[Seen], group: &str) -> GroupAt {
    let mut at = GroupAt::default();
    // Per node: (seen running anything in every observation, in some, fully in every one).
    let mut per: BTreeMap<usize, (bool, bool, bool)> = BTreeMap::new();
    for (i, observed) in seen {
        let (ip, service) = observed.get(group).copied().unwrap_or_default();
        let entry = per.entry(*i).or_insert((true, false, true));
        entry.0 &= ip || service;
        entry.1 |= ip || service;
        entry.2 &= ip && service;
    }
    for (&i, &(always, some, full)) in &per {
        let name = &target.data[i].name;
        if some {
            at.any.push(name.clone());
        }
        if full {
            at.full.push(name.clone());
        }
        // Observed twice (all but the middle node of the palindrome) and running both times:
        // it ran throughout every later node's observation.
        let twice = i + 1 < target.data.len();
        if always && twice && at.overlap.is_none() {
            let other = (per.iter())
                .find(|(&j, &(_, some_j, _))| j > i && some_j)
                .map(|(&j, _)| target.data[j].name.clone());
            at.overlap = other.map(|other| (name.clone(), other));
        }
    }
    at
}

/// For every group: whether its virtual IP is on `node` and whether its service runs there.
fn observe_node(node: &NodeDef, groups: &[GroupDef]) -> BTreeMap<String, (bool, bool)> {
    let output = run_program("ip", &["-n", &node.netns, "-4", "-o", "addr", "show"]);
    let addresses = String::from_utf8_lossy(&output.stdout).to_string();
    groups
        .iter()
        .map(|group| {
            let ip = addresses.contains(&format!(" {}/", group.vip));
            let service = service_pid(node, &group.name, group.service).is_some();
            (group.name.clone(), (ip, service))
        })
        .collect()
}

/// The PID of the service of `group` on `node`, if it runs there (its pid file names a live
/// process in the node's namespace).
pub fn service_pid(node: &NodeDef, group: &str, index: usize) -> Option<i32> {
    let file = node.dir.join("run").join(format!("{group}-{index}.pid"));
    let text = std::fs::read_to_string(file).ok()?;
    let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
    let here = Rig::netns_of(pid).is_some_and(|label| label == node.netns_label);
    (alive(pid) && here).then_some(pid)
}

/// Each volume's report with the highest epoch among the nodes that answer.
fn committed_volumes(target: &Target, quiet: &BTreeSet<String>) -> BTreeMap<String, Value> {
    let mut freshest: BTreeMap<String, Value> = BTreeMap::new();
    for (name, dir) in &target.all {
        if quiet.contains(name) {
            continue;
        }
        let mut args = vec!["volume", "list", "--json", "--state-dir"];
        let dir = dir.display().to_string();
        args.push(&dir);
        let Some(output) = run_within(&tandem_bin().display().to_string(), &args, CLI_LIMIT) else {
            continue;
        };
        let Ok(reply) = serde_json::from_slice::<Value>(&output.stdout) else {
            continue;
        };
        for volume in reply["volumes"].as_array().into_iter().flatten() {
            let Some(name) = volume["name"].as_str() else {
                continue;
            };
            let newer = freshest
                .get(name)
                .is_none_or(|known| volume["epoch"].as_u64() > known["epoch"].as_u64());
            if newer {
                freshest.insert(name.to_string(), volume.clone());
            }
        }
    }
    freshest
}

fn legs_of(volume: &Value) -> Vec<LegAt> {
    (volume["legs"].as_array().into_iter().flatten())
        .map(|leg| LegAt {
            nodes: (leg["nodes"].as_array().into_iter().flatten())
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect(),
            state: leg["state"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// Runs `program` with a time limit (killed by PID and reaped when it runs over); its output
/// if it finished. For small outputs only (the pipes are read after it exits).
pub fn run_within(program: &str, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    Some(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(names: &[&str]) -> Target {
        Target {
            data: (names.iter())
                .map(|n| NodeDef {
                    name: n.to_string(),
                    dir: PathBuf::new(),
                    netns: String::new(),
                    netns_label: String::new(),
                })
                .collect(),
            all: Vec::new(),
            groups: Vec::new(),
        }
    }

    fn seen(list: &[(usize, bool, bool)]) -> Vec<Seen> {
        (list.iter())
            .map(|&(i, ip, service)| (i, BTreeMap::from([("g".to_string(), (ip, service))])))
            .collect()
    }

    #[test]
    fn a_node_seen_running_before_and_after_another_is_an_overlap() {
        let target = target(&["a", "b"]);
        let at = group_at(
            &target,
            &seen(&[(0, true, true), (1, true, false), (0, true, true)]),
            "g",
        );
        assert_eq!(at.overlap, Some(("a".into(), "b".into())));
        assert_eq!(at.full, ["a"]);
        assert_eq!(at.any, ["a", "b"]);
    }

    #[test]
    fn a_switchover_between_two_observations_is_no_overlap() {
        let target = target(&["a", "b"]);
        // a stopped after its first observation, b started before its own.
        let at = group_at(
            &target,
            &seen(&[(0, true, true), (1, true, true), (0, false, false)]),
            "g",
        );
        assert_eq!(at.overlap, None);
        assert_eq!(at.full, ["b"]);
        assert_eq!(at.any, ["a", "b"]);
        assert!(!at.runs_only_on("b"));
        assert_eq!(palindrome(3), [0, 1, 2, 1, 0]);
    }
}
