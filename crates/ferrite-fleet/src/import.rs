//! Bulk import and export of the registry, as NDJSON or CSV.
//!
//! Import is an idempotent upsert: each record is the desired state of the fields it names;
//! fields it does not name are left as they are. A record that changes nothing writes nothing
//! (and does not bump `updated`), so running the same import twice reports everything
//! unchanged the second time. Bad records are reported with their line number and skipped;
//! the rest is applied in transactions of 256 records.
//!
//! NDJSON: one object per line, as [`Fleet::export`] writes it:
//! `{"id":"d1","name":"Pump 1","type":"pump","tags":{"site":"b"},"groups":["g"],
//! "firmware_version":"1.2","enabled":true}`. `created`, `updated` and `last_seen` are
//! accepted and ignored; `null` clears `type` / `firmware_version`; `tags` and `groups`
//! replace the whole set.
//!
//! CSV: a header row naming any of `id` (required), `name`, `type`, `groups` (`;`-separated),
//! `firmware_version`, `enabled` (`true`/`false`), and `tag:KEY` columns. A column present is
//! authoritative for every row: an empty `type` clears the type, an empty `tag:site` removes
//! that tag, an empty `name` resets it to the id, an empty `enabled` leaves it as is. Tags
//! without a column are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};

use ferrite_core::{Classify, DeviceId, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::device::{DevicePatch, NewDevice, double_option, get_tx, insert_new_tx, update_tx};
use crate::fleet::Tx;
use crate::{Fleet, FleetError};

/// Records per transaction.
pub(crate) const BATCH: usize = 256;
/// At most this many line errors are kept in the report (all are counted).
pub(crate) const MAX_REPORTED_ERRORS: usize = 1000;

/// File format of an import or export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportFormat {
    /// One JSON object per line.
    Ndjson,
    /// Comma-separated values with a header row.
    Csv,
}

/// One rejected record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line number in the input.
    pub line: u64,
    /// Why it was rejected.
    pub message: String,
}

/// What an import did (also passed, so far, to the progress callback after each batch).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Records read (blank lines excluded).
    pub records: u64,
    /// Devices created.
    pub created: u64,
    /// Devices changed.
    pub updated: u64,
    /// Records that matched the registry already.
    pub unchanged: u64,
    /// Records rejected.
    pub failed: u64,
    /// The first 1,000 rejections (all are counted in `failed`).
    pub errors: Vec<LineError>,
}

impl ImportReport {
    fn error(&mut self, line: u64, message: String) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(LineError { line, message });
        }
    }
}

struct Record {
    line: u64,
    id: DeviceId,
    patch: DevicePatch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default, with = "double_option")]
    device_type: Option<Option<String>>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    groups: Option<BTreeSet<String>>,
    #[serde(default, with = "double_option")]
    firmware_version: Option<Option<String>>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    created: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    updated: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    last_seen: serde::de::IgnoredAny,
}

