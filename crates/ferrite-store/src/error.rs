//! The store's error type.

use ferrite_core::decode::PayloadError;
use ferrite_core::{Classify, ErrorKind};

/// Everything that can go wrong writing to or opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A point conflicts with the table's schema; nothing of its write was stored.
    #[error(transparent)]
    Rejected(#[from] PayloadError),
    /// The data files take the storage budget (`store.max_bytes`) or more; retry later.
    #[error(
        "the store's data files take {used} bytes, at or over store.max_bytes ({max}): writes are \
         refused until retention frees space or the budget is raised"
    )]
    OverBudget {
        /// Bytes the data files take.
        used: u64,
        /// The budget.
        max: u64,
    },
    /// The in-memory tables hold `store.max_memtable_rows` rows; retry later.
    #[error("the store holds its maximum of {max_rows} rows in memory (store.max_memtable_rows)")]
    Full {
        /// The configured limit.
        max_rows: usize,
    },
    /// An earlier flush failed (for example, the disk is full) and is being retried; no new
    /// flush can start until it succeeds.
    #[error("an earlier flush to data files failed and is being retried")]
    FlushPending,
    /// Another process (or store) has the data folder open.
    #[error("the data folder {0} is in use by another Ferrite process")]
    Locked(String),
    /// The store is shutting down and takes no more writes.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// An earlier WAL write or fsync failed; the store refuses writes until restarted, because
    /// it can no longer promise that an acknowledged write is on disk.
    #[error("the write-ahead log failed earlier and the store is read-only until restart")]
    Failed,
    /// An I/O error on a file of the store.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The table is a rollup the store maintains; nothing of the write was stored.
    #[error(
        "table {table} is a rollup of {source_table}, maintained by the store: it cannot be written"
    )]
    Derived {
        /// The rollup table written to.
        table: String,
        /// The table it summarises.
        source_table: String,
    },
    /// An object-storage call of the cold tier failed (retried by the next maintenance pass
    /// or query).
    #[error("{action} {key} in the cold tier ({url}): {reason}")]
    Cold {
        /// What was being done.
        action: &'static str,
        /// The object key.
        key: String,
        /// The object store (`store.cold_url`).
        url: String,
        /// What the object store said.
        reason: String,
    },
    /// The cold tier is configured in a way the store cannot open.
    #[error("store.cold_url: {0}")]
    ColdConfig(String),
    /// A WAL record could not be encoded (a bug).
    #[error("encoding a WAL record: {0}")]
    Encode(String),
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Rejected(e) => e.kind(),
            StoreError::Derived { .. } => ErrorKind::InvalidInput,
            StoreError::ShuttingDown
            | StoreError::Full { .. }
            | StoreError::OverBudget { .. }
            | StoreError::FlushPending => ErrorKind::Unavailable,
            StoreError::Cold { .. } => ErrorKind::Unavailable,
            StoreError::ColdConfig(_) => ErrorKind::InvalidInput,
            StoreError::Failed
            | StoreError::Io { .. }
            | StoreError::Encode(_)
            | StoreError::Locked(_) => ErrorKind::Internal,
        }
    }
}
