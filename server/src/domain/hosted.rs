//! The hosted prompt: a flow ([`super::flows`]) run by the user's browser on the server's own
//! page (`/prompt#<browser token>`), the redirect MFA a web application sends its users to.
//!
//! - A flow created with `hosted` ([`HostedPrompt`]) gets a browser token: 256 random bits, the
//!   page's only credential. The server keeps its SHA-256 digest to find the flow (and the token
//!   sealed with the data key, so `GET /v1/flows/{id}` can repeat the `prompt_url`). The flow id
//!   is not a secret and opens nothing here.
//! - The page's calls (`/v1/flow-browser`) carry the token in an `Authorization: Bearer` header;
//!   they see what the page shows ([`FlowBrowserState`]: no API key, no nonce, no other flow) and
//!   apply the same actions, with the same typed errors, as the customer's `POST /v1/flows/{id}`
//!   (passcodes are bounded by the user's OTP failure limit, which locks the flow). Writes from
//!   another site are refused (`Origin`, `Sec-Fetch-Site`).
//! - The page goes back to `return_url` exactly as given once the flow is final; the caller reads
//!   the flow's status server-side. A denied push ends a hosted flow (`MFA_FAILED`, `denied`).
//!
//! Server code that starts a hosted flow (the OpenID authorization endpoint) calls
//! [`super::flows::create`] with `hosted` set and sends the browser to the answer's
//! `prompt_url`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    FlowAction, FlowBrowserPairing, FlowBrowserState, FlowBrowserWebView, FlowId,
    HOSTED_RETURN_URL_MAX_BYTES, HostedPrompt, WEB_VIEW_SCHEME_MAX_BYTES,
    WEB_VIEW_TIMEOUT_DEFAULT_SECONDS, WEB_VIEW_TIMEOUT_MAX_SECONDS, WebViewMode, WebViewPrompt,
};
use zeroize::Zeroizing;

use super::flows::{self, HostedView};
use super::{Ctx, DomainError};
use crate::i18n::{Catalog, MAX_LANGUAGE_TAG_BYTES, MAX_REQUESTED_LANGUAGES};
use crate::store::applications;
use crate::store::flows as store;

/// The page's path on the server.
pub const PROMPT_PATH: &str = "/prompt";

/// A browser token's length: 32 random bytes, base64url without padding.
const BROWSER_TOKEN_LENGTH: usize = 43;

/// The QR code of a pairing's server payload, in pixels.
const PAIRING_QR_PIXELS: u32 = 240;

