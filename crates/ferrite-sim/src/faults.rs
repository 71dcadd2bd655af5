//! Faults the simulator injects and the ground truth it writes about them.
//!
//! Every injected fault is one [`TruthRecord`], written as one line of NDJSON (format
//! version 1) to the ground-truth file, so anomaly detectors and pipelines can be scored
//! against what really happened:
//!
//! ```text
//! {"kind":"stuck","device":"room-7","measurement":"room","field":"co2","start_ns":…,"end_ns":…}
//! {"kind":"delay","device":"room-3","measurement":"room","start_ns":…,"end_ns":…,"arrival_ns":…,"delay_ns":…}
//! ```
//!
//! `start_ns`/`end_ns` is the fault's window, **inclusive**, in nanoseconds on the device's
//! own clock: the timestamps the data carries (for a device with clock skew, its
//! `clock_skew` record gives the offset and drift to map them back to true time). A window
//! that the run does not end before is cut at the end of the run; `i64::MAX` means "until
//! the end of an open-ended live run". `measurement` and `field` are present where the fault
//! concerns one. The kinds, what each does to the data, and their extra keys:
//!
//! | kind | effect on the data | keys |
//! |---|---|---|
//! | `offline` | no readings in the window; live: the connection is closed — `abrupt` without DISCONNECT (the broker publishes the will if `will`), else cleanly | `abrupt`, `will` |
//! | `duplicate` | the reading (same timestamp, same values) is sent again `retry_after` later | `arrival_ns` (of the copy, true time) |
//! | `delay` | the reading is sent `delay_ns` late, after later readings: out of order | `arrival_ns`, `delay_ns` |
//! | `clock_skew` | every timestamp of the device is `t + skew_ns + drift_ppm·10⁻⁶·(t − start)` | `skew_ns`, `drift_ppm` |
//! | `stuck` | the field repeats the value it had when it got stuck | — |
//! | `noise_burst` | N(0, `sd`²) noise added to the field | `sd` |
//! | `spike` | one reading of the field is off by `offset` | `offset` |
//! | `level_shift` | the field is off by `offset` for the window | `offset` |
//!
//! Only faults that show in the run are recorded: an episode (offline, stuck, noise burst,
//! level shift) is recorded when the device's first tick falls inside it, so an episode
//! between two readings leaves no trace in either the data or the truth. Records appear in
//! the order the generator injects them (for a file: device by device as time advances),
//! deterministic for a seed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The kinds of fault; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The device is away.
    Offline,
    /// A reading sent twice.
    Duplicate,
    /// A reading sent late.
    Delay,
    /// The device's clock is off.
    ClockSkew,
    /// A field repeats one value.
    Stuck,
    /// A field is noisier.
    NoiseBurst,
    /// One reading of a field is far off.
    Spike,
    /// A field's level jumps.
    LevelShift,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Offline,
        FaultKind::Duplicate,
        FaultKind::Delay,
        FaultKind::ClockSkew,
        FaultKind::Stuck,
        FaultKind::NoiseBurst,
        FaultKind::Spike,
        FaultKind::LevelShift,
    ];

    /// The name used in the ground truth and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Offline => "offline",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Delay => "delay",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::Stuck => "stuck",
            FaultKind::NoiseBurst => "noise_burst",
            FaultKind::Spike => "spike",
            FaultKind::LevelShift => "level_shift",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Faults injected, by kind.
pub type FaultCounts = BTreeMap<FaultKind, u64>;

/// One injected fault: a line of the ground-truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthRecord {
    /// What happened.
    pub kind: FaultKind,
    /// The device's id.
    pub device: String,
    /// The measurement concerned, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// The field concerned, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// First affected instant, device clock, ns.
    pub start_ns: i64,
    /// Last affected instant (inclusive), device clock, ns.
    pub end_ns: i64,
    /// Kind-specific details.
    #[serde(flatten)]
    pub detail: TruthDetail,
}

/// The kind-specific keys of a [`TruthRecord`]; absent keys are not written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TruthDetail {
    /// `offline`: the connection was dropped without DISCONNECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abrupt: Option<bool>,
    /// `offline`: the device had a will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will: Option<bool>,
    /// `delay`, `duplicate`: when the reading (or its copy) was sent, true time, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_ns: Option<i64>,
    /// `delay`: how late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ns: Option<i64>,
    /// `clock_skew`: the offset at the start of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ns: Option<i64>,
    /// `clock_skew`: the drift, parts per million.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_ppm: Option<f64>,
    /// `spike`, `level_shift`: the value added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    /// `noise_burst`: the standard deviation of the noise added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
}

impl TruthRecord {
    /// The record as one NDJSON line (with the newline).
    pub fn to_ndjson(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// Count records by kind into `counts`.
pub fn count(records: &[TruthRecord], counts: &mut FaultCounts) {
    for r in records {
        *counts.entry(r.kind).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_round_trip_through_ndjson_without_absent_keys() {
        let r = TruthRecord {
            kind: FaultKind::Delay,
            device: "d1".into(),
            measurement: Some("m".into()),
            field: None,
            start_ns: 5,
            end_ns: 5,
            detail: TruthDetail {
                arrival_ns: Some(105),
                delay_ns: Some(100),
                ..TruthDetail::default()
            },
        };
        let line = r.to_ndjson();
        assert_eq!(
            line,
            "{\"kind\":\"delay\",\"device\":\"d1\",\"measurement\":\"m\",\"start_ns\":5,\"end_ns\":5,\"arrival_ns\":105,\"delay_ns\":100}\n"
        );
        let back: TruthRecord = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, r);
        let mut counts = FaultCounts::new();
        count(&[r.clone(), r], &mut counts);
        assert_eq!(counts[&FaultKind::Delay], 2);
        for k in FaultKind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }
}
