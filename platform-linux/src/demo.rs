//! `tandem demo`: a real cluster on this machine, a node killed hard, the service back on the
//! other node with its data.
//!
//! As root it builds three hosts in network namespaces (two nodes and a witness, joined by a
//! bridge; see [`crate::lab`]), runs a real `tandem daemon` in each, mirrors a volume over
//! both nodes, and runs a group on it: the volume, an ext4 file system on it, a virtual IP and
//! a small counter service of our own that keeps its count on the file system. A client in the
//! witness namespace increments the counter through the virtual IP; then the active node is
//! powered off (its daemon and service killed with SIGKILL, its link cut, its mounts gone) and
//! the demo shows the failover timeline and that every acknowledged increment survived.
//!
//! A guard stops every process by PID, unmounts, detaches loop devices, removes the
//! namespaces and the temporary directory on every exit path (errors and Ctrl-C included).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tandem_core::events::{EventKind, Recorded};
use tandem_core::{Command, Reply};

use crate::lab::{Lab, LabError};
use crate::{control, host_cleanup};

const NODES: [&str; 3] = ["a", "b", "w"];
const PORT: u16 = 7000;
const SERVICE_PORT: u16 = 8080;
/// Hang guard for each wait (not a speed limit: the figures are printed, never asserted).
const PATIENCE: Duration = Duration::from_secs(90);

/// What the demo made; dropped = cleaned up, in reverse order.
struct Demo {
    root: PathBuf,
    exe: PathBuf,
    lab: Option<Lab>,
    daemons: Vec<(String, Child)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A clean stop first: the daemon stops its group (service, IP, mount) before exiting.
        for (_, child) in &self.daemons {
            // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for (_, child) in &mut self.daemons {
            wait_or_kill(child, Duration::from_secs(20));
        }
        host_cleanup::release_below(&self.root);
        if let Some(lab) = self.lab.take() {
            if let Err(error) = lab.destroy() {
                eprintln!("demo: removing the network namespaces: {error}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn wait_or_kill(child: &mut Child, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the demo; Ctrl-C stops it cleanly.
pub async fn run() -> anyhow::Result<ExitCode> {
    if let Some(missing) = missing_requirements() {
        eprintln!("{missing}");
        return Ok(ExitCode::from(1));
    }
    let root = std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut demo = Demo {
        root,
        exe: std::env::current_exe().context("cannot find the tandem binary")?,
        lab: None,
        daemons: Vec::new(),
    };
    let outcome = tokio::select! {
        result = script(&mut demo) => result.map(|()| ExitCode::SUCCESS),
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted; stopping the demo cluster");
            Ok(ExitCode::from(1))
        }
    };
    println!(
        "== cleaning up: daemons, mounts, loop devices, namespaces, {}",
        demo.root.display()
    );
    drop(demo);
    outcome
}

/// What this machine lacks for the demo, said exactly; `None` when it can run.
fn missing_requirements() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Some(format!(
            "tandem demo needs root (it runs as uid {uid}): it creates network namespaces, a \
             bridge and veth pairs (CAP_NET_ADMIN, CAP_SYS_ADMIN), mounts a FUSE image, \
             attaches a loop device and mounts ext4 on it. Run: sudo tandem demo"
        ));
    }
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse (modprobe fuse)".to_string());
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("losetup", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
    ] {
        if !on_path(program) {
            missing.push(format!("{program} (apt-get install {package})"));
        }
    }
    (!missing.is_empty()).then(|| format!("tandem demo needs: {}", missing.join(", ")))
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

impl Demo {
    fn lab(&self) -> anyhow::Result<&Lab> {
        self.lab.as_ref().context("the lab is gone")
    }

    fn state_dir(&self, node: &str) -> PathBuf {
        self.root.join(node)
    }

    fn listen(&self, node: &str) -> anyhow::Result<String> {
        Ok(format!("{}:{PORT}", self.lab()?.address(node)))
    }

    fn start_daemon(&mut self, node: &str) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.root.join(format!("{node}.log")))?;
        let child = self
            .lab()?
            .command(node, &self.exe)
            .args(["daemon", "--state-dir"])
            .arg(self.state_dir(node))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a daemon")?;
        self.daemons.push((node.to_string(), child));
        Ok(())
    }

