//! OIDC redirect MFA through the hosted prompt, called directly without HTTP: the relying party's
//! signed authorization request starts a hosted flow bound to the browser; the page (with the
//! browser token of its URL's fragment) starts the push; the device's approval lets the resume
//! issue one code, redeemed once at the token endpoint with the PKCE verifier (RFC 7636). A
//! denial or an expiry (by the clock) ends without a code; a verifier that does not match, a code
//! presented late and a redirect URI that is not registered are refused. SQLite, and PostgreSQL
//! when `DATABASE_URL` names one.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_protocol::authentication::Decision;
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient, TokenResponse};
use tessera_protocol::flows::{FlowAction, FlowBrowserState, FlowStatus};
use tessera_protocol::ids::UserId;

use super::{BrowserCaller, act, view};
use crate::clock::Clock;
use crate::domain::ciba::authorize::{self, AuthorizeAnswer, Browser, PageError, PageKind};
use crate::domain::ciba::{BasicCredentials, Form, OAuthCode, OAuthError, issuer, subject, token};
use crate::domain::testing::{TestDevice, TestDomain};

/// The relying party's one registered redirect URI.
const REDIRECT: &str = "https://rp.example/callback";

/// The PKCE verifier the relying party keeps (RFC 7636 §4.1: 43 to 128 unreserved characters).
const VERIFIER: &str = "the-portals-code-verifier-0123456789-abcdefghijkl";

/// A verifier as well-formed as [`VERIFIER`], of another challenge.
const OTHER_VERIFIER: &str = "another-code-verifier-0123456789-abcdefghijklmnop";

/// `code_challenge` for `verifier` (S256).
fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn form(pairs: &[(&str, &str)]) -> Form {
    Form::new(
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
            .collect(),
    )
    .expect("a form")
}

/// The query parameter `name` of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .expect("a URL")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A relying party registered for redirect MFA with a secret (it signs its request objects with
/// it, HS256, and authenticates at the token endpoint with it).
struct Portal {
    id: String,
    secret: String,
}

impl Portal {
    async fn registered(domain: &TestDomain) -> Self {
        let (id, secret) = domain
            .client(RegisterCibaClient {
                redirect_uris: vec![REDIRECT.into()],
                ..RegisterCibaClient::new(
                    "Portal",
                    DeliveryMode::Poll,
                    ClientAuthMethod::ClientSecretBasic,
                )
            })
            .await;
        Self { id, secret }
    }

    /// The request object's claims for `user`: code flow, PKCE S256 of [`VERIFIER`], `state`
    /// and `nonce`, back to [`REDIRECT`].
    fn claims(&self, domain: &TestDomain, user: &UserId) -> serde_json::Map<String, Value> {
        let now = domain.clock.now();
        let claims = json!({
            "iss": self.id,
            "aud": issuer(&domain.ctx),
            "exp": now + 300,
            "iat": now,
            "client_id": self.id,
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": REDIRECT,
            "login_hint": user.as_str(),
            "state": "state-of-the-portal",
            "nonce": "nonce-of-the-portal",
            "code_challenge": challenge_of(VERIFIER),
            "code_challenge_method": "S256",
        });
        match claims {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    /// The authorization request carrying `claims` signed with the client's secret, from a
    /// browser without the binding cookie yet.
    async fn authorize(
        &self,
        domain: &TestDomain,
        claims: serde_json::Map<String, Value>,
    ) -> Result<AuthorizeAnswer, PageError> {
        let request = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("signed");
        let params = vec![
            ("client_id".to_string(), self.id.clone()),
            ("request".to_string(), request),
        ];
        authorize::authorize(&domain.ctx, params, Browser::default()).await
    }

    /// The token request redeeming `code` with `verifier`, for `redirect_uri`.
    async fn exchange(
        &self,
        domain: &TestDomain,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let form = form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ]);
        let basic = Some(BasicCredentials {
            id: self.id.clone(),
            secret: self.secret.clone(),
        });
        token::exchange(&domain.ctx, basic, &form).await
    }
}

/// A sign-in the authorization endpoint started: the browser's binding cookie, the page's
/// browser token and the id of the request the resume URL names.
struct SignIn {
    cookie: String,
    token: String,
    request_id: String,
}

impl SignIn {
    /// The page's calls, from its own origin.
    fn page(&self) -> BrowserCaller<'_> {
        BrowserCaller {
            token: Some(&self.token),
            origin: Some("https://auth.example.com"),
            fetch_site: Some("same-origin"),
            accept_language: None,
        }
    }

    /// The flow as the page sees it now.
    async fn seen(&self, domain: &TestDomain) -> FlowBrowserState {
        view(&domain.ctx, self.page(), None, Duration::ZERO)
            .await
            .expect("the page reads its flow")
    }

    /// The browser comes back to the resume URL with its cookie: where it is sent.
    async fn resume(&self, domain: &TestDomain) -> Result<String, PageError> {
        authorize::resume(&domain.ctx, Some(&self.request_id), Some(&self.cookie)).await
    }
}

