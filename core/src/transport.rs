//! HTTP to the Tessera server: JSON calls, error mapping, and device-authenticated calls.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::device_auth::{AUTHORIZATION_SCHEME, DeviceRequestClaims};
use tessera_protocol::envelope::{self, EnvelopeSigner, MessageType};
use tessera_protocol::error::ErrorBody;
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::{DeviceRegistration, ServerUrl};

use crate::error::CoreError;

/// Largest response body read from the server.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// An HTTP client for one device.
#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    allow_insecure_http: bool,
}

impl Transport {
    pub fn new(timeout: Duration, allow_insecure_http: bool) -> Result<Self, CoreError> {
        // One process-wide TLS provider; a second install attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tessera-core/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| CoreError::Network("HTTP client could not be created".into()))?;
        Ok(Self {
            http,
            allow_insecure_http,
        })
    }

    /// Refuses plain http to hosts that are not on loopback unless allowed.
    pub fn check_server(&self, server: &ServerUrl) -> Result<(), CoreError> {
        if server.is_https() || server.is_loopback() || self.allow_insecure_http {
            Ok(())
        } else {
            Err(CoreError::InsecureServerUrl)
        }
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        server: &ServerUrl,
        path: &str,
        body: &B,
    ) -> Result<T, CoreError> {
        self.check_server(server)?;
        let response = self
            .http
            .post(server.endpoint(path))
            .json(body)
            .send()
            .await
            .map_err(network)?;
        read_json(response).await
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        server: &ServerUrl,
        path: &str,
    ) -> Result<T, CoreError> {
        self.check_server(server)?;
        let response = self
            .http
            .get(server.endpoint(path))
            .send()
            .await
            .map_err(network)?;
        read_json(response).await
    }

    /// A call signed with the enrollment's possession key. Returns the response body bytes
    /// (empty for `204`) and the key set sequence the server announced
    /// ([`tessera_protocol::key_set::KEY_SET_SEQUENCE_HEADER`]), if any.
    pub async fn device_call(
        &self,
        server: &ServerUrl,
        call: DeviceCall<'_>,
        enrollment_id: &EnrollmentId,
        signer: &(dyn EnvelopeSigner + Sync),
    ) -> Result<DeviceReply, CoreError> {
        self.check_server(server)?;
        let body_bytes = call.body.unwrap_or_default();
        let claims = DeviceRequestClaims {
            v: PROTOCOL_VERSION,
            enrollment_id: enrollment_id.clone(),
            method: call.method.as_str().to_string(),
            path: call.path.to_string(),
            body_digest: Sha256Digest::of_bytes(&body_bytes),
            issued_at: tessera_protocol::time::now(),
            nonce: DeviceRegistration::new_nonce(),
        };
        let jws = envelope::sign(MessageType::DeviceRequest, &claims, signer)
            .map_err(|e| CoreError::KeyStore(e.to_string()))?;
        let url = match call.query {
            Some(q) => format!("{}?{q}", server.endpoint(call.path)),
            None => server.endpoint(call.path),
        };
        let mut request = self
            .http
            .request(call.method, url)
            .header("authorization", format!("{AUTHORIZATION_SCHEME} {jws}"));
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        if !body_bytes.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body_bytes);
        }
        let response = request.send().await.map_err(network)?;
        let key_set_sequence = response
            .headers()
            .get(tessera_protocol::key_set::KEY_SET_SEQUENCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if response.status().is_success() {
            Ok(DeviceReply {
                body: read_limited(response).await?,
                key_set_sequence,
            })
        } else {
            Err(server_error(response).await)
        }
    }
}

/// The answer to a device-signed call.
pub(crate) struct DeviceReply {
    /// The body (empty for `204`).
    pub body: Vec<u8>,
    /// The server's current key set sequence, as it announced it (a hint, trusted for nothing).
    pub key_set_sequence: Option<u64>,
}

/// One device-signed call: what is signed (method, path, body) and what is not (query, timeout).
pub(crate) struct DeviceCall<'a> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
}

impl<'a> DeviceCall<'a> {
    pub fn new(method: reqwest::Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            query: None,
            body: None,
            timeout: None,
        }
    }
}

fn network(e: reqwest::Error) -> CoreError {
    // reqwest's messages name the URL and the failure, never a body or a header.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    CoreError::Network(kind.to_string())
}

async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, CoreError> {
    if response
        .content_length()
        .is_some_and(|n| n as usize > MAX_RESPONSE_BYTES)
    {
        return Err(CoreError::InvalidServerResponse(
            "response too large".into(),
        ));
    }
    let bytes = response.bytes().await.map_err(network)?;
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(CoreError::InvalidServerResponse(
            "response too large".into(),
        ));
    }
    Ok(bytes.to_vec())
}

async fn read_json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CoreError> {
    if !response.status().is_success() {
        return Err(server_error(response).await);
    }
    let bytes = read_limited(response).await?;
    serde_json::from_slice(&bytes)
        .map_err(|_| CoreError::InvalidServerResponse("unexpected response body".into()))
}

async fn server_error(response: reqwest::Response) -> CoreError {
    let status = response.status().as_u16();
    match read_limited(response).await {
        Ok(bytes) => match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => CoreError::Server {
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => {
                CoreError::InvalidServerResponse(format!("HTTP {status} without an error body"))
            }
        },
        Err(e) => e,
    }
}
