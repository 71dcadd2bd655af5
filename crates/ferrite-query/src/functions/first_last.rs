//! `first(value, time)` and `last(value, time)`: the value at the earliest (latest) time of
//! the group, as in InfluxDB and TimescaleDB.
//!
//! Rows whose value or time is NULL are skipped, so `last(temperature, time)` is the latest
//! temperature a device reported even if its newest row carries only other fields; a group
//! with no such row gives NULL. When several rows share the earliest (latest) time — only
//! possible across series, since a series has one row per time — the smallest (largest)
//! value wins, so the answer does not depend on scan order.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

use super::bucket::coerce_timestamp;

/// `first` or `last`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ByTime {
    last: bool,
    signature: Signature,
}

impl ByTime {
    pub(crate) fn new(last: bool) -> Self {
        Self {
            last,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for ByTime {
    fn name(&self) -> &str {
        if self.last { "last" } else { "first" }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        let [value, time] = args else {
            return plan_err!("{name}(value, time) takes 2 arguments, got {}", args.len());
        };
        Ok(vec![value.clone(), coerce_timestamp(name, "time", time)?])
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Null))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ByTimeAccumulator {
            last: self.last,
            value: ScalarValue::try_from(args.return_field.data_type())?,
            time: None,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[value]", args.name),
                args.return_field.data_type().clone(),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[time]", args.name),
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                true,
            )),
        ])
    }
}

#[derive(Debug)]
struct ByTimeAccumulator {
    last: bool,
    /// The best value so far (a typed NULL before the first row).
    value: ScalarValue,
    /// Its time; `None` before the first row.
    time: Option<i64>,
}

impl ByTimeAccumulator {
    /// Does (`time`, `value`) beat the current best?
    fn beats(&self, time: i64, value: &ScalarValue) -> bool {
        let Some(best) = self.time else { return true };
        let by_value = || {
            let ord = value.partial_cmp(&self.value).unwrap_or(Ordering::Equal);
            if self.last {
                ord == Ordering::Greater
            } else {
                ord == Ordering::Less
            }
        };
        match time.cmp(&best) {
            Ordering::Less => !self.last,
            Ordering::Greater => self.last,
            Ordering::Equal => by_value(),
        }
    }

    /// Take the best row of (`values`, `times`) if it beats the current one.
    fn fold(&mut self, values: &ArrayRef, times: &ArrayRef) -> Result<()> {
        let Some(times) = times.as_primitive_opt() else {
            return exec_err!("time must be a timestamp, got {}", times.data_type());
        };
        let times: &TimestampNanosecondArray = times;
        // The best time in this batch first; values are compared only on ties.
        let mut best: Option<(i64, usize)> = None;
        for (i, t) in times.iter().enumerate() {
            let Some(t) = t else { continue };
            if values.is_null(i) {
                continue;
            }
            best = match best {
                Some((bt, _)) if (self.last && t > bt) || (!self.last && t < bt) => Some((t, i)),
                Some((bt, bi)) if t == bt => {
                    let (a, b) = (
                        ScalarValue::try_from_array(values, i)?,
                        ScalarValue::try_from_array(values, bi)?,
                    );
                    let ord = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
                    let better = if self.last {
                        ord == Ordering::Greater
                    } else {
                        ord == Ordering::Less
                    };
                    Some(if better { (t, i) } else { (bt, bi) })
                }
                Some(b) => Some(b),
                None => Some((t, i)),
            };
        }
        if let Some((t, i)) = best {
            let value = ScalarValue::try_from_array(values, i)?;
            if self.beats(t, &value) {
                self.value = value;
                self.time = Some(t);
            }
        }
        Ok(())
    }
}

impl Accumulator for ByTimeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [value, time] = values else {
            return exec_err!("first/last take 2 arguments");
        };
        self.fold(value, time)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            self.value.clone(),
            ScalarValue::TimestampNanosecond(self.time, None),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value.clone())
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.value.size() - size_of_val(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};

    fn acc(last: bool) -> ByTimeAccumulator {
        ByTimeAccumulator {
            last,
            value: ScalarValue::Float64(None),
            time: None,
        }
    }

    fn times(t: &[Option<i64>]) -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from(t.to_vec()).with_timezone("UTC"))
    }

    fn floats(v: &[Option<f64>]) -> ArrayRef {
        Arc::new(Float64Array::from(v.to_vec()))
    }

    #[test]
    fn picks_the_value_at_the_extreme_time_skipping_nulls() -> Result<()> {
        for (last, want) in [(false, 2.0), (true, 4.0)] {
            let mut a = acc(last);
            // Out of order; the row at t=1 has no value, the one at t=9 no time.
            a.update_batch(&[
                floats(&[Some(3.0), None, Some(2.0), Some(4.0), Some(7.0)]),
                times(&[Some(5), Some(1), Some(2), Some(8), None]),
            ])?;
            assert_eq!(a.evaluate()?, ScalarValue::Float64(Some(want)));
        }
        Ok(())
    }

    #[test]
    fn empty_and_all_null_input_give_null() -> Result<()> {
        let mut a = acc(true);
        assert_eq!(a.evaluate()?, ScalarValue::Float64(None));
        a.update_batch(&[floats(&[None, None]), times(&[Some(1), Some(2)])])?;
        a.update_batch(&[floats(&[]), times(&[])])?;
        assert_eq!(a.evaluate()?, ScalarValue::Float64(None));
        Ok(())
    }

    #[test]
    fn merging_partial_states_keeps_the_overall_extreme() -> Result<()> {
        let mut x = acc(false);
        x.update_batch(&[floats(&[Some(1.0)]), times(&[Some(10)])])?;
        let mut y = acc(false);
        y.update_batch(&[floats(&[Some(5.0)]), times(&[Some(3)])])?;
        let state: Vec<ArrayRef> = y
            .state()?
            .into_iter()
            .map(|s| s.to_array())
            .collect::<Result<_>>()?;
        x.merge_batch(&state)?;
        assert_eq!(x.evaluate()?, ScalarValue::Float64(Some(5.0)));
        Ok(())
    }

    #[test]
    fn ties_are_broken_by_value_whatever_the_order() -> Result<()> {
        for order in [[0usize, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let vals = ["b", "c", "a"];
            let v: ArrayRef = Arc::new(StringArray::from(
                order.iter().map(|&i| vals[i]).collect::<Vec<_>>(),
            ));
            for (last, want) in [(false, "a"), (true, "c")] {
                let mut a = ByTimeAccumulator {
                    last,
                    value: ScalarValue::Utf8(None),
                    time: None,
                };
                // Split across two batches, so both the in-batch and the cross-batch tie
                // breaks are exercised.
                a.update_batch(&[v.slice(0, 2), times(&[Some(7), Some(7)])])?;
                a.update_batch(&[v.slice(2, 1), times(&[Some(7)])])?;
                assert_eq!(a.evaluate()?, ScalarValue::Utf8(Some(want.into())));
            }
        }
        Ok(())
    }
}
