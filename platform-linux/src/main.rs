//! The `tandem` binary: parses the command line and hands off to the library.
//!
//! Exit codes (DESIGN.md §8): 0 success, 1 the operation was refused or failed, 2 usage or
//! configuration error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use tandem_core::command::LegRequest;
use tandem_core::{Command, Reply};
use tandem_linux::{config, control, daemon, demo, render, setup, statedir::StateDir, verify};

mod group_cli;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Mirrored disks and automatic failover without a SAN"
)]
struct Cli {
    /// The node's state directory (holds its identity, certificates, log and control socket).
    #[arg(long, global = true, default_value = "/var/lib/tandem")]
    state_dir: PathBuf,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Found a new cluster with this node as its first voter.
    Init {
        #[arg(long)]
        name: String,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        site: Option<String>,
    },
    /// Print a join token (it expires).
    Token {
        /// How long the token stays valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Join an existing cluster through one of its members.
    Join {
        #[arg(long)]
        name: String,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        peer: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        site: Option<String>,
        /// Join as a witness: votes, never holds resources.
        #[arg(long)]
        witness: bool,
    },
    /// Run this node (systemd runs this).
    Daemon,
    /// Nodes, quorum and leases at a glance.
    Status,
    /// List and manage nodes.
    Node {
        #[command(subcommand)]
        action: NodeVerb,
    },
    /// Create, inspect and switch mirrored volumes.
    Volume {
        #[command(subcommand)]
        action: VolumeVerb,
    },
    /// Create, inspect, move and switch resource groups (what runs together on one node).
    Group {
        #[command(subcommand)]
        action: group_cli::GroupVerb,
    },
    /// Why a group runs where it runs: every node's verdict and the rule that decided.
    Explain { group: String },
    /// Make the cluster match a declarative cluster.toml (docs/cluster-toml.md): print the
    /// plan, then carry it out step by step.
    Apply {
        file: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the groups and volumes the file does not declare.
        #[arg(long)]
        prune: bool,
    },
    /// The failover timeline: detected, decided, stopped, demoted, promoted, started,
    /// healthy, with each node's own timestamps.
    Events {
        /// Keep printing new events as they commit (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
        /// How many of the newest events to show first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// A real cluster on this machine, with a failover shown.
    Demo,
    /// Start, stop or check one resource by hand, outside the cluster (like crm_resource
    /// --force-start). `monitor` exits 0 running, 7 not running, 1 failed.
    Resource {
        #[command(subcommand)]
        action: tandem_linux::resource_cli::ResourceVerb,
    },
    /// The daemon's watchdog (started by the daemon itself; see `watchdog.rs`).
    #[command(hide = true)]
    Watchdog {
        /// The daemon to watch.
        #[arg(long)]
        daemon_pid: i32,
    },
    /// A tiny HTTP counter keeping its data in DIR (for the demo and failover tests).
    #[command(hide = true)]
    CounterService {
        /// The directory holding the `counter` file (on the mirrored volume).
        #[arg(long)]
        dir: PathBuf,
        /// ADDR:PORT to listen on.
        #[arg(long)]
        listen: String,
        /// The label in answers (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum VolumeVerb {
    /// A new mirrored volume: `--leg NODE[,NODE...]:PATH` once per copy.
    Create {
        name: String,
        /// Size in bytes, or with a unit: 512M, 10G, 1T.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// A copy of the data: the nodes that reach it and its path (device or file).
        #[arg(long = "leg", required = true)]
        legs: Vec<LegRequest>,
        /// Bytes per out-of-sync bit (a power of two, 4K to 1M): the least a reconnect
        /// resyncs per changed spot; 32 MiB of bitmap per peer per TiB at 4K.
        #[arg(long, value_parser = parse_size, default_value = "4K")]
        bitmap_grain: u64,
        /// Bytes per activity-log extent (a power of two, from the grain to 1G): a primary
        /// crash resyncs whole hot extents; smaller means more metadata writes.
        #[arg(long, value_parser = parse_size, default_value = "4M")]
        al_extent: u64,
    },
    List,
    Show {
        name: String,
    },
    /// Make NODE the primary under a new epoch.
    Promote {
        name: String,
        #[arg(long)]
        node: String,
        /// Disaster recovery only: promote even a leg that is not UpToDate (recorded for good).
        #[arg(long)]
        force: bool,
    },
    /// Resync progress of each leg (ask the primary's node); `--watch` follows it until every
    /// leg is UpToDate.
    Resync {
        name: String,
        #[arg(long)]
        watch: bool,
    },
    /// Compare the legs block by block by checksum (on the primary's node) and wait for the
    /// result; `--repair` resyncs mismatching blocks from the primary.
    Verify {
        name: String,
        #[arg(long)]
        repair: bool,
    },
    /// The primary stops writing.
    Demote {
        name: String,
    },
    /// Forget a volume that has no primary (leg contents are left in place).
    Delete {
        name: String,
    },
}

fn parse_size(text: &str) -> Result<u64, String> {
    tandem_core::command::parse_size(text)
}

#[derive(Subcommand)]
enum NodeVerb {
    List,
    Standby { name: String },
    Online { name: String },
    Remove { name: String },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.into()),
    };
    match runtime.block_on(execute(cli, &matches)) {
        Ok(code) => code,
        Err(error) => fail(&error),
    }
}

fn volume_command(action: VolumeVerb) -> Command {
    match action {
        VolumeVerb::Create {
            name,
            size,
            legs,
            bitmap_grain,
            al_extent,
        } => Command::VolumeCreate {
            name,
            size,
            legs,
            granularity: tandem_core::volume::Granularity {
                bitmap_grain: u32::try_from(bitmap_grain).unwrap_or(u32::MAX),
                al_extent: u32::try_from(al_extent).unwrap_or(u32::MAX),
            },
        },
        VolumeVerb::List => Command::VolumeList,
        VolumeVerb::Show { name } => Command::VolumeShow { name },
        VolumeVerb::Promote { name, node, force } => Command::VolumePromote { name, node, force },
        VolumeVerb::Resync { name, .. } => Command::VolumeShow { name },
        VolumeVerb::Verify { name, repair } => Command::VolumeVerify { name, repair },
        VolumeVerb::Demote { name } => Command::VolumeDemote { name },
        VolumeVerb::Delete { name } => Command::VolumeDelete { name },
    }
}

/// `tandem volume resync NAME [--watch]`: progress once, or until every leg is UpToDate.
async fn watch_resync(
    root: &Path,
    name: &str,
    watch: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(root)?;
    let command = Command::VolumeShow {
        name: name.to_string(),
    };
    loop {
        let reply = control::call(root, &dir.control_socket_path(), &command).await?;
        let Reply::Volumes { volumes } = &reply else {
            print!("{}", render::reply(&reply));
            return Ok(ExitCode::from(1));
        };
        let Some(volume) = volumes.first() else {
            return Ok(ExitCode::from(1));
        };
        if json {
            println!("{}", serde_json::to_string(volume)?);
        } else {
            print!("{}", render::resync_progress(volume));
        }
        let synced = volume.legs.iter().all(|leg| leg.state == "UpToDate");
        if !watch || synced {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("tandem: {error:#}");
    let is_config = error.chain().any(|cause| {
        cause.downcast_ref::<config::ConfigError>().is_some()
            || cause.downcast_ref::<group_cli::UsageError>().is_some()
    });
    ExitCode::from(if is_config { 2 } else { 1 })
}

async fn execute(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let root = cli.state_dir.clone();
    let command = match cli.command {
        Verb::Init { name, listen, site } => {
            let spec = setup::NodeSpec {
                name: &name,
                listen: &listen,
                site: site.as_deref(),
            };
            let created = setup::init(&root, &spec)?;
            println!(
                "initialised cluster {} with node {name} (id {}).\nstart it with: tandem daemon --state-dir {}",
                created.cluster,
                created.node_id,
                root.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Join {
            name,
            listen,
            peer,
            token,
            site,
            witness,
        } => {
            let spec = setup::NodeSpec {
                name: &name,
                listen: &listen,
                site: site.as_deref(),
            };
            let created = setup::join(&root, &spec, &peer, &token, witness).await?;
            println!(
                "joined cluster {} as node {name} (id {}, {}).\nstart it with: tandem daemon --state-dir {}",
                created.cluster,
                created.node_id,
                created.role.as_str(),
                root.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Daemon => {
            daemon::run(&root).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Demo => return demo::run().await,
        Verb::Events { follow, limit } => {
            return tandem_linux::events_cli::run(&root, limit, follow, cli.json).await
        }
        Verb::Group { action } => return group_cli::run(&root, action, matches, cli.json).await,
        Verb::Explain { group } => Command::Explain { group },
        Verb::Apply {
            file,
            dry_run,
            prune,
        } => return group_cli::apply(&root, &file, dry_run, prune, cli.json).await,
        Verb::Resource { action } => {
            return Ok(tandem_linux::resource_cli::run(&root, action, cli.json).await)
        }
        Verb::Watchdog { daemon_pid } => return Ok(tandem_linux::watchdog::run(daemon_pid)),
        Verb::CounterService { dir, listen, name } => {
            let options = tandem_linux::counter_service::Options { dir, listen, name };
            tokio::task::spawn_blocking(move || tandem_linux::counter_service::run(&options))
                .await??;
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Token { ttl } => Command::CreateJoinToken { ttl_secs: ttl },
        Verb::Status => Command::Status,
        Verb::Node { action } => match action {
            NodeVerb::List => Command::NodeList,
            NodeVerb::Standby { name } => Command::NodeStandby { name },
            NodeVerb::Online { name } => Command::NodeOnline { name },
            NodeVerb::Remove { name } => Command::NodeRemove { name },
        },
        Verb::Volume {
            action: VolumeVerb::Resync { name, watch },
        } => return watch_resync(&root, &name, watch, cli.json).await,
        Verb::Volume {
            action: VolumeVerb::Verify { name, repair },
        } => return verify::run(&root, &name, repair, cli.json).await,
        Verb::Volume { action } => volume_command(action),
    };
    let dir = StateDir::open(&root)?;
    let reply = control::call(&root, &dir.control_socket_path(), &command).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::reply(&reply));
    }
    Ok(match reply {
        Reply::Refused { .. } => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}
