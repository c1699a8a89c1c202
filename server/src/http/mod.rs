//! The HTTP API: routes, shared state, the OpenAPI document, and per-request metrics and logs.

mod application_settings;
mod attestation_settings;
pub(crate) mod authentications;
mod backup;
mod bypass;
mod ciba_clients;
mod device;
pub(crate) mod errors;
mod events;
mod extract;
mod fido;
mod flow_browser;
mod flows;
mod oidc;
mod openapi;
mod ops;
mod otp;
mod pairing;
mod policies;
mod prompt_page;
mod qr;
mod qr_page;
mod request_id;
mod users;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use utoipa::OpenApi;

use crate::domain::{Ctx, ciba};
use crate::metrics::{RequestLabels, RouteLabels};
use openapi::Contract;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera server API",
        description = "Customer API (Authorization: Bearer <API key>) and device API of the Tessera authentication server. Every error is {\"error\": {\"code\", \"message\"}} with a stable code; see docs/protocol.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        users::create_user,
        users::get_user,
        users::remove_user,
        users::list_devices,
        users::remove_device,
        users::set_primary,
        users::update_user,
        pairing::start_pairing,
        pairing::relay_pairing,
        pairing::device_pairing,
        authentications::create_authentication,
        authentications::get_authentication,
        authentications::pending_requests,
        authentications::pending_request,
        authentications::submit_response,
        device::server_keys,
        device::enrollment_status,
        device::unpair,
        otp::verify,
        otp::reset_failures,
        otp::answer_authentication,
        otp::register_token,
        otp::list_tokens,
        otp::remove_token,
        backup::set_contacts,
        backup::get_contacts,
        backup::send_for_authentication,
        backup::create_challenge,
        backup::verify_challenge,
        qr::create_session,
        qr::get_session,
        qr::qr_png,
        qr::qr_svg,
        qr::claim,
        qr::submit_response,
        qr::browser_get,
        qr::browser_renew,
        qr_page::page,
        qr_page::script,
        device::update_push,
        ciba_clients::register,
        ciba_clients::list,
        ciba_clients::remove,
        ciba_clients::set_user_code,
        flows::create_flow,
        flows::get_flow,
        flows::act_on_flow,
        flows::flow_events,
        ops::healthz,
        ops::metrics,
        ops::livez,
        ops::readyz,
        application_settings::get_settings,
        application_settings::set_settings,
        events::create_webhook,
        events::list_webhooks,
        events::remove_webhook,
        events::webhook_deliveries,
        events::audit_page,
        events::audit_export,
        events::authentication_history,
        policies::save_policy,
        policies::current_policy,
        policies::policy_versions,
        policies::evaluate_policy,
        policies::set_groups,
        policies::get_groups,
        flow_browser::get_flow,
        flow_browser::act_on_flow,
        prompt_page::page,
        prompt_page::script,
        prompt_page::styles,
        attestation_settings::get_attestation_settings,
        attestation_settings::set_attestation_settings,
        ops::openapi,
        oidc::discovery::configuration,
        oidc::discovery::jwks,
        oidc::backchannel::backchannel_authentication,
        oidc::token::token,
        oidc::userinfo::userinfo,
        oidc::authorize::authorize_get,
        oidc::authorize::authorize_post,
        oidc::authorize::resume,
        bypass::set_bypass,
        bypass::get_bypass,
        bypass::clear_bypass,
        bypass::issue_recovery_codes,
        bypass::recovery_codes_status,
        bypass::revoke_recovery_codes,
        bypass::answer_with_recovery_code,
        fido::get_fido_settings,
        fido::set_fido_settings,
        fido::list_fido_credentials,
        fido::rename_fido_credential,
        fido::remove_fido_credential,
    ),
    modifiers(&Contract),
    tags(
        (name = "customer", description = "Called by the customer's backend with its API key"),
        (name = "device", description = "Called by the device core"),
        (name = "browser", description = "Called by the QR login page with its session's browser token"),
        (name = "operations", description = "Health, metrics, this document"),
        (name = "openid", description = "The OpenID Provider (CIBA): discovery, keys, backchannel authentication, token, userinfo; errors are OAuth error bodies")
    )
)]
struct ApiDoc;

