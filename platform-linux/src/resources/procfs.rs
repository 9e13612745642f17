//! Reading `/proc`: whether a process still lives (and is the one we started, not a reused
//! PID), which processes belong to a process group, and which processes use a mount.

use std::path::{Path, PathBuf};

/// The fields of `/proc/PID/stat` the runners need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// R, S, D, Z, T, ...
    pub state: char,
    pub pgrp: i32,
    /// Start time in clock ticks since boot: with the PID, identifies a process for good.
    pub start: u64,
}

/// Parses `/proc/PID/stat` text (the command name may contain spaces and parentheses).
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) ... starttime(22).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Whether `pid` runs (exists and is not a zombie), and, with `start`, is that very process.
pub(crate) fn alive(pid: i32, start: Option<u64>) -> bool {
    match stat(pid) {
        Some(found) => {
            !matches!(found.state, 'Z' | 'X' | 'x') && start.is_none_or(|s| s == found.start)
        }
        None => false,
    }
}

/// Every PID under `/proc`.
pub(crate) fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Living (non-zombie) members of process group `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&pid| {
            stat(pid).is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X' | 'x'))
        })
        .collect()
}

/// Whether `path` is `dir` or below it.
fn under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// The processes (other than this one) whose cwd, root, executable, open files or mapped files
/// lie under `dir`: what keeps a mount busy.
pub(crate) fn users_of(dir: &Path) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    pids()
        .into_iter()
        .filter(|&pid| pid != me && uses(pid, dir))
        .collect()
}

fn uses(pid: i32, dir: &Path) -> bool {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let link_under = |link: PathBuf| std::fs::read_link(link).is_ok_and(|p| under(&p, dir));
    if ["cwd", "root", "exe"]
        .iter()
        .any(|name| link_under(base.join(name)))
    {
        return true;
    }
    if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
        if fds.filter_map(Result::ok).any(|fd| link_under(fd.path())) {
            return true;
        }
    }
    maps_under(&base.join("maps"), dir)
}

/// Whether a mapping in a `/proc/PID/maps` file is a file under `dir`.
fn maps_under(maps: &Path, dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(maps) else {
        return false;
    };
    text.lines().any(|line| {
        // address perms offset dev inode path
        line.split_whitespace()
            .nth(5)
            .is_some_and(|path| path.starts_with('/') && under(Path::new(path), dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_names() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 \
                    1000 10 18446744073709551615";
        let parsed = parse_stat(text).expect("parses");
        assert_eq!(
            parsed,
            Stat {
                state: 'S',
                pgrp: 1234,
                start: 98765
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let start = stat(me).expect("own stat").start;
        assert!(alive(me, Some(start)));
        assert!(!alive(me, Some(start + 1)));
    }
}
