//! Gap filling: `time_bucket_gapfill(interval, time, start, end [, zone])` in a GROUP BY
//! makes the answer hold a row for every bucket of `[start, end)` in every series, so a
//! chart gets one point per bucket even where a device sent nothing.
//!
//! ```sql
//! SELECT bucket, device_id, avg_temp,
//!        locf(avg_temp) OVER w AS temp_prev,
//!        interpolate(avg_temp, bucket) OVER w AS temp_line
//! FROM (SELECT time_bucket_gapfill(INTERVAL '1 hour', time, $__timeFrom(), $__timeTo()) AS bucket,
//!              device_id, avg(temperature) AS avg_temp
//!       FROM telemetry WHERE $__timeFilter(time) GROUP BY 1, 2)
//! WINDOW w AS (PARTITION BY device_id ORDER BY bucket)
//! ORDER BY device_id, bucket
//! ```
//!
//! The design, in three parts:
//!
//! - **Analyzer rule** ([`GapFillRule`]): an `Aggregate` whose GROUP BY holds the call gets a
//!   [`GapFill`] node above it, and the call itself becomes a plain `time_bucket` (under the
//!   same column name), so the aggregate is computed as usual. The other GROUP BY columns
//!   name the series. The call anywhere else, more than once, or inside another expression,
//!   is a planning error. `interval`, `start`, `end` and `zone` must be constants (literals,
//!   parameters, `now() - INTERVAL …`).
//! - **[`GapFillExec`]** takes the aggregate's rows (in one partition, within the memory
//!   pool), sorts them by series then bucket, and for each series found in them emits the
//!   buckets from `time_bucket(start)` up to (not including) `end`, with that series' values
//!   and NULL aggregates where the input has no row. Input rows are kept as they are,
//!   including buckets outside the range. Without other GROUP BY columns there is one series,
//!   which gets its buckets even when there are no rows at all; a series with no rows in the
//!   input cannot be known and gets none. The output is ordered by series and bucket.
//! - **Filling is separate**: the new rows carry NULLs, and the window functions `locf` and
//!   `interpolate` (see `crate::functions::fill`) fill them per `PARTITION BY` series, ordered
//!   by bucket — or `coalesce(avg_temp, 0)` fills with a constant. Because the gap rows exist
//!   before any window runs, `lag`, moving averages and the change aggregates over frames see
//!   them too.
//!
//! A fill of more than [`MAX_BUCKETS`] buckets, or [`MAX_ROWS`] rows in all, is refused with
//! an error rather than attempted.

use std::cmp::Ordering;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, TimestampNanosecondArray,
    UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, partition, take, take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimestampNanosecondType};
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{
    Column, DFSchema, DFSchemaRef, DataFusionError, Result, ScalarValue, internal_err, plan_err,
};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Extension, LogicalPlan, ScalarUDF, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures_util::StreamExt;

use crate::functions::bucket::{Bucketer, TimeBucket, show_interval};

/// Most buckets one fill makes per series.
pub(crate) const MAX_BUCKETS: usize = 1_000_000;
/// Most rows one fill makes in all.
pub(crate) const MAX_ROWS: usize = 10_000_000;

const GAPFILL: &str = TimeBucket::GAPFILL_NAME;

/// Rewrites aggregates grouped by `time_bucket_gapfill` into a [`GapFill`] over them.
#[derive(Debug)]
pub(crate) struct GapFillRule;

impl AnalyzerRule for GapFillRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let plan = plan.transform_up_with_subqueries(rewrite)?;
        if !plan.transformed {
            return Ok(plan.data);
        }
        // The filled aggregates may be NULL now: nodes above learn that from their input.
        Ok(plan
            .data
            .transform_up_with_subqueries(|p| Ok(Transformed::yes(p.recompute_schema()?)))?
            .data)
    }

    fn name(&self) -> &str {
        "ferrite_gapfill"
    }
}

fn is_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == GAPFILL)
}

fn mentions_call(e: &Expr) -> bool {
    e.exists(|e| Ok(is_call(e))).unwrap_or(false)
}

