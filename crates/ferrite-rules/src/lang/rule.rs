//! [`Rule`]: a compiled rule with its state (window operator, watermark, detector states),
//! evaluated one [`Message`] at a time.

use std::time::Duration;

use ferrite_core::{Timestamp, TopicFilter};

use super::Message;
use super::compile::{Plan, Projection, compile};
use super::expr::{Ctx, DetectorState, DetectorStates, Origin, WindowRow};
use crate::agg::DedupPolicy;
use crate::agg::MessageId;
use crate::datum::Datum;
use crate::error::RulesError;
use crate::window::{
    Admission, LateEvent, WatermarkConfig, WatermarkTracker, Window, WindowConfig, WindowOperator,
    WindowResult,
};

/// Settings of a rule beyond its SQL.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RuleOptions {
    /// Watermark: out-of-orderness and idle timeout of partitions.
    pub watermark: WatermarkConfig,
    /// How long after firing a window still accepts late events (re-firing it).
    pub allowed_lateness: Duration,
    /// How message ids are remembered per pane or session for duplicate suppression.
    pub dedup: DedupPolicy,
    /// Late events buffered between [`Rule::drain_late`] calls (beyond: counted only).
    pub late_capacity: usize,
}

impl Default for RuleOptions {
    fn default() -> Self {
        Self {
            watermark: WatermarkConfig::default(),
            allowed_lateness: Duration::ZERO,
            dedup: DedupPolicy::default(),
            late_capacity: 1024,
        }
    }
}

/// One output row.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// The projected columns.
    pub row: serde_json::Map<String, serde_json::Value>,
    /// The window it summarises (windowed rules).
    pub window: Option<Window>,
    /// Windowed rules: this replaces an earlier row for the same key and window (a late
    /// event within allowed lateness changed it).
    pub is_update: bool,
    /// Session windows: earlier windows this row replaces.
    pub superseded: Vec<Window>,
    /// A row for a series' silence (`gap()` passed while no message came): the message
    /// standing for it (the series' last topic and identity, an empty payload, the time).
    pub silence: Option<Message>,
}

/// Counters of one rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleStats {
    /// Messages offered (whatever their topic).
    pub messages: u64,
    /// Messages whose topic matched and that passed WHERE.
    pub matched: u64,
    /// Rows produced.
    pub rows: u64,
    /// Window results dropped by HAVING.
    pub having_rejected: u64,
    /// Events too late for every window.
    pub late_events: u64,
    /// Events dropped as duplicates by message id.
    pub duplicates: u64,
    /// Events whose message id was not checked: the window's id memory was full.
    pub dedup_unchecked: u64,
}

impl Output {
    /// A stateless rule's row (for a silence: with the message standing for it).
    fn stateless(
        row: serde_json::Map<String, serde_json::Value>,
        silence: Option<Message>,
    ) -> Self {
        Self {
            row,
            window: None,
            is_update: false,
            superseded: Vec::new(),
            silence,
        }
    }
}

