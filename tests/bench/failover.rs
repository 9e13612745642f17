//! Benchmark: hard kills of the active node of a real group (volume, ext4, virtual IP, the
//! counter service) on two nodes + a witness in network namespaces. For each kill it reads the
//! committed timeline and prints, measured from the kill: *detected* (the leader saw the node
//! go silent), *decided* (the group's new placement), *healthy* (every resource of the group
//! passed its first monitor on the survivor). Then min / median / max over the runs.
//!
//! `--load` keeps both cores busy with spinning threads for the whole run, and first watches
//! the healthy cluster for `--quiet SECS` (default 30): every placement decided without a kill
//! is a false failover, and is counted. Not a test: it asserts nothing about speed.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tandem_linux::host_cleanup;
use tandem_tests::lab_cluster::LabCluster;
use tandem_tests::{cli, tandem_bin, text, wait_for};

const GROUP: &str = "web";

struct Options {
    runs: usize,
    load: bool,
    quiet_secs: u64,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .and_then(|n| n.parse::<u64>().ok())
    };
    Options {
        runs: value("--runs").unwrap_or(10) as usize,
        load: args.iter().any(|arg| arg == "--load"),
        quiet_secs: value("--quiet").unwrap_or(30),
    }
}

fn main() {
    let options = options();
    let spinning = Arc::new(AtomicBool::new(options.load));
    let spinners: Vec<_> = (0..if options.load { 2 } else { 0 })
        .map(|_| {
            let spinning = spinning.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while spinning.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let mut cluster = LabCluster::form("bfo", &["a", "b"], &["w"]);
    let vip = cluster.lab.spare_address(0);
    set_up(&cluster, vip);
    let false_failovers = if options.load {
        watch_quietly(&cluster, options.quiet_secs)
    } else {
        0
    };
    let mut rows = Vec::new();
    for run in 1..=options.runs {
        let row = one_kill(&mut cluster, run);
        println!(
            "run {run:>2}: killed {}: detected +{:>5} ms, decided +{:>5} ms, healthy on {} +{:>5} ms",
            row.killed, row.detected, row.decided, row.survivor, row.healthy
        );
        rows.push(row);
    }
    spinning.store(false, Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    print_table(&rows, &options, false_failovers);
}

struct Row {
    killed: String,
    survivor: String,
    detected: u64,
    decided: u64,
    healthy: u64,
}

/// A mirrored volume and the group on it, healthy on `a` with both legs UpToDate.
fn set_up(cluster: &LabCluster, vip: Ipv4Addr) {
    let root = cluster.root.clone();
    let leg = |node: &str| format!("{node}:{}", root.join(format!("leg-{node}.img")).display());
    let (leg_a, leg_b) = (leg("a"), leg("b"));
    ok(
        cluster,
        &[
            "volume", "create", "data", "--size", "64M", "--leg", &leg_a, "--leg", &leg_b,
        ],
    );
    let mount = root.join("srv");
    std::fs::create_dir_all(&mount).expect("mount point");
    let mount = mount.display().to_string();
    let exe = tandem_bin().display().to_string();
    let service = format!("{exe} counter-service --dir {mount} --listen {vip}:8080");
    let (filesystem, ip) = (format!("data:{mount}:ext4"), format!("{vip}/24@eth0"));
    let health = format!("http:http://{vip}:8080/health");
    ok(
        cluster,
        &[
            "group",
            "create",
            GROUP,
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
        ],
    );
    wait_event(cluster, "a", "healthy", 0);
    wait_synced(cluster);
}

fn ok(cluster: &LabCluster, args: &[&str]) -> String {
    let output = cli(&cluster.node("w").dir, args);
    assert!(
        output.status.success(),
        "tandem {args:?}: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The timeline as (unix ms, node name, kind, group, detail).
fn events(cluster: &LabCluster) -> Vec<(u64, String, String, String, String)> {
    let output = cli(
        &cluster.node("w").dir,
        &["events", "--json", "--limit", "500"],
    );
    let names: Vec<(u64, String)> = cluster
        .status("w")
        .and_then(|status| {
            let nodes = status["nodes"].as_array()?.clone();
            Some(
                nodes
                    .iter()
                    .filter_map(|n| Some((n["id"].as_u64()?, n["name"].as_str()?.to_string())))
                    .collect(),
            )
        })
        .unwrap_or_default();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| {
            let node = event["node"].as_u64()?;
            let name = names.iter().find(|(id, _)| *id == node)?.1.clone();
            Some((
                event["at_unix_ms"].as_u64()?,
                name,
                event["kind"].as_str()?.to_string(),
                event["group"].as_str().unwrap_or("-").to_string(),
                event["detail"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// The time of the first `kind` event of the group on `node` at or after `after` (unix ms).
fn wait_event(cluster: &LabCluster, node: &str, kind: &str, after: u64) -> u64 {
    wait_for(
        &format!("{kind} on {node}"),
        Duration::from_secs(120),
        || {
            events(cluster)
                .into_iter()
                .find(|(at, name, k, group, _)| {
                    *at >= after && name == node && k == kind && group == GROUP
                })
                .map(|(at, ..)| at)
        },
    )
}

fn wait_synced(cluster: &LabCluster) {
    wait_for("both legs UpToDate", Duration::from_secs(120), || {
        let output = cli(
            &cluster.node("w").dir,
            &["volume", "show", "data", "--json"],
        );
        let reply: Value = serde_json::from_slice(&output.stdout).ok()?;
        let legs = reply["volumes"][0]["legs"].as_array()?.clone();
        legs.iter()
            .all(|leg| leg["state"] == "UpToDate")
            .then_some(())
    });
}

fn placed_on(cluster: &LabCluster) -> String {
    let output = cli(&cluster.node("w").dir, &["group", "show", GROUP, "--json"]);
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    reply["groups"][0]["node"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Watches the healthy cluster for `secs`; every placement decided meanwhile is false.
fn watch_quietly(cluster: &LabCluster, secs: u64) -> usize {
    let start = unix_ms();
    println!("watching the loaded cluster for {secs} s without any fault ...");
    std::thread::sleep(Duration::from_secs(secs));
    let decided = events(cluster)
        .into_iter()
        .filter(|(at, _, kind, ..)| *at >= start && (kind == "decided" || kind == "fenced"))
        .count();
    println!("placements decided while nothing failed: {decided}");
    decided
}

/// Powers off the node running the group, measures, then brings it back and resyncs.
fn one_kill(cluster: &mut LabCluster, run: usize) -> Row {
    let killed = placed_on(cluster);
    assert!(!killed.is_empty(), "run {run}: the group runs nowhere");
    let survivor = if killed == "a" { "b" } else { "a" }.to_string();
    let at = unix_ms();
    cluster.kill(&killed);
    cluster.cut(&killed);
    host_cleanup::release_below(Path::new(&cluster.node(&killed).dir));
    let healthy = wait_event(cluster, &survivor, "healthy", at);
    let timeline = events(cluster);
    let first = |wanted: &str, group: bool| {
        timeline
            .iter()
            .find(|(t, _, kind, g, detail)| {
                *t >= at
                    && kind == wanted
                    && (!group || g == GROUP)
                    && (group || detail.contains(&format!("node {killed} ")))
            })
            .map_or(0, |(t, ..)| t - at)
    };
    let row = Row {
        detected: first("detected", false),
        decided: first("decided", true),
        healthy: healthy - at,
        killed: killed.clone(),
        survivor,
    };
    cluster.heal(&killed);
    cluster.start(&killed);
    cluster.wait_online("w", 3);
    wait_synced(cluster);
    row
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn print_table(rows: &[Row], options: &Options, false_failovers: usize) {
    let stats = |pick: fn(&Row) -> u64| {
        let mut values: Vec<u64> = rows.iter().map(pick).collect();
        values.sort_unstable();
        let median = values.get(values.len() / 2).copied().unwrap_or(0);
        (
            values.first().copied().unwrap_or(0),
            median,
            values.last().copied().unwrap_or(0),
        )
    };
    let load = if options.load {
        "both cores kept busy"
    } else {
        "idle machine"
    };
    println!(
        "\nfailover after a hard kill of the active node, {} runs, {load}",
        rows.len()
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8}",
        "measured from the kill (ms)", "min", "median", "max"
    );
    for (what, pick) in [
        (
            "detected (leader saw it silent)",
            (|r: &Row| r.detected) as fn(&Row) -> u64,
        ),
        ("decided (new placement)", |r: &Row| r.decided),
        ("healthy on the survivor", |r: &Row| r.healthy),
    ] {
        let (min, median, max) = stats(pick);
        println!("{what:<34} {min:>8} {median:>8} {max:>8}");
    }
    if options.load {
        println!(
            "false failovers in {} s of load without faults: {false_failovers}",
            options.quiet_secs
        );
    }
}
