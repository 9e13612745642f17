//! Tier-4 tests (root) of automatic failover, switchover and local restarts (issue #4): real
//! daemons, each node in its own network namespace (two data nodes `a`, `b` and a witness
//! `w`), a mirrored volume with a real ext4 on it through the FUSE image and a loop device, a
//! virtual IP, and a real service on top (`tandem counter-service`, OCF agents `Dummy` and
//! `nginx`). Clients run in the witness's namespace and reach the service through the virtual
//! IP only.
//!
//! The counter service labels its answers with the network namespace it runs in
//! (`--name "$(readlink /proc/self/ns/net)"`), so a test knows which node answered.
//!
//! Times are printed, never asserted (hang guards only), except one safety bound: the new
//! node becomes primary only after the old node's lease has surely lapsed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_linux::host_cleanup::loops_below;
use tandem_tests::failover_kit::{alive, unix_ms, Ev, Rig};
use tandem_tests::lab_cluster::count_in;
use tandem_tests::{cli, tandem_bin, text, wait_for, TestCluster};

/// The counter service's port (on the virtual IP).
const PORT: u16 = 8080;
/// The index of the counter service in the group `counter_app` creates.
const SERVICE: usize = 3;
/// Node lease timeout (the default): no node may become primary before the old one's lapsed.
const LEASE_TIMEOUT_MS: u64 = 1_000;
/// Hang guard for a resync.
const RESYNC_LIMIT: Duration = Duration::from_secs(90);

/// A group `volume, filesystem, ip, counter service` and where its clients find it.
struct App {
    group: &'static str,
    vip: Ipv4Addr,
    target: SocketAddrV4,
}

/// Volume `db` (64M, legs on a and b) and group `g` using it: ext4 made on first use, the
/// lab's first spare address as the virtual IP, the counter service on it with an HTTP health
/// check every second; prefers a, then b. Returns once the group is healthy on a and both
/// legs are UpToDate (the group's promotion on a starts the initial sync of b's leg).
fn counter_app(rig: &Rig) -> App {
    counter_app_with(rig, None, false)
}

/// [`counter_app`] with mount options for the filesystem; with `ignore_sigterm` the counter
/// service ignores SIGTERM (the signal an `exec` stop sends first), so its stop hangs until
/// the stop timeout (60 s).
fn counter_app_with(rig: &Rig, mount_options: Option<&str>, ignore_sigterm: bool) -> App {
    rig.create_volume("db", "64M");
    let vip = rig.cluster.lab.spare_address(0);
    let mount = rig.root().join("mnt-g");
    // An ignored signal stays ignored across exec.
    let trap = if ignore_sigterm {
        "trap \"\" TERM; "
    } else {
        ""
    };
    let exec = format!(
        "sh -c '{trap}exec {} counter-service --dir {} --listen {vip}:{PORT} \
         --name \"$(readlink /proc/self/ns/net)\"'",
        tandem_bin().display(),
        mount.display()
    );
    let filesystem = format!("db:{}:ext4", mount.display());
    let ip = format!("{vip}/24");
    let health = format!("http:http://{vip}:{PORT}/health");
    let mut args = vec![
        "group",
        "create",
        "g",
        "--prefer",
        "a,b",
        "--volume",
        "db",
        "--filesystem",
        &filesystem,
        "--mkfs",
    ];
    if let Some(options) = mount_options {
        args.extend(["--mount-options", options]);
    }
    args.extend([
        "--ip",
        &ip,
        "--exec",
        &exec,
        "--health",
        &health,
        "--monitor-interval",
        "1s",
    ]);
    rig.ok("a", &args);
    let clock = Instant::now();
    rig.wait_event("w", 0, "a", "g", "healthy");
    eprintln!("group g healthy on a {:?} after create", clock.elapsed());
    rig.wait_legs_up_to_date("w", "db", RESYNC_LIMIT);
    App {
        group: "g",
        vip,
        target: SocketAddrV4::new(vip, PORT),
    }
}

/// The first event of `node` about `group` of `kind` among `events`; panics listing them.
fn find<'a>(events: &'a [Ev], node: &str, group: &str, kind: &str) -> &'a Ev {
    events
        .iter()
        .find(|e| e.is(node, group, kind))
        .unwrap_or_else(|| {
            panic!(
                "no {kind} event of {node} for {group} in:\n{}",
                list(events)
            )
        })
}

fn list(events: &[Ev]) -> String {
    events.iter().map(|e| format!("  {e}\n")).collect()
}

