//! Request extractors: JSON bodies with typed errors, API-key authentication, the client address.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tessera_protocol::error::ErrorCode;

use super::errors::ApiError;
use crate::config::TrustedProxyHeader;
use crate::domain::Ctx;
use crate::domain::api_keys;
use crate::domain::applications::Application;

/// A JSON body: `application/json` required (415), size-limited (413), syntax errors are
/// `malformed_json`, shape errors `invalid_request`.
pub(crate) struct ApiJson<T>(pub T);

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::new(ErrorCode::InvalidRequest, "request body could not be read")
        }
    })
}

/// Parses a JSON request body. Every body the API takes is a JSON object: anything else (an
/// array, which serde would otherwise read as a struct's fields in order, a string, a number,
/// `null`) is `invalid_request`; text that is not JSON at all is `malformed_json`.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "invalid request: the body must be a JSON object",
            )),
            Err(_) => Err(ApiError::new(
                ErrorCode::MalformedJson,
                "request body is not valid JSON",
            )),
        };
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(ErrorCode::MalformedJson, "request body is not valid JSON")
            }
            Category::Data => {
                // serde names the field and the expectation, never the submitted value.
                let reason = e.to_string();
                let reason = reason
                    .split(" at line")
                    .next()
                    .unwrap_or("invalid body")
                    .to_string();
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid request: {reason}"),
                )
            }
        }
    })
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be absent (an empty body reads as `T::default()`).
pub(crate) struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let has_type = req.headers().contains_key(CONTENT_TYPE);
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                if has_type {
                    "the body must be application/json"
                } else {
                    "a body needs Content-Type: application/json"
                },
            ));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// The application an API key authenticates (`Authorization: Bearer <key>`).
pub(crate) struct AppAuth(pub Application);

impl<S> FromRequestParts<S> for AppAuth
where
    S: Send + Sync,
    Ctx: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ctx = Ctx::from_ref(state);
        let presented = presented_key(parts);
        Ok(AppAuth(api_keys::authenticate(&ctx, &presented).await?))
    }
}

/// The API key a customer call presents (`Authorization: Bearer …`), not yet checked: for the
/// calls that check it in the statement that reads what they ask for (`domain::api_keys`).
pub(crate) struct ApiKey(pub api_keys::PresentedKey);

impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiKey(presented_key(parts)))
    }
}

/// What a call that checks its API key in its own read (an [`ApiKey`] call) parsed of its
/// request (its body, query or path), or, when that did not parse, its refusal once the key is
/// found good: every customer call answers 401 before 400.
pub(crate) async fn parsed_or_refused<T>(
    ctx: &Ctx,
    key: &api_keys::PresentedKey,
    parsed: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match parsed {
        Ok(parsed) => Ok(parsed),
        Err(bad_request) => {
            api_keys::authenticate(ctx, key).await?;
            Err(bad_request)
        }
    }
}

/// The bearer token of `parts` (at most 256 bytes, not empty) and the client's address.
fn presented_key(parts: &Parts) -> api_keys::PresentedKey {
    let client_ip = parts
        .extensions
        .get::<ResolvedClient>()
        .map(|ResolvedClient(ip)| ip.to_string());
    let key = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256);
    api_keys::PresentedKey::new(key, client_ip)
}

/// The client's address as every part of the server uses it: the pairing throttle, the
/// device addresses reported in authentication attributes and device-verification questions,
/// and the request log line. Resolved once per request by [`resolve_client_ip`] (see there) and
/// kept in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResolvedClient(pub IpAddr);

/// The client's address (see [`ResolvedClient`]), as text.
pub(crate) struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let addr = match parts.extensions.get::<ResolvedClient>() {
            Some(ResolvedClient(ip)) => ip.to_string(),
            // Not resolved by the router's middleware (only in unit-level uses): the peer.
            None => parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip().to_canonical().to_string())
                .unwrap_or_else(|| "unknown".to_string()),
        };
        Ok(ClientAddr(addr))
    }
}

/// Longest forwarding header considered, in bytes (all values of the header together).
const MAX_FORWARDING_HEADER_BYTES: usize = 8 * 1024;
/// Most hops considered in a forwarding chain.
const MAX_FORWARDING_HOPS: usize = 64;

