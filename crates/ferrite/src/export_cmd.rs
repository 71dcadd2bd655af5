//! `ferrite export`: one table's rows in a time range from a running Ferrite, written as
//! Parquet, CSV or NDJSON, with a progress bar.
//!
//! The server streams the rows as Arrow IPC (`GET /api/v1/export`); this side decodes the
//! stream as it arrives and writes each batch, so memory stays flat however large the export.
//! A file is written under a temporary name and renamed when complete: an interrupted or
//! failed export leaves no partial file behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use clap::{Args, ValueEnum};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::fleet_cmd::{ApiArgs, urlencode};

/// The header in which the server says how many rows the export holds
/// (`ferrite_api::export::ROWS_HEADER`).
const ROWS_HEADER: &str = "x-ferrite-rows";

/// `ferrite export` arguments.
#[derive(Args)]
pub(crate) struct ExportArgs {
    /// The table (measurement) to export.
    #[arg(long)]
    table: String,
    /// First time to include: RFC 3339 (`2026-12-01T00:00:00Z`) or integer nanoseconds.
    #[arg(long)]
    from: Option<String>,
    /// First time not to include, in the same forms.
    #[arg(long)]
    to: Option<String>,
    /// Output format; by default told by the `--out` file's extension
    /// (.parquet, .csv, .ndjson / .jsonl).
    #[arg(long, value_enum)]
    format: Option<ExportFormat>,
    /// File to write; standard output when absent or `-` (CSV and NDJSON only).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

/// What `ferrite export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// Apache Parquet, zstd-compressed, types intact.
    Parquet,
    /// CSV with a header line; times in RFC 3339.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl ExportFormat {
    fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "parquet" => Some(Self::Parquet),
            "csv" => Some(Self::Csv),
            "ndjson" | "jsonl" => Some(Self::Ndjson),
            _ => None,
        }
    }
}

