//! The rule language: SQL text → compiled [`Rule`] → rows per [`Message`].
//!
//! ```text
//! SELECT <expr> [AS name], ...            -- or *, the payload's fields
//! FROM '<topic filter>'                    -- MQTT filter, + and # wildcards
//! [WHERE <predicate>]
//! [GROUP BY <key expr>, ..., TUMBLE(size) | HOP(size, slide) | SESSION(gap)]
//! [HAVING <predicate over aggregates and keys>]
//! ```
//!
//! * Names resolve into the JSON payload: `temp`, `a.b`, `payload.a.b`,
//!   `payload['x'][0]` (`payload` alone is the whole document).
//! * Functions: `topic()`, `topic(n)` (1-based level), `clientid()`, `device_id()`,
//!   `timestamp()` (event time, ns), `now()` (processing time, ns), `tag('key')` (registry
//!   tags of the sending device); `abs round floor ceil sqrt pow|power ln log10 exp`;
//!   `lower upper concat substr length trim coalesce`; `regex_match(s, 'pat')`,
//!   `regex_replace(s, 'pat', 'rep')` (patterns compiled at rule creation); `CASE`,
//!   arithmetic, comparisons, `AND OR NOT`, `IS [NOT] NULL`, `[NOT] IN (...)`,
//!   `[NOT] LIKE`, `CAST(x AS INT|FLOAT|STRING|BOOLEAN)`.
//! * Window sizes: `'10s'`, `'1m 30s'` (humantime) or `INTERVAL '10' SECOND`.
//! * Aggregates (windowed rules): `count(*) count sum min max avg|mean stddev|stddev_samp
//!   stddev_pop first last approx_distinct(x) approx_percentile(x, q) heavy_hitters(x, k)
//!   sample(x, n)`; `window_start()`, `window_end()` in the output.
//! * Detectors (stateful per device, see [`crate::detect`]): `zscore(x [, alpha, warmup])`
//!   → z, `seasonal(x, 'period', slots)` → z, `hst(x1, x2, ...)` → anomaly score (deviations
//!   below typical density), `stuck(x, n)`, `flatline(x, 'span', tolerance)`,
//!   `out_of_range(x, lo, hi)`, `gap('max')`, `rate_of_change(x, max_per_s)` → boolean.
//!   A stateless rule with `gap()` also reports silent series from [`Rule::advance`].
//!   They are `NULL` while warming up.
//!
//! Everything that can be checked statically is checked at creation, and errors carry the
//! line and column: syntax, unknown functions, arity, literal types, bad regexes, bad
//! durations, aggregates outside a window, bare columns outside aggregates. At run time
//! payload data is dynamic: a value of the wrong type makes the expression `NULL`, and a
//! `NULL` predicate does not match — evaluating a message never fails.

mod compile;
mod expr;
mod rule;

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrite_core::{DeviceId, Timestamp, TopicName};

pub use rule::{Output, Rule, RuleOptions, RuleStats};

/// One routed message as the rules engine sees it: decoded payload plus the routing and
/// identity facts the server knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: TopicName,
    /// The payload, decoded as JSON (a non-JSON payload is the server's to reject or wrap).
    pub payload: serde_json::Value,
    /// The MQTT client id of the publisher.
    pub client_id: String,
    /// The authenticated device, if the publisher is one.
    pub device_id: Option<DeviceId>,
    /// Processing time: when the server received it.
    pub received_at: Timestamp,
    /// Event time from the payload or protocol, if any; otherwise `received_at` is used.
    pub event_time: Option<Timestamp>,
    /// The sending device's registry tags (shared, not copied per message).
    pub tags: Arc<BTreeMap<String, String>>,
    /// An id for duplicate suppression within windows, if the publisher supplies one.
    pub message_id: Option<String>,
    /// Source partition for watermarking (JetStream partition; 0 when embedded).
    pub partition: u32,
}

impl Message {
    /// A message with no device, tags, event time or id, on partition 0.
    pub fn new(topic: TopicName, payload: serde_json::Value, received_at: Timestamp) -> Self {
        Self {
            topic,
            payload,
            client_id: String::new(),
            device_id: None,
            received_at,
            event_time: None,
            tags: Arc::default(),
            message_id: None,
            partition: 0,
        }
    }

    /// Event time, falling back to processing time.
    pub fn time(&self) -> Timestamp {
        self.event_time.unwrap_or(self.received_at)
    }

    /// Set [`Self::message_id`] from the payload field at `path` (dotted, e.g. `seq` or
    /// `meta.id`; a string or a number), scoped by [`Self::series_key`] so two devices'
    /// sequence numbers never collide. A message without the field keeps no id.
    pub fn set_id_from(&mut self, path: &str) {
        let mut v = &self.payload;
        for part in path.split('.') {
            match v.get(part) {
                Some(next) => v = next,
                None => return,
            }
        }
        let id = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return,
        };
        self.message_id = Some(format!("{}/{id}", self.series_key()));
    }

    /// The identity stateful functions key their state by: the device id, else the client id.
    pub fn series_key(&self) -> &str {
        self.device_id
            .as_ref()
            .map_or(self.client_id.as_str(), DeviceId::as_str)
    }
}

#[cfg(test)]
mod tests;
