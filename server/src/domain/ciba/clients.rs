//! CIBA client registration (shared by the customer API and the admin CLI) and users' CIBA
//! user codes.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tessera_protocol::ciba::{
    CibaClientRegistered, ClientAuthMethod, DeliveryMode, GrantType, RegisterCibaClient,
};
use tessera_protocol::ids::{ApplicationId, UserId};

use tessera_protocol::ciba::CibaClientList;
use tessera_protocol::error::ErrorCode;

use super::client_auth::asymmetric_algorithm;
use crate::config::ServerConfig;
use crate::domain::ssrf::{self, TargetPolicy};
use crate::domain::{Ctx, DomainError};
use crate::secrets::DataKey;
use crate::store::ciba::{self, CibaClient};
use crate::store::{Database, applications};

const MAX_CLIENT_NAME: usize = 64;
const MAX_KEYS: usize = 10;
const MAX_REDIRECT_URIS: usize = 10;
const MAX_REDIRECT_URI_LENGTH: usize = 512;

/// Checks redirect URIs (RFC 6749 §3.1.2, OAuth 2.0 Security BCP): absolute, `https://` (or
/// `http://` to a loopback host, for development and native apps), no fragment, no user info,
/// and written in their normal form, so the exact comparison at the authorization endpoint
/// compares what a browser will load.
fn check_redirect_uris(uris: &[String]) -> Result<(), DomainError> {
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid("at most 10 redirect_uris"));
    }
    for raw in uris {
        let parsed = url::Url::parse(raw).ok().filter(|u| {
            raw.len() <= MAX_REDIRECT_URI_LENGTH
                && u.as_str() == raw
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
                && match u.scheme() {
                    "https" => u.host().is_some(),
                    "http" => matches!(
                        u.host(),
                        Some(url::Host::Domain("localhost"))
                            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
                    ),
                    _ => false,
                }
        });
        if parsed.is_none() {
            return Err(invalid(
                "each redirect_uri must be an absolute https:// URL (http:// only to a loopback host) \
                 in normal form (as a browser writes it, e.g. with the path's /), without fragment or \
                 user info, at most 512 characters",
            ));
        }
    }
    Ok(())
}

/// The grant types a registration asks for, checked against what it registered.
fn grant_types(
    request: &RegisterCibaClient,
    has_jwks: bool,
) -> Result<Vec<GrantType>, DomainError> {
    let mut grants = if request.grant_types.is_empty() {
        let mut grants = crate::store::ciba::LEGACY_GRANT_TYPES.to_vec();
        if !request.redirect_uris.is_empty() {
            grants.push(GrantType::AuthorizationCode);
        }
        grants
    } else {
        request.grant_types.clone()
    };
    grants.sort();
    grants.dedup();
    let code = grants.contains(&GrantType::AuthorizationCode);
    if code && request.redirect_uris.is_empty() {
        return Err(invalid("the authorization_code grant needs redirect_uris"));
    }
    if !code && !request.redirect_uris.is_empty() {
        return Err(invalid(
            "redirect_uris are for the authorization_code grant, which grant_types leaves out",
        ));
    }
    let secret_based = request.token_endpoint_auth_method != ClientAuthMethod::PrivateKeyJwt;
    if code && !has_jwks && !secret_based {
        return Err(invalid(
            "the authorization_code grant needs jwks or a client secret: authorization requests are request objects the client signs",
        ));
    }
    Ok(grants)
}

fn invalid(message: &str) -> DomainError {
    DomainError::invalid(message)
}

fn check_jwks(jwks: &serde_json::Value) -> Result<String, DomainError> {
    let set: JwkSet = serde_json::from_value(jwks.clone())
        .map_err(|_| invalid("jwks must be a JWK Set ({\"keys\": [...]})"))?;
    if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
        return Err(invalid("jwks must hold 1 to 10 keys"));
    }
    for key in &set.keys {
        if matches!(key.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(invalid(
                "jwks must hold public keys only (no symmetric keys)",
            ));
        }
        jsonwebtoken::DecodingKey::from_jwk(key)
            .map_err(|_| invalid("jwks holds a key that cannot be used"))?;
    }
    serde_json::to_string(&set).map_err(|_| invalid("jwks cannot be encoded"))
}

/// Validates and stores a registration for `app` (the admin command line). The secret
/// (secret-based methods) is returned once; only its digest is kept.
pub(crate) async fn register(
    db: &Database,
    config: &ServerConfig,
    app: &ApplicationId,
    request: RegisterCibaClient,
    now: i64,
) -> Result<CibaClientRegistered, DomainError> {
    registration(db, config, app, request, now).await
}

/// Validates and stores a registration for the calling application (the customer API).
pub(crate) async fn register_client(
    ctx: &Ctx,
    app: &ApplicationId,
    request: RegisterCibaClient,
) -> Result<CibaClientRegistered, DomainError> {
    let registered = registration(&ctx.db, &ctx.config, app, request, ctx.now()).await?;
    tracing::info!(client_id = %registered.client_id, "CIBA client registered");
    Ok(registered)
}

