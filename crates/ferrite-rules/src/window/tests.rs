//! Semantic tests of the window operator, one per documented behaviour (Flink's semantics
//! at nanosecond resolution; see the conventions in [`crate::window`]).

use std::collections::HashMap;
use std::time::Duration;

use ferrite_core::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::agg::{AggSpec, MessageId};
use crate::datum::Datum;

fn t(ns: i64) -> Timestamp {
    Timestamp::from_nanos(ns)
}

fn d(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

fn op(assigner: WindowAssigner, lateness: u64) -> WindowOperator<String> {
    WindowOperator::new(
        WindowConfig::new(assigner).with_allowed_lateness(d(lateness)),
        vec![AggSpec::Count, AggSpec::Sum],
    )
    .expect("valid operator")
}

fn tumble(size: u64) -> WindowAssigner {
    WindowAssigner::Tumble { size: d(size) }
}

fn session(gap: u64) -> WindowAssigner {
    WindowAssigner::Session { gap: d(gap) }
}

fn ev(o: &mut WindowOperator<String>, key: &str, ts: i64, v: i64) -> Admission {
    o.process(key, t(ts), None, &[Datum::Bool(true), Datum::Int(v)])
}

/// (key, start, end, count, sum, is_update) of every result drained.
type Row = (String, i64, i64, Datum, Datum, bool);

fn drain(o: &mut WindowOperator<String>) -> Vec<Row> {
    o.drain_results()
        .map(|r| {
            (
                r.key,
                r.window_start.as_nanos(),
                r.window_end.as_nanos(),
                r.aggregates[0].clone(),
                r.aggregates[1].clone(),
                r.is_update,
            )
        })
        .collect()
}

fn row(key: &str, s: i64, e: i64, count: i64, sum: i64, update: bool) -> Row {
    (key.into(), s, e, Datum::Int(count), Datum::Int(sum), update)
}

/// Boundary convention: `[0, 10)` fires at W = 10, not at W = 9; an event at t = 10
/// belongs to `[10, 20)`.
#[test]
fn tumbling_window_fires_when_watermark_reaches_end() {
    let mut o = op(tumble(10), 0);
    assert_eq!(ev(&mut o, "a", 0, 1), Admission::Accepted);
    assert_eq!(ev(&mut o, "a", 9, 2), Admission::Accepted);
    assert_eq!(ev(&mut o, "a", 10, 4), Admission::Accepted);
    o.advance_watermark(t(9));
    assert!(drain(&mut o).is_empty(), "W = 9 < end");
    o.advance_watermark(t(10));
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 2, 3, false)]);
    o.advance_watermark(t(10_000));
    assert_eq!(drain(&mut o), vec![row("a", 10, 20, 1, 4, false)]);
    assert_eq!(o.stats().fired, 2);
}

/// A watermark that goes back is ignored; windows fire once.
#[test]
fn watermark_never_goes_back_and_windows_fire_once() {
    let mut o = op(tumble(10), 0);
    ev(&mut o, "a", 5, 1);
    o.advance_watermark(t(20));
    o.advance_watermark(t(3));
    assert_eq!(o.watermark(), Some(t(20)));
    o.advance_watermark(t(30));
    assert_eq!(drain(&mut o).len(), 1);
}

