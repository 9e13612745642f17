//! The connection's input buffer: bytes received but not yet parsed, with a read cursor so
//! consuming many small messages from one large receive stays linear.

#[derive(Debug, Default)]
pub(super) struct InputBuffer {
    bytes: Vec<u8>,
    /// Index of the first unconsumed byte in `bytes`.
    start: usize,
    /// Bytes consumed since the connection began: the stream offset of `available()[0]`.
    consumed: u64,
}

impl InputBuffer {
    /// Unconsumed bytes.
    pub fn available(&self) -> &[u8] {
        self.bytes.get(self.start..).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Stream offset of the next unconsumed byte, for error messages.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// Appends `bytes`; the caller has already checked the capacity.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// Drops the first `n` unconsumed bytes (at most all of them).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len());
        self.start += n;
        self.consumed += n as u64;
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    /// Drops everything (the connection closed).
    pub fn clear(&mut self) {
        self.consumed += self.len() as u64;
        self.bytes = Vec::new();
        self.start = 0;
    }
}

/// Big-endian field readers over a slice whose length the caller has checked; a short slice
/// yields zeroes rather than a panic (callers never pass one).
pub(super) fn be_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

pub(super) fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

pub(super) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}
