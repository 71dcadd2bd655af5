//! Helpers shared by the end-to-end test files: start a server, call its API, connect MQTT 5.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    dead_code,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferrite_server::{Config, Server};
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
use serde_json::Value;

/// Longest wait for any one expected event.
pub const WAIT: Duration = Duration::from_secs(20);

/// The embedded configuration on port 0 in `dir`.
pub fn config(dir: &Path, anonymous: ferrite_api::Anonymous) -> Config {
    let mut config = Config::embedded();
    config.data_dir = dir.to_owned();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.pg.listen = "127.0.0.1:0".parse().unwrap();
    config.auth.anonymous = anonymous;
    config
}

pub async fn start_with(dir: &Path, anonymous: ferrite_api::Anonymous) -> Server {
    Server::start(config(dir, anonymous))
        .await
        .expect("server starts")
}

pub fn options5(id: &str, mqtt: SocketAddr) -> Options5 {
    let mut o = Options5::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub async fn api(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Connect over MQTT 5 with a user name and password; the CONNACK's reason, and the client.
pub async fn connect_v5(
    mqtt: SocketAddr,
    id: &str,
    credentials: Option<(&str, &str)>,
) -> (
    rumqttc::v5::mqttbytes::v5::ConnectReturnCode,
    Client5,
    rumqttc::v5::EventLoop,
) {
    let mut o = options5(id, mqtt);
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    let (client, mut el) = Client5::new(o, 16);
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event5::Incoming(Packet5::ConnAck(a))) => return a.code,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("connect failed: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (code, client, el)
}
