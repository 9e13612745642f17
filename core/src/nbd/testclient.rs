//! A minimal scripted NBD client for the tests: encodes what a client sends and decodes what
//! the server answers, independently of the server code it checks.

use super::consts::*;
use super::{Catalogue, NbdConnection, Request};

pub fn client_flags(flags: u32) -> Vec<u8> {
    flags.to_be_bytes().to_vec()
}

pub fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = IHAVEOPT.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        out.extend_from_slice(&info.to_be_bytes());
    }
    out
}

/// A raw request header plus payload, for requests the server must refuse.
pub fn raw_request(flags: u16, command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut out = NBD_REQUEST_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out
}

fn flag(on: bool, bit: u16) -> u16 {
    if on {
        bit
    } else {
        0
    }
}

/// How a client puts a [`Request`] on the wire.
pub fn encode_request(request: &Request) -> Vec<u8> {
    match request {
        Request::Read {
            cookie,
            offset,
            length,
        } => raw_request(0, NBD_CMD_READ, *cookie, *offset, *length),
        Request::Write {
            cookie,
            offset,
            data,
            fua,
        } => {
            let flags = flag(*fua, NBD_CMD_FLAG_FUA);
            let mut out = raw_request(flags, NBD_CMD_WRITE, *cookie, *offset, data.len() as u32);
            out.extend_from_slice(data);
            out
        }
        Request::Flush { cookie } => raw_request(0, NBD_CMD_FLUSH, *cookie, 0, 0),
        Request::Trim {
            cookie,
            offset,
            length,
            fua,
        } => {
            let flags = flag(*fua, NBD_CMD_FLAG_FUA);
            raw_request(flags, NBD_CMD_TRIM, *cookie, *offset, *length)
        }
        Request::WriteZeroes {
            cookie,
            offset,
            length,
            fua,
            no_hole,
            fast,
        } => {
            let flags = flag(*fua, NBD_CMD_FLAG_FUA)
                | flag(*no_hole, NBD_CMD_FLAG_NO_HOLE)
                | flag(*fast, NBD_CMD_FLAG_FAST_ZERO);
            raw_request(flags, NBD_CMD_WRITE_ZEROES, *cookie, *offset, *length)
        }
        Request::Disconnect => raw_request(0, NBD_CMD_DISC, 0, 0, 0),
    }
}

/// One fixed-newstyle option reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptReply {
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

impl OptReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    pub fn info_type(&self) -> u16 {
        u16::from_be_bytes([self.data[0], self.data[1]])
    }
}

/// One simple reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
    pub data: Vec<u8>,
}

/// Reads the server's byte stream. Panics (it is a test) when the stream is short.
#[derive(Default)]
pub struct ServerStream {
    bytes: Vec<u8>,
    pos: usize,
}

impl ServerStream {
    pub fn push(&mut self, bytes: Vec<u8>) {
        self.bytes.extend(bytes);
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Vec<u8> {
        assert!(
            self.remaining() >= n,
            "want {n} bytes, have {}",
            self.remaining()
        );
        let out = self.bytes[self.pos..self.pos + n].to_vec();
        self.pos += n;
        out
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }

    /// The greeting; returns the handshake flags.
    pub fn greeting(&mut self) -> u16 {
        assert_eq!(self.u64(), NBDMAGIC);
        assert_eq!(self.u64(), IHAVEOPT);
        self.u16()
    }

    pub fn opt_reply(&mut self) -> OptReply {
        assert_eq!(self.u64(), NBD_REP_MAGIC, "option reply magic");
        let option = self.u32();
        let reply_type = self.u32();
        let length = self.u32() as usize;
        OptReply {
            option,
            reply_type,
            data: self.take(length),
        }
    }

    /// A simple reply; `read_length` is how much data follows on success (0 unless a read).
    pub fn simple_reply(&mut self, read_length: usize) -> SimpleReply {
        assert_eq!(self.u32(), NBD_SIMPLE_REPLY_MAGIC, "simple reply magic");
        let error = self.u32();
        let cookie = self.u64();
        let data = if error == 0 {
            self.take(read_length)
        } else {
            Vec::new()
        };
        SimpleReply {
            error,
            cookie,
            data,
        }
    }
}

/// A scripted client and the server connection it talks to.
pub struct Harness {
    pub conn: NbdConnection,
    pub server: ServerStream,
}

impl Harness {
    /// Connects and checks the greeting.
    pub fn new(catalogue: Catalogue) -> Self {
        let mut harness = Harness {
            conn: NbdConnection::new(catalogue),
            server: ServerStream::default(),
        };
        harness.pull();
        assert_eq!(
            harness.server.greeting(),
            NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
        );
        harness
    }

    /// Sends bytes (all must be accepted) and collects the server's output.
    pub fn send(&mut self, bytes: &[u8]) {
        let accepted = self.conn.receive(bytes);
        assert_eq!(
            accepted,
            bytes.len(),
            "server accepted only part of the input"
        );
        self.pull();
    }

    pub fn pull(&mut self) {
        let out = self.conn.take_output();
        self.server.push(out);
    }

    /// Client flags (fixed newstyle + no zeroes) and `NBD_OPT_GO` for `name`; checks success.
    pub fn go(catalogue: Catalogue, name: &str) -> Self {
        let mut h = Harness::new(catalogue);
        h.send(&client_flags(
            NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES,
        ));
        h.send(&option(NBD_OPT_GO, &info_data(name, &[])));
        loop {
            let reply = h.server.opt_reply();
            assert_eq!(reply.option, NBD_OPT_GO);
            if reply.reply_type == NBD_REP_ACK {
                break;
            }
            assert_eq!(
                reply.reply_type,
                NBD_REP_INFO,
                "GO failed: {}",
                reply.text()
            );
        }
        assert_eq!(h.server.remaining(), 0);
        h
    }
}