/// Within allowed lateness a late event re-fires its window at once with the updated
/// result; after `end + lateness` the state is gone and the event goes to the late output.
#[test]
fn allowed_lateness_refires_then_late_output() {
    let mut o = op(tumble(10), 5);
    ev(&mut o, "a", 1, 1);
    o.advance_watermark(t(12));
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 1, 1, false)]);
    assert_eq!(ev(&mut o, "a", 3, 10), Admission::Refired);
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 2, 11, true)]);
    assert_eq!(ev(&mut o, "a", 4, 100), Admission::Refired);
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 3, 111, true)]);
    o.advance_watermark(t(14));
    assert_eq!(o.open_state(), 1, "kept until W ≥ end + lateness = 15");
    o.advance_watermark(t(15));
    assert_eq!(o.open_state(), 0, "purged at W = end + lateness");
    assert_eq!(o.keys(), 0);
    assert_eq!(ev(&mut o, "a", 9, 1000), Admission::Late);
    assert!(drain(&mut o).is_empty());
    let late: Vec<LateEvent<String>> = o.drain_late().collect();
    assert_eq!(
        late,
        vec![LateEvent {
            key: "a".into(),
            event_time: t(9),
            values: vec![Datum::Bool(true), Datum::Int(1000)]
        }]
    );
    let s = o.stats();
    assert_eq!((s.fired, s.updates, s.late_events), (1, 2, 1));
}

/// Without lateness, anything behind a fired window's end is late and counted; an event
/// for a later, still open window is not.
#[test]
fn too_late_goes_to_late_output_and_is_counted() {
    let mut o = op(tumble(10), 0);
    ev(&mut o, "a", 1, 1);
    o.advance_watermark(t(10));
    drain(&mut o);
    assert_eq!(ev(&mut o, "a", 9, 1), Admission::Late);
    assert_eq!(ev(&mut o, "b", 0, 1), Admission::Late);
    assert_eq!(ev(&mut o, "a", 10, 1), Admission::Accepted);
    assert_eq!(o.stats().late_events, 2);
    assert_eq!(o.drain_late().count(), 2);
}

/// The late output is bounded: past its capacity late events are only counted.
#[test]
fn late_output_is_bounded() {
    let mut config = WindowConfig::new(tumble(10));
    config.late_capacity = 2;
    let mut o: WindowOperator<String> =
        WindowOperator::new(config, vec![AggSpec::Count]).expect("valid");
    o.advance_watermark(t(100));
    for i in 0..5 {
        assert_eq!(
            o.process("k", t(i), None, &[Datum::Bool(true)]),
            Admission::Late
        );
    }
    assert_eq!(o.drain_late().count(), 2);
    assert_eq!(o.stats().late_events, 5);
    assert_eq!(o.stats().late_dropped, 3);
}

/// A late event for a window that never had data (but is within lateness) fires it for the
/// first time: `is_update` is false.
#[test]
fn first_data_for_a_passed_window_is_a_first_firing() {
    let mut o = op(tumble(10), 50);
    ev(&mut o, "a", 25, 1);
    o.advance_watermark(t(30));
    assert_eq!(drain(&mut o), vec![row("a", 20, 30, 1, 1, false)]);
    assert_eq!(ev(&mut o, "a", 5, 7), Admission::Refired);
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 1, 7, false)]);
}

/// Results of one advance come out by window end, then by first appearance of the key.
#[test]
fn results_are_ordered_by_end_then_key_arrival() {
    let mut o = op(tumble(10), 0);
    ev(&mut o, "z", 15, 1);
    ev(&mut o, "b", 5, 1);
    ev(&mut o, "a", 7, 1);
    ev(&mut o, "b", 12, 1);
    o.advance_watermark(t(100));
    let order: Vec<(String, i64)> = drain(&mut o).into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        order,
        vec![
            ("b".into(), 0),
            ("a".into(), 0),
            ("z".into(), 10),
            ("b".into(), 10)
        ]
    );
}

/// Hopping windows keep one partial per pane (gcd of size and slide), not one copy of the
/// event per window, and each window's result merges its panes.
#[test]
fn hopping_windows_are_built_from_panes() {
    let mut o = op(
        WindowAssigner::Hop {
            size: d(60),
            slide: d(20),
        },
        0,
    );
    for ts in [0, 5, 19] {
        ev(&mut o, "a", ts, 1);
    }
    assert_eq!(o.open_state(), 1, "three events in one pane");
    ev(&mut o, "a", 45, 10);
    assert_eq!(o.open_state(), 2);
    o.advance_watermark(t(1_000));
    assert_eq!(
        drain(&mut o),
        vec![
            row("a", -40, 20, 3, 3, false),
            row("a", -20, 40, 3, 3, false),
            row("a", 0, 60, 4, 13, false),
            row("a", 20, 80, 1, 10, false),
            row("a", 40, 100, 1, 10, false),
        ]
    );
    assert_eq!(o.open_state(), 0);
}

