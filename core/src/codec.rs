//! The node-to-node frame format: one checksummed frame per message.
//!
//! The shim carries frames over mutual TLS; the simulator passes the same bytes between fake
//! nodes, so both exercise this decoder. Every malformed input becomes a [`FrameError`] that
//! says what was wrong; the caller logs it and drops the connection.
//!
//! Layout (big-endian), [`HEADER_LEN`] bytes then the payload:
//! `magic "TNDM" | version u8 | kind u8 | reserved u16 (0) | cluster id [16] | from u64 |
//!  to u64 | payload length u32 | crc32c u32 over everything before it and the payload`.

use protobuf::Message as _;
use raft::eraftpb::Message as RaftMessage;

use crate::ids::{ClusterId, NodeId};

pub const MAGIC: [u8; 4] = *b"TNDM";
pub const WIRE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;
/// Snapshots of the cluster state are small; anything bigger is an attack or a bug.
pub const MAX_PAYLOAD: usize = 32 << 20;

const KIND_RAFT: u8 = 1;
const KIND_PING: u8 = 2;
const KIND_PONG: u8 = 3;
const KIND_EVICTED: u8 = 4;
const KIND_OPEN_REPLICATION: u8 = 5;

/// A liveness and lease probe, sent by every node to every other node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    pub seq: u64,
    /// The sender's Raft term when it sent the ping.
    pub term: u64,
    /// How long the sender's own lease still runs (0 = none), for status displays.
    pub lease_remaining_ms: u64,
}

/// The answer to a [`Ping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    pub seq: u64,
    /// The responder's Raft term; only same-term answers count toward a lease.
    pub term: u64,
    /// The responder is leader of `term`, confirmed by a quorum and with an entry of its term
    /// committed: it grants a node lease.
    pub leader_with_lease: bool,
    /// The responder's commit index: the lease takes effect once the pinger applied it.
    pub commit: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PeerMessage {
    Raft(RaftMessage),
    Ping(Ping),
    Pong(Pong),
    /// "You were removed from this cluster": the answer to a ping from a removed node, which
    /// otherwise never learns of its removal (the leader stops replicating to it).
    Evicted,
    /// The first and only cluster frame of a connection that from now on carries the
    /// replication protocol of `volume` (its own frames, `replication::wire`) both ways.
    OpenReplication {
        volume: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub from: NodeId,
    pub to: NodeId,
    pub message: PeerMessage,
}

/// Why bytes from the network are not a frame this node accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short: {len} bytes, a header is {HEADER_LEN}")]
    TooShort { len: usize },
    #[error("bad magic {found:02x?}, expected \"TNDM\" (not a tandem peer?)")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported wire version {found}, this build speaks {WIRE_VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("frame from cluster {found}, this is cluster {expected}")]
    ForeignCluster {
        expected: ClusterId,
        found: ClusterId,
    },
    #[error("payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge { len: usize },
    #[error("header says {declared} payload bytes, frame has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("checksum mismatch: header says {declared:08x}, content hashes to {computed:08x}")]
    BadChecksum { declared: u32, computed: u32 },
    #[error("frame addressed to node {to}, this is node {expected}")]
    Misaddressed { to: NodeId, expected: NodeId },
    #[error("{kind} payload is malformed: {reason}")]
    BadPayload { kind: &'static str, reason: String },
}

/// Encodes a frame for `cluster`.
pub fn encode(cluster: ClusterId, frame: &Frame) -> Vec<u8> {
    let (kind, payload) = match &frame.message {
        PeerMessage::Raft(message) => (KIND_RAFT, message.write_to_bytes().unwrap_or_default()),
        PeerMessage::Ping(ping) => (
            KIND_PING,
            words(&[ping.seq, ping.term, ping.lease_remaining_ms]),
        ),
        PeerMessage::Pong(pong) => (
            KIND_PONG,
            words(&[
                pong.seq,
                pong.term,
                pong.leader_with_lease as u64,
                pong.commit,
            ]),
        ),
        PeerMessage::Evicted => (KIND_EVICTED, Vec::new()),
        PeerMessage::OpenReplication { volume } => {
            (KIND_OPEN_REPLICATION, volume.to_be_bytes().to_vec())
        }
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.push(WIRE_VERSION);
    bytes.push(kind);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(cluster.as_bytes());
    bytes.extend_from_slice(&frame.from.to_be_bytes());
    bytes.extend_from_slice(&frame.to.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes), &payload);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Validates a header and returns the whole frame's length, so a stream reader knows how many
/// more bytes to read before calling [`decode`]. Refuses oversized frames before buffering them.
pub fn frame_len(header: &[u8]) -> Result<usize, FrameError> {
    if header.len() < HEADER_LEN {
        return Err(FrameError::TooShort { len: header.len() });
    }
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if header[4] != WIRE_VERSION {
        return Err(FrameError::UnsupportedVersion { found: header[4] });
    }
    let len = u32::from_be_bytes([header[40], header[41], header[42], header[43]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len });
    }
    Ok(HEADER_LEN + len)
}

/// Decodes and checks one frame meant for node `me` of `cluster`.
pub fn decode(cluster: ClusterId, me: NodeId, bytes: &[u8]) -> Result<Frame, FrameError> {
    let total = frame_len(bytes)?;
    if bytes.len() != total {
        return Err(FrameError::LengthMismatch {
            declared: total - HEADER_LEN,
            actual: bytes.len().saturating_sub(HEADER_LEN),
        });
    }
    let found = ClusterId(array(&bytes[8..24]));
    if found != cluster {
        return Err(FrameError::ForeignCluster {
            expected: cluster,
            found,
        });
    }
    let declared = u32::from_be_bytes(array(&bytes[44..48]));
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..44]), payload);
    if declared != computed {
        return Err(FrameError::BadChecksum { declared, computed });
    }
    let from = u64::from_be_bytes(array(&bytes[24..32]));
    let to = u64::from_be_bytes(array(&bytes[32..40]));
    if to != me {
        return Err(FrameError::Misaddressed { to, expected: me });
    }
    let message = decode_payload(bytes[5], payload, from, to)?;
    Ok(Frame { from, to, message })
}

