//! OIDC redirect MFA: the authorization endpoint (OpenID Connect Core §3.1, the authorization
//! code flow with PKCE) and the resume the browser comes back to when its flow has ended.
//!
//! The relying party has authenticated the user with its own first factor and sends the
//! browser here with a request object it signed (`request`, carrying `login_hint`, as Duo's
//! Universal Prompt does). The endpoint starts a flow (`domain::flows`) for that user, binds it
//! to the browser with a cookie (only its SHA-256 is stored), and sends the browser to the
//! prompt. The prompt navigates to the resume URL when the flow ends; the resume reads the
//! flow's final status server-side and, once, redirects to the client with a code (or with
//! `access_denied`). The code is redeemed at the token endpoint (`token::exchange`).
//!
//! Errors found before the redirect URI is known to be registered are shown as a page (never a
//! redirect to an unchecked URI); later ones go back to the redirect URI as `error`,
//! `error_description`, `state` and `iss` (RFC 9207).

use base64::Engine;
use rand::RngCore;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tessera_protocol::ciba::GrantType;
use tessera_protocol::flows::{CreateFlowRequest, FlowResultStatus, FlowState, FlowStatus};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::client_auth::{self, ClientJwtError, Form};
use super::error::{OAuthCode, OAuthError};
use super::{SUPPORTED_SCOPES, endpoint_url, issuer, subject};
use crate::domain::{Ctx, DomainError, flows};
use crate::store::applications;
use crate::store::ciba::{self as ciba_store, CibaClient};
use crate::store::nonces;
use crate::store::oidc_authorizations::{self as store, StoredAuthorization};

/// The authorization endpoint's path.
pub(crate) const AUTHORIZE_PATH: &str = "/oidc/authorize";
/// The resume endpoint's path (the flow's `return_url`).
pub(crate) const RESUME_PATH: &str = "/oidc/authorize/resume";
/// The acr of any completed second factor.
pub(crate) const ACR_MFA: &str = "mfa";
/// The acr of a flow completed by a signature of the user's paired device key (a push approval
/// or a seamless device authorization): no typed or sent passcode. Asked for in `acr_values`,
/// it also takes the passcode fallbacks out of the flow.
pub(crate) const ACR_DEVICE_KEY: &str = "urn:tessera:acr:device-key";
/// The acr of a flow that ended by registering the user's device (`device_paired`, automatic
/// device registration): the user proved possession of a new device, not of an existing second
/// factor. Never asked for; the relying party decides what it is worth.
pub(crate) const ACR_DEVICE_REGISTRATION: &str = "urn:tessera:acr:device-registration";
/// The acr values the authorization endpoint knows, in the order they are offered.
pub(crate) const ACR_VALUES: &[&str] = &[ACR_MFA, ACR_DEVICE_KEY];
/// The longest a request object may live (exp - now), in seconds.
const MAX_REQUEST_OBJECT_LIFETIME: i64 = 600;
/// Clock skew allowed on a request object's `nbf` and `iat`.
const CLOCK_SKEW: i64 = 60;
/// Parameters that must stay outside the request object (RFC 9101 §5).
const OUTSIDE_ONLY: &[&str] = &["request", "client_id"];
/// The longest `state` and `nonce` accepted.
const MAX_ECHOED: usize = 512;

/// How an authorization error page is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// The request is malformed or names something unknown (400).
    Invalid,
    /// The browser is not the one the sign-in started in (403).
    OtherBrowser,
    /// The sign-in is not finished, or finished before (409).
    NotNow,
    /// The service is unavailable: retry (503).
    Unavailable,
    /// The server failed (500).
    Internal,
}

/// An error shown to the user as a page: the client cannot be trusted with a redirect (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct PageError {
    /// What went wrong, as an HTTP status.
    pub kind: PageKind,
    /// What to tell the user (never a submitted value or a secret).
    pub message: String,
}

fn page(kind: PageKind, message: impl Into<String>) -> PageError {
    PageError {
        kind,
        message: message.into(),
    }
}

impl From<DomainError> for PageError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Unavailable(source) => {
                tracing::error!(error = %source, "database unavailable");
                page(
                    PageKind::Unavailable,
                    "The service is unavailable; retry shortly.",
                )
            }
            DomainError::Refused { message, .. } => page(PageKind::Invalid, message),
            other => {
                tracing::error!(error = %other, "server error");
                page(PageKind::Internal, "Internal error.")
            }
        }
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        PageError::from(DomainError::from(e))
    }
}

