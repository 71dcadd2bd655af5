//! SQL over Ferrite's store, answered by DataFusion.
//!
//! Owns the [`QueryEngine`]: a DataFusion session whose default schema is backed by the
//! [`ferrite_store::Store`], so every measurement is a table the moment its first row lands,
//! and the query limits ([`QueryConfig`]: time, memory, rows). Statements are read-only: DDL,
//! DML and session statements are refused.
//!
//! Each table is a [`table::StoreTable`]: the store's Parquet files (pruned by the catalog's
//! time ranges, then by row-group and page statistics) united with the in-memory rows of the
//! queried time range.
//!
//! Does not format results for any wire (HTTP JSON, pgwire): that is the API's job.

mod error;
mod table;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use ferrite_store::Store;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub use error::QueryError;

/// Query settings (`[query]` in the config file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// A query running longer is cancelled with an error.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory all running queries may use together; past it a query fails clearly.
    pub memory_limit_bytes: usize,
    /// Most rows one answer may hold; a larger result is an error asking for a LIMIT.
    pub max_rows: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_limit_bytes: 1 << 30,
            max_rows: 100_000,
        }
    }
}

impl QueryConfig {
    /// Problems with these settings, all of them.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.timeout.is_zero() {
            errs.push("query.timeout must be more than 0s".to_owned());
        }
        if self.memory_limit_bytes < 16 << 20 {
            errs.push("query.memory_limit_bytes must be at least 16 MiB (16777216)".to_owned());
        }
        if self.max_rows == 0 {
            errs.push("query.max_rows must be at least 1".to_owned());
        }
        errs
    }
}

/// The answer to one query.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Columns of the answer.
    pub schema: SchemaRef,
    /// Rows of the answer.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Number of rows in the answer.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Plans and runs SQL against the store. Cheap to share; every query gets its own state.
pub struct QueryEngine {
    ctx: SessionContext,
    config: QueryConfig,
}

impl QueryEngine {
    /// An engine over `store`'s tables.
    pub fn new(store: Arc<Store>, config: QueryConfig) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit_bytes, 1.0)
            .build_arc()
            .map_err(QueryError::from_datafusion)?;
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("ferrite", "public");
        // Evaluate filters while decoding Parquet pages, so rows outside them are skipped.
        session.options_mut().execution.parquet.pushdown_filters = true;
        session.options_mut().execution.parquet.reorder_filters = true;
        let ctx = SessionContext::new_with_config_rt(session, runtime);
        let catalog = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
        datafusion::catalog::CatalogProvider::register_schema(
            catalog.as_ref(),
            "public",
            Arc::new(StoreSchema { store }),
        )
        .map_err(QueryError::from_datafusion)?;
        ctx.register_catalog("ferrite", catalog);
        Ok(Self { ctx, config })
    }

    /// Run one read-only SQL statement and collect its answer, within the configured limits.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult, QueryError> {
        let work = async {
            let stream = self.stream(sql).await?;
            self.collect(stream).await
        };
        tokio::time::timeout(self.config.timeout, work)
            .await
            .unwrap_or(Err(QueryError::Timeout(self.config.timeout)))
    }

    async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream, QueryError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self
            .ctx
            .sql_with_options(sql, options)
            .await
            .map_err(QueryError::from_datafusion)?;
        df.execute_stream()
            .await
            .map_err(QueryError::from_datafusion)
    }

    async fn collect(
        &self,
        mut stream: SendableRecordBatchStream,
    ) -> Result<QueryResult, QueryError> {
        let schema = stream.schema();
        let mut batches = Vec::new();
        let mut rows = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(QueryError::from_datafusion)?;
            rows += batch.num_rows();
            if rows > self.config.max_rows {
                return Err(QueryError::TooManyRows(self.config.max_rows));
            }
            batches.push(batch);
        }
        Ok(QueryResult { schema, batches })
    }
}

/// DataFusion's view of the store: one table per measurement, resolved at planning time.
struct StoreSchema {
    store: Arc<Store>,
}

impl std::fmt::Debug for StoreSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSchema")
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for StoreSchema {
    fn table_names(&self) -> Vec<String> {
        self.store.tables()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Ok(self.store.schema(name).map(|schema| {
            Arc::new(table::StoreTable {
                store: Arc::clone(&self.store),
                name: name.to_owned(),
                schema,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.store.schema(name).is_some()
    }
}
