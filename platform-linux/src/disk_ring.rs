//! A leg's disk operations through io_uring, completed asynchronously (DESIGN.md §3).
//!
//! Why: the replication core is completion-based: it asks for a disk operation with an id and
//! is told later that it finished. Running each operation synchronously on the engine's task
//! made every write wait for the one before it, and an fdatasync stopped the whole volume.
//! Here one thread per open leg owns an io_uring: the engine submits and goes on; completions
//! come back on a channel, in whatever order the kernel finishes them. The core already keeps
//! overlapping operations apart (an operation starts only after every earlier one it overlaps
//! completed), so reordering is safe; a flush covers the writes completed before it was
//! submitted, which is exactly what the core asks of it.
//!
//! The frontends' reads go through the same ring ([`RingReader`]) and wait for their own
//! completion.
//!
//! The thread sleeps in `io_uring_enter` until a completion arrives; new submissions wake it
//! through an eventfd that the ring always polls. When the engine's handle is dropped (even if
//! a frontend still holds a reader), the thread finishes every operation in flight before it
//! exits and only then drops what it was given to hold (the leg lock), so the next role on
//! this leg never races an old write.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use tandem_core::replication::{DiskKind, DiskOp};
use tokio::sync::mpsc;

use crate::leg::Leg;

/// Submission queue depth, and the most operations in flight at once.
const RING_DEPTH: u32 = 128;
/// The user data of the eventfd poll (never an operation's key).
const WAKE: u64 = u64::MAX;

/// One finished operation: its id and what it gave (a read's bytes).
#[derive(Debug)]
pub struct DiskDone {
    pub id: u64,
    pub result: io::Result<Option<Vec<u8>>>,
}

/// What the ring is asked to do, and who hears about it.
enum Request {
    /// An operation of the replication core: completes on the engine's channel.
    Engine(DiskOp),
    /// A frontend's read: completes to the caller waiting on `reply`.
    Read {
        offset: u64,
        len: usize,
        reply: Sender<io::Result<Vec<u8>>>,
    },
}

/// The engine's handle on a leg's ring. Dropping it closes the ring.
pub struct DiskRing {
    requests: Sender<Request>,
    wake: Arc<OwnedFd>,
    closed: Arc<AtomicBool>,
}

/// A frontend's handle for reads through the ring; fails once the engine closed the ring.
#[derive(Clone)]
pub struct RingReader {
    requests: Sender<Request>,
    wake: Arc<OwnedFd>,
}

/// The ring's thread has stopped (it failed); nothing more can be submitted.
#[derive(Debug, thiserror::Error)]
#[error("the disk ring of this leg has stopped")]
pub struct RingStopped;

impl DiskRing {
    /// Starts the ring thread for `leg`. `hold` is dropped only after the last operation
    /// finished (pass the leg lock's guard).
    pub fn start(
        leg: Arc<Leg>,
        hold: Box<dyn Send>,
    ) -> io::Result<(DiskRing, mpsc::UnboundedReceiver<DiskDone>)> {
        let ring = IoUring::new(RING_DEPTH)?;
        // SAFETY: eventfd with valid flags; the descriptor is owned from here on.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let (requests, queue) = channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        let worker = RingWorker::new(ring, leg, wake.clone(), queue, done_tx, closed.clone());
        std::thread::Builder::new()
            .name("leg-ring".into())
            .spawn(move || {
                worker.run();
                drop(hold);
            })?;
        let handle = DiskRing {
            requests,
            wake,
            closed,
        };
        Ok((handle, done_rx))
    }

    /// Submits `op`; its `DiskDone` arrives on the completion channel. The number in flight
    /// is bounded by the core's request window (and the ring holds back past `RING_DEPTH`).
    pub fn submit(&self, op: DiskOp) -> Result<(), RingStopped> {
        self.requests
            .send(Request::Engine(op))
            .map_err(|_| RingStopped)?;
        wake(self.wake.as_raw_fd());
        Ok(())
    }

