//! The replication link's frame format: one checksummed frame per message.
//!
//! Why a format of its own: the link carries bulk data (writes, resync) between a primary and
//! its secondaries, on connections separate from the cluster's Raft and liveness traffic, and
//! it must refuse anything malformed before a single byte reaches a disk (DESIGN.md rule 5).
//! The shim reads a [`HEADER_LEN`]-byte header, asks [`frame_len`] how much more to read
//! (oversized frames are refused from the header alone), then calls [`decode`].
//!
//! Layout (big-endian), [`HEADER_LEN`] bytes then the payload:
//! `magic "TNRL" | version u8 | kind u8 | reserved u16 (0) | payload length u32 |
//!  crc32c u32 over the 12 header bytes before it and the payload`.
//!
//! Every data message carries the epoch of the primary that sent it, so that a secondary
//! refuses writes from any epoch but the current one even when frames from an old primary
//! are still on the way (DESIGN.md rule 2).
//!
//! Two additions ride on the same frames:
//!
//! - **Online verify** (`VerifyRequest` / `VerifyReply`): the primary asks a secondary for
//!   one [`verify_digest`] per [`VERIFY_BLOCK`] of a range and compares them with its own, so
//!   proving the legs identical (DESIGN.md rule 4) costs 8 bytes on the wire per 4 KiB.
//! - **Crash-suspect ranges** ([`Suspect`], in `HelloAck`): a leg whose primary crashed may
//!   hold writes nobody acknowledged, but only inside its activity log's hot extents. When it
//!   comes back as a secondary it names them, so the new primary resyncs those and what was
//!   written since the takeover instead of the whole leg. The list is an optional, versioned
//!   tail of `HelloAck` ([`SUSPECT_FORMAT`]); an 8-byte `HelloAck` is the old form and means
//!   "nothing suspect", so the two forms interoperate.

use std::fmt;

use crate::volume::LegId;

pub const MAGIC: [u8; 4] = *b"TNRL";
/// The frame format version (header byte 4).
pub const WIRE_VERSION: u8 = 1;
/// The replication protocol version a [`Message::Hello`] announces. Version 2 added
/// [`Message::Confirm`].
pub const PROTOCOL_VERSION: u32 = 2;
pub const HEADER_LEN: usize = 16;
/// The largest data payload of one write or resync message (NBD's usual maximum request).
pub const MAX_DATA: usize = 32 << 20;
/// The largest payload: the data plus the fixed fields of the biggest message.
pub const MAX_PAYLOAD: usize = MAX_DATA + 64;
/// The longest refusal text.
pub const MAX_REFUSE_TEXT: usize = 1024;
/// Bytes covered by one digest of a [`Message::VerifyReply`]. It is the smallest bitmap grain,
/// so a mismatch maps onto whole grains and a repair resyncs no more than it must; one 8-byte
/// digest per 4 KiB costs 0.2 % of the bytes compared. Verify ranges start on a multiple of
/// it; only the volume's last block may be shorter.
pub const VERIFY_BLOCK: u64 = 4096;
/// The longest range one `VerifyRequest` covers: a reply holds at most 8192 digests.
pub const MAX_VERIFY_LEN: u64 = MAX_DATA as u64;
/// The most crash-suspect ranges a `HelloAck` lists; a leg with more sends
/// [`Suspect::Everything`] instead (a full resync: always safe, just slower).
pub const MAX_SUSPECT_RANGES: usize = 4096;
/// The version of the suspect-range tail of a `HelloAck`.
pub const SUSPECT_FORMAT: u8 = 1;

const AT_CRC: usize = 12;

/// Why a secondary refused a primary's message; sent in [`Message::Refuse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseCode {
    Version,
    Cluster,
    Volume,
    Leg,
    Size,
    /// The primary's epoch is older than the secondary's committed one.
    StaleEpoch,
    /// The primary's epoch is newer than the secondary's committed one (it may retry).
    FutureEpoch,
    NotAttached,
    OutOfRange,
    Busy,
    Protocol,
    /// A code this build does not know (from a newer peer).
    Other(u16),
}

impl RefuseCode {
    pub fn to_u16(self) -> u16 {
        match self {
            RefuseCode::Version => 1,
            RefuseCode::Cluster => 2,
            RefuseCode::Volume => 3,
            RefuseCode::Leg => 4,
            RefuseCode::Size => 5,
            RefuseCode::StaleEpoch => 6,
            RefuseCode::FutureEpoch => 7,
            RefuseCode::NotAttached => 8,
            RefuseCode::OutOfRange => 9,
            RefuseCode::Busy => 10,
            RefuseCode::Protocol => 11,
            RefuseCode::Other(code) => code,
        }
    }