fn rewrite(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Aggregate(agg) = &plan else {
        if plan.expressions().iter().any(mentions_call) {
            return plan_err!(
                "{GAPFILL}() belongs in GROUP BY (with the other columns that name a series), \
                 e.g. SELECT {GAPFILL}(INTERVAL '1 hour', time, start, end) AS bucket, \
                 avg(v) FROM t GROUP BY 1"
            );
        }
        return Ok(Transformed::no(plan));
    };
    let at: Vec<usize> = (0..agg.group_expr.len())
        .filter(|&i| mentions_call(&agg.group_expr[i]))
        .collect();
    if agg.aggr_expr.iter().any(mentions_call) {
        return plan_err!("{GAPFILL}() cannot be the argument of an aggregate");
    }
    let i = match at.as_slice() {
        [] => return Ok(Transformed::no(plan)),
        [i] => *i,
        _ => return plan_err!("only one {GAPFILL}() may appear in a GROUP BY"),
    };
    let group = &agg.group_expr[i];
    let Expr::ScalarFunction(call) = group.clone().unalias_nested().data else {
        return plan_err!(
            "{GAPFILL}() must be a GROUP BY expression of its own, not part of another \
             expression or of GROUPING SETS/ROLLUP/CUBE"
        );
    };
    if !is_call(&Expr::ScalarFunction(call.clone())) {
        return plan_err!("{GAPFILL}() must be a GROUP BY expression of its own");
    }
    let mut args = call.args;
    if !(4..=5).contains(&args.len()) {
        return plan_err!(
            "{GAPFILL}(interval, time, start, end [, time zone]) takes 4 or 5 arguments"
        );
    }
    for (what, arg) in [(1, "interval"), (3, "start"), (4, "end"), (5, "time zone")]
        .iter()
        .filter_map(|(n, w)| args.get(n - 1).map(|a| (w, a)))
    {
        if !arg.column_refs().is_empty() {
            return plan_err!(
                "{GAPFILL}: the {what} must be a constant (such as '2024-01-01T00:00:00Z'), \
                 not a column"
            );
        }
    }
    let zone = (args.len() == 5).then(|| args.remove(4));
    let end = args.remove(3);
    let start = args.remove(2);
    let (interval, time) = (args.remove(0), args.remove(0));
    let mut bucket_args = vec![interval.clone(), time];
    bucket_args.extend(zone.clone());
    let name = group.schema_name().to_string();
    let bucket_call = ScalarUDF::new_from_impl(TimeBucket::new(false))
        .call(bucket_args)
        .alias(name);

    let mut group_expr = agg.group_expr.clone();
    group_expr[i] = bucket_call;
    let aggregate = LogicalPlan::Aggregate(datafusion::logical_expr::Aggregate::try_new(
        Arc::clone(&agg.input),
        group_expr,
        agg.aggr_expr.clone(),
    )?);
    let input_schema = Arc::clone(aggregate.schema());
    let column = |j: usize| Column::from(input_schema.qualified_field(j));
    let series = (0..agg.group_expr.len())
        .filter(|&j| j != i)
        .map(column)
        .collect();
    let node = GapFill {
        bucket: column(i),
        series,
        interval,
        start,
        end,
        zone,
        schema: filled_schema(&input_schema, agg.group_expr.len())?,
        input: Arc::new(aggregate),
    };
    Ok(Transformed::yes(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    })))
}

/// The schema of a fill of `input`: the same columns, the first `keys` (the GROUP BY
/// columns) as they are, the aggregates nullable (a filled row has none).
fn filled_schema(input: &DFSchemaRef, keys: usize) -> Result<DFSchemaRef> {
    let fields = input
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            let f = if i < keys {
                Arc::clone(f)
            } else {
                Arc::new(f.as_ref().clone().with_nullable(true))
            };
            (q.cloned(), f)
        })
        .collect();
    Ok(Arc::new(
        DFSchema::new_with_metadata(fields, input.metadata().clone())?
            .with_functional_dependencies(input.functional_dependencies().clone())?,
    ))
}

/// The logical node: rows of `input` plus one of NULLs for every missing bucket of every
/// series. Its schema is its input's, with the aggregates nullable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GapFill {
    input: Arc<LogicalPlan>,
    /// The bucket column of `input`.
    bucket: Column,
    /// The other GROUP BY columns of `input`.
    series: Vec<Column>,
    interval: Expr,
    start: Expr,
    end: Expr,
    zone: Option<Expr>,
    schema: DFSchemaRef,
}

impl GapFill {
    /// How many leading columns of the input are GROUP BY columns.
    fn keys(&self) -> usize {
        self.series.len() + 1
    }
}

impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let exprs = UserDefinedLogicalNodeCore::expressions;
        (&self.input, exprs(self)).partial_cmp(&(&other.input, exprs(other)))
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        let mut e = vec![Expr::Column(self.bucket.clone())];
        e.extend(self.series.iter().cloned().map(Expr::Column));
        e.extend([self.interval.clone(), self.start.clone(), self.end.clone()]);
        e.extend(self.zone.clone());
        e
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "GapFill: bucket={}, series=[{}], interval={}, range=[{}, {})",
            self.bucket,
            self.series
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.interval,
            self.start,
            self.end
        )?;
        if let Some(z) = &self.zone {
            write!(f, ", zone={z}")?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let n = self.series.len();
        if inputs.len() != 1 || exprs.len() != 4 + n + usize::from(self.zone.is_some()) {
            return internal_err!("GapFill: unexpected inputs or expressions");
        }
        let column = |e: &Expr| match e {
            Expr::Column(c) => Ok(c.clone()),
            other => internal_err!("GapFill: expected a column, got {other}"),
        };
        let input = inputs.remove(0);
        let keys = match input
            .schema()
            .fields()
            .len()
            .checked_sub(self.schema.fields().len())
        {
            Some(0) => self.keys(),
            _ => return internal_err!("GapFill: the input's columns changed"),
        };
        Ok(Self {
            bucket: column(&exprs[0])?,
            series: exprs[1..=n].iter().map(column).collect::<Result<_>>()?,
            interval: exprs[n + 1].clone(),
            start: exprs[n + 2].clone(),
            end: exprs[n + 3].clone(),
            zone: exprs.get(n + 4).cloned(),
            schema: filled_schema(input.schema(), keys)?,
            input: Arc::new(input),
        })
    }
}

/// The query planner: DataFusion's, plus [`GapFillExec`] for [`GapFill`].
#[derive(Debug)]
pub(crate) struct FerritePlanner;

#[async_trait]
impl QueryPlanner for FerritePlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(GapFillPlanner)])
            .create_physical_plan(plan, session)
            .await
    }
}

struct GapFillPlanner;

#[async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let (Some(logical), Some(input)) = (logical_inputs.first(), physical_inputs.first()) else {
            return internal_err!("GapFill without an input");
        };
        let schema = logical.schema();
        let constant = |what: &str, e: &Expr| -> Result<ScalarValue> {
            let p: Arc<dyn PhysicalExpr> =
                planner.create_physical_expr(e, schema, session, planning_ctx)?;
            let one_row = RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(1)),
            )?;
            match p.evaluate(&one_row) {
                Ok(ColumnarValue::Scalar(s)) => Ok(s),
                Ok(ColumnarValue::Array(a)) => ScalarValue::try_from_array(&a, 0),
                Err(e) => plan_err!("{GAPFILL}: the {what} must be a constant: {e}"),
            }
        };
        let interval = match constant("interval", &node.interval)? {
            ScalarValue::IntervalMonthDayNano(Some(i)) => i,
            other => return plan_err!("{GAPFILL}: the interval must be an interval, got {other}"),
        };
        let zone = match &node.zone {
            None => None,
            Some(z) => match constant("time zone", z)? {
                ScalarValue::Utf8(Some(z))
                | ScalarValue::Utf8View(Some(z))
                | ScalarValue::LargeUtf8(Some(z)) => Some(z),
                other => {
                    return plan_err!("{GAPFILL}: the time zone must be a string, got {other}");
                }
            },
        };
        let instant = |what: &str, e: &Expr| -> Result<i64> {
            match constant(what, e)?.cast_to(&DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Nanosecond,
                None,
            ))? {
                ScalarValue::TimestampNanosecond(Some(t), _) => Ok(t),
                _ => plan_err!("{GAPFILL}: the {what} must not be NULL"),
            }
        };
        let (start, end) = (instant("start", &node.start)?, instant("end", &node.end)?);
        let bucketer = Bucketer::new(interval, zone.as_deref())
            .map_err(|e| DataFusionError::Plan(format!("{GAPFILL}: {e}")))?;
        if start >= end {
            return plan_err!("{GAPFILL}: start must be before end");
        }
        let index = |c: &Column| schema.index_of_column(c);
        let spec = Spec {
            bucket: index(&node.bucket)?,
            series: node.series.iter().map(index).collect::<Result<_>>()?,
            bucketer,
            start,
            end,
            display: format!(
                "interval={}, range=[{start}, {end}){}",
                show_interval(interval),
                zone.map(|z| format!(", zone={z}")).unwrap_or_default()
            ),
        };
        let schema = Arc::new(node.schema.as_arrow().clone());
        Ok(Some(Arc::new(GapFillExec::new(
            Arc::clone(input),
            Arc::new(spec),
            schema,
        ))))
    }
}

