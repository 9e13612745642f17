//! Serves a volume over NBD on a Unix socket while this node is its primary.
//!
//! The protocol lives in the core (`tandem_core::nbd`); this module only moves bytes between a
//! socket and an `NbdConnection` and executes the decoded requests on the volume (`VolumeIo`). It exists
//! so the daemon can start and stop a volume's frontend as the committed state makes this node
//! primary or takes that away. Each client gets its own task; garbage from a client is logged
//! with the volume and the reason, that client is dropped, and the listener keeps serving.
//!
//! Requests are pipelined: the client's task hands each request to tokio's blocking pool (the
//! `VolumeIo` calls block) and goes on reading, so a client with many requests outstanding has
//! them executing at once, and each reply is sent as soon as its call returns, in whatever
//! order they finish (NBD allows any). Everything stays bounded: a connection reads more only
//! when the protocol engine took what it had, starts no request while its unsent output is
//! large, and has at most `CONNECTION_IN_FLIGHT` requests executing; all connections of a
//! frontend together stay within `FRONTEND_IN_FLIGHT` requests and `FRONTEND_BYTES` of
//! payload (below the replication core's own limits, so a busy volume makes clients wait
//! rather than fail). A client that keeps one request outstanding at a time has its requests
//! run inline instead, sparing it the hand-offs to and from the pool, until it sends more at
//! once. A client that says goodbye (`NBD_CMD_DISC`) gets its outstanding replies first; one
//! that just goes away leaves its calls to finish on their own.
//!
//! Ordering and FLUSH (DESIGN.md §5). NBD orders nothing between requests in flight together;
//! what it does promise is that a FLUSH makes durable every write the server *completed*
//! (replied to) before it received the FLUSH. That holds here: a reply is queued only after
//! the volume call returned, so for any write whose reply the client saw before it sent the
//! FLUSH, `VolumeIo::write` returned before the FLUSH was even decoded, hence before
//! `VolumeIo::flush` started; and `flush` makes durable everything acknowledged (returned)
//! before it started — on a plain leg an `fdatasync` of the file, on a mirrored volume a flush
//! the replication core runs on every UpToDate leg after those writes completed there. Writes
//! still in flight when the FLUSH arrives may or may not be covered, exactly as NBD allows.
//! Since `flush` is volume-wide, not per connection, this holds across connections too, so the
//! export advertises `can_multi_conn`.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tandem_core::nbd::{Catalogue, Errno, Export, NbdConnection, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::volume_io::VolumeIo;

/// Bytes read from a client socket at a time.
const READ_CHUNK: usize = 256 << 10;
/// Requests of one connection executing at once (fio at QD32 and nbdcopy's 64 fit).
const CONNECTION_IN_FLIGHT: usize = 64;
/// Requests of all connections of one frontend executing at once: half the replication core's
/// limit on client requests (256), leaving room for the FUSE image of the same volume.
const FRONTEND_IN_FLIGHT: usize = 128;
/// Payload bytes (write data, read results) of all connections in flight at once: half the
/// core's limit on client bytes (128 MiB), and at least one maximum request (32 MiB).
const FRONTEND_BYTES: u32 = 64 << 20;
/// Unsent output above which a connection starts no new request.
const UNSENT_LIMIT: usize = 2 << 20;
/// Requests in a row that each had the connection to itself, after which a connection runs
/// its requests inline (see `Client::run_inline`).
const INLINE_AFTER: u32 = 8;

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
        // A FLUSH on any connection covers the writes completed on every connection: every
        // `VolumeIo::flush` is volume-wide (see the module documentation).
        export.can_multi_conn = true;
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
    let budget = Arc::new(Budget::new());
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let connection = NbdConnection::new(catalogue.clone());
                    let client = Client::new(stream, connection, Arc::clone(&volume), budget.clone());
                    clients.spawn(client.serve());
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

/// What all connections of one frontend may have in flight together.
struct Budget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// One request's share of the `Budget`, given back when dropped (after its reply is queued).
struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            requests: Arc::new(Semaphore::new(FRONTEND_IN_FLIGHT)),
            bytes: Arc::new(Semaphore::new(FRONTEND_BYTES as usize)),
        }
    }

    /// The share for a request of `bytes` payload, if it is free right now.
    fn try_take(&self, bytes: u32) -> Option<Permits> {
        let request = self.requests.clone().try_acquire_owned().ok()?;
        let bytes = match bytes {
            0 => None,
            n => Some(self.bytes.clone().try_acquire_many_owned(n).ok()?),
        };
        Some(Permits {
            _request: request,
            _bytes: bytes,
        })
    }

    /// Waits (in turn with the other connections) for the share; `None` only if closed.
    async fn take(self: Arc<Self>, bytes: u32) -> Option<Permits> {
        let request = self.requests.clone().acquire_owned().await.ok()?;
        let bytes = match bytes {
            0 => None,
            n => Some(self.bytes.clone().acquire_many_owned(n).await.ok()?),
        };
        Some(Permits {
            _request: request,
            _bytes: bytes,
        })
    }
}

