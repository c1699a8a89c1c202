//! Request ids: every request gets one (`x-request-id`), every answer carries it, and every log
//! line written while the request is handled names it.
//!
//! A caller's (or its proxy's) `x-request-id` is kept when it is well formed (1 to 64 of
//! `A-Z a-z 0-9 . _ : -`), so one id follows a call across services; anything else is dropped
//! and replaced by a generated id (32 hex digits), so a crafted header never reaches a log line.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::Instrument;

/// The request id header.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id accepted from a caller.
const MAX_LENGTH: usize = 64;

/// Whether a caller's request id is kept.
pub(crate) fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LENGTH
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Drops a caller's request id that is not well formed (a new one is then generated).
pub(crate) async fn drop_malformed(mut request: Request, next: Next) -> Response {
    let malformed = request
        .headers()
        .get_all(REQUEST_ID_HEADER)
        .iter()
        .any(|v| !is_well_formed(v.as_bytes()))
        || request.headers().get_all(REQUEST_ID_HEADER).iter().count() > 1;
    if malformed {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    next.run(request).await
}

/// Generates request ids: 128 random bits in hex.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GenerateRequestId;

impl MakeRequestId for GenerateRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let bytes: [u8; 16] = rand::random();
        HeaderValue::from_str(&hex::encode(bytes))
            .ok()
            .map(RequestId::new)
    }
}

/// Handles the request inside a `request` span carrying its id: every log line written meanwhile
/// names it.
pub(crate) async fn in_span(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let span = tracing::info_span!("request", request_id = %id);
    next.run(request).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(is_well_formed(b"3f2a9c1e-7b4d-4e8a-9f00-1234567890ab"));
        assert!(is_well_formed(b"lb:1.2_x"));
        assert!(!is_well_formed(b""));
        assert!(!is_well_formed(b"a b"));
        assert!(!is_well_formed(b"id\nforged log line"));
        assert!(!is_well_formed("é".as_bytes()));
        assert!(!is_well_formed(&[b'a'; 65]));
        assert!(is_well_formed(&[b'a'; 64]));
    }

    #[test]
    fn generated_ids_are_well_formed_and_differ() {
        let request = axum::http::Request::new(());
        let a = GenerateRequestId.make_request_id(&request).unwrap();
        let b = GenerateRequestId.make_request_id(&request).unwrap();
        assert!(is_well_formed(a.header_value().as_bytes()));
        assert_ne!(a.header_value(), b.header_value());
    }
}
