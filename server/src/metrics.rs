//! Prometheus metrics.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModeLabels {
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PushLabels {
    pub provider: &'static str,
    pub outcome: &'static str,
}

/// Counts of the change notifications between instances sharing one PostgreSQL database
/// (`domain::events`): whether an answer given through one instance reaches the waiters of the
/// others at once, or only at their deadline. On SQLite they stay 0.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChangeNotificationCounters {
    /// Notifications sent to the other instances (one `NOTIFY` payload each).
    pub sent: Counter,
    /// Sends that failed: the other instances' waiters on what was not sent read again at
    /// their deadline, or when this instance's next batch tells everyone to read again.
    pub send_failures: Counter,
    /// Notifications heard from other instances (this instance's own are not counted).
    pub heard: Counter,
    /// Times the listening connection was lost, or an attempt to connect it failed: while it
    /// does not listen, this instance's waiters learn of answers given through the others only
    /// at their deadline, and once it listens again every waiter reads again.
    pub listener_interruptions: Counter,
}

/// The database connections requests wait for, as read at a scrape: PostgreSQL's request
/// connections (`pool="requests"`) or SQLite's one writer (`pool="writer"`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConnectionReading {
    /// The `pool` label.
    pub pool: &'static str,
    /// The most connections there can be.
    pub max: u64,
    /// Held by a request now.
    pub in_use: u64,
    /// Open and free.
    pub idle: u64,
    /// Requests waiting for one now.
    pub waiting: u64,
    /// Waits that ended with a connection: how many, their summed seconds, and how many fell in
    /// each bucket (its upper bound in seconds, the last one infinite; counts not cumulative).
    pub waits: u64,
    pub wait_seconds: f64,
    pub wait_buckets: Vec<(f64, u64)>,
    /// Waits that gave up at the acquire timeout.
    pub timeouts: u64,
    /// New connections that failed to open (the database down or unreachable).
    pub open_failures: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    pool: &'static str,
    state: &'static str,
}

/// Reads the connections at each scrape (the store keeps the figures; the server wires its
/// reading in with [`Metrics::read_connections_with`]).
struct ConnectionCollector(Box<dyn Fn() -> ConnectionReading + Send + Sync>);

impl std::fmt::Debug for ConnectionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionCollector")
    }
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = (self.0)();
        let pool = PoolLabels { pool: reading.pool };
        let mut family = encoder.encode_descriptor(
            "database_connections",
            "Database connections requests take, by pool (requests: PostgreSQL's; writer: SQLite's one writer) and state",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [("in_use", reading.in_use), ("idle", reading.idle)] {
            let labels = PoolStateLabels {
                pool: reading.pool,
                state,
            };
            ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "database_connections_max",
                "The most database connections of the pool there can be at once",
                reading.max,
            ),
            (
                "database_connection_waiting",
                "Requests waiting for a database connection of the pool now",
                reading.waiting,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric.encode_family(&pool)?)?;
        }
        for (name, help, value) in [
            (
                "database_connection_timeouts",
                "Waits for a database connection that gave up at the acquire timeout (a request answered 503, or a background task that tries again)",
                reading.timeouts,
            ),
            (
                "database_connection_open_failures",
                "New database connections that failed to open: the database down, refusing or unreachable",
                reading.open_failures,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric.encode_family(&pool)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "database_connection_wait_seconds",
            "How long requests waited for a database connection of the pool",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_family(&pool)?.encode_histogram::<PoolLabels>(
            reading.wait_seconds,
            reading.waits,
            &reading.wait_buckets,
            None,
        )
    }
}

/// The server's metrics and their registry.
pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub durations: Family<RouteLabels, Histogram>,
    pub pairings: Family<ModeLabels, Counter>,
    pub pairing_failures: Family<ReasonLabels, Counter>,
    pub pushes: Family<PushLabels, Counter>,
    pub authentications_ended: Family<EndLabels, Counter>,
    pub waiting_topics: Gauge,
    pub fraud_signals: Family<ReasonLabels, Counter>,
    pub change_notifications: ChangeNotificationCounters,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndLabels {
    pub kind: &'static str,
    pub state: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let pairings = Family::<ModeLabels, Counter>::default();
        let pairing_failures = Family::<ReasonLabels, Counter>::default();
        let pushes = Family::<PushLabels, Counter>::default();
        let authentications_ended = Family::<EndLabels, Counter>::default();
        let waiting_topics = Gauge::default();
        let fraud_signals = Family::<ReasonLabels, Counter>::default();
        let change_notifications = ChangeNotificationCounters::default();
        for (name, help, counter) in [
            (
                "change_notifications_sent",
                "Change notifications sent to the other instances on the same PostgreSQL database",
                &change_notifications.sent,
            ),
            (
                "change_notification_send_failures",
                "Change notifications that could not be sent (the other instances' waiters read again at their deadline)",
                &change_notifications.send_failures,
            ),
            (
                "change_notifications_heard",
                "Change notifications heard from the other instances on the same PostgreSQL database",
                &change_notifications.heard,
            ),
            (
                "change_listener_interruptions",
                "Times the change listener lost its connection or failed to connect (meanwhile this instance's waiters hear of other instances' answers only at their deadline)",
                &change_notifications.listener_interruptions,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "authentication_fraud_signals",
            "Authentications denied as a fraud signal, by reason (wrong_number: number matching answered with another number; reported_fraud)",
            fraud_signals.clone(),
        );
        registry.register(
            "waiting_topics",
            "Authentications, devices and QR sessions some request is waiting on in this process",
            waiting_topics.clone(),
        );
        registry.register(
            "authentications_ended",
            "Authentications that ended, by kind and outcome",
            authentications_ended.clone(),
        );
        registry.register(
            "pushes",
            "Push deliveries by provider and outcome",
            pushes.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration by route template",
            durations.clone(),
        );
        registry.register(
            "pairings",
            "Completed pairings by mode (direct, relay)",
            pairings.clone(),
        );
        registry.register(
            "pairing_failures",
            "Refused pairing attempts by reason",
            pairing_failures.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            pairings,
            pairing_failures,
            pushes,
            authentications_ended,
            waiting_topics,
            fraud_signals,
            change_notifications,
        }
    }

    /// Reports the database connections on every scrape, as `read` finds them (once; the
    /// server calls it with its database's reading when it starts).
    pub fn read_connections_with(
        &mut self,
        read: impl Fn() -> ConnectionReading + Send + Sync + 'static,
    ) {
        self.registry
            .register_collector(Box::new(ConnectionCollector(Box::new(read))));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