/// The OpenAPI 3 document of the server's HTTP API, generated from the handlers.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The main listener's routes. `/metrics` is among them unless it has a listener of its own
/// ([`metrics_router`], `--metrics-listen`); then the main listener answers it 404.
pub(crate) fn router(state: Ctx) -> Router {
    let max_body = state.config.max_body_bytes;
    let request_timeout = request_timeout(&state);
    let metrics_here = state.config.metrics_listen.is_none();
    let router = Router::new()
        .route("/v1/users", post(users::create_user))
        .route(
            "/v1/users/{user_id}",
            get(users::get_user)
                .delete(users::remove_user)
                .patch(users::update_user),
        )
        .route("/v1/users/{user_id}/devices", get(users::list_devices))
        .route(
            "/v1/users/{user_id}/devices/{enrollment_id}",
            delete(users::remove_device),
        )
        .route(
            "/v1/users/{user_id}/devices/{enrollment_id}/primary",
            put(users::set_primary),
        )
        .route("/v1/users/{user_id}/pairings", post(pairing::start_pairing))
        .route(
            "/v1/users/{user_id}/relay-pairings",
            post(pairing::relay_pairing),
        )
        .route("/v1/device/pairings", post(pairing::device_pairing))
        .route("/v1/flows", post(flows::create_flow))
        .route(
            "/v1/flows/{flow_id}",
            get(flows::get_flow).post(flows::act_on_flow),
        )
        .route("/v1/flows/{flow_id}/events", get(flows::flow_events))
        .route(
            "/v1/users/{user_id}/authentications",
            post(authentications::create_authentication).get(events::authentication_history),
        )
        .route(
            "/v1/authentications/{authentication_id}",
            get(authentications::get_authentication),
        )
        .route(
            "/v1/device/enrollments/{enrollment_id}/requests",
            get(authentications::pending_requests),
        )
        .route(
            "/v1/device/enrollments/{enrollment_id}/requests/{authentication_id}",
            get(authentications::pending_request),
        )
        .route(
            "/v1/device/authentications/{authentication_id}/response",
            post(authentications::submit_response),
        )
        .route("/v1/server-keys", get(device::server_keys))
        .route(
            "/v1/device/enrollments/{enrollment_id}",
            get(device::enrollment_status).delete(device::unpair),
        )
        .route(
            "/v1/device/enrollments/{enrollment_id}/push",
            put(device::update_push),
        )
        .route("/v1/users/{user_id}/otp/verify", post(otp::verify))
        .route(
            "/v1/users/{user_id}/otp/failures",
            delete(otp::reset_failures),
        )
        .route(
            "/v1/authentications/{authentication_id}/otp",
            post(otp::answer_authentication),
        )
        .route(
            "/v1/authentications/{authentication_id}/backup-codes",
            post(backup::send_for_authentication),
        )
        .route(
            "/v1/users/{user_id}/otp-tokens",
            post(otp::register_token).get(otp::list_tokens),
        )
        .route(
            "/v1/users/{user_id}/otp-tokens/{token_id}",
            delete(otp::remove_token),
        )
        .route(
            "/v1/users/{user_id}/backup-contacts",
            put(backup::set_contacts).get(backup::get_contacts),
        )
        .route(
            "/v1/users/{user_id}/otp-challenges",
            post(backup::create_challenge),
        )
        .route(
            "/v1/otp-challenges/{challenge_id}/verify",
            post(backup::verify_challenge),
        )
        .route("/v1/qr-sessions", post(qr::create_session))
        .route("/v1/qr-sessions/{session_id}", get(qr::get_session))
        .route("/v1/qr-sessions/{session_id}/qr.png", get(qr::qr_png))
        .route("/v1/qr-sessions/{session_id}/qr.svg", get(qr::qr_svg))
        .route("/v1/device/qr-sessions/claim", post(qr::claim))
        .route(
            "/v1/device/qr-sessions/{session_id}/response",
            post(qr::submit_response),
        )
        .route("/v1/qr-browser", get(qr::browser_get))
        .route("/v1/qr-browser/renew", post(qr::browser_renew))
        .route("/qr-login", get(qr_page::page))
        .route("/qr-login.js", get(qr_page::script))
        .route(
            "/v1/ciba/clients",
            post(ciba_clients::register).get(ciba_clients::list),
        )
        .route("/v1/ciba/clients/{client_id}", delete(ciba_clients::remove))
        .route(
            "/v1/users/{user_id}/ciba-user-code",
            put(ciba_clients::set_user_code),
        )
        .route(
            "/.well-known/openid-configuration",
            get(oidc::discovery::configuration),
        )
        .route(
            ciba::BACKCHANNEL_PATH,
            post(oidc::backchannel::backchannel_authentication),
        )
        .route(ciba::TOKEN_PATH, post(oidc::token::token))
        .route(ciba::JWKS_PATH, get(oidc::discovery::jwks))
        .route(ciba::USERINFO_PATH, get(oidc::userinfo::userinfo))
        .route(
            ciba::authorize::AUTHORIZE_PATH,
            get(oidc::authorize::authorize_get).post(oidc::authorize::authorize_post),
        )
        .route(ciba::authorize::RESUME_PATH, get(oidc::authorize::resume))
        .route(
            "/v1/application/authentication-settings",
            get(application_settings::get_settings).put(application_settings::set_settings),
        )
        .route(
            "/v1/webhooks",
            post(events::create_webhook).get(events::list_webhooks),
        )
        .route("/v1/webhooks/{endpoint_id}", delete(events::remove_webhook))
        .route(
            "/v1/webhooks/{endpoint_id}/deliveries",
            get(events::webhook_deliveries),
        )
        .route("/v1/audit", get(events::audit_page))
        .route("/v1/audit/export", get(events::audit_export))
        .route(
            "/v1/flow-browser",
            get(flow_browser::get_flow).post(flow_browser::act_on_flow),
        )
        .route("/prompt", get(prompt_page::page))
        .route("/prompt.js", get(prompt_page::script))
        .route("/prompt.css", get(prompt_page::styles))
        .route("/healthz", get(ops::healthz))
        .route("/livez", get(ops::livez))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .route(
            "/v1/policies",
            get(policies::current_policy).put(policies::save_policy),
        )
        .route("/v1/policies/versions", get(policies::policy_versions))
        .route("/v1/policies/evaluate", post(policies::evaluate_policy))
        .route(
            "/v1/users/{user_id}/groups",
            get(policies::get_groups).put(policies::set_groups),
        )
        .route(
            "/v1/application/attestation-settings",
            get(attestation_settings::get_attestation_settings)
                .put(attestation_settings::set_attestation_settings),
        )
        .route(
            "/v1/users/{user_id}/bypass",
            put(bypass::set_bypass)
                .get(bypass::get_bypass)
                .delete(bypass::clear_bypass),
        )
        .route(
            "/v1/users/{user_id}/recovery-codes",
            post(bypass::issue_recovery_codes)
                .get(bypass::recovery_codes_status)
                .delete(bypass::revoke_recovery_codes),
        )
        .route(
            "/v1/authentications/{authentication_id}/recovery-code",
            post(bypass::answer_with_recovery_code),
        )
        .route(
            "/v1/application/fido-settings",
            get(fido::get_fido_settings).put(fido::set_fido_settings),
        )
        .route(
            "/v1/users/{user_id}/fido-credentials",
            get(fido::list_fido_credentials),
        )
        .route(
            "/v1/users/{user_id}/fido-credentials/{credential_id}",
            axum::routing::patch(fido::rename_fido_credential).delete(fido::remove_fido_credential),
        );
    let router = if metrics_here {
        router.route("/metrics", get(ops::metrics))
    } else {
        router
    };
    router
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(request_timeout)
        .layer(axum::middleware::from_fn(errors::json_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            announce_key_set,
        ))
        // Request ids (outermost, so every answer and log line has one): a malformed caller's
        // id is dropped, a missing one generated, the id echoed and logged.
        .layer(axum::middleware::from_fn(request_id::in_span))
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            request_id::GenerateRequestId,
        ))
        .layer(axum::middleware::from_fn(request_id::drop_malformed))
        .with_state(state)
}

