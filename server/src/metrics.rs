//! Operational metrics, served as Prometheus text on `GET /metrics`.
//!
//! Counters and gauges carry no room ids, names or content: only totals and reasons.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The label of a refusal: why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// A stable reason, such as `malformed_frame` or `rate_limited`.
    pub reason: &'static str,
}

/// Every metric of the process. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections: Gauge,
    rooms: Gauge,
    messages_in: Counter,
    messages_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    fanout_seconds: DelayHistogram,
    refusals: Family<Reason, Counter>,
    slow_client_closes: Counter,
    backend_errors: Counter,
    bus_messages: Counter,
    bus_envelopes: Counter,
    room_wakes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("balint");
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let messages_in = Counter::default();
        let messages_out = Counter::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let fanout_seconds = DelayHistogram::default();
        let refusals = Family::<Reason, Counter>::default();
        let slow_client_closes = Counter::default();
        let backend_errors = Counter::default();
        let bus_messages = Counter::default();
        let bus_envelopes = Counter::default();
        let room_wakes = Counter::default();
        registry.register("connections", "Open WebSocket connections", connections.clone());
        registry.register("rooms", "Rooms open on this node", rooms.clone());
        registry.register("messages_in", "WebSocket messages received", messages_in.clone());
        registry.register("messages_out", "WebSocket messages sent", messages_out.clone());
        registry.register("bytes_in", "WebSocket payload bytes received", bytes_in.clone());
        registry.register("bytes_out", "WebSocket payload bytes sent", bytes_out.clone());
        registry.register(
            "fanout_seconds",
            "Delay from a frame's publication in its room to its write on each recipient's socket",
            fanout_seconds.clone(),
        );
        registry.register("refusals", "Refused frames, commands and requests, by reason", refusals.clone());
        registry.register(
            "slow_client_closes",
            "Connections closed because they could not keep up",
            slow_client_closes.clone(),
        );
        registry.register(
            "backend_errors",
            "Failed calls to the backend (Redis, the board store)",
            backend_errors.clone(),
        );
        registry.register("bus_messages", "Messages published on the bus to other nodes", bus_messages.clone());
        registry.register(
            "bus_envelopes",
            "Updates, awareness and catch-up messages published on the bus (several per message when batched)",
            bus_envelopes.clone(),
        );
        registry.register(
            "room_wakes",
            "Rooms woken because one of their timers was due (a room with nothing due is never woken)",
            room_wakes.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                connections,
                rooms,
                messages_in,
                messages_out,
                bytes_in,
                bytes_out,
                fanout_seconds,
                refusals,
                slow_client_closes,
                backend_errors,
                bus_messages,
                bus_envelopes,
                room_wakes,
            }),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.inner.connections.inc_by(delta);
    }

    /// The number of open rooms.
    pub fn set_rooms(&self, rooms: usize) {
        self.inner.rooms.set(rooms as i64);
    }

    /// A message of `bytes` received.
    pub fn received(&self, bytes: usize) {
        self.inner.messages_in.inc();
        self.inner.bytes_in.inc_by(bytes as u64);
    }

    /// A message of `bytes` of the connection's own sent (a reply, a heartbeat, an error);
    /// room frames are counted with [`Metrics::sent_batch`].
    pub fn sent(&self, bytes: usize) {
        self.inner.messages_out.inc();
        self.inner.bytes_out.inc_by(bytes as u64);
    }

    /// A batch of `messages` room frames, `bytes` in all, was written to one connection; each
    /// frame's fan-out delay is counted with [`Metrics::fanned_out`]. The counters are shared
    /// by every connection of the node: a batch touches them once, not once a frame.
    pub fn sent_batch(&self, messages: u64, bytes: u64) {
        self.inner.messages_out.inc_by(messages);
        self.inner.bytes_out.inc_by(bytes);
    }

    /// A room frame reached a connection's socket `delay` after the room sent it.
    pub fn fanned_out(&self, delay: Duration) {
        self.inner.fanout_seconds.observe(delay);
    }

    /// Something was refused, for `reason`.
    pub fn refused(&self, reason: &'static str) {
        self.inner.refusals.get_or_create(&Reason { reason }).inc();
    }

    /// A connection was closed as too slow.
    pub fn slow_client_closed(&self) {
        self.inner.slow_client_closes.inc();
    }

    /// A bus message carrying `envelopes` was published.
    pub fn bus_published(&self, envelopes: usize) {
        self.inner.bus_messages.inc();
        self.inner.bus_envelopes.inc_by(envelopes as u64);
    }

    /// A room was woken for a due timer.
    pub fn room_woken(&self) {
        self.inner.room_wakes.inc();
    }

    /// A backend call failed.
    pub fn backend_error(&self) {
        self.inner.backend_errors.inc();
    }
}

