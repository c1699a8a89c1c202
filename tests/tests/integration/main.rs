//! Tessera's end-to-end tests, as one test binary: the real server on loopback, driven by the
//! real device core, a customer backend and relying parties over HTTP. Each module is one area
//! (its tests are named `module::test::backend`, e.g. `ciba::slow_down_is_enforced::sqlite`);
//! the harness they share lives in `tests/src/lib.rs` (`tessera_tests`).
//!
//! `cargo test -p tessera-tests --test integration` runs them all; a filter picks an area, e.g.
//! `cargo test -p tessera-tests --test integration qr_browser::`.

mod additional_devices;
mod api_contract;
mod api_keys;
mod attestation;
mod attestation_assertions;
mod audit;
mod authentication;
mod bypass;
mod ciba;
mod client_address;
mod connection_metrics;
mod device_identity;
mod device_protocol;
mod device_versions;
mod events;
mod fido;
mod flow_qr;
mod flows;
mod hidden_fields;
mod hosted;
mod hosted_browser;
mod http_errors;
mod http_timeouts;
mod i18n;
mod key_rotation;
mod logs;
mod metrics_listener;
mod new_device_passcode;
mod number_matching;
mod oidc_redirect;
mod operations;
mod otp;
mod otp_backup;
mod outbound_calls;
mod pairing;
mod passkey;
mod policy;
mod prompt_browser;
mod push;
mod push_bombing;
mod push_limit_bursts;
mod push_providers;
mod qr;
mod qr_browser;
mod recovery_browser;
mod request_by_id;
mod retention;
mod reverse_proxy;
mod secrets;
mod small_pool;
mod store_transactions;
mod tokens;
mod web_view_browser;
mod webhooks;
