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
//! Besides one-shot [`QueryEngine::sql`], statements can be prepared once
//! ([`QueryEngine::prepare`] → [`Prepared`], with its answer's columns and the types of its
//! `$1`… placeholders) and executed with bound parameter values as a stream of record batches
//! ([`QueryEngine::execute`] → [`QueryStream`], under the same time and row limits). Parameter
//! values are bound into the plan, never spliced into SQL text.
//!
//! Ferrite's time-series functions (`time_bucket` with time zones, `time_bucket_gapfill`,
//! `first`/`last`, `increase`/`rate`/`derivative`, `locf`/`interpolate`) are registered
//! beside DataFusion's own; `functions` describes each, `gapfill` how gap filling is
//! planned (an analyzer rule, a logical node and its execution plan).
//!
//! Does not format results for any wire (HTTP JSON, pgwire): that is the API's job.

mod error;
mod functions;
mod gapfill;
mod table;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use ferrite_store::Store;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

pub use datafusion::arrow::datatypes::DataType;
pub use datafusion::common::ScalarValue;
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
        let state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(gapfill::FerritePlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        // After DataFusion's own rules, so the gap-fill rule sees type-coerced arguments.
        ctx.add_analyzer_rule(Arc::new(gapfill::GapFillRule));
        functions::register(&ctx);
        let catalog = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
        datafusion::catalog::CatalogProvider::register_schema(
            catalog.as_ref(),
            "public",
            Arc::new(StoreSchema {
                store: Arc::clone(&store),
            }),
        )
        .map_err(QueryError::from_datafusion)?;
        datafusion::catalog::CatalogProvider::register_schema(
            catalog.as_ref(),
            "latest",
            Arc::new(LatestSchema { store }),
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

    /// The options every statement is checked against: queries only.
    fn options() -> SQLOptions {
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
    }

    async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream, QueryError> {
        let df = self
            .ctx
            .sql_with_options(sql, Self::options())
            .await
            .map_err(QueryError::from_datafusion)?;
        df.execute_stream()
            .await
            .map_err(QueryError::from_datafusion)
    }

    /// Plan one read-only SQL statement whose values may be `$1`, `$2`… placeholders, to be
    /// run by [`QueryEngine::execute`] (possibly many times, with different values).
    pub async fn prepare(&self, sql: &str) -> Result<Prepared, QueryError> {
        let work = async {
            let plan = self
                .ctx
                .state()
                .create_logical_plan(sql)
                .await
                .map_err(QueryError::from_datafusion)?;
            Self::options()
                .verify_plan(&plan)
                .map_err(QueryError::from_datafusion)?;
            let mut params: Vec<(usize, Option<DataType>)> = Vec::new();
            for (id, ty) in plan
                .get_parameter_types()
                .map_err(QueryError::from_datafusion)?
            {
                let index = id
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        QueryError::Invalid(format!(
                            "parameter {id}: only positional parameters $1, $2, ... are supported"
                        ))
                    })?;
                params.push((index, ty));
            }
            let count = params.iter().map(|(i, _)| *i).max().unwrap_or(0);
            let mut param_types = vec![None; count];
            for (i, ty) in params {
                param_types[i - 1] = ty;
            }
            let schema = Arc::new(plan.schema().as_arrow().clone());
            Ok(Prepared {
                plan,
                schema,
                param_types,
            })
        };
        tokio::time::timeout(self.config.timeout, work)
            .await
            .unwrap_or(Err(QueryError::Timeout(self.config.timeout)))
    }

    /// Run a prepared statement with `params` bound to its placeholders (`params[0]` is
    /// `$1`), as a stream of record batches. Values are cast to the type the plan expects
    /// where it has one. The stream ends with an error once the answer passes
    /// `query.max_rows` or the query runs past `query.timeout` (counted from this call).
    pub async fn execute(
        &self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<QueryStream, QueryError> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        if params.len() != prepared.param_types.len() {
            return Err(QueryError::Invalid(format!(
                "the statement has {} parameter(s), {} value(s) were bound",
                prepared.param_types.len(),
                params.len()
            )));
        }
        let mut values = Vec::with_capacity(params.len());
        for (i, (value, ty)) in params.into_iter().zip(&prepared.param_types).enumerate() {
            values.push(match ty {
                Some(ty) if &value.data_type() != ty => value.cast_to(ty).map_err(|e| {
                    QueryError::Invalid(format!(
                        "parameter ${}: cannot use {value} as {ty}: {e}",
                        i + 1
                    ))
                })?,
                _ => value,
            });
        }
        let plan = if values.is_empty() {
            prepared.plan.clone()
        } else {
            prepared
                .plan
                .clone()
                .with_param_values(values)
                .map_err(QueryError::from_datafusion)?
        };
        let work = async {
            let df = self
                .ctx
                .execute_logical_plan(plan)
                .await
                .map_err(QueryError::from_datafusion)?;
            df.execute_stream()
                .await
                .map_err(QueryError::from_datafusion)
        };
        let inner = tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(QueryError::Timeout(self.config.timeout)))?;
        Ok(QueryStream {
            inner,
            rows: 0,
            max_rows: self.config.max_rows,
            timeout: self.config.timeout,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            done: false,
        })
    }

    /// Every row of `table` with `from <= time < to` (either bound optional), for
    /// `ferrite export`: the number of rows, then the rows as a stream of record batches.
    ///
    /// Unlike a query, an export has no row limit and no timeout (a year of a busy table is
    /// legitimately large and slow to move); it stays within the memory limit because it
    /// streams, and dropping the stream stops it. Rows come partition by partition, not
    /// sorted. The count is taken just before the scan, so rows written meanwhile may make
    /// the stream a little longer than it said.
    pub async fn export(
        &self,
        table: &str,
        from: Option<ferrite_core::Timestamp>,
        to: Option<ferrite_core::Timestamp>,
    ) -> Result<Export, QueryError> {
        let df = self.range(table, from, to).await?;
        let rows = df
            .clone()
            .count()
            .await
            .map_err(QueryError::from_datafusion)?;
        let stream = df
            .execute_stream()
            .await
            .map_err(QueryError::from_datafusion)?;
        Ok(Export {
            rows: rows as u64,
            stream,
        })
    }

    /// Every row of `table` with `from <= time < to`, in time order (rule replay). Sorted
    /// within the memory limit, so callers ask for ranges that fit (an hour of a table).
    pub async fn range_in_time_order(
        &self,
        table: &str,
        from: ferrite_core::Timestamp,
        to: ferrite_core::Timestamp,
    ) -> Result<SendableRecordBatchStream, QueryError> {
        use datafusion::prelude::col;
        self.range(table, Some(from), Some(to))
            .await?
            .sort(vec![col("time").sort(true, false)])
            .map_err(QueryError::from_datafusion)?
            .execute_stream()
            .await
            .map_err(QueryError::from_datafusion)
    }

    /// The rows of `table` in a time range, strings as plain UTF-8.
    async fn range(
        &self,
        table: &str,
        from: Option<ferrite_core::Timestamp>,
        to: Option<ferrite_core::Timestamp>,
    ) -> Result<datafusion::dataframe::DataFrame, QueryError> {
        use datafusion::prelude::{col, lit};
        if !self
            .ctx
            .table_exist(TableReference::bare(table))
            .map_err(QueryError::from_datafusion)?
        {
            return Err(QueryError::Unknown(format!("table '{table}' not found")));
        }
        let mut df = self
            .ctx
            .table(TableReference::bare(table))
            .await
            .map_err(QueryError::from_datafusion)?;
        let at = |t: ferrite_core::Timestamp| {
            lit(ScalarValue::TimestampNanosecond(
                Some(t.as_nanos()),
                Some("UTC".into()),
            ))
        };
        if let Some(from) = from {
            df = df
                .filter(col("time").gt_eq(at(from)))
                .map_err(QueryError::from_datafusion)?;
        }
        if let Some(to) = to {
            df = df
                .filter(col("time").lt(at(to)))
                .map_err(QueryError::from_datafusion)?;
        }
        // Strings leave as plain UTF-8 (queries read them as views), the type every reader of
        // the exported files knows.
        let plain: Vec<_> = df
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let c = col(datafusion::common::Column::from_name(f.name()));
                if f.data_type() == &datafusion::arrow::datatypes::DataType::Utf8View {
                    datafusion::logical_expr::cast(c, datafusion::arrow::datatypes::DataType::Utf8)
                        .alias(f.name())
                } else {
                    c
                }
            })
            .collect();
        df.select(plain).map_err(QueryError::from_datafusion)
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

