//! Tier-4 tests (root) of the network lab, the counter service and a tandem cluster spread
//! over lab namespaces. Every namespace, process and directory is removed on success and on
//! failure (guards), and the tests check that the namespaces are really gone.

use std::net::SocketAddrV4;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tandem_tests::lab_cluster::{
    count_in, http, http_call, lab, ping, start_counter, tcp_reachable, udp_arrives, KillOnDrop,
    LabCluster, ScratchDir,
};
use tandem_tests::{run_ok, tandem_bin, wait_for};

/// The namespaces of lab `tag` that `ip netns list` shows.
fn namespaces_of(tag: &str) -> Vec<String> {
    let prefix = format!("tdm{tag}-");
    run_ok("ip", &["netns", "list"])
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

const PROBE: Duration = Duration::from_secs(1);

#[test]
fn links_cut_heal_and_drop_one_way() {
    let started = Instant::now();
    let lab = lab("lk", &["a", "b", "c"]);
    assert_eq!(namespaces_of("lk").len(), 4, "{:?}", namespaces_of("lk"));
    let (net, prefix) = lab.subnet();
    assert_eq!(prefix, 24);
    assert_eq!(net.octets()[0], 10);
    assert_eq!(lab.address("b").octets()[..3], net.octets()[..3]);
    assert!(!["a", "b", "c"]
        .iter()
        .any(|h| lab.address(h) == lab.spare_address(0)));
    assert_eq!(lab.netns("a"), "tdmlk-a");
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a")] {
        assert!(ping(&lab, from, to), "{from} cannot reach {to}");
    }

    lab.cut("b").expect("cut");
    assert!(!ping(&lab, "a", "b"), "a still reaches the cut b");
    assert!(!ping(&lab, "b", "c"), "the cut b still reaches c");
    assert!(ping(&lab, "a", "c"), "a and c must still talk");
    lab.heal("b").expect("heal");
    wait_for("b healed", Duration::from_secs(10), || {
        ping(&lab, "a", "b").then_some(())
    });

    // IP-level one-way: a drops everything from b. Datagrams pass a -> b only; TCP (which
    // needs both directions) fails both ways.
    lab.drop_inbound_from("a", "b").expect("drop");
    assert!(!udp_arrives(&lab, "b", "a"), "a still hears b");
    assert!(udp_arrives(&lab, "a", "b"), "b must still hear a");
    assert!(!tcp_reachable(&lab, "b", "a", 9, PROBE));
    assert!(!tcp_reachable(&lab, "a", "b", 9, PROBE));
    assert!(udp_arrives(&lab, "c", "a"), "only b is dropped");
    lab.clear_drops("a").expect("clear");
    assert!(udp_arrives(&lab, "b", "a"), "a hears b again");

    // Connection-level one-way: connections b opens to a fail, a's connections to b work.
    lab.drop_connections_from("a", "b")
        .expect("drop connections");
    assert!(
        !tcp_reachable(&lab, "b", "a", 9, PROBE),
        "b still connects to a"
    );
    assert!(
        tcp_reachable(&lab, "a", "b", 9, PROBE),
        "a must still connect to b"
    );
    lab.clear_drops("a").expect("clear");
    assert!(tcp_reachable(&lab, "b", "a", 9, PROBE));

    lab.split("a", "c").expect("split");
    assert!(!ping(&lab, "a", "c"));
    assert!(
        ping(&lab, "a", "b") && ping(&lab, "b", "c"),
        "b sees both sides"
    );
    lab.heal_all().expect("heal all");
    assert!(ping(&lab, "a", "c"));

    lab.destroy().expect("destroy");
    assert_eq!(namespaces_of("lk"), Vec::<String>::new());
    eprintln!("links test took {:?}", started.elapsed());
}

#[test]
fn command_runs_the_program_itself_inside_the_namespace() {
    let lab = lab("cmd", &["a"]);
    let child = lab
        .command("a", "sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep in the lab");
    let mut sleeper = KillOnDrop(child);
    let proc_dir = format!("/proc/{}", sleeper.pid());
    let exe = std::fs::read_link(format!("{proc_dir}/exe")).expect("exe link");
    assert!(exe.ends_with("sleep"), "PID {} runs {exe:?}", sleeper.pid());
    let netns_inode = std::fs::metadata(format!("/run/netns/{}", lab.netns("a")))
        .expect("netns file")
        .ino();
    let child_netns = std::fs::read_link(format!("{proc_dir}/ns/net")).expect("ns link");
    assert_eq!(
        child_netns.to_string_lossy(),
        format!("net:[{netns_inode}]")
    );
    let mount_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt");
    assert_eq!(
        mount_ns(&sleeper.pid().to_string()),
        mount_ns("self"),
        "the child must share the caller's mounts"
    );
    sleeper.kill();
    assert!(
        !Path::new(&proc_dir).exists(),
        "kill -9 of the PID ended it"
    );
}

