//! The `write` steps of a scenario against real daemons: one writer thread per volume sends
//! each write, as a self-describing 4 KiB block through NBD, to whichever data node serves the
//! volume (its primary), and records what became of it; at the end the blocks are read back
//! through the final primary and from every leg's file.
//!
//! Exists because "no acknowledged write lost" can only be judged by a client that knows
//! exactly which requests were acknowledged. Write `n` of a volume goes to block `n` (modulo
//! the volume's blocks) with version `n + 1` (`chaos_kit::writer::block_content`), so reading a
//! block back tells which write landed, and the chaos run's checker
//! (`chaos_kit::writer::check_blocks`) judges it.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::chaos_kit::writer::{block_content, check_blocks, History, Op, Verdict, BLOCK};
use crate::failover_kit::unix_ms;
use crate::nbd_client::NbdClient;

/// A write without a reply this long is in flight (its node is frozen or cut off).
const REPLY_LIMIT: Duration = Duration::from_secs(5);
/// How long connecting to one node's export may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(1);

/// What became of a write (the simulator's `WriteState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Sent; no reply (its node died, froze or was cut off first).
    InFlight,
    Acknowledged,
    /// Refused by the node, or no node served the volume.
    Failed(String),
}

/// One write of the scenario.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// The step it comes from.
    pub step: usize,
    pub volume: String,
    pub version: u64,
    pub block: u64,
    pub node: Option<String>,
    pub sent_unix_ms: u64,
    pub acked_unix_ms: Option<u64>,
    pub state: WriteState,
}

/// The writer of one volume: send it a step number per write.
pub struct Writer {
    pub volume: String,
    send: Option<Sender<usize>>,
    thread: Option<JoinHandle<()>>,
    pub records: Arc<Mutex<Vec<WriteRecord>>>,
    pub blocks: u64,
}

impl Writer {
    /// Starts the writer of `volume`, whose exports are `sockets` (`(node, path)`).
    pub fn start(volume: &str, sockets: Vec<(String, PathBuf)>, blocks: u64) -> Writer {
        let (send, receive) = std::sync::mpsc::channel();
        let records = Arc::new(Mutex::new(Vec::new()));
        let (shared, name) = (records.clone(), volume.to_string());
        let thread =
            std::thread::spawn(move || write_loop(&name, &sockets, blocks, &receive, &shared));
        Writer {
            volume: volume.to_string(),
            send: Some(send),
            thread: Some(thread),
            records,
            blocks,
        }
    }

    /// Queues one write of step `step` (sent as soon as the writes before it are done).
    pub fn write(&self, step: usize) {
        if let Some(send) = &self.send {
            let _ = send.send(step);
        }
    }

    /// Waits until every queued write is done.
    pub fn finish(&mut self) {
        self.send = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The records, as the chaos run's checker reads them.
    pub fn history(&self) -> History {
        let records = self.records.lock().expect("writer records");
        History {
            ops: records
                .iter()
                .map(|r| Op {
                    version: r.version,
                    block: r.block,
                    discard: false,
                    node: r.node.clone().unwrap_or_default(),
                    sent_ms: r.sent_unix_ms,
                    acked_ms: r.acked_unix_ms,
                })
                .collect(),
            ..History::default()
        }
    }

    /// Checks every block written against what `read` returns for it.
    pub fn check(&self, read: impl FnMut(u64) -> Vec<u8>) -> Verdict {
        let history = self.history();
        let written = (history.ops.len() as u64).min(self.blocks);
        check_blocks(written, &history, read)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write_loop(
    volume: &str,
    sockets: &[(String, PathBuf)],
    blocks: u64,
    receive: &Receiver<usize>,
    records: &Mutex<Vec<WriteRecord>>,
) {
    let mut connection: Option<(String, NbdClient)> = None;
    let mut avoid: Option<String> = None;
    let mut count = 0u64;
    while let Ok(step) = receive.recv() {
        let version = count + 1;
        let block = count % blocks;
        count += 1;
        if connection.is_none() {
            connection = connect(volume, sockets, avoid.as_deref());
        }
        let mut record = WriteRecord {
            step,
            volume: volume.to_string(),
            version,
            block,
            node: connection.as_ref().map(|(node, _)| node.clone()),
            sent_unix_ms: unix_ms(),
            acked_unix_ms: None,
            state: WriteState::Failed(format!("no node serves volume {volume}")),
        };
        if let Some((node, client)) = connection.as_mut() {
            let data = block_content(block, version);
            match client.write(block * BLOCK, &data, false) {
                Ok(()) => {
                    record.acked_unix_ms = Some(unix_ms());
                    record.state = WriteState::Acknowledged;
                }
                Err(error) => {
                    record.state = match error.to_string() {
                        refused if refused.starts_with("server error") => {
                            WriteState::Failed(format!("{node}: {refused}"))
                        }
                        _ => WriteState::InFlight,
                    };
                    avoid = Some(node.clone());
                    connection = None;
                }
            }
        }
        records.lock().expect("writer records").push(record);
    }
}

/// Connects to the first node whose export answers, `avoid` (the node that just failed) last.
fn connect(
    volume: &str,
    sockets: &[(String, PathBuf)],
    avoid: Option<&str>,
) -> Option<(String, NbdClient)> {
    let mut order: Vec<&(String, PathBuf)> = sockets.iter().collect();
    order.sort_by_key(|(node, _)| Some(node.as_str()) == avoid);
    order.into_iter().find_map(|(node, socket)| {
        if !socket.exists() {
            return None;
        }
        let mut client = NbdClient::connect_within(socket, volume, CONNECT_LIMIT).ok()?;
        // The handshake's short limit, then the write's.
        client = rearm(client)?;
        Some((node.clone(), client))
    })
}

/// An open client whose replies may take [`REPLY_LIMIT`].
fn rearm(client: NbdClient) -> Option<NbdClient> {
    client.set_reply_limit(REPLY_LIMIT).ok()?;
    Some(client)
}