/// The payload a request holds while in flight, capped at the whole budget.
fn cost(request: &Request) -> u32 {
    let bytes = match request {
        Request::Read { length, .. } => *length as usize,
        Request::Write { data, .. } => data.len(),
        _ => 0,
    };
    u32::try_from(bytes).unwrap_or(u32::MAX).min(FRONTEND_BYTES)
}

/// A volume call that returned, sent back to its connection's task.
struct Completion {
    cookie: u64,
    result: io::Result<Vec<u8>>,
    _permits: Permits,
}

type PermitWait = Pin<Box<dyn Future<Output = Option<Permits>> + Send>>;

/// One client connection: the protocol engine, the socket and the requests in flight.
struct Client {
    connection: NbdConnection,
    volume: Arc<dyn VolumeIo>,
    budget: Arc<Budget>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    chunk: Vec<u8>,
    /// Bytes read from the socket that the protocol engine has not accepted yet.
    input: Vec<u8>,
    /// The client closed its side.
    eof: bool,
    /// Output taken from the engine; `output[sent..]` is still to be written.
    output: Vec<u8>,
    sent: usize,
    /// Requests taken from the engine and not yet answered (including `stalled`).
    in_flight: usize,
    /// Requests in a row that each had the connection to itself when they started.
    lonely: u32,
    /// A request waiting for its share of the budget, and the wait.
    stalled: Option<(u64, Request)>,
    waiting: Option<PermitWait>,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
}

impl Client {
    fn new(
        stream: UnixStream,
        connection: NbdConnection,
        volume: Arc<dyn VolumeIo>,
        budget: Arc<Budget>,
    ) -> Client {
        let (reader, writer) = stream.into_split();
        // Unbounded, but never holds more than `in_flight` completions.
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Client {
            connection,
            volume,
            budget,
            reader,
            writer,
            chunk: vec![0u8; READ_CHUNK],
            input: Vec::new(),
            eof: false,
            output: Vec::new(),
            sent: 0,
            in_flight: 0,
            lonely: 0,
            stalled: None,
            waiting: None,
            done_tx,
            done_rx,
        }
    }

    /// Serves the client until it is done or misbehaves, then logs what it was refused.
    async fn serve(mut self) {
        let describe = self.volume.describe();
        if let Err(error) = self.run().await {
            tracing::info!("nbd client of {describe}: {error}");
        }
        let (rejections, dropped) = self.connection.take_rejections();
        for rejection in rejections {
            tracing::warn!("nbd client of {describe}: refused: {rejection}");
        }
        if dropped > 0 {
            tracing::warn!("nbd: {dropped} more refusals not shown");
        }
        if let tandem_core::nbd::State::Closed { reason } = self.connection.state() {
            if reason.is_fatal() {
                tracing::warn!("nbd client of {describe} dropped: {reason}");
            }
        }
    }

    /// Moves bytes both ways and executes requests until the client is done or misbehaves.
    async fn run(&mut self) -> io::Result<()> {
        loop {
            self.settle();
            if self.connection.is_finished() {
                return self.finish().await;
            }
            if self.is_idle() && self.eof {
                return Ok(()); // gone, and everything it sent in full was answered
            }
            if self.is_idle() && !self.input.is_empty() {
                return Err(io::Error::other(
                    "the protocol engine accepts no more input; dropping the client",
                ));
            }
            self.wait().await?;
        }
    }

