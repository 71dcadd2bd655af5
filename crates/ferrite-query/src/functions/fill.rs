//! Filling NULLs from neighbouring rows, as window functions: `locf(x)` and
//! `interpolate(x, time)`.
//!
//! Both look at the whole window partition in the window's order (the frame is ignored), so
//! `PARTITION BY device_id ORDER BY time` fills each series from its own rows only. With
//! `time_bucket_gapfill` (which adds the missing buckets as rows of NULLs) they fill gaps;
//! on raw rows they fill sparse fields.
//!
//! - `locf(x)` — "last observation carried forward": `x` where it is not NULL, else the
//!   latest earlier non-NULL `x` of the partition; NULL before the first. Any type.
//! - `interpolate(x, time)` — `x` where it is not NULL, else the straight line between the
//!   nearest earlier and nearest later non-NULL `x` of the partition, by `time`; NULL before
//!   the first or after the last (no extrapolation) and where `time` is NULL. Numbers in,
//!   double out. The window should be ordered by `time`.
//!
//! They see only the rows the query read: a gap at the start of a gap-filled range stays
//! NULL under `locf` unless the WHERE clause reaches back far enough to hold an earlier row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};

use super::bucket::coerce_timestamp;

/// `locf` or `interpolate`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Fill {
    interpolate: bool,
    signature: Signature,
}

impl Fill {
    pub(crate) fn new(interpolate: bool) -> Self {
        Self {
            interpolate,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for Fill {
    fn name(&self) -> &str {
        if self.interpolate {
            "interpolate"
        } else {
            "locf"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if !self.interpolate {
            let [x] = args else {
                return plan_err!("locf(value) takes 1 argument, got {}", args.len());
            };
            return Ok(vec![x.clone()]);
        }
        let [x, t] = args else {
            return plan_err!(
                "interpolate(value, time) takes 2 arguments, got {}",
                args.len()
            );
        };
        if !x.is_numeric() && *x != DataType::Null {
            return plan_err!("interpolate: the value must be a number, got {x}");
        }
        Ok(vec![
            DataType::Float64,
            coerce_timestamp("interpolate", "time", t)?,
        ])
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(FillEvaluator {
            interpolate: self.interpolate,
        }))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let t = if self.interpolate {
            DataType::Float64
        } else {
            args.get_input_field(0)
                .map(|f| f.data_type().clone())
                .unwrap_or(DataType::Null)
        };
        Ok(Arc::new(Field::new(args.name(), t, true)))
    }
}

#[derive(Debug)]
struct FillEvaluator {
    interpolate: bool,
}

impl PartitionEvaluator for FillEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let Some(x) = values.first() else {
            return exec_err!("fill: missing argument");
        };
        if !self.interpolate {
            return locf(x);
        }
        let (Some(x), Some(t)) = (
            x.as_primitive_opt::<Float64Type>(),
            values.get(1).and_then(|t| t.as_primitive_opt()),
        ) else {
            return exec_err!("interpolate: expected (double, timestamp) arguments");
        };
        debug_assert_eq!(x.len(), num_rows);
        Ok(Arc::new(interpolate(x, t)))
    }
}

/// Each row's value, or the latest earlier non-NULL one.
fn locf(x: &ArrayRef) -> Result<ArrayRef> {
    if x.null_count() == 0 {
        return Ok(Arc::clone(x));
    }
    let mut last = None;
    let indices: UInt32Array = (0..x.len())
        .map(|i| {
            if x.is_valid(i) {
                last = u32::try_from(i).ok();
            }
            last
        })
        .collect();
    Ok(take(x.as_ref(), &indices, None)?)
}

/// Each row's value, or the line between its non-NULL neighbours (by time).
fn interpolate(x: &Float64Array, t: &TimestampNanosecondArray) -> Float64Array {
    let n = x.len();
    let known = |i: usize| x.is_valid(i) && t.is_valid(i);
    // The nearest known row at or after each row.
    let mut next = vec![None; n];
    let mut upcoming = None;
    for i in (0..n).rev() {
        if known(i) {
            upcoming = Some(i);
        }
        next[i] = upcoming;
    }
    let mut previous: Option<usize> = None;
    (0..n)
        .map(|i| {
            if x.is_valid(i) {
                if t.is_valid(i) {
                    previous = Some(i);
                }
                return Some(x.value(i));
            }
            let (p, q) = (previous?, next[i]?);
            if t.is_null(i) {
                return None;
            }
            let (t0, t1, ti) = (t.value(p), t.value(q), t.value(i));
            let (x0, x1) = (x.value(p), x.value(q));
            if t1 == t0 {
                return Some(x0);
            }
            let f =
                (i128::from(ti) - i128::from(t0)) as f64 / (i128::from(t1) - i128::from(t0)) as f64;
            Some(x0 + (x1 - x0) * f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    #[test]
    fn locf_carries_the_last_value_forward() -> Result<()> {
        let x: ArrayRef = Arc::new(StringArray::from(vec![
            None,
            Some("a"),
            None,
            None,
            Some("b"),
            None,
        ]));
        let out = locf(&x)?;
        let out = out.as_string::<i32>();
        let got: Vec<_> = out.iter().collect();
        assert_eq!(
            got,
            [None, Some("a"), Some("a"), Some("a"), Some("b"), Some("b")]
        );
        let empty: ArrayRef = Arc::new(StringArray::from(Vec::<Option<&str>>::new()));
        assert_eq!(locf(&empty)?.len(), 0);
        Ok(())
    }

    #[test]
    fn interpolate_draws_lines_between_known_points() {
        let x = Float64Array::from(vec![
            None,
            Some(1.0),
            None,
            None,
            Some(4.0),
            None,
            Some(9.0),
            None,
        ]);
        // Uneven spacing: the line is by time, not by row.
        let t = TimestampNanosecondArray::from(vec![
            Some(0),
            Some(10),
            Some(20),
            Some(40),
            Some(70),
            None,
            Some(80),
            Some(90),
        ]);
        let got: Vec<_> = interpolate(&x, &t).iter().collect();
        assert_eq!(
            got,
            [
                None,
                Some(1.0),
                Some(1.5),
                Some(2.5),
                Some(4.0),
                None,
                Some(9.0),
                None
            ]
        );
        // A row with a value but no time is kept, and not used as an end of a line.
        let x = Float64Array::from(vec![Some(0.0), Some(100.0), None, Some(2.0)]);
        let t = TimestampNanosecondArray::from(vec![Some(0), None, Some(1), Some(2)]);
        let got: Vec<_> = interpolate(&x, &t).iter().collect();
        assert_eq!(got, [Some(0.0), Some(100.0), Some(1.0), Some(2.0)]);
    }
}
