//! The `ferrite` command: parse the command line, load the configuration, set up logging and
//! hand over to the server or simulator library. Only `main` decides exit codes:
//! 0 success, 1 runtime failure, 2 bad configuration or usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod alarm_cmd;
mod bench_cmd;
mod export_cmd;
mod fleet_cmd;
mod rule_cmd;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferrite_core::{Classify, ErrorKind, Timestamp};
use ferrite_mqtt_codec::ProtocolVersion;
use ferrite_server::config::{self, ConfigSources, DEFAULT_TOML};
use ferrite_server::{Config, Server};
use ferrite_sim::{
    ApiConfig, BUILTIN_NAMES, Cadence, FileConfig, LiveOptions, OutputFormat, Phase, Progress,
    Scenario, SimConfig, SimError, SimReport, Transport, generate_file, generate_to_path,
};
use tokio_util::sync::CancellationToken;

/// Ferrite — MQTT gateway, telemetry store and SQL in one binary.
#[derive(Parser)]
#[command(name = "ferrite", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Configuration file [default: ./ferrite.toml if it exists].
    #[arg(long, global = true, env = "FERRITE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `ferrite_mqtt=debug,info`.
    #[arg(
        long,
        global = true,
        env = "FERRITE_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Ferrite: MQTT gateway, telemetry store and HTTP SQL API.
    Serve(Overrides),
    /// Simulate a fleet of devices: publish telemetry to a running Ferrite over MQTT (or HTTP
    /// with `--transport http`) — registering the devices through its API first when given
    /// an API token (`--token`, FERRITE_TOKEN) — or write a dataset with ground truth
    /// (`--out`).
    ///
    /// Live mode against a secured server: with an API token (`--token`, or FERRITE_TOKEN as
    /// for `ferrite device`) it first registers its devices through the fleet API at `--http`
    /// (a device that exists gets a fresh token), then every device connects with user name =
    /// its id and password = its own token. All devices connect at once (at most
    /// `--connect-concurrency` in progress) and the report gives the connect storm: first
    /// CONNECT to last CONNACK, connect latency p50/p99, refusals by reason code;
    /// `--connect-only` stops there. Without a token devices connect anonymously (`ferrite
    /// serve --anonymous loopback`). `--transport http` sends line-protocol batches to
    /// /api/v2/write instead of MQTT. The JSON report goes to standard output, progress to
    /// standard error.
    Simulate(Box<SimulateArgs>),
    /// Run SQL against a running Ferrite and print the answer.
    Query(QueryArgs),
    /// Export one table's rows in a time range from a running Ferrite as Parquet, CSV or
    /// NDJSON, e.g. `ferrite export --table telemetry --from 2026-12-01T00:00:00Z --out
    /// t.parquet`. Rows stream; the file appears only when complete.
    Export(export_cmd::ExportArgs),
    /// Manage the device registry of a running Ferrite.
    Device {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: fleet_cmd::DeviceCommand,
    },
    /// Manage API tokens of a running Ferrite.
    Token {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: fleet_cmd::TokenCommand,
    },
    /// The fleet CA and device certificates for mutual TLS.
    Cert {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: fleet_cmd::CertCommand,
    },
    /// Access policies: what devices may publish and subscribe to beyond devices/{id}/.
    Policy {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: fleet_cmd::PolicyCommand,
    },
    /// Claim tokens with which devices enroll themselves.
    Claim {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: fleet_cmd::ClaimCommand,
    },
    /// Show the audit log: who changed what, when.
    Audit(fleet_cmd::AuditArgs),
    /// Rules of a running Ferrite (`create`, `list`, `show`, `rm`, `enable`, `disable`), and
    /// `rule test` to run a rule offline over recorded messages.
    Rule {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: rule_cmd::RuleCommand,
    },
    /// Alarms raised by rules (`list`, `show`, `ack`, `clear`).
    Alarm {
        #[command(flatten)]
        api: fleet_cmd::ApiArgs,
        #[command(subcommand)]
        command: alarm_cmd::AlarmCommand,
    },
    /// Benchmarks against any broker (the load side of `bench/mqtt`); JSON figures on
    /// standard output.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Print or check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// MQTT broker benchmarks: throughput, latency, connection rate, idle memory.
    Mqtt {
        #[command(subcommand)]
        bench: bench_cmd::MqttBench,
    },
    /// Post a line-protocol file to any InfluxDB-compatible write URL (Ferrite, InfluxDB,
    /// VictoriaMetrics) in batches; prints lines/s and field values/s as JSON.
    Write(bench_cmd::WriteArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration, with comments, as TOML.
    Generate,
    /// Load the configuration (file, environment, flags), report every problem, and print the
    /// effective configuration if there is none.
    Check(Overrides),
}

