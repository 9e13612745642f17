//! Tier-3 tests of shared legs and the dual-array layout (DESIGN.md §4) with real daemons and
//! a real NBD client: two "servers" a and b on 127.0.0.x that both reach two "arrays" (leg
//! files in one temp dir both daemons see). The primary writes both arrays itself; after
//! `kill -9` of its daemon the other server takes over the very same legs, every acknowledged
//! write reads back, the arrays converge to identical data, and a shared leg's metadata (kept
//! inside the leg, at its end) is refused when corrupt, from whichever node opens it. A shared
//! leg taken over after a crash brings its crash flag and activity log along, so the new
//! primary resyncs the hot extents to a third node's leg (with sidecar metadata it did not).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::nbd_client::NbdClient;
use tandem_tests::{cli, random_bytes, text, wait_for, TestCluster};

const SIZE: usize = 16 << 20;

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}

fn array(cluster: &TestCluster, name: &str) -> PathBuf {
    cluster.root.join(format!("array-{name}.img"))
}

fn socket(cluster: &TestCluster, node: &str) -> PathBuf {
    cluster.node(node).dir.join("nbd-db.sock")
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

fn wait_socket(socket: &Path) {
    wait_for("the NBD socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });
}

/// Servers a and b (and a witness) with volume `db` on two arrays both servers reach,
/// primary on a, both arrays in sync.
fn dual_array(label: &str) -> TestCluster {
    let cluster = TestCluster::form(label, &["a", "b"], &["w"]);
    let a = cluster.node("a").dir.clone();
    let leg_x = format!("a,b:{}", array(&cluster, "x").display());
    let leg_y = format!("a,b:{}", array(&cluster, "y").display());
    ok(cli(
        &a,
        &[
            "volume", "create", "db", "--size", "16M", "--leg", &leg_x, "--leg", &leg_y,
        ],
    ));
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_leg_state(&cluster, "a", 1, "UpToDate");
    cluster.node("a").wait_lease();
    cluster
}

/// The volume's data area of an array (its internal metadata follows it).
fn data_of(cluster: &TestCluster, name: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(array(cluster, name)).expect("read array");
    assert!(
        bytes.len() > SIZE,
        "the array holds metadata after the data"
    );
    bytes.truncate(SIZE);
    bytes
}

fn assert_arrays_identical(cluster: &TestCluster) {
    let (x, y) = (data_of(cluster, "x"), data_of(cluster, "y"));
    let first = x.iter().zip(&y).position(|(a, b)| a != b);
    assert_eq!(first, None, "the arrays differ, first at byte {first:?}");
}

fn nbdcopy(from: &str, to: &str) {
    let output = Command::new("nbdcopy")
        .args([from, to])
        .output()
        .expect("run nbdcopy (installed by .ci/run)");
    assert!(output.status.success(), "nbdcopy: {}", text(&output));
}

fn uri(socket: &Path) -> String {
    format!("nbd+unix:///db?socket={}", socket.display())
}

/// The content of `block` at `version`: a self-describing header, then a pattern.
fn block_content(block: u64, version: u32) -> Vec<u8> {
    let mut data = random_bytes(4096, (block << 32) | u64::from(version) | 1);
    data[..8].copy_from_slice(&block.to_be_bytes());
    data[8..12].copy_from_slice(&version.to_be_bytes());
    data
}

/// Every acknowledged (block, version), and the write in flight when the link broke.
#[derive(Default)]
struct WriterLog {
    acked: Vec<(u64, u32)>,
    in_flight: Option<(u64, u32)>,
}

/// Writes random blocks (some with FUA, with a flush now and then) until the connection
/// fails; logs acknowledgements.
fn verifying_writer(socket: PathBuf, seed: u64) -> WriterLog {
    let mut log = WriterLog::default();
    let Ok(mut client) = NbdClient::connect(&socket, "db") else {
        return log;
    };
    let blocks = client.size / 4096;
    let mut state = seed | 1;
    for version in 1u32.. {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let block = state % blocks;
        log.in_flight = Some((block, version));
        let fua = version % 7 == 0;
        let content = block_content(block, version);
        if client.write(block * 4096, &content, fua).is_err() {
            return log;
        }
        log.acked.push((block, version));
        log.in_flight = None;
        if version % 50 == 0 && client.flush().is_err() {
            return log;
        }
    }
    log
}

#[test]
fn a_dual_array_primary_killed_hard_is_taken_over_on_the_same_arrays_which_converge() {
    let mut cluster = dual_array("dual-kill");
    let a = cluster.node("a").dir.clone();
    let shown = ok(cli(&a, &["volume", "show", "db"]));
    assert!(
        shown.contains("node a reaches legs 0,1 (as primary: writes leg 0)")
            && shown.contains("node b reaches legs 0,1"),
        "{shown}"
    );
    // A bulk copy reaches both arrays, and verify compares them.
    let source = cluster.root.join("in.bin");
    std::fs::write(&source, random_bytes(SIZE, 0xd0a1)).expect("source");
    wait_socket(&socket(&cluster, "a"));
    nbdcopy(
        source.to_str().expect("utf-8"),
        &uri(&socket(&cluster, "a")),
    );
    assert_arrays_identical(&cluster);
    let verified = ok(cli(&a, &["volume", "verify", "db"]));
    assert!(
        verified.contains("leg 1: compared 16.0 MiB: identical"),
        "{verified}"
    );

    // A verifying writer on a; a's daemon is killed while it writes.
    let writer_socket = socket(&cluster, "a");
    let writer = std::thread::spawn(move || verifying_writer(writer_socket, 0x5eed));
    std::thread::sleep(Duration::from_millis(700));
    cluster.kill("a");
    let log = writer.join().expect("writer thread");
    assert!(
        log.acked.len() > 10,
        "only {} writes acknowledged",
        log.acked.len()
    );
    // What a write in flight at the kill may leave: array y differs from x in a hot extent
    // (one the activity log covers). The takeover must resync it from the leg it writes.
    let (last, _) = *log.acked.last().expect("a write");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(array(&cluster, "y"))
        .expect("open array y");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xeeu8; 4096], last * 4096).expect("diverge");
    drop(file);

    // b takes over the same arrays (a is gone: its lease lapsed).
    let b = cluster.node("b").dir.clone();
    wait_for("the takeover", Duration::from_secs(30), || {
        cli(&b, &["volume", "promote", "db", "--node", "b"])
            .status
            .success()
            .then_some(())
    });
    cluster.node("b").wait_lease();
    let target = cluster.root.join("out.bin");
    wait_socket(&socket(&cluster, "b"));
    nbdcopy(
        &uri(&socket(&cluster, "b")),
        target.to_str().expect("utf-8"),
    );
    let image = std::fs::read(&target).expect("read back");
    let mut expected: HashMap<u64, u32> = HashMap::new();
    for &(block, version) in &log.acked {
        expected.insert(block, version);
    }
    for (&block, &version) in &expected {
        let found = &image[(block * 4096) as usize..][..4096];
        let in_flight = log.in_flight.filter(|&(b, _)| b == block);
        let ok = found == block_content(block, version).as_slice()
            || in_flight.is_some_and(|(_, v)| found == block_content(block, v).as_slice());
        assert!(ok, "block {block} lost its acknowledged version {version}");
    }

    // The takeover outdated the array b does not write itself; b resyncs it locally.
    wait_leg_state(&cluster, "b", 1, "UpToDate");
    let verified = ok(cli(&b, &["volume", "verify", "db"]));
    assert!(
        verified.contains("leg 1: compared 16.0 MiB: identical"),
        "{verified}"
    );
    assert_arrays_identical(&cluster);
    eprintln!(
        "dual array: {} writes acknowledged before the kill, {} blocks verified after the takeover",
        log.acked.len(),
        expected.len()
    );
}

