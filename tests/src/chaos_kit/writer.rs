//! The chaos run's clients of the volume: a verifying writer that follows the primary, probes
//! that keep poking every node's NBD export, and the final read-back that counts lost writes.
//!
//! Exists because "no acknowledged write lost" and "never two writers" can only be checked
//! from outside the daemons, by a client that knows exactly which of its requests were
//! acknowledged, by which node and when. Every block the writer writes is self-describing
//! (block number and version in its first bytes, the rest a pattern derived from both), so a
//! read-back tells which version landed, or that none did.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::failover_kit::unix_ms;
use crate::nbd_client::NbdClient;
use crate::random_bytes;

/// The volume's block size as the writer uses it.
pub const BLOCK: u64 = 4096;
/// A reply slower than this fails the request (a frozen or cut-off primary): the request is
/// then "in flight", neither acknowledged nor refused, and the writer looks for the primary
/// again.
const REPLY_LIMIT: Duration = Duration::from_secs(20);
/// A flush after every this many requests.
const FLUSH_EVERY: u64 = 32;
/// Pause between requests, so the writer does not starve the daemons of the 2-core machine.
const PACE: Duration = Duration::from_millis(3);

/// The content of `block` at `version`: a header naming both, then a pattern from both.
pub fn block_content(block: u64, version: u64) -> Vec<u8> {
    let mut data = random_bytes(BLOCK as usize, (block << 40) ^ version ^ 0x5eed);
    data[..8].copy_from_slice(&block.to_be_bytes());
    data[8..16].copy_from_slice(&version.to_be_bytes());
    data
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// All zeroes: never written, or discarded.
    Zero,
    /// Exactly `block_content(block, version)`.
    Version(u64),
    /// Anything else: torn, another block's data, garbage.
    Corrupt,
}

/// Classifies the bytes read back from `block`.
pub fn classify(block: u64, data: &[u8]) -> Found {
    if data.iter().all(|&b| b == 0) {
        return Found::Zero;
    }
    let named = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    let version = u64::from_be_bytes(data[8..16].try_into().expect("8 bytes"));
    if named == block && data == block_content(block, version).as_slice() {
        Found::Version(version)
    } else {
        Found::Corrupt
    }
}

/// One request of the writer.
#[derive(Clone, Debug)]
pub struct Op {
    /// Issue order; also the version written (a discard writes none).
    pub version: u64,
    pub block: u64,
    pub discard: bool,
    pub node: String,
    pub sent_ms: u64,
    /// When the reply came; `None`: never acknowledged (failed or no reply).
    pub acked_ms: Option<u64>,
}

/// An acknowledged write request as the two-writer check needs it.
#[derive(Clone, Debug)]
pub struct Ack {
    pub node: String,
    pub sent_ms: u64,
    pub acked_ms: u64,
}

/// Everything the clients saw, shared with the test thread.
#[derive(Default)]
pub struct History {
    pub ops: Vec<Op>,
    /// Versions up to which every acknowledged write was covered by an acknowledged FLUSH.
    pub flushed_upto: u64,
    /// Acknowledged probe writes (two-writer check only).
    pub probes: Vec<Ack>,
    pub reconnects: u64,
}

/// Where the nodes serve the volume: `(node, socket)`.
#[derive(Clone)]
pub struct Exports {
    pub volume: String,
    pub sockets: Vec<(String, PathBuf)>,
}

impl Exports {
    /// Connects to the first node whose export answers, trying `avoid` (the node whose
    /// request just failed) last: a deposed primary keeps its export until it learns of the
    /// new epoch, refusing every write, while the new primary already takes them.
    fn connect_any(&self, avoid: Option<&str>) -> Option<(String, NbdClient)> {
        let mut order: Vec<&(String, PathBuf)> = self.sockets.iter().collect();
        order.sort_by_key(|(node, _)| Some(node.as_str()) == avoid);
        order.into_iter().find_map(|(node, socket)| {
            if !socket.exists() {
                return None;
            }
            let client = NbdClient::connect_within(socket, &self.volume, REPLY_LIMIT).ok()?;
            Some((node.clone(), client))
        })
    }
}