/// Who calls the page's API: what its request carries.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BrowserCaller<'a> {
    /// The browser token (`Authorization: Bearer`).
    pub token: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Sec-Fetch-Site` header.
    pub fetch_site: Option<&'a str>,
    /// The `Accept-Language` header.
    pub accept_language: Option<&'a str>,
}

/// Whether `tag` is a well-formed language tag of a sensible length.
fn is_language_tag(tag: &str) -> bool {
    tag.len() <= MAX_LANGUAGE_TAG_BYTES && tag.parse::<unic_langid::LanguageIdentifier>().is_ok()
}

/// The well-formed tags of a relying party's `ui_locales`, in order, as many as a hosted
/// prompt takes (OpenID Connect: languages that cannot be used are ignored, not refused).
pub(crate) fn usable_ui_locales(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter(|t| is_language_tag(t))
        .take(MAX_REQUESTED_LANGUAGES)
        .cloned()
        .collect()
}

/// Checks a hosted prompt's settings: `return_url` is an absolute `https` URL (`http` only on a
/// loopback host) with a host, no credentials, no fragment, nothing that reads differently than
/// it navigates (spaces, control characters), at most [`HOSTED_RETURN_URL_MAX_BYTES`] bytes;
/// `ui_locales` are well-formed language tags.
pub(crate) fn check_prompt(prompt: &HostedPrompt) -> Result<(), DomainError> {
    let raw = prompt.return_url.as_str();
    if raw.len() > HOSTED_RETURN_URL_MAX_BYTES {
        return Err(DomainError::invalid(format!(
            "hosted.return_url must be at most {HOSTED_RETURN_URL_MAX_BYTES} bytes"
        )));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DomainError::invalid(
            "hosted.return_url must not contain spaces or control characters",
        ));
    }
    if raw.contains('#') {
        return Err(DomainError::invalid(
            "hosted.return_url must not have a fragment",
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|_| DomainError::invalid("hosted.return_url must be an absolute URL"))?;
    // What the URL parser would repair (`https:///host`, backslashes) reads differently than it
    // navigates: refused rather than normalised.
    let after_scheme = raw
        .get(url.scheme().len()..)
        .and_then(|rest| rest.strip_prefix("://"));
    if raw.contains('\\') || after_scheme.is_none_or(|rest| rest.starts_with('/')) {
        return Err(DomainError::invalid(
            "hosted.return_url must be written as scheme://host/path",
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => {
            return Err(DomainError::invalid("hosted.return_url must name a host"));
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(DomainError::invalid(
                "hosted.return_url must be an https URL (http only on a loopback host)",
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DomainError::invalid(
            "hosted.return_url must not carry credentials",
        ));
    }
    if prompt.ui_locales.len() > MAX_REQUESTED_LANGUAGES {
        return Err(DomainError::invalid(format!(
            "hosted.ui_locales may name at most {MAX_REQUESTED_LANGUAGES} languages"
        )));
    }
    for tag in &prompt.ui_locales {
        if !is_language_tag(tag) {
            return Err(DomainError::invalid(
                "hosted.ui_locales must be BCP 47 language tags",
            ));
        }
    }
    if let Some(web_view) = &prompt.web_view {
        check_web_view(web_view)?;
    }
    Ok(())
}

/// Whether `scheme` is a private-use URI scheme in reverse domain name form (RFC 8252 §7.1):
/// lowercase RFC 3986 scheme characters, dot-separated labels that each start with a letter
/// and are not empty, at least two labels. Such a scheme can never be `http`, `https`,
/// `javascript`, `data`, `file` or any other scheme a browser gives a meaning of its own.
pub(crate) fn is_private_use_scheme(scheme: &str) -> bool {
    scheme.len() <= WEB_VIEW_SCHEME_MAX_BYTES
        && scheme.contains('.')
        && scheme.split('.').all(|label| {
            label.starts_with(|c: char| c.is_ascii_lowercase())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '+')
        })
}

/// Checks a web-view flow's settings: a scheme exactly when the mode is `scheme`, a private-use
/// one ([`is_private_use_scheme`]); a timeout within bounds.
fn check_web_view(web_view: &WebViewPrompt) -> Result<(), DomainError> {
    match (web_view.mode, web_view.scheme.as_deref()) {
        (WebViewMode::Bridge, None) => {}
        (WebViewMode::Bridge, Some(_)) => {
            return Err(DomainError::invalid(
                "hosted.web_view.scheme is for the scheme mode only",
            ));
        }
        (WebViewMode::Scheme, None) => {
            return Err(DomainError::invalid(
                "hosted.web_view.scheme is required in the scheme mode",
            ));
        }
        (WebViewMode::Scheme, Some(scheme)) => {
            if !is_private_use_scheme(scheme) {
                return Err(DomainError::invalid(format!(
                    "hosted.web_view.scheme must be a private-use scheme in reverse domain name \
                     form (RFC 8252), e.g. com.example.app, of at most \
                     {WEB_VIEW_SCHEME_MAX_BYTES} bytes"
                )));
            }
        }
    }
    if let Some(timeout) = web_view.timeout_seconds
        && !(1..=WEB_VIEW_TIMEOUT_MAX_SECONDS).contains(&timeout)
    {
        return Err(DomainError::invalid(format!(
            "hosted.web_view.timeout_seconds must be 1 to {WEB_VIEW_TIMEOUT_MAX_SECONDS}"
        )));
    }
    Ok(())
}

/// A new browser token: 256 random bits, base64url.
pub(crate) fn new_browser_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

/// What the server stores and looks a browser token up by.
pub(crate) fn token_digest(token: &str) -> String {
    Sha256Digest::of_bytes(token.as_bytes()).to_string()
}

/// The page's address for a browser token: the token in the fragment, which browsers never
/// send to a server (nor in a `Referer`).
pub(crate) fn prompt_url(ctx: &Ctx, token: &str) -> String {
    format!(
        "{}{PROMPT_PATH}#{token}",
        ctx.public_url.as_str().trim_end_matches('/')
    )
}

fn unauthorized() -> DomainError {
    DomainError::new(
        ErrorCode::Unauthorized,
        "this sign-in link is not valid or has expired",
    )
}

/// The flow (and its application) a browser token opens.
async fn flow_of(
    ctx: &Ctx,
    token: Option<&str>,
) -> Result<(applications::Application, FlowId), DomainError> {
    let token = token
        .filter(|t| t.len() == BROWSER_TOKEN_LENGTH)
        .ok_or_else(unauthorized)?;
    let flow = store::by_browser_token_digest(&ctx.db, &token_digest(token))
        .await?
        .ok_or_else(unauthorized)?;
    let app = applications::get(&ctx.db, &flow.application_id)
        .await?
        .ok_or_else(unauthorized)?;
    Ok((app, flow.id))
}

/// Refuses a write from another site: an `Origin` other than the server's own, or a
/// `Sec-Fetch-Site` other than `same-origin` (or `none`, typed by the user).
fn check_same_origin(ctx: &Ctx, caller: &BrowserCaller<'_>) -> Result<(), DomainError> {
    let refused = || {
        DomainError::new(
            ErrorCode::CrossOriginRefused,
            "the hosted prompt accepts changes only from its own page",
        )
    };
    if let Some(site) = caller.fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refused());
    }
    if let Some(origin) = caller.origin {
        let own = url::Url::parse(ctx.public_url.as_str())
            .map_err(|_| DomainError::Internal("the server's public URL does not parse"))?
            .origin()
            .ascii_serialization();
        if origin != own {
            return Err(refused());
        }
    }
    Ok(())
}

