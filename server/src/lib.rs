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
mod delivery;
pub(crate) mod domain;
mod error;
mod http;
pub mod ip_table;
mod keys;
mod metrics;
/// The OpenID Provider's administration: CIBA client registration and ID token key rotation
/// (the rules live in the domain layer; the admin command line and tests reach them here).
pub mod oidc {
    pub use crate::domain::ciba::{clients, keys};
}
pub mod qr_render;
mod server;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ServerConfig, SmtpConfig};
pub use delivery::push::{ApnsEnvironment, PushCredentialsError};
pub use error::ServerError;
pub use http::openapi_document;
pub use ip_table::IpTable;
pub use server::{RunningServer, Server};
pub use store::{Database, StoreError};
