//! Bypass and recovery codes: the customer API's wire types (`/v1/users/{id}/bypass`,
//! `/v1/users/{id}/recovery-codes`, `/v1/authentications/{id}/recovery-code`). See
//! `docs/bypass-and-recovery.md`.

use serde::{Deserialize, Serialize};

use crate::time::UnixSeconds;

/// `PUT /v1/users/{user_id}/bypass`: let the user's authentications complete without a device
/// for a while. Give exactly one of `duration_seconds` and `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetBypassRequest {
    /// How long it lasts from now, in seconds (1 to the server's maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u32>,
    /// When it ends (seconds since the epoch; in the future, within the server's maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixSeconds>,
    /// Why (recorded in the audit log; 1 to 256 characters).
    pub reason: String,
}

/// A user's bypass as the customer API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BypassStatus {
    /// Whether it is in force now.
    pub active: bool,
    /// When it ends (absent when none was granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixSeconds>,
    /// When it was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<UnixSeconds>,
    /// Why it was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who granted it: `api` (the customer API) or `admin` (the admin CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
}

/// `POST /v1/users/{user_id}/recovery-codes`: the new codes, shown this once (the server keeps
/// only digests). The user's earlier codes no longer work.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryCodesIssued {
    /// The codes (`xxxx-xxxx-xxxx`), each good for one authentication.
    pub codes: Vec<String>,
    /// How many remain unused (all of them).
    pub remaining: u32,
}

impl std::fmt::Debug for RecoveryCodesIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecoveryCodesIssued {{ codes: <{} redacted>, remaining: {} }}",
            self.codes.len(),
            self.remaining
        )
    }
}

/// `GET /v1/users/{user_id}/recovery-codes`: how many codes remain (never the codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryCodesStatus {
    /// How many unused codes the user has.
    pub remaining: u32,
}

/// `POST /v1/authentications/{authentication_id}/recovery-code`: complete a pending
/// authentication with one of the user's recovery codes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UseRecoveryCode {
    /// The code as typed (dashes, spaces and case are ignored).
    pub code: String,
}

impl std::fmt::Debug for UseRecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UseRecoveryCode { code: <redacted> }")
    }
}
