//! Tier-3 tests of the mirrored volume across two real daemons: initial sync, synchronous
//! replication, a clean switchover, a takeover after `kill -9` of the primary, and a resync
//! after a secondary was down. Data goes in and out through real NBD clients (nbdcopy), and
//! the two leg files are compared byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::{cli, random_bytes, text, wait_for, TestCluster};

const SIZE: usize = 16 << 20;

/// Two data nodes and a witness with volume `db` (legs on a and b) primary on a, synced.
fn mirrored(label: &str) -> TestCluster {
    let cluster = TestCluster::form(label, &["a", "b"], &["w"]);
    let a = cluster.node("a").dir.clone();
    let leg_a = format!("a:{}", leg_path(&cluster, "a").display());
    let leg_b = format!("b:{}", leg_path(&cluster, "b").display());
    let output = cli(
        &a,
        &[
            "volume", "create", "db", "--size", "16M", "--leg", &leg_a, "--leg", &leg_b,
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = cli(&a, &["volume", "promote", "db", "--node", "a"]);
    assert!(output.status.success(), "{}", text(&output));
    wait_leg_state(&cluster, "a", 1, "UpToDate");
    // Writes wait for the primary's node lease (DESIGN.md §5 rule 2); start with one.
    cluster.node("a").wait_lease();
    cluster
}

fn leg_path(cluster: &TestCluster, node: &str) -> PathBuf {
    cluster.root.join(format!("{node}-leg.img"))
}

fn socket(cluster: &TestCluster, node: &str) -> PathBuf {
    cluster.node(node).dir.join("nbd-db.sock")
}

fn uri(socket: &Path) -> String {
    format!("nbd+unix:///db?socket={}", socket.display())
}

fn volume(cluster: &TestCluster, via: &str) -> Option<Value> {
    let output = cli(&cluster.node(via).dir, &["volume", "show", "db", "--json"]);
    let reply: Value = serde_json::from_slice(&output.stdout).ok()?;
    Some(reply["volumes"][0].clone())
}

fn wait_leg_state(cluster: &TestCluster, via: &str, leg: usize, state: &str) {
    wait_for(
        &format!("leg {leg} {state}"),
        Duration::from_secs(60),
        || (volume(cluster, via)?["legs"][leg]["state"] == state).then_some(()),
    );
}

/// Copies with nbdcopy, flushing the destination at the end (`--flush`): what a test wrote
/// is then durable on every leg. Unflushed writes a secondary acked are resynced after its
/// link drops (its cache may have been lost), which would blur what these tests count.
fn nbdcopy(from: &str, to: &str) {
    let output = Command::new("nbdcopy")
        .args(["--flush", from, to])
        .output()
        .expect("run nbdcopy (installed by .ci/run)");
    assert!(
        output.status.success(),
        "nbdcopy {from} {to}: {}",
        text(&output)
    );
}

/// Writes `data` into the volume through node `node`'s NBD socket.
fn write_through(cluster: &TestCluster, node: &str, data: &[u8], name: &str) {
    let source = cluster.root.join(name);
    std::fs::write(&source, data).expect("write source");
    let socket = socket(cluster, node);
    wait_for("the NBD socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });
    nbdcopy(source.to_str().expect("utf-8 path"), &uri(&socket));
}

/// Reads the whole volume through node `node`'s NBD socket.
fn read_through(cluster: &TestCluster, node: &str, name: &str) -> Vec<u8> {
    let target = cluster.root.join(name);
    let socket = socket(cluster, node);
    wait_for("the NBD socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });
    nbdcopy(&uri(&socket), target.to_str().expect("utf-8 path"));
    std::fs::read(&target).expect("read back")
}

fn assert_legs_identical(cluster: &TestCluster) {
    let a = std::fs::read(leg_path(cluster, "a")).expect("leg a");
    let b = std::fs::read(leg_path(cluster, "b")).expect("leg b");
    assert_eq!(a.len(), b.len());
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(first, None, "the legs differ, first at byte {first:?}");
}

#[test]
fn writes_reach_both_legs_and_a_clean_switchover_serves_them_from_the_other_node() {
    let cluster = mirrored("repl-switch");
    let data = random_bytes(SIZE, 0x1234_5678);
    write_through(&cluster, "a", &data, "in.bin");
    assert_legs_identical(&cluster);

    // A live primary must be demoted first; the demotion drains and flushes it.
    let a = &cluster.node("a").dir;
    let output = cli(a, &["volume", "promote", "db", "--node", "b"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("demote db"), "{}", text(&output));
    let output = cli(a, &["volume", "demote", "db"]);
    assert!(output.status.success(), "{}", text(&output));
    let old_socket = socket(&cluster, "a");
    wait_for("a's frontend to stop", Duration::from_secs(30), || {
        (!old_socket.exists()).then_some(())
    });
    let output = cli(a, &["volume", "promote", "db", "--node", "b"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        read_through(&cluster, "b", "out.bin"),
        data,
        "b serves what a acknowledged"
    );

    // Writes on the new primary reach the old one's leg too.
    let more = random_bytes(SIZE, 0x0bad_cafe);
    write_through(&cluster, "b", &more, "in2.bin");
    assert_legs_identical(&cluster);
}

#[test]
fn after_kill_9_of_the_primary_a_takeover_keeps_every_acknowledged_write_and_resyncs() {
    let mut cluster = mirrored("repl-kill");
    let data = random_bytes(SIZE, 0xfeed_f00d);
    write_through(&cluster, "a", &data, "in.bin");
    cluster.kill("a");

    // Once a is gone (offline, lease lapsed), promoting b is a takeover.
    let b = cluster.node("b").dir.clone();
    wait_for(
        "the takeover to be accepted",
        Duration::from_secs(30),
        || {
            cli(&b, &["volume", "promote", "db", "--node", "b"])
                .status
                .success()
                .then_some(())
        },
    );
    let shown = volume(&cluster, "b").expect("volume");
    assert_eq!(shown["legs"][0]["state"], "Outdated", "{shown}");
    assert_eq!(
        read_through(&cluster, "b", "out.bin"),
        data,
        "every acknowledged write survived"
    );

    let more = random_bytes(SIZE / 2, 0x5eed);
    write_through(&cluster, "b", &more, "in2.bin");
    cluster.start("a");
    wait_leg_state(&cluster, "b", 0, "UpToDate");
    assert_legs_identical(&cluster);
}

#[test]
fn a_secondary_that_was_down_is_resynced_and_converges() {
    let mut cluster = mirrored("repl-resync");
    cluster.kill("b");
    // The primary freezes until b's leg is committed Outdated, then goes on alone.
    let data = random_bytes(SIZE, 0xabcd);
    write_through(&cluster, "a", &data, "in.bin");
    let shown = volume(&cluster, "a").expect("volume");
    assert_eq!(shown["legs"][1]["state"], "Outdated", "{shown}");
    cluster.start("b");
    wait_leg_state(&cluster, "a", 1, "UpToDate");
    assert_legs_identical(&cluster);
}

fn sync_of(cluster: &TestCluster, leg: usize) -> Value {
    volume(cluster, "a").expect("volume")["legs"][leg]["sync"].clone()
}

#[test]
fn the_initial_sync_skips_holes_and_a_resync_sends_only_what_changed() {
    let mut cluster = mirrored("repl-delta");
    // The fresh primary leg is all holes: the initial sync sent zero ranges, not data.
    let initial = sync_of(&cluster, 1);
    assert_eq!(initial["resync_bytes_sent"], 0, "{initial}");
    assert_eq!(initial["resync_zero_bytes_sent"], SIZE as u64, "{initial}");

    cluster.kill("b");
    let uri = uri(&socket(&cluster, "a"));
    let writes = [
        "write -P 0x5a 1M 256k",
        "write -P 0x6b 7340032 300k",
        "write -P 0x7c 12M 4k",
    ];
    let written: u64 = (256 + 300 + 4) << 10;
    let mut args = vec!["-f", "raw", uri.as_str()];
    for write in &writes {
        args.extend(["-c", write]);
    }
    let output = Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("run qemu-io");
    assert!(output.status.success(), "{}", text(&output));
    let behind = sync_of(&cluster, 1);
    assert_eq!(behind["out_of_sync_bytes"], written, "{behind}");

    cluster.start("b");
    wait_leg_state(&cluster, "a", 1, "UpToDate");
    let after = sync_of(&cluster, 1);
    let sent = after["resync_bytes_sent"].as_u64().expect("resync bytes");
    eprintln!("written while b was down: {written} bytes; resync sent: {sent} bytes");
    // Every write above is 4 KiB-aligned, so the 4 KiB grain adds no overhead.
    assert_eq!(sent, written, "{after}");
    assert_legs_identical(&cluster);
    let progress = cli(&cluster.node("a").dir, &["volume", "resync", "db"]);
    assert!(text(&progress).contains("100%"), "{}", text(&progress));
}

/// The content of `block` at `version`: a self-describing header, then a pattern.
fn block_content(block: u64, version: u32) -> Vec<u8> {
    let mut data = random_bytes(4096, (block << 32) | u64::from(version) | 1);
    data[..8].copy_from_slice(&block.to_be_bytes());
    data[8..12].copy_from_slice(&version.to_be_bytes());
    data
}

/// What a writer thread saw: every acknowledged (block, version), and the one in flight.
#[derive(Default)]
struct WriterLog {
    acked: Vec<(u64, u32)>,
    in_flight: Option<(u64, u32)>,
}

/// Writes random blocks through `socket` until the connection fails; logs acknowledgements.
fn verifying_writer(socket: PathBuf, first_version: u32, seed: u64) -> WriterLog {
    let mut log = WriterLog::default();
    let Ok(mut client) = tandem_tests::nbd_client::NbdClient::connect(&socket, "db") else {
        return log;
    };
    let blocks = client.size / 4096;
    let mut state = seed | 1;
    for version in first_version.. {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let block = state % blocks;
        log.in_flight = Some((block, version));
        if client
            .write(block * 4096, &block_content(block, version), false)
            .is_err()
        {
            return log;
        }
        log.acked.push((block, version));
        log.in_flight = None;
    }
    log
}

#[test]
fn no_acknowledged_write_is_lost_across_20_kill_points_of_the_primary() {
    let mut cluster = mirrored("repl-durable");
    let mut expected: std::collections::HashMap<u64, u32> = Default::default();
    let (mut primary, mut standby) = ("a", "b");
    let mut version = 1u32;
    for round in 0..20u64 {
        let socket = socket(&cluster, primary);
        wait_for("the NBD socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        });
        let writer = std::thread::spawn(move || verifying_writer(socket, version, round + 7));
        std::thread::sleep(Duration::from_millis(150 + (round * 37) % 300));
        cluster.kill(primary);
        let log = writer.join().expect("writer thread");
        assert!(
            !log.acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        for &(block, written) in &log.acked {
            expected.insert(block, written);
        }
        version += log.acked.len() as u32 + 1;

        let dir = cluster.node(standby).dir.clone();
        wait_for("the takeover", Duration::from_secs(30), || {
            cli(&dir, &["volume", "promote", "db", "--node", standby])
                .status
                .success()
                .then_some(())
        });
        // The next round writes there at once: it must hold its lease first.
        cluster.node(standby).wait_lease();
        let image = read_through(&cluster, standby, &format!("round-{round}.bin"));
        for (&block, &written) in &expected {
            let at = (block * 4096) as usize;
            let found = &image[at..at + 4096];
            let in_flight = log.in_flight.filter(|&(b, _)| b == block);
            let ok = found == block_content(block, written).as_slice()
                || in_flight.is_some_and(|(_, v)| found == block_content(block, v).as_slice());
            assert!(
                ok,
                "round {round}: block {block} lost its acknowledged version {written}"
            );
        }
        // The in-flight write may have landed; whichever did is what later rounds expect.
        if let Some((block, v)) = log.in_flight {
            let at = (block * 4096) as usize;
            if image[at..at + 4096] == block_content(block, v)[..] {
                expected.insert(block, v);
            }
        }
        cluster.start(primary);
        let leg = if primary == "a" { 0 } else { 1 };
        wait_leg_state(&cluster, standby, leg, "UpToDate");
        std::mem::swap(&mut primary, &mut standby);
    }
    eprintln!(
        "20 kill points, {} blocks verified, {} writes acknowledged",
        expected.len(),
        version
    );
}

#[test]
fn verify_reports_a_corrupted_block_and_repair_makes_the_legs_identical() {
    let mut cluster = mirrored("repl-verify");
    write_through(&cluster, "a", &random_bytes(SIZE, 0x7e57), "in.bin");
    let a = cluster.node("a").dir.clone();
    let output = cli(&a, &["volume", "verify", "db"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("leg 1: compared 16.0 MiB: identical"),
        "{}",
        text(&output)
    );

    // One block of b's leg changes behind tandem's back while b is down.
    cluster.kill("b");
    wait_leg_state(&cluster, "a", 1, "Outdated");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(leg_path(&cluster, "b"))
        .expect("open b's leg");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xeeu8; 4096], 5 << 20).expect("corrupt");
    drop(file);
    cluster.start("b");
    wait_leg_state(&cluster, "a", 1, "UpToDate");

    let output = cli(&a, &["volume", "verify", "db"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("mismatch at offset 5242880, 4096 bytes"),
        "{}",
        text(&output)
    );
    let output = cli(&a, &["volume", "verify", "db", "--repair"]);
    assert!(output.status.success(), "{}", text(&output));
    wait_for("the repair", Duration::from_secs(30), || {
        let output = cli(&a, &["volume", "verify", "db"]);
        text(&output).contains("identical").then_some(())
    });
    assert_legs_identical(&cluster);
}