    /// Nothing executing and nothing left to write.
    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.unsent() == 0 && !self.connection.has_output()
    }

    fn unsent(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Feeds input, starts requests and collects output while any of that makes progress.
    fn settle(&mut self) {
        loop {
            let fed = self.feed();
            let started = self.start_requests();
            let took = self.take_output();
            if !fed && !started && !took {
                return;
            }
        }
    }

    fn feed(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let accepted = self.connection.receive(&self.input);
        self.input.drain(..accepted);
        accepted > 0
    }

    /// Takes requests from the engine and launches them while the limits allow.
    fn start_requests(&mut self) -> bool {
        let mut started = false;
        while self.stalled.is_none()
            && self.in_flight < CONNECTION_IN_FLIGHT
            && self.unsent() < UNSENT_LIMIT
        {
            let Some(request) = self.connection.next_request() else {
                break;
            };
            started = true;
            let Some(cookie) = request.cookie() else {
                continue; // NBD_CMD_DISC: the connection finishes once the rest is answered.
            };
            self.in_flight += 1;
            let alone = self.connection.pending_requests() == 1
                && self.connection.buffered_bytes() == 0
                && self.input.is_empty();
            self.lonely = if alone {
                self.lonely.saturating_add(1)
            } else {
                0
            };
            let cost = cost(&request);
            match self.budget.try_take(cost) {
                Some(permits) if self.lonely > INLINE_AFTER => {
                    self.run_inline(cookie, request, permits)
                }
                Some(permits) => self.launch(cookie, request, permits),
                None => {
                    self.stalled = Some((cookie, request));
                    self.waiting = Some(Box::pin(Arc::clone(&self.budget).take(cost)));
                }
            }
        }
        started
    }

    /// Runs one request on the blocking pool; its completion comes back on `done_rx`.
    fn launch(&self, cookie: u64, request: Request, permits: Permits) {
        let volume = Arc::clone(&self.volume);
        let done = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = call_volume(volume.as_ref(), request);
            // The client may be gone; then the result is dropped and the budget given back.
            let _ = done.send(Completion {
                cookie,
                result,
                _permits: permits,
            });
        });
    }

    /// Runs a request on this task and answers it at once. A client that waits for each reply
    /// before it sends the next request (queue depth 1, e.g. a write then a flush, one at a
    /// time) gains nothing from the blocking pool and would pay two thread wake-ups per
    /// request for it. Anything the client sent meanwhile shows it is not such a client: then
    /// its requests go to the pool again.
    fn run_inline(&mut self, cookie: u64, request: Request, permits: Permits) {
        let volume = Arc::clone(&self.volume);
        let result = tokio::task::block_in_place(|| call_volume(volume.as_ref(), request));
        self.complete(Completion {
            cookie,
            result,
            _permits: permits,
        });
        match self.reader.try_read(&mut self.chunk) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.input.extend_from_slice(&self.chunk[..n]);
                self.lonely = 0;
            }
            Err(_) => {} // nothing arrived (or an error the next read reports)
        }
    }

    /// The stalled request got its share of the budget (or the budget closed: never).
    fn unstall(&mut self, permits: Option<Permits>) {
        self.waiting = None;
        let Some((cookie, request)) = self.stalled.take() else {
            return;
        };
        match permits {
            Some(permits) => self.launch(cookie, request, permits),
            None => {
                self.in_flight -= 1;
                self.answer(cookie, Err(io::Error::other("the frontend is stopping")));
            }
        }
    }

    /// Moves the engine's output behind what is still unsent, unless that is already large.
    fn take_output(&mut self) -> bool {
        if !self.connection.has_output() || self.unsent() >= UNSENT_LIMIT {
            return false;
        }
        if self.unsent() == 0 {
            self.output = self.connection.take_output();
        } else {
            self.output.drain(..self.sent);
            self.output.extend(self.connection.take_output());
        }
        self.sent = 0;
        true
    }

    /// Waits for one event: a completion, a share of the budget, the socket taking output or
    /// giving input (each branch is cancel-safe: partial writes are counted, reads buffered).
    async fn wait(&mut self) -> io::Result<()> {
        let unsent = self.unsent() > 0;
        let can_read = !self.eof && self.input.is_empty();
        tokio::select! {
            Some(done) = self.done_rx.recv() => {
                self.complete(done);
                while let Ok(done) = self.done_rx.try_recv() {
                    self.complete(done);
                }
            }
            permits = wait_for(&mut self.waiting), if self.waiting.is_some() => {
                self.unstall(permits);
            }
            written = self.writer.write(&self.output[self.sent..]), if unsent => match written? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => self.sent += n,
            },
            read = self.reader.read(&mut self.chunk), if can_read => match read? {
                0 => self.eof = true,
                n => self.input.extend_from_slice(&self.chunk[..n]),
            },
        }
        Ok(())
    }

    fn complete(&mut self, done: Completion) {
        self.in_flight -= 1;
        self.answer(done.cookie, done.result);
    }

    /// Queues the reply to one request.
    fn answer(&mut self, cookie: u64, result: io::Result<Vec<u8>>) {
        let reply = match &result {
            Ok(data) => self.connection.reply(cookie, Ok(data)),
            Err(error) => {
                tracing::warn!("nbd: I/O error on {}: {error}", self.volume.describe());
                self.connection.reply(cookie, Err(Errno::Io))
            }
        };
        if let Err(error) = reply {
            tracing::error!("nbd: internal reply error: {error}");
        }
    }

    /// Writes the remaining output; the socket closes when the client is dropped.
    async fn finish(&mut self) -> io::Result<()> {
        while self.connection.has_output() {
            let more = self.connection.take_output();
            self.output.extend(more);
        }
        self.writer.write_all(&self.output[self.sent..]).await?;
        self.sent = self.output.len();
        Ok(())
    }
}

