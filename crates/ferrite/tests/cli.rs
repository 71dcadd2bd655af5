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
    /// The admin token the first start printed.
    admin: Option<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `ferrite serve` on free ports, admitting anonymous loopback clients, and read its
/// addresses from the start-up banner.
fn serve(data: &Path) -> Running {
    serve_with(data, "loopback")
}

fn serve_with(data: &Path, anonymous: &str) -> Running {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--anonymous",
            anonymous,
        ])
        .env_remove("FERRITE_CONFIG")
        .env_remove("FERRITE_TOKEN")
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
    let (mut mqtt, mut http, mut admin) = (None, None, None);
    loop {
        let line = rx.recv_timeout(WAIT).expect("banner line");
        if line.starts_with("Try it:") {
            break;
        }
        if let Some(t) = line.strip_prefix("Admin API token (shown once; only its hash is kept): ")
        {
            admin = Some(t.trim().to_owned());
        }
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
        admin,
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
            .env_remove("FERRITE_TOKEN")
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

/// `ferrite simulate ARGS` in `dir`, off the async workers.
async fn simulate(dir: &Path, args: Vec<String>) -> std::process::Output {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("simulate")
            .args(args)
            .args(["--log", "warn"])
            .env_remove("FERRITE_TOKEN")
            .current_dir(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test]
async fn simulate_writes_a_reproducible_tsbs_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let file_args = |out: &str, truth: &str| {
        strings(&[
            "--scenario",
            "fleet_trucks",
            "--devices",
            "3",
            "--out",
            out,
            "--format",
            "lp",
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2026-01-01T00:10:00Z",
            "--interval",
            "10s",
            "--seed",
            "7",
            "--truth",
            truth,
        ])
    };
    let first = simulate(dir.path(), file_args("a.lp", "a.truth")).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = simulate(dir.path(), file_args("b.lp", "b.truth")).await;
    assert!(second.status.success());
    let a = std::fs::read(dir.path().join("a.lp")).unwrap();
    assert_eq!(a, std::fs::read(dir.path().join("b.lp")).unwrap());
    assert_eq!(
        std::fs::read(dir.path().join("a.truth")).unwrap(),
        std::fs::read(dir.path().join("b.truth")).unwrap()
    );

    // The report (stdout) describes the file; the file is TSBS `iot` line protocol that the
    // server's own parser accepts.
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let text = String::from_utf8(a).unwrap();
    let lines = text.lines().count() as u64;
    assert!(lines > 0);
    assert_eq!(report["rows"], lines);
    assert_eq!(report["scenario"], "fleet_trucks");
    assert!(report["truth"].as_str().unwrap().ends_with("a.truth"));
    let points = ferrite_core::decode::decode_line_protocol(
        &text,
        ferrite_core::decode::Precision::Nanoseconds,
        ferrite_core::Timestamp::from_nanos(0),
        &[],
    )
    .unwrap();
    assert_eq!(points.len() as u64, lines);
    let mut measurements = std::collections::BTreeSet::new();
    for p in &points {
        measurements.insert(p.measurement.as_str().to_owned());
        assert!(p.tags["name"].starts_with("truck_"), "{p:?}");
        assert!(
            ["East", "West", "North", "South"].contains(&p.tags["fleet"].as_str()),
            "{p:?}"
        );
        let want: &[&str] = if p.measurement.as_str() == "readings" {
            &["latitude", "longitude", "velocity", "fuel_consumption"]
        } else {
            &["fuel_state", "current_load", "status"]
        };
        for f in want {
            assert!(p.fields.contains_key(*f), "{f} missing in {p:?}");
        }
    }
    assert_eq!(
        measurements.into_iter().collect::<Vec<_>>(),
        ["diagnostics", "readings"]
    );
    for line in std::fs::read_to_string(dir.path().join("a.truth"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }

    // Usage errors exit 2 and say what is wrong.
    let mut bad = file_args("c.lp", "c.truth");
    let at = bad.iter().position(|a| a == "lp").unwrap();
    bad[at] = "xml".to_owned();
    let bad = simulate(dir.path(), bad).await;
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("xml") && err.contains("lp, ndjson or csv"),
        "{err}"
    );
    assert!(!dir.path().join("c.lp").exists());
    let unknown = simulate(
        dir.path(),
        strings(&["--scenario", "no_such_scenario", "--count", "1"]),
    )
    .await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("smart_building"));

    // The built-in scenarios print as TOML to start a custom one from.
    let printed = simulate(dir.path(), strings(&["--print-scenario", "fleet_trucks"])).await;
    assert!(printed.status.success());
    assert!(String::from_utf8_lossy(&printed.stdout).contains("name = \"fleet_trucks\""));
}

