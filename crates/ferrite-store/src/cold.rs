//! The cold tier: data files of old partitions in object storage, read through a local cache.
//!
//! `store.cold_after` (per table: `[store.tables.T] cold_after`) moves every file of a
//! partition that ended longer ago than that into the object store `store.cold_url`: a
//! folder (the default, `{data}/cold`), or an S3-compatible bucket (`s3://bucket/prefix`,
//! credentials and endpoint from the usual `AWS_*` variables). The maintenance thread
//! uploads a file (fsynced there when the backend is a folder), then commits a catalog that
//! marks it cold, and only then retires the local copy (deleted after `store.file_grace`).
//! A crash between the upload and the commit leaves an object the catalog does not name; the
//! next open deletes such objects, as it deletes unnamed local files.
//!
//! Cold files stay in the catalog and in every query. Reading one fetches it whole into
//! `{data}/cache/` (at most `store.cold_cache_bytes`, least recently used first out); a
//! reader holds a [`Local`] that pins its file in the cache until it is done, so a cache
//! that only holds pinned files may be over its bound until they are released. The cache is
//! a copy: it is rebuilt from what is on disk at open (files of the wrong size are deleted)
//! and never needs an fsync.
//!
//! The object store is async; the store's threads are not. The tier runs its calls on a
//! small runtime of its own and waits for them on a channel, which works from any thread.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::record_batch::RecordBatch;
use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

use crate::catalog::{DataFile, cache_path, sync_dir};
use crate::error::StoreError;
use crate::files;

/// Upload and download chunk size.
const CHUNK: usize = 8 << 20;

/// Where `store.cold_url` puts cold files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A local (or mounted) folder.
    Folder(PathBuf),
    /// An S3-compatible bucket, under a key prefix (may be empty).
    S3 { bucket: String, prefix: String },
}

impl Backend {
    /// Parse `store.cold_url`: empty (the default folder `{data}/cold`), a folder path
    /// (relative ones are relative to the data folder), `file:///abs/path`, or
    /// `s3://bucket[/prefix]`.
    pub(crate) fn parse(raw: &str, data_dir: &Path) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Self::Folder(data_dir.join("cold")));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{raw:?} names no bucket (s3://bucket/prefix)"));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        let path = match raw.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(_) => return Err(format!("{raw:?}: a file:// URL needs an absolute path")),
            None if raw.contains("://") => {
                return Err(format!(
                    "{raw:?}: expected a folder, file:///path or s3://bucket/prefix"
                ));
            }
            None => data_dir.join(raw),
        };
        Ok(Self::Folder(path))
    }
}

/// Counters of the tier, for [`crate::StoreStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) uploaded: AtomicU64,
}

/// A data file readable at `path` for as long as this lives (a cold file stays in the
/// cache meanwhile).
#[derive(Debug, Clone)]
pub struct Local {
    /// Where to read it.
    pub path: PathBuf,
    _pin: Option<Pin>,
}

/// Holds a cached file in the cache; the last one of a file to go lets the cache trim.
#[derive(Debug, Clone)]
struct Pin {
    entry: Option<Arc<Cached>>,
    cache: Arc<Cache>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if self.entry.take().is_some() {
            let mut state = self.cache.state();
            self.cache.evict(&mut state);
        }
    }
}

#[derive(Debug)]
struct Cached {
    id: u64,
    bytes: u64,
    used: AtomicU64,
}

#[derive(Default, Debug)]
struct CacheState {
    entries: HashMap<u64, Arc<Cached>>,
    bytes: u64,
    clock: u64,
}

/// Local copies of cold files, least recently used out first.
#[derive(Debug)]
struct Cache {
    /// The data folder (copies are in its `cache/`).
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<CacheState>,
}