/// Writes batches in one format to one sink.
enum Sink {
    Parquet(ArrowWriter<BufWriter<File>>),
    Csv(arrow::csv::Writer<Box<dyn Write + Send>>),
    Ndjson(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
}

impl Sink {
    fn new(
        format: ExportFormat,
        schema: &SchemaRef,
        out: Box<dyn Write + Send>,
        file: Option<File>,
    ) -> Result<Self, String> {
        Ok(match format {
            ExportFormat::Parquet => {
                let file = file.ok_or("Parquet needs --out FILE: it cannot go to a pipe")?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                Self::Parquet(
                    ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
                        .map_err(|e| e.to_string())?,
                )
            }
            ExportFormat::Csv => Self::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            ExportFormat::Ndjson => Self::Ndjson(arrow::json::LineDelimitedWriter::new(out)),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self {
            Self::Parquet(w) => w.write(batch).map_err(|e| e.to_string()),
            Self::Csv(w) => w.write(batch).map_err(|e| e.to_string()),
            Self::Ndjson(w) => w.write(batch).map_err(|e| e.to_string()),
        }
    }

    fn finish(self) -> Result<(), String> {
        match self {
            Self::Parquet(w) => {
                let file = w
                    .into_inner()
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .map_err(|e| e.to_string())?;
                file.sync_all().map_err(|e| e.to_string())
            }
            Self::Csv(w) => w.into_inner().flush().map_err(|e| e.to_string()),
            Self::Ndjson(mut w) => {
                w.finish().map_err(|e| e.to_string())?;
                w.into_inner().flush().map_err(|e| e.to_string())
            }
        }
    }
}

/// An opened target, the writer of its bytes, and its file (Parquet writes the file itself).
type Opened = (Target, Box<dyn Write + Send>, Option<File>);

/// Where the rows go: a file under a temporary name until it is complete, or stdout.
struct Target {
    /// (final path, temporary path) for a file.
    paths: Option<(PathBuf, PathBuf)>,
}

impl Target {
    fn open(out: Option<&Path>) -> Result<Opened, String> {
        match out.filter(|p| p.as_os_str() != "-") {
            None => Ok((
                Self { paths: None },
                Box::new(BufWriter::new(std::io::stdout())),
                None,
            )),
            Some(path) => {
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(".partial");
                let temp = path.with_file_name(name);
                let file = File::create(&temp)
                    .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
                let writer = file
                    .try_clone()
                    .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
                Ok((
                    Self {
                        paths: Some((path.to_owned(), temp)),
                    },
                    Box::new(BufWriter::new(writer)),
                    Some(file),
                ))
            }
        }
    }

    fn commit(&self) -> Result<(), String> {
        if let Some((path, temp)) = &self.paths {
            std::fs::rename(temp, path)
                .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn abandon(&self) {
        if let Some((_, temp)) = &self.paths {
            let _ = std::fs::remove_file(temp);
        }
    }
}

pub(crate) async fn export(args: ExportArgs) -> ExitCode {
    let format = match args
        .format
        .or_else(|| args.out.as_deref().and_then(ExportFormat::from_path))
    {
        Some(f) => f,
        None => {
            eprintln!(
                "error: say --format parquet|csv|ndjson (or give --out a .parquet, .csv or .ndjson name)"
            );
            return ExitCode::from(2);
        }
    };
    let to_stdout = args.out.as_deref().is_none_or(|p| p.as_os_str() == "-");
    if format == ExportFormat::Parquet && to_stdout {
        eprintln!("error: Parquet needs --out FILE: it cannot go to a pipe");
        return ExitCode::from(2);
    }
    let mut query = format!("table={}", urlencode(&args.table));
    for (name, value) in [("from", &args.from), ("to", &args.to)] {
        if let Some(v) = value {
            query.push_str(&format!("&{name}={}", urlencode(v)));
        }
    }
    let url = format!("http://{}/api/v1/export?{query}", args.api.http);
    let mut request = reqwest::Client::new().get(&url);
    if let Some(t) = &args.api.token {
        request = request.bearer_auth(t);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach Ferrite at {url}: {e}");
            return ExitCode::from(1);
        }
    };
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        eprintln!("error: {status}: {message}");
        return ExitCode::from(if status.is_client_error() { 2 } else { 1 });
    }
    let total = response
        .headers()
        .get(ROWS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (target, out, file) = match Target::open(args.out.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let bar = progress_bar(total);
    match receive(response, format, out, file, &bar).await {
        Ok(rows) => {
            bar.finish_and_clear();
            if let Err(e) = target.commit() {
                target.abandon();
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
            let place = args
                .out
                .as_deref()
                .filter(|_| !to_stdout)
                .map_or_else(|| "standard output".to_owned(), |p| p.display().to_string());
            eprintln!(
                "exported {rows} row{} of {} to {place}",
                if rows == 1 { "" } else { "s" },
                args.table
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            bar.abandon();
            target.abandon();
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {human_pos}/{human_len} rows  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Decode the IPC stream as it arrives and write each batch; the number of rows written.
async fn receive(
    mut response: reqwest::Response,
    format: ExportFormat,
    out: Box<dyn Write + Send>,
    file: Option<File>,
    bar: &indicatif::ProgressBar,
) -> Result<u64, String> {
    let mut decoder = StreamDecoder::new();
    let mut out = Some((out, file));
    let mut sink: Option<Sink> = None;
    let mut rows = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the export broke off after {rows} rows: {e}"))?
    {
        let mut buffer = Buffer::from_vec(chunk.to_vec());
        // `decode` gives `None` once the buffer is used up (or the stream has ended).
        while let Some(batch) = decoder
            .decode(&mut buffer)
            .map_err(|e| format!("decoding the export: {e}"))?
        {
            if sink.is_none() {
                let (w, f) = out.take().ok_or("internal: sink opened twice")?;
                sink = Some(Sink::new(format, &batch.schema(), w, f)?);
            }
            if let Some(s) = sink.as_mut() {
                s.write(&batch)?;
            }
            rows += batch.num_rows() as u64;
            bar.set_position(rows);
        }
    }
    decoder
        .finish()
        .map_err(|e| format!("the export ended in the middle of a message: {e}"))?;
    let sink = match sink {
        Some(s) => s,
        // No rows: still write the table's columns (a Parquet schema, a CSV header).
        None => {
            let schema = decoder
                .schema()
                .ok_or("the export ended before it said what its columns are")?;
            let (w, f) = out.take().ok_or("internal: sink opened twice")?;
            let mut sink = Sink::new(format, &schema, w, f)?;
            sink.write(&RecordBatch::new_empty(schema))?;
            sink
        }
    };
    sink.finish()?;
    Ok(rows)
}