#[tokio::test]
async fn simulate_a_scenario_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let out = simulate(
        dir.path(),
        strings(&[
            "--mqtt",
            &server.mqtt.to_string(),
            "--scenario",
            "smart_building",
            "--devices",
            "5",
            "--rate",
            "50",
            "--duration",
            "3s",
            "--seed",
            "1",
            "--report",
            "report.json",
        ]),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report,
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    );
    let acked = report["acked"].as_u64().unwrap();
    assert!(acked > 0, "{report}");
    assert_eq!(report["config"]["scenario"], "smart_building");
    assert_eq!(report["config"]["prefix"], "room-");
    assert!(report["measurements"]["room"].as_u64().unwrap() > 0);

    // smart_building's devices publish to devices/{id}/telemetry/room: table `room`.
    let http = server.http.to_string();
    let answer = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "query",
                "--http",
                &http,
                "--format",
                "json",
                "SELECT count(*) AS n FROM room",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert!(rows[0]["n"].as_u64().unwrap() > 0, "{rows}");
}

fn ferrite(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("FERRITE_TOKEN");
    if let Some(t) = token {
        c.env("FERRITE_TOKEN", t);
    }
    c.output().unwrap()
}

#[tokio::test]
async fn devices_and_tokens_from_the_cli_with_the_printed_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "off");
    let admin = server
        .admin
        .clone()
        .expect("first start prints an admin token");
    let http = server.http.to_string();

    // Without a token the API refuses; with it, devices are registered and listed.
    let denied = ferrite(&["query", "--http", &http, "SELECT 1"], None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));
    let added = ferrite(
        &[
            "device",
            "add",
            "pump-7",
            "--type",
            "pump",
            "--tag",
            "site=north",
            "--http",
            &http,
        ],
        Some(&admin),
    );
    assert!(added.status.success(), "{added:?}");
    let text = String::from_utf8_lossy(&added.stdout).to_string();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token (shown once): "))
        .unwrap()
        .to_owned();
    let again = ferrite(&["device", "add", "pump-7", "--http", &http], Some(&admin));
    assert_eq!(
        again.status.code(),
        Some(2),
        "a duplicate id is a usage error"
    );
    let list = ferrite(&["device", "list", "--http", &http], Some(&admin));
    assert!(String::from_utf8_lossy(&list.stdout).contains("pump-7\tpump\tenabled"));

    // The device connects with its token and publishes into its own namespace only.
    let mut options = ferrite_sim::client::ConnectOptions::new("pump-7", ProtocolVersion::V5);
    options.username = Some("pump-7".into());
    options.password = Some(token.clone().into_bytes());
    let mut client = Client::connect_with(server.mqtt, options).await.unwrap();
    for (topic, expected) in [
        ("devices/pump-7/telemetry", ReasonCode::SUCCESS),
        ("devices/pump-8/telemetry", ReasonCode::NOT_AUTHORIZED),
    ] {
        client
            .publish_qos1(topic, r#"{"rpm":1200}"#.into())
            .await
            .unwrap();
        let ack = tokio::time::timeout(WAIT, client.next_ack())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack.reason, expected, "{topic}");
    }

    // A viewer token may query but not register devices.
    let created = ferrite(
        &[
            "token", "create", "grafana", "--role", "viewer", "--http", &http,
        ],
        Some(&admin),
    );
    let viewer = String::from_utf8_lossy(&created.stdout)
        .rsplit("shown once: ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let q = ferrite(
        &[
            "query",
            "--http",
            &http,
            "--format",
            "csv",
            "SELECT device_id, rpm FROM telemetry",
        ],
        Some(&viewer),
    );
    assert!(q.status.success(), "{q:?}");
    assert!(String::from_utf8_lossy(&q.stdout).contains("pump-7,1200"));
    let refused = ferrite(&["device", "add", "x1", "--http", &http], Some(&viewer));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
}

/// Run the CLI against the server's HTTP API at `http`.
fn ferrite_at(http: &str, args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--http", http]);
    ferrite(&all, token)
}