/// The cookie that binds an authorization request to the browser that made it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrowserCookie {
    /// Its name: `__Host-tessera-authorize` where the cookie can be `Secure`.
    pub name: &'static str,
    /// Its value (random; only its SHA-256 is stored).
    pub value: String,
    /// Seconds it lives.
    pub max_age: i64,
    /// Whether it is `Secure` (and `__Host-` prefixed).
    pub secure: bool,
}

impl std::fmt::Debug for BrowserCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserCookie")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The cookie's name and whether it is `Secure`: `__Host-tessera-authorize` (Secure,
/// `Path=/`, no `Domain`) when the server is reached over https, or on a loopback host
/// (browsers treat those as secure); `tessera-authorize` without `Secure` only for plain http
/// to another host (development behind no TLS).
pub(crate) fn cookie_name(ctx: &Ctx) -> (&'static str, bool) {
    let url = url::Url::parse(ctx.public_url.as_str()).ok();
    let secure = url.as_ref().is_some_and(|u| {
        u.scheme() == "https"
            || matches!(
                u.host(),
                Some(url::Host::Domain("localhost"))
                    | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                    | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
            )
    });
    if secure {
        ("__Host-tessera-authorize", true)
    } else {
        ("tessera-authorize", false)
    }
}

/// Where the browser goes after the authorization endpoint.
#[derive(Debug)]
pub(crate) enum AuthorizeAnswer {
    /// To the prompt, bound with the cookie.
    Prompt {
        /// The prompt's URL.
        location: String,
        /// The cookie to set.
        cookie: BrowserCookie,
    },
    /// Back to the client's registered redirect URI with an error.
    Redirect {
        /// The redirect URI with `error`, `error_description`, `state` and `iss`.
        location: String,
    },
}

/// The browser's side of a request: its cookie, address and user agent.
#[derive(Clone, Default)]
pub(crate) struct Browser {
    /// The value of the binding cookie it sent, if any.
    pub cookie: Option<String>,
    /// Its address (as resolved behind trusted proxies).
    pub ip: Option<String>,
    /// Its `User-Agent`.
    pub user_agent: Option<String>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `text` looks like a token this module made (43 base64url characters).
fn is_token(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A parameter name fit to echo in a message: known shapes only.
fn safe_name(name: &str) -> &str {
    if name.len() <= 40 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        name
    } else {
        "(unnamed)"
    }
}

/// The redirect URI with `params` added to its query.
fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (k, v) in params {
                    query.append_pair(k, v);
                }
            }
            url.to_string()
        }
        // Registered URIs are checked at registration: this cannot happen.
        Err(_) => redirect_uri.to_string(),
    }
}

/// An error answered at a checked redirect URI.
struct RedirectError<'a> {
    ctx: &'a Ctx,
    redirect_uri: &'a str,
    state: Option<&'a str>,
}

impl RedirectError<'_> {
    fn answer(&self, code: OAuthCode, description: &str) -> AuthorizeAnswer {
        let iss = issuer(self.ctx);
        let mut params = vec![("error", code.as_str()), ("error_description", description)];
        if let Some(state) = self.state {
            params.push(("state", state));
        }
        params.push(("iss", iss.as_str()));
        AuthorizeAnswer::Redirect {
            location: redirect_with(self.redirect_uri, &params),
        }
    }
}

/// A string claim of the request object (`Ok(None)` when absent, an error when not a string).
fn text<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("{} must be a string", safe_name(name))),
    }
}

/// What a checked authorization request asks for.
struct Checked {
    /// The `login_hint` user; none for a passkey sign-in (the passkey names the user).
    user_id: Option<UserId>,
    scope: String,
    nonce: Option<String>,
    code_challenge: String,
    acr_values: Vec<String>,
    ui_locales: Vec<String>,
}

