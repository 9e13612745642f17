//! A tandem cluster in a network lab (tier 4, root): every node's daemon runs inside its own
//! network namespace and listens on its lab address, so tests can cut links, drop packets one
//! way and `kill -9` daemons like on real hosts. Also small clients for probes and for the
//! counter service (`tandem counter-service`).
//!
//! State dirs live in a temp dir. `init`, `join` and the daemons run inside the node's
//! namespace (they bind or dial lab addresses); `status` and `token` go through the Unix
//! control socket in the state dir, which works from any namespace. Drop kills every daemon by
//! PID, detaches mounts below the temp dir, prints the logs when a test failed, removes the
//! temp dir and finally destroys the lab.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tandem_linux::lab::Lab;

use crate::{node_name, tandem_bin, text, unmount_below, wait_for, TestNode};

/// The port every node listens on (each node has its own address, so one port serves all).
pub const NODE_PORT: u16 = 7000;

/// A child process killed (SIGKILL, by PID) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `kill -9` now and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory under the temp dir, removed (with mounts below it detached) on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("tandem-lab-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a scratch dir");
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a lab or fails the test with the lab's own message (which says what is missing).
pub fn lab(tag: &str, hosts: &[&str]) -> Lab {
    Lab::create(tag, hosts).unwrap_or_else(|error| panic!("cannot build lab {tag}: {error}"))
}

/// True when a TCP connection from `from` to `to:port` gets an answer (accepted or refused):
/// packets pass both ways. False when it times out (`limit`).
pub fn tcp_reachable(lab: &Lab, from: &str, to: &str, port: u16, limit: Duration) -> bool {
    let target = SocketAddr::from((lab.address(to), port));
    lab.in_netns(from, move || {
        match TcpStream::connect_timeout(&target, limit) {
            Ok(_) => true,
            Err(error) => error.kind() == io::ErrorKind::ConnectionRefused,
        }
    })
    .unwrap_or_else(|error| panic!("{error}"))
}

/// True when a UDP datagram sent from `from` arrives at `to` within half a second: one
/// direction only, unlike TCP.
pub fn udp_arrives(lab: &Lab, from: &str, to: &str) -> bool {
    let at = SocketAddr::from((lab.address(to), 0));
    let receiver = lab
        .in_netns(to, move || UdpSocket::bind(at))
        .unwrap_or_else(|error| panic!("{error}"))
        .expect("bind a UDP socket in the lab");
    let target = receiver.local_addr().expect("local addr");
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let sent = lab
        .in_netns(from, move || {
            let sender = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            sender.send_to(b"probe", target)
        })
        .unwrap_or_else(|error| panic!("{error}"));
    let mut buffer = [0u8; 16];
    sent.is_ok() && receiver.recv_from(&mut buffer).is_ok()
}

/// `ping -c1 -W1` from `from` to `to` when `ping` is installed, else a TCP probe (port 9,
/// nothing listens: an answer is a refusal).
pub fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    let address = lab.address(to).to_string();
    match lab
        .command(from, "ping")
        .args(["-c1", "-W1", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => status.success(),
        Err(_) => tcp_reachable(lab, from, to, 9, Duration::from_secs(1)),
    }
}

/// One HTTP/1.0 exchange from inside `from`: the raw request out, `(status, body)` back
/// (2 s to connect, 10 s for the answer).
pub fn http(
    lab: &Lab,
    from: &str,
    target: SocketAddrV4,
    request: &str,
) -> io::Result<(u16, String)> {
    let limits = (Duration::from_secs(2), Duration::from_secs(10));
    http_within(lab, from, target, request, limits)
}

/// [`http`] with `(connect, answer)` time limits.
pub fn http_within(
    lab: &Lab,
    from: &str,
    target: SocketAddrV4,
    request: &str,
    (connect, answer_limit): (Duration, Duration),
) -> io::Result<(u16, String)> {
    let request = request.to_string();
    lab.in_netns(from, move || {
        let mut stream = TcpStream::connect_timeout(&target.into(), connect)?;
        stream.set_read_timeout(Some(answer_limit))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let code = answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body);
        Ok((code, body.unwrap_or_default().trim_end().to_string()))
    })
    .map_err(io::Error::other)?
}

/// `METHOD path` to the counter service, `(status, body)` back.
pub fn http_call(
    lab: &Lab,
    from: &str,
    target: SocketAddrV4,
    method: &str,
    path: &str,
) -> io::Result<(u16, String)> {
    http(
        lab,
        from,
        target,
        &format!("{method} {path} HTTP/1.0\r\n\r\n"),
    )
}

/// The count in a counter-service answer `count=N host=H`.
pub fn count_in(body: &str) -> Option<u64> {
    body.split_whitespace()
        .find_map(|word| word.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
}

/// Starts `tandem counter-service` in `host` on `port` with data in `dir`, logging to
/// `log`, and waits until `/health` answers.
pub fn start_counter(lab: &Lab, host: &str, dir: &Path, port: u16, log: &Path) -> KillOnDrop {
    let target = SocketAddrV4::new(lab.address(host), port);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = lab
        .command(host, tandem_bin())
        .arg("counter-service")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", &target.to_string(), "--name", host])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the counter service");
    let service = KillOnDrop(child);
    wait_for("the counter service", Duration::from_secs(10), || {
        let health = http_call(lab, host, target, "GET", "/health").ok()?;
        (health.0 == 200).then_some(())
    });
    service
}

/// Real daemons, each in its own lab namespace; stopped and removed on drop.
pub struct LabCluster {
    pub root: PathBuf,
    pub nodes: Vec<TestNode>,
    /// Dropped last, after the daemons are dead.
    pub lab: Lab,
}