    /// Runs `tandem ARGS --state-dir <node>` inside `node`'s namespace, echoing it.
    fn tandem(&self, node: &str, args: &[&str], echo: bool) -> anyhow::Result<String> {
        if echo {
            println!("$ tandem {}", args.join(" "));
        }
        let output = self
            .lab()?
            .command(node, &self.exe)
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir(node))
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if !output.status.success() {
            bail!(
                "tandem {} failed: {}{}",
                args.join(" "),
                text,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(text)
    }

    async fn ask(&self, node: &str, command: &Command) -> anyhow::Result<Reply> {
        let dir = self.state_dir(node);
        Ok(control::call(&dir, &dir.join("control.sock"), command).await?)
    }
}

async fn script(demo: &mut Demo) -> anyhow::Result<()> {
    println!("== tandem demo: nodes a and b and witness w, each in its own network namespace");
    demo.lab = Some(Lab::create("demo", &NODES).map_err(explain_lab_error)?);
    form_cluster(demo).await?;
    let vip = demo.lab()?.spare_address(0);
    let mount = demo.root.join("srv");
    std::fs::create_dir_all(&mount)?;
    create_volume(demo).await?;
    create_group(demo, &vip.to_string(), &mount).await?;
    wait_event(demo, "a", EventKind::Healthy, 0).await?;
    wait_synced(demo).await?;
    println!(
        "\n$ tandem status\n{}",
        demo.tandem("a", &["status"], false)?
    );
    let acknowledged = increment(demo, &vip.to_string(), 10)?;
    println!("-- a client in w incremented the counter through {vip}: {acknowledged} acknowledged");
    let killed_ms = power_off(demo, "a")?;
    let killed = Instant::now();
    println!("-- node a powered off: daemon and service killed (SIGKILL), link cut, mounts gone");
    let healthy = wait_event(demo, "b", EventKind::Healthy, killed_ms).await?;
    println!(
        "-- the service is healthy on b {} ms after the kill\n",
        healthy.event.at_unix_ms.saturating_sub(killed_ms)
    );
    print_timeline(demo, killed_ms).await?;
    let answer = read_counter(demo, &vip.to_string())?;
    println!("\n-- the client reads the counter through {vip} again: {answer}");
    let count = answer
        .split_whitespace()
        .find_map(|word| word.strip_prefix("count="))
        .and_then(|n| n.parse::<u64>().ok());
    match count {
        Some(count) if count == acknowledged => println!(
            "== every acknowledged increment survived ({count} of {acknowledged}); failover \
             took {} ms in all",
            killed.elapsed().as_millis()
        ),
        other => bail!("the counter says {other:?}, {acknowledged} increments were acknowledged"),
    }
    Ok(())
}

fn explain_lab_error(error: LabError) -> anyhow::Error {
    anyhow::anyhow!("cannot build the demo's network: {error}")
}

async fn form_cluster(demo: &mut Demo) -> anyhow::Result<()> {
    let listen = demo.listen("a")?;
    // In a's namespace: init checks that the listen address is this host's.
    demo.tandem("a", &["init", "--name", "a", "--listen", &listen], false)?;
    demo.start_daemon("a")?;
    wait_status(demo, "a", |s| s.leader.is_some()).await?;
    for node in ["b", "w"] {
        let token = join_token(demo).await?;
        let (listen, peer) = (demo.listen(node)?, demo.listen("a")?);
        let mut args = vec!["join", "--name", node, "--listen", &listen, "--peer", &peer];
        args.extend(["--token", &token]);
        if node == "w" {
            args.push("--witness");
        }
        demo.tandem(node, &args, false)?;
        demo.start_daemon(node)?;
    }
    println!("-- cluster formed: a founded it, b joined, w joined as witness");
    wait_status(demo, "a", |s| {
        s.voters_online == 3 && s.quorum && s.nodes.iter().all(|n| n.lease_remaining_ms > 0)
    })
    .await?;
    Ok(())
}

async fn create_volume(demo: &Demo) -> anyhow::Result<()> {
    let leg = |node: &str| {
        format!(
            "{node}:{}",
            demo.root.join(format!("leg-{node}.img")).display()
        )
    };
    let (leg_a, leg_b) = (leg("a"), leg("b"));
    let args = [
        "volume", "create", "data", "--size", "256M", "--leg", &leg_a, "--leg", &leg_b,
    ];
    demo.tandem("a", &args, true)?;
    Ok(())
}

/// Waits until both legs are UpToDate (the initial sync runs while the group already does).
async fn wait_synced(demo: &Demo) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Reply::Volumes { volumes } = demo.ask("a", &Command::VolumeList).await? {
            let synced = volumes
                .iter()
                .all(|v| v.legs.iter().all(|l| l.state == "UpToDate"));
            if synced {
                break;
            }
        }
        if start.elapsed() > PATIENCE {
            bail!("the volume's legs did not reach UpToDate");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("-- both legs of volume data are UpToDate (the initial sync is done)");
    Ok(())
}

async fn create_group(demo: &Demo, vip: &str, mount: &Path) -> anyhow::Result<()> {
    let exe = demo.exe.display().to_string();
    let mount = mount.display().to_string();
    let service = format!("{exe} counter-service --dir {mount} --listen {vip}:{SERVICE_PORT}");
    let filesystem = format!("data:{mount}:ext4");
    let ip = format!("{vip}/24@eth0");
    let health = format!("http:http://{vip}:{SERVICE_PORT}/health");
    let args = [
        "group",
        "create",
        "web",
        "--prefer",
        "a,b",
        "--volume",
        "data",
        "--filesystem",
        &filesystem,
        "--mkfs",
        "--ip",
        &ip,
        "--exec",
        &service,
        "--health",
        &health,
        "--monitor-interval",
        "1s",
    ];
    demo.tandem("a", &args, true)?;
    Ok(())
}

/// A join token from a. Right after b joined, a and b form the quorum: until b's daemon has
/// come up and answered, a may have no leader to ask, so a refusal is retried (bounded).
async fn join_token(demo: &Demo) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        wait_status(demo, "a", |s| s.leader.is_some()).await?;
        match demo
            .ask("a", &Command::CreateJoinToken { ttl_secs: 600 })
            .await?
        {
            Reply::Token { token, .. } => return Ok(token),
            Reply::Refused { .. } if start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => bail!("no join token: {other:?}"),
        }
    }
}

