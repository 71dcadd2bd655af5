//! How readings are written: InfluxDB line protocol, NDJSON and CSV for datasets
//! ([`OutputFormat`]), and the flat JSON payload and topic of live MQTT publishes.
//!
//! Format sketches (version 1; timestamps are Unix nanoseconds everywhere):
//!
//! ```text
//! line protocol   readings,name=truck_0,fleet=East,… latitude=52.1,…,status=0i 1700000000000000000
//! NDJSON          {"ts":1700000000000000000,"measurement":"room","tags":{"device_id":"room-0",…},"fields":{"temperature":21.5,…}}
//! CSV             time,measurement,device_id,building,…,temperature,humidity,…   (one header)
//!                 1700000000000000000,room,room-0,b0,…,21.5,45.1,…
//! MQTT            topic devices/{id}/telemetry/{measurement}, payload {"ts":1700000000000000000,"temperature":21.5,…}
//! ```
//!
//! Line protocol types fields as Ferrite and InfluxDB read them: floats plain, integers with
//! `i`, booleans `true`/`false`; tag values and keys are escaped. CSV has **one header** for
//! the whole file — `time`, `measurement`, every tag, then every field of every measurement
//! (in scenario order, a name shared by two measurements is one column) — and a row leaves
//! empty the fields its measurement does not have; values containing `,`, `"` or a newline are
//! quoted. The MQTT payload carries only `ts` and the fields: a device's tags belong to its
//! registry entry, not to every message (Ferrite adds the `device_id` tag from the topic).

use std::fmt::Write as _;
use std::str::FromStr;

use ferrite_core::Value;
use serde::{Deserialize, Serialize};

use crate::fleet::{DeviceSim, Fleet, Reading};

/// A dataset format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// InfluxDB line protocol, nanosecond timestamps (`lp`).
    #[serde(rename = "lp")]
    LineProtocol,
    /// One JSON object per reading (`ndjson`).
    Ndjson,
    /// Comma-separated values with one header (`csv`).
    Csv,
}