/// Buckets of [`DelayHistogram`] with an upper bound: 50 µs, doubling up to about 1.6 s.
const DELAY_BUCKETS: usize = 16;

/// The first bucket's upper bound, in nanoseconds.
const FIRST_DELAY_BOUND_NANOS: u64 = 50_000;

/// A histogram of delays, as Prometheus's classic histogram with the buckets 50 µs × 2^i
/// (and +Inf).
///
/// It is observed once for every frame written to every connection, on every room thread at
/// once, so an observation is two relaxed atomic additions and no lock; the buckets are
/// summed when the metrics are read. (prometheus-client's `Histogram` takes a lock and works
/// in floating point on every observation.)
///
/// Cheap to clone: the clones share their counts.
#[derive(Clone, Debug, Default)]
struct DelayHistogram(Arc<DelayCounts>);

#[derive(Debug, Default)]
struct DelayCounts {
    /// Observations per bucket, not cumulated; the last is +Inf.
    buckets: [AtomicU64; DELAY_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl DelayHistogram {
    fn observe(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.0.buckets[delay_bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The bucket of `nanos`: the first whose upper bound (inclusive, as Prometheus's `le`) it
/// does not exceed.
fn delay_bucket(nanos: u64) -> usize {
    // Multiples of the first bound, rounded up: bucket i holds 2^(i-1) < q <= 2^i.
    let q = nanos.div_ceil(FIRST_DELAY_BOUND_NANOS);
    if q <= 1 {
        return 0;
    }
    ((u64::BITS - (q - 1).leading_zeros()) as usize).min(DELAY_BUCKETS)
}

impl EncodeMetric for DelayHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = if i < DELAY_BUCKETS { (FIRST_DELAY_BOUND_NANOS << i) as f64 / 1e9 } else { f64::INFINITY };
                (bound, count.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_lands_in_the_first_bucket_whose_bound_holds_it() {
        assert_eq!(delay_bucket(0), 0);
        assert_eq!(delay_bucket(50_000), 0, "a bound is inclusive");
        assert_eq!(delay_bucket(50_001), 1);
        assert_eq!(delay_bucket(100_000), 1);
        assert_eq!(delay_bucket(100_001), 2);
        assert_eq!(delay_bucket(50_000 << 15), 15);
        assert_eq!(delay_bucket((50_000 << 15) + 1), DELAY_BUCKETS, "+Inf");
        assert_eq!(delay_bucket(u64::MAX), DELAY_BUCKETS);
    }

    #[test]
    fn fan_out_delays_are_served_as_a_cumulative_histogram() {
        let metrics = Metrics::new();
        for micros in [10, 40, 70, 3_000, 5_000_000] {
            metrics.fanned_out(Duration::from_micros(micros));
        }
        let text = metrics.encode();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert!(text.contains("# TYPE balint_fanout_seconds histogram"), "{text}");
        assert_eq!(line("balint_fanout_seconds_bucket{le=\"0.00005\"}"), "2");
        assert_eq!(line("balint_fanout_seconds_bucket{le=\"0.0001\"}"), "3");
        assert_eq!(line("balint_fanout_seconds_bucket{le=\"0.0032\"}"), "4");
        assert_eq!(line("balint_fanout_seconds_bucket{le=\"1.6384\"}"), "4");
        assert_eq!(line("balint_fanout_seconds_bucket{le=\"+Inf\"}"), "5");
        assert_eq!(line("balint_fanout_seconds_count"), "5");
        assert_eq!(line("balint_fanout_seconds_sum"), "5.00312");
    }
}
