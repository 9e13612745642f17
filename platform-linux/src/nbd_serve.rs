//! Serves a volume over NBD on a Unix socket while this node is its primary.
//!
//! The protocol lives in the core (`tandem_core::nbd`); this module only moves bytes between a
//! socket and an `NbdConnection` and executes the decoded requests on the volume (`VolumeIo`). It exists
//! so the daemon can start and stop a volume's frontend as the committed state makes this node
//! primary or takes that away. Each client gets its own task; garbage from a client is logged
//! with the volume and the reason, that client is dropped, and the listener keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_core::nbd::{Catalogue, Errno, Export, NbdConnection, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::volume_io::VolumeIo;

/// Bytes read from a client socket at a time.
const READ_CHUNK: usize = 256 << 10;

/// A running NBD frontend for one volume; dropping it stops the listener and every client.
pub struct NbdFrontend {
    socket: PathBuf,
    tasks: JoinSet<()>,
}

impl NbdFrontend {
    /// Listens on `socket` (mode 0600) for the export `name` backed by `volume`.
    pub fn start(
        socket: &Path,
        name: &str,
        volume: Arc<dyn VolumeIo>,
    ) -> std::io::Result<NbdFrontend> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        set_owner_only(socket)?;
        let mut export = Export::new(name, volume.size());
        export.description = format!("tandem volume {name}");
        let catalogue = Catalogue::new(vec![export])
            .and_then(|catalogue| catalogue.with_default(name))
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, Arc::new(catalogue), volume));
        Ok(NbdFrontend {
            socket: socket.to_path_buf(),
            tasks,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for NbdFrontend {
    fn drop(&mut self) {
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn set_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

async fn accept_loop(listener: UnixListener, catalogue: Arc<Catalogue>, volume: Arc<dyn VolumeIo>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    clients.spawn(serve_client(stream, catalogue.clone(), Arc::clone(&volume)));
                }
                Err(error) => {
                    tracing::warn!("nbd: accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}

async fn serve_client(stream: UnixStream, catalogue: Arc<Catalogue>, volume: Arc<dyn VolumeIo>) {
    let mut connection = NbdConnection::new(catalogue);
    if let Err(error) = pump(stream, &mut connection, volume.as_ref()).await {
        tracing::info!("nbd client of {}: {error}", volume.describe());
    }
    let (rejections, dropped) = connection.take_rejections();
    for rejection in rejections {
        tracing::warn!("nbd client of {}: refused: {rejection}", volume.describe());
    }
    if dropped > 0 {
        tracing::warn!("nbd: {dropped} more refusals not shown");
    }
    if let tandem_core::nbd::State::Closed { reason } = connection.state() {
        if reason.is_fatal() {
            tracing::warn!("nbd client of {} dropped: {reason}", volume.describe());
        }
    }
}

/// Moves bytes both ways and executes requests until the client is done or misbehaves.
async fn pump(
    mut stream: UnixStream,
    connection: &mut NbdConnection,
    volume: &dyn VolumeIo,
) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let mut progressed = false;
        while let Some(request) = connection.next_request() {
            progressed = true;
            execute(connection, volume, request);
        }
        let output = connection.take_output();
        if !output.is_empty() {
            progressed = true;
            stream.write_all(&output).await?;
        }
        if connection.is_finished() {
            return Ok(());
        }
        if !pending.is_empty() {
            let accepted = connection.receive(&pending);
            pending.drain(..accepted);
            if accepted > 0 || progressed {
                continue;
            }
            if pending.len() >= connection.input_capacity() {
                return Err(std::io::Error::other(
                    "the protocol engine accepts no more input; dropping the client",
                ));
            }
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..read]);
    }
}

/// Runs one request on the volume and queues its reply.
fn execute(connection: &mut NbdConnection, volume: &dyn VolumeIo, request: Request) {
    let Some(cookie) = request.cookie() else {
        return; // NBD_CMD_DISC: the connection finishes once the rest is answered.
    };
    let result = tokio::task::block_in_place(|| run_on_volume(volume, request));
    let reply = match &result {
        Ok(data) => connection.reply(cookie, Ok(data)),
        Err(error) => {
            tracing::warn!("nbd: I/O error on {}: {error}", volume.describe());
            connection.reply(cookie, Err(Errno::Io))
        }
    };
    if let Err(error) = reply {
        tracing::error!("nbd: internal reply error: {error}");
    }
}

/// The blocking volume I/O for one request; reads return their data, the rest nothing.
fn run_on_volume(volume: &dyn VolumeIo, request: Request) -> std::io::Result<Vec<u8>> {
    let then_flush = |fua: bool| if fua { volume.flush() } else { Ok(()) };
    match request {
        Request::Read { offset, length, .. } => volume.read(offset, length as usize),
        Request::Write {
            offset, data, fua, ..
        } => volume.write(offset, &data, fua).map(|_| Vec::new()),
        Request::Flush { .. } => volume.flush().map(|_| Vec::new()),
        Request::Trim {
            offset,
            length,
            fua,
            ..
        } => volume
            .trim(offset, u64::from(length))
            .and_then(|_| then_flush(fua))
            .map(|_| Vec::new()),
        Request::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
            ..
        } => volume
            .write_zeroes(offset, u64::from(length), !no_hole)
            .and_then(|_| then_flush(fua))
            .map(|_| Vec::new()),
        Request::Disconnect => Ok(Vec::new()),
    }
}
