//! The QR login page (`/qr-login#<browser token>`) and its script (`/qr-login.js`): static
//! files compiled into the server, served with a strict Content Security Policy. The page loads
//! nothing from elsewhere; the browser token stays in the URL fragment and travels only in the
//! `Authorization: TesseraBrowser` header of the page's API calls. See docs/qr-login.md.

use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../../assets/qr-login.html");
const SCRIPT: &str = include_str!("../../assets/qr-login.js");

/// What the page may load: its own script, inline styles, inline SVG, calls to this server.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                      frame-ancestors 'self'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        body,
    )
}

/// The QR login page.
#[utoipa::path(get, path = "/qr-login", tag = "browser",
    responses((status = 200, description = "The QR login page; the browser token follows in the URL fragment", content_type = "text/html")))]
pub(crate) async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// The page's script, also for customer pages embedding the flow (`window.TesseraQrLogin`).
#[utoipa::path(get, path = "/qr-login.js", tag = "browser",
    responses((status = 200, description = "The login page's script", content_type = "text/javascript")))]
pub(crate) async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
