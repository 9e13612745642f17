//! The daemon's watchdog: a separate small process that fences this node when the daemon no
//! longer can (DESIGN.md §5.2: a node that loses its lease stops its groups and drops its IPs
//! within `lease_timeout`).
//!
//! Why: self-fencing is done by the daemon's own event loop. A daemon that is frozen (SIGSTOP,
//! a hung kernel call, a debugger) or killed cannot stop its services or remove its virtual
//! IPs, while the cluster, rightly, starts the group elsewhere once the failover timeout
//! passed. Pacemaker answers this with SBD and a watchdog that reboots the node; tandem cannot
//! reboot a test machine, so its watchdog does the part that matters:
//!
//! - the daemon pets it every 100 ms with what the node holds: its remaining lease and the
//!   virtual IPs of the groups it holds;
//! - when the pets stop (for at least 200 ms) while the node runs something, and the last
//!   lease they announced has run out (plus a 200 ms slack), the daemon is frozen: the watchdog kills it with SIGKILL (its exec services die with
//!   it through PDEATHSIG, its FUSE exports end) and removes the IPs;
//! - when the pipe closes without the daemon's goodbye, the daemon crashed: the watchdog
//!   removes the IPs it left behind (the kernel keeps them otherwise);
//! - after a goodbye (a clean stop, which stopped everything itself) it just exits.
//!
//! The decision is a pure function of the pets and the time ([`Watch`]); the process part is
//! thin. The protocol is one text line per message on the watchdog's standard input:
//! `pet <lease_ms> <holding 0|1> <cidr,cidr,...|->` or `bye`.

use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the daemon pets.
pub const PET_INTERVAL: Duration = Duration::from_millis(100);
use tandem_core::timing::{
    WATCHDOG_POLL_MS, WATCHDOG_SILENT_MIN_MS as SILENT_MIN_MS,
    WATCHDOG_SILENT_WITHOUT_LEASE_MS as SILENT_WITHOUT_LEASE_MS, WATCHDOG_SLACK_MS as SLACK_MS,
};

/// How often the watchdog looks at the time when no pet arrives.
const POLL: Duration = Duration::from_millis(WATCHDOG_POLL_MS);

/// One pet: what the node holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pet {
    /// The node lease left, in ms (0: none).
    pub lease_ms: u64,
    /// Whether the agent may have resources of some group running here.
    pub holding: bool,
    /// The virtual IPs (CIDR) of those groups.
    pub addresses: Vec<String>,
}

/// A line from the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Pet(Pet),
    Bye,
}

/// A line the watchdog could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("watchdog: cannot read {line:?} from the daemon: {reason}")]
pub struct BadLine {
    pub line: String,
    pub reason: String,
}

impl Pet {
    /// The line that carries this pet.
    pub fn encode(&self) -> String {
        let addresses = if self.addresses.is_empty() {
            "-".to_string()
        } else {
            self.addresses.join(",")
        };
        format!(
            "pet {} {} {addresses}\n",
            self.lease_ms,
            u8::from(self.holding)
        )
    }
}

/// Reads one line of the protocol.
pub fn parse_line(line: &str) -> Result<Message, BadLine> {
    let bad = |reason: &str| BadLine {
        line: line.to_string(),
        reason: reason.to_string(),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["bye"] => Ok(Message::Bye),
        ["pet", lease, holding, addresses] => {
            let lease_ms = lease
                .parse()
                .map_err(|_| bad("the lease is not a number"))?;
            let holding = match *holding {
                "0" => false,
                "1" => true,
                _ => return Err(bad("holding must be 0 or 1")),
            };
            let addresses = match *addresses {
                "-" => Vec::new(),
                list => list.split(',').map(str::to_string).collect(),
            };
            Ok(Message::Pet(Pet {
                lease_ms,
                holding,
                addresses,
            }))
        }
        _ => Err(bad("expected `pet LEASE_MS 0|1 CIDRS|-` or `bye`")),
    }
}

/// What the watchdog must do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: the daemon is alive, or holds nothing.
    Wait,
    /// The daemon stopped cleanly: exit.
    Done,
    /// The daemon died without its goodbye: remove these IPs, then exit.
    Crashed { addresses: Vec<String> },
    /// The daemon is frozen while holding resources: kill it, remove these IPs, exit.
    Frozen {
        silent_ms: u64,
        addresses: Vec<String>,
    },
}

/// The watchdog's view of the daemon, fed with pets and the time (ms, monotonic).
#[derive(Debug, Default)]
pub struct Watch {
    last_pet_at: Option<u64>,
    last: Pet,
    /// When the last lease announced ran (or runs) out.
    lease_end: Option<u64>,
    bye: bool,
}

impl Watch {
    pub fn heard(&mut self, now: u64, message: Message) {
        match message {
            Message::Pet(pet) => {
                self.last_pet_at = Some(now);
                if pet.lease_ms > 0 {
                    self.lease_end = Some(now + pet.lease_ms);
                }
                self.last = pet;
            }
            Message::Bye => self.bye = true,
        }
    }