/// The application's clients, oldest first.
pub(crate) async fn list(ctx: &Ctx, app: &ApplicationId) -> Result<CibaClientList, DomainError> {
    let clients = ciba::clients(&ctx.db, app).await?;
    Ok(CibaClientList {
        clients: clients.iter().map(CibaClient::info).collect(),
    })
}

/// Removes the application's client with its pending requests and tokens.
pub(crate) async fn remove(
    ctx: &Ctx,
    app: &ApplicationId,
    client_id: &str,
) -> Result<(), DomainError> {
    if ciba::delete_client(&ctx.db, app, client_id).await? {
        Ok(())
    } else {
        Err(DomainError::new(ErrorCode::NotFound, "no such CIBA client"))
    }
}

async fn registration(
    db: &Database,
    config: &ServerConfig,
    app: &ApplicationId,
    request: RegisterCibaClient,
    now: i64,
) -> Result<CibaClientRegistered, DomainError> {
    let name = request.client_name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_CLIENT_NAME
        || !tessera_protocol::display::is_displayable(name)
    {
        return Err(invalid(
            "client_name must be 1 to 64 characters without control, bidirectional or invisible format characters",
        ));
    }
    let mode = request.backchannel_token_delivery_mode;
    let endpoint = match (
        mode,
        request.backchannel_client_notification_endpoint.as_deref(),
    ) {
        (DeliveryMode::Poll, None) => None,
        (DeliveryMode::Poll, Some(_)) => {
            return Err(invalid("a poll-mode client has no notification endpoint"));
        }
        (_, None) => {
            return Err(invalid(
                "ping and push clients need backchannel_client_notification_endpoint",
            ));
        }
        (_, Some(raw)) => {
            let policy = TargetPolicy {
                allow_loopback: config.ciba_allow_loopback_notifications,
                allow_private: config.ciba_allow_private_notifications,
            };
            let url = ssrf::check_endpoint(raw, policy)
                .map_err(|e| DomainError::invalid(e.to_string()))?;
            Some(url.to_string())
        }
    };
    let jwks = request.jwks.as_ref().map(check_jwks).transpose()?;
    check_redirect_uris(&request.redirect_uris)?;
    let grants = grant_types(&request, jwks.is_some())?;
    if request.token_endpoint_auth_method == ClientAuthMethod::PrivateKeyJwt && jwks.is_none() {
        return Err(invalid("private_key_jwt needs jwks"));
    }
    let signing_alg = match request
        .backchannel_authentication_request_signing_alg
        .as_deref()
    {
        None => None,
        Some(alg) => {
            if asymmetric_algorithm(alg).is_none() {
                return Err(invalid(
                    "backchannel_authentication_request_signing_alg must be an asymmetric algorithm (none and HS* are refused)",
                ));
            }
            if jwks.is_none() {
                return Err(invalid("signed requests need jwks"));
            }
            Some(alg.to_string())
        }
    };
    if applications::get(db, app).await?.is_none() {
        return Err(DomainError::new(
            ErrorCode::NotFound,
            "application not found",
        ));
    }
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let client_id = format!("cli_{}", hex::encode(id));
    let secret = match request.token_endpoint_auth_method {
        ClientAuthMethod::PrivateKeyJwt => None,
        _ => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
        }
    };
    let client = CibaClient {
        client_id: client_id.clone(),
        application_id: app.clone(),
        name: name.to_string(),
        delivery_mode: mode,
        notification_endpoint: endpoint,
        auth_method: request.token_endpoint_auth_method,
        secret_digest: secret.as_deref().map(applications::api_key_digest),
        jwks,
        request_signing_alg: signing_alg,
        user_code_required: request.backchannel_user_code_parameter,
        created_at: now,
        redirect_uris: request.redirect_uris.clone(),
        grant_types: grants,
    };
    // A redirect MFA client with a secret may sign its request objects with it (HMAC): the
    // secret is kept sealed for that, beside its digest.
    let request_object_secret = secret
        .as_deref()
        .filter(|_| client.allows(GrantType::AuthorizationCode));
    ciba::insert_client_with_secret(db, &client, request_object_secret).await?;
    Ok(CibaClientRegistered {
        client_id,
        client_secret: secret,
        client: client.info(),
    })
}

