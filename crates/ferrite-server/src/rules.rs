//! The rules engine: runs the rule definitions of `ferrite_api::rules` on the live stream
//! with the sans-IO evaluator of `ferrite_rules`, and executes their actions.
//!
//! Each enabled rule is two tasks:
//!
//! - the **evaluator** holds the compiled [`Rule`] and a non-durable internal subscription
//!   of the router on the rule's `FROM` filter. Its queue holds [`QUEUE`] messages; when it
//!   is full, publishers of matching messages wait (backpressure, like every internal
//!   subscriber) — a slow rule slows its publishers rather than losing input. Each JSON
//!   payload becomes a [`Message`] (device id from `devices/{id}/…` topics, else the
//!   publisher's client id if it is a valid device id; event time from a `ts` or `time`
//!   field read like telemetry's `ts`, else the receive time; registry tags of the device,
//!   cached for [`TAGS_TTL`]). Non-JSON payloads are skipped and counted. Every
//!   [`ADVANCE_EVERY`] it advances the watermark at processing time so windows fire on idle
//!   streams. Messages the rule itself published (publisher `$rule/{name}`) are skipped so a
//!   rule cannot feed itself; rules feeding each other in a cycle are not detected.
//! - the **action runner** takes output rows from a queue of [`ACTION_QUEUE`] rows and runs
//!   every action of the rule on each, in order ([`actions`]). The evaluator never waits for
//!   it: when the queue is full the row is dropped and counted (`actions_dropped`).
//!
//! Creating, replacing, enabling, disabling and deleting a rule apply at once: its
//! subscription is removed before the call returns and its tasks stop, and its window and
//! detector state starts empty. Across server restarts that state is kept in checkpoints
//! ([`checkpoint`]): written every `rules.checkpoint_interval` and at shutdown, restored when
//! the evaluator starts.
//!
//! Definitions persist in `data_dir/rules/rules.json` ([`file`]).

mod actions;
mod checkpoint;
mod file;
mod replay;

pub(crate) use checkpoint::Checkpoints;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferrite_api::rules::{
    Action, ReplayReport, ReplayRequest, RuleCounters, RuleDefinition, RuleView, RulesApi,
    RulesApiError,
};
use ferrite_core::decode::parse_ts;
use ferrite_core::{Clock, DeviceId, Measurement, Timestamp, TopicName};
use ferrite_fleet::Fleet;
use ferrite_mqtt::{Delivery, InternalSubscription, Router};
use ferrite_rules::lang::{Message, Rule, RuleOptions};
use ferrite_rules::window::WatermarkConfig;
use ferrite_store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ServerError;
use crate::alarms::AlarmService;
use crate::config::RulesConfig;

/// Messages queued for one rule's evaluator; publishers wait when it is full.
pub(crate) const QUEUE: usize = 1024;
/// Output rows queued for one rule's actions; beyond, rows are dropped and counted.
pub(crate) const ACTION_QUEUE: usize = 1024;
/// How often an evaluator advances its watermark at processing time.
pub(crate) const ADVANCE_EVERY: Duration = Duration::from_millis(200);
/// How long a device's registry tags are reused before being read again.
pub(crate) const TAGS_TTL: Duration = Duration::from_secs(30);
/// Longest rule name, in bytes.
const MAX_NAME_LEN: usize = 64;

/// What rule tasks need from the rest of the server.
pub(crate) struct Deps {
    pub(crate) router: Router,
    pub(crate) store: Arc<Store>,
    pub(crate) fleet: Fleet,
    pub(crate) alarms: AlarmService,
    /// The webhooks' client ([`webhook_client`]).
    pub(crate) http: reqwest::Client,
    /// Stored telemetry, for replays.
    pub(crate) query: Arc<ferrite_query::QueryEngine>,
    /// Rule state checkpoints.
    pub(crate) checkpoints: Checkpoints,
    pub(crate) clock: Arc<dyn Clock>,
}

/// The running rules; cheap to clone.
#[derive(Clone)]
pub(crate) struct RulesEngine {
    inner: Arc<Inner>,
}