#[test]
fn a_dual_array_switches_over_cleanly_to_the_other_server() {
    let cluster = dual_array("dual-switch");
    let (a, b) = (cluster.node("a").dir.clone(), cluster.node("b").dir.clone());
    let data = random_bytes(SIZE, 0x5717);
    let source = cluster.root.join("in.bin");
    std::fs::write(&source, &data).expect("source");
    wait_socket(&socket(&cluster, "a"));
    nbdcopy(
        source.to_str().expect("utf-8"),
        &uri(&socket(&cluster, "a")),
    );
    ok(cli(&a, &["volume", "demote", "db"]));
    wait_for("a's socket to go", Duration::from_secs(30), || {
        (!socket(&cluster, "a").exists()).then_some(())
    });
    ok(cli(&b, &["volume", "promote", "db", "--node", "b"]));
    let shown = volume(&cluster, "b").expect("volume");
    assert_eq!(shown["legs"][0]["state"], "UpToDate", "{shown}");
    assert_eq!(shown["legs"][1]["state"], "UpToDate", "{shown}");
    cluster.node("b").wait_lease();
    wait_socket(&socket(&cluster, "b"));
    let target = cluster.root.join("out.bin");
    nbdcopy(
        &uri(&socket(&cluster, "b")),
        target.to_str().expect("utf-8"),
    );
    assert!(
        std::fs::read(&target).expect("read back") == data,
        "b serves a's data"
    );
    std::fs::write(&source, random_bytes(SIZE, 0x5718)).expect("source");
    nbdcopy(
        source.to_str().expect("utf-8"),
        &uri(&socket(&cluster, "b")),
    );
    let verified = ok(cli(&b, &["volume", "verify", "db"]));
    assert!(
        verified.contains("leg 1: compared 16.0 MiB: identical"),
        "{verified}"
    );
    assert_arrays_identical(&cluster);
}

