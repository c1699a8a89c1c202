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
use crate::pairing::{DeviceSignals, DeviceVersions, ServerUrl};
use crate::time::UnixSeconds;

/// An authentication's id: `aut_` and 32 hex digits.
pub use crate::ids::AuthenticationId;

/// What kind of question the device is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuthenticationKind {
    /// "Sign in to `<app>`?" with where the sign-in comes from.
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

/// How the user proves the sign-in they approve is the one in front of them.
///
/// The relying party (web page, CIBA consumption device, QR login page) shows a 2-digit number;
/// the device's answer must carry the same number. A wrong number ends the request as `denied`
/// with the reason [`DenialReason::WrongNumber`], so it cannot be guessed by trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NumberMatching {
    /// No number matching.
    #[default]
    Off,
    /// The device offers three numbers ([`AuthenticationRequest::number_choices`]) and the
    /// user picks the one the relying party shows: a third of random picks are right.
    Choice,
    /// The device offers nothing; the user types the 2-digit number the relying party shows
    /// (one in 90 for a random answer).
    Typed,
}

impl NumberMatching {
    /// The wire and command-line word: `off`, `choice` or `typed`.
    pub fn as_str(self) -> &'static str {
        match self {
            NumberMatching::Off => "off",
            NumberMatching::Choice => "choice",
            NumberMatching::Typed => "typed",
        }
    }

    /// Parses the word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "choice" => Some(Self::Choice),
            "typed" => Some(Self::Typed),
            _ => None,
        }
    }

    /// Whether the answer must carry a number.
    pub fn is_on(self) -> bool {
        self != NumberMatching::Off
    }
}

/// The smallest number number matching shows (numbers have two digits).
pub const NUMBER_MATCHING_MIN: u32 = 10;
/// The largest number number matching shows.
pub const NUMBER_MATCHING_MAX: u32 = 99;

/// Why an authentication was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DenialReason {
    /// The user declined on the device (decision `deny`).
    Declined,
    /// The user reported it as fraud (decision `report_fraud`).
    ReportedFraud,
    /// The device answered with a number other than the one shown (number matching): the
    /// request ended at once, and counts as a fraud signal.
    WrongNumber,
}

impl DenialReason {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::Declined => "declined",
            DenialReason::ReportedFraud => "reported_fraud",
            DenialReason::WrongNumber => "wrong_number",
        }
    }

    /// Parses the wire word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "declined" => Some(Self::Declined),
            "reported_fraud" => Some(Self::ReportedFraud),
            "wrong_number" => Some(Self::WrongNumber),
            _ => None,
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
    /// Context bound by the signature but not part of the headline display (a reference, an
    /// amount in another form). The device core hands these to the app separately
    /// (`IncomingRequest::hidden_fields`): apps must show them, or at least surface them (e.g.
    /// behind "Details"), because the user's approval covers them too.
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
    /// Number matching: the numbers to offer (mode `choice` only); the web page shows the
    /// right one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_choices: Option<Vec<u32>>,
    /// Number matching mode: `choice` (pick one of `number_choices`) or `typed` (type the
    /// number the web page shows; no choices are sent). Absent means `off`, or `choice` when
    /// `number_choices` is present (requests of servers before the typed mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_matching: Option<NumberMatching>,
    /// Whether the answer must be signed with the user-verification key.
    pub require_user_verification: bool,
    /// For a [`AuthenticationKind::Ciba`] request: the relying party, binding message and scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciba: Option<CibaDetails>,
    /// The language (a BCP 47 tag such as `de` or `fr`) the server wrote its own texts in (the
    /// default headline); customer-supplied texts are in whatever language the customer wrote
    /// them. Absent from requests of servers before it existed. Signed like every other member,
    /// so an app may pick its own labels (buttons, "Details") in the same language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The server's nonce, echoed in the answer.
    pub nonce: String,
    /// When the server signed it.
    pub issued_at: UnixSeconds,
    /// When it expires.
    pub expires_at: UnixSeconds,
}

impl AuthenticationRequest {
    /// The number matching mode this request asks for (see [`AuthenticationRequest::number_matching`]).
    pub fn number_matching_mode(&self) -> NumberMatching {
        match (self.number_matching, &self.number_choices) {
            (Some(mode), _) => mode,
            (None, Some(_)) => NumberMatching::Choice,
            (None, None) => NumberMatching::Off,
        }
    }
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
    /// Number matching: the number the user selected (mode `choice`) or typed (mode `typed`).
    /// Approvals only; an approval with another number than the one shown ends the request as
    /// denied (`wrong_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_number: Option<u32>,
    /// RFC 8176 authentication method references the app reports (`fpt`, `face`, `pin`, `swk`, `hwk`, `user`).
    pub amr: Vec<String>,
    /// Posture signals at the time of the answer.
    pub signals: DeviceSignals,
    /// Where the device was, if the app reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<DeviceLocation>,
    /// The model, OS version and app version as the device is now (absent from devices built
    /// before it existed); the server updates the enrollment from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceVersions>,
    /// When the device signed it.
    pub issued_at: UnixSeconds,
    /// Apple App Attest: an assertion of the App Attest key the enrollment's pairing attested
    /// (`DCAppAttestService.generateAssertion`), unpadded base64url of Apple's CBOR
    /// (`{"signature", "authenticatorData"}`), made over
    /// [`AuthenticationResponse::app_attest_client_data_hash`]. Absent from devices without App
    /// Attest (Android, simulators, devices built before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_attest_assertion: Option<String>,
}

impl AuthenticationResponse {
    /// The `clientDataHash` an App Attest assertion of this answer is made over: SHA-256 of the
    /// answer's canonical JSON without `app_attest_assertion` (which, being absent, is not
    /// serialized). It binds the assertion to exactly this answer (request, nonce, decision,
    /// number, amr, signals, time); the envelope's signature then covers the assertion too.
    pub fn app_attest_client_data_hash(&self) -> Result<Sha256Digest, CanonicalError> {
        let mut without = self.clone();
        without.app_attest_assertion = None;
        Sha256Digest::of_canonical(&without)
    }
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
    fn number_matching_and_denial_reasons_are_words() {
        for mode in [
            NumberMatching::Off,
            NumberMatching::Choice,
            NumberMatching::Typed,
        ] {
            assert_eq!(NumberMatching::parse(mode.as_str()), Some(mode));
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::json!(mode.as_str())
            );
        }
        for reason in [
            DenialReason::Declined,
            DenialReason::ReportedFraud,
            DenialReason::WrongNumber,
        ] {
            assert_eq!(DenialReason::parse(reason.as_str()), Some(reason));
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.as_str())
            );
        }
    }

    #[test]
    fn decisions_serialize_as_words() {
        let d = serde_json::to_value(Decision::ReportFraud).unwrap();
        assert_eq!(d, serde_json::json!("report_fraud"));
    }
}
