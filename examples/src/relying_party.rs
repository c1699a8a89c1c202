//! A CIBA relying party: discovers the provider, starts backchannel authentications (plain or as
//! signed request objects), polls the token endpoint honouring `interval` and `slow_down`, and
//! verifies ID tokens against the provider's JWKS. It authenticates with
//! `client_secret_basic`, `client_secret_post` or `private_key_jwt`. For redirect MFA it builds
//! the authorization URL (a signed request object with `login_hint`, PKCE S256, `state` and
//! `nonce`) and exchanges the code.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::EncodePrivateKey;
use rand::RngCore;
use serde_json::{Value, json};
use tessera_protocol::ciba::{
    BackchannelAcknowledgement, CIBA_GRANT_TYPE, JWT_BEARER_ASSERTION_TYPE, OAuthErrorResponse,
    TokenResponse,
};

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum RpError {
    /// The provider answered with an OAuth error.
    #[error("{status} {error}: {description}")]
    OAuth {
        /// HTTP status.
        status: u16,
        /// The OAuth error code.
        error: String,
        /// The description.
        description: String,
    },
    /// The call did not complete or the answer was not understood.
    #[error("transport: {0}")]
    Transport(String),
}

impl RpError {
    /// The OAuth error code, if the provider answered with one.
    pub fn error(&self) -> Option<&str> {
        match self {
            RpError::OAuth { error, .. } => Some(error),
            RpError::Transport(_) => None,
        }
    }

    /// The HTTP status, if the provider answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RpError::OAuth { status, .. } => Some(*status),
            RpError::Transport(_) => None,
        }
    }
}

fn transport(e: impl std::fmt::Display) -> RpError {
    RpError::Transport(e.to_string())
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    tessera_protocol::time::now()
}

/// A P-256 key the relying party signs with (`ES256`).
#[derive(Clone)]
pub struct RpSigningKey {
    secret: p256::SecretKey,
    kid: String,
}

impl RpSigningKey {
    /// A fresh key with a random `kid`.
    pub fn generate() -> Self {
        Self {
            secret: p256::SecretKey::random(&mut rand::rngs::OsRng),
            kid: random_id(),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK Set to register.
    pub fn jwks(&self) -> Value {
        let mut jwk: Value =
            serde_json::from_str(&self.secret.public_key().to_jwk_string()).unwrap_or(Value::Null);
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!("ES256");
        json!({ "keys": [jwk] })
    }

    /// Signs claims as an `ES256` JWT with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, RpError> {
        let der = self.secret.to_pkcs8_der().map_err(transport)?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(der.as_bytes()))
            .map_err(transport)
    }
}

/// How the relying party authenticates.
pub enum ClientCredentials {
    /// HTTP Basic with the secret.
    SecretBasic(String),
    /// The secret in the form body.
    SecretPost(String),
    /// A client assertion signed with this key.
    PrivateKeyJwt(RpSigningKey),
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone)]
pub struct ProviderMetadata {
    /// The issuer.
    pub issuer: String,
    /// The backchannel authentication endpoint.
    pub backchannel_authentication_endpoint: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The JWKS.
    pub jwks_uri: String,
    /// The whole document.
    pub document: Value,
}

/// A relying party registered with a provider.
pub struct RelyingParty {
    /// The provider's metadata.
    pub provider: ProviderMetadata,
    /// The client id.
    pub client_id: String,
    credentials: ClientCredentials,
    http: reqwest::Client,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelyingParty({})", self.client_id)
    }
}

