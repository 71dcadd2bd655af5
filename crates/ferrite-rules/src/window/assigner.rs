//! Which windows an event belongs to: tumbling, hopping (built from panes) and session.
//!
//! Aligned windows (tumbling and hopping) start at multiples of their slide counted from
//! the Unix epoch, like Flink's with offset 0. A hopping window of `size` every `slide` is
//! cut into *panes* of `gcd(size, slide)`: every pane lies wholly inside or wholly outside
//! each window, so an event updates exactly one pane's partial aggregates and a window's
//! result is the merge of its `size / gcd` panes — not `size / slide` copies of the event.
//! A tumbling window is the hopping window with `slide = size` (one pane per window).

use std::time::Duration;

use crate::error::RulesError;
use crate::window::watermark::nanos;

/// How events are grouped into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Back-to-back windows `[k·size, (k+1)·size)`.
    Tumble {
        /// Window length.
        size: Duration,
    },
    /// Overlapping windows `[k·slide, k·slide + size)`; `slide` must not exceed `size`.
    Hop {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// Per-key activity sessions: an event at `t` opens `[t, t + gap)`, and windows that
    /// overlap or touch merge (Flink's `EventTimeSessionWindows`).
    Session {
        /// Inactivity that closes a session.
        gap: Duration,
    },
}

/// The assigner in nanoseconds, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Assign {
    /// Tumbling and hopping windows over panes.
    Aligned {
        size: i64,
        slide: i64,
        /// gcd(size, slide).
        pane: i64,
    },
    /// Session windows.
    Session { gap: i64 },
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WindowAssigner {
    pub(crate) fn compile(self) -> Result<Assign, RulesError> {
        let positive = |what, d: Duration| -> Result<i64, RulesError> {
            let n = nanos(what, d)?;
            if n <= 0 {
                return Err(RulesError::config(what, "must be positive"));
            }
            Ok(n)
        };
        Ok(match self {
            WindowAssigner::Tumble { size } => {
                let size = positive("window size", size)?;
                Assign::Aligned {
                    size,
                    slide: size,
                    pane: size,
                }
            }
            WindowAssigner::Hop { size, slide } => {
                let size = positive("window size", size)?;
                let slide = positive("window slide", slide)?;
                if slide > size {
                    return Err(RulesError::config(
                        "window slide",
                        "must not exceed the window size",
                    ));
                }
                Assign::Aligned {
                    size,
                    slide,
                    pane: gcd(size, slide),
                }
            }
            WindowAssigner::Session { gap } => Assign::Session {
                gap: positive("session gap", gap)?,
            },
        })
    }
}

/// Pane arithmetic of aligned windows, all in ns. Saturating, so event times near the ends
/// of the i64 range degrade instead of overflowing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Panes {
    pub(crate) size: i64,
    pub(crate) slide: i64,
    pub(crate) pane: i64,
}

impl Panes {
    /// Start of the pane holding `t`.
    #[inline]
    pub(crate) fn pane_start(&self, t: i64) -> i64 {
        t.div_euclid(self.pane).saturating_mul(self.pane)
    }

    /// Start of the last (latest) window containing the pane starting at `ps`.
    #[inline]
    pub(crate) fn last_window_start(&self, ps: i64) -> i64 {
        ps.div_euclid(self.slide).saturating_mul(self.slide)
    }

    /// Start of the first (earliest) window containing the pane starting at `ps`: the
    /// smallest multiple of `slide` greater than `ps − size`.
    #[inline]
    pub(crate) fn first_window_start(&self, ps: i64) -> i64 {
        (ps.saturating_sub(self.size))
            .div_euclid(self.slide)
            .saturating_add(1)
            .saturating_mul(self.slide)
    }

    /// End of the last window containing the pane: after it the pane is never read again.
    #[inline]
    pub(crate) fn last_window_end(&self, ps: i64) -> i64 {
        self.last_window_start(ps).saturating_add(self.size)
    }

    /// Starts of every window containing the pane, earliest first.
    pub(crate) fn window_starts(&self, ps: i64) -> impl Iterator<Item = i64> + use<> {
        let (first, last, slide) = (
            self.first_window_start(ps),
            self.last_window_start(ps),
            self.slide,
        );
        std::iter::successors(Some(first), move |s| {
            s.checked_add(slide).filter(|n| *n <= last)
        })
        .take_while(move |s| *s <= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panes(size: u64, slide: u64) -> Panes {
        match (WindowAssigner::Hop {
            size: Duration::from_nanos(size),
            slide: Duration::from_nanos(slide),
        })
        .compile()
        {
            Ok(Assign::Aligned { size, slide, pane }) => Panes { size, slide, pane },
            other => panic!("hop compiles to aligned panes: {other:?}"),
        }
    }

    #[test]
    fn panes_are_gcd_of_size_and_slide() {
        assert_eq!(panes(10, 4).pane, 2);
        assert_eq!(panes(60, 15).pane, 15);
        assert_eq!(panes(7, 7).pane, 7);
    }

    #[test]
    fn every_window_of_a_pane_contains_it_and_no_other_does() {
        for (size, slide) in [(10, 4), (10, 5), (9, 3), (7, 7), (12, 8)] {
            let p = panes(size, slide);
            for t in -40i64..40 {
                let ps = p.pane_start(t);
                assert!(ps <= t && t < ps + p.pane);
                let starts: Vec<i64> = p.window_starts(ps).collect();
                // Brute force: all multiples of slide whose window contains t.
                let brute: Vec<i64> = (-100i64..100)
                    .map(|k| k * slide as i64)
                    .filter(|s| *s <= t && t < s + size as i64)
                    .collect();
                assert_eq!(starts, brute, "size {size} slide {slide} t {t}");
                assert_eq!(
                    p.last_window_end(ps),
                    brute.last().map(|s| s + size as i64).unwrap_or(0)
                );
            }
        }
    }

    #[test]
    fn invalid_assigners_are_rejected() {
        let d = Duration::from_secs;
        assert!(WindowAssigner::Tumble { size: d(0) }.compile().is_err());
        assert!(
            WindowAssigner::Hop {
                size: d(5),
                slide: d(10)
            }
            .compile()
            .is_err()
        );
        assert!(WindowAssigner::Session { gap: d(0) }.compile().is_err());
        assert!(
            WindowAssigner::Tumble {
                size: Duration::from_secs(u64::MAX)
            }
            .compile()
            .is_err()
        );
    }
}