impl OutputFormat {
    /// The name used on the command line: `lp`, `ndjson`, `csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::LineProtocol => "lp",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Csv => "csv",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lp" | "line-protocol" | "influx" => Ok(OutputFormat::LineProtocol),
            "ndjson" | "jsonl" | "json" => Ok(OutputFormat::Ndjson),
            "csv" => Ok(OutputFormat::Csv),
            other => Err(format!(
                "unknown format {other:?}: expected lp, ndjson or csv"
            )),
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeviceSim {
    /// Append `reading` as one line of line protocol (with the newline).
    pub fn write_line_protocol(&self, reading: &Reading, out: &mut String) {
        let fleet = self.fleet();
        escape_lp(out, fleet.measurement_name(reading.measurement), b", ");
        out.push_str(&self.lp_tags);
        let mut sep = ' ';
        for (name, value) in fleet.field_names(reading.measurement).zip(&reading.values) {
            out.push(sep);
            sep = ',';
            escape_lp(out, name, b",= ");
            out.push('=');
            match value {
                Value::I64(i) => {
                    let _ = write!(out, "{i}i");
                }
                Value::U64(u) => {
                    let _ = write!(out, "{u}u");
                }
                Value::Str(s) => {
                    out.push('"');
                    for c in s.chars() {
                        if matches!(c, '"' | '\\') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
                other => write_plain(out, other),
            }
        }
        let _ = writeln!(out, " {}", reading.time_ns);
    }

    /// Append `reading` as one NDJSON object (with the newline):
    /// `{"ts":…,"measurement":…,"tags":{…},"fields":{…}}`.
    pub fn write_ndjson(&self, reading: &Reading, out: &mut String) {
        let fleet = self.fleet();
        let _ = write!(out, "{{\"ts\":{},\"measurement\":", reading.time_ns);
        json_string(out, fleet.measurement_name(reading.measurement));
        out.push_str(",\"tags\":{");
        for (i, (k, v)) in self.tags().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(out, k);
            out.push(':');
            json_string(out, v);
        }
        out.push_str("},\"fields\":");
        write_json_fields(out, &fleet, reading, None);
        out.push_str("}\n");
    }

    /// The MQTT topic of `reading`: `devices/{id}/telemetry/{measurement}`.
    pub fn telemetry_topic(&self, reading: &Reading) -> String {
        format!(
            "devices/{}/telemetry/{}",
            self.id(),
            self.fleet().measurement_name(reading.measurement)
        )
    }

    /// The MQTT payload of `reading`: a flat JSON object `{"ts":…, field: value, …}` with
    /// `ts` in nanoseconds (Ferrite tells the unit by magnitude).
    pub fn json_payload(&self, reading: &Reading) -> String {
        let mut out = String::with_capacity(64 + 24 * reading.values.len());
        write_json_fields(&mut out, &self.fleet(), reading, Some(reading.time_ns));
        out
    }
}

/// The columns of a CSV dataset and where each field goes; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct CsvLayout {
    /// Column names after `time` and `measurement`: tags then fields.
    tags: Vec<String>,
    fields: Vec<String>,
    /// Per measurement, per field: its index in `fields`.
    slots: Vec<Vec<usize>>,
}

impl CsvLayout {
    /// The layout of `fleet`'s datasets.
    pub fn new(fleet: &Fleet) -> Self {
        let mut fields: Vec<String> = Vec::new();
        let slots = (0..fleet.measurements())
            .map(|m| {
                fleet
                    .field_names(m)
                    .map(|name| match fields.iter().position(|f| f == name) {
                        Some(i) => i,
                        None => {
                            fields.push(name.to_owned());
                            fields.len() - 1
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            tags: fleet.tag_names().to_vec(),
            fields,
            slots,
        }
    }

    /// The header line (with the newline).
    pub fn header(&self) -> String {
        let mut out = String::from("time,measurement");
        for name in self.tags.iter().chain(&self.fields) {
            out.push(',');
            csv_cell(&mut out, name);
        }
        out.push('\n');
        out
    }

    /// Append `reading` of `device` as one row (with the newline).
    pub fn write_row(&self, device: &DeviceSim, reading: &Reading, out: &mut String) {
        let fleet = device.fleet();
        let _ = write!(out, "{},", reading.time_ns);
        csv_cell(out, fleet.measurement_name(reading.measurement));
        for (_, v) in device.tags() {
            out.push(',');
            csv_cell(out, v);
        }
        let mut cells: Vec<Option<&Value>> = vec![None; self.fields.len()];
        if let Some(slots) = self.slots.get(reading.measurement) {
            for (slot, value) in slots.iter().zip(&reading.values) {
                cells[*slot] = Some(value);
            }
        }
        for cell in cells {
            out.push(',');
            match cell {
                Some(Value::Str(s)) => csv_cell(out, s),
                Some(v) => write_plain(out, v),
                None => {}
            }
        }
        out.push('\n');
    }
}

/// `,k=v,…` for line protocol, escaped.
pub(crate) fn line_protocol_tags(keys: &[String], values: &[String]) -> String {
    let mut out = String::new();
    for (k, v) in keys.iter().zip(values) {
        out.push(',');
        escape_lp(&mut out, k, b",= ");
        out.push('=');
        escape_lp(&mut out, v, b",= ");
    }
    out
}

/// `{"ts":…,"a":1.5,…}` (with `ts` when given).
fn write_json_fields(out: &mut String, fleet: &Fleet, reading: &Reading, ts: Option<i64>) {
    out.push('{');
    let mut first = true;
    if let Some(ts) = ts {
        let _ = write!(out, "\"ts\":{ts}");
        first = false;
    }
    for (name, value) in fleet.field_names(reading.measurement).zip(&reading.values) {
        if !first {
            out.push(',');
        }
        first = false;
        json_string(out, name);
        out.push(':');
        match value {
            Value::Str(s) => json_string(out, s),
            other => write_plain(out, other),
        }
    }
    out.push('}');
}

/// A number or boolean as JSON, CSV and line protocol (floats) all read it. Rust prints the
/// shortest representation that reads back to the same `f64`, never in exponent form.
fn write_plain(out: &mut String, v: &Value) {
    let _ = match v {
        Value::F64(f) => write!(out, "{f}"),
        Value::I64(i) => write!(out, "{i}"),
        Value::U64(u) => write!(out, "{u}"),
        Value::Bool(b) => write!(out, "{b}"),
        Value::Str(s) => write!(out, "{s}"),
    };
}

fn json_string(out: &mut String, s: &str) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Append `s` with a backslash before each of `special` (line protocol escaping).
pub(crate) fn escape_lp(out: &mut String, s: &str, special: &[u8]) {
    for c in s.chars() {
        if c.is_ascii() && special.contains(&(c as u8)) {
            out.push('\\');
        }
        out.push(c);
    }
}

fn csv_cell(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fleet::{Cadence, FleetConfig};
    use crate::scenario::Scenario;

    fn fleet(text: &str) -> Fleet {
        let s = Scenario::from_toml(text, "test").unwrap();
        Fleet::new(
            &s,
            FleetConfig {
                devices: 2,
                seed: 1,
                prefix: None,
                start_ns: 1_700_000_000_000_000_000,
                end_ns: None,
                cadence: Cadence::Manual,
                faults: false,
            },
        )
        .unwrap()
    }

    const ODD: &str = r#"
name = "odd"
[devices]
id_prefix = "d-"
tags = [{ name = "site name", choices = ["a,b=c d"] }]
[[measurements]]
name = "m_one"
fields = [
    { name = "x y", mean = 1.5, decimals = 1 },
    { name = "n", type = "integer", mean = 7.0 },
    { name = "on", type = "bool", mean = 1.0 },
]
[[measurements]]
name = "m_two"
fields = [{ name = "n", type = "integer", mean = -3.0 }, { name = "z", mean = 0.25, decimals = 2 }]
"#;

    fn readings(f: &Fleet) -> (DeviceSim, Vec<Reading>) {
        let mut d = f.device(0);
        let (mut out, mut truth) = (Vec::new(), Vec::new());
        d.tick(1_700_000_000_000_000_000, &mut out, &mut truth);
        (d, out.into_iter().map(|o| o.reading).collect())
    }

    #[test]
    fn line_protocol_escapes_and_types_and_parses_back() {
        let f = fleet(ODD);
        let (d, rs) = readings(&f);
        let mut lp = String::new();
        for r in &rs {
            d.write_line_protocol(r, &mut lp);
        }
        assert_eq!(
            lp,
            "m_one,device_id=d-0,site\\ name=a\\,b\\=c\\ d x\\ y=1.5,n=7i,on=true 1700000000000000000\n\
             m_two,device_id=d-0,site\\ name=a\\,b\\=c\\ d n=-3i,z=0.25 1700000000000000000\n"
        );
        let points = ferrite_core::decode::decode_line_protocol(
            &lp,
            ferrite_core::decode::Precision::Nanoseconds,
            ferrite_core::Timestamp::from_nanos(0),
            &[],
        )
        .unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].tags["site name"], "a,b=c d");
        assert_eq!(points[0].fields["x y"], Value::F64(1.5));
        assert_eq!(points[0].fields["n"], Value::I64(7));
        assert_eq!(points[0].fields["on"], Value::Bool(true));
        assert_eq!(points[1].time.as_nanos(), 1_700_000_000_000_000_000);
    }

    #[test]
    fn ndjson_and_payload_are_json_with_every_value() {
        let f = fleet(ODD);
        let (d, rs) = readings(&f);
        let mut nd = String::new();
        d.write_ndjson(&rs[0], &mut nd);
        assert!(nd.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&nd).unwrap();
        assert_eq!(v["ts"], 1_700_000_000_000_000_000_i64);
        assert_eq!(v["measurement"], "m_one");
        assert_eq!(v["tags"]["site name"], "a,b=c d");
        assert_eq!(v["fields"]["x y"], 1.5);
        assert_eq!(v["fields"]["on"], true);
        assert_eq!(d.telemetry_topic(&rs[1]), "devices/d-0/telemetry/m_two");
        let payload = d.json_payload(&rs[1]);
        assert_eq!(payload, r#"{"ts":1700000000000000000,"n":-3,"z":0.25}"#);
        let point = ferrite_core::decode::decode_json(
            payload.as_bytes(),
            &ferrite_core::DeviceId::new("d-0").unwrap(),
            &ferrite_core::Measurement::new("m_two").unwrap(),
            ferrite_core::Timestamp::from_nanos(0),
        )
        .unwrap();
        assert_eq!(point.time.as_nanos(), 1_700_000_000_000_000_000);
    }

    #[test]
    fn csv_has_one_header_and_blank_cells_for_missing_fields() {
        let f = fleet(ODD);
        let (d, rs) = readings(&f);
        let layout = CsvLayout::new(&f);
        assert_eq!(
            layout.header(),
            "time,measurement,device_id,site name,x y,n,on,z\n"
        );
        let mut rows = String::new();
        for r in &rs {
            layout.write_row(&d, r, &mut rows);
        }
        assert_eq!(
            rows,
            "1700000000000000000,m_one,d-0,\"a,b=c d\",1.5,7,true,\n\
             1700000000000000000,m_two,d-0,\"a,b=c d\",,-3,,0.25\n"
        );
    }

    #[test]
    fn formats_parse_from_their_names() {
        for f in [
            OutputFormat::LineProtocol,
            OutputFormat::Ndjson,
            OutputFormat::Csv,
        ] {
            assert_eq!(f.as_str().parse::<OutputFormat>(), Ok(f));
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.as_str())
            );
        }
        assert!("xml".parse::<OutputFormat>().is_err());
    }
}
