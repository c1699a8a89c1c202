//! The token grants: the CIBA grant (poll and ping modes) and refresh tokens; the tokens
//! issued (also pushed, in push mode); and the userinfo claims.

use base64::Engine;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::ciba::{AUTH_REQ_ID_CLAIM, DeliveryMode, GrantType, TokenResponse};

use super::client_auth::{self, BasicCredentials, Form};
use super::error::{OAuthCode, OAuthError, invalid_request, server_error};
use super::{TOKEN_PATH, endpoint_url, issuer, subject};
use crate::domain::{Ctx, DomainError};
use crate::store::applications;
use crate::store::authentications::{self, Authentication};
use crate::store::ciba::{self, CibaClient, CibaRequest, Lease};
use crate::store::oidc_authorizations;
use crate::store::oidc_tokens::{self, Issued, IssuedToken, Spend};
use tessera_protocol::ids::UserId;

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `at_hash` / `rt_hash`: the left half of the token's SHA-256, base64url (OpenID Connect Core
/// §3.1.3.6, for ES256).
pub(crate) fn half_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// What an ID token and its tokens say about the authentication.
struct Grant<'a> {
    client: &'a CibaClient,
    user_id: &'a str,
    scope: &'a str,
    acr: &'a str,
    amr: Vec<String>,
    auth_time: i64,
    /// Push mode: the request the tokens answer (an ID token claim and a body member).
    auth_req_id: Option<&'a str>,
    /// The authorization request's `nonce` (authorization code grant).
    nonce: Option<&'a str>,
    /// Redirect MFA: the claims about the flow (its status, Duo's `auth_result` and
    /// `auth_context`, `preferred_username`), added to the ID token.
    result_claims: Option<&'a Value>,
}

/// The methods an approval reports: the device's RFC 8176 values and `mfa` (the device key
/// and the user's verification).
fn amr_of(record: &Authentication) -> Vec<String> {
    let mut amr: Vec<String> = record
        .attributes
        .as_deref()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .and_then(|a| a.get("pingid.authentication.amr").cloned())
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default();
    // A bypass used no factor: no `amr` at all (docs/bypass-and-recovery.md).
    if crate::domain::bypass::is_bypass(record.attributes.as_deref()) {
        return Vec::new();
    }
    if !amr.iter().any(|m| m == "mfa") {
        amr.push("mfa".into());
    }
    amr
}

/// Tokens minted for a grant, not stored yet: the response and the rows to store (digests).
struct Minted {
    response: TokenResponse,
    stored: Vec<(String, IssuedToken)>,
}

/// Mints an access token, a refresh token with `offline_access`, and the signed ID token, all of
/// `family_id`. Nothing is stored: the caller issues [`Minted::stored`] with what the grant
/// spends, in one transaction (`oidc_tokens::issue`).
async fn mint(state: &Ctx, grant: Grant<'_>, family_id: &str) -> Result<Minted, DomainError> {
    let now = state.now();
    let ttl = i64::from(state.config.oidc_token_ttl);
    let access_token = random_token();
    let row = |kind: &str, expires_at: i64| IssuedToken {
        kind: kind.into(),
        client_id: grant.client.client_id.clone(),
        user_id: grant.user_id.to_string(),
        scope: grant.scope.to_string(),
        acr: grant.acr.to_string(),
        amr: serde_json::to_string(&grant.amr).unwrap_or_else(|_| "[]".into()),
        auth_time: grant.auth_time,
        expires_at,
        used_at: None,
        family_id: Some(family_id.to_string()),
    };
    let mut stored = vec![(
        applications::api_key_digest(&access_token),
        row("access", now + ttl),
    )];
    let refresh_token = if grant.scope.split(' ').any(|s| s == "offline_access") {
        let token = random_token();
        stored.push((
            applications::api_key_digest(&token),
            row(
                "refresh",
                now + i64::from(state.config.oidc_refresh_token_ttl),
            ),
        ));
        Some(token)
    } else {
        None
    };
    let mut claims = json!({
        "iss": issuer(state),
        "sub": subject(&grant.client.application_id, grant.user_id),
        "aud": grant.client.client_id,
        "iat": now,
        "exp": now + ttl,
        "auth_time": grant.auth_time,
        "acr": grant.acr,
        "amr": grant.amr,
        "at_hash": half_hash(&access_token),
    });
    if let Some(refresh) = &refresh_token {
        claims["rt_hash"] = json!(half_hash(refresh));
    }
    if let Some(id) = grant.auth_req_id {
        claims[AUTH_REQ_ID_CLAIM] = json!(id);
    }
    if let Some(nonce) = grant.nonce {
        claims["nonce"] = json!(nonce);
    }
    if let Some(Value::Object(extra)) = grant.result_claims {
        for name in RESULT_ONLY_CLAIMS {
            if let Some(value) = extra.get(*name) {
                claims[*name] = value.clone();
            }
        }
    }
    let id_token = super::keys::sign(&state.db, &claims, now, ttl).await?;
    Ok(Minted {
        response: TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl.unsigned_abs(),
            id_token,
            refresh_token,
            scope: grant.scope.to_string(),
            auth_req_id: grant.auth_req_id.map(str::to_string),
        },
        stored,
    })
}

