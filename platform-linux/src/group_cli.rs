//! The operator surface for groups: `tandem group create|list|show|move|clear|enable|disable|
//! delete`, and `tandem apply FILE`.
//!
//! It exists to turn command-line words into the typed commands of `tandem_core::command`
//! and to print their replies; what a command means is decided by the daemon
//! (`tandem_core::group_plan`). `group create` takes resources as flags in command-line
//! order (clap keeps each flag's values apart, so the order is rebuilt from clap's argument
//! indices), or a whole group from `--file`. Input that is wrong by itself (bad syntax, a bad
//! name or CIDR) is a usage error (exit 2); what the cluster refuses (a missing volume, an
//! unknown node) exits 1 (DESIGN.md §8).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, ArgMatches, Args, Subcommand, ValueEnum};
use tandem_core::apply::{self, GroupDef};
use tandem_core::group::{Failback, HealthCheck, Monitor, ResourceSpec, ServiceSpec};
use tandem_core::{Command, Reply};
use tandem_linux::{control, render, resources, statedir::StateDir};

/// Input that is wrong by itself, whatever the cluster holds: the CLI exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Subcommand)]
pub enum GroupVerb {
    /// Create a group: resources as flags in start order, or a whole group from --file.
    Create(Box<CreateArgs>),
    /// Every group: enabled, where it is placed, its epoch, resources and quarantines.
    List,
    /// A group's resources, settings, placement, pin, failures and quarantines.
    Show { name: String },
    /// Pin the group to NODE until `tandem group clear` (the scheduler moves it there).
    Move { name: String, node: String },
    /// Drop the group's pin, failure history and quarantines.
    Clear { name: String },
    /// Let the scheduler place the group again.
    Enable { name: String },
    /// Stop the group everywhere and place it nowhere.
    Disable { name: String },
    /// Forget a group that is placed nowhere (disable it and wait until it stopped first).
    Delete { name: String },
}

const RESOURCES: &str = "Resources (started in command-line order, stopped in reverse)";

const CREATE_HELP: &str = "\
Resource flags may repeat; the order on the command line is the start order. Modifiers
(--mkfs, --mount-options, --health, --param, --monitor-interval, --monitor-timeout) apply to
the resource just before them.

