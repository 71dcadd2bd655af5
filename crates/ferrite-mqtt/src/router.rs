//! The router: the one place every published message goes through. Client sessions and
//! internal consumers (the telemetry store, later rules and fleet state) subscribe to it with
//! topic filters alike; the router matches, delivers and keeps retained messages.
//!
//! Internal consumers may be *durable*: a publish is acknowledged to its publisher only after
//! every durable consumer that matched it has given its [`Verdict`] (for the store: after the
//! fsync). Delivery to an internal consumer waits while its queue is full (backpressure on
//! the publisher); delivery to a client session never waits: when a session's queue is full
//! the message is dropped for that session and counted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ferrite_core::{Timestamp, TopicFilter, TopicName};
use ferrite_mqtt_codec::{Properties, QoS, ReasonCode};
use tokio::sync::{mpsc, oneshot};

use crate::persist::{
    self, Commit, Durable, PersistError, PersistStats, RecoveredSession, RecoveredWill,
    SessionStore,
};
use crate::trie::{SubscriberId, SubscriptionTree};

/// A published message as the router carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Where it was published.
    pub topic: TopicName,
    /// The application payload, shared, never copied per subscriber.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The publisher's retain flag.
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers (payload format, content type, response
    /// topic, correlation data, user properties, message expiry).
    pub properties: Properties,
    /// The client id of the publisher (for no-local and logs).
    pub publisher: Arc<str>,
    /// When the server received it.
    pub received_at: Timestamp,
}

/// Options of one subscription, from SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The QoS granted: deliveries are downgraded to it.
    pub qos: QoS,
    /// Do not deliver the subscriber's own publishes.
    pub no_local: bool,
    /// Keep the publisher's retain flag on delivery.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier, echoed on deliveries.
    pub subscription_id: Option<u32>,
}

/// A shared subscription's identity, `{share name}/{filter}`: each message matching it goes
/// to one of the sessions holding it.
type ShareKey = Arc<str>;

/// A message on its way to a client session.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message.
    pub message: Arc<Message>,
    /// QoS of this delivery: min(published, granted), maximum over overlapping subscriptions.
    pub qos: QoS,
    /// Retain flag of this delivery.
    pub retain: bool,
    /// Identifiers of every matching subscription that had one.
    pub subscription_ids: Vec<u32>,
    /// Where the session store keeps this delivery (persistent sessions, QoS 1/2).
    pub(crate) store_seq: Option<u64>,
}

impl Outgoing {
    /// What this delivery counts against its session's byte budget.
    fn queued_size(&self) -> usize {
        self.message.payload.len() + self.message.topic.as_str().len()
    }
}

/// What a session's queue does with a delivery that does not fit (`mqtt.session_queue_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Keep what is queued and drop the new delivery (the oldest messages arrive).
    #[default]
    DropNewest,
    /// Drop the oldest queued deliveries to make room (the newest messages arrive).
    DropOldest,
}

/// A session's delivery queue: at most `session_queue` deliveries and `session_queue_bytes`
/// bytes of topic and payload (one delivery larger than that still fits an empty queue);
/// what does not fit is dropped as the session's [`QueueFullPolicy`] says.
///
/// A mutex around a `VecDeque` (no allocation while empty, which idle sessions mostly are)
/// and a `Notify` that wakes the connection task.
pub(crate) struct SessionQueue {
    shared: Arc<QueueShared>,
}

struct QueueShared {
    state: std::sync::Mutex<QueueState>,
    ready: tokio::sync::Notify,
    capacity: usize,
    max_bytes: usize,
    policy: QueueFullPolicy,
    memory: Arc<QueueMemory>,
}

/// The bytes queued across every session, against `mqtt.max_queued_bytes`: publishes with
/// session subscribers wait while it is reached (backpressure on publishers), deliveries
/// that would pass it are refused.
pub(crate) struct QueueMemory {
    bytes: AtomicUsize,
    /// 0: no limit.
    max: AtomicUsize,
    wait_ms: AtomicU64,
    /// Publishes waiting for room.
    waiting: AtomicUsize,
    drained: tokio::sync::Notify,
    /// Publishes that have waited for room since start, for whoever wants to see one happen.
    held: tokio::sync::watch::Sender<u64>,
}

