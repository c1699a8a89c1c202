//! Authentications: the server asks a paired device, the device answers, bound to exactly what
//! was shown.
//!
//! The server signs an [`AuthenticationRequest`] ([`crate::envelope::MessageType::AuthenticationRequest`]);
//! the device checks it against the server keys it pinned, shows [`DynamicParameters`], and signs
//! an [`AuthenticationResponse`] ([`crate::envelope::MessageType::AuthenticationResponse`]) that
//! binds the request id, the server's nonce, the decision, the digest of the canonical parameters
//! as shown, the selected number, the user-verification method and the device signals. Approvals
//! that require user verification are signed with the user-verification key; silent verifications
//! and swipe approvals with the possession key.

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalError, Sha256Digest};
use crate::ids::{EnrollmentId, UserId};
use crate::pairing::{DeviceSignals, ServerUrl};
use crate::time::UnixSeconds;

/// An authentication's id: `aut_` and 32 hex digits.
pub use crate::ids::AuthenticationId;

/// What kind of question the device is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuthenticationKind {
    /// "Sign in to <app>?" with where the sign-in comes from.
    Approval,
    /// A transaction with dynamic parameters: a message and ordered fields.
    Transaction,
    /// No user interaction: the device proves it holds the enrollment.
    Silent,
    /// An OpenID CIBA request: a relying party (the request's [`CibaDetails`]) asks the user to
    /// sign in through the backchannel. Always approved with user verification.
    Ciba,
}

/// What a CIBA request shows: the relying party, its binding message and the scopes it asks
/// for. The request's [`DynamicParameters`] must be exactly [`CibaDetails::display_parameters`],
/// so the parameters digest the device signs binds all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CibaDetails {
    /// The relying party's registered name.
    pub client_name: String,
    /// The binding message the relying party also shows on the consumption device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_message: Option<String>,
    /// The scopes asked for (`openid` first).
    pub scopes: Vec<String>,
}

impl CibaDetails {
    /// The parameters a CIBA request shows, derived from these details and nothing else: the
    /// binding message as the headline (or "Sign in to CLIENT?"), then the relying party and the
    /// scopes as fields.
    pub fn display_parameters(&self) -> DynamicParameters {
        DynamicParameters {
            message: self
                .binding_message
                .clone()
                .unwrap_or_else(|| format!("Sign in to {}?", self.client_name)),
            fields: vec![
                DisplayField {
                    label: "Requested by".into(),
                    value: self.client_name.clone(),
                },
                DisplayField {
                    label: "Access".into(),
                    value: self.scopes.join(" "),
                },
            ],
            hidden_fields: Vec::new(),
        }
    }
}

/// One label/value line shown to (or, if hidden, bound for) the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DisplayField {
    /// The label, e.g. `Amount`.
    pub label: String,
    /// The value, e.g. `120.00 EUR`.
    pub value: String,
}

/// What the user sees and approves. Its canonical JSON (RFC 8785) digest is what both sides bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DynamicParameters {
    /// The headline, e.g. `Pay 120.00 EUR to ACME GmbH?`.
    pub message: String,
    /// Ordered fields shown to the user.
    #[serde(default)]
    pub fields: Vec<DisplayField>,
    /// Fields bound by the signature but not shown.
    #[serde(default)]
    pub hidden_fields: Vec<DisplayField>,
}

impl DynamicParameters {
    /// SHA-256 of the canonical JSON of these parameters.
    pub fn digest(&self) -> Result<Sha256Digest, CanonicalError> {
        Sha256Digest::of_canonical(self)
    }
}

/// Where the sign-in being approved comes from (the accessing device), as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccessContext {
    /// The application's name.
    pub application_name: String,
    /// The application's icon URL, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_icon_url: Option<String>,
    /// The accessing device's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A location text for the accessing device, e.g. `Berlin, DE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A request to a device, signed by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationRequest {
    /// Protocol version.
    pub v: u32,
    /// The request's id.
    pub request_id: AuthenticationId,
    /// The server's identity.
    pub issuer: ServerUrl,
    /// The enrollment asked.
    pub enrollment_id: EnrollmentId,
    /// The user asked.
    pub user_id: UserId,
    /// The kind of question.
    pub kind: AuthenticationKind,
    /// What to show (empty for silent verification).
    pub parameters: DynamicParameters,
    /// Digest of `parameters` (the device recomputes it and refuses a mismatch).
    pub parameters_digest: Sha256Digest,
    /// Where the sign-in comes from.
    pub context: AccessContext,
    /// Number matching: the numbers to offer; the web page shows the right one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_choices: Option<Vec<u32>>,
    /// Whether the answer must be signed with the user-verification key.
    pub require_user_verification: bool,
    /// For a [`AuthenticationKind::Ciba`] request: the relying party, binding message and scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciba: Option<CibaDetails>,
    /// The server's nonce, echoed in the answer.
    pub nonce: String,
    /// When the server signed it.
    pub issued_at: UnixSeconds,
    /// When it expires.
    pub expires_at: UnixSeconds,
}

