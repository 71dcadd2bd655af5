//! Alarms: the lifecycle of one alarm as a pure state machine (no clock, no storage).
//!
//! An alarm belongs to one *key* — (rule, device, alarm type) — and at most one alarm per key
//! is *open* (any state but [`AlarmState::Cleared`]). The states and what moves between them:
//!
//! ```text
//!                 raise (new key, or the key's last alarm is cleared) → a new alarm
//!                   │
//!                   ▼          ack                         raise ≥ severity: deduped
//!   ┌──────────▶ active ──────────────▶ acknowledged ◀──┐  (count += 1, last values)
//!   │             │  ▲   escalation (higher severity)  │  │
//!   │   rule clear│  └─────────────────────────────────┘  │
//!   │             ▼                                       │ rule clear
//!   └─raise── cleared_unacknowledged ──ack──▶ cleared ◀───┘
//!                                               ▲
//!                     operator clear (from any open state)
//! ```
//!
//! - **raise** on an open alarm never opens a second one: it counts the raise and keeps the
//!   row's values and message (*deduped*, nothing published) unless its severity is higher,
//!   which *escalates* the alarm (published; an acknowledged alarm becomes active again and
//!   needs a new acknowledgement). A lower severity leaves the alarm's severity as it is.
//!   A raise of a `cleared_unacknowledged` alarm re-activates it (`raised` again).
//! - **clear** by a rule moves `active` to `cleared_unacknowledged` (the condition is gone,
//!   nobody has seen it yet) and `acknowledged` to `cleared`; on a cleared alarm it does
//!   nothing. An **operator clear** closes any open alarm; a closed one is an error.
//! - **ack** moves `active` to `acknowledged` and `cleared_unacknowledged` to `cleared`; an
//!   acknowledged or closed alarm is an error ([`AlarmError`], HTTP 409).
//!
//! **Flapping.** Every raise↔clear change driven by rules (a re-raise, a rule clear, or a new
//! alarm for a key whose last alarm was cleared) is a *flip*. When an alarm has made more than
//! [`AlarmPolicy::flap_threshold`] flips within [`AlarmPolicy::flap_window`] it becomes
//! *flapping*: one `flapping` event is published and the `raised`/`cleared` events of further
//! flips are suppressed (counted in [`Change::suppressed`]) until it has been quiet — no flip —
//! for a whole window; the next flip after that is published normally with `flapping: false`.
//! Flip times carry over to the key's next alarm, so closing and reopening does not reset
//! the detection. Escalations and operator actions are always published.

use std::fmt;
use std::time::Duration;

use ferrite_core::Timestamp;
use serde::{Deserialize, Serialize};

/// Most transitions kept in an alarm's history (oldest dropped first).
pub const HISTORY: usize = 32;

/// How bad it is, from least to most severe (the order escalation follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Worth a look.
    Warning,
    /// Needs attention.
    Minor,
    /// Needs attention soon.
    Major,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// Every severity, least severe first.
    pub const ALL: [Self; 5] = [
        Self::Info,
        Self::Warning,
        Self::Minor,
        Self::Major,
        Self::Critical,
    ];

    /// The name used in JSON and on the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alarm is in its lifecycle (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Raised, not acknowledged.
    Active,
    /// Raised and acknowledged by an operator.
    Acknowledged,
    /// The condition cleared before anyone acknowledged it.
    ClearedUnacknowledged,
    /// Closed: cleared and acknowledged, or cleared by an operator.
    Cleared,
}

impl AlarmState {
    /// Every state.
    pub const ALL: [Self; 4] = [
        Self::Active,
        Self::Acknowledged,
        Self::ClearedUnacknowledged,
        Self::Cleared,
    ];

    /// Whether the alarm is still open (a raise of its key folds into it).
    pub const fn is_open(self) -> bool {
        !matches!(self, Self::Cleared)
    }