/// Starts `user`'s sign-in at `portal`: the browser is sent to the hosted prompt.
async fn started(domain: &TestDomain, portal: &Portal, user: &UserId) -> SignIn {
    let answer = portal
        .authorize(domain, portal.claims(domain, user))
        .await
        .expect("a valid request");
    let AuthorizeAnswer::Prompt { location, cookie } = answer else {
        panic!("sent back to the client instead of the prompt: {answer:?}");
    };
    let (page, token) = location.split_once('#').expect("the token in the fragment");
    assert_eq!(page, "https://auth.example.com/prompt");
    let mut sign_in = SignIn {
        cookie: cookie.value,
        token: token.to_string(),
        request_id: String::new(),
    };
    let seen = sign_in.seen(domain).await;
    assert_eq!(seen.status, FlowStatus::AuthenticationRequired);
    sign_in.request_id = param(&seen.return_url, "request").expect("the resume names its request");
    sign_in
}

/// The page starts the push and `device` answers it with `decision`.
async fn answered(domain: &TestDomain, sign_in: &SignIn, device: &TestDevice, decision: Decision) {
    let before = domain.pushes.all().len();
    let waiting = act(
        &domain.ctx,
        sign_in.page(),
        FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: None,
        },
    )
    .await
    .expect("the push is sent");
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    let pushed = domain.pushes.at_least(before + 1).await;
    assert_eq!(pushed[before].1, device.enrollment.enrollment_id);
    let request = domain.pull(device).await.remove(0);
    domain
        .answered_by(device, &request, decision)
        .await
        .expect("recorded");
}

