//! The gateway's crash-safe state: retained messages and persistent sessions.
//!
//! One redb file (`mqtt/sessions.redb` in the server's data folder) holds
//!
//! - `retained`: topic → the retained message;
//! - `sessions`: client id → the session's expiry interval and subscriptions;
//! - `messages`: (client id, seq) → a QoS 1/2 delivery queued for, or in flight to, a
//!   persistent session, deleted when the client completes it (PUBACK, PUBCOMP);
//! - `inflight`: (client id, seq) → the packet id the delivery was sent with, and whether
//!   the client sent PUBREC (QoS 2), so a resumed session resends it exactly as MQTT asks;
//! - `awaiting_rel`: (client id, packet id) → inbound QoS 2 publishes between our PUBREC and
//!   the client's PUBREL, so a resent PUBLISH after a restart is not routed twice;
//! - `wills`: client id → the will of its latest connection that is still owed: stored before
//!   CONNACK, deleted when it is published or no longer due (normal DISCONNECT, the client
//!   came back within the will delay), kept over a shutdown or crash, so the gateway publishes
//!   it after a restart unless the client returns within its delay. Each record names the
//!   connection that set it, and a connection deletes only its own.
//!
//! Writes go through one writer thread that commits whatever is queued in one transaction
//! (group commit: one fsync for many writers). Whoever must not answer before the state is
//! durable waits for the [`Commit`]: the publisher's PUBACK/PUBREC waits for its deliveries
//! to persistent sessions and for a retained message; SUBACK and UNSUBACK wait for the
//! session's subscriptions. Completions (PUBACK/PUBCOMP from a subscriber) and packet-id
//! marks are not waited for: a crash in that window resends a delivery the client already
//! had (allowed for QoS 1; for QoS 2 it is the one case where a client may see a duplicate).
//!
//! Every value carries a format byte and a CRC-32; a record that fails either is skipped and
//! counted at start, never fatal. Rows left by a session that ended are deleted at start.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ferrite_core::{Timestamp, TopicName};
use ferrite_mqtt_codec::{Packet, ProtocolVersion, Publish, QoS, decode_packet};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::router::{Message, Outgoing, SubscribeOptions};

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// Packet id in the low 16 bits; bit 16 set once the client sent PUBREC.
const INFLIGHT: TableDefinition<(&str, u64), u32> = TableDefinition::new("inflight");
const AWAITING_REL: TableDefinition<(&str, u16), ()> = TableDefinition::new("awaiting_rel");
/// Sealed: connection id (u64 LE), will delay in seconds (u32 LE), the will as a delivery
/// record.
const WILLS: TableDefinition<&str, &[u8]> = TableDefinition::new("wills");

/// Format of every stored value (first byte).
const FORMAT: u8 = 1;
/// Jobs committed together at most.
const MAX_BATCH: usize = 4096;

/// Why the session store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The database could not be opened, read or written.
    #[error("MQTT session store {path}: {reason}")]
    Storage {
        /// The database file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Counters of the session store.
#[derive(Debug, Default, serde::Serialize)]
pub struct PersistStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Writes applied (several per commit under load).
    pub writes: AtomicU64,
    /// Commits that failed (disk full, I/O error); their waiters were told.
    pub failed_commits: AtomicU64,
    /// Damaged records skipped when the store was opened.
    pub skipped_records: AtomicU64,
}

/// What a write waits for: the commit of the transaction it went into.
pub(crate) struct Commit(oneshot::Receiver<Result<(), String>>);

impl Commit {
    /// Wait until the write is durable; the error says why it is not.
    pub(crate) async fn wait(self) -> Result<(), String> {
        self.0
            .await
            .unwrap_or_else(|_| Err("the session store has stopped".to_owned()))
    }
}

enum Op {
    PutRetained(TopicName, Bytes),
    ClearRetained(TopicName),
    PutSession(Arc<str>, Bytes),
    DropSession(Arc<str>),
    PutMessage(Arc<str>, u64, Bytes),
    DeleteMessage(Arc<str>, u64),
    SetInflight(Arc<str>, u64, u32),
    PutAwaitingRel(Arc<str>, u16),
    DeleteAwaitingRel(Arc<str>, u16),
    PutWill(Arc<str>, Bytes),
    /// Delete the will of a client if the given connection set it (`None`: whoever did).
    DeleteWill(Arc<str>, Option<u64>),
    /// Commit what came before, then close the database; later writes fail.
    Close,
}

