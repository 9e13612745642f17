//! `tandem demo`, the README's main command, run as CI runs it (root): it must build its
//! namespaces, fail the service over, prove every acknowledged increment survived, and leave
//! nothing behind. Run without root it must say what it needs.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use tandem_tests::{require_root_and_fuse, tandem_bin, text};

#[test]
fn the_demo_fails_over_keeps_every_acknowledged_write_and_cleans_up() {
    require_root_and_fuse("tests/demo.rs");
    let fusectl_before = fusectl_mounted();
    let output = Command::new(tandem_bin())
        .arg("demo")
        .output()
        .expect("run tandem demo");
    let all = text(&output);
    assert!(output.status.success(), "tandem demo failed:\n{all}");
    for step in [
        "cluster formed",
        "powered off",
        "healthy on b",
        "promoted",
        "every acknowledged increment survived",
        "cleaning up",
    ] {
        assert!(all.contains(step), "the demo never said {step:?}:\n{all}");
    }
    let pid = output_pid(&all);
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .to_string();
    assert!(
        !netns.contains("tdmdemo-"),
        "namespaces left behind: {netns}"
    );
    let root = std::env::temp_dir().join(format!("tandem-demo-{pid}"));
    assert!(!root.exists(), "{} was not removed", root.display());
    // Powering a node off aborts its FUSE connections through fusectl; a fusectl mount made
    // for that is removed again.
    assert_eq!(
        fusectl_mounted(),
        fusectl_before,
        "the fusectl mount was left behind"
    );
}

fn fusectl_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|line| line.contains(" /sys/fs/fuse/connections "))
}

#[test]
fn without_root_the_demo_says_what_it_needs() {
    // A copy anyone may run (the build directory may be root's alone), then setpriv drops
    // to an unprivileged uid for this one command.
    let dir = std::env::temp_dir().join(format!("tandem-demo-noroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("tandem");
    std::fs::copy(tandem_bin(), &copy).expect("copy the binary");
    for path in [&dir, &copy] {
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(path, mode).expect("chmod");
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .arg("demo")
        .output()
        .expect("run setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("needs root"), "{all}");
    assert!(all.contains("network namespaces"), "{all}");
}

/// The demo's temporary directory is named after its PID: `tandem-demo-<pid>`.
fn output_pid(all: &str) -> String {
    all.split("tandem-demo-")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default()
}
