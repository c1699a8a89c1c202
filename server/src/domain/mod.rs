//! The rules: one module per flow. Each operation takes a [`Ctx`] (the store, the keys, the
//! configuration, the clock, the event hub and the delivery handles), opens its own
//! transactions, and returns a typed [`DomainError`]. Nothing here knows about HTTP; the
//! delivery of pushes and passcodes goes through the traits in [`ports`].
//!
//! Layering (checked by `tests/layering.rs` of this crate): `http` → `domain` → `store`;
//! `delivery` implements `domain::ports`; `store` imports neither.

pub(crate) mod api_keys;
pub(crate) mod applications;
pub mod attestation;
pub(crate) mod audit;
pub(crate) mod authentication;
pub(crate) mod backup;
pub(crate) mod bypass;
pub(crate) mod ciba;
pub(crate) mod device_auth;
pub(crate) mod device_verification;
pub(crate) mod devices;
pub mod error;
pub mod events;
pub(crate) mod fallback;
pub(crate) mod fido;
pub(crate) mod flows;
pub(crate) mod hosted;
pub(crate) mod methods;
pub(crate) mod otp;
pub(crate) mod outcome;
pub(crate) mod pairing;
pub(crate) mod policy;
pub mod ports;
pub(crate) mod qr;
pub(crate) mod readiness;
pub(crate) mod retention;
pub(crate) mod server_keys;
pub(crate) mod ssrf;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod users;
pub(crate) mod webhooks;

use std::sync::Arc;

use tessera_protocol::pairing::ServerUrl;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::store::Database;

pub(crate) use crate::store::enrollments::Enrollment;
pub use error::DomainError;
pub use events::EventHub;

/// Everything a domain operation can reach. Every request and background task holds one, and
/// axum clones it for each extractor: cloning it is one reference count.
#[derive(Clone)]
pub(crate) struct Ctx(Arc<CtxParts>);

impl Ctx {
    /// The context made of `parts`.
    pub(crate) fn new(parts: CtxParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for Ctx {
    type Target = CtxParts;

    fn deref(&self) -> &CtxParts {
        &self.0
    }
}

/// What a [`Ctx`] holds.
pub(crate) struct CtxParts {
    /// The database.
    pub db: Database,
    /// The keys the server signs device-facing messages with.
    pub keys: KeyRing,
    /// The configuration.
    pub config: Arc<ServerConfig>,
    /// The server's identity.
    pub public_url: ServerUrl,
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
    /// Wakes waiters when something changes.
    pub events: EventHub,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Pushes requests to devices.
    pub device_push: Arc<dyn ports::DevicePush>,
    /// Wakes the CIBA notifier.
    pub ciba_notifier: ciba::NotifierHandle,
    /// Posts CIBA ping and push notifications.
    pub ciba_sender: Arc<dyn ports::CibaNotificationSender>,
    /// The email notifier, when SMTP is configured.
    pub email: Option<Arc<dyn ports::Notifier>>,
    /// Builds the SMS and voice notifier of an application's provider webhook.
    pub messages: Arc<dyn ports::MessageSender>,
    /// What reacts to domain events (device verification, QR follow-up, CIBA notifications),
    /// registered when the server starts.
    pub follow_ups: Arc<[(&'static str, outcome::FollowUp)]>,
    /// Posts signed event webhooks.
    pub webhook_sender: Arc<dyn ports::WebhookSender>,
    /// The trust anchors and revocation list attestations are verified against.
    pub attestation: Arc<attestation::AttestationTrust>,
    /// The policy versions compiled so far (`policy::compiled`).
    pub compiled_policies: policy::compiled::CompiledPolicies,
    /// The application of each API key found so far (`api_keys`: a hint, checked by the
    /// statement that uses it).
    pub api_key_hints: api_keys::ApiKeyHints,
    /// The application of each CIBA client found so far, with its secret's digest
    /// (`ciba::client_hints`: a hint, checked by the client's own read).
    pub ciba_client_hints: ciba::client_hints::ClientHints,
}

impl Ctx {
    /// Now, in seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How long until `at` (seconds since the epoch) by the server's clock, plus a moment so a
    /// wait that ends then reads the state after it passed (zero plus the moment if already
    /// past).
    pub fn until(&self, at: i64) -> std::time::Duration {
        let ms = at.saturating_mul(1000).saturating_sub(self.now_ms()).max(0) + 50;
        std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

/// The follow-ups every server runs on domain events, in order: a decided device verification
/// activates or rejects the new enrollment; an answered QR follow-up completes its session; a
/// finished CIBA request's ping or push notification becomes due; a flow waiting for the push
/// moves on; the ending is recorded in the audit log and queued for the webhooks.
pub(crate) fn follow_ups() -> Vec<(&'static str, outcome::FollowUp)> {
    vec![
        ("device_verification", device_verification::follow_up),
        ("qr", qr::follow_up),
        ("ciba", ciba::notify::follow_up),
        ("flows", flows::follow_up),
        (outcome::AUDIT_FOLLOW_UP, audit::follow_up),
    ]
}
