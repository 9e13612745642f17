//! Everything that can go wrong on an NBD connection, each naming what and where.
//!
//! Three severities: a [`ProtocolError`] ends the connection (hard disconnect); an
//! [`OptionRefusal`] or [`RequestError`] is answered to the client (an `NBD_REP_ERR_*` option
//! reply or an error in a simple reply) and the connection carries on; a [`ReplyError`] is the
//! shim's mistake when answering a request and changes nothing on the wire.

use super::consts::*;

/// Error values of the simple reply's `error` field (never zero: success is `Ok`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Errno {
    #[error("NBD_EPERM (operation not permitted)")]
    Perm,
    #[error("NBD_EIO (input/output error)")]
    Io,
    #[error("NBD_ENOMEM (cannot allocate memory)")]
    NoMem,
    #[error("NBD_EINVAL (invalid argument)")]
    Inval,
    #[error("NBD_ENOSPC (no space left on device)")]
    NoSpc,
    #[error("NBD_EOVERFLOW (value too large)")]
    Overflow,
    #[error("NBD_ENOTSUP (operation not supported)")]
    NotSup,
    #[error("NBD_ESHUTDOWN (server is shutting down)")]
    Shutdown,
}

impl Errno {
    /// The value sent on the wire.
    pub const fn code(self) -> u32 {
        match self {
            Errno::Perm => NBD_EPERM,
            Errno::Io => NBD_EIO,
            Errno::NoMem => NBD_ENOMEM,
            Errno::Inval => NBD_EINVAL,
            Errno::NoSpc => NBD_ENOSPC,
            Errno::Overflow => NBD_EOVERFLOW,
            Errno::NotSup => NBD_ENOTSUP,
            Errno::Shutdown => NBD_ESHUTDOWN,
        }
    }

    /// The error for a wire value, if the spec defines it.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            NBD_EPERM => Errno::Perm,
            NBD_EIO => Errno::Io,
            NBD_ENOMEM => Errno::NoMem,
            NBD_EINVAL => Errno::Inval,
            NBD_ENOSPC => Errno::NoSpc,
            NBD_EOVERFLOW => Errno::Overflow,
            NBD_ENOTSUP => Errno::NotSup,
            NBD_ESHUTDOWN => Errno::Shutdown,
            _ => return None,
        })
    }
}

/// A violation that ends the connection: the byte stream can no longer be trusted or the spec
/// mandates a hard disconnect. `at` is the offset in the client's byte stream where the
/// offending message starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("client flags {flags:#010x} at byte {at} set unknown bits {unknown:#010x} (known: NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES)")]
    UnknownClientFlags { at: u64, flags: u32, unknown: u32 },
    #[error("option header at byte {at}: magic {found:#018x} is not IHAVEOPT ({IHAVEOPT:#018x})")]
    BadOptionMagic { at: u64, found: u64 },
    #[error("option {option} ({}) at byte {at}: length {length} exceeds {limit}", option_name(*.option))]
    OptionTooLong {
        at: u64,
        option: u32,
        length: u32,
        limit: u32,
    },
    #[error("option {option} ({}) at byte {at}: the client sent {limit} options without choosing an export", option_name(*.option))]
    TooManyOptions { at: u64, option: u32, limit: u32 },
    #[error("NBD_OPT_EXPORT_NAME at byte {at}: no export named {name:?} (this option cannot be refused, so the connection closes)")]
    UnknownExport { at: u64, name: String },
    #[error("NBD_OPT_EXPORT_NAME at byte {at}: export {name:?} requires NBD_OPT_GO with an NBD_INFO_BLOCK_SIZE request")]
    BlockSizeRequired { at: u64, name: String },
    #[error("request header at byte {at}: magic {found:#010x} is not NBD_REQUEST_MAGIC ({NBD_REQUEST_MAGIC:#010x})")]
    BadRequestMagic { at: u64, found: u32 },
    #[error("NBD_CMD_WRITE cookie {cookie:#x} at byte {at}: payload length {length} exceeds {limit}; closing rather than reading it")]
    WritePayloadTooLong {
        at: u64,
        cookie: u64,
        length: u32,
        limit: u32,
    },
}

/// Why the connection is (or is about to be) closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The client sent `NBD_OPT_ABORT` during the handshake (soft disconnect).
    #[error("client aborted the handshake (NBD_OPT_ABORT)")]
    Aborted,
    /// The client sent `NBD_CMD_DISC` (soft disconnect): finish outstanding requests, close.
    #[error("client disconnected (NBD_CMD_DISC)")]
    Disconnected,
    /// A protocol violation: hard disconnect.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl CloseReason {
    /// A hard disconnect: the shim should close at once, outstanding replies are dropped.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CloseReason::Protocol(_))
    }
}

