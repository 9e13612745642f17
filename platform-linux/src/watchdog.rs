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
//! - the daemon pets it every 100 ms with what the node holds: its lease (measured on the
//!   system's monotonic clock, which both processes share, so the pipe's delay does not move
//!   it), whether any resource may still run here, and the virtual IPs and systemd units of
//!   the groups it holds;
//! - when the pets stop (for at least 200 ms) while the node runs something, and the last
//!   lease they announced has run out (plus a 200 ms slack), the daemon is frozen;
//! - when the daemon still pets but still holds running resources past the escalation delay
//!   it announced (450 ms after its lease ran out by default), a stop failed or hangs (issue
//!   #5: Pacemaker fences a node whose stop failed): the same fence, over before any other
//!   node may take over (`core::timing::watchdog_escalate_ms` has the arithmetic);
//! - the fence: SIGKILL of the daemon (its exec services die with it through PDEATHSIG, its
//!   FUSE exports end), `systemctl kill --signal=SIGKILL` of its systemd units (not its
//!   children), and removal of its IPs. Services an OCF agent daemonized are not the daemon's
//!   children and have no name the watchdog knows: they are left running;
//! - when the pipe closes without the daemon's goodbye, the daemon crashed: the watchdog
//!   removes the IPs it left behind (the kernel keeps them otherwise);
//! - after a goodbye (a clean stop, which stopped everything itself) it just exits.
//!
//! The decision is a pure function of the pets and the time ([`Watch`]); the process part is
//! thin. The protocol is one text line per message on the watchdog's standard input:
//! `pet <at_ms> <lease_ms> <escalate_ms> <holding 0|1> <cidr,cidr,...|-> <unit,unit,...|->` or
//! `bye`, where `at_ms` is `CLOCK_MONOTONIC` in ms when the daemon measured `lease_ms`.

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
    /// [`monotonic_ms`] when `lease_ms` was measured.
    pub at_ms: u64,
    /// The node lease left at `at_ms`, in ms (0: none).
    pub lease_ms: u64,
    /// Fence a daemon still holding resources this long after its lease ran out
    /// (`core::timing::watchdog_escalate_ms` of the daemon's timing; never below the slack).
    pub escalate_ms: u64,
    /// Whether the agent may have resources of some group running here.
    pub holding: bool,
    /// The virtual IPs (CIDR) of those groups.
    pub addresses: Vec<String>,
    /// The systemd units of those groups (not the daemon's children: killed by name).
    pub units: Vec<String>,
}

/// The system's monotonic clock in ms (`CLOCK_MONOTONIC`, the clock of `Instant`), the same in
/// the daemon and its watchdog.
pub fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1000 + (now.tv_nsec as u64) / 1_000_000
}

/// `a,b,c`, or `-` for none.
fn join_list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

