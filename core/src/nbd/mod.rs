//! The NBD server protocol (fixed newstyle handshake, simple replies), sans-IO.
//!
//! Why this exists: tandem exposes each mirrored volume to its users as a block device, and
//! NBD is the protocol every client already speaks (the Linux kernel's `nbd` driver, qemu,
//! libnbd's `nbdinfo`/`nbdcopy`, fio, Windows' WNBD). No mature Rust crate implements the
//! server side, and the baseline protocol is small, so the protocol lives here, in the core,
//! with no I/O: the Linux and Windows shims (and the simulator) push the client's bytes in,
//! write out what comes back, and execute the decoded [`Request`]s against the volume. That
//! keeps every parsing and validation decision deterministic and testable byte by byte, and
//! lets bytes arrive split at any boundary.
//!
//! A connection's life, driven by the shim:
//!
//! 1. [`NbdConnection::new`] queues the server greeting; write [`NbdConnection::take_output`].
//! 2. Feed client bytes to [`NbdConnection::receive`]; it buffers (boundedly) and parses as
//!    far as it can. Option haggling is answered internally: `NBD_OPT_EXPORT_NAME`,
//!    `NBD_OPT_ABORT`, `NBD_OPT_LIST`, `NBD_OPT_INFO`, `NBD_OPT_GO`; every other option gets
//!    `NBD_REP_ERR_UNSUP`.
//! 3. In transmission, take validated requests from [`NbdConnection::next_request`], execute
//!    them, and answer each with [`NbdConnection::reply`], in any order. Requests that break
//!    the rules (bounds, alignment, flags, read-only, ...) are answered with an error by this
//!    module and never reach the shim; [`NbdConnection::take_rejections`] reports them.
//! 4. When [`NbdConnection::is_finished`], write the remaining output and close the socket.
//!
//! Memory is bounded: the input buffer plus the payloads of decoded-but-untaken writes never
//! exceed [`NbdConnection::input_capacity`] (one maximum request plus its header, or one
//! maximum option plus its header during the handshake), at most [`MAX_PENDING_REQUESTS`]
//! requests await replies, and parsing pauses while [`OUTPUT_HIGH_WATER`] bytes of output are
//! unsent. When parsing pauses, `receive` accepts fewer bytes than offered: the shim keeps the
//! rest and offers it again after taking requests, replying or writing output (that is how TCP
//! flow control reaches a client that outruns the volume).
//!
//! Data-path semantics are the volume's (DESIGN.md section 3): a plain write is acknowledged
//! when the legs have accepted it, `Flush` makes every acknowledged write durable, and `fua`
//! makes that one write durable before its reply. This module only carries the flags.

mod buffer;
pub mod consts;
mod error;
mod export;
mod handshake;
mod transmission;

#[cfg(test)]
mod testclient;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

pub use error::{
    CloseReason, Errno, OptionRefusal, ProtocolError, Rejection, ReplyError, RequestError,
};
pub use export::{BlockSizes, Catalogue, CatalogueError, Export};

use buffer::InputBuffer;
use consts::*;

/// Longest option data accepted during the handshake; a longer option closes the connection.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Options a client may send before choosing an export; more closes the connection (the spec
/// lets a server end a negotiation it judges a denial of service).
pub const MAX_OPTIONS: u32 = 64;
/// Requests decoded and not yet replied to; parsing pauses at this many.
pub const MAX_PENDING_REQUESTS: usize = 256;
/// Unsent output above which parsing pauses until [`NbdConnection::take_output`].
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;
/// Rejections kept for [`NbdConnection::take_rejections`]; older ones are counted and dropped.
pub const MAX_REJECTIONS_KEPT: usize = 64;

/// A validated data-path request for the shim to execute against the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Reply with exactly `length` bytes.
    Read {
        cookie: u64,
        offset: u64,
        length: u32,
    },
    /// `fua`: durable on every leg before the reply.
    Write {
        cookie: u64,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    /// Everything acknowledged before this is durable before its reply.
    Flush { cookie: u64 },
    /// A hint that the range is unused.
    Trim {
        cookie: u64,
        offset: u64,
        length: u32,
        fua: bool,
    },
    /// `no_hole`: keep the range allocated. `fast`: answer [`Errno::NotSup`] at once unless
    /// zeroing is faster than writing zeroes (only sent when the export has `can_fast_zero`).
    WriteZeroes {
        cookie: u64,
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
        fast: bool,
    },
    /// The client said goodbye: finish the outstanding requests, then close. No reply.
    Disconnect,
}

