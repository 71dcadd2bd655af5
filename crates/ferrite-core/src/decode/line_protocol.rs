//! InfluxDB line protocol, as InfluxDB 1.x/2.x clients and Telegraf send it:
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//!
//! Field values: float (`1.5`, `2`), integer (`2i`), unsigned (`2u`), boolean (`t`, `true`,
//! `F`, `FALSE` …) and string (`"text"`, with `\"` and `\\` escapes). In measurement names
//! `\,` and `\ ` are escapes; in tag keys, tag values and field keys also `\=`. Empty lines and
//! `#` comments are skipped. The timestamp is an integer in the request's [`Precision`];
//! without one the receive time is used.
//!
//! A batch is decoded whole: every bad line is reported (by line number) and then the caller
//! stores none of it.

use std::collections::BTreeMap;

use crate::{Measurement, Point, Timestamp, Value};

use super::check_field_name;

/// Unit of line-protocol timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Nanoseconds (the default).
    #[default]
    Nanoseconds,
    /// Microseconds.
    Microseconds,
    /// Milliseconds.
    Milliseconds,
    /// Seconds.
    Seconds,
    /// Minutes (InfluxDB 1.x only).
    Minutes,
    /// Hours (InfluxDB 1.x only).
    Hours,
}

impl Precision {
    /// Parse an InfluxDB 1.x or 2.x `precision` parameter (`ns`, `n`, `us`, `u`, `ms`, `s`,
    /// `m`, `h`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ns" | "n" => Self::Nanoseconds,
            "us" | "u" | "µ" | "µs" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            "m" => Self::Minutes,
            "h" => Self::Hours,
            _ => return None,
        })
    }

    fn nanos(self) -> i64 {
        match self {
            Self::Nanoseconds => 1,
            Self::Microseconds => 1_000,
            Self::Milliseconds => 1_000_000,
            Self::Seconds => 1_000_000_000,
            Self::Minutes => 60_000_000_000,
            Self::Hours => 3_600_000_000_000,
        }
    }
}

/// One bad line of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number in the batch.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Most line errors reported for one batch; the count of the rest is added.
const MAX_REPORTED: usize = 20;

/// Decode a batch. `extra_tags` are added to every point (for example the device id of the
/// MQTT topic); a line carrying one of them with a different value is an error.
pub fn decode_line_protocol(
    text: &str,
    precision: Precision,
    received: Timestamp,
    extra_tags: &[(&str, &str)],
) -> Result<Vec<Point>, Vec<LineError>> {
    let mut points = Vec::new();
    let mut errors = Vec::new();
    let mut failed = 0usize;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, precision, received, extra_tags) {
            Ok(p) => points.push(p),
            Err(message) => {
                failed += 1;
                if errors.len() < MAX_REPORTED {
                    errors.push(LineError {
                        line: i + 1,
                        message,
                    });
                }
            }
        }
    }
    if failed > errors.len() {
        errors.push(LineError {
            line: 0,
            message: format!("and {} more bad lines", failed - errors.len()),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if points.is_empty() {
        return Err(vec![LineError {
            line: 0,
            message: "no points in the batch".to_owned(),
        }]);
    }
    Ok(points)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Read up to (not including) an unescaped byte of `stops`, removing escapes of `escapable`.
    fn token(&mut self, stops: &[u8], escapable: &[u8]) -> String {
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            if b == b'\\'
                && let Some(next) = self.s.get(self.pos + 1)
                && escapable.contains(next)
            {
                out.push(*next);
                self.pos += 2;
                continue;
            }
            if stops.contains(&b) {
                break;
            }
            out.push(b);
            self.pos += 1;
        }
        // Only ASCII backslashes were removed from valid UTF-8.
        String::from_utf8(out).unwrap_or_default()
    }

    fn expect(&mut self, b: u8, what: &str) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {what} at column {}", self.pos + 1))
        }
    }

    fn skip_spaces(&mut self) -> usize {
        let start = self.pos;
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        self.pos - start
    }

    fn string_value(&mut self) -> Result<String, String> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string field value".to_owned()),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8(out).unwrap_or_default());
                }
                Some(b'\\') if matches!(self.s.get(self.pos + 1), Some(b'"' | b'\\')) => {
                    out.push(self.s[self.pos + 1]);
                    self.pos += 2;
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }
}

const KEY_ESCAPES: &[u8] = b", =";