/// `GET`/`POST /oidc/authorize`: checks the request and its signed request object, starts the
/// flow for the `login_hint` user and sends the browser to the prompt.
pub(crate) async fn authorize(
    ctx: &Ctx,
    params: Vec<(String, String)>,
    browser: Browser,
) -> Result<AuthorizeAnswer, PageError> {
    let form = Form::new(params).map_err(|e| page(PageKind::Invalid, e.description))?;
    let client_id = form
        .get("client_id")
        .ok_or_else(|| page(PageKind::Invalid, "client_id is required."))?;
    let client = ciba_store::client(&ctx.db, client_id)
        .await?
        .ok_or_else(|| page(PageKind::Invalid, "Unknown client_id."))?;
    if form.get("request_uri").is_some() {
        return Err(page(
            PageKind::Invalid,
            "request_uri is not supported: send the signed request object as request.",
        ));
    }
    let request = form.get("request").ok_or_else(|| {
        page(
            PageKind::Invalid,
            "Authorization requests must carry a request object signed by the client (request).",
        )
    })?;
    let claims = verify_request_object(ctx, &client, request).await?;
    // The redirect URI comes from the signed request and must be registered, exactly.
    let redirect_uri = text(&claims, "redirect_uri")
        .map_err(|m| page(PageKind::Invalid, m))?
        .ok_or_else(|| page(PageKind::Invalid, "The request object has no redirect_uri."))?;
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(page(
            PageKind::Invalid,
            "The redirect_uri is not registered for this client.",
        ));
    }
    if form.get("redirect_uri").is_some_and(|r| r != redirect_uri) {
        return Err(page(
            PageKind::Invalid,
            "The redirect_uri outside the request object differs from the one inside.",
        ));
    }
    if text(&claims, "client_id").ok().flatten() != Some(client_id) {
        return Err(page(
            PageKind::Invalid,
            "The request object's client_id is missing or is not this client.",
        ));
    }
    let state = text(&claims, "state")
        .ok()
        .flatten()
        .filter(|s| s.len() <= MAX_ECHOED);
    let errors = RedirectError {
        ctx,
        redirect_uri,
        state,
    };
    let checked = match check(ctx, &client, &form, &claims).await {
        Ok(checked) => checked,
        Err(e) => return Ok(errors.answer(e.code, &e.description)),
    };
    match start(ctx, &client, redirect_uri, state, checked, browser).await {
        Ok(answer) => Ok(answer),
        Err(e) if e.code == OAuthCode::ServerError => {
            Err(page(PageKind::Internal, "Internal error."))
        }
        Err(e) => Ok(errors.answer(e.code, &e.description)),
    }
}

/// HMAC algorithms a request object may be signed with, by a client that has a secret.
const HMAC: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::HS256,
    jsonwebtoken::Algorithm::HS384,
    jsonwebtoken::Algorithm::HS512,
];

/// Verifies the request object's signature: with one of the client's registered keys
/// (asymmetric algorithms), or, for a client registered with a secret, HMAC under that secret
/// (HS256/384/512, as Duo's clients sign). Returns its claims (checked later).
async fn verify_request_object(
    ctx: &Ctx,
    client: &CibaClient,
    request: &str,
) -> Result<Map<String, Value>, PageError> {
    let not_signed = || {
        page(
            PageKind::Invalid,
            "The request object is not signed by this client.",
        )
    };
    let hmac = jsonwebtoken::decode_header(request)
        .ok()
        .map(|h| h.alg)
        .filter(|alg| HMAC.contains(alg));
    if let Some(alg) = hmac {
        let secret = ciba_store::request_object_secret(&ctx.db, &client.client_id)
            .await?
            .ok_or_else(not_signed)?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
        return jsonwebtoken::decode::<Map<String, Value>>(request, &key, &validation)
            .map(|data| data.claims)
            .map_err(|_| not_signed());
    }
    client_auth::verify_client_jwt(client, request, None).map_err(|e| match e {
        ClientJwtError::Malformed => page(PageKind::Invalid, "The request object is malformed."),
        ClientJwtError::Algorithm => page(
            PageKind::Invalid,
            "The request object must be signed with the client's registered keys or secret (alg none is refused).",
        ),
        ClientJwtError::NoKey | ClientJwtError::Signature => not_signed(),
    })
}

