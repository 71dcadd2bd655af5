//! One measurement as a DataFusion table: the store's Parquet files (scanned with row-group
//! and page pruning) united with its in-memory rows, restricted to the time range the query's
//! filters allow so files and memtable rows outside it are never touched.
//!
//! The scan sits under a [`StoreScanExec`], which passes everything through and shows in
//! `EXPLAIN` what the store pruned: the time range taken from the filters, the files scanned
//! of all the table's files (and how many of those scanned are cold, read through the store's
//! cache), partitions merged in memory, and in-memory batches. (Row groups and pages pruned
//! inside the files are in `EXPLAIN ANALYZE`'s Parquet metrics.) It also holds the view's
//! files, so cached cold files stay in the cache until every stream reading them ends.

use std::ops::RangeInclusive;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use ferrite_core::TIME_COLUMN;
use ferrite_store::{Store, ViewFile};
use futures_util::StreamExt;

/// A measurement of the store, as planned at one moment (its schema then).
pub(crate) struct StoreTable {
    pub(crate) store: Arc<Store>,
    pub(crate) name: String,
    pub(crate) schema: SchemaRef,
}

impl std::fmt::Debug for StoreTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTable")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning; DataFusion still applies every filter above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let range = time_range(filters);
        let view_range = range.clone();
        let store = Arc::clone(&self.store);
        let name = self.name.clone();
        // A view may merge files of partitions with late rows: file I/O, off the workers.
        let view = tokio::task::spawn_blocking(move || store.table_view(&name, range))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(view) = view else {
            // Dropped since planning (cannot happen today: tables are never dropped).
            let empty = MemTable::try_new(Arc::clone(&self.schema), vec![vec![]])?;
            return empty.scan(state, projection, filters, limit).await;
        };
        let view = view.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut plans = Vec::with_capacity(2);
        if !view.files.is_empty() {
            let urls = view
                .files
                .iter()
                .map(|f| ListingTableUrl::parse(f.path.to_string_lossy()))
                .collect::<Result<Vec<_>>>()?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(Arc::clone(&self.schema));
            let files = ListingTable::try_new(config)?;
            plans.push(files.scan(state, projection, filters, limit).await?);
        }
        if !view.batches.is_empty() || plans.is_empty() {
            let batches = view
                .batches
                .iter()
                .map(|b| conform(b, &self.schema))
                .collect::<Result<Vec<_>>>()?;
            let mem = MemTable::try_new(Arc::clone(&self.schema), vec![batches])?;
            plans.push(mem.scan(state, projection, filters, limit).await?);
        }
        let memory_batches = view.batches.len();
        Ok(Arc::new(StoreScanExec {
            table: self.name.clone(),
            range: (*range_start(&view_range), *view_range.end()),
            files_scanned: view.files.len(),
            cold_scanned: view.files.iter().filter(|f| f.meta.cold).count(),
            files: view.files.into(),
            files_total: view.files_total,
            merged_partitions: view.merged_partitions,
            memory_batches,
            input: UnionExec::try_new(plans)?,
        }))
    }
}

fn range_start(r: &RangeInclusive<i64>) -> &i64 {
    r.start()
}

/// What the store pruned for one table scan, shown by `EXPLAIN`; otherwise its input as is.
#[derive(Debug)]
pub(crate) struct StoreScanExec {
    table: String,
    /// The time range (ns, inclusive) the filters allow.
    range: (i64, i64),
    files_scanned: usize,
    /// Of those, the cold ones.
    cold_scanned: usize,
    /// The scanned files, held (cold ones pinned in the cache) while the plan or a stream of
    /// it lives.
    files: Arc<[ViewFile]>,
    files_total: usize,
    merged_partitions: usize,
    memory_batches: usize,
    input: Arc<dyn ExecutionPlan>,
}

impl StoreScanExec {
    fn time_text(t: i64, unbounded: i64) -> String {
        if t == unbounded {
            "unbounded".to_owned()
        } else {
            ferrite_core::Timestamp::from_nanos(t).to_string()
        }
    }
}

impl DisplayAs for StoreScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoreScanExec: table={}, time=[{}, {}], files={} of {} ({} pruned by time, {} cold), \
             merged_partitions={}, memory_batches={}",
            self.table,
            Self::time_text(self.range.0, i64::MIN),
            Self::time_text(self.range.1, i64::MAX),
            self.files_scanned,
            self.files_total,
            self.files_total.saturating_sub(self.files_scanned),
            self.cold_scanned,
            self.merged_partitions,
            self.memory_batches
        )
    }
}

