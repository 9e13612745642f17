//! Tier-4 tests (root, real kernel) of the resource runners, driven through the real
//! `tandem resource start|stop|monitor|check` binary: real processes with process-alive, TCP
//! and HTTP health checks, real OCF agents from resource-agents (`Dummy`, `nginx`), virtual IPs
//! inside network namespaces made here (with the gratuitous ARP seen from a neighbour), and an
//! ext4 on a loop device over an image file, unmounted while a process holds it busy.
//!
//! Every process, namespace, mount and loop device a test makes is recorded by PID, name or
//! path and removed by a guard on success and on panic; nothing is found by name patterns.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::{
    free_port, require_root_and_fuse, run_ok, run_program, tandem_bin, text, unmount_below,
    wait_for,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn serial() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A test's state directory and everything started under it; on drop: every exec service
/// recorded in `run/*.pid` and every extra PID file's process is killed (SIGKILL to its group),
/// mounts below the directory are detached, recorded loop devices of our images are detached,
/// and the directory is removed.
struct Scratch {
    root: PathBuf,
    /// PID files written by services themselves (nginx), killed on drop.
    extra_pid_files: Vec<PathBuf>,
    /// Children this test spawned directly.
    children: Vec<Child>,
}

impl Scratch {
    fn new(label: &str) -> Scratch {
        let root = std::env::temp_dir().join(format!(
            "tandem-rt-{label}-{}-{}",
            std::process::id(),
            serial()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create the test directory");
        Scratch {
            root,
            extra_pid_files: Vec::new(),
            children: Vec::new(),
        }
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// `tandem resource VERB --spec SPEC [extra]`, inside `netns` when given.
    fn resource(&self, netns: Option<&str>, verb: &str, spec: &str, extra: &[&str]) -> Output {
        let bin = tandem_bin();
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(&bin);
                command
            }
            None => Command::new(&bin),
        };
        command
            .args(["resource", verb, "--spec", spec])
            .args(extra)
            .arg("--state-dir")
            .arg(self.state())
            .env("TANDEM_LOG", "warn")
            .stdin(Stdio::null());
        command.output().expect("run tandem resource")
    }

    /// Like [`Scratch::resource`] outside any namespace; asserts the exit code.
    fn expect(&self, verb: &str, spec: &str, extra: &[&str], code: i32) -> String {
        let output = self.resource(None, verb, spec, extra);
        let shown = text(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "tandem resource {verb} {spec} {extra:?}: expected exit {code}, got: {shown}"
        );
        shown
    }

    /// The PID recorded for resource `index` of group `manual`.
    fn exec_pid(&self, index: usize) -> Option<i32> {
        let path = self.state().join(format!("run/manual-{index}.pid"));
        let text = std::fs::read_to_string(path).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let run = self.state().join("run");
        let mut pid_files: Vec<PathBuf> = std::fs::read_dir(&run)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
                    .collect()
            })
            .unwrap_or_default();
        pid_files.extend(self.extra_pid_files.iter().cloned());
        for file in pid_files {
            let pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse::<i32>().ok());
            if let Some(pid) = pid.filter(|&pid| pid > 1) {
                // SAFETY: kill(2) of a process (group) this test started, by its recorded PID.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_below(&self.root);
        detach_recorded_loops(&run, &self.root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Detaches the loop devices recorded in `run/*.loop` whose backing file lies under `root`.
fn detach_recorded_loops(run: &Path, root: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        if path.extension().is_none_or(|ext| ext != "loop") {
            continue;
        }
        let device = std::fs::read_to_string(&path).unwrap_or_default();
        let device = device.trim();
        if backing_of(device).is_some_and(|file| file.starts_with(root)) {
            let _ = tandem_tests::detach_loop(device);
        }
    }
}

fn backing_of(device: &str) -> Option<PathBuf> {
    let name = device.strip_prefix("/dev/")?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim()))
}

/// A network namespace made by this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("tandem-rt-{}-{}", std::process::id(), serial());
        run_ok("ip", &["netns", "add", &name]);
        Netns(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_program("ip", &["netns", "del", &self.0]);
    }
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// PIDs of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                String::from_utf8_lossy(&cmd)
                    .replace('\0', " ")
                    .contains(needle)
            }) && alive(pid)
        })
        .collect()
}