/// How an approved CIBA request's tokens are issued.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RequestGrant {
    /// Exchanged at the token endpoint (poll and ping modes): once per request.
    Exchange,
    /// Pushed to the client's notification endpoint by the instance holding the delivery under
    /// this lease; a later delivery's tokens replace an earlier one's.
    Push(Lease),
}

/// Why an approved CIBA request's tokens were not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotIssued {
    /// Exchanged before; in push mode, the delivery was taken over by another instance.
    Spent,
    /// The user's last device was unpaired (or the user deleted) since the approval.
    DeviceGone,
    /// Exchanged at the token endpoint past the request's `expires_at` (the expiry and the
    /// exchange are checked in the write that would issue the tokens).
    Expired,
}

/// Tokens for an approved CIBA request, minted and issued as `how` says. In push mode the
/// `auth_req_id` goes into the ID token and the body.
pub(crate) async fn tokens_for(
    state: &Ctx,
    client: &CibaClient,
    request: &CibaRequest,
    record: &Authentication,
    how: RequestGrant,
) -> Result<Result<TokenResponse, NotIssued>, DomainError> {
    let push = client.delivery_mode == DeliveryMode::Push;
    // A new grant starts a new family.
    let family_id = random_token();
    let minted = mint(
        state,
        Grant {
            client,
            user_id: request.user_id.as_str(),
            scope: &request.scope,
            acr: &request.acr,
            amr: amr_of(record),
            auth_time: record.answered_at.unwrap_or(record.created_at),
            auth_req_id: push.then_some(request.auth_req_id.as_str()),
            nonce: None,
            result_claims: None,
        },
        &family_id,
    )
    .await?;
    let spend = match how {
        RequestGrant::Exchange => Spend::CibaRequest {
            auth_req_id: &request.auth_req_id,
        },
        RequestGrant::Push(lease) => Spend::CibaPush {
            auth_req_id: &request.auth_req_id,
            lease,
            family_id: &family_id,
        },
    };
    // Marked issued at the time of the write, not when the token request came: the approval
    // just read may have been recorded since (a token request racing the device's answer), and
    // tokens are never marked issued before the approval they are issued for.
    Ok(
        match issue(state, client, request.user_id.as_str(), spend, &minted).await? {
            Issued::Stored => Ok(minted.response),
            Issued::Spent => Err(NotIssued::Spent),
            Issued::NoActiveDevice | Issued::NoUser => Err(NotIssued::DeviceGone),
            Issued::Expired => Err(NotIssued::Expired),
        },
    )
}

/// Issues `minted` for the user stored as `user_id`, spending `spend`, in one write
/// (`oidc_tokens::issue`, at the time of the write).
async fn issue(
    state: &Ctx,
    client: &CibaClient,
    user_id: &str,
    spend: Spend<'_>,
    minted: &Minted,
) -> Result<Issued, DomainError> {
    let user = stored_user_id(user_id)?;
    Ok(oidc_tokens::issue(
        &state.db,
        &client.application_id,
        &user,
        spend,
        &minted.stored,
        state.now(),
    )
    .await?)
}

/// The user id a token or grant was stored with.
fn stored_user_id(user_id: &str) -> Result<UserId, DomainError> {
    user_id
        .parse()
        .map_err(|_| DomainError::Internal("stored user id"))
}

/// Why no tokens go to a user whose device (or who) is gone since they approved.
pub(crate) const DEVICE_GONE: &str =
    "the user's device was unpaired since the approval: no tokens are issued";

