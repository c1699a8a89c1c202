//! The app's side of the hosted page's web-view contract (docs/flows.md, "The hosted page in
//! an app's web view"): the page (`/prompt`, opened in the app's web view) asks the app for
//! payloads only its Tessera core can make; the app passes each question here and hands the
//! answer back. The native code stays a few lines: receive, call, deliver.
//!
//! Questions (`type`, all with `flow_id` and `request_id`, echoed in the answer):
//! - `tessera.authorization` with `server`, `authorization_nonce` → `authorization_payload`
//!   (seamless device authorization with this device's enrollment on `server`), or the error
//!   `not_paired` when the device has none (the page then asks to register);
//! - `tessera.register` with `server` → `mobile_payload` (automatic device registration);
//! - `tessera.register.complete` with `server_payload` → `enrollment_id`.
//!
//! The answer's `type` is the question's with `.result`; a refusal carries `error` (a short
//! code) instead of the payload. Only questions from a page on the server's own origin are
//! answered: `source_origin` is the origin of the page that asked (Android: the
//! `sourceOrigin` of `onPostMessage`; iOS: the frame's `securityOrigin`; the scheme mode: the
//! web view's current page) and must equal `server`'s, so another page the web view shows
//! cannot make the device sign for someone else's flow.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tessera_protocol::api::EnrollmentState;
use tessera_protocol::ids::UserId;
use tessera_protocol::pairing::ServerUrl;

use crate::{Authenticator, CoreError};

/// The object the page posts to on Android (`WebViewCompat.addWebMessageListener` name).
pub const ANDROID_BRIDGE_OBJECT: &str = "TesseraBridge";
/// The script message handler the page posts to on iOS
/// (`window.webkit.messageHandlers.tessera`).
pub const IOS_MESSAGE_HANDLER: &str = "tessera";
/// The page function an app evaluates to deliver an answer (iOS; Android may answer through
/// the reply proxy instead): `window.TesseraPrompt.receive(<answer JSON>)`.
pub const PAGE_RECEIVE_FUNCTION: &str = "window.TesseraPrompt.receive";
/// The host of the scheme mode's URLs: `<scheme>://tessera/<name>?…`.
pub const SCHEME_HOST: &str = "tessera";

/// The longest question accepted, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The longest `flow_id` / `request_id` echoed back.
const MAX_ID_BYTES: usize = 128;

/// A question from the page.
#[derive(Debug, Deserialize)]
struct Question {
    #[serde(rename = "type")]
    kind: String,
    flow_id: String,
    request_id: String,
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    authorization_nonce: Option<String>,
    #[serde(default)]
    server_payload: Option<String>,
}

/// Why a question got no payload: the answer's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotPaired,
    SeveralEnrollments,
    OriginMismatch,
    InvalidQuestion,
    UnknownQuestion,
    Core(&'static str),
}

impl Refusal {
    fn code(self) -> &'static str {
        match self {
            Refusal::NotPaired => "not_paired",
            Refusal::SeveralEnrollments => "several_enrollments",
            Refusal::OriginMismatch => "origin_mismatch",
            Refusal::InvalidQuestion => "invalid_question",
            Refusal::UnknownQuestion => "unknown_question",
            Refusal::Core(code) => code,
        }
    }
}

impl From<CoreError> for Refusal {
    fn from(e: CoreError) -> Self {
        Refusal::Core(e.code())
    }
}

fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ID_BYTES
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `scheme://host[:port]` of a URL, lowercased by the URL parser; `None` when it has none.
fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    match parsed.origin() {
        url::Origin::Tuple(..) => Some(parsed.origin().ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

fn parse_question(message: &str) -> Result<Question, CoreError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(CoreError::InvalidInput(
            "the web-view message is too long".into(),
        ));
    }
    let question: Question = serde_json::from_str(message)
        .map_err(|_| CoreError::InvalidInput("not a Tessera web-view message".into()))?;
    if !question.kind.starts_with("tessera.")
        || !is_id(&question.flow_id)
        || !is_id(&question.request_id)
    {
        return Err(CoreError::InvalidInput(
            "not a Tessera web-view message".into(),
        ));
    }
    Ok(question)
}