impl Default for QueueMemory {
    fn default() -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            wait_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            held: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl QueueMemory {
    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    fn full(&self) -> bool {
        let max = self.max();
        max > 0 && self.bytes.load(Ordering::Relaxed) >= max
    }

    /// Whether `size` more bytes fit.
    fn fits(&self, size: usize) -> bool {
        let max = self.max();
        max == 0 || self.bytes.load(Ordering::Relaxed) + size <= max
    }

    fn add(&self, size: usize) {
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }

    fn sub(&self, size: usize) {
        let before = self.bytes.fetch_sub(size, Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) > 0 && before.saturating_sub(size) < self.max() {
            self.drained.notify_waiters();
        }
    }

    /// Wait until the sessions hold less than the limit, or `queue_wait` has passed.
    async fn room(&self) {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.wait_ms.load(Ordering::Relaxed));
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.held.send_modify(|n| *n += 1);
        while self.full() {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.full() || tokio::time::timeout_at(deadline, drained).await.is_err() {
                break;
            }
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct QueueState {
    items: std::collections::VecDeque<Box<Outgoing>>,
    /// Topic and payload bytes of `items`.
    bytes: usize,
    /// The receiving side is gone.
    closed: bool,
}

impl QueueShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SessionQueue {
    /// A queue and its sending side (handed to [`Router::register_session`]).
    pub(crate) fn new(
        capacity: usize,
        max_bytes: usize,
        policy: QueueFullPolicy,
        memory: Arc<QueueMemory>,
    ) -> (SessionSender, Self) {
        let shared = Arc::new(QueueShared {
            state: std::sync::Mutex::default(),
            ready: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
            max_bytes,
            policy,
            memory,
        });
        (
            SessionSender {
                shared: Arc::clone(&shared),
            },
            Self { shared },
        )
    }

    /// The next delivery. Cancel-safe: a delivery is taken off the queue only when it is
    /// returned.
    pub(crate) async fn recv(&mut self) -> Option<Box<Outgoing>> {
        loop {
            if let Some(out) = self.try_recv() {
                return Some(out);
            }
            // A permit stored by a send that came after the check above wakes this at once.
            self.shared.ready.notified().await;
        }
    }

    /// The next delivery if one is queued, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Box<Outgoing>> {
        let mut state = self.shared.lock();
        let out = state.items.pop_front()?;
        let size = out.queued_size();
        state.bytes = state.bytes.saturating_sub(size);
        if state.items.is_empty() && state.items.capacity() > QUEUE_KEEP {
            state.items = std::collections::VecDeque::new();
        }
        drop(state);
        self.shared.memory.sub(size);
        Some(out)
    }

    /// Deliveries queued.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().items.len()
    }
}

impl Drop for SessionQueue {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl Drop for QueueShared {
    fn drop(&mut self) {
        let bytes = self.lock().bytes;
        self.memory.sub(bytes);
    }
}

/// Queue slots an emptied queue keeps allocated; a larger backlog's memory is given back.
const QUEUE_KEEP: usize = 16;

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `session_queue` deliveries are queued (drop-newest policy).
    Full,
    /// The delivery's bytes do not fit `session_queue_bytes` (drop-newest policy).
    Bytes,
    /// The session is going away.
    Closed,
    /// The sessions together hold `mqtt.max_queued_bytes`.
    Memory,
}

/// A queued delivery, and the older ones dropped to make room for it (drop-oldest policy),
/// each with whether the count (else the bytes) limit pushed it out.
pub(crate) struct Queued {
    pub(crate) evicted: Vec<(Box<Outgoing>, bool)>,
}

/// The router's side of a [`SessionQueue`].
#[derive(Clone)]
pub(crate) struct SessionSender {
    shared: Arc<QueueShared>,
}

impl SessionSender {
    /// Queue `out` if its session's limits and policy let it in; `before` runs on it just
    /// before it becomes visible to the session (to store it first, so the session's
    /// completion of it is always written after it).
    pub(crate) fn offer(
        &self,
        mut out: Outgoing,
        before: impl FnOnce(&mut Outgoing),
    ) -> Result<Queued, Refused> {
        let q = &self.shared;
        let size = out.queued_size();
        let mut state = q.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        let mut evicted = Vec::new();
        if !q.memory.fits(size) {
            return Err(Refused::Memory);
        }
        let over_count = |s: &QueueState| s.items.len() >= q.capacity;
        let over_bytes = |s: &QueueState| s.bytes > 0 && s.bytes + size > q.max_bytes;
        match q.policy {
            QueueFullPolicy::DropNewest if over_count(&state) => return Err(Refused::Full),
            QueueFullPolicy::DropNewest if over_bytes(&state) => return Err(Refused::Bytes),
            QueueFullPolicy::DropNewest => {}
            QueueFullPolicy::DropOldest => {
                while over_count(&state) || over_bytes(&state) {
                    let by_count = over_count(&state);
                    let Some(old) = state.items.pop_front() else {
                        break;
                    };
                    state.bytes = state.bytes.saturating_sub(old.queued_size());
                    evicted.push((old, by_count));
                }
            }
        }
        before(&mut out);
        state.bytes += size;
        state.items.push_back(Box::new(out));
        drop(state);
        let freed: usize = evicted.iter().map(|(o, _)| o.queued_size()).sum();
        q.memory.add(size);
        q.memory.sub(freed);
        q.ready.notify_one();
        Ok(Queued { evicted })
    }