/// Checks everything after the redirect URI: errors from here go back to the client.
async fn check(
    ctx: &Ctx,
    client: &CibaClient,
    form: &Form,
    claims: &Map<String, Value>,
) -> Result<Checked, OAuthError> {
    let invalid = |m: &str| OAuthError::new(OAuthCode::InvalidRequest, m);
    let invalid_object = |m: &str| OAuthError::new(OAuthCode::InvalidRequestObject, m);
    if !client.allows(GrantType::AuthorizationCode) {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "this client is not registered for the authorization_code grant",
        ));
    }
    // The request object: issued by this client for this provider, short-lived, used once.
    let now = ctx.now();
    if text(claims, "iss").ok().flatten() != Some(client.client_id.as_str()) {
        return Err(invalid_object(
            "the request object's iss is not this client",
        ));
    }
    let audiences = [issuer(ctx), endpoint_url(ctx, AUTHORIZE_PATH)];
    if !client_auth::audience_matches(claims.get("aud"), &audiences) {
        return Err(invalid_object(
            "the request object's aud is not this provider",
        ));
    }
    let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
        return Err(invalid_object("the request object needs a numeric exp"));
    };
    if exp <= now {
        return Err(invalid_object("the request object has expired"));
    }
    if exp > now + MAX_REQUEST_OBJECT_LIFETIME {
        return Err(invalid_object(
            "the request object may live at most 10 minutes (exp)",
        ));
    }
    for name in ["nbf", "iat"] {
        if let Some(value) = claims.get(name) {
            match value.as_i64() {
                Some(t) if t <= now + CLOCK_SKEW => {}
                Some(_) => {
                    return Err(invalid_object(&format!(
                        "the request object's {name} is in the future"
                    )));
                }
                None => {
                    return Err(invalid_object(&format!(
                        "the request object's {name} must be a number"
                    )));
                }
            }
        }
    }
    if let Some(jti) = claims.get("jti") {
        let jti = jti
            .as_str()
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| invalid_object("the request object's jti must be a short string"))?;
        let key = client_auth::jti_key(&client.client_id, jti);
        if !nonces::record_once(&ctx.db, &key, exp, now).await? {
            return Err(invalid_object("the request object was used before (jti)"));
        }
    }
    // Parameters outside the request object must repeat its values (OIDC Core §6.1).
    for name in form.names() {
        if OUTSIDE_ONLY.contains(&name) {
            continue;
        }
        let outside = form.get(name);
        let inside = text(claims, name).ok().flatten();
        if outside.is_some() && outside != inside {
            return Err(invalid(&format!(
                "the parameter {} outside the request object conflicts with it (put every parameter inside)",
                safe_name(name)
            )));
        }
    }
    let read = |name: &str| text(claims, name).map_err(|m| invalid(&m));
    match read("response_type")? {
        Some("code") => {}
        None => return Err(invalid("response_type is required")),
        Some(_) => {
            return Err(OAuthError::new(
                OAuthCode::UnsupportedResponseType,
                "only response_type=code is supported",
            ));
        }
    }
    if read("response_mode")?.is_some_and(|m| m != "query") {
        return Err(invalid("only response_mode=query is supported"));
    }
    let scope = read("scope")?.unwrap_or_default();
    let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    if !scopes.contains(&"openid") {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "scope must include openid",
        ));
    }
    if let Some(unknown) = scopes.iter().find(|s| !SUPPORTED_SCOPES.contains(s)) {
        let _ = unknown;
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "supported scopes are openid, profile and offline_access",
        ));
    }
    // PKCE: S256 only.
    let code_challenge = match (read("code_challenge")?, read("code_challenge_method")?) {
        (Some(challenge), Some("S256")) if is_token(challenge) => challenge.to_string(),
        (Some(_), Some("S256")) => {
            return Err(invalid(
                "code_challenge must be the base64url SHA-256 of the code_verifier (43 characters)",
            ));
        }
        (_, Some("plain")) => {
            return Err(invalid("code_challenge_method plain is refused: use S256"));
        }
        (None, _) | (_, None) => {
            return Err(invalid(
                "PKCE is required: code_challenge with code_challenge_method=S256",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(invalid("code_challenge_method must be S256"));
        }
    };
    let nonce = read("nonce")?;
    if nonce.is_some_and(|n| n.len() > MAX_ECHOED) {
        return Err(invalid("nonce may be at most 512 characters"));
    }
    if read("state")?.is_some_and(|s| s.len() > MAX_ECHOED) {
        return Err(invalid("state may be at most 512 characters"));
    }
    // prompt: every sign-in here asks the user (MFA is the interaction), so `none` cannot be
    // honoured and `login` always is.
    let prompt = read("prompt")?.unwrap_or_default();
    let prompts: Vec<&str> = prompt.split(' ').filter(|p| !p.is_empty()).collect();
    if prompts.contains(&"none") {
        if prompts.len() > 1 {
            return Err(invalid("prompt=none cannot be combined with other values"));
        }
        return Err(OAuthError::new(
            OAuthCode::LoginRequired,
            "prompt=none: this provider always asks the user for the second factor",
        ));
    }
    if prompts
        .iter()
        .any(|p| !["login", "consent", "select_account"].contains(p))
    {
        return Err(invalid(
            "prompt may hold none, login, consent and select_account",
        ));
    }
    // max_age: every sign-in authenticates afresh (auth_time is always in the ID token), so any
    // max_age is met; it must still be a non-negative integer.
    match claims.get("max_age") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some() => {}
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {}
        Some(_) => return Err(invalid("max_age must be a non-negative integer")),
    }
    if claims.contains_key("id_token_hint") || claims.contains_key("login_hint_token") {
        return Err(invalid(
            "name the user with login_hint (id_token_hint and login_hint_token are not supported here)",
        ));
    }
    let acr_values: Vec<String> = read("acr_values")?
        .unwrap_or_default()
        .split(' ')
        .filter(|a| ACR_VALUES.contains(a))
        .map(str::to_string)
        .collect();
    let ui_locales: Vec<String> = read("ui_locales")?
        .unwrap_or_default()
        .split(' ')
        .filter(|l| {
            !l.is_empty()
                && l.len() <= 35
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .take(10)
        .map(str::to_string)
        .collect();
    // Without login_hint, a passkey sign-in: the flow refuses it unless the application allows
    // passkeys (discoverable credentials).
    let user_id: Option<UserId> = read("login_hint")?
        .map(|hint| {
            hint.parse()
                .map_err(|_| invalid("login_hint is not a valid user id"))
        })
        .transpose()?;
    Ok(Checked {
        user_id,
        scope: scopes.join(" "),
        nonce: nonce.map(str::to_string),
        code_challenge,
        acr_values,
        ui_locales,
    })
}

/// Starts the flow, stores the request bound to the browser and answers the prompt.
async fn start(
    ctx: &Ctx,
    client: &CibaClient,
    redirect_uri: &str,
    state: Option<&str>,
    checked: Checked,
    browser: Browser,
) -> Result<AuthorizeAnswer, OAuthError> {
    let app = applications::get(&ctx.db, &client.application_id)
        .await?
        .ok_or_else(|| super::error::server_error("the client's application"))?;
    let mut request = match &checked.user_id {
        Some(user) => CreateFlowRequest::new(user.clone()),
        None => CreateFlowRequest::passkey(),
    };
    request.application_name = Some(client.name.clone());
    request.accessing_ip = browser.ip.clone();
    request.user_agent = browser
        .user_agent
        .as_deref()
        .filter(|ua| ua.len() <= 512 && tessera_protocol::display::is_displayable(ua))
        .map(str::to_string);
    request.expires_in = Some(ctx.config.oidc_authorization_ttl);
    if checked.acr_values.first().map(String::as_str) == Some(ACR_DEVICE_KEY) {
        // Only the device key may complete the flow: no passcode fallbacks.
        request.use_code = Some(false);
        request.otp_fallback = Some(false);
        request.sms_backup = Some(false);
        request.voice_backup = Some(false);
        request.email_backup = Some(false);
    }
    let id = {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("azr_{}", hex::encode(bytes))
    };
    let return_url = format!("{}?request={id}", endpoint_url(ctx, RESUME_PATH));
    hosted_prompt(&mut request, &return_url, &checked.ui_locales);
    let flow = flows::create(ctx, &app, request)
        .await
        .map_err(|e| match e {
            DomainError::Refused {
                code: tessera_protocol::error::ErrorCode::UserNotFound,
                ..
            } => OAuthError::new(
                OAuthCode::InvalidRequest,
                "login_hint names no user of this application",
            ),
            DomainError::Refused {
                code: tessera_protocol::error::ErrorCode::PasskeysNotEnabled,
                ..
            } => OAuthError::new(
                OAuthCode::InvalidRequest,
                "login_hint (the user the client's first factor authenticated) is required: this application does not allow passkey sign-in",
            ),
            other => OAuthError::from(other),
        })?;
    let (name, secure) = cookie_name(ctx);
    let value = browser
        .cookie
        .filter(|c| is_token(c))
        .unwrap_or_else(random_token);
    let now = ctx.now();
    let stored = StoredAuthorization {
        id: id.clone(),
        client_id: client.client_id.clone(),
        application_id: client.application_id.as_str().to_string(),
        // Empty until a passkey sign-in names its user (set when the browser resumes).
        user_id: checked
            .user_id
            .as_ref()
            .map_or_else(String::new, |u| u.as_str().to_string()),
        flow_id: flow.id.as_str().to_string(),
        redirect_uri: redirect_uri.to_string(),
        state: state.map(str::to_string),
        nonce: checked.nonce,
        code_challenge: checked.code_challenge,
        scope: checked.scope,
        acr_values: Some(checked.acr_values.join(" ")).filter(|a| !a.is_empty()),
        browser_digest: applications::api_key_digest(&value),
        family_id: random_token(),
        created_at: now,
        expires_at: flow.expires_at,
        resumed_at: None,
        claims: None,
        code_expires_at: None,
        code_used_at: None,
    };
    store::insert(&ctx.db, &stored).await?;
    tracing::info!(client_id = %client.client_id, flow_id = %flow.id, "authorization request started");
    let location = start_prompt(&flow)?;
    Ok(AuthorizeAnswer::Prompt {
        location,
        cookie: BrowserCookie {
            name,
            value,
            max_age: i64::from(ctx.config.oidc_authorization_ttl),
            secure,
        },
    })
}

// ---- The hosted prompt ------------------------------------------------------------------

/// Makes the flow a hosted one: the prompt page runs it and, once it is over, sends the
/// browser to `return_url` (the resume endpoint, with this request's id) exactly as given.
fn hosted_prompt(request: &mut CreateFlowRequest, return_url: &str, ui_locales: &[String]) {
    request.hosted = Some(tessera_protocol::flows::HostedPrompt {
        return_url: return_url.to_string(),
        ui_locales: crate::domain::hosted::usable_ui_locales(ui_locales),
        web_view: None,
    });
}

/// The URL the browser is sent to for the flow: its `prompt_url`
/// (`{public_url}/prompt#<browser token>`; the token never leaves the fragment).
fn start_prompt(flow: &FlowState) -> Result<String, OAuthError> {
    flow.prompt_url
        .clone()
        .ok_or_else(|| super::error::server_error("the hosted flow's prompt URL"))
}

// ---- The resume --------------------------------------------------------------------------

/// `GET /oidc/authorize/resume?request=ID`: the browser that started the request comes back;
/// once the flow has ended, the first arrival is sent to the client with a code (or with
/// `access_denied`). Returns where to send the browser.
pub(crate) async fn resume(
    ctx: &Ctx,
    request_id: Option<&str>,
    cookie: Option<&str>,
) -> Result<String, PageError> {
    let id = request_id
        .filter(|id| id.len() <= 64)
        .ok_or_else(|| page(PageKind::Invalid, "The request parameter is missing."))?;
    let mut authorization = store::get(&ctx.db, id)
        .await?
        .ok_or_else(|| page(PageKind::Invalid, "Unknown sign-in request."))?;
    let same_browser = cookie.is_some_and(|c| {
        bool::from(
            applications::api_key_digest(c)
                .as_bytes()
                .ct_eq(authorization.browser_digest.as_bytes()),
        )
    });
    if !same_browser {
        return Err(page(
            PageKind::OtherBrowser,
            "This sign-in was started in another browser. Start again from the application.",
        ));
    }
    let already = || {
        page(
            PageKind::NotNow,
            "This sign-in is already finished. Start again from the application.",
        )
    };
    if authorization.resumed_at.is_some() {
        return Err(already());
    }
    let client = ciba_store::client(&ctx.db, &authorization.client_id)
        .await?
        .ok_or_else(|| page(PageKind::Invalid, "The application's client was removed."))?;
    let app: ApplicationId = authorization
        .application_id
        .parse()
        .map_err(|_| page(PageKind::Internal, "Internal error."))?;
    let flow = flows::get(ctx, &app, &authorization.flow_id).await?;
    let errors = RedirectError {
        ctx,
        redirect_uri: &authorization.redirect_uri,
        state: authorization.state.as_deref(),
    };
    let now = ctx.now();
    match flow.status {
        FlowStatus::MfaCompleted => {
            if authorization.user_id.is_empty() {
                // A passkey sign-in: the user is the one the flow's passkey named.
                authorization.user_id = flow
                    .user_id
                    .as_ref()
                    .map(|u| u.as_str().to_string())
                    .ok_or_else(|| page(PageKind::Internal, "Internal error."))?;
            }
            let claims = result_claims(ctx, &client, &authorization, &flow).await?;
            let claims_text = serde_json::to_string(&claims)
                .map_err(|_| page(PageKind::Internal, "Internal error."))?;
            let code = random_token();
            let digest = applications::api_key_digest(&code);
            let expires_at = now + i64::from(ctx.config.oidc_code_ttl);
            if !store::resume(
                &ctx.db,
                id,
                &authorization.browser_digest,
                &authorization.user_id,
                Some(&claims_text),
                Some((&digest, expires_at)),
                now,
            )
            .await?
            {
                return Err(already());
            }
            tracing::info!(client_id = %client.client_id, flow_id = %flow.id, "authorization code issued");
            let iss = issuer(ctx);
            let mut params = vec![("code", code.as_str())];
            if let Some(state) = authorization.state.as_deref() {
                params.push(("state", state));
            }
            params.push(("iss", iss.as_str()));
            Ok(redirect_with(&authorization.redirect_uri, &params))
        }
        FlowStatus::MfaFailed | FlowStatus::Canceled => {
            if !store::resume(
                &ctx.db,
                id,
                &authorization.browser_digest,
                &authorization.user_id,
                None,
                None,
                now,
            )
            .await?
            {
                return Err(already());
            }
            let description = denial(flow.result.as_ref().map(|r| r.status));
            match errors.answer(OAuthCode::AccessDenied, description) {
                AuthorizeAnswer::Redirect { location } => Ok(location),
                AuthorizeAnswer::Prompt { .. } => Err(page(PageKind::Internal, "Internal error.")),
            }
        }
        _ => Err(page(
            PageKind::NotNow,
            "This sign-in is not finished yet. Go back and complete it.",
        )),
    }
}

/// The `error_description` of a flow that ended without authenticating: its result first
/// (a stable word the client can act on), then a sentence.
fn denial(status: Option<FlowResultStatus>) -> &'static str {
    match status {
        Some(FlowResultStatus::Denied) => "denied: the user denied the request",
        Some(FlowResultStatus::Expired) => "expired: the user did not answer in time",
        Some(FlowResultStatus::Canceled) => "canceled: the user canceled the sign-in",
        Some(FlowResultStatus::OtpLocked) => "otp_locked: too many wrong passcodes",
        Some(FlowResultStatus::DeviceNotPaired) | Some(FlowResultStatus::PairingError) => {
            "device_not_paired: the new device was not paired"
        }
        _ => "failed: the sign-in could not be completed",
    }
}

/// The factor and reason (Duo's words) of the step that completed a flow, from its
/// `pingid.authentication.type`.
fn factor_of(auth_type: Option<&str>) -> (&'static str, &'static str) {
    match auth_type {
        Some("MOBILE_APP_SWIPE") | Some("MOBILE_APP_BIOMETRICS") => ("push", "user_approved"),
        Some("DEVICE_AUTHORIZATION") => ("device_authorization", "trusted_device"),
        Some("MOBILE_APP_OTP") => ("passcode", "valid_passcode"),
        Some("SMS") => ("sms_passcode", "valid_passcode"),
        Some("VOICE") => ("phone_call", "valid_passcode"),
        Some("EMAIL") => ("email_passcode", "valid_passcode"),
        Some("YUBIKEY") | Some("OATH_TOKEN") => ("hardware_token", "valid_passcode"),
        Some("AUTHENTICATOR_APP") | Some("DESKTOP_OTP") => ("passcode", "valid_passcode"),
        Some("POLICY_APPROVE") => ("policy", "allowed_by_policy"),
        Some("BYPASS") => ("bypass", "bypass_user"),
        Some("RECOVERY_CODE") => ("recovery_code", "valid_passcode"),
        Some("SECURITY_KEY") | Some("PLATFORM") | Some("FIDO2_BIOMETRICS") => {
            ("webauthn", "valid_webauthn")
        }
        _ => ("mfa", "completed"),
    }
}

/// The ID token's claims about a completed flow: `acr`, `amr` (RFC 8176), `auth_time`, the
/// flow's status and result, and Duo's `auth_result` and `auth_context`.
async fn result_claims(
    ctx: &Ctx,
    client: &CibaClient,
    authorization: &StoredAuthorization,
    flow: &FlowState,
) -> Result<Value, PageError> {
    let result = flow.result.clone();
    let attributes = result
        .as_ref()
        .map(|r| r.attributes.clone())
        .unwrap_or_default();
    let attribute = |name: &str| attributes.get(&format!("pingid.authentication.{name}"));
    let attribute_text = |name: &str| attribute(name).and_then(Value::as_str).map(str::to_string);
    let auth_type = attribute_text("type");
    let (factor, reason) = factor_of(auth_type.as_deref());
    let mut amr: Vec<String> = attribute("amr")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    let authenticated = result
        .as_ref()
        .is_some_and(|r| r.status == FlowResultStatus::Authenticated);
    if authenticated && !amr.iter().any(|m| m == "mfa") {
        amr.push("mfa".into());
    }
    // A bypassed flow used no factor: its own acr, no amr (docs/bypass-and-recovery.md).
    let bypassed = result
        .as_ref()
        .is_some_and(|r| r.status == FlowResultStatus::Bypassed);
    let device_key = matches!(factor, "push" | "device_authorization");
    let acr = if bypassed {
        amr.clear();
        crate::domain::bypass::ACR_BYPASS
    } else if !authenticated {
        ACR_DEVICE_REGISTRATION
    } else if device_key {
        if authorization
            .acr_values
            .as_deref()
            .is_some_and(|a| a.split(' ').any(|v| v == ACR_DEVICE_KEY))
        {
            ACR_DEVICE_KEY
        } else {
            ACR_MFA
        }
    } else {
        ACR_MFA
    };
    let now = ctx.now();
    let auth_time = match result.as_ref().and_then(|r| r.authentication_id.as_ref()) {
        Some(id) => crate::store::authentications::get(&ctx.db, id, now)
            .await?
            .and_then(|a| a.answered_at)
            .unwrap_or(now),
        None => now,
    };
    let app: ApplicationId = client.application_id.clone();
    let location = |prefix: &str| {
        json!({
            "city": Value::Null,
            "state": Value::Null,
            "country": attribute(&format!("{prefix}.country")).cloned().unwrap_or(Value::Null),
        })
    };
    let device_name = attribute_text("authenticating.device.model")
        .or_else(|| attribute_text("authenticating.device.id"));
    Ok(json!({
        "acr": acr,
        "amr": amr,
        "auth_time": auth_time,
        "preferred_username": authorization.user_id,
        "flow_status": flow.status.as_str(),
        "flow_result": result.as_ref().map(|r| r.status),
        "auth_result": {
            "result": "allow",
            "status": "allow",
            "status_msg": "Login Successful",
        },
        "auth_context": {
            "txid": flow.id.as_str(),
            "timestamp": auth_time,
            "event_type": "authentication",
            "user": {
                "name": authorization.user_id,
                "key": subject(&app, &authorization.user_id),
            },
            "application": {
                "name": client.name,
                "key": client.client_id,
            },
            "auth_device": {
                "ip": attribute("authenticating.device.ip").cloned().unwrap_or(Value::Null),
                "location": json!({
                    "city": Value::Null,
                    "state": Value::Null,
                    "country": Value::Null,
                    "latitude": attribute("authenticating.device.latitude").cloned().unwrap_or(Value::Null),
                    "longitude": attribute("authenticating.device.longitude").cloned().unwrap_or(Value::Null),
                }),
                "name": device_name,
                "key": attribute("authenticating.device.id").cloned().unwrap_or(Value::Null),
            },
            "access_device": {
                "ip": attribute("accessing.device.ip").cloned().unwrap_or(Value::Null),
                "location": location("accessing.device"),
                "hostname": Value::Null,
            },
            "factor": factor,
            "reason": reason,
            "result": "success",
        },
    }))
}

/// Whether `verifier` (RFC 7636 §4.1: 43–128 unreserved characters) hashes to `challenge`
/// (S256), compared in constant time.
pub(crate) fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let digest = Sha256::digest(verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_the_base64url_sha256_of_the_verifier() {
        // Computed independently: base64url(SHA-256(verifier)) without padding.
        let verifier = "dBjftJeZ4CVP-mJ92K1oMVr6EBqLvEFYCyvhH8IbKoE";
        let challenge = "eMvd_uuDlTWdf5VcSNIkhEMdQTfVKVHAD28XV_r07uU";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
        assert!(!pkce_matches(&format!("{verifier} "), challenge));
    }

    #[test]
    fn redirects_keep_the_registered_query_and_encode_values() {
        let to = redirect_with(
            "https://rp.example/cb?tenant=a",
            &[("code", "x y"), ("state", "s&t=1")],
        );
        assert_eq!(
            to,
            "https://rp.example/cb?tenant=a&code=x+y&state=s%26t%3D1"
        );
    }

    #[test]
    fn factors_follow_the_completing_step() {
        assert_eq!(factor_of(Some("MOBILE_APP_SWIPE")).0, "push");
        assert_eq!(factor_of(Some("SMS")).0, "sms_passcode");
        assert_eq!(factor_of(Some("DEVICE_AUTHORIZATION")).1, "trusted_device");
        assert_eq!(factor_of(None).0, "mfa");
    }

    #[test]
    fn denials_start_with_the_flow_result() {
        assert!(denial(Some(FlowResultStatus::Denied)).starts_with("denied:"));
        assert!(denial(Some(FlowResultStatus::Canceled)).starts_with("canceled:"));
        assert!(denial(None).starts_with("failed:"));
    }

    #[test]
    fn tokens_are_43_base64url_characters() {
        assert!(is_token(&random_token()));
        assert!(!is_token("short"));
        assert!(!is_token(
            &"a".repeat(42).chars().chain(['/']).collect::<String>()
        ));
    }
}