/// Why a trusted proxy's forwarding header could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForwardingHeaderError {
    /// Not visible ASCII, too long, or too many hops.
    #[error("the forwarding header is not ASCII or is too long")]
    Unreadable,
    /// An element, pair or address that does not parse.
    #[error("the forwarding header is malformed")]
    Malformed,
}

/// One hop of a forwarding chain: an address, or a node the proxy could not or would not name
/// (`unknown`, an obfuscated `_identifier`, or an element without `for=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Address(IpAddr),
    Unnamed,
}

/// The client address of a request whose TCP peer is `peer`.
///
/// The one forwarding header the trusted proxies write (`header`: `X-Forwarded-For` or
/// `Forwarded`, RFC 7239) is read only when `peer` is inside one of the `trusted` ranges;
/// otherwise it is ignored, whatever it says. The other header is never read: a proxy passes a
/// header it does not write through untouched, so it says whatever the client wants. The chain
/// `header hops…, peer` is walked from the right: trusted proxies are skipped and the first
/// address that is not a trusted proxy is the client, so an address a client puts at the left
/// of its own header is never reached. A hop the proxy could not name ends the walk at the proxy
/// that reported it. A malformed header from a trusted peer is logged (without its content) and
/// the peer is the client. IPv4-mapped IPv6 addresses count as their IPv4 address.
pub(crate) fn resolve_client_ip(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[IpNet],
    header: TrustedProxyHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain = match header {
        TrustedProxyHeader::Forwarded if headers.contains_key(FORWARDED) => {
            forwarded_chain(headers)
        }
        TrustedProxyHeader::XForwardedFor if headers.contains_key(X_FORWARDED_FOR) => {
            x_forwarded_for_chain(headers)
        }
        TrustedProxyHeader::Forwarded | TrustedProxyHeader::XForwardedFor => return peer,
    };
    let chain = match chain {
        Ok(chain) => chain,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "a trusted proxy sent an unusable forwarding header; using the proxy's address");
            return peer;
        }
    };
    let mut nearest = peer;
    for hop in chain.iter().rev() {
        match hop {
            Hop::Address(ip) if is_trusted(ip) => nearest = *ip,
            Hop::Address(ip) => return *ip,
            Hop::Unnamed => return nearest,
        }
    }
    nearest
}

const FORWARDED: &str = "forwarded";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// All values of a header joined by `,` (several header lines form one list).
fn joined_header(
    headers: &axum::http::HeaderMap,
    name: &str,
) -> Result<String, ForwardingHeaderError> {
    let mut joined = String::new();
    for value in headers.get_all(name) {
        let text = value
            .to_str()
            .map_err(|_| ForwardingHeaderError::Unreadable)?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
        if joined.len() > MAX_FORWARDING_HEADER_BYTES {
            return Err(ForwardingHeaderError::Unreadable);
        }
    }
    Ok(joined)
}

