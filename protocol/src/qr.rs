//! QR code authentication: a web page shows a QR code; a trusted device scans it, the user picks
//! which of the users paired on the device answers, and approves or denies.
//!
//! The QR code carries a [`QrUri`]: the server's identity and a one-time, high-entropy
//! [`QrToken`] (256 bits), valid for a minute and renewed by the page while nobody has scanned
//! it. The device claims the session with a device-signed call naming the enrollments it holds
//! on that server; from then on the session belongs to that device alone. The server answers
//! with a signed [`QrSessionContext`] (the application, where the sign-in comes from, which of
//! the device's users may answer, a nonce), and the device answers with a [`QrResponse`] signed
//! by the chosen user's enrollment key, bound to the session, the nonce and the digest of the
//! context it showed.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use crate::authentication::{AccessContext, Decision, DeviceLocation};
use crate::canonical::Sha256Digest;
use crate::ids::{DeviceId, EnrollmentId, UserId};
use crate::pairing::{ApplicationInfo, DeviceSignals, DeviceVersions, ServerUrl};
use crate::time::UnixSeconds;

/// A QR session's id: `qrs_` and 32 hex digits.
pub use crate::ids::QrSessionId;

/// Scanned text is not a usable QR login URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrInputError {
    /// Not a `tessera://qr` URI with a server and a token.
    #[error("this QR code is not a Tessera sign-in code")]
    MalformedUri,
    /// The token is not 43 base64url characters (256 bits).
    #[error("the QR code's token is malformed")]
    MalformedToken,
    /// The server URL is not an absolute http(s) URL without credentials, query or fragment.
    #[error("the QR code's server URL is invalid: {0}")]
    InvalidServerUrl(&'static str),
}

impl From<crate::pairing::PairingInputError> for QrInputError {
    fn from(e: crate::pairing::PairingInputError) -> Self {
        match e {
            crate::pairing::PairingInputError::InvalidServerUrl(why) => {
                QrInputError::InvalidServerUrl(why)
            }
            _ => QrInputError::MalformedUri,
        }
    }
}

const TOKEN_CHARS: usize = 43;

/// The one-time secret in a QR code: 32 random bytes, base64url without padding. Its `Debug` is
/// redacted, the server stores only its digest, and its memory is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct QrToken(Zeroizing<String>);

impl fmt::Debug for QrToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QrToken(<redacted>)")
    }
}

impl QrToken {
    /// A fresh token from the OS RNG.
    pub fn generate() -> Self {
        use base64::Engine;
        use rand::RngCore;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()),
        ))
    }

    /// Parses a token as found in a QR URI.
    pub fn parse(text: &str) -> Result<Self, QrInputError> {
        if text.len() == TOKEN_CHARS
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Ok(Self(Zeroizing::new(text.to_string())))
        } else {
            Err(QrInputError::MalformedToken)
        }
    }

    /// The token text. A secret until the session is claimed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token text: what the server stores and looks up.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of_bytes(self.0.as_bytes())
    }
}

/// The content of a login QR code: `tessera://qr?server=<server URL>&token=<token>`.
#[derive(Clone, PartialEq, Eq)]
pub struct QrUri {
    /// The server that issued it.
    pub server: ServerUrl,
    /// The one-time token.
    pub token: QrToken,
}

impl fmt::Debug for QrUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QrUri({}, token <redacted>)", self.server)
    }
}

impl QrUri {
    /// Parses scanned text.
    pub fn parse(input: &str) -> Result<Self, QrInputError> {
        let url = Url::parse(input.trim()).map_err(|_| QrInputError::MalformedUri)?;
        if url.scheme() != crate::pairing::PairingUri::SCHEME || url.host_str() != Some("qr") {
            return Err(QrInputError::MalformedUri);
        }
        if url.path() != "" && url.path() != "/" {
            return Err(QrInputError::MalformedUri);
        }
        let mut server = None;
        let mut token = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "server" if server.is_none() => server = Some(ServerUrl::parse(&v)?),
                "token" if token.is_none() => token = Some(QrToken::parse(&v)?),
                _ => return Err(QrInputError::MalformedUri),
            }
        }
        match (server, token) {
            (Some(server), Some(token)) => Ok(Self { server, token }),
            _ => Err(QrInputError::MalformedUri),
        }
    }

    /// The URI text (what the QR code encodes). It contains the token: treat it as a secret.
    pub fn to_uri_string(&self) -> Zeroizing<String> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("server", self.server.as_str())
            .append_pair("token", self.token.expose())
            .finish();
        Zeroizing::new(format!(
            "{}://qr?{query}",
            crate::pairing::PairingUri::SCHEME
        ))
    }
}