/// A token request: authenticates the client and answers its grant (`grant_type`).
pub(crate) async fn exchange(
    state: &Ctx,
    basic: Option<BasicCredentials>,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let audiences = [issuer(state), endpoint_url(state, TOKEN_PATH)];
    let client = client_auth::authenticate_client(state, basic, form, &audiences).await?;
    match form.get("grant_type") {
        None => Err(invalid_request("grant_type is required")),
        Some(other) => {
            let Some(grant) = GrantType::parse(other) else {
                return Err(OAuthError::new(
                    OAuthCode::UnsupportedGrantType,
                    "supported grant types are urn:openid:params:grant-type:ciba, authorization_code and refresh_token",
                ));
            };
            if !client.allows(grant) {
                return Err(OAuthError::new(
                    OAuthCode::UnauthorizedClient,
                    "this client is not registered for this grant type",
                ));
            }
            match grant {
                GrantType::Ciba => ciba_grant(state, &client, form).await,
                GrantType::AuthorizationCode => code_grant(state, &client, form).await,
                GrantType::RefreshToken => refresh_grant(state, &client, form).await,
            }
        }
    }
}

/// The claims only redirect MFA's ID tokens carry, copied from the authorization request's
/// stored result (standard claims are always this module's own).
const RESULT_ONLY_CLAIMS: &[&str] = &[
    "preferred_username",
    "flow_status",
    "flow_result",
    "auth_result",
    "auth_context",
];

