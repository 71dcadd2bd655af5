//! The `ferrite` binary as a user runs it: serve, kill -9, serve again; simulate; config.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferrite_mqtt_codec::{ProtocolVersion, ReasonCode};
use ferrite_sim::client::Client;

const BIN: &str = env!("CARGO_BIN_EXE_ferrite");
const WAIT: Duration = Duration::from_secs(30);

struct Running {
    child: Child,
    mqtt: SocketAddr,
    http: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `ferrite serve` on free ports and read its addresses from the start-up banner.
fn serve(data: &Path) -> Running {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .env_remove("FERRITE_CONFIG")
        .current_dir(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the test stops listening, so the server never writes into a
        // closed pipe because of the test.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut mqtt, mut http) = (None, None);
    while mqtt.is_none() || http.is_none() {
        let line = rx.recv_timeout(WAIT).expect("banner line");
        let addr = |prefix: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .map(|a| a.parse::<SocketAddr>().unwrap())
        };
        mqtt = mqtt.or(addr("mqtt://"));
        http = http.or(addr("http://"));
    }
    Running {
        child,
        mqtt: mqtt.unwrap(),
        http: http.unwrap(),
    }
}

async fn query(http: SocketAddr, sql: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/query"))
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn acknowledged_rows_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path());
    let mut client = Client::connect(server.mqtt, "d1", ProtocolVersion::V5)
        .await
        .unwrap();
    for i in 0..50 {
        client
            .publish_qos1(
                "devices/d1/telemetry",
                format!(r#"{{"temperature": {i}.5, "seq": {i}}}"#).into(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 50 {
        let ack = tokio::time::timeout(WAIT, client.next_ack())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        acked += 1;
    }
    // SIGKILL right after the last PUBACK: no graceful shutdown, no flush.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = serve(dir.path());
    let v = query(
        server.http,
        "SELECT count(*) AS n, sum(seq) AS s FROM telemetry",
    )
    .await;
    assert_eq!(v[0]["n"], 50);
    assert_eq!(v[0]["s"].as_f64(), Some((0..50).sum::<i32>() as f64));
}

#[tokio::test]
async fn simulate_publishes_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let mqtt = server.mqtt.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "simulate",
                "--mqtt",
                &mqtt,
                "--devices",
                "5",
                "--rate",
                "500",
                "--count",
                "200",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["acked"], 200);
    assert_eq!(report["errors"], 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("achieved"));
    let v = query(
        server.http,
        "SELECT count(DISTINCT device_id) AS d, count(*) AS n FROM telemetry",
    )
    .await;
    assert_eq!(
        (v[0]["d"].as_i64(), v[0]["n"].as_i64()),
        (Some(5), Some(200))
    );
}

#[test]
fn config_check_reports_every_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ferrite.toml"),
        "[mqtt]\nlisten = \"nowhere\"\ntypo = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--set", "query.max_rows=0"])
        .env("FERRITE_STORE_WRITE_QUEUE", "lots")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "mqtt.typo",
        "FERRITE_STORE_WRITE_QUEUE",
        "query.max_rows",
        "[mqtt]",
    ] {
        assert!(err.contains(needle), "missing {needle} in {err}");
    }
}

#[test]
fn config_generate_round_trips_through_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["config", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.path().join("custom.toml"), &out.stdout).unwrap();
    let out = Command::new(BIN)
        .args([
            "config",
            "check",
            "--config",
            "custom.toml",
            "--mqtt-listen",
            "127.0.0.1:1999",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:1999\""));
}

#[tokio::test]
async fn query_prints_a_table_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let mut client = Client::connect(server.mqtt, "d9", ProtocolVersion::V5)
        .await
        .unwrap();
    client
        .publish_qos1(
            "devices/d9/telemetry",
            r#"{"ts": 1700000000, "temperature": 21.5, "door": "open"}"#.into(),
        )
        .await
        .unwrap();
    let ack = tokio::time::timeout(WAIT, client.next_ack())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let http = server.http.to_string();
    let run = |format: &'static str| {
        let http = http.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args([
                    "query",
                    "--http",
                    &http,
                    "--format",
                    format,
                    "SELECT device_id, temperature, door FROM telemetry",
                ])
                .output()
                .unwrap()
        })
    };
    let table = run("table").await.unwrap();
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("| device_id | temperature | door |"),
        "{table}"
    );
    assert!(
        table.contains("| d9        | 21.5        | open |"),
        "{table}"
    );
    assert!(table.contains("(1 row)"), "{table}");
    let csv = run("csv").await.unwrap();
    assert_eq!(
        String::from_utf8(csv.stdout).unwrap(),
        "device_id,temperature,door\nd9,21.5,open\n"
    );
    let json = run("json").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"device_id": "d9", "temperature": 21.5, "door": "open"}])
    );

    let http = server.http.to_string();
    let bad = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["query", "--http", &http, "SELEC 1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"));
}
