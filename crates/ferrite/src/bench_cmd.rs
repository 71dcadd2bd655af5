//! `ferrite bench mqtt …`: the load side of `bench/mqtt`, against any MQTT broker; and
//! `ferrite bench write`: the load side of `bench/ingest`, against any line-protocol server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use ferrite_mqtt_codec::QoS;
use ferrite_sim::{mqttbench, writebench};

use crate::out;

/// One MQTT benchmark; prints one JSON object with its figures.
#[derive(Subcommand)]
pub(crate) enum MqttBench {
    /// Publishers send as fast as they can to one subscriber; delivered messages per second.
    Throughput {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// Publishing connections (each on a topic of its own).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// 0 or 1 (publish and subscription).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// Unacknowledged QoS 1 publishes per publisher.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// One publisher at a fixed rate; publish → deliver latency at the subscriber.
    Latency {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// Messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// How long to publish.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// 0 or 1.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
    /// Telemetry at a fixed rate, some of it hot; publish → `raised` alarm event delivered
    /// (Ferrite with a `temp > 80` raise_alarm rule selecting `sent`, as bench/rules sets up).
    AlarmLatency {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// Readings per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u32,
        /// How long to publish.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Devices sending the normal readings.
        #[arg(long, default_value_t = 1000)]
        devices: u32,
        /// One reading in this many is hot (from a device of its own).
        #[arg(long, default_value_t = 100)]
        every: u64,
    },
    /// Open connections (CONNECT → CONNACK) as fast as the broker accepts them.
    Connect {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// Connections to open.
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Publish numbered QoS 1 messages, logging each acknowledged number (crash tests).
    PublishLog {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// Topic to publish to.
        #[arg(long)]
        topic: String,
        /// First message number.
        #[arg(long)]
        first: u64,
        /// Longest to publish.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Publishes in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// File the acknowledged numbers are appended to.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Receive what a persistent session holds (subscribing it first), logging each payload.
    Drain {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// The session's client id.
        #[arg(long)]
        client_id: String,
        /// Topic filter to subscribe to.
        #[arg(long)]
        topic: String,
        /// Stop after this long without a message.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// File the received payloads are appended to.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Hold idle connections (each subscribed to one topic) and read the broker's memory.
    Idle {
        /// The broker.
        #[arg(long)]
        addr: SocketAddr,
        /// The broker's process id (its /proc/PID/status is read).
        #[arg(long)]
        pid: u32,
        /// Connections to hold.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
}

fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

pub(crate) async fn mqtt(bench: MqttBench) -> ExitCode {
    let result = match bench {
        MqttBench::Throughput {
            addr,
            publishers,
            messages,
            qos: q,
            window,
        } => mqttbench::throughput(addr, publishers, messages, qos(q), window)
            .await
            .map(|r| serde_json::to_string(&r)),
        MqttBench::Latency {
            addr,
            rate,
            duration,
            qos: q,
        } => mqttbench::latency(addr, rate, duration, qos(q))
            .await
            .map(|r| serde_json::to_string(&r)),
        MqttBench::AlarmLatency {
            addr,
            rate,
            duration,
            devices,
            every,
        } => mqttbench::alarm_latency(addr, rate, duration, devices, every)
            .await
            .map(|r| serde_json::to_string(&r)),
        MqttBench::Connect {
            addr,
            count,
            concurrency,
        } => mqttbench::connection_rate(addr, count, concurrency)
            .await
            .map(|r| serde_json::to_string(&r)),
        MqttBench::PublishLog {
            addr,
            topic,
            first,
            duration,
            window,
            out,
        } => mqttbench::publish_logged(addr, &topic, first, duration, window, &out)
            .await
            .map(|r| serde_json::to_string(&r)),
        MqttBench::Drain {
            addr,
            client_id,
            topic,
            idle,
            out,
        } => mqttbench::drain_session(addr, &client_id, &topic, idle, &out)
            .await
            .map(|r| serde_json::to_string(&r)),
        MqttBench::Idle { addr, pid, count } => mqttbench::idle_memory(addr, pid, count)
            .await
            .map(|r| serde_json::to_string(&r)),
    };
    match result {
        Ok(Ok(json)) => {
            out(&format!("{json}\n"));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("ferrite bench: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferrite bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ferrite bench write` arguments.
#[derive(clap::Args)]
pub(crate) struct WriteArgs {
    /// The write URL with its query string, e.g.
    /// `http://127.0.0.1:8086/write?db=bench&precision=ns`.
    #[arg(long)]
    url: String,
    /// The line-protocol file (`ferrite simulate --format lp --out FILE`).
    #[arg(long)]
    file: std::path::PathBuf,
    /// Lines per request.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Bearer token for the server.
    #[arg(long, env = "FERRITE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(crate) async fn write(args: WriteArgs) -> ExitCode {
    let batches = match writebench::load(&args.file, args.batch) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ferrite bench: {e}");
            return ExitCode::from(2);
        }
    };
    let options = writebench::WriteOptions {
        url: args.url,
        token: args.token,
        concurrency: args.concurrency,
    };
    match writebench::run(batches, &options).await {
        Ok(report) => {
            out(&format!(
                "{}\n",
                serde_json::to_string(&report).unwrap_or_default()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferrite bench: {e}");
            ExitCode::FAILURE
        }
    }
}
