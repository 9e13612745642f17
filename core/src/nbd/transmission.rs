//! The transmission phase: request headers in, validation, simple replies out.

use super::buffer::{be_u16, be_u32, be_u64};
use super::consts::*;
use super::{
    CloseReason, Export, NbdConnection, Pending, ProtocolError, Request, RequestError, Skip,
    MAX_PENDING_REQUESTS, OUTPUT_HIGH_WATER,
};

/// A decoded request header (the magic already checked).
#[derive(Clone, Copy, Debug)]
struct Header {
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
}

impl Header {
    fn decode(bytes: &[u8]) -> Self {
        Header {
            flags: be_u16(bytes, 4),
            command: be_u16(bytes, 6),
            cookie: be_u64(bytes, 8),
            offset: be_u64(bytes, 16),
            length: be_u32(bytes, 24),
        }
    }

    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

impl NbdConnection {
    /// One request: header, validation, and for a write its payload.
    pub(super) fn parse_request(&mut self) -> bool {
        if self.skip.is_some() {
            return self.skip_payload();
        }
        if self.pending.len() >= MAX_PENDING_REQUESTS || self.output.len() >= OUTPUT_HIGH_WATER {
            return false;
        }
        let at = self.input.position();
        let available = self.input.available();
        if available.len() < REQUEST_HEADER_LEN {
            return false;
        }
        let magic = be_u32(available, 0);
        if magic != NBD_REQUEST_MAGIC {
            self.close(ProtocolError::BadRequestMagic { at, found: magic }.into());
            return false;
        }
        let header = Header::decode(available);
        let Some(export) = self.export.as_ref() else {
            return false; // unreachable: the phase is Transmission only with an export
        };
        if header.command == NBD_CMD_DISC {
            // Flags, offset and length are ignored: the client is leaving either way.
            self.queue.push_back(Request::Disconnect);
            self.close(CloseReason::Disconnected);
            return false;
        }
        match check_request(&header, export) {
            Ok(()) if header.command == NBD_CMD_WRITE => self.take_write(header),
            Ok(()) => {
                self.input.consume(REQUEST_HEADER_LEN);
                self.enqueue(request_without_payload(header, export));
                true
            }
            Err(error) => self.refuse_request(at, header, error),
        }
    }

    /// A valid write: waits until the whole payload is buffered (the capacity guarantees it
    /// fits), then queues it.
    fn take_write(&mut self, header: Header) -> bool {
        let total = REQUEST_HEADER_LEN + header.length as usize;
        let Some(payload) = self.input.available().get(REQUEST_HEADER_LEN..total) else {
            return false;
        };
        let data = payload.to_vec();
        self.input.consume(total);
        let Header { cookie, offset, .. } = header;
        let fua = header.has(NBD_CMD_FLAG_FUA);
        self.enqueue(Request::Write {
            cookie,
            offset,
            data,
            fua,
        });
        true
    }

    /// Answers a refused request with its errno. A refused write's payload is still on the
    /// wire: it is read and dropped before the reply, unless it is longer than the spec's
    /// denial-of-service threshold (2^25), in which case the connection closes.
    fn refuse_request(&mut self, at: u64, header: Header, error: RequestError) -> bool {
        let (cookie, errno) = (header.cookie, error.errno());
        if header.command == NBD_CMD_WRITE && header.length > 0 {
            let limit = self.write_skip_limit();
            if header.length > limit {
                let length = header.length;
                let fatal = ProtocolError::WritePayloadTooLong {
                    at,
                    cookie,
                    length,
                    limit,
                };
                self.close(fatal.into());
                return false;
            }
            self.skip = Some(Skip {
                remaining: header.length,
                cookie,
                errno,
            });
        } else {
            self.write_simple_reply(cookie, errno.code(), &[]);
        }
        self.input.consume(REQUEST_HEADER_LEN);
        self.reject(error.into());
        true
    }

    /// The longest refused write payload read and dropped rather than closing.
    fn write_skip_limit(&self) -> u32 {
        let advertised = self.export.as_ref().map_or(0, |e| e.block_sizes.maximum);
        advertised.max(DOS_PAYLOAD_THRESHOLD)
    }

    /// Drops as much of a refused write's payload as has arrived; replies once it is all gone.
    fn skip_payload(&mut self) -> bool {
        let Some(skip) = self.skip.as_mut() else {
            return false;
        };
        let n = self.input.len().min(skip.remaining as usize);
        if n == 0 && skip.remaining > 0 {
            return false;
        }
        skip.remaining -= n as u32;
        let done = (skip.remaining == 0).then_some((skip.cookie, skip.errno));
        self.input.consume(n);
        if let Some((cookie, errno)) = done {
            self.skip = None;
            self.write_simple_reply(cookie, errno.code(), &[]);
        }
        true
    }

