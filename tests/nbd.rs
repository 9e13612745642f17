//! Tier-3 tests of a volume's NBD frontend with real clients: nbdinfo, qemu-io, nbdcopy and
//! fio's nbd engine against a real daemon whose node is the volume's primary. Also garbage on
//! the NBD socket: logged, that client dropped, the frontend keeps serving.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tandem_tests::{cli, text, wait_for, TestCluster};

/// A one-node cluster with volume `db` (one leg on `a`) promoted on `a`; returns its socket.
fn served_volume(label: &str, size: &str) -> (TestCluster, PathBuf) {
    let cluster = TestCluster::form(label, &["a"], &[]);
    let dir = cluster.node("a").dir.clone();
    let leg = format!("a:{}", cluster.root.join("a-leg.img").display());
    let output = cli(
        &dir,
        &["volume", "create", "db", "--size", size, "--leg", &leg],
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = cli(&dir, &["volume", "promote", "db", "--node", "a"]);
    assert!(output.status.success(), "{}", text(&output));
    let socket = dir.join("nbd-db.sock");
    wait_for("the NBD socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    (cluster, socket)
}

fn uri(socket: &Path) -> String {
    format!("nbd+unix:///db?socket={}", socket.display())
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {program} (is it installed? .ci/run installs it): {error}")
        })
}

fn assert_ok(what: &str, output: &Output) {
    assert!(output.status.success(), "{what} failed: {}", text(output));
}

#[test]
fn nbdinfo_shows_the_export_and_its_flags() {
    let (_cluster, socket) = served_volume("nbdinfo", "64M");
    let output = run("nbdinfo", &["--json", &uri(&socket)]);
    assert_ok("nbdinfo", &output);
    let info: Value = serde_json::from_slice(&output.stdout).expect("nbdinfo json");
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 64 << 20, "{info}");
    assert_eq!(export["export-name"], "db");
    assert_eq!(export["description"], "tandem volume db");
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
    assert_eq!(export["can_trim"], true);
    assert_eq!(export["can_zero"], true);
    assert_eq!(export["is_read_only"], false);
    // A FLUSH on any connection covers the writes completed on all of them.
    assert_eq!(export["can_multi_conn"], true);
    let listing = run(
        "nbdinfo",
        &[
            "--list",
            &format!("nbd+unix://?socket={}", socket.display()),
        ],
    );
    assert_ok("nbdinfo --list", &listing);
    assert!(text(&listing).contains("db"), "{}", text(&listing));
}

#[test]
fn qemu_io_pattern_write_then_read_back() {
    let (_cluster, socket) = served_volume("qemuio", "64M");
    let uri = uri(&socket);
    let output = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0xab 1M 3M",
            "-c",
            "write -z 2M 64k",
            "-c",
            "flush",
        ],
    );
    assert_ok("qemu-io write", &output);
    let output = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "read -P 0xab 1M 1M",
            "-c",
            "read -P 0 2M 64k",
            "-c",
            "read -P 0xab 3M 1M",
        ],
    );
    assert_ok("qemu-io read", &output);
    assert!(
        !text(&output).contains("Pattern verification failed"),
        "{}",
        text(&output)
    );
    // A wrong pattern is noticed, so the check above can fail.
    let output = run("qemu-io", &["-f", "raw", &uri, "-c", "read -P 0xcd 1M 4k"]);
    assert!(
        text(&output).contains("Pattern verification failed"),
        "{}",
        text(&output)
    );
}

#[test]
fn nbdcopy_round_trip_of_random_data_is_checksum_equal() {
    let (cluster, socket) = served_volume("nbdcopy", "32M");
    let source = cluster.root.join("random.bin");
    let back = cluster.root.join("back.bin");
    let data = tandem_tests::random_bytes(32 << 20, 0x5eed);
    std::fs::write(&source, &data).expect("write source");
    let uri = uri(&socket);
    assert_ok(
        "nbdcopy in",
        &run("nbdcopy", &[source.to_str().unwrap(), &uri]),
    );
    assert_ok(
        "nbdcopy out",
        &run("nbdcopy", &[&uri, back.to_str().unwrap()]),
    );
    let copied = std::fs::read(&back).expect("read back");
    assert!(copied == data, "the round trip changed the data");
}