fn answer(question: &Question, outcome: Result<(&str, String), Refusal>) -> String {
    let mut out = Map::new();
    out.insert("type".into(), json!(format!("{}.result", question.kind)));
    out.insert("flow_id".into(), json!(question.flow_id));
    out.insert("request_id".into(), json!(question.request_id));
    match outcome {
        Ok((name, value)) => {
            out.insert(name.into(), json!(value));
        }
        Err(refusal) => {
            out.insert("error".into(), json!(refusal.code()));
        }
    }
    Value::Object(out).to_string()
}

impl Authenticator {
    /// Answers one question of the hosted page shown in the app's web view (a JavaScript
    /// bridge message, as JSON) and returns the answer to deliver to the page, as JSON.
    ///
    /// `source_origin` is the origin of the page that asked; questions from any origin but
    /// the `server`'s are answered `origin_mismatch`. `user_id`, when the app knows who signed
    /// in, picks that user's enrollment for a seamless authorization (needed only when the
    /// device holds several on that server: otherwise the answer is `several_enrollments`).
    /// A refusal is an answer with `error` (the page then falls back to the normal prompt);
    /// only a message that is not a Tessera question at all is an `Err` (nothing to answer).
    pub async fn handle_web_view_message(
        &self,
        message: &str,
        source_origin: &str,
        user_id: Option<&str>,
    ) -> Result<String, CoreError> {
        let question = parse_question(message)?;
        let outcome = self
            .answer_question(&question, source_origin, user_id)
            .await;
        Ok(answer(&question, outcome))
    }

    /// The scheme mode: answers the page's navigation to `<scheme>://tessera/<name>?…` (which
    /// the app intercepted, `source_origin` being the web view's current page) and returns the
    /// URL the app loads in its web view: the page's `return_url` with the answer in the
    /// fragment (`#type=…&flow_id=…&request_id=…&…`). `return_url` must be on the server's
    /// origin; otherwise, or when the URL is not such a question, `Err` (load nothing).
    pub async fn handle_web_view_url(
        &self,
        url: &str,
        source_origin: &str,
        user_id: Option<&str>,
    ) -> Result<String, CoreError> {
        let invalid = || CoreError::InvalidInput("not a Tessera web-view URL".into());
        if url.len() > MAX_MESSAGE_BYTES {
            return Err(invalid());
        }
        let parsed = url::Url::parse(url).map_err(|_| invalid())?;
        if parsed.host_str() != Some(SCHEME_HOST) {
            return Err(invalid());
        }
        let name = parsed.path().trim_start_matches('/');
        if name.is_empty() || name.contains('/') {
            return Err(invalid());
        }
        let mut fields = Map::new();
        fields.insert("type".into(), json!(format!("tessera.{name}")));
        let mut return_url = None;
        for (key, value) in parsed.query_pairs() {
            if key == "return_url" {
                return_url = Some(value.into_owned());
            } else if key != "type" {
                fields.insert(key.into_owned(), json!(value));
            }
        }
        let return_url = return_url.ok_or_else(invalid)?;
        let question = parse_question(&Value::Object(fields).to_string())?;
        let server = question.server.as_deref().ok_or_else(invalid)?;
        let return_origin = origin_of(&return_url);
        if return_origin.is_none() || return_origin != origin_of(server) || return_url.contains('#')
        {
            return Err(CoreError::InvalidInput(
                "the return URL is not on the server's origin".into(),
            ));
        }
        let outcome = self
            .answer_question(&question, source_origin, user_id)
            .await;
        let answer: Map<String, Value> =
            serde_json::from_str(&answer(&question, outcome)).map_err(|_| invalid())?;
        // The question's names first (`type`, `flow_id`, `request_id`), then what answers it.
        const FIRST: [&str; 3] = ["type", "flow_id", "request_id"];
        let mut fragment = url::form_urlencoded::Serializer::new(String::new());
        let ordered = FIRST
            .iter()
            .filter_map(|k| answer.get_key_value(*k))
            .chain(answer.iter().filter(|(k, _)| !FIRST.contains(&k.as_str())));
        for (key, value) in ordered {
            if let Some(text) = value.as_str() {
                fragment.append_pair(key, text);
            }
        }
        Ok(format!("{return_url}#{}", fragment.finish()))
    }

