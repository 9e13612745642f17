//! A network "lab": several hosts on one machine, each in its own network namespace, joined by
//! a bridge, with faults on demand (links cut, packets dropped one way). `tandem demo` and the
//! tier-4 end-to-end tests build clusters in it (DESIGN.md §6).
//!
//! Shape of a lab with tag `T` and hosts `a`, `b`:
//!
//! ```text
//!   netns tdmT-a            netns tdmT-sw              netns tdmT-b
//!   eth0 10.X.Y.1/24 ==veth== p0-a ─ br0 ─ p1-b ==veth== eth0 10.X.Y.2/24
//! ```
//!
//! - Nothing is created in the root namespace: every interface lives in a lab namespace, and
//!   deleting the namespaces deletes the veths and the bridge with them.
//! - Host `i` (in the order given) has address `10.X.Y.(i+1)/24`; `.101` and up are spare
//!   (`spare_address`, for virtual IPs). `X` is 100..=199 and `Y` 1..=254, derived from the tag,
//!   the process id and a per-process serial; a per-process registry guarantees that labs of
//!   one process never share a subnet. Labs never share a bridge, so even two labs in different
//!   processes with the same subnet would not see each other: the subnet is distinct for
//!   readability (logs, status output), not for isolation.
//! - Namespace names are `tdm<tag>-<host>` and `tdm<tag>-sw`, so two labs alive at the same
//!   time need different tags. A leftover `tdm<tag>-*` namespace (a crashed earlier run) is
//!   deleted by [`Lab::create`], with a note on stderr.
//! - Faults: [`Lab::cut`] / [`Lab::heal`] take the host's link down / up (a full partition of
//!   that host); [`Lab::drop_inbound_from`], [`Lab::drop_connections_from`] and [`Lab::split`]
//!   add iptables rules in a host's namespace; [`Lab::clear_drops`] removes them. `iptables` is
//!   whichever flavour the box has (`iptables-nft` on current Debian); `iptables-legacy` is
//!   tried when it fails. Rules live in the host's namespace and vanish with it.
//! - Programs run inside a host with [`Lab::command`] (a child process) or [`Lab::in_netns`] (a
//!   closure on a thread of this process, e.g. for TCP probes).
//!
//! Dropping a lab (or [`Lab::destroy`]) deletes its namespaces. It never kills processes: the
//! caller owns them and must stop them by PID. A process still running inside a deleted
//! namespace keeps running, in an unnamed namespace whose link to the switch is gone.
//!
//! Everything here shells out to `ip` (iproute2) and `iptables`, and needs root.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The interface name of every host's link, inside its namespace.
const HOST_LINK: &str = "eth0";
/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";
/// The most hosts a lab holds (addresses `.1` ..= `.100`).
const MAX_HOSTS: usize = 100;
/// The first spare address (`spare_address(0)`).
const FIRST_SPARE: u8 = 101;
/// The last usable spare address (`.255` is the broadcast address).
const LAST_SPARE: u8 = 254;
/// The longest tag and host name (namespace and interface names stay short).
const MAX_NAME: usize = 10;

/// What went wrong building, breaking or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the network lab needs root: it creates network namespaces, veth pairs and a bridge \
         (CAP_SYS_ADMIN and CAP_NET_ADMIN); run it as root, e.g. with sudo (this process runs \
         as uid {uid})"
    )]
    NotRoot { uid: u32 },
    #[error("cannot run `{program}` (is {package} installed?): {source}")]
    Missing {
        program: String,
        package: &'static str,
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("invalid lab: {0}")]
    Invalid(String),
    #[error("the lab has no host named {0:?}")]
    UnknownHost(String),
    #[error("cannot enter network namespace {netns}: {source}")]
    Enter { netns: String, source: io::Error },
}

/// One host of a lab.
#[derive(Debug, Clone)]
struct Host {
    name: String,
    netns: String,
    address: Ipv4Addr,
    /// The switch-side end of the host's veth pair (inside the switch namespace).
    port: String,
}