impl Request {
    /// The cookie to answer with; `None` for [`Request::Disconnect`].
    pub fn cookie(&self) -> Option<u64> {
        match *self {
            Request::Read { cookie, .. }
            | Request::Write { cookie, .. }
            | Request::Flush { cookie }
            | Request::Trim { cookie, .. }
            | Request::WriteZeroes { cookie, .. } => Some(cookie),
            Request::Disconnect => None,
        }
    }

    fn command(&self) -> u16 {
        match self {
            Request::Read { .. } => NBD_CMD_READ,
            Request::Write { .. } => NBD_CMD_WRITE,
            Request::Flush { .. } => NBD_CMD_FLUSH,
            Request::Trim { .. } => NBD_CMD_TRIM,
            Request::WriteZeroes { .. } => NBD_CMD_WRITE_ZEROES,
            Request::Disconnect => NBD_CMD_DISC,
        }
    }
}

/// Where a connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Greeting sent; client flags and options being negotiated.
    Handshaking,
    /// An export was chosen; requests flow.
    Transmitting { export: String },
    /// No more input is read. After a soft close, outstanding requests are still answered.
    Closed { reason: CloseReason },
}

#[derive(Debug)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
    Closed(CloseReason),
}

/// A request handed out (or queued) and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Pending {
    cookie: u64,
    command: u16,
    /// For reads: how many bytes the reply must carry.
    read_length: u32,
}

/// The payload of a refused write, being read and dropped, then answered with `errno`.
#[derive(Clone, Copy, Debug)]
struct Skip {
    remaining: u32,
    cookie: u64,
    errno: Errno,
}

/// One client connection, server side. See the module documentation for the driving loop.
#[derive(Debug)]
pub struct NbdConnection {
    catalogue: Arc<Catalogue>,
    phase: Phase,
    input: InputBuffer,
    output: Vec<u8>,
    /// The client set `NBD_FLAG_C_NO_ZEROES`.
    no_zeroes: bool,
    options_seen: u32,
    /// The export chosen by `NBD_OPT_EXPORT_NAME` or `NBD_OPT_GO`.
    export: Option<Export>,
    skip: Option<Skip>,
    queue: VecDeque<Request>,
    /// Payload bytes of the writes in `queue` (they count against the input capacity).
    queued_bytes: usize,
    pending: Vec<Pending>,
    rejections: VecDeque<Rejection>,
    rejections_dropped: u64,
}

impl NbdConnection {
    /// A new connection to a client; the server greeting is already queued as output.
    pub fn new(catalogue: impl Into<Arc<Catalogue>>) -> Self {
        let mut connection = Self {
            catalogue: catalogue.into(),
            phase: Phase::ClientFlags,
            input: InputBuffer::default(),
            output: Vec::new(),
            no_zeroes: false,
            options_seen: 0,
            export: None,
            skip: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            pending: Vec::new(),
            rejections: VecDeque::new(),
            rejections_dropped: 0,
        };
        connection.write_greeting();
        connection
    }

