//! Authentication policies: an application's ordered rules, each with conditions and one action,
//! evaluated on every path that authenticates a user (`docs/policy.md`).
//!
//! A [`PolicyDocument`] is what an administrator saves (`PUT /v1/policies`); each save becomes a
//! new [`PolicyVersion`]. The first rule whose conditions all hold decides; when none does, the
//! default action applies. Every decision answers a [`PolicyOutcome`]: the version, the rule, the
//! action and a reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::time::UnixSeconds;

/// The name the default rule is reported under.
pub const DEFAULT_RULE: &str = "default";

/// A policy as an administrator writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyDocument {
    /// Named networks, each a list of CIDR blocks (`"office": ["203.0.113.0/24"]`).
    #[serde(default)]
    pub networks: BTreeMap<String, Vec<String>>,
    /// The rules, in order: the first that matches wins.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// What applies when no rule matches.
    pub default: PolicyAction,
}

/// One rule: a name, conditions that must all hold, and one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyRule {
    /// A unique name, reported with each decision.
    pub name: String,
    /// The conditions (all must hold; none means always).
    #[serde(default)]
    pub when: PolicyConditions,
    /// What happens when the rule matches.
    pub then: PolicyAction,
}

/// A rule's conditions; every one given must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyConditions {
    /// The user belongs to at least one of these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The request is one of these kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RequestKind>,
    /// The accessing IP is in one of these named networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// The accessing IP is in none of these named networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside_networks: Vec<String>,
    /// The accessing country (ISO 3166-1 alpha-2, from the IP table) is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// The accessing IP's reputation (from the IP table) is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_reputation: Vec<Reputation>,
    /// The authenticating device's platform is one of these (`ios`, `android`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// The device's OS version is below this one (dotted numbers, `"16.4"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version_below: Option<String>,
    /// The device's app version is below this one (dotted numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version_below: Option<String>,
    /// The device is rooted or jailbroken (`true`) or not (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooted: Option<bool>,
    /// The device has a screen lock (`true`) or not (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_lock: Option<bool>,
    /// The device is managed by MDM (`true`) or not (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm: Option<bool>,
    /// The device's key is attested (`true`) or not (`false`). No device is attested yet:
    /// attestation does not exist on this server, so the value is always `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested_key: Option<bool>,
    /// The user authenticated successfully from a named network within some minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_authentication: Option<RecentAuthentication>,
    /// The user was sent at least this many push requests within a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_requests: Option<PushRequestCount>,
    /// The local time in a time zone is within a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_of_day: Option<TimeOfDay>,
    /// The user's previous accessing location is too far from this one for the time between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geovelocity: Option<Geovelocity>,
    /// A transaction field holds a number above a threshold (`"Amount": "1200.00 EUR"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_field_above: Option<FieldThreshold>,
}

/// The kind of request a policy is evaluated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RequestKind {
    /// A push approval (`POST /v1/users/{id}/authentications`, kind `approval`).
    Push,
    /// A transaction approval.
    Transaction,
    /// A QR code login (after the scan, before the user is asked).
    Qr,
    /// A CIBA backchannel request.
    Ciba,
    /// An authentication flow.
    Flow,
    /// A passcode check (the app's passcode, an OATH token, or an SMS/voice/email code).
    Passcode,
    /// A backup code check.
    BackupCode,
    /// Pairing a device.
    Pairing,
}

impl RequestKind {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Push => "push",
            RequestKind::Transaction => "transaction",
            RequestKind::Qr => "qr",
            RequestKind::Ciba => "ciba",
            RequestKind::Flow => "flow",
            RequestKind::Passcode => "passcode",
            RequestKind::BackupCode => "backup_code",
            RequestKind::Pairing => "pairing",
        }
    }
}

/// An IP reputation, as the IP table gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Reputation {
    /// Low risk.
    Low,
    /// Medium risk.
    Medium,
    /// High risk.
    High,
}

/// A recent successful authentication from a named network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecentAuthentication {
    /// The named network the earlier authentication came from.
    pub network: String,
    /// How recent, in minutes (1 to 10080).
    pub within_minutes: u32,
}

/// A number of push requests within a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRequestCount {
    /// At least this many (1 or more).
    pub at_least: u32,
    /// Within this many seconds before now (1 to 86400).
    pub window_seconds: u32,
}

/// A range of local time in a time zone (`from` inclusive, `to` exclusive; a range across
/// midnight, `22:00` to `06:00`, is allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimeOfDay {
    /// `HH:MM`.
    pub from: String,
    /// `HH:MM`.
    pub to: String,
    /// An IANA time zone (`Europe/Berlin`).
    pub time_zone: String,
}

/// Geovelocity: the speed needed to travel from the user's previous accessing location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Geovelocity {
    /// Matches when the speed is above this many km/h.
    pub max_kmh: f64,
}

/// A numeric threshold on a transaction field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldThreshold {
    /// The field's label (case-insensitive).
    pub field: String,
    /// Matches when the field's leading number is above this.
    pub above: f64,
}

/// An authentication method a `require` action names, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PolicyMethod {
    /// A push to the mobile app (swipe or biometrics).
    MobilePush,
    /// A push answered with biometrics (user verification required).
    MobileBiometrics,
    /// A passcode from the mobile app.
    MobilePasscode,
    /// A passcode by SMS.
    Sms,
    /// A passcode by voice call.
    Voice,
    /// A passcode by email.
    Email,
    /// An OATH token or authenticator app.
    Oath,
    /// FIDO2 (not available on this server yet: refused when saved).
    Fido2,
}

