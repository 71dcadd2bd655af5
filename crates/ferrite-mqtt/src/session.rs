//! Sessions that outlive their connection.
//!
//! A client that connects with Clean Start = 0 (MQTT 3.1.1: Clean Session = 0) and, in MQTT 5,
//! a non-zero Session Expiry Interval keeps its session when the connection ends: its
//! subscriptions stay in the router, messages for it keep queueing (bounded by
//! `mqtt.session_queue`; when full, new deliveries are dropped and counted), and QoS 1/2
//! deliveries it had not acknowledged are kept. The connection task *parks* that state here;
//! the next connection with the same client id and Clean Start = 0 takes it back, resends
//! what was in flight (PUBLISH with DUP, or PUBREL) and goes on with the queue.
//!
//! A parked session ends when its expiry interval passes (capped by
//! `mqtt.max_session_expiry`), or when a connection with Clean Start = 1 arrives for its
//! client id; either way its will, if still pending, is published. A will with a delay
//! interval waits in the parked session until the delay passes or the session ends, and is
//! dropped if the client comes back first (MQTT 5 3.1.3.2.2).
//!
//! With a session store (`Router::durable`), persistent sessions are also written to disk
//! as they change (`persist`), and [`restore`] parks every stored one again when the gateway
//! starts: its expiry counts again from the restart. Wills are stored too, from CONNACK until
//! they are published or no longer owed, so a will survives a restart or crash of the
//! gateway: after the restart it waits for its delay interval (counted again from the
//! restart) in its parked session or, when the session ended with the connection, on its
//! own, and is published then unless the client has come back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::connection::{parse_filter, spawn_session_timers};
use crate::router::{Message, Outgoing, SessionHandle, SessionQueue};
use crate::server::Shared;

/// A QoS 1 or 2 delivery sent to the client and not yet completed.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// Order in which deliveries were sent, so a resumed session resends them in order.
    pub(crate) seq: u64,
    /// The delivery (its QoS says which acknowledgement completes it).
    pub(crate) out: Outgoing,
    /// QoS 2: the client sent PUBREC and we sent PUBREL; waiting for PUBCOMP.
    pub(crate) released: bool,
}

/// A will waiting for its delay, and the connection whose stored will it is.
pub(crate) struct PendingWill {
    pub(crate) conn_id: u64,
    pub(crate) message: Message,
}

/// The state of a session whose connection ended, waiting for the client to return.
pub(crate) struct Parked {
    /// Distinguishes this parking from a later one of the same client id (timers check it).
    pub(crate) generation: u64,
    /// The session's subscriptions, still registered with the router.
    pub(crate) handle: SessionHandle,
    /// Deliveries queued while offline.
    pub(crate) out_rx: SessionQueue,
    pub(crate) inflight_out: BTreeMap<u16, InFlight>,
    pub(crate) awaiting_rel: BTreeSet<u16>,
    pub(crate) next_packet_id: u16,
    pub(crate) next_seq: u64,
    /// A will waiting for its delay interval.
    pub(crate) will: Option<PendingWill>,
}