impl ExecutionPlan for StoreScanExec {
    fn name(&self) -> &str {
        "StoreScanExec"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .filter(|_| children.is_empty())
            .ok_or_else(|| DataFusionError::Internal("StoreScanExec has one child".into()))?;
        Ok(Arc::new(Self {
            table: self.table.clone(),
            range: self.range,
            files_scanned: self.files_scanned,
            cold_scanned: self.cold_scanned,
            files: Arc::clone(&self.files),
            files_total: self.files_total,
            merged_partitions: self.merged_partitions,
            memory_batches: self.memory_batches,
            input,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        if self.cold_scanned == 0 {
            return Ok(stream);
        }
        let files = Arc::clone(&self.files);
        let schema = stream.schema();
        let held = stream.map(move |b| {
            let _ = &files;
            b
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, held)))
    }

    // Filters from above (such as a TopK's dynamic filter) pass through to the scans.
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// `batch` with exactly `schema`'s columns, by name (the table may have gained columns since
/// planning; columns it lacks are null).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let cols = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(Arc::clone(c)),
            Some(c) => Ok(datafusion::arrow::compute::cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), cols)?)
}

/// A table's schema as queries see it: the store's, with strings as `Utf8View`. The Parquet
/// reader then decodes dictionary-encoded tag pages into views without copying the strings,
/// and GROUP BY compares short values (12 bytes or less, held inline: device ids, fleet and
/// model names) as integers — together about half the cost of a GROUP BY over tags.
pub(crate) fn query_schema(store: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = store
        .fields()
        .iter()
        .map(|f| {
            if f.data_type() == &DataType::Utf8 {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View))
            } else {
                Arc::clone(f)
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, store.metadata().clone()))
}

/// The time range (ns, inclusive) that conjunctive filters on `time` allow.
fn time_range(filters: &[Expr]) -> RangeInclusive<i64> {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for f in filters {
        narrow(f, &mut lo, &mut hi);
    }
    lo..=hi
}

fn narrow(expr: &Expr, lo: &mut i64, hi: &mut i64) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(left, lo, hi);
                narrow(right, lo, hi);
                return;
            }
            let (op, value) = match (is_time(left), is_time(right)) {
                (true, false) => (*op, nanos(right)),
                (false, true) => (op.swap().unwrap_or(*op), nanos(left)),
                _ => return,
            };
            let Some(v) = value else { return };
            match op {
                Operator::Gt => *lo = (*lo).max(v.saturating_add(1)),
                Operator::GtEq => *lo = (*lo).max(v),
                Operator::Lt => *hi = (*hi).min(v.saturating_sub(1)),
                Operator::LtEq => *hi = (*hi).min(v),
                Operator::Eq => {
                    *lo = (*lo).max(v);
                    *hi = (*hi).min(v);
                }
                _ => {}
            }
        }
        Expr::Between(b) if !b.negated && is_time(&b.expr) => {
            if let Some(v) = nanos(&b.low) {
                *lo = (*lo).max(v);
            }
            if let Some(v) = nanos(&b.high) {
                *hi = (*hi).min(v);
            }
        }
        _ => {}
    }
}

fn is_time(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == TIME_COLUMN)
}

/// A timestamp literal in ns (rounding so that the range only ever widens).
fn nanos(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(n), _) => Some(*n),
        ScalarValue::TimestampMicrosecond(Some(n), _) => n.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(n), _) => n.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(n), _) => n.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(n: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(n),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_filters_narrow_the_range() {
        assert_eq!(time_range(&[]), i64::MIN..=i64::MAX);
        assert_eq!(
            time_range(&[col("time").gt_eq(ts(10)), col("time").lt(ts(20))]),
            10..=19
        );
        assert_eq!(time_range(&[ts(10).lt(col("time"))]), 11..=i64::MAX);
        assert_eq!(
            time_range(&[col("time").between(ts(5), ts(7)).and(col("x").eq(lit(1)))]),
            5..=7
        );
        // An OR can't narrow: the range stays whole.
        assert_eq!(
            time_range(&[col("time").lt(ts(5)).or(col("time").gt(ts(9)))]),
            i64::MIN..=i64::MAX
        );
        let ms = lit(ScalarValue::TimestampMillisecond(Some(3), None));
        assert_eq!(time_range(&[col("time").gt_eq(ms)]), 3_000_000..=i64::MAX);
    }
}