/// Waits for a pending share of the budget; never ready when there is none.
async fn wait_for(waiting: &mut Option<PermitWait>) -> Option<Permits> {
    match waiting {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

/// Runs one request on the volume, a panic becoming an I/O error.
fn call_volume(volume: &dyn VolumeIo, request: Request) -> io::Result<Vec<u8>> {
    let call = AssertUnwindSafe(|| run_on_volume(volume, request));
    std::panic::catch_unwind(call)
        .unwrap_or_else(|_| Err(io::Error::other("the volume call panicked")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;
    use tandem_core::nbd::consts::*;

    const WRITES: u64 = 8;

    /// A volume whose writes each wait until all `WRITES` are executing at once (so a serial
    /// frontend fails them); the write at offset 0 also waits until the others returned.
    #[derive(Default)]
    struct Gate {
        /// (writes arrived, writes returned)
        counts: Mutex<(u64, u64)>,
        changed: Condvar,
    }

    impl Gate {
        fn wait_until(&self, done: impl Fn(&(u64, u64)) -> bool) -> io::Result<()> {
            let counts = self.counts.lock().unwrap();
            let limit = Duration::from_secs(10);
            let (_counts, waited) = self
                .changed
                .wait_timeout_while(counts, limit, |counts| !done(counts))
                .unwrap();
            match waited.timed_out() {
                true => Err(io::Error::other("the writes did not run at once")),
                false => Ok(()),
            }
        }

        fn count(&self, returned: bool) {
            let mut counts = self.counts.lock().unwrap();
            match returned {
                false => counts.0 += 1,
                true => counts.1 += 1,
            }
            self.changed.notify_all();
        }
    }

    impl VolumeIo for Gate {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read(&self, _offset: u64, length: usize) -> io::Result<Vec<u8>> {
            Ok(vec![0; length])
        }
        fn write(&self, offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
            self.count(false);
            self.wait_until(|&(arrived, _)| arrived >= WRITES)?;
            if offset == 0 {
                self.wait_until(|&(_, returned)| returned >= WRITES - 1)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            self.count(true);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _offset: u64, _length: u64, _may_trim: bool) -> io::Result<()> {
            Ok(())
        }
        fn trim(&self, _offset: u64, _length: u64) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "gate".into()
        }
    }

    /// Fixed newstyle handshake choosing `name`; returns the transmission flags.
    fn handshake(stream: &mut UnixStream, name: &str) -> u16 {
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(greeting[..8], NBDMAGIC.to_be_bytes());
        let flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
        let mut hello = flags.to_be_bytes().to_vec();
        hello.extend(IHAVEOPT.to_be_bytes());
        hello.extend(NBD_OPT_EXPORT_NAME.to_be_bytes());
        hello.extend((name.len() as u32).to_be_bytes());
        hello.extend(name.as_bytes());
        stream.write_all(&hello).unwrap();
        let mut export = [0u8; 10];
        stream.read_exact(&mut export).unwrap();
        u16::from_be_bytes([export[8], export[9]])
    }

    fn request(command: u16, cookie: u64, offset: u64, length: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = NBD_REQUEST_MAGIC.to_be_bytes().to_vec();
        bytes.extend(0u16.to_be_bytes());
        bytes.extend(command.to_be_bytes());
        bytes.extend(cookie.to_be_bytes());
        bytes.extend(offset.to_be_bytes());
        bytes.extend(length.to_be_bytes());
        bytes.extend(data);
        bytes
    }

    fn write(cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        request(NBD_CMD_WRITE, cookie, offset, data.len() as u32, data)
    }

    /// A simple reply: (error, cookie), then `data_len` bytes of data if it succeeded.
    fn reply_with(stream: &mut UnixStream, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut bytes = [0u8; 16];
        stream.read_exact(&mut bytes).unwrap();
        assert_eq!(bytes[..4], NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
        let error = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
        let mut data = vec![0u8; if error == 0 { data_len } else { 0 }];
        stream.read_exact(&mut data).unwrap();
        (error, cookie, data)
    }

    fn reply(stream: &mut UnixStream) -> (u32, u64) {
        let (error, cookie, _) = reply_with(stream, 0);
        (error, cookie)
    }

    /// A frontend for `volume` on its own runtime, and a client past the handshake.
    struct Served {
        stream: UnixStream,
        _frontend: NbdFrontend,
        _dir: tempfile::TempDir,
        _runtime: tokio::runtime::Runtime,
    }

    fn serve(volume: Arc<dyn VolumeIo>) -> Served {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let frontend = {
            let _entered = runtime.enter();
            NbdFrontend::start(&socket, "test", volume).unwrap()
        };
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let flags = handshake(&mut stream, "test");
        assert_ne!(flags & NBD_FLAG_CAN_MULTI_CONN, 0, "flags {flags:#x}");
        Served {
            stream,
            _frontend: frontend,
            _dir: dir,
            _runtime: runtime,
        }
    }

    /// After `NBD_CMD_DISC` the server closes the socket with nothing more to say.
    fn assert_closed(stream: &mut UnixStream) {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes after the replies", rest.len());
    }

    #[test]
    fn requests_of_one_connection_run_at_once_and_replies_go_out_as_they_finish() {
        let mut served = serve(Arc::new(Gate::default()));
        let stream = &mut served.stream;
        let mut requests = Vec::new();
        for cookie in 0..WRITES {
            requests.extend(write(cookie, cookie * 4096, &[7; 4096]));
        }
        // Goodbye at once: the writes in flight are still answered before the socket closes.
        requests.extend(request(NBD_CMD_DISC, 99, 0, 0, &[]));
        stream.write_all(&requests).unwrap();
        let replies: Vec<(u32, u64)> = (0..WRITES).map(|_| reply(stream)).collect();
        assert!(replies.iter().all(|&(error, _)| error == 0), "{replies:?}");
        let mut cookies: Vec<u64> = replies.iter().map(|&(_, cookie)| cookie).collect();
        assert_eq!(
            cookies.last(),
            Some(&0),
            "the slow write answers last: {replies:?}"
        );
        cookies.sort_unstable();
        assert_eq!(cookies, (0..WRITES).collect::<Vec<_>>());
        assert_closed(stream);
    }

    /// A volume in memory.
    struct Memory(Mutex<Vec<u8>>);

    impl VolumeIo for Memory {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read(&self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
            let at = offset as usize;
            Ok(self.0.lock().unwrap()[at..at + length].to_vec())
        }
        fn write(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
            let at = offset as usize;
            self.0.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _offset: u64, _length: u64, _may_trim: bool) -> io::Result<()> {
            Ok(())
        }
        fn trim(&self, _offset: u64, _length: u64) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    #[test]
    fn a_one_at_a_time_client_runs_inline_and_bursts_after_it_still_round_trip() {
        let mut served = serve(Arc::new(Memory(Mutex::new(vec![0; 1 << 20]))));
        let stream = &mut served.stream;
        for cookie in 0..20 {
            stream
                .write_all(&write(cookie, cookie * 4096, &[cookie as u8; 4096]))
                .unwrap();
            assert_eq!(reply(stream), (0, cookie));
            let read = request(NBD_CMD_READ, 1000 + cookie, cookie * 4096, 4096, &[]);
            stream.write_all(&read).unwrap();
            assert_eq!(
                reply_with(stream, 4096),
                (0, 1000 + cookie, vec![cookie as u8; 4096])
            );
        }
        let blocks = 32..64u64;
        let burst: Vec<u8> = blocks
            .clone()
            .flat_map(|b| write(b, b * 4096, &[b as u8; 4096]))
            .collect();
        stream.write_all(&burst).unwrap();
        let mut answered: Vec<u64> = blocks
            .clone()
            .map(|_| reply(stream))
            .map(|(error, cookie)| {
                assert_eq!(error, 0);
                cookie
            })
            .collect();
        answered.sort_unstable();
        assert_eq!(answered, blocks.clone().collect::<Vec<_>>());
        let reads: Vec<u8> = blocks
            .clone()
            .flat_map(|b| request(NBD_CMD_READ, b, b * 4096, 4096, &[]))
            .collect();
        stream.write_all(&reads).unwrap();
        for _ in blocks.clone() {
            let (error, cookie, data) = reply_with(stream, 4096);
            assert_eq!(
                (error, data),
                (0, vec![cookie as u8; 4096]),
                "block {cookie}"
            );
        }
        stream
            .write_all(&request(NBD_CMD_DISC, 0, 0, 0, &[]))
            .unwrap();
        assert_closed(stream);
    }
}