fn stdout_of(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn fleet_administration_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "off");
    let admin = server.admin.clone().unwrap();
    let http = server.http.to_string();
    let run = |args: &[&str]| ferrite_at(&http, args, Some(&admin));

    // Import 2,000 devices in 5 requests; a bad record is reported with its file line.
    let mut ndjson: String = (0..2000)
        .map(|i| {
            format!(
                "{{\"id\":\"cli-{i:05}\",\"type\":\"meter\",\"groups\":[\"g{}\"]}}\n",
                i % 4
            )
        })
        .collect();
    let good = dir.path().join("devices.ndjson");
    std::fs::write(&good, &ndjson).unwrap();
    ndjson.insert_str(0, "{\"id\": \"bad id!\"}\n");
    let with_bad = dir.path().join("with-bad.ndjson");
    std::fs::write(&with_bad, &ndjson).unwrap();
    let first = run(&[
        "device",
        "import",
        with_bad.to_str().unwrap(),
        "--batch",
        "500",
    ]);
    assert_eq!(first.status.code(), Some(2), "a failed record exits 2");
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        text.contains("2001 records: 2000 created, 0 updated, 0 unchanged, 1 failed"),
        "{text}"
    );
    assert!(text.contains("line 1:"), "{text}");
    let again = stdout_of(&run(&["device", "import", good.to_str().unwrap()]));
    assert!(
        again.contains("2000 records: 0 created, 0 updated, 2000 unchanged, 0 failed"),
        "{again}"
    );

    // Export to a file; it imports back unchanged.
    let exported = dir.path().join("export.csv");
    stdout_of(&run(&[
        "device",
        "export",
        "--format",
        "csv",
        "--out",
        exported.to_str().unwrap(),
    ]));
    let csv = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(csv.lines().count(), 2001, "header and 2,000 rows");
    let back = stdout_of(&run(&[
        "device",
        "import",
        exported.to_str().unwrap(),
        "--batch",
        "700",
    ]));
    assert!(
        back.contains("0 created, 0 updated, 2000 unchanged"),
        "{back}"
    );

    // Listing pages through the registry (the server answers at most 1,000 per page).
    let listed = stdout_of(&run(&[
        "device", "list", "--group", "g1", "--limit", "1000",
    ]));
    assert_eq!(listed.lines().count(), 500, "every fourth device is in g1");
    let listed = stdout_of(&run(&[
        "device", "list", "--limit", "1500", "--prefix", "cli-",
    ]));
    assert_eq!(listed.lines().count(), 1500);
    assert!(listed.lines().nth(1499).unwrap().starts_with("cli-01499\t"));

    // Update: set a tag, disable.
    stdout_of(&run(&[
        "device",
        "update",
        "cli-00007",
        "--tag",
        "site=north",
        "--disable",
    ]));
    let shown = stdout_of(&run(&["device", "show", "cli-00007"]));
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["device"]["enabled"], false);
    assert_eq!(shown["device"]["tags"]["site"], "north");

    // Credentials: add, rotate, revoke.
    let added = stdout_of(&run(&["device", "add", "rot-1"]));
    assert!(added.contains("token (shown once): fd_"));
    let creds: serde_json::Value =
        serde_json::from_str(&stdout_of(&run(&["device", "credentials", "rot-1"]))).unwrap();
    let old = creds[0]["id"].as_str().unwrap().to_owned();
    let rotated = stdout_of(&run(&["device", "rotate", "rot-1", &old, "--grace", "1h"]));
    assert!(rotated.contains("the old token works for 1h"), "{rotated}");
    stdout_of(&run(&["device", "revoke", "rot-1", &old]));
    let creds: serde_json::Value =
        serde_json::from_str(&stdout_of(&run(&["device", "credentials", "rot-1"]))).unwrap();
    assert_eq!(creds.as_array().unwrap().len(), 1);
    assert_ne!(creds[0]["id"], old.as_str());

    // Certificates: a CA, a device certificate with its private key written owner-only.
    let ca = stdout_of(&run(&["cert", "ca-init", "--cn", "CLI test CA"]));
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let issued = stdout_of(&run(&[
        "cert",
        "issue",
        "rot-1",
        "--dir",
        certs.to_str().unwrap(),
    ]));
    assert!(issued.contains("rot-1.key"), "{issued}");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(certs.join("rot-1.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        key_mode & 0o077,
        0,
        "the private key is readable by its owner only"
    );
    assert!(
        std::fs::read_to_string(certs.join("rot-1.crt"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(std::fs::read_to_string(certs.join("ca.crt")).unwrap(), ca);
    let listed: serde_json::Value =
        serde_json::from_str(&stdout_of(&run(&["cert", "list", "rot-1"]))).unwrap();
    let serial = listed[0]["serial"].as_str().unwrap().to_owned();
    stdout_of(&run(&["cert", "revoke", &serial]));
    let listed: serde_json::Value =
        serde_json::from_str(&stdout_of(&run(&["cert", "list", "rot-1"]))).unwrap();
    assert!(!listed[0]["revoked_at"].is_null(), "{listed}");

    // Policies and claims.
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"attach": ["group:g1"], "allow": [{"access": "subscribe", "topics": ["broadcast/${group}/#"]}]}"#,
    )
    .unwrap();
    stdout_of(&run(&[
        "policy",
        "put",
        "g1-broadcast",
        policy.to_str().unwrap(),
    ]));
    let policies = stdout_of(&run(&["policy", "list"]));
    assert!(policies.contains("broadcast/${group}/#"), "{policies}");
    std::fs::write(&policy, r#"{"attach": ["nonsense"]}"#).unwrap();
    let bad = run(&["policy", "put", "broken", policy.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2), "an invalid policy is refused");
    let claim = stdout_of(&run(&[
        "claim",
        "create",
        "--label",
        "line 3",
        "--type",
        "meter",
        "--max-uses",
        "10",
        "--expires-in",
        "7d",
    ]));
    assert!(claim.contains("token (shown once): fc_"), "{claim}");

    // The audit log names the admin for every change to a device.
    let audit = stdout_of(&run(&["audit", "--target", "cli-00007"]));
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 2, "import create + update: {audit}");
    assert!(
        lines[1].contains("device.update") && lines[1].contains("admin"),
        "{audit}"
    );
}

/// `GET path` on the API with `token`; the JSON answer.
async fn api_get(http: SocketAddr, token: &str, path: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(format!("http://{http}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

/// SQL with `token` (`POST /api/v1/query`); the rows.
async fn query_as(http: SocketAddr, token: &str, sql: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/query"))
        .bearer_auth(token)
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{sql}");
    resp.json().await.unwrap()
}

/// A successful run's JSON report (standard output).
fn report_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn simulate_provisions_its_devices_on_a_secured_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "off");
    let admin = server
        .admin
        .clone()
        .expect("first start prints an admin token");
    let (mqtt, http) = (server.mqtt.to_string(), server.http.to_string());
    let run = |token: &str| {
        strings(&[
            "--mqtt",
            &mqtt,
            "--http",
            &http,
            "--scenario",
            "smart_building",
            "--devices",
            "5",
            "--count",
            "50",
            // Clean data: no duplicate replaces a row, so every reading is one row.
            "--no-faults",
            "--token",
            token,
        ])
    };

    let out = simulate(dir.path(), run(&admin)).await;
    let report = report_of(&out);
    assert_eq!(
        (report["acked"].as_u64(), report["errors"].as_u64()),
        (Some(50), Some(0))
    );
    assert_eq!(report["provisioning"]["devices"], 5);
    assert_eq!(report["provisioning"]["created"], 5);
    assert_eq!(report["provisioning"]["existing"], 0);
    assert_eq!(report["connect"]["attempted"], 5);
    assert_eq!(report["connect"]["connected"], 5);
    assert_eq!(report["connect"]["refused"], serde_json::json!({}));
    assert_eq!(report["config"]["authenticated"], true);
    assert_eq!(report["config"]["transport"], "mqtt");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&admin),
        "the report never shows the token"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provisioned 5 devices"), "{err}");
    assert!(
        err.contains("connect storm: 5/5 devices connected"),
        "{err}"
    );

    // The devices are in the registry with the scenario's type and tags, and what they
    // published under their own identities is queryable.
    let listed = api_get(server.http, &admin, "/api/v1/devices?prefix=room-").await;
    let items = listed["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["room-0", "room-1", "room-2", "room-3", "room-4"]);
    for d in items {
        assert_eq!(d["type"], "smart_building", "{d}");
        assert!(d["tags"]["building"].is_string(), "{d}");
        assert!(d["tags"].get("device_id").is_none(), "{d}");
    }
    let rows = query_as(
        server.http,
        &admin,
        "SELECT count(*) AS n, count(DISTINCT device_id) AS d FROM room",
    )
    .await;
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["d"].as_u64()),
        (Some(50), Some(5))
    );

    // Again: the devices exist (409), so each gets a fresh token and the run works as well.
    let again = report_of(&simulate(dir.path(), run(&admin)).await);
    assert_eq!(again["provisioning"]["created"], 0);
    assert_eq!(again["provisioning"]["existing"], 5);
    assert_eq!(again["acked"], 50);
    let rows = query_as(server.http, &admin, "SELECT count(*) AS n FROM room").await;
    assert_eq!(rows[0]["n"], 100);
    // Reruns replace the simulator's token instead of piling up credentials.
    let creds = api_get(server.http, &admin, "/api/v1/devices/room-0/credentials").await;
    let labels: Vec<&str> = creds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["simulator"], "{creds}");

    // A wrong token ends the run before anything connects, with the status and the
    // server's words; without a token every device is refused.
    let wrong = simulate(dir.path(), run("fa_not_a_token")).await;
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("401 Unauthorized") && err.contains("unknown or revoked API token"),
        "{err}"
    );
    let mut anonymous = run("");
    anonymous.truncate(anonymous.len() - 2);
    let refused = simulate(dir.path(), anonymous).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("connection refused"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test]