/// Parked sessions by client id. Touched by connection tasks (park, resume, discard) and by
/// the expiry and will-delay timers; each holds the lock only to move an entry in or out.
#[derive(Default)]
pub(crate) struct Sessions {
    parked: Mutex<HashMap<Arc<str>, Parked>>,
    /// Wills restored at start whose session had ended with its connection, each waiting for
    /// its delay under a generation number.
    orphan_wills: Mutex<HashMap<Arc<str>, (u64, PendingWill)>>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Parked>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new generation number for a parking.
    pub(crate) fn generation(&self) -> u64 {
        self.next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Park `session` under `client_id`. A session already parked there (which cannot
    /// normally happen: a connection takes the parked one over first) is returned.
    pub(crate) fn park(&self, client_id: Arc<str>, session: Parked) -> Option<Parked> {
        self.lock().insert(client_id, session)
    }

    /// Take the parked session of `client_id` out, if any.
    pub(crate) fn take(&self, client_id: &str) -> Option<Parked> {
        self.lock().remove(client_id)
    }

    /// Take the parked session out only if it is still the parking `generation`.
    pub(crate) fn take_if(&self, client_id: &str, generation: u64) -> Option<Parked> {
        let mut parked = self.lock();
        if parked.get(client_id)?.generation == generation {
            parked.remove(client_id)
        } else {
            None
        }
    }

    /// Take the delayed will out of the parking `generation`, leaving the session parked.
    pub(crate) fn take_will(&self, client_id: &str, generation: u64) -> Option<PendingWill> {
        let mut parked = self.lock();
        let session = parked.get_mut(client_id)?;
        if session.generation != generation {
            return None;
        }
        session.will.take()
    }

    /// Keep a restored will that has no session, under a new generation number.
    fn park_orphan_will(&self, client_id: Arc<str>, will: PendingWill) -> u64 {
        let generation = self.generation();
        self.orphan_wills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client_id, (generation, will));
        generation
    }

    /// Take the restored will of `client_id` out: only if still `generation` (its timer),
    /// or whatever it is (`None`: the client came back, so it is no longer owed).
    pub(crate) fn take_orphan_will(
        &self,
        client_id: &str,
        generation: Option<u64>,
    ) -> Option<PendingWill> {
        let mut wills = self
            .orphan_wills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (wills.get(client_id), generation) {
            (Some((g, _)), Some(want)) if *g != want => None,
            (Some(_), _) => wills.remove(client_id).map(|(_, w)| w),
            (None, _) => None,
        }
    }

    /// Number of parked sessions.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Park the persistent sessions the session store held at start, as if each client had just
/// disconnected: subscriptions registered, queued deliveries queued, in-flight ones (with
/// their packet ids) ready to be resent, and their expiry timers running.
pub(crate) fn restore(shared: &Arc<Shared>) {
    let mut wills: HashMap<Arc<str>, (PendingWill, std::time::Duration)> = shared
        .router
        .take_recovered_wills()
        .into_iter()
        .map(|w| {
            let message = Message {
                received_at: shared.clock.now(),
                ..w.message
            };
            let will = PendingWill {
                conn_id: w.conn_id,
                message,
            };
            (w.client_id, (will, w.delay))
        })
        .collect();
    for stored in shared.router.take_recovered() {
        let client_id = stored.client_id;
        let queued = stored
            .messages
            .iter()
            .filter(|d| d.inflight.is_none())
            .count();
        let (tx, out_rx) = SessionQueue::new(
            shared.config.session_queue.max(queued),
            shared.config.session_queue_bytes,
            shared.config.session_queue_full,
            shared.router.queue_memory(),
        );
        let mut handle = shared
            .router
            .register_session(Arc::clone(&client_id), tx.clone());
        for (raw, options) in &stored.subscriptions {
            match parse_filter(raw) {
                Ok((Some(share), filter)) => {
                    handle.subscribe_shared(&share, &filter, *options);
                }
                Ok((None, filter)) => {
                    handle.subscribe(&filter, *options);
                }
                Err(()) => {
                    tracing::warn!(client_id = %client_id, filter = raw, "stored subscription with an invalid filter skipped");
                }
            }
        }
        handle.reattach_durable(&client_id, stored.expiry, stored.next_seq);
        let mut inflight_out = BTreeMap::new();
        let mut next_packet_id = 1u16;
        let mut next_seq = 0;
        for delivery in stored.messages {
            match delivery.inflight {
                Some((packet_id, released)) => {
                    inflight_out.insert(
                        packet_id,
                        InFlight {
                            seq: next_seq,
                            out: delivery.out,
                            released,
                        },
                    );
                    next_packet_id = packet_id.checked_add(1).unwrap_or(1);
                }
                None => tx.restore(delivery.out),
            }
            next_seq += 1;
        }
        let generation = shared.sessions.generation();
        let (will, will_delay) = match wills.remove(&client_id) {
            Some((will, delay)) => (Some(will), Some(delay)),
            None => (None, None),
        };
        tracing::debug!(client_id = %client_id, queued, inflight = inflight_out.len(), will = will.is_some(), "persistent session restored");
        shared.sessions.park(
            Arc::clone(&client_id),
            Parked {
                generation,
                handle,
                out_rx,
                inflight_out,
                awaiting_rel: stored.awaiting_rel.into_iter().collect(),
                next_packet_id,
                next_seq,
                will,
            },
        );
        shared
            .stats
            .sessions_restored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        spawn_session_timers(shared, client_id, generation, stored.expiry, will_delay);
    }
    // Wills of sessions that ended with their connection: each waits for its delay, then
    // goes out unless the client came back meanwhile.
    for (client_id, (will, delay)) in wills {
        tracing::debug!(client_id = %client_id, delay_secs = delay.as_secs(), "will restored");
        shared
            .stats
            .wills_restored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let generation = shared
            .sessions
            .park_orphan_will(Arc::clone(&client_id), will);
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.shutdown.cancelled() => return,
            }
            if let Some(will) = shared
                .sessions
                .take_orphan_will(&client_id, Some(generation))
            {
                send_will(&shared, &client_id, will).await;
            }
        });
    }
}

/// Publish a will that was owed, then forget its stored copy.
pub(crate) async fn send_will(shared: &Arc<Shared>, client_id: &Arc<str>, will: PendingWill) {
    shared.router.publish(will.message).await;
    if let Some(store) = shared.router.session_store() {
        store.delete_will(client_id, Some(will.conn_id));
    }
}