/// A stateless rule's row for `msg`.
fn project(
    projection: &[Projection],
    msg: &Message,
    ctx: &mut Ctx<'_>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut row = serde_json::Map::new();
    for item in projection {
        match item {
            Projection::Wildcard => {
                if let serde_json::Value::Object(o) = &msg.payload {
                    row.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            Projection::Column { name, expr } => {
                row.insert(name.clone(), expr.eval(ctx).into_json());
            }
        }
    }
    row
}

/// The layout of [`Rule::checkpoint`]'s bytes; bumped on an incompatible change.
const CHECKPOINT_FORMAT: u32 = 1;

type Origins = std::collections::HashMap<String, Origin, foldhash::fast::RandomState>;
type SeriesStates =
    std::collections::HashMap<String, Vec<Option<DetectorState>>, foldhash::fast::RandomState>;

#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    origin: &'a str,
    stats: RuleStats,
    detectors: &'a SeriesStates,
    origins: &'a Origins,
    window: Option<(
        crate::window::OperatorStateRef<'a, Vec<Datum>>,
        &'a WatermarkTracker<u32>,
    )>,
}

#[derive(serde::Deserialize)]
struct Snapshot {
    format: u32,
    origin: String,
    stats: RuleStats,
    detectors: SeriesStates,
    #[serde(default)]
    origins: Origins,
    window: Option<(
        crate::window::OperatorState<Vec<Datum>>,
        WatermarkTracker<u32>,
    )>,
}

#[derive(Debug)]
struct Windowed {
    op: WindowOperator<Vec<Datum>>,
    watermark: WatermarkTracker<u32>,
    /// Reused per message so evaluating keys and arguments allocates nothing itself.
    keys: Vec<Datum>,
    args: Vec<Datum>,
    results: Vec<WindowResult<Vec<Datum>>>,
}

/// A compiled rule and its state.
#[derive(Debug)]
pub struct Rule {
    /// What the rule was compiled from (SQL and options), which a checkpoint must match.
    origin: String,
    plan: Plan,
    detectors: DetectorStates,
    windowed: Option<Windowed>,
    stats: RuleStats,
}

impl Rule {
    /// Parse, check and compile `sql`. Errors carry the line and column.
    pub fn new(sql: &str, options: RuleOptions) -> Result<Self, RulesError> {
        let plan = compile(sql)?;
        let windowed = match &plan.window {
            Some(w) => {
                let mut config =
                    WindowConfig::new(w.assigner).with_allowed_lateness(options.allowed_lateness);
                config.dedup = options.dedup;
                config.late_capacity = options.late_capacity;
                Some(Windowed {
                    op: WindowOperator::new(
                        config,
                        w.aggs.iter().map(|(s, _)| s.clone()).collect(),
                    )?,
                    watermark: WatermarkTracker::new(options.watermark)?,
                    keys: Vec::with_capacity(w.keys.len()),
                    args: Vec::with_capacity(w.aggs.len()),
                    results: Vec::new(),
                })
            }
            None => None,
        };
        Ok(Self {
            origin: format!("{sql}\n{options:?}"),
            detectors: DetectorStates {
                specs: plan.detectors.iter().map(|(s, _)| s.clone()).collect(),
                inputs: plan.detectors.iter().map(|(_, i)| i.clone()).collect(),
                series: Default::default(),
                origins: Default::default(),
                values: Vec::new(),
            },
            plan,
            windowed,
            stats: RuleStats::default(),
        })
    }

    /// The topic filter from `FROM`: subscribe the rule with it.
    pub fn filter(&self) -> &TopicFilter {
        &self.plan.filter
    }

    /// Whether the rule keeps state across messages (windows or detectors): what
    /// [`Rule::checkpoint`] is worth taking for.
    pub fn is_stateful(&self) -> bool {
        self.windowed.is_some() || !self.detectors.specs.is_empty()
    }

    /// Whether the rule aggregates over windows.
    pub fn is_windowed(&self) -> bool {
        self.windowed.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> RuleStats {
        let mut s = self.stats;
        if let Some(w) = &self.windowed {
            s.late_events = w.op.stats().late_events;
            s.duplicates = w.op.stats().duplicates;
            s.dedup_unchecked = w.op.stats().dedup_unchecked;
        }
        s
    }

    /// The current watermark of a windowed rule.
    pub fn watermark(&self) -> Option<Timestamp> {
        self.windowed.as_ref().and_then(|w| w.op.watermark())
    }

    /// Evaluate one message, appending rows to `out`: a stateless rule yields zero or one
    /// row; a windowed rule yields the windows this message completed (or re-fired).
    pub fn process(&mut self, msg: &Message, out: &mut Vec<Output>) {
        self.stats.messages += 1;
        if !self.plan.filter.matches(&msg.topic) {
            return;
        }
        // Event time progresses with every message of the stream, matched by WHERE or not.
        if let Some(w) = self.windowed.as_mut() {
            w.watermark
                .observe(&msg.partition, msg.time(), msg.received_at);
        }
        self.detectors.update(msg);
        let mut ctx = Ctx {
            msg: Some(msg),
            window: None,
            detectors: &self.detectors.values,
        };
        let passed = match &self.plan.predicate {
            Some(p) => p.eval(&mut ctx).is_true(),
            None => true,
        };
        if !passed {
            // A rejected message may still complete windows by moving the watermark.
            if let Some(w) = self.windowed.as_mut()
                && let Some(wm) = w.watermark.advance(msg.received_at)
            {
                w.op.advance_watermark(wm);
            }
            self.emit(out);
            return;
        }
        self.stats.matched += 1;
        let Some(w) = self.windowed.as_mut() else {
            let row = project(&self.plan.projection, msg, &mut ctx);
            self.stats.rows += 1;
            out.push(Output::stateless(row, None));
            return;
        };
        let Some(plan) = &self.plan.window else {
            return;
        };
        w.keys.clear();
        w.args.clear();
        for k in &plan.keys {
            w.keys.push(k.eval(&mut ctx));
        }
        for (_, arg) in &plan.aggs {
            w.args.push(match arg {
                Some(a) => a.eval(&mut ctx),
                None => Datum::Bool(true), // COUNT(*)
            });
        }
        let time = msg.time();
        let id = msg.message_id.as_deref().map(MessageId::of);
        let admission = w.op.process(w.keys.as_slice(), time, id, &w.args);
        if admission == Admission::Late {
            tracing::debug!(filter = %self.plan.filter, "late event");
        }
        if let Some(wm) = w.watermark.advance(msg.received_at) {
            w.op.advance_watermark(wm);
        }
        self.emit(out);
    }

    /// Re-evaluate the watermark at processing time `now` without a message (so idle
    /// partitions stop holding it back), appending rows of windows that fire.
    ///
    /// A stateless rule with `gap()` also reports the series that have gone silent: each is
    /// evaluated once per silence as a message with an empty payload from its last topic
    /// and identity, with the gaps that fired `true` (see [`Output::silence`]).
    pub fn advance(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        if let Some(w) = self.windowed.as_mut()
            && let Some(wm) = w.watermark.advance(now)
        {
            w.op.advance_watermark(wm);
        }
        self.emit(out);
        if self.windowed.is_none() && self.detectors.has_gap() {
            for (msg, values) in self.detectors.silences(now) {
                let mut ctx = Ctx {
                    msg: Some(&msg),
                    window: None,
                    detectors: &values,
                };
                let passed = match &self.plan.predicate {
                    Some(p) => p.eval(&mut ctx).is_true(),
                    None => true,
                };
                if !passed {
                    continue;
                }
                let row = project(&self.plan.projection, &msg, &mut ctx);
                self.stats.rows += 1;
                out.push(Output::stateless(row, Some(msg)));
            }
        }
    }

    /// End of input: fire every open window.
    pub fn flush(&mut self, out: &mut Vec<Output>) {
        if let Some(w) = self.windowed.as_mut() {
            w.op.advance_watermark(Timestamp::from_nanos(i64::MAX));
        }
        self.emit(out);
    }

    /// A checkpoint of the rule's state — open windows with their partial aggregates and
    /// duplicate sets, timers, watermarks, every detector's per-device state, counters — as
    /// bytes (CBOR) for [`Rule::restore`].
    pub fn checkpoint(&self) -> Result<Vec<u8>, RulesError> {
        let snapshot = SnapshotRef {
            format: CHECKPOINT_FORMAT,
            origin: &self.origin,
            stats: self.stats,
            detectors: &self.detectors.series,
            origins: &self.detectors.origins,
            window: self.windowed.as_ref().map(|w| (w.op.state(), &w.watermark)),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&snapshot, &mut bytes)
            .map_err(|e| RulesError::config("checkpoint", e.to_string()))?;
        Ok(bytes)
    }

    /// Continue from a checkpoint of a rule compiled from the same SQL and options; a
    /// checkpoint of anything else (or damaged) is refused and this rule's state kept.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), RulesError> {
        let bad = |m: String| RulesError::config("checkpoint", m);
        let snapshot: Snapshot =
            ciborium::from_reader(bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
        if snapshot.format != CHECKPOINT_FORMAT {
            return Err(bad(format!(
                "format {} (this build reads {CHECKPOINT_FORMAT})",
                snapshot.format
            )));
        }
        if snapshot.origin != self.origin {
            return Err(bad("taken from another definition of the rule".to_owned()));
        }
        let width = self.detectors.specs.len();
        if snapshot.detectors.values().any(|v| v.len() != width) {
            return Err(bad("its detectors do not fit this rule".to_owned()));
        }
        match (&mut self.windowed, snapshot.window) {
            (Some(w), Some((op, watermark))) => {
                w.op.restore(op)?;
                w.watermark = watermark;
            }
            (None, None) => {}
            _ => return Err(bad("windowed and stateless rules differ".to_owned())),
        }
        self.detectors.series = snapshot.detectors;
        self.detectors.origins = snapshot.origins;
        self.stats = snapshot.stats;
        Ok(())
    }

    /// Take the late events collected (key values, event time, aggregate inputs).
    pub fn drain_late(&mut self) -> Vec<LateEvent<Vec<Datum>>> {
        self.windowed
            .as_mut()
            .map(|w| w.op.drain_late().collect())
            .unwrap_or_default()
    }

    /// Turn fired window results into rows (HAVING, then the projection).
    fn emit(&mut self, out: &mut Vec<Output>) {
        let (Some(w), Some(plan)) = (self.windowed.as_mut(), self.plan.window.as_ref()) else {
            return;
        };
        w.results.extend(w.op.drain_results());
        for r in w.results.drain(..) {
            let mut ctx = Ctx {
                msg: None,
                window: Some(WindowRow {
                    keys: &r.key,
                    aggs: &r.aggregates,
                    start: r.window_start,
                    end: r.window_end,
                }),
                detectors: &[],
            };
            if let Some(h) = &plan.having
                && !h.eval(&mut ctx).is_true()
            {
                self.stats.having_rejected += 1;
                continue;
            }
            let mut row = serde_json::Map::new();
            for item in &self.plan.projection {
                if let Projection::Column { name, expr } = item {
                    row.insert(name.clone(), expr.eval(&mut ctx).into_json());
                }
            }
            self.stats.rows += 1;
            out.push(Output {
                row,
                window: Some(Window {
                    start: r.window_start,
                    end: r.window_end,
                }),
                is_update: r.is_update,
                silence: None,
                superseded: r.superseded,
            });
        }
    }
}
