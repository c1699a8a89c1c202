//! `GET`/`POST /oidc/authorize` (redirect MFA) and `GET /oidc/authorize/resume`: read the
//! parameters, the binding cookie, the browser's address and user agent; call
//! `domain::ciba::authorize`; answer a `303 See Other` or a plain error page.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::Ctx;
use crate::domain::ciba::authorize::{
    self, AuthorizeAnswer, Browser, BrowserCookie, PageError, PageKind,
};
use crate::http::extract::ClientAddr;

/// The longest query or form accepted, in bytes.
const MAX_PARAMS_BYTES: usize = 16 * 1024;

fn parse_params(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

fn browser(ctx: &Ctx, headers: &HeaderMap, ip: String) -> Browser {
    let (name, _) = authorize::cookie_name(ctx);
    Browser {
        cookie: cookie_value(headers, name),
        ip: Some(ip).filter(|ip| ip != "unknown"),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// Headers every answer of these endpoints carries: never cached, never leaking the URL (it
/// holds the code) to the next page.
fn private(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn see_other(location: &str) -> Response {
    let mut response = match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => error_page(&PageError {
            kind: PageKind::Internal,
            message: "Internal error.".into(),
        }),
    };
    private(&mut response);
    response
}

fn set_cookie(cookie: &BrowserCookie) -> Option<HeaderValue> {
    let secure = if cookie.secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        cookie.name, cookie.value, cookie.max_age
    ))
    .ok()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The plain error page: no script, no external asset, not framable.
fn error_page(error: &PageError) -> Response {
    let status = match error.kind {
        PageKind::Invalid => StatusCode::BAD_REQUEST,
        PageKind::OtherBrowser => StatusCode::FORBIDDEN,
        PageKind::NotNow => StatusCode::CONFLICT,
        PageKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        PageKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign-in error</title></head>\
         <body><main><h1>Sign-in error</h1><p>{}</p></main></body></html>\n",
        escape(&error.message)
    );
    let mut response = (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response();
    private(&mut response);
    response
}

async fn answer(ctx: &Ctx, params: Vec<(String, String)>, browser: Browser) -> Response {
    match authorize::authorize(ctx, params, browser).await {
        Ok(AuthorizeAnswer::Prompt { location, cookie }) => {
            let mut response = see_other(&location);
            if let Some(value) = set_cookie(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Ok(AuthorizeAnswer::Redirect { location }) => see_other(&location),
        Err(error) => error_page(&error),
    }
}

fn too_large() -> Response {
    error_page(&PageError {
        kind: PageKind::Invalid,
        message: "The request is too large.".into(),
    })
}

/// `GET /oidc/authorize`.
#[utoipa::path(get, path = "/oidc/authorize", tag = "openid",
    operation_id = "oidc_authorize",
    params(
        ("client_id" = String, Query, description = "The registered client"),
        ("response_type" = String, Query, description = "`code`"),
        ("scope" = String, Query, description = "Contains `openid`"),
        ("request" = String, Query, description = "The request object: a JWT signed by the client (its registered key, or HMAC with its secret) holding `redirect_uri`, `state`, `nonce`, `code_challenge` (S256), `login_hint` and the other parameters"),
        ("redirect_uri" = Option<String>, Query, description = "If given, equal to the request object's"),
        ("state" = Option<String>, Query, description = "If given, equal to the request object's"),
    ),
    responses(
        (status = 303, description = "To the hosted prompt (with the `__Host-tessera-authorize` cookie), or back to the registered redirect URI with `error`, `error_description`, `state` and `iss`"),
        (status = 400, description = "A request that cannot be sent back to the client (unknown client, unregistered redirect URI, unsigned request object): an HTML page", content_type = "text/html"),
        (status = 503, description = "The service is unavailable: an HTML page", content_type = "text/html")))]
pub(crate) async fn authorize_get(
    State(ctx): State<Ctx>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > MAX_PARAMS_BYTES {
        return too_large();
    }
    let browser = browser(&ctx, &headers, ip);
    answer(&ctx, parse_params(query.as_bytes()), browser).await
}

/// `POST /oidc/authorize` (form, OpenID Connect Core §3.1.2.1).
#[utoipa::path(post, path = "/oidc/authorize", tag = "openid",
    operation_id = "oidc_authorize_form",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "The parameters of `GET /oidc/authorize` as a form"),
    responses(
        (status = 303, description = "To the hosted prompt (with the `__Host-tessera-authorize` cookie), or back to the registered redirect URI with `error`, `error_description`, `state` and `iss`"),
        (status = 400, description = "A request that cannot be sent back to the client (unknown client, unregistered redirect URI, unsigned request object): an HTML page", content_type = "text/html"),
        (status = 503, description = "The service is unavailable: an HTML page", content_type = "text/html")))]
pub(crate) async fn authorize_post(
    State(ctx): State<Ctx>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return error_page(&PageError {
            kind: PageKind::Invalid,
            message: "The body must be application/x-www-form-urlencoded.".into(),
        });
    }
    if body.len() > MAX_PARAMS_BYTES {
        return too_large();
    }
    let browser = browser(&ctx, &headers, ip);
    answer(&ctx, parse_params(&body), browser).await
}

/// `GET /oidc/authorize/resume?request=ID`: where the prompt sends the browser when the flow
/// has ended.
#[utoipa::path(get, path = "/oidc/authorize/resume", tag = "openid",
    operation_id = "oidc_authorize_resume",
    params(("request" = String, Query, description = "The authorization request's id (in the flow's return URL)")),
    responses(
        (status = 303, description = "Back to the client's redirect URI with `code`, `state` and `iss`, or with `access_denied`"),
        (status = 400, description = "Unknown request: an HTML page", content_type = "text/html"),
        (status = 403, description = "Another browser than the one the sign-in started in: an HTML page", content_type = "text/html"),
        (status = 409, description = "The sign-in is not over, or was already resumed: an HTML page", content_type = "text/html"),
        (status = 503, description = "The service is unavailable: an HTML page", content_type = "text/html")))]
pub(crate) async fn resume(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > MAX_PARAMS_BYTES {
        return too_large();
    }
    let params = parse_params(query.as_bytes());
    let request = params
        .iter()
        .find(|(k, _)| k == "request")
        .map(|(_, v)| v.as_str());
    let (name, _) = authorize::cookie_name(&ctx);
    let cookie = cookie_value(&headers, name);
    match authorize::resume(&ctx, request, cookie.as_deref()).await {
        Ok(location) => see_other(&location),
        Err(error) => error_page(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-tessera-authorize=v2; x-tessera-authorize=3"),
        );
        assert_eq!(
            cookie_value(&headers, "__Host-tessera-authorize").as_deref(),
            Some("v2")
        );
        assert_eq!(cookie_value(&headers, "tessera-authorize"), None);
    }

    #[test]
    fn pages_escape_their_message() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
