//! The query error type.

use std::time::Duration;

use datafusion::error::DataFusionError;
use ferrite_core::{Classify, ErrorKind};

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is invalid, names something that does not exist, or fails on the data
    /// (for example a cast that cannot be done). The message says which.
    #[error("{0}")]
    Invalid(String),
    /// The SQL does not parse.
    #[error("{0}")]
    Syntax(String),
    /// The SQL names a table or column that does not exist.
    #[error("{0}")]
    Unknown(String),
    /// The SQL uses a feature the engine does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// The statement is not a query (DDL, DML, SET …); Ferrite's SQL is read-only.
    #[error("{0}")]
    NotAllowed(String),
    /// The query ran longer than `query.timeout` and was cancelled.
    #[error("query cancelled after {0:?} (query.timeout)")]
    Timeout(Duration),
    /// The answer has more rows than `query.max_rows`.
    #[error("the answer has more than {0} rows (query.max_rows); add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// The query needed more memory than `query.memory_limit_bytes` allows.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// A failure inside the engine or the store.
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    pub(crate) fn from_datafusion(e: DataFusionError) -> Self {
        // Errors wrapped in context are classified by their root.
        let root = e.find_root();
        match root {
            DataFusionError::ResourcesExhausted(_) => Self::ResourcesExhausted(e.to_string()),
            DataFusionError::Internal(_)
            | DataFusionError::IoError(_)
            | DataFusionError::External(_)
            | DataFusionError::Shared(_)
            | DataFusionError::ObjectStore(_) => Self::Internal(e.to_string()),
            DataFusionError::Plan(msg)
                if ["Statement", "DDL", "DML"]
                    .iter()
                    .any(|k| msg.starts_with(&format!("{k} not supported"))) =>
            {
                Self::NotAllowed(e.to_string())
            }
            DataFusionError::SQL(..) => Self::Syntax(e.to_string()),
            DataFusionError::SchemaError(err, _)
                if matches!(
                    err.as_ref(),
                    datafusion::common::SchemaError::FieldNotFound { .. }
                ) =>
            {
                Self::Unknown(e.to_string())
            }
            DataFusionError::Plan(msg)
                if msg.starts_with("table '") && msg.ends_with("not found") =>
            {
                Self::Unknown(e.to_string())
            }
            DataFusionError::NotImplemented(_) => Self::Unsupported(e.to_string()),
            _ => Self::Invalid(e.to_string()),
        }
    }
}

impl Classify for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Invalid(_)
            | QueryError::Syntax(_)
            | QueryError::Unsupported(_)
            | QueryError::NotAllowed(_)
            | QueryError::TooManyRows(_) => ErrorKind::InvalidInput,
            QueryError::Unknown(_) => ErrorKind::NotFound,
            QueryError::Timeout(_) | QueryError::ResourcesExhausted(_) => ErrorKind::Unavailable,
            QueryError::Internal(_) => ErrorKind::Internal,
        }
    }
}