async fn simulate_writes_line_protocol_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "off");
    let admin = server
        .admin
        .clone()
        .expect("first start prints an admin token");
    let http = server.http.to_string();

    // A scenario, following its rate, in batches of at most 64 lines.
    let out = simulate(
        dir.path(),
        strings(&[
            "--transport",
            "http",
            "--http",
            &http,
            "--scenario",
            "smart_building",
            "--devices",
            "5",
            "--count",
            "200",
            "--rate",
            "1000",
            "--batch-lines",
            "64",
            "--no-faults",
            "--token",
            &admin,
        ]),
    )
    .await;
    let report = report_of(&out);
    assert_eq!(
        (
            report["sent"].as_u64(),
            report["acked"].as_u64(),
            report["errors"].as_u64()
        ),
        (Some(200), Some(200), Some(0))
    );
    assert_eq!(report["config"]["transport"], "http");
    assert!(report["connect"].is_null(), "no MQTT connections");
    assert_eq!(report["provisioning"]["created"], 5);
    assert!(
        report["http"]["requests"].as_u64().unwrap() >= 4,
        "{report}"
    );
    assert_eq!(report["http"]["failed_requests"], 0);
    assert_eq!(report["measurements"]["room"], 200);
    assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("acknowledged lines/s"));
    // Line protocol carries every scenario tag; the devices are registered too.
    let rows = query_as(
        server.http,
        &admin,
        "SELECT count(*) AS n, count(DISTINCT device_id) AS d, count(building) AS b FROM room",
    )
    .await;
    assert_eq!(
        (
            rows[0]["n"].as_u64(),
            rows[0]["d"].as_u64(),
            rows[0]["b"].as_u64()
        ),
        (Some(200), Some(5), Some(200))
    );
    let listed = api_get(server.http, &admin, "/api/v1/devices?prefix=room-").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 5);

    // The classic readings at maximum rate, to table `telemetry`.
    let classic = report_of(
        &simulate(
            dir.path(),
            strings(&[
                "--transport",
                "http",
                "--http",
                &http,
                "--devices",
                "3",
                "--count",
                "30",
                "--max-rate",
                "--prefix",
                "h-",
                "--token",
                &admin,
            ]),
        )
        .await,
    );
    assert_eq!(classic["acked"], 30);
    assert_eq!(classic["measurements"]["telemetry"], 30);
    let rows = query_as(
        server.http,
        &admin,
        "SELECT count(*) AS n, count(DISTINCT device_id) AS d FROM telemetry",
    )
    .await;
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["d"].as_u64()),
        (Some(30), Some(3))
    );
    let h0 = api_get(server.http, &admin, "/api/v1/devices/h-0").await;
    assert_eq!(h0["device"]["type"], "sim");

    // Writing without a token is refused, and the run says why.
    let denied = simulate(
        dir.path(),
        strings(&["--transport", "http", "--http", &http, "--count", "10"]),
    )
    .await;
    assert_eq!(denied.status.code(), Some(1));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("401 Unauthorized"), "{err}");
}