#[test]
fn a_panicking_test_still_removes_its_namespaces() {
    let outcome = std::thread::spawn(|| {
        let _lab = lab("pn", &["x", "y"]);
        assert_eq!(namespaces_of("pn").len(), 3);
        panic!("a test failing with a lab alive");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    assert_eq!(namespaces_of("pn"), Vec::<String>::new());

    // A crashed run's leftovers are replaced.
    run_ok("ip", &["netns", "add", "tdmst-old"]);
    let lab = lab("st", &["a"]);
    let mut alive = namespaces_of("st");
    alive.sort();
    assert_eq!(alive, ["tdmst-a", "tdmst-sw"]);
    drop(lab);
    assert_eq!(namespaces_of("st"), Vec::<String>::new());
}

#[test]
fn counter_keeps_acknowledged_increments_across_kill_9() {
    let lab = lab("ct", &["srv", "cli"]);
    let scratch = ScratchDir::new("counter");
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let log = scratch.path().join("counter.log");
    let target = SocketAddrV4::new(lab.address("srv"), 8080);
    let mut service = start_counter(&lab, "srv", &data, 8080, &log);
    for expected in 1..=5 {
        let (code, body) = http_call(&lab, "cli", target, "POST", "/increment").expect("increment");
        assert_eq!((code, count_in(&body)), (200, Some(expected)), "{body}");
    }
    let (code, body) = http_call(&lab, "cli", target, "GET", "/").expect("get");
    assert_eq!((code, body.as_str()), (200, "count=5 host=srv"));

    // Malformed requests get 400 and the service keeps serving.
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.0\r\nContent-Length: lots\r\n\r\n",
        "\u{1}\u{2}\u{3} / HTTP/9\n\n",
    ] {
        let (code, _) = http(&lab, "cli", target, bad).expect("an answer to a bad request");
        assert_eq!(code, 400, "{bad:?}");
    }
    let huge = format!("GET / HTTP/1.0\r\nX: {}\r\n\r\n", "y".repeat(20_000));
    if let Ok((code, _)) = http(&lab, "cli", target, &huge) {
        assert_eq!(code, 431);
    }
    let (code, _) = http_call(&lab, "cli", target, "GET", "/nothing").expect("404");
    assert_eq!(code, 404);

    service.kill();
    let _service = start_counter(&lab, "srv", &data, 8080, &log);
    let (_, body) = http_call(&lab, "cli", target, "GET", "/").expect("get after restart");
    assert_eq!(
        count_in(&body),
        Some(5),
        "acknowledged increments lost: {body}"
    );
    let (_, body) = http_call(&lab, "cli", target, "POST", "/increment").expect("increment");
    assert_eq!(count_in(&body), Some(6));
}

#[test]
fn counter_refuses_a_corrupt_file() {
    let lab = lab("cc", &["srv"]);
    let scratch = ScratchDir::new("corrupt");
    let file = scratch.path().join("counter");
    std::fs::write(&file, "12 apples\n").expect("write a corrupt counter");
    let child = lab
        .command("srv", tandem_bin())
        .arg("counter-service")
        .arg("--dir")
        .arg(scratch.path())
        .args(["--listen", &format!("{}:8080", lab.address("srv"))])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the counter service");
    let mut service = KillOnDrop(child);
    let status = wait_for("the refusal", Duration::from_secs(10), || {
        service.0.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    if let Some(mut pipe) = service.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("stderr");
    }
    assert!(
        stderr.contains("corrupt counter file") && stderr.contains(&file.display().to_string()),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("12 apples\n")
    );
}

#[test]
fn cluster_across_namespaces_survives_a_cut_and_a_leader_kill() {
    let started = Instant::now();
    let mut cluster = LabCluster::form("cl", &["a", "b"], &["w"]);
    eprintln!("formed in {:?}", started.elapsed());
    for name in ["a", "b", "w"] {
        let status = cluster.wait_online(name, 3);
        assert!(status["leader"].as_u64().is_some(), "{name}: {status}");
    }
    let pid = cluster.pid("a").expect("a runs");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(exe, tandem_bin(), "the PID is the daemon itself");

    cluster.cut("a");
    let cut_at = Instant::now();
    for survivor in ["b", "w"] {
        cluster.wait_node_online(survivor, "a", false);
    }
    eprintln!("a seen offline {:?} after the cut", cut_at.elapsed());
    cluster.heal("a");
    for name in ["a", "b", "w"] {
        cluster.wait_online(name, 3);
    }

    let old_leader = cluster.leader("b");
    let old_id = cluster.wait_leader("b");
    cluster.kill(&old_leader);
    let killed_at = Instant::now();
    let survivor = ["a", "b", "w"]
        .into_iter()
        .find(|name| *name != old_leader)
        .expect("a survivor");
    wait_for("a new leader", Duration::from_secs(20), || {
        let leader = cluster.status(survivor)?["leader"].as_u64()?;
        (leader != old_id).then_some(())
    });
    eprintln!(
        "new leader {:?} after killing {old_leader}",
        killed_at.elapsed()
    );
    cluster.start(&old_leader);
    for name in ["a", "b", "w"] {
        cluster.wait_online(name, 3);
    }
    drop(cluster);
    assert_eq!(namespaces_of("cl"), Vec::<String>::new());
    eprintln!("cluster test took {:?}", started.elapsed());
}