/// An option the server answered with an `NBD_REP_ERR_*` reply; negotiation continues. The
/// message is also sent to the client as the error reply's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionRefusal {
    #[error("option {option} ({}) is not supported by this server", option_name(*.option))]
    Unsupported { option: u32 },
    #[error("option {option} ({}): no export named {name:?}", option_name(*.option))]
    UnknownExport { option: u32, name: String },
    #[error("option {option} ({}) is malformed: {reason}", option_name(*.option))]
    Malformed { option: u32, reason: &'static str },
    #[error("option {option} ({}): export {name:?} requires an NBD_INFO_BLOCK_SIZE request", option_name(*.option))]
    BlockSizeRequired { option: u32, name: String },
}

impl OptionRefusal {
    /// The option that was refused.
    pub fn option(&self) -> u32 {
        match *self {
            OptionRefusal::Unsupported { option }
            | OptionRefusal::UnknownExport { option, .. }
            | OptionRefusal::Malformed { option, .. }
            | OptionRefusal::BlockSizeRequired { option, .. } => option,
        }
    }

    /// The `NBD_REP_ERR_*` reply type for this refusal.
    pub fn reply_type(&self) -> u32 {
        match self {
            OptionRefusal::Unsupported { .. } => NBD_REP_ERR_UNSUP,
            OptionRefusal::UnknownExport { .. } => NBD_REP_ERR_UNKNOWN,
            OptionRefusal::Malformed { .. } => NBD_REP_ERR_INVALID,
            OptionRefusal::BlockSizeRequired { .. } => NBD_REP_ERR_BLOCK_SIZE_REQD,
        }
    }
}

/// A request refused by the protocol layer itself; the client gets [`RequestError::errno`] in
/// a simple reply and the shim never sees the request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request {cookie:#x}: unknown command type {command}")]
    UnknownCommand { cookie: u64, command: u16 },
    #[error("request {cookie:#x} ({}): flags {flags:#06x} include {invalid:#06x}, not valid for this command on this export", command_name(*.command))]
    InvalidFlags {
        cookie: u64,
        command: u16,
        flags: u16,
        invalid: u16,
    },
    #[error("request {cookie:#x} ({}): the export does not advertise this command", command_name(*.command))]
    NotAdvertised { cookie: u64, command: u16 },
    #[error("request {cookie:#x} ({}): the export is read-only", command_name(*.command))]
    ReadOnly { cookie: u64, command: u16 },
    #[error("request {cookie:#x} (NBD_CMD_FLUSH): offset {offset} and length {length} must both be zero")]
    FlushRangeNotZero {
        cookie: u64,
        offset: u64,
        length: u32,
    },
    #[error("request {cookie:#x} ({}): zero length", command_name(*.command))]
    ZeroLength { cookie: u64, command: u16 },
    #[error("request {cookie:#x} ({}): length {length} exceeds the maximum payload {limit}", command_name(*.command))]
    PayloadTooLong {
        cookie: u64,
        command: u16,
        length: u32,
        limit: u32,
    },
    #[error("request {cookie:#x} ({}): offset {offset} or length {length} is not a multiple of the minimum block size {block}", command_name(*.command))]
    Unaligned {
        cookie: u64,
        command: u16,
        offset: u64,
        length: u32,
        block: u32,
    },
    #[error("request {cookie:#x} ({}): offset {offset} + length {length} runs past the export size {size}", command_name(*.command))]
    OutOfRange {
        cookie: u64,
        command: u16,
        offset: u64,
        length: u32,
        size: u64,
    },
}

impl RequestError {
    /// The error value the client receives, as the spec recommends for each case.
    pub fn errno(&self) -> Errno {
        match self {
            RequestError::ReadOnly { .. } => Errno::Perm,
            RequestError::OutOfRange { command, .. }
                if matches!(*command, NBD_CMD_WRITE | NBD_CMD_WRITE_ZEROES) =>
            {
                Errno::NoSpc
            }
            _ => Errno::Inval,
        }
    }

    pub fn cookie(&self) -> u64 {
        match *self {
            RequestError::UnknownCommand { cookie, .. }
            | RequestError::InvalidFlags { cookie, .. }
            | RequestError::NotAdvertised { cookie, .. }
            | RequestError::ReadOnly { cookie, .. }
            | RequestError::FlushRangeNotZero { cookie, .. }
            | RequestError::ZeroLength { cookie, .. }
            | RequestError::PayloadTooLong { cookie, .. }
            | RequestError::Unaligned { cookie, .. }
            | RequestError::OutOfRange { cookie, .. } => cookie,
        }
    }
}

/// Something the client asked for that was refused, for the shim to log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Option(#[from] OptionRefusal),
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// The shim answered a request wrongly; nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("no request with cookie {cookie:#x} is awaiting a reply")]
    UnknownCookie { cookie: u64 },
    #[error("NBD_CMD_READ {cookie:#x} asked for {expected} bytes but the reply carries {actual}")]
    ReadLengthMismatch {
        cookie: u64,
        expected: u32,
        actual: usize,
    },
    #[error("{} {cookie:#x}: the reply carries {actual} data bytes; only NBD_CMD_READ replies carry data", command_name(*.command))]
    UnexpectedData {
        cookie: u64,
        command: u16,
        actual: usize,
    },
}
