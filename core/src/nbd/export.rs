//! What the server offers: the export catalogue, each export's capabilities and size
//! constraints, validated once so the protocol code can trust them.

use std::fmt;

use super::consts::*;

/// The three size constraints of the spec's "Size constraints" section, advertised with
/// `NBD_INFO_BLOCK_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest addressable length and alignment: a power of 2, at most 2^16.
    pub minimum: u32,
    /// Efficient I/O size: a power of 2, at least `max(minimum, 512)`.
    pub preferred: u32,
    /// Largest READ/WRITE payload accepted: at least `preferred`, at most 2^25 here (the
    /// connection buffers one whole request, so the bound is also a memory bound).
    pub maximum: u32,
}

impl Default for BlockSizes {
    /// The spec's defaults: minimum 1, preferred 4096, maximum payload 32 MiB.
    fn default() -> Self {
        Self {
            minimum: DEFAULT_MINIMUM_BLOCK_SIZE,
            preferred: DEFAULT_PREFERRED_BLOCK_SIZE,
            maximum: DEFAULT_MAXIMUM_PAYLOAD,
        }
    }
}

/// One export: a name the client asks for, its size and what the server lets clients do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    pub name: String,
    /// Shown to humans by `NBD_INFO_DESCRIPTION` and after the name in `NBD_REP_SERVER`.
    pub description: String,
    /// Size in bytes; must be a multiple of `block_sizes.minimum`.
    pub size: u64,
    /// Advertise `NBD_FLAG_READ_ONLY`; WRITE, TRIM and WRITE_ZEROES are refused with `EPERM`.
    pub read_only: bool,
    pub can_flush: bool,
    pub can_fua: bool,
    pub can_trim: bool,
    pub can_write_zeroes: bool,
    /// Advertise `NBD_FLAG_SEND_FAST_ZERO` (requires `can_write_zeroes`). The shim may still
    /// answer a fast write-zeroes with `ENOTSUP`.
    pub can_fast_zero: bool,
    pub can_multi_conn: bool,
    pub block_sizes: BlockSizes,
    /// Refuse `NBD_OPT_GO` without an `NBD_INFO_BLOCK_SIZE` request
    /// (`NBD_REP_ERR_BLOCK_SIZE_REQD`) and `NBD_OPT_EXPORT_NAME` (hard disconnect). Off by
    /// default: the spec asks servers not to insist when they can error unaligned requests.
    pub require_block_size: bool,
}

impl Export {
    /// A writable export with flush, FUA, trim and write-zeroes, and the default block sizes.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            size,
            read_only: false,
            can_flush: true,
            can_fua: true,
            can_trim: true,
            can_write_zeroes: true,
            can_fast_zero: false,
            can_multi_conn: false,
            block_sizes: BlockSizes::default(),
            require_block_size: false,
        }
    }

    /// The 16-bit transmission flags sent with the export size.
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = NBD_FLAG_HAS_FLAGS;
        let pairs = [
            (self.read_only, NBD_FLAG_READ_ONLY),
            (self.can_flush, NBD_FLAG_SEND_FLUSH),
            (self.can_fua, NBD_FLAG_SEND_FUA),
            (self.can_trim, NBD_FLAG_SEND_TRIM),
            (self.can_write_zeroes, NBD_FLAG_SEND_WRITE_ZEROES),
            (
                self.can_write_zeroes && self.can_fast_zero,
                NBD_FLAG_SEND_FAST_ZERO,
            ),
            (self.can_multi_conn, NBD_FLAG_CAN_MULTI_CONN),
        ];
        for (on, bit) in pairs {
            if on {
                flags |= bit;
            }
        }
        flags
    }

    fn validate(&self) -> Result<(), CatalogueError> {
        let name = || self.name.clone();
        if self.name.len() > MAX_STRING_LEN || self.name.contains('\0') {
            return Err(CatalogueError::BadName { name: name() });
        }
        if self.description.len() > MAX_STRING_LEN || self.description.contains('\0') {
            return Err(CatalogueError::BadDescription { name: name() });
        }
        let BlockSizes {
            minimum,
            preferred,
            maximum,
        } = self.block_sizes;
        let problem = if !minimum.is_power_of_two() || minimum > MAX_MINIMUM_BLOCK_SIZE {
            Some("minimum must be a power of 2 no larger than 65536")
        } else if !preferred.is_power_of_two() || preferred < minimum.max(MIN_PREFERRED_BLOCK_SIZE)
        {
            Some("preferred must be a power of 2 at least max(minimum, 512)")
        } else if maximum < preferred || maximum > DEFAULT_MAXIMUM_PAYLOAD {
            Some("maximum must be at least preferred and at most 33554432")
        } else if self.size & u64::from(minimum - 1) != 0 {
            Some("the export size must be a multiple of minimum")
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(CatalogueError::BadBlockSizes {
                name: name(),
                sizes: self.block_sizes,
                reason,
            });
        }
        if self.can_fast_zero && !self.can_write_zeroes {
            return Err(CatalogueError::FastZeroWithoutWriteZeroes { name: name() });
        }
        Ok(())
    }
}

/// Why a catalogue was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("export name {name:?} is invalid: names are at most 4096 bytes and contain no NUL")]
    BadName { name: String },
    #[error("export {name:?}: description is invalid: at most 4096 bytes, no NUL")]
    BadDescription { name: String },
    #[error("export {name:?} appears twice in the catalogue")]
    DuplicateName { name: String },
    #[error("export {name:?}: block sizes {sizes}: {reason}")]
    BadBlockSizes {
        name: String,
        sizes: BlockSizes,
        reason: &'static str,
    },
    #[error("export {name:?}: can_fast_zero requires can_write_zeroes")]
    FastZeroWithoutWriteZeroes { name: String },
    #[error("default export {name:?} is not in the catalogue")]
    NoSuchDefault { name: String },
}

impl fmt::Display for BlockSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let BlockSizes {
            minimum,
            preferred,
            maximum,
        } = self;
        write!(
            f,
            "minimum {minimum} / preferred {preferred} / maximum {maximum}"
        )
    }
}

/// The exports one server offers, validated. Shared by every connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalogue {
    exports: Vec<Export>,
    /// Served when the client asks for the empty name ("the default export").
    default: Option<usize>,
}

impl Catalogue {
    pub fn new(exports: Vec<Export>) -> Result<Self, CatalogueError> {
        for (i, export) in exports.iter().enumerate() {
            export.validate()?;
            if exports[..i].iter().any(|e| e.name == export.name) {
                return Err(CatalogueError::DuplicateName {
                    name: export.name.clone(),
                });
            }
        }
        Ok(Self {
            exports,
            default: None,
        })
    }

    /// Serve export `name` to clients that ask for the empty name.
    pub fn with_default(mut self, name: &str) -> Result<Self, CatalogueError> {
        let index = self.exports.iter().position(|e| e.name == name);
        let index = index.ok_or_else(|| CatalogueError::NoSuchDefault { name: name.into() })?;
        self.default = Some(index);
        Ok(self)
    }

    pub fn exports(&self) -> &[Export] {
        &self.exports
    }

    /// The export a client means by `name` (raw bytes from the wire, maybe not UTF-8).
    pub fn lookup(&self, name: &[u8]) -> Option<&Export> {
        let exact = self.exports.iter().find(|e| e.name.as_bytes() == name);
        match (exact, name.is_empty()) {
            (Some(export), _) => Some(export),
            (None, true) => self.default.and_then(|i| self.exports.get(i)),
            (None, false) => None,
        }
    }
}