/// One HTTP/1.0 GET of `/` on 127.0.0.1:`port`; the whole answer, or None.
fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn exec_spec(command: &[&str], health: Value) -> String {
    serde_json::json!({
        "type": "service",
        "service": {"kind": "exec", "command": command, "health": health}
    })
    .to_string()
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn exec_process_alive_survives_until_killed_and_stop_kills_it() {
    let scratch = Scratch::new("exec-alive");
    let spec = exec_spec(
        &["sleep", "600"],
        serde_json::json!({"check": "process-alive"}),
    );
    let shown = scratch.expect("start", &spec, &[], 0);
    assert!(shown.contains("running"), "{shown}");
    let pid = scratch.exec_pid(0).expect("a pid file after start");
    assert!(alive(pid), "the started process {pid} runs");
    scratch.expect("monitor", &spec, &[], 0);

    // kill -9: the monitor notices (the process is not our child any more: the pid file).
    // SAFETY: kill(2) of the process this test's runner started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the killed process to die", Duration::from_secs(5), || {
        (!alive(pid)).then_some(())
    });
    let shown = scratch.expect("monitor", &spec, &[], 1);
    assert!(shown.contains("gone"), "{shown}");
    // Stop after a crash cleans up and succeeds; then it is cleanly not running.
    scratch.expect("stop", &spec, &[], 0);
    scratch.expect("monitor", &spec, &[], 7);

    // A second life, ended by stop: the process is gone and so is the pid file.
    scratch.expect("start", &spec, &[], 0);
    let pid = scratch
        .exec_pid(0)
        .expect("a pid file after the second start");
    scratch.expect("stop", &spec, &[], 0);
    assert!(!alive(pid), "stop left process {pid} running");
    assert!(scratch.exec_pid(0).is_none(), "stop left the pid file");
    scratch.expect("stop", &spec, &[], 0);
}

#[test]
fn exec_tcp_and_http_checks_follow_a_real_server() {
    let scratch = Scratch::new("exec-net");
    let port = free_port("127.0.0.1");
    let port_text = port.to_string();
    let server = [
        python(),
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port_text,
    ];
    let serve_dir = scratch.root.join("www");
    std::fs::create_dir_all(&serve_dir).expect("www dir");

    for (index, health) in [
        serde_json::json!({"check": "tcp", "port": port}),
        serde_json::json!({"check": "http", "url": format!("http://127.0.0.1:{port}/")}),
    ]
    .into_iter()
    .enumerate()
    {
        let index_text = index.to_string();
        let extra = ["--index", index_text.as_str()];
        let spec = exec_spec(&server, health.clone());
        let started = Instant::now();
        scratch.expect("start", &spec, &extra, 0);
        eprintln!("{health}: healthy after {:?}", started.elapsed());
        // Start returned only once the check passed: the server answers now.
        let answer = http_get(port).expect("the server answers right after start");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        scratch.expect("monitor", &spec, &extra, 0);
        let pid = scratch.exec_pid(index).expect("pid file");
        scratch.expect("stop", &spec, &extra, 0);
        assert!(!alive(pid), "stop left the server {pid} running");
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open after stop"
        );
        scratch.expect("monitor", &spec, &extra, 7);
    }

    // An HTTP check that answers 404 never passes: start fails after its timeout, and the
    // server it started is killed.
    let spec = exec_spec(
        &server,
        serde_json::json!({"check": "http", "url": format!("http://127.0.0.1:{port}/missing")}),
    );
    let shown = scratch.expect("start", &spec, &["--index", "2", "--timeout-ms", "2500"], 1);
    assert!(shown.contains("timed out after 2500 ms"), "{shown}");
    assert!(shown.contains("answered 404"), "{shown}");
    assert!(
        scratch.exec_pid(2).is_none(),
        "a failed start left a pid file"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server of a failed start still listens"
    );
}