    pub fn from_u16(code: u16) -> RefuseCode {
        match code {
            1 => RefuseCode::Version,
            2 => RefuseCode::Cluster,
            3 => RefuseCode::Volume,
            4 => RefuseCode::Leg,
            5 => RefuseCode::Size,
            6 => RefuseCode::StaleEpoch,
            7 => RefuseCode::FutureEpoch,
            8 => RefuseCode::NotAttached,
            9 => RefuseCode::OutOfRange,
            10 => RefuseCode::Busy,
            11 => RefuseCode::Protocol,
            other => RefuseCode::Other(other),
        }
    }
}

impl fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseCode::Other(code) => write!(f, "code {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// What a secondary's leg may hold that no primary acknowledged (see the module comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suspect {
    /// These byte ranges `(offset, len)`; empty: nothing is suspect.
    Ranges(Vec<(u64, u64)>),
    /// Anything may differ: too many ranges to list, or the activity log was lost.
    Everything,
}

impl Suspect {
    /// Nothing is suspect (the 8-byte `HelloAck` of protocol version 1).
    pub fn none() -> Suspect {
        Suspect::Ranges(Vec::new())
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Suspect::Ranges(ranges) if ranges.is_empty())
    }

    /// Both lists (unsorted, possibly overlapping); `Everything` if either is.
    pub fn union(self, other: Suspect) -> Suspect {
        match (self, other) {
            (Suspect::Ranges(mut a), Suspect::Ranges(b)) => {
                a.extend(b);
                Suspect::Ranges(a)
            }
            _ => Suspect::Everything,
        }
    }
}

impl Default for Suspect {
    fn default() -> Suspect {
        Suspect::none()
    }
}

/// One message of the replication protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Primary → secondary: "I am the primary of `epoch`; attach me to your leg `leg`".
    Hello {
        version: u32,
        cluster: [u8; 16],
        volume: u64,
        leg: LegId,
        from_node: u64,
        epoch: u64,
        size: u64,
    },
    /// Secondary → primary: attached in `epoch`; `suspect`: what its leg may hold that no
    /// primary acknowledged (it was the primary and crashed), to be resynced.
    HelloAck {
        epoch: u64,
        suspect: Suspect,
    },
    /// Secondary → primary: the last message (or the Hello) is refused; the link is unusable.
    Refuse {
        code: RefuseCode,
        text: String,
    },
    /// `fua`: durable on the secondary's disk before the ack.
    Write {
        epoch: u64,
        seq: u64,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Trim {
        epoch: u64,
        seq: u64,
        offset: u64,
        len: u64,
        fua: bool,
    },
    WriteZeroes {
        epoch: u64,
        seq: u64,
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// Everything the secondary acknowledged before receiving this is made durable.
    Flush {
        epoch: u64,
        seq: u64,
    },
    /// Secondary → primary: message `seq` is done (`ok`) or failed on the secondary's disk.
    Ack {
        epoch: u64,
        seq: u64,
        ok: bool,
    },
    /// Resync: the primary's bytes at `offset`.
    ResyncData {
        epoch: u64,
        seq: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Primary → secondary: every client request numbered below `below` is on every
    /// `UpToDate` leg (or was released from a leg committed behind). The secondary forgets
    /// those; what it applied and never saw confirmed it names as suspect to the next primary,
    /// because after a takeover the surviving legs may differ exactly there.
    Confirm {
        epoch: u64,
        below: u64,
    },
    /// Primary → secondary: read `len` bytes at `offset` and answer with their digests.
    VerifyRequest {
        epoch: u64,
        seq: u64,
        offset: u64,
        len: u64,
    },
    /// Secondary → primary: one [`verify_digest`] per [`VERIFY_BLOCK`] of the requested range.
    VerifyReply {
        epoch: u64,
        seq: u64,
        offset: u64,
        len: u64,
        digests: Vec<u64>,
    },
}

const KIND_HELLO: u8 = 1;
const KIND_HELLO_ACK: u8 = 2;
const KIND_REFUSE: u8 = 3;
const KIND_WRITE: u8 = 4;
const KIND_TRIM: u8 = 5;
const KIND_WRITE_ZEROES: u8 = 6;
const KIND_FLUSH: u8 = 7;
const KIND_ACK: u8 = 8;
const KIND_RESYNC_DATA: u8 = 9;
const KIND_PING: u8 = 10;
const KIND_PONG: u8 = 11;
const KIND_VERIFY_REQUEST: u8 = 12;
const KIND_VERIFY_REPLY: u8 = 13;
const KIND_CONFIRM: u8 = 14;

impl Message {
    /// The message's name, for errors and logs.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind())
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => KIND_HELLO,
            Message::HelloAck { .. } => KIND_HELLO_ACK,
            Message::Refuse { .. } => KIND_REFUSE,
            Message::Write { .. } => KIND_WRITE,
            Message::Trim { .. } => KIND_TRIM,
            Message::WriteZeroes { .. } => KIND_WRITE_ZEROES,
            Message::Flush { .. } => KIND_FLUSH,
            Message::Ack { .. } => KIND_ACK,
            Message::ResyncData { .. } => KIND_RESYNC_DATA,
            Message::Ping { .. } => KIND_PING,
            Message::Pong { .. } => KIND_PONG,
            Message::VerifyRequest { .. } => KIND_VERIFY_REQUEST,
            Message::VerifyReply { .. } => KIND_VERIFY_REPLY,
            Message::Confirm { .. } => KIND_CONFIRM,
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HELLO => "hello",
        KIND_HELLO_ACK => "hello-ack",
        KIND_REFUSE => "refuse",
        KIND_WRITE => "write",
        KIND_TRIM => "trim",
        KIND_WRITE_ZEROES => "write-zeroes",
        KIND_FLUSH => "flush",
        KIND_ACK => "ack",
        KIND_RESYNC_DATA => "resync-data",
        KIND_PING => "ping",
        KIND_PONG => "pong",
        KIND_CONFIRM => "confirm",
        KIND_VERIFY_REQUEST => "verify-request",
        KIND_VERIFY_REPLY => "verify-reply",
        _ => "unknown",
    }
}

/// Why bytes are not a replication frame this build accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame truncated: {len} bytes, the header alone is {HEADER_LEN}")]
    TooShort { len: usize },
    #[error("bad magic {found:02x?} at bytes 0..4, expected \"TNRL\" (not a replication link?)")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported frame version {found} at byte 4, this build speaks {WIRE_VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("reserved header bytes 6..8 are {found:#06x}, expected 0")]
    Reserved { found: u16 },
    #[error("payload length {len} (header bytes 8..12) exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge { len: usize },
    #[error("frame truncated: header declares {declared} payload bytes, only {actual} present")]
    Truncated { declared: usize, actual: usize },
    #[error("{extra} trailing bytes after a {declared}-byte payload")]
    TrailingBytes { declared: usize, extra: usize },
    #[error(
        "checksum mismatch: header bytes 12..16 say {declared:08x}, content hashes to {computed:08x}"
    )]
    BadChecksum { declared: u32, computed: u32 },
    #[error("unknown message kind {kind} at byte 5")]
    UnknownKind { kind: u8 },
    #[error("{kind} payload is malformed at payload byte {at}: {reason}")]
    BadPayload {
        kind: &'static str,
        at: usize,
        reason: String,
    },
}