Health checks (--health, after --exec): process (default), tcp:PORT, tcp:HOST:PORT,
http:URL (or just http://... / https://...), cmd:\"COMMAND ARGS\".
Durations: 500ms, 5s, 2m; a bare number is seconds.
Commands (--exec, cmd:) are split like a shell would (quotes, backslashes), but run
without a shell.

Example:
  tandem group create web --prefer a,b --failback auto \\
    --volume db --filesystem db:/srv/db:ext4 --mkfs --mount-options noatime \\
    --ip 10.0.0.5/24@eth0 \\
    --exec \"/usr/bin/python3 -m http.server 8080\" --health tcp:8080 --monitor-interval 5s

Or a whole group from a file in the schema of cluster.toml's [[group]]
(docs/cluster-toml.md):
  tandem group create --file web.toml";

/// The flags that describe resources, as clap names them (the field names below).
const RESOURCE_FLAGS: [&str; 12] = [
    "volume",
    "filesystem",
    "mkfs",
    "mount_options",
    "ip",
    "exec",
    "health",
    "systemd",
    "ocf",
    "param",
    "monitor_interval",
    "monitor_timeout",
];

#[derive(Clone, Copy, ValueEnum)]
enum FailbackArg {
    Manual,
    Auto,
}

#[derive(Args)]
#[command(after_help = CREATE_HELP)]
pub struct CreateArgs {
    /// The group's name (taken from the file with --file).
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// A whole group, in the schema of cluster.toml's [[group]] (instead of every other flag).
    #[arg(long, value_name = "FILE", conflicts_with_all = RESOURCE_FLAGS,
          conflicts_with_all = ["prefer", "failback", "stickiness", "max_restarts",
                                "restart_window", "quarantine", "disabled"])]
    file: Option<PathBuf>,
    /// Nodes in order of preference (others are used after them).
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    prefer: Vec<String>,
    /// Move back to a more preferred node once it is eligible again (default manual).
    #[arg(long, value_enum)]
    failback: Option<FailbackArg>,
    /// With --failback auto: move back only to a node more than N places ahead (default 0).
    #[arg(long, value_name = "N")]
    stickiness: Option<u32>,
    /// Local restarts allowed within the restart window before failing over (default 3).
    #[arg(long, value_name = "N")]
    max_restarts: Option<u32>,
    /// The window in which failures count, in seconds (default 300).
    #[arg(long, value_name = "SECS")]
    restart_window: Option<u64>,
    /// How long a node is barred for the group after too many failures (default 600).
    #[arg(long, value_name = "SECS")]
    quarantine: Option<u64>,
    /// Create it disabled: placed nowhere until `tandem group enable`.
    #[arg(long)]
    disabled: bool,
    /// Be the primary of volume VOL.
    #[arg(long, value_name = "VOL", help_heading = RESOURCES)]
    volume: Vec<String>,
    /// Mount volume VOL at MOUNTPOINT (FSTYPE default ext4); VOL needs an earlier --volume.
    #[arg(long, value_name = "VOL:MOUNTPOINT[:FSTYPE]", help_heading = RESOURCES)]
    filesystem: Vec<String>,
    /// Make the filesystem before it on first use, when the volume holds none.
    #[arg(long, num_args = 0, default_missing_value = "true", action = ArgAction::Append,
          help_heading = RESOURCES)]
    mkfs: Vec<bool>,
    /// Mount options (-o) of the filesystem before it, comma-separated.
    #[arg(long, value_name = "OPTS", help_heading = RESOURCES)]
    mount_options: Vec<String>,
    /// A virtual IP, on IFACE or on the interface whose subnet holds it.
    #[arg(long, value_name = "CIDR[@IFACE]", help_heading = RESOURCES)]
    ip: Vec<String>,
    /// A process tandem starts and watches (argv; no shell).
    #[arg(long, value_name = "\"CMD ARGS\"", allow_hyphen_values = true,
          help_heading = RESOURCES)]
    exec: Vec<String>,
    /// How the --exec before it is judged healthy (see below).
    #[arg(long, value_name = "CHECK", allow_hyphen_values = true, help_heading = RESOURCES)]
    health: Vec<String>,
    /// A systemd unit.
    #[arg(long, value_name = "UNIT", help_heading = RESOURCES)]
    systemd: Vec<String>,
    /// An OCF resource agent (/usr/lib/ocf/resource.d/PROVIDER/AGENT).
    #[arg(long, value_name = "PROVIDER:AGENT", help_heading = RESOURCES)]
    ocf: Vec<String>,
    /// A parameter of the --ocf before it (OCF_RESKEY_KEY=VALUE); repeatable.
    #[arg(long, value_name = "KEY=VALUE", help_heading = RESOURCES)]
    param: Vec<String>,
    /// How often the resource before it is checked (default 10s).
    #[arg(long, value_name = "DURATION", help_heading = RESOURCES)]
    monitor_interval: Vec<String>,
    /// How long one check of the resource before it may take (default 20s).
    #[arg(long, value_name = "DURATION", help_heading = RESOURCES)]
    monitor_timeout: Vec<String>,
}

/// Runs a `tandem group` verb. `matches` are the whole command line's (for the flag order).
pub async fn run(
    root: &Path,
    action: GroupVerb,
    matches: &ArgMatches,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (command, detail) = match action {
        GroupVerb::Create(args) => {
            let create = matches
                .subcommand_matches("group")
                .and_then(|group| group.subcommand_matches("create"))
                .ok_or_else(|| UsageError("expected `tandem group create`".into()))?;
            let def = definition(&args, create)?;
            if let Err(message) = local_checks(&def) {
                eprintln!("tandem: refused on this node: {message}");
                return Ok(ExitCode::from(1));
            }
            (Command::GroupCreate { group: def }, false)
        }
        GroupVerb::List => (Command::GroupList, false),
        GroupVerb::Show { name } => (Command::GroupShow { name }, true),
        GroupVerb::Move { name, node } => (Command::GroupMove { name, node }, false),
        GroupVerb::Clear { name } => (Command::GroupClear { name }, false),
        GroupVerb::Enable { name } => (Command::GroupEnable { name }, false),
        GroupVerb::Disable { name } => (Command::GroupDisable { name }, false),
        GroupVerb::Delete { name } => (Command::GroupDelete { name }, false),
    };
    let reply = call(root, &command).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        match &reply {
            Reply::Groups { groups } if detail => {
                groups
                    .iter()
                    .for_each(|g| print!("{}", render::group_details(g)));
            }
            other => print!("{}", render::reply(other)),
        }
    }
    Ok(exit_code(&reply))
}

