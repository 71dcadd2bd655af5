//! Change over time: `increase(counter, time)`, `rate(counter, time)` and
//! `derivative(value, time [, unit])`, as aggregates.
//!
//! The rows of a group are taken in time order (whatever order the scan delivers them in;
//! rows whose value or time is NULL are skipped). With fewer than two rows, or all at one
//! time, the answer is NULL.
//!
//! - `increase(counter, time)` — how much a monotonic counter grew from the group's first
//!   row to its last. As in Prometheus, a decrease is a counter reset: the counter restarted
//!   from zero, so the step contributes its new value, not a negative difference. Unlike
//!   Prometheus there is no extrapolation to the bucket's edges: the increase is between the
//!   first and the last sample, so the growth between the last sample of one bucket and the
//!   first of the next belongs to neither.
//! - `rate(counter, time)` — `increase` per second of the time between first and last row.
//! - `derivative(value, time [, unit])` — `(last - first) / elapsed` for a gauge, per `unit`
//!   (an interval, default `1 second`; without months), signed, with no reset handling.
//!
//! Each is also a window function over its frame, so the change between each row and the
//! previous one is `rate(v, time) OVER (PARTITION BY device_id ORDER BY time ROWS BETWEEN 1
//! PRECEDING AND CURRENT ROW)` (NULL on a series' first row).
//!
//! The accumulator keeps the group's (time, value) pairs — counters from several files
//! arrive out of order, and a reset can only be told in time order — so a group costs 16
//! bytes a row, counted against the query's memory limit.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};
use datafusion::physical_expr::expressions::Literal;

use super::bucket::{coerce_interval, coerce_timestamp, show_interval};

const NANOS_PER_SECOND: f64 = 1e9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Change {
    Increase,
    Rate,
    Derivative,
}

/// One of the change aggregates.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChangeUdaf {
    kind: Change,
    signature: Signature,
}