/// Puts a flow into the page's words.
fn browser_state(
    ctx: &Ctx,
    view: HostedView,
    accept_language: Option<&str>,
) -> Result<FlowBrowserState, DomainError> {
    let catalog =
        Catalog::shipped().map_err(|_| DomainError::Internal("the shipped texts do not load"))?;
    let lang = catalog.negotiate(&view.prompt.ui_locales, accept_language);
    let texts = catalog
        .texts(&lang)
        .map_err(|_| DomainError::Internal("the shipped texts do not load"))?;
    let state = view.state;
    // The app's part is over once the flow is: nothing more is handed over then.
    let web_view = view
        .prompt
        .web_view
        .as_ref()
        .filter(|_| !state.status.is_final())
        .map(|w| FlowBrowserWebView {
            mode: w.mode,
            scheme: w.scheme.clone(),
            timeout_seconds: w
                .timeout_seconds
                .unwrap_or(WEB_VIEW_TIMEOUT_DEFAULT_SECONDS),
            server: ctx.public_url.as_str().to_string(),
            authorization_nonce: state.authorization_nonce.clone(),
        });
    let pairing = state.pairing.map(|p| FlowBrowserPairing {
        qr_svg: crate::qr_render::svg(&p.server_payload, PAIRING_QR_PIXELS).ok(),
        server_payload: p.server_payload,
        state: p.state,
    });
    Ok(FlowBrowserState {
        flow_id: state.id.clone(),
        version: view.version,
        status: state.status,
        actions: state.actions,
        expires_at: state.expires_at,
        application_name: view.application_name,
        message: view.message,
        admin_message: state.admin_message,
        devices: state.devices,
        selected_device: state.selected_device,
        number_to_show: state
            .push
            .as_ref()
            .filter(|_| {
                state.status == tessera_protocol::flows::FlowStatus::PushConfirmationWaiting
            })
            .and_then(|p| p.number_to_show),
        push_expires_at: state.push.as_ref().map(|p| p.expires_at),
        otp: state.otp,
        pairing,
        mfa_setup: state.mfa_setup,
        result: state.result.map(|r| r.status),
        fido: state.fido,
        return_url: view.prompt.return_url,
        lang,
        texts,
        qr: state.qr,
        web_view,
    })
}

/// `GET /v1/flow-browser`: the page's flow; with `seen` equal to its version, waits up to
/// `wait` for it to move.
pub(crate) async fn view(
    ctx: &Ctx,
    caller: BrowserCaller<'_>,
    seen: Option<i64>,
    wait: Duration,
) -> Result<FlowBrowserState, DomainError> {
    let (app, id) = flow_of(ctx, caller.token).await?;
    let view = flows::hosted_view(ctx, &app.id, &id, seen, wait).await?;
    browser_state(ctx, view, caller.accept_language)
}

