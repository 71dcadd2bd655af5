//! `ferrite device|token|cert|policy|claim|audit …`: the device registry, API tokens,
//! certificates, access policies, claim tokens and audit log of a running Ferrite, over its
//! HTTP API (the server holds the registry open, so the CLI is a client).

use std::io::Write;
use std::path::{Path, PathBuf};
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
    pub(crate) http: String,
    /// API token (the admin token `ferrite serve` printed on first start, or one from
    /// `ferrite token create`).
    #[arg(
        long,
        env = "FERRITE_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
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
        /// Only devices with this tag, `key=value`.
        #[arg(long, value_name = "KEY=VALUE")]
        tag: Option<String>,
        /// Only devices whose id starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only devices connected now (`true`) or not (`false`).
        #[arg(long)]
        online: Option<bool>,
        /// Only enabled (`true`) or disabled (`false`) devices.
        #[arg(long)]
        enabled: Option<bool>,
        /// Most devices to print (pages through the registry as needed).
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
    /// Change a device: only the fields given change.
    Update {
        /// Device id.
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New type.
        #[arg(long = "type")]
        device_type: Option<String>,
        /// Set a tag, `key=value` (repeatable); other tags stay.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Remove a tag (repeatable).
        #[arg(long = "untag", value_name = "KEY")]
        untag: Vec<String>,
        /// Replace the groups with these (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// New firmware version.
        #[arg(long)]
        firmware: Option<String>,
        /// Disable the device (its live sessions end at once).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Enable the device.
        #[arg(long)]
        enable: bool,
    },
    /// Import devices from NDJSON or CSV (idempotent: re-running changes nothing).
    Import {
        /// The file (`.csv` is CSV unless --format says otherwise).
        file: PathBuf,
        /// File format [default: by extension, else ndjson].
        #[arg(long, value_parser = ["ndjson", "csv"])]
        format: Option<String>,
        /// Records per request.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
    /// Export every device as NDJSON or CSV (imports back unchanged).
    Export {
        /// Output file [default: standard output].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Format.
        #[arg(long, default_value = "ndjson", value_parser = ["ndjson", "csv"])]
        format: String,
    },
    /// List a device's token credentials (never the tokens).
    Credentials {
        /// Device id.
        id: String,
    },
    /// Rotate a credential: a new token now, the old one working for --grace (or until
    /// revoked).
    Rotate {
        /// Device id.
        id: String,
        /// The credential to replace (from `ferrite device credentials`).
        credential: String,
        /// How long the old token keeps working, e.g. `1h`.
        #[arg(long)]
        grace: Option<String>,
    },
    /// Revoke a credential; sessions that connected with it end at once.
    Revoke {
        /// Device id.
        id: String,
        /// The credential id.
        credential: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertCommand {
    /// Create the fleet's CA (ECDSA P-256); prints its certificate.
    CaInit {
        /// The CA's common name.
        #[arg(long, default_value = "Ferrite device CA")]
        cn: String,
    },
    /// Use your own CA (certificate and key, PEM) to issue device certificates.
    CaImport {
        /// CA certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// CA private key (PEM).
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the CA certificate (for devices' trust stores and brokers' client_ca).
    Ca,
    /// Issue a certificate for a device; writes DEVICE.crt, DEVICE.key (unless --csr) and
    /// ca.crt into --dir.
    Issue {
        /// Device id.
        device: String,
        /// Sign this certificate request (PEM) instead of generating a key.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Folder to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// List a device's certificates.
    List {
        /// Device id.
        device: String,
    },
    /// Revoke a certificate by serial (hex); sessions using it end at once.
    Revoke {
        /// Serial number.
        serial: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Create or replace a policy from a JSON file (`-`: standard input), e.g.
    /// `{"attach": ["group:lobby"], "allow": [{"access": "subscribe", "topics":
    /// ["broadcast/${group}/#"]}]}`.
    Put {
        /// Policy name.
        name: String,
        /// JSON file.
        file: PathBuf,
    },
    /// List policies.
    List,
    /// Show one policy.
    Show {
        /// Policy name.
        name: String,
    },
    /// Delete a policy.
    Rm {
        /// Policy name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClaimCommand {
    /// Create a claim token for devices to enroll themselves; prints it once.
    Create {
        /// What it is for.
        #[arg(long)]
        label: String,
        /// Type of the devices it creates.
        #[arg(long = "type")]
        device_type: Option<String>,
        /// A tag of the devices, `key=value` (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// A group of the devices (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Required id prefix (generated ids are PREFIX + 12 hex digits).
        #[arg(long)]
        prefix: Option<String>,
        /// How many devices it may create.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// How long it works, e.g. `7d`.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List claim tokens (never the tokens).
    List,
    /// Revoke a claim token.
    Revoke {
        /// Claim id.
        id: String,
    },
}

/// `ferrite audit`: who changed what, when.
#[derive(Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Entries at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only entries about this target (a device id, token id, policy name …).
    #[arg(long)]
    target: Option<String>,
    /// Most entries to print.
    #[arg(long, default_value_t = 100)]
    limit: usize,
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

pub(crate) async fn call(
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

pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

pub(crate) async fn device(api: ApiArgs, command: DeviceCommand) -> ExitCode {
    finish(device_inner(api, command).await)
}

async fn device_inner(api: ApiArgs, command: DeviceCommand) -> Result<String, ExitCode> {
    match command {
        DeviceCommand::Add {
            id,
            device_type,
            tags,
            groups,
        } => {
            let body = json!({
                "id": id, "type": device_type, "tags": tag_map(&tags)?, "groups": groups,
                "credential": true,
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
            tag,
            prefix,
            online,
            enabled,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(t) = device_type {
                query.push(("type", t));
            }
            if let Some(g) = group {
                query.push(("group", g));
            }
            if let Some(t) = tag {
                let Some((k, v)) = t.split_once('=') else {
                    eprintln!("error: --tag {t}: expected KEY=VALUE");
                    return Err(ExitCode::from(2));
                };
                query.push(("tag", format!("{k}:{v}")));
            }
            if let Some(p) = prefix {
                query.push(("prefix", p));
            }
            if let Some(o) = online {
                query.push(("online", o.to_string()));
            }
            if let Some(e) = enabled {
                query.push(("enabled", e.to_string()));
            }
            let mut s = String::new();
            let (mut printed, mut after) = (0usize, None::<String>);
            while printed < limit {
                let mut q = query.clone();
                q.push(("limit", (limit - printed).min(1000).to_string()));
                if let Some(a) = &after {
                    q.push(("after", a.clone()));
                }
                let path = format!(
                    "/api/v1/devices?{}",
                    q.iter()
                        .map(|(k, v)| format!("{k}={}", urlencode(v)))
                        .collect::<Vec<_>>()
                        .join("&")
                );
                let v = call(&api, reqwest::Method::GET, &path, None).await?;
                for d in v["items"].as_array().into_iter().flatten() {
                    printed += 1;
                    s.push_str(&format!(
                        "{}\t{}\t{}\n",
                        d["id"].as_str().unwrap_or_default(),
                        d["type"].as_str().unwrap_or("-"),
                        if d["enabled"].as_bool().unwrap_or(false) {
                            "enabled"
                        } else {
                            "disabled"
                        },
                    ));
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_owned()),
                    None => break,
                }
            }
            Ok(s)
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
        DeviceCommand::Update {
            id,
            name,
            device_type,
            tags,
            untag,
            groups,
            firmware,
            disable,
            enable,
        } => {
            let mut patch = serde_json::Map::new();
            if let Some(n) = name {
                patch.insert("name".into(), json!(n));
            }
            if let Some(t) = device_type {
                patch.insert("type".into(), json!(t));
            }
            if !tags.is_empty() {
                patch.insert("set_tags".into(), Value::Object(tag_map(&tags)?));
            }
            if !untag.is_empty() {
                patch.insert("remove_tags".into(), json!(untag));
            }
            if !groups.is_empty() {
                patch.insert("groups".into(), json!(groups));
            }
            if let Some(fw) = firmware {
                patch.insert("firmware_version".into(), json!(fw));
            }
            if disable || enable {
                patch.insert("enabled".into(), json!(enable));
            }
            if patch.is_empty() {
                eprintln!("error: nothing to change: give at least one option");
                return Err(ExitCode::from(2));
            }
            call(
                &api,
                reqwest::Method::PATCH,
                &format!("/api/v1/devices/{id}"),
                Some(Value::Object(patch)),
            )
            .await
            .map(|v| pretty(&v))
        }
        DeviceCommand::Import {
            file,
            format,
            batch,
        } => import(&api, &file, format.as_deref(), batch).await,
        DeviceCommand::Export { out, format } => export(&api, out.as_deref(), &format).await,
        DeviceCommand::Credentials { id } => call(
            &api,
            reqwest::Method::GET,
            &format!("/api/v1/devices/{id}/credentials"),
            None,
        )
        .await
        .map(|v| pretty(&v)),
        DeviceCommand::Rotate {
            id,
            credential,
            grace,
        } => call(
            &api,
            reqwest::Method::POST,
            &format!("/api/v1/devices/{id}/credentials/{credential}/rotate"),
            Some(json!({"grace": grace, "label": "cli-rotation"})),
        )
        .await
        .map(|v| {
            format!(
                "new credential {}; token (shown once): {}\nthe old token works {}\n",
                v["credential"]["id"].as_str().unwrap_or_default(),
                v["token"].as_str().unwrap_or_default(),
                grace.map_or("until revoked".to_owned(), |g| format!("for {g}"))
            )
        }),
        DeviceCommand::Revoke { id, credential } => call(
            &api,
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{id}/credentials/{credential}"),
            None,
        )
        .await
        .map(|_| format!("credential {credential} of {id} revoked\n")),
    }
}

pub(crate) fn finish(result: Result<String, ExitCode>) -> ExitCode {
    match result {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `KEY=VALUE` flags as a JSON object.
fn tag_map(tags: &[String]) -> Result<serde_json::Map<String, Value>, ExitCode> {
    let mut map = serde_json::Map::new();
    for t in tags {
        let Some((k, v)) = t.split_once('=') else {
            eprintln!("error: --tag {t}: expected KEY=VALUE");
            return Err(ExitCode::from(2));
        };
        map.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(map)
}

fn client(api: &ApiArgs, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let req = reqwest::Client::new().request(method, format!("http://{}{path}", api.http));
    match &api.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

fn unreachable_server(api: &ApiArgs, e: &reqwest::Error) -> ExitCode {
    eprintln!("error: cannot reach Ferrite at {}: {e}", api.http);
    ExitCode::from(1)
}

async fn failed(resp: reqwest::Response) -> ExitCode {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    eprintln!(
        "error: {status}: {}",
        value["error"].as_str().unwrap_or(text.as_str())
    );
    ExitCode::from(if status.is_client_error() { 2 } else { 1 })
}

/// Send the file in batches of `batch` records, with a progress bar; line numbers in errors
/// are the file's.
async fn import(
    api: &ApiArgs,
    file: &Path,
    format: Option<&str>,
    batch: usize,
) -> Result<String, ExitCode> {
    let csv = match format {
        Some(f) => f == "csv",
        None => file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("error: {}: {e}", file.display());
        ExitCode::from(2)
    })?;
    let chunks = import_chunks(&text, csv, batch.max(1));
    let bar = indicatif::ProgressBar::new(text.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {percent:>3}% {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut totals = [0u64; 5]; // records, created, updated, unchanged, failed
    let mut errors = Vec::new();
    for chunk in chunks {
        let path = format!(
            "/api/v1/devices/import?format={}",
            if csv { "csv" } else { "ndjson" }
        );
        let resp = client(api, reqwest::Method::POST, &path)
            .body(chunk.body)
            .send()
            .await
            .map_err(|e| unreachable_server(api, &e))?;
        if !resp.status().is_success() {
            bar.abandon();
            return Err(failed(resp).await);
        }
        let report: Value = resp.json().await.map_err(|e| unreachable_server(api, &e))?;
        for (i, key) in ["records", "created", "updated", "unchanged", "failed"]
            .iter()
            .enumerate()
        {
            totals[i] += report[key].as_u64().unwrap_or(0);
        }
        for e in report["errors"].as_array().into_iter().flatten() {
            let line = e["line"].as_u64().unwrap_or(0) + chunk.line_offset;
            errors.push(format!(
                "line {line}: {}",
                e["message"].as_str().unwrap_or_default()
            ));
        }
        bar.inc(chunk.bytes as u64);
        bar.set_message(format!(
            "{} records: {} created, {} updated, {} unchanged, {} failed",
            totals[0], totals[1], totals[2], totals[3], totals[4]
        ));
    }
    bar.finish();
    let mut s = format!(
        "{} records: {} created, {} updated, {} unchanged, {} failed\n",
        totals[0], totals[1], totals[2], totals[3], totals[4]
    );
    for e in errors.iter().take(1000) {
        s.push_str(e);
        s.push('\n');
    }
    if totals[4] > 0 {
        out(&s);
        return Err(ExitCode::from(2));
    }
    Ok(s)
}

async fn export(api: &ApiArgs, out_file: Option<&Path>, format: &str) -> Result<String, ExitCode> {
    let path = format!("/api/v1/devices/export?format={}", urlencode(format));
    let mut resp = client(api, reqwest::Method::GET, &path)
        .send()
        .await
        .map_err(|e| unreachable_server(api, &e))?;
    if !resp.status().is_success() {
        return Err(failed(resp).await);
    }
    let io_error = |e: std::io::Error| {
        eprintln!("error: writing the export: {e}");
        ExitCode::from(1)
    };
    let mut sink: Box<dyn Write> = match out_file {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(io_error)?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut bytes = 0usize;
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        eprintln!("error: the export was cut off: {e}");
        ExitCode::from(1)
    })? {
        bytes += chunk.len();
        sink.write_all(&chunk).map_err(io_error)?;
    }
    sink.flush().map_err(io_error)?;
    Ok(match out_file {
        Some(p) => format!("{bytes} bytes written to {}\n", p.display()),
        None => String::new(),
    })
}

pub(crate) async fn cert(api: ApiArgs, command: CertCommand) -> ExitCode {
    finish(cert_inner(api, command).await)
}

pub(crate) fn read_file(path: &Path) -> Result<String, ExitCode> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
            eprintln!("error: standard input: {e}");
            ExitCode::from(2)
        })?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| {
        eprintln!("error: {}: {e}", path.display());
        ExitCode::from(2)
    })
}

async fn text_call(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<String, ExitCode> {
    let mut req = client(api, method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| unreachable_server(api, &e))?;
    if !resp.status().is_success() {
        return Err(failed(resp).await);
    }
    resp.text().await.map_err(|e| unreachable_server(api, &e))
}

async fn cert_inner(api: ApiArgs, command: CertCommand) -> Result<String, ExitCode> {
    match command {
        CertCommand::CaInit { cn } => {
            text_call(
                &api,
                reqwest::Method::POST,
                "/api/v1/ca",
                Some(json!({"common_name": cn})),
            )
            .await
        }
        CertCommand::CaImport { cert, key } => {
            let body = json!({"cert": read_file(&cert)?, "key": read_file(&key)?});
            call(&api, reqwest::Method::PUT, "/api/v1/ca", Some(body))
                .await
                .map(|_| "CA imported\n".to_owned())
        }
        CertCommand::Ca => text_call(&api, reqwest::Method::GET, "/api/v1/ca", None).await,
        CertCommand::Issue { device, csr, dir } => {
            let body = match &csr {
                Some(p) => json!({"csr": read_file(p)?}),
                None => json!({}),
            };
            let v = call(
                &api,
                reqwest::Method::POST,
                &format!("/api/v1/devices/{device}/certs"),
                Some(body),
            )
            .await?;
            let write = |name: String, text: &str, private: bool| -> Result<PathBuf, ExitCode> {
                let path = dir.join(name);
                write_file(&path, text.as_bytes(), private).map_err(|e| {
                    eprintln!("error: {}: {e}", path.display());
                    ExitCode::from(1)
                })?;
                Ok(path)
            };
            let mut s = format!(
                "certificate {} for {device}, valid until {}\n",
                v["serial"].as_str().unwrap_or_default(),
                v["not_after"]
            );
            let cert = write(
                format!("{device}.crt"),
                v["cert"].as_str().unwrap_or_default(),
                false,
            )?;
            s.push_str(&format!("  {}\n", cert.display()));
            if let Some(key) = v["key"].as_str() {
                let key = write(format!("{device}.key"), key, true)?;
                s.push_str(&format!(
                    "  {} (private key, shown nowhere else)\n",
                    key.display()
                ));
            }
            let ca = write(
                "ca.crt".to_owned(),
                v["ca"].as_str().unwrap_or_default(),
                false,
            )?;
            s.push_str(&format!("  {}\n", ca.display()));
            Ok(s)
        }
        CertCommand::List { device } => call(
            &api,
            reqwest::Method::GET,
            &format!("/api/v1/devices/{device}/certs"),
            None,
        )
        .await
        .map(|v| pretty(&v)),
        CertCommand::Revoke { serial } => call(
            &api,
            reqwest::Method::DELETE,
            &format!("/api/v1/certs/{serial}"),
            None,
        )
        .await
        .map(|_| format!("certificate {serial} revoked\n")),
    }
}

pub(crate) async fn policy(api: ApiArgs, command: PolicyCommand) -> ExitCode {
    let result = match command {
        PolicyCommand::Put { name, file } => match read_file(&file).and_then(|text| {
            serde_json::from_str::<Value>(&text).map_err(|e| {
                eprintln!("error: {}: not JSON: {e}", file.display());
                ExitCode::from(2)
            })
        }) {
            Ok(body) => call(
                &api,
                reqwest::Method::PUT,
                &format!("/api/v1/policies/{name}"),
                Some(body),
            )
            .await
            .map(|_| format!("policy {name} saved\n")),
            Err(code) => Err(code),
        },
        PolicyCommand::List => call(&api, reqwest::Method::GET, "/api/v1/policies", None)
            .await
            .map(|v| pretty(&v)),
        PolicyCommand::Show { name } => call(
            &api,
            reqwest::Method::GET,
            &format!("/api/v1/policies/{name}"),
            None,
        )
        .await
        .map(|v| pretty(&v)),
        PolicyCommand::Rm { name } => call(
            &api,
            reqwest::Method::DELETE,
            &format!("/api/v1/policies/{name}"),
            None,
        )
        .await
        .map(|_| format!("policy {name} deleted\n")),
    };
    finish(result)
}

pub(crate) async fn claim(api: ApiArgs, command: ClaimCommand) -> ExitCode {
    let result = match command {
        ClaimCommand::Create {
            label,
            device_type,
            tags,
            groups,
            prefix,
            max_uses,
            expires_in,
        } => match tag_map(&tags) {
            Ok(tags) => {
                let body = json!({
                    "label": label,
                    "template": {"type": device_type, "tags": tags, "groups": groups, "id_prefix": prefix},
                    "max_uses": max_uses,
                    "expires_in": expires_in,
                });
                call(&api, reqwest::Method::POST, "/api/v1/claims", Some(body))
                    .await
                    .map(|v| {
                        format!(
                            "claim {} created; token (shown once): {}\ndevices enroll with it over MQTT (user name $claim) or POST /api/v1/provision\n",
                            v["info"]["id"].as_str().unwrap_or_default(),
                            v["token"].as_str().unwrap_or_default()
                        )
                    })
            }
            Err(code) => Err(code),
        },
        ClaimCommand::List => call(&api, reqwest::Method::GET, "/api/v1/claims", None)
            .await
            .map(|v| pretty(&v)),
        ClaimCommand::Revoke { id } => call(
            &api,
            reqwest::Method::DELETE,
            &format!("/api/v1/claims/{id}"),
            None,
        )
        .await
        .map(|_| format!("claim {id} revoked\n")),
    };
    finish(result)
}

pub(crate) async fn audit(args: AuditArgs) -> ExitCode {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(s) = args.since {
        query.push(("since", s));
    }
    if let Some(t) = args.target {
        query.push(("target", t));
    }
    let path = format!(
        "/api/v1/audit?{}",
        query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    );
    let result = call(&args.api, reqwest::Method::GET, &path, None)
        .await
        .map(|v| {
            let mut s = String::new();
            for e in v["items"].as_array().into_iter().flatten() {
                let at = e["at"]
                    .as_i64()
                    .map(|ns| ferrite_core::Timestamp::from_nanos(ns).to_string())
                    .unwrap_or_default();
                s.push_str(&format!(
                    "{at}\t{}\t{}\t{}\t{}\n",
                    actor(&e["actor"]),
                    e["action"].as_str().unwrap_or_default(),
                    e["target"].as_str().unwrap_or_default(),
                    if e["detail"].is_null() {
                        String::new()
                    } else {
                        e["detail"].to_string()
                    }
                ));
            }
            s
        });
    finish(result)
}

/// An audit actor as the server writes it in logs: `api:NAME(ID)`, `operator:NAME`,
/// `device:ID`, `claim:ID`, `system`.
fn actor(v: &Value) -> String {
    let field = |k: &str| v[k].as_str().unwrap_or_default();
    match field("kind") {
        "api_token" => format!("api:{}({})", field("name"), field("id")),
        "operator" => format!("operator:{}", field("name")),
        "device" => format!("device:{}", field("id")),
        "claim" => format!("claim:{}", field("id")),
        "system" => "system".to_owned(),
        _ => v.to_string(),
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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

/// One request's worth of an import file.
#[derive(Debug, PartialEq)]
struct Chunk {
    body: String,
    /// Add to a line number the server reports to get the file's line number.
    line_offset: u64,
    /// Bytes of the file this chunk covers (for the progress bar).
    bytes: usize,
}

/// Cut an import file into requests of `batch` records. CSV chunks repeat the header; a quoted
/// CSV field spanning lines is never cut.
fn import_chunks(text: &str, csv: bool, batch: usize) -> Vec<Chunk> {
    let mut lines = text.split_inclusive('\n');
    let header = if csv { lines.next() } else { None };
    let header_line = header.map(|h| {
        let mut h = h.to_owned();
        if !h.ends_with('\n') {
            h.push('\n');
        }
        h
    });
    let mut chunks = Vec::new();
    let mut body = header_line.clone().unwrap_or_default();
    let (mut records, mut bytes) = (0usize, header.map_or(0, str::len));
    let mut in_quotes = false;
    // Lines are numbered from 1 in the file; a CSV's first record is on line 2.
    let first_record_line: u64 = if csv { 2 } else { 1 };
    let mut first_line = first_record_line;
    for (line_no, line) in (first_record_line..).zip(lines) {
        if records >= batch && !in_quotes {
            chunks.push(Chunk {
                line_offset: if csv { first_line - 2 } else { first_line - 1 },
                body: std::mem::replace(&mut body, header_line.clone().unwrap_or_default()),
                bytes: std::mem::take(&mut bytes),
            });
            records = 0;
            first_line = line_no;
        }
        body.push_str(line);
        bytes += line.len();
        if csv && line.bytes().filter(|&b| b == b'"').count() % 2 == 1 {
            in_quotes = !in_quotes;
        }
        if !in_quotes && !line.trim().is_empty() {
            records += 1;
        }
    }
    if records > 0 || bytes > 0 {
        chunks.push(Chunk {
            line_offset: if csv { first_line - 2 } else { first_line - 1 },
            body,
            bytes,
        });
    }
    chunks
}

/// Write a file; a private one (a key) readable by its owner only.
fn write_file(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_chunks_keep_file_line_numbers() {
        let text = "{\"id\":\"a\"}\n\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n";
        let chunks = import_chunks(text, false, 2);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].body, "{\"id\":\"a\"}\n\n{\"id\":\"b\"}\n");
        assert_eq!(chunks[0].line_offset, 0);
        // The server numbers lines of the second request from 1: line 1 is file line 4.
        assert_eq!(chunks[1].body, "{\"id\":\"c\"}\n");
        assert_eq!(chunks[1].line_offset + 1, 4);
        assert_eq!(chunks.iter().map(|c| c.bytes).sum::<usize>(), text.len());
    }

    #[test]
    fn csv_chunks_repeat_the_header_and_never_cut_a_quoted_field() {
        let text = "id,name\nd1,\"two\nlines\"\nd2,x\nd3,y";
        let chunks = import_chunks(text, true, 1);
        let bodies: Vec<&str> = chunks.iter().map(|c| c.body.as_str()).collect();
        assert_eq!(
            bodies,
            [
                "id,name\nd1,\"two\nlines\"\n",
                "id,name\nd2,x\n",
                "id,name\nd3,y"
            ]
        );
        // In the second request, line 2 (its first record) is file line 4.
        assert_eq!(chunks[1].line_offset + 2, 4);
        assert_eq!(chunks[2].line_offset + 2, 5);
        assert_eq!(chunks.iter().map(|c| c.bytes).sum::<usize>(), text.len());
    }
}
