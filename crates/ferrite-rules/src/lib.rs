//! Ferrite's rules and event-time stream analytics, as a sans-IO core.
//!
//! Owns:
//! * [`lang`] — the rule language: `SELECT … FROM '<topic filter>' [WHERE …]
//!   [GROUP BY keys, TUMBLE|HOP|SESSION(…)] [HAVING …]`, parsed with `sqlparser`, compiled
//!   once into a typed plan ([`lang::Rule`]) and evaluated per [`lang::Message`];
//! * [`window`] — watermarks ([`window::WatermarkTracker`]), window assignment and the keyed
//!   event-time [`window::WindowOperator`] (tumbling, pane-based hopping, merging sessions,
//!   allowed lateness, late output);
//! * [`agg`] — mergeable aggregates behind one [`agg::Accumulator`] trait: exact ones and
//!   sketches (HyperLogLog distinct, DDSketch quantiles, Count-Min heavy hitters, reservoir
//!   samples), plus duplicate suppression by message id;
//! * [`detect`] — anomaly and sensor-fault detectors (EWMA z-score, seasonal baseline,
//!   half-space trees, stuck-at, flat-line, out-of-range, gap, rate-of-change), each a small
//!   state machine fed `(time, value)`;
//! * [`alarm`] — the alarm lifecycle (raise, dedupe, escalate, acknowledge, clear, flap
//!   detection) as a pure state machine over [`alarm::Alarm`] records.
//!
//! Deliberately does **not** do any I/O: it reads no clock (processing time is passed in),
//! opens no socket or file and spawns nothing. Subscribing to the router, running actions
//! (republish, alert, webhook, command), persisting rule definitions and operator state, and
//! metrics all live in the server, which feeds messages in and takes rows out.

pub mod agg;
pub mod alarm;
pub mod datum;
pub mod detect;
pub mod error;
pub mod lang;
pub mod window;

pub use datum::Datum;
pub use error::{Position, RulesError};