    /// A handle for the frontends' reads.
    pub fn reader(&self) -> RingReader {
        RingReader {
            requests: self.requests.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl Drop for DiskRing {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        wake(self.wake.as_raw_fd());
    }
}

impl RingReader {
    /// Reads `len` bytes at `offset` through the ring, waiting for the completion.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let stopped = || io::Error::other(RingStopped.to_string());
        let (reply, answer) = channel();
        let request = Request::Read { offset, len, reply };
        self.requests.send(request).map_err(|_| stopped())?;
        wake(self.wake.as_raw_fd());
        answer.recv().map_err(|_| stopped())?
    }
}

fn wake(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd; a full counter only means the
    // ring is already woken.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// An operation in flight, with the buffer the kernel reads or fills.
struct InFlight {
    reply: Reply,
    step: Step,
}

/// Who is told when an operation finishes.
enum Reply {
    Engine(u64),
    Caller(Sender<io::Result<Vec<u8>>>),
}

enum Step {
    Write {
        offset: u64,
        data: Vec<u8>,
        done: usize,
    },
    Read {
        offset: u64,
        data: Vec<u8>,
        done: usize,
    },
    Flush,
    Zero {
        offset: u64,
        len: u64,
        mode: i32,
    },
}

struct RingWorker {
    ring: IoUring,
    leg: Arc<Leg>,
    wake: Arc<OwnedFd>,
    queue: Receiver<Request>,
    done: mpsc::UnboundedSender<DiskDone>,
    in_flight: HashMap<u64, InFlight>,
    backlog: VecDeque<InFlight>,
    next_key: u64,
    /// Set when the engine dropped its handle.
    closing: Arc<AtomicBool>,
    closed: bool,
}

impl RingWorker {
    fn new(
        ring: IoUring,
        leg: Arc<Leg>,
        wake: Arc<OwnedFd>,
        queue: Receiver<Request>,
        done: mpsc::UnboundedSender<DiskDone>,
        closing: Arc<AtomicBool>,
    ) -> RingWorker {
        RingWorker {
            ring,
            leg,
            wake,
            queue,
            done,
            in_flight: HashMap::new(),
            backlog: VecDeque::new(),
            next_key: 0,
            closing,
            closed: false,
        }
    }

    fn run(mut self) {
        if let Err(error) = self.arm_wake() {
            return self.fail_all(&error);
        }
        loop {
            self.take_requests();
            self.push_backlog();
            if self.closed && self.in_flight.is_empty() && self.backlog.is_empty() {
                return;
            }
            if let Err(error) = self.ring.submit_and_wait(1) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("leg {}: io_uring: {error}", self.leg.path().display());
                return self.fail_all(&error);
            }
            self.reap();
        }
    }

    fn take_requests(&mut self) {
        // Read the flag first: whatever was queued before the close is still carried out.
        self.closed |= self.closing.load(Ordering::SeqCst);
        loop {
            let op = match self.queue.try_recv() {
                Ok(Request::Engine(op)) => InFlight {
                    reply: Reply::Engine(op.id),
                    step: step_of(op.kind),
                },
                Ok(Request::Read { offset, len, reply }) => InFlight {
                    reply: Reply::Caller(reply),
                    step: Step::Read {
                        offset,
                        data: vec![0; len],
                        done: 0,
                    },
                },
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            };
            self.backlog.push_back(op);
        }
    }

    /// Moves waiting operations into the ring while it has room.
    fn push_backlog(&mut self) {
        while self.in_flight.len() < RING_DEPTH as usize - 1 {
            let Some(op) = self.backlog.pop_front() else {
                return;
            };
            let key = self.next_key;
            self.next_key = (self.next_key + 1) % WAKE;
            if self.push(key, &op).is_err() {
                self.backlog.push_front(op);
                return;
            }
            self.in_flight.insert(key, op);
        }
    }

    /// Queues the submission entry for `op`'s next step (the buffers live in `in_flight`,
    /// and a `Vec`'s heap buffer does not move when the `InFlight` does).
    fn push(&mut self, key: u64, op: &InFlight) -> Result<(), ()> {
        let fd = types::Fd(self.leg.raw_fd());
        let entry = match &op.step {
            Step::Write { offset, data, done } => {
                let rest = &data[*done..];
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                    .offset(offset + *done as u64)
                    .build()
            }
            Step::Read { offset, data, done } => {
                let rest = &data[*done..];
                opcode::Read::new(fd, rest.as_ptr() as *mut u8, rest.len() as u32)
                    .offset(offset + *done as u64)
                    .build()
            }
            Step::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Step::Zero { offset, len, mode } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        };
        let entry = entry.user_data(key);
        // SAFETY: the buffers the entry points into stay alive and unmoved in `in_flight`
        // until its completion is reaped (the caller inserts `op` right after this).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.ring.submit().map_err(|_| ())?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| ())?;
        }
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        // SAFETY: a poll entry holds no buffer.
        unsafe { self.ring.submission().push(&poll) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn reap(&mut self) {
        let finished: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (key, result) in finished {
            if key == WAKE {
                self.drain_wake();
                continue;
            }
            if let Some(op) = self.in_flight.remove(&key) {
                self.advance(key, op, result);
            }
        }
    }

    fn drain_wake(&mut self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd.
        let _ = unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if let Err(error) = self.arm_wake() {
            tracing::error!("leg {}: io_uring: {error}", self.leg.path().display());
        }
    }

    /// One step of `op` finished with `result` (bytes, or a negative errno).
    fn advance(&mut self, key: u64, mut op: InFlight, result: i32) {
        if result < 0 {
            let error = io::Error::from_raw_os_error(-result);
            if let Step::Zero { offset, len, .. } = op.step {
                // No fallocate here (e.g. a block device without discard): write zeros.
                let written = self.leg.write_zero_buffers(offset, len);
                return self.finish(op.reply, written.map(|_| None));
            }
            return self.finish(op.reply, Err(error));
        }
        let moved = result as usize;
        let outcome = match &mut op.step {
            Step::Write { data, done, .. } | Step::Read { data, done, .. } => {
                *done += moved;
                if *done < data.len() && moved == 0 {
                    Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the leg ended before the operation did",
                    )))
                } else if *done < data.len() {
                    None
                } else {
                    Some(Ok(()))
                }
            }
            Step::Flush | Step::Zero { .. } => Some(Ok(())),
        };
        match outcome {
            None => {
                // A short transfer: submit the rest.
                if self.push(key, &op).is_ok() {
                    self.in_flight.insert(key, op);
                } else {
                    self.backlog.push_front(op);
                }
            }
            Some(Err(error)) => self.finish(op.reply, Err(error)),
            Some(Ok(())) => {
                let data = match op.step {
                    Step::Read { data, .. } => Some(data),
                    _ => None,
                };
                self.finish(op.reply, Ok(data));
            }
        }
    }

    fn finish(&self, reply: Reply, result: io::Result<Option<Vec<u8>>>) {
        match reply {
            Reply::Engine(id) => {
                let _ = self.done.send(DiskDone { id, result });
            }
            Reply::Caller(caller) => {
                let _ = caller.send(result.map(Option::unwrap_or_default));
            }
        }
    }

    /// The ring itself failed: every operation fails, and the thread stops. The buffers of
    /// operations the kernel may still hold are leaked on purpose: freeing them could let a
    /// late completion write into reused memory.
    fn fail_all(mut self, error: &io::Error) {
        let failed = || io::Error::new(error.kind(), error.to_string());
        for (_, op) in std::mem::take(&mut self.in_flight) {
            let InFlight { reply, step } = op;
            self.finish(reply, Err(failed()));
            std::mem::forget(step);
        }
        for op in std::mem::take(&mut self.backlog) {
            self.finish(op.reply, Err(failed()));
        }
    }
}