/// A pane outlives a window that is already purged; a late event then updates only the
/// windows still within lateness (Flink skips late windows per window).
#[test]
fn hop_late_event_updates_only_windows_within_lateness() {
    let mut o = op(
        WindowAssigner::Hop {
            size: d(10),
            slide: d(5),
        },
        0,
    );
    ev(&mut o, "a", 6, 1);
    o.advance_watermark(t(12));
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 1, 1, false)]);
    // Pane [5, 10) is still needed by [5, 15); [0, 10) is gone (lateness 0).
    assert_eq!(ev(&mut o, "a", 7, 5), Admission::Accepted);
    assert!(drain(&mut o).is_empty());
    o.advance_watermark(t(15));
    assert_eq!(drain(&mut o), vec![row("a", 5, 15, 2, 6, false)]);
}

/// Sessions: events closer than the gap (or exactly the gap apart: touching windows) merge;
/// the session fires when the watermark reaches last event + gap.
#[test]
fn sessions_merge_and_fire_at_last_event_plus_gap() {
    let mut o = op(session(10), 0);
    ev(&mut o, "a", 0, 1);
    ev(&mut o, "a", 10, 2); // [0,10) and [10,20) touch → [0,20)
    ev(&mut o, "a", 31, 4);
    ev(&mut o, "a", 5, 8); // inside the first session
    assert_eq!(o.open_state(), 2);
    o.advance_watermark(t(19));
    assert!(drain(&mut o).is_empty());
    o.advance_watermark(t(20));
    assert_eq!(drain(&mut o), vec![row("a", 0, 20, 3, 11, false)]);
    o.advance_watermark(t(41));
    assert_eq!(drain(&mut o), vec![row("a", 31, 41, 1, 4, false)]);
    assert_eq!(o.open_state(), 0);
}

/// A late event between two fired sessions bridges them: one merged result, flagged as an
/// update, naming both windows it supersedes.
#[test]
fn late_event_bridges_two_fired_sessions() {
    let mut o = op(session(10), 100);
    ev(&mut o, "a", 0, 1);
    ev(&mut o, "a", 18, 2);
    o.advance_watermark(t(30));
    assert_eq!(
        drain(&mut o),
        vec![row("a", 0, 10, 1, 1, false), row("a", 18, 28, 1, 2, false)]
    );
    assert_eq!(ev(&mut o, "a", 9, 4), Admission::Refired);
    let results: Vec<WindowResult<String>> = o.drain_results().collect();
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!((r.window_start, r.window_end), (t(0), t(28)));
    assert_eq!(r.aggregates, vec![Datum::Int(3), Datum::Int(7)]);
    assert!(r.is_update);
    assert_eq!(
        r.superseded,
        vec![
            Window {
                start: t(0),
                end: t(10)
            },
            Window {
                start: t(18),
                end: t(28)
            }
        ]
    );
    assert_eq!(o.open_state(), 1);
}

/// A late event that extends a fired session past the watermark re-fires it later, at the
/// new end, as an update superseding the shorter window.
#[test]
fn late_event_extending_a_session_refires_at_new_end() {
    let mut o = op(session(10), 100);
    ev(&mut o, "a", 0, 1);
    o.advance_watermark(t(12));
    assert_eq!(drain(&mut o), vec![row("a", 0, 10, 1, 1, false)]);
    assert_eq!(ev(&mut o, "a", 8, 2), Admission::Accepted); // [0, 18) > W
    assert!(drain(&mut o).is_empty());
    o.advance_watermark(t(18));
    let r: Vec<WindowResult<String>> = o.drain_results().collect();
    assert_eq!((r[0].window_end, r[0].is_update), (t(18), true));
    assert_eq!(
        r[0].superseded,
        vec![Window {
            start: t(0),
            end: t(10)
        }]
    );
}