fn decode_payload(
    kind: u8,
    payload: &[u8],
    from: NodeId,
    to: NodeId,
) -> Result<PeerMessage, FrameError> {
    match kind {
        KIND_RAFT => {
            let message =
                RaftMessage::parse_from_bytes(payload).map_err(|error| FrameError::BadPayload {
                    kind: "raft",
                    reason: error.to_string(),
                })?;
            if message.from != from || message.to != to {
                return Err(FrameError::BadPayload {
                    kind: "raft",
                    reason: format!(
                        "message says {} -> {}, frame says {from} -> {to}",
                        message.from, message.to
                    ),
                });
            }
            Ok(PeerMessage::Raft(message))
        }
        KIND_PING => {
            let [seq, term, lease_remaining_ms] = read_words("ping", payload)?;
            Ok(PeerMessage::Ping(Ping {
                seq,
                term,
                lease_remaining_ms,
            }))
        }
        KIND_PONG => {
            let [seq, term, flag, commit] = read_words("pong", payload)?;
            if flag > 1 {
                return Err(FrameError::BadPayload {
                    kind: "pong",
                    reason: format!("lease flag is {flag}, expected 0 or 1"),
                });
            }
            Ok(PeerMessage::Pong(Pong {
                seq,
                term,
                leader_with_lease: flag == 1,
                commit,
            }))
        }
        KIND_EVICTED if payload.is_empty() => Ok(PeerMessage::Evicted),
        KIND_EVICTED => Err(FrameError::BadPayload {
            kind: "evicted",
            reason: format!("{} bytes, expected none", payload.len()),
        }),
        KIND_OPEN_REPLICATION => {
            let volume: [u8; 8] = payload.try_into().map_err(|_| FrameError::BadPayload {
                kind: "open-replication",
                reason: format!("{} bytes, expected 8", payload.len()),
            })?;
            Ok(PeerMessage::OpenReplication {
                volume: u64::from_be_bytes(volume),
            })
        }
        kind => Err(FrameError::UnknownKind { kind }),
    }
}

