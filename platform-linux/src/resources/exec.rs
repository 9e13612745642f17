//! `exec` services: a process we start ourselves (argv, no shell), judged by a health check.
//!
//! The child runs in its own session and process group (so a stop or a timeout reaches
//! everything it started, unless it daemonizes into a new session: exec services must stay in
//! the foreground), with stdout and stderr appended to `<state-dir>/logs/<group>-<index>.log`,
//! and its PID and start time in `<state-dir>/run/<group>-<index>.pid` so that a restarted
//! daemon, or `tandem resource stop`, finds and stops a leftover (the start time tells our
//! process from a later one that reused the PID).
//!
//! Under the daemon the child also gets `PR_SET_PDEATHSIG(SIGKILL)`: a node whose daemon died
//! loses its lease, and its service must not outlive it (DESIGN.md §5 rule 2). The kernel sends
//! that signal when the *thread* that forked the child exits, not the process, so children are
//! forked by one dedicated thread that lives as long as the process (a tokio blocking thread
//! that retires after a while would take the service with it). The `tandem resource` operator
//! tool starts services detached instead, as `crm_resource --force-start` does.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tandem_core::group::HealthCheck;
use tokio::sync::oneshot;

use super::process::{self, describe_status, kill_group};
use super::{find_program, health, procfs, Outcome, Place, ResourceError, RunnerContext};

/// How long a process-alive service must survive its first moments before it counts as started.
const SETTLE: Duration = Duration::from_millis(100);
/// How long to wait for a group to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The local checks: the program and the health command exist, the URL is one we can fetch.
pub(crate) fn check_local(
    command: &[String],
    health: &HealthCheck,
    place: &Place,
) -> Result<(), ResourceError> {
    let program = command.first().map(String::as_str).unwrap_or_default();
    if find_program(program).is_none() {
        return Err(place.unusable(format!(
            "program {program:?} is not an executable file (searched $PATH when it has no '/')"
        )));
    }
    match health {
        HealthCheck::Command { command } => {
            let program = command.first().map(String::as_str).unwrap_or_default();
            if find_program(program).is_none() {
                return Err(place.unusable(format!(
                    "health command program {program:?} is not an executable file"
                )));
            }
            Ok(())
        }
        HealthCheck::Http { url } => health::parse_http_url(url)
            .map(drop)
            .map_err(|reason| place.unusable(reason)),
        HealthCheck::ProcessAlive | HealthCheck::Tcp { .. } => Ok(()),
    }
}

/// Whether the service's process is there.
enum Liveness {
    /// No process was started (or it was stopped cleanly).
    None,
    /// It ran and is gone: why.
    Dead(String),
    Alive,
}

pub(crate) struct Exec {
    command: Vec<String>,
    health: HealthCheck,
    log: PathBuf,
    pid_file: PathBuf,
    /// The process we started, while we are its parent.
    child: Option<Child>,
    /// Started without PDEATHSIG (the operator tool).
    detached: bool,
}

impl Exec {
    pub fn new(command: &[String], health: &HealthCheck, ctx: &RunnerContext) -> Exec {
        Exec {
            command: command.to_vec(),
            health: health.clone(),
            log: ctx.log_path(),
            pid_file: ctx.run_file("pid"),
            child: None,
            detached: false,
        }
    }

    pub fn detach(&mut self) {
        self.detached = true;
    }

