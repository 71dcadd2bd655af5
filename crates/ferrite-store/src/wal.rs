//! The write-ahead log: every accepted write is appended here and fsynced before it is
//! acknowledged; on start the log is replayed into the memtables.
//!
//! # Format, version 1
//!
//! ```text
//! wal/{segment:020}.wal
//!   header  : "FWAL" | version: u16 LE = 1 | reserved: u16 = 0
//!   record* : len: u32 LE | crc32(payload): u32 LE | payload: postcard(WalRecord)
//! ```
//!
//! One record holds the points of one write request, so a request is replayed whole or not
//! at all. A record that is incomplete or fails its checksum at the end of the newest segment
//! is a torn write from a crash: the segment is cut there, keeping every earlier record. The
//! same in an older segment is damage: the rest of that segment is skipped and reported.
//!
//! A flush rotates to a new segment first; once the flushed rows are in data files and the
//! catalog records the new segment as its `wal_floor`, the older segments are deleted (and
//! any left by a crash are deleted, not replayed, on open).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ferrite_core::Point;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const MAGIC: &[u8; 4] = b"FWAL";
const VERSION: u16 = 1;
const HEADER_LEN: u64 = 8;
const RECORD_HEADER_LEN: usize = 8;
/// Largest record accepted on replay; a length above this is damage, not a reason to allocate.
pub(crate) const MAX_RECORD_LEN: u32 = 256 * 1024 * 1024;

/// The payload of one WAL record.
#[derive(Serialize, Deserialize)]
pub(crate) struct WalRecord {
    pub(crate) points: Vec<Point>,
}

/// A [`WalRecord`] borrowed, to encode (postcard writes a slice as it writes a `Vec`).
#[derive(Serialize)]
struct WalRecordRef<'a> {
    points: &'a [Point],
}

/// One record framed for the log (length, checksum, payload), encoded by the writer of the
/// points on its own thread so the log's single writer only copies bytes.
pub(crate) fn encode(points: &[Point]) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0; RECORD_HEADER_LEN];
    buf = postcard::to_extend(&WalRecordRef { points }, buf)
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    let payload_len = buf.len() - RECORD_HEADER_LEN;
    let len = u32::try_from(payload_len)
        .ok()
        .filter(|l| *l <= MAX_RECORD_LEN)
        .ok_or_else(|| StoreError::Encode(format!("record of {payload_len} bytes is too large")))?;
    let crc = crc32fast::hash(&buf[RECORD_HEADER_LEN..]);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// What replay found, for the start-up log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Segments read.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Bytes cut from the end of the newest segment (a torn write).
    pub torn_bytes: u64,
    /// Records or segment tails skipped because they were damaged.
    pub damaged: u64,
}

/// The appending end of the log; owned by the writer thread alone.
pub(crate) struct WalWriter {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    /// Number of the segment being appended to.
    segment: u64,
    buf: Vec<u8>,
}

impl WalWriter {
    /// Append one record framed by [`encode`] to the in-process buffer;
    /// [`WalWriter::commit`] writes and fsyncs.
    pub(crate) fn append(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }

    /// Drop records appended since the last commit (used when encoding fails midway).
    pub(crate) fn discard(&mut self) {
        self.buf.clear();
    }

    /// Start a new segment; every record appended before is in segments numbered below the
    /// returned number. Called with nothing buffered.
    pub(crate) fn rotate(&mut self) -> Result<u64, StoreError> {
        let next = self.segment + 1;
        let path = segment_path(&self.dir, next);
        self.file = create_segment(&self.dir, &path)?;
        self.path = path;
        self.segment = next;
        Ok(next)
    }

