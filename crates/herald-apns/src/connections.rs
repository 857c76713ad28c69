//! HTTP/2 connections to APNs: one multiplexes every stream until its budget is used, and only
//! then is another opened.
//!
//! Each connection is a "lane": one `herald_upstream::UpstreamClient` (HTTP/2 only, PINGs every
//! `ping_interval`, also while idle), whose pool holds exactly one HTTP/2 connection to the
//! endpoint (hyper shares an HTTP/2 connection between all requests and opens one at a time).
//! A request takes a stream of the first lane with one free; when every lane's
//! `max_concurrent_streams` are taken, a new lane is opened, up to `max_connections_per_host`;
//! past that, requests queue on the least loaded lane. The first lane keeps its connection
//! through long idle periods (Apple asks for long-lived connections); extra lanes close theirs
//! after [`EXTRA_LANE_IDLE`] without traffic.
//!
//! hyper does not tell its pooled clients the server's `MAX_CONCURRENT_STREAMS`, so the budget is
//! Herald's setting; HTTP/2 itself never lets a connection exceed the server's limit (requests
//! beyond it wait on the connection until a stream closes).
//!
//! A connection that goes away (GOAWAY, a lost socket, an unanswered PING) is replaced by the
//! client on the next request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use herald_upstream::{UpstreamClient, UpstreamConfig};

/// How long the first connection may stay idle before hyper closes it.
const FIRST_LANE_IDLE: Duration = Duration::from_secs(24 * 3600);
/// How long an extra connection may stay idle before it is closed.
const EXTRA_LANE_IDLE: Duration = Duration::from_secs(5 * 60);
/// A PING not answered within this closes the connection.
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// APNs' error bodies are a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What every lane is built from.
#[derive(Clone)]
pub(crate) struct LaneSettings {
    /// The client's settings; `max_connections_per_host` is the cap on lanes.
    pub(crate) upstream: UpstreamConfig,
    /// Certificate auth: the certificate chain and key, PEM.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    /// HTTP/2 PING interval.
    pub(crate) ping_interval: Duration,
    /// Streams per connection.
    pub(crate) streams: usize,
}

impl std::fmt::Debug for LaneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSettings")
            .field("streams", &self.streams)
            .field("ping_interval", &self.ping_interval)
            .finish_non_exhaustive()
    }
}

impl LaneSettings {
    fn build(&self, first: bool) -> Result<UpstreamClient, herald_upstream::BuildError> {
        // The lane's own cap on requests is its stream budget (the lanes share out the app's).
        let upstream = self.upstream.clone().with_max_connections_per_host(self.streams);
        let mut builder = UpstreamClient::builder(&upstream)
            .http2_only()
            .http2_keep_alive(self.ping_interval, PING_TIMEOUT)
            .pool_idle_timeout(if first { FIRST_LANE_IDLE } else { EXTRA_LANE_IDLE })
            .max_answer_bytes(MAX_ANSWER_BYTES);
        if let Some((chain, key)) = &self.identity {
            builder = builder.client_identity(chain, key);
        }
        builder.build()
    }
}

/// One connection's client and the streams taken on it.
#[derive(Debug)]
struct Lane {
    client: UpstreamClient,
    in_flight: AtomicUsize,
}

/// The app's connections to APNs.
#[derive(Debug)]
pub(crate) struct Connections {
    settings: LaneSettings,
    lanes: RwLock<Vec<Arc<Lane>>>,
    max_lanes: usize,
    request_timeout: Duration,
}

/// A stream taken on a lane, given back when dropped.
#[derive(Debug)]
pub(crate) struct Stream {
    lane: Arc<Lane>,
}