/// Session lateness: a new session entirely behind `W − lateness` is late; one that merges
/// into a live session is not.
#[test]
fn session_late_output() {
    let mut o = op(session(10), 0);
    ev(&mut o, "a", 50, 1);
    o.advance_watermark(t(45));
    assert_eq!(
        ev(&mut o, "a", 30, 1),
        Admission::Late,
        "[30, 40) ended before W"
    );
    assert_eq!(
        ev(&mut o, "a", 41, 1),
        Admission::Accepted,
        "[41, 51) merges with [50, 60)"
    );
    o.advance_watermark(t(60));
    assert_eq!(drain(&mut o), vec![row("a", 41, 60, 2, 2, false)]);
    assert_eq!(o.stats().late_events, 1);
}

/// Duplicate message ids within a window are dropped and counted; the same id in another
/// window is a different event.
#[test]
fn duplicates_by_message_id_are_suppressed_within_a_window() {
    for assigner in [tumble(10), session(5)] {
        let mut o = op(assigner, 0);
        let id = Some(MessageId::of("m-1"));
        let vals = [Datum::Bool(true), Datum::Int(1)];
        assert_eq!(o.process("a", t(1), id, &vals), Admission::Accepted);
        assert_eq!(o.process("a", t(2), id, &vals), Admission::Duplicate);
        assert_eq!(
            o.process("a", t(3), Some(MessageId::of("m-2")), &vals),
            Admission::Accepted
        );
        assert_eq!(o.process("a", t(30), id, &vals), Admission::Accepted);
        o.advance_watermark(t(i64::MAX));
        let counts: Vec<Datum> = drain(&mut o).into_iter().map(|r| r.3).collect();
        assert_eq!(counts, vec![Datum::Int(2), Datum::Int(1)], "{assigner:?}");
        assert_eq!(o.stats().duplicates, 1);
    }
}

/// State stays bounded on an endless in-order stream and is empty after a flush.
#[test]
fn state_is_purged_as_the_watermark_passes() {
    let mut o = op(tumble(100), 50);
    let mut max_state = 0;
    for i in 0..10_000i64 {
        let key = format!("k{}", i % 7);
        ev(&mut o, &key, i * 3, 1);
        o.advance_watermark(t(i * 3 - 20));
        max_state = max_state.max(o.open_state());
        drain(&mut o);
    }
    // Per key: the open window plus at most one within lateness.
    assert!(max_state <= 7 * 3, "{max_state}");
    o.advance_watermark(t(i64::MAX));
    assert_eq!((o.open_state(), o.keys()), (0, 0));
    assert_eq!(o.timers(), 0);
}

/// An idle partition does not hold back the watermark, so windows of the active partition
/// still fire; the operator and tracker compose as the rules engine uses them.
#[test]
fn idle_partition_does_not_stall_windows() {
    let mut wm: WatermarkTracker<u8> = WatermarkTracker::new(WatermarkConfig {
        out_of_orderness: d(0),
        idle_timeout: Some(Duration::from_secs(5)),
    })
    .expect("valid");
    let mut o = op(tumble(10), 0);
    let sec = 1_000_000_000i64;
    // Partition 1 sends once and falls silent; partition 0 keeps sending.
    wm.observe(&1, t(2), t(0));
    ev(&mut o, "p1", 2, 1);
    for i in 0..10i64 {
        let now = t(i * sec);
        wm.observe(&0, t(i * 5), now);
        ev(&mut o, "p0", i * 5, 1);
        if let Some(w) = wm.advance(now) {
            o.advance_watermark(w);
        }
    }
    // Until second 5 partition 1 held the watermark at 2; after that it is idle.
    let fired: Vec<(String, i64)> = drain(&mut o).into_iter().map(|r| (r.0, r.1)).collect();
    assert!(fired.contains(&("p1".into(), 0)), "{fired:?}");
    assert!(fired.contains(&("p0".into(), 30)), "{fired:?}");
    assert_eq!(o.watermark(), Some(t(45)));
}

