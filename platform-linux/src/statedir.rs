//! The state directory (`--state-dir`, default `/var/lib/tandem`): where a node keeps who it
//! is, its keys, its Raft log and its control socket.
//!
//! Everything a node must never get wrong about itself starts here: which cluster and node it
//! is (`identity.json`, checksummed), that its certificate agrees with that, and that only one
//! daemon uses the directory at a time (`daemon.lock`). Every file in it is written the
//! crash-safe way ([`write_atomic`]): a half-written identity or key after a power cut would
//! be worse than either the old or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_core::ClusterId;

use crate::pki::{self, CaMaterial, NodeMaterial, PkiError};

/// The only identity file format this build reads and writes.
pub const IDENTITY_FORMAT: u32 = 1;

/// An opened state directory. Holds the daemon lock once [`StateDir::lock_exclusive`] took it.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: Option<File>,
}

/// Who this node is: fixed at `init`/`join`, never changed afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub format: u32,
    pub cluster: ClusterId,
    pub node_id: u64,
    pub node_name: String,
}

/// Why the state directory cannot be used. Every variant names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is already initialised (it holds identity.json); use another --state-dir or remove it deliberately", path.display())]
    AlreadyInitialised { path: PathBuf },
    #[error("{} is not a tandem state dir: {reason}", path.display())]
    NotStateDir { path: PathBuf, reason: String },
    #[error("another tandem daemon ({}) is using {}", pid_words(*pid), root.display())]
    Locked { root: PathBuf, pid: Option<u32> },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} has format {format}, but this tandem only understands format {IDENTITY_FORMAT} (written by a newer version?)", path.display())]
    UnsupportedFormat { path: PathBuf, format: u64 },
    #[error("{} is invalid: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} belongs to node `{cert_name}` of cluster {cert_cluster}, but this state dir is node `{node_name}` of cluster {cluster}", path.display())]
    Foreign {
        path: PathBuf,
        cluster: ClusterId,
        node_name: String,
        cert_cluster: ClusterId,
        cert_name: String,
    },
    #[error("{}: {source}", path.display())]
    Certificate { path: PathBuf, source: PkiError },
}

fn pid_words(pid: Option<u32>) -> String {
    pid.map_or("pid unknown".into(), |pid| format!("pid {pid}"))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that after a crash the file is either the old or the new one:
/// write a temporary file beside it with `mode`, fsync it, rename it over `path`, fsync the
/// directory. Used for every file in the state dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` only applies to a new file; a stale temporary file keeps its own.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path)
}

/// fsyncs the directory holding `path`, making a rename or create in it durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// The JSON body of identity.json; its checksum covers exactly these fields in this order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityBody {
    format: u32,
    cluster: ClusterId,
    node_id: u64,
    node_name: String,
}

/// identity.json as stored: the body plus `checksum`, 8 hex digits of crc32c.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    format: u32,
    cluster: ClusterId,
    node_id: u64,
    node_name: String,
    checksum: String,
}

fn body_checksum(body: &IdentityBody) -> Result<String, serde_json::Error> {
    let canonical = serde_json::to_vec(body)?;
    Ok(format!("{:08x}", crc32c::crc32c(&canonical)))
}