/// What one fill does, resolved at planning.
#[derive(Debug)]
struct Spec {
    bucket: usize,
    series: Vec<usize>,
    bucketer: Bucketer,
    /// ns, inclusive.
    start: i64,
    /// ns, exclusive.
    end: i64,
    display: String,
}

impl Spec {
    /// The buckets of the range, in order.
    fn buckets(&self) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        let mut b = self.bucketer.floor(self.start).ok_or_else(|| {
            DataFusionError::Execution(format!("{GAPFILL}: start is out of range"))
        })?;
        while b < self.end {
            if out.len() == MAX_BUCKETS {
                return Err(DataFusionError::Execution(format!(
                    "{GAPFILL}: the range holds more than {MAX_BUCKETS} buckets; \
                     use a wider interval or a shorter range"
                )));
            }
            out.push(b);
            match self.bucketer.next(b) {
                Some(n) => b = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// The input rows and a row of NULLs for every missing bucket of every series.
    fn fill(
        &self,
        input_schema: &SchemaRef,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<RecordBatch> {
        let buckets = self.buckets()?;
        let input = concat_batches(input_schema, batches)?;
        let n = input.num_rows();
        let mut keys: Vec<SortColumn> = self
            .series
            .iter()
            .map(|&i| SortColumn {
                values: Arc::clone(input.column(i)),
                options: None,
            })
            .collect();
        keys.push(SortColumn {
            values: Arc::clone(input.column(self.bucket)),
            options: Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
        });
        let sorted = if n == 0 {
            input
        } else {
            take_record_batch(&input, &lexsort_to_indices(&keys, None)?)?
        };
        let Some(times) = sorted
            .column(self.bucket)
            .as_primitive_opt::<TimestampNanosecondType>()
        else {
            return internal_err!("GapFill: the bucket column is not a nanosecond timestamp");
        };
        let ranges = if self.series.is_empty() {
            std::iter::once(0..n).collect()
        } else if n == 0 {
            vec![]
        } else {
            let cols: Vec<ArrayRef> = self
                .series
                .iter()
                .map(|&i| Arc::clone(sorted.column(i)))
                .collect();
            partition(&cols)?.ranges()
        };
        if ranges.len().saturating_mul(buckets.len()) > MAX_ROWS {
            return Err(DataFusionError::Execution(format!(
                "{GAPFILL}: filling {} series with {} buckets each is more than {MAX_ROWS} rows",
                ranges.len(),
                buckets.len()
            )));
        }
        // For every output row: the sorted input row whose series it belongs to, the input
        // row it is (None for a filled bucket), and its bucket.
        let mut series_row: Vec<u32> = Vec::new();
        let mut data_row: Vec<Option<u32>> = Vec::new();
        let mut bucket: Vec<Option<i64>> = Vec::new();
        let row = |r: usize| {
            u32::try_from(r)
                .map_err(|_| DataFusionError::Execution(format!("{GAPFILL}: too many rows")))
        };
        for range in ranges {
            let first = row(range.start)?;
            let mut g = 0;
            for r in range {
                let b = times.is_valid(r).then(|| times.value(r));
                if let Some(b) = b {
                    while g < buckets.len() && buckets[g] < b {
                        series_row.push(first);
                        data_row.push(None);
                        bucket.push(Some(buckets[g]));
                        g += 1;
                    }
                    if g < buckets.len() && buckets[g] == b {
                        g += 1;
                    }
                }
                series_row.push(row(r)?);
                data_row.push(Some(row(r)?));
                bucket.push(b);
            }
            for &b in &buckets[g..] {
                series_row.push(first);
                data_row.push(None);
                bucket.push(Some(b));
            }
        }
        let len = bucket.len();
        let series_row = UInt32Array::from(series_row);
        let data_row = UInt32Array::from(data_row);
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| -> Result<ArrayRef> {
                if i == self.bucket {
                    let DataType::Timestamp(_, tz) = field.data_type() else {
                        return internal_err!("GapFill: the bucket column is not a timestamp");
                    };
                    Ok(Arc::new(
                        TimestampNanosecondArray::from(bucket.clone())
                            .with_timezone_opt(tz.clone()),
                    ))
                } else if n == 0 {
                    Ok(new_null_array(field.data_type(), len))
                } else if self.series.contains(&i) {
                    Ok(take(sorted.column(i), &series_row, None)?)
                } else {
                    Ok(take(sorted.column(i), &data_row, None)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(len)),
        )?)
    }
}

/// Executes [`GapFill`]: collects its input (one partition), fills, emits one batch.
#[derive(Debug, Clone)]
pub(crate) struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<Spec>,
    properties: Arc<PlanProperties>,
}

impl GapFillExec {
    fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<Spec>, schema: SchemaRef) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            spec,
            properties,
        }
    }
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GapFillExec: {}", self.spec.display)
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &str {
        "GapFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("GapFillExec takes one input");
        }
        Ok(Arc::new(Self::new(
            children.remove(0),
            Arc::clone(&self.spec),
            self.schema(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("GapFillExec has one partition, not {partition}");
        }
        let input = self.input.execute(0, Arc::clone(&context))?;
        let schema = self.schema();
        let spec = Arc::clone(&self.spec);
        let reservation = MemoryConsumer::new("GapFillExec").register(context.memory_pool());
        let out_schema = Arc::clone(&schema);
        let input_schema = self.input.schema();
        let work = async move {
            let batches = collect(input).await?;
            let held: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
            reservation.try_grow(held)?;
            let out = spec.fill(&input_schema, &out_schema, &batches)?;
            drop(batches);
            reservation.try_resize(out.get_array_memory_size())?;
            Ok::<_, DataFusionError>(out)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures_util::stream::once(work).boxed(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, IntervalMonthDayNano, TimeUnit};

    const H: i64 = 3_600_000_000_000;

    fn spec(start: i64, end: i64) -> Spec {
        Spec {
            bucket: 1,
            series: vec![0],
            bucketer: Bucketer::new(IntervalMonthDayNano::new(0, 0, H), None)
                .unwrap_or_else(|e| panic!("{e}")),
            start,
            end,
            display: String::new(),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new(
                "bucket",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                true,
            ),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    fn batch(rows: &[(&str, Option<i64>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampNanosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn rows(b: &RecordBatch) -> Vec<(String, Option<i64>, Option<i64>)> {
        let d = b.column(0).as_string::<i32>();
        let t = b.column(1).as_primitive::<TimestampNanosecondType>();
        let n = b
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        (0..b.num_rows())
            .map(|i| {
                (
                    d.value(i).to_owned(),
                    t.is_valid(i).then(|| t.value(i)),
                    n.is_valid(i).then(|| n.value(i)),
                )
            })
            .collect()
    }

    #[test]
    fn every_series_gets_every_bucket_and_keeps_its_own_rows() -> Result<()> {
        // Unsorted, over two batches; y has a row before the range and one without a bucket.
        let input = [
            batch(&[("y", Some(2 * H), 5), ("x", Some(H), 1)]),
            batch(&[("y", None, 9), ("y", Some(-H), 7)]),
        ];
        let out = spec(0, 3 * H).fill(&schema(), &schema(), &input)?;
        let r = |d: &str, t: Option<i64>, n: Option<i64>| (d.to_owned(), t, n);
        assert_eq!(
            rows(&out),
            [
                r("x", Some(0), None),
                r("x", Some(H), Some(1)),
                r("x", Some(2 * H), None),
                r("y", Some(-H), Some(7)),
                r("y", Some(0), None),
                r("y", Some(H), None),
                r("y", Some(2 * H), Some(5)),
                r("y", None, Some(9)),
            ]
        );
        Ok(())
    }

    #[test]
    fn no_rows_means_no_series_and_no_buckets() -> Result<()> {
        let out = spec(0, 3 * H).fill(&schema(), &schema(), &[])?;
        assert_eq!(out.num_rows(), 0);
        Ok(())
    }

    #[test]
    fn huge_fills_are_refused() {
        let s = spec(0, i64::try_from(MAX_BUCKETS).unwrap_or(i64::MAX) * H + H);
        let err = s.buckets().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("more than 1000000 buckets"), "{err}");
        assert_eq!(spec(0, 3 * H).buckets().ok(), Some(vec![0, H, 2 * H]));
    }
}
