//! OpenID Connect Client-Initiated Backchannel Authentication (CIBA Core 1.0): client
//! registration through the customer API, and the OAuth messages a relying party exchanges with
//! the server's backchannel authentication and token endpoints.
//!
//! The device never sees these: a CIBA request reaches it as an
//! [`AuthenticationRequest`](crate::authentication::AuthenticationRequest) of kind
//! [`Ciba`](crate::authentication::AuthenticationKind::Ciba) with
//! [`CibaDetails`](crate::authentication::CibaDetails).

use serde::{Deserialize, Serialize};

/// The CIBA grant type at the token endpoint.
pub const CIBA_GRANT_TYPE: &str = "urn:openid:params:grant-type:ciba";
/// The client assertion type of `private_key_jwt` (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The ID token claim that carries the `auth_req_id` in push mode.
pub const AUTH_REQ_ID_CLAIM: &str = "urn:openid:params:jwt:claim:auth_req_id";
/// The authentication context class of every CIBA approval: a paired device, approved with user
/// verification (biometrics or the device PIN) and signed with its user-verification key.
pub const ACR_MOBILE_USER_VERIFIED: &str = "urn:tessera:acr:mobile-uv";

/// How the relying party learns the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryMode {
    /// The client polls the token endpoint.
    Poll,
    /// The server notifies the client's endpoint; the client then calls the token endpoint.
    Ping,
    /// The server posts the tokens (or the error) to the client's endpoint.
    Push,
}

impl DeliveryMode {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Poll => "poll",
            DeliveryMode::Ping => "ping",
            DeliveryMode::Push => "push",
        }
    }

    /// Parses the wire word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "poll" => Some(Self::Poll),
            "ping" => Some(Self::Ping),
            "push" => Some(Self::Push),
            _ => None,
        }
    }
}

/// How the client authenticates at the backchannel and token endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed with one of the client's registered keys (RFC 7523).
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }

    /// Parses the wire word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            "private_key_jwt" => Some(Self::PrivateKeyJwt),
            _ => None,
        }
    }
}

/// `POST /v1/ciba/clients`: registers a relying party for the calling application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterCibaClient {
    /// The name shown on the user's device ("Requested by").
    pub client_name: String,
    /// `backchannel_token_delivery_mode`.
    pub backchannel_token_delivery_mode: DeliveryMode,
    /// `backchannel_client_notification_endpoint`: required for ping and push. `https://`; plain
    /// `http://` only to loopback when the server allows loopback notification targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_client_notification_endpoint: Option<String>,
    /// `token_endpoint_auth_method`.
    pub token_endpoint_auth_method: ClientAuthMethod,
    /// The client's public keys (a JWK Set with RSA, EC or OKP keys; no symmetric keys), needed
    /// for `private_key_jwt`, signed requests and signed login hint tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub jwks: Option<serde_json::Value>,
    /// `backchannel_authentication_request_signing_alg`: when set, every backchannel request
    /// must be a `request` object signed with this (asymmetric) algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_authentication_request_signing_alg: Option<String>,
    /// `backchannel_user_code_parameter`: every request must carry the user's `user_code`.
    #[serde(default)]
    pub backchannel_user_code_parameter: bool,
    /// `redirect_uris`: where the authorization endpoint may send the browser back (exact
    /// match; `https://`, or `http://` to a loopback host). Required for the
    /// `authorization_code` grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    /// `grant_types` the client may use. Empty: the CIBA grant and `refresh_token`, plus
    /// `authorization_code` when `redirect_uris` are given (registrations made before the
    /// authorization endpoint existed keep their grants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types: Vec<GrantType>,
}

impl RegisterCibaClient {
    /// A registration named `client_name` with its delivery mode and token endpoint
    /// authentication, and every optional setting at its default: no notification endpoint,
    /// no keys, unsigned requests, no user code, no redirect URIs, the default grants. Set the
    /// others with struct update syntax (`RegisterCibaClient { jwks, ..RegisterCibaClient::new(…) }`).
    pub fn new(
        client_name: impl Into<String>,
        backchannel_token_delivery_mode: DeliveryMode,
        token_endpoint_auth_method: ClientAuthMethod,
    ) -> Self {
        Self {
            client_name: client_name.into(),
            backchannel_token_delivery_mode,
            backchannel_client_notification_endpoint: None,
            token_endpoint_auth_method,
            jwks: None,
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
        }
    }
}

/// The authorization code grant type at the token endpoint.
pub const AUTHORIZATION_CODE_GRANT_TYPE: &str = "authorization_code";

/// A grant type a client may use at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GrantType {
    /// `urn:openid:params:grant-type:ciba` (and the backchannel authentication endpoint).
    #[serde(rename = "urn:openid:params:grant-type:ciba")]
    Ciba,
    /// `authorization_code` (and the authorization endpoint: redirect MFA).
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    /// `refresh_token`.
    #[serde(rename = "refresh_token")]
    RefreshToken,
}

impl GrantType {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Ciba => CIBA_GRANT_TYPE,
            GrantType::AuthorizationCode => AUTHORIZATION_CODE_GRANT_TYPE,
            GrantType::RefreshToken => "refresh_token",
        }
    }

    /// Parses the wire word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            CIBA_GRANT_TYPE => Some(Self::Ciba),
            AUTHORIZATION_CODE_GRANT_TYPE => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }
}