fn parse_line(
    line: &str,
    precision: Precision,
    received: Timestamp,
    extra_tags: &[(&str, &str)],
) -> Result<Point, String> {
    let mut c = Cursor {
        s: line.as_bytes(),
        pos: 0,
    };
    let name = c.token(b", ", b", ");
    let measurement =
        Measurement::new(name.clone()).map_err(|e| format!("measurement {name:?}: {e}"))?;
    let mut tags = BTreeMap::new();
    while c.peek() == Some(b',') {
        c.pos += 1;
        let key = c.token(b"=, ", KEY_ESCAPES);
        c.expect(b'=', "'=' after tag key")?;
        let value = c.token(b", ", KEY_ESCAPES);
        if key.is_empty() || value.is_empty() {
            return Err(format!("empty tag key or value near column {}", c.pos + 1));
        }
        if key == crate::TIME_COLUMN {
            return Err("tag key \"time\" is reserved".to_owned());
        }
        tags.insert(key, value);
    }
    if c.skip_spaces() == 0 {
        return Err("expected a space before the fields".to_owned());
    }
    let mut fields = BTreeMap::new();
    loop {
        let key = c.token(b"=, ", KEY_ESCAPES);
        c.expect(b'=', "'=' after field key")?;
        check_field_name(&key).map_err(|e| e.to_string())?;
        let value = if c.peek() == Some(b'"') {
            Value::Str(c.string_value()?)
        } else {
            let raw = c.token(b", ", b"");
            parse_value(&raw).map_err(|e| format!("field {key:?}: {e}"))?
        };
        if tags.contains_key(&key) {
            return Err(format!("{key:?} is both a tag and a field"));
        }
        fields.insert(key, value);
        if c.peek() == Some(b',') {
            c.pos += 1;
            continue;
        }
        break;
    }
    let time = if c.skip_spaces() > 0 && c.peek().is_some() {
        let raw = c.token(b" ", b"");
        let n: i64 = raw
            .parse()
            .map_err(|_| format!("timestamp {raw:?} is not an integer"))?;
        Timestamp::from_nanos(
            n.checked_mul(precision.nanos())
                .ok_or_else(|| format!("timestamp {raw} is out of range"))?,
        )
    } else {
        received
    };
    c.skip_spaces();
    if c.peek().is_some() {
        return Err(format!("unexpected text at column {}", c.pos + 1));
    }
    for (k, v) in extra_tags {
        match tags.get(*k) {
            Some(existing) if existing != v => {
                return Err(format!(
                    "tag {k}={existing} contradicts the topic's {k}={v}"
                ));
            }
            _ => {
                tags.insert((*k).to_owned(), (*v).to_owned());
            }
        }
    }
    Ok(Point {
        measurement,
        time,
        tags,
        fields,
    })
}

fn parse_value(raw: &str) -> Result<Value, String> {
    if raw.is_empty() {
        return Err("missing value".to_owned());
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(int) = raw.strip_suffix('i') {
        return int
            .parse()
            .map(Value::I64)
            .map_err(|_| format!("{raw:?} is not a 64-bit integer"));
    }
    if let Some(uint) = raw.strip_suffix('u') {
        return uint
            .parse()
            .map(Value::U64)
            .map_err(|_| format!("{raw:?} is not a 64-bit unsigned integer"));
    }
    match raw.parse::<f64>() {
        Ok(f)
            if f.is_finite()
                && !raw
                    .chars()
                    .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            Ok(Value::F64(f))
        }
        _ => Err(format!("{raw:?} is not a number, boolean or quoted string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Point {
        let mut p =
            decode_line_protocol(line, Precision::Nanoseconds, Timestamp::from_nanos(7), &[])
                .expect("valid line");
        assert_eq!(p.len(), 1);
        p.remove(0)
    }

    fn err(text: &str) -> Vec<LineError> {
        decode_line_protocol(text, Precision::Nanoseconds, Timestamp::from_nanos(7), &[])
            .expect_err("invalid")
    }

    #[test]
    fn full_line() {
        let p = one(
            r#"readings,name=truck_1,fleet=South latitude=52.3,velocity=40i,count=3u,ok=t,note="a \"b\" c" 1451606400000000000"#,
        );
        assert_eq!(p.measurement.as_str(), "readings");
        assert_eq!(p.time, Timestamp::from_nanos(1_451_606_400_000_000_000));
        assert_eq!(p.tags["name"], "truck_1");
        assert_eq!(p.tags["fleet"], "South");
        assert_eq!(p.fields["latitude"], Value::F64(52.3));
        assert_eq!(p.fields["velocity"], Value::I64(40));
        assert_eq!(p.fields["count"], Value::U64(3));
        assert_eq!(p.fields["ok"], Value::Bool(true));
        assert_eq!(p.fields["note"], Value::Str(r#"a "b" c"#.into()));
    }

    #[test]
    fn escapes_defaults_and_precision() {
        let p = one(r"cpu,host=a\ b,path=c\,d\=e load\ 1=1.5");
        assert_eq!(p.tags["host"], "a b");
        assert_eq!(p.tags["path"], "c,d=e");
        assert_eq!(p.fields["load 1"], Value::F64(1.5));
        assert_eq!(p.time, Timestamp::from_nanos(7));
        let p = decode_line_protocol(
            "m v=1 1700000000",
            Precision::Seconds,
            Timestamp::from_nanos(0),
            &[("device_id", "d1")],
        )
        .expect("valid");
        assert_eq!(p[0].time, Timestamp::from_nanos(1_700_000_000_000_000_000));
        assert_eq!(p[0].tags["device_id"], "d1");
    }

    #[test]
    fn comments_blank_lines_and_many_points() {
        let text = "# header\n\nm v=1 1\n  m v=2 2\nm,t=x v=3 3\n";
        let points =
            decode_line_protocol(text, Precision::Nanoseconds, Timestamp::from_nanos(0), &[])
                .expect("valid");
        assert_eq!(points.len(), 3);
    }

    #[test]
    fn every_bad_line_is_named() {
        let errs = err(
            "m v=1\nm\nm v=abc\nm,t v=1\nm v=1 12x\nm v=\"open\nbad-name v=1\nm v=1i2\nm v=1 1 extra\nm,time=x v=1\nm time=1\nm v=1,v2",
        );
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(errs[1].message.contains("\"abc\""), "{}", errs[1]);
        assert!(err("").iter().any(|e| e.message.contains("no points")));
        assert!(err("m v=NaN")[0].message.contains("NaN"));
        assert!(
            err("m v=1 99999999999999999999")
                .iter()
                .all(|e| e.line == 1)
        );
    }

    #[test]
    fn topic_tag_must_agree() {
        let r = decode_line_protocol(
            "m,device_id=other v=1",
            Precision::Nanoseconds,
            Timestamp::from_nanos(0),
            &[("device_id", "d1")],
        );
        assert!(
            r.expect_err("contradiction")[0]
                .message
                .contains("contradicts")
        );
    }
}
