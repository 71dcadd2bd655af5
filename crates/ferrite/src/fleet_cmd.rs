//! `ferrite device …` and `ferrite token …`: the device registry and API tokens of a running
//! Ferrite, over its HTTP API (the server holds the registry open, so the CLI is a client).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::out;

/// Where the API is and who calls it.
#[derive(Args, Clone)]
pub(crate) struct ApiArgs {
    /// HTTP API of the running server.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        value_name = "ADDR",
        global = true
    )]
    http: String,
    /// API token (the admin token `ferrite serve` printed on first start, or one from
    /// `ferrite token create`).
    #[arg(
        long,
        env = "FERRITE_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum DeviceCommand {
    /// Register a device and print its token (shown once).
    Add {
        /// Device id (letters, digits, `-`, `_`, `.`, `:`).
        id: String,
        /// Device type or profile.
        #[arg(long = "type")]
        device_type: Option<String>,
        /// A tag, `key=value` (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// A group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List devices.
    List {
        /// Only devices of this type.
        #[arg(long = "type")]
        device_type: Option<String>,
        /// Only devices in this group.
        #[arg(long)]
        group: Option<String>,
        /// Most devices to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one device and its presence.
    Show {
        /// Device id.
        id: String,
    },
    /// Issue another token for a device (for rotation); prints it once.
    Token {
        /// Device id.
        id: String,
    },
    /// Delete a device; its live sessions end at once.
    Rm {
        /// Device id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an API token and print it (shown once).
    Create {
        /// A name for whoever uses it.
        name: String,
        /// Its role.
        #[arg(long, default_value = "viewer", value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// List API tokens (never the tokens themselves).
    List,
    /// Revoke an API token by id.
    Revoke {
        /// The token's id (from `ferrite token list`).
        id: String,
    },
}

async fn call(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ExitCode> {
    let url = format!("http://{}{path}", api.http);
    let mut req = reqwest::Client::new().request(method, &url);
    if let Some(t) = &api.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        eprintln!("error: cannot reach Ferrite at {url}: {e}");
        ExitCode::from(1)
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let message = value["error"].as_str().unwrap_or(text.as_str());
    eprintln!("error: {status}: {message}");
    Err(ExitCode::from(match status.as_u16() {
        400 | 404 | 409 => 2,
        _ => 1,
    }))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

pub(crate) async fn device(api: ApiArgs, command: DeviceCommand) -> ExitCode {
    let result = match command {
        DeviceCommand::Add {
            id,
            device_type,
            tags,
            groups,
        } => {
            let mut tag_map = serde_json::Map::new();
            for t in tags {
                let Some((k, v)) = t.split_once('=') else {
                    eprintln!("error: --tag {t}: expected KEY=VALUE");
                    return ExitCode::from(2);
                };
                tag_map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let body = json!({
                "id": id, "type": device_type, "tags": tag_map, "groups": groups, "credential": true,
            });
            call(&api, reqwest::Method::POST, "/api/v1/devices", Some(body))
                .await
                .map(|v| {
                    let token = v["token"].as_str().unwrap_or_default();
                    format!(
                        "device {id} registered.\ntoken (shown once): {token}\nconnect with: client id {id}, user name {id}, password the token\n"
                    )
                })
        }
        DeviceCommand::List {
            device_type,
            group,
            limit,
        } => {
            let mut path = format!("/api/v1/devices?limit={limit}");
            if let Some(t) = device_type {
                path.push_str(&format!("&type={t}"));
            }
            if let Some(g) = group {
                path.push_str(&format!("&group={g}"));
            }
            call(&api, reqwest::Method::GET, &path, None)
                .await
                .map(|v| {
                    let mut s = String::new();
                    for d in v["items"].as_array().into_iter().flatten() {
                        s.push_str(&format!(
                            "{}\t{}\t{}\n",
                            d["id"].as_str().unwrap_or_default(),
                            d["type"].as_str().unwrap_or("-"),
                            if d["enabled"].as_bool().unwrap_or(false) {
                                "enabled"
                            } else {
                                "disabled"
                            }
                        ));
                    }
                    s
                })
        }
        DeviceCommand::Show { id } => call(
            &api,
            reqwest::Method::GET,
            &format!("/api/v1/devices/{id}"),
            None,
        )
        .await
        .map(|v| pretty(&v)),
        DeviceCommand::Token { id } => call(
            &api,
            reqwest::Method::POST,
            &format!("/api/v1/devices/{id}/credentials"),
            Some(json!({"label": "cli"})),
        )
        .await
        .map(|v| {
            format!(
                "token (shown once): {}\n",
                v["token"].as_str().unwrap_or_default()
            )
        }),
        DeviceCommand::Rm { id } => call(
            &api,
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            None,
        )
        .await
        .map(|_| format!("device {id} deleted\n")),
    };
    match result {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub(crate) async fn token(api: ApiArgs, command: TokenCommand) -> ExitCode {
    let result = match command {
        TokenCommand::Create { name, role } => call(
            &api,
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": name, "role": role})),
        )
        .await
        .map(|v| {
            format!(
                "token {} ({role}) created; shown once: {}\n",
                v["info"]["id"].as_str().unwrap_or_default(),
                v["token"].as_str().unwrap_or_default()
            )
        }),
        TokenCommand::List => call(&api, reqwest::Method::GET, "/api/v1/tokens", None)
            .await
            .map(|v| pretty(&v)),
        TokenCommand::Revoke { id } => call(
            &api,
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            None,
        )
        .await
        .map(|_| format!("token {id} revoked\n")),
    };
    match result {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
