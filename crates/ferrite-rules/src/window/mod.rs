//! Event-time windows: watermarks, window assignment and the keyed window operator.
//!
//! # Conventions
//!
//! * Time is event time in nanoseconds ([`Timestamp`](ferrite_core::Timestamp)).
//! * Windows are half-open, `[start, end)`: an event at exactly `end` belongs to the next
//!   window.
//! * A watermark `W` asserts "no more events with event time `< W`". So an event with
//!   `t < W` is late, and a window **fires when `W ≥ end`**. This is Flink's rule (fire when
//!   the watermark reaches `end − 1 ms`, the window's max timestamp, where Flink's
//!   bounded-out-of-orderness watermark is `max − bound − 1 ms`) restated at nanosecond
//!   resolution without the −1 on both sides: `W = max event time − out_of_orderness`.
//! * Allowed lateness `L`: while `end ≤ W < end + L` a window still accepts events, and
//!   each one re-fires it at once with the updated result (`is_update = true`). Once
//!   `W ≥ end + L` its state is purged and its events go to the late output (counted).
//! * Session windows merge when they overlap **or touch** (`[0, 10)` and `[10, 20)` merge),
//!   as Flink's `TimeWindow.intersects` does. A late event can bridge two fired sessions; the
//!   merged session re-fires and names the windows it supersedes.
//! * Results of one watermark advance come out ordered by window end, then by the order in
//!   which keys first appeared.

pub mod assigner;
pub mod operator;
pub mod watermark;

pub use assigner::WindowAssigner;
pub use operator::{
    Admission, LateEvent, OperatorState, OperatorStateRef, Window, WindowConfig, WindowOperator,
    WindowResult, WindowStats,
};
pub use watermark::{WatermarkConfig, WatermarkTracker};

#[cfg(test)]
mod tests;
