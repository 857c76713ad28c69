//! Client connections and the file descriptors they use.
//!
//! Every open connection costs a file descriptor and some memory, so their number is capped
//! (`server.max_connections`, by default derived from the process's file limit, which Herald raises
//! to its hard limit at start). At the cap a new client is not left waiting in the accept queue:
//! the connection that has been idle longest (a keep-alive connection with no request in progress)
//! is closed to make room, and only when every connection is busy is the new one closed at once, so
//! the homeserver sees a quick failure and retries instead of hanging.
//!
//! Accept errors (EMFILE and the like) back off from 10 ms to 1 s, so the loop neither spins nor
//! stops accepting for long, and are logged at most once per second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::ConnectionMetrics;

/// Descriptors kept out of the connection budget for everything else: upstream connections, the
/// store's files, the runtime's own.
pub const FD_HEADROOM: u64 = 256;
/// The derived default never goes below this...
pub const MIN_DEFAULT_CONNECTIONS: usize = 32;
/// ...nor above this: each connection also costs memory (buffers, a task), and a push gateway
/// serves a few homeservers' connection pools, not the public.
pub const MAX_DEFAULT_CONNECTIONS: usize = 16_384;

/// The file-descriptor limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before raising it.
    pub before: u64,
    /// The soft limit now (the one that counts).
    pub soft: u64,
    /// The hard limit (the most an unprivileged process may raise the soft one to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's default soft limit, 1024, is far
/// below what a server needs; the hard limit is the administrator's real intent) and logs the
/// result at INFO. `None` when the platform has no such limit or it cannot be read.
pub fn raise_nofile_limit() -> Option<FileLimit> {
    let (before, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit (RLIMIT_NOFILE)");
            return None;
        }
    };
    let soft = match rlimit::increase_nofile_limit(hard) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, soft = before, hard, "cannot raise the open-files limit");
            before
        }
    };
    tracing::info!(soft, hard, before, "open-files limit (RLIMIT_NOFILE)");
    Some(FileLimit { before, soft, hard })
}

/// The default `server.max_connections` for a file limit: the smaller of (limit − 256) and ¾ of the
/// limit, kept within [32, 16384]. 1024 → 768, 4096 → 3072, 65536 → 16384.
pub fn default_max_connections(file_limit: u64) -> usize {
    let quarter_kept = file_limit - file_limit / 4;
    let derived = file_limit.saturating_sub(FD_HEADROOM).min(quarter_kept);
    usize::try_from(derived)
        .unwrap_or(usize::MAX)
        .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS)
}

/// The open connections, shared by the accept loop and the connection tasks.
pub struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    table: Mutex<Table>,
    next_id: AtomicU64,
    /// Signalled when the last connection closes.
    empty: Notify,
    epoch: Instant,
    metrics: ConnectionMetrics,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Arc<ConnState>>,
    /// How many of `conns` were asked to close and have not yet.
    closing: usize,
}

/// One connection's state, as the accept loop sees it.
struct ConnState {
    /// Requests being answered right now.
    active: AtomicU32,
    /// Requests started on this connection so far.
    started: AtomicU64,
    /// When the last request finished (or the connection opened), in µs since `epoch`.
    idle_since_us: AtomicU64,
    /// Chosen to make room; not chosen twice.
    closing: AtomicBool,
    close: Notify,
}

/// What the accept loop should do with a new connection.
pub enum Admission {
    /// Serve it.
    Admitted(Connection),
    /// At the cap with no idle connection to close: close it now.
    Refused,
}

/// An admitted connection; dropping it frees its slot.
pub struct Connection {
    shared: Arc<Shared>,
    id: u64,
    state: Arc<ConnState>,
}

/// How a connection asked to make room should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// It never started a request: drop it, there is nothing to finish.
    Now,
    /// Let hyper close it (at once when idle, after the response when a request just started).
    Graceful,
}