impl PolicyMethod {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMethod::MobilePush => "mobile_push",
            PolicyMethod::MobileBiometrics => "mobile_biometrics",
            PolicyMethod::MobilePasscode => "mobile_passcode",
            PolicyMethod::Sms => "sms",
            PolicyMethod::Voice => "voice",
            PolicyMethod::Email => "email",
            PolicyMethod::Oath => "oath",
            PolicyMethod::Fido2 => "fido2",
        }
    }
}

/// What a rule (or the default) does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PolicyAction {
    /// No user action: the authentication is approved (`POLICY_APPROVE`).
    Approve,
    /// The user authenticates with one of these methods, in order of preference.
    Require {
        /// The methods, most preferred first.
        methods: Vec<PolicyMethod>,
        /// Answers from an App Attested iOS enrollment must carry an App Attest assertion
        /// (`docs/attestation.md`); refused with `app_attest_assertion_required` otherwise.
        /// Other enrollments (Android, not App Attested) are unaffected.
        #[serde(default, skip_serializing_if = "is_false")]
        app_attest_assertion: bool,
    },
    /// Refused, with a reason shown to the user and returned to the relying party.
    Deny {
        /// The reason.
        reason: String,
    },
    /// At most `max` push requests per `window_seconds`; within it, the request goes on.
    LimitPush {
        /// Push requests allowed in the window (1 or more).
        max: u32,
        /// The window, in seconds (1 to 86400).
        window_seconds: u32,
    },
}

impl PolicyAction {
    /// The action's name: `approve`, `require`, `deny` or `limit_push`.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyAction::Approve => "approve",
            PolicyAction::Require { .. } => "require",
            PolicyAction::Deny { .. } => "deny",
            PolicyAction::LimitPush { .. } => "limit_push",
        }
    }
}

/// What a decision did, as it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PolicyEffect {
    /// Approved without user action.
    Approve,
    /// The user authenticates (with `methods`).
    Require,
    /// Refused.
    Deny,
}

/// A decision as answered with an authentication, QR session, CIBA error or flow result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyOutcome {
    /// The policy version evaluated (0 when the application has no policy).
    pub version: u32,
    /// The rule that matched (`default` when none did).
    pub rule: String,
    /// The matched rule's action (`approve`, `require`, `deny`, `limit_push`).
    pub action: String,
    /// What it did.
    pub effect: PolicyEffect,
    /// Why, in words.
    pub reason: String,
    /// With `require`: the methods allowed, most preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<PolicyMethod>,
    /// With `require`: answers from an App Attested iOS enrollment must carry an App Attest
    /// assertion.
    #[serde(default, skip_serializing_if = "is_false")]
    pub app_attest_assertion: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// `GET /v1/policies` and each saved version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyVersion {
    /// The version (1, 2, ...).
    pub version: u32,
    /// When it was saved.
    pub created_at: UnixSeconds,
    /// The policy.
    pub policy: PolicyDocument,
}

/// `GET /v1/policies/versions`: every saved version, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyVersionList {
    /// The versions.
    pub versions: Vec<PolicyVersion>,
}

/// The facts a decision can look at, as `POST /v1/policies/evaluate` takes them. Facts the
/// server would gather itself (groups, recent authentications, push counts, previous location)
/// are read from the store for `user_id` unless given here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluatePolicyRequest {
    /// The user.
    pub user_id: UserId,
    /// The request kind.
    pub request: Option<RequestKind>,
    /// The accessing IP.
    #[serde(default)]
    pub accessing_ip: Option<String>,
    /// The authenticating device's posture; the user's primary device when absent.
    #[serde(default)]
    pub device: Option<DeviceFacts>,
    /// Transaction fields (label, value).
    #[serde(default)]
    pub fields: Vec<crate::authentication::DisplayField>,
    /// A policy version to evaluate instead of the current one.
    #[serde(default)]
    pub version: Option<u32>,
}

/// The authenticating device's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceFacts {
    /// `ios`, `android`, ...
    #[serde(default)]
    pub platform: Option<String>,
    /// The OS version.
    #[serde(default)]
    pub os_version: Option<String>,
    /// The app version.
    #[serde(default)]
    pub app_version: Option<String>,
    /// Rooted or jailbroken.
    #[serde(default)]
    pub rooted: Option<bool>,
    /// Has a screen lock.
    #[serde(default)]
    pub screen_lock: Option<bool>,
    /// Managed by MDM.
    #[serde(default)]
    pub mdm: Option<bool>,
    /// Whether the server verified the device's key attestation at pairing (Android Key
    /// Attestation or App Attest; see `docs/attestation.md`). Absent: not attested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested: Option<bool>,
}

/// `POST /v1/policies/evaluate`: what the policy would decide, and the values it looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyEvaluation {
    /// The decision.
    pub policy: PolicyOutcome,
    /// The values the decision looked at, by name.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub inputs: BTreeMap<String, serde_json::Value>,
}

/// `PUT /v1/users/{user_id}/groups`: the user's groups (replacing the previous ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserGroups {
    /// Group names.
    pub groups: Vec<String>,
}