/// Checks only this node can make: a service's program, OCF agent (and its required
/// parameters) or systemd tooling exists here. Virtual IPs are not checked here: the
/// interface is the running node's, which may differ from where the command is typed. The
/// cluster-wide checks are the daemon's.
fn local_checks(group: &GroupDef) -> Result<(), String> {
    for (index, spec) in group.resources.iter().enumerate() {
        if matches!(spec, ResourceSpec::Service { .. }) {
            resources::validate(spec, &group.name, index).map_err(|error| error.to_string())?;
        }
    }
    Ok(())
}

async fn call(root: &Path, command: &Command) -> anyhow::Result<Reply> {
    let dir = StateDir::open(root)?;
    Ok(control::call(root, &dir.control_socket_path(), command).await?)
}

fn exit_code(reply: &Reply) -> ExitCode {
    match reply {
        Reply::Refused { .. } => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

/// The group `create` describes: from `--file`, or from the flags.
fn definition(args: &CreateArgs, matches: &ArgMatches) -> Result<GroupDef, UsageError> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|error| UsageError(format!("cannot read {}: {error}", path.display())))?;
        let def = apply::parse_group(&path.display().to_string(), &text)
            .map_err(|error| UsageError(error.to_string()))?;
        if let Some(name) = args.name.as_ref().filter(|name| **name != def.name) {
            return Err(UsageError(format!(
                "the name {name} differs from the name {} in {}",
                def.name,
                path.display()
            )));
        }
        return Ok(def);
    }
    let name = args.name.clone().unwrap_or_default();
    let resources = resources_in_order(matches).map_err(UsageError)?;
    let mut def = GroupDef::new(&name, resources);
    def.preferred = args.prefer.clone();
    if let Some(failback) = args.failback {
        def.failback = match failback {
            FailbackArg::Manual => Failback::Manual,
            FailbackArg::Auto => Failback::Auto,
        };
    }
    def.stickiness = args.stickiness.unwrap_or(def.stickiness);
    def.max_restarts = args.max_restarts.unwrap_or(def.max_restarts);
    def.restart_window_secs = args.restart_window.unwrap_or(def.restart_window_secs);
    def.quarantine_secs = args.quarantine.unwrap_or(def.quarantine_secs);
    def.enabled = !args.disabled;
    def.validate().map_err(UsageError)?;
    Ok(def)
}

/// Every resource flag's values with their positions on the command line, in that order.
fn flags_in_order(matches: &ArgMatches) -> Vec<(&'static str, String)> {
    let mut items: Vec<(usize, &'static str, String)> = Vec::new();
    for flag in RESOURCE_FLAGS {
        let Some(indices) = matches.indices_of(flag) else {
            continue;
        };
        let values: Vec<String> = match flag {
            "mkfs" => Vec::new(),
            _ => matches
                .get_many::<String>(flag)
                .map(|values| values.cloned().collect())
                .unwrap_or_default(),
        };
        for (n, index) in indices.enumerate() {
            items.push((index, flag, values.get(n).cloned().unwrap_or_default()));
        }
    }
    items.sort_by_key(|(index, _, _)| *index);
    items
        .into_iter()
        .map(|(_, flag, value)| (flag, value))
        .collect()
}

/// The resources the flags describe, in command-line order.
fn resources_in_order(matches: &ArgMatches) -> Result<Vec<ResourceSpec>, String> {
    let mut resources: Vec<ResourceSpec> = Vec::new();
    for (flag, value) in flags_in_order(matches) {
        let monitor = Monitor::default();
        let resource = match flag {
            "volume" => ResourceSpec::Volume {
                volume: value,
                monitor,
            },
            "filesystem" => parse_filesystem(&value)?,
            "ip" => {
                let (cidr, interface) = match value.split_once('@') {
                    Some((cidr, interface)) => (cidr.to_string(), Some(interface.to_string())),
                    None => (value, None),
                };
                ResourceSpec::Ip {
                    cidr,
                    interface,
                    monitor,
                }
            }
            "exec" => service(ServiceSpec::Exec {
                command: split_command("--exec", &value)?,
                health: HealthCheck::ProcessAlive,
            }),
            "systemd" => service(ServiceSpec::Systemd { unit: value }),
            "ocf" => {
                let (provider, agent) = value.split_once(':').ok_or_else(|| {
                    format!("--ocf {value:?}: expected PROVIDER:AGENT, e.g. heartbeat:IPaddr2")
                })?;
                service(ServiceSpec::Ocf {
                    provider: provider.to_string(),
                    agent: agent.to_string(),
                    params: Default::default(),
                })
            }
            modifier => {
                modify(resources.last_mut(), modifier, &value)?;
                continue;
            }
        };
        resources.push(resource);
    }
    Ok(resources)
}

fn service(service: ServiceSpec) -> ResourceSpec {
    ResourceSpec::Service {
        service,
        monitor: Monitor::default(),
    }
}

fn parse_filesystem(value: &str) -> Result<ResourceSpec, String> {
    let mut parts = value.splitn(3, ':');
    let (Some(volume), Some(mountpoint)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "--filesystem {value:?}: expected VOL:MOUNTPOINT[:FSTYPE], e.g. db:/srv/db:ext4"
        ));
    };
    Ok(ResourceSpec::Filesystem {
        volume: volume.to_string(),
        mountpoint: mountpoint.to_string(),
        fstype: parts.next().unwrap_or("ext4").to_string(),
        mkfs: false,
        options: String::new(),
        monitor: Monitor::default(),
    })
}