impl Connections {
    /// A table for at most `max` connections.
    pub fn new(max: usize, metrics: ConnectionMetrics) -> Self {
        metrics.max.set(i64::try_from(max).unwrap_or(i64::MAX));
        Connections {
            shared: Arc::new(Shared {
                max: max.max(1),
                table: Mutex::new(Table::default()),
                next_id: AtomicU64::new(0),
                empty: Notify::new(),
                epoch: Instant::now(),
                metrics,
            }),
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a new connection, closing the longest-idle one when at the cap.
    pub fn admit(&self) -> Admission {
        let mut table = self.shared.lock();
        // Connections already asked to close are on their way out (idle ones within a poll):
        // they do not block a newcomer, so the cap can be passed by those few for a moment.
        if table.conns.len() - table.closing >= self.shared.max {
            if !self.shared.close_longest_idle(&mut table) {
                drop(table);
                self.shared.metrics.refused.inc();
                return Admission::Refused;
            }
            self.shared.metrics.idle_closed.inc();
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            active: AtomicU32::new(0),
            started: AtomicU64::new(0),
            idle_since_us: AtomicU64::new(self.shared.now_us()),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        table.conns.insert(id, state.clone());
        self.shared.metrics.open.set(i64::try_from(table.conns.len()).unwrap_or(i64::MAX));
        Admission::Admitted(Connection { shared: self.shared.clone(), id, state })
    }

    /// Closes the longest-idle connection, if any (out of file descriptors: make room for the
    /// next accept). True if one was asked to close.
    pub fn close_one_idle(&self) -> bool {
        let mut table = self.shared.lock();
        let closed = self.shared.close_longest_idle(&mut table);
        if closed {
            self.shared.metrics.idle_closed.inc();
        }
        closed
    }

    /// Waits until every connection has closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        herald_core::sync::lock(&self.table)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Picks the connection idle longest (no request in progress, not already closing) and asks
    /// it to close. O(connections), but only at the cap.
    fn close_longest_idle(&self, table: &mut Table) -> bool {
        let victim = table
            .conns
            .values()
            .filter(|c| c.active.load(Ordering::Acquire) == 0 && !c.closing.load(Ordering::Relaxed))
            .min_by_key(|c| c.idle_since_us.load(Ordering::Relaxed));
        match victim {
            Some(c) => {
                c.closing.store(true, Ordering::Relaxed);
                // A stored permit: the connection's task sees it even if it is not waiting yet.
                c.close.notify_one();
                table.closing += 1;
                true
            }
            None => false,
        }
    }
}

impl Connection {
    /// Wraps the connection's service so the table knows when a request is in progress.
    pub fn track<S>(&self, service: S) -> Tracked<S> {
        Tracked { inner: service, state: self.state.clone(), shared: self.shared.clone() }
    }

    /// Resolves when the accept loop wants this connection closed to make room, with how.
    pub async fn close_requested(&self) -> Close {
        self.state.close.notified().await;
        // Read in the connection's own task while hyper is not being polled, so no request can
        // start in between: a connection that never started one has nothing to finish.
        if self.state.started.load(Ordering::Acquire) == 0
            && self.state.active.load(Ordering::Acquire) == 0
        {
            Close::Now
        } else {
            Close::Graceful
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut table = self.shared.lock();
        table.conns.remove(&self.id);
        if self.state.closing.load(Ordering::Relaxed) {
            table.closing -= 1;
        }
        let open = table.conns.len();
        drop(table);
        self.shared.metrics.open.set(i64::try_from(open).unwrap_or(i64::MAX));
        if open == 0 {
            self.shared.empty.notify_waiters();
        }
    }
}

/// A connection's service, counting its requests in progress.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
}

/// Marks a request in progress until dropped (the response is produced, or the request is
/// abandoned).
struct Active {
    state: Arc<ConnState>,
    shared: Arc<Shared>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.state.idle_since_us.store(self.shared.now_us(), Ordering::Relaxed);
        self.state.active.fetch_sub(1, Ordering::Release);
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.state.active.fetch_add(1, Ordering::AcqRel);
        self.state.started.fetch_add(1, Ordering::Release);
        let active = Active { state: self.state.clone(), shared: self.shared.clone() };
        TrackedFuture { inner: self.inner.call(request), _active: active }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future, marking its connection busy until it completes or is
    /// dropped. A struct rather than a boxed `async` block: one allocation less per request.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        _active: Active,
    }
}

impl<F: std::future::Future> std::future::Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

/// Rate-limits a log line that could otherwise repeat thousands of times a second.
pub struct WarnEvery {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnEvery {
    /// At most once per second.
    pub fn second() -> Self {
        WarnEvery { every: Duration::from_secs(1), last: None, suppressed: 0 }
    }

    /// True when the line may be logged now; otherwise counts it as suppressed.
    pub fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_none_or(|at| now.duration_since(at) >= self.every) {
            self.last = Some(now);
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Lines suppressed since the last logged one (reset by reading).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// Growing sleeps after accept errors, and a WARN at most once per second.
pub struct AcceptBackoff {
    next: Duration,
    warn: WarnEvery,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: Self::MIN, warn: WarnEvery::second() }
    }
}

impl AcceptBackoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// An accept succeeded: the next error starts from the shortest sleep again.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// An accept failed: logs (rate-limited) and returns how long to sleep.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        if self.warn.ready() {
            tracing::warn!(
                error = %error,
                since_last_warning = self.warn.take_suppressed(),
                retry_in_ms = self.next.as_millis() as u64,
                "accept failed"
            );
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

/// Whether an accept error means "out of file descriptors" (closing a connection helps).
pub fn is_out_of_files(error: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(error.raw_os_error(), Some(23 | 24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn default_cap_leaves_headroom() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(4096), 3072);
        assert_eq!(default_max_connections(20_000), 15_000);
        assert_eq!(default_max_connections(1 << 20), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(default_max_connections(64), MIN_DEFAULT_CONNECTIONS);
        assert_eq!(default_max_connections(u64::MAX), MAX_DEFAULT_CONNECTIONS);
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(24);
        assert!(is_out_of_files(&e));
        let waits: Vec<_> = (0..9).map(|_| b.failed(&e).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.failed(&e), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let metrics = Metrics::new();
        let conns = Connections::new(2, metrics.connections.clone());
        let Admission::Admitted(a) = conns.admit() else { panic!("room for a") };
        let Admission::Admitted(b) = conns.admit() else { panic!("room for b") };
        // `a` is busy with a request; `b` is idle: `b` is asked to close.
        let mut service = a.track(tower::service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, ()>(())
        }));
        let in_progress = tower::Service::call(&mut service, ());
        let Admission::Admitted(c) = conns.admit() else { panic!("b made room for c") };
        assert_eq!(b.close_requested().await, Close::Now);
        // Everything busy or closing: refused.
        let mut service_c = c.track(tower::service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, ()>(())
        }));
        let _c_busy = tower::Service::call(&mut service_c, ());
        assert!(matches!(conns.admit(), Admission::Refused));
        drop(b);
        assert!(matches!(conns.admit(), Admission::Refused), "a and c are busy");
        // `a`'s request ends: it is idle now, and having served a request it closes gracefully.
        drop(in_progress);
        let Admission::Admitted(_d) = conns.admit() else { panic!("a made room") };
        assert_eq!(a.close_requested().await, Close::Graceful);
        drop(a);
        drop(c);
        drop(_d);
        tokio::time::timeout(Duration::from_secs(1), conns.closed()).await.unwrap();
    }
}