struct Inner {
    /// `data_dir/rules/rules.json`.
    path: PathBuf,
    /// The runtime rule tasks are spawned on (API calls come from blocking threads).
    runtime: tokio::runtime::Handle,
    /// Every rule task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Parent of every rule's cancellation token.
    shutdown: CancellationToken,
    /// The rules; changed by API calls (on blocking threads), read by GETs.
    state: Mutex<State>,
    /// Where the alarm counters of each rule are kept (they outlive rule restarts).
    alarms: AlarmService,
}

struct State {
    rules: BTreeMap<String, Entry>,
    /// Taken at shutdown so the router (and with it the ingest subscription) can go away.
    deps: Option<Arc<Deps>>,
}

struct Entry {
    def: RuleDefinition,
    counters: Arc<Counters>,
    running: Option<Running>,
    /// Why an enabled rule is not running (a stored rule that no longer compiles).
    error: Option<String>,
}

/// A started rule; dropping it unsubscribes and stops its tasks.
struct Running {
    _subscription: InternalSubscription,
    cancel: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Counters of one rule, written by its two tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    messages: AtomicU64,
    bad_payloads: AtomicU64,
    matched: AtomicU64,
    rows: AtomicU64,
    late_events: AtomicU64,
    duplicates: AtomicU64,
    dedup_unchecked: AtomicU64,
    actions_ok: AtomicU64,
    actions_failed: AtomicU64,
    actions_dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RuleCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RuleCounters {
            messages: get(&self.messages),
            bad_payloads: get(&self.bad_payloads),
            matched: get(&self.matched),
            rows: get(&self.rows),
            late_events: get(&self.late_events),
            duplicates: get(&self.duplicates),
            dedup_unchecked: get(&self.dedup_unchecked),
            actions_ok: get(&self.actions_ok),
            actions_failed: get(&self.actions_failed),
            actions_dropped: get(&self.actions_dropped),
            alarms: ferrite_api::alarms::AlarmCounters::default(),
        }
    }
}

/// One output row on its way to the actions, with what its templates may refer to.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    row: serde_json::Map<String, serde_json::Value>,
    /// Window end for windowed rules, else the message's event time.
    time: Timestamp,
    /// The triggering message's device (stateless rules).
    device_id: Option<String>,
    /// The triggering message's topic (stateless rules).
    topic: Option<String>,
}

impl Job {
    /// The job for output `o`, emitted for `source` (`None`: by a watermark advance or the
    /// final flush), at processing time `now`.
    fn of(mut o: ferrite_rules::lang::Output, source: Option<&Message>, now: Timestamp) -> Self {
        // A silence row stands for its series' message.
        let silence = o.silence.take();
        let source = silence.as_ref().or(source);
        match (&o.window, source) {
            (Some(w), _) => Self {
                time: w.end,
                row: o.row,
                device_id: None,
                topic: None,
            },
            (None, Some(m)) => Self {
                row: o.row,
                time: m.time(),
                device_id: m.device_id.as_ref().map(|d| d.as_str().to_owned()),
                topic: Some(m.topic.as_str().to_owned()),
            },
            (None, None) => Self {
                row: o.row,
                time: now,
                device_id: None,
                topic: None,
            },
        }
    }
}

impl RulesEngine {
    /// Load the stored definitions and start the enabled ones. A damaged rules file is an
    /// error; a stored rule that no longer compiles is kept, not started, and reported in
    /// its view.
    pub(crate) fn start(
        dir: PathBuf,
        deps: Deps,
        shutdown: &CancellationToken,
    ) -> Result<Self, ServerError> {
        let path = dir.join(file::FILE_NAME);
        let defs = file::load(&path).map_err(|message| ServerError::Rules {
            path: path.clone(),
            message,
        })?;
        let alarms = deps.alarms.clone();
        let engine = Self {
            inner: Arc::new(Inner {
                path,
                runtime: tokio::runtime::Handle::current(),
                tasks: TaskTracker::new(),
                shutdown: shutdown.child_token(),
                state: Mutex::new(State {
                    rules: BTreeMap::new(),
                    deps: Some(Arc::new(deps)),
                }),
                alarms,
            }),
        };
        {
            let mut state = engine.lock();
            for def in defs {
                let mut entry = Entry {
                    def,
                    counters: Arc::default(),
                    running: None,
                    error: None,
                };
                if entry.def.enabled {
                    match compile(&entry.def).and_then(|rule| engine.spawn(&state, &entry, rule)) {
                        Ok(r) => entry.running = Some(r),
                        Err(e) => {
                            tracing::error!(rule = %entry.def.name, error = %e, "stored rule not started");
                            entry.error = Some(e.to_string());
                        }
                    }
                }
                state.rules.insert(entry.def.name.clone(), entry);
            }
            if let Some(deps) = &state.deps {
                let names: Vec<&str> = state.rules.keys().map(String::as_str).collect();
                deps.checkpoints.remove_others(&names);
            }
            tracing::info!(
                rules = state.rules.len(),
                running = state.rules.values().filter(|e| e.running.is_some()).count(),
                "rules loaded"
            );
        }
        Ok(engine)
    }

