//! The keyed event-time window operator.
//!
//! [`WindowOperator::process`] takes one event (key, event time, optional message id, one
//! input per aggregate) and [`WindowOperator::advance_watermark`] moves event time; fired
//! and re-fired windows collect in an output buffer ([`WindowOperator::drain_results`]) and
//! events too late for any window in the late output ([`WindowOperator::drain_late`]).
//!
//! State: per key, the panes (aligned windows) or sessions that are still open or within
//! allowed lateness. Timers are one ordered set of `(time, kind, key slot)`: a *fire* timer
//! at each window end, a *cleanup* timer at `end + allowed_lateness`. Advancing the
//! watermark pops due timers in time order, so results come out ordered by window end (then
//! by the order keys first appeared) — deterministic for a given input. State for a window
//! is purged once `W ≥ end + allowed_lateness`; a key with no state left is forgotten, so
//! memory is bounded by the keys active within the lateness horizon.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use ferrite_core::Timestamp;

use crate::agg::{Accumulator, AggSpec, AnyAccumulator, DedupPolicy, DedupSet, MessageId, Seen};
use crate::datum::Datum;
use crate::error::RulesError;
use crate::window::assigner::{Assign, Panes, WindowAssigner};
use crate::window::watermark::nanos;

/// Window operator settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowConfig {
    /// How events map to windows.
    pub assigner: WindowAssigner,
    /// How long after a window fired late events still update it (each such event re-fires
    /// the window with `is_update = true`). Zero: late events go to the late output.
    pub allowed_lateness: Duration,
    /// How message ids are remembered per pane or session for duplicate suppression (past
    /// its capacity, events are admitted unchecked and counted).
    pub dedup: DedupPolicy,
    /// Most late events buffered in the late output between drains; beyond it they are only
    /// counted (`WindowStats::late_dropped`).
    pub late_capacity: usize,
}

impl WindowConfig {
    /// Settings with no allowed lateness and default caps.
    pub fn new(assigner: WindowAssigner) -> Self {
        Self {
            assigner,
            allowed_lateness: Duration::ZERO,
            dedup: DedupPolicy::default(),
            late_capacity: 1024,
        }
    }

    /// The same settings with `allowed_lateness`.
    pub fn with_allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness;
        self
    }
}

/// A half-open window `[start, end)`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Window {
    /// First instant inside the window.
    pub start: Timestamp,
    /// First instant after the window.
    pub end: Timestamp,
}

impl Window {
    fn new(start: i64, end: i64) -> Self {
        Self {
            start: Timestamp::from_nanos(start),
            end: Timestamp::from_nanos(end),
        }
    }
}

/// One firing of one window for one key.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult<K> {
    /// The group key.
    pub key: K,
    /// Window start (inclusive).
    pub window_start: Timestamp,
    /// Window end (exclusive).
    pub window_end: Timestamp,
    /// One result per [`AggSpec`], in order.
    pub aggregates: Vec<Datum>,
    /// `false` for the first firing when the watermark passes the end; `true` when a late
    /// event (within allowed lateness) changed a window that already fired — the new result
    /// replaces the earlier one.
    pub is_update: bool,
    /// Session windows only: earlier-emitted windows of this key that this result replaces
    /// because a late event merged them (e.g. bridged two sessions). Empty otherwise.
    pub superseded: Vec<Window>,
}

/// An event that arrived after every window it belongs to was purged.
#[derive(Clone, Debug, PartialEq)]
pub struct LateEvent<K> {
    /// The group key.
    pub key: K,
    /// Its event time.
    pub event_time: Timestamp,
    /// Its aggregate inputs.
    pub values: Vec<Datum>,
}

/// What [`WindowOperator::process`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Added to its window(s); nothing fired yet.
    Accepted,
    /// Added to windows that had already fired (or whose end the watermark had passed):
    /// results were emitted at once.
    Refired,
    /// Too late for every window: sent to the late output and counted.
    Late,
    /// Its message id was already seen in the window: dropped and counted.
    Duplicate,
}

/// Counters; every dropped or unusual event is counted somewhere here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowStats {
    /// Events offered to `process`.
    pub events: u64,
    /// Events too late for any window.
    pub late_events: u64,
    /// Late events not kept because the late output was full.
    pub late_dropped: u64,
    /// Events dropped as duplicates.
    pub duplicates: u64,
    /// Events admitted without a duplicate check because the id set was full.
    pub dedup_unchecked: u64,
    /// First firings.
    pub fired: u64,
    /// Re-firings (`is_update`).
    pub updates: u64,
}

