//! The Raft log's own writer thread.
//!
//! Why: a write + fdatasync of the log can take a second or more on a busy disk (an ext4
//! journal commit waits for every other file's ordered data). Done on the event loop, that
//! second has no heartbeats and no pings: followers start an election and the node's lease
//! lapses, so a healthy leader self-fences its groups because its disk was slow. Here the loop
//! hands each `Persist` to this thread and goes on; the core keeps the messages that depend on
//! it (votes, append acks) until the completion arrives, which is exactly how raft-rs's
//! asynchronous ready works and what the simulator checks.
//!
//! Jobs run strictly in order (appends and compactions touch the same files). The queue is
//! bounded: a loop that got `MAX_QUEUED` jobs ahead of the disk waits for it.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, HardState, Snapshot};
use tokio::sync::mpsc;

use crate::raftlog::{DurableLog, LogError};

/// Jobs the loop may queue ahead of the disk before it waits.
const MAX_QUEUED: usize = 1024;
/// A write slower than this is logged: the operator should know the disk holds the node back.
const SLOW_WRITE: Duration = Duration::from_millis(500);

/// One job for the writer, in the order the core asked for them.
enum Job {
    Append {
        number: u64,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
    },
    Compact {
        snapshot: Snapshot,
    },
}

/// What the writer reports back to the event loop.
#[derive(Debug)]
pub enum WriteDone {
    /// `Persist { number }` is durable.
    Persisted { number: u64 },
    /// The log could not be written; the daemon must stop (its promises are at stake).
    Failed { what: &'static str, error: LogError },
}

/// The handle the event loop keeps.
pub struct LogWriter {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// The writer stopped (after a failure it reported); nothing more can be persisted.
#[derive(Debug, thiserror::Error)]
#[error("the Raft log writer has stopped after an earlier failure")]
pub struct WriterStopped;

impl LogWriter {
    /// Moves `log` onto its own thread. Completions arrive on the returned receiver.
    pub fn start(log: DurableLog) -> std::io::Result<(LogWriter, mpsc::Receiver<WriteDone>)> {
        let (jobs, queue) = sync_channel::<Job>(MAX_QUEUED);
        let (done_tx, done_rx) = mpsc::channel(MAX_QUEUED);
        let thread = std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || write_jobs(log, queue, done_tx))?;
        let writer = LogWriter {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        Ok((writer, done_rx))
    }

    /// Queues an append; `Persisted { number }` follows once it is durable.
    pub fn append(
        &self,
        number: u64,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
    ) -> Result<(), WriterStopped> {
        self.queue(Job::Append {
            number,
            hard_state,
            entries,
            snapshot,
        })
    }

    /// Queues a compaction after every append queued so far.
    pub fn compact(&self, snapshot: Snapshot) -> Result<(), WriterStopped> {
        self.queue(Job::Compact { snapshot })
    }

    fn queue(&self, job: Job) -> Result<(), WriterStopped> {
        let jobs = self.jobs.as_ref().ok_or(WriterStopped)?;
        // A full queue means the disk is far behind: waiting for it is the back-pressure.
        let queued = tokio::task::block_in_place(|| jobs.send(job).is_ok());
        queued.then_some(()).ok_or(WriterStopped)
    }

    /// Lets the queued jobs finish and joins the thread (a clean stop leaves nothing unwritten).
    pub fn finish(mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::block_in_place(|| thread.join());
        }
    }
}

fn write_jobs(
    mut log: DurableLog,
    queue: std::sync::mpsc::Receiver<Job>,
    done: mpsc::Sender<WriteDone>,
) {
    while let Ok(job) = queue.recv() {
        let started = Instant::now();
        let (what, result, number) = match job {
            Job::Append {
                number,
                hard_state,
                entries,
                snapshot,
            } => {
                let result = log.append(hard_state.as_ref(), &entries, snapshot.as_ref());
                ("persist", result, Some(number))
            }
            Job::Compact { snapshot } => ("compact", log.compact(&snapshot), None),
        };
        let took = started.elapsed();
        if took > SLOW_WRITE {
            tracing::warn!(
                "the Raft log {what} took {} ms: the disk under the state directory is slow",
                took.as_millis()
            );
        }
        let report = match (result, number) {
            (Err(error), _) => WriteDone::Failed { what, error },
            (Ok(()), Some(number)) => WriteDone::Persisted { number },
            (Ok(()), None) => continue,
        };
        let failed = matches!(report, WriteDone::Failed { .. });
        if done.blocking_send(report).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::ClusterId;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 8].into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_complete_in_order_and_survive_a_reopen() {
        let dir = tempdir();
        let cluster = ClusterId([7; 16]);
        let log = DurableLog::create(&dir, cluster).expect("create log");
        let (writer, mut done) = LogWriter::start(log).expect("start writer");
        for number in 1..=5u64 {
            writer
                .append(number, None, vec![entry(number, 1)], None)
                .expect("queue");
        }
        for expected in 1..=5u64 {
            match done.recv().await {
                Some(WriteDone::Persisted { number }) => assert_eq!(number, expected),
                other => panic!("expected Persisted({expected}), got {other:?}"),
            }
        }
        writer.finish();
        let (_, recovered) = DurableLog::open(&dir, cluster).expect("reopen");
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4, 5]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_reported_and_stops_the_writer() {
        let dir = tempdir();
        let cluster = ClusterId([8; 16]);
        let log = DurableLog::create(&dir, cluster).expect("create log");
        let (writer, mut done) = LogWriter::start(log).expect("start writer");
        writer
            .append(1, None, vec![entry(1, 1), entry(2, 1)], None)
            .expect("queue");
        assert!(matches!(
            done.recv().await,
            Some(WriteDone::Persisted { number: 1 })
        ));
        // Index 5 leaves a gap after 2: the log refuses it.
        writer
            .append(2, None, vec![entry(5, 1)], None)
            .expect("queue");
        match done.recv().await {
            Some(WriteDone::Failed { what, error }) => {
                assert_eq!(what, "persist");
                assert!(error.to_string().contains("gap after entry 2"), "{error}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(
            done.recv().await.is_none(),
            "the writer must stop after a failure"
        );
        writer.finish();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-log-writer-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("make temp dir");
        dir.join("raft")
    }
}
