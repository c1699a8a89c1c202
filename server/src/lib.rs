//! The Tessera authentication server.
//!
//! An axum service over SQLite (the embedded default) or PostgreSQL (scale-out: any number of
//! instances on one database; nothing that matters lives in one process's memory).
//!
//! - **Customer API** (`/v1/users/...`, API key): users, pairing codes, relay pairing, devices.
//! - **Device API** (`/v1/device/...`, `/v1/server-keys`): pairing with a code, device-signed
//!   calls.
//! - **OpenID Provider** (`/.well-known/openid-configuration`, `/oidc/...`): CIBA with the
//!   user's paired device as the authentication device.
//! - **Operations**: `/healthz`, `/metrics` (Prometheus), `/openapi.json`.
//!
//! Inside, the layers are modules (see `docs/architecture.md`): [`http`](crate) handlers parse
//! and call one `domain` operation; `domain` holds the rules and announces changes; `store` is
//! SQL only; `delivery` sends pushes and passcodes through traits the domain owns.
//!
//! [`Server::start`] runs it in-process (the examples and end-to-end tests do); the
//! `tessera-server` binary wraps it with a command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod clock;
mod config;
pub mod config_file;
mod delivery;
pub(crate) mod domain;
mod error;
mod http;
pub mod i18n;
pub mod ip_table;
mod keys;
mod metrics;
/// The OpenID Provider's administration: CIBA client registration and ID token key rotation
/// (the rules live in the domain layer; the admin command line and tests reach them here).
/// The OpenID Provider's administration: client registration and ID-token key rotation for the
/// command line (the rules live in the domain layer).
pub mod oidc {
    /// CIBA client registration.
    pub mod clients {
        use tessera_protocol::ciba::{CibaClientRegistered, RegisterCibaClient};
        use tessera_protocol::ids::ApplicationId;

        use crate::{Database, ServerConfig, ServerError};

        /// Validates and stores a registration for `app`. The secret (secret-based methods) is
        /// returned once; only its digest is kept.
        pub async fn register(
            db: &Database,
            config: &ServerConfig,
            app: &ApplicationId,
            request: RegisterCibaClient,
            now: i64,
        ) -> Result<CibaClientRegistered, ServerError> {
            crate::domain::ciba::clients::register(db, config, app, request, now)
                .await
                .map_err(|e| crate::error::admin_error(e, "application"))
        }
    }

    /// ID-token signing keys.
    pub mod keys {
        use crate::{Database, ServerError};

        /// Adds a new signing key and retires the current one (still published until its
        /// tokens expire). Returns the new key's id.
        pub async fn rotate(
            db: &Database,
            now: i64,
            max_token_ttl: i64,
        ) -> Result<String, ServerError> {
            crate::domain::ciba::keys::rotate(db, now, max_token_ttl)
                .await
                .map_err(|e| crate::error::admin_error(e, "signing key"))
        }
    }
}
/// The pure policy evaluator, for benchmarks and tools: [`policy::CompiledPolicy::compile`]
/// validates a policy document, [`policy::CompiledPolicy::evaluate`] decides for inputs. The
/// server gathers the inputs itself on every path that authenticates (`docs/policy.md`).
pub mod policy {
    pub use crate::domain::policy::evaluate::{
        AccessingFacts, CompiledPolicy, PolicyDecision, PolicyError, PolicyInputs, distance_km,
        parse_version,
    };
}

/// Platform attestation: the verifiers of Android key attestation chains and Apple App Attest
/// objects (the rules live in the domain layer; benches and tools reach them here).
pub mod attestation {
    pub use crate::domain::attestation::android::verify_registration_keys as verify_android_registration_keys;
    pub use crate::domain::attestation::apple::{
        ParsedAssertion as ParsedAppAttestAssertion, VerifiedAppAttest,
        VerifiedAssertion as VerifiedAppAttestAssertion, app_id_hash,
        verify_assertion as verify_app_attest_assertion, verify_attestation as verify_app_attest,
    };
    pub use crate::domain::attestation::{
        AttestationError, AttestationTrust, TrustConfigError, enrollment_attested,
        meets_requirements, parse_revocation_status, shortfall,
    };
}
/// FIDO2 / WebAuthn verification as the flows run it, for benchmarks.
pub mod fido {
    pub use crate::domain::fido::authentication::{AssertionCheck, AssertionCheckError};
}
pub mod qr_render;
pub mod secrets;
mod server;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    CommitDurability, DEFAULT_HTTP_HEADER_TIMEOUT, DEFAULT_HTTP_REQUEST_TIMEOUT, ServerConfig,
    SmtpConfig, TlsFiles, TrustedProxyHeader, default_max_connections,
};
pub use delivery::push::{ApnsEnvironment, PushCredentialsError};
pub use error::ServerError;
pub use http::openapi_document;
pub use ip_table::IpTable;
pub use secrets::{KeyEncryptionKey, MasterKey, SecretsError};
pub use server::{RunningServer, Server};
pub use store::{Database, StoreError};
