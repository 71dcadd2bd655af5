//! SQL over the PostgreSQL wire protocol, end to end: a real server on port 0 in a temp dir,
//! telemetry written over HTTP line protocol, queried with a real PostgreSQL client library
//! (tokio-postgres: simple query in text, extended query with binary results and typed
//! parameters), as psql, drivers and Grafana use it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::WAIT;
use ferrite_server::Server;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// 2026-01-01T00:00:00Z in seconds.
const T0: u64 = 1_767_225_600;

async fn connect(pg: SocketAddr, password: Option<&str>) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(pg.ip().to_string())
        .port(pg.port())
        .user("ferrite")
        .dbname("ferrite")
        .connect_timeout(WAIT);
    if let Some(p) = password {
        config.password(p);
    }
    let (client, connection) = tokio::time::timeout(WAIT, config.connect(NoTls))
        .await
        .expect("connect in time")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn write(server: &Server, token: &str, lines: String) {
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v2/write?precision=s",
            server.http_addr()
        ))
        .bearer_auth(token)
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        204,
        "{}",
        resp.text().await.unwrap()
    );
}

/// Three rooms' readings one minute apart over six minutes; `count` missing on one row.
fn readings() -> String {
    let mut lines = String::new();
    for i in 0..6u64 {
        let t = T0 + 60 * i;
        lines.push_str(&format!(
            "env,room=lab temperature={},count={i}i,ok={} {t}\n",
            20.0 + i as f64,
            if i % 2 == 0 { "true" } else { "false" }
        ));
    }
    lines.push_str(&format!("env,room=hall temperature=15.5 {}\n", T0 + 30));
    lines
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn started(dir: &std::path::Path) -> (Server, String) {
    let server = Server::start(common::config(dir, ferrite_api::Anonymous::Off))
        .await
        .unwrap();
    let admin = server.bootstrap_token().unwrap().to_owned();
    write(&server, &admin, readings()).await;
    (server, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_style_simple_and_extended_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = started(dir.path()).await;
    let pg = server.pg_addr().unwrap();
    let client = connect(pg, Some(&admin)).await.unwrap();

    // Simple query: text answers, psql's path.
    let msgs = client
        .simple_query(
            "SELECT room, temperature, count, ok FROM env WHERE room = 'lab' ORDER BY time LIMIT 2",
        )
        .await
        .unwrap();
    let rows: Vec<Vec<Option<String>>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect();
    let text = |v: &[&str]| v.iter().map(|s| Some((*s).to_owned())).collect::<Vec<_>>();
    assert_eq!(
        rows,
        [
            text(&["lab", "20", "0", "t"]),
            text(&["lab", "21", "1", "f"])
        ]
    );

    // Extended query: types in the row description, binary values.
    let rows = client
        .query(
            "SELECT time, room, temperature, count, ok FROM env ORDER BY time, room",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 7);
    let types: Vec<Type> = rows[0]
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    assert_eq!(
        types,
        [
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::FLOAT8,
            Type::INT8,
            Type::BOOL
        ]
    );
    assert_eq!(secs(rows[0].get::<_, SystemTime>("time")), T0);
    assert_eq!(rows[0].get::<_, &str>("room"), "lab");
    assert_eq!(rows[0].get::<_, f64>("temperature"), 20.0);
    assert_eq!(rows[0].get::<_, Option<i64>>("count"), Some(0));
    assert!(rows[0].get::<_, bool>("ok"));
    // The hall's row has neither count nor ok: NULLs.
    assert_eq!(rows[1].get::<_, &str>("room"), "hall");
    assert_eq!(secs(rows[1].get::<_, SystemTime>("time")), T0 + 30);
    assert_eq!(rows[1].get::<_, Option<i64>>("count"), None);
    assert_eq!(rows[1].get::<_, Option<bool>>("ok"), None);

    // Typed parameters, bound by the engine: a timestamp, a text and a float.
    let from = UNIX_EPOCH + Duration::from_secs(T0 + 120);
    let stmt = client
        .prepare("SELECT count FROM env WHERE time >= $1 AND room = $2 AND temperature > $3 ORDER BY time")
        .await
        .unwrap();
    assert_eq!(stmt.params(), [Type::TIMESTAMPTZ, Type::TEXT, Type::FLOAT8]);
    let counts: Vec<i64> = client
        .query(&stmt, &[&from, &"lab", &22.5f64])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(counts, [3, 4, 5]);
    // Same statement, other values; a quote in a value is data, not SQL.
    let none = client
        .query(&stmt, &[&from, &"lab' OR '1'='1", &0.0f64])
        .await
        .unwrap();
    assert!(none.is_empty());

    // Grafana time-series panel: macros expanded client-side to literals.
    let rows = client
        .query(
            "SELECT date_bin(INTERVAL '2 minutes', time) AS time, avg(temperature) AS avg_temp \
             FROM env WHERE room = 'lab' AND time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:05:00Z' \
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].columns()[0].type_(), &Type::TIMESTAMPTZ);
    let series: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| (secs(r.get::<_, SystemTime>(0)), r.get::<_, f64>(1)))
        .collect();
    assert_eq!(series, [(T0, 20.5), (T0 + 120, 22.5), (T0 + 240, 24.5)]);
    // `$__timeGroup`-style epoch arithmetic.
    let rows = client
        .query(
            "SELECT floor(extract(epoch from time)/180)*180 AS t, count(*) AS n FROM env \
             WHERE room = 'lab' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let buckets: Vec<(f64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(buckets, [(T0 as f64, 3), ((T0 + 180) as f64, 3)]);

    // Table listings from information_schema, as query editors do.
    let tables: Vec<String> = client
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["env"]);
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_name = $1 ORDER BY column_name",
            &[&"env"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        columns.iter().any(|(c, _)| c == "temperature"),
        "{columns:?}"
    );

    // What drivers send around queries.
    client
        .batch_execute("SET extra_float_digits = 3; SET application_name = 'grafana'")
        .await
        .unwrap();
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert_eq!(
        client
            .query_one("SELECT 1 + 1 AS two", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    client.batch_execute("COMMIT").await.unwrap();
    let tz: String = client.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("PostgreSQL "), "{version}");

    // Errors have their SQLSTATE and the session goes on.
    let e = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{e}");
    let e = client
        .query("SELECT * FROM nowhere", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    let e = client.query("SELECT nope FROM env", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e}");
    let e = client.batch_execute("DELETE FROM env").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM env", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_decide_who_may_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _admin) = started(dir.path()).await;
    let pg = server.pg_addr().unwrap();

    let Err(e) = connect(pg, Some("fa_not_a_token")).await else {
        panic!("a wrong token was accepted");
    };
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e}");
    let Err(e) = connect(pg, None).await else {
        panic!("accepted without a password");
    };
    // The server asked for a password, which this client did not have.
    assert!(format!("{e:?}").contains("password missing"), "{e:?}");

    let viewer = server
        .fleet()
        .create_api_token(
            &ferrite_fleet::Actor::System,
            "dash",
            ferrite_fleet::Role::Viewer,
        )
        .unwrap()
        .token
        .into_string();
    let client = connect(pg, Some(&viewer)).await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM env", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_loopback_limits_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), ferrite_api::Anonymous::Loopback);
    config.query.max_rows = 5;
    // Only a cancel may end the slow query below.
    config.query.timeout = Duration::from_secs(600);
    let server = Server::start(config).await.unwrap();
    let admin = server.bootstrap_token().unwrap().to_owned();
    write(&server, &admin, readings()).await;
    // Loopback is admitted without a password, like HTTP.
    let client = connect(server.pg_addr().unwrap(), None).await.unwrap();

    // The engine's row limit holds, streamed or not.
    let e = client.query("SELECT * FROM env", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{e}");
    assert_eq!(
        client
            .query("SELECT * FROM env LIMIT 5", &[])
            .await
            .unwrap()
            .len(),
        5
    );

    // A CancelRequest ends the running query with 57014; the session goes on.
    let cancel = client.cancel_token();
    let slow = "SELECT count(*) FROM range(1000000000000) a WHERE a.value % 7 = 3";
    let mut started = server.pg_queries_started();
    let before = *started.borrow_and_update();
    let query = client.simple_query(slow);
    tokio::pin!(query);
    let outcome = tokio::time::timeout(WAIT, async {
        tokio::select! {
            r = &mut query => return r,
            // Until the query is running a cancel would find nothing to cancel.
            seen = started.wait_for(|n| *n > before) => { seen.unwrap(); }
        }
        cancel.cancel_query(NoTls).await.unwrap();
        query.await
    })
    .await
    .expect("the cancel ended the query");
    let e = outcome.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    assert_eq!(client.query("SELECT 1", &[]).await.unwrap().len(), 1);
    server.shutdown().await;
}