/// The answer to a registration: the client id and, for secret-based methods, the secret (shown
/// once; only its digest is stored).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CibaClientRegistered {
    /// The client id.
    pub client_id: String,
    /// The client secret, for `client_secret_basic` and `client_secret_post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The registration as stored.
    pub client: CibaClientInfo,
}

impl std::fmt::Debug for CibaClientRegistered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CibaClientRegistered")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A registered client, as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CibaClientInfo {
    /// The client id.
    pub client_id: String,
    /// The name shown on devices.
    pub client_name: String,
    /// The delivery mode.
    pub backchannel_token_delivery_mode: DeliveryMode,
    /// The notification endpoint (ping and push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_client_notification_endpoint: Option<String>,
    /// How it authenticates.
    pub token_endpoint_auth_method: ClientAuthMethod,
    /// The algorithm its signed requests must use, if it signs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_authentication_request_signing_alg: Option<String>,
    /// Whether its requests must carry a user code.
    pub backchannel_user_code_parameter: bool,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
    /// Its registered redirect URIs (authorization code grant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    /// The grant types it may use.
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
}

/// The registered clients of an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CibaClientList {
    /// The clients.
    pub clients: Vec<CibaClientInfo>,
}

/// `PUT /v1/users/{user_id}/ciba-user-code`: sets the secret the user gives relying parties as
/// `user_code` (4 to 64 characters). Only a salted digest is stored; setting it clears its
/// failure count.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetUserCode {
    /// The user code.
    pub user_code: String,
}

impl std::fmt::Debug for SetUserCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetUserCode(…)")
    }
}

/// The backchannel authentication endpoint's acknowledgement (CIBA Core §7.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackchannelAcknowledgement {
    /// The request's id (at least 160 bits of randomness).
    pub auth_req_id: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Seconds the client must wait between token requests (always present).
    pub interval: u64,
    /// Tessera extension, present when the application uses number matching: the number the
    /// consumption device must show; the user picks or types it on the phone. A wrong number
    /// ends the request (`access_denied`, "wrong_number" in the description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
}

/// A successful token response (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3); in push mode, the
/// body posted to the client's notification endpoint, with `auth_req_id`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The ID token (ES256).
    pub id_token: String,
    /// A refresh token, when `offline_access` was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The granted scopes.
    pub scope: String,
    /// Push mode only: the request these tokens answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_req_id: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("auth_req_id", &self.auth_req_id)
            .finish_non_exhaustive()
    }
}

/// An OAuth error response (RFC 6749 §5.2, CIBA Core §13 and §11); in push mode, the body
/// posted to the client's notification endpoint, with `auth_req_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OAuthErrorResponse {
    /// The error code, e.g. `authorization_pending`.
    pub error: String,
    /// A human-readable description, free of secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// Push mode only: the request this error answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_registration_sends_only_what_it_names() {
        let client = RegisterCibaClient::new(
            "Call Centre",
            DeliveryMode::Poll,
            ClientAuthMethod::ClientSecretBasic,
        );
        let sent = serde_json::to_value(&client).unwrap();
        let mut keys: Vec<&str> = sent
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "backchannel_token_delivery_mode",
                "backchannel_user_code_parameter",
                "client_name",
                "token_endpoint_auth_method"
            ]
        );
        assert_eq!(sent["client_name"], "Call Centre");
        let read: RegisterCibaClient = serde_json::from_value(sent).unwrap();
        assert_eq!(read, client);
    }

    #[test]
    fn words_round_trip() {
        for m in [DeliveryMode::Poll, DeliveryMode::Ping, DeliveryMode::Push] {
            assert_eq!(DeliveryMode::parse(m.as_str()), Some(m));
        }
        for m in [
            ClientAuthMethod::ClientSecretBasic,
            ClientAuthMethod::ClientSecretPost,
            ClientAuthMethod::PrivateKeyJwt,
        ] {
            assert_eq!(ClientAuthMethod::parse(m.as_str()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        assert_eq!(DeliveryMode::parse("pull"), None);
        for g in [
            GrantType::Ciba,
            GrantType::AuthorizationCode,
            GrantType::RefreshToken,
        ] {
            assert_eq!(GrantType::parse(g.as_str()), Some(g));
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
    }

    #[test]
    fn registrations_without_redirect_uris_still_parse() {
        let old = serde_json::json!({
            "client_name": "Call Centre",
            "backchannel_token_delivery_mode": "poll",
            "token_endpoint_auth_method": "client_secret_basic",
        });
        let parsed: RegisterCibaClient = serde_json::from_value(old).unwrap();
        assert!(parsed.redirect_uris.is_empty() && parsed.grant_types.is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let token = TokenResponse {
            access_token: "secret-access".into(),
            token_type: "Bearer".into(),
            expires_in: 60,
            id_token: "secret-id".into(),
            refresh_token: Some("secret-refresh".into()),
            scope: "openid".into(),
            auth_req_id: None,
        };
        assert!(!format!("{token:?}").contains("secret"));
        assert!(
            !format!(
                "{:?}",
                SetUserCode {
                    user_code: "1234".into()
                }
            )
            .contains("1234")
        );
    }
}