impl RelyingParty {
    /// Reads `ISSUER/.well-known/openid-configuration`.
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        credentials: ClientCredentials,
    ) -> Result<Self, RpError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(transport)?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let document: Value = http
            .get(url)
            .send()
            .await
            .map_err(transport)?
            .json()
            .await
            .map_err(transport)?;
        let text = |name: &str| {
            document
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| RpError::Transport(format!("discovery lacks {name}")))
        };
        let provider = ProviderMetadata {
            issuer: text("issuer")?,
            backchannel_authentication_endpoint: text("backchannel_authentication_endpoint")?,
            token_endpoint: text("token_endpoint")?,
            jwks_uri: text("jwks_uri")?,
            document,
        };
        Ok(Self {
            provider,
            client_id: client_id.to_string(),
            credentials,
            http,
        })
    }

    /// A client assertion for `audience` (private_key_jwt only).
    pub fn client_assertion(&self, audience: &str) -> Result<Option<String>, RpError> {
        match &self.credentials {
            ClientCredentials::PrivateKeyJwt(key) => key
                .sign(&json!({
                    "iss": self.client_id,
                    "sub": self.client_id,
                    "aud": audience,
                    "iat": now(),
                    "exp": now() + 60,
                    "jti": random_id(),
                }))
                .map(Some),
            _ => Ok(None),
        }
    }

    /// Posts a form to `endpoint`, authenticated as this client when `authenticate` is set;
    /// returns the status and the JSON body. For tests of the provider's errors.
    pub async fn post_form(
        &self,
        endpoint: &str,
        params: &[(&str, &str)],
        authenticate: bool,
    ) -> Result<(u16, Value), RpError> {
        let mut form: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let mut request = self.http.post(endpoint);
        if authenticate {
            match &self.credentials {
                ClientCredentials::SecretBasic(secret) => {
                    request =
                        request.basic_auth(form_encode(&self.client_id), Some(form_encode(secret)));
                }
                ClientCredentials::SecretPost(secret) => {
                    form.push(("client_id".into(), self.client_id.clone()));
                    form.push(("client_secret".into(), secret.clone()));
                }
                ClientCredentials::PrivateKeyJwt(_) => {
                    let assertion = self.client_assertion(endpoint)?.unwrap_or_default();
                    form.push((
                        "client_assertion_type".into(),
                        JWT_BEARER_ASSERTION_TYPE.into(),
                    ));
                    form.push(("client_assertion".into(), assertion));
                }
            }
        }
        let body = url_encode_form(&form);
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn outcome<T: serde::de::DeserializeOwned>(status: u16, body: Value) -> Result<T, RpError> {
        if (200..300).contains(&status) {
            serde_json::from_value(body).map_err(transport)
        } else {
            let error: OAuthErrorResponse = serde_json::from_value(body)
                .map_err(|_| RpError::Transport(format!("HTTP {status} without an OAuth error")))?;
            Err(RpError::OAuth {
                status,
                error: error.error,
                description: error.error_description.unwrap_or_default(),
            })
        }
    }

    /// Starts a backchannel authentication with plain parameters (`scope`, `login_hint`,
    /// `binding_message`, ...).
    pub async fn backchannel(
        &self,
        params: &[(&str, &str)],
    ) -> Result<BackchannelAcknowledgement, RpError> {
        let endpoint = self.provider.backchannel_authentication_endpoint.clone();
        let (status, body) = self.post_form(&endpoint, params, true).await?;
        Self::outcome(status, body)
    }

    /// Starts a backchannel authentication as a signed request object: `claims` hold the
    /// parameters; `iss`, `aud`, `iat`, `nbf`, `exp` (5 minutes) and `jti` are added unless
    /// present.
    pub async fn backchannel_signed(
        &self,
        key: &RpSigningKey,
        mut claims: Value,
    ) -> Result<BackchannelAcknowledgement, RpError> {
        let defaults = json!({
            "iss": self.client_id,
            "aud": self.provider.issuer,
            "iat": now(),
            "nbf": now(),
            "exp": now() + 300,
            "jti": random_id(),
        });
        if let (Some(map), Some(defaults)) = (claims.as_object_mut(), defaults.as_object()) {
            for (k, v) in defaults {
                map.entry(k.clone()).or_insert(v.clone());
            }
        }
        let request = key.sign(&claims)?;
        self.backchannel(&[("request", &request)]).await
    }

    /// One token request for `auth_req_id`.
    pub async fn token(&self, auth_req_id: &str) -> Result<TokenResponse, RpError> {
        let endpoint = self.provider.token_endpoint.clone();
        let (status, body) = self
            .post_form(
                &endpoint,
                &[
                    ("grant_type", CIBA_GRANT_TYPE),
                    ("auth_req_id", auth_req_id),
                ],
                true,
            )
            .await?;
        Self::outcome(status, body)
    }

    /// Exchanges a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, RpError> {
        let endpoint = self.provider.token_endpoint.clone();
        let (status, body) = self
            .post_form(
                &endpoint,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
                true,
            )
            .await?;
        Self::outcome(status, body)
    }

    /// Polls until the user answers: waits `interval` between requests, 5 seconds more after
    /// each `slow_down`.
    pub async fn poll(&self, ack: &BackchannelAcknowledgement) -> Result<TokenResponse, RpError> {
        let mut interval = ack.interval;
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            match self.token(&ack.auth_req_id).await {
                Err(e) if e.error() == Some("authorization_pending") => {}
                Err(e) if e.error() == Some("slow_down") => interval += 5,
                other => return other,
            }
        }
    }

    /// Verifies an ID token with the provider's JWKS (`ES256`, issuer, audience, expiry) and
    /// returns its claims.
    pub async fn verify_id_token(&self, id_token: &str) -> Result<Value, RpError> {
        let header = jsonwebtoken::decode_header(id_token).map_err(transport)?;
        if header.alg != Algorithm::ES256 {
            return Err(RpError::Transport("ID token is not ES256".into()));
        }
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(&self.provider.jwks_uri)
            .send()
            .await
            .map_err(transport)?
            .json()
            .await
            .map_err(transport)?;
        let kid = header.kid.unwrap_or_default();
        let jwk = jwks
            .find(&kid)
            .ok_or_else(|| RpError::Transport("no published key for the ID token".into()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(transport)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.provider.issuer]);
        validation.set_audience(&[&self.client_id]);
        jsonwebtoken::decode::<Value>(id_token, &key, &validation)
            .map(|data| data.claims)
            .map_err(transport)
    }
}