/// The routes of the metrics listener (`--metrics-listen`): `/metrics` only.
pub(crate) fn metrics_router(state: Ctx) -> Router {
    let request_timeout = request_timeout(&state);
    Router::new()
        .route("/metrics", get(ops::metrics))
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(request_timeout)
        .layer(axum::middleware::from_fn(errors::json_errors))
        .with_state(state)
}

/// Answers `408` to a request not done within [`crate::ServerConfig::http_request_timeout`],
/// from its head to its answer's head (reading its body included), so a body trickled in byte
/// by byte cannot hold a connection; the answer's body streamed afterwards is not limited. The
/// connection is then closed, its body unread.
fn request_timeout(state: &Ctx) -> tower_http::timeout::TimeoutLayer {
    tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        state.config.http_request_timeout,
    )
}

/// Tells devices, on every device-API answer, which key set is current
/// (`tessera-key-set-sequence`), so they refresh their pins at their next signed exchange.
async fn announce_key_set(State(state): State<Ctx>, request: Request, next: Next) -> Response {
    let device_api = request.uri().path().starts_with("/v1/device/");
    let mut response = next.run(request).await;
    if device_api {
        response.headers_mut().insert(
            tessera_protocol::key_set::KEY_SET_SEQUENCE_HEADER,
            axum::http::HeaderValue::from(state.keys.sequence()),
        );
    }
    response
}

/// The request method as metrics and logs show it: one of the standard methods, else `other`.
/// Any token is a valid method to the HTTP parser, so a client inventing a new one on every
/// request would otherwise add a new `requests` series (kept for the process's life) each time.
fn method_label(method: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method.as_str())
        .unwrap_or("other")
}

/// Counts, times and logs every request by its route template. Logs carry the method, the
/// template (never the concrete path, which may name a user), the client address (resolved
/// once here, through trusted proxies, for every later use), the status and the duration: no
/// header, body or query string.
async fn observe(State(state): State<Ctx>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let mut request = request;
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|axum::extract::ConnectInfo(peer)| {
            extract::resolve_client_ip(
                peer.ip(),
                request.headers(),
                &state.config.trusted_proxies,
                state.config.trusted_proxy_header,
            )
        });
    if let Some(client) = client {
        request
            .extensions_mut()
            .insert(extract::ResolvedClient(client));
    }
    let client = client.map(|ip| ip.to_string()).unwrap_or_default();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.to_string(),
            status,
        })
        .inc();
    state
        .metrics
        .durations
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "tessera_server::http",
        %method,
        %route,
        %client,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::method_label;
    use axum::http::Method;

    #[test]
    fn only_standard_methods_are_their_own_label() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ] {
            assert_eq!(method_label(&method), method.as_str());
        }
        for custom in ["AAAA1", "PROPFIND", "get", "GETX", "QUERY"] {
            let method = Method::from_bytes(custom.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{custom}");
        }
    }
}
