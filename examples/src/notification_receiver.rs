//! A relying party's notification endpoint on loopback: records every ping or push the server
//! posts (path, `Authorization` header, JSON body) and answers as scripted (204 by default; a
//! status or a redirect for failure tests).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

/// One notification as received.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The request path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, parsed as JSON (`Null` if it was not JSON).
    pub body: Value,
}

/// How to answer the next notification.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Answer `302 Found` with this `Location`.
    Redirect(String),
}

#[derive(Clone)]
struct Shared {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    sender: mpsc::UnboundedSender<Notification>,
}

/// A running receiver; stops when dropped.
pub struct NotificationReceiver {
    addr: SocketAddr,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Notification>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NotificationReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let notification = Notification {
        path: uri.path().to_string(),
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let _ = shared.sender.send(notification);
    let reply = shared
        .replies
        .lock()
        .ok()
        .and_then(|mut r| r.pop_front())
        .unwrap_or(Reply::Status(204));
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::NO_CONTENT)
            .into_response(),
        Reply::Redirect(location) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
    }
}

impl NotificationReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let replies = Arc::new(Mutex::new(VecDeque::new()));
        let app = Router::new().fallback(receive).with_state(Shared {
            replies: replies.clone(),
            sender,
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            replies,
            received: tokio::sync::Mutex::new(receiver),
            task,
        })
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Scripts the answers to the next notifications (then 204 again).
    pub fn reply_with(&self, replies: impl IntoIterator<Item = Reply>) {
        if let Ok(mut queue) = self.replies.lock() {
            queue.extend(replies);
        }
    }

    /// The next notification, waiting at most `timeout`.
    pub async fn next(&self, timeout: Duration) -> Option<Notification> {
        let mut received = self.received.lock().await;
        tokio::time::timeout(timeout, received.recv())
            .await
            .ok()
            .flatten()
    }
}