#[test]
fn fio_nbd_engine_random_writes_verify() {
    let (_cluster, socket) = served_volume("fio", "64M");
    let uri = uri(&socket);
    let output = run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16m",
            "--iodepth=8",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
        ],
    );
    assert_ok("fio --verify=crc32c", &output);
    assert!(!text(&output).contains("verify: bad"), "{}", text(&output));
}

#[test]
fn garbage_on_the_nbd_socket_is_logged_and_the_frontend_keeps_serving() {
    let (cluster, socket) = served_volume("nbdgarbage", "16M");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send garbage");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest); // the server closes the connection
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        cluster.node("a").log().contains("nbd client").then_some(())
    });
    let output = run("nbdinfo", &["--size", &uri(&socket)]);
    assert_ok("nbdinfo after garbage", &output);
    assert_eq!(text(&output).trim(), (16u64 << 20).to_string());
}

#[test]
fn demoting_stops_the_frontend() {
    let (cluster, socket) = served_volume("nbddemote", "16M");
    let output = cli(&cluster.node("a").dir, &["volume", "demote", "db"]);
    assert!(output.status.success(), "{}", text(&output));
    wait_for("the NBD socket to go", Duration::from_secs(10), || {
        (!socket.exists()).then_some(())
    });
}

#[test]
fn a_full_leg_answers_writes_with_an_error_names_the_leg_and_recovers_when_space_returns() {
    tandem_tests::require_root_and_fuse("tests/nbd.rs (full leg)");
    let cluster = TestCluster::form("nbdfull", &["a"], &[]);
    let mut devices = tandem_tests::Devices::default();
    let small = cluster.root.join("small");
    std::fs::create_dir_all(&small).expect("mount point");
    let small_text = small.to_str().expect("utf-8 path").to_string();
    tandem_tests::run_ok(
        "mount",
        &["-t", "tmpfs", "-o", "size=4m", "tmpfs", &small_text],
    );
    devices.adopt_mount(&small);
    let dir = cluster.node("a").dir.clone();
    let leg_path = small.join("leg.img");
    let leg = format!("a:{}", leg_path.display());
    let output = cli(
        &dir,
        &["volume", "create", "db", "--size", "16M", "--leg", &leg],
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = cli(&dir, &["volume", "promote", "db", "--node", "a"]);
    assert!(output.status.success(), "{}", text(&output));
    let socket = dir.join("nbd-db.sock");
    wait_for("the NBD socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });

    // 8 MiB into a leg on a 4 MiB file system: the client gets an error, not a silent ack.
    let uri = uri(&socket);
    let source = cluster.root.join("eight.bin");
    std::fs::write(&source, tandem_tests::random_bytes(8 << 20, 8)).expect("source");
    let output = run("nbdcopy", &[source.to_str().expect("utf-8"), &uri]);
    assert!(
        !output.status.success(),
        "a write to a full leg was acknowledged"
    );
    wait_for("the leg named in the log", Duration::from_secs(10), || {
        let log = cluster.node("a").log();
        (log.contains(&leg_path.display().to_string()) && log.contains("No space left"))
            .then_some(())
    });

    // The daemon keeps serving; a discard punches holes into the leg, and with the space
    // back, writes succeed again.
    let output = run("qemu-io", &["-f", "raw", &uri, "-c", "discard 0 16M"]);
    assert_ok("qemu-io discard", &output);
    let output = run("nbdinfo", &["--size", &uri]);
    assert_ok("nbdinfo after the full disk", &output);
    let output = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0x42 0 64k",
            "-c",
            "read -P 0x42 0 64k",
        ],
    );
    assert_ok("qemu-io after space returned", &output);
    assert!(!text(&output).contains("failed"), "{}", text(&output));
}
