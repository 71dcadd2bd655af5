//! Tests of file mode: byte-identical output for a seed, the TSBS schema, every format read
//! back, and every fault visible both in the ground truth and in the data.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferrite_core::decode::{Precision, decode_line_protocol};
use ferrite_core::{Point, Value};

use super::*;
use crate::faults::FaultKind;

const FROM: i64 = 1_700_006_400_000_000_000; // 2023-11-15T00:00:00Z
const MINUTE: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MINUTE;

fn config(devices: usize, hours: i64, every: Duration, format: OutputFormat) -> FileConfig {
    FileConfig {
        devices,
        from: Timestamp::from_nanos(FROM),
        to: Timestamp::from_nanos(FROM + hours * HOUR),
        cadence: Cadence::Interval(every),
        format,
        seed: 42,
        prefix: None,
        faults: true,
    }
}

/// Data and ground truth of a run.
fn generate(scenario: &Scenario, config: &FileConfig) -> (String, Vec<TruthRecord>, FileReport) {
    let mut data = Vec::new();
    let mut truth = Vec::new();
    let report = generate_file(
        scenario,
        config,
        &mut data,
        Some(&mut truth),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .unwrap();
    let records = String::from_utf8(truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (String::from_utf8(data).unwrap(), records, report)
}

fn parse_lp(data: &str) -> Vec<Point> {
    decode_line_protocol(data, Precision::Nanoseconds, Timestamp::from_nanos(0), &[]).unwrap()
}

fn scenario(text: &str) -> Scenario {
    Scenario::from_toml(text, "test").unwrap()
}

/// One measurement, a constant field `flat` (100 unless a fault moves it), an ARMA field
/// `wavy` and a bool, plus the given `[faults]` lines.
fn faulty(faults: &str) -> Scenario {
    scenario(&format!(
        r#"
name = "faulty"
[devices]
id_prefix = "d"
[[measurements]]
name = "m"
fields = [
    {{ name = "flat", mean = 100.0, decimals = 3 }},
    {{ name = "wavy", sd = 1.0, ar = [0.5], decimals = 3 }},
    {{ name = "on", type = "bool", mean = 1.0 }},
]
[faults]
{faults}
"#
    ))
}

fn device_of(p: &Point) -> &str {
    &p.tags["device_id"]
}

fn float(p: &Point, field: &str) -> f64 {
    match &p.fields[field] {
        Value::F64(v) => *v,
        other => panic!("{field} is {other:?}"),
    }
}

fn in_window(p: &Point, r: &TruthRecord) -> bool {
    device_of(p) == r.device && (r.start_ns..=r.end_ns).contains(&p.time.as_nanos())
}

#[test]
fn the_same_seed_writes_byte_identical_files_in_every_format() {
    let s = Scenario::builtin("smart_building").unwrap();
    for format in [
        OutputFormat::LineProtocol,
        OutputFormat::Ndjson,
        OutputFormat::Csv,
    ] {
        let c = config(30, 6, Duration::from_secs(60), format);
        let (a, ta, ra) = generate(&s, &c);
        let (b, tb, rb) = generate(&s, &c);
        assert_eq!(a, b, "{format}");
        assert_eq!(ta, tb, "{format}");
        assert_eq!(ra.rows, rb.rows);
        assert_eq!(ra.bytes as usize, a.len());
        let (other, _, _) = generate(&s, &FileConfig { seed: 43, ..c });
        assert_ne!(a, other, "{format}: another seed, other data");
    }
}

#[test]
fn fleet_trucks_writes_exactly_the_tsbs_iot_schema() {
    let s = Scenario::builtin("fleet_trucks").unwrap();
    let c = FileConfig {
        faults: false,
        ..config(20, 2, Duration::from_secs(10), OutputFormat::LineProtocol)
    };
    let (data, truth, report) = generate(&s, &c);
    assert!(truth.is_empty());
    let points = parse_lp(&data);
    assert_eq!(points.len(), 20 * 720 * 2);
    assert_eq!(report.measurements["readings"], 20 * 720);
    assert_eq!(report.measurements["diagnostics"], 20 * 720);
    let tags = [
        "device_version",
        "driver",
        "fleet",
        "fuel_capacity",
        "load_capacity",
        "model",
        "name",
        "nominal_fuel_consumption",
    ];
    let readings = [
        "elevation",
        "fuel_consumption",
        "grade",
        "heading",
        "latitude",
        "longitude",
        "velocity",
    ];
    let diagnostics = ["current_load", "fuel_state", "status"];
    for p in &points {
        assert_eq!(p.tags.keys().map(String::as_str).collect::<Vec<_>>(), tags);
        let fields: Vec<&str> = p.fields.keys().map(String::as_str).collect();
        match p.measurement.as_str() {
            "readings" => {
                assert_eq!(fields, readings);
                assert!(p.fields.values().all(|v| matches!(v, Value::F64(_))));
                let lat = float(p, "latitude");
                assert!((-90.0..=90.0).contains(&lat));
                assert!((0.0..=100.0).contains(&float(p, "velocity")));
            }
            "diagnostics" => {
                assert_eq!(fields, diagnostics);
                assert!(matches!(p.fields["status"], Value::I64(0..=5)));
                assert!((0.0..=1.0).contains(&float(p, "fuel_state")));
                assert!((0.0..=5000.0).contains(&float(p, "current_load")));
            }
            other => panic!("unexpected measurement {other}"),
        }
        assert_eq!((p.time.as_nanos() - FROM) % 10_000_000_000, 0, "aligned");
    }
    // TSBS lines look like TSBS lines.
    let first = data.lines().next().unwrap();
    assert!(first.starts_with("readings,name=truck_0,fleet="), "{first}");
}

#[test]
fn every_builtin_writes_line_protocol_ndjson_and_csv_that_read_back() {
    for name in crate::BUILTIN_NAMES {
        let s = Scenario::builtin(name).unwrap();
        let c = config(12, 3, Duration::from_secs(120), OutputFormat::LineProtocol);
        let (lp, _, report) = generate(&s, &c);
        let points = parse_lp(&lp);
        assert_eq!(points.len() as u64, report.rows, "{name}");
        assert!(report.rows > 0);
        assert!(
            points.iter().all(|p| p.tags.len() == s.tag_names().len()),
            "{name}: every tag on every row"
        );

        let (nd, _, _) = generate(
            &s,
            &FileConfig {
                format: OutputFormat::Ndjson,
                ..c.clone()
            },
        );
        let objects: Vec<serde_json::Value> = nd
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(objects.len(), points.len(), "{name}");
        for (o, p) in objects.iter().zip(&points) {
            assert_eq!(o["ts"].as_i64(), Some(p.time.as_nanos()));
            assert_eq!(o["measurement"], p.measurement.as_str());
            assert_eq!(o["fields"].as_object().unwrap().len(), p.fields.len());
            assert_eq!(o["tags"].as_object().unwrap().len(), p.tags.len());
        }

        let (csv, _, _) = generate(
            &s,
            &FileConfig {
                format: OutputFormat::Csv,
                ..c.clone()
            },
        );
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(&header[..2], ["time", "measurement"]);
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), points.len(), "{name}");
        for (row, p) in rows.iter().zip(&points) {
            // Built-in tag values hold no commas, so splitting is exact.
            let cells: Vec<&str> = row.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{name}: {row}");
            assert_eq!(cells[0], p.time.as_nanos().to_string());
            let filled = cells[2 + p.tags.len()..].iter().filter(|c| !c.is_empty());
            assert_eq!(filled.count(), p.fields.len());
        }
    }
}