#[test]
fn exec_that_never_gets_healthy_fails_on_time_and_leaves_nothing() {
    let scratch = Scratch::new("exec-never");
    let port = free_port("127.0.0.1");
    // A unique argument, so the test can look for leftovers without knowing the PID.
    let marker = format!("617.{}{}", std::process::id(), serial());
    let spec = exec_spec(
        &["sleep", &marker],
        serde_json::json!({"check": "tcp", "port": port}),
    );
    let started = Instant::now();
    let shown = scratch.expect("start", &spec, &["--timeout-ms", "1500"], 1);
    let took = started.elapsed();
    assert!(shown.contains("timed out after 1500 ms"), "{shown}");
    assert!(shown.contains(&format!("tcp 127.0.0.1:{port}")), "{shown}");
    assert!(
        took < Duration::from_secs(6),
        "start took {took:?} with a 1.5 s timeout"
    );
    assert!(
        processes_with(&format!("sleep {marker}")).is_empty(),
        "the process of a failed start still runs"
    );
    assert!(
        scratch.exec_pid(0).is_none(),
        "a failed start left a pid file"
    );
    scratch.expect("monitor", &spec, &[], 7);

    // A missing program is refused before anything runs (usage error).
    let missing = exec_spec(
        &["/nonexistent/tandem-daemon"],
        serde_json::json!({"check": "process-alive"}),
    );
    let shown = scratch.expect("start", &missing, &[], 2);
    assert!(shown.contains("/nonexistent/tandem-daemon"), "{shown}");
}

/// The timeouts an agent's meta-data advertises for `action` (the first such action).
fn advertised_ms(meta: &str, action: &str, attribute: &str) -> u64 {
    let tag = meta
        .lines()
        .find(|line| line.contains("<action") && line.contains(&format!("name=\"{action}\"")))
        .unwrap_or_else(|| panic!("no {action} action in the meta-data"));
    let at = tag
        .find(&format!("{attribute}=\""))
        .unwrap_or_else(|| panic!("no {attribute} in {tag}"));
    let value: String = tag[at + attribute.len() + 2..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    let seconds = value
        .strip_suffix('s')
        .unwrap_or_else(|| panic!("{value:?}: this test reads seconds only"));
    seconds.parse::<u64>().expect("a number of seconds") * 1000
}

fn ocf_spec(agent: &str, params: Value) -> String {
    serde_json::json!({
        "type": "service",
        "service": {"kind": "ocf", "provider": "heartbeat", "agent": agent, "params": params}
    })
    .to_string()
}

#[test]
fn ocf_dummy_lifecycle_and_meta_data_timeouts() {
    let scratch = Scratch::new("ocf-dummy");
    let state_file = scratch.root.join("dummy.state");
    let spec = ocf_spec(
        "Dummy",
        serde_json::json!({"state": state_file.to_str().expect("utf-8")}),
    );
    // The defaults come from the agent's own meta-data.
    let output = Command::new("/usr/lib/ocf/resource.d/heartbeat/Dummy")
        .arg("meta-data")
        .env("OCF_ROOT", "/usr/lib/ocf")
        .output()
        .expect("run Dummy meta-data (is resource-agents installed?)");
    let meta = String::from_utf8_lossy(&output.stdout).to_string();
    let shown = scratch.expect("check", &spec, &["--json"], 0);
    let check: Value = serde_json::from_str(shown.trim()).expect("check --json prints JSON");
    let timeouts = &check["timeouts"];
    assert_eq!(
        timeouts["start_ms"],
        advertised_ms(&meta, "start", "timeout")
    );
    assert_eq!(timeouts["stop_ms"], advertised_ms(&meta, "stop", "timeout"));
    assert_eq!(
        timeouts["monitor_ms"],
        advertised_ms(&meta, "monitor", "timeout")
    );
    assert_eq!(
        timeouts["interval_ms"],
        advertised_ms(&meta, "monitor", "interval")
    );
    eprintln!("Dummy's advertised timeouts: {timeouts}");

    scratch.expect("start", &spec, &[], 0);
    assert!(state_file.exists(), "Dummy start writes its state file");
    scratch.expect("monitor", &spec, &[], 0);
    scratch.expect("stop", &spec, &[], 0);
    assert!(!state_file.exists(), "Dummy stop removes its state file");
    let shown = scratch.expect("monitor", &spec, &["--json"], 7);
    assert!(shown.contains("\"not-running\""), "{shown}");
    // Stopping a stopped resource is success.
    scratch.expect("stop", &spec, &[], 0);
}

#[test]
fn ocf_refuses_unknown_agents_and_missing_parameters() {
    let scratch = Scratch::new("ocf-refuse");
    let shown = scratch.expect(
        "start",
        &ocf_spec("NoSuchAgent", serde_json::json!({})),
        &[],
        2,
    );
    assert!(
        shown.contains("/usr/lib/ocf/resource.d/heartbeat/NoSuchAgent"),
        "{shown}"
    );
    // IPaddr2 requires `ip`.
    let shown = scratch.expect("check", &ocf_spec("IPaddr2", serde_json::json!({})), &[], 2);
    assert!(shown.contains("requires parameter \"ip\""), "{shown}");
}

/// A fake agent under a private OCF root: meta-data with a required parameter, a monitor that
/// fails with OCF_ERR_INSTALLED and says why on stderr, a start that hangs (recording the PID
/// of the child it hangs on).
const FAKE_AGENT: &str = r#"#!/bin/sh
case "$1" in
meta-data)
  cat <<'EOF'
