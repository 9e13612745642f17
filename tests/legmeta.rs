//! Tier-3 tests of leg metadata through real daemons: a corrupt or foreign metadata file is
//! refused with its path and the leg is left untouched; a primary that stopped cleanly trusts
//! its persisted bitmaps, so a lagging secondary is resynced only where it missed writes.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::{cli, text, wait_for, TestCluster};

fn meta_path(cluster: &TestCluster, node: &str, volume: u64, leg: u32) -> PathBuf {
    cluster
        .node(node)
        .dir
        .join(format!("meta/vol{volume}-leg{leg}.meta"))
}

fn ok(output: std::process::Output) {
    assert!(output.status.success(), "{}", text(&output));
}

/// Promotes `volume` on a and waits until its NBD socket is up, then demotes it cleanly.
fn serve_once(cluster: &TestCluster, volume: &str) {
    let a = &cluster.node("a").dir;
    ok(cli(a, &["volume", "promote", volume, "--node", "a"]));
    let socket = a.join(format!("nbd-{volume}.sock"));
    wait_for("the NBD socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });
    ok(cli(a, &["volume", "demote", volume]));
    wait_for("the NBD socket to go", Duration::from_secs(30), || {
        (!socket.exists()).then_some(())
    });
}

#[test]
fn corrupt_or_foreign_leg_metadata_is_refused_and_the_leg_is_untouched() {
    let cluster = TestCluster::form("meta-bad", &["a"], &[]);
    let a = cluster.node("a").dir.clone();
    for name in ["db", "other"] {
        let leg = format!("a:{}", cluster.root.join(format!("{name}.leg")).display());
        ok(cli(
            &a,
            &["volume", "create", name, "--size", "8M", "--leg", &leg],
        ));
        serve_once(&cluster, name);
    }
    let leg = cluster.root.join("db.leg");
    std::fs::write(&leg, vec![0x5au8; 8 << 20]).expect("fill the leg");
    let before = std::fs::read(&leg).expect("read leg");
    let meta = meta_path(&cluster, "a", 1, 0);

    // Both superblock copies overwritten: not tandem metadata.
    let mut bytes = std::fs::read(&meta).expect("meta");
    bytes[..8192].fill(0xee);
    std::fs::write(&meta, &bytes).expect("corrupt");
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_for("the refusal", Duration::from_secs(10), || {
        let log = cluster.node("a").log();
        (log.contains(&meta.display().to_string()) && log.contains("not tandem metadata"))
            .then_some(())
    });
    assert!(
        !a.join("nbd-db.sock").exists(),
        "a refused leg must not be served"
    );
    ok(cli(&a, &["volume", "demote", "db"]));

    // Another volume's metadata in its place: foreign.
    std::fs::copy(meta_path(&cluster, "a", 2, 0), &meta).expect("copy foreign meta");
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_for("the foreign refusal", Duration::from_secs(10), || {
        let log = cluster.node("a").log();
        log.contains("superblock belongs to volume 2, expected volume 1")
            .then_some(())
    });
    assert!(!a.join("nbd-db.sock").exists());
    assert!(
        std::fs::read(&leg).expect("read leg") == before,
        "the leg was touched"
    );
}

/// Two data nodes and a witness; volume `db` (16 MiB, legs `a.leg`, `b.leg`) primary on a and
/// in sync.
fn mirrored(label: &str) -> TestCluster {
    let cluster = TestCluster::form(label, &["a", "b"], &["w"]);
    let a = cluster.node("a").dir.clone();
    let legs: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| format!("{n}:{}", cluster.root.join(format!("{n}.leg")).display()))
        .collect();
    ok(cli(
        &a,
        &[
            "volume", "create", "db", "--size", "16M", "--leg", &legs[0], "--leg", &legs[1],
        ],
    ));
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_for("leg 1 UpToDate", Duration::from_secs(60), || {
        (sync_of(&cluster, 1)["state"] == "UpToDate").then_some(())
    });
    // Writes wait for the primary's node lease (DESIGN.md §5 rule 2); start with one.
    cluster.node("a").wait_lease();
    cluster
}

