//! CIBA client registration (shared by the customer API and the admin CLI) and users' CIBA
//! user codes.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use rand::RngCore;
use tessera_protocol::ciba::{
    CibaClientRegistered, ClientAuthMethod, DeliveryMode, RegisterCibaClient,
};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::client_auth::asymmetric_algorithm;
use crate::config::ServerConfig;
use crate::domain::ssrf::{self, TargetPolicy};
use crate::error::ServerError;
use crate::store::ciba::{self, CibaClient};
use crate::store::{Database, applications};

const MAX_CLIENT_NAME: usize = 64;
const MAX_KEYS: usize = 10;

fn invalid(message: &str) -> ServerError {
    ServerError::InvalidInput(message.to_string())
}

fn check_jwks(jwks: &serde_json::Value) -> Result<String, ServerError> {
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

/// Validates and stores a registration for `app`. The secret (secret-based methods) is
/// returned once; only its digest is kept.
pub async fn register(
    db: &Database,
    config: &ServerConfig,
    app: &ApplicationId,
    request: RegisterCibaClient,
    now: i64,
) -> Result<CibaClientRegistered, ServerError> {
    let name = request.client_name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_CLIENT_NAME
        || name.chars().any(char::is_control)
    {
        return Err(invalid(
            "client_name must be 1 to 64 characters without control characters",
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
                .map_err(|e| ServerError::InvalidInput(e.to_string()))?;
            Some(url.to_string())
        }
    };
    let jwks = request.jwks.as_ref().map(check_jwks).transpose()?;
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
        return Err(ServerError::NotFound("application"));
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
    };
    ciba::insert_client(db, &client).await?;
    Ok(CibaClientRegistered {
        client_id,
        client_secret: secret,
        client: client.info(),
    })
}

/// Sets a user's CIBA user code (4 to 64 characters), clearing its failure count.
pub async fn set_user_code(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<(), ServerError> {
    let length = code.chars().count();
    if !(4..=64).contains(&length) || code.chars().any(char::is_control) {
        return Err(invalid(
            "user_code must be 4 to 64 characters without control characters",
        ));
    }
    if crate::store::users::get(db, app, user).await?.is_none() {
        return Err(ServerError::NotFound("user"));
    }
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = hex::encode(salt);
    let digest = super::backchannel::user_code_digest(&salt, code);
    Ok(ciba::set_user_code(db, app, user, &salt, &digest).await?)
}
