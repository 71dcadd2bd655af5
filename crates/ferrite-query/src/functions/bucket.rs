//! Time buckets: the bucketing arithmetic ([`Bucketer`], pure) and the SQL functions
//! `time_bucket(interval, time [, zone])` and `time_bucket_gapfill(interval, time, start, end
//! [, zone])` built on it.
//!
//! A bucket is named by its start. Buckets are aligned to Monday 2000-01-03 00:00 — in the
//! given zone's local time when there is one — so weekly buckets start on Mondays; for widths
//! that divide a day this is the same alignment as the Unix epoch (and `date_bin`'s default).
//!
//! - Without a zone (or with `'UTC'`) a bucket is a fixed span of absolute time: days count
//!   as 24 hours.
//! - With a zone the buckets follow the local wall clock: a `1 day` bucket runs from local
//!   midnight to the next local midnight, so it is 23 or 25 hours long on a daylight-saving
//!   day; months start on the 1st at local midnight. When local midnight does not exist (a
//!   zone that springs forward at 00:00) the day starts at the first instant after the gap;
//!   when it exists twice the day starts at the first. Sub-day buckets are aligned to the
//!   local clock too (`1 hour` in `Asia/Kolkata` starts at :30 UTC); in the repeated hour of
//!   a fall-back each pass is a bucket of its own, and a bucket spanning a change is one hour
//!   shorter or longer.
//! - An interval of months (`1 month`, `3 months`, `1 year`) cannot also have days or a time
//!   part; any other interval is a width in nanoseconds.

use std::sync::Arc;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, Offset, TimeZone};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{Array, AsArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano, IntervalUnit, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SECOND;
/// Monday 2000-01-03 00:00:00 UTC, in ns since the epoch: the alignment of every bucket.
const ORIGIN: i64 = 946_857_600 * NANOS_PER_SECOND;
/// January 2000 as a month number (`year * 12 + month0`): the alignment of month buckets.
const ORIGIN_MONTH: i32 = 2000 * 12;

/// Assigns instants (ns since the epoch) to buckets of one width, in one zone.
#[derive(Debug, Clone)]
pub(crate) struct Bucketer {
    width: Width,
    /// `None` is UTC: buckets are plain arithmetic on nanoseconds.
    zone: Option<Tz>,
}

#[derive(Debug, Clone, Copy)]
enum Width {
    Nanos(i64),
    Months(i32),
}

impl Bucketer {
    /// Buckets `interval` wide in `zone` (an IANA name, an offset such as `+05:30`, or
    /// `UTC`; `None` is UTC). The error says what is wrong with the arguments.
    pub(crate) fn new(interval: IntervalMonthDayNano, zone: Option<&str>) -> Result<Self, String> {
        let IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        } = interval;
        if months < 0 || days < 0 || nanoseconds < 0 || (months, days, nanoseconds) == (0, 0, 0) {
            return Err(format!(
                "the interval must be positive, got {}",
                show_interval(interval)
            ));
        }
        let width = if months > 0 {
            if days != 0 || nanoseconds != 0 {
                return Err(format!(
                    "an interval of months cannot also have days or a time part, got {}",
                    show_interval(interval)
                ));
            }
            Width::Months(months)
        } else {
            let nanos = i64::from(days)
                .checked_mul(NANOS_PER_DAY)
                .and_then(|d| d.checked_add(nanoseconds))
                .ok_or_else(|| format!("the interval is too long: {}", show_interval(interval)))?;
            Width::Nanos(nanos)
        };
        let zone = match zone {
            None | Some("UTC") => None,
            Some(name) => Some(name.parse::<Tz>().map_err(|_| {
                format!(
                    "unknown time zone '{name}' (use an IANA name such as 'Europe/Berlin', \
                     an offset such as '+05:30', or 'UTC')"
                )
            })?),
        };
        Ok(Self { width, zone })
    }

    /// The start of the bucket holding `ts`; `None` if it is outside the representable range.
    pub(crate) fn floor(&self, ts: i64) -> Option<i64> {
        match (self.width, &self.zone) {
            (Width::Nanos(w), None) => floor_to(ts, w),
            (Width::Nanos(w), Some(tz)) => {
                let start = floor_to(to_local(tz, ts)?, w)?;
                resolve(tz, start, w % NANOS_PER_DAY != 0, ts)
            }
            (Width::Months(m), zone) => {
                let local = match zone {
                    None => ts,
                    Some(tz) => to_local(tz, ts)?,
                };
                let start = month_start(month_floor(local, m)?)?;
                match zone {
                    None => Some(start),
                    Some(tz) => resolve(tz, start, false, ts),
                }
            }
        }
    }

    /// The start of the bucket after the one starting at `bucket` (a value [`Self::floor`]
    /// returned).
    pub(crate) fn next(&self, bucket: i64) -> Option<i64> {
        match (self.width, &self.zone) {
            (Width::Nanos(w), None) => bucket.checked_add(w),
            (Width::Nanos(w), Some(tz)) if w % NANOS_PER_DAY == 0 => {
                // Whole days: the next local midnight (in local, not absolute, time).
                let start = floor_to(to_local(tz, bucket)?, w)?;
                resolve(tz, start.checked_add(w)?, false, i64::MAX)
            }
            (Width::Nanos(w), Some(_)) => {
                // Sub-day: a bucket is at most an hour or so longer than `w` (a clock
                // change), so a few steps of `w` reach the next one.
                let mut probe = bucket;
                for _ in 0..4 {
                    probe = probe.checked_add(w)?;
                    let next = self.floor(probe)?;
                    if next > bucket {
                        return Some(next);
                    }
                }
                None
            }
            (Width::Months(m), zone) => {
                let local = match zone {
                    None => bucket,
                    Some(tz) => to_local(tz, bucket)?,
                };
                let start = month_start(month_floor(local, m)?.checked_add(m)?)?;
                match zone {
                    None => Some(start),
                    Some(tz) => resolve(tz, start, false, i64::MAX),
                }
            }
        }
    }
}

