//! Events and history on the customer API: signed event webhooks (endpoints, deliveries and the
//! event body they carry), the audit log, and a user's authentication history. See
//! `docs/events.md`.

use serde::{Deserialize, Serialize};

/// The header carrying a webhook delivery's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`,
/// the HMAC keyed with the endpoint's secret over `"<t>.<body>"`.
pub const SIGNATURE_HEADER: &str = "Tessera-Signature";
/// The header naming the event a delivery carries (the same id on every retry).
pub const EVENT_ID_HEADER: &str = "Tessera-Event-Id";
/// The header naming the event's type.
pub const EVENT_TYPE_HEADER: &str = "Tessera-Event-Type";

/// What happened, as webhook event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    /// An authentication request was created.
    #[serde(rename = "authentication.created")]
    AuthenticationCreated,
    /// An authentication was approved.
    #[serde(rename = "authentication.approved")]
    AuthenticationApproved,
    /// An authentication was denied.
    #[serde(rename = "authentication.denied")]
    AuthenticationDenied,
    /// An authentication expired unanswered.
    #[serde(rename = "authentication.expired")]
    AuthenticationExpired,
    /// An authentication failed (its device was unpaired, it was cancelled).
    #[serde(rename = "authentication.failed")]
    AuthenticationFailed,
    /// A device completed its pairing.
    #[serde(rename = "pairing.completed")]
    PairingCompleted,
    /// A device was removed (by the customer, by itself, with its user).
    #[serde(rename = "device.removed")]
    DeviceRemoved,
    /// The user reported a request as fraud, or approved with the wrong number.
    #[serde(rename = "fraud.reported")]
    FraudReported,
    /// The policy engine decided on an authentication.
    #[serde(rename = "policy.decided")]
    PolicyDecided,
    /// A CIBA request finished (approved, denied, failed).
    #[serde(rename = "ciba.completed")]
    CibaCompleted,
    /// An authentication flow reached a final status.
    #[serde(rename = "flow.completed")]
    FlowCompleted,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 11] = [
        EventType::AuthenticationCreated,
        EventType::AuthenticationApproved,
        EventType::AuthenticationDenied,
        EventType::AuthenticationExpired,
        EventType::AuthenticationFailed,
        EventType::PairingCompleted,
        EventType::DeviceRemoved,
        EventType::FraudReported,
        EventType::PolicyDecided,
        EventType::CibaCompleted,
        EventType::FlowCompleted,
    ];

    /// The type as it appears on the wire (`authentication.approved`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AuthenticationCreated => "authentication.created",
            EventType::AuthenticationApproved => "authentication.approved",
            EventType::AuthenticationDenied => "authentication.denied",
            EventType::AuthenticationExpired => "authentication.expired",
            EventType::AuthenticationFailed => "authentication.failed",
            EventType::PairingCompleted => "pairing.completed",
            EventType::DeviceRemoved => "device.removed",
            EventType::FraudReported => "fraud.reported",
            EventType::PolicyDecided => "policy.decided",
            EventType::CibaCompleted => "ciba.completed",
            EventType::FlowCompleted => "flow.completed",
        }
    }

    /// The type named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// The body of every webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEvent {
    /// The event's id: the same on every retry, so a receiver can drop duplicates.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The application it happened in.
    pub application_id: String,
    /// The details: ids (user, device, authentication, flow) and outcome, never a secret.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// `POST /v1/webhooks`: register an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateWebhookEndpoint {
    /// Where to POST events (`https://`; checked against the server's outbound-call policy).
    pub url: String,
    /// The event types to send; absent or empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<EventType>,
}

/// A registered webhook endpoint (its secret is shown only when it is created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpoint {
    /// The endpoint's id (`whe_…`).
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives; empty: every type.
    pub event_types: Vec<EventType>,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
}

/// The answer to `POST /v1/webhooks`: the endpoint and its signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedWebhookEndpoint {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// The secret deliveries are signed with (`whsec_…`). Store it: it is never shown again.
    pub secret: String,
}

/// `GET /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpointList {
    /// The application's endpoints, oldest first.
    pub endpoints: Vec<WebhookEndpoint>,
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// The delivery's id.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event (its `id`).
    pub event_id: String,
    /// The event's type.
    pub event_type: EventType,
    /// `pending` (to be tried, or retried), `delivered` or `failed` (given up).
    pub state: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch), while pending.
    pub next_attempt_at_ms: Option<i64>,
    /// The HTTP status of the last attempt, if it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the last attempt was made (ms since the epoch).
    pub last_attempt_at_ms: Option<i64>,
    /// When it was delivered (ms since the epoch).
    pub delivered_at_ms: Option<i64>,
    /// When the event was queued for this endpoint (ms since the epoch).
    pub created_at_ms: i64,
}

/// `GET /v1/webhooks/{endpoint_id}/deliveries`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryList {
    /// The deliveries of this page.
    pub deliveries: Vec<WebhookDelivery>,
}

/// One audit record: something security-relevant that happened. Never changed once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// The record's id.
    pub id: String,
    /// When it happened (ms since the epoch).
    pub at_ms: i64,
    /// What happened (`authentication.approved`, `user.deleted`, `signature.failed`, …).
    pub kind: String,
    /// Who did it: `customer` (API key), `device`, `user`, `admin`, `server`, `anonymous`.
    pub actor: String,
    /// The application, if any.
    pub application_id: Option<String>,
    /// The user, if any.
    pub user_id: Option<String>,
    /// The device (enrollment id), if any.
    pub device_id: Option<String>,
    /// The object concerned (an authentication, flow, endpoint, key id), if any.
    pub subject: Option<String>,
    /// The address of whoever made the call, if known.
    pub client_ip: Option<String>,
    /// The address of the person signing in (as the customer reported it), if known.
    pub accessing_ip: Option<String>,
    /// The location the accessing address maps to, if known.
    pub location: Option<String>,
    /// How it ended: `success`, `denied`, `failed`, `expired`, `refused`, …
    pub outcome: String,
    /// More, by kind (never a secret).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Value,
}

/// `GET /v1/audit`: newest first, with a cursor for the next (older) page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    /// The records of this page.
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One authentication in a user's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthenticationHistoryEntry {
    /// The authentication's id.
    pub authentication_id: String,
    /// `approval`, `transaction`, `silent` or `ciba`.
    pub kind: String,
    /// `pending`, `approved`, `denied`, `expired` or `failed`.
    pub status: String,
    /// How it was answered: `device` (a signed answer), `passcode`, or absent.
    #[serde(rename = "type")]
    pub answer_type: Option<String>,
    /// Why it was denied, if it was.
    pub denial_reason: Option<String>,
    /// Why it failed, if it did.
    pub failure_reason: Option<String>,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it was answered (Unix seconds).
    pub answered_at: Option<i64>,
    /// When it expires or expired (Unix seconds).
    pub expires_at: i64,
    /// The device asked (enrollment id).
    pub device_id: String,
    /// The address of the person signing in, as the customer reported it.
    pub accessing_ip: Option<String>,
}

/// `GET /v1/users/{user_id}/authentications`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthenticationHistory {
    /// The authentications of this page.
    pub authentications: Vec<AuthenticationHistoryEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_by_name_and_serde() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::parse("authentication.maybe"), None);
    }
}