/// A set of network namespaces joined by a bridge; deleted on drop.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    hosts: Vec<Host>,
    switch: String,
    subnet: Ipv4Addr,
    /// Namespaces this lab created, in creation order.
    created: Vec<String>,
    /// The iptables flavour that works here, found on first use.
    iptables: OnceLock<&'static str>,
}

/// Subnets `(X, Y)` of the labs alive in this process.
static SUBNETS: Mutex<Option<HashSet<(u8, u8)>>> = Mutex::new(None);
static SERIAL: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds namespaces `tdm<tag>-<host>` for `hosts` and a switch `tdm<tag>-sw`, each host
    /// linked to the switch's bridge, `lo` up everywhere. Removes leftovers of an earlier run
    /// with the same tag first. On any failure, what was made is removed again.
    pub fn create(tag: &str, hosts: &[&str]) -> Result<Lab, LabError> {
        require_root()?;
        validate(tag, hosts)?;
        remove_leftovers(tag)?;
        let (x, y) = claim_subnet(tag);
        let subnet = Ipv4Addr::new(10, x, y, 0);
        let hosts = hosts
            .iter()
            .enumerate()
            .map(|(index, name)| Host {
                name: name.to_string(),
                netns: format!("tdm{tag}-{name}"),
                address: Ipv4Addr::new(10, x, y, (index + 1) as u8),
                port: format!("p{index}-{name}"),
            })
            .collect();
        let mut lab = Lab {
            tag: tag.to_string(),
            hosts,
            switch: format!("tdm{tag}-sw"),
            subnet,
            created: Vec::new(),
            iptables: OnceLock::new(),
        };
        // On error, `lab` is dropped here, which deletes what was made.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let switch = self.switch.clone();
        self.add_netns(&switch)?;
        ip(&["-n", &switch, "link", "add", BRIDGE, "type", "bridge"])?;
        // No STP and no forwarding delay: a port forwards as soon as its link is up.
        ip(&[
            "-n",
            &switch,
            "link",
            "set",
            "dev",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &switch, "link", "set", "dev", BRIDGE, "up"])?;
        ip(&["-n", &switch, "link", "set", "dev", "lo", "up"])?;
        for host in self.hosts.clone() {
            self.add_host(&host)?;
        }
        Ok(())
    }

    fn add_netns(&mut self, name: &str) -> Result<(), LabError> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    fn add_host(&mut self, host: &Host) -> Result<(), LabError> {
        let (ns, switch) = (host.netns.as_str(), self.switch.clone());
        self.add_netns(ns)?;
        ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
        ip(&[
            "-n", ns, "link", "add", HOST_LINK, "type", "veth", "peer", "name", &host.port,
            "netns", &switch,
        ])?;
        ip(&[
            "-n", &switch, "link", "set", "dev", &host.port, "master", BRIDGE,
        ])?;
        ip(&["-n", &switch, "link", "set", "dev", &host.port, "up"])?;
        let cidr = format!("{}/24", host.address);
        ip(&["-n", ns, "addr", "add", &cidr, "dev", HOST_LINK])?;
        ip(&["-n", ns, "link", "set", "dev", HOST_LINK, "up"])
    }

    /// The tag this lab was created with.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The host names, in the order given to [`Lab::create`].
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|host| host.name.as_str())
    }

    fn host(&self, name: &str) -> Result<&Host, LabError> {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .ok_or_else(|| LabError::UnknownHost(name.to_string()))
    }

    fn known(&self, name: &str) -> &Host {
        self.host(name).unwrap_or_else(|error| {
            panic!("{error} (hosts: {:?})", self.hosts().collect::<Vec<_>>())
        })
    }

    /// The address of `host` inside the lab.
    ///
    /// # Panics
    /// When the lab has no such host (a bug in the caller).
    pub fn address(&self, host: &str) -> Ipv4Addr {
        self.known(host).address
    }

    /// The name of `host`'s network namespace (for `ip netns exec`, `ip -n`).
    ///
    /// # Panics
    /// When the lab has no such host (a bug in the caller).
    pub fn netns(&self, host: &str) -> &str {
        &self.known(host).netns
    }

    /// The lab's subnet and prefix length: `(10.X.Y.0, 24)`.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        (self.subnet, 24)
    }

    /// An address in the subnet that no host has: `10.X.Y.(101 + k)`, for a virtual IP.
    ///
    /// # Panics
    /// When `k` > 153 (past `.254`).
    pub fn spare_address(&self, k: u8) -> Ipv4Addr {
        let last = FIRST_SPARE
            .checked_add(k)
            .filter(|last| *last <= LAST_SPARE)
            .unwrap_or_else(|| panic!("spare_address({k}): only 0..=153 exist"));
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, last)
    }

    /// A command that runs `program` inside `host`'s network namespace.
    ///
    /// The child enters the namespace with `setns(2)` between fork and exec, so:
    /// - `Child::id()` is the PID of `program` itself (no wrapper process), and `kill -9` of it
    ///   kills the real program;
    /// - the child keeps the caller's mount namespace: mounts it makes (FUSE images, file
    ///   systems) are visible to the caller, unlike with `ip netns exec`, which gives the
    ///   program a private mount namespace (and a remounted `/sys`).
    ///
    /// `ip netns exec NS program` would also keep the PID (ip execs the program), but hides
    /// the program's mounts from everyone else.
    ///
    /// # Panics
    /// When the lab has no such host (a bug in the caller).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let path = netns_path(self.netns(host));
        let mut command = Command::new(program);
        // SAFETY: the hook runs in the forked child before exec and calls only async-signal-
        // safe system calls (open, setns, close) on a path prepared before the fork.
        unsafe {
            command.pre_exec(move || enter_netns_raw(&path));
        }
        command
    }

    /// Runs `work` on a new thread inside `host`'s network namespace and returns its result.
    /// Sockets it creates belong to that namespace (for probes and clients in tests). A panic
    /// inside `work` is passed on to the caller.
    pub fn in_netns<T: Send>(
        &self,
        host: &str,
        work: impl FnOnce() -> T + Send,
    ) -> Result<T, LabError> {
        let netns = self.host(host)?.netns.clone();
        let file =
            File::open(format!("{NETNS_DIR}/{netns}")).map_err(|source| LabError::Enter {
                netns: netns.clone(),
                source,
            })?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: setns(2) on an open namespace file; affects only this new thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let source = io::Error::last_os_error();
                    return Err(LabError::Enter { netns, source });
                }
                Ok(work())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Takes `host`'s link down: it can reach no other host and none can reach it.
    pub fn cut(&self, host: &str) -> Result<(), LabError> {
        let ns = &self.host(host)?.netns;
        ip(&["-n", ns, "link", "set", "dev", HOST_LINK, "down"])
    }

    /// Brings `host`'s link back up after [`Lab::cut`].
    pub fn heal(&self, host: &str) -> Result<(), LabError> {
        let ns = &self.host(host)?.netns;
        ip(&["-n", ns, "link", "set", "dev", HOST_LINK, "up"])
    }

    /// `host` drops every packet from `from` (an IP-level one-way partition: `from` still
    /// hears `host`). Note that TCP needs both directions: no TCP connection between the two
    /// works either way while this holds (the replies of one side are the dropped packets),
    /// so for TCP this is a full partition of the pair that fails by timeout. For "`host`
    /// stops hearing `from`'s connections, `from` still hears `host`'s", use
    /// [`Lab::drop_connections_from`].
    pub fn drop_inbound_from(&self, host: &str, from: &str) -> Result<(), LabError> {
        let source = self.host(from)?.address.to_string();
        self.iptables(host, &["-A", "INPUT", "-s", &source, "-j", "DROP"])
    }

    /// `host` drops the packets `from` sends on connections that `from` opened (new and
    /// existing, by connection tracking), and nothing else: `from`'s messages to `host` are
    /// lost, while `host`'s connections to `from` work in both directions. This is the one-way
    /// partition for a transport with one connection per direction (tandem's).
    ///
    /// Connections opened before the first such rule in a namespace are picked up mid-stream
    /// by connection tracking, which takes whoever sends first after the rule as the opener.
    pub fn drop_connections_from(&self, host: &str, from: &str) -> Result<(), LabError> {
        let source = self.host(from)?.address.to_string();
        self.iptables(
            host,
            &[
                "-A",
                "INPUT",
                "-s",
                &source,
                "-m",
                "conntrack",
                "--ctdir",
                "ORIGINAL",
                "-j",
                "DROP",
            ],
        )
    }

    /// `a` and `b` drop each other's packets (both still reach every other host): the
    /// partition between two nodes that both still see the witness.
    pub fn split(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.drop_inbound_from(a, b)?;
        self.drop_inbound_from(b, a)
    }

    /// Removes every drop rule in `host`'s namespace.
    pub fn clear_drops(&self, host: &str) -> Result<(), LabError> {
        self.iptables(host, &["-F", "INPUT"])
    }

    /// Heals every cut link and clears every drop rule.
    pub fn heal_all(&self) -> Result<(), LabError> {
        for host in &self.hosts {
            self.heal(&host.name)?;
            if self.iptables.get().is_some() {
                self.clear_drops(&host.name)?;
            }
        }
        Ok(())
    }

    /// Runs iptables in `host`'s namespace (through `ip netns exec`, which also gives it the
    /// namespace's view of `/sys`), with the flavour that works on this machine.
    fn iptables(&self, host: &str, args: &[&str]) -> Result<(), LabError> {
        let ns = self.host(host)?.netns.clone();
        let flavour = match self.iptables.get() {
            Some(flavour) => *flavour,
            None => {
                let flavour = pick_iptables(&ns)?;
                *self.iptables.get_or_init(|| flavour)
            }
        };
        let mut full = vec!["netns", "exec", &ns, flavour, "-w"];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Deletes every namespace this lab created (their veths, the bridge and the iptables
    /// rules go with them). Processes inside keep running; see the module documentation.
    /// Tries every namespace and returns the first error.
    pub fn destroy(mut self) -> Result<(), LabError> {
        self.delete_all()
    }

    fn delete_all(&mut self) -> Result<(), LabError> {
        let mut first = None;
        // Hosts first, the switch (created first) last.
        while let Some(name) = self.created.pop() {
            if let Err(error) = ip(&["netns", "del", &name]) {
                first.get_or_insert(error);
            }
        }
        release_subnet(self.subnet);
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(error) = self.delete_all() {
            eprintln!("lab {}: cleanup failed: {error}", self.tag);
        }
    }
}

/// Refuses to start without root, with the reason.
fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot { uid })
    }
}