/// An interval as SQL shows it, for error messages.
pub(crate) fn show_interval(i: IntervalMonthDayNano) -> String {
    ScalarValue::IntervalMonthDayNano(Some(i)).to_string()
}

/// `x` rounded down to a multiple of `w` counted from [`ORIGIN`].
fn floor_to(x: i64, w: i64) -> Option<i64> {
    let (x, w, o) = (i128::from(x), i128::from(w), i128::from(ORIGIN));
    i64::try_from(o + (x - o).div_euclid(w) * w).ok()
}

/// The local wall-clock time of `ts` in `tz`, as ns since the (naive) epoch.
fn to_local(tz: &Tz, ts: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp_nanos(ts).naive_utc();
    let offset = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
    ts.checked_add(i64::from(offset) * NANOS_PER_SECOND)
}

/// The instant at which the local clock of `tz` shows `local` (naive ns). If it shows it
/// twice, the later one when `prefer_late` and it is not after `ts`, else the earlier; if
/// never (the clock skips it), the first instant after the skip.
fn resolve(tz: &Tz, local: i64, prefer_late: bool, ts: i64) -> Option<i64> {
    let naive = DateTime::from_timestamp_nanos(local).naive_utc();
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.timestamp_nanos_opt(),
        LocalResult::Ambiguous(early, late) => {
            let (early, late) = (early.timestamp_nanos_opt()?, late.timestamp_nanos_opt()?);
            Some(if prefer_late && late <= ts {
                late
            } else {
                early
            })
        }
        LocalResult::None => {
            // Bisect for the first instant whose local time reaches `local`. Offsets are
            // under 26 hours, so the local time 48 hours before (after) is below (above) it.
            let (mut lo, mut hi) = (
                local.checked_sub(2 * NANOS_PER_DAY)?,
                local.checked_add(2 * NANOS_PER_DAY)?,
            );
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if to_local(tz, mid)? >= local {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Some(hi)
        }
    }
}

