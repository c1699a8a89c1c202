//! Domain events and the hub that wakes whoever waits for them.
//!
//! Every change a waiter can wait for (an authentication ending, a request for a device, a QR
//! session moving on, a device verification decided) is announced on a [`Topic`] after it
//! committed. Long-polls subscribe **before** they read the state, so an announcement between
//! the read and the wait is not lost; they do no database query while they wait, and read once
//! more when woken or when their time is up, so a stale or missed announcement costs at most
//! the wait, never the answer.
//!
//! Across instances on one PostgreSQL database, announcements travel as `NOTIFY` payloads
//! (`store::events`); each instance's listener task hands them to its hub. When the listener's
//! connection drops, notifications may be lost, so every waiter of that instance is woken to
//! read again.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngCore;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::events::{self as store_events, Heard, Listener};
use crate::store::{Database, StoreError};

/// What a waiter waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// An authentication (or CIBA request) changed state: answered, expired, failed, moved.
    Authentication(String),
    /// A device's enrollment got a new request or changed state.
    Enrollment(String),
    /// A QR login session moved on (scanned, answered, renewed).
    QrSession(String),
    /// An authentication flow moved to another status.
    Flow(String),
    /// Webhook deliveries were queued in the outbox.
    WebhookOutbox,
}

impl Topic {
    fn encode(&self) -> String {
        match self {
            Topic::Authentication(id) => format!("a:{id}"),
            Topic::Enrollment(id) => format!("e:{id}"),
            Topic::QrSession(id) => format!("q:{id}"),
            Topic::Flow(id) => format!("f:{id}"),
            Topic::WebhookOutbox => "w:outbox".to_string(),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let (kind, id) = text.split_once(':')?;
        if id.is_empty() || id.len() > 128 {
            return None;
        }
        let id = id.to_string();
        match kind {
            "a" => Some(Topic::Authentication(id)),
            "e" => Some(Topic::Enrollment(id)),
            "q" => Some(Topic::QrSession(id)),
            "f" => Some(Topic::Flow(id)),
            "w" => Some(Topic::WebhookOutbox),
            _ => None,
        }
    }
}

/// Wakes waiters: in this process at once, in other instances through the database.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    topics: Mutex<HashMap<Topic, watch::Sender<u64>>>,
    /// Marks this instance's own notifications, which it has already delivered locally.
    instance: String,
}

