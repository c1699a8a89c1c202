//! Tessera's wire protocol: every message exchanged between the device core, the server and the
//! customer's backend as a typed struct, the signed envelope that carries them, the canonical
//! encoding used for anything that is hashed or signed, stable error codes, and test vectors.
//!
//! Nothing in this crate performs I/O. It is shared by `tessera-core` (the device SDK) and
//! `tessera-server`, so both sides agree byte for byte on what is signed.
//!
//! # Layout
//! - [`canonical`]: RFC 8785 JSON canonicalization and SHA-256 digests over it.
//! - [`jwk`]: P-256 public keys as JWKs (RFC 7517), validated on parse, with RFC 7638 thumbprints.
//! - [`envelope`]: the signed envelope, a compact JWS (RFC 7515) with `ES256` and a `kid`.
//! - [`pairing`]: pairing codes, pairing URIs, the device registration, the mobile payload and
//!   the server's signed pairing reply (the server payload).
//! - [`authentication`]: authentication requests (approval, transaction with dynamic parameters,
//!   silent verification) and the device's signed answers.
//! - [`qr`]: QR login: the QR URI and its one-time token, the signed session context the device
//!   shows, and the device's signed answer.
//! - [`flows`]: authentication flows, the state machine a customer backend steps through.
//! - [`ciba`]: OpenID CIBA client registration and the relying party's OAuth messages.
//! - [`device_auth`]: device-authenticated API calls (a request signed by the possession key).
//! - [`api`]: request and response bodies of the customer API and the device API.
//! - [`error`]: stable error codes and the JSON error body every API uses.
//! - [`ids`]: typed identifiers.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Implements the OpenAPI schema of a type that travels as a JSON string (or, with `object`, as
/// an object described in prose).
macro_rules! openapi_schema {
    ($ty:ty, string, $desc:literal) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($desc))
                    .into()
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
    ($ty:ty, string, $desc:literal, pattern = $pattern:expr, min_length = $min:expr, max_length = $max:expr) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($desc))
                    .pattern(Some($pattern))
                    .min_length(Some($min))
                    .max_length(Some($max))
                    .into()
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
    ($ty:ty, object, $desc:literal) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Object)
                    .description(Some($desc))
                    .into()
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
}
pub(crate) use openapi_schema;

pub mod api;
pub mod authentication;
pub mod bypass;
pub mod canonical;
pub mod ciba;
pub mod device_auth;
pub mod display;
pub mod envelope;
pub mod error;
pub mod events;
pub mod fido;
pub mod flows;
pub mod ids;
pub mod jwk;
pub mod key_set;
pub mod otp;
pub mod pairing;
pub mod policy;
pub mod qr;
pub mod time;

/// Version of the wire protocol carried inside every signed payload (`"v"`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest signed envelope (compact JWS) either side accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 32 * 1024;