    fn name(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// Starts the process (or adopts a living leftover) and waits for its health check.
    pub async fn start(&mut self, limit_ms: u64, check_ms: u64) -> Outcome {
        let deadline = Instant::now() + Duration::from_millis(limit_ms);
        if !matches!(self.liveness(), Liveness::Alive) {
            if let Err(reason) = self.spawn().await {
                return Outcome::Failed(reason);
            }
            tokio::time::sleep(SETTLE).await;
        }
        let mut last = String::from("not checked yet");
        loop {
            if let Liveness::Dead(why) = self.liveness() {
                self.forget();
                let tail = process::log_tail(&self.log, 0, 5);
                return Outcome::Failed(format!(
                    "{} exited during start ({why}); last output: {tail}",
                    self.name()
                ));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let limit = remaining.min(Duration::from_millis(check_ms));
            match health::check(&self.health, &self.log, limit).await {
                Ok(()) => return Outcome::Running,
                Err(reason) => last = reason,
            }
            let pause = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(Duration::from_millis(200))).await;
        }
        self.kill_now().await;
        Outcome::Failed(format!(
            "start of exec {} timed out after {limit_ms} ms: health check {} never passed \
             (last: {last}); the process was killed",
            self.name(),
            health::describe(&self.health)
        ))
    }

    /// Spawns the child and records its PID file.
    async fn spawn(&mut self) -> Result<(), String> {
        let Some((program, args)) = self.command.split_first() else {
            return Err("the command is empty".into());
        };
        let (mut log, _) = process::open_log(&self.log)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = io::Write::write_all(
            &mut log,
            format!(
                "=== tandem: starting {} (unix time {stamp})\n",
                self.command.join(" ")
            )
            .as_bytes(),
        );
        let err = log
            .try_clone()
            .map_err(|error| format!("cannot use log {}: {error}", self.log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        process::own_group(&mut command, !self.detached);
        let child = if self.detached {
            command.spawn()
        } else {
            spawn_on_keeper(command).await
        }
        .map_err(|error| format!("cannot start {program}: {error}"))?;
        let pid = i32::try_from(child.id()).map_err(|_| "child PID out of range".to_string())?;
        self.child = Some(child);
        let start = procfs::stat(pid).map_or(0, |s| s.start);
        write_pid_file(&self.pid_file, pid, start)
    }

    /// Checks the process, then the health check.
    pub async fn monitor(&mut self, limit_ms: u64) -> Outcome {
        match self.liveness() {
            Liveness::None => return Outcome::NotRunning,
            Liveness::Dead(why) => return Outcome::Failed(why),
            Liveness::Alive => {}
        }
        let limit = Duration::from_millis(limit_ms);
        match health::check(&self.health, &self.log, limit).await {
            Ok(()) => Outcome::Running,
            Err(reason) => Outcome::Failed(format!(
                "health check {} failed: {reason}",
                health::describe(&self.health)
            )),
        }
    }

    fn liveness(&mut self) -> Liveness {
        if let Some(child) = self.child.as_mut() {
            let pid = child.id();
            match child.try_wait() {
                Ok(None) => return Liveness::Alive,
                Ok(Some(status)) => {
                    self.child = None;
                    return Liveness::Dead(format!(
                        "process {pid} exited ({})",
                        describe_status(status)
                    ));
                }
                Err(error) => return Liveness::Dead(format!("process {pid}: {error}")),
            }
        }
        match read_pid_file(&self.pid_file) {
            None => Liveness::None,
            Some((pid, start)) if procfs::alive(pid, Some(start)) => Liveness::Alive,
            Some((pid, _)) => Liveness::Dead(format!("process {pid} (from its pid file) is gone")),
        }
    }

    /// SIGTERM to the group, up to `limit_ms` for it to end, then SIGKILL.
    pub async fn stop(&mut self, limit_ms: u64) -> Outcome {
        let Some(pgid) = self.group() else {
            self.forget();
            return Outcome::NotRunning;
        };
        kill_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_millis(limit_ms);
        if self.wait_group(pgid, deadline).await {
            self.forget();
            return Outcome::NotRunning;
        }
        tracing::warn!(
            "exec {}: still running {limit_ms} ms after SIGTERM; sending SIGKILL",
            self.name()
        );
        kill_group(pgid, libc::SIGKILL);
        if self.wait_group(pgid, Instant::now() + KILL_WAIT).await {
            self.forget();
            return Outcome::NotRunning;
        }
        Outcome::Failed(format!(
            "exec {}: processes {:?} of group {pgid} survived SIGKILL",
            self.name(),
            procfs::group_members(pgid)
        ))
    }

    /// SIGKILL to the group at once, reaped (cleanup after a failed or timed-out start).
    pub async fn kill_now(&mut self) {
        if let Some(pgid) = self.group() {
            kill_group(pgid, libc::SIGKILL);
            self.wait_group(pgid, Instant::now() + KILL_WAIT).await;
        }
        self.forget();
    }

    /// The process group to signal: our child's, or the pid file's when its leader is our
    /// process or gone (a live process with another start time reused the PID: not ours).
    fn group(&self) -> Option<i32> {
        if let Some(child) = &self.child {
            return i32::try_from(child.id()).ok();
        }
        let (pid, start) = read_pid_file(&self.pid_file)?;
        match procfs::stat(pid) {
            Some(found) if found.start != start && !matches!(found.state, 'Z' | 'X') => None,
            _ => Some(pid),
        }
    }

    /// Waits until no living process is left in `pgid` (reaping our child); false at `deadline`.
    async fn wait_group(&mut self, pgid: i32, deadline: Instant) -> bool {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                }
            }
            if procfs::group_members(pgid).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops every trace of the process (reaping it if it is our exited child).
    fn forget(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.try_wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// `PID START\n`, written atomically.
fn write_pid_file(path: &Path, pid: i32, start: u64) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        super::ensure_dir(dir)?;
    }
    let temp = path.with_extension("pid.tmp");
    std::fs::write(&temp, format!("{pid} {start}\n"))
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|error| format!("cannot write pid file {}: {error}", path.display()))
}

fn read_pid_file(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid: i32 = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    (pid > 1).then_some((pid, start))
}

type SpawnJob = (Command, oneshot::Sender<io::Result<Child>>);

/// Forks `command` on the keeper thread, which lives as long as the process, so that
/// `PR_SET_PDEATHSIG` fires only when the process dies.
async fn spawn_on_keeper(command: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnJob>();
        let _ = std::thread::Builder::new()
            .name("tandem-spawner".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
            });
        Mutex::new(sender)
    });
    let (reply, answer) = oneshot::channel();
    let sent = match keeper.lock() {
        Ok(sender) => sender.send((command, reply)),
        Err(_) => return Err(io::Error::other("the spawner thread's lock is poisoned")),
    };
    if sent.is_err() {
        return Err(io::Error::other("the spawner thread is gone"));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the spawner thread dropped the request")))
}
