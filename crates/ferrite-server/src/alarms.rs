//! The alarm store: alarms raised and cleared by rule actions, acknowledged and cleared by
//! operators, persisted in `data_dir/rules/alarms.redb` ([`db`]) and announced on MQTT.
//!
//! Every operation runs the pure lifecycle of [`ferrite_rules::alarm`] inside one redb write
//! transaction: look up the key's last alarm (rule × device × type), apply the transition,
//! write it back, commit. State changes commit durably (fsync); a raise folded into an open
//! alarm (deduped: only `count`, `last_raised_at`, values and message change) commits without
//! an fsync and becomes durable with the next durable commit — a crash may lose the latest
//! counts, never a state change.
//!
//! **Publication.** Every published lifecycle event is JSON
//! `{"event", "at", "alarm": {…the alarm without history…}}` on
//! `$ferrite/alarms/{rule}/{device}/{event}` (`raised`, `escalated`, `acknowledged`,
//! `cleared`, `flapping`), QoS 1, not retained, publisher `$ferrite`, routed like every other
//! message (subscribers need `$ferrite/alarms/#` granted; `#` at the root does not match
//! `$`-topics). Events are queued ([`QUEUE`]) in commit order while the store's lock is held,
//! so subscribers see them in the order the transitions happened; a full queue drops and
//! counts them (`publish_dropped`) rather than stall operators or rules. A rule action waits
//! until its events are routed before the rule's next action runs.
//!
//! **Rate limit.** New alarms (not raises of an open one) are limited per device to
//! `alarms.max_new_per_device` per `alarms.rate_window` (a token bucket); beyond, the raise
//! is dropped and counted (`rate_limited`). The buckets live in memory.
//!
//! Counters are per rule (the rule that raised the alarm), in memory since the server started.

mod db;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use ferrite_api::alarms::{AlarmCounters, AlarmFilter, AlarmPage, AlarmsApi, AlarmsApiError};
use ferrite_core::{Clock, Timestamp, TopicName};
use ferrite_mqtt::{Message, Router};
use ferrite_mqtt_codec::{Properties, QoS};
use ferrite_rules::alarm::{Alarm, AlarmEvent, AlarmPolicy, Change, Raise};
use tokio::sync::{mpsc, oneshot};

use crate::config::AlarmsConfig;

/// Lifecycle events waiting to be routed at most; beyond, they are dropped and counted.
pub(crate) const QUEUE: usize = 4096;
/// The topic prefix of alarm events.
pub const ALARM_TOPIC: &str = "$ferrite/alarms";
/// Devices whose rate-limit buckets are kept; beyond, the buckets start over.
const MAX_BUCKETS: usize = 100_000;

const CLOSED: &str = "the alarm store is closed (the server is shutting down)";

/// One event on its way to the router; `done` fires once it has been routed.
pub(crate) struct Publication {
    message: Message,
    done: oneshot::Sender<()>,
}

/// Closed alarms deleted per transaction by [`AlarmService::purge_closed`].
const PURGE_BATCH: usize = 1000;
/// How often closed alarms past their retention are looked for.
pub(crate) const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Every [`PURGE_EVERY`] (and once at start), delete closed alarms older than `retention`.
pub(crate) async fn purge_closed(
    service: AlarmService,
    retention: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let svc = service.clone();
        match tokio::task::spawn_blocking(move || svc.purge_closed(retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                alarms = n,
                "closed alarms past alarms.closed_retention deleted"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "closed alarms not purged"),
            Err(e) => tracing::error!(error = %e, "closed-alarm purge failed"),
        }
    }
}

/// The alarm store; cheap to clone.
#[derive(Clone)]
pub(crate) struct AlarmService {
    inner: Arc<Inner>,
}

struct Inner {
    policy: AlarmPolicy,
    /// New alarms per device per `rate_window`.
    max_new: u32,
    rate_window: std::time::Duration,
    clock: Arc<dyn Clock>,
    /// One lock for everything: operations are short (one redb transaction), and holding it
    /// while queueing events keeps publications in commit order.
    state: Mutex<State>,
}