/// Flags that override configuration keys (highest precedence).
#[derive(Args, Clone, Default)]
struct Overrides {
    /// Data folder [config: data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT listen address [config: mqtt.listen].
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<String>,
    /// HTTP listen address [config: http.listen].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// PostgreSQL wire protocol listen address [config: pg.listen].
    #[arg(long, value_name = "ADDR")]
    pg_listen: Option<String>,
    /// Admit MQTT clients and API calls without credentials: off, loopback or any
    /// [config: auth.anonymous].
    #[arg(long, value_name = "WHO", value_parser = ["off", "loopback", "any"])]
    anonymous: Option<String>,
    /// Set any configuration key, e.g. `--set mqtt.receive_maximum=256` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct QueryArgs {
    /// The SQL statement, e.g. "SELECT device_id, avg(temperature) FROM telemetry GROUP BY 1".
    sql: String,
    /// HTTP API of the running server.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    http: String,
    /// Output: an aligned table, CSV or JSON rows.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    format: String,
    /// API token with the viewer role or more.
    #[arg(
        long,
        env = "FERRITE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

/// `ferrite simulate`: live (publish over MQTT to a running server) by default, file mode
/// (write a dataset) with `--out`.
#[derive(Args)]
struct SimulateArgs {
    /// A built-in scenario (smart_building, fleet_trucks, factory_vibration,
    /// city_air_quality) or a scenario TOML file. Without it, live mode publishes flat
    /// `telemetry` readings (the plain load generator).
    #[arg(long, value_name = "NAME|FILE")]
    scenario: Option<String>,
    /// Print a built-in scenario's TOML (to start a custom one from) and exit.
    #[arg(long, value_name = "NAME")]
    print_scenario: Option<String>,
    /// MQTT server to publish to (live mode).
    #[arg(
        long,
        default_value = "127.0.0.1:1883",
        value_name = "ADDR",
        conflicts_with = "out"
    )]
    mqtt: SocketAddr,
    /// HTTP API of the running server: where devices are registered (with --token) and where
    /// `--transport http` writes (live mode).
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        value_name = "ADDR",
        conflicts_with = "out"
    )]
    http: String,
    /// API token, operator role or more (the admin token `ferrite serve` printed, or one from
    /// `ferrite token create`). With it, live mode registers its devices through the API
    /// before connecting them, each with its own token.
    #[arg(
        long,
        env = "FERRITE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// How readings travel: `mqtt` (a connection per device, QoS 1) or `http` (line-protocol
    /// batches to /api/v2/write with the API token; no MQTT connections) (live mode).
    #[arg(
        long,
        default_value = "mqtt",
        value_name = "mqtt|http",
        conflicts_with = "out"
    )]
    transport: Transport,
    /// Most MQTT connections in progress at once while the devices connect (live mode).
    #[arg(long, default_value_t = 1000, value_name = "N", conflicts_with = "out")]
    connect_concurrency: usize,
    /// Connect every device (registering them first with --token), report the connect
    /// storm, disconnect cleanly and exit; publish nothing (live mode).
    #[arg(long, conflicts_with_all = ["out", "count", "duration", "transport"])]
    connect_only: bool,
    /// Most lines per write request (`--transport http`).
    #[arg(long, default_value_t = 5000, value_name = "N", conflicts_with = "out")]
    batch_lines: usize,
    /// Write requests in flight at once (`--transport http`).
    #[arg(long, default_value_t = 4, value_name = "N", conflicts_with = "out")]
    http_requests: usize,
    /// Number of devices (live: one MQTT connection each).
    #[arg(long, short = 'n', default_value_t = 10)]
    devices: usize,
    /// Readings per second over all devices [live default: 100]. With a scenario, tick
    /// times follow its arrival rate λ(t), scaled to this mean.
    #[arg(
        long,
        short = 'r',
        value_parser = parse_rate,
        conflicts_with_all = ["max_rate", "interval"]
    )]
    rate: Option<f64>,
    /// Publish as fast as acknowledgements allow (live mode).
    #[arg(long, conflicts_with = "out")]
    max_rate: bool,
    /// Stop after this long, e.g. `30s`, `5m` [default: until --count or Ctrl-C] (live mode).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "out")]
    duration: Option<Duration>,
    /// Stop after this many publishes in total (live mode).
    #[arg(long, conflicts_with = "out")]
    count: Option<u64>,
    /// Seed of everything random; the same seed gives the same readings (and, in file mode,
    /// a byte-identical file).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Device id prefix; ids are PREFIX0, PREFIX1, ... [default: the scenario's, else `sim-`].
    #[arg(long)]
    prefix: Option<String>,
    /// MQTT version the devices speak (live mode).
    #[arg(long, default_value = "5", value_parser = ["5", "3.1.1"], conflicts_with = "out")]
    mqtt_version: String,
    /// Unacknowledged publishes per device before it waits (live MQTT mode).
    #[arg(long, default_value_t = 32, conflicts_with = "out")]
    window: usize,
    /// Inject none of the scenario's faults (clean data).
    #[arg(long, requires = "scenario")]
    no_faults: bool,
    /// Write the ground truth of the injected faults (NDJSON) to this file.
    #[arg(long, value_name = "FILE", requires = "scenario")]
    truth: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// File mode: write a dataset to this file (`-`: standard output) instead of publishing.
    #[arg(
        long,
        value_name = "FILE|-",
        requires_all = ["scenario", "from", "to"]
    )]
    out: Option<PathBuf>,
    /// Dataset format: `lp` (line protocol, ns), `ndjson` or `csv` (file mode).
    #[arg(long, default_value = "lp", requires = "out")]
    format: OutputFormat,
    /// Dataset start (inclusive), RFC 3339, e.g. `2026-01-01T00:00:00Z` (file mode).
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "out")]
    from: Option<Timestamp>,
    /// Dataset end (exclusive), RFC 3339 (file mode).
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "out")]
    to: Option<Timestamp>,
    /// Each device reads every interval, aligned to --from, e.g. `10s` (file mode;
    /// or --rate).
    #[arg(long, value_parser = humantime::parse_duration, requires = "out")]
    interval: Option<Duration>,
}