struct Job {
    op: Op,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The handle every part of the gateway writes through. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SessionStore {
    /// Unbounded, but bounded in practice: every writer that can produce many jobs (a
    /// publisher) waits for its commits, and receive maximums cap how many it has open.
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<PersistStats>,
    /// The stored wills: client id → the connection that stored it. A connection without a
    /// will, or whose will a newer connection replaced, then costs the store nothing.
    wills: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, u64>>>,
}

impl SessionStore {
    fn submit(&self, op: Op, wait: bool) -> Option<Commit> {
        let (done, commit) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(Commit(rx)))
        } else {
            (None, None)
        };
        if self.tx.send(Job { op, done }).is_err() {
            // The writer is gone (shutdown): a waiter hears it from the dropped sender.
            tracing::warn!("MQTT session store write after it stopped");
        }
        commit
    }

    fn submit_wait(&self, op: Op) -> Commit {
        match self.submit(op, true) {
            Some(c) => c,
            None => {
                let (_, rx) = oneshot::channel();
                Commit(rx)
            }
        }
    }

    /// Keep `message` as the retained message of its topic.
    pub(crate) fn put_retained(&self, message: &Message) -> Commit {
        let record = encode_delivery(message, message.qos, true, &[]);
        self.submit_wait(Op::PutRetained(message.topic.clone(), record))
    }

    /// Forget the retained message of `topic`.
    pub(crate) fn clear_retained(&self, topic: &TopicName) -> Commit {
        self.submit_wait(Op::ClearRetained(topic.clone()))
    }

    /// Keep the will `message` of connection `conn_id` of `client`, published after `delay`
    /// once its connection is gone; replaces the client's stored will, if any. CONNACK waits
    /// for this.
    pub(crate) fn put_will(
        &self,
        client: &Arc<str>,
        conn_id: u64,
        message: &Message,
        delay: Duration,
    ) -> Commit {
        let inner = encode_delivery(message, message.qos, message.retain, &[]);
        let mut body = BytesMut::with_capacity(inner.len() + 12);
        body.put_u64_le(conn_id);
        body.put_u32_le(u32::try_from(delay.as_secs()).unwrap_or(u32::MAX));
        body.put_slice(&inner);
        self.lock_wills().insert(Arc::clone(client), conn_id);
        self.submit_wait(Op::PutWill(Arc::clone(client), seal(&body)))
    }

    /// The will connection `conn_id` of `client` stored is no longer owed (published, or
    /// dropped); `None` deletes the client's will whoever stored it.
    pub(crate) fn delete_will(&self, client: &Arc<str>, conn_id: Option<u64>) {
        let stored = {
            let mut wills = self.lock_wills();
            match (wills.get(client), conn_id) {
                (Some(by), Some(conn)) if *by != conn => false,
                (Some(_), _) => wills.remove(client).is_some(),
                (None, _) => false,
            }
        };
        if stored {
            self.submit(Op::DeleteWill(Arc::clone(client), conn_id), false);
        }
    }

    fn lock_wills(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Arc<str>, u64>> {
        self.wills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commit everything written before, then close the file (at shutdown, so the next
    /// open in this process finds it free). Writes after this fail.
    pub(crate) fn close(&self) -> Commit {
        self.submit_wait(Op::Close)
    }

    /// Counters.
    pub(crate) fn stats(&self) -> &Arc<PersistStats> {
        &self.stats
    }
}

/// The stored side of one persistent session, shared by its router registration (which
/// stores deliveries) and its connection (which completes them).
pub(crate) struct Durable {
    client_id: Arc<str>,
    store: SessionStore,
    /// Next delivery sequence number; `None` once the session ended. Deliveries are
    /// submitted under this lock, so none can follow the session's deletion.
    next_seq: std::sync::Mutex<Option<u64>>,
    expiry_secs: AtomicU64,
}

impl Durable {
    pub(crate) fn new(
        client_id: Arc<str>,
        store: SessionStore,
        next_seq: u64,
        expiry: Duration,
    ) -> Self {
        Self {
            client_id,
            store,
            next_seq: std::sync::Mutex::new(Some(next_seq)),
            expiry_secs: AtomicU64::new(expiry.as_secs()),
        }
    }

    /// Store `out` for this session under a new sequence number, which is set on it;
    /// `None` if the session has ended meanwhile (nothing to keep it for).
    pub(crate) fn put_message(&self, out: &mut Outgoing) -> Option<Commit> {
        let record = encode_delivery(&out.message, out.qos, out.retain, &out.subscription_ids);
        let mut next = self.lock_seq();
        let seq = (*next)?;
        *next = Some(seq + 1);
        out.store_seq = Some(seq);
        Some(
            self.store
                .submit_wait(Op::PutMessage(Arc::clone(&self.client_id), seq, record)),
        )
    }

    fn lock_seq(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.next_seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The delivery stored as `seq` is complete (or dropped).
    pub(crate) fn delete_message(&self, seq: u64) {
        self.store
            .submit(Op::DeleteMessage(Arc::clone(&self.client_id), seq), false);
    }

    /// The delivery stored as `seq` went out with `packet_id`; `released` once PUBREC came.
    pub(crate) fn set_inflight(&self, seq: u64, packet_id: u16, released: bool) {
        let mark = u32::from(packet_id) | (u32::from(released) << 16);
        self.store.submit(
            Op::SetInflight(Arc::clone(&self.client_id), seq, mark),
            false,
        );
    }

    /// Inbound QoS 2 publish `packet_id` was taken; PUBREC waits for this.
    pub(crate) fn put_awaiting_rel(&self, packet_id: u16) -> Commit {
        self.store
            .submit_wait(Op::PutAwaitingRel(Arc::clone(&self.client_id), packet_id))
    }

    /// The client released inbound QoS 2 publish `packet_id`.
    pub(crate) fn delete_awaiting_rel(&self, packet_id: u16) {
        self.store.submit(
            Op::DeleteAwaitingRel(Arc::clone(&self.client_id), packet_id),
            false,
        );
    }

    /// Change the session's expiry interval (written with the next [`Durable::put_meta`]).
    pub(crate) fn set_expiry(&self, expiry: Duration) {
        self.expiry_secs.store(expiry.as_secs(), Ordering::Relaxed);
    }

    /// Write the session's expiry and `subscriptions` (filters as the client wrote them).
    pub(crate) fn put_meta(&self, subscriptions: Vec<(String, SubscribeOptions)>) -> Commit {
        let meta = SessionMeta {
            expiry_secs: self.expiry_secs.load(Ordering::Relaxed),
            subscriptions: subscriptions
                .into_iter()
                .map(|(filter, o)| StoredSubscription {
                    filter,
                    qos: o.qos.as_u8(),
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    subscription_id: o.subscription_id,
                })
                .collect(),
        };
        let body = postcard::to_stdvec(&meta).unwrap_or_default();
        self.store
            .submit_wait(Op::PutSession(Arc::clone(&self.client_id), seal(&body)))
    }

    /// The session ended: delete everything stored for it.
    pub(crate) fn drop_session(&self) {
        let mut next = self.lock_seq();
        *next = None;
        self.store
            .submit(Op::DropSession(Arc::clone(&self.client_id)), false);
    }
}

#[derive(Serialize, Deserialize)]
struct SessionMeta {
    expiry_secs: u64,
    subscriptions: Vec<StoredSubscription>,
}

#[derive(Serialize, Deserialize)]
struct StoredSubscription {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    subscription_id: Option<u32>,
}

/// A persistent session read back at start.
pub(crate) struct RecoveredSession {
    pub(crate) client_id: Arc<str>,
    pub(crate) expiry: Duration,
    /// Filters as the client wrote them (`$share/…` included) with their options.
    pub(crate) subscriptions: Vec<(String, SubscribeOptions)>,
    /// Stored deliveries in the order they were queued.
    pub(crate) messages: Vec<RecoveredDelivery>,
    pub(crate) awaiting_rel: Vec<u16>,
    /// The next sequence number for this session's deliveries.
    pub(crate) next_seq: u64,
}

/// A stored delivery read back at start.
pub(crate) struct RecoveredDelivery {
    pub(crate) out: Outgoing,
    /// Packet id it was sent with and whether PUBREC came; `None` if still queued.
    pub(crate) inflight: Option<(u16, bool)>,
}

/// A will still owed when the store was last closed (or the gateway crashed).
pub(crate) struct RecoveredWill {
    pub(crate) client_id: Arc<str>,
    /// The connection that stored it.
    pub(crate) conn_id: u64,
    pub(crate) message: Message,
    pub(crate) delay: Duration,
}

/// What the store held when it was opened.
#[derive(Default)]
pub(crate) struct Recovered {
    pub(crate) retained: Vec<Message>,
    pub(crate) sessions: Vec<RecoveredSession>,
    pub(crate) wills: Vec<RecoveredWill>,
}

/// Open (or create) the store at `path`, read back what it holds, and start its writer.
pub(crate) fn open(path: &Path) -> Result<(SessionStore, Recovered), PersistError> {
    let fail = |reason: String| PersistError::Storage {
        path: path.display().to_string(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let db = redb::Database::builder()
        .set_cache_size(16 << 20)
        .create(path)
        .map_err(|e| fail(e.to_string()))?;
    let stats = Arc::new(PersistStats::default());
    let recovered = recover(&db, &stats).map_err(|e| fail(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_stats = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("mqtt-sessions".into())
        .spawn(move || run_writer(db, rx, &writer_stats))
        .map_err(|e| fail(e.to_string()))?;
    let wills = recovered
        .wills
        .iter()
        .map(|w| (Arc::clone(&w.client_id), w.conn_id))
        .collect();
    let store = SessionStore {
        tx,
        stats,
        wills: Arc::new(std::sync::Mutex::new(wills)),
    };
    Ok((store, recovered))
}

fn recover(db: &redb::Database, stats: &PersistStats) -> Result<Recovered, redb::Error> {
    // Create the tables on first use.
    let txn = db.begin_write()?;
    txn.open_table(RETAINED)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(MESSAGES)?;
    txn.open_table(INFLIGHT)?;
    txn.open_table(AWAITING_REL)?;
    txn.open_table(WILLS)?;
    txn.commit()?;

    let skipped = |what: &str, key: &dyn std::fmt::Debug, why: &str| {
        stats.skipped_records.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(table = what, key = ?key, reason = why, "damaged MQTT session record skipped");
    };
    let txn = db.begin_read()?;
    let mut retained = Vec::new();
    for row in txn.open_table(RETAINED)?.iter()? {
        let (k, v) = row?;
        match decode_delivery(v.value()) {
            Ok((m, ..)) => retained.push(m),
            Err(why) => skipped("retained", &k.value(), why),
        }
    }
    let messages = txn.open_table(MESSAGES)?;
    let inflight = txn.open_table(INFLIGHT)?;
    let awaiting = txn.open_table(AWAITING_REL)?;
    let mut sessions = Vec::new();
    for row in txn.open_table(SESSIONS)?.iter()? {
        let (k, v) = row?;
        let client = k.value();
        let meta = unseal(v.value()).and_then(|b| {
            postcard::from_bytes::<SessionMeta>(b).map_err(|_| "undecodable session")
        });
        let meta = match meta {
            Ok(m) => m,
            Err(why) => {
                skipped("sessions", &client, why);
                continue;
            }
        };
        let mut subscriptions = Vec::with_capacity(meta.subscriptions.len());
        for s in meta.subscriptions {
            let Some(qos) = QoS::from_u8(s.qos) else {
                skipped("sessions", &client, "bad subscription QoS");
                continue;
            };
            let options = SubscribeOptions {
                qos,
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                subscription_id: s.subscription_id,
            };
            subscriptions.push((s.filter, options));
        }
        let mut marks = std::collections::HashMap::new();
        for row in inflight.range::<(&str, u64)>((client, 0)..=(client, u64::MAX))? {
            let (k, v) = row?;
            marks.insert(k.value().1, v.value());
        }
        let mut deliveries = Vec::new();
        let mut next_seq = 0;
        for row in messages.range::<(&str, u64)>((client, 0)..=(client, u64::MAX))? {
            let (k, v) = row?;
            let seq = k.value().1;
            next_seq = seq + 1;
            match decode_delivery(v.value()) {
                Ok((message, qos, retain, subscription_ids)) => {
                    deliveries.push(RecoveredDelivery {
                        out: Outgoing {
                            message: Arc::new(message),
                            qos,
                            retain,
                            subscription_ids,
                            store_seq: Some(seq),
                        },
                        inflight: marks
                            .get(&seq)
                            .map(|m| ((m & 0xffff) as u16, m >> 16 & 1 == 1)),
                    })
                }
                Err(why) => skipped("messages", &(client, seq), why),
            }
        }
        let mut awaiting_rel = Vec::new();
        for row in awaiting.range::<(&str, u16)>((client, 0)..=(client, u16::MAX))? {
            awaiting_rel.push(row?.0.value().1);
        }
        sessions.push(RecoveredSession {
            client_id: client.into(),
            expiry: Duration::from_secs(meta.expiry_secs),
            subscriptions,
            messages: deliveries,
            awaiting_rel,
            next_seq,
        });
    }
    drop((messages, inflight, awaiting));
    let mut wills = Vec::new();
    for row in txn.open_table(WILLS)?.iter()? {
        let (k, v) = row?;
        match decode_will(v.value()) {
            Ok((conn_id, delay, message)) => wills.push(RecoveredWill {
                client_id: k.value().into(),
                conn_id,
                message,
                delay,
            }),
            Err(why) => skipped("wills", &k.value(), why),
        }
    }
    drop(txn);
    delete_orphans(db, &sessions)?;
    Ok(Recovered {
        retained,
        sessions,
        wills,
    })
}

/// Delete rows of sessions that no longer exist (a delivery stored while its session
/// was ending), so they cannot come back under a later session of the same client id.
fn delete_orphans(db: &redb::Database, sessions: &[RecoveredSession]) -> Result<(), redb::Error> {
    let live: std::collections::HashSet<&str> =
        sessions.iter().map(|s| s.client_id.as_ref()).collect();
    let txn = db.begin_write()?;
    txn.open_table(MESSAGES)?
        .retain(|(client, _), _| live.contains(client))?;
    txn.open_table(INFLIGHT)?
        .retain(|(client, _), _| live.contains(client))?;
    txn.open_table(AWAITING_REL)?
        .retain(|(client, _), _| live.contains(client))?;
    txn.commit()?;
    Ok(())
}

fn run_writer(db: redb::Database, mut rx: mpsc::UnboundedReceiver<Job>, stats: &PersistStats) {
    let mut batch = Vec::new();
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH
            && !matches!(batch.last(), Some(j) if matches!(j.op, Op::Close))
        {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = apply(&db, &batch).map_err(|e| e.to_string());
        match &result {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, writes = batch.len(), "MQTT session store commit failed");
            }
        }
        let close = match batch.last() {
            Some(j) if matches!(j.op, Op::Close) => batch.pop(),
            _ => None,
        };
        for job in batch.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
            }
        }
        if let Some(close) = close {
            rx.close();
            drop(db);
            if let Some(done) = close.done {
                let _ = done.send(result);
            }
            return;
        }
    }
}

fn apply(db: &redb::Database, batch: &[Job]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut retained = txn.open_table(RETAINED)?;
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut messages = txn.open_table(MESSAGES)?;
        let mut inflight = txn.open_table(INFLIGHT)?;
        let mut awaiting = txn.open_table(AWAITING_REL)?;
        let mut wills = txn.open_table(WILLS)?;
        for job in batch {
            match &job.op {
                Op::PutRetained(topic, record) => {
                    retained.insert(topic.as_str(), record.as_ref())?;
                }
                Op::ClearRetained(topic) => {
                    retained.remove(topic.as_str())?;
                }
                Op::PutSession(client, meta) => {
                    sessions.insert(client.as_ref(), meta.as_ref())?;
                }
                Op::DropSession(client) => {
                    let c = client.as_ref();
                    sessions.remove(c)?;
                    messages.retain_in::<(&str, u64), _>((c, 0)..=(c, u64::MAX), |_, _| false)?;
                    inflight.retain_in::<(&str, u64), _>((c, 0)..=(c, u64::MAX), |_, _| false)?;
                    awaiting.retain_in::<(&str, u16), _>((c, 0)..=(c, u16::MAX), |_, _| false)?;
                }
                Op::PutMessage(client, seq, record) => {
                    messages.insert((client.as_ref(), *seq), record.as_ref())?;
                }
                Op::DeleteMessage(client, seq) => {
                    messages.remove((client.as_ref(), *seq))?;
                    inflight.remove((client.as_ref(), *seq))?;
                }
                Op::SetInflight(client, seq, mark) => {
                    // Only for a delivery still stored (its completion may have come first).
                    if messages.get((client.as_ref(), *seq))?.is_some() {
                        inflight.insert((client.as_ref(), *seq), *mark)?;
                    }
                }
                Op::PutAwaitingRel(client, id) => {
                    awaiting.insert((client.as_ref(), *id), ())?;
                }
                Op::DeleteAwaitingRel(client, id) => {
                    awaiting.remove((client.as_ref(), *id))?;
                }
                Op::PutWill(client, record) => {
                    wills.insert(client.as_ref(), record.as_ref())?;
                }
                Op::DeleteWill(client, conn_id) => {
                    let stored_by = wills
                        .get(client.as_ref())?
                        .map(|v| will_connection(v.value()));
                    // A damaged record (no connection id) goes too.
                    if let Some(by) = stored_by
                        && (conn_id.is_none() || by.is_none() || by == *conn_id)
                    {
                        wills.remove(client.as_ref())?;
                    }
                }
                Op::Close => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Frame a stored value: format byte, CRC-32 of the body, body.
fn seal(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(FORMAT);
    out.put_u32_le(crc32fast::hash(body));
    out.put_slice(body);
    out.freeze()
}

/// The body of a value framed by [`seal`], if intact.
fn unseal(value: &[u8]) -> Result<&[u8], &'static str> {
    let (head, body) = value.split_at_checked(5).ok_or("truncated record")?;
    if head[0] != FORMAT {
        return Err("unknown record format");
    }
    let crc = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    Ok(body)
}

/// A message and how it is delivered (QoS, retain flag, subscription ids), as a sealed
/// record: received-at, delivery QoS and retain, publisher, then the message as an MQTT 5
/// PUBLISH (its own QoS and retain flag, topic, properties with the subscription ids,
/// payload), so the codec both writes and checks it.
fn encode_delivery(message: &Message, qos: QoS, retain: bool, subscription_ids: &[u32]) -> Bytes {
    let mut properties = message.properties.clone();
    properties.subscription_identifiers = subscription_ids.to_vec();
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.as_str().to_owned(),
        packet_id: (message.qos != QoS::AtMostOnce).then_some(1),
        properties,
        payload: message.payload.clone(),
    });
    let publisher = message.publisher.as_bytes();
    let publisher = &publisher[..publisher.len().min(usize::from(u16::MAX))];
    let mut body = BytesMut::with_capacity(message.payload.len() + 64);
    body.put_i64_le(message.received_at.as_nanos());
    body.put_u8(qos.as_u8());
    body.put_u8(u8::from(retain));
    body.put_u16_le(publisher.len() as u16);
    body.put_slice(publisher);
    if let Err(e) = packet.encode(ProtocolVersion::V5, &mut body) {
        // Cannot happen for a message that arrived as a PUBLISH; stored as damaged if it does.
        tracing::error!(error = %e, topic = %message.topic, "cannot encode a message for the session store");
    }
    seal(&body)
}

type DecodedDelivery = (Message, QoS, bool, Vec<u32>);

/// The connection id a will record was stored by, if the record is intact.
fn will_connection(value: &[u8]) -> Option<u64> {
    let body = unseal(value).ok()?;
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

/// A will record: the connection that stored it, its delay, the will.
fn decode_will(value: &[u8]) -> Result<(u64, Duration, Message), &'static str> {
    let body = unseal(value)?;
    let (head, inner) = body.split_at_checked(12).ok_or("truncated record")?;
    let conn_id = u64::from_le_bytes(head[..8].try_into().map_err(|_| "truncated record")?);
    let delay = u32::from_le_bytes(head[8..].try_into().map_err(|_| "truncated record")?);
    let (message, ..) = decode_delivery(inner)?;
    Ok((conn_id, Duration::from_secs(u64::from(delay)), message))
}

fn decode_delivery(value: &[u8]) -> Result<DecodedDelivery, &'static str> {
    let body = unseal(value)?;
    let (head, rest) = body.split_at_checked(12).ok_or("truncated record")?;
    let received_at = i64::from_le_bytes(head[..8].try_into().map_err(|_| "truncated record")?);
    let qos = QoS::from_u8(head[8]).ok_or("bad delivery QoS")?;
    let retain = head[9] == 1;
    let len = usize::from(u16::from_le_bytes([head[10], head[11]]));
    let (publisher, packet) = rest.split_at_checked(len).ok_or("truncated record")?;
    let publisher = std::str::from_utf8(publisher).map_err(|_| "bad publisher")?;
    let publish = match decode_packet(packet, Some(ProtocolVersion::V5), u32::MAX) {
        Ok(Some((Packet::Publish(p), used))) if used == packet.len() => p,
        _ => return Err("undecodable message"),
    };
    let topic = TopicName::new(publish.topic).map_err(|_| "bad topic")?;
    let mut properties = publish.properties;
    let subscription_ids = std::mem::take(&mut properties.subscription_identifiers);
    let message = Message {
        topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties,
        publisher: publisher.into(),
        received_at: Timestamp::from_nanos(received_at),
    };
    Ok((message, qos, retain, subscription_ids))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferrite_mqtt_codec::Properties;

    fn message(topic: &str, payload: &'static [u8]) -> Message {
        Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties {
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                ..Properties::default()
            },
            publisher: "pub-1".into(),
            received_at: Timestamp::from_nanos(1_700_000_000_123_456_789),
        }
    }

    #[test]
    fn delivery_records_round_trip_and_damage_is_detected() {
        let m = message("a/b", b"hello");
        let record = encode_delivery(&m, QoS::AtLeastOnce, false, &[7, 9]);
        let (back, qos, retain, ids) = decode_delivery(&record).unwrap();
        assert_eq!(back, m);
        assert_eq!((qos, retain, ids), (QoS::AtLeastOnce, false, vec![7, 9]));

        let mut flipped = record.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode_delivery(&flipped).unwrap_err(), "checksum mismatch");
        assert_eq!(
            decode_delivery(&record[..3]).unwrap_err(),
            "truncated record"
        );
        let mut future = record.to_vec();
        future[0] = 9;
        assert_eq!(
            decode_delivery(&future).unwrap_err(),
            "unknown record format"
        );
    }

    #[tokio::test]
    async fn a_will_is_deleted_only_by_the_connection_that_stored_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        {
            let (store, _) = open(&path).unwrap();
            let will = message("wills/a", b"gone");
            store
                .put_will(&a, 5, &will, Duration::from_secs(30))
                .wait()
                .await
                .unwrap();
            store
                .put_will(&b, 6, &message("wills/b", b"b"), Duration::ZERO)
                .wait()
                .await
                .unwrap();
            // An older connection of `a` ending does not delete the newer one's will.
            store.delete_will(&a, Some(4));
            store.delete_will(&b, Some(6));
            store.close().wait().await.unwrap();
        }
        {
            let (store, recovered) = open(&path).unwrap();
            assert_eq!(recovered.wills.len(), 1);
            let w = &recovered.wills[0];
            assert_eq!((&*w.client_id, w.conn_id), ("a", 5));
            assert_eq!(w.delay, Duration::from_secs(30));
            assert_eq!(w.message, message("wills/a", b"gone"));
            // The client came back: whoever stored it, it is no longer owed.
            store.delete_will(&a, None);
            store.close().wait().await.unwrap();
        }
        let (_, recovered) = open(&path).unwrap();
        assert!(recovered.wills.is_empty());
    }

    fn options() -> SubscribeOptions {
        SubscribeOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            subscription_id: Some(3),
        }
    }

    #[tokio::test]
    async fn sessions_and_retained_survive_reopen_and_damaged_rows_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqtt").join("sessions.redb");
        {
            let (store, recovered) = open(&path).unwrap();
            assert!(recovered.sessions.is_empty() && recovered.retained.is_empty());
            store
                .put_retained(&message("r/1", b"one"))
                .wait()
                .await
                .unwrap();
            store
                .put_retained(&message("r/2", b"two"))
                .wait()
                .await
                .unwrap();
            store
                .clear_retained(&TopicName::new("r/2").unwrap())
                .wait()
                .await
                .unwrap();
            let durable = Durable::new("dev".into(), store.clone(), 0, Duration::from_secs(300));
            durable
                .put_meta(vec![("$share/g/x/#".into(), options())])
                .wait()
                .await
                .unwrap();
            let mut outs: Vec<Outgoing> = (0..3)
                .map(|i| Outgoing {
                    message: Arc::new(message(&format!("x/{i}"), b"p")),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: vec![3],
                    store_seq: None,
                })
                .collect();
            for out in &mut outs {
                durable.put_message(out).unwrap().wait().await.unwrap();
            }
            assert_eq!(outs[2].store_seq, Some(2));
            durable.set_inflight(0, 41, true);
            durable.set_inflight(1, 42, false);
            durable.delete_message(0);
            durable.put_awaiting_rel(5).wait().await.unwrap();
            durable.put_awaiting_rel(6).wait().await.unwrap();
            durable.delete_awaiting_rel(6);
            // A session that ended leaves nothing behind.
            let gone = Durable::new("gone".into(), store.clone(), 0, Duration::from_secs(9));
            gone.put_meta(Vec::new()).wait().await.unwrap();
            gone.put_message(&mut outs[0].clone())
                .unwrap()
                .wait()
                .await
                .unwrap();
            gone.drop_session();
            assert!(
                gone.put_message(&mut outs[1].clone()).is_none(),
                "nothing is stored for a session that ended"
            );
            store.close().wait().await.unwrap();
            assert!(store.close().wait().await.is_err(), "closed");
        }
        let (store, recovered) = open(&path).unwrap();
        assert_eq!(store.stats().skipped_records.load(Ordering::Relaxed), 0);
        assert_eq!(recovered.retained.len(), 1);
        assert_eq!(recovered.retained[0], message("r/1", b"one"));
        assert_eq!(recovered.sessions.len(), 1);
        let s = &recovered.sessions[0];
        assert_eq!(&*s.client_id, "dev");
        assert_eq!(s.expiry, Duration::from_secs(300));
        assert_eq!(
            s.subscriptions,
            vec![("$share/g/x/#".to_owned(), options())]
        );
        let seqs: Vec<_> = s.messages.iter().map(|d| d.out.store_seq).collect();
        assert_eq!(seqs, vec![Some(1), Some(2)]);
        assert_eq!(s.messages[0].inflight, Some((42, false)));
        assert_eq!(s.messages[1].inflight, None);
        assert_eq!(s.messages[1].out.message.topic.as_str(), "x/2");
        assert_eq!(s.messages[1].out.subscription_ids, vec![3]);
        assert_eq!(s.awaiting_rel, vec![5]);
        assert_eq!(s.next_seq, 3);
        store.close().wait().await.unwrap();

        // Damage one delivery and one retained message behind the store's back.
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(("dev", 1), b"\x01garbage".as_slice())
                .unwrap();
            txn.open_table(RETAINED)
                .unwrap()
                .insert("r/9", b"".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let (store, recovered) = open(&path).unwrap();
        assert_eq!(store.stats().skipped_records.load(Ordering::Relaxed), 2);
        assert_eq!(recovered.retained.len(), 1);
        let s = &recovered.sessions[0];
        assert_eq!(
            s.messages.len(),
            1,
            "the damaged delivery is skipped, not fatal"
        );
        assert_eq!(s.messages[0].out.store_seq, Some(2));
    }
}
