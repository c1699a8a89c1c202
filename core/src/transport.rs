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

/// Reads the body chunk by chunk and stops as soon as it passes [`MAX_RESPONSE_BYTES`]: a
/// body without a `Content-Length` (chunked), or with a false one, is never buffered whole.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, CoreError> {
    // Compared as u64: a cast to usize would truncate on 32-bit targets.
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if chunk.len() > MAX_RESPONSE_BYTES - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large() -> CoreError {
    CoreError::InvalidServerResponse("response too large".into())
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;

    /// Serves one connection: reads the request head, then streams a chunked body of
    /// `total` bytes (without end when `None`) until the client goes away. Returns the
    /// server URL and the count of body bytes the socket accepted.
    fn chunked_server(total: Option<u64>) -> (ServerUrl, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&written);
        std::thread::spawn(move || {
            let Ok((mut socket, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match socket.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let header = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                           transfer-encoding: chunked\r\n\r\n";
            if socket.write_all(header).is_err() {
                return;
            }
            let chunk = vec![b' '; 16 * 1024];
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            loop {
                if total.is_some_and(|t| counter.load(Ordering::SeqCst) >= t) {
                    let _ = socket.write_all(b"0\r\n\r\n");
                    return;
                }
                if socket.write_all(&framed).is_err() {
                    return;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        });
        let url = ServerUrl::parse(&format!("http://{addr}")).expect("url");
        (url, written)
    }

    fn assert_too_large(result: Result<serde_json::Value, CoreError>) {
        match result {
            Err(CoreError::InvalidServerResponse(m)) => assert_eq!(m, "response too large"),
            other => panic!("expected response too large, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn endless_chunked_response_is_refused_promptly() {
        let transport = Transport::new(Duration::from_secs(60), false).expect("transport");
        let (server, written) = chunked_server(None);
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            transport.get_json::<serde_json::Value>(&server, "/v1/server-keys"),
        )
        .await
        .expect("an endless body must be refused before the call times out");
        assert_too_large(result);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The client stopped reading once past the limit: what the socket accepted is the
        // limit plus what the kernel buffers hold, not an endless stream.
        let sent = written.load(Ordering::SeqCst);
        assert!(sent < 64 * 1024 * 1024, "server wrote {sent} bytes");
    }

    #[tokio::test]
    async fn large_chunked_response_stops_reading_past_the_limit() {
        let transport = Transport::new(Duration::from_secs(60), false).expect("transport");
        // 256 MiB: far beyond the limit and beyond what loopback socket buffers hold.
        let total = 256 * 1024 * 1024;
        let (server, written) = chunked_server(Some(total));
        let result = transport
            .get_json::<serde_json::Value>(&server, "/v1/server-keys")
            .await;
        assert_too_large(result);
        // Give the server a moment to notice the closed connection.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = written.load(Ordering::SeqCst);
        // The limit plus what loopback socket buffers hold (a few MiB), not the whole body.
        assert!(
            sent < 64 * 1024 * 1024,
            "server wrote {sent} of {total} bytes"
        );
    }
}