/// A rate: a finite number > 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err("must be a number > 0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// An RFC 3339 time (`2026-01-01T00:00:00Z`; without an offset, UTC).
fn parse_time(s: &str) -> Result<Timestamp, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e} (expected RFC 3339)"))?;
    let ns = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()),
        Err(before) => i64::try_from(before.duration().as_nanos()).map(|n| -n),
    };
    ns.map(Timestamp::from_nanos)
        .map_err(|_| "out of range (years 1677-2262)".to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Version => {
            out(&format!("ferrite {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Generate,
        } => {
            out(DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check(o),
        } => match load_config(cli.config, &o) {
            Ok((config, file)) => {
                match file {
                    Some(f) => eprintln!("configuration OK (file {})", f.display()),
                    None => {
                        eprintln!("configuration OK (no file; defaults, environment and flags)")
                    }
                }
                match toml::to_string(&config) {
                    Ok(s) => out(&s),
                    Err(e) => eprintln!("cannot print the configuration: {e}"),
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve(o) => match load_config(cli.config, &o) {
            Ok((config, _)) => runtime.block_on(serve(config)),
            Err(code) => code,
        },
        Command::Simulate(args) => runtime.block_on(simulate(*args)),
        Command::Query(args) => runtime.block_on(query(args)),
        Command::Export(args) => runtime.block_on(export_cmd::export(args)),
        Command::Device { api, command } => runtime.block_on(fleet_cmd::device(api, command)),
        Command::Token { api, command } => runtime.block_on(fleet_cmd::token(api, command)),
        Command::Cert { api, command } => runtime.block_on(fleet_cmd::cert(api, command)),
        Command::Policy { api, command } => runtime.block_on(fleet_cmd::policy(api, command)),
        Command::Claim { api, command } => runtime.block_on(fleet_cmd::claim(api, command)),
        Command::Audit(args) => runtime.block_on(fleet_cmd::audit(args)),
        Command::Rule { api, command } => runtime.block_on(rule_cmd::rule(api, command)),
        Command::Alarm { api, command } => runtime.block_on(alarm_cmd::alarm(api, command)),
        Command::Bench {
            command: BenchCommand::Mqtt { bench },
        } => runtime.block_on(bench_cmd::mqtt(bench)),
        Command::Bench {
            command: BenchCommand::Write(args),
        } => runtime.block_on(bench_cmd::write(args)),
    }
}

/// Write to stdout, ignoring a closed pipe (`ferrite query ... | head` must not panic, and a
/// server whose stdout reader went away must keep serving).
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut stdout, text.as_bytes());
    let _ = std::io::Write::flush(&mut stdout);
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter {filter:?} ({e}); using `info`");
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_config(
    file: Option<PathBuf>,
    o: &Overrides,
) -> Result<(Config, Option<PathBuf>), ExitCode> {
    let mut overrides = Vec::new();
    if let Some(d) = &o.data_dir {
        overrides.push(("data_dir".to_owned(), d.display().to_string()));
    }
    if let Some(a) = &o.mqtt_listen {
        overrides.push(("mqtt.listen".to_owned(), a.clone()));
    }
    if let Some(a) = &o.http_listen {
        overrides.push(("http.listen".to_owned(), a.clone()));
    }
    if let Some(a) = &o.pg_listen {
        overrides.push(("pg.listen".to_owned(), a.clone()));
    }
    if let Some(a) = &o.anonymous {
        overrides.push(("auth.anonymous".to_owned(), a.clone()));
    }
    let mut bad = Vec::new();
    for kv in &o.set {
        match kv.split_once('=') {
            Some((k, v)) => overrides.push((k.trim().to_owned(), v.to_owned())),
            None => bad.push(format!("--set {kv}: expected KEY=VALUE")),
        }
    }
    let sources = ConfigSources {
        file,
        default_file: Some(PathBuf::from("ferrite.toml")),
        env: std::env::vars().collect(),
        overrides,
    };
    let result = config::load(&sources);
    match result {
        Ok(c) if bad.is_empty() => Ok(c),
        Ok(_) => {
            eprintln!(
                "error: {} configuration error(s):\n  - {}",
                bad.len(),
                bad.join("\n  - ")
            );
            Err(ExitCode::from(2))
        }
        Err(mut e) => {
            e.0.extend(bad);
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let anonymous = config.auth.anonymous;
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    let replay = server.replay_report();
    let access = match anonymous {
        ferrite_server::Anonymous::Off => "devices authenticate with their token or certificate",
        ferrite_server::Anonymous::Loopback => "anonymous clients from loopback (auth.anonymous)",
        ferrite_server::Anonymous::Any => "anonymous clients from ANY address (auth.anonymous)",
    };
    let mut banner = String::new();
    let _ = writeln!(banner, "Ferrite {} is running.", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(banner, "  MQTT 3.1.1/5.0  mqtt://{mqtt}  ({access})");
    if let Some(tls) = server.mqtt_tls_addr() {
        let _ = writeln!(banner, "  MQTT over TLS   mqtts://{tls}");
    }
    let _ = writeln!(
        banner,
        "  HTTP API        http://{http}  (GET /healthz, POST /api/v1/query)"
    );
    if let Some(pg) = server.pg_addr() {
        let _ = writeln!(
            banner,
            "  PostgreSQL wire postgres://{pg}  (psql -h {} -p {} -U ferrite; password: an API token)",
            pg.ip(),
            pg.port()
        );
    }
    let _ = writeln!(
        banner,
        "  data folder     {}  ({} WAL records replayed)",
        server.data_dir().display(),
        replay.records
    );
    if let Some(token) = server.bootstrap_token() {
        let _ = writeln!(
            banner,
            "Admin API token (shown once; only its hash is kept): {token}"
        );
    }
    let _ = writeln!(banner, "Try it:");
    let _ = writeln!(banner, "  export FERRITE_TOKEN=<the admin token>");
    let _ = writeln!(
        banner,
        "  ferrite device add d1 --http {http}     # prints the device's token"
    );
    let _ = writeln!(
        banner,
        "  mosquitto_pub -h {} -p {} -V mqttv5 -q 1 -i d1 -u d1 -P <device token> -t devices/d1/telemetry -m '{{\"temperature\":21.5}}'",
        mqtt.ip(),
        mqtt.port()
    );
    let _ = writeln!(
        banner,
        "  curl -s -H \"Authorization: Bearer $FERRITE_TOKEN\" -X POST http://{http}/api/v1/query -d 'SELECT * FROM telemetry'"
    );
    let _ = writeln!(
        banner,
        "  ferrite query --http {http} 'SELECT device_id, count(*) FROM telemetry GROUP BY 1'"
    );
    let _ = writeln!(
        banner,
        "  ferrite simulate --mqtt {mqtt} --http {http} --devices 10 --rate 100 --duration 30s"
    );
    let _ = writeln!(banner, "Stop with Ctrl-C.");
    out(&banner);
    let token = server.shutdown_token();
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        () = token.cancelled() => {}
    }
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn query(args: QueryArgs) -> ExitCode {
    let accept = match args.format.as_str() {
        "csv" => "text/csv",
        "json" => "application/json",
        _ => "application/vnd.apache.arrow.stream",
    };
    let url = format!("http://{}/api/v1/query", args.http);
    let mut request = reqwest::Client::new().post(&url).header("Accept", accept);
    if let Some(t) = &args.token {
        request = request.bearer_auth(t);
    }
    let response = match request.body(args.sql).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach Ferrite at {url}: {e}");
            return ExitCode::from(1);
        }
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: reading the answer: {e}");
            return ExitCode::from(1);
        }
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        eprintln!("error ({status}): {message}");
        return ExitCode::from(1);
    }
    if args.format != "table" {
        out(&String::from_utf8_lossy(&body));
        return ExitCode::SUCCESS;
    }
    let batches = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>());
    match batches.and_then(|b| Ok((arrow::util::pretty::pretty_format_batches(&b)?, b))) {
        Ok((table, batches)) => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            out(&format!(
                "{table}\n({rows} row{})\n",
                if rows == 1 { "" } else { "s" }
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: decoding the answer: {e}");
            ExitCode::from(1)
        }
    }
}

async fn simulate(args: SimulateArgs) -> ExitCode {
    if let Some(name) = &args.print_scenario {
        return match Scenario::builtin_toml(name) {
            Some(text) => {
                out(text);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "error: no built-in scenario {name:?}; the built-in scenarios are {}",
                    BUILTIN_NAMES.join(", ")
                );
                ExitCode::from(2)
            }
        };
    }
    let scenario = match args.scenario.as_deref().map(Scenario::load).transpose() {
        Ok(s) => s,
        Err(e) => return sim_failure(&SimError::from(e)),
    };
    let progress = Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            cancel.cancel();
        });
    }
    let kind = match (&args.out, args.transport) {
        (Some(_), _) => LineKind::File,
        (None, Transport::Mqtt) => LineKind::Mqtt,
        (None, Transport::Http) => LineKind::Http,
    };
    let devices = args.devices.max(1);
    let reporter = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let mut last = Last::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", progress_line(&progress, &mut last, kind, devices));
            }
        })
    };
    let code = match (args.out.clone(), scenario) {
        (Some(out), Some(scenario)) => {
            simulate_file(args, scenario, out, Arc::clone(&progress), cancel).await
        }
        // clap requires --scenario with --out; without --out this is a live run.
        (_, scenario) => simulate_live(args, scenario, Arc::clone(&progress), cancel).await,
    };
    reporter.abort();
    code
}

