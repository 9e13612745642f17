//! The real cluster a scenario runs on, and its effects carried out for real: the layout's
//! volumes and groups on daemons in network namespaces ([`Rig`]), and `kill -9`, power cuts,
//! link cuts, iptables drops, SIGSTOP/SIGCONT and `tandem` commands.
//!
//! Exists to keep the mapping from a scenario's effects to real actions in one place, with
//! what each really did (or why it could not) as the step's outcome, and to know at every
//! moment which daemons are down or frozen (the observer does not ask them).
//!
//! The layout, as the simulator builds it (`sim/src/layout.rs`): every group is a volume
//! (when it has one), a virtual IP (a spare lab address) and a service (`sleep`, started by
//! the daemon, which is all a service needs to be to show where it runs); legs are files
//! below the rig's directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_harness::scenario::{CutKind, Layout, OperatorCommand};

use super::judge::CommandState;
use super::observe::{run_within, service_pid, GroupDef, NodeDef, Target};
use crate::failover_kit::{alive, Rig};
use crate::{run_program, tandem_bin};

/// Each volume's size; small, so that the initial sync and resyncs are quick.
pub const VOLUME_MIB: u64 = 16;
/// How long an operator command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// A network fault in effect.
struct NetFault {
    kind: CutKind,
    links: Vec<(String, String)>,
}

/// The cluster of one scenario run.
pub struct Cluster {
    pub rig: Rig,
    pub target: Target,
    pub layout: Layout,
    /// Nodes whose daemon is down or frozen: the observer does not ask them.
    pub quiet: Arc<Mutex<BTreeSet<String>>>,
    /// Nodes whose daemon was killed or powered off and not started again.
    pub down: BTreeSet<String>,
    /// Frozen daemons: node, PID.
    pub paused: BTreeMap<String, i32>,
    faults: BTreeMap<usize, NetFault>,
}

impl Cluster {
    /// Forms the cluster of `nodes` and `witnesses` in lab `tag` and creates the layout's
    /// volumes and groups (not waiting for them to run).
    pub fn form(tag: &str, layout: Layout, nodes: &[String], witnesses: &[String]) -> Cluster {
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let wits: Vec<&str> = witnesses.iter().map(String::as_str).collect();
        let rig = Rig::form_with(tag, &names, &wits);
        let groups = group_defs(&rig, layout);
        let target = Target {
            data: (nodes.iter())
                .map(|name| NodeDef {
                    name: name.clone(),
                    dir: rig.dir(name).to_path_buf(),
                    netns: rig.cluster.lab.netns(name).to_string(),
                    netns_label: rig.netns_label(name),
                })
                .collect(),
            all: (rig.names().into_iter())
                .map(|name| {
                    let dir = rig.dir(&name).to_path_buf();
                    (name, dir)
                })
                .collect(),
            groups,
        };
        let cluster = Cluster {
            rig,
            target,
            layout,
            quiet: Arc::default(),
            down: BTreeSet::new(),
            paused: BTreeMap::new(),
            faults: BTreeMap::new(),
        };
        cluster.create_layout(&names);
        cluster
    }

    /// The data nodes a volume's legs are on, in layout order.
    pub fn leg_nodes(&self, names: &[&str]) -> Vec<String> {
        let count = match self.layout {
            Layout::ThreeLegs => 3,
            _ => 2,
        };
        names.iter().take(count).map(|n| n.to_string()).collect()
    }

    /// The file of `node`'s leg of `volume`.
    pub fn leg_file(&self, volume: &str, node: &str) -> PathBuf {
        self.rig.root().join(format!("{volume}-leg-{node}.img"))
    }

