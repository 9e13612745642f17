//! Tier-3 tests of volumes in the replicated state: `tandem volume create|list|show|promote|
//! demote|delete` against real daemons, and the rules the committed state enforces (promotion
//! only onto an UpToDate leg, `--force` recorded for good, no delete while primary).

use std::time::Duration;

use serde_json::Value;
use tandem_tests::{cli, text, wait_for, TestCluster};

fn volumes(cluster: &TestCluster, via: &str) -> Value {
    let output = cli(&cluster.node(via).dir, &["volume", "list", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("volume list json")
}

#[test]
fn volumes_are_created_listed_promoted_and_deleted_through_the_cluster() {
    let cluster = TestCluster::form("volumes", &["a", "b"], &["w"]);
    let a = &cluster.node("a").dir;
    let leg_a = format!("a:{}", cluster.root.join("a.img").display());
    // b's leg sits in a directory that does not exist, so it can never sync: this test is
    // about the rules of the committed state, independent of the data path's timing.
    let leg_b = format!("b:{}", cluster.root.join("missing-dir/b.img").display());
    let output = cli(
        a,
        &[
            "volume", "create", "db", "--size", "64M", "--leg", &leg_a, "--leg", &leg_b,
        ],
    );
    assert!(output.status.success(), "{}", text(&output));

    // Every node sees the committed volume; the first leg holds the data, the second syncs.
    let listed = wait_for("the volume on b", Duration::from_secs(10), || {
        let list = volumes(&cluster, "b");
        (list["volumes"].as_array()?.len() == 1).then_some(list)
    });
    let volume = &listed["volumes"][0];
    assert_eq!(volume["size"], 64 << 20);
    assert_eq!(volume["legs"][0]["state"], "UpToDate");
    assert_eq!(volume["legs"][1]["state"], "Inconsistent");
    assert_eq!(volume["primary"], Value::Null);

    // Promotion onto the Inconsistent leg is refused, naming the leg and its state.
    let output = cli(a, &["volume", "promote", "db", "--node", "b"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("leg 1 is Inconsistent"),
        "{}",
        text(&output)
    );

    let output = cli(a, &["volume", "promote", "db", "--node", "a"]);
    assert!(output.status.success(), "{}", text(&output));
    let shown = text(&cli(&cluster.node("b").dir, &["volume", "show", "db"]));
    assert!(shown.contains("primary a  epoch 1"), "{shown}");

    // A second writer is refused while the primary is alive; delete is refused while primary.
    let output = cli(a, &["volume", "promote", "db", "--node", "b"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("which is alive"),
        "{}",
        text(&output)
    );
    let output = cli(a, &["volume", "delete", "db"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("demote it first"),
        "{}",
        text(&output)
    );

    // --force is the disaster-recovery path: it works, and it is recorded and logged.
    let output = cli(a, &["volume", "promote", "db", "--node", "b", "--force"]);
    assert!(output.status.success(), "{}", text(&output));
    let shown = text(&cli(a, &["volume", "show", "db"]));
    assert!(
        shown.contains("FORCED PROMOTION: epoch 2: node b forced onto leg 1 (was Inconsistent)"),
        "{shown}"
    );
    assert!(shown.contains("primary b  epoch 2"), "{shown}");
    wait_for("a loud log line", Duration::from_secs(5), || {
        cluster.node("a").log().contains("FORCED").then_some(())
    });

    let output = cli(a, &["volume", "demote", "db"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = cli(a, &["volume", "delete", "db"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        volumes(&cluster, "a")["volumes"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn bad_volume_requests_are_refused_with_what_and_where() {
    let cluster = TestCluster::form("badvol", &["a", "b"], &["w"]);
    let a = &cluster.node("a").dir;
    let cases: [(&[&str], i32, &str); 8] = [
        (
            &["--size", "64M", "--leg", "a:/tmp/x", "--leg", "zz:/tmp/y"],
            1,
            "no node named \"zz\"",
        ),
        (
            &["--size", "64M", "--leg", "a:/tmp/x", "--leg", "w:/tmp/y"],
            1,
            "node 3 is not a member",
        ),
        (&["--size", "64Q", "--leg", "a:/tmp/x"], 2, "unknown unit"),
        (
            &["--size", "1000", "--leg", "a:/tmp/x"],
            1,
            "multiple of 4096",
        ),
        (
            &["--size", "64M", "--leg", "a:relative"],
            2,
            "must be absolute",
        ),
        (
            // A node may reach several legs (a dual array), but not one disk twice.
            &["--size", "64M", "--leg", "a:/tmp/x", "--leg", "b,a:/tmp/x"],
            1,
            "node 1 already reaches /tmp/x through leg 0",
        ),
        (
            &[
                "--size",
                "64M",
                "--leg",
                "a:/tmp/x",
                "--bitmap-grain",
                "3000",
            ],
            1,
            "bitmap grain 3000 must be a power of two from 4096 to 1048576 bytes",
        ),
        (
            &[
                "--size",
                "64M",
                "--leg",
                "a:/tmp/x",
                "--bitmap-grain",
                "64K",
                "--al-extent",
                "32K",
            ],
            1,
            "activity-log extent 32768 must be a power of two from the bitmap grain (65536)",
        ),
    ];
    for (args, code, message) in cases {
        let mut full = vec!["volume", "create", "v"];
        full.extend_from_slice(args);
        let output = cli(a, &full);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{full:?}: {}",
            text(&output)
        );
        assert!(
            text(&output).contains(message),
            "{full:?}: {}",
            text(&output)
        );
    }
    let output = cli(a, &["volume", "show", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("no volume named \"nope\""),
        "{}",
        text(&output)
    );
}

/// The metadata granularities are the operator's: `--bitmap-grain` and `--al-extent` are kept
/// in the committed state, shown, and used by the primary's engine and leg metadata.
#[test]
fn a_volume_keeps_the_granularities_it_was_created_with() {
    let cluster = TestCluster::form("volgrain", &["a", "b"], &["w"]);
    let a = &cluster.node("a").dir;
    let leg = format!("a:{}", cluster.root.join("g.img").display());
    let output = cli(
        a,
        &[
            "volume",
            "create",
            "g",
            "--size",
            "16M",
            "--leg",
            &leg,
            "--bitmap-grain",
            "64K",
            "--al-extent",
            "1M",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let shown = wait_for("the volume on b", Duration::from_secs(10), || {
        let list = volumes(&cluster, "b");
        (list["volumes"].as_array()?.len() == 1).then_some(list)
    });
    let granularity = &shown["volumes"][0]["granularity"];
    assert_eq!(granularity["bitmap_grain"], 64 << 10, "{shown}");
    assert_eq!(granularity["al_extent"], 1 << 20, "{shown}");
    let output = cli(a, &["volume", "show", "g"]);
    assert!(
        text(&output).contains("grain 64K  al-extent 1M"),
        "{}",
        text(&output)
    );
    let output = cli(a, &["volume", "promote", "g", "--node", "a"]);
    assert!(output.status.success(), "{}", text(&output));
    // The primary's engine runs with that grain: its NBD export answers.
    let socket = a.join("nbd-g.sock");
    wait_for("g's NBD socket", Duration::from_secs(20), || {
        socket.exists().then_some(())
    });
    let uri = format!("nbd+unix:///g?socket={}", socket.display());
    let output = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0x3c 1M 64k",
            "-c",
            "read -P 0x3c 1M 64k",
        ])
        .output()
        .expect("qemu-io");
    assert!(output.status.success(), "{}", text(&output));
}