#[test]
fn a_shared_leg_with_corrupt_internal_metadata_is_refused_with_its_path_and_untouched() {
    let cluster = TestCluster::form("dual-bad", &["a", "b"], &[]);
    let a = cluster.node("a").dir.clone();
    let b = cluster.node("b").dir.clone();
    let leg = array(&cluster, "x");
    let spec = format!("a,b:{}", leg.display());
    ok(cli(
        &a,
        &["volume", "create", "db", "--size", "8M", "--leg", &spec],
    ));
    // Served once by a, cleanly: the metadata now sits at the end of the shared leg.
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_socket(&socket(&cluster, "a"));
    ok(cli(&a, &["volume", "demote", "db"]));
    wait_for("a's socket to go", Duration::from_secs(30), || {
        (!socket(&cluster, "a").exists()).then_some(())
    });
    let mut bytes = std::fs::read(&leg).expect("read leg");
    let end = bytes.len();
    assert!(end > 8 << 20, "metadata after the data");
    assert!(
        bytes[end - 4096..].starts_with(b"TANDEMLM"),
        "superblock A last"
    );

    // Both superblock copies overwritten: b, the other node that reaches the leg, refuses it.
    bytes[..8 << 20].fill(0x5a);
    bytes[end - 8192..].fill(0xee);
    std::fs::write(&leg, &bytes).expect("corrupt");
    ok(cli(&b, &["volume", "promote", "db", "--node", "b"]));
    wait_for("the refusal", Duration::from_secs(10), || {
        let log = cluster.node("b").log();
        (log.contains(&leg.display().to_string()) && log.contains("not tandem metadata"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !socket(&cluster, "b").exists(),
        "a refused leg must not be served"
    );
    assert!(
        std::fs::read(&leg).expect("read leg") == bytes,
        "the refused leg was changed"
    );
}

#[test]
fn a_shared_leg_taken_over_after_a_crash_brings_its_crash_flag_and_hot_extents_along() {
    // Leg 0 is an array a and b share; leg 1 is c's own disk.
    let mut cluster = TestCluster::form("shared-kill", &["a", "b", "c"], &[]);
    let a = cluster.node("a").dir.clone();
    let shared = array(&cluster, "x");
    let local = cluster.root.join("c-leg.img");
    let leg_x = format!("a,b:{}", shared.display());
    let leg_c = format!("c:{}", local.display());
    ok(cli(
        &a,
        &[
            "volume", "create", "db", "--size", "16M", "--leg", &leg_x, "--leg", &leg_c,
        ],
    ));
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_leg_state(&cluster, "a", 1, "UpToDate");
    cluster.node("a").wait_lease();
    wait_socket(&socket(&cluster, "a"));
    let writer_socket = socket(&cluster, "a");
    let writer = std::thread::spawn(move || verifying_writer(writer_socket, 0xc0de));
    std::thread::sleep(Duration::from_millis(700));
    cluster.kill("a");
    let log = writer.join().expect("writer thread");
    assert!(log.acked.len() > 10, "only {} writes", log.acked.len());
    // c's disk differs from the array in a hot extent, as a write in flight at the crash may
    // leave it. Only the crash flag and activity log inside the array tell b to resync it.
    let (last, _) = *log.acked.last().expect("a write");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&local)
        .expect("open c's leg");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xeeu8; 4096], last * 4096).expect("diverge");
    drop(file);

    let b = cluster.node("b").dir.clone();
    wait_for("the takeover", Duration::from_secs(30), || {
        cli(&b, &["volume", "promote", "db", "--node", "b"])
            .status
            .success()
            .then_some(())
    });
    let shown = volume(&cluster, "b").expect("volume");
    assert_eq!(shown["legs"][0]["state"], "UpToDate", "{shown}");
    cluster.node("b").wait_lease();
    wait_socket(&socket(&cluster, "b"));
    let mut client = NbdClient::connect(&socket(&cluster, "b"), "db").expect("connect to b");
    let expected: HashMap<u64, u32> = log.acked.iter().copied().collect();
    for (&block, &version) in &expected {
        let found = client.read(block * 4096, 4096).expect("read");
        let in_flight = log.in_flight.filter(|&(b, _)| b == block);
        let ok = found == block_content(block, version)
            || in_flight.is_some_and(|(_, v)| found == block_content(block, v));
        assert!(ok, "block {block} lost its acknowledged version {version}");
    }
    drop(client);
    wait_for(
        "c's leg to match the array",
        Duration::from_secs(30),
        || {
            let output = cli(&b, &["volume", "verify", "db"]);
            (output.status.success() && text(&output).contains("identical")).then_some(())
        },
    );
    let x = data_of(&cluster, "x");
    let c = std::fs::read(&local).expect("c's leg");
    let first = x.iter().zip(&c).position(|(p, q)| p != q);
    assert_eq!(first, None, "the legs differ, first at byte {first:?}");
    assert!(
        cluster.node("b").log().contains("resyncing"),
        "b resynced the hot extents"
    );
}