    /// Stop every rule and wait for their tasks; releases the router.
    pub(crate) async fn stop(&self) {
        // First, so evaluators stopping now know it is the server (and write a checkpoint).
        self.inner.shutdown.cancel();
        {
            let mut state = self.lock();
            for e in state.rules.values_mut() {
                e.running = None;
            }
            state.deps = None;
        }
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribe `rule` and start its evaluator and action runner.
    fn spawn(&self, state: &State, entry: &Entry, rule: Rule) -> Result<Running, RulesApiError> {
        let deps = state
            .deps
            .clone()
            .ok_or_else(|| RulesApiError::Internal("the server is shutting down".to_owned()))?;
        let (subscription, rx) =
            deps.router
                .subscribe_internal_scoped(&[rule.filter().clone()], QUEUE, false);
        let (tx, actions_rx) = mpsc::channel(ACTION_QUEUE);
        let cancel = self.inner.shutdown.child_token();
        let name: Arc<str> = Arc::from(entry.def.name.as_str());
        self.inner.tasks.spawn_on(
            evaluate(
                Arc::clone(&name),
                rule,
                Input {
                    rx,
                    message_id: entry.def.message_id.clone(),
                    server_stopping: self.inner.shutdown.clone(),
                },
                tx,
                Arc::clone(&entry.counters),
                Arc::clone(&deps),
                cancel.clone(),
            ),
            &self.inner.runtime,
        );
        self.inner.tasks.spawn_on(
            actions::run(
                actions::Runner {
                    rule: name,
                    actions: entry.def.actions.clone(),
                    error_action: entry.def.error_action.clone(),
                    counters: Arc::clone(&entry.counters),
                    deps,
                },
                actions_rx,
                cancel.clone(),
            ),
            &self.inner.runtime,
        );
        Ok(Running {
            _subscription: subscription,
            cancel,
        })
    }

    /// Write the rule set as it would be with `change` applied to `name`.
    fn persist(
        &self,
        state: &State,
        name: &str,
        change: Option<&RuleDefinition>,
    ) -> Result<(), RulesApiError> {
        let mut defs: BTreeMap<&str, &RuleDefinition> = state
            .rules
            .iter()
            .map(|(k, e)| (k.as_str(), &e.def))
            .collect();
        match change {
            Some(d) => defs.insert(name, d),
            None => defs.remove(name),
        };
        let defs: Vec<&RuleDefinition> = defs.into_values().collect();
        file::save(&self.inner.path, &defs).map_err(|e| {
            RulesApiError::Internal(format!(
                "cannot save the rules to {}: {e}",
                self.inner.path.display()
            ))
        })
    }

    /// Store `def` under its name and (re)start it as its `enabled` says.
    fn put(&self, def: RuleDefinition, must_exist: bool) -> Result<RuleView, RulesApiError> {
        let rule = compile(&def)?;
        let mut state = self.lock();
        match (state.rules.contains_key(&def.name), must_exist) {
            (true, false) => return Err(RulesApiError::Conflict(def.name)),
            (false, true) => return Err(RulesApiError::NotFound(def.name)),
            _ => {}
        }
        self.persist(&state, &def.name, Some(&def))?;
        // Stop the old version first: its subscription ends before the new one starts, and
        // its state (checkpoint included) restarts.
        state.rules.remove(&def.name);
        if let Some(deps) = &state.deps {
            deps.checkpoints.remove(&def.name);
        }
        let mut entry = Entry {
            def,
            counters: Arc::default(),
            running: None,
            error: None,
        };
        if entry.def.enabled {
            entry.running = Some(self.spawn(&state, &entry, rule)?);
        }
        let view = self.view(&entry);
        state.rules.insert(entry.def.name.clone(), entry);
        Ok(view)
    }
}

impl RulesApi for RulesEngine {
    fn create(&self, who: &str, rule: RuleDefinition) -> Result<RuleView, RulesApiError> {
        let name = rule.name.clone();
        let v = self.put(rule, false)?;
        tracing::info!(actor = who, rule = %name, "rule created");
        Ok(v)
    }