/// Applies a modifier flag to the resource before it.
fn modify(last: Option<&mut ResourceSpec>, flag: &str, value: &str) -> Result<(), String> {
    let option = format!("--{}", flag.replace('_', "-"));
    let Some(last) = last else {
        return Err(format!(
            "{option} applies to the resource before it, but no resource comes before it"
        ));
    };
    let what = last.to_string();
    let wrong = |expected: &str| {
        format!(
            "{option} applies to the {expected} before it, but the resource before it is {what}"
        )
    };
    match (flag, last) {
        ("mkfs", ResourceSpec::Filesystem { mkfs, .. }) => *mkfs = true,
        ("mount_options", ResourceSpec::Filesystem { options, .. }) => *options = value.into(),
        ("mkfs" | "mount_options", _) => return Err(wrong("--filesystem")),
        ("health", ResourceSpec::Service { service, .. }) => match service {
            ServiceSpec::Exec { health, .. } => *health = parse_health(value)?,
            _ => return Err(wrong("--exec")),
        },
        ("health", _) => return Err(wrong("--exec")),
        ("param", ResourceSpec::Service { service, .. }) => match service {
            ServiceSpec::Ocf { params, .. } => {
                let (key, val) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--param {value:?}: expected KEY=VALUE"))?;
                params.insert(key.to_string(), val.to_string());
            }
            _ => return Err(wrong("--ocf")),
        },
        ("param", _) => return Err(wrong("--ocf")),
        (_, resource) => {
            let ms = parse_duration_ms(&option, value)?;
            let monitor = monitor_mut(resource);
            if flag == "monitor_interval" {
                monitor.interval_ms = Some(ms);
            } else {
                monitor.timeout_ms = Some(ms);
            }
        }
    }
    Ok(())
}

fn monitor_mut(resource: &mut ResourceSpec) -> &mut Monitor {
    match resource {
        ResourceSpec::Volume { monitor, .. }
        | ResourceSpec::Filesystem { monitor, .. }
        | ResourceSpec::Ip { monitor, .. }
        | ResourceSpec::Service { monitor, .. } => monitor,
    }
}

/// `process`, `tcp:PORT`, `tcp:HOST:PORT`, `http:URL` (or a bare http(s) URL), `cmd:"..."`.
fn parse_health(value: &str) -> Result<HealthCheck, String> {
    if value.starts_with("http://") || value.starts_with("https://") {
        return Ok(HealthCheck::Http { url: value.into() });
    }
    let bad = || {
        format!(
            "--health {value:?}: expected process, tcp:PORT, tcp:HOST:PORT, http:URL or \
             cmd:\"COMMAND ARGS\""
        )
    };
    let (kind, rest) = match value.split_once(':') {
        Some(split) => split,
        None if value == "process" => return Ok(HealthCheck::ProcessAlive),
        None => return Err(bad()),
    };
    match kind {
        "tcp" => {
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (Some(host.to_string()), port),
                None => (None, rest),
            };
            let port = port.parse().map_err(|_| bad())?;
            Ok(HealthCheck::Tcp { host, port })
        }
        "http" => Ok(HealthCheck::Http { url: rest.into() }),
        "cmd" => Ok(HealthCheck::Command {
            command: split_command("--health cmd:", rest)?,
        }),
        _ => Err(bad()),
    }
}

