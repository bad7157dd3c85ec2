//! Operational metrics, served as Prometheus text on `GET /metrics`.
//!
//! Counters and gauges carry no room ids, names or content: only totals and reasons.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    fanout_seconds: Histogram,
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
        // From 50 µs to about 3 s.
        let fanout_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
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
    pub fn fanned_out(&self, delay: std::time::Duration) {
        self.inner.fanout_seconds.observe(delay.as_secs_f64());
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