<?xml version="1.0"?>
<resource-agent name="Fake" version="1.0">
<parameters><parameter name="needed" required="1"><content type="string"/></parameter></parameters>
<actions>
<action name="start" timeout="7s"/>
<action name="stop" timeout="8s"/>
<action name="monitor" timeout="9s" interval="3s"/>
</actions>
</resource-agent>
EOF
  exit 0;;
start)
  sleep 600 &
  echo $! > "$OCF_RESKEY_needed"
  wait; exit 0;;
monitor)
  echo "fake: the service binary is missing ($OCF_RESOURCE_INSTANCE, timeout $OCF_RESKEY_CRM_meta_timeout)" >&2
  exit 5;;
stop) exit 0;;
*) exit 3;;
esac
"#;

/// [`FAKE_AGENT`] installed as `ocf:test:Fake` under a private OCF root in a scratch dir.
struct FakeAgent {
    scratch: Scratch,
    root: PathBuf,
    /// Where the agent's start records the PID of the child it hangs on.
    child_pid: PathBuf,
}

impl FakeAgent {
    fn install(label: &str) -> FakeAgent {
        let mut scratch = Scratch::new(label);
        let root = scratch.root.join("ocf");
        let dir = root.join("resource.d/test");
        std::fs::create_dir_all(&dir).expect("agent dir");
        let agent = dir.join("Fake");
        std::fs::write(&agent, FAKE_AGENT).expect("write the agent");
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let child_pid = scratch.root.join("fake-child.pid");
        scratch.extra_pid_files.push(child_pid.clone());
        FakeAgent {
            scratch,
            root,
            child_pid,
        }
    }

    fn spec(&self, param: &str) -> String {
        let value = self.child_pid.to_str().expect("utf-8");
        serde_json::json!({
            "type": "service",
            "service": {"kind": "ocf", "provider": "test", "agent": "Fake",
                        "params": {param: value}}
        })
        .to_string()
    }

    /// `tandem resource VERB` of resource 3 of group `web`, with the private OCF root.
    fn run(&self, verb: &str, spec: &str, extra: &[&str]) -> Output {
        Command::new(tandem_bin())
            .args(["resource", verb, "--spec", spec])
            .args(["--group", "web", "--index", "3"])
            .args(extra)
            .arg("--state-dir")
            .arg(self.scratch.state())
            .env("TANDEM_OCF_ROOT", &self.root)
            .output()
            .expect("run tandem")
    }
}

#[test]
fn ocf_meta_data_exit_codes_and_required_parameters_of_a_private_agent() {
    let fake = FakeAgent::install("ocf-fake");
    let spec = fake.spec("needed");
    let output = fake.run("check", &spec, &[]);
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    let advertised = "start timeout 7000 ms, stop timeout 8000 ms, monitor timeout 9000 ms, \
                      monitor interval 3000 ms";
    assert!(shown.contains(advertised), "{shown}");

    // Exit 5 is a failure named by its OCF meaning, with what the agent wrote on stderr (which
    // also shows the instance name and the timeout the agent was given).
    let output = fake.run("monitor", &spec, &[]);
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(shown.contains("exit code 5 (OCF_ERR_INSTALLED"), "{shown}");
    let said = "the service binary is missing (web-3, timeout 9000)";
    assert!(shown.contains(said), "{shown}");

    // Without the required parameter: refused, naming it.
    let output = fake.run("check", &fake.spec("other"), &[]);
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(2), "{shown}");
    assert!(shown.contains("parameter \"needed\""), "{shown}");
}

