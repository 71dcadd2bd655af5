//! The one configuration: defaults, then the TOML file, then `FERRITE_*` environment
//! variables, then command-line overrides — every key at every layer. All problems are
//! collected and reported together.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferrite_mqtt::MqttConfig;
use ferrite_query::QueryConfig;
use ferrite_store::StoreConfig;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The commented default configuration, printed by `ferrite config generate`.
/// A test keeps it equal to [`Config::default`].
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Environment variables that configure the process but are not config keys.
const NON_KEY_ENV: [&str; 2] = ["FERRITE_CONFIG", "FERRITE_LOG"];

/// Everything Ferrite can be configured with.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder of all state (WAL, tables, registry). Created if missing.
    pub data_dir: PathBuf,
    /// Access policy.
    pub auth: AuthConfig,
    /// MQTT gateway.
    pub mqtt: MqttConfig,
    /// HTTP API.
    pub http: HttpConfig,
    /// SQL over the PostgreSQL wire protocol.
    pub pg: PgConfig,
    /// Telemetry ingestion from the router into the store.
    pub ingest: IngestConfig,
    /// Time-series store.
    pub store: StoreConfig,
    /// SQL queries.
    pub query: QueryConfig,
    /// Device registry, credentials and brute-force protection.
    pub fleet: ferrite_fleet::FleetConfig,
    /// Alarms raised by rules: flap detection and per-device rate limit.
    pub alarms: AlarmsConfig,
    /// The rules engine: webhook trust and window-state checkpoints.
    pub rules: RulesConfig,
}

/// `[rules]`: the rules engine.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// A PEM file of CA certificates `https://` webhooks trust besides the system's roots
    /// (empty: the system's only).
    pub webhook_ca_file: PathBuf,
    /// How often a rule with state (windows, detectors) checkpoints it to
    /// `data_dir/rules/state/`; `0s` keeps state in memory only.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: std::time::Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            webhook_ca_file: PathBuf::new(),
            checkpoint_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// `[alarms]`: flap detection and the per-device rate limit of new alarms.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmsConfig {
    /// An alarm that flips between raised and cleared more than this many times within
    /// `flap_window` is flapping: its raised/cleared events are no longer published.
    pub flap_threshold: u32,
    /// The window flips are counted in; flapping ends after a window without flips.
    #[serde(with = "humantime_serde")]
    pub flap_window: std::time::Duration,
    /// New alarms a device may get per `rate_window`; more are dropped and counted.
    pub max_new_per_device: u32,
    /// The window of `max_new_per_device`.
    #[serde(with = "humantime_serde")]
    pub rate_window: std::time::Duration,
    /// Closed alarms older than this (since they closed) are deleted; `0s` keeps them.
    #[serde(with = "humantime_serde")]
    pub closed_retention: std::time::Duration,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        let policy = ferrite_rules::alarm::AlarmPolicy::default();
        Self {
            flap_threshold: policy.flap_threshold,
            flap_window: policy.flap_window,
            max_new_per_device: 20,
            rate_window: std::time::Duration::from_secs(60),
            closed_retention: std::time::Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// `[auth]`: who may connect.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// MQTT clients and HTTP requests without credentials: `off` refuses them (the default),
    /// `loopback` admits those from loopback addresses, `any` everyone — with full access.
    pub anonymous: ferrite_api::Anonymous,
}

/// `[http]`: the HTTP API listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Largest request body, in bytes (after decompression for writes).
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 25 * 1024 * 1024,
        }
    }
}

/// `[pg]`: the PostgreSQL wire protocol listener (psql, drivers, Grafana).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PgConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address of the listener (5433: 5432 is usually a real PostgreSQL).
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the OS backlog until one ends.
    pub max_connections: usize,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            max_connections: 256,
        }
    }
}

/// `[ingest]`: the telemetry consumer between router and store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Telemetry messages queued between the router and the decoder; when full, publishing
    /// clients wait (their PUBACK is delayed), nothing is dropped.
    pub queue: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { queue: 8192 }
    }
}

impl Config {
    /// Defaults with the embedded data folder `./ferrite-data`.
    pub fn embedded() -> Self {
        Self {
            data_dir: PathBuf::from("ferrite-data"),
            ..Self::default()
        }
    }