/// Timer kinds; at equal times fires run before cleanups.
const FIRE: u8 = 0;
const CLEANUP: u8 = 1;

/// Partial aggregates of one pane (aligned windows).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Pane {
    accs: Vec<AnyAccumulator>,
    dedup: DedupSet,
}

/// One session window.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Session {
    start: i64,
    end: i64,
    accs: Vec<AnyAccumulator>,
    dedup: DedupSet,
    /// Changed since last emitted (or never emitted).
    pending: bool,
    /// Windows emitted for this session or the sessions merged into it, which a new result
    /// supersedes.
    emitted: Vec<Window>,
}

/// Everything kept for one key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KeyState<K> {
    key: K,
    /// Aligned windows: panes ordered by start.
    panes: VecDeque<(i64, Pane)>,
    /// Session windows: disjoint, non-touching, ordered by start.
    sessions: Vec<Session>,
}

/// A keyed event-time window operator over keys `K`.
#[derive(Debug)]
pub struct WindowOperator<K> {
    assign: Assign,
    lateness: i64,
    dedup: DedupPolicy,
    late_capacity: usize,
    specs: Vec<AggSpec>,
    /// A template of empty accumulators, cloned for each new pane or session.
    empty: Vec<AnyAccumulator>,
    /// Key → slot in `slots`.
    index: HashMap<K, u32, foldhash::fast::RandomState>,
    /// Key states; `None` slots are on `free`.
    slots: Vec<Option<KeyState<K>>>,
    free: Vec<u32>,
    /// `(time, kind, slot)`; stale entries (for purged or merged state) are harmless: a
    /// timer only acts on state that is actually due at its time.
    timers: BTreeSet<(i64, u8, u32)>,
    watermark: Option<i64>,
    results: Vec<WindowResult<K>>,
    late: Vec<LateEvent<K>>,
    stats: WindowStats,
}

/// The state of a [`WindowOperator`], as a checkpoint holds it: the keys' panes or sessions
/// with their partial aggregates and duplicate sets, the timers and the watermark. The
/// configuration is not in it: restore into an operator built from the same rule.
#[derive(serde::Deserialize)]
pub struct OperatorState<K> {
    slots: Vec<Option<KeyState<K>>>,
    free: Vec<u32>,
    timers: BTreeSet<(i64, u8, u32)>,
    watermark: Option<i64>,
    stats: WindowStats,
}

/// [`OperatorState`] borrowed from a live operator, for writing a checkpoint without a copy;
/// the same fields in the same order, so it reads back as an `OperatorState`.
#[derive(serde::Serialize)]
pub struct OperatorStateRef<'a, K> {
    slots: &'a [Option<KeyState<K>>],
    free: &'a [u32],
    timers: &'a BTreeSet<(i64, u8, u32)>,
    watermark: Option<i64>,
    stats: WindowStats,
}