/// Encodes one message as a frame. Data beyond [`MAX_DATA`] bytes is the caller's bug; such a
/// frame is refused by every decoder, so the primary never builds one (it bounds requests).
pub fn encode(message: &Message) -> Vec<u8> {
    let payload = encode_payload(message);
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.push(WIRE_VERSION);
    bytes.push(message.kind());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes), &payload);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    for value in values {
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn encode_payload(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    match message {
        Message::Hello {
            version,
            cluster,
            volume,
            leg,
            from_node,
            epoch,
            size,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(cluster);
            out.extend_from_slice(&volume.to_be_bytes());
            out.extend_from_slice(&leg.to_be_bytes());
            put_u64s(&mut out, &[*from_node, *epoch, *size]);
        }
        Message::HelloAck { epoch, suspect } => {
            put_u64s(&mut out, &[*epoch]);
            encode_suspect(&mut out, suspect);
        }
        Message::Refuse { code, text } => {
            out.extend_from_slice(&code.to_u16().to_be_bytes());
            let mut end = text.len().min(MAX_REFUSE_TEXT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&text.as_bytes()[..end]);
        }
        Message::Write { .. } | Message::ResyncData { .. } => return encode_data(message),
        Message::Trim {
            epoch,
            seq,
            offset,
            len,
            fua,
        }
        | Message::WriteZeroes {
            epoch,
            seq,
            offset,
            len,
            fua,
        } => {
            put_u64s(&mut out, &[*epoch, *seq, *offset, *len]);
            out.push(u8::from(*fua));
        }
        Message::Flush { epoch, seq } => put_u64s(&mut out, &[*epoch, *seq]),
        Message::Ack { epoch, seq, ok } => {
            put_u64s(&mut out, &[*epoch, *seq]);
            out.push(u8::from(*ok));
        }
        Message::Ping { seq } | Message::Pong { seq } => put_u64s(&mut out, &[*seq]),
        Message::Confirm { epoch, below } => put_u64s(&mut out, &[*epoch, *below]),
        Message::VerifyRequest { .. } | Message::VerifyReply { .. } => {
            encode_verify(&mut out, message)
        }
    }
    out
}

/// `epoch | seq | offset | len`, and for a reply `count u32 | count × digest u64`.
fn encode_verify(out: &mut Vec<u8>, message: &Message) {
    match message {
        Message::VerifyRequest {
            epoch,
            seq,
            offset,
            len,
        } => put_u64s(out, &[*epoch, *seq, *offset, *len]),
        Message::VerifyReply {
            epoch,
            seq,
            offset,
            len,
            digests,
        } => {
            put_u64s(out, &[*epoch, *seq, *offset, *len]);
            out.extend_from_slice(&(digests.len() as u32).to_be_bytes());
            put_u64s(out, digests);
        }
        _ => {}
    }
}

/// The suspect tail of a `HelloAck`: nothing for "none" (the old 8-byte form), else
/// `format u8 | everything u8 | count u32 | count × (offset u64, len u64)`. A list longer
/// than [`MAX_SUSPECT_RANGES`] is sent as "everything", which is always safe.
fn encode_suspect(out: &mut Vec<u8>, suspect: &Suspect) {
    let ranges = match suspect {
        Suspect::Ranges(ranges) if ranges.is_empty() => return,
        Suspect::Ranges(ranges) if ranges.len() <= MAX_SUSPECT_RANGES => ranges.as_slice(),
        _ => &[],
    };
    out.push(SUSPECT_FORMAT);
    out.push(u8::from(ranges.is_empty()));
    out.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
    for &(offset, len) in ranges {
        put_u64s(out, &[offset, len]);
    }
}

fn encode_data(message: &Message) -> Vec<u8> {
    let (fields, flag, data): ([u64; 3], Option<bool>, &[u8]) = match message {
        Message::Write {
            epoch,
            seq,
            offset,
            data,
            fua,
        } => ([*epoch, *seq, *offset], Some(*fua), data),
        Message::ResyncData {
            epoch,
            seq,
            offset,
            data,
        } => ([*epoch, *seq, *offset], None, data),
        _ => return Vec::new(),
    };
    let mut out = Vec::with_capacity(25 + data.len());
    for value in fields {
        out.extend_from_slice(&value.to_be_bytes());
    }
    if let Some(flag) = flag {
        out.push(u8::from(flag));
    }
    out.extend_from_slice(data);
    out
}

/// Validates a header and returns the whole frame's length, so a stream reader knows how many
/// more bytes to read before calling [`decode`]. Refuses oversized frames before buffering.
pub fn frame_len(header: &[u8]) -> Result<usize, WireError> {
    if header.len() < HEADER_LEN {
        return Err(WireError::TooShort { len: header.len() });
    }
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    if header[4] != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: header[4] });
    }
    let reserved = u16::from_be_bytes([header[6], header[7]]);
    if reserved != 0 {
        return Err(WireError::Reserved { found: reserved });
    }
    let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::PayloadTooLarge { len });
    }
    Ok(HEADER_LEN + len)
}

