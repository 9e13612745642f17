//! Tier-4 test (root): a real ext4 on the mirrored volume through the primary's FUSE image and
//! a loop device; files written and fsynced, a switchover to the other node, and there the
//! same files intact and fsck clean. Every loop device and mount is removed on any outcome.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tandem_tests::{
    cli, random_bytes, require_root_and_fuse, run_ok, text, wait_for, Devices, TestCluster,
};

fn image(cluster: &TestCluster, node: &str) -> PathBuf {
    cluster.node(node).dir.join("images/db/db.img")
}

fn files() -> Vec<(String, Vec<u8>)> {
    (0..5u64)
        .map(|index| {
            let bytes = random_bytes(index as usize * 700_000 + 1, index);
            (format!("file-{index}.bin"), bytes)
        })
        .collect()
}

#[test]
fn ext4_on_the_volume_survives_a_switchover_with_every_file_intact() {
    require_root_and_fuse("tests/filesystem.rs");
    let cluster = TestCluster::form("ext4", &["a", "b"], &["w"]);
    let mut devices = Devices::default();
    let a = cluster.node("a").dir.clone();
    let legs: Vec<String> = ["a", "b"]
        .iter()
        .map(|node| {
            format!(
                "{node}:{}",
                cluster.root.join(format!("{node}.leg")).display()
            )
        })
        .collect();
    let output = cli(
        &a,
        &[
            "volume", "create", "db", "--size", "128M", "--leg", &legs[0], "--leg", &legs[1],
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = cli(&a, &["volume", "promote", "db", "--node", "a"]);
    assert!(output.status.success(), "{}", text(&output));
    let image_a = image(&cluster, "a");
    wait_for("a's image", Duration::from_secs(30), || {
        image_a.exists().then_some(())
    });

    // ext4 on a, files written and fsynced.
    let device = devices.attach_loop(&image_a, &[]);
    run_ok("mkfs.ext4", &["-q", "-b", "4096", &device]);
    let mount_a = cluster.root.join("mnt-a");
    devices.mount(&device, &mount_a, "rw");
    for (name, content) in files() {
        let mut file = std::fs::File::create(mount_a.join(&name)).expect("create");
        file.write_all(&content).expect("write");
        file.sync_all().expect("fsync");
    }
    devices.unmount(&mount_a);
    devices.detach_loop(&device);

    // Switch over: demote a (drains, flushes, unmounts its image), promote b.
    let output = cli(&a, &["volume", "demote", "db"]);
    assert!(output.status.success(), "{}", text(&output));
    wait_for("a's image to go", Duration::from_secs(30), || {
        (!image_a.exists()).then_some(())
    });
    let output = cli(&a, &["volume", "promote", "db", "--node", "b"]);
    assert!(output.status.success(), "{}", text(&output));
    let image_b = image(&cluster, "b");
    wait_for("b's image", Duration::from_secs(30), || {
        image_b.exists().then_some(())
    });

    // On b: fsck clean, every file intact.
    let device = devices.attach_loop(&image_b, &[]);
    run_ok("fsck.ext4", &["-n", "-f", &device]);
    let mount_b = cluster.root.join("mnt-b");
    devices.mount(&device, &mount_b, "ro");
    for (name, content) in files() {
        let found = std::fs::read(mount_b.join(&name)).expect("read on b");
        assert!(found == content, "{name} differs on b");
    }
    devices.unmount(&mount_b);
    devices.detach_loop(&device);
}