impl Stream {
    /// The lane's client.
    pub(crate) fn client(&self) -> &UpstreamClient {
        &self.lane.client
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.lane.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// Builds the first lane now, so that every setting is checked; opens no connection.
    pub(crate) fn new(settings: LaneSettings) -> Result<Self, herald_upstream::BuildError> {
        let first = settings.build(true)?;
        let request_timeout = first.request_timeout();
        Ok(Connections {
            max_lanes: settings.upstream.max_connections_per_host().max(1),
            lanes: RwLock::new(vec![Arc::new(Lane {
                client: first,
                in_flight: AtomicUsize::new(0),
            })]),
            settings,
            request_timeout,
        })
    }

    /// The configured `request_timeout`.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Lanes opened so far.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Takes a stream: on the first lane with one free, else on a new lane, else (every lane
    /// full and no more allowed) on the least loaded one.
    pub(crate) fn stream(&self) -> Stream {
        if let Some(stream) =
            self.free_stream(&self.lanes.read().unwrap_or_else(PoisonError::into_inner))
        {
            return stream;
        }
        let mut lanes = self.lanes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(stream) = self.free_stream(&lanes) {
            return stream;
        }
        if lanes.len() < self.max_lanes {
            match self.settings.build(false) {
                Ok(client) => {
                    let lane = Arc::new(Lane { client, in_flight: AtomicUsize::new(1) });
                    lanes.push(Arc::clone(&lane));
                    tracing::debug!(
                        connections = lanes.len(),
                        "every APNs stream in use: another connection"
                    );
                    return Stream { lane };
                }
                // The settings built the first lane; only a vanished file (`ca_file`) fails
                // here. The lanes there are carry on.
                Err(e) => tracing::warn!(error = %e, "cannot open another APNs connection"),
            }
        }
        let lane = lanes
            .iter()
            .min_by_key(|lane| lane.in_flight.load(Ordering::Acquire))
            .map(Arc::clone)
            .unwrap_or_else(|| Arc::clone(&lanes[0]));
        lane.in_flight.fetch_add(1, Ordering::AcqRel);
        Stream { lane }
    }

    fn free_stream(&self, lanes: &[Arc<Lane>]) -> Option<Stream> {
        let budget = self.settings.streams;
        lanes.iter().find_map(|lane| {
            lane.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < budget).then_some(n + 1)
                })
                .ok()
                .map(|_| Stream { lane: Arc::clone(lane) })
        })
    }

    /// Closes every connection (HTTP/2 GOAWAY as hyper drops them); a later request opens a new
    /// one.
    pub(crate) fn close(&self) {
        let mut lanes = self.lanes.write().unwrap_or_else(PoisonError::into_inner);
        lanes.truncate(1);
        if let Ok(client) = self.settings.build(true) {
            lanes[0] = Arc::new(Lane { client, in_flight: AtomicUsize::new(0) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(streams: usize, max_lanes: usize) -> Connections {
        Connections::new(LaneSettings {
            upstream: UpstreamConfig::default().with_max_connections_per_host(max_lanes),
            identity: None,
            ping_interval: Duration::from_secs(60),
            streams,
        })
        .expect("builds")
    }

    #[test]
    fn a_lane_fills_before_the_next_opens() {
        let c = connections(3, 2);
        let first: Vec<Stream> = (0..3).map(|_| c.stream()).collect();
        assert_eq!(c.lanes(), 1);
        let fourth = c.stream();
        assert_eq!(c.lanes(), 2);
        assert!(!Arc::ptr_eq(&fourth.lane, &first[0].lane));
        // A freed stream on the first lane is used before the second lane's.
        drop(first);
        let again = c.stream();
        assert_eq!(again.lane.in_flight.load(Ordering::Acquire), 1);
        assert!(!Arc::ptr_eq(&again.lane, &fourth.lane));
    }

    #[test]
    fn past_the_cap_requests_queue_on_the_least_loaded_lane() {
        let c = connections(1, 2);
        let held: Vec<Stream> = (0..5).map(|_| c.stream()).collect();
        assert_eq!(c.lanes(), 2);
        let loads: Vec<usize> = {
            let lanes = c.lanes.read().expect("lanes");
            lanes.iter().map(|l| l.in_flight.load(Ordering::Acquire)).collect()
        };
        assert_eq!(loads.iter().sum::<usize>(), 5);
        assert!(loads.iter().max().expect("max") - loads.iter().min().expect("min") <= 1);
        drop(held);
        c.close();
        assert_eq!(c.lanes(), 1);
    }
}