    fn create_layout(&self, names: &[&str]) {
        let first = names[0];
        for volume in self.layout.volumes() {
            let legs: Vec<String> = (self.leg_nodes(names).iter())
                .map(|node| format!("{node}:{}", self.leg_file(volume, node).display()))
                .collect();
            let size = format!("{VOLUME_MIB}M");
            let mut args = vec!["volume", "create", volume, "--size", &size];
            for leg in &legs {
                args.extend(["--leg", leg]);
            }
            self.rig.ok(first, &args);
        }
        let sleep = "sleep 1000000".to_string();
        for (group, (prefer, failback)) in self
            .target
            .groups
            .iter()
            .zip(preferences(self.layout, names))
        {
            let ip = format!("{}/24", group.vip);
            let prefer = prefer.join(",");
            let mut args = vec!["group", "create", &group.name, "--prefer", &prefer];
            args.extend(["--failback", failback]);
            for volume in &group.volumes {
                args.extend(["--volume", volume]);
            }
            args.extend(["--ip", &ip, "--exec", &sleep]);
            self.rig.ok(first, &args);
        }
    }

    /// The export socket of `volume` on every data node.
    pub fn sockets(&self, volume: &str) -> Vec<(String, PathBuf)> {
        (self.target.data.iter())
            .map(|n| (n.name.clone(), n.dir.join(format!("nbd-{volume}.sock"))))
            .collect()
    }

    fn set_quiet(&self, node: &str, quiet: bool) {
        let mut set = self.quiet.lock().expect("quiet nodes");
        if quiet {
            set.insert(node.to_string());
        } else {
            set.remove(node);
        }
    }

    /// `kill -9` of `node`'s daemon; its services die with it (PDEATHSIG), its watchdog
    /// removes its virtual IPs.
    pub fn kill(&mut self, node: &str) -> String {
        self.set_quiet(node, true);
        let pid = self.rig.cluster.pid(node);
        self.rig.kill_daemons(&[node]);
        self.down.insert(node.to_string());
        format!(
            "kill -9 of the daemon (pid {})",
            pid.map_or("-".into(), |p| p.to_string())
        )
    }