#[test]
fn ocf_start_timeout_kills_the_agents_process_group() {
    let fake = FakeAgent::install("ocf-hang");
    let spec = fake.spec("needed");
    let started = Instant::now();
    let output = fake.run("start", &spec, &["--timeout-ms", "1000"]);
    let took = started.elapsed();
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("start of ocf test:Fake timed out after 1000 ms"),
        "{shown}"
    );
    assert!(took < Duration::from_secs(6), "start took {took:?}");
    // The agent's whole process group was killed, the child it waited on included.
    let pid: i32 = std::fs::read_to_string(&fake.child_pid)
        .expect("the fake agent recorded its child")
        .trim()
        .parse()
        .expect("a pid");
    wait_for(
        "the hung agent's child to die",
        Duration::from_secs(5),
        || (!alive(pid)).then_some(()),
    );
}

fn nginx_config(dir: &Path, port: u16) -> PathBuf {
    let d = dir.display();
    let config = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 \"hello from tandem's nginx\\n\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("write nginx.conf");
    path
}

#[test]
fn ocf_nginx_serves_until_stopped() {
    assert!(
        Path::new("/usr/sbin/nginx").exists(),
        "this test needs nginx (.ci/run installs it)"
    );
    let mut scratch = Scratch::new("ocf-nginx");
    let port = free_port("127.0.0.1");
    let www = scratch.root.join("nginx");
    std::fs::create_dir_all(&www).expect("nginx dir");
    let config = nginx_config(&www, port);
    scratch.extra_pid_files.push(www.join("nginx.pid"));
    let error_log = format!("-e {}", www.join("nginx-error.log").display());
    let spec = ocf_spec(
        "nginx",
        serde_json::json!({
            "configfile": config.to_str().expect("utf-8"),
            "httpd": "/usr/sbin/nginx",
            "options": error_log,
        }),
    );
    let started = Instant::now();
    scratch.expect("start", &spec, &[], 0);
    eprintln!(
        "nginx started through its OCF agent in {:?}",
        started.elapsed()
    );
    let answer = http_get(port).expect("nginx answers after start");
    assert!(
        answer.contains("200") && answer.contains("hello from tandem's nginx"),
        "{answer}"
    );
    scratch.expect("monitor", &spec, &[], 0);
    scratch.expect("stop", &spec, &[], 0);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nginx still listens on {port} after stop"
    );
    scratch.expect("monitor", &spec, &[], 7);
}

#[test]
fn systemd_errors_are_clear() {
    let scratch = Scratch::new("systemd");
    let spec =
        r#"{"type":"service","service":{"kind":"systemd","unit":"tandem-no-such-unit.service"}}"#;
    // No systemctl on $PATH: refused before anything runs.
    let empty = scratch.root.join("empty-path");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let output = Command::new(tandem_bin())
        .args(["resource", "start", "--spec", spec, "--state-dir"])
        .arg(scratch.state())
        .env("PATH", &empty)
        .output()
        .expect("run tandem");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("systemctl is not found"),
        "{}",
        text(&output)
    );
    if tandem_linux_has_systemctl() {
        // A unit that does not exist (or no running systemd on this box): start fails and
        // says what systemctl said; stopping it is success or a clear failure.
        let shown = scratch.expect("start", spec, &[], 1);
        assert!(
            shown.contains("systemctl start tandem-no-such-unit.service"),
            "{shown}"
        );
        // With systemd running an unknown unit is "inactive" (7); without it, a failure (1).
        let output = scratch.resource(None, "monitor", spec, &[]);
        let shown = text(&output);
        assert!(matches!(output.status.code(), Some(1 | 7)), "{shown}");
        assert!(shown.contains("tandem-no-such-unit.service"), "{shown}");
    } else {
        eprintln!("systemctl is not installed here: only the refusal was checked");
    }
}