#[tokio::test]
async fn simulate_connect_only_reports_the_connect_storm() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "off");
    let admin = server
        .admin
        .clone()
        .expect("first start prints an admin token");
    let (mqtt, http) = (server.mqtt.to_string(), server.http.to_string());
    let storm = |extra: &[&str]| {
        let mut a = strings(&[
            "--connect-only",
            "--mqtt",
            &mqtt,
            "--http",
            &http,
            "--devices",
            "20",
            "--prefix",
            "storm-",
            "--connect-concurrency",
            "4",
        ]);
        a.extend(strings(extra));
        a
    };
    let out = simulate(dir.path(), storm(&["--token", &admin])).await;
    let report = report_of(&out);
    let connect = &report["connect"];
    assert_eq!(
        (connect["attempted"].as_u64(), connect["connected"].as_u64()),
        (Some(20), Some(20))
    );
    assert_eq!(connect["refused"], serde_json::json!({}));
    assert_eq!(connect["concurrency"], 4);
    assert!(connect["storm_s"].as_f64().unwrap() > 0.0);
    let (p50, p99) = (
        connect["p50_ms"].as_f64().unwrap(),
        connect["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{connect}");
    assert_eq!(
        (report["sent"].as_u64(), report["errors"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(report["config"]["connect_only"], true);
    assert_eq!(report["provisioning"]["created"], 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connect storm: 20/20"), "{err}");
    assert!(!err.contains("achieved"), "{err}");
    // Each device connected as itself.
    let fleet = api_get(server.http, &admin, "/api/v1/fleet").await;
    assert_eq!(
        (fleet["total"].as_u64(), fleet["never_seen"].as_u64()),
        (Some(20), Some(0))
    );

    // Without a token the storm is refused, counted by reason, and the run fails.
    let refused = simulate(dir.path(), storm(&[])).await;
    assert_eq!(refused.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["connect"]["connected"], 0);
    let reasons = report["connect"]["refused"].as_object().unwrap();
    assert_eq!(
        reasons.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        20,
        "{reasons:?}"
    );
    assert_eq!(report["errors"], 20);
}

/// Run `ferrite rule test` with `args` over `lines` (NDJSON) and parse the trace.
fn rule_test_trace(lines: &[&str], args: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messages.ndjson");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(BIN)
        .args(["rule", "test"])
        .args(args)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect()
}

/// `ferrite rule test` runs a rule offline and traces what each message made it emit.
#[test]
fn rule_test_traces_a_rule_offline() {
    let lines = [
        r#"{"topic": "devices/s1/telemetry", "payload": {"temp": 25}, "ts": 1700000000100}"#,
        r#"{"topic": "devices/s1/telemetry", "payload": {"temp": 31.5}, "ts": 1700000000500}"#,
        "",
        r#"{"topic": "other/topic", "payload": {"temp": 99}, "ts": 1700000001200}"#,
        r#"{"topic": "devices/s2/telemetry", "payload": {"temp": 40, "ts": 1700000001700}}"#,
    ];
    let run = |sql: &str| rule_test_trace(&lines, &["--out-of-orderness", "0s", "--sql", sql]);

    let trace =
        run("SELECT device_id() AS device, temp FROM 'devices/+/telemetry' WHERE temp > 30");
    assert_eq!(trace.len(), 5, "{trace:?}");
    assert_eq!(trace[0]["line"], 1);
    assert_eq!(trace[0]["emitted"], serde_json::json!([]));
    assert_eq!(
        trace[1]["emitted"],
        serde_json::json!([{"row": {"device": "s1", "temp": 31.5}}])
    );
    assert_eq!(trace[2]["line"], 4);
    assert_eq!(trace[2]["emitted"], serde_json::json!([]));
    assert_eq!(
        trace[3]["emitted"],
        serde_json::json!([{"row": {"device": "s2", "temp": 40}}])
    );
    assert_eq!(trace[4]["flush"], serde_json::json!([]));
    assert_eq!(trace[4]["stats"]["matched"], 2);

    // Windowed: the s2 reading closes the first second; the flush fires the second.
    let trace = run(
        "SELECT count(*) AS n, max(temp) AS hi FROM 'devices/+/telemetry' GROUP BY TUMBLE('1s')",
    );
    assert_eq!(trace[1]["emitted"], serde_json::json!([]));
    let fired = &trace[3]["emitted"];
    assert_eq!(fired.as_array().unwrap().len(), 1, "{trace:?}");
    assert_eq!(fired[0]["row"], serde_json::json!({"n": 2, "hi": 31.5}));
    assert_eq!(fired[0]["window"]["start"], "2023-11-14T22:13:20Z");
    assert_eq!(
        trace[4]["flush"],
        serde_json::json!([{"row": {"n": 1, "hi": 40}, "window": {
            "start": "2023-11-14T22:13:21Z", "end": "2023-11-14T22:13:22Z"}}])
    );

    // A rule that does not compile is a usage error with its position.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messages.ndjson");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(BIN)
        .args([
            "rule",
            "test",
            "--sql",
            "SELECT nosuch(x) FROM 'a'",
            "--input",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1, column 8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ferrite alarm list/ack/clear` against a server whose rule raised alarms from live MQTT.
#[tokio::test]
async fn alarms_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let http = server.http.to_string();
    let run = |args: &[&str]| ferrite_at(&http, args, None);
    stdout_of(&run(&[
        "rule",
        "create",
        "hot",
        "--sql",
        "SELECT device_id() AS device, temp FROM 'devices/+/telemetry' WHERE temp > 80",
        "--action",
        r#"{"type": "raise_alarm", "alarm": "overheat", "severity": "critical", "message": "temp ${temp}"}"#,
    ]));
    let mut watcher = Client::connect(server.mqtt, "watcher", ProtocolVersion::V5)
        .await
        .unwrap();
    watcher
        .subscribe("$ferrite/alarms/#", ferrite_mqtt_codec::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut dev = Client::connect(server.mqtt, "pump-1", ProtocolVersion::V5)
        .await
        .unwrap();
    for temp in [91, 93] {
        dev.publish_qos1(
            "devices/pump-1/telemetry",
            format!(r#"{{"temp":{temp}}}"#).into(),
        )
        .await
        .unwrap();
        tokio::time::timeout(WAIT, dev.next_ack())
            .await
            .unwrap()
            .unwrap();
    }
    let raised = tokio::time::timeout(WAIT, watcher.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raised.topic, "$ferrite/alarms/hot/pump-1/raised");
    let event: serde_json::Value = serde_json::from_slice(&raised.payload).unwrap();
    let id = event["alarm"]["id"].to_string();

    let list = stdout_of(&run(&["alarm", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("ID"), "{list}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &cells[..6],
        [
            id.as_str(),
            "active",
            "critical",
            "hot",
            "pump-1",
            "overheat"
        ],
        "{list}"
    );
    assert_eq!(
        lines[0].find("SEVERITY"),
        lines[1].find("critical"),
        "aligned: {list}"
    );

    let acked = stdout_of(&run(&["alarm", "ack", &id, "--note", "on my way"]));
    assert_eq!(acked, format!("alarm {id} acknowledged: acknowledged\n"));
    let ack_event = tokio::time::timeout(WAIT, watcher.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack_event.topic, "$ferrite/alarms/hot/pump-1/acknowledged");
    let again = run(&["alarm", "ack", &id]);
    assert_eq!(again.status.code(), Some(2), "a second ack is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));

    assert_eq!(
        stdout_of(&run(&["alarm", "list", "--state", "active"]))
            .lines()
            .count(),
        1,
        "only the header"
    );
    let acked = stdout_of(&run(&["alarm", "list", "--state", "acknowledged"]));
    assert!(acked.lines().nth(1).unwrap().starts_with(&id), "{acked}");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout_of(&run(&["alarm", "show", &id]))).unwrap();
    assert_eq!(shown["ack_note"], "on my way");
    assert_eq!(shown["count"], 2);
    assert_eq!(
        stdout_of(&run(&["alarm", "clear", &id])),
        format!("alarm {id} cleared\n")
    );
    let bad = run(&["alarm", "list", "--state", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// `ferrite export ARGS` against `http`, off the async workers.
async fn export(http: SocketAddr, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .args(["export", "--http", &http.to_string()])
        .args(args)
        .current_dir(dir)
        .env_remove("FERRITE_TOKEN");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn export_writes_parquet_csv_and_ndjson_of_a_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    // 3,000 rows one second apart from 2026-12-01T00:00:00Z, five devices.
    let base: i64 = 1_796_083_200_000_000_000;
    let body: String = (0..3000i64)
        .map(|i| {
            format!(
                "exp,device_id=d{} v={i}i,x={i}.5 {}\n",
                i % 5,
                base + i * 1_000_000_000
            )
        })
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v2/write?precision=ns", server.http))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // [base + 1000 s, base + 2500 s): rows 1000..2500.
    let from = "2026-12-01T00:16:40Z";
    let to = (base + 2500 * 1_000_000_000).to_string();
    let out = export(
        server.http,
        dir.path(),
        &[
            "--table",
            "exp",
            "--from",
            from,
            "--to",
            &to,
            "--out",
            "range.parquet",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("exported 1500 rows of exp"), "{stderr}");
    assert!(!dir.path().join("range.parquet.partial").exists());
    let file = std::fs::File::open(dir.path().join("range.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let (mut rows, mut sum) = (0usize, 0i64);
    for batch in reader {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        let v = batch
            .column_by_name("v")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        sum += v.iter().map(Option::unwrap).sum::<i64>();
    }
    assert_eq!(rows, 1500);
    assert_eq!(sum, (1000..2500).sum::<i64>());

    // CSV to standard output: a header, then one line per row.
    let out = export(
        server.http,
        dir.path(),
        &[
            "--table", "exp", "--from", from, "--to", &to, "--format", "csv",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("time,device_id,v,x"));
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 1500);
    assert!(
        body.contains(&"2026-12-01T00:16:40Z,d0,1000,1000.5"),
        "{:?}",
        &body[..3]
    );

    // NDJSON of the whole table, format told by the file name.
    let out = export(
        server.http,
        dir.path(),
        &["--table", "exp", "--out", "all.ndjson"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("all.ndjson")).unwrap();
    let mut seen: Vec<i64> = text
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(row["x"].as_f64().unwrap(), row["v"].as_f64().unwrap() + 0.5);
            row["v"].as_i64().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..3000).collect::<Vec<_>>());

    // A range with no rows still gives a file with the table's columns.
    let out = export(
        server.http,
        dir.path(),
        &[
            "--table",
            "exp",
            "--from",
            "2027-01-01T00:00:00Z",
            "--format",
            "csv",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "time,device_id,v,x\n"
    );

    // Bad input: a clear error, exit 2, no file.
    for (args, needle) in [
        (
            vec!["--table", "nope", "--out", "nope.parquet"],
            "not found",
        ),
        (
            vec![
                "--table", "exp", "--from", &to, "--to", from, "--out", "r.csv",
            ],
            "must be before",
        ),
        (
            vec!["--table", "exp", "--from", "yesterday", "--out", "r.csv"],
            "not an RFC 3339 time",
        ),
        (vec!["--table", "exp", "--format", "parquet"], "--out FILE"),
        (vec!["--table", "exp", "--out", "x.txt"], "--format"),
    ] {
        let out = export(server.http, dir.path(), &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    for name in [
        "nope.parquet",
        "nope.parquet.partial",
        "r.csv",
        "r.csv.partial",
    ] {
        assert!(!dir.path().join(name).exists(), "{name}");
    }
}

/// `ferrite rule test` reports `gap()` silences offline: between messages at each message's
/// time, and after the last one up to `--until`; each silence once.
#[test]
fn rule_test_reports_gap_silences_offline() {
    let trace = rule_test_trace(
        &[
            r#"{"topic": "devices/d1/telemetry", "payload": {"v": 1}, "ts": 1700000000000}"#,
            r#"{"topic": "devices/d2/telemetry", "payload": {"v": 1}, "ts": 1700000001000}"#,
            r#"{"topic": "devices/d2/telemetry", "payload": {"v": 2}, "ts": 1700000005000}"#,
        ],
        &[
            "--sql",
            "SELECT device_id() AS d FROM 'devices/+/telemetry' WHERE gap('3s')",
            "--until",
            "1700000020000",
        ],
    );
    let silent = |t: &serde_json::Value| {
        let mut d: Vec<String> = t["silences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["row"]["d"].as_str().unwrap().to_owned())
            .collect();
        d.sort();
        d
    };
    // Both devices are silent for more than 3 s by the third message (at 5 s), which itself
    // ends d2's silence; by 20 s d2 is silent again, d1 still (not reported twice).
    assert_eq!(trace.len(), 6, "{trace:?}");
    assert_eq!(trace[2]["at"], "2023-11-14T22:13:25Z");
    assert_eq!(silent(&trace[2]), ["d1", "d2"]);
    assert_eq!(trace[3]["line"], 3);
    assert_eq!(trace[3]["emitted"], serde_json::json!([]));
    assert_eq!(silent(&trace[4]), ["d2"]);
    assert_eq!(trace[5]["stats"]["rows"], 3);
}

/// `ferrite rule create --replace` updates a rule in place; replacing one that does not exist
/// fails and creates nothing.
#[test]
fn rules_are_replaced_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let http = server.http.to_string();
    let run = |args: &[&str]| ferrite_at(&http, args, None);
    let first = "SELECT temp FROM 'devices/+/telemetry' WHERE temp > 80";
    let second = "SELECT temp FROM 'devices/+/telemetry' WHERE temp > 90";
    assert_eq!(
        stdout_of(&run(&["rule", "create", "hot", "--sql", first])),
        "rule hot created\n"
    );
    assert_eq!(
        stdout_of(&run(&[
            "rule",
            "create",
            "hot",
            "--sql",
            second,
            "--replace"
        ])),
        "rule hot replaced\n"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&stdout_of(&run(&["rule", "show", "hot"]))).unwrap();
    assert_eq!(shown["sql"], second, "{shown}");
    let missing = run(&["rule", "create", "cold", "--sql", first, "--replace"]);
    assert!(!missing.status.success());
    let listed = stdout_of(&run(&["rule", "list"]));
    assert!(!listed.contains("cold"), "{listed}");
}