/// Splits `text` at `separator` outside double-quoted strings.
fn split_unquoted(text: &str, separator: char) -> Result<Vec<&str>, ForwardingHeaderError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    if quoted {
        return Err(ForwardingHeaderError::Malformed);
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// The hops of `Forwarded` (RFC 7239 §4): elements separated by `,`, pairs by `;`, the node in
/// `for=` (a token or a quoted string: `192.0.2.60`, `"192.0.2.60:8080"`, `"[2001:db8::1]"`,
/// `"[2001:db8::1]:443"`, `unknown`, `_hidden`).
fn forwarded_chain(headers: &axum::http::HeaderMap) -> Result<Vec<Hop>, ForwardingHeaderError> {
    let joined = joined_header(headers, FORWARDED)?;
    let mut hops = Vec::new();
    for element in split_unquoted(&joined, ',')? {
        if element.trim().is_empty() {
            continue;
        }
        let mut node = None;
        for pair in split_unquoted(element, ';')? {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair
                .split_once('=')
                .ok_or(ForwardingHeaderError::Malformed)?;
            if name.trim().eq_ignore_ascii_case("for") {
                if node.is_some() {
                    return Err(ForwardingHeaderError::Malformed);
                }
                let value = value.trim();
                let value = match value.strip_prefix('"') {
                    Some(rest) => rest
                        .strip_suffix('"')
                        .filter(|inner| !inner.contains(['"', '\\']))
                        .ok_or(ForwardingHeaderError::Malformed)?,
                    None => value,
                };
                node = Some(parse_node(value)?);
            }
        }
        hops.push(node.unwrap_or(Hop::Unnamed));
        if hops.len() > MAX_FORWARDING_HOPS {
            return Err(ForwardingHeaderError::Unreadable);
        }
    }
    if hops.is_empty() {
        return Err(ForwardingHeaderError::Malformed);
    }
    Ok(hops)
}

/// The hops of `X-Forwarded-For`: addresses separated by `,`, each optionally with a port.
fn x_forwarded_for_chain(
    headers: &axum::http::HeaderMap,
) -> Result<Vec<Hop>, ForwardingHeaderError> {
    let joined = joined_header(headers, X_FORWARDED_FOR)?;
    let hops = joined
        .split(',')
        .map(|entry| parse_node(entry.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if hops.len() > MAX_FORWARDING_HOPS {
        return Err(ForwardingHeaderError::Unreadable);
    }
    Ok(hops)
}

/// One node: `IPv4`, `IPv4:port`, `[IPv6]`, `[IPv6]:port`, a bare IPv6 address (as
/// `X-Forwarded-For` writes it), `unknown` or an obfuscated `_identifier`.
fn parse_node(node: &str) -> Result<Hop, ForwardingHeaderError> {
    if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
        return Ok(Hop::Unnamed);
    }
    let port_ok = |port: &str| {
        port.is_empty()
            || port.strip_prefix(':').is_some_and(|p| {
                !p.is_empty()
                    && p.len() <= 5
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
    };
    let ip = if let Some(rest) = node.strip_prefix('[') {
        let (inside, port) = rest
            .split_once(']')
            .ok_or(ForwardingHeaderError::Malformed)?;
        if !port_ok(port) {
            return Err(ForwardingHeaderError::Malformed);
        }
        IpAddr::V6(
            inside
                .parse()
                .map_err(|_| ForwardingHeaderError::Malformed)?,
        )
    } else if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else {
        let (address, port) = node
            .split_once(':')
            .ok_or(ForwardingHeaderError::Malformed)?;
        if !port_ok(&format!(":{port}")) {
            return Err(ForwardingHeaderError::Malformed);
        }
        IpAddr::V4(
            address
                .parse()
                .map_err(|_| ForwardingHeaderError::Malformed)?,
        )
    };
    Ok(Hop::Address(ip.to_canonical()))
}

/// Path parameters whose rejection (a segment that is not valid percent-encoded UTF-8, a
/// missing or extra parameter) is the JSON error body, `invalid_request`, like every other error.
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                if rejection.status().is_server_error() {
                    tracing::error!(error = %rejection.body_text(), "path parameters unavailable");
                    Err(ApiError::new(ErrorCode::InternalError, "internal error"))
                } else {
                    Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "invalid request: a path parameter is not valid",
                    ))
                }
            }
        }
    }
}

/// A query string whose rejection (malformed, or a parameter of the wrong type) is the JSON
/// error body, `invalid_request`, naming the parameter but never its value.
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| {
                // serde names the field and the expectation, never the submitted value.
                let reason = e.to_string();
                let reason = if reason.len() > 200 {
                    "malformed query string".to_string()
                } else {
                    reason
                };
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid query string: {reason}"),
                )
            })
    }
}

/// `?wait=SECONDS` for long-polls.
#[derive(Debug, serde::Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// Seconds to wait for a change (at most 30).
    #[serde(default)]
    #[param(minimum = 0, maximum = 30)]
    pub wait: Option<u64>,
}

impl WaitQuery {
    /// How long to wait, at most [`MAX_WAIT_SECONDS`](crate::domain::authentication::MAX_WAIT_SECONDS).
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.wait
                .unwrap_or(0)
                .min(crate::domain::authentication::MAX_WAIT_SECONDS),
        )
    }
}