/// A small seeded xorshift64 generator (the schedule and the writer both use it).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.draw().is_multiple_of(n)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.draw() % (high - low + 1)
    }
}

/// The verifying writer: until `stop`, writes (and now and then discards) random blocks among
/// `0..blocks` through whichever node serves the volume, flushing every [`FLUSH_EVERY`]
/// requests; records every request in `history`.
pub fn run_writer(
    exports: Exports,
    blocks: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let mut rng = Rng::new(seed);
    let mut connection: Option<(String, NbdClient)> = None;
    let mut failed_on: Option<String> = None;
    let mut version = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some((node, client)) = connection.as_mut() else {
            connection = exports.connect_any(failed_on.as_deref());
            if connection.is_some() {
                history.lock().expect("history").reconnects += 1;
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        };
        version += 1;
        let block = rng.draw() % blocks;
        let discard = rng.one_in(8);
        let mut op = Op {
            version,
            block,
            discard,
            node: node.clone(),
            sent_ms: unix_ms(),
            acked_ms: None,
        };
        let result = if discard {
            client.trim(block * BLOCK, BLOCK as u32)
        } else {
            client.write(block * BLOCK, &block_content(block, version), false)
        };
        let ok = result.is_ok();
        if ok {
            op.acked_ms = Some(unix_ms());
        }
        history.lock().expect("history").ops.push(op);
        if ok && version.is_multiple_of(FLUSH_EVERY) && client.flush().is_ok() {
            history.lock().expect("history").flushed_upto = version;
        }
        if !ok {
            failed_on = Some(node.clone());
            connection = None;
        }
        std::thread::sleep(PACE);
    }
}

/// A probe of one node: every 200 ms, if `node` serves the volume, writes block `block`
/// through it (keeping the connection while it works); records every acknowledged write.
/// These writes go to a node whether or not it should be primary: an acknowledgement from a
/// node that is no longer the primary is exactly what the two-writer check looks for.
pub fn run_probe(
    exports: Exports,
    node: String,
    block: u64,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let socket = exports
        .sockets
        .iter()
        .find(|(name, _)| *name == node)
        .map(|(_, socket)| socket.clone())
        .expect("the probed node has an export");
    let mut client: Option<NbdClient> = None;
    let mut version = 1u64 << 48;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if client.is_none() && socket.exists() {
            client = NbdClient::connect_within(&socket, &exports.volume, REPLY_LIMIT).ok();
        }
        let Some(open) = client.as_mut() else {
            continue;
        };
        version += 1;
        let sent_ms = unix_ms();
        if open
            .write(block * BLOCK, &block_content(block, version), false)
            .is_ok()
        {
            let ack = Ack {
                node: node.clone(),
                sent_ms,
                acked_ms: unix_ms(),
            };
            history.lock().expect("history").probes.push(ack);
        } else {
            client = None;
        }
    }
}

/// The outcome of reading the volume back.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Blocks whose latest acknowledged request does not read back (nor a later one).
    pub lost: Vec<String>,
    /// Of those, how many were covered by an acknowledged FLUSH.
    pub lost_flushed: usize,
    /// Blocks the writer acknowledged at least one request for.
    pub blocks_checked: usize,
    /// Blocks holding a version the writer had sent but never saw acknowledged.
    pub unacked_landed: usize,
}

/// Reads blocks `0..blocks` through `client` and checks each against `history`: the block
/// must hold its latest acknowledged request (a version, or zeroes for a discard) or a
/// request sent after it (in flight when a connection failed, so it may have landed).
pub fn check_reads(client: &mut NbdClient, blocks: u64, history: &History) -> Verdict {
    check_blocks(blocks, history, |block| {
        client
            .read(block * BLOCK, BLOCK as u32)
            .unwrap_or_else(|error| panic!("read-back of block {block} failed: {error}"))
    })
}

