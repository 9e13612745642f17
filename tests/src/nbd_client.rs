//! A deliberately small NBD client for tests that must know exactly which writes were
//! acknowledged (the verifying writer of the durability tests). Real clients (nbdcopy,
//! qemu-io, fio) cover the protocol; this one covers "acknowledged means durable".

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const FLAG_FUA: u16 = 1;

/// One connection in the transmission phase.
pub struct NbdClient {
    stream: UnixStream,
    next_cookie: u64,
    pub size: u64,
}

impl NbdClient {
    /// Connects to `socket` and opens export `name` (fixed newstyle, NBD_OPT_EXPORT_NAME).
    pub fn connect(socket: &Path, name: &str) -> std::io::Result<NbdClient> {
        NbdClient::connect_within(socket, name, Duration::from_secs(30))
    }

    /// [`NbdClient::connect`] where every reply (the handshake's too) must come within
    /// `limit`: a frozen server fails the call instead of hanging it.
    pub fn connect_within(
        socket: &Path,
        name: &str,
        limit: Duration,
    ) -> std::io::Result<NbdClient> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        if &greeting[..8] != b"NBDMAGIC" || &greeting[8..16] != b"IHAVEOPT" {
            return Err(std::io::Error::other("not an NBD newstyle server"));
        }
        stream.write_all(&3u32.to_be_bytes())?; // FIXED_NEWSTYLE | NO_ZEROES
        let mut option = b"IHAVEOPT".to_vec();
        option.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        option.extend_from_slice(&(name.len() as u32).to_be_bytes());
        option.extend_from_slice(name.as_bytes());
        stream.write_all(&option)?;
        let mut export = [0u8; 10];
        stream.read_exact(&mut export)?;
        let size = u64::from_be_bytes(export[..8].try_into().expect("8 bytes"));
        Ok(NbdClient {
            stream,
            next_cookie: 0,
            size,
        })
    }

    /// Changes how long every later reply may take.
    pub fn set_reply_limit(&self, limit: Duration) -> std::io::Result<()> {
        self.stream.set_read_timeout(Some(limit))?;
        self.stream.set_write_timeout(Some(limit))
    }

    /// Writes `data` at `offset` and waits for the reply; `Ok(())` means acknowledged.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.request(CMD_WRITE, flags, offset, data)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.request(CMD_FLUSH, 0, 0, &[])
    }

    /// Discards `length` bytes at `offset` (tandem reads a discarded range back as zeroes).
    pub fn trim(&mut self, offset: u64, length: u32) -> std::io::Result<()> {
        self.send(CMD_TRIM, 0, offset, length, &[])?;
        self.reply()
    }

    /// Reads `length` bytes at `offset`.
    pub fn read(&mut self, offset: u64, length: u32) -> std::io::Result<Vec<u8>> {
        self.send(CMD_READ, 0, offset, length, &[])?;
        self.reply()?;
        let mut data = vec![0u8; length as usize];
        self.stream.read_exact(&mut data)?;
        Ok(data)
    }

    fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.send(command, flags, offset, data.len() as u32, data)?;
        self.reply()
    }

    /// Sends one request (`length` is the request's length field; `data` the payload).
    fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.next_cookie += 1;
        let cookie = self.next_cookie;
        let mut header = Vec::with_capacity(28 + data.len());
        header.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(&command.to_be_bytes());
        header.extend_from_slice(&cookie.to_be_bytes());
        header.extend_from_slice(&offset.to_be_bytes());
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(data);
        self.stream.write_all(&header)
    }

    /// Reads the simple reply to the last request sent.
    fn reply(&mut self) -> std::io::Result<()> {
        let cookie = self.next_cookie;
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        let magic = u32::from_be_bytes(reply[..4].try_into().expect("4 bytes"));
        let error = u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
        let answered = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
        if magic != REPLY_MAGIC || answered != cookie {
            return Err(std::io::Error::other("malformed reply"));
        }
        if error != 0 {
            return Err(std::io::Error::other(format!("server error {error}")));
        }
        Ok(())
    }
}