/// Decodes and checks exactly one frame.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let total = frame_len(bytes)?;
    let declared = total - HEADER_LEN;
    let actual = bytes.len() - HEADER_LEN;
    if actual < declared {
        return Err(WireError::Truncated { declared, actual });
    }
    if actual > declared {
        return Err(WireError::TrailingBytes {
            declared,
            extra: actual - declared,
        });
    }
    let stored = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..AT_CRC]), payload);
    if stored != computed {
        return Err(WireError::BadChecksum {
            declared: stored,
            computed,
        });
    }
    decode_payload(bytes[5], payload)
}

/// Reads big-endian fields from a payload, naming the message kind and offset on failure.
struct Reader<'a> {
    kind: &'static str,
    payload: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(kind: u8, payload: &'a [u8]) -> Reader<'a> {
        Reader {
            kind: kind_name(kind),
            payload,
            at: 0,
        }
    }

    fn error(&self, reason: String) -> WireError {
        WireError::BadPayload {
            kind: self.kind,
            at: self.at,
            reason,
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let end = self.at + N;
        let Some(slice) = self.payload.get(self.at..end) else {
            let left = self.payload.len().saturating_sub(self.at);
            return Err(self.error(format!("needs {N} more bytes, {left} left")));
        };
        let mut out = [0; N];
        out.copy_from_slice(slice);
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.take::<8>().map(u64::from_be_bytes)
    }

    fn flag(&mut self, name: &str) -> Result<bool, WireError> {
        match self.take::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => {
                self.at -= 1;
                Err(self.error(format!("{name} flag is {other}, expected 0 or 1")))
            }
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.payload[self.at.min(self.payload.len())..];
        self.at = self.payload.len();
        rest
    }

    fn end(&self) -> Result<(), WireError> {
        let extra = self.payload.len().saturating_sub(self.at);
        if extra > 0 {
            return Err(self.error(format!("{extra} unexpected trailing bytes")));
        }
        Ok(())
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader::new(kind, payload);
    let message = match kind {
        KIND_HELLO => Message::Hello {
            version: u32::from_be_bytes(r.take()?),
            cluster: r.take()?,
            volume: r.u64()?,
            leg: u32::from_be_bytes(r.take()?),
            from_node: r.u64()?,
            epoch: r.u64()?,
            size: r.u64()?,
        },
        KIND_HELLO_ACK => decode_hello_ack(&mut r)?,
        KIND_REFUSE => decode_refuse(&mut r)?,
        KIND_WRITE | KIND_RESYNC_DATA => return decode_data(kind, &mut r),
        KIND_TRIM | KIND_WRITE_ZEROES => {
            let [epoch, seq, offset, len] = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
            let fua = r.flag("fua")?;
            if kind == KIND_TRIM {
                Message::Trim {
                    epoch,
                    seq,
                    offset,
                    len,
                    fua,
                }
            } else {
                Message::WriteZeroes {
                    epoch,
                    seq,
                    offset,
                    len,
                    fua,
                }
            }
        }
        KIND_FLUSH => Message::Flush {
            epoch: r.u64()?,
            seq: r.u64()?,
        },
        KIND_ACK => Message::Ack {
            epoch: r.u64()?,
            seq: r.u64()?,
            ok: r.flag("ok")?,
        },
        KIND_PING => Message::Ping { seq: r.u64()? },
        KIND_PONG => Message::Pong { seq: r.u64()? },
        KIND_CONFIRM => Message::Confirm {
            epoch: r.u64()?,
            below: r.u64()?,
        },
        KIND_VERIFY_REQUEST => Message::VerifyRequest {
            epoch: r.u64()?,
            seq: r.u64()?,
            offset: r.u64()?,
            len: r.u64()?,
        },
        KIND_VERIFY_REPLY => decode_verify_reply(&mut r)?,
        kind => return Err(WireError::UnknownKind { kind }),
    };
    r.end()?;
    Ok(message)
}

fn decode_hello_ack(r: &mut Reader<'_>) -> Result<Message, WireError> {
    let epoch = r.u64()?;
    if r.at == r.payload.len() {
        let suspect = Suspect::none();
        return Ok(Message::HelloAck { epoch, suspect });
    }
    let format = r.take::<1>()?[0];
    if format != SUSPECT_FORMAT {
        r.at -= 1;
        return Err(r.error(format!(
            "suspect-range format {format} is not supported, this build reads {SUSPECT_FORMAT}"
        )));
    }
    let everything = r.flag("everything")?;
    let count = u32::from_be_bytes(r.take()?) as usize;
    if everything && count != 0 {
        r.at -= 4;
        return Err(r.error(format!("the everything marker comes with {count} ranges")));
    }
    if count > MAX_SUSPECT_RANGES {
        r.at -= 4;
        return Err(r.error(format!(
            "{count} suspect ranges exceed the limit of {MAX_SUSPECT_RANGES}"
        )));
    }
    let left = r.payload.len().saturating_sub(r.at);
    if left != count * 16 {
        return Err(r.error(format!(
            "{count} suspect ranges need {} bytes, {left} follow",
            count * 16
        )));
    }
    if everything {
        let suspect = Suspect::Everything;
        return Ok(Message::HelloAck { epoch, suspect });
    }
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        ranges.push((r.u64()?, r.u64()?));
    }
    let suspect = Suspect::Ranges(ranges);
    Ok(Message::HelloAck { epoch, suspect })
}

fn decode_verify_reply(r: &mut Reader<'_>) -> Result<Message, WireError> {
    let [epoch, seq, offset] = [r.u64()?, r.u64()?, r.u64()?];
    let len = r.u64()?;
    if len > MAX_VERIFY_LEN {
        r.at -= 8;
        return Err(r.error(format!(
            "verify length {len} exceeds the {MAX_VERIFY_LEN}-byte limit"
        )));
    }
    let count = u32::from_be_bytes(r.take()?) as usize;
    let expected = len.div_ceil(VERIFY_BLOCK) as usize;
    if count != expected {
        r.at -= 4;
        return Err(r.error(format!(
            "{count} digests for {len} bytes, expected {expected} (one per {VERIFY_BLOCK} bytes)"
        )));
    }
    let left = r.payload.len().saturating_sub(r.at);
    if left != count * 8 {
        return Err(r.error(format!(
            "{count} digests need {} bytes, {left} follow",
            count * 8
        )));
    }
    let mut digests = Vec::with_capacity(count);
    for _ in 0..count {
        digests.push(r.u64()?);
    }
    Ok(Message::VerifyReply {
        epoch,
        seq,
        offset,
        len,
        digests,
    })
}

/// The digest of one verify block, compared between legs by online verify.
///
/// Low 32 bits: the block's crc32c (hardware-accelerated; catches every burst error of up to
/// 32 bits, and misses a random corruption with probability 2^-32). High 32 bits: a
/// position-weighted sum of the block's 64-bit words, folded to 32 bits. The sum is
/// arithmetic over the integers rather than polynomial over GF(2), so the error patterns
/// that crc32c's linearity cancels are not the ones it misses; together a corrupted block goes
/// unnoticed with a probability of about 2^-64. (A second crc32c with another seed would add
/// nothing: CRCs of the same bytes from two seeds differ by a constant that depends only on
/// the length.) Blocks are compared position by position, so there is no birthday effect, and
/// neither half is cryptographic: the digest finds corruption and divergence, not forgery; it
/// does not need to, since only cluster members, which may write both legs anyway, take part.
pub fn verify_digest(block: &[u8]) -> u64 {
    let crc = crc32c::crc32c(block);
    let mut sum = 0u64;
    let mut weight = 1u64;
    let mut words = block.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        sum = sum.wrapping_add(u64::from_le_bytes(bytes).wrapping_mul(weight));
        weight = weight.wrapping_add(2);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    sum = sum.wrapping_add(u64::from_le_bytes(tail).wrapping_mul(weight));
    let folded = (sum ^ (sum >> 32)) as u32;
    (u64::from(folded) << 32) | u64::from(crc)
}

/// The digests of consecutive [`VERIFY_BLOCK`]s of `data` (the last one may be shorter).
pub fn verify_digests(data: &[u8]) -> Vec<u64> {
    data.chunks(VERIFY_BLOCK as usize)
        .map(verify_digest)
        .collect()
}

fn decode_refuse(r: &mut Reader<'_>) -> Result<Message, WireError> {
    let code = RefuseCode::from_u16(u16::from_be_bytes(r.take()?));
    let start = r.at;
    let text = r.rest();
    if text.len() > MAX_REFUSE_TEXT {
        r.at = start;
        return Err(r.error(format!(
            "text of {} bytes exceeds {MAX_REFUSE_TEXT}",
            text.len()
        )));
    }
    match std::str::from_utf8(text) {
        Ok(text) => Ok(Message::Refuse {
            code,
            text: text.to_string(),
        }),
        Err(error) => {
            r.at = start + error.valid_up_to();
            Err(r.error("text is not UTF-8".into()))
        }
    }
}

fn decode_data(kind: u8, r: &mut Reader<'_>) -> Result<Message, WireError> {
    let [epoch, seq, offset] = [r.u64()?, r.u64()?, r.u64()?];
    if kind == KIND_WRITE {
        let fua = r.flag("fua")?;
        return Ok(Message::Write {
            epoch,
            seq,
            offset,
            data: r.rest().to_vec(),
            fua,
        });
    }
    Ok(Message::ResyncData {
        epoch,
        seq,
        offset,
        data: r.rest().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                cluster: [7; 16],
                volume: 3,
                leg: 1,
                from_node: 9,
                epoch: 4,
                size: 1 << 30,
            },
            Message::HelloAck {
                epoch: 4,
                suspect: Suspect::none(),
            },
            Message::HelloAck {
                epoch: 4,
                suspect: Suspect::Ranges(vec![(0, 4096), (1 << 20, 64 << 10)]),
            },
            Message::HelloAck {
                epoch: 4,
                suspect: Suspect::Everything,
            },
            Message::Refuse {
                code: RefuseCode::StaleEpoch,
                text: "epoch 2 is stale: this leg is at epoch 3".into(),
            },
            Message::Write {
                epoch: 4,
                seq: 1,
                offset: 4096,
                data: vec![1, 2, 3],
                fua: true,
            },
            Message::Trim {
                epoch: 4,
                seq: 2,
                offset: 0,
                len: 8192,
                fua: false,
            },
            Message::WriteZeroes {
                epoch: 4,
                seq: 3,
                offset: 0,
                len: 8192,
                fua: true,
            },
            Message::Flush { epoch: 4, seq: 4 },
            Message::Ack {
                epoch: 4,
                seq: 4,
                ok: true,
            },
            Message::ResyncData {
                epoch: 4,
                seq: 5,
                offset: 0,
                data: vec![9; 100],
            },
            Message::Ping { seq: 1 },
            Message::Pong { seq: 1 },
            Message::Confirm { epoch: 4, below: 9 },
            Message::VerifyRequest {
                epoch: 4,
                seq: 6,
                offset: 8192,
                len: 3 * VERIFY_BLOCK,
            },
            Message::VerifyReply {
                epoch: 4,
                seq: 6,
                offset: 8192,
                len: 3 * VERIFY_BLOCK - 100,
                digests: vec![1, 2, u64::MAX],
            },
        ]
    }

    fn suspect() -> impl Strategy<Value = Suspect> {
        prop_oneof![
            1 => Just(Suspect::Everything),
            4 => proptest::collection::vec(any::<(u64, u64)>(), 0..20).prop_map(Suspect::Ranges),
        ]
    }

    fn verify_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            any::<[u64; 4]>().prop_map(|[epoch, seq, offset, len]| Message::VerifyRequest {
                epoch,
                seq,
                offset,
                len
            }),
            (any::<[u64; 3]>(), 0..=64 * VERIFY_BLOCK).prop_flat_map(|([e, s, o], len)| {
                let count = len.div_ceil(VERIFY_BLOCK) as usize;
                proptest::collection::vec(any::<u64>(), count).prop_map(move |digests| {
                    Message::VerifyReply {
                        epoch: e,
                        seq: s,
                        offset: o,
                        len,
                        digests,
                    }
                })
            }),
            (any::<u64>(), suspect())
                .prop_map(|(epoch, suspect)| Message::HelloAck { epoch, suspect }),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        let data = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (any::<u32>(), any::<[u8; 16]>(), any::<u64>(), any::<u32>()).prop_flat_map(
                |(version, cluster, volume, leg)| (any::<[u64; 3]>()).prop_map(move |[n, e, s]| {
                    Message::Hello {
                        version,
                        cluster,
                        volume,
                        leg,
                        from_node: n,
                        epoch: e,
                        size: s,
                    }
                })
            ),
            any::<u64>().prop_map(|epoch| Message::HelloAck {
                epoch,
                suspect: Suspect::none()
            }),
            (any::<u16>(), ".{0,40}").prop_map(|(code, text)| Message::Refuse {
                code: RefuseCode::from_u16(code),
                text
            }),
            (any::<[u64; 3]>(), data.clone(), any::<bool>()).prop_map(|([e, s, o], data, fua)| {
                Message::Write {
                    epoch: e,
                    seq: s,
                    offset: o,
                    data,
                    fua,
                }
            }),
            (any::<[u64; 4]>(), any::<bool>(), any::<bool>()).prop_map(|([e, s, o, l], fua, t)| {
                if t {
                    Message::Trim {
                        epoch: e,
                        seq: s,
                        offset: o,
                        len: l,
                        fua,
                    }
                } else {
                    Message::WriteZeroes {
                        epoch: e,
                        seq: s,
                        offset: o,
                        len: l,
                        fua,
                    }
                }
            }),
            any::<[u64; 2]>().prop_map(|[epoch, seq]| Message::Flush { epoch, seq }),
            (any::<[u64; 2]>(), any::<bool>()).prop_map(|([epoch, seq], ok)| Message::Ack {
                epoch,
                seq,
                ok
            }),
            (any::<[u64; 3]>(), data).prop_map(|([e, s, o], data)| Message::ResyncData {
                epoch: e,
                seq: s,
                offset: o,
                data
            }),
            any::<u64>().prop_map(|seq| Message::Ping { seq }),
            any::<u64>().prop_map(|seq| Message::Pong { seq }),
            any::<[u64; 2]>().prop_map(|[epoch, below]| Message::Confirm { epoch, below }),
            verify_message(),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for message in samples() {
            assert_eq!(decode(&encode(&message)), Ok(message));
        }
    }

    #[test]
    fn malformed_frames_are_named() {
        let bytes = encode(&Message::Ping { seq: 1 });
        assert_eq!(decode(&bytes[..10]), Err(WireError::TooShort { len: 10 }));
        assert_eq!(
            decode(&bytes[..HEADER_LEN + 3]),
            Err(WireError::Truncated {
                declared: 8,
                actual: 3
            })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(WireError::TrailingBytes { extra: 1, .. })
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        let error = decode(&magic).unwrap_err();
        assert!(error.to_string().contains("bytes 0..4"), "{error}");
        let mut version = bytes.clone();
        version[4] = 9;
        assert_eq!(
            decode(&version),
            Err(WireError::UnsupportedVersion { found: 9 })
        );
        let mut big = bytes.clone();
        big[8..12].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        assert!(matches!(
            frame_len(&big[..HEADER_LEN]),
            Err(WireError::PayloadTooLarge { .. })
        ));
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN] ^= 0x10;
        assert!(matches!(
            decode(&flipped),
            Err(WireError::BadChecksum { .. })
        ));
    }

    /// A frame with a correct checksum but a bad body: the error names kind and position.
    fn resealed(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[WIRE_VERSION, kind, 0, 0]);
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes), payload);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn bad_bodies_with_good_checksums_are_refused_with_a_position() {
        assert_eq!(
            decode(&resealed(99, &[])),
            Err(WireError::UnknownKind { kind: 99 })
        );
        let error = decode(&resealed(KIND_ACK, &[0; 10])).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::BadPayload {
                    kind: "ack",
                    at: 8,
                    ..
                }
            ),
            "{error}"
        );
        let mut ack = vec![0; 16];
        ack.push(2);
        let error = decode(&resealed(KIND_ACK, &ack)).unwrap_err();
        assert!(error.to_string().contains("ok flag is 2"), "{error}");
        let error = decode(&resealed(KIND_PING, &[0; 9])).unwrap_err();
        assert!(error.to_string().contains("trailing"), "{error}");
        let error = decode(&resealed(KIND_REFUSE, &[0, 1, 0xff, 0xfe])).unwrap_err();
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[test]
    fn an_old_eight_byte_hello_ack_means_nothing_suspect() {
        let old = resealed(KIND_HELLO_ACK, &9u64.to_be_bytes());
        let suspect = Suspect::none();
        assert_eq!(decode(&old), Ok(Message::HelloAck { epoch: 9, suspect }));
        let too_many = Message::HelloAck {
            epoch: 9,
            suspect: Suspect::Ranges(vec![(0, 1); MAX_SUSPECT_RANGES + 1]),
        };
        let everything = Message::HelloAck {
            epoch: 9,
            suspect: Suspect::Everything,
        };
        assert_eq!(
            decode(&encode(&too_many)),
            Ok(everything),
            "sent as everything"
        );
    }

    /// A HelloAck payload: epoch 1, then `tail`.
    fn hello_ack_with(tail: &[u8]) -> Result<Message, WireError> {
        let mut payload = 1u64.to_be_bytes().to_vec();
        payload.extend_from_slice(tail);
        decode(&resealed(KIND_HELLO_ACK, &payload))
    }

    #[test]
    fn malformed_suspect_lists_are_refused_naming_the_field() {
        let cases: [(&[u8], usize, &str); 5] = [
            (&[2, 0, 0, 0, 0, 0], 8, "format 2 is not supported"),
            (&[1, 7, 0, 0, 0, 0], 9, "everything flag is 7"),
            (
                &[1, 1, 0, 0, 0, 1],
                10,
                "everything marker comes with 1 ranges",
            ),
            (&[1, 0, 0, 0, 0x10, 1], 10, "4097 suspect ranges exceed"),
            (
                &[1, 0, 0, 0, 0, 1, 0, 0],
                14,
                "1 suspect ranges need 16 bytes, 2 follow",
            ),
        ];
        for (tail, at, text) in cases {
            let error = hello_ack_with(tail).unwrap_err();
            assert!(
                matches!(error, WireError::BadPayload { kind: "hello-ack", at: found, .. } if found == at),
                "{error}"
            );
            assert!(error.to_string().contains(text), "{error}");
        }
    }

    /// A VerifyReply payload with the given length and digest count, and `extra` digests.
    fn verify_reply_with(len: u64, count: u32, digests: usize) -> Result<Message, WireError> {
        let mut payload = Vec::new();
        put_u64s(&mut payload, &[1, 2, 0, len]);
        payload.extend_from_slice(&count.to_be_bytes());
        put_u64s(&mut payload, &vec![7; digests]);
        decode(&resealed(KIND_VERIFY_REPLY, &payload))
    }

    #[test]
    fn malformed_verify_frames_are_refused_naming_the_field() {
        assert!(verify_reply_with(2 * VERIFY_BLOCK, 2, 2).is_ok());
        let error = verify_reply_with(2 * VERIFY_BLOCK, 3, 3).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::BadPayload {
                    kind: "verify-reply",
                    at: 32,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("3 digests for 8192 bytes, expected 2"),
            "{error}"
        );
        let error = verify_reply_with(2 * VERIFY_BLOCK, 2, 1).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("2 digests need 16 bytes, 8 follow"),
            "{error}"
        );
        let error = verify_reply_with(MAX_VERIFY_LEN + 1, 0, 0).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::BadPayload {
                    kind: "verify-reply",
                    at: 24,
                    ..
                }
            ),
            "{error}"
        );
        let error = decode(&resealed(KIND_VERIFY_REQUEST, &[0; 31])).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::BadPayload {
                    kind: "verify-request",
                    at: 24,
                    ..
                }
            ),
            "{error}"
        );
        let error = decode(&resealed(KIND_VERIFY_REQUEST, &[0; 33])).unwrap_err();
        assert!(
            error.to_string().contains("1 unexpected trailing bytes"),
            "{error}"
        );
    }

    #[test]
    fn digests_tell_blocks_apart() {
        let zero = vec![0u8; VERIFY_BLOCK as usize];
        let mut one = zero.clone();
        one[4095] = 1;
        let mut swapped = zero.clone();
        swapped[0..8].copy_from_slice(&5u64.to_le_bytes());
        let mut moved = zero.clone();
        moved[8..16].copy_from_slice(&5u64.to_le_bytes());
        let digests = [&zero, &one, &swapped, &moved].map(|b| verify_digest(b));
        for i in 0..digests.len() {
            for j in i + 1..digests.len() {
                assert_ne!(digests[i], digests[j], "blocks {i} and {j}");
            }
        }
        assert_eq!(verify_digests(&[0u8; 10_000]).len(), 3);
        assert_eq!(verify_digests(&[]).len(), 0);
    }

    proptest! {
        #[test]
        fn round_trip(message in message()) {
            prop_assert_eq!(decode(&encode(&message)), Ok(message));
        }

        #[test]
        fn verify_and_suspect_messages_round_trip(message in verify_message()) {
            let bytes = encode(&message);
            prop_assert_eq!(frame_len(&bytes), Ok(bytes.len()));
            prop_assert_eq!(decode(&bytes), Ok(message));
        }

        #[test]
        fn any_change_of_a_block_changes_its_digest(
            data in proptest::collection::vec(any::<u8>(), 1..=VERIFY_BLOCK as usize),
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut changed = data.clone();
            let at = at.index(data.len());
            changed[at] ^= xor;
            prop_assert_ne!(verify_digest(&data), verify_digest(&changed));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = frame_len(&bytes);
        }

        #[test]
        fn arbitrary_bodies_behind_a_valid_header_never_panic(
            kind in 0u8..14,
            body in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = decode(&resealed(kind, &body));
        }

        #[test]
        fn any_single_byte_change_is_detected(
            message in message(),
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut bytes = encode(&message);
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
            prop_assert!(decode(&bytes).is_err(), "byte {} changed, still decoded", at);
        }
    }
}
