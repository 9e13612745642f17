//! The local control socket: how the CLI (and later the API) talks to its own daemon.
//!
//! One JSON [`Command`] per line in, one JSON [`Reply`] per line out, on a Unix socket in the
//! state dir with mode 0600, so only root (the owner) can steer the node. The daemon side
//! forwards each command to the event loop and writes back whatever the loop answers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::{Command, Reply};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The longest command line accepted; commands are tiny.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A command from the socket, with the way back to its caller.
pub struct ControlRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is already answering on {path}")]
    InUse { path: PathBuf },
    #[error(
        "cannot reach the tandem daemon at {path}: {source} (is `tandem daemon --state-dir {dir}` running?)"
    )]
    Connect {
        path: PathBuf,
        dir: String,
        source: std::io::Error,
    },
    #[error("the daemon at {path} did not answer: {reason}")]
    NoAnswer { path: PathBuf, reason: String },
}

/// Binds the socket (replacing a stale one left by a killed daemon) with mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse { path: path.into() });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_error = |source| ControlError::Bind {
        path: path.into(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Accepts connections forever, handing each command to `requests`.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<ControlRequest>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_one(stream, requests).await {
                tracing::debug!("control connection ended: {error}");
            }
        });
    }
}

async fn serve_one(
    stream: UnixStream,
    requests: mpsc::Sender<ControlRequest>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST_BYTES as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(command) => ask_loop(&requests, command).await,
            Err(error) => Reply::Refused {
                message: format!("malformed command on the control socket: {error}"),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

async fn ask_loop(requests: &mpsc::Sender<ControlRequest>, command: Command) -> Reply {
    let (reply, answer) = oneshot::channel();
    if requests
        .send(ControlRequest { command, reply })
        .await
        .is_err()
    {
        return Reply::Refused {
            message: "the daemon is shutting down".into(),
        };
    }
    answer.await.unwrap_or_else(|_| Reply::Refused {
        message: "the daemon dropped the command".into(),
    })
}

/// Sends one command to the daemon of `state_dir` and waits (bounded) for its reply.
pub async fn call(
    state_dir: &Path,
    socket: &Path,
    command: &Command,
) -> Result<Reply, ControlError> {
    let connect = UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::Connect {
            path: socket.into(),
            dir: state_dir.display().to_string(),
            source,
        })?;
    let no_answer = |reason: String| ControlError::NoAnswer {
        path: socket.into(),
        reason,
    };
    let (read, mut write) = connect.into_split();
    let mut text = serde_json::to_string(command).map_err(|e| no_answer(e.to_string()))?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| no_answer("no reply within 30 s".into()))?
        .map_err(|e| no_answer(e.to_string()))?
        .ok_or_else(|| no_answer("connection closed".into()))?;
    serde_json::from_str(&line).map_err(|e| no_answer(format!("malformed reply: {e}")))
}
