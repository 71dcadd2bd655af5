//! The router: the one place every published message goes through. Client sessions and
//! internal consumers (the telemetry store, later rules and fleet state) subscribe to it with
//! topic filters alike; the router matches, delivers and keeps retained messages.
//!
//! Internal consumers may be *durable*: a publish is acknowledged to its publisher only after
//! every durable consumer that matched it has given its [`Verdict`] (for the store: after the
//! fsync). Delivery to an internal consumer waits while its queue is full (backpressure on
//! the publisher); delivery to a client session never waits: when a session's queue is full
//! the message is dropped for that session and counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use ferrite_core::{Timestamp, TopicFilter, TopicName};
use ferrite_mqtt_codec::{Properties, QoS, ReasonCode};
use tokio::sync::{mpsc, oneshot};

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
        tx: mpsc::Sender<Outgoing>,
        client_id: Arc<str>,
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
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Messages published into the router.
    pub published: AtomicU64,
    /// Deliveries queued to client sessions.
    pub delivered: AtomicU64,
    /// Deliveries dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Retained messages refused because the retained store was full.
    pub retained_refused: AtomicU64,
}

/// The router. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Router {
    state: Arc<RwLock<State>>,
    next_id: Arc<AtomicU64>,
    stats: Arc<RouterStats>,
    max_retained: usize,
    /// Picks the member of a shared subscription group that gets the next message.
    round_robin: Arc<AtomicU64>,
}

/// A client session's registration with the router; unsubscribes everything when dropped.
pub struct SessionHandle {
    router: Router,
    id: SubscriberId,
    /// This session's filters, so dropping the handle removes exactly its subscriptions.
    filters: HashSet<TopicFilter>,
    /// This session's shared subscriptions: (share name, filter) → the subscriber id that
    /// stands for it in the tree.
    shared: HashMap<(String, TopicFilter), SubscriberId>,
}

impl Router {
    /// An empty router keeping at most `max_retained` retained messages.
    pub fn new(max_retained: usize) -> Self {
        Self {
            state: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            stats: Arc::default(),
            max_retained,
            round_robin: Arc::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register a client session whose deliveries go to `tx`.
    pub fn register_session(
        &self,
        client_id: Arc<str>,
        tx: mpsc::Sender<Outgoing>,
    ) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write()
            .sinks
            .insert(id, Sink::Session { tx, client_id });
        SessionHandle {
            router: self.clone(),
            id,
            filters: HashSet::new(),
            shared: HashMap::new(),
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
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
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let message = Arc::new(message);
        let mut sessions: HashMap<SubscriberId, (mpsc::Sender<Outgoing>, Outgoing)> =
            HashMap::new();
        let mut internal: Vec<(mpsc::Sender<Delivery>, bool)> = Vec::new();
        let mut groups: HashMap<ShareKey, Vec<(mpsc::Sender<Outgoing>, Outgoing)>> = HashMap::new();
        if message.retain {
            let mut state = self.write();
            {
                if message.payload.is_empty() {
                    state.retained.remove(&message.topic);
                } else if state.retained.len() < self.max_retained
                    || state.retained.contains_key(&message.topic)
                {
                    state
                        .retained
                        .insert(message.topic.clone(), Arc::clone(&message));
                } else {
                    self.stats.retained_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        {
            let state = self.read();
            let (sinks, shares) = (&state.sinks, &state.shares);
            state
                .tree
                .for_each_match(&message.topic, |id, opts| match sinks.get(&id) {
                    Some(Sink::Session { tx, .. }) if shares.contains_key(&id) => {
                        let members = groups.entry(Arc::clone(&shares[&id])).or_default();
                        members.push((
                            tx.clone(),
                            Outgoing {
                                message: Arc::clone(&message),
                                qos: message.qos.min(opts.qos),
                                retain: opts.retain_as_published && message.retain,
                                subscription_ids: opts.subscription_id.into_iter().collect(),
                            },
                        ));
                    }
                    Some(Sink::Session { tx, client_id }) => {
                        if opts.no_local && **client_id == *message.publisher {
                            return;
                        }
                        let qos = message.qos.min(opts.qos);
                        let retain = opts.retain_as_published && message.retain;
                        let entry = sessions.entry(id).or_insert_with(|| {
                            (
                                tx.clone(),
                                Outgoing {
                                    message: Arc::clone(&message),
                                    qos,
                                    retain,
                                    subscription_ids: Vec::new(),
                                },
                            )
                        });
                        // Overlapping subscriptions: one delivery at the highest QoS.
                        entry.1.qos = entry.1.qos.max(qos);
                        entry.1.retain |= retain;
                        entry.1.subscription_ids.extend(opts.subscription_id);
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
            let start = self.round_robin.fetch_add(1, Ordering::Relaxed) as usize;
            let n = members.len();
            let pick = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| members[i].0.capacity() > 0)
                .unwrap_or(start % n);
            deliveries.push(members.swap_remove(pick));
        }
        for (tx, out) in deliveries {
            match tx.try_send(out) {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                }
                // The session is going away; its cleanup unsubscribes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
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

fn unavailable() -> Verdict {
    Verdict::Rejected(
        ReasonCode::SERVER_UNAVAILABLE,
        "an internal consumer did not settle the message".to_owned(),
    )
}

impl SessionHandle {
    /// Add or replace a subscription of this session. Returns true if it replaced one.
    pub fn subscribe(&mut self, filter: &TopicFilter, options: SubscribeOptions) -> bool {
        self.filters.insert(filter.clone());
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
        if let Some(&id) = self.shared.get(&key) {
            state.tree.insert(filter, id, options);
            return true;
        }
        let Some(Sink::Session { tx, client_id }) = state.sinks.get(&self.id) else {
            return false;
        };
        let sink = Sink::Session {
            tx: tx.clone(),
            client_id: Arc::clone(client_id),
        };
        let id = self.router.next_id.fetch_add(1, Ordering::Relaxed);
        state.sinks.insert(id, sink);
        state.shares.insert(id, format!("{share}/{filter}").into());
        state.tree.insert(filter, id, options);
        self.shared.insert(key, id);
        false
    }

    /// Leave the shared subscription `$share/{share}/{filter}`. Returns true if it existed.
    pub fn unsubscribe_shared(&mut self, share: &str, filter: &TopicFilter) -> bool {
        let Some(id) = self.shared.remove(&(share.to_owned(), filter.clone())) else {
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
            .iter()
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
        for f in &self.filters {
            state.tree.remove(f, self.id);
        }
        for ((_, f), id) in &self.shared {
            state.tree.remove(f, *id);
            state.sinks.remove(id);
            state.shares.remove(id);
        }
    }
}
