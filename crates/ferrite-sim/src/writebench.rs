//! Line-protocol write benchmark: the load side of `bench/ingest`, against any server that
//! takes InfluxDB line protocol over HTTP (Ferrite's `/api/v2/write`, InfluxDB 1.x's
//! `/write?db=…`, VictoriaMetrics' `/write`).
//!
//! The dataset is read and cut into batches of whole lines *before* the clock starts, so the
//! figure is the server's, not the file reader's; then `concurrency` workers post the batches
//! in file order, each taking the next unsent one. A non-2xx answer ends the run with the
//! server's words: a benchmark that silently drops batches measures nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::SimError;
use crate::stats::Latencies;

/// How to load one server.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The full write URL, query string included.
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
    /// Requests in flight.
    pub concurrency: usize,
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct WriteReport {
    /// Lines (rows) written.
    pub lines: u64,
    /// Field values written (InfluxDB's "values"; TSBS's "metrics").
    pub fields: u64,
    /// Requests sent.
    pub requests: u64,
    /// Bytes of line protocol sent.
    pub bytes: u64,
    /// From the first request to the last answer.
    pub seconds: f64,
    /// `lines / seconds`.
    pub lines_per_sec: f64,
    /// `fields / seconds`.
    pub fields_per_sec: f64,
    /// Request → answer, median, milliseconds.
    pub request_p50_ms: f64,
    /// Request → answer, 99th percentile, milliseconds.
    pub request_p99_ms: f64,
}

/// A dataset cut into request bodies.
#[derive(Debug)]
pub struct Batches {
    bodies: Vec<Bytes>,
    lines: u64,
    fields: u64,
    bytes: u64,
}

impl Batches {
    /// Cut `text` into bodies of `batch_lines` lines each (comments and blank lines skipped).
    pub fn cut(text: &str, batch_lines: usize) -> Self {
        let batch_lines = batch_lines.max(1);
        let (mut bodies, mut current, mut in_current) = (Vec::new(), String::new(), 0usize);
        let (mut lines, mut fields) = (0u64, 0u64);
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            lines += 1;
            fields += field_count(line);
            current.push_str(line);
            current.push('\n');
            in_current += 1;
            if in_current == batch_lines {
                bodies.push(Bytes::from(std::mem::take(&mut current)));
                in_current = 0;
            }
        }
        if in_current > 0 {
            bodies.push(Bytes::from(current));
        }
        let bytes = bodies.iter().map(|b| b.len() as u64).sum();
        Self {
            bodies,
            lines,
            fields,
            bytes,
        }
    }

    /// Lines in all.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Request bodies.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }
}

/// Fields in one line of line protocol: the commas of its field set, outside quotes, plus one.
fn field_count(line: &str) -> u64 {
    // measurement[,tags] fields [time]; spaces and commas in keys are backslash-escaped and
    // string field values are double-quoted.
    let (mut section, mut in_quotes, mut escaped, mut count) = (0, false, false, 0u64);
    for c in line.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' if section == 1 => in_quotes = !in_quotes,
            ' ' if !in_quotes => {
                section += 1;
                if section == 1 {
                    count = 1;
                }
            }
            ',' if section == 1 && !in_quotes => count += 1,
            _ => {}
        }
    }
    count
}

/// Read `path` and cut it into batches.
pub fn load(path: &Path, batch_lines: usize) -> Result<Batches, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
        what: path.display().to_string(),
        source,
    })?;
    Ok(Batches::cut(&text, batch_lines))
}

/// Post every batch; the figures of the run.
pub async fn run(batches: Batches, options: &WriteOptions) -> Result<WriteReport, SimError> {
    if batches.is_empty() {
        return Err(SimError::Config("the dataset has no lines".to_owned()));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()
        .map_err(|e| SimError::Config(format!("HTTP client: {e}")))?;
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Latencies::default());
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (client, batches, next, latencies) = (
            client.clone(),
            Arc::clone(&batches),
            Arc::clone(&next),
            Arc::clone(&latencies),
        );
        let (url, token) = (options.url.clone(), options.token.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = batches.bodies.get(i) else {
                    return Ok(());
                };
                let mut request = client
                    .post(&url)
                    .header("Content-Type", "text/plain; charset=utf-8")
                    .body(body.clone());
                if let Some(t) = &token {
                    request = request.bearer_auth(t);
                }
                let sent = Instant::now();
                let response = request.send().await.map_err(|e| SimError::Unreachable {
                    what: format!("posting batch {i}"),
                    url: url.clone(),
                    source: e,
                })?;
                let status = response.status();
                if !status.is_success() {
                    let message = response.text().await.unwrap_or_default();
                    return Err(SimError::Api {
                        what: format!("posting batch {i}"),
                        status: status.as_u16(),
                        message: message.chars().take(500).collect(),
                    });
                }
                // Drain the (empty) body so the connection is reused.
                let _ = response.bytes().await;
                latencies.record(sent.elapsed());
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(SimError::Config(format!("a writer failed: {e}"))),
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let (p50, p99) = latencies.percentiles();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(WriteReport {
        lines: batches.lines,
        fields: batches.fields,
        requests: batches.bodies.len() as u64,
        bytes: batches.bytes,
        seconds,
        lines_per_sec: batches.lines as f64 / seconds,
        fields_per_sec: batches.fields as f64 / seconds,
        request_p50_ms: ms(p50),
        request_p99_ms: ms(p99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_outside_quotes_and_escapes() {
        assert_eq!(field_count("m v=1 10"), 1);
        assert_eq!(field_count("m,t=a v=1,w=2i,x=true 10"), 3);
        assert_eq!(field_count(r#"m,t=a\ b s="a, b",v=1"#), 2);
        assert_eq!(field_count(r"m\,x,t=a\,b v=1,w=2"), 2);
        assert_eq!(field_count(r#"m s="say \"hi, there\"" 1"#), 1);
    }

    #[test]
    fn batches_hold_whole_lines_and_count_them() {
        let text = "# a comment\nm v=1 1\n\nm v=2,w=3 2\nm v=4 3\n";
        let b = Batches::cut(text, 2);
        assert_eq!((b.lines, b.fields, b.len()), (3, 4, 2));
        assert_eq!(b.bodies[0], "m v=1 1\nm v=2,w=3 2\n");
        assert_eq!(b.bodies[1], "m v=4 3\n");
        assert_eq!(b.bytes, text.len() as u64 - "# a comment\n\n".len() as u64);
    }
}