    /// Offers bytes received from the client; returns how many were accepted (buffered or,
    /// once closed, discarded). Fewer than offered means parsing is paused for backpressure:
    /// offer the rest again after [`Self::next_request`], [`Self::reply`] or
    /// [`Self::take_output`] made progress.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let mut rest = bytes;
        while !rest.is_empty() {
            if matches!(self.phase, Phase::Closed(_)) {
                return bytes.len();
            }
            let n = self.input_room().min(rest.len());
            if n == 0 {
                break;
            }
            let (now, later) = rest.split_at(n);
            self.input.extend(now);
            rest = later;
            self.pump();
        }
        bytes.len() - rest.len()
    }

    /// Bytes to send to the client, in order. Empties the output buffer; parsing paused by
    /// [`OUTPUT_HIGH_WATER`] resumes, which may queue more output (see [`Self::has_output`]).
    pub fn take_output(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut self.output);
        self.pump();
        out
    }

    /// Whether [`Self::take_output`] would return anything.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The next validated request to execute, in the order the client sent them.
    pub fn next_request(&mut self) -> Option<Request> {
        let request = self.queue.pop_front()?;
        if let Request::Write { data, .. } = &request {
            self.queued_bytes = self.queued_bytes.saturating_sub(data.len());
        }
        self.pump();
        Some(request)
    }

    /// Answers the request with `cookie` (any order): `Ok(data)` with exactly the requested
    /// bytes for a read and no bytes otherwise, or `Err(errno)`. After a fatal close the
    /// reply is accepted but not sent.
    pub fn reply(&mut self, cookie: u64, result: Result<&[u8], Errno>) -> Result<(), ReplyError> {
        let index = self.pending.iter().position(|p| p.cookie == cookie);
        let index = index.ok_or(ReplyError::UnknownCookie { cookie })?;
        let pending = self.pending[index];
        if let Ok(data) = result {
            check_reply_data(pending, data)?;
        }
        self.pending.remove(index);
        if !self.is_fatally_closed() {
            match result {
                Ok(data) => self.write_simple_reply(cookie, 0, data),
                Err(errno) => self.write_simple_reply(cookie, errno.code(), &[]),
            }
        }
        self.pump();
        Ok(())
    }

    pub fn state(&self) -> State {
        match &self.phase {
            Phase::ClientFlags | Phase::Options => State::Handshaking,
            Phase::Transmission => State::Transmitting {
                export: self
                    .export
                    .as_ref()
                    .map(|e| e.name.clone())
                    .unwrap_or_default(),
            },
            Phase::Closed(reason) => State::Closed {
                reason: reason.clone(),
            },
        }
    }

    /// The export chosen by the client, once in transmission.
    pub fn export(&self) -> Option<&Export> {
        self.export.as_ref()
    }

    /// True when the shim should write the remaining output and close the socket: after a
    /// hard disconnect at once, after a soft one once every request has been answered.
    pub fn is_finished(&self) -> bool {
        match &self.phase {
            Phase::Closed(reason) => {
                reason.is_fatal() || (self.queue.is_empty() && self.pending.is_empty())
            }
            _ => false,
        }
    }

    /// What the client asked for and was refused since the last call, oldest first, and how
    /// many older refusals were dropped because nobody collected them.
    pub fn take_rejections(&mut self) -> (Vec<Rejection>, u64) {
        let dropped = std::mem::take(&mut self.rejections_dropped);
        (self.rejections.drain(..).collect(), dropped)
    }

    /// Requests decoded and not yet answered (queued or handed out).
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Input held: unparsed bytes plus the payloads of queued writes.
    pub fn buffered_bytes(&self) -> usize {
        self.input.len() + self.queued_bytes
    }

    /// The most input the connection holds in its current phase.
    pub fn input_capacity(&self) -> usize {
        let handshake = OPTION_HEADER_LEN + MAX_OPTION_LEN as usize;
        match &self.export {
            Some(export) => handshake.max(REQUEST_HEADER_LEN + export.block_sizes.maximum as usize),
            None => handshake,
        }
    }

    /// How many more bytes [`Self::receive`] can accept right now.
    pub fn input_room(&self) -> usize {
        self.input_capacity().saturating_sub(self.buffered_bytes())
    }

    /// Parses buffered input as far as the phase and the bounds allow.
    fn pump(&mut self) {
        loop {
            let progressed = match self.phase {
                Phase::ClientFlags => self.parse_client_flags(),
                Phase::Options => self.parse_option(),
                Phase::Transmission => self.parse_request(),
                Phase::Closed(_) => false,
            };
            if !progressed {
                break;
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if reason.is_fatal() {
            self.queue.clear();
            self.queued_bytes = 0;
            self.skip = None;
        }
        self.input.clear();
        self.phase = Phase::Closed(reason);
    }

    fn is_fatally_closed(&self) -> bool {
        matches!(&self.phase, Phase::Closed(reason) if reason.is_fatal())
    }

    fn reject(&mut self, rejection: Rejection) {
        if self.rejections.len() >= MAX_REJECTIONS_KEPT {
            self.rejections.pop_front();
            self.rejections_dropped += 1;
        }
        self.rejections.push_back(rejection);
    }
}

fn check_reply_data(pending: Pending, data: &[u8]) -> Result<(), ReplyError> {
    let cookie = pending.cookie;
    if pending.command == NBD_CMD_READ {
        if data.len() != pending.read_length as usize {
            return Err(ReplyError::ReadLengthMismatch {
                cookie,
                expected: pending.read_length,
                actual: data.len(),
            });
        }
    } else if !data.is_empty() {
        let (command, actual) = (pending.command, data.len());
        return Err(ReplyError::UnexpectedData {
            cookie,
            command,
            actual,
        });
    }
    Ok(())
}