/// Which progress line to print.
#[derive(Clone, Copy)]
enum LineKind {
    File,
    Mqtt,
    Http,
}

/// The counters at the previous progress line, for rates.
#[derive(Default)]
struct Last {
    provisioned: u64,
    done: u64,
}

/// One line of progress per second on standard error.
fn progress_line(progress: &Progress, last: &mut Last, kind: LineKind, devices: usize) -> String {
    if let LineKind::File = kind {
        let rows = progress.sent.load(Ordering::Relaxed);
        let line = format!(
            "rows {rows:>12}  rate {:>10}/s",
            rows.saturating_sub(last.done)
        );
        last.done = rows;
        return line;
    }
    if progress.phase() == Phase::Provisioning {
        let n = progress.provisioned.load(Ordering::Relaxed);
        let line = format!(
            "provisioning {n:>7}/{devices} devices  rate {:>6}/s",
            n.saturating_sub(last.provisioned)
        );
        last.provisioned = n;
        return line;
    }
    let acked = progress.acked.load(Ordering::Relaxed);
    let (p50, p99) = progress.percentiles();
    let line = match kind {
        LineKind::Http => format!(
            "lines sent {:>10}  acked {:>10}  errors {:>6}  faults {:>6}  requests {:>7}  rate {:>8}/s  request p50 {:>7.2}ms  p99 {:>7.2}ms",
            progress.sent.load(Ordering::Relaxed),
            acked,
            progress.errors.load(Ordering::Relaxed),
            progress.faults.load(Ordering::Relaxed),
            progress.requests.load(Ordering::Relaxed),
            acked.saturating_sub(last.done),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        ),
        _ => format!(
            "devices {:>6}  sent {:>9}  acked {:>9}  errors {:>6}  faults {:>6}  rate {:>8}/s  ack p50 {:>7.2}ms  p99 {:>7.2}ms",
            progress.connected.load(Ordering::Relaxed),
            progress.sent.load(Ordering::Relaxed),
            acked,
            progress.errors.load(Ordering::Relaxed),
            progress.faults.load(Ordering::Relaxed),
            acked.saturating_sub(last.done),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        ),
    };
    last.done = acked;
    line
}

