//! `ferrite alarm …`: the alarms of a running Ferrite over its HTTP API — list with filters
//! (an aligned table, newest first, paged through), show one with its history, acknowledge,
//! clear.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::fleet_cmd::{ApiArgs, call, finish, pretty, urlencode};

#[derive(Subcommand)]
pub(crate) enum AlarmCommand {
    /// List alarms, newest first.
    List {
        /// active, acknowledged, cleared_unacknowledged, cleared, or open (all but cleared).
        #[arg(long)]
        state: Option<String>,
        /// info, warning, minor, major or critical.
        #[arg(long)]
        severity: Option<String>,
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
        /// Most alarms to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one alarm with its history, as JSON.
    Show {
        /// Alarm id.
        id: u64,
    },
    /// Acknowledge an alarm.
    Ack {
        /// Alarm id.
        id: u64,
        /// A note kept with the acknowledgement.
        #[arg(long)]
        note: Option<String>,
    },
    /// Clear (close) an alarm.
    Clear {
        /// Alarm id.
        id: u64,
        /// A note kept in the alarm's history.
        #[arg(long)]
        note: Option<String>,
    },
}

pub(crate) async fn alarm(api: ApiArgs, command: AlarmCommand) -> ExitCode {
    finish(alarm_inner(api, command).await)
}

async fn alarm_inner(api: ApiArgs, command: AlarmCommand) -> Result<String, ExitCode> {
    use reqwest::Method;
    match command {
        AlarmCommand::List {
            state,
            severity,
            device,
            rule,
            limit,
        } => {
            let filters: Vec<(&str, String)> = [
                ("state", state),
                ("severity", severity),
                ("device", device),
                ("rule", rule),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            let mut rows = Vec::new();
            let mut after: Option<u64> = None;
            while rows.len() < limit {
                let mut q = filters.clone();
                q.push(("limit", (limit - rows.len()).min(1000).to_string()));
                if let Some(a) = after {
                    q.push(("after", a.to_string()));
                }
                let path = format!(
                    "/api/v1/alarms?{}",
                    q.iter()
                        .map(|(k, v)| format!("{k}={}", urlencode(v)))
                        .collect::<Vec<_>>()
                        .join("&")
                );
                let v = call(&api, Method::GET, &path, None).await?;
                rows.extend(v["items"].as_array().into_iter().flatten().map(row));
                match v["next"].as_u64() {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            Ok(table(&rows))
        }
        AlarmCommand::Show { id } => call(&api, Method::GET, &format!("/api/v1/alarms/{id}"), None)
            .await
            .map(|v| pretty(&v)),
        AlarmCommand::Ack { id, note } => call(
            &api,
            Method::POST,
            &format!("/api/v1/alarms/{id}/ack"),
            Some(json!({ "note": note })),
        )
        .await
        .map(|v| {
            format!(
                "alarm {id} acknowledged: {}\n",
                v["state"].as_str().unwrap_or("?")
            )
        }),
        AlarmCommand::Clear { id, note } => call(
            &api,
            Method::POST,
            &format!("/api/v1/alarms/{id}/clear"),
            Some(json!({ "note": note })),
        )
        .await
        .map(|_| format!("alarm {id} cleared\n")),
    }
}

const HEADER: [&str; 9] = [
    "ID",
    "STATE",
    "SEVERITY",
    "RULE",
    "DEVICE",
    "TYPE",
    "COUNT",
    "LAST RAISED",
    "MESSAGE",
];

/// The table cells of one alarm (a flapping alarm's state is marked `~`).
fn row(a: &Value) -> Vec<String> {
    let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
    let mut state = s("state");
    if a["flapping"] == true {
        state.push('~');
    }
    vec![
        a["id"].to_string(),
        state,
        s("severity"),
        s("rule"),
        s("device"),
        s("type"),
        a["count"].to_string(),
        s("last_raised_at"),
        a["message"].as_str().unwrap_or("").to_owned(),
    ]
}

/// Columns padded to their widest cell; the last one is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|i| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in all {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let a = json!({"id": 12, "state": "active", "flapping": true, "severity": "critical",
            "rule": "hot", "device": "pump-7", "type": "overheat", "count": 3,
            "last_raised_at": "2026-12-03T07:00:00Z", "message": "temp 91"});
        let t = table(&[row(&a)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("SEVERITY"), lines[1].find("critical"), "{t}");
        assert!(lines[1].starts_with("12  active~"), "{t}");
    }
}