    /// Problems across all sections.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            errs.push("data_dir must not be empty".to_owned());
        }
        if self.http.max_body_bytes < 1024 {
            errs.push("http.max_body_bytes must be at least 1024".to_owned());
        }
        if self.pg.max_connections == 0 {
            errs.push("pg.max_connections must be at least 1".to_owned());
        }
        if self.ingest.queue == 0 {
            errs.push("ingest.queue must be at least 1".to_owned());
        }
        if self.alarms.flap_threshold == 0 || self.alarms.max_new_per_device == 0 {
            errs.push(
                "alarms.flap_threshold and alarms.max_new_per_device must be at least 1".to_owned(),
            );
        }
        if self.alarms.flap_window.is_zero() || self.alarms.rate_window.is_zero() {
            errs.push("alarms.flap_window and alarms.rate_window must be more than 0s".to_owned());
        }
        errs.extend(self.mqtt.validate());
        errs.extend(self.store.validate());
        errs.extend(self.query.validate());
        let fleet = &self.fleet;
        if fleet.max_credentials_per_device < 2 {
            errs.push(
                "fleet.max_credentials_per_device must be at least 2 (rotation needs two)"
                    .to_owned(),
            );
        }
        if fleet.event_capacity == 0
            || fleet.auth_cache_capacity == 0
            || fleet.limiter.max_tracked == 0
        {
            errs.push("fleet.event_capacity, fleet.auth_cache_capacity and fleet.limiter.max_tracked must be at least 1".to_owned());
        }
        if fleet.cert_validity.is_zero() || fleet.ca_validity.is_zero() {
            errs.push("fleet.cert_validity and fleet.ca_validity must be more than 0s".to_owned());
        }
        if fleet.limiter.per_ip.burst == 0 || fleet.limiter.per_device.burst == 0 {
            errs.push("fleet.limiter burst must be at least 1".to_owned());
        }
        errs
    }
}

/// Where configuration comes from, in increasing precedence after the defaults.
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    /// An explicitly named file (`--config`, `FERRITE_CONFIG`): must exist.
    pub file: Option<PathBuf>,
    /// A file read only if it exists (`./ferrite.toml`).
    pub default_file: Option<PathBuf>,
    /// Environment variables (all of them; only `FERRITE_*` are looked at).
    pub env: Vec<(String, String)>,
    /// `key=value` overrides from flags, applied last, in order.
    pub overrides: Vec<(String, String)>,
}

/// Every problem found while loading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("{} configuration error(s):\n  - {}", .0.len(), .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// Load and validate the configuration from `sources`.
pub fn load(sources: &ConfigSources) -> Result<(Config, Option<PathBuf>), ConfigErrors> {
    let mut errs = Vec::new();
    let defaults = match Value::try_from(Config::embedded()) {
        Ok(Value::Table(t)) => t,
        _ => {
            return Err(ConfigErrors(vec![
                "internal: defaults are not a table".to_owned(),
            ]));
        }
    };
    let known = flatten(&defaults);
    let mut merged = defaults.clone();

    let file = sources
        .file
        .clone()
        .or_else(|| sources.default_file.clone().filter(|p| p.exists()));
    if let Some(path) = &file {
        match std::fs::read_to_string(path) {
            Ok(text) => match text.parse::<Table>() {
                Ok(table) => {
                    for key in flatten(&table).keys() {
                        if !known.contains_key(key) && !is_table_setting(key) {
                            errs.push(format!("{}: unknown key `{key}`", path.display()));
                        }
                    }
                    merge(&mut merged, table);
                }
                Err(e) => errs.push(format!("{}: {e}", path.display())),
            },
            Err(e) => errs.push(format!("{}: {e}", path.display())),
        }
    }

    let env_keys: BTreeMap<String, &String> = known
        .keys()
        .map(|k| (format!("FERRITE_{}", k.replace('.', "_").to_uppercase()), k))
        .collect();
    for (name, raw) in &sources.env {
        if !name.starts_with("FERRITE_") || NON_KEY_ENV.contains(&name.as_str()) {
            continue;
        }
        match env_keys.get(name) {
            Some(key) => set(&mut merged, key, &known[*key], raw, name, &mut errs),
            None => errs.push(format!(
                "environment variable {name} is not a Ferrite setting"
            )),
        }
    }
    for (key, raw) in &sources.overrides {
        match known.get(key) {
            Some(default) => set(
                &mut merged,
                key,
                default,
                raw,
                &format!("--set {key}"),
                &mut errs,
            ),
            None => errs.push(format!("--set {key}: unknown key")),
        }
    }

    // Deserialize section by section so a type error in one does not hide the others.
    let mut config = Config::embedded();
    for (key, value) in merged {
        let ctx = |e: toml::de::Error| format!("{key}: {}", e.message());
        match key.as_str() {
            "data_dir" => match value.try_into() {
                Ok(v) => config.data_dir = v,
                Err(e) => errs.push(ctx(e)),
            },
            "auth" => section(value, &mut config.auth, &key, &mut errs),
            "mqtt" => section(value, &mut config.mqtt, &key, &mut errs),
            "http" => section(value, &mut config.http, &key, &mut errs),
            "pg" => section(value, &mut config.pg, &key, &mut errs),
            "ingest" => section(value, &mut config.ingest, &key, &mut errs),
            "store" => section(value, &mut config.store, &key, &mut errs),
            "query" => section(value, &mut config.query, &key, &mut errs),
            "fleet" => section(value, &mut config.fleet, &key, &mut errs),
            "alarms" => section(value, &mut config.alarms, &key, &mut errs),
            "rules" => section(value, &mut config.rules, &key, &mut errs),
            _ => {} // reported above as unknown
        }
    }
    errs.extend(config.validate());
    if errs.is_empty() {
        Ok((config, file))
    } else {
        Err(ConfigErrors(errs))
    }
}

