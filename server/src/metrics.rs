//! Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