    fn replace(&self, who: &str, rule: RuleDefinition) -> Result<RuleView, RulesApiError> {
        let name = rule.name.clone();
        let v = self.put(rule, true)?;
        tracing::info!(actor = who, rule = %name, "rule replaced");
        Ok(v)
    }

    fn delete(&self, who: &str, name: &str) -> Result<(), RulesApiError> {
        let mut state = self.lock();
        if !state.rules.contains_key(name) {
            return Err(RulesApiError::NotFound(name.to_owned()));
        }
        self.persist(&state, name, None)?;
        state.rules.remove(name);
        if let Some(deps) = &state.deps {
            deps.checkpoints.remove(name);
        }
        tracing::info!(actor = who, rule = name, "rule deleted");
        Ok(())
    }

    fn set_enabled(&self, who: &str, name: &str, enabled: bool) -> Result<RuleView, RulesApiError> {
        let mut def = self.get(name)?.definition;
        if def.enabled == enabled {
            return self.get(name);
        }
        def.enabled = enabled;
        let v = self.put(def, true)?;
        tracing::info!(
            actor = who,
            rule = name,
            enabled,
            "rule {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(v)
    }

    fn get(&self, name: &str) -> Result<RuleView, RulesApiError> {
        self.lock()
            .rules
            .get(name)
            .map(|e| self.view(e))
            .ok_or_else(|| RulesApiError::NotFound(name.to_owned()))
    }

    fn list(&self) -> Vec<RuleView> {
        self.lock().rules.values().map(|e| self.view(e)).collect()
    }

    fn replay(&self, name: &str, request: ReplayRequest) -> Result<ReplayReport, RulesApiError> {
        let (def, deps) = {
            let state = self.lock();
            let entry = state
                .rules
                .get(name)
                .ok_or_else(|| RulesApiError::NotFound(name.to_owned()))?;
            let deps = state
                .deps
                .clone()
                .ok_or_else(|| RulesApiError::Internal("the rules engine has stopped".into()))?;
            (entry.def.clone(), deps)
        };
        let rule = compile(&def)?;
        let runner = request.actions.then(|| actions::Runner {
            rule: Arc::from(name),
            actions: def.actions.clone(),
            error_action: def.error_action.clone(),
            counters: Arc::default(),
            deps: Arc::clone(&deps),
        });
        // Called on a blocking thread (the API's rule calls are), so it may wait here.
        self.inner.runtime.block_on(replay::run(
            name,
            rule,
            def.message_id.as_deref(),
            runner,
            deps,
            &request,
        ))
    }
}

impl RulesEngine {
    fn view(&self, e: &Entry) -> RuleView {
        let mut stats = e.counters.snapshot();
        stats.alarms = self.inner.alarms.counters(&e.def.name);
        RuleView {
            definition: e.def.clone(),
            running: e.running.is_some(),
            stats,
            error: e.error.clone(),
        }
    }
}

/// Check a definition and compile its SQL.
fn compile(def: &RuleDefinition) -> Result<Rule, RulesApiError> {
    if !valid_name(&def.name) {
        return Err(RulesApiError::invalid(format!(
            "rule name {:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
            def.name
        )));
    }
    for a in def.actions.iter().chain(&def.error_action) {
        check_action(a)?;
    }
    if let Some(field) = &def.message_id
        && (field.is_empty() || field.split('.').any(str::is_empty))
    {
        return Err(RulesApiError::invalid(format!(
            "message_id {field:?}: name a payload field, e.g. \"seq\" or \"meta.id\""
        )));
    }
    if def.dedup.is_some() && def.message_id.is_none() {
        return Err(RulesApiError::invalid(
            "dedup: set message_id too (the payload field holding the ids)",
        ));
    }
    let options = RuleOptions {
        watermark: WatermarkConfig {
            out_of_orderness: def
                .out_of_orderness
                .unwrap_or(WatermarkConfig::default().out_of_orderness),
            ..WatermarkConfig::default()
        },
        allowed_lateness: def.allowed_lateness.unwrap_or(Duration::ZERO),
        dedup: def.dedup.unwrap_or_default(),
        ..RuleOptions::default()
    };
    Rule::new(&def.sql, options).map_err(|e| {
        let pos = e.position();
        RulesApiError::Invalid {
            message: e.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
        }
    })
}

fn check_action(a: &Action) -> Result<(), RulesApiError> {
    match a {
        Action::Republish { topic, qos, .. } => {
            if *qos > 1 {
                return Err(RulesApiError::invalid(format!(
                    "republish: qos {qos}: use 0 or 1"
                )));
            }
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(RulesApiError::invalid(format!(
                    "republish: topic {topic:?} must be a non-empty topic name without wildcards"
                )));
            }
        }
        Action::Table { table } => {
            Measurement::new(table.as_str())
                .map_err(|e| RulesApiError::invalid(format!("table {table:?}: {e}")))?;
        }
        Action::Webhook { url, headers } => {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(RulesApiError::invalid(format!(
                    "webhook: url {url:?} is not an http:// or https:// URL"
                )));
            }
            for (k, v) in headers {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(v).is_err()
                {
                    return Err(RulesApiError::invalid(format!(
                        "webhook: header {k:?} is not a valid HTTP header"
                    )));
                }
            }
        }
        Action::RaiseAlarm { alarm, device, .. } => {
            check_alarm_type(a.kind(), alarm)?;
            check_template(a.kind(), "device", device.as_deref())?;
        }
        Action::ClearAlarm {
            alarm,
            rule,
            device,
        } => {
            check_alarm_type(a.kind(), alarm)?;
            check_template(a.kind(), "device", device.as_deref())?;
            if let Some(r) = rule
                && !valid_name(r)
            {
                return Err(RulesApiError::invalid(format!(
                    "clear_alarm: rule {r:?} is not a rule name"
                )));
            }
        }
        Action::Command {
            name, device, qos, ..
        } => {
            if *qos > 1 {
                return Err(RulesApiError::invalid(format!(
                    "command: qos {qos}: use 0 or 1"
                )));
            }
            check_template(a.kind(), "device", device.as_deref())?;
            if name.is_empty() || name.contains(['/', '+', '#']) {
                return Err(RulesApiError::invalid(format!(
                    "command: name {name:?} must be one non-empty topic level (no '/', '+', '#')"
                )));
            }
        }
    }
    Ok(())
}