#[test]
fn invalid_configs_are_rejected() {
    assert!(
        WindowOperator::<String>::new(WindowConfig::new(tumble(0)), vec![AggSpec::Count]).is_err()
    );
    assert!(
        WindowOperator::<String>::new(
            WindowConfig::new(tumble(10)),
            vec![AggSpec::Distinct { precision: 30 }]
        )
        .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Model-based: the pane-based operator against a brute-force model that keeps one list of
// values per (key, window), for random hopping/tumbling windows, random event order,
// random watermark moves and random lateness.

/// One emission of the model or the operator: (count, sum, min, max, is_update).
type Emission = (i64, i64, i64, i64, bool);

#[derive(Default)]
struct BruteForce {
    windows: HashMap<(u8, i64), Vec<i64>>,
    emissions: HashMap<(u8, i64), Vec<Emission>>,
    late: Vec<(u8, i64)>,
    w: Option<i64>,
}

impl BruteForce {
    fn emit(&mut self, key: (u8, i64), update: bool) {
        let vals = &self.windows[&key];
        let e = (
            vals.len() as i64,
            vals.iter().sum(),
            *vals.iter().min().unwrap_or(&0),
            *vals.iter().max().unwrap_or(&0),
            update,
        );
        self.emissions.entry(key).or_default().push(e);
    }

    fn event(&mut self, size: i64, slide: i64, lateness: i64, key: u8, ts: i64, v: i64) {
        let mut accepted = false;
        let mut s = ts.div_euclid(slide) * slide;
        while s + size > ts {
            let end = s + size;
            if self.w.is_none_or(|w| w < end + lateness) {
                accepted = true;
                let list = self.windows.entry((key, s)).or_default();
                let had = !list.is_empty();
                list.push(v);
                if self.w.is_some_and(|w| w >= end) {
                    self.emit((key, s), had);
                }
            }
            s -= slide;
        }
        if !accepted {
            self.late.push((key, ts));
        }
    }

    fn advance(&mut self, size: i64, w: i64) {
        if self.w.is_some_and(|cur| cur >= w) {
            return;
        }
        let prev = self.w;
        self.w = Some(w);
        let mut due: Vec<(u8, i64)> = self
            .windows
            .keys()
            .filter(|(_, s)| s + size <= w && prev.is_none_or(|p| s + size > p))
            .copied()
            .collect();
        due.sort();
        for k in due {
            self.emit(k, false);
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Event(u8, i64, i64),
    Advance(i64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0u8..3, 0i64..300, -50i64..50).prop_map(|(k, t, v)| Step::Event(k, t, v)),
            1 => (0i64..400).prop_map(Step::Advance),
        ],
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hop_matches_brute_force(
        slide in 1i64..25,
        mult in 1i64..5,
        extra in 0i64..3,
        lateness in prop_oneof![Just(0i64), 0i64..60],
        steps in steps(),
    ) {
        // size = slide·mult (+ extra so that gcd(size, slide) < slide happens too).
        let size = slide * mult + if mult > 1 { extra } else { 0 };
        let mut o: WindowOperator<u8> = WindowOperator::new(
            WindowConfig::new(WindowAssigner::Hop { size: d(size as u64), slide: d(slide as u64) })
                .with_allowed_lateness(d(lateness as u64)),
            vec![AggSpec::Count, AggSpec::Sum, AggSpec::Min, AggSpec::Max],
        ).expect("valid");
        let mut model = BruteForce::default();
        let mut got: HashMap<(u8, i64), Vec<Emission>> = HashMap::new();
        let mut late = Vec::new();
        let mut collect = |o: &mut WindowOperator<u8>| {
            for r in o.drain_results() {
                let n = |d: &Datum| match d { Datum::Int(i) => *i, _ => i64::MIN };
                got.entry((r.key, r.window_start.as_nanos())).or_default().push((
                    n(&r.aggregates[0]), n(&r.aggregates[1]), n(&r.aggregates[2]),
                    n(&r.aggregates[3]), r.is_update,
                ));
            }
        };
        for step in steps.iter().chain([Step::Advance(10_000)].iter()) {
            match *step {
                Step::Event(k, ts, v) => {
                    model.event(size, slide, lateness, k, ts, v);
                    let vals = [Datum::Bool(true), Datum::Int(v), Datum::Int(v), Datum::Int(v)];
                    if o.process(&k, t(ts), None, &vals) == Admission::Late {
                        late.push((k, ts));
                    }
                }
                Step::Advance(w) => {
                    model.advance(size, w);
                    o.advance_watermark(t(w));
                }
            }
            collect(&mut o);
        }
        prop_assert_eq!(&got, &model.emissions);
        prop_assert_eq!(&late, &model.late);
        prop_assert_eq!(o.open_state(), 0);
    }

    /// With lateness beyond every gap in the input, the live sessions after a flush (latest
    /// result of every window not superseded) equal the sessions computed offline from all
    /// events, whatever the arrival order and watermark moves.
    #[test]
    fn sessions_match_offline_sessions(gap in 1i64..30, steps in steps()) {
        let mut o: WindowOperator<u8> = WindowOperator::new(
            WindowConfig::new(WindowAssigner::Session { gap: d(gap as u64) })
                .with_allowed_lateness(d(1_000_000)),
            vec![AggSpec::Count, AggSpec::Sum],
        ).expect("valid");
        let mut events: Vec<(u8, i64, i64)> = Vec::new();
        let mut live: HashMap<(u8, i64, i64), (Datum, Datum)> = HashMap::new();
        let collect = |o: &mut WindowOperator<u8>, live: &mut HashMap<_, _>| {
            for r in o.drain_results() {
                for s in &r.superseded {
                    live.remove(&(r.key, s.start.as_nanos(), s.end.as_nanos()));
                }
                live.insert(
                    (r.key, r.window_start.as_nanos(), r.window_end.as_nanos()),
                    (r.aggregates[0].clone(), r.aggregates[1].clone()),
                );
            }
        };
        for step in &steps {
            match *step {
                Step::Event(k, ts, v) => {
                    events.push((k, ts, v));
                    let adm = o.process(&k, t(ts), None, &[Datum::Bool(true), Datum::Int(v)]);
                    prop_assert_ne!(adm, Admission::Late);
                }
                Step::Advance(w) => o.advance_watermark(t(w)),
            }
            collect(&mut o, &mut live);
        }
        o.advance_watermark(t(i64::MAX));
        collect(&mut o, &mut live);
        // Offline: sort by (key, time) and cut where the next event is beyond the gap.
        events.sort();
        let mut expected: HashMap<(u8, i64, i64), (Datum, Datum)> = HashMap::new();
        let mut i = 0;
        while i < events.len() {
            let (k, start, _) = events[i];
            let (mut end, mut n, mut sum) = (start + gap, 0i64, 0i64);
            while i < events.len() && events[i].0 == k && events[i].1 <= end {
                end = end.max(events[i].1 + gap);
                n += 1;
                sum += events[i].2;
                i += 1;
            }
            expected.insert((k, start, end), (Datum::Int(n), Datum::Int(sum)));
        }
        prop_assert_eq!(live, expected);
        prop_assert_eq!(o.open_state(), 0);
    }
}
