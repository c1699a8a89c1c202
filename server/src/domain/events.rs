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
//!
//! A change is told to the other instances only after it committed, and not from inside its
//! transaction: PostgreSQL serialises the commits of every transaction that ran `NOTIFY` on one
//! database-wide lock, held through the commit's WAL flush, so a `NOTIFY` in each write would
//! queue every write of every instance behind one another. Instead the hub collects the topics
//! committed in this process and one forwarder task sends them, as few payloads as fit, in one
//! statement after another: while one is sent the next batch gathers. A topic lost on the way
//! (the process stops between the commit and the send, or the send fails) costs a remote waiter
//! at most its wait: it reads once more at its deadline. The batch after a failed send starts
//! with a wake-everyone payload (`*`), and so does a batch that outgrew [`MAX_QUEUED_TOPICS`]
//! (the topics are then dropped).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::RngCore;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::metrics::ChangeNotificationCounters;
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
    /// Topics committed here that the other instances have not been told of yet.
    outbox: Mutex<Outbox>,
    /// Signalled when the outbox gets a topic (a permit is kept if the forwarder is busy).
    outbox_filled: Notify,
    /// What was sent, heard and missed, for `/metrics`.
    counters: ChangeNotificationCounters,
}

/// The most topics the outbox holds: beyond them (the database has been unreachable for a
/// while) the batch is replaced by one payload that wakes every waiter of every instance.
pub const MAX_QUEUED_TOPICS: usize = 65_536;

/// The longest `NOTIFY` payload sent (PostgreSQL refuses 8,000 bytes and more).
const MAX_PAYLOAD_BYTES: usize = 7_900;

/// The topic that wakes every waiter of the instances that hear it.
const EVERYONE: &str = "*";

/// What the forwarder is to send next.
#[derive(Default)]
struct Outbox {
    /// Whether a forwarder runs (PostgreSQL): without one, nothing is queued.
    forwarding: bool,
    /// Encoded topics, in the order they committed.
    topics: Vec<String>,
    /// Topics were dropped (too many, or a send failed): tell everyone to read again.
    everyone: bool,
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
    /// A hub with no waiters, whose notifications no metric counts.
    pub fn new() -> Self {
        Self::counted(ChangeNotificationCounters::default())
    }