/// Tags and host names: short, `[a-z0-9_]`, hosts unique and not `sw`.
fn validate(tag: &str, hosts: &[&str]) -> Result<(), LabError> {
    let good = |name: &str| {
        !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if !good(tag) {
        return Err(LabError::Invalid(format!(
            "tag {tag:?} must be 1 to {MAX_NAME} characters of a-z, 0-9 and _"
        )));
    }
    if hosts.is_empty() || hosts.len() > MAX_HOSTS {
        return Err(LabError::Invalid(format!(
            "a lab holds 1 to {MAX_HOSTS} hosts, not {}",
            hosts.len()
        )));
    }
    let mut seen = HashSet::new();
    for host in hosts {
        if !good(host) || *host == "sw" || !seen.insert(*host) {
            return Err(LabError::Invalid(format!(
                "host {host:?} must be unique, not \"sw\", and 1 to {MAX_NAME} characters of \
                 a-z, 0-9 and _"
            )));
        }
    }
    Ok(())
}

/// Deletes namespaces `tdm<tag>-*` left by an earlier run, saying so on stderr.
fn remove_leftovers(tag: &str) -> Result<(), LabError> {
    let prefix = format!("tdm{tag}-");
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&prefix) {
            eprintln!(
                "lab {tag}: removing network namespace {name} left by an earlier run \
                 (processes still inside it keep running)"
            );
            ip(&["netns", "del", &name])?;
        }
    }
    Ok(())
}