fn tandem_linux_has_systemctl() -> bool {
    ["/usr/bin/systemctl", "/bin/systemctl"]
        .iter()
        .any(|path| Path::new(path).exists())
}

/// Two namespaces joined by a veth pair: the node (`vip0`, 10.213.N.1/24) whose runner adds
/// the VIP, and a neighbour (`peer0`, 10.213.N.2/24) that learns addresses from gratuitous ARP.
struct Lan {
    node: Netns,
    neighbour: Netns,
    third: u32,
}

impl Lan {
    fn new() -> Lan {
        let lan = Lan {
            node: Netns::new(),
            neighbour: Netns::new(),
            third: 10 + serial() % 200,
        };
        let (a, b) = (lan.node.0.as_str(), lan.neighbour.0.as_str());
        let veth = "link add vip0 netns A type veth peer name peer0 netns B";
        let args: Vec<&str> = veth
            .split(' ')
            .map(|word| match word {
                "A" => a,
                "B" => b,
                other => other,
            })
            .collect();
        run_ok("ip", &args);
        let third = lan.third;
        lan.node.ip(&["link", "set", "vip0", "up"]);
        lan.neighbour.ip(&["link", "set", "peer0", "up"]);
        let (mine, theirs) = (
            format!("10.213.{third}.1/24"),
            format!("10.213.{third}.2/24"),
        );
        lan.node.ip(&["addr", "add", &mine, "dev", "vip0"]);
        lan.neighbour.ip(&["addr", "add", &theirs, "dev", "peer0"]);
        let accept = [
            "net.ipv4.conf.all.arp_accept=1",
            "net.ipv4.conf.peer0.arp_accept=1",
        ];
        let mut sysctl = vec!["netns", "exec", b, "sysctl", "-qw"];
        sysctl.extend_from_slice(&accept);
        run_ok("ip", &sysctl);
        lan
    }

    fn addresses(&self) -> String {
        self.node.ip(&["addr", "show", "dev", "vip0"])
    }

    fn node_mac(&self) -> String {
        self.node
            .ip(&["link", "show", "vip0"])
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .expect("vip0 has a MAC")
            .to_string()
    }
}

