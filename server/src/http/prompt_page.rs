//! The hosted prompt page (`/prompt#<browser token>`), its script (`/prompt.js`) and styles
//! (`/prompt.css`): static files compiled into the server, served with a strict Content
//! Security Policy (no inline script, nothing from elsewhere, no framing). The page's first
//! texts are in the language of the browser's `Accept-Language` (a JSON data block, escaped);
//! the flow's own language (`ui_locales`) arrives with its state. See docs/flows.md.

use axum::http::header::{
    ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::i18n::Catalog;

const PAGE: &str = include_str!("../../assets/prompt.html");
const SCRIPT: &str = include_str!("../../assets/prompt.js");
const STYLES: &str = include_str!("../../assets/prompt.css");

/// What the page may load: its own script and styles, data-URL images (the pairing QR code),
/// calls to this server; no framing, no forms posting elsewhere, no `<base>`.
pub(crate) const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                                 img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                                 form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: String) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

/// JSON that is safe inside a `<script type="application/json">` block: no `<`, `>` or `&`.
fn json_for_html(value: &impl serde::Serialize) -> Option<String> {
    let json = serde_json::to_string(value).ok()?;
    Some(
        json.replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026"),
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The hosted prompt page.
#[utoipa::path(get, path = "/prompt", tag = "browser",
    operation_id = "prompt_page",
    responses((status = 200, description = "The hosted prompt page; the browser token follows in the URL fragment", content_type = "text/html")))]
pub(crate) async fn page(headers: HeaderMap) -> Response {
    let Ok(catalog) = Catalog::shipped() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let accept = headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
    let lang = catalog.negotiate(&[], accept);
    let texts = catalog.texts(&lang).ok();
    let (Some(texts), Some(json)) = (
        texts.as_ref(),
        texts.as_ref().and_then(|t| json_for_html(&(&lang, t))),
    ) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let text = |id: &str| html_escape(texts.get(id).map(String::as_str).unwrap_or(""));
    let body = PAGE
        .replace("{{LANG}}", &html_escape(&lang))
        .replace("{{TITLE}}", &text("page-title"))
        .replace("{{LOADING}}", &text("loading"))
        .replace("{{TEXTS}}", &json);
    asset("text/html; charset=utf-8", body)
}

/// The page's script.
#[utoipa::path(get, path = "/prompt.js", tag = "browser",
    operation_id = "prompt_script",
    responses((status = 200, description = "The hosted prompt's script", content_type = "text/javascript")))]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT.to_string())
}

/// The page's styles.
#[utoipa::path(get, path = "/prompt.css", tag = "browser",
    operation_id = "prompt_styles",
    responses((status = 200, description = "The hosted prompt's styles", content_type = "text/css")))]
pub(crate) async fn styles() -> Response {
    asset("text/css; charset=utf-8", STYLES.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_close_its_script_block() {
        let json = json_for_html(&"</script><b>&").unwrap();
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "</script><b>&");
    }
}