    async fn answer_question(
        &self,
        question: &Question,
        source_origin: &str,
        user_id: Option<&str>,
    ) -> Result<(&'static str, String), Refusal> {
        let server = question
            .server
            .as_deref()
            .and_then(|s| ServerUrl::parse(s).ok());
        let own_origin = server.as_ref().and_then(|s| origin_of(s.as_str()));
        if own_origin.is_none() || own_origin != origin_of(source_origin.trim()) {
            return Err(Refusal::OriginMismatch);
        }
        let server = server.ok_or(Refusal::InvalidQuestion)?;
        match question.kind.as_str() {
            "tessera.authorization" => {
                let nonce = question
                    .authorization_nonce
                    .as_deref()
                    .ok_or(Refusal::InvalidQuestion)?;
                let user = user_id
                    .map(|u| u.parse::<UserId>())
                    .transpose()
                    .map_err(|_| Refusal::InvalidQuestion)?;
                let candidates: Vec<_> = self
                    .enrollments()
                    .await
                    .into_iter()
                    .filter(|e| {
                        e.server == server
                            && !e.removed
                            && e.status == EnrollmentState::Active
                            && user.as_ref().is_none_or(|u| &e.user_id == u)
                    })
                    .collect();
                let enrollment = match candidates.as_slice() {
                    [] => return Err(Refusal::NotPaired),
                    [one] => one,
                    _ => return Err(Refusal::SeveralEnrollments),
                };
                let payload = self
                    .create_authorization_payload(&enrollment.enrollment_id, nonce)
                    .await?;
                Ok(("authorization_payload", payload))
            }
            "tessera.register" => {
                let payload = self.create_mobile_payload(server.as_str()).await?;
                Ok(("mobile_payload", payload))
            }
            "tessera.register.complete" => {
                let payload = question
                    .server_payload
                    .as_deref()
                    .ok_or(Refusal::InvalidQuestion)?;
                let enrollment = self.complete_relay_pairing(payload).await?;
                if enrollment.server != server {
                    return Err(Refusal::Core("server_mismatch"));
                }
                Ok(("enrollment_id", enrollment.enrollment_id.to_string()))
            }
            _ => Err(Refusal::UnknownQuestion),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(kind: &str) -> Question {
        Question {
            kind: kind.into(),
            flow_id: "flow-1".into(),
            request_id: "abc".into(),
            server: None,
            authorization_nonce: None,
            server_payload: None,
        }
    }

    #[test]
    fn answers_echo_the_question_and_carry_a_payload_or_an_error() {
        let q = question("tessera.register");
        let ok: Value =
            serde_json::from_str(&answer(&q, Ok(("mobile_payload", "p".into())))).unwrap();
        assert_eq!(ok["type"], "tessera.register.result");
        assert_eq!(ok["flow_id"], "flow-1");
        assert_eq!(ok["request_id"], "abc");
        assert_eq!(ok["mobile_payload"], "p");
        assert!(ok.get("error").is_none());
        let no: Value = serde_json::from_str(&answer(&q, Err(Refusal::NotPaired))).unwrap();
        assert_eq!(no["error"], "not_paired");
        assert!(no.get("mobile_payload").is_none());
    }

    #[test]
    fn only_tessera_questions_with_sane_ids_are_parsed() {
        assert!(
            parse_question(r#"{"type":"tessera.register","flow_id":"f","request_id":"r"}"#).is_ok()
        );
        for bad in [
            "not json",
            r#"{"type":"other.register","flow_id":"f","request_id":"r"}"#,
            r#"{"type":"tessera.register","flow_id":"","request_id":"r"}"#,
            r#"{"type":"tessera.register","flow_id":"f","request_id":"<b>"}"#,
            r#"{"type":"tessera.register","flow_id":"f"}"#,
        ] {
            assert!(parse_question(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://tessera.example/prompt"),
            origin_of("https://TESSERA.example")
        );
        assert_ne!(
            origin_of("https://tessera.example"),
            origin_of("https://tessera.example:8443")
        );
        assert_ne!(
            origin_of("http://tessera.example"),
            origin_of("https://tessera.example")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("data:text/html,x"), None);
    }
}