/// Longest alarm type, in bytes.
pub(crate) const MAX_ALARM_TYPE_LEN: usize = 64;

/// Whether `t` may be an alarm type: like rule names.
pub(crate) fn valid_alarm_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_ALARM_TYPE_LEN
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_alarm_type(kind: &str, alarm: &str) -> Result<(), RulesApiError> {
    // A template is checked once rendered.
    if alarm.contains("${") || valid_alarm_type(alarm) {
        return check_template(kind, "alarm", Some(alarm));
    }
    Err(RulesApiError::invalid(format!(
        "{kind}: alarm {alarm:?}: use 1 to {MAX_ALARM_TYPE_LEN} letters, digits, '-', '_' or '.' \
         (or a ${{column}} template)"
    )))
}

fn check_template(kind: &str, field: &str, t: Option<&str>) -> Result<(), RulesApiError> {
    let Some(t) = t else { return Ok(()) };
    let mut rest = t;
    while let Some(start) = rest.find("${") {
        let Some(end) = rest[start..].find('}') else {
            return Err(RulesApiError::invalid(format!(
                "{kind}: {field} {t:?}: unclosed ${{"
            )));
        };
        rest = &rest[start + end + 1..];
    }
    if t.is_empty() {
        return Err(RulesApiError::invalid(format!("{kind}: {field} is empty")));
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What an evaluator reads: its subscription, and where messages carry their ids.
struct Input {
    rx: mpsc::Receiver<Delivery>,
    /// The payload field of message ids (`RuleDefinition::message_id`).
    message_id: Option<String>,
    /// Cancelled when the server (not just this rule) stops: the moment for a last checkpoint.
    server_stopping: CancellationToken,
}

/// The evaluator task of one rule (see the module docs).
async fn evaluate(
    name: Arc<str>,
    mut rule: Rule,
    Input {
        mut rx,
        message_id,
        server_stopping,
    }: Input,
    actions: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    deps: Arc<Deps>,
    cancel: CancellationToken,
) {
    let me = actions::publisher(&name);
    let mut tick = tokio::time::interval(ADVANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tags = TagCache::new(deps.fleet.clone());
    let mut out = Vec::new();
    let windowed = rule.is_windowed();
    let stateful = rule.is_stateful();
    if stateful && let Some(bytes) = deps.checkpoints.load(&name) {
        match rule.restore(&bytes) {
            Ok(()) => {
                tracing::info!(rule = %name, bytes = bytes.len(), "rule state restored from its checkpoint")
            }
            Err(e) => {
                tracing::warn!(rule = %name, error = %e, "rule checkpoint not used; state starts empty")
            }
        }
    }
    // Checkpoints are taken only for rules with state, and only after new input.
    let every = deps.checkpoints.interval.filter(|_| stateful);
    let mut checkpoint_tick = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
    checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checkpoint_tick.reset();
    let mut dirty = false;
    loop {
        let source = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = checkpoint_tick.tick(), if every.is_some() && dirty => {
                dirty = false;
                checkpoint(&name, &rule, &deps, || !cancel.is_cancelled());
                continue;
            }
            d = rx.recv() => {
                let Some(d) = d else { break };
                if *d.message.publisher == *me {
                    continue;
                }
                counters.messages.fetch_add(1, Ordering::Relaxed);
                let Some(mut msg) = to_message(&d.message, &mut tags) else {
                    counters.bad_payloads.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(rule = %name, topic = %d.message.topic, "rule input is not JSON");
                    continue;
                };
                if let Some(field) = &message_id {
                    msg.set_id_from(field);
                }
                dirty = true;
                rule.process(&msg, &mut out);
                Some(msg)
            }
            _ = tick.tick() => {
                rule.advance(deps.clock.now(), &mut out);
                None
            }
        };
        if windowed {
            // Counted in the rule's stats; the events themselves are not used.
            drop(rule.drain_late());
        }
        let stats = rule.stats();
        counters.matched.store(stats.matched, Ordering::Relaxed);
        counters.rows.store(stats.rows, Ordering::Relaxed);
        counters
            .late_events
            .store(stats.late_events, Ordering::Relaxed);
        counters
            .duplicates
            .store(stats.duplicates, Ordering::Relaxed);
        counters
            .dedup_unchecked
            .store(stats.dedup_unchecked, Ordering::Relaxed);
        for o in out.drain(..) {
            let job = Job::of(o, source.as_ref(), deps.clock.now());
            // Never wait for the actions: a full queue drops the row (counted).
            if actions.try_send(job).is_err() {
                let n = counters.actions_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(rule = %name, dropped = n, "rule output dropped: actions queue full");
                }
            }
        }
    }
    if stateful && every.is_some() && server_stopping.is_cancelled() {
        checkpoint(&name, &rule, &deps, || true);
    }
}

/// Write `rule`'s checkpoint unless `current()` says the rule was changed meanwhile.
fn checkpoint(name: &str, rule: &Rule, deps: &Deps, current: impl FnOnce() -> bool) {
    let written = rule
        .checkpoint()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            deps.checkpoints
                .save(name, &bytes, current)
                .map(|saved| (saved, bytes.len()))
                .map_err(|e| e.to_string())
        });
    match written {
        Ok((true, bytes)) => tracing::debug!(rule = name, bytes, "rule checkpoint written"),
        Ok((false, _)) => {}
        Err(e) => tracing::warn!(rule = name, error = %e, "rule checkpoint not written"),
    }
}