/// Picks `(X, Y)` for subnet `10.X.Y.0/24`: from the tag, the PID and a serial, skipping
/// subnets of labs alive in this process.
fn claim_subnet(tag: &str) -> (u8, u8) {
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut seed = tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    seed ^= u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    seed ^= u64::from(serial).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut guard = SUBNETS.lock().unwrap_or_else(|poison| poison.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    loop {
        let x = 100 + (seed % 100) as u8;
        let y = 1 + ((seed >> 8) % 254) as u8;
        if used.insert((x, y)) {
            return (x, y);
        }
        seed = seed.wrapping_mul(0x0100_0000_01b3).wrapping_add(1);
    }
}

fn release_subnet(subnet: Ipv4Addr) {
    let [_, x, y, _] = subnet.octets();
    let mut guard = SUBNETS.lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(used) = guard.as_mut() {
        used.remove(&(x, y));
    }
}

fn netns_path(netns: &str) -> CString {
    // Namespace names are validated ASCII without NUL bytes.
    CString::new(format!("{NETNS_DIR}/{netns}")).unwrap_or_default()
}

/// Enters the network namespace at `path`, in a forked child (async-signal-safe calls only).
fn enter_netns_raw(path: &CString) -> io::Result<()> {
    // SAFETY: plain system calls on a valid NUL-terminated path and the fd it returned.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let entered = libc::setns(fd, libc::CLONE_NEWNET);
        let error = io::Error::last_os_error();
        libc::close(fd);
        if entered != 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// `iptables`, or `iptables-legacy` when the default one cannot list the filter table in
/// `netns` (e.g. a kernel without nf_tables).
fn pick_iptables(netns: &str) -> Result<&'static str, LabError> {
    let mut first = None;
    for flavour in ["iptables", "iptables-legacy"] {
        match ip(&["netns", "exec", netns, flavour, "-w", "-S", "INPUT"]) {
            Ok(()) => return Ok(flavour),
            Err(error) => {
                first.get_or_insert(error);
            }
        }
    }
    Err(first.unwrap_or_else(|| LabError::Invalid("no iptables".into())))
}

/// Runs `ip args...`; an error names the command and carries its stderr.
fn ip(args: &[&str]) -> Result<(), LabError> {
    run("ip", args).map(drop)
}

fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Missing {
            program: program.to_string(),
            package: package_of(program),
            source,
        })?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let command = format!("{program} {}", args.join(" "));
    // `ip netns exec` reports a missing program on stderr.
    if stderr.contains("No such file or directory") && args.first() == Some(&"netns") {
        let missing = args.get(3).copied().unwrap_or(program);
        return Err(LabError::Missing {
            program: missing.to_string(),
            package: package_of(missing),
            source: io::Error::new(io::ErrorKind::NotFound, stderr),
        });
    }
    Err(LabError::Command {
        command,
        status: output.status.to_string(),
        stderr,
    })
}

fn package_of(program: &str) -> &'static str {
    if program.starts_with("iptables") {
        "iptables"
    } else {
        "iproute2"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate("t1", &["a", "b"]).is_ok());
        assert!(validate("", &["a"]).is_err());
        assert!(validate("Bad", &["a"]).is_err());
        assert!(validate("t-1", &["a"]).is_err());
        assert!(validate("t", &["a", "a"]).is_err());
        assert!(validate("t", &["sw"]).is_err());
        assert!(validate("t", &[]).is_err());
        assert!(validate("t", &["averyverylongname"]).is_err());
    }

    #[test]
    fn subnets_of_one_process_differ() {
        let first = claim_subnet("same");
        let second = claim_subnet("same");
        assert_ne!(first, second);
        for (x, y) in [first, second] {
            assert!((100..=199).contains(&x) && (1..=254).contains(&y));
            release_subnet(Ipv4Addr::new(10, x, y, 0));
        }
    }
}