impl Cache {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drop least recently used copies that no reader holds until the cache fits.
    fn evict(&self, state: &mut CacheState) {
        while state.bytes > self.max_bytes {
            let victim = state
                .entries
                .values()
                .filter(|e| Arc::strong_count(e) == 1)
                .min_by_key(|e| e.used.load(Ordering::Relaxed))
                .map(|e| (e.id, e.bytes));
            let Some((id, bytes)) = victim else {
                break; // every copy is being read
            };
            state.entries.remove(&id);
            state.bytes -= bytes;
            remove(&cache_path(&self.dir, id));
        }
    }

    /// The cached copy of `id`, marked used, pinned.
    fn hit(self: &Arc<Self>, id: u64) -> Option<Pin> {
        let mut state = self.state();
        state.clock += 1;
        let clock = state.clock;
        let e = state.entries.get(&id)?;
        e.used.store(clock, Ordering::Relaxed);
        Some(Pin {
            entry: Some(Arc::clone(e)),
            cache: Arc::clone(self),
        })
    }
}

/// The object store, the cache in front of it, and the runtime its calls run on.
pub(crate) struct Tier {
    remote: Option<Remote>,
    cache: Arc<Cache>,
    /// Held while fetching, so one file is downloaded once however many readers want it.
    fetching: Mutex<()>,
    pub(crate) counters: Counters,
}