fn parse_json_line(line: &str) -> Result<(DeviceId, DevicePatch), String> {
    let r: JsonRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let id = DeviceId::new(r.id).map_err(|e| e.to_string())?;
    Ok((
        id,
        DevicePatch {
            name: r.name,
            device_type: r.device_type,
            tags: r.tags,
            groups: r.groups,
            firmware_version: r.firmware_version,
            enabled: r.enabled,
            ..DevicePatch::default()
        },
    ))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Column {
    Id,
    Name,
    Type,
    Groups,
    Firmware,
    Enabled,
    Tag(String),
}

fn parse_header(h: &csv::StringRecord) -> Result<Vec<Column>, FleetError> {
    let mut cols = Vec::new();
    for name in h {
        let c = match name.trim() {
            "id" => Column::Id,
            "name" => Column::Name,
            "type" => Column::Type,
            "groups" => Column::Groups,
            "firmware_version" => Column::Firmware,
            "enabled" => Column::Enabled,
            other => match other.strip_prefix("tag:") {
                Some(k) => Column::Tag(k.to_owned()),
                None => {
                    return Err(FleetError::invalid(
                        "CSV header",
                        format!(
                            "unknown column {other:?}; known are id, name, type, groups, \
                             firmware_version, enabled, tag:KEY"
                        ),
                    ));
                }
            },
        };
        if cols.contains(&c) {
            return Err(FleetError::invalid(
                "CSV header",
                format!("column {name:?} appears twice"),
            ));
        }
        cols.push(c);
    }
    if !cols.contains(&Column::Id) {
        return Err(FleetError::invalid("CSV header", "needs an id column"));
    }
    Ok(cols)
}

fn parse_csv_row(
    cols: &[Column],
    row: &csv::StringRecord,
) -> Result<(DeviceId, DevicePatch), String> {
    let mut id = None;
    let mut p = DevicePatch::default();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    for (c, v) in cols.iter().zip(row.iter()) {
        let v = v.trim();
        match c {
            Column::Id => id = Some(DeviceId::new(v).map_err(|e| e.to_string())?),
            Column::Name => p.name = opt(v),
            Column::Type => p.device_type = Some(opt(v)),
            Column::Groups => {
                p.groups = Some(
                    v.split(';')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            Column::Firmware => p.firmware_version = Some(opt(v)),
            Column::Enabled => {
                p.enabled = match v.to_ascii_lowercase().as_str() {
                    "" => None,
                    "true" | "1" | "yes" => Some(true),
                    "false" | "0" | "no" => Some(false),
                    other => return Err(format!("enabled: {other:?} is not true or false")),
                }
            }
            Column::Tag(k) => {
                if v.is_empty() {
                    p.remove_tags.insert(k.clone());
                } else {
                    p.set_tags.insert(k.clone(), v.to_owned());
                }
            }
        }
    }
    let id = id.ok_or("missing id")?;
    if cols.contains(&Column::Name) && p.name.is_none() {
        p.name = Some(id.to_string());
    }
    Ok((id, p))
}

enum Outcome {
    Created,
    Updated,
    Unchanged,
}

fn upsert_tx(tx: &mut Tx<'_>, rec: &Record) -> Result<Outcome, FleetError> {
    match get_tx(tx, &rec.id)? {
        None => {
            let base = NewDevice::new(rec.id.clone()).into_device(tx.now);
            let d = rec.patch.apply(&base);
            insert_new_tx(tx, d, "device.import.create")?;
            Ok(Outcome::Created)
        }
        Some(old) => {
            let (_, changed) = update_tx(tx, &old, &rec.patch, "device.import.update")?;
            Ok(if changed {
                Outcome::Updated
            } else {
                Outcome::Unchanged
            })
        }
    }
}

/// Errors in one record's content skip that record; anything else aborts the import.
fn is_record_error(e: &FleetError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidInput | ErrorKind::Conflict | ErrorKind::NotFound
    )
}

impl Fleet {
    /// Import devices from `input`; see the module docs for formats and semantics. `progress`
    /// is called with the running totals after each batch. Returns an error (with the batches
    /// before it applied) only for an unreadable input or a storage failure; bad records are
    /// in the report.
    pub fn import(
        &self,
        actor: &Actor,
        format: ImportFormat,
        input: impl Read,
        mut progress: impl FnMut(&ImportReport),
    ) -> Result<ImportReport, FleetError> {
        let mut report = ImportReport::default();
        let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
        let mut flush = |batch: &mut Vec<Record>, report: &mut ImportReport| {
            if batch.is_empty() {
                return Ok(());
            }
            let outcomes = self.write(actor, |tx| {
                let mut out = Vec::with_capacity(batch.len());
                for rec in batch.iter() {
                    match upsert_tx(tx, rec) {
                        Ok(o) => out.push((rec.line, Ok(o))),
                        Err(e) if is_record_error(&e) => out.push((rec.line, Err(e.to_string()))),
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })?;
            for (line, o) in outcomes {
                match o {
                    Ok(Outcome::Created) => report.created += 1,
                    Ok(Outcome::Updated) => report.updated += 1,
                    Ok(Outcome::Unchanged) => report.unchanged += 1,
                    Err(m) => report.error(line, m),
                }
            }
            batch.clear();
            progress(report);
            Ok::<(), FleetError>(())
        };
        let read_err = |e: std::io::Error| FleetError::invalid("import input", e.to_string());
        match format {
            ImportFormat::Ndjson => {
                let reader = std::io::BufReader::new(input);
                for (i, line) in reader.lines().enumerate() {
                    let line = line.map_err(read_err)?;
                    let n = i as u64 + 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    report.records += 1;
                    match parse_json_line(&line) {
                        Ok((id, patch)) => batch.push(Record { line: n, id, patch }),
                        Err(m) => report.error(n, m),
                    }
                    if batch.len() == BATCH {
                        flush(&mut batch, &mut report)?;
                    }
                }
            }
            ImportFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .flexible(false)
                    .from_reader(input);
                let header = reader
                    .headers()
                    .map_err(|e| FleetError::invalid("CSV header", e.to_string()))?
                    .clone();
                let cols = parse_header(&header)?;
                for row in reader.records() {
                    report.records += 1;
                    let row = match row {
                        Ok(r) => r,
                        Err(e) => {
                            let line = e.position().map_or(0, csv::Position::line);
                            if e.is_io_error() {
                                return Err(FleetError::invalid("import input", e.to_string()));
                            }
                            report.error(line, e.to_string());
                            continue;
                        }
                    };
                    let n = row.position().map_or(0, csv::Position::line);
                    match parse_csv_row(&cols, &row) {
                        Ok((id, patch)) => batch.push(Record { line: n, id, patch }),
                        Err(m) => report.error(n, m),
                    }
                    if batch.len() == BATCH {
                        flush(&mut batch, &mut report)?;
                    }
                }
            }
        }
        flush(&mut batch, &mut report)?;
        Ok(report)
    }

    /// Write every device to `out` in id order; returns how many. The output imports back
    /// unchanged.
    pub fn export(&self, format: ImportFormat, mut out: impl Write) -> Result<u64, FleetError> {
        let io = |e: std::io::Error| FleetError::io("export output", e);
        let mut n = 0u64;
        match format {
            ImportFormat::Ndjson => {
                self.for_each_device(|d| {
                    serde_json::to_writer(&mut out, &d)
                        .map_err(|e| FleetError::io("export output", e.into()))?;
                    out.write_all(b"\n").map_err(io)?;
                    n += 1;
                    Ok(())
                })?;
            }
            ImportFormat::Csv => {
                let mut keys = BTreeSet::new();
                self.for_each_device(|d| {
                    keys.extend(d.tags.into_keys());
                    Ok(())
                })?;
                let mut w = csv::Writer::from_writer(&mut out);
                let csv_err = |e: csv::Error| FleetError::io("export output", e.into());
                let mut header: Vec<String> = [
                    "id",
                    "name",
                    "type",
                    "groups",
                    "firmware_version",
                    "enabled",
                ]
                .map(str::to_owned)
                .to_vec();
                header.extend(keys.iter().map(|k| format!("tag:{k}")));
                w.write_record(&header).map_err(csv_err)?;
                self.for_each_device(|d| {
                    let mut row: Vec<String> = vec![
                        d.id.to_string(),
                        d.name.clone(),
                        d.device_type.clone().unwrap_or_default(),
                        d.groups.iter().cloned().collect::<Vec<_>>().join(";"),
                        d.firmware_version.clone().unwrap_or_default(),
                        d.enabled.to_string(),
                    ];
                    row.extend(
                        keys.iter()
                            .map(|k| d.tags.get(k).cloned().unwrap_or_default()),
                    );
                    w.write_record(&row).map_err(csv_err)?;
                    n += 1;
                    Ok(())
                })?;
                w.flush().map_err(io)?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines() {
        let (id, p) = parse_json_line(
            r#"{"id":"d1","type":null,"tags":{"a":"b"},"created":123,"last_seen":null}"#,
        )
        .expect("ok");
        assert_eq!(id.as_str(), "d1");
        assert_eq!(p.device_type, Some(None));
        assert_eq!(p.name, None);
        assert_eq!(p.groups, None);
        assert!(parse_json_line(r#"{"id":"d1","colour":"red"}"#).is_err());
        assert!(parse_json_line(r#"{"id":"a/b"}"#).is_err());
        assert!(parse_json_line("not json").is_err());
    }

    #[test]
    fn csv_rows() {
        let header = csv::StringRecord::from(vec!["id", "name", "groups", "enabled", "tag:site"]);
        let cols = parse_header(&header).expect("header");
        let row = csv::StringRecord::from(vec!["d1", "", "a; b", "no", ""]);
        let (id, p) = parse_csv_row(&cols, &row).expect("row");
        assert_eq!(id.as_str(), "d1");
        assert_eq!(p.name.as_deref(), Some("d1"));
        assert_eq!(p.groups, Some(BTreeSet::from(["a".into(), "b".into()])));
        assert_eq!(p.enabled, Some(false));
        assert!(p.remove_tags.contains("site"));
        let bad = csv::StringRecord::from(vec!["d1", "", "", "maybe", ""]);
        assert!(parse_csv_row(&cols, &bad).is_err());
        assert!(parse_header(&csv::StringRecord::from(vec!["name"])).is_err());
        assert!(parse_header(&csv::StringRecord::from(vec!["id", "colour"])).is_err());
        assert!(parse_header(&csv::StringRecord::from(vec!["id", "id"])).is_err());
    }
}
