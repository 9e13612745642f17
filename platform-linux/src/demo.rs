//! `tandem demo`: a real three-node cluster on this machine, a leader killed, a new one elected.
//!
//! Everything it starts is a real `tandem daemon` process on 127.0.0.1, with its own state dir
//! under a fresh temporary directory. A guard stops every process by PID and removes the
//! directory on every exit path, including Ctrl-C and errors.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tandem_core::{Command, Reply, StatusReport};

use crate::{control, render, setup};

/// Processes and files the demo made; dropped = cleaned up.
struct DemoGuard {
    root: PathBuf,
    children: Vec<(String, Child)>,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl DemoGuard {
    fn state_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn start_daemon(&mut self, name: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the tandem binary")?;
        let log = std::fs::File::create(self.root.join(format!("{name}.log")))?;
        let child = std::process::Command::new(exe)
            .args(["daemon", "--state-dir"])
            .arg(self.state_dir(name))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a daemon")?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn kill(&mut self, name: &str) {
        if let Some(position) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(position);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn status_of(dir: &Path) -> Option<StatusReport> {
    match control::call(dir, &dir.join("control.sock"), &Command::Status).await {
        Ok(Reply::Status(status)) => Some(status),
        _ => None,
    }
}

/// Polls `dir`'s status until `done` holds, for at most `limit` (a hang guard, not a speed test).
async fn wait_for(
    dir: &Path,
    limit: Duration,
    done: impl Fn(&StatusReport) -> bool,
) -> anyhow::Result<StatusReport> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = status_of(dir).await {
            if done(&status) {
                return Ok(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("gave up after {:?} waiting on {}", limit, dir.display())
}

async fn token(dir: &Path) -> anyhow::Result<String> {
    match control::call(
        dir,
        &dir.join("control.sock"),
        &Command::CreateJoinToken { ttl_secs: 600 },
    )
    .await?
    {
        Reply::Token { token, .. } => Ok(token),
        other => bail!("no token: {other:?}"),
    }
}

/// Runs the demo; Ctrl-C stops it cleanly.
pub async fn run() -> anyhow::Result<ExitCode> {
    let root = std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()));
    let mut guard = DemoGuard {
        root: root.clone(),
        children: Vec::new(),
    };
    std::fs::create_dir_all(&root)?;
    tokio::select! {
        result = script(&mut guard) => result.map(|_| ExitCode::SUCCESS),
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted; stopping the demo cluster");
            Ok(ExitCode::from(1))
        }
    }
}

async fn script(guard: &mut DemoGuard) -> anyhow::Result<()> {
    let names = ["alpha", "bravo", "charlie"];
    let ports = [free_port()?, free_port()?, free_port()?];
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    println!(
        "== tandem demo: three nodes on this machine, state under {}",
        guard.root.display()
    );
    let first = guard.state_dir(names[0]);
    setup::init(
        &first,
        &setup::NodeSpec {
            name: names[0],
            listen: &addr(0),
            site: None,
        },
    )?;
    guard.start_daemon(names[0])?;
    wait_for(&first, Duration::from_secs(20), |s| s.leader.is_some()).await?;
    println!("-- {} founded the cluster and leads it", names[0]);
    for (i, name) in names.iter().enumerate().skip(1) {
        let token = token(&first).await?;
        let spec = setup::NodeSpec {
            name,
            listen: &addr(i),
            site: None,
        };
        setup::join(&guard.state_dir(name), &spec, &addr(0), &token, false).await?;
        guard.start_daemon(name)?;
        println!("-- {name} joined with a one-hour token and started");
    }
    // Show the cluster settled: every node online and holding its quorum-confirmed lease.
    let status = wait_for(&first, Duration::from_secs(30), |s| {
        let leased = s.nodes.iter().all(|node| node.lease_remaining_ms > 0);
        s.voters_online == 3 && s.quorum && leased
    })
    .await?;
    println!(
        "\n$ tandem status\n{}",
        render::reply(&Reply::Status(status.clone()))
    );
    let leader_id = status.leader.context("no leader")?;
    let leader = status
        .nodes
        .iter()
        .find(|n| n.id == leader_id)
        .context("leader not listed")?
        .name
        .clone();
    let survivor = names
        .iter()
        .find(|&&n| n != leader)
        .copied()
        .unwrap_or(names[1]);
    println!("-- kill -9 the leader {leader}");
    let killed = Instant::now();
    guard.kill(&leader);
    let dir = guard.state_dir(survivor);
    let after = wait_for(&dir, Duration::from_secs(20), |s| {
        s.leader.is_some_and(|id| id != leader_id)
    })
    .await?;
    println!(
        "-- new leader elected {} ms after the kill",
        killed.elapsed().as_millis()
    );
    let after = wait_for(&dir, Duration::from_secs(20), |s| {
        s.nodes.iter().any(|n| n.id == leader_id && !n.online)
    })
    .await
    .unwrap_or(after);
    println!(
        "-- {leader} shown offline {} ms after the kill",
        killed.elapsed().as_millis()
    );
    // A new leader grants no lease until the old leader's lease has surely run out.
    let after = wait_for(&dir, Duration::from_secs(20), |s| {
        s.nodes
            .iter()
            .filter(|n| n.online)
            .all(|n| n.lease_remaining_ms > 0)
    })
    .await
    .unwrap_or(after);
    println!(
        "-- leases held again {} ms after the kill (a new leader first waits out the old one's lease)",
        killed.elapsed().as_millis()
    );
    println!(
        "\n$ tandem status   (on {survivor})\n{}",
        render::reply(&Reply::Status(after))
    );
    println!(
        "== demo done; stopping every process and removing {}",
        guard.root.display()
    );
    Ok(())
}