/// `500ms`, `5s`, `2m`; a bare number is seconds.
fn parse_duration_ms(option: &str, value: &str) -> Result<u64, String> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || format!("{option} {value:?}: expected a duration such as 500ms, 5s or 2m");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).ok_or_else(bad)
}

/// Splits a command line into argv like a POSIX shell would for plain words: whitespace
/// separates, '...' is literal, "..." allows \" and \\, a backslash escapes the next char.
fn split_command(option: &str, line: &str) -> Result<Vec<String>, String> {
    let mut argv = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => argv.extend(word.take()),
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    word.push(c);
                }
                if !closed {
                    return Err(format!("{option} {line:?}: an unterminated ' quote"));
                }
            }
            '"' => double_quoted(&mut chars, word.get_or_insert_with(String::new))
                .map_err(|why| format!("{option} {line:?}: {why}"))?,
            '\\' => match chars.next() {
                Some(next) => word.get_or_insert_with(String::new).push(next),
                None => return Err(format!("{option} {line:?}: a trailing backslash")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    argv.extend(word);
    if argv.is_empty() {
        return Err(format!("{option} needs a command"));
    }
    Ok(argv)
}

fn double_quoted(chars: &mut std::str::Chars<'_>, word: &mut String) -> Result<(), String> {
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok(()),
            '\\' => match chars.next() {
                Some(next @ ('"' | '\\' | '$' | '`')) => word.push(next),
                Some(next) => {
                    word.push('\\');
                    word.push(next);
                }
                None => break,
            },
            c => word.push(c),
        }
    }
    Err("an unterminated \" quote".into())
}