impl StateDir {
    /// Makes a new state dir (and its parents), mode 0700. Refuses one that already holds
    /// an identity: initialising twice would give one disk two identities.
    pub fn create(root: &Path) -> Result<StateDir, StateDirError> {
        let dir = StateDir {
            root: root.to_path_buf(),
            _lock: None,
        };
        let identity = dir.identity_path();
        if identity.exists() {
            return Err(StateDirError::AlreadyInitialised { path: identity });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_error(root))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_error(root))?;
        Ok(dir)
    }

    /// Opens an existing state dir; refuses a directory without identity.json.
    pub fn open(root: &Path) -> Result<StateDir, StateDirError> {
        let not_state_dir = |reason: &str| StateDirError::NotStateDir {
            path: root.to_path_buf(),
            reason: reason.to_string(),
        };
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(not_state_dir("it is not a directory")),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(not_state_dir(
                    "it does not exist (run `tandem init` or `tandem join`)",
                ))
            }
            Err(err) => return Err(io_error(root)(err)),
        }
        let dir = StateDir {
            root: root.to_path_buf(),
            _lock: None,
        };
        if !dir.identity_path().exists() {
            return Err(not_state_dir(
                "it holds no identity.json (run `tandem init` or `tandem join` first)",
            ));
        }
        Ok(dir)
    }

    /// Takes `<root>/daemon.lock` (flock, non-blocking) and writes our pid into it; held until
    /// this `StateDir` is dropped. Fails naming the other daemon's pid when it is taken.
    pub fn lock_exclusive(&mut self) -> Result<(), StateDirError> {
        let path = self.root.join("daemon.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        // SAFETY: flock on a file descriptor we own; it does not touch memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(StateDirError::Locked {
                    root: self.root.clone(),
                    pid,
                });
            }
            return Err(io_error(&path)(err));
        }
        file.set_len(0).map_err(io_error(&path))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_error(&path))?;
        file.sync_data().map_err(io_error(&path))?;
        self._lock = Some(file);
        Ok(())
    }

    /// Writes identity.json (checksummed, atomic, mode 0600).
    pub fn write_identity(&self, id: &Identity) -> Result<(), StateDirError> {
        let path = self.identity_path();
        let invalid = |reason: String| StateDirError::Invalid {
            path: path.clone(),
            reason,
        };
        if id.format != IDENTITY_FORMAT {
            return Err(invalid(format!(
                "identity format {} cannot be written, only {IDENTITY_FORMAT}",
                id.format
            )));
        }
        pki::validate_node_name(&id.node_name).map_err(|err| invalid(err.to_string()))?;
        let body = IdentityBody {
            format: id.format,
            cluster: id.cluster,
            node_id: id.node_id,
            node_name: id.node_name.clone(),
        };
        let checksum = body_checksum(&body).map_err(|err| invalid(err.to_string()))?;
        let file = IdentityFile {
            format: body.format,
            cluster: body.cluster,
            node_id: body.node_id,
            node_name: body.node_name,
            checksum,
        };
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|err| invalid(err.to_string()))?;
        text.push('\n');
        write_atomic(&path, text.as_bytes(), 0o600).map_err(io_error(&path))
    }

    /// Reads identity.json, refusing a checksum mismatch or a format this build does not know.
    pub fn read_identity(&self) -> Result<Identity, StateDirError> {
        let path = self.identity_path();
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        let corrupt = |reason: String| StateDirError::Corrupt {
            path: path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|err| corrupt(format!("not JSON: {err}")))?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(format) if format == u64::from(IDENTITY_FORMAT) => {}
            Some(format) => return Err(StateDirError::UnsupportedFormat { path, format }),
            None => return Err(corrupt("no numeric \"format\" field".into())),
        }
        let file: IdentityFile =
            serde_json::from_value(value).map_err(|err| corrupt(err.to_string()))?;
        let body = IdentityBody {
            format: file.format,
            cluster: file.cluster,
            node_id: file.node_id,
            node_name: file.node_name,
        };
        let expected = body_checksum(&body).map_err(|err| corrupt(err.to_string()))?;
        if !expected.eq_ignore_ascii_case(&file.checksum) {
            return Err(corrupt(format!(
                "checksum mismatch (stored {}, contents give {expected}); the file was damaged \
                 or edited by hand",
                file.checksum
            )));
        }
        pki::validate_node_name(&body.node_name).map_err(|err| corrupt(err.to_string()))?;
        Ok(Identity {
            format: body.format,
            cluster: body.cluster,
            node_id: body.node_id,
            node_name: body.node_name,
        })
    }

    /// Checks the node certificate names the same cluster and node as `id`; refuses a state
    /// dir whose certificate came from elsewhere (files copied between nodes or clusters).
    pub fn check_matches_certificate(&self, id: &Identity) -> Result<(), StateDirError> {
        let path = self.node_cert_path();
        let pem = fs::read_to_string(&path).map_err(io_error(&path))?;
        let certificate_error = |source: PkiError| StateDirError::Certificate {
            path: path.clone(),
            source,
        };
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| {
            certificate_error(PkiError::Pem {
                what: "the node certificate",
                reason: err.to_string(),
            })
        })?;
        let peer = pki::peer_identity(&der).map_err(certificate_error)?;
        if peer.cluster != id.cluster || peer.node_name != id.node_name {
            return Err(StateDirError::Foreign {
                path,
                cluster: id.cluster,
                node_name: id.node_name.clone(),
                cert_cluster: peer.cluster,
                cert_name: peer.node_name,
            });
        }
        Ok(())
    }

    /// Writes a secret (a private key, a token digest, ...) atomically with mode 0600.
    pub fn write_secret(&self, path: &Path, text: &str) -> Result<(), StateDirError> {
        write_atomic(path, text.as_bytes(), 0o600).map_err(io_error(path))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("tandem.toml")
    }

    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    pub fn node_cert_path(&self) -> PathBuf {
        self.root.join("node.crt")
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    pub fn control_socket_path(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    pub fn peers_path(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("daemon.log")
    }

    /// Reads node.crt and node.key.
    pub fn load_node_material(&self) -> Result<NodeMaterial, StateDirError> {
        Ok(NodeMaterial {
            cert_pem: read_text(&self.node_cert_path())?,
            key_pem: read_text(&self.node_key_path())?,
        })
    }

    /// Reads ca.crt and ca.key (the key exists only on nodes that may sign joins).
    pub fn load_ca(&self) -> Result<CaMaterial, StateDirError> {
        Ok(CaMaterial {
            cert_pem: read_text(&self.ca_cert_path())?,
            key_pem: read_text(&self.ca_key_path())?,
        })
    }
}

fn read_text(path: &Path) -> Result<String, StateDirError> {
    fs::read_to_string(path).map_err(io_error(path))
}
