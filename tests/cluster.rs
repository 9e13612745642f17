//! Tier-3 tests: clusters of real `tandem` processes on 127.0.0.x form, elect, fail over.
//!
//! Waits are bounded only to stop hangs; election and detection *speed* is measured by
//! `scripts/bench-election`, not asserted here.

use std::time::Duration;

use tandem_tests::{text, wait_for, TestCluster};

fn leader_name(cluster: &TestCluster, via: &str) -> String {
    let id = cluster.wait_leader(via);
    let status = cluster.node(via).status().expect("status");
    cluster.name_of(&status, id)
}

#[test]
fn three_nodes_form_a_cluster_and_agree_on_one_leader() {
    let cluster = TestCluster::form("three", &["a", "b", "c"], &[]);
    let leaders: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|n| cluster.wait_leader(n))
        .collect();
    assert!(
        leaders.iter().all(|&l| l == leaders[0]),
        "nodes disagree on the leader: {leaders:?}"
    );
    let status = cluster.node("b").status().expect("status");
    assert_eq!(status["quorum"], true);
    assert_eq!(status["voters_total"], 3);
    let roles: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["voter", "voter", "voter"]);
    // The table form names the leader and every node.
    let table = text(&tandem_tests::cli(&cluster.node("c").dir, &["status"]));
    assert!(table.contains("quorum: yes (3/3 voters online)"), "{table}");
}

#[test]
fn five_voters_then_learners() {
    let cluster = TestCluster::form("five", &["a", "b", "c", "d", "e", "f"], &[]);
    let status = cluster.wait_online("c", 6);
    let roles: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["voter", "voter", "voter", "voter", "voter", "learner"]
    );
    assert_eq!(status["voters_total"], 5);
    let leader = cluster.wait_leader("f");
    assert_eq!(
        leader,
        cluster.wait_leader("a"),
        "the learner follows the same leader"
    );
}

#[test]
fn killed_leader_is_replaced_shown_offline_and_rejoins() {
    let mut cluster = TestCluster::form("kill", &["a", "b", "c"], &[]);
    let old = leader_name(&cluster, "a");
    let old_id = cluster.wait_leader("a");
    let witness = if old == "a" { "b" } else { "a" };
    cluster.kill(&old);
    let new = wait_for("a new leader", Duration::from_secs(15), || {
        let id = cluster.node(witness).status()?["leader"].as_u64()?;
        (id != old_id).then_some(id)
    });
    assert_ne!(new, old_id);
    wait_for(
        "the dead leader shown offline",
        Duration::from_secs(15),
        || {
            let status = cluster.node(witness).status()?;
            let node = status["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == old_id)?
                .clone();
            (node["online"] == false).then_some(())
        },
    );
    cluster.start(&old);
    cluster.wait_online(witness, 3);
    assert_eq!(
        cluster.wait_leader(&old),
        new,
        "the restarted node follows the new leader"
    );
}

#[test]
fn two_nodes_and_a_witness_survive_the_loss_of_either_data_node() {
    for victim in ["a", "b"] {
        let mut cluster = TestCluster::form(&format!("witness-{victim}"), &["a", "b"], &["w"]);
        let status = cluster.wait_online("w", 3);
        assert_eq!(status["nodes"][2]["role"], "witness");
        cluster.kill(victim);
        let survivor = if victim == "a" { "b" } else { "a" };
        let status = wait_for(
            "quorum with a lease after the loss",
            Duration::from_secs(15),
            || {
                let status = cluster.node(survivor).status()?;
                let nodes = status["nodes"].as_array()?;
                let me = nodes.iter().find(|n| n["name"] == survivor)?;
                let dead = nodes.iter().find(|n| n["name"] == victim)?;
                let ok = status["quorum"] == true
                    && me["lease_remaining_ms"].as_u64()? > 0
                    && dead["online"] == false;
                ok.then_some(status)
            },
        );
        assert_eq!(status["voters_online"], 2, "{status}");
    }
}

#[test]
fn two_nodes_without_a_witness_report_lost_quorum_and_refuse_leases() {
    let mut cluster = TestCluster::form("nowitness", &["a", "b"], &[]);
    cluster.kill("b");
    // Quorum loss is reported, and the lease lapses within lease_timeout once no quorum
    // confirms it.
    let status = wait_for(
        "quorum loss and a lapsed lease",
        Duration::from_secs(15),
        || {
            let status = cluster.node("a").status()?;
            let lapsed = status["nodes"][0]["lease_remaining_ms"] == 0;
            (status["quorum"] == false && lapsed && status["voters_online"] == 1).then_some(status)
        },
    );
    assert_eq!(status["voters_total"], 2, "{status}");
    let table = text(&tandem_tests::cli(&cluster.node("a").dir, &["status"]));
    assert!(table.contains("quorum: NO"), "{table}");
    assert!(table.contains("no leases are granted"), "{table}");
    // A state change is refused, not hung forever.
    let output = tandem_tests::cli(&cluster.node("a").dir, &["node", "standby", "a"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

#[test]
fn node_standby_and_online_are_replicated() {
    let cluster = TestCluster::form("admin", &["a", "b", "c"], &[]);
    let output = tandem_tests::cli(&cluster.node("a").dir, &["node", "standby", "c"]);
    assert!(output.status.success(), "{}", text(&output));
    wait_for("standby seen on b", Duration::from_secs(10), || {
        let status = cluster.node("b").status()?;
        (status["nodes"][2]["admin"] == "standby").then_some(())
    });
    let output = tandem_tests::cli(&cluster.node("b").dir, &["node", "online", "c"]);
    assert!(output.status.success(), "{}", text(&output));
    let list = text(&tandem_tests::cli(
        &cluster.node("c").dir,
        &["node", "list"],
    ));
    assert!(list.contains("online"), "{list}");
    let output = tandem_tests::cli(&cluster.node("a").dir, &["node", "standby", "zz"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("no node named \"zz\""),
        "{}",
        text(&output)
    );
}

#[test]
fn removed_node_leaves_and_its_daemon_stops() {
    let mut cluster = TestCluster::form("remove", &["a", "b", "c"], &[]);
    let output = tandem_tests::cli(&cluster.node("a").dir, &["node", "remove", "c"]);
    assert!(output.status.success(), "{}", text(&output));
    let status = cluster.wait_online("a", 2);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
    let node = cluster.nodes.iter_mut().find(|n| n.name == "c").unwrap();
    let child = node.child.as_mut().unwrap();
    wait_for(
        "the removed daemon to exit",
        Duration::from_secs(10),
        || child.try_wait().ok().flatten(),
    );
    assert!(
        node.log().contains("removed from the cluster"),
        "{}",
        node.log()
    );
}
