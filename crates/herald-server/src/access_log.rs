//! The access log: one INFO line per notify request (`log.access`, on by default), with the
//! answer's status, how many devices the request had and what happened to them, the time taken
//! and the event id. Never a pushkey, never content: only counts and the id the homeserver sent.
//!
//! Outcomes are counted where the metrics count them ([`crate::metrics::AppMetrics::count`]),
//! into a tally that lives as a task-local of the request's dispatch task: every device of one
//! request is delivered inside that task, so the tally is exactly that request's, however many
//! requests run at once, and dispatch itself needs no change.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::OUTCOMES;

/// The log target, so that a level directive can address the access log on its own
/// (`herald_server::access=off`).
pub const TARGET: &str = "herald_server::access";

/// Event ids are at most 255 bytes in Matrix; a longer one is cut, so that a hostile request
/// cannot make one log line as large as the body limit.
const MAX_EVENT_ID: usize = 255;

tokio::task_local! {
    static TALLY: Arc<Tally>;
}

/// Per-request device outcome counts, indexed like [`OUTCOMES`].
#[derive(Debug, Default)]
pub struct Tally {
    counts: [AtomicU32; OUTCOMES.len()],
}

impl Tally {
    /// How many devices ended with `outcome` (a name from [`OUTCOMES`]).
    pub fn get(&self, outcome: &str) -> u32 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Devices that failed, whatever the class (every `failed_*` outcome).
    pub fn failed(&self) -> u32 {
        OUTCOMES
            .iter()
            .zip(&self.counts)
            .filter(|(o, _)| o.starts_with("failed_"))
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Counts one device outcome (index into [`OUTCOMES`]) into the current request's tally, if the
/// caller runs inside [`scope`]; elsewhere (tests calling the dispatcher directly) nothing.
pub(crate) fn count(index: usize) {
    let _ = TALLY.try_with(|tally| {
        if let Some(c) = tally.counts.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Runs `future` (a request's dispatch) with `tally` collecting its device outcomes.
pub async fn scope<F: std::future::Future>(tally: Arc<Tally>, future: F) -> F::Output {
    TALLY.scope(tally, future).await
}

/// What the notify handler knows about a request, handed to the request layer (as a response
/// extension) that writes the access line once the answer's status and duration are known.
#[derive(Debug, Clone)]
pub struct NotifySummary {
    /// `notification.event_id`, or empty.
    pub event_id: String,
    /// Devices in the request (0 when it could not be parsed).
    pub devices: usize,
    /// Their outcomes; `None` when the request never reached dispatch.
    pub tally: Option<Arc<Tally>>,
}

impl NotifySummary {
    /// A request that was parsed: its event id (cut to 255 bytes) and device count.
    pub fn new(event_id: Option<&str>, devices: usize, tally: Option<Arc<Tally>>) -> Self {
        let mut event_id = event_id.unwrap_or("").to_owned();
        if event_id.len() > MAX_EVENT_ID {
            let mut cut = MAX_EVENT_ID;
            while !event_id.is_char_boundary(cut) {
                cut -= 1;
            }
            event_id.truncate(cut);
        }
        NotifySummary { event_id, devices, tally }
    }
}

/// Writes the access line of one answered notify request.
pub fn log(status: u16, elapsed: Duration, summary: Option<&NotifySummary>) {
    let (event_id, devices) = summary.map_or(("", 0), |s| (s.event_id.as_str(), s.devices));
    let tally = summary.and_then(|s| s.tally.as_deref());
    let count = |outcome: &str| tally.map_or(0, |t| t.get(outcome));
    // Milliseconds with microsecond precision: most answers take well under a millisecond.
    let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        target: TARGET,
        status,
        devices,
        delivered = count("delivered"),
        skipped = count("skipped"),
        deduplicated = count("deduplicated"),
        // Dead tokens, whether an upstream said so now or the dead-token cache remembered it.
        rejected = count("rejected") + count("rejected_cached"),
        failed = tally.map_or(0, Tally::failed),
        duration_ms,
        event_id,
        "notify answered"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_are_counted_only_inside_the_scope() {
        let index = |name: &str| OUTCOMES.iter().position(|o| *o == name).unwrap_or(usize::MAX);
        count(index("delivered"));
        let tally = Arc::new(Tally::default());
        scope(tally.clone(), async {
            count(index("delivered"));
            count(index("delivered"));
            count(index("failed_transient"));
            count(index("failed_deadline"));
            count(usize::MAX);
        })
        .await;
        assert_eq!(tally.get("delivered"), 2);
        assert_eq!(tally.get("rejected"), 0);
        assert_eq!(tally.failed(), 2);
    }

    #[test]
    fn long_event_ids_are_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let summary = NotifySummary::new(Some(&long), 1, None);
        assert!(summary.event_id.len() <= MAX_EVENT_ID);
        assert!(long.starts_with(&summary.event_id));
        assert_eq!(NotifySummary::new(None, 0, None).event_id, "");
    }
}