/// The parts of a request that a device-signed call is checked against.
pub(crate) fn device_call<'a>(
    headers: &'a axum::http::HeaderMap,
    method: &'a axum::http::Method,
    path: &'a str,
    body: &'a [u8],
) -> crate::domain::device_auth::DeviceCall<'a> {
    crate::domain::device_auth::DeviceCall {
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
        method: method.as_str(),
        path,
        body,
    }
}

/// Authenticates a device-signed call (see [`crate::domain::device_auth::authenticate`]).
pub(crate) async fn authenticate_device(
    ctx: &Ctx,
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
    path: &str,
    body: &[u8],
) -> Result<crate::domain::Enrollment, ApiError> {
    let call = device_call(headers, method, path, body);
    Ok(crate::domain::device_auth::authenticate(ctx, call).await?)
}

/// The enrollment a device-signed call names in its path: the signing one, or `unauthorized`.
pub(crate) fn same_enrollment(
    enrollment: &crate::domain::Enrollment,
    raw: &str,
) -> Result<tessera_protocol::ids::EnrollmentId, ApiError> {
    match raw.parse::<tessera_protocol::ids::EnrollmentId>() {
        Ok(id) if id == enrollment.enrollment_id => Ok(id),
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "a valid device signature is required",
        )),
    }
}