    /// A power cut, as far as a real host can do one: `kill -9` of the daemon and of every
    /// service it started, its mounts and loop devices released, its virtual IPs removed.
    /// The page cache survives (the simulator covers lost caches).
    pub fn power_off(&mut self, node: &str) -> String {
        let services: Vec<i32> = match self.target.data.iter().find(|n| n.name == node) {
            Some(def) => (self.target.groups.iter())
                .filter_map(|g| service_pid(def, &g.name, g.service))
                .collect(),
            None => Vec::new(),
        };
        self.kill(node);
        for pid in &services {
            if alive(*pid) {
                // SAFETY: kill(2) on a service the node's daemon started (found by its pid
                // file and checked to live in the node's namespace just before).
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
        tandem_linux::host_cleanup::release_below(self.rig.dir(node));
        // A rebooted machine comes back without its virtual IPs (its watchdog, dying with
        // it, may or may not have removed them first).
        let netns = self.rig.cluster.lab.netns(node).to_string();
        for group in &self.target.groups {
            let cidr = format!("{}/24", group.vip);
            let _ = run_program("ip", &["-n", &netns, "addr", "del", &cidr, "dev", "eth0"]);
        }
        format!(
            "kill -9 of the daemon and of {} service(s), its virtual IPs removed; the page \
             cache survives (a real host cannot drop only it; the simulator covers lost caches)",
            services.len()
        )
    }

    /// Starts `node`'s daemon again (after a kill or a power cut).
    pub fn start(&mut self, node: &str) -> String {
        self.rig.cluster.start(node);
        self.down.remove(node);
        self.set_quiet(node, false);
        format!(
            "daemon started (pid {})",
            self.rig.cluster.pid(node).unwrap_or(0)
        )
    }

    /// SIGSTOP of `node`'s daemon (its services and watchdog keep running).
    pub fn pause(&mut self, node: &str) -> String {
        let Some(pid) = self
            .rig
            .cluster
            .pid(node)
            .and_then(|p| i32::try_from(p).ok())
        else {
            return "no daemon to freeze".into();
        };
        self.set_quiet(node, true);
        // SAFETY: kill(2) on the PID of a daemon this rig started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        self.paused.insert(node.to_string(), pid);
        format!("SIGSTOP to the daemon (pid {pid})")
    }

    /// SIGCONT of `node`'s frozen daemon.
    pub fn resume(&mut self, node: &str) -> String {
        let Some(pid) = self.paused.remove(node) else {
            return "not frozen".into();
        };
        // SAFETY: kill(2) on the PID of a daemon this rig started and froze.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        self.set_quiet(node, false);
        if alive(pid) {
            format!("SIGCONT to the daemon (pid {pid})")
        } else {
            self.down.insert(node.to_string());
            self.set_quiet(node, true);
            format!("SIGCONT, but the daemon (pid {pid}) is gone (its watchdog fenced it)")
        }
    }

    /// Drops the frames of `links` until [`Cluster::end_fault`]: iptables in the receiver's
    /// namespace (all packets from the sender; for a one-way cut, only the packets of
    /// connections the sender opened, which is all a tandem node sends to a peer). The rules
    /// go in one namespace after the other, so a cut takes some tens of ms to complete;
    /// [`minority_first`] orders them so that this is no one-way cut in between.
    pub fn cut(&mut self, fault: usize, kind: CutKind, links: &[(String, String)]) -> String {
        self.faults.insert(
            fault,
            NetFault {
                kind,
                links: links.to_vec(),
            },
        );
        for (from, to) in minority_first(links) {
            self.drop_link(kind, &from, &to);
        }
        let how = match kind {
            CutKind::OneWay => "iptables drops (connections opened by the sender)",
            _ => "iptables drops (all packets)",
        };
        format!("{how} on {} directed link(s)", links.len())
    }

    fn drop_link(&self, kind: CutKind, from: &str, to: &str) {
        let lab = &self.rig.cluster.lab;
        let done = match kind {
            CutKind::OneWay => lab.drop_connections_from(to, from),
            _ => lab.drop_inbound_from(to, from),
        };
        done.unwrap_or_else(|error| panic!("iptables in {to}: {error}"));
    }

    /// Ends network fault `fault`: the rules of the receivers it touched are flushed and
    /// those of the faults still in effect put back.
    pub fn end_fault(&mut self, fault: usize) -> String {
        let Some(ended) = self.faults.remove(&fault) else {
            return "not a network fault in effect (nothing to undo)".into();
        };
        let hosts: BTreeSet<&String> = ended.links.iter().map(|(_, to)| to).collect();
        let lab = &self.rig.cluster.lab;
        for host in &hosts {
            lab.clear_drops(host)
                .unwrap_or_else(|error| panic!("iptables in {host}: {error}"));
        }
        for still in self.faults.values() {
            for (from, to) in still.links.iter().filter(|(_, to)| hosts.contains(to)) {
                self.drop_link(still.kind, from, to);
            }
        }
        format!("iptables rules of {} host(s) removed", hosts.len())
    }

    /// The final heal: every daemon running again, nothing frozen, every link up and no drop
    /// rule left.
    pub fn heal_everything(&mut self) -> String {
        let paused: Vec<String> = self.paused.keys().cloned().collect();
        for node in paused {
            self.resume(&node);
        }
        self.faults.clear();
        self.rig
            .cluster
            .lab
            .heal_all()
            .unwrap_or_else(|error| panic!("heal the lab: {error}"));
        let down: Vec<String> = self.down.iter().cloned().collect();
        for node in &down {
            self.start(node);
        }
        format!(
            "links and drop rules healed; started again: {}",
            list(&down)
        )
    }

    /// `tandem COMMAND` on `on` (default: the leader): the node it ran on and its outcome.
    pub fn operator(&self, command: &OperatorCommand, on: Option<&str>) -> (String, CommandState) {
        let node = match on {
            Some(node) => node.to_string(),
            None => self.leader().unwrap_or_else(|| self.rig.names()[0].clone()),
        };
        let line = command.to_string();
        let dir = self.rig.dir(&node).display().to_string();
        let mut args: Vec<&str> = line.split_whitespace().collect();
        args.extend(["--state-dir", &dir]);
        let bin = tandem_bin().display().to_string();
        let result = match run_within(&bin, &args, COMMAND_LIMIT) {
            None => CommandState::Pending,
            Some(output) => {
                let text = crate::text(&output).trim().to_string();
                if output.status.success() {
                    CommandState::Done(text)
                } else {
                    CommandState::Refused(text)
                }
            }
        };
        (node, result)
    }

    /// The leader's name as the first answering node sees it.
    pub fn leader(&self) -> Option<String> {
        let quiet = self.quiet.lock().expect("quiet nodes").clone();
        self.rig
            .names()
            .iter()
            .filter(|n| !quiet.contains(*n))
            .find_map(|via| {
                let status = self.rig.cluster.status(via)?;
                let id = status["leader"].as_u64()?;
                let node = (status["nodes"].as_array()?.iter()).find(|n| n["id"] == id)?;
                node["name"].as_str().map(str::to_string)
            })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Frozen daemons run again and every drop rule goes before the rig (dropped next)
        // kills the daemons by PID and removes the lab.
        for pid in self.paused.values() {
            // SAFETY: kill(2) on the PID of a daemon this rig started and froze.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
        let _ = self.rig.cluster.lab.heal_all();
    }
}

/// `links` ordered by receiver, the receiver that stops hearing the most nodes first: in
/// `a | b w`, `a` hears nobody before `b` and `w` stop hearing `a`. Done the other way round,
/// `a` would for a moment be heard by nobody while it still reached a quorum through `w`, and
/// could rightly commit `b`'s leg Outdated (a write to `b` unanswered), after which `b` may not
/// take over until `a` is back: a one-way cut the scenario did not ask for.
fn minority_first(links: &[(String, String)]) -> Vec<(String, String)> {
    let mut senders: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, to) in links {
        *senders.entry(to).or_default() += 1;
    }
    let mut ordered = links.to_vec();
    ordered
        .sort_by_key(|(_, to)| std::cmp::Reverse(senders.get(to.as_str()).copied().unwrap_or(0)));
    ordered
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The layout's groups: the lab's spare addresses as their virtual IPs.
fn group_defs(rig: &Rig, layout: Layout) -> Vec<GroupDef> {
    let volumes: &[&[&str]] = match layout {
        Layout::ActiveStandby => &[&["v1"]],
        Layout::ActiveActive => &[&["v1"], &["v2"]],
        Layout::ThreeLegs => &[&["v1"], &[]],
    };
    (layout.groups().iter().zip(volumes).enumerate())
        .map(|(k, (name, volumes))| GroupDef {
            name: name.to_string(),
            vip: rig.cluster.lab.spare_address(k as u8),
            service: volumes.len() + 1,
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
        })
        .collect()
}

/// Each group's preferred nodes and failback, as the simulator's layout has them.
fn preferences(layout: Layout, names: &[&str]) -> Vec<(Vec<String>, &'static str)> {
    let nodes = |indexes: &[usize]| indexes.iter().map(|&i| names[i].to_string()).collect();
    match layout {
        Layout::ActiveStandby => vec![(nodes(&[0, 1]), "manual")],
        Layout::ActiveActive => vec![(nodes(&[0, 1]), "auto"), (nodes(&[1, 0]), "auto")],
        Layout::ThreeLegs => vec![(nodes(&[0, 1]), "manual"), (nodes(&[2]), "auto")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_that_hears_nobody_is_cut_off_first() {
        let link = |a: &str, b: &str| (a.to_string(), b.to_string());
        let links = vec![
            link("a", "b"),
            link("a", "w"),
            link("b", "a"),
            link("w", "a"),
        ];
        let ordered = minority_first(&links);
        assert_eq!(ordered[..2], [link("b", "a"), link("w", "a")]);
        assert_eq!(ordered.len(), 4);
    }
}