async fn wait_status(
    demo: &Demo,
    node: &str,
    done: impl Fn(&tandem_core::StatusReport) -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if let Ok(Reply::Status(status)) = demo.ask(node, &Command::Status).await {
            if done(&status) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("gave up waiting on node {node}'s status")
}

/// The first `kind` event of group `web` on `node` at or after `after_ms` (unix ms).
async fn wait_event(
    demo: &Demo,
    node: &str,
    kind: EventKind,
    after_ms: u64,
) -> anyhow::Result<Recorded> {
    let start = Instant::now();
    let ask = if node == "a" { "a" } else { "w" };
    while start.elapsed() < PATIENCE {
        if let Some(found) = events(demo, ask).await?.into_iter().find(|r| {
            let name = node_id(demo, node);
            r.event.kind == kind && Some(r.event.node) == name && r.event.at_unix_ms >= after_ms
        }) {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gave up waiting for {} on {node}", kind.as_str())
}

fn node_id(demo: &Demo, node: &str) -> Option<u64> {
    let dir = crate::statedir::StateDir::open(&demo.state_dir(node)).ok()?;
    Some(dir.read_identity().ok()?.node_id)
}

async fn events(demo: &Demo, node: &str) -> anyhow::Result<Vec<Recorded>> {
    let command = Command::Events {
        since: 0,
        limit: 500,
    };
    match demo.ask(node, &command).await {
        Ok(Reply::Events { events, .. }) => Ok(events),
        _ => Ok(Vec::new()),
    }
}

async fn print_timeline(demo: &Demo, killed_ms: u64) -> anyhow::Result<()> {
    println!("$ tandem events   (on w; +ms counted from the kill)");
    let reply = demo
        .ask(
            "w",
            &Command::Events {
                since: 0,
                limit: 500,
            },
        )
        .await?;
    let Reply::Events { events, names, .. } = reply else {
        bail!("no timeline: {reply:?}");
    };
    let names: std::collections::BTreeMap<u64, String> = names.into_iter().collect();
    println!(
        "{:>8}  {:<5} {:<11} {:<6} DETAIL",
        "+MS", "NODE", "EVENT", "GROUP"
    );
    for recorded in events
        .iter()
        .filter(|r| r.event.at_unix_ms + 500 >= killed_ms)
    {
        let event = &recorded.event;
        let node = names.get(&event.node).map_or("?", String::as_str);
        println!(
            "{:>+8}  {node:<5} {:<11} {:<6} {}",
            event.at_unix_ms as i64 - killed_ms as i64,
            event.kind.as_str(),
            event.group.as_deref().unwrap_or("-"),
            event.detail
        );
    }
    Ok(())
}

/// POSTs `/increment` `times` times from the witness namespace; the last acknowledged count.
fn increment(demo: &Demo, vip: &str, times: u64) -> anyhow::Result<u64> {
    let mut last = 0;
    for _ in 0..times {
        let answer = http(demo, vip, "POST /increment")?;
        last = answer
            .split_whitespace()
            .find_map(|word| word.strip_prefix("count="))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected answer {answer:?}"))?;
    }
    Ok(last)
}

fn read_counter(demo: &Demo, vip: &str) -> anyhow::Result<String> {
    http(demo, vip, "GET /")
}

/// One HTTP/1.0 request to the counter through the virtual IP, made inside the witness
/// namespace (the client's machine); the body of the answer.
fn http(demo: &Demo, vip: &str, request: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = format!("{vip}:{SERVICE_PORT}").parse()?;
    let request = format!("{request} HTTP/1.0\r\nHost: {vip}\r\nContent-Length: 0\r\n\r\n");
    let answer = demo
        .lab()?
        .in_netns("w", move || -> std::io::Result<String> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })??;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_string())
}

/// Powers `node` off as far as one machine can: SIGKILL its daemon (its service dies with it),
/// cut its link, and drop the mounts and loop devices that would vanish with its power.
/// Returns the time of the kill (unix ms).
fn power_off(demo: &mut Demo, node: &str) -> anyhow::Result<u64> {
    let position = demo
        .daemons
        .iter()
        .position(|(name, _)| name == node)
        .context("no such daemon")?;
    let (_, mut child) = demo.daemons.remove(position);
    let killed_ms = unix_now_ms();
    child.kill()?;
    child.wait()?;
    demo.lab()?.cut(node)?;
    host_cleanup::release_below(&demo.state_dir(node));
    Ok(killed_ms)
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