struct Remote {
    store: Arc<dyn ObjectStore>,
    /// `store.cold_url` as configured, for messages.
    url: String,
    /// The backend's folder, when it is one: what is put there is fsynced.
    folder: Option<PathBuf>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Never blocks, so the store may be dropped on an async worker.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Tier {
    /// The tier of the store in `dir`: with an object store at `url` when `remote` is set.
    pub(crate) fn open(dir: &Path, url: Option<&str>, max_cache: u64) -> Result<Self, StoreError> {
        let remote = match url {
            Some(url) => Some(Remote::open(url, dir)?),
            None => None,
        };
        Ok(Self {
            remote,
            cache: Arc::new(Cache {
                dir: dir.to_owned(),
                max_bytes: max_cache,
                state: Mutex::new(CacheState::default()),
            }),
            fetching: Mutex::new(()),
            counters: Counters::default(),
        })
    }

    /// Whether there is an object store to move files to.
    pub(crate) fn enabled(&self) -> bool {
        self.remote.is_some()
    }

    fn remote(&self) -> Result<&Remote, StoreError> {
        self.remote.as_ref().ok_or_else(|| {
            StoreError::ColdConfig(
                "the catalog names cold files but no object store is open".into(),
            )
        })
    }

    /// Bytes the cache holds.
    pub(crate) fn cache_bytes(&self) -> u64 {
        self.cache.state().bytes
    }

    /// Index the cache folder at open: keep the copies of cold files `cold` names (id →
    /// size) whose size is right, delete everything else there.
    pub(crate) fn load_cache(&self, cold: &HashMap<u64, u64>) -> Result<(), StoreError> {
        let dir = self.cache.dir.join("cache");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("listing", &dir, e)),
        };
        let mut state = self.cache.state();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("listing", &dir, e))?;
            let path = entry.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".parquet"))
                .and_then(|n| n.parse::<u64>().ok());
            let size = entry.metadata().map(|m| m.len()).ok();
            match id.and_then(|id| Some((id, *cold.get(&id)?))) {
                Some((id, bytes)) if size == Some(bytes) => {
                    state.clock += 1;
                    let clock = state.clock;
                    state.entries.insert(
                        id,
                        Arc::new(Cached {
                            id,
                            bytes,
                            used: AtomicU64::new(clock),
                        }),
                    );
                    state.bytes += bytes;
                }
                _ => remove(&path),
            }
        }
        self.cache.evict(&mut state);
        Ok(())
    }

    /// Where `file` can be read, fetched into the cache first if it is cold and not there.
    pub(crate) fn local(&self, file: &DataFile) -> Result<Local, StoreError> {
        if !file.meta.cold {
            return Ok(Local {
                path: file.path.clone(),
                _pin: None,
            });
        }
        let id = file.meta.id;
        if let Some(pin) = self.cache.hit(id) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Local {
                path: file.path.clone(),
                _pin: Some(pin),
            });
        }
        let _fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pin) = self.cache.hit(id) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Local {
                path: file.path.clone(),
                _pin: Some(pin),
            });
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let remote = self.remote()?;
        let tmp = file.path.with_extension("parquet.tmp");
        let got = remote.download(&file.key, &tmp);
        let got = match got {
            Ok(n) if n == file.meta.bytes => Ok(()),
            Ok(n) => Err(remote.error(
                "reading",
                &file.key,
                format!(
                    "the object has {n} bytes, the catalog says {}",
                    file.meta.bytes
                ),
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = got {
            remove(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &file.path).map_err(|e| StoreError::io("renaming", &tmp, e))?;
        let mut state = self.cache.state();
        state.clock += 1;
        let entry = Arc::new(Cached {
            id,
            bytes: file.meta.bytes,
            used: AtomicU64::new(state.clock),
        });
        if let Some(old) = state.entries.insert(id, Arc::clone(&entry)) {
            state.bytes -= old.bytes;
        }
        state.bytes += file.meta.bytes;
        self.cache.evict(&mut state);
        drop(state);
        Ok(Local {
            path: file.path.clone(),
            _pin: Some(Pin {
                entry: Some(entry),
                cache: Arc::clone(&self.cache),
            }),
        })
    }

    /// Every row of `file`, wherever it is.
    pub(crate) fn read(&self, file: &DataFile) -> Result<Vec<RecordBatch>, StoreError> {
        let local = self.local(file)?;
        files::read(&local.path)
    }

    /// Copy the local file `path` to the object `key`, durably.
    pub(crate) fn upload(&self, path: &Path, key: &str) -> Result<(), StoreError> {
        self.remote()?.upload(path, key)?;
        self.counters.uploaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Delete the cold file `id` (object `key`) and its cached copy.
    pub(crate) fn delete(&self, id: u64, key: &str) -> Result<(), StoreError> {
        {
            let mut state = self.cache.state();
            if let Some(e) = state.entries.remove(&id) {
                state.bytes -= e.bytes;
            }
        }
        remove(&cache_path(&self.cache.dir, id));
        self.remote()?.delete(key)
    }

    /// Delete objects under `tables/` that are not in `named`: uploads a crash cut off from
    /// their catalog commit, and retired files whose deletion it prevented. Returns how many.
    pub(crate) fn remove_orphans(&self, named: &HashSet<&str>) -> Result<usize, StoreError> {
        let Some(remote) = &self.remote else {
            return Ok(0);
        };
        let keys = remote.list("tables")?;
        let mut removed = 0;
        for key in keys {
            if !named.contains(key.as_str()) {
                remote.delete(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Remote {
    fn open(url: &str, data_dir: &Path) -> Result<Self, StoreError> {
        let backend = Backend::parse(url, data_dir).map_err(StoreError::ColdConfig)?;
        let bad = |e: object_store::Error| StoreError::ColdConfig(format!("{url:?}: {e}"));
        let (store, folder): (Arc<dyn ObjectStore>, _) = match backend {
            Backend::Folder(path) => {
                files::create_dir_durably(&path)?;
                let store =
                    object_store::local::LocalFileSystem::new_with_prefix(&path).map_err(bad)?;
                (Arc::new(store), Some(path))
            }
            Backend::S3 { bucket, prefix } => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(bad)?;
                if prefix.is_empty() {
                    (Arc::new(s3), None)
                } else {
                    let prefixed = object_store::prefix::PrefixStore::new(s3, prefix.as_str());
                    (Arc::new(prefixed), None)
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferrite-cold")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("starting the cold tier's runtime for", data_dir, e))?;
        Ok(Self {
            store,
            url: url.to_owned(),
            folder,
            runtime: Some(runtime),
        })
    }

    fn error(&self, action: &'static str, key: &str, reason: String) -> StoreError {
        StoreError::Cold {
            action,
            key: key.to_owned(),
            url: if self.url.is_empty() {
                "the data folder's cold/".to_owned()
            } else {
                self.url.clone()
            },
            reason,
        }
    }

    /// Run `fut` on the tier's runtime and wait for it (from any thread).
    fn block<T: Send + 'static>(
        &self,
        action: &'static str,
        key: &str,
        fut: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(rt) = &self.runtime else {
            return Err(self.error(action, key, "the store is closing".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err("the cold tier's runtime stopped".into()))
            .map_err(|reason| self.error(action, key, reason))
    }

    fn upload(&self, path: &Path, key: &str) -> Result<(), StoreError> {
        let mut file = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
        if let Some(folder) = &self.folder
            && let Some(dir) = folder.join(key).parent()
        {
            files::create_dir_durably(dir)?;
        }
        let store = Arc::clone(&self.store);
        let object = ObjectPath::from(key);
        let source = path.to_owned();
        self.block("writing", key, async move {
            let mut w = object_store::buffered::BufWriter::with_capacity(store, object, CHUNK);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(format!("reading {}: {e}", source.display()));
                    }
                };
                if let Err(e) = w.put(bytes::Bytes::copy_from_slice(&buf[..n])).await {
                    let _ = w.abort().await;
                    return Err(e.to_string());
                }
            }
            w.shutdown().await.map_err(|e| e.to_string())
        })?;
        if let Some(folder) = &self.folder {
            let placed = folder.join(key);
            File::open(&placed)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io("fsyncing", &placed, e))?;
            if let Some(dir) = placed.parent() {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Fetch `key` into the new file `dest`; returns its size.
    fn download(&self, key: &str, dest: &Path) -> Result<u64, StoreError> {
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir, e))?;
        }
        let mut file = File::create(dest).map_err(|e| StoreError::io("creating", dest, e))?;
        let store = Arc::clone(&self.store);
        let object = ObjectPath::from(key);
        let target = dest.to_owned();
        self.block("reading", key, async move {
            let got = store.get(&object).await.map_err(|e| e.to_string())?;
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                file.write_all(&chunk)
                    .map_err(|e| format!("writing {}: {e}", target.display()))?;
                n += chunk.len() as u64;
            }
            Ok(n)
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let store = Arc::clone(&self.store);
        let object = ObjectPath::from(key);
        self.block("deleting", key, async move {
            match store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let store = Arc::clone(&self.store);
        let object = ObjectPath::from(prefix);
        self.block("listing", prefix, async move {
            let mut out = Vec::new();
            let mut stream = store.list(Some(&object));
            while let Some(meta) = stream.next().await {
                out.push(meta.map_err(|e| e.to_string())?.location.to_string());
            }
            Ok(out)
        })
    }
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not delete a cached file");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cold_urls_parse_or_say_why_not() {
        let data = Path::new("/var/lib/ferrite");
        assert_eq!(
            Backend::parse("", data),
            Ok(Backend::Folder(data.join("cold")))
        );
        assert_eq!(
            Backend::parse("archive", data),
            Ok(Backend::Folder(data.join("archive")))
        );
        assert_eq!(
            Backend::parse("file:///mnt/nas/ferrite", data),
            Ok(Backend::Folder("/mnt/nas/ferrite".into()))
        );
        assert_eq!(
            Backend::parse("s3://telemetry/plant-1/", data),
            Ok(Backend::S3 {
                bucket: "telemetry".into(),
                prefix: "plant-1".into()
            })
        );
        assert_eq!(
            Backend::parse("s3://telemetry", data),
            Ok(Backend::S3 {
                bucket: "telemetry".into(),
                prefix: String::new()
            })
        );
        for bad in ["s3://", "s3:///x", "gs://bucket", "file://relative"] {
            assert!(Backend::parse(bad, data).is_err(), "{bad}");
        }
    }
}