    /// The name used in JSON and on the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Acknowledged => "acknowledged",
            Self::ClearedUnacknowledged => "cleared_unacknowledged",
            Self::Cleared => "cleared",
        }
    }
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle event, as published (`$ferrite/alarms/{rule}/{device}/{event}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmEvent {
    /// A new alarm, or a cleared-unacknowledged one active again.
    Raised,
    /// The severity went up.
    Escalated,
    /// An operator acknowledged it.
    Acknowledged,
    /// Cleared by a rule or an operator.
    Cleared,
    /// It started flapping; its raised/cleared events are suppressed for now.
    Flapping,
}

impl AlarmEvent {
    /// The topic level and JSON name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Raised => "raised",
            Self::Escalated => "escalated",
            Self::Acknowledged => "acknowledged",
            Self::Cleared => "cleared",
            Self::Flapping => "flapping",
        }
    }
}

impl fmt::Display for AlarmEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flap detection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmPolicy {
    /// More flips than this within `flap_window` make an alarm flapping.
    pub flap_threshold: u32,
    /// The window flips are counted in, and the quiet time that ends flapping.
    pub flap_window: Duration,
}

impl Default for AlarmPolicy {
    fn default() -> Self {
        Self {
            flap_threshold: 6,
            flap_window: Duration::from_secs(60),
        }
    }
}

/// One entry of an alarm's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When.
    #[serde(with = "rfc3339")]
    pub at: Timestamp,
    /// What happened.
    pub event: AlarmEvent,
    /// The state after it.
    pub state: AlarmState,
    /// The severity after it.
    pub severity: Severity,
    /// Who: `rule:{name}` or the operator's actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether its publication was suppressed because the alarm was flapping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed: bool,
}

/// One alarm: what raised it, where it is in its lifecycle, and how it got there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Unique, increasing in creation order.
    pub id: u64,
    /// The rule whose action raised it.
    pub rule: String,
    /// The device (client id) it is about.
    pub device: String,
    /// The alarm type (the action's `alarm`).
    #[serde(rename = "type")]
    pub alarm_type: String,
    /// The highest severity it was raised with.
    pub severity: Severity,
    /// Its state.
    pub state: AlarmState,
    /// Whether it is flapping (its raised/cleared events are not published).
    pub flapping: bool,
    /// Raises folded into it, including the first.
    pub count: u64,
    /// The first raise.
    #[serde(with = "rfc3339")]
    pub first_raised_at: Timestamp,
    /// The latest raise.
    #[serde(with = "rfc3339")]
    pub last_raised_at: Timestamp,
    /// The latest raise's rendered message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The latest raise's output row.
    #[serde(default)]
    pub values: serde_json::Map<String, serde_json::Value>,
    /// When it was acknowledged.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Timestamp>,
    /// Who acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// The acknowledgement's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_note: Option<String>,
    /// When it was last cleared.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Timestamp>,
    /// Who cleared it: `rule:{name}` or the operator's actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<String>,
    /// The latest [`HISTORY`] transitions, oldest first.
    #[serde(default)]
    pub history: Vec<Transition>,
    /// Times of the flips within the flap window (for flap detection).
    #[serde(default, with = "rfc3339_vec", skip_serializing_if = "Vec::is_empty")]
    pub flips: Vec<Timestamp>,
}

/// A raise, as a rule action asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Raise {
    /// The raising rule.
    pub rule: String,
    /// The device.
    pub device: String,
    /// The alarm type.
    pub alarm_type: String,
    /// Its severity.
    pub severity: Severity,
    /// The rendered message.
    pub message: Option<String>,
    /// The output row.
    pub values: serde_json::Map<String, serde_json::Value>,
    /// When: processing time (the server's alarm store sets it from its clock, so flap
    /// detection and rate limits never depend on devices' clocks).
    pub at: Timestamp,
}

/// What one operation did to an alarm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Events to publish, in order.
    pub events: Vec<AlarmEvent>,
    /// Events not published because the alarm is flapping.
    pub suppressed: u64,
    /// A raise folded into the open alarm without any event.
    pub deduped: bool,
    /// A raise that (re)activated the alarm (new, or from `cleared_unacknowledged`).
    pub raised: bool,
}

/// Why an operator's request does not apply to an alarm.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlarmError {
    /// Acknowledging an alarm that is already acknowledged.
    #[error("alarm {id} is already acknowledged")]
    AlreadyAcknowledged {
        /// The alarm.
        id: u64,
    },
    /// Acknowledging or clearing a closed alarm.
    #[error("alarm {id} is cleared and closed")]
    Closed {
        /// The alarm.
        id: u64,
    },
}

impl ferrite_core::Classify for AlarmError {
    fn kind(&self) -> ferrite_core::ErrorKind {
        ferrite_core::ErrorKind::Conflict
    }
}

impl Alarm {
    /// A new alarm with id `id` for `raise`; `previous` is the key's last (cleared) alarm,
    /// whose recent flips carry over.
    pub fn open(
        id: u64,
        raise: Raise,
        previous: Option<&Alarm>,
        policy: &AlarmPolicy,
    ) -> (Self, Change) {
        let mut alarm = Self {
            id,
            rule: raise.rule,
            device: raise.device,
            alarm_type: raise.alarm_type,
            severity: raise.severity,
            state: AlarmState::Active,
            flapping: false,
            count: 1,
            first_raised_at: raise.at,
            last_raised_at: raise.at,
            message: raise.message,
            values: raise.values,
            acknowledged_at: None,
            acknowledged_by: None,
            ack_note: None,
            cleared_at: None,
            cleared_by: None,
            history: Vec::new(),
            flips: Vec::new(),
        };
        let by = Some(format!("rule:{}", alarm.rule));
        let mut change = Change {
            raised: true,
            ..Change::default()
        };
        // A reopening right after the last alarm closed is a flip of the same condition.
        let flip = previous.filter(|p| !p.state.is_open()).map(|p| {
            alarm.flapping = p.flapping;
            alarm.flips.clone_from(&p.flips);
        });
        if flip.is_some() {
            alarm.flip(AlarmEvent::Raised, raise.at, by, policy, &mut change);
        } else {
            alarm.record(AlarmEvent::Raised, raise.at, by, None, &mut change);
        }
        (alarm, change)
    }

    /// Fold `raise` into this (open) alarm.
    pub fn raise(&mut self, raise: Raise, policy: &AlarmPolicy) -> Change {
        let mut change = Change::default();
        self.count += 1;
        self.last_raised_at = raise.at;
        self.message = raise.message;
        self.values = raise.values;
        let by = Some(format!("rule:{}", raise.rule));
        let escalates = raise.severity > self.severity;
        if escalates {
            self.severity = raise.severity;
        }
        match self.state {
            AlarmState::ClearedUnacknowledged | AlarmState::Cleared => {
                self.state = AlarmState::Active;
                self.cleared_at = None;
                self.cleared_by = None;
                change.raised = true;
                self.flip(AlarmEvent::Raised, raise.at, by, policy, &mut change);
            }
            AlarmState::Active | AlarmState::Acknowledged if escalates => {
                self.state = AlarmState::Active;
                self.record(AlarmEvent::Escalated, raise.at, by, None, &mut change);
            }
            AlarmState::Active | AlarmState::Acknowledged => change.deduped = true,
        }
        change
    }

    /// A rule's clear: `None` when there is nothing to clear (the alarm is cleared already).
    pub fn clear_by_rule(
        &mut self,
        rule: &str,
        at: Timestamp,
        policy: &AlarmPolicy,
    ) -> Option<Change> {
        let next = match self.state {
            AlarmState::Active => AlarmState::ClearedUnacknowledged,
            AlarmState::Acknowledged => AlarmState::Cleared,
            AlarmState::ClearedUnacknowledged | AlarmState::Cleared => return None,
        };
        let mut change = Change::default();
        let by = format!("rule:{rule}");
        self.state = next;
        self.cleared_at = Some(at);
        self.cleared_by = Some(by.clone());
        self.flip(AlarmEvent::Cleared, at, Some(by), policy, &mut change);
        Some(change)
    }

    /// An operator's clear: closes any open alarm.
    pub fn clear_by_operator(
        &mut self,
        by: &str,
        note: Option<String>,
        at: Timestamp,
    ) -> Result<Change, AlarmError> {
        if !self.state.is_open() {
            return Err(AlarmError::Closed { id: self.id });
        }
        let mut change = Change::default();
        self.state = AlarmState::Cleared;
        self.cleared_at = Some(at);
        self.cleared_by = Some(by.to_owned());
        self.record(
            AlarmEvent::Cleared,
            at,
            Some(by.to_owned()),
            note,
            &mut change,
        );
        Ok(change)
    }

    /// An operator's acknowledgement.
    pub fn acknowledge(
        &mut self,
        by: &str,
        note: Option<String>,
        at: Timestamp,
    ) -> Result<Change, AlarmError> {
        self.state = match self.state {
            AlarmState::Active => AlarmState::Acknowledged,
            AlarmState::ClearedUnacknowledged => AlarmState::Cleared,
            AlarmState::Acknowledged => {
                return Err(AlarmError::AlreadyAcknowledged { id: self.id });
            }
            AlarmState::Cleared => return Err(AlarmError::Closed { id: self.id }),
        };
        let mut change = Change::default();
        self.acknowledged_at = Some(at);
        self.acknowledged_by = Some(by.to_owned());
        self.ack_note.clone_from(&note);
        self.record(
            AlarmEvent::Acknowledged,
            at,
            Some(by.to_owned()),
            note,
            &mut change,
        );
        Ok(change)
    }

    /// A raise↔clear change: flap detection decides whether `event` is published.
    fn flip(
        &mut self,
        event: AlarmEvent,
        at: Timestamp,
        by: Option<String>,
        policy: &AlarmPolicy,
        change: &mut Change,
    ) {
        let window = i64::try_from(policy.flap_window.as_nanos()).unwrap_or(i64::MAX);
        let since = at.as_nanos().saturating_sub(window);
        if self.flapping && self.flips.last().is_none_or(|t| t.as_nanos() < since) {
            // Quiet for a whole window: stable again.
            self.flapping = false;
        }
        self.flips.retain(|t| t.as_nanos() >= since);
        self.flips.push(at);
        let over = self.flips.len() > usize::try_from(policy.flap_threshold).unwrap_or(usize::MAX);
        if self.flapping {
            self.suppress(event, at, by, change);
        } else if over {
            self.flapping = true;
            self.suppress(event, at, by.clone(), change);
            self.record(AlarmEvent::Flapping, at, by, None, change);
        } else {
            self.record(event, at, by, None, change);
        }
    }

    fn suppress(
        &mut self,
        event: AlarmEvent,
        at: Timestamp,
        by: Option<String>,
        change: &mut Change,
    ) {
        change.suppressed += 1;
        self.push_history(Transition {
            at,
            event,
            state: self.state,
            severity: self.severity,
            by,
            note: None,
            suppressed: true,
        });
    }

    fn record(
        &mut self,
        event: AlarmEvent,
        at: Timestamp,
        by: Option<String>,
        note: Option<String>,
        change: &mut Change,
    ) {
        change.events.push(event);
        self.push_history(Transition {
            at,
            event,
            state: self.state,
            severity: self.severity,
            by,
            note,
            suppressed: false,
        });
    }

    fn push_history(&mut self, t: Transition) {
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        self.history.push(t);
    }
}

/// Timestamps as RFC 3339 text in JSON (integer nanoseconds are read too).
mod rfc3339 {
    use ferrite_core::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use ferrite_core::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(t),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod rfc3339_vec {
    use ferrite_core::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ts: &[Timestamp], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ts.iter().map(ToString::to_string))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Timestamp>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: i64 = 1_000_000_000;

    fn raise(severity: Severity, at_s: i64) -> Raise {
        Raise {
            rule: "hot".into(),
            device: "d1".into(),
            alarm_type: "overheat".into(),
            severity,
            message: Some(format!("at {at_s}")),
            values: serde_json::Map::new(),
            at: Timestamp::from_nanos(at_s * S),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_nanos(s * S)
    }

    fn policy() -> AlarmPolicy {
        AlarmPolicy {
            flap_threshold: 3,
            flap_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn repeated_raises_are_one_alarm_and_one_event() {
        let p = policy();
        let (mut a, c) = Alarm::open(1, raise(Severity::Major, 0), None, &p);
        assert_eq!(c.events, [AlarmEvent::Raised]);
        assert!(c.raised);
        for i in 1..10 {
            let c = a.raise(raise(Severity::Minor, i), &p);
            assert!(c.deduped && c.events.is_empty(), "{c:?}");
        }
        assert_eq!(a.count, 10);
        assert_eq!(
            a.severity,
            Severity::Major,
            "a lower severity does not lower it"
        );
        assert_eq!(a.last_raised_at, t(9));
        assert_eq!(a.first_raised_at, t(0));
        assert_eq!(a.message.as_deref(), Some("at 9"));
        assert_eq!(a.history.len(), 1);
    }

    #[test]
    fn escalation_is_published_and_needs_a_new_ack() {
        let p = policy();
        let (mut a, _) = Alarm::open(1, raise(Severity::Minor, 0), None, &p);
        a.acknowledge("api:alice", Some("looking".into()), t(1))
            .unwrap();
        assert_eq!(a.state, AlarmState::Acknowledged);
        let c = a.raise(raise(Severity::Critical, 2), &p);
        assert_eq!(c.events, [AlarmEvent::Escalated]);
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.state, AlarmState::Active);
        a.acknowledge("api:alice", None, t(3)).unwrap();
        assert_eq!(a.state, AlarmState::Acknowledged);
    }

    #[test]
    fn lifecycle_and_invalid_transitions() {
        let p = policy();
        let (mut a, _) = Alarm::open(7, raise(Severity::Major, 0), None, &p);
        // Rule clear before ack: cleared, still waiting for an ack, still open.
        let c = a.clear_by_rule("cool", t(1), &p).unwrap();
        assert_eq!(c.events, [AlarmEvent::Cleared]);
        assert_eq!(a.state, AlarmState::ClearedUnacknowledged);
        assert!(a.state.is_open());
        assert_eq!(a.cleared_by.as_deref(), Some("rule:cool"));
        assert!(
            a.clear_by_rule("cool", t(2), &p).is_none(),
            "nothing to clear"
        );
        // Ack closes it.
        let c = a
            .acknowledge("api:bob", Some("fixed the fan".into()), t(3))
            .unwrap();
        assert_eq!(c.events, [AlarmEvent::Acknowledged]);
        assert_eq!(a.state, AlarmState::Cleared);
        assert_eq!(a.ack_note.as_deref(), Some("fixed the fan"));
        // A closed alarm refuses ack and operator clear with clear errors.
        let e = a.acknowledge("api:bob", None, t(4)).unwrap_err();
        assert_eq!(e, AlarmError::Closed { id: 7 });
        assert_eq!(e.to_string(), "alarm 7 is cleared and closed");
        assert!(a.clear_by_operator("api:bob", None, t(4)).is_err());
        assert!(a.clear_by_rule("cool", t(4), &p).is_none());
        let states: Vec<_> = a.history.iter().map(|h| h.state).collect();
        assert_eq!(
            states,
            [
                AlarmState::Active,
                AlarmState::ClearedUnacknowledged,
                AlarmState::Cleared
            ]
        );
    }

    #[test]
    fn ack_twice_is_a_conflict_and_operator_clear_closes() {
        let p = policy();
        let (mut a, _) = Alarm::open(3, raise(Severity::Info, 0), None, &p);
        a.acknowledge("x", None, t(1)).unwrap();
        assert_eq!(
            a.acknowledge("x", None, t(2)).unwrap_err().to_string(),
            "alarm 3 is already acknowledged"
        );
        let c = a
            .clear_by_operator("api:ops", Some("known".into()), t(3))
            .unwrap();
        assert_eq!(c.events, [AlarmEvent::Cleared]);
        assert_eq!(a.state, AlarmState::Cleared);
        assert_eq!(a.cleared_by.as_deref(), Some("api:ops"));
        // Rule clear of an acknowledged alarm closes it too.
        let (mut b, _) = Alarm::open(4, raise(Severity::Info, 0), None, &p);
        b.acknowledge("x", None, t(1)).unwrap();
        b.clear_by_rule("r", t(2), &p).unwrap();
        assert_eq!(b.state, AlarmState::Cleared);
    }

    #[test]
    fn reraise_of_a_cleared_unacknowledged_alarm_reactivates_it() {
        let p = policy();
        let (mut a, _) = Alarm::open(1, raise(Severity::Minor, 0), None, &p);
        a.clear_by_rule("r", t(1), &p);
        let c = a.raise(raise(Severity::Minor, 2), &p);
        assert_eq!(c.events, [AlarmEvent::Raised]);
        assert!(c.raised);
        assert_eq!(a.state, AlarmState::Active);
        assert_eq!(a.count, 2);
        assert_eq!(a.cleared_at, None);
    }

    #[test]
    fn flapping_suppresses_flips_until_quiet_for_a_window() {
        let p = policy(); // more than 3 flips in 60 s
        let (mut a, _) = Alarm::open(1, raise(Severity::Minor, 0), None, &p);
        let mut published = Vec::new();
        let mut suppressed = 0;
        for i in 1..=8 {
            let c = if i % 2 == 1 {
                a.clear_by_rule("r", t(i), &p).unwrap()
            } else {
                a.raise(raise(Severity::Minor, i), &p)
            };
            published.extend(c.events);
            suppressed += c.suppressed;
        }
        use AlarmEvent::{Cleared, Flapping, Raised};
        assert_eq!(published, [Cleared, Raised, Cleared, Flapping]);
        assert_eq!(suppressed, 5, "flips 4 to 8");
        assert!(a.flapping);
        // Still within the window of the last flip: suppressed.
        let c = a.clear_by_rule("r", t(50), &p).unwrap();
        assert_eq!((c.events.len(), c.suppressed), (0, 1));
        // Quiet for more than a window: the next flip is published, stable again.
        let c = a.raise(raise(Severity::Minor, 200), &p);
        assert_eq!(c.events, [Raised]);
        assert!(!a.flapping);
        assert_eq!(a.flips, [t(200)]);
    }

    #[test]
    fn flips_carry_over_to_the_next_alarm_of_the_key() {
        let p = policy();
        let (mut a, _) = Alarm::open(1, raise(Severity::Minor, 0), None, &p);
        a.acknowledge("x", None, t(0)).unwrap();
        a.clear_by_rule("r", t(1), &p).unwrap(); // flip 1, closed
        let (b, c) = Alarm::open(2, raise(Severity::Minor, 2), Some(&a), &p); // flip 2
        assert_eq!(c.events, [AlarmEvent::Raised]);
        assert_eq!(b.flips, [t(1), t(2)]);
        assert!(b.id != a.id);
    }

    #[test]
    fn history_is_bounded_and_json_round_trips() {
        let p = AlarmPolicy {
            flap_threshold: 1000,
            ..policy()
        };
        let (mut a, _) = Alarm::open(1, raise(Severity::Minor, 0), None, &p);
        for i in 1..100 {
            if i % 2 == 1 {
                a.clear_by_rule("r", t(i), &p);
            } else {
                a.raise(raise(Severity::Minor, i), &p);
            }
        }
        assert_eq!(a.history.len(), HISTORY);
        assert_eq!(a.history.last().unwrap().at, t(99));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["type"], "overheat");
        assert_eq!(json["state"], "cleared_unacknowledged");
        assert_eq!(json["first_raised_at"], "1970-01-01T00:00:00Z");
        // Flips older than the 60 s window before the last one (t = 99 s) are gone.
        assert_eq!(json["flips"][0], "1970-01-01T00:00:39Z");
        let back: Alarm = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
        assert!(Severity::Critical > Severity::Major && Severity::Warning > Severity::Info);
    }
}
