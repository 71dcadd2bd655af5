//! MQTT topic names and filters, validated at construction, and the telemetry topic contract
//! `devices/{device_id}/telemetry[/{measurement}]`.

use std::fmt;

use crate::id::{DeviceId, IdError, Measurement};

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long.
    #[error("topic must not be empty")]
    Empty,
    /// Longer than the 65,535 bytes an MQTT string can carry.
    #[error("topic is {0} bytes long; the maximum is 65535")]
    TooLong(usize),
    /// The NUL character is not allowed in topics.
    #[error("topic contains the NUL character")]
    Nul,
    /// A topic name (as opposed to a filter) contains `+` or `#`.
    #[error("topic name {0:?} contains a wildcard")]
    WildcardInName(String),
    /// A filter uses `+` or `#` other than as a whole level, or `#` not last.
    #[error("topic filter {0:?} uses a wildcard other than as a whole level ('#' only last)")]
    BadWildcard(String),
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic a message is published to: no wildcards.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(String);

impl TopicName {
    /// Validate and wrap a topic name.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName(s));
        }
        Ok(Self(s))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Topics beginning with `$` are reserved for the server and not matched by filters
    /// that begin with a wildcard.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription's topic filter: levels may be `+` (one level) and the last may be `#`
/// (any number of levels, including none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validate and wrap a topic filter.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        let n = s.split('/').count();
        for (i, level) in s.split('/').enumerate() {
            let bad_plus = level.contains('+') && level != "+";
            let bad_hash = level.contains('#') && (level != "#" || i + 1 != n);
            if bad_plus || bad_hash {
                return Err(TopicError::BadWildcard(s));
            }
        }
        Ok(Self(s))
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether `topic` matches this filter (MQTT 4.7, including the rule that a filter
    /// starting with a wildcard does not match `$` topics).
    pub fn matches(&self, topic: &TopicName) -> bool {
        if topic.is_system() && self.0.starts_with(['+', '#']) {
            return false;
        }
        let mut filter = self.levels();
        let mut name = topic.levels();
        loop {
            match (filter.next(), name.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(n)) if f == n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed telemetry topic: `devices/{device_id}/telemetry[/{measurement}]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryTopic {
    /// The publishing device, from the second level.
    pub device: DeviceId,
    /// The table the reading goes to; [`crate::DEFAULT_MEASUREMENT`] when the topic names none.
    pub measurement: Measurement,
}

impl TelemetryTopic {
    /// The filters that select every telemetry topic.
    pub const FILTERS: [&'static str; 2] = ["devices/+/telemetry", "devices/+/telemetry/+"];

    /// Parse a topic; `Ok(None)` if it is not a telemetry topic at all, an error if it is one
    /// but names an invalid device id or measurement.
    pub fn parse(topic: &TopicName) -> Result<Option<Self>, IdError> {
        let mut levels = topic.levels();
        let (Some("devices"), Some(device), Some("telemetry")) =
            (levels.next(), levels.next(), levels.next())
        else {
            return Ok(None);
        };
        let measurement = match (levels.next(), levels.next()) {
            (None, _) => crate::DEFAULT_MEASUREMENT,
            (Some(m), None) => m,
            (Some(_), Some(_)) => return Ok(None),
        };
        Ok(Some(Self {
            device: DeviceId::new(device)?,
            measurement: Measurement::new(measurement)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(filter: &str, topic: &str) -> bool {
        let f = TopicFilter::new(filter).expect("valid filter in test");
        let t = TopicName::new(topic).expect("valid topic in test");
        f.matches(&t)
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/x"));
        assert!(matches("+", "x"));
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
    }

    #[test]
    fn filter_validation() {
        assert!(TopicFilter::new("a/#/b").is_err());
        assert!(TopicFilter::new("a/b#").is_err());
        assert!(TopicFilter::new("a+/b").is_err());
        assert!(TopicFilter::new("").is_err());
        assert!(TopicName::new("a/+").is_err());
        assert!(TopicName::new("a\0b").is_err());
    }

    #[test]
    fn telemetry_topics() {
        let t = |s: &str| TelemetryTopic::parse(&TopicName::new(s).expect("valid"));
        let p = t("devices/d1/telemetry").expect("ok").expect("telemetry");
        assert_eq!(p.device.as_str(), "d1");
        assert_eq!(p.measurement.as_str(), "telemetry");
        let p = t("devices/d1/telemetry/engine")
            .expect("ok")
            .expect("telemetry");
        assert_eq!(p.measurement.as_str(), "engine");
        assert_eq!(t("devices/d1/status"), Ok(None));
        assert_eq!(t("devices/d1/telemetry/a/b"), Ok(None));
        assert!(t("devices/d1/telemetry/bad-name").is_err());
    }
}