    /// A hub with no waiters that counts the notifications it sends, hears and may have missed
    /// on `counters` (the server's metrics).
    pub(crate) fn counted(counters: ChangeNotificationCounters) -> Self {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                instance: hex::encode(id),
                outbox: Mutex::new(Outbox::default()),
                outbox_filled: Notify::new(),
                counters,
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

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner
            .outbox
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
            also: None,
        }
    }

    /// A subscription woken when either `first` or `second` is announced (a wait whose answer
    /// may change by either: a flow, and the push it waits for).
    pub fn subscribe_either(&self, first: Topic, second: Topic) -> Subscription {
        let mut subscription = self.subscribe(first);
        subscription.also = Some(Box::new(self.subscribe(second)));
        subscription
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

    /// Announces a committed change: wakes this process's waiters at once, and queues the
    /// topics for the other instances (PostgreSQL), which the forwarder tells shortly after
    /// (see the module's documentation). Call it only once the change committed: woken
    /// earlier, a waiter could read the old state.
    pub fn announce(&self, topics: &[Topic]) {
        for topic in topics {
            self.wake_local(topic);
        }
        self.queue_for_others(topics);
    }

    fn queue_for_others(&self, topics: &[Topic]) {
        if topics.is_empty() {
            return;
        }
        let mut outbox = self.outbox();
        if !outbox.forwarding {
            return;
        }
        if outbox.everyone || outbox.topics.len() + topics.len() > MAX_QUEUED_TOPICS {
            outbox.topics.clear();
            outbox.everyone = true;
        } else {
            outbox.topics.extend(topics.iter().map(Topic::encode));
        }
        drop(outbox);
        self.inner.outbox_filled.notify_one();
    }

    /// The payloads that tell other instances of `topics` (and of everything, first, when
    /// `everyone`): `instance|topic,topic,…`, each under PostgreSQL's size limit.
    fn payloads(&self, topics: &[String], everyone: bool) -> Vec<String> {
        let prefix = format!("{}|", self.inner.instance);
        let mut payloads = Vec::new();
        if everyone {
            payloads.push(format!("{prefix}{EVERYONE}"));
        }
        let mut current = prefix.clone();
        for topic in topics {
            if current.len() > prefix.len() && current.len() + 1 + topic.len() > MAX_PAYLOAD_BYTES {
                payloads.push(std::mem::replace(&mut current, prefix.clone()));
            }
            if current.len() > prefix.len() {
                current.push(',');
            }
            current.push_str(topic);
        }
        if current.len() > prefix.len() {
            payloads.push(current);
        }
        payloads
    }

    /// How many topics have waiters now.
    pub fn waited_topics(&self) -> usize {
        self.lock().len()
    }

    /// How many subscriptions wait on `topic` now (tests: to start a race once a waiter waits).
    #[cfg(test)]
    pub(crate) fn waiters_on(&self, topic: &Topic) -> usize {
        self.lock()
            .get(topic)
            .map_or(0, watch::Sender::receiver_count)
    }

    /// Connects this hub to the other instances until the task is dropped: hands their
    /// announcements to this hub's waiters, and forwards this process's committed topics to
    /// them. On SQLite there are no other instances, and this returns at once.
    pub async fn listen(self, db: Database) {
        if db.engine() != crate::store::Engine::Postgres {
            return;
        }
        tokio::join!(self.clone().receive(db.clone()), self.forward(db));
    }

    async fn receive(self, db: Database) {
        let mut listener = loop {
            match Listener::connect(&db).await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener cannot connect; retrying");
                    self.inner.counters.listener_interruptions.inc();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            match listener.recv().await {
                Ok(Heard::Payload(payload)) => self.heard(&payload),
                Ok(Heard::Reconnected) => {
                    self.inner.counters.listener_interruptions.inc();
                    self.wake_all_local();
                }
                Err(e) => {
                    log_listener_error(&e);
                    self.inner.counters.listener_interruptions.inc();
                    self.wake_all_local();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Sends the outbox's topics to the other instances, a batch at a time.
    async fn forward(self, db: Database) {
        self.outbox().forwarding = true;
        loop {
            self.inner.outbox_filled.notified().await;
            if let Err(e) = self.send_queued(&db).await {
                tracing::warn!(error = %e, "change notification to other instances failed; they read again at their deadline");
                // No retry of its own, so a database that is down is not asked twice a second
                // by an idle server: the next batch (the next change committed here) first
                // tells everyone to read again.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Sends what the outbox holds now to the other instances (PostgreSQL). On failure, what
    /// was not sent is dropped and the next batch starts with a wake-everyone payload. Called
    /// by the forwarder, and once more at shutdown so the last changes are not left behind.
    pub async fn send_queued(&self, db: &Database) -> Result<(), StoreError> {
        let (topics, everyone) = {
            let mut outbox = self.outbox();
            (
                std::mem::take(&mut outbox.topics),
                std::mem::take(&mut outbox.everyone),
            )
        };
        for payload in self.payloads(&topics, everyone) {
            if let Err(e) = store_events::notify(db, &payload).await {
                self.inner.counters.send_failures.inc();
                self.outbox().everyone = true;
                return Err(e);
            }
            self.inner.counters.sent.inc();
        }
        Ok(())
    }

    fn heard(&self, payload: &str) {
        let Some((instance, topic)) = payload.split_once('|') else {
            return;
        };
        if instance == self.inner.instance {
            return;
        }
        self.inner.counters.heard.inc();
        if topic.split(',').any(|t| t == EVERYONE) {
            self.wake_all_local();
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

/// Interest in one topic (or two: [`EventHub::subscribe_either`]); dropping it forgets a topic
/// when nobody else waits for it.
pub struct Subscription {
    hub: EventHub,
    topic: Topic,
    receiver: watch::Receiver<u64>,
    /// The second topic's interest, if any (it has none of its own).
    also: Option<Box<Subscription>>,
}

impl Subscription {
    /// Waits until the topic (or the second one) is announced (since the subscription or the
    /// last wait) or `deadline` passes; `true` if it was announced.
    pub async fn wait(&mut self, deadline: Instant) -> bool {
        let Subscription { receiver, also, .. } = self;
        let woken = match also {
            None => tokio::time::timeout_at(deadline, receiver.changed()).await,
            Some(second) => {
                let second = &mut second.receiver;
                tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        first = receiver.changed() => first,
                        second = second.changed() => second,
                    }
                })
                .await
            }
        };
        matches!(woken, Ok(Ok(())))
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
    read: R,
    done: impl Fn(&T) -> bool,
) -> Result<T, E>
where
    R: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let subscription = (!wait.is_zero()).then(|| hub.subscribe(topic));
    wait_subscribed(subscription, wait, read, done).await
}

/// [`wait_for`] on a `subscription` taken before `read`'s first value was read (a read that
/// went out before the wait began, beside something else): whatever is announced after the
/// subscription wakes the wait, and whatever committed before it is in that first value. Taken
/// after the first read instead, an announcement between the two would be missed until the
/// deadline. Without a subscription (no wait), the first value is the answer.
pub async fn wait_subscribed<T, E, R, Fut>(
    mut subscription: Option<Subscription>,
    wait: Duration,
    mut read: R,
    done: impl Fn(&T) -> bool,
) -> Result<T, E>
where
    R: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + wait;
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
    async fn a_subscription_to_either_topic_wakes_on_each_and_forgets_both() {
        let hub = EventHub::new();
        let (flow, push) = (Topic::Flow("f1".into()), Topic::Authentication("a1".into()));
        let mut sub = hub.subscribe_either(flow.clone(), push.clone());
        assert_eq!(hub.waited_topics(), 2);
        let soon = || Instant::now() + Duration::from_secs(5);
        assert!(!sub.wait(soon()).await, "nothing announced");
        hub.wake_local(&push);
        assert!(sub.wait(soon()).await, "woken by the second topic");
        hub.wake_local(&flow);
        assert!(sub.wait(soon()).await, "woken by the first topic");
        assert!(!sub.wait(soon()).await, "each announcement wakes once");
        drop(sub);
        assert_eq!(
            hub.waited_topics(),
            0,
            "both topics are forgotten with their last waiter"
        );
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
        let counters = ChangeNotificationCounters::default();
        let hub = EventHub::counted(counters.clone());
        let mut sub = hub.subscribe(Topic::QrSession("q1".into()));
        hub.heard(&format!("{}|q:q1", hub.inner.instance));
        assert!(!sub.receiver.has_changed().unwrap());
        assert_eq!(
            counters.heard.get(),
            0,
            "its own notification is not counted"
        );
        hub.heard("someone-else|q:q1");
        assert!(sub.receiver.has_changed().unwrap());
        assert_eq!(counters.heard.get(), 1);
        let _ = &mut sub;
        let mut first = hub.subscribe(Topic::Authentication("a1".into()));
        let mut second = hub.subscribe(Topic::Enrollment("e1".into()));
        hub.heard("someone-else|a:a1,e:e1");
        assert!(first.receiver.has_changed().unwrap());
        assert!(second.receiver.has_changed().unwrap());
        let _ = (&mut first, &mut second);
    }

    #[test]
    fn nothing_is_queued_for_other_instances_without_a_forwarder() {
        let hub = EventHub::new();
        hub.announce(&[Topic::Authentication("a1".into())]);
        let outbox = hub.outbox();
        assert!(outbox.topics.is_empty() && !outbox.everyone);
    }

    #[test]
    fn committed_topics_queue_in_order_and_a_backlog_turns_into_wake_everyone() {
        let hub = EventHub::new();
        hub.outbox().forwarding = true;
        let mut sub = hub.subscribe(Topic::Enrollment("e1".into()));
        hub.announce(&[
            Topic::Authentication("a1".into()),
            Topic::Enrollment("e1".into()),
        ]);
        assert!(
            sub.receiver.has_changed().unwrap(),
            "local waiters are woken at once"
        );
        let _ = &mut sub;
        assert_eq!(hub.outbox().topics, ["a:a1", "e:e1"]);
        let many: Vec<Topic> = (0..MAX_QUEUED_TOPICS)
            .map(|n| Topic::Authentication(n.to_string()))
            .collect();
        hub.announce(&many);
        {
            let outbox = hub.outbox();
            assert!(outbox.everyone && outbox.topics.is_empty());
        }
        hub.announce(&[Topic::QrSession("q".into())]);
        assert!(
            hub.outbox().topics.is_empty(),
            "nothing more is queued once everyone will be told"
        );
    }

    #[test]
    fn payloads_stay_under_the_limit_and_carry_every_topic_once() {
        let hub = EventHub::new();
        let topics: Vec<String> = (0..1_000)
            .map(|n| Topic::Authentication(format!("aut_{n:032}")).encode())
            .collect();
        let payloads = hub.payloads(&topics, true);
        let prefix = format!("{}|", hub.inner.instance);
        assert_eq!(payloads[0], format!("{prefix}*"));
        assert!(payloads.len() > 2, "1,000 topics need several payloads");
        let mut carried = Vec::new();
        for payload in &payloads[1..] {
            assert!(payload.len() <= MAX_PAYLOAD_BYTES, "{}", payload.len());
            let list = payload.strip_prefix(&prefix).unwrap();
            carried.extend(list.split(',').map(str::to_string));
        }
        assert_eq!(carried, topics);
        assert!(hub.payloads(&[], false).is_empty());
    }

    #[test]
    fn a_wake_everyone_payload_wakes_every_waiter() {
        let hub = EventHub::new();
        let mut first = hub.subscribe(Topic::Authentication("a1".into()));
        let mut second = hub.subscribe(Topic::Flow("f1".into()));
        hub.heard("someone-else|*");
        assert!(first.receiver.has_changed().unwrap());
        assert!(second.receiver.has_changed().unwrap());
        let _ = (&mut first, &mut second);
    }

    /// On PostgreSQL (`DATABASE_URL`): what the outbox holds reaches a listening connection as
    /// one payload, and a send that fails leaves a wake-everyone for the next batch.
    #[tokio::test]
    async fn queued_topics_reach_other_instances_and_a_failed_send_asks_everyone_to_read_again() {
        let Some(url) = crate::store::postgres_url_for_tests("send notifications") else {
            return;
        };
        let db = Database::connect(&url, 2).await.expect("database");
        let mut listener = Listener::connect(&db)
            .await
            .expect("listener")
            .expect("PostgreSQL listens");
        let counters = ChangeNotificationCounters::default();
        let hub = EventHub::counted(counters.clone());
        hub.outbox().forwarding = true;
        hub.announce(&[
            Topic::Authentication("aut_sent".into()),
            Topic::Enrollment("enr_sent".into()),
        ]);
        hub.send_queued(&db).await.expect("sent");
        assert!(hub.outbox().topics.is_empty());
        assert_eq!(counters.sent.get(), 1, "two topics, one payload");
        assert_eq!(counters.send_failures.get(), 0);
        let expected = format!("{}|a:aut_sent,e:enr_sent", hub.inner.instance);
        // Other tests may notify on the same channel meanwhile: wait for this hub's payload.
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match listener.recv().await.expect("listen") {
                    Heard::Payload(payload) if payload == expected => break payload,
                    _ => continue,
                }
            }
        })
        .await
        .expect("the payload arrives");
        assert_eq!(heard, expected);

        db.close().await;
        hub.announce(&[Topic::QrSession("qrs_lost".into())]);
        assert!(hub.send_queued(&db).await.is_err());
        let outbox = hub.outbox();
        assert!(outbox.everyone && outbox.topics.is_empty());
        assert_eq!(counters.sent.get(), 1);
        assert_eq!(counters.send_failures.get(), 1);
    }
}
