//! FIDO2 / WebAuthn: an application's relying-party settings and the credentials its users
//! registered (`/v1/application/fido-settings`, `/v1/users/{id}/fido-credentials`).

use serde::{Deserialize, Serialize};

use crate::api::AuthenticationMethod;
use crate::time::UnixSeconds;

/// Whether the authenticator must verify the user (PIN or biometrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FidoUserVerification {
    /// Every ceremony must verify the user.
    Required,
    /// Asked for; a ceremony without it is accepted (and typed `SECURITY_KEY` or `PLATFORM`).
    #[default]
    Preferred,
}

/// What the server asks of the authenticator's attestation at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FidoAttestation {
    /// No attestation (the browser may hide the authenticator's model).
    #[default]
    None,
    /// A signed attestation whose authenticator model (AAGUID) must be in `allowed_aaguids`.
    Direct,
}

/// An application's WebAuthn relying-party settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FidoSettings {
    /// The relying party id (a registrable domain of the page's host); default: the host of
    /// the server's public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rp_id: Option<String>,
    /// The origins ceremonies may come from (`https://host[:port]`); default: the server's own
    /// origin (where the hosted prompt runs).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Whether the user must be verified.
    #[serde(default)]
    pub user_verification: FidoUserVerification,
    /// The attestation asked for at registration.
    #[serde(default)]
    pub attestation: FidoAttestation,
    /// With `direct` attestation: the authenticator models (AAGUIDs, `xxxxxxxx-xxxx-…`)
    /// accepted.
    #[serde(default)]
    pub allowed_aaguids: Vec<String>,
    /// Whether registrations create discoverable credentials (passkeys).
    #[serde(default)]
    pub discoverable_credentials: bool,
}

/// What kind of FIDO authenticator a credential lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FidoCredentialType {
    /// A roaming (cross-platform) authenticator: a USB, NFC or BLE security key.
    SecurityKey,
    /// The device's own authenticator, registered without user verification.
    Platform,
    /// The device's own authenticator, registered with user verification.
    Fido2Biometrics,
}

impl FidoCredentialType {
    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecurityKey => "SECURITY_KEY",
            Self::Platform => "PLATFORM",
            Self::Fido2Biometrics => "FIDO2_BIOMETRICS",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::SecurityKey, Self::Platform, Self::Fido2Biometrics]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// The mandatory method a credential of this type satisfies.
    pub fn method(self) -> AuthenticationMethod {
        match self {
            Self::SecurityKey => AuthenticationMethod::SecurityKey,
            Self::Platform | Self::Fido2Biometrics => AuthenticationMethod::Platform,
        }
    }
}

/// A user's FIDO credential as the customer API shows it (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FidoCredential {
    /// Its id on this server (`fido_…`).
    pub id: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub credential_type: FidoCredentialType,
    /// Its name.
    pub nickname: String,
    /// The authenticator model, when attestation told it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aaguid: Option<String>,
    /// The last signature counter seen.
    pub counter: u32,
    /// Whether the key may be backed up or synced (a passkey).
    pub backup_eligible: bool,
    /// Whether it is backed up or synced now.
    pub backup_state: bool,
    /// Whether it is discoverable (signs in without a user name).
    pub discoverable: bool,
    /// Set when its counter went backwards (a cloned authenticator): refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromised_at: Option<UnixSeconds>,
    /// When it was registered.
    pub created_at: UnixSeconds,
    /// When it last signed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<UnixSeconds>,
}

/// `GET /v1/users/{id}/fido-credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FidoCredentialList {
    /// The credentials, oldest first.
    pub credentials: Vec<FidoCredential>,
}

/// `PATCH /v1/users/{id}/fido-credentials/{credential}`: a new name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenameFidoCredential {
    /// The new name (1 to 64 characters).
    pub nickname: String,
}