    /// Queue a delivery read back from the session store at start, whatever the limits:
    /// it was accepted before the restart and is still stored, so it is not dropped now.
    pub(crate) fn restore(&self, out: Outgoing) {
        let q = &self.shared;
        let size = out.queued_size();
        let mut state = q.lock();
        state.bytes += size;
        state.items.push_back(Box::new(out));
        drop(state);
        q.memory.add(size);
        q.ready.notify_one();
    }

    /// Whether a delivery would be queued without dropping anything.
    fn has_room(&self) -> bool {
        let state = self.shared.lock();
        !state.closed && state.items.len() < self.shared.capacity
    }
}

/// What a durable internal consumer decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted (for the store: durable and queryable).
    Accepted,
    /// Refused for a reason the publisher is told (MQTT 5 reason code, reason string).
    Rejected(ReasonCode, String),
}

/// A message handed to an internal consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// Present when the consumer is durable; must be answered with [`Delivery::settle`].
    settle: Option<oneshot::Sender<Verdict>>,
}

impl Delivery {
    /// Give the verdict on this message. Dropping a delivery unsettled counts as a failure
    /// (reason "server unavailable").
    pub fn settle(mut self, verdict: Verdict) {
        if let Some(tx) = self.settle.take() {
            let _ = tx.send(verdict);
        }
    }

    /// Whether the publisher waits for this delivery's verdict.
    pub fn is_durable(&self) -> bool {
        self.settle.is_some()
    }
}

/// How the router handled one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Subscribers (sessions and internal consumers) that matched.
    pub matched: usize,
    /// Accepted unless a durable consumer refused or failed; the first refusal wins.
    pub verdict: Verdict,
}

enum Sink {
    Session {
        tx: SessionSender,
        client_id: Arc<str>,
        /// Set for a persistent session: its QoS 1/2 deliveries are stored before the
        /// publisher is acknowledged.
        durable: Option<Arc<Durable>>,
    },
    Internal {
        tx: mpsc::Sender<Delivery>,
        durable: bool,
    },
}

#[derive(Default)]
struct State {
    tree: SubscriptionTree<SubscribeOptions>,
    /// Subscriber ids that stand for one session's shared subscription, with its key.
    shares: HashMap<SubscriberId, ShareKey>,
    sinks: HashMap<SubscriberId, Sink>,
    /// Retained message per topic. Bounded by `max_retained` (new topics refused when full).
    retained: HashMap<TopicName, Arc<Message>>,
}

/// Router counters.
#[derive(Debug, Default, serde::Serialize)]
pub struct RouterStats {
    /// Messages published into the router.
    pub published: AtomicU64,
    /// Deliveries queued to client sessions.
    pub delivered: AtomicU64,
    /// Deliveries dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Deliveries dropped because a session's queued bytes were at `mqtt.session_queue_bytes`.
    pub dropped_queue_bytes: AtomicU64,
    /// Deliveries dropped because all sessions together held `mqtt.max_queued_bytes`, after
    /// their publish waited `mqtt.queue_wait` for room.
    pub dropped_memory: AtomicU64,
    /// Publishes that waited for room under `mqtt.max_queued_bytes`.
    pub publishes_held: AtomicU64,
    /// Retained messages refused because the retained store was full.
    pub retained_refused: AtomicU64,
}