impl fmt::Debug for EventHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHub")
            .field("waited_topics", &self.lock().len())
            .finish()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// A hub with no waiters.
    pub fn new() -> Self {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                instance: hex::encode(id),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Topic, watch::Sender<u64>>> {
        // A panic while holding the lock leaves a plain map behind: keep using it.
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers interest in `topic`: every announcement from now on makes the subscription's
    /// next [`Subscription::wait`] return at once.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let mut topics = self.lock();
        let receiver = match topics.get(&topic) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                topics.insert(topic.clone(), sender);
                receiver
            }
        };
        Subscription {
            hub: self.clone(),
            topic,
            receiver,
        }
    }

    /// Wakes this process's waiters on `topic`.
    pub fn wake_local(&self, topic: &Topic) {
        if let Some(sender) = self.lock().get(topic) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every waiter of this process (after notifications may have been lost).
    pub fn wake_all_local(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Announces a committed change: wakes this process's waiters, then the other instances'
    /// (PostgreSQL). A failed cross-instance announcement is logged, not returned: the change
    /// is already stored, and remote waiters read it at their deadline.
    pub async fn announce(&self, db: &Database, topics: &[Topic]) {
        for topic in topics {
            self.wake_local(topic);
        }
        if topics.is_empty() {
            return;
        }
        // One notification for all of them: one statement, however many topics.
        let encoded: Vec<String> = topics.iter().map(Topic::encode).collect();
        let payload = format!("{}|{}", self.inner.instance, encoded.join(","));
        if let Err(e) = store_events::notify(db, &payload).await {
            tracing::warn!(error = %e, "change notification to other instances failed");
        }
    }

    /// Announces a change from inside the write `w` that makes it: other instances are
    /// notified in `w` itself (PostgreSQL delivers the notification when the transaction
    /// commits, and drops it when it rolls back), with no statement or connection of its own.
    /// This process's waiters are woken by [`EventHub::wake_committed`], which the caller calls
    /// once the transaction committed (woken earlier, a waiter could read the old state).
    pub async fn announce_in(
        &self,
        w: &mut crate::store::Write<'_>,
        topics: &[Topic],
    ) -> Result<(), StoreError> {
        if topics.is_empty() {
            return Ok(());
        }
        let encoded: Vec<String> = topics.iter().map(Topic::encode).collect();
        let payload = format!("{}|{}", self.inner.instance, encoded.join(","));
        store_events::notify_in(w, &payload).await
    }

    /// Wakes this process's waiters on `topics`, whose change [`EventHub::announce_in`]
    /// announced inside a transaction that has now committed.
    pub fn wake_committed(&self, topics: &[Topic]) {
        for topic in topics {
            self.wake_local(topic);
        }
    }

    /// How many topics have waiters now.
    pub fn waited_topics(&self) -> usize {
        self.lock().len()
    }

    /// Hands other instances' announcements to this hub until the task is dropped. On SQLite
    /// there are none, and this returns at once.
    pub async fn listen(self, db: Database) {
        let mut listener = loop {
            match Listener::connect(&db).await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener cannot connect; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            match listener.recv().await {
                Ok(Heard::Payload(payload)) => self.heard(&payload),
                Ok(Heard::Reconnected) => self.wake_all_local(),
                Err(e) => {
                    log_listener_error(&e);
                    self.wake_all_local();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    fn heard(&self, payload: &str) {
        let Some((instance, topic)) = payload.split_once('|') else {
            return;
        };
        if instance == self.inner.instance {
            return;
        }
        for topic in topic.split(',').filter_map(Topic::decode) {
            self.wake_local(&topic);
        }
    }
}

fn log_listener_error(e: &StoreError) {
    tracing::warn!(error = %e, "change listener lost its connection; waiters read again");
}

/// Interest in one topic; dropping it forgets the topic when nobody else waits for it.
pub struct Subscription {
    hub: EventHub,
    topic: Topic,
    receiver: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits until the topic is announced (since the subscription or the last wait) or
    /// `deadline` passes; `true` if it was announced.
    pub async fn wait(&mut self, deadline: Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline, self.receiver.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.lock();
        // This subscription's receiver is still counted until the end of this function.
        if topics
            .get(&self.topic)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            topics.remove(&self.topic);
        }
    }
}

/// Reads with `read` until `done` says the value is final or `wait` has passed, reading again
/// only when `topic` is announced (and once at the deadline).
pub async fn wait_for<T, E, R, Fut>(
    hub: &EventHub,
    topic: Topic,
    wait: Duration,
    mut read: R,
    done: impl Fn(&T) -> bool,
) -> Result<T, E>
where
    R: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + wait;
    let mut subscription = (!wait.is_zero()).then(|| hub.subscribe(topic));
    loop {
        let value = read().await?;
        let Some(sub) = subscription.as_mut() else {
            return Ok(value);
        };
        if done(&value) || Instant::now() >= deadline {
            return Ok(value);
        }
        if !sub.wait(deadline).await {
            // Time is up: one final read, in case an announcement was missed.
            return read().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn topics_round_trip_and_bad_payloads_are_ignored() {
        for topic in [
            Topic::Authentication("aut_1".into()),
            Topic::Enrollment("enr_2".into()),
            Topic::QrSession("qrs_3".into()),
            Topic::Flow("flw_4".into()),
            Topic::WebhookOutbox,
        ] {
            assert_eq!(Topic::decode(&topic.encode()), Some(topic));
        }
        assert_eq!(Topic::decode("x:1"), None);
        assert_eq!(Topic::decode("a:"), None);
        assert_eq!(Topic::decode("nothing"), None);
    }

    #[tokio::test]
    async fn an_announcement_between_read_and_wait_is_not_lost() {
        let hub = EventHub::new();
        let mut sub = hub.subscribe(Topic::Authentication("a1".into()));
        hub.wake_local(&Topic::Authentication("a1".into()));
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(sub.wait(deadline).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_reads_once_then_again_only_when_woken_or_at_its_deadline() {
        let hub = EventHub::new();
        let reads = Arc::new(AtomicUsize::new(0));
        let topic = Topic::Enrollment("e1".into());
        let waiter = {
            let (hub, reads) = (hub.clone(), reads.clone());
            tokio::spawn(async move {
                wait_for::<usize, (), _, _>(
                    &hub,
                    topic,
                    Duration::from_secs(30),
                    || {
                        let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                        async move { Ok(n) }
                    },
                    |n| *n >= 2,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "no read while nothing happens"
        );
        hub.wake_local(&Topic::Enrollment("e1".into()));
        assert_eq!(waiter.await.unwrap(), Ok(2));
        assert_eq!(
            hub.waited_topics(),
            0,
            "the topic is forgotten with its last waiter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_reads_a_last_time_at_its_deadline() {
        let hub = EventHub::new();
        let reads = AtomicUsize::new(0);
        let value = wait_for::<usize, (), _, _>(
            &hub,
            Topic::QrSession("q".into()),
            Duration::from_secs(3),
            || {
                let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok(n) }
            },
            |_| false,
        )
        .await;
        assert_eq!(value, Ok(2));
    }

    #[test]
    fn other_instances_payloads_wake_and_own_are_skipped() {
        let hub = EventHub::new();
        let mut sub = hub.subscribe(Topic::QrSession("q1".into()));
        hub.heard(&format!("{}|q:q1", hub.inner.instance));
        assert!(!sub.receiver.has_changed().unwrap());
        hub.heard("someone-else|q:q1");
        assert!(sub.receiver.has_changed().unwrap());
        let _ = &mut sub;
        let mut first = hub.subscribe(Topic::Authentication("a1".into()));
        let mut second = hub.subscribe(Topic::Enrollment("e1".into()));
        hub.heard("someone-else|a:a1,e:e1");
        assert!(first.receiver.has_changed().unwrap());
        assert!(second.receiver.has_changed().unwrap());
        let _ = (&mut first, &mut second);
    }
}
