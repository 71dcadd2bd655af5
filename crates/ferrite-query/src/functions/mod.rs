//! Ferrite's time-series SQL functions, registered in every [`crate::QueryEngine`] next to
//! DataFusion's own (`date_bin`, `date_trunc`, `first_value`/`last_value`, `lag`/`lead`,
//! `approx_distinct`, `approx_percentile_cont`, …):
//!
//! | function | kind | module |
//! |---|---|---|
//! | `time_bucket(interval, time [, zone])` | scalar | [`bucket`] |
//! | `time_bucket_gapfill(interval, time, start, end [, zone])` | scalar, in GROUP BY | [`bucket`], [`crate::gapfill`] |
//! | `first(value, time)`, `last(value, time)` | aggregate | [`first_last`] |
//! | `increase(counter, time)`, `rate(counter, time)`, `derivative(value, time [, unit])` | aggregate (and window over a frame) | [`counter`] |
//! | `locf(value)`, `interpolate(value, time)` | window | [`fill`] |
//!
//! Arguments are checked when the query is planned or run, and bad ones (a zero or negative
//! interval, an unknown time zone, a column where a constant belongs) are SQL errors naming
//! the function; NULL arguments give NULL.

pub(crate) mod bucket;
pub(crate) mod counter;
pub(crate) mod fill;
pub(crate) mod first_last;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::prelude::SessionContext;

/// Add every function to `ctx`.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(bucket::TimeBucket::new(false)));
    ctx.register_udf(ScalarUDF::new_from_impl(bucket::TimeBucket::new(true)));
    ctx.register_udaf(AggregateUDF::new_from_impl(first_last::ByTime::new(false)));
    ctx.register_udaf(AggregateUDF::new_from_impl(first_last::ByTime::new(true)));
    for kind in [
        counter::Change::Increase,
        counter::Change::Rate,
        counter::Change::Derivative,
    ] {
        ctx.register_udaf(AggregateUDF::new_from_impl(counter::ChangeUdaf::new(kind)));
    }
    ctx.register_udwf(WindowUDF::new_from_impl(fill::Fill::new(false)));
    ctx.register_udwf(WindowUDF::new_from_impl(fill::Fill::new(true)));
}