/// [`check_reads`] with the reading left to `read` (the block's bytes).
pub fn check_blocks(
    blocks: u64,
    history: &History,
    mut read: impl FnMut(u64) -> Vec<u8>,
) -> Verdict {
    let mut per_block: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        per_block.entry(op.block).or_default().push(op);
    }
    let mut verdict = Verdict::default();
    for block in 0..blocks {
        let found = classify(block, &read(block));
        let ops = per_block.get(&block).map(Vec::as_slice).unwrap_or_default();
        let last_acked = ops.iter().rposition(|op| op.acked_ms.is_some());
        let allowed = &ops[last_acked.unwrap_or(0)..];
        let matches = |op: &Op| match found {
            Found::Zero => op.discard,
            Found::Version(v) => !op.discard && op.version == v,
            Found::Corrupt => false,
        };
        let ok =
            allowed.iter().any(|op| matches(op)) || (last_acked.is_none() && found == Found::Zero);
        if last_acked.is_some() {
            verdict.blocks_checked += 1;
        }
        if ok {
            let landed = allowed.iter().find(|op| matches(op));
            if landed.is_some_and(|op| op.acked_ms.is_none()) {
                verdict.unacked_landed += 1;
            }
            continue;
        }
        let expected = last_acked.map(|i| ops[i]);
        if expected.is_some_and(|op| op.version <= history.flushed_upto) {
            verdict.lost_flushed += 1;
        }
        verdict.lost.push(format!(
            "block {block}: found {found:?}, expected {expected:?} or one of the {} requests after it",
            allowed.len().saturating_sub(1)
        ));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(version: u64, block: u64, discard: bool, acked: bool) -> Op {
        Op {
            version,
            block,
            discard,
            node: "a".into(),
            sent_ms: version,
            acked_ms: acked.then_some(version + 1),
        }
    }

    /// Checks one block (0) whose requests are `ops` and which reads back `data`.
    fn verdict(ops: Vec<Op>, data: Vec<u8>) -> Verdict {
        let history = History {
            ops,
            ..History::default()
        };
        check_blocks(1, &history, |_| data.clone())
    }

    #[test]
    fn the_latest_acknowledged_version_or_a_later_unacknowledged_one_passes() {
        let ops = || {
            vec![
                op(1, 0, false, true),
                op(2, 0, false, true),
                op(3, 0, false, false),
            ]
        };
        let found = verdict(ops(), block_content(0, 2));
        assert!(
            found.lost.is_empty() && found.unacked_landed == 0,
            "{found:?}"
        );
        let found = verdict(ops(), block_content(0, 3));
        assert!(
            found.lost.is_empty() && found.unacked_landed == 1,
            "{found:?}"
        );
    }

    #[test]
    fn an_older_version_zeroes_or_garbage_instead_of_the_acknowledged_one_is_lost() {
        let ops = || vec![op(1, 0, false, false), op(2, 0, false, true)];
        // An unacknowledged request sent *before* the acknowledged one may not win.
        assert_eq!(verdict(ops(), block_content(0, 1)).lost.len(), 1);
        assert_eq!(verdict(ops(), vec![0; BLOCK as usize]).lost.len(), 1);
        let mut torn = block_content(0, 2);
        torn[100] ^= 1;
        assert_eq!(verdict(ops(), torn).lost.len(), 1);
        assert_eq!(verdict(ops(), block_content(1, 2)).lost.len(), 1);
    }

    #[test]
    fn an_acknowledged_discard_reads_back_as_zeroes() {
        let ops = || vec![op(1, 0, false, true), op(2, 0, true, true)];
        assert!(verdict(ops(), vec![0; BLOCK as usize]).lost.is_empty());
        assert_eq!(verdict(ops(), block_content(0, 1)).lost.len(), 1);
        // A block never acknowledged may hold zeroes or an unacknowledged version.
        assert!(verdict(vec![op(1, 0, false, false)], block_content(0, 1))
            .lost
            .is_empty());
        assert!(verdict(Vec::new(), vec![0; BLOCK as usize]).lost.is_empty());
    }
}
