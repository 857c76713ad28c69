//! Group commit for the PostgreSQL store: requests of one kind queue on a channel, and a few
//! worker tasks each take whatever has queued (up to a maximum) and answer it with one statement.
//!
//! While one worker's statement runs, the next batch queues up for another worker, so the number
//! of statements per second stays small however many requests arrive, and a slow statement does
//! not stall every request of its kind.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::store::{supervise, Health, StoreError};

type Reply<Resp> = oneshot::Sender<Result<Resp, StoreError>>;

/// The queue the workers share.
type Queue<Req, Resp> = Arc<Mutex<mpsc::Receiver<(Req, Reply<Resp>)>>>;

/// The sending side of one kind of batched request.
pub(super) struct Batcher<Req, Resp> {
    tx: mpsc::Sender<(Req, Reply<Resp>)>,
    /// Set on shutdown: the worker waiting for requests closes the channel, the queued requests
    /// are still answered, and then every worker finds it empty and stops.
    closing: watch::Sender<bool>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts `workers` supervised tasks answering batches of up to `max_batch` requests with
    /// `run`, which returns one answer per request, in order.
    pub(super) fn spawn<F, Fut>(
        name: &'static str,
        workers: usize,
        max_batch: usize,
        run: F,
        health: &watch::Sender<Health>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>, StoreError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(8).max(64));
        let (closing, _) = watch::channel(false);
        let rx = Arc::new(Mutex::new(rx));
        let run = Arc::new(run);
        for _ in 0..workers {
            let task = worker(rx.clone(), closing.subscribe(), run.clone(), max_batch);
            tasks.push(supervise(name, task, health.clone()).0);
        }
        Batcher { tx, closing }
    }

    /// Queues `request` and waits for its answer.
    pub(super) async fn call(&self, request: Req) -> Result<Resp, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        answer.await.map_err(|_| StoreError::unavailable("a store task stopped"))?
    }

    /// Tells the workers to answer what has queued and stop.
    pub(super) fn shutdown(&self) {
        self.closing.send_replace(true);
    }
}

async fn worker<Req, Resp, F, Fut>(
    rx: Queue<Req, Resp>,
    mut closing: watch::Receiver<bool>,
    run: Arc<F>,
    max_batch: usize,
) where
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<Resp>, StoreError>>,
{
    let mut messages = Vec::with_capacity(max_batch);
    loop {
        // Holding the receiver while waiting is the point: the other workers are busy running
        // their batches or waiting for this one to take its own.
        let received = {
            let mut rx = rx.lock().await;
            tokio::select! {
                n = rx.recv_many(&mut messages, max_batch) => n,
                _ = async { closing.wait_for(|c| *c).await.map(drop) } => {
                    rx.close();
                    rx.recv_many(&mut messages, max_batch).await
                }
            }
        };
        if received == 0 {
            return;
        }
        let (requests, replies): (Vec<Req>, Vec<Reply<Resp>>) = messages.drain(..).unzip();
        match run(requests).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