#[test]
fn a_remote_shared_leg_is_reached_through_its_other_server_when_the_first_is_gone() {
    // Leg 0 is a's own disk, leg 1 an array b and c share; a writes.
    let mut cluster = TestCluster::form("shared-reach", &["a", "b", "c"], &[]);
    let a = cluster.node("a").dir.clone();
    let shared = array(&cluster, "x");
    let local = cluster.root.join("a-leg.img");
    let leg_a = format!("a:{}", local.display());
    let leg_x = format!("b,c:{}", shared.display());
    ok(cli(
        &a,
        &[
            "volume", "create", "db", "--size", "16M", "--leg", &leg_a, "--leg", &leg_x,
        ],
    ));
    ok(cli(&a, &["volume", "promote", "db", "--node", "a"]));
    wait_leg_state(&cluster, "a", 1, "UpToDate");
    cluster.node("a").wait_lease();
    let source = cluster.root.join("in.bin");
    std::fs::write(&source, random_bytes(SIZE, 0xabcd)).expect("source");
    wait_socket(&socket(&cluster, "a"));
    nbdcopy(
        source.to_str().expect("utf-8"),
        &uri(&socket(&cluster, "a")),
    );

    // b, the array's first server, dies: a reaches the array through c instead.
    let b_id = cluster.node("b").status().expect("b's status")["this_node"].clone();
    cluster.kill("b");
    // Writes need a's lease, which a new Raft leader (if b led) grants only after its blackout.
    wait_for("a leader other than b", Duration::from_secs(30), || {
        let leader = cluster.node("a").status()?["leader"].clone();
        (leader.is_u64() && leader != b_id).then_some(())
    });
    cluster.node("a").wait_lease();
    std::fs::write(&source, random_bytes(SIZE / 2, 0xef01)).expect("source");
    nbdcopy(
        source.to_str().expect("utf-8"),
        &uri(&socket(&cluster, "a")),
    );
    wait_for(
        "the array in sync through c",
        Duration::from_secs(60),
        || {
            let output = cli(&a, &["volume", "verify", "db"]);
            (output.status.success()
                && text(&output).contains("leg 1: compared 16.0 MiB: identical"))
            .then_some(())
        },
    );
    let x = data_of(&cluster, "x");
    let own = std::fs::read(&local).expect("a's leg");
    assert!(x == own, "the legs differ");
    assert!(
        cluster.node("c").log().contains("replication stream from"),
        "c carried the array's replication"
    );
}