/// The router. Cheap to clone (one `Arc`, also held by every session's handle); all clones
/// share state.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    state: RwLock<State>,
    /// Where retained messages and persistent sessions are kept; `None`: in memory only.
    store: Option<SessionStore>,
    /// Persistent sessions read back at start, until the gateway takes them.
    recovered: Mutex<Vec<RecoveredSession>>,
    /// Wills still owed at start, until the gateway takes them.
    recovered_wills: Mutex<Vec<RecoveredWill>>,
    next_id: AtomicU64,
    stats: RouterStats,
    max_retained: usize,
    /// Picks the member of a shared subscription group that gets the next message.
    round_robin: AtomicU64,
    /// Bytes queued across the sessions, and their limit.
    memory: Arc<QueueMemory>,
}

/// A client session's registration with the router; unsubscribes everything when dropped.
pub struct SessionHandle {
    router: Router,
    id: SubscriberId,
    /// This session's filters and their options, so dropping the handle removes exactly
    /// its subscriptions (and a persistent session can store them).
    filters: SortedMap<TopicFilter, SubscribeOptions>,
    /// This session's shared subscriptions: (share name, filter) → the subscriber id that
    /// stands for it in the tree, and its options.
    shared: SortedMap<(String, TopicFilter), (SubscriberId, SubscribeOptions)>,
    /// Set while the session is persistent.
    durable: Option<Arc<Durable>>,
}

impl Router {
    /// An empty router keeping at most `max_retained` retained messages, in memory only.
    pub fn new(max_retained: usize) -> Self {
        Self::with_store(max_retained, None, persist::Recovered::default())
    }