struct State {
    /// `None` once closed, so a restart in the same process can open the file again.
    db: Option<redb::Database>,
    buckets: HashMap<String, Bucket>,
    counters: BTreeMap<String, AlarmCounters>,
    /// `None` once closed: the publisher task then ends after routing what is queued.
    tx: Option<mpsc::Sender<Publication>>,
}

/// A token bucket of new alarms for one device.
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

type Done = Option<oneshot::Receiver<()>>;

impl AlarmService {
    /// Open (or create) the store at `path`; the receiver goes to [`publish_events`].
    pub(crate) fn open(
        path: &Path,
        config: &AlarmsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, mpsc::Receiver<Publication>), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let database = db::open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let service = Self {
            inner: Arc::new(Inner {
                policy: AlarmPolicy {
                    flap_threshold: config.flap_threshold,
                    flap_window: config.flap_window,
                },
                max_new: config.max_new_per_device,
                rate_window: config.rate_window,
                clock,
                state: Mutex::new(State {
                    db: Some(database),
                    buckets: HashMap::new(),
                    counters: BTreeMap::new(),
                    tx: Some(tx),
                }),
            }),
        };
        Ok((service, rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Close the database and end the publication queue (after what is queued is routed).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if let Some(db) = state.db.take() {
            // Make the latest deduped counts (committed without fsync) durable.
            if let Err(e) = db::begin(&db).and_then(|txn| db::commit(txn, true)) {
                tracing::error!(error = %e, "the alarm store did not close cleanly");
            }
        }
        state.tx = None;
    }

    /// Delete the alarms that closed longer than `retention` ago, in transactions of at most
    /// [`PURGE_BATCH`] so raises never wait long behind it. Returns how many went.
    pub(crate) fn purge_closed(&self, retention: std::time::Duration) -> Result<u64, String> {
        let back = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        let before = Timestamp::from_nanos(self.inner.clock.now().as_nanos().saturating_sub(back));
        let mut total = 0;
        loop {
            let state = self.lock();
            let Some(database) = &state.db else {
                return Ok(total);
            };
            let txn = db::begin(database)?;
            let (n, complete) = db::purge_closed(&txn, before, PURGE_BATCH)?;
            db::commit(txn, true)?;
            drop(state);
            total += n;
            if complete {
                return Ok(total);
            }
        }
    }

    /// This rule's counters.
    pub(crate) fn counters(&self, rule: &str) -> AlarmCounters {
        self.lock().counters.get(rule).copied().unwrap_or_default()
    }

    /// A rule's raise: folds into the key's open alarm or opens a new one (rate limit
    /// permitting). The receiver fires when its events have been routed.
    pub(crate) fn raise(&self, mut raise: Raise) -> Result<Done, String> {
        let now = self.inner.clock.now();
        raise.at = now;
        let mut guard = self.lock();
        let State {
            db,
            buckets,
            counters,
            tx,
        } = &mut *guard;
        let db = db.as_ref().ok_or(CLOSED)?;
        let rule = raise.rule.clone();
        let txn = db::begin(db)?;
        let outcome = {
            let owned = (
                raise.rule.clone(),
                raise.device.clone(),
                raise.alarm_type.clone(),
            );
            let key = (owned.0.as_str(), owned.1.as_str(), owned.2.as_str());
            let last = db::last_of(&txn, key)?;
            match last {
                Some(mut alarm) if alarm.state.is_open() => {
                    let change = alarm.raise(raise, &self.inner.policy);
                    db::put(&txn, &alarm)?;
                    Some((alarm, change))
                }
                previous => {
                    if self.allow(buckets, &raise.device, now) {
                        let id = db::next_id(&txn)?;
                        let (alarm, change) =
                            Alarm::open(id, raise, previous.as_ref(), &self.inner.policy);
                        db::put(&txn, &alarm)?;
                        db::set_last(&txn, key, id)?;
                        Some((alarm, change))
                    } else {
                        None
                    }
                }
            }
        };
        let counters = counters.entry(rule.clone()).or_default();
        let Some((alarm, change)) = outcome else {
            drop(txn);
            counters.rate_limited += 1;
            if counters.rate_limited.is_power_of_two() {
                tracing::warn!(%rule, dropped = counters.rate_limited, "new alarms dropped by the per-device rate limit");
            }
            return Ok(None);
        };
        db::commit(txn, !change.deduped)?;
        counters.raised += u64::from(change.raised);
        counters.deduped += u64::from(change.deduped);
        counters.escalated += u64::from(change.events.contains(&AlarmEvent::Escalated));
        Ok(publish(tx.as_ref(), counters, &alarm, &change, now))
    }

    /// A rule's clear of the open alarm of (rule, device, type); `by` is the clearing rule.
    pub(crate) fn clear_by_rule(&self, key: (&str, &str, &str), by: &str) -> Result<Done, String> {
        let now = self.inner.clock.now();
        let mut guard = self.lock();
        let State {
            db, counters, tx, ..
        } = &mut *guard;
        let db = db.as_ref().ok_or(CLOSED)?;
        let txn = db::begin(db)?;
        let Some(mut alarm) = db::last_of(&txn, key)? else {
            return Ok(None);
        };
        let Some(change) = alarm.clear_by_rule(by, now, &self.inner.policy) else {
            return Ok(None);
        };
        db::put(&txn, &alarm)?;
        db::commit(txn, true)?;
        let counters = counters.entry(alarm.rule.clone()).or_default();
        counters.cleared += 1;
        Ok(publish(tx.as_ref(), counters, &alarm, &change, now))
    }

    /// Apply an operator's transition to alarm `id`.
    fn operate(
        &self,
        id: u64,
        f: impl FnOnce(&mut Alarm, Timestamp) -> Result<Change, ferrite_rules::alarm::AlarmError>,
        count: impl FnOnce(&mut AlarmCounters),
    ) -> Result<Alarm, AlarmsApiError> {
        let now = self.inner.clock.now();
        let mut guard = self.lock();
        let State {
            db, counters, tx, ..
        } = &mut *guard;
        let db = db
            .as_ref()
            .ok_or_else(|| AlarmsApiError::Internal(CLOSED.to_owned()))?;
        let txn = db::begin(db).map_err(AlarmsApiError::Internal)?;
        let mut alarm = db::get(&txn, id)
            .map_err(AlarmsApiError::Internal)?
            .ok_or(AlarmsApiError::NotFound(id))?;
        let change = f(&mut alarm, now).map_err(|e| AlarmsApiError::Conflict(e.to_string()))?;
        db::put(&txn, &alarm).map_err(AlarmsApiError::Internal)?;
        db::commit(txn, true).map_err(AlarmsApiError::Internal)?;
        let counters = counters.entry(alarm.rule.clone()).or_default();
        count(counters);
        // Operators do not wait for the routing.
        drop(publish(tx.as_ref(), counters, &alarm, &change, now));
        Ok(alarm)
    }

    /// Take a token from `device`'s bucket.
    fn allow(&self, buckets: &mut HashMap<String, Bucket>, device: &str, now: Timestamp) -> bool {
        let capacity = f64::from(self.inner.max_new);
        let window = self.inner.rate_window.as_secs_f64().max(1e-9);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(device) {
            buckets.clear();
        }
        let b = buckets.entry(device.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        #[allow(clippy::cast_precision_loss)] // nanoseconds as seconds: precision is plenty
        let elapsed = (now.as_nanos().saturating_sub(b.at.as_nanos())).max(0) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * capacity / window).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Queue `change`'s events; the receiver of the last one, which fires when all are routed.
fn publish(
    tx: Option<&mpsc::Sender<Publication>>,
    counters: &mut AlarmCounters,
    alarm: &Alarm,
    change: &Change,
    at: Timestamp,
) -> Done {
    counters.suppressed_flapping += change.suppressed;
    let tx = tx?;
    let mut last = None;
    for event in &change.events {
        let Some(message) = message(alarm, *event, at) else {
            continue;
        };
        let (done, rx) = oneshot::channel();
        match tx.try_send(Publication { message, done }) {
            Ok(()) => {
                counters.published += 1;
                last = Some(rx);
            }
            Err(_) => {
                counters.publish_dropped += 1;
                if counters.publish_dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = counters.publish_dropped,
                        "alarm events dropped: the publication queue is full"
                    );
                }
            }
        }
    }
    last
}

/// The MQTT message announcing `event` of `alarm`.
fn message(alarm: &Alarm, event: AlarmEvent, at: Timestamp) -> Option<Message> {
    let mut view = serde_json::to_value(alarm).ok()?;
    if let Some(o) = view.as_object_mut() {
        o.remove("history");
        o.remove("flips");
    }
    let body = serde_json::json!({
        "event": event.as_str(),
        "at": at.to_string(),
        "alarm": view,
    });
    let topic = TopicName::new(format!(
        "{ALARM_TOPIC}/{}/{}/{}",
        alarm.rule,
        alarm.device,
        event.as_str()
    ))
    .ok()?;
    Some(Message {
        topic,
        payload: Bytes::from(body.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".to_owned()),
            ..Properties::default()
        },
        publisher: Arc::from("$ferrite"),
        received_at: at,
    })
}

/// Route queued events in order until the store is closed and the queue is empty.
pub(crate) async fn publish_events(mut rx: mpsc::Receiver<Publication>, router: Router) {
    while let Some(p) = rx.recv().await {
        router.publish(p.message).await;
        let _ = p.done.send(());
    }
}

impl AlarmsApi for AlarmService {
    fn list(
        &self,
        filter: &AlarmFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AlarmPage, AlarmsApiError> {
        let state = self.lock();
        let db = state
            .db
            .as_ref()
            .ok_or_else(|| AlarmsApiError::Internal(CLOSED.to_owned()))?;
        db::list(db, filter, after, limit).map_err(AlarmsApiError::Internal)
    }

    fn get(&self, id: u64) -> Result<Alarm, AlarmsApiError> {
        let state = self.lock();
        let db = state
            .db
            .as_ref()
            .ok_or_else(|| AlarmsApiError::Internal(CLOSED.to_owned()))?;
        db::read(db, id)
            .map_err(AlarmsApiError::Internal)?
            .ok_or(AlarmsApiError::NotFound(id))
    }

    fn acknowledge(
        &self,
        id: u64,
        who: &str,
        note: Option<String>,
    ) -> Result<Alarm, AlarmsApiError> {
        let alarm = self.operate(
            id,
            |a, now| a.acknowledge(who, note, now),
            |c| c.acknowledged += 1,
        )?;
        tracing::info!(actor = who, alarm = id, "alarm acknowledged");
        Ok(alarm)
    }

    fn clear(&self, id: u64, who: &str, note: Option<String>) -> Result<Alarm, AlarmsApiError> {
        let alarm = self.operate(
            id,
            |a, now| a.clear_by_operator(who, note, now),
            |c| c.cleared += 1,
        )?;
        tracing::info!(actor = who, alarm = id, "alarm cleared");
        Ok(alarm)
    }

    fn stats(&self) -> AlarmCounters {
        let mut total = AlarmCounters::default();
        for c in self.lock().counters.values() {
            total.add(c);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use ferrite_core::ManualClock;
    use ferrite_rules::alarm::{AlarmState, Severity};

    use super::*;

    fn raise(device: &str, kind: &str) -> Raise {
        Raise {
            rule: "hot".into(),
            device: device.into(),
            alarm_type: kind.into(),
            severity: Severity::Major,
            message: None,
            values: serde_json::Map::new(),
            at: Timestamp::from_nanos(0),
        }
    }

    #[test]
    fn dedupes_rate_limits_and_reopens_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarms.redb");
        let clock = ManualClock::new(Timestamp::from_nanos(1_000_000_000_000));
        let config = AlarmsConfig {
            max_new_per_device: 2,
            rate_window: Duration::from_secs(60),
            ..AlarmsConfig::default()
        };
        let (svc, mut rx) = AlarmService::open(&path, &config, Arc::new(clock.clone())).unwrap();
        for _ in 0..5 {
            svc.raise(raise("d1", "a")).unwrap();
        }
        svc.raise(raise("d1", "b")).unwrap();
        assert!(
            svc.raise(raise("d1", "c")).unwrap().is_none(),
            "rate limited"
        );
        svc.raise(raise("d2", "a")).unwrap();
        let c = svc.counters("hot");
        assert_eq!((c.raised, c.deduped, c.rate_limited), (3, 4, 1));
        assert_eq!(c.published, 3);
        let mut topics = Vec::new();
        while let Ok(p) = rx.try_recv() {
            topics.push(p.message.topic.as_str().to_owned());
        }
        assert_eq!(
            topics,
            [
                "$ferrite/alarms/hot/d1/raised",
                "$ferrite/alarms/hot/d1/raised",
                "$ferrite/alarms/hot/d2/raised"
            ]
        );
        svc.clear_by_rule(("hot", "d1", "a"), "cool").unwrap();
        let page = svc.list(&AlarmFilter::default(), None, 10).unwrap();
        let ids: Vec<u64> = page.items.iter().map(|a| a.id).collect();
        assert_eq!(ids, [3, 2, 1], "newest first");
        assert_eq!(page.items[2].count, 5);
        assert_eq!(page.items[2].state, AlarmState::ClearedUnacknowledged);
        // Paging.
        let first = svc.list(&AlarmFilter::default(), None, 2).unwrap();
        assert_eq!(first.next, Some(2));
        let rest = svc.list(&AlarmFilter::default(), first.next, 2).unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.next, None);
        // Operator transitions and their conflicts.
        svc.acknowledge(1, "api:x", None).unwrap();
        assert!(matches!(
            svc.acknowledge(1, "api:x", None),
            Err(AlarmsApiError::Conflict(_))
        ));
        assert!(matches!(svc.get(99), Err(AlarmsApiError::NotFound(99))));
        svc.close();
        drop(svc);

        let (svc, _rx) = AlarmService::open(&path, &config, Arc::new(clock)).unwrap();
        let a = svc.get(1).unwrap();
        assert_eq!((a.state, a.count), (AlarmState::Cleared, 5));
        let open = AlarmFilter {
            open: true,
            ..AlarmFilter::default()
        };
        assert_eq!(svc.list(&open, None, 10).unwrap().items.len(), 2);
        // A raise of the closed key opens alarm 4.
        svc.raise(raise("d1", "a")).unwrap();
        assert_eq!(svc.list(&open, None, 1).unwrap().items[0].id, 4);
    }

    #[test]
    fn closed_alarms_go_after_their_retention_and_open_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Timestamp::from_nanos(1_000_000_000_000));
        let config = AlarmsConfig {
            max_new_per_device: 1_000_000,
            ..AlarmsConfig::default()
        };
        let (svc, _rx) = AlarmService::open(
            &dir.path().join("alarms.redb"),
            &config,
            Arc::new(clock.clone()),
        )
        .unwrap();
        let day = Duration::from_secs(86_400);
        // 2,500 alarms closed by an operator (more than one purge batch), then one more
        // closed a day later, one cleared by the rule but never acknowledged, one active.
        for i in 0..2_500 {
            svc.raise(raise(&format!("d{i}"), "old")).unwrap();
            svc.clear(i + 1, "api:op", None).unwrap();
        }
        clock.set(Timestamp::from_nanos(
            clock.now().as_nanos() + 86_400_000_000_000,
        ));
        svc.raise(raise("late", "old")).unwrap();
        svc.clear(2_501, "api:op", None).unwrap();
        svc.raise(raise("unacked", "x")).unwrap();
        svc.clear_by_rule(("hot", "unacked", "x"), "cool").unwrap();
        svc.raise(raise("active", "x")).unwrap();

        clock.set(Timestamp::from_nanos(
            clock.now().as_nanos() + 86_400_000_000_000,
        ));
        assert_eq!(svc.purge_closed(3 * day).unwrap(), 0, "nothing old enough");
        assert_eq!(svc.purge_closed(day + day / 2).unwrap(), 2_500);
        assert!(matches!(svc.get(1), Err(AlarmsApiError::NotFound(1))));
        let left: Vec<u64> = svc
            .list(&AlarmFilter::default(), None, 10)
            .unwrap()
            .items
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(left, [2_503, 2_502, 2_501]);
        // The purged keys raise fresh alarms; ids are never reused.
        svc.raise(raise("d0", "old")).unwrap();
        assert_eq!(svc.get(2_504).unwrap().device, "d0");
        assert_eq!(
            svc.purge_closed(Duration::ZERO).unwrap(),
            1,
            "only 2,501 is closed"
        );
        assert_eq!(
            svc.get(2_502).unwrap().state,
            AlarmState::ClearedUnacknowledged
        );
    }
}