/// The month number (`year * 12 + month0`) of the month bucket holding naive time `local`.
fn month_floor(local: i64, months: i32) -> Option<i32> {
    let d = DateTime::from_timestamp_nanos(local).naive_utc();
    let index = d.year().checked_mul(12)?.checked_add(d.month0() as i32)?;
    Some(ORIGIN_MONTH + (index - ORIGIN_MONTH).div_euclid(months) * months)
}

/// Midnight of the 1st of month number `index`, as naive ns.
fn month_start(index: i32) -> Option<i64> {
    let month = u32::try_from(index.rem_euclid(12)).ok()? + 1;
    NaiveDate::from_ymd_opt(index.div_euclid(12), month, 1)?
        .and_hms_opt(0, 0, 0)?
        .and_utc()
        .timestamp_nanos_opt()
}

/// `time_bucket` and `time_bucket_gapfill`: the same bucketing; the gap-filling variant takes
/// the range to fill as well, which the planner (`crate::gapfill`) reads from the call.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimeBucket {
    gapfill: bool,
    signature: Signature,
}

impl TimeBucket {
    pub(crate) const NAME: &'static str = "time_bucket";
    pub(crate) const GAPFILL_NAME: &'static str = "time_bucket_gapfill";

    pub(crate) fn new(gapfill: bool) -> Self {
        Self {
            gapfill,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn usage(&self) -> &'static str {
        if self.gapfill {
            "time_bucket_gapfill(interval, time, start, end [, time zone])"
        } else {
            "time_bucket(interval, time [, time zone])"
        }
    }

    /// Position of the optional time zone argument.
    fn zone_arg(&self) -> usize {
        if self.gapfill { 4 } else { 2 }
    }
}

impl ScalarUDFImpl for TimeBucket {
    fn name(&self) -> &str {
        if self.gapfill {
            Self::GAPFILL_NAME
        } else {
            Self::NAME
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let zone = self.zone_arg();
        if args.len() != zone && args.len() != zone + 1 {
            return plan_err!(
                "{} takes {zone} or {} arguments, got {}",
                self.usage(),
                zone + 1,
                args.len()
            );
        }
        let name = self.name();
        args.iter()
            .enumerate()
            .map(|(i, t)| match i {
                0 => coerce_interval(name, "interval", t),
                1 => coerce_timestamp(name, "time", t),
                2 | 3 if self.gapfill => {
                    coerce_timestamp(name, if i == 2 { "start" } else { "end" }, t)
                }
                _ => coerce_string(name, "time zone", t),
            })
            .collect()
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.get(1) {
            Some(DataType::Timestamp(TimeUnit::Nanosecond, tz)) => {
                Ok(DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()))
            }
            _ => Ok(DataType::Timestamp(TimeUnit::Nanosecond, None)),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let out_type = args.return_type().clone();
        let DataType::Timestamp(_, tz) = &out_type else {
            return exec_err!("{name}: unexpected return type {out_type}");
        };
        let tz = tz.clone();
        let Some(interval) = constant_interval(name, &args.args[0])? else {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from(&out_type)?));
        };
        let zone = match args.args.get(self.zone_arg()) {
            None => None,
            Some(arg) => match constant_string(name, "time zone", arg)? {
                Some(z) => Some(z),
                None => return Ok(ColumnarValue::Scalar(ScalarValue::try_from(&out_type)?)),
            },
        };
        let bucketer = Bucketer::new(interval, zone.as_deref())
            .map_err(|e| exec_datafusion_err!("{name}: {e}"))?;
        let floor = |t: i64| {
            bucketer
                .floor(t)
                .ok_or_else(|| exec_datafusion_err!("{name}: the bucket of {t} ns is out of range"))
        };
        match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(t, _)) => {
                let b = t.map(floor).transpose()?;
                Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
                    b, tz,
                )))
            }
            ColumnarValue::Scalar(ScalarValue::Null) => Ok(ColumnarValue::Scalar(
                ScalarValue::TimestampNanosecond(None, tz),
            )),
            ColumnarValue::Array(a) => {
                let Some(times) = a.as_primitive_opt() else {
                    return exec_err!("{name}: time must be a timestamp, got {}", a.data_type());
                };
                let times: &TimestampNanosecondArray = times;
                let out = times
                    .iter()
                    .map(|t| t.map(floor).transpose())
                    .collect::<Result<TimestampNanosecondArray>>()?
                    .with_timezone_opt(tz);
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            ColumnarValue::Scalar(other) => {
                exec_err!(
                    "{name}: time must be a timestamp, got {}",
                    other.data_type()
                )
            }
        }
    }
}