    /// Write the buffered records and fsync: the group commit. Returns the bytes written.
    pub(crate) fn commit(&mut self) -> Result<usize, StoreError> {
        let n = self.buf.len();
        if n == 0 {
            return Ok(0);
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| StoreError::io("writing", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("fsyncing", &self.path, e))?;
        self.buf.clear();
        Ok(n)
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io("listing", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("listing", dir, e))?;
        let path = entry.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Open the log in `dir`: replay every record through `apply`, cut a torn tail, and return
/// the writer positioned at the end of the newest segment.
pub(crate) fn open(
    dir: &Path,
    floor: u64,
    mut apply: impl FnMut(WalRecord),
) -> Result<(WalWriter, ReplayReport), StoreError> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir, e))?;
    remove_below(dir, floor)?;
    let segments = list_segments(dir)?;
    let mut report = ReplayReport::default();
    let newest = segments.last().map(|(n, _)| *n);
    for (n, path) in &segments {
        report.segments += 1;
        let end = replay_segment(path, &mut apply, &mut report)?;
        if let Some(valid_len) = end.cut_at {
            if Some(*n) == newest {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| StoreError::io("opening", path, e))?;
                file.set_len(valid_len)
                    .map_err(|e| StoreError::io("truncating", path, e))?;
                file.sync_all()
                    .map_err(|e| StoreError::io("fsyncing", path, e))?;
                report.torn_bytes += end.file_len - valid_len;
                tracing::warn!(path = %path.display(), valid_len, cut = end.file_len - valid_len, "cut a torn write at the end of the WAL");
            } else {
                report.damaged += 1;
                tracing::error!(path = %path.display(), offset = valid_len, "damaged WAL record; skipped the rest of this segment");
            }
        }
    }
    let (segment, path, fresh) = match segments.last() {
        Some((n, p)) => (*n, p.clone(), false),
        None => (floor.max(1), segment_path(dir, floor.max(1)), true),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| StoreError::io("opening", &path, e))?;
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| StoreError::io("seeking", &path, e))?;
    if fresh || len < HEADER_LEN {
        // A new segment, or one whose header itself was torn: start it over.
        drop(file);
        file = create_segment(dir, &path)?;
    }
    Ok((
        WalWriter {
            file,
            path,
            dir: dir.to_owned(),
            segment,
            buf: Vec::new(),
        },
        report,
    ))
}

/// Create (or start over) the segment at `path` with its header, durably.
fn create_segment(dir: &Path, path: &Path) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("creating", path, e))?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    file.write_all(&header)
        .map_err(|e| StoreError::io("writing", path, e))?;
    file.sync_all()
        .map_err(|e| StoreError::io("fsyncing", path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Delete the segments numbered below `floor`: their records are all in data files.
pub(crate) fn remove_below(dir: &Path, floor: u64) -> Result<usize, StoreError> {
    let mut removed = 0;
    for (n, path) in list_segments(dir)? {
        if n < floor {
            fs::remove_file(&path).map_err(|e| StoreError::io("removing", &path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsyncing", dir, e))
}

struct SegmentEnd {
    file_len: u64,
    /// Offset after the last good record, if the segment does not end cleanly there.
    cut_at: Option<u64>,
}

fn replay_segment(
    path: &Path,
    apply: &mut impl FnMut(WalRecord),
    report: &mut ReplayReport,
) -> Result<SegmentEnd, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("reading", path, e))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    if file_len < HEADER_LEN {
        return Ok(SegmentEnd {
            file_len,
            cut_at: (file_len > 0).then_some(0),
        });
    }
    reader
        .read_exact(&mut header)
        .map_err(|e| StoreError::io("reading", path, e))?;
    if &header[..4] != MAGIC {
        return Ok(SegmentEnd {
            file_len,
            cut_at: Some(0),
        });
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(StoreError::io(
            "reading",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "WAL format version {version} is not supported (this build reads {VERSION})"
                ),
            ),
        ));
    }
    let mut offset = HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let mut rh = [0u8; RECORD_HEADER_LEN];
        if offset == file_len {
            return Ok(SegmentEnd {
                file_len,
                cut_at: None,
            });
        }
        let bad = SegmentEnd {
            file_len,
            cut_at: Some(offset),
        };
        if reader.read_exact(&mut rh).is_err() {
            return Ok(bad);
        }
        let len = u32::from_le_bytes([rh[0], rh[1], rh[2], rh[3]]);
        let crc = u32::from_le_bytes([rh[4], rh[5], rh[6], rh[7]]);
        if len > MAX_RECORD_LEN || offset + RECORD_HEADER_LEN as u64 + u64::from(len) > file_len {
            return Ok(bad);
        }
        payload.resize(len as usize, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            return Ok(bad);
        }
        match postcard::from_bytes::<WalRecord>(&payload) {
            Ok(record) => {
                apply(record);
                report.records += 1;
            }
            Err(e) => {
                // The checksum matched, so the bytes are what was written: a format bug.
                report.damaged += 1;
                tracing::error!(path = %path.display(), offset, error = %e, "undecodable WAL record skipped");
            }
        }
        offset += RECORD_HEADER_LEN as u64 + u64::from(len);
    }
}