fn sync_of(cluster: &TestCluster, leg: usize) -> Value {
    let output = cli(&cluster.node("a").dir, &["volume", "show", "db", "--json"]);
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    reply["volumes"][0]["legs"][leg].clone()
}

#[test]
fn after_a_clean_primary_restart_a_lagging_secondary_gets_only_what_it_missed() {
    let mut cluster = mirrored("meta-clean");
    let a = cluster.node("a").dir.clone();

    // Fill the whole volume first, so a full resync would send all 16 MiB, not just data
    // around holes.
    let socket = a.join("nbd-db.sock");
    let uri = format!("nbd+unix:///db?socket={}", socket.display());
    let fill = cluster.root.join("fill.bin");
    std::fs::write(&fill, vec![0xa5u8; 16 << 20]).expect("fill file");
    // `--flush`: writes b acked but never flushed would count as lost with its kill (its
    // page cache could have been a power loss) and be resynced too.
    let output = Command::new("nbdcopy")
        .args(["--flush", fill.to_str().expect("utf-8"), &uri])
        .output()
        .expect("nbdcopy");
    assert!(output.status.success(), "{}", text(&output));
    cluster.kill("b");
    let output = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0x11 2M 128k",
            "-c",
            "write -P 0x22 9M 64k",
        ])
        .output()
        .expect("qemu-io");
    assert!(output.status.success(), "{}", text(&output));
    let written: u64 = (128 + 64) << 10;

    // A clean stop of the primary persists the bitmap; the restarted primary trusts it.
    cluster.stop("a");
    assert!(
        cluster.node("a").log().contains("demoted cleanly"),
        "{}",
        cluster.node("a").log()
    );
    cluster.start("a");
    cluster.start("b");
    wait_for("leg 1 UpToDate again", Duration::from_secs(60), || {
        (sync_of(&cluster, 1)["state"] == "UpToDate").then_some(())
    });
    let sync = sync_of(&cluster, 1)["sync"].clone();
    let sent = sync["resync_bytes_sent"].as_u64().expect("resync bytes");
    eprintln!(
        "written while b was down: {written} bytes; resync after a's clean restart: {sent} bytes"
    );
    assert_eq!(sent, written, "{sync}");
    let first = std::fs::read(cluster.root.join("a.leg")).expect("leg a");
    let second = std::fs::read(cluster.root.join("b.leg")).expect("leg b");
    assert!(first == second, "the legs differ");
}

#[test]
fn a_primary_that_crashed_mid_write_resyncs_its_hot_extents_on_restart() {
    let mut cluster = mirrored("meta-crash");
    let a = cluster.node("a").dir.clone();
    let socket = a.join("nbd-db.sock");
    let writer = std::thread::spawn(move || {
        let Ok(mut client) = tandem_tests::nbd_client::NbdClient::connect(&socket, "db") else {
            return 0u64;
        };
        let mut acked = 0;
        for block in 0.. {
            let data = vec![(block % 251) as u8; 65536];
            if client
                .write((block * 65536) % (16 << 20), &data, false)
                .is_err()
            {
                break;
            }
            acked += 1;
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(400));
    cluster.kill("a");
    let acked = writer.join().expect("writer");
    assert!(acked > 0, "no write was acknowledged before the kill");

    cluster.start("a");
    wait_for("the crash to be noticed", Duration::from_secs(30), || {
        cluster
            .node("a")
            .log()
            .contains("did not stop cleanly")
            .then_some(())
    });
    wait_for("leg 1 resynced", Duration::from_secs(60), || {
        let leg = sync_of(&cluster, 1);
        let clean = leg["sync"]["out_of_sync_bytes"] == 0;
        (leg["state"] == "UpToDate" && leg["sync"]["link"] == "up" && clean).then_some(())
    });
    let log = cluster.node("a").log();
    assert!(log.contains("hot extents to leg 1"), "{log}");
    let first = std::fs::read(cluster.root.join("a.leg")).expect("leg a");
    let second = std::fs::read(cluster.root.join("b.leg")).expect("leg b");
    assert!(first == second, "the legs differ after the crash resync");
}