/// Sets a user's CIBA user code (4 to 64 characters), clearing its failure count.
pub(crate) async fn set_user_code(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<(), DomainError> {
    check_user_code(code)?;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = hex::encode(salt);
    let digest = user_code_digest(ctx.db.secrets()?, app, user, &salt, code);
    // The user is looked up inside the write that stores the code (not by a read before it): a
    // deletion in between would otherwise leave the code to a later user of the same id.
    if !ciba::set_user_code(&ctx.db, app, user, &salt, &digest).await? {
        return Err(crate::domain::users::user_not_found());
    }
    Ok(())
}

fn check_user_code(code: &str) -> Result<(), DomainError> {
    let length = code.chars().count();
    if !(4..=64).contains(&length) || code.chars().any(char::is_control) {
        return Err(invalid(
            "user_code must be 4 to 64 characters without control characters",
        ));
    }
    Ok(())
}

/// What a user code's keyed digest starts with.
const KEYED_DIGEST_PREFIX: &str = "mac1:";

/// A user code's keyed digest: HMAC-SHA-256 under a key derived from the database's data key,
/// over the application, the user, the salt and the code. Whoever reads the database without the
/// master key cannot test guesses of a short code against it offline (a salted fast digest of a
/// 4-digit code falls to 10,000 tries).
pub(crate) fn user_code_digest(
    secrets: &DataKey,
    app: &ApplicationId,
    user: &UserId,
    salt: &str,
    code: &str,
) -> String {
    let mac = secrets.keyed_digest(
        "ciba user code",
        &[
            app.as_str().as_bytes(),
            user.as_str().as_bytes(),
            salt.as_bytes(),
            code.as_bytes(),
        ],
    );
    format!("{KEYED_DIGEST_PREFIX}{mac}")
}

/// The salted SHA-256 digest user codes were stored as before keyed digests: still accepted,
/// and replaced by the keyed digest at the first right use.
fn legacy_user_code_digest(salt: &str, code: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{salt}\n{code}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Whether `code` is the user's code, compared in constant time with the stored digest. A right
/// code stored under the legacy digest is re-stored under the keyed one, only if the stored
/// digest is still `stored` (the customer may have set a new code since it was read: that one
/// stays).
pub(crate) async fn user_code_matches(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    salt: &str,
    stored: &str,
    code: &str,
) -> Result<bool, DomainError> {
    let secrets = ctx.db.secrets()?;
    if stored.starts_with(KEYED_DIGEST_PREFIX) {
        let digest = user_code_digest(secrets, app, user, salt, code);
        return Ok(bool::from(digest.as_bytes().ct_eq(stored.as_bytes())));
    }
    let right = bool::from(
        legacy_user_code_digest(salt, code)
            .as_bytes()
            .ct_eq(stored.as_bytes()),
    );
    if right {
        let digest = user_code_digest(secrets, app, user, salt, code);
        // Conditional on the legacy digest read, and without touching the failures: an
        // unconditional upsert would write this (old) code back over a code set meanwhile.
        if !ciba::upgrade_user_code_digest(&ctx.db, app, user, salt, stored, &digest).await? {
            tracing::info!("a legacy user code was replaced before its digest was upgraded");
        }
    }
    Ok(right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_or_loopback_in_normal_form() {
        let ok = |u: &str| check_redirect_uris(&[u.to_string()]).is_ok();
        assert!(ok("https://rp.example/callback"));
        assert!(ok("https://rp.example/cb?tenant=a"));
        assert!(ok("http://127.0.0.1:8080/cb"));
        assert!(ok("http://localhost/cb"));
        assert!(!ok("http://rp.example/cb"));
        assert!(!ok("https://rp.example"), "not in normal form (no path /)");
        assert!(!ok("https://RP.example/cb"), "not in normal form (case)");
        assert!(!ok("https://rp.example/cb#frag"));
        assert!(!ok("https://user@rp.example/cb"));
        assert!(!ok("javascript:alert(1)"));
        assert!(!ok("/cb"));
        assert!(check_redirect_uris(&vec!["https://rp.example/".to_string(); 11]).is_err());
    }

    #[test]
    fn user_codes_are_4_to_64_characters_without_control_characters() {
        assert!(check_user_code("1234").is_ok());
        assert!(check_user_code("123").is_err());
        assert!(check_user_code(&"x".repeat(64)).is_ok());
        assert!(check_user_code(&"x".repeat(65)).is_err());
        assert!(check_user_code("12\t34").is_err());
    }

    #[test]
    fn user_code_digests_are_keyed_salted_and_bound_to_the_user() {
        let key = DataKey::generate().expect("key");
        let other_key = DataKey::generate().expect("key");
        let app: ApplicationId = ApplicationId::generate();
        let alice: UserId = "alice".parse().expect("user");
        let bob: UserId = "bob".parse().expect("user");
        let digest = user_code_digest(&key, &app, &alice, "a", "1234");
        assert!(digest.starts_with(KEYED_DIGEST_PREFIX));
        assert_eq!(digest, user_code_digest(&key, &app, &alice, "a", "1234"));
        assert_ne!(digest, user_code_digest(&key, &app, &alice, "b", "1234"));
        assert_ne!(digest, user_code_digest(&key, &app, &bob, "a", "1234"));
        assert_ne!(
            digest,
            user_code_digest(&other_key, &app, &alice, "a", "1234")
        );
        assert_ne!(digest, legacy_user_code_digest("a", "1234"));
    }

    #[test]
    fn jwks_hold_public_asymmetric_keys_only() {
        let symmetric = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(check_jwks(&symmetric).is_err());
        assert!(check_jwks(&serde_json::json!({"keys": []})).is_err());
        assert!(check_jwks(&serde_json::json!({"nokeys": 1})).is_err());
    }
}
