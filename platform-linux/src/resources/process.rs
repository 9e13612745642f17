//! Running helper programs (agents, `systemctl`, `losetup`, `mount`, health commands) with a
//! deadline, each in its own process group, so a timeout kills everything the program started.
//!
//! Output goes either to a pipe (short-lived tools whose stdout we parse) or appended to the
//! resource's log file. Agents must write to the log, not a pipe: an agent that starts a daemon
//! may leave it holding the agent's stdout, and reading a pipe to its end would then wait for
//! the daemon to exit.

use std::io;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a program ended, with what it printed.
#[derive(Debug)]
pub(crate) struct Ran {
    pub status: ExitStatus,
    /// Stdout when it was piped; empty when it went to the log.
    pub stdout: String,
    /// The last lines it wrote (stderr when piped, the log's new lines otherwise).
    pub tail: String,
}

impl Ran {
    /// The exit code, or `None` when a signal ended it.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// "exit code 3" / "killed by signal 9", plus the tail, for messages.
    pub fn describe(&self) -> String {
        let mut text = describe_status(self.status);
        if !self.tail.is_empty() {
            text.push_str(&format!("; output: {}", self.tail));
        }
        text
    }
}

/// "exit code N" or "killed by signal N".
pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "an unknown status".to_string(),
    }
}

/// Where a program's output goes.
pub(crate) enum Capture<'a> {
    /// Pipes: stdout is returned, stderr's last lines become the tail.
    Pipe,
    /// Appended to this log file; its new lines become the tail.
    Log(&'a Path),
}

/// Kills a process group when dropped, unless disarmed (the group ended on its own).
pub(crate) struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl GroupGuard {
    pub fn new(pgid: i32) -> GroupGuard {
        GroupGuard { pgid, armed: true }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed && self.pgid > 1 {
            kill_group(self.pgid, libc::SIGKILL);
        }
    }
}

/// Sends `signal` to process group `pgid` (never to group 0 or 1, which would hit ourselves
/// or everything).
pub(crate) fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative PID (a process group we created) and a signal number.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Makes the child a session and process-group leader (so its group can be killed as one), and
/// with `die_with_parent`, asks the kernel to SIGKILL it when the spawning thread's process
/// dies (`PR_SET_PDEATHSIG`).
pub(crate) fn own_group(command: &mut std::process::Command, die_with_parent: bool) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (setsid, prctl, getppid, raise); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::raise(libc::SIGKILL);
                }
            }
            Ok(())
        });
    }
}

/// Opens `log` for appending (creating it and its directory) and returns it with its length.
pub(crate) fn open_log(log: &Path) -> Result<(std::fs::File, u64), String> {
    if let Some(dir) = log.parent() {
        super::ensure_dir(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|error| format!("cannot open log {}: {error}", log.display()))?;
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    Ok((file, len))
}

/// The last `lines` non-empty lines of `log` written after byte `from`, joined with " | ".
pub(crate) fn log_tail(log: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        // Only the last 16 KiB matter.
        let start = from.max(len.saturating_sub(16 * 1024));
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    tail_lines(&text, lines)
}

/// The last `lines` non-empty lines of `text`, trimmed and joined with " | ".
pub(crate) fn tail_lines(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    kept[kept.len().saturating_sub(lines)..].join(" | ")
}

/// Runs `command` to completion within `limit`, in its own process group. On timeout the whole
/// group is killed and the error is "`what` timed out after N ms".
pub(crate) async fn run(
    command: std::process::Command,
    what: &str,
    capture: Capture<'_>,
    limit: Duration,
) -> Result<Ran, String> {
    let mut command = command;
    own_group(&mut command, true);
    command.stdin(Stdio::null());
    let log_start = match capture {
        Capture::Pipe => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
        Capture::Log(log) => {
            let (file, len) = open_log(log)?;
            let err = file
                .try_clone()
                .map_err(|error| format!("cannot use log {}: {error}", log.display()))?;
            command.stdout(file).stderr(err);
            Some((log, len))
        }
    };
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|error| format!("cannot run {what}: {error}"))?;
    let mut guard = GroupGuard::new(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0),
    );
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("{what}: waiting for it failed: {error}")),
        Err(_) => return Err(format!("{what} timed out after {} ms", limit.as_millis())),
    };
    guard.disarm();
    let tail = match log_start {
        Some((log, from)) => log_tail(log, from, 5),
        None => tail_lines(&String::from_utf8_lossy(&output.stderr), 5),
    };
    Ok(Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        tail,
    })
}

/// The blocking twin of [`run`] for synchronous callers (`Runner::new` reading an OCF agent's
/// meta-data): stdout piped, stderr discarded, the group killed after `limit`.
pub(crate) fn run_blocking(
    command: std::process::Command,
    what: &str,
    limit: Duration,
) -> Result<Ran, String> {
    let mut command = command;
    own_group(&mut command, true);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run {what}: {error}"))?;
    let mut guard = GroupGuard::new(i32::try_from(child.id()).unwrap_or(0));
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_end(&mut bytes);
        }
        bytes
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                drop(guard);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} timed out after {} ms", limit.as_millis()));
            }
            Err(error) => return Err(format!("{what}: waiting for it failed: {error}")),
        }
    };
    guard.disarm();
    let stdout = reader.join().unwrap_or_default();
    Ok(Ran {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        tail: String::new(),
    })
}