fn section<T: serde::de::DeserializeOwned>(
    value: Value,
    slot: &mut T,
    key: &str,
    errs: &mut Vec<String>,
) {
    match value.try_into() {
        Ok(v) => *slot = v,
        Err(e) => errs.push(format!("[{key}]: {}", e.message().trim())),
    }
}

/// Settings of one store table (`[store.tables.NAME]`, `ferrite_store::TableConfig`): the
/// defaults name no table, so these keys are known by their shape.
const TABLE_SETTINGS: [&str; 3] = ["retention", "rollups", "cold_after"];

/// Whether `key` is `store.tables.NAME.SETTING` (rollups are a list, so a flattened key ends
/// at the setting).
fn is_table_setting(key: &str) -> bool {
    key.strip_prefix("store.tables.")
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(name, setting)| !name.is_empty() && TABLE_SETTINGS.contains(&setting))
}

/// `a.b.c` → leaf value, for every leaf of `table`.
fn flatten(table: &Table) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, table: &Table, out: &mut BTreeMap<String, Value>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(t) => walk(&key, t, out),
                leaf => {
                    out.insert(key, leaf.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Set `key` from a string, typed like its default value.
fn set(
    merged: &mut Table,
    key: &str,
    default: &Value,
    raw: &str,
    origin: &str,
    errs: &mut Vec<String>,
) {
    let value = match default {
        Value::String(_) => Value::String(raw.to_owned()),
        Value::Integer(_) => match raw.trim().parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => return errs.push(format!("{origin}: expected an integer, got {raw:?}")),
        },
        Value::Float(_) => match raw.trim().parse::<f64>() {
            Ok(f) => Value::Float(f),
            Err(_) => return errs.push(format!("{origin}: expected a number, got {raw:?}")),
        },
        Value::Boolean(_) => match raw.trim() {
            "true" | "1" | "yes" | "on" => Value::Boolean(true),
            "false" | "0" | "no" | "off" => Value::Boolean(false),
            _ => return errs.push(format!("{origin}: expected true or false, got {raw:?}")),
        },
        _ => return errs.push(format!("{origin}: this key cannot be set from a string")),
    };
    let mut table = merged;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return;
        }
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(t) => table = t,
            _ => return errs.push(format!("{origin}: `{part}` is not a section")),
        }
    }
}

