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
//! [`Server::start`] runs it in-process (the examples and end-to-end tests do); the
//! `tessera-server` binary wraps it with a command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod api;
mod config;
pub mod db;
mod error;
mod fallback;
pub mod ip_table;
mod keys;
mod metrics;
pub mod notify;
pub mod oidc;
mod push;
pub mod qr_render;
mod server;

pub use api::openapi_document;
pub use config::ServerConfig;
pub use db::Database;
pub use error::ServerError;
pub use ip_table::IpTable;
pub use notify::SmtpConfig;
pub use push::{ApnsEnvironment, PushCredentialsError};
pub use server::{RunningServer, Server};