/// The end-of-run summary of a live run (standard error), one line per part.
fn live_summary(report: &SimReport) -> String {
    let mut s = String::new();
    if let Some(p) = &report.provisioning {
        let _ = writeln!(
            s,
            "provisioned {} devices through http://{} in {:.2}s ({:.0}/s; {} new, {} existing; {} requests in flight)",
            p.devices,
            report.config.api.as_deref().unwrap_or_default(),
            p.elapsed_s,
            p.per_s,
            p.created,
            p.existing,
            p.concurrency,
        );
    }
    if let Some(c) = &report.connect {
        let _ = write!(
            s,
            "connect storm: {}/{} devices connected in {:.3}s (first CONNECT to last CONNACK, at most {} in progress); connect p50 {:.2}ms, p99 {:.2}ms, max {:.2}ms",
            c.connected, c.attempted, c.storm_s, c.concurrency, c.p50_ms, c.p99_ms, c.max_ms,
        );
        for (what, map) in [("refused", &c.refused), ("failed", &c.failed)] {
            if !map.is_empty() {
                let list: Vec<String> = map.iter().map(|(k, n)| format!("{n} × {k}")).collect();
                let _ = write!(s, "; {what}: {}", list.join(", "));
            }
        }
        s.push('\n');
        if c.failed.keys().any(|k| k.contains("os error 24")) {
            s.push_str(
                "hint: the simulator ran out of file descriptors; raise the limit (ulimit -n) for this many devices\n",
            );
        }
    }
    if report.config.connect_only {
        return s;
    }
    let faults: u64 = report.faults.values().sum();
    match &report.http {
        Some(h) => {
            let _ = writeln!(
                s,
                "achieved {:.1} acknowledged lines/s over {:.1}s ({} sent, {} acked, {} errors, {} faults injected; {} requests, {} failed; request p50 {:.2}ms, p99 {:.2}ms, max {:.2}ms)",
                report.acked_per_s,
                report.elapsed_s,
                report.sent,
                report.acked,
                report.errors,
                faults,
                h.requests,
                h.failed_requests,
                report.p50_ms,
                report.p99_ms,
                report.max_ms,
            );
            if let Some(e) = &h.first_error {
                let _ = writeln!(s, "first failed write: {e}");
            }
        }
        None => {
            let _ = writeln!(
                s,
                "achieved {:.1} acknowledged publishes/s over {:.1}s ({} sent, {} acked, {} errors, {} faults injected; ack p50 {:.2}ms, p99 {:.2}ms, max {:.2}ms)",
                report.acked_per_s,
                report.elapsed_s,
                report.sent,
                report.acked,
                report.errors,
                faults,
                report.p50_ms,
                report.p99_ms,
                report.max_ms,
            );
        }
    }
    s
}