/// A redirect MFA sign-in the relying party started: where to send the browser, and what it
/// keeps in its own session to finish (check `state`, `nonce`; send the verifier).
#[derive(Debug, Clone)]
pub struct AuthorizationStart {
    /// The authorization URL (with `client_id`, `response_type`, `scope` and the signed
    /// `request`).
    pub url: String,
    /// The `state` sent.
    pub state: String,
    /// The `nonce` sent.
    pub nonce: String,
    /// The PKCE code verifier.
    pub code_verifier: String,
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

impl RelyingParty {
    /// The provider's authorization endpoint, from discovery.
    pub fn authorization_endpoint(&self) -> Result<String, RpError> {
        self.provider
            .document
            .get("authorization_endpoint")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RpError::Transport("discovery lacks authorization_endpoint".into()))
    }

    /// Builds a redirect MFA authorization URL for `login_hint` (the user the relying party's
    /// own first factor authenticated): a request object signed with `key` holding `iss`, `aud`,
    /// `iat`, `exp` (5 minutes), `jti`, `client_id`, `response_type=code`, `redirect_uri`,
    /// `scope=openid`, a random `state` and `nonce`, and the S256 challenge of a random verifier.
    /// `extra` members are added to the request object and override those (`null` removes one).
    /// `client_id`, `response_type` and `scope` are repeated outside, as OAuth requires.
    pub fn authorization_url(
        &self,
        key: &RpSigningKey,
        redirect_uri: &str,
        login_hint: &str,
        extra: Value,
    ) -> Result<AuthorizationStart, RpError> {
        self.signed_authorization_url(&|claims| key.sign(claims), redirect_uri, login_hint, extra)
    }

    /// [`RelyingParty::authorization_url`] with the request object signed `HS512` with the
    /// client's secret, as Duo's clients sign theirs (for clients registered with a secret).
    pub fn authorization_url_with_secret(
        &self,
        secret: &str,
        redirect_uri: &str,
        login_hint: &str,
        extra: Value,
    ) -> Result<AuthorizationStart, RpError> {
        let sign = |claims: &Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .map_err(transport)
        };
        self.signed_authorization_url(&sign, redirect_uri, login_hint, extra)
    }

    fn signed_authorization_url(
        &self,
        sign: &dyn Fn(&Value) -> Result<String, RpError>,
        redirect_uri: &str,
        login_hint: &str,
        extra: Value,
    ) -> Result<AuthorizationStart, RpError> {
        let endpoint = self.authorization_endpoint()?;
        let state = random_id();
        let nonce = random_id();
        let code_verifier = format!("{}{}", random_id(), random_id());
        let mut claims = json!({
            "iss": self.client_id,
            "aud": self.provider.issuer,
            "iat": now(),
            "exp": now() + 300,
            "jti": random_id(),
            "client_id": self.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(&code_verifier),
            "code_challenge_method": "S256",
            "login_hint": login_hint,
        });
        if let (Some(map), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            for (k, v) in extra {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    map.insert(k, v);
                }
            }
        }
        let request = sign(&claims)?;
        let mut url = url::Url::parse(&endpoint).map_err(transport)?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("client_id", &self.client_id);
            for name in ["response_type", "scope"] {
                if let Some(value) = claims.get(name).and_then(Value::as_str) {
                    query.append_pair(name, value);
                }
            }
            query.append_pair("request", &request);
        }
        Ok(AuthorizationStart {
            url: url.to_string(),
            state: claims
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            nonce: claims
                .get("nonce")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            code_verifier,
        })
    }

    /// Exchanges an authorization code (`grant_type=authorization_code`) with its verifier.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, RpError> {
        let endpoint = self.provider.token_endpoint.clone();
        let (status, body) = self
            .post_form(
                &endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", code_verifier),
                ],
                true,
            )
            .await?;
        Self::outcome(status, body)
    }

    /// The userinfo claims for an access token.
    pub async fn userinfo(&self, access_token: &str) -> Result<Value, RpError> {
        let endpoint = self
            .provider
            .document
            .get("userinfo_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| RpError::Transport("discovery lacks userinfo_endpoint".into()))?;
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Self::outcome(status, body)
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1 for Basic).
fn form_encode(text: &str) -> String {
    url_encode_form(&[(String::new(), text.to_string())])
        .trim_start_matches('=')
        .to_string()
}

fn url_encode_form(pairs: &[(String, String)]) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    #[test]
    fn forms_are_encoded_like_browsers_do() {
        assert_eq!(
            super::url_encode_form(&[
                ("scope".into(), "openid profile".into()),
                ("m".into(), "a&b=ü".into())
            ]),
            "scope=openid+profile&m=a%26b%3D%C3%BC"
        );
        assert_eq!(super::form_encode("a:b c"), "a%3Ab+c");
    }
}