impl<K: Clone + Eq + Hash> WindowOperator<K> {
    /// The state to checkpoint.
    pub fn state(&self) -> OperatorStateRef<'_, K> {
        OperatorStateRef {
            slots: &self.slots,
            free: &self.free,
            timers: &self.timers,
            watermark: self.watermark,
            stats: self.stats,
        }
    }

    /// Take over a checkpointed state (replacing this operator's). The number of aggregates
    /// of every pane and session must be this operator's, else the state is refused.
    pub fn restore(&mut self, state: OperatorState<K>) -> Result<(), RulesError> {
        let aggs = self.empty.len();
        let fits = state.slots.iter().flatten().all(|k| {
            k.panes.iter().all(|(_, p)| p.accs.len() == aggs)
                && k.sessions.iter().all(|s| s.accs.len() == aggs)
        });
        let slots = u32::try_from(state.slots.len()).unwrap_or(u32::MAX);
        if !fits || state.free.iter().any(|&f| f >= slots) {
            return Err(RulesError::config(
                "checkpoint",
                "its windows do not fit this rule's aggregates",
            ));
        }
        self.index = state
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((k.as_ref()?.key.clone(), u32::try_from(i).ok()?)))
            .collect();
        self.slots = state.slots;
        self.free = state.free;
        self.timers = state.timers;
        self.watermark = state.watermark;
        self.stats = state.stats;
        self.results.clear();
        self.late.clear();
        Ok(())
    }

    /// An operator computing `aggs` over windows of `config`.
    pub fn new(config: WindowConfig, aggs: Vec<AggSpec>) -> Result<Self, RulesError> {
        for spec in &aggs {
            spec.validate()?;
        }
        config.dedup.validate()?;
        Ok(Self {
            assign: config.assigner.compile()?,
            lateness: nanos("allowed lateness", config.allowed_lateness)?,
            dedup: config.dedup,
            late_capacity: config.late_capacity,
            empty: aggs.iter().map(AggSpec::accumulator).collect(),
            specs: aggs,
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
            watermark: None,
            results: Vec::new(),
            late: Vec::new(),
            stats: WindowStats::default(),
        })
    }

    /// The aggregates computed, in result order.
    pub fn aggregates(&self) -> &[AggSpec] {
        &self.specs
    }

    /// The current watermark (`None` before the first advance).
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark.map(Timestamp::from_nanos)
    }

    /// Counters.
    pub fn stats(&self) -> WindowStats {
        self.stats
    }

    /// Keys with state.
    pub fn keys(&self) -> usize {
        self.index.len()
    }

    /// Panes plus sessions held over all keys: the operator's state size.
    pub fn open_state(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.panes.len() + s.sessions.len())
            .sum()
    }

    /// Pending timers (including stale ones not yet reached).
    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    /// Take the results emitted so far.
    pub fn drain_results(&mut self) -> std::vec::Drain<'_, WindowResult<K>> {
        self.results.drain(..)
    }

    /// Take the late events collected so far.
    pub fn drain_late(&mut self) -> std::vec::Drain<'_, LateEvent<K>> {
        self.late.drain(..)
    }

    fn is_past(&self, t: i64) -> bool {
        self.watermark.is_some_and(|w| w >= t)
    }

    fn slot_of<Q>(&mut self, key: &Q) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(&slot) = self.index.get(key) {
            return slot;
        }
        let state = KeyState {
            key: key.to_owned(),
            panes: VecDeque::new(),
            sessions: Vec::new(),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(state);
                s
            }
            None => {
                self.slots.push(Some(state));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key.to_owned(), slot);
        slot
    }

    fn send_late<Q>(&mut self, key: &Q, t: i64, values: &[Datum]) -> Admission
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        self.stats.late_events += 1;
        if self.late.len() < self.late_capacity {
            self.late.push(LateEvent {
                key: key.to_owned(),
                event_time: Timestamp::from_nanos(t),
                values: values.to_vec(),
            });
        } else {
            self.stats.late_dropped += 1;
        }
        Admission::Late
    }

    /// Offer one event. `values` holds one input per aggregate (missing ones count as
    /// `NULL`). With `id`, an event whose id was already seen in its pane or session is
    /// dropped as a duplicate.
    pub fn process<Q>(
        &mut self,
        key: &Q,
        time: Timestamp,
        id: Option<MessageId>,
        values: &[Datum],
    ) -> Admission
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.stats.events += 1;
        match self.assign {
            Assign::Aligned { size, slide, pane } => self.process_aligned(
                Panes { size, slide, pane },
                key,
                time.as_nanos(),
                id,
                values,
            ),
            Assign::Session { gap } => self.process_session(gap, key, time.as_nanos(), id, values),
        }
    }

    fn process_aligned<Q>(
        &mut self,
        p: Panes,
        key: &Q,
        t: i64,
        id: Option<MessageId>,
        values: &[Datum],
    ) -> Admission
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let ps = p.pane_start(t);
        let cleanup_at = p.last_window_end(ps).saturating_add(self.lateness);
        if self.is_past(cleanup_at) {
            return self.send_late(key, t, values);
        }
        let slot = self.slot_of(key);
        let wm = self.watermark;
        let Some(state) = self.slots[slot as usize].as_mut() else {
            return Admission::Accepted; // unreachable: slot_of just filled it
        };
        let idx = state.panes.partition_point(|(s, _)| *s < ps);
        let exists = state.panes.get(idx).is_some_and(|(s, _)| *s == ps);
        // Windows of this pane whose end the watermark already passed but which are within
        // allowed lateness: the event re-fires them (windows past `end + lateness` are gone
        // and ignore it, as in Flink). Whether each had data decides first firing vs update.
        let lateness = self.lateness;
        let mut refire: Vec<(i64, bool)> = Vec::new();
        if wm.is_some_and(|w| w >= p.first_window_start(ps).saturating_add(p.size)) {
            for s in p.window_starts(ps) {
                let end = s.saturating_add(p.size);
                if wm.is_some_and(|w| w >= end && w < end.saturating_add(lateness)) {
                    let had_data = exists || {
                        let lo = state.panes.partition_point(|(x, _)| *x < s);
                        let hi = state.panes.partition_point(|(x, _)| *x < end);
                        lo < hi
                    };
                    refire.push((s, had_data));
                }
            }
        }
        if !exists {
            state.panes.insert(
                idx,
                (
                    ps,
                    Pane {
                        accs: self.empty.clone(),
                        dedup: DedupSet::default(),
                    },
                ),
            );
            for s in p.window_starts(ps) {
                let end = s.saturating_add(p.size);
                if wm.is_none_or(|w| w < end) {
                    self.timers.insert((end, FIRE, slot));
                }
            }
            self.timers.insert((cleanup_at, CLEANUP, slot));
        }
        let pane = &mut state.panes[idx].1;
        if let Some(id) = id {
            match pane.dedup.check(id, &self.dedup) {
                Seen::Duplicate => {
                    self.stats.duplicates += 1;
                    return Admission::Duplicate;
                }
                Seen::Unchecked => self.stats.dedup_unchecked += 1,
                Seen::New => {}
            }
        }
        let time = Timestamp::from_nanos(t);
        for (i, acc) in pane.accs.iter_mut().enumerate() {
            acc.update(time, values.get(i).unwrap_or(&Datum::Null));
        }
        if refire.is_empty() {
            return Admission::Accepted;
        }
        for (s, had_data) in refire {
            self.emit_aligned(p, slot, s, had_data);
        }
        Admission::Refired
    }

    /// Merge the panes of window `[s, s + size)` of `slot` and emit the result.
    fn emit_aligned(&mut self, p: Panes, slot: u32, s: i64, is_update: bool) {
        let Some(state) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let end = s.saturating_add(p.size);
        let lo = state.panes.partition_point(|(x, _)| *x < s);
        let hi = state.panes.partition_point(|(x, _)| *x < end);
        let Some((_, first)) = state.panes.get(lo).filter(|_| lo < hi) else {
            return;
        };
        let aggregates = if hi - lo == 1 {
            first.accs.iter().map(Accumulator::finish).collect()
        } else {
            let mut accs = first.accs.clone();
            for (_, pane) in state.panes.range(lo + 1..hi) {
                for (a, b) in accs.iter_mut().zip(&pane.accs) {
                    a.merge(b);
                }
            }
            accs.iter().map(Accumulator::finish).collect()
        };
        let key = state.key.clone();
        if is_update {
            self.stats.updates += 1;
        } else {
            self.stats.fired += 1;
        }
        self.results.push(WindowResult {
            key,
            window_start: Timestamp::from_nanos(s),
            window_end: Timestamp::from_nanos(end),
            aggregates,
            is_update,
            superseded: Vec::new(),
        });
    }

    fn process_session<Q>(
        &mut self,
        gap: i64,
        key: &Q,
        t: i64,
        id: Option<MessageId>,
        values: &[Datum],
    ) -> Admission
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (new_start, new_end) = (t, t.saturating_add(gap));
        // Which existing sessions would merge with [t, t + gap)? (Read-only first, so a
        // late event leaves no trace.)
        let (lo, hi, merged_start, merged_end) = match self.index.get(key) {
            Some(&slot) => match self.slots[slot as usize].as_ref() {
                Some(st) => {
                    // Overlapping or touching: s.start ≤ new_end && s.end ≥ new_start.
                    let lo = st.sessions.partition_point(|s| s.end < new_start);
                    let hi = st.sessions.partition_point(|s| s.start <= new_end);
                    let (ms, me) = st.sessions[lo..hi.max(lo)]
                        .iter()
                        .fold((new_start, new_end), |(a, b), s| {
                            (a.min(s.start), b.max(s.end))
                        });
                    if let Some(id) = id
                        && st.sessions[lo..hi.max(lo)]
                            .iter()
                            .any(|s| s.dedup.contains(id))
                    {
                        self.stats.duplicates += 1;
                        return Admission::Duplicate;
                    }
                    (lo, hi.max(lo), ms, me)
                }
                None => (0, 0, new_start, new_end),
            },
            None => (0, 0, new_start, new_end),
        };
        if self.is_past(merged_end.saturating_add(self.lateness)) {
            return self.send_late(key, t, values);
        }
        let slot = self.slot_of(key);
        let dedup = self.dedup;
        let Some(state) = self.slots[slot as usize].as_mut() else {
            return Admission::Accepted; // unreachable: slot_of just filled it
        };
        let mut merged: Vec<Session> = state.sessions.drain(lo..hi).collect();
        let mut session = match merged.is_empty() {
            true => Session {
                start: merged_start,
                end: merged_end,
                accs: self.empty.clone(),
                dedup: DedupSet::default(),
                pending: true,
                emitted: Vec::new(),
            },
            false => {
                let mut base = merged.remove(0);
                for other in &merged {
                    for (a, b) in base.accs.iter_mut().zip(&other.accs) {
                        a.merge(b);
                    }
                    base.dedup.merge(&other.dedup, &dedup);
                    base.emitted.extend_from_slice(&other.emitted);
                }
                base.start = merged_start;
                base.end = merged_end;
                base.pending = true;
                base
            }
        };
        if let Some(id) = id
            && session.dedup.check(id, &dedup) == Seen::Unchecked
        {
            self.stats.dedup_unchecked += 1;
        }
        let time = Timestamp::from_nanos(t);
        for (i, acc) in session.accs.iter_mut().enumerate() {
            acc.update(time, values.get(i).unwrap_or(&Datum::Null));
        }
        let end = session.end;
        state.sessions.insert(lo, session);
        // Not late, so `end + lateness` is still ahead of the watermark.
        self.timers
            .insert((end.saturating_add(self.lateness), CLEANUP, slot));
        if self.is_past(end) {
            self.emit_session(slot, lo);
            Admission::Refired
        } else {
            self.timers.insert((end, FIRE, slot));
            Admission::Accepted
        }
    }

    /// Emit session `i` of `slot` if it has unemitted changes.
    fn emit_session(&mut self, slot: u32, i: usize) {
        let Some(state) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(s) = state.sessions.get_mut(i).filter(|s| s.pending) else {
            return;
        };
        let window = Window::new(s.start, s.end);
        let is_update = !s.emitted.is_empty();
        let mut superseded: Vec<Window> = s.emitted.drain(..).filter(|w| *w != window).collect();
        superseded.sort();
        superseded.dedup();
        s.emitted.push(window);
        s.pending = false;
        let aggregates = s.accs.iter().map(Accumulator::finish).collect();
        let key = state.key.clone();
        if is_update {
            self.stats.updates += 1;
        } else {
            self.stats.fired += 1;
        }
        self.results.push(WindowResult {
            key,
            window_start: window.start,
            window_end: window.end,
            aggregates,
            is_update,
            superseded,
        });
    }

    /// Move the watermark to `watermark` (a lower value is ignored: watermarks never go
    /// back), firing every window with `end ≤ watermark` and purging state with
    /// `end + allowed_lateness ≤ watermark`. `Timestamp::from_nanos(i64::MAX)` flushes
    /// everything (end of input).
    pub fn advance_watermark(&mut self, watermark: Timestamp) {
        let w = watermark.as_nanos();
        if self.watermark.is_some_and(|cur| cur >= w) {
            return;
        }
        self.watermark = Some(w);
        while let Some(&(t, kind, slot)) = self.timers.first() {
            if t > w {
                break;
            }
            self.timers.pop_first();
            match (kind, self.assign) {
                (FIRE, Assign::Aligned { size, slide, pane }) => {
                    self.emit_aligned(
                        Panes { size, slide, pane },
                        slot,
                        t.saturating_sub(size),
                        false,
                    );
                }
                (FIRE, Assign::Session { .. }) => {
                    let due = self
                        .slots
                        .get(slot as usize)
                        .and_then(Option::as_ref)
                        .map(|st| st.sessions.iter().position(|s| s.end == t && s.pending));
                    if let Some(Some(i)) = due {
                        self.emit_session(slot, i);
                    }
                }
                // Purge as of the timer's own time, not the target watermark: state due
                // later still has fire timers pending in this same loop.
                _ => self.cleanup(slot, t),
            }
        }
    }

    fn cleanup(&mut self, slot: u32, w: i64) {
        let lateness = self.lateness;
        let panes = match self.assign {
            Assign::Aligned { size, slide, pane } => Some(Panes { size, slide, pane }),
            Assign::Session { .. } => None,
        };
        let Some(state) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Some(p) = panes {
            while state
                .panes
                .front()
                .is_some_and(|(ps, _)| p.last_window_end(*ps).saturating_add(lateness) <= w)
            {
                state.panes.pop_front();
            }
        }
        state
            .sessions
            .retain(|s| s.end.saturating_add(lateness) > w);
        if state.panes.is_empty() && state.sessions.is_empty() {
            if let Some(st) = self.slots[slot as usize].take() {
                self.index.remove(&st.key);
            }
            self.free.push(slot);
        }
    }
}