    fn enqueue(&mut self, request: Request) {
        let (cookie, command) = (request.cookie().unwrap_or(0), request.command());
        let read_length = match &request {
            Request::Read { length, .. } => *length,
            _ => 0,
        };
        if let Request::Write { data, .. } = &request {
            self.queued_bytes += data.len();
        }
        self.pending.push(Pending {
            cookie,
            command,
            read_length,
        });
        self.queue.push_back(request);
    }

    pub(super) fn write_simple_reply(&mut self, cookie: u64, error: u32, data: &[u8]) {
        self.output.reserve(SIMPLE_REPLY_HEADER_LEN + data.len());
        self.output
            .extend_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&error.to_be_bytes());
        self.output.extend_from_slice(&cookie.to_be_bytes());
        self.output.extend_from_slice(data);
    }
}

/// A validated request that carries no payload.
fn request_without_payload(header: Header, export: &Export) -> Request {
    let Header {
        cookie,
        offset,
        length,
        ..
    } = header;
    let fua = header.has(NBD_CMD_FLAG_FUA);
    match header.command {
        NBD_CMD_READ => Request::Read {
            cookie,
            offset,
            length,
        },
        NBD_CMD_FLUSH => Request::Flush { cookie },
        NBD_CMD_TRIM => Request::Trim {
            cookie,
            offset,
            length,
            fua,
        },
        _ => Request::WriteZeroes {
            cookie,
            offset,
            length,
            fua,
            no_hole: header.has(NBD_CMD_FLAG_NO_HOLE),
            fast: export.can_fast_zero && header.has(NBD_CMD_FLAG_FAST_ZERO),
        },
    }
}

/// Every rule a request must satisfy before the shim sees it, in the order they are checked.
fn check_request(header: &Header, export: &Export) -> Result<(), RequestError> {
    check_command(header, export)?;
    check_range(header, export)
}

/// The command exists and is advertised, its flags apply to it, and it may run on this export.
fn check_command(h: &Header, export: &Export) -> Result<(), RequestError> {
    let (cookie, command) = (h.cookie, h.command);
    let specific = match command {
        NBD_CMD_READ | NBD_CMD_WRITE => 0,
        NBD_CMD_FLUSH if export.can_flush => 0,
        NBD_CMD_TRIM if export.can_trim => 0,
        NBD_CMD_WRITE_ZEROES if export.can_write_zeroes => {
            let fast = if export.can_fast_zero {
                NBD_CMD_FLAG_FAST_ZERO
            } else {
                0
            };
            NBD_CMD_FLAG_NO_HOLE | fast
        }
        NBD_CMD_FLUSH | NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES => {
            return Err(RequestError::NotAdvertised { cookie, command });
        }
        _ => return Err(RequestError::UnknownCommand { cookie, command }),
    };
    // FUA is valid on every command once negotiated (and ignored where nothing is written).
    let allowed = specific | if export.can_fua { NBD_CMD_FLAG_FUA } else { 0 };
    let invalid = h.flags & !allowed;
    if invalid != 0 {
        let flags = h.flags;
        return Err(RequestError::InvalidFlags {
            cookie,
            command,
            flags,
            invalid,
        });
    }
    let writes = matches!(command, NBD_CMD_WRITE | NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES);
    if writes && export.read_only {
        return Err(RequestError::ReadOnly { cookie, command });
    }
    Ok(())
}

/// Offset and length: zero for a flush; otherwise non-zero, within the payload limit for
/// READ and WRITE, aligned to the minimum block size, and inside the export.
fn check_range(h: &Header, export: &Export) -> Result<(), RequestError> {
    let Header {
        cookie,
        command,
        offset,
        length,
        ..
    } = *h;
    if command == NBD_CMD_FLUSH {
        if offset != 0 || length != 0 {
            return Err(RequestError::FlushRangeNotZero {
                cookie,
                offset,
                length,
            });
        }
        return Ok(());
    }
    if length == 0 {
        return Err(RequestError::ZeroLength { cookie, command });
    }
    let limit = export.block_sizes.maximum;
    if matches!(command, NBD_CMD_READ | NBD_CMD_WRITE) && length > limit {
        return Err(RequestError::PayloadTooLong {
            cookie,
            command,
            length,
            limit,
        });
    }
    let block = export.block_sizes.minimum;
    // `block` is a power of two (the catalogue checked), so alignment is a mask test.
    if (offset | u64::from(length)) & u64::from(block.saturating_sub(1)) != 0 {
        return Err(RequestError::Unaligned {
            cookie,
            command,
            offset,
            length,
            block,
        });
    }
    let size = export.size;
    match offset.checked_add(u64::from(length)) {
        Some(end) if end <= size => Ok(()),
        _ => Err(RequestError::OutOfRange {
            cookie,
            command,
            offset,
            length,
            size,
        }),
    }
}