/// Where a QR session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum QrSessionState {
    /// Shown, not scanned yet.
    Created,
    /// A device scanned it; its user has not answered yet.
    Scanned,
    /// The user approved; the server waits for the extra verification or the push approval
    /// the application's policy asks for.
    Verifying,
    /// Approved by a user.
    Approved,
    /// Denied (or reported as fraud) by the user, or the follow-up approval was denied.
    Denied,
    /// Nobody answered in time.
    Expired,
}

impl QrSessionState {
    /// The state's wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            QrSessionState::Created => "created",
            QrSessionState::Scanned => "scanned",
            QrSessionState::Verifying => "verifying",
            QrSessionState::Approved => "approved",
            QrSessionState::Denied => "denied",
            QrSessionState::Expired => "expired",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Self::Created),
            "scanned" => Some(Self::Scanned),
            "verifying" => Some(Self::Verifying),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }

    /// Whether the session can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Approved | Self::Denied | Self::Expired)
    }
}

impl fmt::Display for QrSessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One user of the scanning device who may answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrCandidate {
    /// The user.
    pub user_id: UserId,
    /// The user's enrollment on the scanning device.
    pub enrollment_id: EnrollmentId,
    /// A name to show, if the customer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// What the device shows after scanning, signed by a server key
/// ([`crate::envelope::MessageType::QrSessionContext`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrSessionContext {
    /// Protocol version.
    pub v: u32,
    /// The session.
    pub session_id: QrSessionId,
    /// The server's identity.
    pub issuer: ServerUrl,
    /// The application the sign-in is for.
    pub application: ApplicationInfo,
    /// Where the sign-in comes from (the browser showing the code).
    pub context: AccessContext,
    /// The device that claimed the session.
    pub device_id: DeviceId,
    /// Which of the device's users may answer (one when the session is for a given user).
    pub candidates: Vec<QrCandidate>,
    /// The server's nonce, echoed in the answer.
    pub nonce: String,
    /// When the server signed it.
    pub issued_at: UnixSeconds,
    /// When the session expires.
    pub expires_at: UnixSeconds,
}

/// The device's answer to a QR session, signed by the chosen user's possession key (or
/// user-verification key) ([`crate::envelope::MessageType::QrResponse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrResponse {
    /// Protocol version.
    pub v: u32,
    /// The session answered.
    pub session_id: QrSessionId,
    /// The chosen user's enrollment.
    pub enrollment_id: EnrollmentId,
    /// The context's nonce.
    pub session_nonce: String,
    /// The decision.
    pub decision: Decision,
    /// Digest of the canonical JSON of the [`AccessContext`] shown.
    pub context_digest: Sha256Digest,
    /// RFC 8176 methods the app reports.
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
    /// Apple App Attest: an assertion of the App Attest key the enrollment's pairing attested,
    /// as in [`crate::authentication::AuthenticationResponse::app_attest_assertion`], made over
    /// [`QrResponse::app_attest_client_data_hash`]. Absent from devices without App Attest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_attest_assertion: Option<String>,
}

impl QrResponse {
    /// The `clientDataHash` an App Attest assertion of this answer is made over: SHA-256 of the
    /// answer's canonical JSON without `app_attest_assertion` (the same rule as
    /// [`crate::authentication::AuthenticationResponse::app_attest_client_data_hash`]).
    pub fn app_attest_client_data_hash(
        &self,
    ) -> Result<Sha256Digest, crate::canonical::CanonicalError> {
        let mut without = self.clone();
        without.app_attest_assertion = None;
        Sha256Digest::of_canonical(&without)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips_and_is_strict() {
        let uri = QrUri {
            server: ServerUrl::parse("https://auth.example.com").unwrap(),
            token: QrToken::generate(),
        };
        let text = uri.to_uri_string();
        assert!(text.starts_with("tessera://qr?server=https%3A%2F%2Fauth.example.com&token="));
        assert_eq!(QrUri::parse(&text).unwrap(), uri);
        assert!(!format!("{uri:?}").contains(uri.token.expose()));
        for bad in [
            "",
            "hello",
            "https://auth.example.com/qr",
            "tessera://pair?server=https%3A%2F%2Fa.example&token=x",
            "tessera://qr?server=https%3A%2F%2Fa.example",
            "tessera://qr?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "tessera://qr?server=https%3A%2F%2Fa.example&token=short",
            "tessera://qr?server=https%3A%2F%2Fa.example&token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&extra=1",
            "tessera://qr?server=ftp%3A%2F%2Fa.example&token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(QrUri::parse(bad).is_err(), "{bad}");
        }
        assert!(
            QrUri::parse(
                "tessera://qr?server=https%3A%2F%2Fa.example&token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            )
            .is_ok()
        );
    }

    #[test]
    fn tokens_are_distinct_and_digests_stable() {
        let a = QrToken::generate();
        let b = QrToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.digest(), QrToken::parse(a.expose()).unwrap().digest());
    }
}