    /// The verdict at `now`; `closed` when the daemon's end of the pipe is gone.
    pub fn verdict(&self, now: u64, closed: bool) -> Verdict {
        if self.bye {
            return Verdict::Done;
        }
        if closed {
            return Verdict::Crashed {
                addresses: self.last.addresses.clone(),
            };
        }
        let Some(at) = self.last_pet_at else {
            return Verdict::Wait;
        };
        if !self.last.holding {
            return Verdict::Wait;
        }
        // A daemon that lost its lease has until `failover_timeout - lease_timeout` after
        // the lapse to stop everything; a frozen one is fenced soon after the lapse.
        let limit = match self.lease_end {
            Some(end) => (end + SLACK_MS).max(at + SILENT_MIN_MS),
            None => at + SILENT_WITHOUT_LEASE_MS,
        };
        if now <= limit {
            return Verdict::Wait;
        }
        let silent_ms = now.saturating_sub(at);
        Verdict::Frozen {
            silent_ms,
            addresses: self.last.addresses.clone(),
        }
    }
}

/// `tandem watchdog --daemon-pid PID`: watches the daemon that started it (hidden command).
pub fn run(daemon_pid: i32) -> ExitCode {
    let (lines, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let now = || started.elapsed().as_millis() as u64;
    let mut watch = Watch::default();
    loop {
        let closed = match heard.recv_timeout(POLL) {
            Ok(line) => {
                match parse_line(&line) {
                    Ok(message) => watch.heard(now(), message),
                    Err(error) => eprintln!("{error}"),
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        match watch.verdict(now(), closed) {
            Verdict::Wait => continue,
            Verdict::Done => return ExitCode::SUCCESS,
            Verdict::Crashed { addresses } => {
                fence_addresses("the daemon died without stopping", &addresses);
                return ExitCode::SUCCESS;
            }
            Verdict::Frozen {
                silent_ms,
                addresses,
            } => {
                fence_frozen(daemon_pid, silent_ms, &addresses);
                return ExitCode::SUCCESS;
            }
        }
    }
}

fn fence_frozen(daemon_pid: i32, silent_ms: u64, addresses: &[String]) {
    eprintln!(
        "watchdog: the daemon (pid {daemon_pid}) sent nothing for {silent_ms} ms while its \
         lease ran out and it held resources: killing it (SIGKILL; its services die with it)"
    );
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(daemon_pid, libc::SIGKILL) } != 0 {
        eprintln!(
            "watchdog: kill {daemon_pid}: {}",
            io::Error::last_os_error()
        );
    }
    fence_addresses("the daemon was frozen", addresses);
}

/// Removes each virtual IP from whichever interface holds it.
fn fence_addresses(why: &str, addresses: &[String]) {
    for cidr in addresses {
        let Some(interface) = interface_holding(cidr) else {
            continue;
        };
        let removed = Command::new("ip")
            .args(["addr", "del", cidr, "dev", &interface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match removed {
            Ok(status) if status.success() => {
                eprintln!("watchdog: {why}: removed {cidr} from {interface}")
            }
            Ok(status) => eprintln!("watchdog: ip addr del {cidr} dev {interface}: {status}"),
            Err(error) => eprintln!("watchdog: cannot run ip: {error}"),
        }
    }
}

/// The interface that has `cidr`'s address, from `ip -o addr show`.
fn interface_holding(cidr: &str) -> Option<String> {
    let address = cidr.split('/').next()?;
    let output = Command::new("ip")
        .args(["-o", "addr", "show"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().find_map(|line| {
        // "2: eth0    inet 10.0.0.5/24 brd ... scope global eth0"
        let words: Vec<&str> = line.split_whitespace().collect();
        let held = words.windows(2).any(|pair| {
            matches!(pair[0], "inet" | "inet6") && pair[1].split('/').next() == Some(address)
        });
        held.then(|| {
            words
                .get(1)
                .map(|name| name.trim_end_matches(':').to_string())
        })
        .flatten()
    })
}

/// The daemon's end: starts the watchdog and pets it.
pub struct WatchdogLink {
    child: Child,
    stdin: Option<ChildStdin>,
    last_pet: Option<Instant>,
}

impl WatchdogLink {
    /// Starts `tandem watchdog` (this same binary) for this process.
    pub fn start() -> io::Result<WatchdogLink> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["watchdog", "--daemon-pid", &std::process::id().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the watchdog has no standard input"))?;
        set_nonblocking(&stdin)?;
        Ok(WatchdogLink {
            child,
            stdin: Some(stdin),
            last_pet: None,
        })
    }

    /// Sends `pet` if a pet interval passed. `Err` when the watchdog is gone.
    pub fn pet(&mut self, pet: &Pet) -> io::Result<()> {
        let now = Instant::now();
        if self
            .last_pet
            .is_some_and(|last| now.duration_since(last) < PET_INTERVAL)
        {
            return Ok(());
        }
        self.last_pet = Some(now);
        self.send(&pet.encode())
    }

    /// The clean stop: the watchdog exits without fencing anything.
    pub fn bye(mut self) {
        let _ = self.send("bye\n");
        self.stdin = None;
        let _ = self.child.wait();
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("the watchdog's input is closed"))?;
        match stdin.write_all(line.as_bytes()) {
            // A full pipe means the watchdog is slow to read; the next pet will do.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

impl Drop for WatchdogLink {
    /// Reaps a watchdog that already exited (one that did not keeps running on its own: it
    /// sees the pipe close and acts on it).
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.try_wait();
    }
}

fn set_nonblocking(stdin: &ChildStdin) -> io::Result<()> {
    let fd = stdin.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pet(lease_ms: u64, holding: bool, addresses: &[&str]) -> Message {
        Message::Pet(Pet {
            lease_ms,
            holding,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        })
    }

    #[test]
    fn pets_round_trip_and_bad_lines_are_named() {
        let sent = Pet {
            lease_ms: 870,
            holding: true,
            addresses: vec!["10.0.0.5/24".into(), "10.0.1.5/24".into()],
        };
        assert_eq!(parse_line(&sent.encode()), Ok(Message::Pet(sent)));
        assert_eq!(parse_line("pet 0 0 -"), Ok(pet(0, false, &[])));
        assert_eq!(parse_line("bye\n"), Ok(Message::Bye));
        let error = parse_line("pet soon 1 -").expect_err("not a number");
        assert!(
            error.to_string().contains("the lease is not a number"),
            "{error}"
        );
        assert!(parse_line("pet 1 2 -").is_err());
        assert!(parse_line("hello").is_err());
    }

    #[test]
    fn a_live_daemon_or_one_holding_nothing_is_left_alone() {
        let mut watch = Watch::default();
        assert_eq!(watch.verdict(0, false), Verdict::Wait, "no pet yet");
        watch.heard(0, pet(900, true, &["10.0.0.5/24"]));
        for now in (100..=1000).step_by(100) {
            watch.heard(now, pet(900, true, &["10.0.0.5/24"]));
            assert_eq!(watch.verdict(now + 50, false), Verdict::Wait);
        }
        let mut idle = Watch::default();
        idle.heard(0, pet(0, false, &[]));
        assert_eq!(idle.verdict(60_000, false), Verdict::Wait, "holds nothing");
    }

    #[test]
    fn silence_past_the_announced_lease_while_holding_is_a_frozen_daemon() {
        let mut watch = Watch::default();
        watch.heard(1000, pet(800, true, &["10.0.0.5/24"]));
        assert_eq!(watch.verdict(1000 + 800 + SLACK_MS, false), Verdict::Wait);
        assert_eq!(
            watch.verdict(1000 + 800 + SLACK_MS + 1, false),
            Verdict::Frozen {
                silent_ms: 800 + SLACK_MS + 1,
                addresses: vec!["10.0.0.5/24".into()],
            }
        );
        let mut never_leased = Watch::default();
        never_leased.heard(0, pet(0, true, &[]));
        assert_eq!(
            never_leased.verdict(SILENT_WITHOUT_LEASE_MS, false),
            Verdict::Wait
        );
        assert!(matches!(
            never_leased.verdict(SILENT_WITHOUT_LEASE_MS + 1, false),
            Verdict::Frozen { .. }
        ));
    }

    #[test]
    fn a_daemon_frozen_after_its_lease_lapsed_is_fenced_soon_after_it_goes_silent() {
        let mut watch = Watch::default();
        watch.heard(0, pet(900, true, &["10.0.0.5/24"]));
        // The lease lapsed at 900; the daemon is stopping its groups and still pets.
        for now in (1000..=1300).step_by(100) {
            watch.heard(now, pet(0, true, &["10.0.0.5/24"]));
            assert_eq!(
                watch.verdict(now + 50, false),
                Verdict::Wait,
                "alive at {now}"
            );
        }
        // Frozen after the pet at 1300: fenced once silent for SILENT_MIN_MS, not a second.
        assert_eq!(watch.verdict(1300 + SILENT_MIN_MS, false), Verdict::Wait);
        assert!(matches!(
            watch.verdict(1300 + SILENT_MIN_MS + 1, false),
            Verdict::Frozen { .. }
        ));
    }

    #[test]
    fn a_closed_pipe_without_goodbye_is_a_crash_and_with_it_a_clean_stop() {
        let mut watch = Watch::default();
        watch.heard(0, pet(900, true, &["10.0.0.5/24"]));
        assert_eq!(
            watch.verdict(10, true),
            Verdict::Crashed {
                addresses: vec!["10.0.0.5/24".into()]
            }
        );
        watch.heard(20, Message::Bye);
        assert_eq!(watch.verdict(30, true), Verdict::Done);
    }
}