/// The claims of an ID token (read, not verified: the token endpoint signed it).
fn id_token_claims(tokens: &TokenResponse) -> Value {
    let payload = tokens.id_token.split('.').nth(1).expect("a JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn refusal<T: std::fmt::Debug>(result: Result<T, OAuthError>) -> OAuthCode {
    result.expect_err("refused").code
}

#[tokio::test]
async fn an_approved_push_issues_one_code_that_is_exchanged_once() {
    for domain in TestDomain::each_engine().await {
        let (ivan, phone) = domain.user_with_device("ivan").await;
        let portal = Portal::registered(&domain).await;
        let sign_in = started(&domain, &portal, &ivan).await;
        assert!(
            domain.pushes.all().is_empty(),
            "the page starts the push, not the authorization request"
        );
        assert_eq!(
            sign_in.resume(&domain).await.expect_err("not yet").kind,
            PageKind::NotNow
        );

        answered(&domain, &sign_in, &phone, Decision::Approve).await;
        assert_eq!(sign_in.seen(&domain).await.status, FlowStatus::MfaCompleted);
        // Another browser (another cookie) is not sent anywhere.
        let elsewhere = authorize::resume(
            &domain.ctx,
            Some(&sign_in.request_id),
            Some("another-browsers-cookie-0123456789-abcdefgh"),
        )
        .await;
        assert_eq!(elsewhere.expect_err("refused").kind, PageKind::OtherBrowser);

        let back = sign_in.resume(&domain).await.expect("sent back");
        assert!(back.starts_with(REDIRECT), "{back}");
        assert_eq!(param(&back, "error"), None);
        assert_eq!(
            param(&back, "state").as_deref(),
            Some("state-of-the-portal")
        );
        assert_eq!(param(&back, "iss"), Some(issuer(&domain.ctx)));
        let code = param(&back, "code").expect("a code");
        // The resume issues one code: the browser coming back again gets none.
        assert_eq!(
            sign_in.resume(&domain).await.expect_err("once").kind,
            PageKind::NotNow
        );

        let tokens = portal
            .exchange(&domain, &code, VERIFIER, REDIRECT)
            .await
            .expect("tokens");
        let claims = id_token_claims(&tokens);
        assert_eq!(claims["sub"], json!(subject(&domain.app.id, ivan.as_str())));
        assert_eq!(claims["aud"], json!(portal.id));
        assert_eq!(claims["nonce"], json!("nonce-of-the-portal"));
        assert_eq!(claims["acr"], json!("mfa"));
        assert!(
            claims["amr"]
                .as_array()
                .is_some_and(|amr| amr.contains(&json!("mfa"))),
            "{claims}"
        );

        // The same code again: refused.
        assert_eq!(
            refusal(portal.exchange(&domain, &code, VERIFIER, REDIRECT).await),
            OAuthCode::InvalidGrant
        );
    }
}

#[tokio::test]
async fn a_denied_push_or_an_expired_sign_in_goes_back_without_a_code() {
    for domain in TestDomain::each_engine().await {
        let portal = Portal::registered(&domain).await;

        let (judy, phone) = domain.user_with_device("judy").await;
        let denied = started(&domain, &portal, &judy).await;
        answered(&domain, &denied, &phone, Decision::Deny).await;
        assert_eq!(denied.seen(&domain).await.status, FlowStatus::MfaFailed);
        let back = denied.resume(&domain).await.expect("sent back");
        assert!(back.starts_with(REDIRECT), "{back}");
        assert_eq!(param(&back, "code"), None);
        assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
        assert!(
            param(&back, "error_description").is_some_and(|d| d.starts_with("denied:")),
            "{back}"
        );
        assert_eq!(
            param(&back, "state").as_deref(),
            Some("state-of-the-portal")
        );

        // Nobody answers: once the sign-in's time has passed, it ends expired, without a code.
        let (kim, _phone) = domain.user_with_device("kim").await;
        let unanswered = started(&domain, &portal, &kim).await;
        domain.clock.advance(Duration::from_secs(
            u64::from(domain.ctx.config.oidc_authorization_ttl) + 1,
        ));
        let back = unanswered.resume(&domain).await.expect("sent back");
        assert_eq!(param(&back, "code"), None);
        assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
        assert!(
            param(&back, "error_description").is_some_and(|d| d.starts_with("expired:")),
            "{back}"
        );
    }
}

#[tokio::test]
async fn a_code_is_refused_once_its_minute_has_passed() {
    for domain in TestDomain::each_engine().await {
        let (leo, phone) = domain.user_with_device("leo").await;
        let portal = Portal::registered(&domain).await;
        let sign_in = started(&domain, &portal, &leo).await;
        answered(&domain, &sign_in, &phone, Decision::Approve).await;
        let back = sign_in.resume(&domain).await.expect("sent back");
        let code = param(&back, "code").expect("a code");
        domain.clock.advance(Duration::from_secs(
            u64::from(domain.ctx.config.oidc_code_ttl) + 1,
        ));
        assert_eq!(
            refusal(portal.exchange(&domain, &code, VERIFIER, REDIRECT).await),
            OAuthCode::InvalidGrant
        );
    }
}

#[tokio::test]
async fn a_verifier_of_another_challenge_or_another_redirect_uri_redeems_nothing() {
    for domain in TestDomain::each_engine().await {
        let (mallory, phone) = domain.user_with_device("mallory").await;
        let portal = Portal::registered(&domain).await;
        let sign_in = started(&domain, &portal, &mallory).await;
        answered(&domain, &sign_in, &phone, Decision::Approve).await;
        let back = sign_in.resume(&domain).await.expect("sent back");
        let code = param(&back, "code").expect("a code");

        for (verifier, redirect_uri) in [
            (OTHER_VERIFIER, REDIRECT),
            (&challenge_of(VERIFIER)[..], REDIRECT),
            (VERIFIER, "https://rp.example/other"),
        ] {
            assert_eq!(
                refusal(
                    portal
                        .exchange(&domain, &code, verifier, redirect_uri)
                        .await
                ),
                OAuthCode::InvalidGrant,
                "{verifier} {redirect_uri}"
            );
        }
        // Refused before it was redeemed: the relying party's own verifier still redeems it.
        portal
            .exchange(&domain, &code, VERIFIER, REDIRECT)
            .await
            .expect("tokens");

        // PKCE is S256 only: a plain challenge is sent back as an invalid request.
        let mut plain = portal.claims(&domain, &mallory);
        plain.insert("code_challenge".into(), json!(VERIFIER));
        plain.insert("code_challenge_method".into(), json!("plain"));
        let answer = portal.authorize(&domain, plain).await.expect("answered");
        let AuthorizeAnswer::Redirect { location } = answer else {
            panic!("a plain challenge started a sign-in: {answer:?}");
        };
        assert_eq!(
            param(&location, "error").as_deref(),
            Some("invalid_request")
        );
    }
}

#[tokio::test]
async fn a_redirect_uri_that_is_not_registered_gets_a_page_and_starts_nothing() {
    for domain in TestDomain::each_engine().await {
        let (niaj, _phone) = domain.user_with_device("niaj").await;
        let portal = Portal::registered(&domain).await;
        for unregistered in [
            "https://evil.example/callback",
            "https://rp.example/callback/more",
            "https://rp.example/callback?next=https://evil.example",
            "https://rp.example/Callback",
        ] {
            let mut claims = portal.claims(&domain, &niaj);
            claims.insert("redirect_uri".into(), json!(unregistered));
            let refused = portal
                .authorize(&domain, claims)
                .await
                .expect_err("never a redirect to an unregistered URI");
            assert_eq!(refused.kind, PageKind::Invalid, "{unregistered}");
        }
        let flows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flows WHERE application_id = $1")
            .bind(domain.app.id.as_str())
            .fetch_one(domain.ctx.db.pool())
            .await
            .expect("counted");
        assert_eq!(flows, 0, "no flow was started");
        // The registered URI itself starts one.
        let _ = started(&domain, &portal, &niaj).await;
    }
}
