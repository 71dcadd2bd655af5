//! Time: [`Timestamp`] (nanoseconds since the Unix epoch, UTC) and the injectable [`Clock`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

/// A point in time as nanoseconds since 1970-01-01T00:00:00Z.
///
/// `i64` nanoseconds cover the years 1677–2262, the range Arrow's `Timestamp(ns)` covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From nanoseconds since the epoch.
    pub const fn from_nanos(ns: i64) -> Self {
        Self(ns)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = chrono::DateTime::from_timestamp_nanos(self.0);
        write!(
            f,
            "{}",
            dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;

    /// An RFC 3339 time (`2026-11-23T10:00:00Z`, any offset) or integer nanoseconds.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ns) = s.parse::<i64>() {
            return Ok(Self(ns));
        }
        let dt = chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
        dt.timestamp_nanos_opt()
            .map(Self)
            .ok_or_else(|| format!("{s:?} is outside the years 1677–2262"))
    }
}

/// A source of the current time. Core logic takes a clock instead of reading the system time,
/// so tests can control it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(now.as_nanos()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(t.0)))
    }

    /// Move the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