fn split_list(word: &str) -> Vec<String> {
    match word {
        "-" => Vec::new(),
        list => list.split(',').map(str::to_string).collect(),
    }
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
        format!(
            "pet {} {} {} {} {} {}\n",
            self.at_ms,
            self.lease_ms,
            self.escalate_ms,
            u8::from(self.holding),
            join_list(&self.addresses),
            join_list(&self.units)
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
        ["pet", at, lease, escalate, holding, addresses, units] => {
            let at_ms = at.parse().map_err(|_| bad("the time is not a number"))?;
            let lease_ms = lease
                .parse()
                .map_err(|_| bad("the lease is not a number"))?;
            let escalate_ms = escalate
                .parse()
                .map_err(|_| bad("the escalation delay is not a number"))?;
            let holding = match *holding {
                "0" => false,
                "1" => true,
                _ => return Err(bad("holding must be 0 or 1")),
            };
            Ok(Message::Pet(Pet {
                at_ms,
                lease_ms,
                escalate_ms,
                holding,
                addresses: split_list(addresses),
                units: split_list(units),
            }))
        }
        _ => Err(bad(
            "expected `pet AT_MS LEASE_MS ESCALATE_MS 0|1 CIDRS|- UNITS|-` or `bye`",
        )),
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
    /// The daemon must be fenced: kill it and the units, remove the IPs, exit.
    Fence(Fence),
}

/// Why and what the watchdog fences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub why: FenceWhy,
    pub addresses: Vec<String>,
    pub units: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceWhy {
    /// Silent this long while holding resources, past its lease.
    Frozen { silent_ms: u64 },
    /// Still petting, but still holding resources this long after its lease ran out (a stop
    /// failed or hangs).
    StillHolding { past_lease_ms: u64 },
}

/// The watchdog's view of the daemon, fed with pets and the time (ms on [`monotonic_ms`]).
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
                    self.lease_end = Some(pet.at_ms + pet.lease_ms);
                } else if let Some(end) = self.lease_end.as_mut() {
                    // Gone before its announced end (a leader that stepped down, a removed
                    // node): it ended by this pet at the latest.
                    *end = (*end).min(pet.at_ms);
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
        // A daemon that lost its lease has until `failover_timeout - lease_timeout` after the
        // lapse to stop everything: a frozen one is fenced soon after the lapse, a live one
        // that still holds resources a little later (core::timing::watchdog_escalate_ms).
        let escalate_ms = self.last.escalate_ms.max(SLACK_MS);
        let (frozen_at, escalate_at) = match self.lease_end {
            Some(end) => (
                (end + SLACK_MS).max(at + SILENT_MIN_MS),
                Some(end + escalate_ms),
            ),
            None => (at + SILENT_WITHOUT_LEASE_MS, None),
        };
        let why = if now > frozen_at {
            FenceWhy::Frozen {
                silent_ms: now.saturating_sub(at),
            }
        } else if let Some(limit) = escalate_at.filter(|&limit| now > limit) {
            FenceWhy::StillHolding {
                past_lease_ms: now - (limit - escalate_ms),
            }
        } else {
            return Verdict::Wait;
        };
        Verdict::Fence(Fence {
            why,
            addresses: self.last.addresses.clone(),
            units: self.last.units.clone(),
        })
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
    let now = monotonic_ms;
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
            Verdict::Fence(fence) => {
                fence_node(daemon_pid, &fence);
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// Kills the daemon (its exec services die with it), then its systemd units, then removes
/// its IPs.
fn fence_node(daemon_pid: i32, fence: &Fence) {
    let why = match fence.why {
        FenceWhy::Frozen { silent_ms } => format!(
            "the daemon (pid {daemon_pid}) sent nothing for {silent_ms} ms while its lease ran \
             out and it held resources"
        ),
        FenceWhy::StillHolding { past_lease_ms } => format!(
            "the daemon (pid {daemon_pid}) still holds running resources {past_lease_ms} ms \
             after its lease ran out (a stop failed or hangs)"
        ),
    };
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    eprintln!(
        "watchdog: fencing at unix ms {unix_ms}: {why}: killing it (SIGKILL; its services die \
         with it)"
    );
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(daemon_pid, libc::SIGKILL) } != 0 {
        eprintln!(
            "watchdog: kill {daemon_pid}: {}",
            io::Error::last_os_error()
        );
    }
    for unit in &fence.units {
        let killed = Command::new("systemctl")
            .args(["kill", "--signal=SIGKILL", "--", unit])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match killed {
            Ok(status) if status.success() => eprintln!("watchdog: killed unit {unit}"),
            Ok(status) => eprintln!("watchdog: systemctl kill {unit}: {status}"),
            Err(error) => eprintln!("watchdog: cannot run systemctl: {error}"),
        }
    }
    let short = match fence.why {
        FenceWhy::Frozen { .. } => "the daemon was frozen",
        FenceWhy::StillHolding { .. } => "the daemon's stop hung past its lease",
    };
    fence_addresses(short, &fence.addresses);
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
    /// When the last pet was sent, and whether it said the node holds resources.
    last_pet: Option<(Instant, bool)>,
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

    /// Sends `pet` if a pet interval passed, or at once when whether the node holds anything
    /// changed (a node that finished stopping must not wait a pet interval to say so: the
    /// escalation deadline is near). `Err` when the watchdog is gone.
    pub fn pet(&mut self, pet: &Pet) -> io::Result<()> {
        let now = Instant::now();
        if self.last_pet.is_some_and(|(last, holding)| {
            now.duration_since(last) < PET_INTERVAL && holding == pet.holding
        }) {
            return Ok(());
        }
        self.last_pet = Some((now, pet.holding));
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
    use tandem_core::timing::{
        self_fence_budget_ms, watchdog_escalate_ms, Timing, WATCHDOG_FENCE_MS, WATCHDOG_POLL_MS,
    };

    /// The default escalation delay (450 ms).
    const ESCALATE_MS: u64 = 450;

    /// A pet sent at `at` (the watchdog hears it at once unless a test says otherwise).
    fn pet(at_ms: u64, lease_ms: u64, holding: bool, addresses: &[&str]) -> Message {
        Message::Pet(Pet {
            at_ms,
            lease_ms,
            escalate_ms: ESCALATE_MS,
            holding,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            units: Vec::new(),
        })
    }

    fn fenced(verdict: Verdict) -> Option<FenceWhy> {
        match verdict {
            Verdict::Fence(fence) => Some(fence.why),
            _ => None,
        }
    }

    #[test]
    fn pets_round_trip_and_bad_lines_are_named() {
        assert_eq!(watchdog_escalate_ms(&Timing::default()), ESCALATE_MS);
        let sent = Pet {
            at_ms: 123_456,
            lease_ms: 870,
            escalate_ms: 450,
            holding: true,
            addresses: vec!["10.0.0.5/24".into(), "10.0.1.5/24".into()],
            units: vec!["web.service".into()],
        };
        assert_eq!(parse_line(&sent.encode()), Ok(Message::Pet(sent)));
        assert_eq!(parse_line("pet 5 0 450 0 - -"), Ok(pet(5, 0, false, &[])));
        assert_eq!(parse_line("bye\n"), Ok(Message::Bye));
        let error = parse_line("pet 5 soon 450 1 - -").expect_err("not a number");
        assert!(
            error.to_string().contains("the lease is not a number"),
            "{error}"
        );
        assert!(parse_line("pet x 1 450 1 - -").is_err());
        assert!(parse_line("pet 5 1 x 1 - -").is_err());
        assert!(parse_line("pet 5 1 450 2 - -").is_err());
        assert!(
            parse_line("pet 900 1 -").is_err(),
            "the old line is refused"
        );
        assert!(parse_line("hello").is_err());
    }

    #[test]
    fn a_live_daemon_or_one_holding_nothing_is_left_alone() {
        let mut watch = Watch::default();
        assert_eq!(watch.verdict(0, false), Verdict::Wait, "no pet yet");
        watch.heard(0, pet(0, 900, true, &["10.0.0.5/24"]));
        for now in (100..=1000).step_by(100) {
            watch.heard(now, pet(now, 900, true, &["10.0.0.5/24"]));
            assert_eq!(watch.verdict(now + 50, false), Verdict::Wait);
        }
        let mut idle = Watch::default();
        idle.heard(0, pet(0, 0, false, &[]));
        assert_eq!(idle.verdict(60_000, false), Verdict::Wait, "holds nothing");
        // A daemon that lost its lease and stopped everything in time is left alone.
        let mut stopped = Watch::default();
        stopped.heard(0, pet(0, 500, true, &["10.0.0.5/24"]));
        for now in (100..=5000).step_by(100) {
            let holding = now < 500 + ESCALATE_MS;
            stopped.heard(now, pet(now, 500u64.saturating_sub(now), holding, &[]));
            assert_eq!(stopped.verdict(now + 50, false), Verdict::Wait, "at {now}");
        }
    }

    #[test]
    fn silence_past_the_announced_lease_while_holding_is_a_frozen_daemon() {
        let mut watch = Watch::default();
        watch.heard(1000, pet(1000, 800, true, &["10.0.0.5/24"]));
        assert_eq!(watch.verdict(1000 + 800 + SLACK_MS, false), Verdict::Wait);
        assert_eq!(
            watch.verdict(1000 + 800 + SLACK_MS + 1, false),
            Verdict::Fence(Fence {
                why: FenceWhy::Frozen {
                    silent_ms: 800 + SLACK_MS + 1
                },
                addresses: vec!["10.0.0.5/24".into()],
                units: Vec::new(),
            })
        );
        let mut never_leased = Watch::default();
        never_leased.heard(0, pet(0, 0, true, &[]));
        assert_eq!(
            never_leased.verdict(SILENT_WITHOUT_LEASE_MS, false),
            Verdict::Wait
        );
        assert!(matches!(
            fenced(never_leased.verdict(SILENT_WITHOUT_LEASE_MS + 1, false)),
            Some(FenceWhy::Frozen { .. })
        ));
    }

    #[test]
    fn the_lease_end_is_the_daemons_not_when_the_pet_arrived() {
        // Measured at 1000 with 800 left, delivered 150 ms late: the lease ends at 1800.
        let mut watch = Watch::default();
        watch.heard(1150, pet(1000, 800, true, &[]));
        assert_eq!(watch.verdict(1800 + SLACK_MS, false), Verdict::Wait);
        assert!(fenced(watch.verdict(1800 + SLACK_MS + 1, false)).is_some());
    }

    #[test]
    fn a_daemon_frozen_after_its_lease_lapsed_is_fenced_soon_after_it_goes_silent() {
        let mut watch = Watch::default();
        watch.heard(0, pet(0, 900, true, &["10.0.0.5/24"]));
        // The lease lapsed at 900; the daemon is stopping its groups and still pets.
        for now in [910, 950] {
            watch.heard(now, pet(now, 0, true, &["10.0.0.5/24"]));
            assert_eq!(
                watch.verdict(now + 50, false),
                Verdict::Wait,
                "alive at {now}"
            );
        }
        // Frozen after the pet at 950: fenced once silent for SILENT_MIN_MS, not a second
        // (and before the escalation deadline at 900 + ESCALATE_MS).
        assert_eq!(watch.verdict(950 + SILENT_MIN_MS, false), Verdict::Wait);
        assert_eq!(
            fenced(watch.verdict(950 + SILENT_MIN_MS + 1, false)),
            Some(FenceWhy::Frozen {
                silent_ms: SILENT_MIN_MS + 1
            })
        );
        // Frozen later, at 1300: the escalation deadline comes first.
        let mut late = Watch::default();
        late.heard(0, pet(0, 900, true, &[]));
        late.heard(1300, pet(1300, 0, true, &[]));
        assert_eq!(late.verdict(900 + ESCALATE_MS, false), Verdict::Wait);
        assert!(matches!(
            fenced(late.verdict(900 + ESCALATE_MS + 1, false)),
            Some(FenceWhy::StillHolding { .. })
        ));
    }

    #[test]
    fn a_live_daemon_still_holding_past_its_lease_is_fenced_by_escalation() {
        let units = vec!["web.service".to_string()];
        let mut watch = Watch::default();
        watch.heard(0, pet(0, 900, true, &["10.0.0.5/24"]));
        // The lease lapsed at 900; a stop hangs, and the daemon keeps petting every 100 ms.
        let mut now = 1000;
        let verdict = loop {
            let still = Pet {
                at_ms: now,
                lease_ms: 0,
                escalate_ms: ESCALATE_MS,
                holding: true,
                addresses: vec!["10.0.0.5/24".into()],
                units: units.clone(),
            };
            watch.heard(now, Message::Pet(still));
            let verdict = watch.verdict(now, false);
            if verdict != Verdict::Wait {
                break verdict;
            }
            assert!(now <= 900 + ESCALATE_MS, "not fenced by {now}");
            now += WATCHDOG_POLL_MS;
        };
        assert!(now > 900 + ESCALATE_MS, "fenced early, at {now}");
        // Decided within one poll of the escalation deadline, and fenced (with the fence's own
        // budget) before the cluster may move the group.
        assert!(now <= 900 + ESCALATE_MS + WATCHDOG_POLL_MS);
        assert!(now + WATCHDOG_FENCE_MS < 900 + self_fence_budget_ms(&Timing::default()));
        assert_eq!(
            verdict,
            Verdict::Fence(Fence {
                why: FenceWhy::StillHolding {
                    past_lease_ms: now - 900
                },
                addresses: vec!["10.0.0.5/24".into()],
                units,
            })
        );
    }

    #[test]
    fn a_lease_gone_before_its_announced_end_counts_from_the_pet_that_said_so() {
        // Announced 900 ms at 0, then at 200 the daemon says it has none (it stepped down).
        let mut watch = Watch::default();
        watch.heard(0, pet(0, 900, true, &[]));
        watch.heard(200, pet(200, 0, true, &[]));
        for now in (300..=600).step_by(100) {
            watch.heard(now, pet(now, 0, true, &[]));
        }
        assert_eq!(watch.verdict(200 + ESCALATE_MS, false), Verdict::Wait);
        assert!(matches!(
            fenced(watch.verdict(200 + ESCALATE_MS + 1, false)),
            Some(FenceWhy::StillHolding { .. })
        ));
    }

    #[test]
    fn a_closed_pipe_without_goodbye_is_a_crash_and_with_it_a_clean_stop() {
        let mut watch = Watch::default();
        watch.heard(0, pet(0, 900, true, &["10.0.0.5/24"]));
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