/// The webhooks' HTTP client: the system's root certificates plus those of `ca_file` (PEM)
/// if one is named.
pub(crate) fn webhook_client(config: &RulesConfig) -> Result<reqwest::Client, String> {
    let ca_file = &config.webhook_ca_file;
    let mut builder = reqwest::Client::builder().timeout(actions::WEBHOOK_TIMEOUT);
    if !ca_file.as_os_str().is_empty() {
        let at =
            |e: &dyn std::fmt::Display| format!("rules.webhook_ca_file {}: {e}", ca_file.display());
        let pem = std::fs::read(ca_file).map_err(|e| at(&e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| at(&e))?;
        if certs.is_empty() {
            return Err(at(&"no PEM certificate in it"));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the webhook client: {e}"))
}

/// A routed message as the rules language sees it; `None` if the payload is not JSON.
fn to_message(m: &ferrite_mqtt::Message, tags: &mut TagCache) -> Option<Message> {
    let payload: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
    let device_id = device_of(&m.topic).or_else(|| DeviceId::new(&*m.publisher).ok());
    let event_time = payload
        .as_object()
        .and_then(|o| o.get("ts").or_else(|| o.get("time")))
        .and_then(|v| parse_ts(v).ok());
    let tags = device_id.as_ref().map(|d| tags.get(d)).unwrap_or_default();
    Some(Message {
        topic: m.topic.clone(),
        payload,
        client_id: m.publisher.to_string(),
        device_id,
        received_at: m.received_at,
        event_time,
        tags,
        message_id: None,
        partition: 0,
    })
}

/// The device of a `devices/{id}/…` topic.
fn device_of(topic: &TopicName) -> Option<DeviceId> {
    let mut levels = topic.levels();
    if levels.next() != Some("devices") {
        return None;
    }
    DeviceId::new(levels.next()?).ok()
}

/// Registry tags per device, read at most once per [`TAGS_TTL`] (a redb read on a miss).
struct TagCache {
    fleet: Fleet,
    entries: HashMap<DeviceId, (Instant, Arc<BTreeMap<String, String>>)>,
}

impl TagCache {
    /// Beyond this many devices the cache starts over.
    const MAX: usize = 100_000;

    fn new(fleet: Fleet) -> Self {
        Self {
            fleet,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, device: &DeviceId) -> Arc<BTreeMap<String, String>> {
        if let Some((at, tags)) = self.entries.get(device)
            && at.elapsed() < TAGS_TTL
        {
            return Arc::clone(tags);
        }
        let tags = match self.fleet.get_device(device) {
            Ok(Some(d)) => Arc::new(d.tags),
            Ok(None) => Arc::default(),
            Err(e) => {
                tracing::debug!(device_id = %device, error = %e, "registry tags unavailable");
                Arc::default()
            }
        };
        if self.entries.len() >= Self::MAX {
            self.entries.clear();
        }
        self.entries
            .insert(device.clone(), (Instant::now(), Arc::clone(&tags)));
        tags
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn def(sql: &str) -> RuleDefinition {
        serde_json::from_value(serde_json::json!({"name": "r", "sql": sql})).unwrap()
    }

    #[test]
    fn sql_errors_carry_the_position() {
        match compile(&def("SELECT temp FROM 'a' WHERE")) {
            Err(RulesApiError::Invalid { line, column, .. }) => {
                assert_eq!(line, Some(1));
                assert!(column.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_and_actions_are_checked() {
        let mut d = def("SELECT temp FROM 'a'");
        d.name = "a/b".to_owned();
        assert!(compile(&d).is_err());
        let mut d = def("SELECT temp FROM 'a'");
        d.actions.push(Action::Webhook {
            url: "ftp://x".to_owned(),
            headers: BTreeMap::new(),
        });
        assert!(compile(&d).is_err());
        let mut d = def("SELECT temp FROM 'a'");
        d.actions.push(Action::Republish {
            topic: "alerts/#".to_owned(),
            qos: 0,
            retain: false,
        });
        assert!(compile(&d).is_err());
    }

    #[test]
    fn device_comes_from_the_topic() {
        let t = TopicName::new("devices/d-1/telemetry").unwrap();
        assert_eq!(device_of(&t).unwrap().as_str(), "d-1");
        assert!(device_of(&TopicName::new("other/d-1").unwrap()).is_none());
    }
}
