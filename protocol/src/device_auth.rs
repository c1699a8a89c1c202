//! Device-authenticated API calls.
//!
//! A device proves which enrollment it speaks for by signing each call with that enrollment's
//! possession key. The signed [`DeviceRequestClaims`] travel in the `Authorization` header as
//! `Tessera-Device <compact JWS>` ([`crate::envelope::MessageType::DeviceRequest`]) and bind the
//! method, the path, a digest of the body, the time, and a nonce the server accepts only once.

use serde::{Deserialize, Serialize};

use crate::canonical::Sha256Digest;
use crate::ids::EnrollmentId;
use crate::time::UnixSeconds;

/// The `Authorization` scheme of device-authenticated calls.
pub const AUTHORIZATION_SCHEME: &str = "Tessera-Device";

/// How long a device-signed call stays acceptable, in seconds (either side of the server clock).
pub const DEVICE_REQUEST_WINDOW_SECONDS: i64 = 300;

/// What a device signs for one API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequestClaims {
    /// Protocol version.
    pub v: u32,
    /// The enrollment the device speaks for.
    pub enrollment_id: EnrollmentId,
    /// HTTP method, upper case.
    pub method: String,
    /// Request path, without scheme, host or query.
    pub path: String,
    /// SHA-256 of the exact body bytes (of the empty string when there is no body).
    pub body_digest: Sha256Digest,
    /// When the device signed it.
    pub issued_at: UnixSeconds,
    /// 128 random bits, base64url; the server accepts each nonce once.
    pub nonce: String,
}