/// The authorization code grant (RFC 6749 §4.1.3 with PKCE, RFC 7636): the code is the client's,
/// unexpired, for this redirect URI, and the verifier hashes to its challenge; it is redeemed
/// once, with the tokens it issues in the same transaction. A code presented again is refused
/// and revokes every token issued from it (RFC 6749 §4.1.2).
async fn code_grant(
    state: &Ctx,
    client: &CibaClient,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let code = form
        .get("code")
        .ok_or_else(|| invalid_request("code is required"))?;
    let redirect_uri = form
        .get("redirect_uri")
        .ok_or_else(|| invalid_request("redirect_uri is required"))?;
    let verifier = form
        .get("code_verifier")
        .ok_or_else(|| invalid_request("code_verifier is required (PKCE)"))?;
    let digest = applications::api_key_digest(code);
    let now = state.now();
    let authorization = oidc_authorizations::by_code(&state.db, &digest)
        .await?
        .filter(|a| a.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("unknown code"))?;
    let reused =
        || invalid_grant("the code was already used: the tokens issued from it are revoked");
    if authorization.code_used_at.is_some() {
        revoke_code_family(state, client, &authorization).await?;
        return Err(reused());
    }
    if authorization.code_expires_at.is_none_or(|at| at <= now) {
        return Err(invalid_grant("the code has expired"));
    }
    if authorization.redirect_uri != redirect_uri {
        return Err(invalid_grant(
            "redirect_uri is not the one the code was issued for",
        ));
    }
    if !super::authorize::pkce_matches(verifier, &authorization.code_challenge) {
        return Err(invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let claims: Value = authorization
        .claims
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
        .ok_or_else(|| server_error("an authorization's claims"))?;
    let amr: Vec<String> = claims
        .get("amr")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    let minted = mint(
        state,
        Grant {
            client,
            user_id: &authorization.user_id,
            scope: &authorization.scope,
            acr: claims.get("acr").and_then(Value::as_str).unwrap_or("mfa"),
            amr,
            auth_time: claims
                .get("auth_time")
                .and_then(Value::as_i64)
                .unwrap_or(authorization.created_at),
            auth_req_id: None,
            nonce: authorization.nonce.as_deref(),
            result_claims: Some(&claims),
        },
        &authorization.family_id,
    )
    .await?;
    let spend = Spend::Code { digest: &digest };
    match issue(state, client, &authorization.user_id, spend, &minted).await? {
        Issued::Stored => {}
        Issued::Spent => {
            revoke_code_family(state, client, &authorization).await?;
            return Err(reused());
        }
        Issued::NoUser | Issued::NoActiveDevice => {
            return Err(invalid_grant("the user no longer exists"));
        }
        // Only a CIBA exchange expires in the write; a code's expiry is checked above.
        Issued::Expired => return Err(invalid_grant("the code has expired")),
    }
    tracing::info!(client_id = %client.client_id, "authorization code redeemed");
    Ok(minted.response)
}

/// Revokes the tokens issued from a code presented twice (`authorization`'s family, issued by
/// `client`).
async fn revoke_code_family(
    state: &Ctx,
    client: &CibaClient,
    authorization: &oidc_authorizations::StoredAuthorization,
) -> Result<(), DomainError> {
    let user = stored_user_id(&authorization.user_id)?;
    let revoked = oidc_tokens::revoke_family(
        &state.db,
        &client.application_id,
        &user,
        &authorization.family_id,
    )
    .await?;
    tracing::warn!(
        client_id = %client.client_id,
        revoked,
        "an authorization code was presented again: the tokens issued from it were revoked"
    );
    Ok(())
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(OAuthCode::InvalidGrant, description)
}

async fn ciba_grant(
    state: &Ctx,
    client: &CibaClient,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    if client.delivery_mode == DeliveryMode::Push {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "a push-mode client receives its tokens at its notification endpoint",
        ));
    }
    let id = form
        .get("auth_req_id")
        .ok_or_else(|| invalid_request("auth_req_id is required"))?;
    let request = ciba::request(&state.db, id)
        .await?
        .filter(|r| r.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("unknown auth_req_id"))?;
    if request.tokens_issued_at.is_some() {
        return Err(invalid_grant(
            "this auth_req_id was already exchanged for tokens",
        ));
    }
    let now = state.now();
    // Past its expiry, a request not exchanged is `expired_token` whatever its state (CIBA Core
    // §11): approved or not, the client starts a new one. The write that would issue the tokens
    // checks the expiry again (`oidc_tokens::issue`), so an exchange racing it gets none.
    if now >= request.expires_at {
        return Err(expired());
    }
    let now_ms = state.now_ms();
    if let ciba::PollRecorded::TooSoon { interval_seconds } =
        ciba::record_poll(&state.db, &request.auth_req_id, now_ms).await?
    {
        return Err(OAuthError::new(
            OAuthCode::SlowDown,
            format!(
                "polling faster than the interval: the interval is now {interval_seconds} seconds between token requests"
            ),
        ));
    }
    let authentication_id = request
        .authentication_id
        .parse()
        .map_err(|_| server_error("authentication id"))?;
    let record = authentications::get(&state.db, &authentication_id, now)
        .await?
        .ok_or_else(|| server_error("CIBA authentication"))?;
    match record.state {
        AuthenticationState::Approved => {}
        AuthenticationState::Pending => {
            return Err(OAuthError::new(
                OAuthCode::AuthorizationPending,
                "the user has not answered yet",
            ));
        }
        AuthenticationState::Expired => return Err(expired()),
        AuthenticationState::Denied => {
            return Err(OAuthError::new(
                OAuthCode::AccessDenied,
                super::denial_description(record.denial_reason),
            ));
        }
        AuthenticationState::Failed => {
            return Err(OAuthError::new(
                OAuthCode::AccessDenied,
                "the request could not be completed on the user's device",
            ));
        }
    }
    match tokens_for(state, client, &request, &record, RequestGrant::Exchange).await? {
        Ok(tokens) => {
            tracing::info!(client_id = %client.client_id, "CIBA tokens issued");
            Ok(tokens)
        }
        Err(NotIssued::Spent) => Err(invalid_grant(
            "this auth_req_id was already exchanged for tokens",
        )),
        Err(NotIssued::DeviceGone) => Err(OAuthError::new(OAuthCode::AccessDenied, DEVICE_GONE)),
        Err(NotIssued::Expired) => Err(expired()),
    }
}

fn expired() -> OAuthError {
    OAuthError::new(
        OAuthCode::ExpiredToken,
        "the auth_req_id has expired: start a new request",
    )
}