#[test]
fn ip_moves_into_a_namespace_and_is_announced() {
    require_root_and_fuse("tests/resources.rs ip");
    let scratch = Scratch::new("ip");
    let lan = Lan::new();
    let run = |verb: &str, spec: &str| scratch.resource(Some(&lan.node.0), verb, spec, &[]);
    let vip = format!("10.213.{}.5", lan.third);
    let spec = format!(r#"{{"type":"ip","cidr":"{vip}/24"}}"#);

    let output = run("start", &spec);
    assert!(output.status.success(), "start: {}", text(&output));
    assert!(lan.addresses().contains(&format!("{vip}/24")));
    assert_eq!(run("monitor", &spec).status.code(), Some(0));
    let mac = lan.node_mac();
    let learned = wait_for(
        "the neighbour to learn the VIP",
        Duration::from_secs(5),
        || {
            let neigh = lan.neighbour.ip(&["neigh", "show", &vip]);
            neigh.contains(&mac).then_some(neigh)
        },
    );
    eprintln!("neighbour learned from gratuitous ARP: {learned}");

    let output = run("stop", &spec);
    assert!(output.status.success(), "stop: {}", text(&output));
    assert!(!lan.addresses().contains(&vip));
    assert_eq!(run("monitor", &spec).status.code(), Some(7));
    assert!(
        run("stop", &spec).status.success(),
        "a second stop succeeds"
    );

    // IPv6 on a named interface: added and removed.
    let v6 = format!("fd00:213:{}::5/64", lan.third);
    let spec = format!(r#"{{"type":"ip","cidr":"{v6}","interface":"vip0"}}"#);
    assert!(run("start", &spec).status.success());
    assert!(lan.addresses().contains(&v6));
    assert_eq!(run("monitor", &spec).status.code(), Some(0));
    assert!(run("stop", &spec).status.success());
    assert!(!lan.addresses().contains(&v6));
    assert_eq!(run("monitor", &spec).status.code(), Some(7));
}

#[test]
fn ip_refuses_bad_addresses_and_missing_interfaces() {
    require_root_and_fuse("tests/resources.rs ip");
    let scratch = Scratch::new("ip-refuse");
    let lan = Lan::new();
    for (spec, expected) in [
        (r#"{"type":"ip","cidr":"10.0.0.300/24"}"#, "10.0.0.300/24"),
        (
            r#"{"type":"ip","cidr":"10.214.0.5/24"}"#,
            "no interface has an address in the subnet of 10.214.0.5/24",
        ),
        (
            r#"{"type":"ip","cidr":"10.214.0.5/24","interface":"nosuch0"}"#,
            "interface nosuch0 does not exist",
        ),
    ] {
        let output = scratch.resource(Some(&lan.node.0), "start", spec, &[]);
        let shown = text(&output);
        assert_eq!(output.status.code(), Some(2), "{spec}: {shown}");
        assert!(shown.contains(expected), "{spec}: {shown}");
    }
    assert!(!lan.addresses().contains("10.214.0.5"));
}

/// Whether `point` is a mount point (per /proc/self/mountinfo).
fn is_mounted(point: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let point = point.to_string_lossy();
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(point.as_ref()))
}

/// A sparse 64 MiB image file (the volume's image, as the runner sees it) and an ext4
/// filesystem resource (`mkfs = true`) mounting it at `<scratch>/mnt`.
struct FsCase {
    scratch: Scratch,
    image: PathBuf,
    mount: PathBuf,
    spec: String,
}

impl FsCase {
    fn new(label: &str) -> FsCase {
        let scratch = Scratch::new(label);
        let image = scratch.root.join("volume.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(64 << 20))
            .expect("a sparse 64 MiB image");
        let mount = scratch.root.join("mnt");
        let spec = serde_json::json!({
            "type": "filesystem", "volume": "v1", "mountpoint": mount.to_str().expect("utf-8"),
            "fstype": "ext4", "mkfs": true
        })
        .to_string();
        FsCase {
            scratch,
            image,
            mount,
            spec,
        }
    }

    /// `tandem resource VERB --image IMAGE`, expecting exit `code`.
    fn run(&self, verb: &str, code: i32) -> String {
        let image = self.image.to_str().expect("utf-8");
        self.scratch
            .expect(verb, &self.spec, &["--image", image], code)
    }

    /// The loop device the runner recorded.
    fn device(&self) -> String {
        let path = self.scratch.state().join("run/manual-0.loop");
        let device = std::fs::read_to_string(path).expect("the loop device is recorded");
        device.trim().to_string()
    }
}

#[test]
fn filesystem_mounts_formats_once_and_unmounts_a_busy_mount() {
    require_root_and_fuse("tests/resources.rs filesystem");
    let mut case = FsCase::new("fs");
    let started = Instant::now();
    case.run("start", 0);
    eprintln!("first start (mkfs + mount) took {:?}", started.elapsed());
    assert!(is_mounted(&case.mount), "not mounted after start");
    std::fs::write(case.mount.join("kept.txt"), b"survives a stop").expect("write in the mount");
    case.run("monitor", 0);
    let device = case.device();
    assert_eq!(backing_of(&device).as_deref(), Some(case.image.as_path()));

    // A process keeps the mount busy: stop kills it, unmounts and detaches.
    let holder = Command::new("sleep")
        .arg("600")
        .current_dir(&case.mount)
        .spawn()
        .expect("spawn a process inside the mount");
    case.scratch.children.push(holder);
    let started = Instant::now();
    case.run("stop", 0);
    eprintln!("stop of a busy mount took {:?}", started.elapsed());
    let holder = case.scratch.children.last_mut().expect("the holder");
    let status = wait_for("the holder to be killed", Duration::from_secs(5), || {
        holder.try_wait().ok().flatten()
    });
    assert!(!status.success(), "the holder was killed: {status:?}");
    assert!(!is_mounted(&case.mount), "still mounted after stop");
    // The kernel defers a detach while udev still probes the device after the unmount.
    wait_for(
        &format!("{device} to be detached"),
        Duration::from_secs(10),
        || (backing_of(&device).as_deref() != Some(case.image.as_path())).then_some(()),
    );
    case.run("monitor", 7);

    // Start again: the filesystem exists, so no mkfs; the file is still there.
    case.run("start", 0);
    let kept = std::fs::read(case.mount.join("kept.txt")).expect("the file after a restart");
    assert_eq!(kept, b"survives a stop");
    case.run("stop", 0);
    assert!(!is_mounted(&case.mount));
    let image = case.image.to_str().expect("utf-8");
    let fsck = run_program("e2fsck", &["-n", "-f", image]);
    assert!(fsck.status.success(), "fsck after stop: {}", text(&fsck));
}

#[test]
fn filesystem_stop_when_not_mounted_and_missing_images() {
    require_root_and_fuse("tests/resources.rs filesystem");
    let case = FsCase::new("fs-refuse");
    case.run("stop", 0);
    case.run("monitor", 7);
    // A missing image: the start fails naming it, and leaves nothing attached or mounted.
    let missing = case.scratch.root.join("no-such.img");
    let missing = missing.to_str().expect("utf-8");
    let shown = case
        .scratch
        .expect("start", &case.spec, &["--image", missing], 1);
    assert!(
        shown.contains(missing) && shown.contains("does not exist"),
        "{shown}"
    );
    assert!(!is_mounted(&case.mount));
    assert!(!case.scratch.state().join("run/manual-0.loop").exists());
    // No image at all: refused as a usage error.
    let shown = case.scratch.expect("start", &case.spec, &[], 2);
    assert!(shown.contains("no image given"), "{shown}");
    // The image was never formatted: blkid finds nothing on it.
    let image = case.image.to_str().expect("utf-8");
    let probe = run_program("blkid", &["-p", image]);
    assert_eq!(probe.status.code(), Some(2), "{}", text(&probe));
}

/// The helper half of [`exec_service_dies_with_the_daemon_that_started_it`]: run in a child
/// copy of this test binary, it plays the daemon (a runner not detached), starts a service,
/// prints its PID, and waits to be killed.
fn play_daemon(state_dir: PathBuf) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let spec: tandem_core::group::ResourceSpec = serde_json::from_str(&exec_spec(
        &["sleep", "600"],
        serde_json::json!({"check": "process-alive"}),
    ))
    .expect("spec");
    let ctx = tandem_linux::resources::RunnerContext {
        group: "manual".into(),
        index: 0,
        state_dir: state_dir.clone(),
        image: None,
    };
    let mut runner = tandem_linux::resources::Runner::new(&spec, ctx).expect("runner");
    let outcome = runtime.block_on(runner.start());
    assert_eq!(outcome, tandem_linux::resources::Outcome::Running);
    let pid = std::fs::read_to_string(state_dir.join("run/manual-0.pid")).expect("pid file");
    println!(
        "SERVICE-PID {}",
        pid.split_whitespace().next().unwrap_or("?")
    );
    // Wait to be killed (bounded, so a parent that stopped reading cannot hang the run).
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn exec_service_dies_with_the_daemon_that_started_it() {
    if let Some(dir) = std::env::var_os("TANDEM_RT_PLAY_DAEMON") {
        play_daemon(PathBuf::from(dir));
        return;
    }
    let mut scratch = Scratch::new("pdeathsig");
    let mut daemon = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "exec_service_dies_with_the_daemon_that_started_it",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("TANDEM_RT_PLAY_DAEMON", scratch.state())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the stand-in daemon");
    let mut out = std::io::BufReader::new(daemon.stdout.take().expect("stdout"));
    let mut line = String::new();
    let pid = loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert!(
            n > 0,
            "the stand-in daemon ended without starting the service"
        );
        // libtest prints "test NAME ... " before it on the same line.
        if let Some((_, pid)) = line.trim().split_once("SERVICE-PID ") {
            break pid.parse::<i32>().expect("a pid");
        }
    };
    scratch.children.push(daemon);
    assert!(alive(pid), "the service {pid} runs");
    // The service lives on while its daemon does (it is not tied to the thread that asked).
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "the service {pid} died while its daemon lives");
    let daemon = scratch.children.last_mut().expect("the daemon");
    daemon.kill().expect("kill -9 the stand-in daemon");
    let _ = daemon.wait();
    wait_for(
        "the service to die with its daemon",
        Duration::from_secs(5),
        || (!alive(pid)).then_some(()),
    );
}