    fn with_store(
        max_retained: usize,
        store: Option<SessionStore>,
        recovered: persist::Recovered,
    ) -> Self {
        let stats = RouterStats::default();
        let mut state = State::default();
        for message in recovered.retained {
            if state.retained.len() < max_retained {
                state
                    .retained
                    .insert(message.topic.clone(), Arc::new(message));
            } else {
                stats.retained_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        Self {
            inner: Arc::new(RouterInner {
                state: RwLock::new(state),
                store,
                recovered: Mutex::new(recovered.sessions),
                recovered_wills: Mutex::new(recovered.wills),
                next_id: AtomicU64::new(1),
                stats,
                max_retained,
                round_robin: AtomicU64::new(0),
                memory: Arc::new(QueueMemory::default()),
            }),
        }
    }

    /// A router whose retained messages and persistent sessions are kept crash-safe in the
    /// session store at `path` (created if missing). What the store holds is read back:
    /// retained messages at once, sessions when an [`crate::MqttServer`] starts on this
    /// router. Damaged records are skipped and counted ([`Router::persist_stats`]).
    pub fn durable(max_retained: usize, path: &Path) -> Result<Self, PersistError> {
        let (store, recovered) = persist::open(path)?;
        let (sessions, wills) = (recovered.sessions.len(), recovered.wills.len());
        let router = Self::with_store(max_retained, Some(store), recovered);
        tracing::info!(
            retained = router.retained_count(),
            sessions,
            wills,
            path = %path.display(),
            "MQTT session store opened"
        );
        Ok(router)
    }

    /// Bound the bytes queued across all sessions (`mqtt.max_queued_bytes`, 0: none) and
    /// how long a publish waits for room (`mqtt.queue_wait`).
    pub fn limit_queued_bytes(&self, max: usize, wait: Duration) {
        let m = &self.inner.memory;
        m.max.store(max, Ordering::Relaxed);
        m.wait_ms.store(
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The number of publishes that have waited for room under `mqtt.max_queued_bytes`,
    /// updated as each begins to wait.
    pub fn held_publishes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.memory.held.subscribe()
    }

    /// Bytes (topic + payload) queued across all sessions now.
    pub fn queued_bytes(&self) -> usize {
        self.inner.memory.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn queue_memory(&self) -> Arc<QueueMemory> {
        Arc::clone(&self.inner.memory)
    }

    /// Counters of the session store; `None` for an in-memory router.
    pub fn persist_stats(&self) -> Option<&Arc<PersistStats>> {
        self.inner.store.as_ref().map(SessionStore::stats)
    }

    /// Commit what was written to the session store and close it (at shutdown, after the
    /// gateway stopped). Nothing to do for an in-memory router.
    pub async fn close_store(&self) {
        if let Some(store) = &self.inner.store
            && let Err(e) = store.close().wait().await
        {
            tracing::error!(error = %e, "MQTT session store did not close cleanly");
        }
    }

    /// The persistent sessions read back at start (once; later calls get none).
    pub(crate) fn take_recovered(&self) -> Vec<RecoveredSession> {
        std::mem::take(
            &mut *self
                .inner
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The wills still owed at start (once; later calls get none).
    pub(crate) fn take_recovered_wills(&self) -> Vec<RecoveredWill> {
        std::mem::take(
            &mut *self
                .inner
                .recovered_wills
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The session store, for what the gateway keeps outside sessions (wills); `None` for
    /// an in-memory router.
    pub(crate) fn session_store(&self) -> Option<&SessionStore> {
        self.inner.store.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &RouterStats {
        &self.inner.stats
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Register a client session whose deliveries go to `tx`.
    pub(crate) fn register_session(&self, client_id: Arc<str>, tx: SessionSender) -> SessionHandle {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.write().sinks.insert(
            id,
            Sink::Session {
                tx,
                client_id,
                durable: None,
            },
        );
        SessionHandle {
            router: self.clone(),
            id,
            filters: SortedMap::default(),
            shared: SortedMap::default(),
            durable: None,
        }
    }

    /// Subscribe an internal consumer to `filters`; deliveries arrive on the returned
    /// receiver, whose queue holds `capacity` messages (publishers wait when it is full).
    /// A durable consumer must settle each delivery; publishers wait for the verdict.
    pub fn subscribe_internal(
        &self,
        filters: &[TopicFilter],
        capacity: usize,
        durable: bool,
    ) -> mpsc::Receiver<Delivery> {
        self.add_internal(filters, capacity, durable).1
    }

    /// Like [`Router::subscribe_internal`], for a consumer that comes and goes while the
    /// router lives (a rule being disabled or replaced): the subscription ends — no further
    /// message is queued for it — as soon as the returned [`InternalSubscription`] is dropped.
    pub fn subscribe_internal_scoped(
        &self,
        filters: &[TopicFilter],
        capacity: usize,
        durable: bool,
    ) -> (InternalSubscription, mpsc::Receiver<Delivery>) {
        let (id, rx) = self.add_internal(filters, capacity, durable);
        (
            InternalSubscription {
                router: self.clone(),
                id,
                filters: filters.to_vec(),
            },
            rx,
        )
    }

    fn add_internal(
        &self,
        filters: &[TopicFilter],
        capacity: usize,
        durable: bool,
    ) -> (SubscriberId, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.write();
        state.sinks.insert(id, Sink::Internal { tx, durable });
        let opts = SubscribeOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: true,
            subscription_id: None,
        };
        for f in filters {
            state.tree.insert(f, id, opts);
        }
        (id, rx)
    }

    /// Route one message: store or clear it as retained if flagged, deliver it to every
    /// matching subscriber, and wait for the verdicts of durable internal consumers.
    pub async fn publish(&self, message: Message) -> PublishOutcome {
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        let message = Arc::new(message);
        let mut sessions: HashMap<SubscriberId, SessionDelivery> = HashMap::new();
        let mut internal: Vec<(mpsc::Sender<Delivery>, bool)> = Vec::new();
        let mut groups: HashMap<ShareKey, Vec<SessionDelivery>> = HashMap::new();
        // Writes to the session store the publisher's acknowledgement waits for.
        let mut commits = Vec::new();
        if message.retain {
            let mut state = self.write();
            if message.payload.is_empty() {
                if state.retained.remove(&message.topic).is_some()
                    && let Some(store) = &self.inner.store
                {
                    commits.push(store.clear_retained(&message.topic));
                }
            } else if state.retained.len() < self.inner.max_retained
                || state.retained.contains_key(&message.topic)
            {
                state
                    .retained
                    .insert(message.topic.clone(), Arc::clone(&message));
                if let Some(store) = &self.inner.store {
                    commits.push(store.put_retained(&message));
                }
            } else {
                self.inner
                    .stats
                    .retained_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        {
            let state = self.read();
            let (sinks, shares) = (&state.sinks, &state.shares);
            state
                .tree
                .for_each_match(&message.topic, |id, opts| match sinks.get(&id) {
                    Some(Sink::Session { tx, durable, .. }) if shares.contains_key(&id) => {
                        let members = groups.entry(Arc::clone(&shares[&id])).or_default();
                        members.push(SessionDelivery {
                            tx: tx.clone(),
                            durable: durable.clone(),
                            out: Outgoing {
                                message: Arc::clone(&message),
                                qos: message.qos.min(opts.qos),
                                retain: opts.retain_as_published && message.retain,
                                subscription_ids: opts.subscription_id.into_iter().collect(),
                                store_seq: None,
                            },
                        });
                    }
                    Some(Sink::Session {
                        tx,
                        client_id,
                        durable,
                    }) => {
                        if opts.no_local && **client_id == *message.publisher {
                            return;
                        }
                        let qos = message.qos.min(opts.qos);
                        let retain = opts.retain_as_published && message.retain;
                        let entry = sessions.entry(id).or_insert_with(|| SessionDelivery {
                            tx: tx.clone(),
                            durable: durable.clone(),
                            out: Outgoing {
                                message: Arc::clone(&message),
                                qos,
                                retain,
                                subscription_ids: Vec::new(),
                                store_seq: None,
                            },
                        });
                        // Overlapping subscriptions: one delivery at the highest QoS.
                        entry.out.qos = entry.out.qos.max(qos);
                        entry.out.retain |= retain;
                        entry.out.subscription_ids.extend(opts.subscription_id);
                    }
                    Some(Sink::Internal { tx, durable })
                        if !internal.iter().any(|(t, _)| t.same_channel(tx)) =>
                    {
                        internal.push((tx.clone(), *durable));
                    }
                    Some(Sink::Internal { .. }) | None => {}
                });
        }
        let matched = sessions.len() + internal.len() + groups.len();
        let mut deliveries: Vec<_> = sessions.into_values().collect();
        for (_, mut members) in groups {
            // One member per group, in turn; skip members whose queue is full.
            let start = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) as usize;
            let n = members.len();
            let pick = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| members[i].tx.has_room())
                .unwrap_or(start % n);
            deliveries.push(members.swap_remove(pick));
        }
        if !deliveries.is_empty() && self.inner.memory.full() {
            // Backpressure: this publisher's connection is not read while it waits.
            self.inner
                .stats
                .publishes_held
                .fetch_add(1, Ordering::Relaxed);
            self.inner.memory.room().await;
        }
        for SessionDelivery { tx, durable, out } in deliveries {
            // A place in the queue first, so nothing is stored that is then dropped; stored
            // before it is queued, so the client's completion is written after it.
            let store = durable.as_ref().filter(|_| out.qos != QoS::AtMostOnce);
            let offered = tx.offer(out, |out| {
                if let Some(durable) = store {
                    commits.extend(durable.put_message(out));
                }
            });
            match offered {
                Ok(Queued { evicted }) => {
                    self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    for (old, by_count) in evicted {
                        if let (Some(durable), Some(seq)) = (&durable, old.store_seq) {
                            durable.delete_message(seq);
                        }
                        let counter = if by_count {
                            &self.inner.stats.dropped_queue_full
                        } else {
                            &self.inner.stats.dropped_queue_bytes
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(Refused::Full) => {
                    self.inner
                        .stats
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(Refused::Bytes) => {
                    self.inner
                        .stats
                        .dropped_queue_bytes
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(Refused::Memory) => {
                    self.inner
                        .stats
                        .dropped_memory
                        .fetch_add(1, Ordering::Relaxed);
                }
                // The session is going away; its cleanup unsubscribes it.
                Err(Refused::Closed) => {}
            }
        }
        let mut verdicts = Vec::new();
        for (tx, durable) in internal {
            let (settle, verdict) = if durable {
                let (s, v) = oneshot::channel();
                (Some(s), Some(v))
            } else {
                (None, None)
            };
            let delivery = Delivery {
                message: Arc::clone(&message),
                settle,
            };
            if tx.send(delivery).await.is_err() {
                if durable {
                    verdicts.push(None);
                }
                continue;
            }
            if let Some(v) = verdict {
                verdicts.push(Some(v));
            }
        }
        let mut verdict = Verdict::Accepted;
        for commit in commits {
            if let Err(e) = commit.wait().await
                && verdict == Verdict::Accepted
            {
                verdict = Verdict::Rejected(
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    format!("the message could not be stored for a persistent session: {e}"),
                );
            }
        }
        for v in verdicts {
            let got = match v {
                Some(rx) => rx.await.unwrap_or_else(|_| unavailable()),
                None => unavailable(),
            };
            if verdict == Verdict::Accepted {
                verdict = got;
            }
        }
        PublishOutcome { matched, verdict }
    }

    /// Retained messages matching `filter`, for a new subscription.
    pub fn retained_matching(&self, filter: &TopicFilter) -> Vec<Arc<Message>> {
        self.read()
            .retained
            .iter()
            .filter(|(t, _)| filter.matches(t))
            .map(|(_, m)| Arc::clone(m))
            .collect()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.read().retained.len()
    }
}

/// One delivery to a client session being assembled by [`Router::publish`].
struct SessionDelivery {
    tx: SessionSender,
    durable: Option<Arc<Durable>>,
    out: Outgoing,
}

fn unavailable() -> Verdict {
    Verdict::Rejected(
        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
        "an internal consumer did not settle the message".to_owned(),
    )
}

impl SessionHandle {
    /// Add or replace a subscription of this session. Returns true if it replaced one.
    pub fn subscribe(&mut self, filter: &TopicFilter, options: SubscribeOptions) -> bool {
        self.filters.insert(filter.clone(), options);
        self.router.write().tree.insert(filter, self.id, options)
    }

    /// Remove a subscription. Returns true if it existed.
    pub fn unsubscribe(&mut self, filter: &TopicFilter) -> bool {
        self.filters.remove(filter);
        self.router.write().tree.remove(filter, self.id)
    }

    /// Add or replace this session's membership in the shared subscription
    /// `$share/{share}/{filter}`. Returns true if it replaced one.
    pub fn subscribe_shared(
        &mut self,
        share: &str,
        filter: &TopicFilter,
        options: SubscribeOptions,
    ) -> bool {
        let mut state = self.router.write();
        let key = (share.to_owned(), filter.clone());
        if let Some((id, stored)) = self.shared.get_mut(&key) {
            *stored = options;
            state.tree.insert(filter, *id, options);
            return true;
        }
        let Some(Sink::Session {
            tx,
            client_id,
            durable,
        }) = state.sinks.get(&self.id)
        else {
            return false;
        };
        let sink = Sink::Session {
            tx: tx.clone(),
            client_id: Arc::clone(client_id),
            durable: durable.clone(),
        };
        let id = self.router.inner.next_id.fetch_add(1, Ordering::Relaxed);
        state.sinks.insert(id, sink);
        state.shares.insert(id, format!("{share}/{filter}").into());
        state.tree.insert(filter, id, options);
        self.shared.insert(key, (id, options));
        false
    }

    /// Leave the shared subscription `$share/{share}/{filter}`. Returns true if it existed.
    pub fn unsubscribe_shared(&mut self, share: &str, filter: &TopicFilter) -> bool {
        let Some((id, _)) = self.shared.remove(&(share.to_owned(), filter.clone())) else {
            return false;
        };
        let mut state = self.router.write();
        state.tree.remove(filter, id);
        state.sinks.remove(&id);
        state.shares.remove(&id);
        true
    }

    /// Keep only the subscriptions whose filter (as the client wrote it, `$share/{share}/`
    /// prefix included) passes `keep`; returns how many were removed.
    pub fn retain_filters(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let plain: Vec<TopicFilter> = self
            .filters
            .keys()
            .filter(|f| !keep(f.as_str()))
            .cloned()
            .collect();
        let shared: Vec<(String, TopicFilter)> = self
            .shared
            .keys()
            .filter(|(share, f)| !keep(&format!("$share/{share}/{f}")))
            .cloned()
            .collect();
        let removed = plain.len() + shared.len();
        for f in &plain {
            self.unsubscribe(f);
        }
        for (share, f) in &shared {
            self.unsubscribe_shared(share, f);
        }
        removed
    }

    /// The router this session is registered with.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Every subscription, with filters as the client wrote them (`$share/…` included).
    pub(crate) fn subscriptions(&self) -> Vec<(String, SubscribeOptions)> {
        let mut all: Vec<(String, SubscribeOptions)> = self
            .filters
            .iter()
            .map(|(f, o)| (f.as_str().to_owned(), *o))
            .collect();
        all.extend(
            self.shared
                .iter()
                .map(|((share, f), (_, o))| (format!("$share/{share}/{f}"), *o)),
        );
        all
    }

    /// The session's stored side, while it is persistent.
    pub(crate) fn durable(&self) -> Option<&Arc<Durable>> {
        self.durable.as_ref()
    }

    /// Make the session persistent with `expiry` (or update the expiry of one that is),
    /// storing its subscriptions; its QoS 1/2 deliveries are stored from now on, numbered
    /// from `next_seq`. `None` for a router without a session store.
    pub(crate) fn make_durable(
        &mut self,
        client_id: &Arc<str>,
        expiry: Duration,
        next_seq: u64,
    ) -> Option<Commit> {
        let store = self.router.inner.store.clone()?;
        if let Some(durable) = &self.durable {
            durable.set_expiry(expiry);
            return Some(durable.put_meta(self.subscriptions()));
        }
        let durable = Arc::new(Durable::new(Arc::clone(client_id), store, next_seq, expiry));
        self.set_sink_durable(Some(&durable));
        let commit = durable.put_meta(self.subscriptions());
        self.durable = Some(durable);
        Some(commit)
    }

    /// Make a session read back from the store persistent again, without writing what the
    /// store already holds.
    pub(crate) fn reattach_durable(
        &mut self,
        client_id: &Arc<str>,
        expiry: Duration,
        next_seq: u64,
    ) {
        let Some(store) = self.router.inner.store.clone() else {
            return;
        };
        let durable = Arc::new(Durable::new(Arc::clone(client_id), store, next_seq, expiry));
        self.set_sink_durable(Some(&durable));
        self.durable = Some(durable);
    }

    /// The session is no longer persistent (it ends, or its new connection asked for an
    /// expiry of 0): delete what the store holds for it.
    pub(crate) fn make_volatile(&mut self) {
        if let Some(durable) = self.durable.take() {
            self.set_sink_durable(None);
            durable.drop_session();
        }
    }

    /// Store the session's subscriptions, if it is persistent.
    pub(crate) fn persist_subscriptions(&self) -> Option<Commit> {
        self.durable
            .as_ref()
            .map(|d| d.put_meta(self.subscriptions()))
    }

    fn set_sink_durable(&self, to: Option<&Arc<Durable>>) {
        let mut state = self.router.write();
        let ids = std::iter::once(self.id).chain(self.shared.values().map(|(id, _)| *id));
        for id in ids {
            if let Some(Sink::Session { durable, .. }) = state.sinks.get_mut(&id) {
                *durable = to.cloned();
            }
        }
    }
}

/// An internal subscription made with [`Router::subscribe_internal_scoped`]; dropping it
/// unsubscribes. It holds a clone of the router, so it must be dropped for the router to go.
pub struct InternalSubscription {
    router: Router,
    id: SubscriberId,
    filters: Vec<TopicFilter>,
}

impl Drop for InternalSubscription {
    fn drop(&mut self) {
        let mut state = self.router.write();
        state.sinks.remove(&self.id);
        for f in &self.filters {
            state.tree.remove(f, self.id);
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let mut state = self.router.write();
        state.sinks.remove(&self.id);
        for f in self.filters.keys() {
            state.tree.remove(f, self.id);
        }
        for ((_, f), (id, _)) in &self.shared {
            state.tree.remove(f, *id);
            state.sinks.remove(id);
            state.shares.remove(id);
        }
    }
}

/// A map kept as a sorted vector: a session's subscriptions, usually one or a few. An empty
/// one allocates nothing and a one-entry one exactly its entry — where a hash map takes
/// four buckets and its control bytes in every idle device's session — with lookups by
/// binary search for the sessions that hold many.
#[derive(Debug)]
struct SortedMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    fn find(&self, key: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// Insert or replace; returns the value replaced.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        let (_, v) = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(v)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        Some(&mut self.0[i].1)
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}