/// The type an interval argument is cast to: intervals and interval strings (`'1 hour'`).
pub(crate) fn coerce_interval(func: &str, what: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::Interval(_)
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Null => Ok(DataType::Interval(IntervalUnit::MonthDayNano)),
        other => {
            plan_err!("{func}: {what} must be an interval such as INTERVAL '1 hour', got {other}")
        }
    }
}

/// The type a time argument is cast to: nanosecond timestamps, keeping the zone.
pub(crate) fn coerce_timestamp(func: &str, what: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::Timestamp(_, tz) => Ok(DataType::Timestamp(TimeUnit::Nanosecond, tz.clone())),
        DataType::Date32 | DataType::Date64 | DataType::Null => {
            Ok(DataType::Timestamp(TimeUnit::Nanosecond, None))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(DataType::Timestamp(
            TimeUnit::Nanosecond,
            Some("UTC".into()),
        )),
        other => plan_err!("{func}: {what} must be a timestamp, got {other}"),
    }
}

fn coerce_string(func: &str, what: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            Ok(DataType::Utf8)
        }
        other => plan_err!("{func}: {what} must be a string such as 'Europe/Berlin', got {other}"),
    }
}

/// The value of a constant interval argument; `None` when it is NULL.
pub(crate) fn constant_interval(
    func: &str,
    arg: &ColumnarValue,
) -> Result<Option<IntervalMonthDayNano>> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(v)) => Ok(*v),
        ColumnarValue::Scalar(ScalarValue::Null) => Ok(None),
        ColumnarValue::Scalar(other) => exec_err!(
            "{func}: the interval must be an interval, got {}",
            other.data_type()
        ),
        ColumnarValue::Array(_) => {
            exec_err!("{func}: the interval must be a constant, not a column")
        }
    }
}