/// `POST /v1/flow-browser`: one action from the page (the customer API's actions and errors),
/// only from the page's own origin.
pub(crate) async fn act(
    ctx: &Ctx,
    caller: BrowserCaller<'_>,
    action: FlowAction,
) -> Result<FlowBrowserState, DomainError> {
    check_same_origin(ctx, &caller)?;
    let (app, id) = flow_of(ctx, caller.token).await?;
    flows::act(ctx, &app, id.as_str(), action).await?;
    let view = flows::hosted_view(ctx, &app.id, &id, None, Duration::ZERO).await?;
    browser_state(ctx, view, caller.accept_language)
}

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(url: &str) -> HostedPrompt {
        HostedPrompt {
            return_url: url.to_string(),
            ui_locales: Vec::new(),
            web_view: None,
        }
    }

    #[test]
    fn return_urls_are_https_or_loopback_http_without_fragment() {
        for ok in [
            "https://rp.example/callback?state=1",
            "http://localhost:8080/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:9/cb",
        ] {
            assert!(check_prompt(&prompt(ok)).is_ok(), "{ok}");
        }
        let long = format!("https://rp.example/{}", "a".repeat(2048));
        for bad in [
            "http://rp.example/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "/relative",
            "https://rp.example/cb#frag",
            "https://user:pw@rp.example/cb",
            "https://rp.example/c b",
            "https://rp.example/\tcb",
            "https:///nohost",
            "https:/rp.example/cb",
            "https://rp.example\\@evil.example/",
            long.as_str(),
        ] {
            let e = check_prompt(&prompt(bad)).unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{bad}");
        }
    }

    #[test]
    fn ui_locales_must_be_language_tags() {
        let mut p = prompt("https://rp.example/cb");
        p.ui_locales = vec!["de-CH".into(), "fr".into()];
        assert!(check_prompt(&p).is_ok());
        p.ui_locales = vec!["<b>".into()];
        assert!(check_prompt(&p).is_err());
        p.ui_locales = vec!["en".into(); MAX_REQUESTED_LANGUAGES + 1];
        assert!(check_prompt(&p).is_err());
    }

    #[test]
    fn web_view_schemes_are_private_use_reverse_domain_names() {
        let mut p = prompt("https://rp.example/cb");
        let web_view = |mode, scheme: Option<&str>, timeout| WebViewPrompt {
            mode,
            scheme: scheme.map(str::to_string),
            timeout_seconds: timeout,
        };
        for ok in [
            web_view(WebViewMode::Bridge, None, None),
            web_view(WebViewMode::Bridge, None, Some(1)),
            web_view(WebViewMode::Scheme, Some("com.example.app"), None),
            web_view(
                WebViewMode::Scheme,
                Some("com.example.my-app+v2"),
                Some(120),
            ),
        ] {
            p.web_view = Some(ok.clone());
            assert!(check_prompt(&p).is_ok(), "{ok:?}");
        }
        let long = format!("com.{}", "a".repeat(WEB_VIEW_SCHEME_MAX_BYTES));
        for bad in [
            web_view(WebViewMode::Bridge, Some("com.example.app"), None),
            web_view(WebViewMode::Scheme, None, None),
            web_view(WebViewMode::Scheme, Some("javascript"), None),
            web_view(WebViewMode::Scheme, Some("http"), None),
            web_view(WebViewMode::Scheme, Some("https"), None),
            web_view(WebViewMode::Scheme, Some("myapp"), None),
            web_view(WebViewMode::Scheme, Some("Com.Example.App"), None),
            web_view(WebViewMode::Scheme, Some("com..example"), None),
            web_view(WebViewMode::Scheme, Some(".com.example"), None),
            web_view(WebViewMode::Scheme, Some("com.example."), None),
            web_view(WebViewMode::Scheme, Some("1com.example"), None),
            web_view(WebViewMode::Scheme, Some("com.example:x"), None),
            web_view(WebViewMode::Scheme, Some("com.example/app"), None),
            web_view(WebViewMode::Scheme, Some("com.exa mple"), None),
            web_view(WebViewMode::Scheme, Some(long.as_str()), None),
            web_view(WebViewMode::Bridge, None, Some(0)),
            web_view(WebViewMode::Bridge, None, Some(121)),
        ] {
            p.web_view = Some(bad.clone());
            let e = check_prompt(&p).unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{bad:?}");
        }
    }

    #[test]
    fn browser_tokens_are_long_random_and_stored_as_digests() {
        let a = new_browser_token();
        let b = new_browser_token();
        assert_eq!(a.len(), BROWSER_TOKEN_LENGTH);
        assert_ne!(*a, *b);
        assert_ne!(token_digest(&a), *a);
        assert_eq!(token_digest(&a), token_digest(&a));
    }
}