/// Resolve `data_dir` relative to `base` if it is relative.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sources() -> ConfigSources {
        ConfigSources::default()
    }

    #[test]
    fn generated_default_equals_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::embedded());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            "data_dir = \"from-file\"\n[mqtt]\nreceive_maximum = 10\nsession_queue = 7\n",
        )
        .unwrap();
        let s = ConfigSources {
            file: Some(file),
            env: vec![
                ("FERRITE_MQTT_RECEIVE_MAXIMUM".into(), "20".into()),
                ("FERRITE_QUERY_TIMEOUT".into(), "5s".into()),
                ("PATH".into(), "/bin".into()),
            ],
            overrides: vec![("mqtt.receive_maximum".into(), "30".into())],
            ..sources()
        };
        let (c, _) = load(&s).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("from-file"));
        assert_eq!(c.mqtt.session_queue, 7);
        assert_eq!(c.mqtt.receive_maximum, 30);
        assert_eq!(c.query.timeout, std::time::Duration::from_secs(5));
    }

    /// Every section of the default file is loaded: setting each leaf to the value it already
    /// has must succeed, and a changed leaf of every section must reach the `Config` (a
    /// section missing from the loader would be silently ignored).
    #[test]
    fn every_section_reaches_the_config() {
        let changes = [
            ("FERRITE_FLEET_CACHE_BYTES", "1000"),
            ("FERRITE_FLEET_LIMITER_PER_IP_BURST", "5"),
            ("FERRITE_AUTH_ANONYMOUS", "any"),
            ("FERRITE_HTTP_MAX_BODY_BYTES", "2048"),
            ("FERRITE_PG_MAX_CONNECTIONS", "17"),
            ("FERRITE_INGEST_QUEUE", "3"),
            ("FERRITE_STORE_WRITE_QUEUE", "9"),
            ("FERRITE_QUERY_MAX_ROWS", "11"),
            ("FERRITE_MQTT_SESSION_QUEUE", "13"),
            ("FERRITE_ALARMS_FLAP_THRESHOLD", "4"),
        ];
        let s = ConfigSources {
            env: changes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..sources()
        };
        let (c, _) = load(&s).unwrap();
        assert_eq!(c.fleet.cache_bytes, 1000);
        assert_eq!(c.fleet.limiter.per_ip.burst, 5);
        assert_eq!(c.auth.anonymous, ferrite_api::Anonymous::Any);
        assert_eq!(c.http.max_body_bytes, 2048);
        assert_eq!(c.pg.max_connections, 17);
        assert_eq!(c.ingest.queue, 3);
        assert_eq!(c.store.write_queue, 9);
        assert_eq!(c.query.max_rows, 11);
        assert_eq!(c.mqtt.session_queue, 13);
        assert_eq!(c.alarms.flap_threshold, 4);
        let top: Vec<String> = DEFAULT_TOML
            .parse::<Table>()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            top,
            [
                "alarms", "auth", "data_dir", "fleet", "http", "ingest", "mqtt", "pg", "query",
                "rules", "store"
            ],
            "a new section needs a line in `load` and in this test"
        );
    }

    #[test]
    fn per_table_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            "[store.tables.readings]\nretention = \"30days\"\nrollups = [\"1m\", \"1h\"]\n\
             [store.tables.readings_1h]\nretention = \"3650days\"\ncold_after = \"90days\"\n",
        )
        .unwrap();
        let (c, _) = load(&ConfigSources {
            file: Some(file.clone()),
            ..sources()
        })
        .unwrap();
        let t = &c.store.tables["readings"];
        assert_eq!(
            t.retention,
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(t.rollups, ["1m", "1h"]);
        assert_eq!(
            c.store.tables["readings_1h"].retention,
            Some(std::time::Duration::from_secs(3650 * 86_400))
        );
        assert_eq!(
            c.store.tables["readings_1h"].cold_after,
            Some(std::time::Duration::from_secs(90 * 86_400))
        );
        // A misspelt setting, and an interval that does not divide the partition, are errors.
        for (text, needle) in [
            (
                "[store.tables.readings]\nretension = \"1d\"\n",
                "unknown key `store.tables.readings.retension`",
            ),
            (
                "[store.tables.readings]\nrollups = [\"7m\"]\n",
                "store.tables.readings.rollups: \"7m\" must be whole seconds that divide",
            ),
            (
                "[store]\ncold_url = \"gs://bucket\"\n",
                "store.cold_url: \"gs://bucket\": expected a folder",
            ),
            (
                "[store]\nwhen_full = \"drop_everything\"\n",
                "drop_everything",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let errs = load(&ConfigSources {
                file: Some(file.clone()),
                ..sources()
            })
            .unwrap_err()
            .0
            .join("\n");
            assert!(errs.contains(needle), "{errs}");
        }
    }

    #[test]
    fn all_errors_are_reported_together() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            "[mqtt]\nlisten = \"nowhere\"\nbogus = 1\n[store]\nwrite_queue = 0\n",
        )
        .unwrap();
        let s = ConfigSources {
            file: Some(file),
            env: vec![
                ("FERRITE_NOPE".into(), "1".into()),
                ("FERRITE_MQTT_RECEIVE_MAXIMUM".into(), "many".into()),
            ],
            overrides: vec![("query.max_rows".into(), "0".into())],
            ..sources()
        };
        let errs = load(&s).unwrap_err().0;
        let all = errs.join("\n");
        for needle in [
            "unknown key `mqtt.bogus`",
            "FERRITE_NOPE",
            "expected an integer",
            "[mqtt]",
            "store.write_queue",
            "query.max_rows",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn explicit_file_must_exist_but_default_file_may_not() {
        let s = ConfigSources {
            default_file: Some("/nonexistent/ferrite.toml".into()),
            ..sources()
        };
        assert!(load(&s).is_ok());
        let s = ConfigSources {
            file: Some("/nonexistent/ferrite.toml".into()),
            ..sources()
        };
        assert!(load(&s).is_err());
    }
}
