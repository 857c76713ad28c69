//! Giving memory back to the operating system after a burst.
//!
//! glibc's malloc keeps memory that was freed in its arenas for reuse; it returns only what lies at
//! the top of the heap. After a burst (128 requests of 10,000 devices each) Herald's live data is
//! back to idle size within seconds, but the process kept ~120 MB against 11 MB idle 30 s later. A
//! call to `malloc_trim(0)` releases those free pages (21 MB: 1.9× idle, measured; see
//! docs/performance.md). So once the gateway is quiet after activity, [`spawn_trimmer`] asks glibc
//! to trim. Under steady load nothing is trimmed (there is never a quiet moment, and nothing to
//! give back that would not be taken again at once); when idle with no traffic nothing is trimmed
//! either (nothing changed). A C allocator that purges by itself (mimalloc, jemalloc) would mean a
//! C build, which Herald avoids, and measured worse by default.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// How often the trimmer looks for a quiet moment.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Starts the trimmer: every few seconds, if notify requests were served since the last look and
/// none is in flight now, trims the heap on a blocking thread.
pub fn spawn_trimmer(metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(CHECK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut served_at_last_look = metrics.notify_requests_served();
        loop {
            ticker.tick().await;
            let served = metrics.notify_requests_served();
            if served != served_at_last_look && metrics.in_flight.get() == 0 {
                served_at_last_look = served;
                let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
                tracing::debug!(released, "returned free heap memory to the system");
            }
        }
    })
}

/// Releases free memory at the top of every malloc arena; true when some was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` only walks glibc's own arenas under their locks; it takes no pointer
    // and may be called from any thread at any time.
    #[allow(unsafe_code)]
    let released = unsafe { libc::malloc_trim(0) };
    released == 1
}

/// Other allocators and platforms: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}