/// The events with `seq >= since` as `w` sees them.
fn since(rig: &Rig, since: u64) -> Vec<Ev> {
    let events = rig.events("w").expect("the witness answers");
    events.into_iter().filter(|e| e.seq >= since).collect()
}

/// Waits until GET / through the virtual IP answers from `node`; returns the count.
fn counter_on(rig: &Rig, app: &App, node: &str) -> u64 {
    let host = format!("host={}", rig.netns_label(node));
    let start = Instant::now();
    loop {
        let answer = rig.call(app.target, "GET", "/");
        if let Some((200, body)) = &answer {
            if body.split_whitespace().any(|word| word == host) {
                return count_in(body).expect("a count in the answer");
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the counter service does not answer from {node} via {}; last answer {answer:?}",
            app.target
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills `pid` with SIGKILL (a process this test's cluster started).
fn kill_9(pid: i32) {
    // SAFETY: kill(2) on the PID of a service the test's daemon started, read from its pid
    // file and checked alive just before.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn kill_9_of_the_active_node_fails_over_with_ip_and_data() {
    let mut rig = Rig::form("fokill");
    let app = counter_app(&rig);
    let acked = rig.increments(app.target, 20);
    assert_eq!(acked, (1..=20).collect::<Vec<u64>>(), "acknowledged counts");
    assert_eq!(counter_on(&rig, &app, "a"), 20);

    let mark = rig.mark();
    let killed_at = unix_ms();
    let clock = Instant::now();
    rig.power_loss("a");
    let healthy = rig.wait_event("w", mark, "b", app.group, "healthy");
    let seen_healthy = clock.elapsed();
    let count = counter_on(&rig, &app, "b");
    let answered = clock.elapsed();
    assert_eq!(
        count,
        *acked.last().expect("acks"),
        "an acknowledged increment was lost in the failover"
    );
    assert!(rig.has_address("b", app.vip), "the VIP is not on b");

    let events = since(&rig, mark);
    let detected = events
        .iter()
        .find(|e| e.kind == "detected" && e.detail.contains("node a stopped answering"))
        .unwrap_or_else(|| panic!("no detected event for a in:\n{}", list(&events)));
    let fenced = events
        .iter()
        .find(|e| e.kind == "fenced" && e.group.as_deref() == Some(app.group))
        .unwrap_or_else(|| panic!("no fenced event in:\n{}", list(&events)));
    let decided = events
        .iter()
        .find(|e| e.kind == "decided" && e.group.as_deref() == Some(app.group))
        .unwrap_or_else(|| panic!("no decided event in:\n{}", list(&events)));
    let promoted = find(&events, "b", app.group, "promoted");
    let started = find(&events, "b", app.group, "started");
    let order = [detected, fenced, promoted, started, &healthy];
    assert!(
        order.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms)
            && decided.at_unix_ms <= promoted.at_unix_ms,
        "timeline out of order:\n{}",
        list(&events)
    );
    assert!(
        promoted.at_unix_ms >= killed_at + LEASE_TIMEOUT_MS,
        "b became primary {} ms after a was killed, before a's lease ({LEASE_TIMEOUT_MS} ms) \
         had surely lapsed:\n{}",
        promoted.at_unix_ms - killed_at,
        list(&events)
    );
    eprintln!("timeline after the kill:\n{}", list(&events));
    let after = |e: &Ev| e.at_unix_ms.saturating_sub(killed_at);
    eprintln!(
        "kill -9 of a -> detected {} ms, fenced {} ms, decided {} ms, promoted on b {} ms, \
         started {} ms, healthy {} ms (seen by the test after {seen_healthy:?}; the VIP \
         answered from b after {answered:?})",
        after(detected),
        after(fenced),
        after(decided),
        after(promoted),
        after(started),
        after(&healthy)
    );

    // a comes back (power restored): it rejoins as a secondary, its leg is resynced, and the
    // group stays on b (manual failback).
    rig.cluster.heal("a");
    rig.cluster.start("a");
    rig.cluster.wait_node_online("w", "a", true);
    let clock = Instant::now();
    let volume = rig.wait_legs_up_to_date("w", "db", RESYNC_LIMIT);
    eprintln!(
        "a back: both legs UpToDate {:?} after it rejoined",
        clock.elapsed()
    );
    assert_eq!(volume["primary"], "b", "{volume}");
    assert_eq!(rig.group("w", app.group)["node"], "b");
    assert!(!rig.has_address("a", app.vip), "the VIP came back on a");
    assert_eq!(counter_on(&rig, &app, "b"), 20);
}

/// Sets the flag when dropped (also when a test panics), so a load thread ends.
struct Raise<'a>(&'a AtomicBool);

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `POST /increment` from the witness until `stop` (at most two minutes); the acknowledged
/// counts in order.
fn increment_until(rig: &Rig, target: SocketAddrV4, stop: &AtomicBool) -> Vec<u64> {
    let start = Instant::now();
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
        match rig.call_quick(target, "POST", "/increment") {
            Some((200, body)) => acked.extend(count_in(&body)),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    acked
}

/// Cuts a (its daemon keeps running) while it runs the counter app, idle or under client
/// load: a must stop by itself (no lease) before b is promoted and starts; after the heal a's
/// events arrive, a rejoins as a secondary and is resynced.
fn partition_case(tag: &str, under_load: bool) {
    let rig = Rig::form(tag);
    // Idle means idle: no ext4 writes of its own in the background either (lazy inode table
    // init, atime updates), so nothing is in flight at the cut. The loaded case has writes in
    // flight at the cut by design.
    let options = (!under_load).then_some("noatime,noinit_itable");
    let app = counter_app_with(&rig, options, false);
    assert_eq!(rig.increments(app.target, 5), [1, 2, 3, 4, 5]);
    let counter_a = rig
        .service_pid("a", app.group, SERVICE)
        .expect("the counter service runs on a");
    let image_a = rig.dir("a").join("images");
    assert_eq!(loops_below(&image_a).len(), 1, "a's loop device");

    // Under load, clients keep incrementing through the VIP while a is cut off, so writes
    // are in flight at the cut, as on any busy service; they go on against b once it took
    // over.
    let mark = rig.mark();
    let stop = AtomicBool::new(false);
    let (healthy_b, acked) = std::thread::scope(|scope| {
        let _stop_load = Raise(&stop);
        let load = under_load.then(|| scope.spawn(|| increment_until(&rig, app.target, &stop)));
        if under_load {
            std::thread::sleep(Duration::from_millis(500));
        }
        let clock = Instant::now();
        rig.cluster.cut("a");
        // b is promoted only after a was fenced: a must have stopped its service and dropped
        // the VIP by itself by now (no lease). Its `stopped` event (every resource, the file
        // system too) is checked against b's events after the heal.
        rig.wait_event("w", mark, "b", app.group, "promoted");
        let promoted_after = clock.elapsed();
        let vip_on_a = rig.has_address("a", app.vip);
        let counter_alive = alive(counter_a);
        eprintln!(
            "partition of a (under load: {under_load}) -> b promoted after \
             {promoted_after:?}; then: VIP on a {vip_on_a}, a's counter alive \
             {counter_alive}, a's loop devices {:?}",
            loops_below(&image_a)
        );
        assert!(!vip_on_a, "a still holds the VIP once b is promoted");
        assert!(
            !counter_alive,
            "a's counter service (pid {counter_a}) still runs once b is promoted"
        );
        let healthy_b = rig.wait_event("w", mark, "b", app.group, "healthy");
        eprintln!("-> healthy on b after {:?}", clock.elapsed());
        // A few increments against b, then the load stops.
        if under_load {
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::Relaxed);
        let acked = load.map(|load| load.join().expect("the load thread"));
        (healthy_b, acked.unwrap_or_default())
    });
    assert!(rig.has_address("b", app.vip), "the VIP is not on b");
    assert!(
        acked.windows(2).all(|pair| pair[0] < pair[1]),
        "an acknowledged count was given out twice (an acknowledged increment was lost): \
         {acked:?}"
    );
    let last = acked.last().copied().unwrap_or(5);
    let count = counter_on(&rig, &app, "b");
    eprintln!(
        "{} increments acknowledged during the partition, the last {last}; b counts {count}",
        acked.len()
    );
    // At most the one increment in flight at the cut was made durable without an answer.
    assert!(
        count == last || (under_load && count == last + 1),
        "b counts {count}, the last acknowledged count was {last}"
    );

    rig.cluster.heal("a");
    let self_fenced = rig.wait_event_where("w", "a's self-fenced event", |e| {
        e.seq >= mark && e.node == "a" && e.kind == "self-fenced"
    });
    let stopped_a = rig.wait_event("w", mark, "a", app.group, "stopped");
    let events = since(&rig, mark);
    let promoted_b = find(&events, "b", app.group, "promoted");
    let started_b = find(&events, "b", app.group, "started");
    assert!(
        self_fenced.at_unix_ms <= stopped_a.at_unix_ms
            && stopped_a.at_unix_ms < promoted_b.at_unix_ms
            && promoted_b.at_unix_ms <= started_b.at_unix_ms
            && started_b.at_unix_ms <= healthy_b.at_unix_ms,
        "a must stop before b starts:\n{}",
        list(&events)
    );
    if let Some(demoted_a) = events.iter().find(|e| e.is("a", app.group, "demoted")) {
        assert!(
            demoted_a.at_unix_ms < promoted_b.at_unix_ms,
            "a stopped writing after b was promoted:\n{}",
            list(&events)
        );
    }
    eprintln!(
        "a stopped {} ms before b was promoted; timeline:\n{}",
        promoted_b.at_unix_ms - stopped_a.at_unix_ms,
        list(&events)
    );
    assert!(rig.has_address("b", app.vip) && !rig.has_address("a", app.vip));

    // a rejoins as a secondary and is resynced; nothing of the group is left on a.
    let clock = Instant::now();
    let volume = rig.wait_legs_up_to_date("w", "db", RESYNC_LIMIT);
    eprintln!("after the heal both legs UpToDate in {:?}", clock.elapsed());
    assert_eq!(volume["primary"], "b", "{volume}");
    assert_eq!(rig.group("w", app.group)["node"], "b");
    assert_eq!(counter_on(&rig, &app, "b"), count);
    wait_for("a's loop device detached", Duration::from_secs(30), || {
        loops_below(&image_a).is_empty().then_some(())
    });
}

#[test]
fn partition_old_node_stops_before_new_node_starts() {
    partition_case("fopart", false);
}

/// The same under client load: writes in flight at the cut are held (waiting for the
/// unreachable peer leg to be committed Outdated, which a cannot commit); once a's lease is
/// gone they fail, so its service, its VIP and its file system still stop in time.
#[test]
fn partition_under_load_old_node_stops_before_new_node_starts() {
    partition_case("foload", true);
}

/// Kills the service of `group` (resource 0) on `node` three times: two local restarts with
/// a new PID each, then the third failure exceeds `--max-restarts 2` and the node is
/// quarantined.
fn exhaust_restarts(rig: &Rig, group: &str, node: &str) {
    for round in 1..=3 {
        let pid = wait_for(
            &format!("the service of {group} running on {node}"),
            Duration::from_secs(30),
            || rig.service_pid(node, group, 0),
        );
        let mark = rig.mark();
        kill_9(pid);
        if round < 3 {
            let restarting = rig.wait_event("w", mark, node, group, "restarting");
            rig.wait_event("w", mark, node, group, "healthy");
            let new = rig.service_pid(node, group, 0);
            assert!(
                new.is_some_and(|new| new != pid),
                "after restart {round} ({}) the service on {node} should run with a new PID, \
                 not {new:?} (killed {pid})",
                restarting.detail
            );
        } else {
            let failed = rig.wait_event("w", mark, node, group, "failed");
            assert!(
                failed.detail.contains("exceed max_restarts 2"),
                "{}",
                failed.detail
            );
        }
    }
}

fn quarantined(group: &Value) -> Vec<String> {
    let mut nodes: Vec<String> = group["quarantines"]
        .as_array()
        .map(|q| {
            q.iter()
                .filter_map(|entry| entry["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

#[test]
fn service_crash_restarts_locally_then_fails_over_then_quarantines() {
    let rig = Rig::form("forestart");
    let data = rig.root().join("svc-data");
    std::fs::create_dir_all(&data).expect("service data dir");
    let exec = format!(
        "{} counter-service --dir {} --listen 0.0.0.0:{PORT}",
        tandem_bin().display(),
        data.display()
    );
    let health = format!("tcp:{PORT}");
    rig.ok(
        "a",
        &[
            "group",
            "create",
            "svc",
            "--prefer",
            "a,b",
            "--max-restarts",
            "2",
            "--restart-window",
            "300",
            "--exec",
            &exec,
            "--health",
            &health,
            "--monitor-interval",
            "1s",
        ],
    );
    rig.wait_event("w", 0, "a", "svc", "healthy");

    let mark = rig.mark();
    exhaust_restarts(&rig, "svc", "a");
    rig.wait_event("w", mark, "b", "svc", "healthy");
    let shown = rig.group("w", "svc");
    assert_eq!(shown["node"], "b", "{shown}");
    assert_eq!(quarantined(&shown), ["a"], "{shown}");
    assert_eq!(
        rig.service_pid("a", "svc", 0),
        None,
        "the service still runs on a"
    );

    exhaust_restarts(&rig, "svc", "b");
    let shown = wait_for(
        "svc placed nowhere, quarantined on a and b",
        Duration::from_secs(30),
        || {
            let shown = rig.group("w", "svc");
            (shown["node"].is_null() && quarantined(&shown) == ["a", "b"]).then_some(shown)
        },
    );
    wait_for(
        "the service stopped everywhere",
        Duration::from_secs(30),
        || {
            (rig.service_pid("a", "svc", 0).is_none() && rig.service_pid("b", "svc", 0).is_none())
                .then_some(())
        },
    );
    eprintln!("quarantined on both: {}", shown["quarantines"]);

    let mark = rig.mark();
    rig.ok("a", &["group", "clear", "svc"]);
    rig.wait_event("w", mark, "a", "svc", "healthy");
    let shown = rig.group("w", "svc");
    assert!(quarantined(&shown).is_empty(), "{shown}");
    assert_eq!(shown["node"], "a", "{shown}");
    assert!(rig.service_pid("a", "svc", 0).is_some());
}

/// Checks a clean switchover of the group from `from` to `to` among `events`: `from` demoted
/// its volume and stopped everything before `to` was promoted and started.
/// A frozen daemon (SIGSTOP here; a paused VM or a hung kernel call in life) cannot stop its
/// own services. Its watchdog, a separate process, kills it once the lease it announced ran
/// out: the service dies with it and the VIP is dropped, before b is promoted; b then serves
/// every acknowledged increment.
#[test]
fn a_frozen_active_daemon_is_fenced_by_its_watchdog_before_b_takes_over() {
    let mut rig = Rig::form("fofreeze");
    let app = counter_app(&rig);
    assert_eq!(rig.increments(app.target, 5), [1, 2, 3, 4, 5]);
    let counter_a = rig
        .service_pid("a", app.group, SERVICE)
        .expect("the counter service runs on a");
    let daemon_a = rig.cluster.pid("a").expect("a's daemon runs") as i32;

    let mark = rig.mark();
    let clock = Instant::now();
    // SAFETY: kill(2) on the daemon this test's cluster started (its Child is held).
    unsafe { libc::kill(daemon_a, libc::SIGSTOP) };
    wait_for("a's service to be killed", Duration::from_secs(20), || {
        (!alive(counter_a)).then_some(())
    });
    wait_for("the VIP to leave a", Duration::from_secs(20), || {
        (!rig.has_address("a", app.vip)).then_some(())
    });
    let fenced_at = unix_ms();
    eprintln!(
        "a fenced by its watchdog {:?} after SIGSTOP",
        clock.elapsed()
    );
    assert!(
        !alive(daemon_a),
        "the watchdog did not kill the frozen daemon"
    );
    // On real machines a's dead mount stays on a; here every node shares one mount
    // namespace, so it is removed (and a's link cut) as the power-loss test does.
    rig.power_loss("a");
    let promoted = rig.wait_event("w", mark, "b", app.group, "promoted");
    eprintln!("b promoted {:?} after SIGSTOP", clock.elapsed());
    assert!(
        fenced_at <= promoted.at_unix_ms,
        "b was promoted at {} before a's service and VIP were gone (seen by {fenced_at})",
        promoted.at_unix_ms
    );
    rig.wait_event("w", mark, "b", app.group, "healthy");
    assert_eq!(
        counter_on(&rig, &app, "b"),
        5,
        "an acknowledged increment was lost"
    );
    assert!(rig.has_address("b", app.vip), "the VIP is not on b");
}

/// The unix ms at which a's watchdog says it fenced, and why, from its line in a's daemon log
/// (`watchdog: fencing at unix ms X: REASON: killing it ...`).
fn watchdog_fence_line(rig: &Rig, node: &str) -> Option<(u64, String)> {
    let log = rig.cluster.node(node).log();
    let line = log
        .lines()
        .find(|line| line.contains("watchdog: fencing at unix ms"))?;
    let rest = line.split("fencing at unix ms ").nth(1)?;
    let (at, reason) = rest.split_once(':')?;
    Some((at.trim().parse().ok()?, reason.trim().to_string()))
}

/// Stop escalation (issue #5): a is cut off while its service ignores SIGTERM, so the stop
/// of its self-fencing hangs (the exec stop waits 60 s for SIGTERM to work). The daemon
/// still runs and pets its watchdog, but still holds running resources past its lease: the
/// watchdog kills it (the service dies with it) and removes the VIP, before b is promoted;
/// b then serves every acknowledged increment.
#[test]
fn a_hung_stop_without_lease_is_fenced_by_the_watchdog_before_b_takes_over() {
    let mut rig = Rig::form("fohang");
    let app = counter_app_with(&rig, Some("noatime,noinit_itable"), true);
    assert_eq!(rig.increments(app.target, 5), [1, 2, 3, 4, 5]);
    let counter_a = rig
        .service_pid("a", app.group, SERVICE)
        .expect("the counter service runs on a");
    let daemon_a = rig.cluster.pid("a").expect("a's daemon runs") as i32;

    let mark = rig.mark();
    let clock = Instant::now();
    let cut_at = unix_ms();
    rig.cluster.cut("a");
    wait_for("a's daemon to be fenced", Duration::from_secs(20), || {
        (!alive(daemon_a)).then_some(())
    });
    let died_after = clock.elapsed();
    // Looked at at once: the service (PDEATHSIG) and the VIP must already be gone.
    wait_for(
        "a's service to die with its daemon",
        Duration::from_secs(2),
        || (!alive(counter_a)).then_some(()),
    );
    let vip_on_a = rig.has_address("a", app.vip);
    let (fenced_at, reason) = watchdog_fence_line(&rig, "a").unwrap_or_else(|| {
        panic!(
            "a's daemon died without its watchdog's fence line:\n{}",
            rig.cluster.node("a").log()
        )
    });
    eprintln!(
        "a's daemon killed {died_after:?} after the cut; the watchdog fenced {} ms after the \
         cut: {reason}; VIP on a afterwards: {vip_on_a}",
        fenced_at.saturating_sub(cut_at)
    );
    assert!(
        reason.contains("still holds running resources") && reason.contains("after its lease"),
        "fenced for another reason: {reason}"
    );
    assert!(
        !vip_on_a,
        "a still holds the VIP after its watchdog fenced it"
    );
    // On real machines a's dead mount stays on a; here every node shares one mount
    // namespace, so it is removed as the power-loss test does (a's link is already cut).
    rig.power_loss("a");
    let promoted = rig.wait_event("w", mark, "b", app.group, "promoted");
    eprintln!(
        "b promoted {} ms after the cut, {} ms after a's fence",
        promoted.at_unix_ms.saturating_sub(cut_at),
        promoted.at_unix_ms as i64 - fenced_at as i64
    );
    assert!(
        fenced_at < promoted.at_unix_ms,
        "b was promoted at {} before a's watchdog fenced it at {fenced_at}",
        promoted.at_unix_ms
    );
    rig.wait_event("w", mark, "b", app.group, "healthy");
    assert_eq!(
        counter_on(&rig, &app, "b"),
        5,
        "an acknowledged increment was lost"
    );
    assert!(rig.has_address("b", app.vip), "the VIP is not on b");
    assert_eq!(rig.group("w", app.group)["node"], "b");
}

/// The kernel keeps a virtual IP when only the daemon dies. Its watchdog sees the pipe close
/// without a goodbye and removes the group's VIP, so the dead node does not answer for it
/// while the survivor takes over.
#[test]
fn a_crashed_daemons_watchdog_removes_its_virtual_ip() {
    let rig = Rig::form("focrash");
    let app = counter_app(&rig);
    assert!(rig.has_address("a", app.vip), "the VIP is on a");
    let daemon_a = rig.cluster.pid("a").expect("a's daemon runs") as i32;
    kill_9(daemon_a);
    wait_for(
        "the watchdog to remove the VIP from a",
        Duration::from_secs(10),
        || (!rig.has_address("a", app.vip)).then_some(()),
    );
}

fn assert_switchover(events: &[Ev], group: &str, from: &str, to: &str) {
    let stopped = find(events, from, group, "stopped");
    let demoted = find(events, from, group, "demoted");
    let promoted = find(events, to, group, "promoted");
    let started = find(events, to, group, "started");
    assert!(
        demoted.at_unix_ms <= stopped.at_unix_ms
            && stopped.at_unix_ms <= promoted.at_unix_ms
            && promoted.at_unix_ms <= started.at_unix_ms,
        "{from} must stop before {to} starts:\n{}",
        list(events)
    );
    eprintln!(
        "switchover {from} -> {to}: stopped on {from} {} ms before promoted on {to}, started \
         {} ms after the stop",
        promoted.at_unix_ms - stopped.at_unix_ms,
        started.at_unix_ms - stopped.at_unix_ms
    );
}

#[test]
fn group_move_and_node_standby_switch_over_cleanly() {
    let rig = Rig::form("fomove");
    let app = counter_app(&rig);
    assert_eq!(rig.increments(app.target, 5), [1, 2, 3, 4, 5]);

    let mark = rig.mark();
    let clock = Instant::now();
    rig.ok("a", &["group", "move", app.group, "b"]);
    rig.wait_event("w", mark, "b", app.group, "healthy");
    eprintln!(
        "group move a -> b: healthy on b after {:?}",
        clock.elapsed()
    );
    assert_switchover(&since(&rig, mark), app.group, "a", "b");
    assert_eq!(counter_on(&rig, &app, "b"), 5);
    assert!(rig.has_address("b", app.vip) && !rig.has_address("a", app.vip));
    assert_eq!(rig.increments(app.target, 3), [6, 7, 8]);
    assert_eq!(rig.group("w", app.group)["pinned"], "b");

    // Unpinned, the group stays where it runs (failback is manual).
    rig.ok("a", &["group", "clear", app.group]);
    let shown = rig.group("w", app.group);
    assert!(shown["pinned"].is_null(), "{shown}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rig.group("w", app.group)["node"], "b");

    let mark = rig.mark();
    let clock = Instant::now();
    rig.ok("a", &["node", "standby", "b"]);
    rig.wait_event("w", mark, "a", app.group, "healthy");
    eprintln!("standby of b: healthy on a after {:?}", clock.elapsed());
    assert_switchover(&since(&rig, mark), app.group, "b", "a");
    assert_eq!(counter_on(&rig, &app, "a"), 8);
    assert!(rig.has_address("a", app.vip) && !rig.has_address("b", app.vip));

    rig.ok("a", &["node", "online", "b"]);
    let status = rig.cluster.status("w").expect("status");
    let b = status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == "b"))
        .cloned()
        .expect("b in status");
    assert_eq!(b["admin"], "online", "{b}");
    assert_eq!(rig.group("w", app.group)["node"], "a");
}

/// SIGTERM to the active node's daemon: it stops its group in reverse order, demotes and
/// releases it while its event loop still runs (it used to hang in the unmount with nothing
/// able to commit), then exits; the group ends up on b with every acknowledged increment.
#[test]
fn a_clean_stop_of_the_active_node_releases_the_group_to_the_other_node() {
    let mut rig = Rig::form("fostop");
    let app = counter_app(&rig);
    assert_eq!(rig.increments(app.target, 5), [1, 2, 3, 4, 5]);
    let mark = rig.mark();
    let pid = rig.cluster.pid("a").expect("a's daemon runs");
    // SAFETY: kill(2) on the PID of the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for(
        "a's daemon to exit after SIGTERM",
        Duration::from_secs(100),
        || (!alive(pid as i32)).then_some(()),
    );
    rig.cluster.kill("a"); // reaps it
    let stopped = rig.wait_event("w", mark, "a", app.group, "stopped");
    let demoted = rig.wait_event("w", mark, "a", app.group, "demoted");
    let promoted = rig.wait_event("w", mark, "b", app.group, "promoted");
    rig.wait_event("w", mark, "b", app.group, "healthy");
    assert!(
        demoted.at_unix_ms <= stopped.at_unix_ms && stopped.at_unix_ms <= promoted.at_unix_ms,
        "a must stop before b promotes:\n{}",
        list(&since(&rig, mark))
    );
    assert!(
        !demoted.detail.contains("no lease"),
        "a clean stop demotes through the cluster: {}",
        demoted.detail
    );
    assert_eq!(counter_on(&rig, &app, "b"), 5);
    assert!(rig.has_address("b", app.vip) && !rig.has_address("a", app.vip));
}

/// An nginx configuration serving a fixed answer on `vip:port`, everything in `dir`.
fn nginx_config(dir: &Path, vip: Ipv4Addr, port: u16) -> PathBuf {
    let d = dir.display();
    let config = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen {vip}:{port};\n    location / {{ return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("write nginx.conf");
    path
}

/// Waits until nginx answers through the VIP from the witness, with its master process in
/// `node`'s namespace.
fn nginx_on(rig: &Rig, pid_file: &Path, target: SocketAddrV4, node: &str) {
    let label = rig.netns_label(node);
    wait_for(
        &format!("nginx answering from {node}"),
        Duration::from_secs(20),
        || {
            let pid: i32 = std::fs::read_to_string(pid_file)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let here = alive(pid) && Rig::netns_of(pid).as_deref() == Some(label.as_str());
            let (code, body) = rig.call(target, "GET", "/")?;
            (here && code == 200 && body.contains("hello from nginx")).then_some(())
        },
    );
}

#[test]
fn ocf_agents_are_started_monitored_and_failed_over() {
    assert!(
        Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists()
            && Path::new("/usr/sbin/nginx").exists(),
        "this test needs resource-agents and nginx (.ci/run installs them)"
    );
    let mut rig = Rig::form("foocf");
    let vip = rig.cluster.lab.spare_address(0);
    let target = SocketAddrV4::new(vip, 8081);
    let www = rig.root().join("nginx");
    std::fs::create_dir_all(&www).expect("nginx dir");
    let config = nginx_config(&www, vip, 8081);
    let pid_file = www.join("nginx.pid");
    rig.track_daemonized(&pid_file, "nginx");
    let configfile = format!("configfile={}", config.display());
    let options = format!("options=-e {}", www.join("nginx-error.log").display());
    let ip = format!("{vip}/24");
    rig.ok(
        "a",
        &[
            "group",
            "create",
            "web",
            "--prefer",
            "a,b",
            "--ip",
            &ip,
            "--ocf",
            "heartbeat:Dummy",
            "--monitor-interval",
            "1s",
            "--ocf",
            "heartbeat:nginx",
            "--param",
            &configfile,
            "--param",
            "httpd=/usr/sbin/nginx",
            "--param",
            &options,
            "--monitor-interval",
            "2s",
        ],
    );
    rig.wait_event("w", 0, "a", "web", "healthy");
    nginx_on(&rig, &pid_file, target, "a");
    // Dummy keeps its state in $HA_RSCTMP (the node's <state-dir>/run/ocf) by default.
    let state_a = rig.dir("a").join("run/ocf/Dummy-web-1.state");
    let state_b = rig.dir("b").join("run/ocf/Dummy-web-1.state");
    assert!(state_a.exists(), "Dummy's state file on a");

    // The state file vanishes behind the agent's back: its monitor says not running, the
    // group restarts from Dummy on, here on a.
    let mark = rig.mark();
    std::fs::remove_file(&state_a).expect("remove Dummy's state file");
    let detected = rig.wait_event("w", mark, "a", "web", "detected");
    assert!(
        detected.detail.contains("resource 1 (ocf heartbeat:Dummy)"),
        "{}",
        detected.detail
    );
    rig.wait_event("w", mark, "a", "web", "restarting");
    rig.wait_event("w", mark, "a", "web", "healthy");
    assert!(state_a.exists(), "Dummy restarted on a");
    nginx_on(&rig, &pid_file, target, "a");

    let mark = rig.mark();
    let clock = Instant::now();
    rig.power_loss("a");
    // nginx daemonizes, so it outlives the daemon here; a power loss would take it too.
    let killed = rig.kill_daemonized(&pid_file, "nginx");
    assert!(killed.is_some(), "a's nginx was not running");
    rig.wait_event("w", mark, "b", "web", "healthy");
    eprintln!(
        "OCF group: kill of a -> healthy on b after {:?}",
        clock.elapsed()
    );
    assert!(state_b.exists(), "Dummy's state file on b");
    nginx_on(&rig, &pid_file, target, "b");
    assert!(rig.has_address("b", vip), "the VIP is not on b");
}

#[test]
fn unknown_ocf_agents_and_missing_parameters_are_refused_and_nothing_is_created() {
    let cluster = TestCluster::form("fobad", &["a"], &[]);
    let a = &cluster.node("a").dir;
    let output = cli(
        a,
        &["group", "create", "bad", "--ocf", "heartbeat:NoSuchAgent"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("group bad, resource 0 (ocf heartbeat:NoSuchAgent)")
            && said.contains("/usr/lib/ocf/resource.d/heartbeat/NoSuchAgent"),
        "{said}"
    );
    let output = cli(a, &["group", "create", "bad", "--ocf", "heartbeat:IPaddr2"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("requires parameter \"ip\""),
        "{}",
        text(&output)
    );
    let output = cli(a, &["group", "list", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let reply: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(reply["groups"], serde_json::json!([]), "{reply}");
}