/// The answer of [`QueryEngine::export`].
pub struct Export {
    /// Rows in the range when the export started.
    pub rows: u64,
    /// The rows, batch by batch. Dropping it stops the export.
    pub stream: SendableRecordBatchStream,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// A planned statement, ready to run with parameter values ([`QueryEngine::execute`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    plan: LogicalPlan,
    schema: SchemaRef,
    /// Type of `$1`, `$2`… as far as planning could infer it.
    param_types: Vec<Option<DataType>>,
}

impl Prepared {
    /// Columns of the answer.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Types of the placeholders `$1`, `$2`…, in order; `None` where planning could not
    /// infer one (the value is then used as bound).
    pub fn param_types(&self) -> &[Option<DataType>] {
        &self.param_types
    }
}

/// The answer of [`QueryEngine::execute`], batch by batch, within the query limits.
/// Dropping it cancels the query.
pub struct QueryStream {
    inner: SendableRecordBatchStream,
    /// Rows yielded so far, against `max_rows`.
    rows: usize,
    max_rows: usize,
    timeout: Duration,
    /// Fires at `query.timeout` after the query started.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set after an error: the stream is over.
    done: bool,
}

impl QueryStream {
    /// Columns of the answer.
    pub fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(QueryError::Timeout(self.timeout))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows();
                if self.rows > self.max_rows {
                    self.done = true;
                    return Poll::Ready(Some(Err(QueryError::TooManyRows(self.max_rows))));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(QueryError::from_datafusion(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
                schema: table::query_schema(&schema),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.store.schema(name).is_some()
    }
}

/// `latest.{table}`: the latest row of every series of a table ([`Store::latest`]), built
/// from memory at planning time, so its cost follows the number of series, not of rows.
struct LatestSchema {
    store: Arc<Store>,
}

impl std::fmt::Debug for LatestSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatestSchema")
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for LatestSchema {
    fn table_names(&self) -> Vec<String> {
        self.store.tables()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(latest) = self.store.latest(name) else {
            return Ok(None);
        };
        let latest = latest.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let table = datafusion::datasource::MemTable::try_new(latest.schema, vec![latest.batches])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.store.schema(name).is_some()
    }
}