/// The device's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Decision {
    /// Approved.
    Approve,
    /// Declined by the user.
    Deny,
    /// Denied and reported as fraud: the user did not start this.
    ReportFraud,
}

/// Where the authenticating device was when it answered, as its platform reports it
/// (`pingid.authentication.authenticating.device.latitude` and the like).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceLocation {
    /// Degrees, −90 to 90.
    pub latitude: f64,
    /// Degrees, −180 to 180.
    pub longitude: f64,
    /// Metres above sea level, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude: Option<f64>,
    /// Horizontal accuracy in metres, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

impl DeviceLocation {
    /// Whether every number is finite and in its range (accuracy not negative, altitude
    /// between −12 km and 100 km).
    pub fn is_valid(&self) -> bool {
        self.latitude.is_finite()
            && (-90.0..=90.0).contains(&self.latitude)
            && self.longitude.is_finite()
            && (-180.0..=180.0).contains(&self.longitude)
            && self
                .altitude
                .is_none_or(|a| a.is_finite() && (-12_000.0..=100_000.0).contains(&a))
            && self.accuracy.is_none_or(|a| a.is_finite() && a >= 0.0)
    }
}

/// The device's answer, signed by the possession or the user-verification key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationResponse {
    /// Protocol version.
    pub v: u32,
    /// The request answered.
    pub request_id: AuthenticationId,
    /// The enrollment answering.
    pub enrollment_id: EnrollmentId,
    /// The request's nonce.
    pub request_nonce: String,
    /// The decision.
    pub decision: Decision,
    /// Digest of the parameters exactly as shown.
    pub parameters_digest: Sha256Digest,
    /// The number the user selected (number matching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_number: Option<u32>,
    /// RFC 8176 authentication method references the app reports (`fpt`, `face`, `pin`, `swk`, `hwk`, `user`).
    pub amr: Vec<String>,
    /// Posture signals at the time of the answer.
    pub signals: DeviceSignals,
    /// Where the device was, if the app reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<DeviceLocation>,
    /// When the device signed it.
    pub issued_at: UnixSeconds,
}

/// An authentication's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuthenticationState {
    /// Waiting for the device.
    Pending,
    /// Approved by the device.
    Approved,
    /// Denied by the device.
    Denied,
    /// Nobody answered in time.
    Expired,
    /// Could not be completed: the device asked was unpaired while the request was pending,
    /// and no other device could take it (see the status' `failure_reason`).
    Failed,
}

impl AuthenticationState {
    /// The state's wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthenticationState::Pending => "pending",
            AuthenticationState::Approved => "approved",
            AuthenticationState::Denied => "denied",
            AuthenticationState::Expired => "expired",
            AuthenticationState::Failed => "failed",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "expired" => Some(Self::Expired),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_digest_is_canonical_and_order_sensitive_for_fields() {
        let a: DynamicParameters = serde_json::from_str(
            r#"{"message":"Pay","fields":[{"label":"Amount","value":"120.00 EUR"},{"value":"ACME","label":"Payee"}]}"#,
        )
        .unwrap();
        let b: DynamicParameters = serde_json::from_str(
            r#"{"fields":[{"value":"120.00 EUR","label":"Amount"},{"label":"Payee","value":"ACME"}],"message":"Pay","hidden_fields":[]}"#,
        )
        .unwrap();
        assert_eq!(
            a.digest().unwrap(),
            b.digest().unwrap(),
            "member order and defaults do not matter"
        );
        let mut swapped = a.clone();
        swapped.fields.reverse();
        assert_ne!(
            a.digest().unwrap(),
            swapped.digest().unwrap(),
            "field order is what the user saw"
        );
        let mut changed = a.clone();
        changed.fields[0].value = "1200.00 EUR".into();
        assert_ne!(a.digest().unwrap(), changed.digest().unwrap());
    }

    #[test]
    fn decisions_serialize_as_words() {
        let d = serde_json::to_value(Decision::ReportFraud).unwrap();
        assert_eq!(d, serde_json::json!("report_fraud"));
    }
}
