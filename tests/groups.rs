//! Tier-3 tests of the operator surface for groups against real daemons on loopback:
//! `tandem group create|list|show|move|clear|enable|disable|delete`, `tandem explain` and
//! `tandem apply`.
//!
//! The groups here are harmless whether or not an agent starts them: every group holding a
//! volume stays disabled (a volume resource needs root to run), and the one that is enabled
//! can only be placed on nodes in standby, so it is placed nowhere. The assertions are on
//! the committed spec and state, never on running processes.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::{cli, text, wait_for, TestCluster};

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}

fn refused(output: Output, code: i32, expected: &str) {
    assert_eq!(output.status.code(), Some(code), "{}", text(&output));
    assert!(text(&output).contains(expected), "{}", text(&output));
}

fn json(output: Output) -> Value {
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("json reply")
}

fn show(dir: &Path, group: &str) -> Value {
    let reply = json(cli(dir, &["group", "show", group, "--json"]));
    reply["groups"][0].clone()
}

fn group_names(dir: &Path) -> Vec<String> {
    let reply = json(cli(dir, &["group", "list", "--json"]));
    let groups = reply["groups"].as_array().expect("groups").iter();
    groups
        .map(|g| g["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn create_volume(cluster: &TestCluster, name: &str) {
    let leg = |node: &str| {
        format!(
            "{node}:{}",
            cluster.root.join(format!("{name}-{node}.img")).display()
        )
    };
    let args = [
        "volume",
        "create",
        name,
        "--size",
        "64M",
        "--leg",
        &leg("a"),
        "--leg",
        &leg("b"),
    ];
    ok(cli(&cluster.node("a").dir, &args));
}

/// `args` split at spaces, then `rest` as whole arguments.
fn words<'a>(args: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut words: Vec<&str> = args.split(' ').collect();
    words.extend_from_slice(rest);
    words
}

#[test]
fn groups_are_created_shown_moved_explained_and_deleted() {
    let cluster = TestCluster::form("groups", &["a", "b"], &["w"]);
    let a = &cluster.node("a").dir;
    create_volume(&cluster, "db");
    let create = words(
        "group create web --disabled --prefer a,b --volume db --exec",
        &[
            "sleep 600",
            "--health",
            "process",
            "--monitor-interval",
            "5s",
        ],
    );
    let created = ok(cli(a, &create));
    assert!(created.contains("group web created"), "{created}");
    read_back(&cluster);

    // Move pins, clear unpins; a witness is never a target.
    ok(cli(a, &["group", "move", "web", "b"]));
    assert_eq!(show(a, "web")["pinned"], "b");
    refused(cli(a, &["group", "move", "web", "w"]), 1, "it is a witness");
    ok(cli(a, &["group", "clear", "web"]));
    assert_eq!(show(a, "web")["pinned"], Value::Null);

    // A group that can run nowhere: both data nodes in standby, so enabling it places it
    // nowhere and nothing is started.
    ok(cli(a, &["node", "standby", "a"]));
    ok(cli(a, &["node", "standby", "b"]));
    ok(cli(a, &["group", "create", "tool", "--exec", "sleep 600"]));
    ok(cli(a, &["group", "disable", "tool"]));
    assert_eq!(show(a, "tool")["enabled"], false);
    ok(cli(a, &["group", "enable", "tool"]));
    assert_eq!(show(a, "tool")["enabled"], true);
    explain_on_leader_and_follower(&cluster);
    ok(cli(a, &["group", "disable", "tool"]));

    // Disabled and placed nowhere: delete works.
    assert_eq!(show(a, "web")["node"], Value::Null);
    ok(cli(a, &["group", "delete", "web"]));
    refused(
        cli(a, &["group", "show", "web"]),
        1,
        "no group named \"web\"",
    );
    assert_eq!(group_names(a), ["tool"]);
}

/// Every node sees the committed spec, with the resources in command-line order.
fn read_back(cluster: &TestCluster) {
    let web = wait_for("web on b", Duration::from_secs(10), || {
        let reply = json(cli(&cluster.node("b").dir, &["group", "list", "--json"]));
        reply["groups"].as_array()?.first().cloned()
    });
    assert_eq!(web["name"], "web");
    assert_eq!(web["enabled"], false);
    assert_eq!(web["preferred"], serde_json::json!(["a", "b"]));
    assert_eq!(web["resources"][0]["what"], "volume db");
    assert_eq!(web["resources"][1]["what"], "exec sleep");
    assert_eq!(web["resources"][1]["monitor_interval_ms"], 5000);
    assert_eq!(web["resources"][1]["spec"]["service"]["command"][1], "600");
    let a = &cluster.node("a").dir;
    let table = ok(cli(a, &["group", "list"]));
    assert!(table.contains("GROUP") && table.contains("web"), "{table}");
    let details = ok(cli(a, &["group", "show", "web"]));
    let shown = details.contains("exec sleep") && details.contains("5s / 20s");
    assert!(shown, "{details}");
}

/// `explain` gives every node a verdict; the first line says whose view it is.
fn explain_on_leader_and_follower(cluster: &TestCluster) {
    let leader_id = cluster.wait_leader("a");
    let status = cluster.node("a").status().expect("status");
    let leader = cluster.name_of(&status, leader_id);
    let follower = if leader == "a" { "b" } else { "a" };
    // Once the leader has heard every peer's lease, both data nodes are out for standby.
    let explained = wait_for("the leader's decision", Duration::from_secs(10), || {
        let output = cli(&cluster.node(&leader).dir, &["explain", "tool"]);
        let said = text(&output);
        let decided = output.status.success() && said.starts_with("the leader's decision");
        let standby = said.contains("\n  a: in standby") && said.contains("\n  b: in standby");
        (decided && standby).then_some(said)
    });
    assert!(explained.contains("\n  w: witness"), "{explained}");
    assert!(explained.contains("cannot run anywhere"), "{explained}");
    let output = cli(&cluster.node(follower).dir, &["explain", "tool"]);
    let said = ok(output);
    let first = format!("this node's view ({follower}); {leader} leads and decides");
    assert!(said.starts_with(&first), "{said}");
    assert!(said.contains("  w: witness"), "{said}");
    let reply = json(cli(
        &cluster.node(follower).dir,
        &["explain", "tool", "--json"],
    ));
    assert_eq!(reply["nodes"].as_array().map(Vec::len), Some(3), "{reply}");
    refused(
        cli(&cluster.node(follower).dir, &["explain", "nope"]),
        1,
        "no group named",
    );
}

#[test]
fn bad_groups_are_refused_and_nothing_is_created() {
    let cluster = TestCluster::form("badgroups", &["a", "b"], &["w"]);
    let a = &cluster.node("a").dir;
    create_volume(&cluster, "db");
    let cidr = "group g, resource 0 (ip 10.0.0.300/24): \"10.0.0.300/24\" is not a valid CIDR";
    let cases = [
        (
            "g --volume nope",
            1,
            "group g, resource 0 (volume nope): volume nope does not exist",
        ),
        ("g --ip 10.0.0.300/24", 2, cidr),
        (
            "g --prefer zz --volume db",
            1,
            "preferred node \"zz\" is not a member",
        ),
        (
            "g --prefer w --volume db",
            1,
            "preferred node w is a witness",
        ),
        ("g --mkfs", 2, "--mkfs applies to the resource before it"),
        (
            "g --volume db --filesystem db:/srv --health process",
            2,
            "applies to the --exec",
        ),
    ];
    for (args, code, message) in cases {
        let full = words("group create --disabled", &[]);
        refused(cli(a, &[full, words(args, &[])].concat()), code, message);
    }
    let bad_name = ["group", "create", "bad name", "--volume", "db"];
    refused(cli(a, &bad_name), 2, "group name \"bad name\" is invalid");
    refused(
        cli(a, &["group", "delete", "nope"]),
        1,
        "no group named \"nope\"",
    );
    assert!(group_names(a).is_empty());
    group_files(&cluster);
}

/// A whole group from a file, with errors at file:line:col.
fn group_files(cluster: &TestCluster) {
    let a = &cluster.node("a").dir;
    let file = cluster.root.join("web.toml");
    let path = file.to_str().expect("utf-8");
    let good =
        "name = \"web\"\nenabled = false\n[[resource]]\ntype = \"volume\"\nvolume = \"db\"\n";
    std::fs::write(&file, good).expect("write web.toml");
    ok(cli(a, &["group", "create", "--file", path]));
    assert_eq!(show(a, "web")["resources"][0]["what"], "volume db");
    std::fs::write(&file, good.replace("volume = ", "volum = ")).expect("write");
    let expected = format!("{path}:5:1: unknown field `volum`");
    refused(cli(a, &["group", "create", "--file", path]), 2, &expected);
}

const CLUSTER_TOML: &str = r#"
[[volume]]
name = "data"
size = "32M"
legs = ["a:ROOT/data-a.img", "b:ROOT/data-b.img"]

[[group]]
name = "app"
enabled = false

[[group.resource]]
type = "volume"
volume = "data"

[[group.resource]]
type = "service"
service = { kind = "exec", command = ["sleep", "600"] }

[[group]]
name = "tool"
enabled = false

[[group.resource]]
type = "service"
service = { kind = "exec", command = ["sleep", "600"], health = { check = "tcp", port = 9 } }
"#;

fn volume_names(dir: &Path) -> Vec<String> {
    let reply = json(cli(dir, &["volume", "list", "--json"]));
    let volumes = reply["volumes"].as_array().expect("volumes").iter();
    volumes
        .map(|v| v["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn apply_plans_creates_and_then_has_nothing_to_do() {
    let cluster = TestCluster::form("apply", &["a", "b"], &["w"]);
    let a = &cluster.node("a").dir;
    let file = cluster.root.join("cluster.toml");
    let path = file.to_str().expect("utf-8").to_string();
    let root = cluster.root.display().to_string();
    std::fs::write(&file, CLUSTER_TOML.replace("ROOT", &root)).expect("write");

    let planned = ok(cli(a, &["apply", &path, "--dry-run"]));
    assert!(planned.contains("would apply 3 step(s)"), "{planned}");
    assert!(
        planned.contains("1. create volume data (32 MiB, legs a:"),
        "{planned}"
    );
    assert!(planned.contains("2. create group app (volume data, exec sleep), disabled"));
    assert!(
        planned.contains("dry run: nothing was changed"),
        "{planned}"
    );
    assert!(volume_names(a).is_empty() && group_names(a).is_empty());

    let applied = ok(cli(a, &["apply", &path]));
    assert!(applied.contains("[3/3] create group tool"), "{applied}");
    assert_eq!(volume_names(a), ["data"]);
    assert_eq!(group_names(a), ["app", "tool"]);
    assert_eq!(
        show(a, "tool")["resources"][0]["spec"]["service"]["health"]["port"],
        9
    );
    let again = ok(cli(a, &["apply", &path]));
    assert!(again.contains("nothing to do"), "{again}");

    // An update keeps the group; a dropped group is only deleted with --prune.
    let changed = CLUSTER_TOML.replace("ROOT", &root).replace(
        "name = \"app\"\n",
        "name = \"app\"\npreferred = [\"b\", \"a\"]\n",
    );
    let without_tool = changed
        .split("[[group]]\nname = \"tool\"")
        .next()
        .unwrap_or("");
    std::fs::write(&file, without_tool).expect("write");
    let updated = ok(cli(a, &["apply", &path]));
    assert!(
        updated.contains("update group app: preferred (none) -> b,a"),
        "{updated}"
    );
    assert!(
        updated.contains("note: group tool is not in the file: kept"),
        "{updated}"
    );
    assert_eq!(show(a, "app")["preferred"], serde_json::json!(["b", "a"]));
    let pruned = ok(cli(a, &["apply", &path, "--prune"]));
    assert!(pruned.contains("delete group tool"), "{pruned}");
    assert_eq!(group_names(a), ["app"]);

    bad_files_are_refused(&cluster, &file);
}

fn bad_files_are_refused(cluster: &TestCluster, file: &Path) {
    let a = &cluster.node("a").dir;
    let path = file.to_str().expect("utf-8");
    let typo = "[[volume]]\nname = \"v\"\nsize = \"1G\"\nlegs = [\"a:/x\"]\nsizee = 1\n";
    std::fs::write(file, typo).expect("write");
    let expected = format!("{path}:5:1: unknown field `sizee`");
    refused(cli(a, &["apply", path, "--dry-run"]), 2, &expected);
    let missing =
        "[[group]]\nname = \"g\"\n[[group.resource]]\ntype = \"volume\"\nvolume = \"nope\"\n";
    std::fs::write(file, missing).expect("write");
    refused(cli(a, &["apply", path]), 1, "volume nope does not exist");
    let resized = format!(
        "[[volume]]\nname = \"data\"\nsize = \"64M\"\nlegs = [\"a:{0}/data-a.img\", \"b:{0}/data-b.img\"]\n",
        cluster.root.display()
    );
    std::fs::write(file, resized).expect("write");
    refused(
        cli(a, &["apply", path]),
        1,
        "changing its size (32 MiB -> 64 MiB) is not supported yet",
    );
    assert_eq!(group_names(a), ["app"]);
}