fn words(values: &[u64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect()
}

fn read_words<const N: usize>(kind: &'static str, payload: &[u8]) -> Result<[u64; N], FrameError> {
    if payload.len() != N * 8 {
        return Err(FrameError::BadPayload {
            kind,
            reason: format!("{} bytes, expected {}", payload.len(), N * 8),
        });
    }
    Ok(std::array::from_fn(|at| {
        u64::from_be_bytes(array(&payload[at * 8..at * 8 + 8]))
    }))
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&slice[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLUSTER: ClusterId = ClusterId([7; 16]);

    fn ping_frame() -> Frame {
        Frame {
            from: 1,
            to: 2,
            message: PeerMessage::Ping(Ping {
                seq: 9,
                term: 3,
                lease_remaining_ms: 500,
            }),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let mut raft = RaftMessage::default();
        raft.from = 1;
        raft.to = 2;
        raft.term = 5;
        let frames = [
            ping_frame(),
            Frame {
                from: 1,
                to: 2,
                message: PeerMessage::Pong(Pong {
                    seq: 1,
                    term: 2,
                    leader_with_lease: true,
                    commit: 9,
                }),
            },
            Frame {
                from: 1,
                to: 2,
                message: PeerMessage::Raft(raft),
            },
            Frame {
                from: 1,
                to: 2,
                message: PeerMessage::Evicted,
            },
            Frame {
                from: 1,
                to: 2,
                message: PeerMessage::OpenReplication { volume: 7 },
            },
        ];
        for frame in frames {
            assert_eq!(decode(CLUSTER, 2, &encode(CLUSTER, &frame)), Ok(frame));
        }
    }

    #[test]
    fn foreign_misaddressed_and_corrupt_frames_are_named() {
        let bytes = encode(CLUSTER, &ping_frame());
        assert!(matches!(
            decode(ClusterId([8; 16]), 2, &bytes),
            Err(FrameError::ForeignCluster { .. })
        ));
        assert_eq!(
            decode(CLUSTER, 3, &bytes),
            Err(FrameError::Misaddressed { to: 2, expected: 3 })
        );
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            decode(CLUSTER, 2, &flipped),
            Err(FrameError::BadChecksum { .. })
        ));
        assert!(matches!(
            decode(CLUSTER, 2, b"GET / HTTP/1.1\r\n\r\n"),
            Err(FrameError::TooShort { .. })
        ));
        let mut http = b"GET / HTTP/1.1\r\nHost: x\r\n".repeat(3);
        http.truncate(HEADER_LEN);
        assert!(matches!(frame_len(&http), Err(FrameError::BadMagic { .. })));
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        let mut bytes = encode(CLUSTER, &ping_frame());
        bytes[40..44].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            frame_len(&bytes[..HEADER_LEN]),
            Err(FrameError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn raft_ids_must_match_the_header() {
        let mut raft = RaftMessage::default();
        raft.from = 9;
        raft.to = 2;
        let bytes = encode(
            CLUSTER,
            &Frame {
                from: 1,
                to: 2,
                message: PeerMessage::Raft(raft),
            },
        );
        assert!(matches!(
            decode(CLUSTER, 2, &bytes),
            Err(FrameError::BadPayload { kind: "raft", .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(CLUSTER, 2, &bytes);
        }

        #[test]
        fn any_single_bit_flip_is_detected(at in 0usize..(HEADER_LEN + 24), bit in 0u8..8) {
            let bytes = encode(CLUSTER, &ping_frame());
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            prop_assert_ne!(decode(CLUSTER, 2, &flipped), Ok(ping_frame()));
        }
    }
}
