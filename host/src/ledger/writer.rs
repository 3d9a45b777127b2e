//! The ledger's writer thread. SQLite work never runs on the async runtime: callers queue
//! jobs on a channel; the thread runs whatever is queued in one transaction (a savepoint
//! per job, so one failing job does not undo the others), commits, and only then answers
//! each caller. With `synchronous=FULL` that answer means "on disk"; batching lets many
//! phones finishing at once share one fsync.

use std::future::Future;
use std::sync::mpsc;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::LedgerError;

/// Jobs run in one transaction at most; bounds the latency of the first job of a batch.
const MAX_BATCH: usize = 256;

pub enum Message {
    Job(Box<dyn Job>),
    /// Stop after the current batch; answered once the database and lock are released.
    Close(oneshot::Sender<()>),
}

pub trait Job: Send {
    /// Runs the work inside the batch's transaction.
    fn run(self: Box<Self>, conn: &Connection) -> Ran;
    /// The batch could not start: answer without running.
    fn abandon(self: Box<Self>, error: LedgerError);
}

/// A job that has run: whether to keep its writes, and how to answer once the batch's
/// commit is known.
pub struct Ran {
    ok: bool,
    answer: Box<dyn FnOnce(Result<(), LedgerError>) + Send>,
}

struct Call<T, F> {
    work: F,
    reply: oneshot::Sender<Result<T, LedgerError>>,
}

/// Answers a caller; a caller that stopped waiting (fire and forget) still hears of
/// failures through the log.
fn answer<T>(reply: oneshot::Sender<Result<T, LedgerError>>, result: Result<T, LedgerError>) {
    if let Err(Err(e)) = reply.send(result) {
        tracing::error!("ledger write failed: {e}");
    }
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Ran {
        let Call { work, reply } = *self;
        let result = work(conn);
        Ran {
            ok: result.is_ok(),
            answer: Box::new(move |committed| answer(reply, committed.and(result))),
        }
    }

    fn abandon(self: Box<Self>, error: LedgerError) {
        answer(self.reply, Err(error));
    }
}

/// Queues `work` now (so calls commit in the order they are made, and dropping the
/// returned future does not cancel the write) and resolves once it is committed.
pub fn call<T, F>(
    queue: &mpsc::Sender<Message>,
    work: F,
) -> impl Future<Output = Result<T, LedgerError>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
{
    let (reply, answered) = oneshot::channel();
    let queued = queue
        .send(Message::Job(Box::new(Call { work, reply })))
        .map_err(|_| LedgerError::Closed);
    async move {
        queued?;
        answered.await.map_err(|_| LedgerError::Closed)?
    }
}

/// The thread's body: runs until every sender is gone or `Close` arrives. `keep_alive`
/// (the writer lock) is released only after the connection is closed.
pub fn run<K>(mut conn: Connection, keep_alive: K, queue: mpsc::Receiver<Message>) {
    let mut closing = None;
    while closing.is_none() {
        let Ok(first) = queue.recv() else { break };
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job) => jobs.push(job),
                Message::Close(ack) => closing = Some(ack),
            }
            if closing.is_none() && jobs.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        run_batch(&mut conn, jobs);
    }
    // Jobs still queued behind a Close are dropped: their callers get `Closed`.
    drop(queue);
    if let Err((_, e)) = conn.close() {
        tracing::warn!("closing the ledger: {e}");
    }
    drop(keep_alive);
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

fn run_batch(conn: &mut Connection, jobs: Vec<Box<dyn Job>>) {
    if jobs.is_empty() {
        return;
    }
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let reason = e.to_string();
            for job in jobs {
                job.abandon(LedgerError::Commit {
                    reason: reason.clone(),
                });
            }
            return;
        }
    };
    let mut ran = Vec::with_capacity(jobs.len());
    for job in jobs {
        let savepoint = match tx.savepoint() {
            Ok(savepoint) => savepoint,
            Err(source) => {
                job.abandon(LedgerError::Sqlite {
                    context: "savepoint",
                    source,
                });
                continue;
            }
        };
        let done = job.run(&savepoint);
        // Dropping a savepoint rolls it back: a failed job leaves nothing behind.
        if done.ok {
            if let Err(e) = savepoint.commit() {
                (done.answer)(Err(LedgerError::Commit {
                    reason: e.to_string(),
                }));
                continue;
            }
        }
        ran.push(done);
    }
    let committed = tx.commit().map_err(|e| e.to_string());
    if let Err(reason) = &committed {
        tracing::error!("ledger commit failed: {reason}");
    }
    for done in ran {
        (done.answer)(
            committed
                .clone()
                .map_err(|reason| LedgerError::Commit { reason }),
        );
    }
}