impl LabCluster {
    /// Builds a lab with hosts `names` + `witnesses`, founds a cluster on `names[0]`, joins
    /// the others through it (witnesses with `--witness`), and waits until every node sees
    /// all of them online.
    pub fn form(tag: &str, names: &[&str], witnesses: &[&str]) -> LabCluster {
        let hosts: Vec<&str> = names.iter().chain(witnesses).copied().collect();
        let lab = lab(tag, &hosts);
        let root = std::env::temp_dir().join(format!("tandem-lab-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create the cluster's temp dir");
        let mut cluster = LabCluster {
            root,
            nodes: Vec::new(),
            lab,
        };
        cluster.init(names[0]);
        cluster.start(names[0]);
        cluster.wait_leader(names[0]);
        for name in &names[1..] {
            cluster.join(name, names[0], false);
        }
        for name in witnesses {
            cluster.join(name, names[0], true);
        }
        for name in &hosts {
            cluster.wait_online(name, hosts.len());
        }
        cluster
    }

    /// `name`'s cluster address: its lab address and [`NODE_PORT`].
    pub fn addr(&self, name: &str) -> String {
        format!("{}:{NODE_PORT}", self.lab.address(name))
    }

    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab cluster"))
    }

    fn node_mut(&mut self, name: &str) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab cluster"))
    }

    /// Runs the CLI inside `host`'s namespace with `--state-dir dir`.
    fn run_cli(&self, host: &str, dir: &Path, args: &[&str]) -> Output {
        self.lab
            .command(host, tandem_bin())
            .args(args)
            .arg("--state-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run tandem in the lab")
    }

    /// The CLI of node `name`, run inside its namespace.
    pub fn cli(&self, name: &str, args: &[&str]) -> Output {
        self.run_cli(name, &self.node(name).dir, args)
    }

    /// `tandem init` of the first node (not started).
    fn init(&mut self, name: &str) {
        let (addr, dir) = (self.addr(name), self.root.join(name));
        let output = self.run_cli(name, &dir, &["init", "--name", name, "--listen", &addr]);
        assert!(
            output.status.success(),
            "init of {name} failed: {}",
            text(&output)
        );
        self.push_node(name, dir, addr);
    }

    fn push_node(&mut self, name: &str, dir: PathBuf, addr: String) {
        self.nodes.push(TestNode {
            name: name.into(),
            dir,
            addr,
            child: None,
        });
    }

    /// `tandem join` of `name` through `via` (inside `name`'s namespace), then starts it.
    pub fn join(&mut self, name: &str, via: &str, witness: bool) {
        let token = self.node(via).token();
        let (addr, dir) = (self.addr(name), self.root.join(name));
        let peer = self.node(via).addr.clone();
        let mut args = vec![
            "join", "--name", name, "--listen", &addr, "--peer", &peer, "--token", &token,
        ];
        if witness {
            args.push("--witness");
        }
        let output = self.run_cli(name, &dir, &args);
        assert!(
            output.status.success(),
            "join of {name} failed: {}",
            text(&output)
        );
        self.push_node(name, dir, addr);
        self.start(name);
    }

    /// Starts the daemon of `name` inside its namespace; its log (appended across restarts)
    /// is `<root>/<name>.log`.
    pub fn start(&mut self, name: &str) {
        let dir = self.node(name).dir.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        let child = self
            .lab
            .command(name, tandem_bin())
            .args(["daemon", "--state-dir"])
            .arg(&dir)
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.node_mut(name).child = Some(child);
    }

    /// The PID of `name`'s running daemon (the daemon itself, not a wrapper).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.node(name).child.as_ref().map(Child::id)
    }

    /// `kill -9` of the daemon of `name` (by PID), reaped.
    pub fn kill(&mut self, name: &str) {
        self.node_mut(name).kill();
    }

    /// SIGTERM to the daemon of `name`, waiting for it to exit.
    pub fn stop(&mut self, name: &str) {
        self.node_mut(name).stop();
    }

    /// Takes `name`'s link down (a full partition of that node).
    pub fn cut(&self, name: &str) {
        self.lab
            .cut(name)
            .unwrap_or_else(|error| panic!("cut {name}: {error}"));
    }

    /// Brings `name`'s link back up.
    pub fn heal(&self, name: &str) {
        self.lab
            .heal(name)
            .unwrap_or_else(|error| panic!("heal {name}: {error}"));
    }

    /// `tandem status --json` of `name`, if its daemon answers.
    pub fn status(&self, name: &str) -> Option<Value> {
        self.node(name).status()
    }

    /// Waits until `name` sees a leader; returns the leader's id.
    pub fn wait_leader(&self, name: &str) -> u64 {
        self.node(name).wait_leader()
    }

    /// Waits until `name` sees `count` nodes online.
    pub fn wait_online(&self, name: &str, count: usize) -> Value {
        self.node(name).wait_online(count)
    }

    /// Waits until `name` sees a leader and `node`'s `online` flag equal to `online`.
    pub fn wait_node_online(&self, name: &str, node: &str, online: bool) -> Value {
        let what = format!("{node} online={online} (with a leader) as seen by {name}");
        wait_for(&what, Duration::from_secs(30), || {
            let status = self.status(name)?;
            status["leader"].as_u64()?;
            let entry = status["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["name"] == node)?
                .clone();
            (entry["online"] == online).then_some(status)
        })
    }

    /// The name of the leader `via` sees (waiting for one).
    pub fn leader(&self, via: &str) -> String {
        let id = self.wait_leader(via);
        let status = self.status(via).expect("status after a leader was seen");
        node_name(&status, id)
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("---- log of {} ----\n{}", node.name, node.log()))
            .collect()
    }
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        unmount_below(&self.root);
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.root);
        // `self.lab` is dropped after this: the namespaces go once the daemons are dead.
    }
}
