//! `tandem events [--follow]`: the failover timeline, once or as it grows.
//!
//! The timeline lives in the replicated state (core `events`), so any node shows every node's
//! events. `--follow` asks the local daemon for newer events every few hundred milliseconds
//! (bounded: the control socket answers from memory) until interrupted.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tandem_core::events::MAX_EVENTS;
use tandem_core::{Command, Reply};

use crate::statedir::StateDir;
use crate::{control, render};

/// How often `--follow` asks for newer events.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// Prints the newest `limit` events, then (with `follow`) every new one as it commits.
pub async fn run(root: &Path, limit: usize, follow: bool, json: bool) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(root)?;
    let socket = dir.control_socket_path();
    let mut since = 0;
    let mut limit = limit.min(MAX_EVENTS);
    loop {
        let command = Command::Events { since, limit };
        let reply = control::call(root, &socket, &command).await?;
        let Reply::Events {
            events,
            next_seq,
            names,
        } = &reply
        else {
            print!("{}", render::reply(&reply));
            return Ok(ExitCode::from(1));
        };
        if json {
            for event in events {
                println!("{}", serde_json::to_string(event)?);
            }
        } else if !events.is_empty() || !follow {
            let names = names.iter().cloned().collect();
            print!("{}", render::events(events, &names, since == 0));
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        since = *next_seq;
        limit = MAX_EVENTS;
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
