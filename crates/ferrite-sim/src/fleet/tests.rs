//! Tests of the fleet generator: determinism, tags, and the statistics of what the scenario
//! models produce once wired into devices (ARMA autocorrelation, cross-device correlation
//! against distance, the fleet's mean rate and its daily profile).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::models::rate::DAY_S;

const T0: i64 = 1_700_006_400_000_000_000; // 2023-11-15T00:00:00Z, a Wednesday.

fn fleet(text: &str, devices: usize, cadence: Cadence, end: Option<i64>) -> Fleet {
    let s = Scenario::from_toml(text, "test").unwrap();
    Fleet::new(
        &s,
        FleetConfig {
            devices,
            seed: 7,
            prefix: None,
            start_ns: T0,
            end_ns: end,
            cadence,
            faults: true,
        },
    )
    .unwrap()
}

/// All readings of one device, tick by tick.
fn run(sim: &mut DeviceSim) -> (Vec<Outgoing>, Vec<TruthRecord>) {
    let (mut out, mut truth) = (Vec::new(), Vec::new());
    while let Some(t) = sim.next_tick_time() {
        sim.tick(t, &mut out, &mut truth);
    }
    (out, truth)
}

fn f64s(out: &[Outgoing], field: usize) -> Vec<f64> {
    out.iter()
        .map(|o| match o.reading.values[field] {
            Value::F64(v) => v,
            Value::I64(v) => v as f64,
            Value::Bool(b) => f64::from(u8::from(b)),
            _ => f64::NAN,
        })
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn minutes(n: i64) -> i64 {
    n * 60_000_000_000
}

#[test]
fn the_same_seed_gives_the_same_device_and_another_seed_does_not() {
    let s = Scenario::builtin("smart_building").unwrap();
    let build = |seed| {
        Fleet::new(
            &s,
            FleetConfig {
                devices: 50,
                seed,
                prefix: None,
                start_ns: T0,
                end_ns: Some(T0 + minutes(600)),
                cadence: Cadence::Interval(Duration::from_secs(60)),
                faults: true,
            },
        )
        .unwrap()
    };
    let (a, b, c) = (build(3), build(3), build(4));
    for i in [0, 17, 49] {
        let (ra, ta) = run(&mut a.device(i));
        let (rb, tb) = run(&mut b.device(i));
        let (rc, _) = run(&mut c.device(i));
        assert_eq!(ra, rb);
        assert_eq!(ta, tb);
        assert_ne!(ra, rc);
        assert_eq!(
            a.device(i).tags().collect::<Vec<_>>(),
            b.device(i).tags().collect::<Vec<_>>()
        );
    }
    // A device does not depend on the others: the same index in a bigger fleet (same grid
    // side, so the same position) reads the same.
    let bigger = Fleet::new(
        &s,
        FleetConfig {
            devices: 60,
            ..a.config().clone()
        },
    )
    .unwrap();
    assert_eq!(run(&mut a.device(17)).0, run(&mut bigger.device(17)).0);
}

#[test]
fn truck_tags_are_tsbs_tags_with_tsbs_values() {
    let f = Fleet::new(
        &Scenario::builtin("fleet_trucks").unwrap(),
        FleetConfig {
            devices: 200,
            seed: 1,
            prefix: None,
            start_ns: T0,
            end_ns: None,
            cadence: Cadence::Manual,
            faults: false,
        },
    )
    .unwrap();
    assert_eq!(
        f.tag_names(),
        [
            "name",
            "fleet",
            "driver",
            "model",
            "device_version",
            "load_capacity",
            "fuel_capacity",
            "nominal_fuel_consumption"
        ]
    );
    let models = [
        ("F-150", "2000", "200", "15"),
        ("G-2000", "5000", "300", "19"),
        ("H-2", "1500", "150", "12"),
    ];
    let mut seen_models = std::collections::HashSet::new();
    for i in 0..200 {
        let d = f.device(i);
        let tags: std::collections::HashMap<&str, &str> = d.tags().collect();
        assert_eq!(tags["name"], format!("truck_{i}"));
        assert!(["East", "West", "North", "South"].contains(&tags["fleet"]));
        assert!(["Derek", "Rodney", "Albert", "Andy", "Seth", "Trish"].contains(&tags["driver"]));
        assert!(["v1.0", "v1.5", "v2.0", "v2.3"].contains(&tags["device_version"]));
        let row = (
            tags["model"],
            tags["load_capacity"],
            tags["fuel_capacity"],
            tags["nominal_fuel_consumption"],
        );
        assert!(models.contains(&row), "{row:?} is one TSBS model");
        seen_models.insert(row.0.to_owned());
    }
    assert_eq!(seen_models.len(), 3, "every model is drawn");
    assert_eq!(f.measurement_name(0), "readings");
    assert_eq!(
        f.field_names(0).collect::<Vec<_>>(),
        [
            "latitude",
            "longitude",
            "elevation",
            "velocity",
            "heading",
            "grade",
            "fuel_consumption"
        ]
    );
    assert_eq!(f.measurement_name(1), "diagnostics");
    assert_eq!(
        f.field_names(1).collect::<Vec<_>>(),
        ["fuel_state", "current_load", "status"]
    );
}

#[test]
fn templates_ranges_and_weights_generate_tags() {
    let f = fleet(
        r#"
name = "t"
[devices]
tags = [
    { name = "building", template = "b{block:10}" },
    { name = "floor", range = [1, 3] },
    { name = "kind", choices = ["rare", "common"], weights = [1.0, 9.0] },
]
[[measurements]]
name = "m"
fields = [{ name = "x" }]
"#,
        1000,
        Cadence::Manual,
        None,
    );
    let mut common = 0;
    let mut floors = std::collections::BTreeSet::new();
    for i in 0..1000 {
        let d = f.device(i);
        let tags: Vec<(&str, &str)> = d.tags().collect();
        assert_eq!(tags[0], ("device_id", format!("dev-{i}").as_str()));
        assert_eq!(tags[1], ("building", format!("b{}", i / 10).as_str()));
        floors.insert(tags[2].1.to_owned());
        common += usize::from(tags[3].1 == "common");
    }
    assert_eq!(floors.into_iter().collect::<Vec<_>>(), ["1", "2", "3"]);
    // Binomial(1000, 0.9): sd ≈ 9.5.
    assert!((common as f64 - 900.0).abs() < 40.0, "{common}");
}

#[test]
fn a_field_has_the_configured_autocorrelation_mean_and_spread() {
    // ARMA(1,1) around 10 with stationary sd 2: ρ₁ = (1 + αβ)(α + β)/(1 + 2αβ + β²).
    let (alpha, beta) = (0.7, 0.3);
    let f = fleet(
        r#"
name = "arma"
[[measurements]]
name = "m"
fields = [{ name = "x", mean = 10.0, sd = 2.0, ar = [0.7], ma = [0.3] }]
"#,
        1,
        Cadence::Interval(Duration::from_secs(1)),
        Some(T0 + 100_000 * 1_000_000_000),
    );
    let (out, _) = run(&mut f.device(0));
    let xs = f64s(&out, 0);
    assert_eq!(xs.len(), 100_000);
    let rho1 = (1.0 + alpha * beta) * (alpha + beta) / (1.0 + 2.0 * alpha * beta + beta * beta);
    let r1 = correlation(&xs[..xs.len() - 1], &xs[1..]);
    let r2 = correlation(&xs[..xs.len() - 2], &xs[2..]);
    // Standard errors ≈ 0.003 (lag 1) to 0.006 (lag 2).
    assert!((r1 - rho1).abs() < 0.02, "lag 1: {r1} vs {rho1}");
    assert!(
        (r2 - alpha * rho1).abs() < 0.03,
        "lag 2: {r2} vs {}",
        alpha * rho1
    );
    let m = mean(&xs);
    let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
    assert!((m - 10.0).abs() < 0.1, "mean {m}");
    assert!((sd - 2.0).abs() < 0.08, "sd {sd}");
}

#[test]
fn cross_device_correlation_falls_off_as_exp_minus_distance_over_range() {
    // Nine devices on a 3×3 grid 50 m apart in a field of range 50 m, redrawn independently
    // each reading (a step per second, correlation time 1 ms): over 3 000 readings the
    // correlation of two devices is the field's C(d)/σ² = exp(−d/r).
    let f = fleet(
        r#"
name = "spatial"
[devices]
spacing_m = 50.0
[[measurements]]
name = "m"
fields = [{ name = "x", spatial_sd = 3.0, spatial_range_m = 50.0, spatial_step = "1s", spatial_time_scale = "1ms", spatial_features = 512 }]
"#,
        9,
        Cadence::Interval(Duration::from_secs(1)),
        Some(T0 + 3_000 * 1_000_000_000),
    );
    let series: Vec<Vec<f64>> = (0..9).map(|i| f64s(&run(&mut f.device(i)).0, 0)).collect();
    for (a, b, d) in [
        (0, 1, 50.0),
        (0, 2, 100.0),
        (0, 4, 50.0 * 2f64.sqrt()),
        (0, 8, 100.0 * 2f64.sqrt()),
        (3, 5, 100.0),
        (1, 7, 100.0),
    ] {
        let r = correlation(&series[a], &series[b]);
        let expected = (-d / 50.0_f64).exp();
        // Sampling error ≈ (1 − ρ²)/√3000 ≤ 0.02, kernel error ≈ 0.01–0.02.
        assert!(
            (r - expected).abs() < 0.07,
            "devices {a}, {b} at {d:.0} m: {r} vs {expected}"
        );
    }
    let v = series[4].iter().map(|x| x * x).sum::<f64>() / series[4].len() as f64;
    assert!((v / 9.0 - 1.0).abs() < 0.1, "variance {v}");
}

#[test]
fn the_fleet_rate_is_the_requested_mean_and_follows_the_daily_cycle() {
    // 40 devices at 2 readings/s in total (two measurements: 1 tick/s over the fleet), over
    // 4 days; λ(t) = 1 + 0.6·cos(2π(t − 15h)/1d).
    let days = 4;
    let f = fleet(
        r#"
name = "rate"
[arrival]
base = 1.0
harmonics = [{ amplitude = 0.6, period = "1d", peak = "15h" }]
[[measurements]]
name = "a"
fields = [{ name = "x" }]
[[measurements]]
name = "b"
fields = [{ name = "y" }]
"#,
        40,
        Cadence::Rate(2.0),
        Some(T0 + days * 86_400_000_000_000),
    );
    let rate = f.device_rate().unwrap().clone();
    let mut per_hour = [0u64; 24];
    let mut total = 0u64;
    for i in 0..40 {
        let mut d = f.device(i);
        while let Some(t) = d.next_tick_time() {
            assert!(t >= T0);
            per_hour[((t - T0) / 3_600_000_000_000 % 24) as usize] += 1;
            total += 1;
        }
    }
    // Expected ticks: 1/s × 4 days = 345 600 ± 588 (Poisson); readings = 2 × ticks.
    let expected =
        rate.expected_count(T0 as f64 / 1e9, T0 as f64 / 1e9 + days as f64 * DAY_S) * 40.0;
    assert!((expected - 345_600.0).abs() < 1.0, "{expected}");
    assert!(
        (total as f64 - expected).abs() < 4.0 * expected.sqrt(),
        "{total} ticks vs {expected}"
    );
    for (h, &n) in per_hour.iter().enumerate() {
        let mut e = 0.0;
        for day in 0..days {
            let from = T0 as f64 / 1e9 + day as f64 * DAY_S + h as f64 * 3600.0;
            e += rate.expected_count(from, from + 3600.0) * 40.0;
        }
        assert!(
            (n as f64 - e).abs() < 4.0 * e.sqrt(),
            "hour {h}: {n} ticks vs {e:.0}"
        );
    }
    let peak = (0..24).max_by_key(|&h| per_hour[h]).unwrap();
    assert!((14..=15).contains(&peak), "peak at {peak}h");
}

#[test]
fn an_offline_period_starts_once_and_writes_nothing_until_it_ends() {
    let f = fleet(
        r#"
name = "off"
[[measurements]]
name = "m"
fields = [{ name = "x" }]
[faults]
offline = { per_day = 48.0, duration_mean = "20m", abrupt = 0.5, will = false }
"#,
        1,
        Cadence::Interval(Duration::from_secs(60)),
        Some(T0 + 2 * 86_400_000_000_000),
    );
    let mut d = f.device(0);
    let (mut out, mut truth) = (Vec::new(), Vec::new());
    let mut starts = 0;
    let mut current: Option<i64> = None;
    let mut offline_ticks = 0;
    while let Some(t) = d.next_tick_time() {
        let before = out.len();
        match d.tick(t, &mut out, &mut truth) {
            Tick::Offline {
                until_ns,
                starts: s,
                ..
            } => {
                offline_ticks += 1;
                assert_eq!(out.len(), before, "nothing written while offline");
                assert!(t <= until_ns);
                if s {
                    starts += 1;
                    current = Some(until_ns);
                } else {
                    assert_eq!(current, Some(until_ns), "the same period goes on");
                }
            }
            Tick::Online => assert_eq!(out.len(), before + 1),
        }
    }
    let records: Vec<_> = truth
        .iter()
        .filter(|r| r.kind == FaultKind::Offline)
        .collect();
    assert_eq!(records.len(), starts);
    // Periods start at 48 a day of time online and last 20 min on average: a cycle of
    // ≈ 50 min, so ≈ 57 periods in two days (a few too short to contain a tick), ≈ 1 150
    // of 2 880 minutes offline.
    assert!((35..80).contains(&starts), "{starts} periods");
    assert!(
        (800..1800).contains(&offline_ticks),
        "{offline_ticks} ticks"
    );
    assert!(records.iter().all(|r| r.detail.will == Some(false)));
    assert!(records.iter().any(|r| r.detail.abrupt == Some(true)));
    assert!(records.iter().any(|r| r.detail.abrupt == Some(false)));
}

#[test]
fn faults_are_off_when_the_fleet_is_clean() {
    let s = Scenario::builtin("city_air_quality").unwrap();
    let f = Fleet::new(
        &s,
        FleetConfig {
            devices: 20,
            seed: 1,
            prefix: Some("x".into()),
            start_ns: T0,
            end_ns: Some(T0 + 86_400_000_000_000),
            cadence: Cadence::Interval(Duration::from_secs(600)),
            faults: false,
        },
    )
    .unwrap();
    for i in 0..20 {
        let mut d = f.device(i);
        assert_eq!(d.id(), format!("x{i}"));
        let (out, truth) = run(&mut d);
        assert!(truth.is_empty());
        assert_eq!(out.len(), 144);
        assert!(
            out.iter()
                .all(|o| !o.duplicate && o.send_at_ns <= o.reading.time_ns)
        );
    }
}

#[test]
fn a_spatial_track_replays_any_kept_step_the_same() {
    let track = SpatialTrack::new(
        1.0,
        10.0,
        32,
        Duration::from_secs(1),
        Duration::from_secs(10),
        0,
        5,
    )
    .unwrap();
    let later = track.value(50, 3.0, 4.0);
    let early = track.value(3, 3.0, 4.0);
    assert_eq!(track.value(50, 3.0, 4.0), later);
    assert_eq!(track.value(3, 3.0, 4.0), early);
    assert_ne!(early, later);
    assert_eq!(track.step_of(2_500_000_000), 2);
    assert_eq!(track.step_of(-5), 0);
    let again = SpatialTrack::new(
        1.0,
        10.0,
        32,
        Duration::from_secs(1),
        Duration::from_secs(10),
        0,
        5,
    )
    .unwrap();
    assert_eq!(
        again.value(3, 3.0, 4.0),
        early,
        "the order of requests does not matter"
    );
}