async fn refresh_grant(
    state: &Ctx,
    client: &CibaClient,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let token = form
        .get("refresh_token")
        .ok_or_else(|| invalid_request("refresh_token is required"))?;
    let digest = applications::api_key_digest(token);
    let now = state.now();
    let stored = oidc_tokens::token(&state.db, &digest)
        .await?
        .filter(|t| t.kind == "refresh" && t.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("unknown refresh token"))?;
    let reused = || invalid_grant("the refresh token was already used");
    if stored.used_at.is_some() {
        // A used refresh token presented again: whoever holds it, the family is compromised.
        revoke_family(state, client, &stored).await?;
        return Err(reused());
    }
    if stored.expires_at <= now {
        return Err(invalid_grant("the refresh token has expired"));
    }
    // Tokens stored before families existed start one here.
    let family_id = stored.family_id.clone().unwrap_or_else(random_token);
    let result_claims = family_claims(state, stored.family_id.as_deref()).await?;
    let minted = mint(
        state,
        Grant {
            client,
            user_id: &stored.user_id,
            scope: &stored.scope,
            acr: &stored.acr,
            amr: serde_json::from_str(&stored.amr).unwrap_or_default(),
            auth_time: stored.auth_time,
            auth_req_id: None,
            nonce: None,
            result_claims: result_claims.as_ref(),
        },
        &family_id,
    )
    .await?;
    // Rotation: a refresh token is used once. Using it and storing its successors is one
    // transaction, so a concurrent second use either wins alone or finds it used and revokes the
    // successors with the family. Tokens stand for the user's device: none are renewed once the
    // user has no active device; the write looks, under the user's lock, so an unpairing of the
    // last device either revokes the successors with it or comes first.
    let spend = Spend::RefreshToken { digest: &digest };
    match issue(state, client, &stored.user_id, spend, &minted).await? {
        Issued::Stored => Ok(minted.response),
        Issued::Spent => {
            revoke_family(state, client, &stored).await?;
            Err(reused())
        }
        Issued::NoActiveDevice | Issued::NoUser => {
            Err(invalid_grant("the user has no active device any more"))
        }
        // Only a CIBA exchange expires in the write; a refresh token's expiry is checked above.
        Issued::Expired => Err(invalid_grant("the refresh token has expired")),
    }
}

/// Revokes the family of a reused refresh token issued by `client` (nothing if it has no
/// family), under the lock of the user it was issued to, as its rotations take it.
async fn revoke_family(
    state: &Ctx,
    client: &CibaClient,
    reused: &IssuedToken,
) -> Result<(), DomainError> {
    if let Some(family) = &reused.family_id {
        let user = stored_user_id(&reused.user_id)?;
        let revoked =
            oidc_tokens::revoke_family(&state.db, &client.application_id, &user, family).await?;
        tracing::warn!(
            client_id = %reused.client_id,
            revoked,
            "a used refresh token was presented again: its token family was revoked"
        );
    }
    Ok(())
}

/// The userinfo claims for a bearer access token (`sub`, and `name` with the `profile` scope).
pub(crate) async fn userinfo(state: &Ctx, bearer: Option<&str>) -> Result<Value, OAuthError> {
    let invalid = || OAuthError::new(OAuthCode::InvalidToken, "a valid access token is required");
    let token = bearer.ok_or_else(invalid)?;
    let now = state.now();
    let stored = oidc_tokens::token(&state.db, &applications::api_key_digest(token))
        .await?
        .filter(|t| t.kind == "access" && t.expires_at > now)
        .ok_or_else(invalid)?;
    let client = ciba::client(&state.db, &stored.client_id)
        .await?
        .ok_or_else(invalid)?;
    let mut claims = json!({ "sub": subject(&client.application_id, &stored.user_id) });
    if stored.scope.split(' ').any(|s| s == "profile")
        && let Ok(user_id) = stored.user_id.parse()
        && let Some(user) =
            crate::store::users::get(&state.db, &client.application_id, &user_id).await?
        && let Some(name) = user.display_name
    {
        claims["name"] = json!(name);
    }
    // Redirect MFA: the same account of the authentication as the ID token.
    if let Some(Value::Object(result)) = family_claims(state, stored.family_id.as_deref()).await? {
        for name in ["acr", "amr", "auth_time"].iter().chain(RESULT_ONLY_CLAIMS) {
            if let Some(value) = result.get(*name) {
                claims[*name] = value.clone();
            }
        }
    }
    Ok(claims)
}

/// The result claims of the authorization request a token family comes from (none for CIBA).
async fn family_claims(state: &Ctx, family_id: Option<&str>) -> Result<Option<Value>, DomainError> {
    let Some(family_id) = family_id else {
        return Ok(None);
    };
    Ok(oidc_authorizations::claims_of_family(&state.db, family_id)
        .await?
        .and_then(|c| serde_json::from_str(&c).ok()))
}