/// `tandem apply FILE [--dry-run] [--prune]`: parse here, plan on the daemon, then send each
/// step in order and stop at the first refusal.
pub async fn apply(
    root: &Path,
    file: &Path,
    dry_run: bool,
    prune: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| UsageError(format!("cannot read {}: {error}", file.display())))?;
    let desired = apply::parse_cluster(&file.display().to_string(), &text)
        .map_err(|error| UsageError(error.to_string()))?;
    if let Some(message) = desired
        .groups
        .iter()
        .find_map(|def| local_checks(def).err())
    {
        eprintln!("tandem: refused on this node: {message}");
        return Ok(ExitCode::from(1));
    }
    let reply = call(
        root,
        &Command::ApplyPlan {
            file: desired,
            prune,
        },
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&reply)?);
    }
    let Reply::ApplyPlan { steps, notes } = &reply else {
        if !json {
            print!("{}", render::reply(&reply));
        }
        return Ok(ExitCode::from(1));
    };
    if !json {
        print!("{}", render::apply_plan(steps, notes, dry_run));
    }
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    for (n, step) in steps.iter().enumerate() {
        let outcome = call(root, &step.command).await?;
        if json {
            let line = serde_json::json!({ "step": n + 1, "reply": outcome });
            println!("{line}");
        } else {
            print!(
                "{}",
                render::step_outcome(n + 1, steps.len(), step, &outcome)
            );
        }
        if matches!(outcome, Reply::Refused { .. }) {
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Test {
        #[command(subcommand)]
        verb: Verb,
    }

    #[derive(clap::Subcommand)]
    enum Verb {
        Group {
            #[command(subcommand)]
            action: GroupVerb,
        },
    }

    fn create(args: &[&str]) -> Result<GroupDef, String> {
        let mut line = vec!["tandem", "group", "create"];
        line.extend_from_slice(args);
        let matches = Test::command()
            .try_get_matches_from(line)
            .map_err(|e| e.to_string())?;
        let Verb::Group {
            action: GroupVerb::Create(parsed),
        } = Test::from_arg_matches(&matches)
            .map_err(|e| e.to_string())?
            .verb
        else {
            panic!("expected create");
        };
        let create = matches
            .subcommand_matches("group")
            .and_then(|g| g.subcommand_matches("create"))
            .expect("create matches");
        definition(&parsed, create).map_err(|e| e.0)
    }

    #[test]
    fn resources_keep_their_command_line_order_and_modifiers() {
        let def = create(&[
            "web",
            "--prefer",
            "b,a",
            "--failback",
            "auto",
            "--disabled",
            "--volume",
            "db",
            "--filesystem",
            "db:/srv/db",
            "--mkfs",
            "--mount-options",
            "noatime",
            "--ip",
            "10.0.0.5/24@eth0",
            "--monitor-interval",
            "5s",
            "--exec",
            "sh -c 'sleep 600' \"a b\"",
            "--health",
            "tcp:127.0.0.1:8080",
            "--monitor-timeout",
            "500ms",
            "--ocf",
            "heartbeat:Dummy",
            "--param",
            "state=/x",
            "--systemd",
            "nginx.service",
        ])
        .unwrap();
        let names: Vec<String> = def.resources.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "volume db",
                "filesystem /srv/db",
                "ip 10.0.0.5/24",
                "exec sh",
                "ocf heartbeat:Dummy",
                "systemd nginx.service"
            ]
        );
        assert_eq!(def.preferred, ["b", "a"]);
        assert_eq!(def.failback, Failback::Auto);
        assert!(!def.enabled);
        let ResourceSpec::Filesystem {
            mkfs,
            options,
            fstype,
            ..
        } = &def.resources[1]
        else {
            panic!("a filesystem");
        };
        assert!(*mkfs && options == "noatime" && fstype == "ext4");
        assert_eq!(def.resources[2].monitor().interval_ms, Some(5_000));
        let ResourceSpec::Service { service, monitor } = &def.resources[3] else {
            panic!("a service");
        };
        assert_eq!(monitor.timeout_ms, Some(500));
        let ServiceSpec::Exec { command, health } = service else {
            panic!("exec");
        };
        assert_eq!(command, &["sh", "-c", "sleep 600", "a b"]);
        let host = Some("127.0.0.1".to_string());
        assert_eq!(health, &HealthCheck::Tcp { host, port: 8080 });
    }

    #[test]
    fn bad_flags_are_usage_errors_naming_the_flag() {
        let cases: [(&[&str], &str); 9] = [
            (
                &["web", "--mkfs"],
                "--mkfs applies to the resource before it, but no resource",
            ),
            (
                &["web", "--volume", "db", "--mkfs"],
                "the resource before it is volume db",
            ),
            (
                &["web", "--ip", "10.0.0.5/24", "--health", "process"],
                "applies to the --exec",
            ),
            (
                &["web", "--exec", "x", "--health", "udp:5"],
                "expected process, tcp:PORT",
            ),
            (
                &["web", "--exec", "'x", "--health", "process"],
                "unterminated ' quote",
            ),
            (
                &["web", "--exec", "x", "--monitor-interval", "5h"],
                "expected a duration",
            ),
            (&["web", "--ocf", "Dummy"], "expected PROVIDER:AGENT"),
            (
                &["web", "--ip", "10.0.0.300/24"],
                "group web, resource 0 (ip 10.0.0.300/24)",
            ),
            (
                &["bad name", "--volume", "db"],
                "group name \"bad name\" is invalid",
            ),
        ];
        for (args, expected) in cases {
            let error = create(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
        let error = create(&["web", "--file", "x.toml", "--volume", "db"]).unwrap_err();
        assert!(error.contains("cannot be used with"), "{error}");
        let error = create(&["web", "--file", "/nonexistent/x.toml"]).unwrap_err();
        assert!(error.contains("cannot read /nonexistent/x.toml"), "{error}");
    }

    #[test]
    fn health_checks_and_durations_parse() {
        assert_eq!(parse_health("process"), Ok(HealthCheck::ProcessAlive));
        let url = "http://127.0.0.1:8080/health".to_string();
        assert_eq!(
            parse_health(&url),
            Ok(HealthCheck::Http { url: url.clone() })
        );
        assert_eq!(
            parse_health(&format!("http:{url}")),
            Ok(HealthCheck::Http { url })
        );
        let tcp = HealthCheck::Tcp {
            host: None,
            port: 80,
        };
        assert_eq!(parse_health("tcp:80"), Ok(tcp));
        let command = vec!["pg_isready".to_string(), "-q".to_string()];
        assert_eq!(
            parse_health("cmd:pg_isready -q"),
            Ok(HealthCheck::Command { command })
        );
        assert_eq!(parse_duration_ms("x", "2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("x", "7"), Ok(7_000));
        assert!(split_command("--exec", "  ")
            .unwrap_err()
            .contains("needs a command"));
        assert!(split_command("--exec", "a \"b")
            .unwrap_err()
            .contains("unterminated"));
    }
}