impl ChangeUdaf {
    pub(crate) fn new(kind: Change) -> Self {
        Self {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn usage(&self) -> &'static str {
        match self.kind {
            Change::Increase => "increase(counter, time)",
            Change::Rate => "rate(counter, time)",
            Change::Derivative => "derivative(value, time [, unit])",
        }
    }
}

impl AggregateUDFImpl for ChangeUdaf {
    fn name(&self) -> &str {
        match self.kind {
            Change::Increase => "increase",
            Change::Rate => "rate",
            Change::Derivative => "derivative",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        let max = if self.kind == Change::Derivative {
            3
        } else {
            2
        };
        if args.len() < 2 || args.len() > max {
            return plan_err!("{} takes {max} arguments, got {}", self.usage(), args.len());
        }
        args.iter()
            .enumerate()
            .map(|(i, t)| match i {
                0 if t.is_numeric() || *t == DataType::Null => Ok(DataType::Float64),
                0 => plan_err!("{name}: the value must be a number, got {t}"),
                1 => coerce_timestamp(name, "time", t),
                _ => coerce_interval(name, "unit", t),
            })
            .collect()
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let name = self.name();
        let per = match args.exprs.get(2) {
            None => NANOS_PER_SECOND,
            Some(e) => {
                let Some(lit) = e.downcast_ref::<Literal>() else {
                    return plan_err!("{name}: the unit must be a constant interval");
                };
                match lit.value() {
                    ScalarValue::IntervalMonthDayNano(Some(u))
                        if u.months == 0
                            && u.days >= 0
                            && u.nanoseconds >= 0
                            && (u.days, u.nanoseconds) != (0, 0) =>
                    {
                        f64::from(u.days) * 86_400.0 * NANOS_PER_SECOND + u.nanoseconds as f64
                    }
                    ScalarValue::IntervalMonthDayNano(Some(u)) => {
                        return plan_err!(
                            "{name}: the unit must be a positive interval without months, got {}",
                            show_interval(*u)
                        );
                    }
                    other => {
                        return plan_err!("{name}: the unit must be an interval, got {other}");
                    }
                }
            }
        };
        if args.is_distinct {
            return plan_err!("{name}: DISTINCT is not supported");
        }
        Ok(Box::new(ChangeAccumulator {
            kind: self.kind,
            per,
            points: VecDeque::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = |name: String, t: DataType| {
            Arc::new(Field::new(
                name,
                DataType::List(Arc::new(Field::new_list_field(t, false))),
                true,
            ))
        };
        Ok(vec![
            list(format!("{}[times]", args.name), DataType::Int64),
            list(format!("{}[values]", args.name), DataType::Float64),
        ])
    }
}

#[derive(Debug)]
struct ChangeAccumulator {
    kind: Change,
    /// Nanoseconds in the unit of the answer (rate and derivative).
    per: f64,
    /// (time ns, value), in arrival order (retraction removes from the front).
    points: VecDeque<(i64, f64)>,
}

/// The (time, value) pairs of a batch where both are present.
fn pairs<'a>(
    values: &'a ArrayRef,
    times: &'a ArrayRef,
) -> Result<impl Iterator<Item = (i64, f64)> + 'a> {
    let (Some(values), Some(times)) = (
        values.as_primitive_opt::<Float64Type>(),
        times.as_primitive_opt(),
    ) else {
        return exec_err!(
            "expected (double, timestamp) arguments, got ({}, {})",
            values.data_type(),
            times.data_type()
        );
    };
    let times: &TimestampNanosecondArray = times;
    Ok(times
        .iter()
        .zip(values.iter())
        .filter_map(|(t, v)| Some((t?, v?))))
}

impl ChangeAccumulator {
    fn compute(&self) -> Option<f64> {
        let mut points: Vec<(i64, f64)> = self.points.iter().copied().collect();
        points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let (first, last) = (points.first()?, points.last()?);
        if last.0 <= first.0 {
            return None;
        }
        let elapsed = (i128::from(last.0) - i128::from(first.0)) as f64;
        let increase = || {
            points
                .windows(2)
                .map(|w| {
                    let d = w[1].1 - w[0].1;
                    if d >= 0.0 { d } else { w[1].1 }
                })
                .sum::<f64>()
        };
        Some(match self.kind {
            Change::Increase => increase(),
            Change::Rate => increase() / (elapsed / NANOS_PER_SECOND),
            Change::Derivative => (last.1 - first.1) / (elapsed / self.per),
        })
    }
}

impl Accumulator for ChangeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (Some(v), Some(t)) = (values.first(), values.get(1)) else {
            return exec_err!("expected (value, time) arguments");
        };
        self.points.extend(pairs(v, t)?);
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (Some(v), Some(t)) = (values.first(), values.get(1)) else {
            return exec_err!("expected (value, time) arguments");
        };
        // The frame's rows leave in the order they came.
        for _ in pairs(v, t)? {
            self.points.pop_front();
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (Some(times), Some(values)) = (
            states.first().and_then(|a| a.as_list_opt::<i32>()),
            states.get(1).and_then(|a| a.as_list_opt::<i32>()),
        ) else {
            return exec_err!("change aggregate: unexpected partial state");
        };
        for (t, v) in times.iter().zip(values.iter()) {
            let (Some(t), Some(v)) = (t, v) else { continue };
            let (Some(t), Some(v)) = (
                t.as_primitive_opt::<Int64Type>(),
                v.as_primitive_opt::<Float64Type>(),
            ) else {
                return exec_err!("change aggregate: unexpected partial state");
            };
            self.points
                .extend(t.values().iter().copied().zip(v.values().iter().copied()));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let times = Int64Array::from_iter_values(self.points.iter().map(|p| p.0));
        let values = Float64Array::from_iter_values(self.points.iter().map(|p| p.1));
        let list = |a: ArrayRef| {
            ScalarValue::List(Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(a.data_type().clone(), false)),
                datafusion::arrow::buffer::OffsetBuffer::from_lengths([a.len()]),
                a,
                None,
            )))
        };
        Ok(vec![list(Arc::new(times)), list(Arc::new(values))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.compute()))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.points.capacity() * size_of::<(i64, f64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn acc(kind: Change) -> ChangeAccumulator {
        ChangeAccumulator {
            kind,
            per: NANOS_PER_SECOND,
            points: VecDeque::new(),
        }
    }

    fn batch(points: &[(Option<i64>, Option<f64>)]) -> Vec<ArrayRef> {
        let v: ArrayRef = Arc::new(Float64Array::from(
            points.iter().map(|p| p.1).collect::<Vec<_>>(),
        ));
        let t: ArrayRef = Arc::new(TimestampNanosecondArray::from(
            points.iter().map(|p| p.0).collect::<Vec<_>>(),
        ));
        vec![v, t]
    }

    fn eval(kind: Change, points: &[(Option<i64>, Option<f64>)]) -> Option<f64> {
        let mut a = acc(kind);
        a.update_batch(&batch(points))
            .unwrap_or_else(|e| panic!("{e}"));
        a.compute()
    }

    #[test]
    fn a_decrease_is_a_counter_reset() {
        // 10 → 15 → 3 (reset: +3) → 8, out of order and with a NULL in between.
        let points = [
            (Some(20 * S), Some(3.0)),
            (Some(0), Some(10.0)),
            (Some(25 * S), None),
            (Some(30 * S), Some(8.0)),
            (Some(10 * S), Some(15.0)),
        ];
        assert_eq!(eval(Change::Increase, &points), Some(5.0 + 3.0 + 5.0));
        assert_eq!(eval(Change::Rate, &points), Some(13.0 / 30.0));
        // The derivative is a gauge's: last minus first, reset or not.
        assert_eq!(eval(Change::Derivative, &points), Some((8.0 - 10.0) / 30.0));
    }

    #[test]
    fn fewer_than_two_times_is_null() {
        for kind in [Change::Increase, Change::Rate, Change::Derivative] {
            assert_eq!(eval(kind, &[]), None);
            assert_eq!(eval(kind, &[(Some(S), Some(1.0))]), None);
            assert_eq!(
                eval(kind, &[(Some(S), Some(1.0)), (Some(S), Some(2.0))]),
                None
            );
            assert_eq!(eval(kind, &[(None, Some(1.0)), (Some(S), Some(2.0))]), None);
        }
    }

    #[test]
    fn derivative_is_per_unit() {
        let mut a = acc(Change::Derivative);
        a.per = 60.0 * NANOS_PER_SECOND;
        a.update_batch(&batch(&[(Some(0), Some(1.0)), (Some(30 * S), Some(4.0))]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.compute(), Some(6.0));
    }

    #[test]
    fn partial_states_merge_and_frames_slide() -> Result<()> {
        let mut x = acc(Change::Increase);
        x.update_batch(&batch(&[(Some(0), Some(1.0)), (Some(2 * S), Some(2.0))]))?;
        let mut y = acc(Change::Increase);
        y.update_batch(&batch(&[(Some(S), Some(5.0))]))?;
        let state = y
            .state()?
            .into_iter()
            .map(|s| s.to_array())
            .collect::<Result<Vec<_>>>()?;
        x.merge_batch(&state)?;
        // In time order: 1 → 5 → 2 (reset): 4 + 2.
        assert_eq!(x.compute(), Some(6.0));
        // Sliding: the first row leaves; 5 → 2 is a reset.
        x.retract_batch(&batch(&[(Some(0), Some(1.0))]))?;
        assert_eq!(x.compute(), Some(2.0));
        Ok(())
    }
}