/// The value of a constant string argument; `None` when it is NULL.
fn constant_string(func: &str, what: &str, arg: &ColumnarValue) -> Result<Option<String>> {
    match arg {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v),
        ) => Ok(v.clone()),
        ColumnarValue::Scalar(ScalarValue::Null) => Ok(None),
        ColumnarValue::Scalar(other) => {
            exec_err!(
                "{func}: the {what} must be a string, got {}",
                other.data_type()
            )
        }
        ColumnarValue::Array(_) => exec_err!("{func}: the {what} must be a constant, not a column"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .timestamp_nanos_opt()
            .unwrap_or_default()
    }

    fn iv(months: i32, days: i32, nanos: i64) -> IntervalMonthDayNano {
        IntervalMonthDayNano::new(months, days, nanos)
    }

    const HOUR: i64 = 3600 * NANOS_PER_SECOND;

    fn bucketer(i: IntervalMonthDayNano, zone: Option<&str>) -> Bucketer {
        Bucketer::new(i, zone).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn utc_buckets_are_fixed_spans_from_the_origin() {
        let b = bucketer(iv(0, 0, HOUR), None);
        assert_eq!(
            b.floor(at("2024-03-31T10:59:59Z")),
            Some(at("2024-03-31T10:00:00Z"))
        );
        assert_eq!(
            b.floor(at("2024-03-31T10:00:00Z")),
            Some(at("2024-03-31T10:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-03-31T10:00:00Z")),
            Some(at("2024-03-31T11:00:00Z"))
        );
        // Before the epoch rounds down, not toward zero.
        assert_eq!(b.floor(-1), Some(-HOUR));
        let fifteen = bucketer(iv(0, 0, 15 * 60 * NANOS_PER_SECOND), Some("UTC"));
        assert_eq!(
            fifteen.floor(at("2024-01-01T00:44:00Z")),
            Some(at("2024-01-01T00:30:00Z"))
        );
        // Weeks start on Monday (2024-03-06 is a Wednesday).
        let week = bucketer(iv(0, 7, 0), None);
        assert_eq!(
            week.floor(at("2024-03-06T12:00:00Z")),
            Some(at("2024-03-04T00:00:00Z"))
        );
        assert_eq!(
            week.floor(at("2024-03-04T00:00:00Z")),
            Some(at("2024-03-04T00:00:00Z"))
        );
        // A day without a zone is 24 hours, even with a time part.
        let long = bucketer(iv(0, 1, 12 * HOUR), None);
        assert_eq!(long.next(0), Some(36 * HOUR));
    }

    #[test]
    fn the_extremes_are_out_of_range_not_a_panic() {
        let b = bucketer(iv(0, 7, 0), None);
        assert_eq!(b.floor(i64::MIN), None);
        assert!(b.floor(i64::MAX).is_some());
        assert_eq!(b.next(b.floor(i64::MAX).unwrap_or_default()), None);
        let zoned = bucketer(iv(0, 1, 0), Some("Europe/Berlin"));
        assert_eq!(zoned.floor(i64::MIN), None);
        let months = bucketer(iv(1, 0, 0), Some("Europe/Berlin"));
        assert_eq!(months.floor(i64::MIN), None);
        assert_eq!(months.floor(i64::MAX), None);
    }

    #[test]
    fn local_days_follow_daylight_saving() {
        let b = bucketer(iv(0, 1, 0), Some("Europe/Berlin"));
        // 2024-03-31 has 23 hours in Berlin: CET midnight to CEST midnight.
        let day = b.floor(at("2024-03-31T10:00:00Z"));
        assert_eq!(day, Some(at("2024-03-30T23:00:00Z")));
        assert_eq!(
            b.next(at("2024-03-30T23:00:00Z")),
            Some(at("2024-03-31T22:00:00Z"))
        );
        assert_eq!(
            b.floor(at("2024-03-31T21:59:59Z")),
            Some(at("2024-03-30T23:00:00Z"))
        );
        assert_eq!(
            b.floor(at("2024-03-31T22:00:00Z")),
            Some(at("2024-03-31T22:00:00Z"))
        );
        // 2024-10-27 has 25.
        assert_eq!(
            b.floor(at("2024-10-27T23:30:00Z")),
            Some(at("2024-10-27T23:00:00Z"))
        );
        assert_eq!(
            b.floor(at("2024-10-27T22:30:00Z")),
            Some(at("2024-10-26T22:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-10-26T22:00:00Z")),
            Some(at("2024-10-27T23:00:00Z"))
        );
        // Weeks start at Monday local midnight.
        let week = bucketer(iv(0, 7, 0), Some("Europe/Berlin"));
        assert_eq!(
            week.floor(at("2024-03-31T10:00:00Z")),
            Some(at("2024-03-24T23:00:00Z"))
        );
        assert_eq!(
            week.next(at("2024-03-24T23:00:00Z")),
            Some(at("2024-03-31T22:00:00Z"))
        );
        // Fixed offsets work too.
        let india = bucketer(iv(0, 1, 0), Some("+05:30"));
        assert_eq!(
            india.floor(at("2024-01-01T20:00:00Z")),
            Some(at("2024-01-01T18:30:00Z"))
        );
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_after_the_gap() {
        // Santiago springs forward at 24:00 on 2024-09-07: 2024-09-08 begins at 01:00 -03,
        // which is 04:00 UTC.
        let b = bucketer(iv(0, 1, 0), Some("America/Santiago"));
        assert_eq!(
            b.floor(at("2024-09-08T12:00:00Z")),
            Some(at("2024-09-08T04:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-09-07T04:00:00Z")),
            Some(at("2024-09-08T04:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-09-08T04:00:00Z")),
            Some(at("2024-09-09T03:00:00Z"))
        );
    }

    #[test]
    fn local_months_start_at_local_midnight() {
        let b = bucketer(iv(1, 0, 0), Some("Europe/Berlin"));
        assert_eq!(
            b.floor(at("2024-03-15T00:00:00Z")),
            Some(at("2024-02-29T23:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-02-29T23:00:00Z")),
            Some(at("2024-03-31T22:00:00Z"))
        );
        // 22:30 UTC on March 31 is already April in Berlin.
        assert_eq!(
            b.floor(at("2024-03-31T22:30:00Z")),
            Some(at("2024-03-31T22:00:00Z"))
        );
        let quarter = bucketer(iv(3, 0, 0), None);
        assert_eq!(
            quarter.floor(at("2024-05-20T00:00:00Z")),
            Some(at("2024-04-01T00:00:00Z"))
        );
        assert_eq!(
            quarter.next(at("2024-10-01T00:00:00Z")),
            Some(at("2025-01-01T00:00:00Z"))
        );
        assert_eq!(
            quarter.floor(at("1999-12-31T00:00:00Z")),
            Some(at("1999-10-01T00:00:00Z"))
        );
    }

    #[test]
    fn local_hours_keep_both_passes_of_a_repeated_hour() {
        // Berlin falls back at 01:00 UTC on 2024-10-27: 02:00-03:00 local happens twice.
        let b = bucketer(iv(0, 0, HOUR), Some("Europe/Berlin"));
        assert_eq!(
            b.floor(at("2024-10-27T00:30:00Z")),
            Some(at("2024-10-27T00:00:00Z"))
        );
        assert_eq!(
            b.floor(at("2024-10-27T01:30:00Z")),
            Some(at("2024-10-27T01:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-10-27T00:00:00Z")),
            Some(at("2024-10-27T01:00:00Z"))
        );
        assert_eq!(
            b.next(at("2024-10-27T01:00:00Z")),
            Some(at("2024-10-27T02:00:00Z"))
        );
        // Two-hour buckets: local 02:00-04:00 begins on the first pass of 02:00, but the
        // second pass belongs to the bucket that starts at its own 02:00.
        let two = bucketer(iv(0, 0, 2 * HOUR), Some("Europe/Berlin"));
        assert_eq!(
            two.floor(at("2024-10-27T00:30:00Z")),
            Some(at("2024-10-27T00:00:00Z"))
        );
        assert_eq!(
            two.floor(at("2024-10-27T01:30:00Z")),
            Some(at("2024-10-27T01:00:00Z"))
        );
        assert_eq!(
            two.next(at("2024-10-27T01:00:00Z")),
            Some(at("2024-10-27T03:00:00Z"))
        );
        // A half-hour zone aligns hours to :30 UTC.
        let india = bucketer(iv(0, 0, HOUR), Some("Asia/Kolkata"));
        assert_eq!(
            india.floor(at("2024-01-01T00:10:00Z")),
            Some(at("2023-12-31T23:30:00Z"))
        );
    }

    #[test]
    fn bad_intervals_and_zones_are_errors() {
        let err = |i, z| Bucketer::new(i, z).err().unwrap_or_default();
        assert!(err(iv(0, 0, 0), None).contains("must be positive"));
        assert!(err(iv(0, 0, -5), None).contains("must be positive"));
        assert!(err(iv(0, -1, HOUR * 48), None).contains("must be positive"));
        assert!(err(iv(1, 1, 0), None).contains("months cannot also have days"));
        assert!(
            err(iv(0, 1, 0), Some("Europe/Bärlin")).contains("unknown time zone 'Europe/Bärlin'")
        );
        assert!(err(iv(0, i32::MAX, i64::MAX), None).contains("too long"));
    }
}