/// Print a simulator error; the caller's input (an unknown or invalid scenario, an empty
/// time span, a zero rate) is a usage error (2), anything else a runtime failure (1).
fn sim_failure(e: &SimError) -> ExitCode {
    eprintln!("error: {e}");
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::NotFound => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// Write the JSON report (`serde_json::to_string_pretty` of it) to `path` (if given) and to
/// standard output (if `stdout`). False if it could not be written.
fn emit_report(report: serde_json::Result<String>, path: Option<&Path>, stdout: bool) -> bool {
    let text = match report {
        Ok(t) => t + "\n",
        Err(e) => {
            eprintln!("error: cannot print the report: {e}");
            return false;
        }
    };
    if stdout {
        out(&text);
    }
    match path.map(|p| (p, std::fs::write(p, &text))) {
        Some((p, Err(e))) => {
            eprintln!("error: writing the report to {}: {e}", p.display());
            false
        }
        _ => true,
    }
}

async fn simulate_live(
    args: SimulateArgs,
    scenario: Option<Scenario>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> ExitCode {
    let prefix = args
        .prefix
        .or_else(|| scenario.as_ref().map(|s| s.devices.id_prefix.clone()))
        .unwrap_or_else(|| "sim-".to_owned());
    let config = SimConfig {
        server: args.mqtt,
        devices: args.devices,
        rate: (!args.max_rate).then_some(args.rate.unwrap_or(100.0)),
        duration: args.duration,
        count: args.count,
        prefix,
        seed: args.seed,
        version: if args.mqtt_version == "5" {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        window: args.window,
    };
    let options = LiveOptions {
        scenario,
        truth: args.truth,
        clean: args.no_faults,
        api: ApiConfig {
            addr: args.http,
            token: args.token.filter(|t| !t.trim().is_empty()),
        },
        transport: args.transport,
        connect_concurrency: args.connect_concurrency,
        connect_only: args.connect_only,
        batch_lines: args.batch_lines,
        http_requests: args.http_requests,
        ..LiveOptions::default()
    };
    let report = match ferrite_sim::run_with(config, options, progress, cancel).await {
        Ok(r) => r,
        Err(e) => return sim_failure(&e),
    };
    eprint!("{}", live_summary(&report));
    let written = emit_report(
        serde_json::to_string_pretty(&report),
        args.report.as_deref(),
        true,
    );
    if report.errors > 0 || !written {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn simulate_file(
    args: SimulateArgs,
    scenario: Scenario,
    out_path: PathBuf,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> ExitCode {
    let (Some(from), Some(to)) = (args.from, args.to) else {
        eprintln!("error: file mode needs --from and --to");
        return ExitCode::from(2);
    };
    let cadence = match (args.interval, args.rate) {
        (Some(interval), None) => Cadence::Interval(interval),
        (None, Some(rate)) => Cadence::Rate(rate),
        _ => {
            eprintln!(
                "error: file mode needs --interval (a reading per device every interval) or --rate (readings per second over the fleet)"
            );
            return ExitCode::from(2);
        }
    };
    let config = FileConfig {
        devices: args.devices,
        from,
        to,
        cadence,
        format: args.format,
        seed: args.seed,
        prefix: args.prefix,
        faults: !args.no_faults,
    };
    let to_stdout = out_path.as_os_str() == "-";
    let truth = args.truth;
    let task = tokio::task::spawn_blocking(move || {
        if !to_stdout {
            return generate_to_path(
                &scenario,
                &config,
                &out_path,
                truth.as_deref(),
                &progress,
                &cancel,
            );
        }
        let mut truth_file = match &truth {
            None => None,
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|source| SimError::Io {
                    what: path.display().to_string(),
                    source,
                })?,
            )),
        };
        let mut report = generate_file(
            &scenario,
            &config,
            std::io::stdout().lock(),
            truth_file.as_mut().map(|w| w as &mut dyn std::io::Write),
            &progress,
            &cancel,
        )?;
        report.truth = truth;
        Ok(report)
    });
    let report = match task.await {
        Ok(Ok(r)) => r,
        // `ferrite simulate --out - | head`: the reader has all it wanted.
        Ok(Err(SimError::Io { source, .. }))
            if to_stdout && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return ExitCode::SUCCESS;
        }
        Ok(Err(e)) => return sim_failure(&e),
        Err(e) => {
            eprintln!("error: the generator failed: {e}");
            return ExitCode::from(1);
        }
    };
    let faults: u64 = report.faults.values().sum();
    eprintln!(
        "wrote {} rows ({} bytes, {}) of scenario {} to {} in {:.1}s; {} faults injected{}",
        report.rows,
        report.bytes,
        report.format,
        report.scenario,
        report
            .out
            .as_ref()
            .map_or_else(|| "standard output".to_owned(), |p| p.display().to_string()),
        report.elapsed_s,
        faults,
        report
            .truth
            .as_ref()
            .map(|p| format!(" (ground truth in {})", p.display()))
            .unwrap_or_default(),
    );
    // With the data on standard output, the report goes only to --report.
    let written = emit_report(
        serde_json::to_string_pretty(&report),
        args.report.as_deref(),
        !to_stdout,
    );
    if !report.complete {
        eprintln!("error: stopped early; the dataset is incomplete");
        return ExitCode::from(1);
    }
    if written {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