#[test]
fn a_stuck_sensor_repeats_one_value_through_its_window() {
    let s = faulty(r#"stuck = { per_day = 24.0, duration_mean = "20m" }"#);
    let (data, truth, report) = generate(
        &s,
        &config(10, 24, Duration::from_secs(60), OutputFormat::LineProtocol),
    );
    let points = parse_lp(&data);
    let stuck: Vec<_> = truth
        .iter()
        .filter(|r| r.kind == FaultKind::Stuck)
        .collect();
    assert_eq!(stuck.len() as u64, report.faults[&FaultKind::Stuck]);
    assert!(stuck.len() > 100, "{} episodes", stuck.len());
    let mut long_wavy = 0;
    for r in &stuck {
        let field = r.field.as_deref().unwrap();
        let values: Vec<&Value> = points
            .iter()
            .filter(|p| in_window(p, r))
            .map(|p| &p.fields[field])
            .collect();
        assert!(!values.is_empty(), "a recorded episode has a reading");
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "{field} stuck in {r:?}: {values:?}"
        );
        if field == "wavy" && values.len() >= 5 {
            long_wavy += 1;
        }
    }
    assert!(long_wavy > 5, "the noisy field is seen stuck ({long_wavy})");
}

#[test]
fn level_shifts_spikes_and_noise_bursts_move_exactly_the_recorded_readings() {
    let c = config(10, 24, Duration::from_secs(60), OutputFormat::LineProtocol);
    // Level shifts: `flat` is 100 + offset inside a window and 100 outside every window.
    let s = faulty(r#"level_shift = { per_day = 12.0, duration_mean = "30m", magnitude = 3.0 }"#);
    let (data, truth, _) = generate(&s, &c);
    let points = parse_lp(&data);
    let shifts: Vec<_> = truth
        .iter()
        .filter(|r| r.field.as_deref() == Some("flat"))
        .collect();
    assert!(shifts.len() > 20);
    for p in &points {
        let expected = shifts
            .iter()
            .find(|r| in_window(p, r))
            .map_or(100.0, |r| 100.0 + r.detail.offset.unwrap());
        assert!((float(p, "flat") - expected).abs() < 1e-9, "{p:?}");
    }
    assert!(shifts.iter().all(|r| r.detail.offset.unwrap().abs() == 3.0));

    // Spikes: exactly the recorded readings are off, by the recorded offset.
    let s = faulty("spike = { probability = 0.01, magnitude = 5.0 }");
    let (data, truth, report) = generate(&s, &c);
    let points = parse_lp(&data);
    let spikes: HashMap<(String, i64), f64> = truth
        .iter()
        .filter(|r| r.field.as_deref() == Some("flat"))
        .map(|r| ((r.device.clone(), r.start_ns), r.detail.offset.unwrap()))
        .collect();
    assert!(spikes.len() > 50, "{}", spikes.len());
    assert_eq!(
        report.faults[&FaultKind::Spike],
        truth.len() as u64,
        "spikes hit flat and wavy"
    );
    for p in &points {
        let key = (device_of(p).to_owned(), p.time.as_nanos());
        let expected = 100.0 + spikes.get(&key).copied().unwrap_or(0.0);
        assert!((float(p, "flat") - expected).abs() < 1e-9, "{p:?}");
    }

    // Noise bursts: `flat` moves inside the windows only.
    let s = faulty(r#"noise_burst = { per_day = 12.0, duration_mean = "30m", factor = 2.0 }"#);
    let (data, truth, _) = generate(&s, &c);
    let points = parse_lp(&data);
    let bursts: Vec<_> = truth
        .iter()
        .filter(|r| r.field.as_deref() == Some("flat"))
        .collect();
    assert!(bursts.len() > 20);
    let (mut inside, mut moved) = (0, 0);
    for p in &points {
        if bursts.iter().any(|r| in_window(p, r)) {
            inside += 1;
            moved += usize::from(float(p, "flat") != 100.0);
        } else {
            assert_eq!(float(p, "flat"), 100.0, "{p:?}");
        }
    }
    assert!(
        inside > 100 && moved as f64 > 0.99 * inside as f64,
        "{moved}/{inside}"
    );
}

#[test]
fn offline_devices_write_nothing_in_their_windows() {
    let s = faulty(r#"offline = { per_day = 12.0, duration_mean = "40m", abrupt = 0.5 }"#);
    let (data, truth, report) = generate(
        &s,
        &config(10, 24, Duration::from_secs(60), OutputFormat::LineProtocol),
    );
    let points = parse_lp(&data);
    assert!(truth.len() > 50);
    assert!(truth.iter().all(|r| r.kind == FaultKind::Offline));
    assert!(
        points
            .iter()
            .all(|p| !truth.iter().any(|r| in_window(p, r)))
    );
    let offline_minutes: i64 = truth.iter().map(|r| (r.end_ns - r.start_ns) / MINUTE).sum();
    assert!(
        (report.rows as i64 - (10 * 1440 - offline_minutes)).abs() <= truth.len() as i64 + 10,
        "rows {} vs {} minutes online",
        report.rows,
        10 * 1440 - offline_minutes
    );
}

#[test]
fn duplicates_repeat_a_reading_with_its_timestamp() {
    let s = faulty(r#"duplicate = { probability = 0.02, retry_after = "90s" }"#);
    let (data, truth, report) = generate(
        &s,
        &config(10, 24, Duration::from_secs(60), OutputFormat::LineProtocol),
    );
    let points = parse_lp(&data);
    assert!(truth.len() > 100);
    assert_eq!(report.rows, 10 * 1440 + truth.len() as u64);
    let mut by_key: BTreeMap<(String, i64), Vec<usize>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        by_key
            .entry((device_of(p).to_owned(), p.time.as_nanos()))
            .or_default()
            .push(i);
    }
    for r in &truth {
        let rows = &by_key[&(r.device.clone(), r.start_ns)];
        assert_eq!(rows.len(), 2, "{r:?}");
        assert_eq!(points[rows[0]], points[rows[1]], "identical copies");
        // The retry comes 90 s later: after the device's next reading, if there is one.
        if r.start_ns < FROM + 24 * HOUR - 2 * MINUTE {
            assert!(
                points[rows[0] + 1..rows[1]]
                    .iter()
                    .any(|p| device_of(p) == r.device && p.time.as_nanos() > r.start_ns)
            );
        }
    }
    assert_eq!(
        by_key.values().filter(|v| v.len() == 2).count(),
        truth.len(),
        "no other repeated timestamps"
    );
}

#[test]
fn delayed_readings_arrive_after_newer_ones() {
    let s = faulty(r#"delay = { probability = 0.02, distribution = "exponential", mean = "5m" }"#);
    let (data, truth, _) = generate(
        &s,
        &config(10, 24, Duration::from_secs(60), OutputFormat::LineProtocol),
    );
    let points = parse_lp(&data);
    assert!(truth.len() > 100);
    let position: HashMap<(String, i64), usize> = points
        .iter()
        .enumerate()
        .map(|(i, p)| ((device_of(p).to_owned(), p.time.as_nanos()), i))
        .collect();
    let mut late = 0;
    for r in &truth {
        let at = position[&(r.device.clone(), r.start_ns)];
        let delay = r.detail.delay_ns.unwrap();
        assert_eq!(r.detail.arrival_ns.unwrap() - r.start_ns, delay);
        let newer_before = points[..at]
            .iter()
            .any(|p| device_of(p) == r.device && p.time.as_nanos() > r.start_ns);
        // A delay shorter than the interval keeps the order; a longer one usually puts the
        // reading behind the device's next one (unless that one is delayed too).
        if delay <= MINUTE {
            assert!(!newer_before, "{r:?}");
        }
        late += usize::from(newer_before);
    }
    assert!(late > 50, "{late} readings out of order");
    // Readings are written in arrival order: the event times of each device are sorted
    // except for the delayed ones.
    let delayed: std::collections::HashSet<(String, i64)> = truth
        .iter()
        .map(|r| (r.device.clone(), r.start_ns))
        .collect();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for p in &points {
        let key = (device_of(p).to_owned(), p.time.as_nanos());
        if !delayed.contains(&key) {
            let prev = last.insert(device_of(p), p.time.as_nanos());
            assert!(prev.is_none_or(|t| t < p.time.as_nanos()));
        }
    }
}

#[test]
fn skewed_clocks_stamp_readings_off_by_skew_and_drift() {
    let s = faulty(r#"clock = { probability = 0.5, skew_sd = "5s", drift_ppm_sd = 20.0 }"#);
    let every = 60 * 1_000_000_000_i64;
    let (data, truth, _) = generate(
        &s,
        &config(20, 24, Duration::from_secs(60), OutputFormat::LineProtocol),
    );
    let points = parse_lp(&data);
    assert!(
        (4..=16).contains(&truth.len()),
        "{} skewed of 20",
        truth.len()
    );
    let clocks: HashMap<&str, &TruthRecord> =
        truth.iter().map(|r| (r.device.as_str(), r)).collect();
    for p in &points {
        let ts = p.time.as_nanos();
        let tick = FROM + ((ts - FROM) as f64 / every as f64).round() as i64 * every;
        match clocks.get(device_of(p)) {
            None => assert_eq!(ts, tick),
            Some(r) => {
                let expected = tick
                    + r.detail.skew_ns.unwrap()
                    + (r.detail.drift_ppm.unwrap() * 1e-6 * (tick - FROM) as f64) as i64;
                assert!((ts - expected).abs() <= 1, "{ts} vs {expected}");
            }
        }
    }
    for r in &truth {
        assert_eq!(r.start_ns, FROM + r.detail.skew_ns.unwrap());
    }
}

#[test]
fn builtin_faults_all_show_and_the_truth_matches_the_report() {
    let s = Scenario::builtin("smart_building").unwrap();
    let (_, truth, report) = generate(
        &s,
        &config(
            200,
            24,
            Duration::from_secs(300),
            OutputFormat::LineProtocol,
        ),
    );
    let mut counts = FaultCounts::new();
    count(&truth, &mut counts);
    assert_eq!(counts, report.faults);
    for kind in FaultKind::ALL {
        assert!(counts.get(&kind).copied().unwrap_or(0) > 0, "no {kind}");
    }
    assert!(report.complete);
}

#[test]
fn the_rate_cadence_writes_the_requested_mean_rate() {
    let s = Scenario::builtin("factory_vibration").unwrap();
    let c = FileConfig {
        cadence: Cadence::Rate(1.0),
        faults: false,
        ..config(25, 24, Duration::ZERO, OutputFormat::LineProtocol)
    };
    let (data, _, report) = generate(&s, &c);
    // 1/s on average over a week; this Wednesday is below the mean (the weekly harmonic
    // peaks on Mondays), by what λ(t) integrates to: 86 400 × ≈0.85, ± 4√n.
    let rate = s.device_rate(25, 1.0).unwrap();
    let from_s = FROM as f64 / 1e9;
    let expected = rate.expected_count(from_s, from_s + 86_400.0) * 25.0;
    assert!(expected < 0.9 * 86_400.0, "{expected}");
    assert!(
        (report.rows as f64 - expected).abs() < 4.0 * expected.sqrt(),
        "{} rows vs {expected}",
        report.rows
    );
    assert_eq!(report.rate, Some(1.0));
    let points = parse_lp(&data);
    assert!(
        points
            .iter()
            .all(|p| (FROM..FROM + 24 * HOUR).contains(&p.time.as_nanos()))
    );
}

#[test]
fn the_stream_keeps_memory_per_device_and_emits_in_arrival_order() {
    let s = Scenario::builtin("city_air_quality").unwrap();
    let fleet = Fleet::new(
        &s,
        FleetConfig {
            devices: 200,
            seed: 9,
            prefix: None,
            start_ns: FROM,
            end_ns: Some(FROM + 6 * HOUR),
            cadence: Cadence::Interval(Duration::from_secs(60)),
            faults: true,
        },
    )
    .unwrap();
    let mut stream = FleetStream::new(fleet);
    let (mut rows, mut max_buffered, mut last) = (0u64, 0usize, i64::MIN);
    while let Some(item) = stream.next() {
        assert!(item.send_at_ns >= last, "arrival order");
        last = item.send_at_ns;
        rows += 1;
        max_buffered = max_buffered.max(stream.buffered());
        let _ = stream.take_truth();
    }
    assert!(rows > 200 * 300, "{rows}");
    // One pending reading per device plus the few delayed ones in flight.
    assert!(max_buffered < 2 * 200, "{max_buffered} buffered");
}

#[test]
fn paths_cancellation_and_bad_configs() {
    let s = Scenario::builtin("smart_building").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, truth) = (dir.path().join("d.lp"), dir.path().join("t.ndjson"));
    let c = config(20, 4, Duration::from_secs(60), OutputFormat::LineProtocol);
    let progress = Progress::default();
    let report = generate_to_path(
        &s,
        &c,
        &out,
        Some(&truth),
        &progress,
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(report.out.as_deref(), Some(out.as_path()));
    assert_eq!(report.truth.as_deref(), Some(truth.as_path()));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), report.bytes);
    assert_eq!(progress.sent.load(Ordering::Relaxed), report.rows);
    let truth_lines = std::fs::read_to_string(&truth).unwrap().lines().count() as u64;
    assert_eq!(truth_lines, report.faults.values().sum::<u64>());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["format"], "lp");
    assert_eq!(json["scenario"], "smart_building");

    let cancel = CancellationToken::new();
    cancel.cancel();
    let report = generate_file(
        &s,
        &config(50, 24, Duration::from_secs(10), OutputFormat::Csv),
        std::io::sink(),
        None,
        &Progress::default(),
        &cancel,
    )
    .unwrap();
    assert!(!report.complete);
    assert_eq!(report.rows, 4096);

    let bad = |c: FileConfig| {
        matches!(
            generate_file(
                &s,
                &c,
                std::io::sink(),
                None,
                &Progress::default(),
                &CancellationToken::new()
            ),
            Err(SimError::Config(_))
        )
    };
    let good = config(1, 1, Duration::from_secs(1), OutputFormat::Csv);
    assert!(bad(FileConfig {
        to: good.from,
        ..good.clone()
    }));
    assert!(bad(FileConfig {
        cadence: Cadence::Interval(Duration::ZERO),
        ..good.clone()
    }));
    assert!(bad(FileConfig {
        cadence: Cadence::Rate(0.0),
        ..good.clone()
    }));
    assert!(bad(FileConfig {
        cadence: Cadence::Manual,
        ..good.clone()
    }));
    assert!(bad(FileConfig { devices: 0, ..good }));
}

#[test]
fn batches_for_http_are_line_protocol_in_arrival_order() {
    let s = Scenario::builtin("fleet_trucks").unwrap();
    let fleet = Fleet::new(
        &s,
        FleetConfig {
            devices: 10,
            seed: 3,
            prefix: None,
            start_ns: FROM,
            end_ns: Some(FROM + 10 * MINUTE),
            cadence: Cadence::Interval(Duration::from_secs(10)),
            faults: false,
        },
    )
    .unwrap();
    let mut stream = FleetStream::new(fleet);
    let mut total = 0;
    loop {
        let mut batch = String::new();
        let n = stream
            .next_batch(500, OutputFormat::LineProtocol, &mut batch)
            .unwrap();
        if n == 0 {
            break;
        }
        assert_eq!(parse_lp(&batch).len(), n);
        total += n;
    }
    assert_eq!(total, 10 * 60 * 2);
    assert!(
        stream
            .next_batch(1, OutputFormat::Csv, &mut String::new())
            .is_err()
    );
}

/// A thousand devices of the TSBS schema with faults, streamed to nowhere: what the stream
/// holds stays bounded by the number of devices, not by the span (the same bound holds for a
/// whole day; 20 minutes keep the debug test quick).
#[test]
fn a_thousand_devices_stream_in_bounded_memory() {
    let s = Scenario::builtin("fleet_trucks").unwrap();
    let fleet = Fleet::new(
        &s,
        FleetConfig {
            devices: 1000,
            seed: 1,
            prefix: None,
            start_ns: FROM,
            end_ns: Some(FROM + 20 * MINUTE),
            cadence: Cadence::Interval(Duration::from_secs(10)),
            faults: true,
        },
    )
    .unwrap();
    let mut stream = FleetStream::new(fleet);
    let (mut rows, mut max_buffered) = (0u64, 0usize);
    let mut line = String::new();
    while let Some(item) = stream.next() {
        line.clear();
        if let Some(d) = stream.device(item.reading.device) {
            d.write_line_protocol(&item.reading, &mut line);
        }
        rows += 1;
        if rows % 1024 == 0 {
            max_buffered = max_buffered.max(stream.buffered());
            let _ = stream.take_truth();
        }
    }
    // 1 000 devices × 120 ticks × 2 measurements, less offline periods, plus duplicates.
    assert!(rows > 200_000, "{rows}");
    assert!(max_buffered < 4 * 1000, "{max_buffered}");
}

#[test]
fn a_bad_span_is_refused_before_any_file_is_created() {
    let dir = std::env::temp_dir().join(format!("ferrite-sim-span-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("data.lp");
    let truth = dir.join("truth.ndjson");
    let s = Scenario::builtin("smart_building").unwrap();
    let mut c = config(2, 1, Duration::from_secs(60), OutputFormat::LineProtocol);
    std::mem::swap(&mut c.from, &mut c.to);
    let err = generate_to_path(
        &s,
        &c,
        &out,
        Some(&truth),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert!(matches!(err, SimError::Config(_)), "{err}");
    assert!(!out.exists() && !truth.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