fn step_of(kind: DiskKind) -> Step {
    match kind {
        DiskKind::Write { offset, data } => Step::Write {
            offset,
            data,
            done: 0,
        },
        DiskKind::Read { offset, len } => Step::Read {
            offset,
            data: vec![0; usize::try_from(len).unwrap_or(0)],
            done: 0,
        },
        DiskKind::Flush => Step::Flush,
        // NBD leaves trimmed contents unspecified, but legs must stay identical: a trimmed
        // range reads back as zeroes (see `Leg::trim`).
        DiskKind::Trim { offset, len } | DiskKind::WriteZeroes { offset, len } => Step::Zero {
            offset,
            len,
            mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn scratch(size: u64) -> (tempfile::TempDir, Arc<Leg>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let leg = Leg::open(&dir.path().join("leg.img"), size).expect("open leg");
        (dir, Arc::new(leg))
    }

    async fn next(done: &mut mpsc::UnboundedReceiver<DiskDone>) -> DiskDone {
        tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .expect("a completion within the hang guard")
            .expect("the ring is running")
    }

    fn op(id: u64, kind: DiskKind) -> DiskOp {
        DiskOp { id, kind }
    }

    #[tokio::test]
    async fn writes_reads_zeroes_and_flushes_complete_with_their_ids() {
        let (_dir, leg) = scratch(1 << 20);
        let (ring, mut done) = DiskRing::start(leg.clone(), Box::new(())).expect("ring");
        let ids: Vec<u64> = (1..=64).collect();
        for &id in &ids {
            let data = vec![id as u8; 4096];
            let offset = id * 4096;
            ring.submit(op(id, DiskKind::Write { offset, data }))
                .expect("submit");
        }
        let mut finished: Vec<u64> = Vec::new();
        for _ in &ids {
            let completion = next(&mut done).await;
            assert!(completion.result.expect("write ok").is_none());
            finished.push(completion.id);
        }
        finished.sort_unstable();
        assert_eq!(finished, ids, "every write completes exactly once");
        ring.submit(op(100, DiskKind::Flush)).expect("submit flush");
        assert_eq!(next(&mut done).await.id, 100);
        let zero = DiskKind::WriteZeroes {
            offset: 2 * 4096,
            len: 4096,
        };
        ring.submit(op(101, zero)).expect("submit zeroes");
        assert!(next(&mut done).await.result.is_ok());
        ring.submit(op(
            102,
            DiskKind::Read {
                offset: 4096,
                len: 3 * 4096,
            },
        ))
        .expect("submit read");
        let read = next(&mut done).await;
        assert_eq!(read.id, 102);
        let data = read.result.expect("read ok").expect("bytes");
        assert_eq!(&data[..4096], &vec![1u8; 4096][..]);
        assert_eq!(&data[4096..8192], &vec![0u8; 4096][..], "zeroed range");
        assert_eq!(&data[8192..], &vec![3u8; 4096][..]);
        assert_eq!(leg.read(3 * 4096, 4096).expect("pread"), vec![3u8; 4096]);
    }

    #[tokio::test]
    async fn a_read_past_the_end_of_the_leg_fails_and_names_the_reason() {
        let (dir, _leg) = scratch(8192);
        // Open a second handle on a file that is shorter than the operation.
        let short = Arc::new(Leg::open(&dir.path().join("leg.img"), 4096).expect("open"));
        let (ring, mut done) = DiskRing::start(short, Box::new(())).expect("ring");
        ring.submit(op(
            7,
            DiskKind::Read {
                offset: 4096,
                len: 8192,
            },
        ))
        .expect("submit");
        let completion = next(&mut done).await;
        assert_eq!(completion.id, 7);
        let error = completion.result.expect_err("past the end");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frontend_reads_go_through_the_ring_and_fail_once_the_engine_closed_it() {
        let (_dir, leg) = scratch(1 << 20);
        let (ring, mut done) = DiskRing::start(leg.clone(), Box::new(())).expect("ring");
        let data = vec![9u8; 8192];
        ring.submit(op(
            1,
            DiskKind::Write {
                offset: 65536,
                data,
            },
        ))
        .expect("submit");
        assert_eq!(next(&mut done).await.id, 1);
        let reader = ring.reader();
        let read = tokio::task::spawn_blocking({
            let reader = reader.clone();
            move || reader.read(65536 + 4096, 8192)
        });
        let bytes = read.await.expect("join").expect("read ok");
        assert_eq!(&bytes[..4096], &[9u8; 4096][..]);
        assert_eq!(&bytes[4096..], &[0u8; 4096][..]);
        drop(ring);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let reader = reader.clone();
            let result = tokio::task::spawn_blocking(move || reader.read(0, 4096))
                .await
                .expect("join");
            match result {
                Err(error) => {
                    assert!(error.to_string().contains("stopped"), "{error}");
                    break;
                }
                // The thread may serve a read queued right before it saw the close.
                Ok(_) => assert!(
                    std::time::Instant::now() < deadline,
                    "the ring never closed"
                ),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn dropping_the_handle_finishes_every_operation_before_releasing_what_it_holds() {
        let (_dir, leg) = scratch(4 << 20);
        let released = Arc::new(AtomicBool::new(false));
        let hold = Box::new(SetOnDrop(released.clone()));
        let (ring, _done) = DiskRing::start(leg.clone(), hold).expect("ring");
        for id in 0..256u64 {
            let data = vec![(id % 251) as u8 + 1; 16384];
            ring.submit(op(
                id,
                DiskKind::Write {
                    offset: id * 16384,
                    data,
                },
            ))
            .expect("submit");
        }
        drop(ring);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !released.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the ring never let go"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for id in 0..256u64 {
            let expected = vec![(id % 251) as u8 + 1; 16384];
            assert_eq!(
                leg.read(id * 16384, 16384).expect("pread"),
                expected,
                "op {id}"
            );
        }
    }
}