/// A user id from a path.
pub(crate) fn parse_user_id(raw: &str) -> Result<tessera_protocol::ids::UserId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "invalid user id"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const PROXY: &str = "10.0.0.5";

    const XFF: TrustedProxyHeader = TrustedProxyHeader::XForwardedFor;
    const FORWARDED_ONLY: TrustedProxyHeader = TrustedProxyHeader::Forwarded;

    /// The setting under which the header `name` is the one read.
    fn reading(name: &str) -> TrustedProxyHeader {
        if name == FORWARDED {
            FORWARDED_ONLY
        } else {
            XFF
        }
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let spoofed = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        for setting in [XFF, FORWARDED_ONLY] {
            assert_eq!(
                resolve_client_ip(ip("192.0.2.44"), &spoofed, &nets(&["10.0.0.0/8"]), setting),
                ip("192.0.2.44")
            );
            assert_eq!(
                resolve_client_ip(ip("192.0.2.44"), &spoofed, &[], setting),
                ip("192.0.2.44")
            );
        }
    }

    #[test]
    fn a_trusted_proxys_header_names_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "203.0.113.9:5123"),
            ("forwarded", "for=203.0.113.9"),
            (
                "forwarded",
                "For=\"203.0.113.9:5123\";proto=https;by=10.0.0.5",
            ),
        ] {
            assert_eq!(
                resolve_client_ip(
                    ip(PROXY),
                    &headers(&[(name, value)]),
                    &trusted,
                    reading(name)
                ),
                ip("203.0.113.9"),
                "{name}: {value}"
            );
        }
        // No header: the proxy itself.
        for setting in [XFF, FORWARDED_ONLY] {
            assert_eq!(
                resolve_client_ip(ip(PROXY), &HeaderMap::new(), &trusted, setting),
                ip(PROXY)
            );
        }
    }

    #[test]
    fn a_spoofed_left_most_entry_is_never_reached() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client sent "X-Forwarded-For: 1.1.1.1"; the proxy appended its peer.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &chain, &trusted, XFF),
            ip("203.0.113.9")
        );
        // Two trusted proxies in a row are skipped; the first untrusted address is the client.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.7")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &chain, &trusted, XFF),
            ip("203.0.113.9")
        );
        // Several header lines form one list.
        let chain = headers(&[
            ("forwarded", "for=1.1.1.1"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &chain, &trusted, FORWARDED_ONLY),
            ip("203.0.113.9")
        );
        // Every hop trusted: the left-most one.
        let all = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &all, &trusted, XFF),
            ip("10.1.1.1")
        );
        // A hop the proxy could not name ends the walk at that proxy.
        let unnamed = headers(&[("forwarded", "for=1.1.1.1, for=unknown, for=10.0.0.7")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &unnamed, &trusted, FORWARDED_ONLY),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn only_the_header_the_proxy_writes_is_read() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The proxy appends to X-Forwarded-For and passes the client's own Forwarded through.
        let xff_proxy = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "1.1.1.1, 203.0.113.9"),
        ]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &xff_proxy, &trusted, XFF),
            ip("203.0.113.9")
        );
        // The proxy appends to Forwarded and passes the client's own X-Forwarded-For through.
        let forwarded_proxy = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=1.1.1.1, for=203.0.113.9"),
        ]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &forwarded_proxy, &trusted, FORWARDED_ONLY),
            ip("203.0.113.9")
        );
        // The other header alone is not read at all: the proxy itself is the client.
        let forwarded_only = headers(&[("forwarded", "for=198.51.100.7")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &forwarded_only, &trusted, XFF),
            ip(PROXY)
        );
        let xff_only = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &xff_only, &trusted, FORWARDED_ONLY),
            ip(PROXY)
        );
        // Nor is it checked: a malformed other header changes nothing.
        let malformed_other = headers(&[
            ("forwarded", "for=\"[::1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &malformed_other, &trusted, XFF),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn by_default_a_forwarded_header_from_a_trusted_proxy_is_ignored() {
        // nginx with `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` passes the
        // client's own `Forwarded` through untouched.
        let trusted = nets(&["10.0.0.0/8"]);
        let default = crate::config::ServerConfig::default().trusted_proxy_header;
        assert_eq!(default, XFF);
        let passed_through = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &passed_through, &trusted, default),
            ip("203.0.113.9")
        );
        let forwarded_only = headers(&[("forwarded", "for=198.51.100.7")]);
        assert_eq!(
            resolve_client_ip(ip(PROXY), &forwarded_only, &trusted, default),
            ip(PROXY)
        );
    }

    #[test]
    fn ipv6_forms_are_understood() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        for (name, value) in [
            ("forwarded", "for=\"[2001:db8::1]:443\""),
            ("forwarded", "for=\"[2001:db8::1]\""),
            ("x-forwarded-for", "2001:db8::1"),
            ("x-forwarded-for", "[2001:db8::1]:443"),
            ("x-forwarded-for", "1.1.1.1, 2001:db8::1, fd00::7"),
        ] {
            assert_eq!(
                resolve_client_ip(
                    ip(PROXY),
                    &headers(&[(name, value)]),
                    &trusted,
                    reading(name)
                ),
                ip("2001:db8::1"),
                "{name}: {value}"
            );
        }
        // An IPv6 proxy, and an IPv4-mapped peer counted as its IPv4 address.
        let chain = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            resolve_client_ip(ip("fd00::5"), &chain, &trusted, XFF),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve_client_ip(ip("::ffff:10.0.0.5"), &chain, &trusted, XFF),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve_client_ip(ip("::ffff:192.0.2.1"), &chain, &trusted, XFF),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn a_malformed_header_from_a_trusted_proxy_falls_back_to_the_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        for (name, value) in [
            ("x-forwarded-for", "not-an-address"),
            ("x-forwarded-for", "203.0.113.9,,"),
            ("x-forwarded-for", ""),
            ("forwarded", "for=\"[2001:db8::1]:443"),
            ("forwarded", "for=[2001:db8::1]x"),
            ("forwarded", "for"),
            ("forwarded", "for=1.1.1.1;for=2.2.2.2"),
            ("forwarded", "for=\"2001:db8::zz\""),
            ("forwarded", ""),
            ("forwarded", "for=1.2.3.4:99999999"),
        ] {
            assert_eq!(
                resolve_client_ip(
                    ip(PROXY),
                    &headers(&[(name, value)]),
                    &trusted,
                    reading(name)
                ),
                ip(PROXY),
                "{name}: {value}"
            );
        }
        let long = vec!["203.0.113.9"; MAX_FORWARDING_HOPS + 1].join(",");
        assert_eq!(
            resolve_client_ip(
                ip(PROXY),
                &headers(&[("x-forwarded-for", &long)]),
                &trusted,
                XFF
            ),
            ip(PROXY)
        );
        let mut binary = HeaderMap::new();
        binary.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(
            resolve_client_ip(ip(PROXY), &binary, &trusted, XFF),
            ip(PROXY)
        );
    }
}
