//! The `ferrite` command: parse the command line, load the configuration, set up logging and
//! hand over to the server or simulator library. Only `main` decides exit codes:
//! 0 success, 1 runtime failure, 2 bad configuration or usage.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferrite_mqtt_codec::ProtocolVersion;
use ferrite_server::config::{self, ConfigSources, DEFAULT_TOML};
use ferrite_server::{Config, Server};
use ferrite_sim::{Progress, SimConfig};
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
    /// Simulate a fleet of devices publishing telemetry to a running Ferrite over MQTT.
    Simulate(SimulateArgs),
    /// Run SQL against a running Ferrite and print the answer.
    Query(QueryArgs),
    /// Print or check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the version.
    Version,
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
    /// Accept clients without credentials from any address, not only loopback
    /// [config: auth.allow_remote_anonymous].
    #[arg(long)]
    allow_remote_anonymous: bool,
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
}

#[derive(Args)]
struct SimulateArgs {
    /// MQTT server to publish to.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "ADDR")]
    mqtt: SocketAddr,
    /// Number of devices (one MQTT connection each).
    #[arg(long, short = 'n', default_value_t = 10)]
    devices: usize,
    /// Target publishes per second over all devices.
    #[arg(
        long,
        short = 'r',
        default_value_t = 100.0,
        conflicts_with = "max_rate"
    )]
    rate: f64,
    /// Publish as fast as acknowledgements allow.
    #[arg(long)]
    max_rate: bool,
    /// Stop after this long, e.g. `30s`, `5m` [default: until --count or Ctrl-C].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many publishes in total.
    #[arg(long)]
    count: Option<u64>,
    /// Seed of the generated readings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Device id prefix; ids are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// MQTT version the devices speak.
    #[arg(long, default_value = "5", value_parser = ["5", "3.1.1"])]
    mqtt_version: String,
    /// Unacknowledged publishes per device before it waits.
    #[arg(long, default_value_t = 32)]
    window: usize,
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
        Command::Simulate(args) => runtime.block_on(simulate(args)),
        Command::Query(args) => runtime.block_on(query(args)),
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
    if o.allow_remote_anonymous {
        overrides.push(("auth.allow_remote_anonymous".to_owned(), "true".to_owned()));
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
    let remote = config.auth.allow_remote_anonymous;
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    let replay = server.replay_report();
    let access = if remote {
        "anonymous clients from ANY address (auth.allow_remote_anonymous)"
    } else {
        "anonymous clients from loopback only"
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
    let _ = writeln!(
        banner,
        "  data folder     {}  ({} WAL records replayed)",
        server.data_dir().display(),
        replay.records
    );
    let _ = writeln!(banner, "Try it:");
    let _ = writeln!(
        banner,
        "  mosquitto_pub -h {} -p {} -V mqttv5 -q 1 -t devices/d1/telemetry -m '{{\"temperature\":21.5}}'",
        mqtt.ip(),
        mqtt.port()
    );
    let _ = writeln!(
        banner,
        "  curl -s -X POST http://{http}/api/v1/query -d 'SELECT * FROM telemetry'"
    );
    let _ = writeln!(
        banner,
        "  ferrite query --http {http} 'SELECT device_id, count(*) FROM telemetry GROUP BY 1'"
    );
    let _ = writeln!(
        banner,
        "  ferrite simulate --mqtt {mqtt} --devices 10 --rate 100 --duration 30s"
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
    let response = match reqwest::Client::new()
        .post(&url)
        .header("Accept", accept)
        .body(args.sql)
        .send()
        .await
    {
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
    let config = SimConfig {
        server: args.mqtt,
        devices: args.devices,
        rate: (!args.max_rate).then_some(args.rate),
        duration: args.duration,
        count: args.count,
        prefix: args.prefix,
        seed: args.seed,
        version: if args.mqtt_version == "5" {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        window: args.window,
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
    let reporter = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let acked = progress.acked.load(Ordering::Relaxed);
                let (p50, p99) = progress.percentiles();
                eprintln!(
                    "devices {:>6}  sent {:>9}  acked {:>9}  errors {:>6}  rate {:>8}/s  ack p50 {:>7.2}ms  p99 {:>7.2}ms",
                    progress.connected.load(Ordering::Relaxed),
                    progress.sent.load(Ordering::Relaxed),
                    acked,
                    progress.errors.load(Ordering::Relaxed),
                    acked - last,
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3,
                );
                last = acked;
            }
        })
    };
    let result = ferrite_sim::run(config, progress, cancel).await;
    reporter.abort();
    match result {
        Ok(report) => {
            eprintln!(
                "achieved {:.1} acknowledged publishes/s over {:.1}s ({} sent, {} acked, {} errors; ack p50 {:.2}ms, p99 {:.2}ms)",
                report.acked_per_s,
                report.elapsed_s,
                report.sent,
                report.acked,
                report.errors,
                report.p50_ms,
                report.p99_ms
            );
            match serde_json::to_string(&report) {
                Ok(s) => out(&format!("{s}\n")),
                Err(e) => eprintln!("cannot print the report: {e}"),
            }
            if report.errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
