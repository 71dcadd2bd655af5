//! Throughput of filter + tumbling-window aggregation over pre-decoded events.
//!
//! * `operator/tumble_count_mean`: a filter closure and the [`WindowOperator`] directly —
//!   1,000 device keys, 10 s tumbling windows, count and mean, the watermark advanced after
//!   every event (as the rules engine does).
//! * `rule/sql_tumble_count_avg`: the same through a compiled rule
//!   (`SELECT device_id(), count(*), avg(temp) ... WHERE temp > 0 GROUP BY device_id(),
//!   TUMBLE('10s')`) over already-decoded [`Message`]s: topic match, WHERE, key and argument
//!   evaluation from the JSON payload, watermark, operator, output rows.
//!
//! Criterion reports the throughput in elements (= events) per second.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferrite_core::{DeviceId, Timestamp, TopicName};
use ferrite_rules::Datum;
use ferrite_rules::agg::AggSpec;
use ferrite_rules::lang::{Message, Rule, RuleOptions};
use ferrite_rules::window::{WindowAssigner, WindowConfig, WindowOperator};

const KEYS: u32 = 1_000;
/// Event-time spacing: 10,000 events per second of event time over all keys.
const STEP_NS: i64 = 100_000;

fn events(n: usize) -> Vec<(u32, i64, f64)> {
    (0..n)
        .map(|i| {
            // Temperatures spread over [18, 38).
            let temp = 18.0 + ((i * 7919) % 200) as f64 / 10.0;
            ((i as u32) % KEYS, i as i64 * STEP_NS, temp)
        })
        .collect()
}

fn operator(c: &mut Criterion) {
    let evs = events(1_000_000);
    let mut g = c.benchmark_group("operator");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("tumble_count_mean", |b| {
        b.iter_batched(
            || {
                WindowOperator::<u32>::new(
                    WindowConfig::new(WindowAssigner::Tumble {
                        size: Duration::from_secs(10),
                    }),
                    vec![AggSpec::Count, AggSpec::Mean],
                )
                .expect("valid operator")
            },
            |mut op| {
                let mut fired = 0usize;
                let mut vals = [Datum::Bool(true), Datum::Null];
                for &(key, t, temp) in &evs {
                    if temp <= 18.5 {
                        continue; // the filter
                    }
                    vals[1] = Datum::Float(temp);
                    op.process(&key, Timestamp::from_nanos(t), None, &vals);
                    op.advance_watermark(Timestamp::from_nanos(t - 1_000_000_000));
                    fired += op.drain_results().count();
                }
                op.advance_watermark(Timestamp::from_nanos(i64::MAX));
                fired + op.drain_results().count()
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn rule(c: &mut Criterion) {
    let n = 200_000usize;
    let devices: Vec<(TopicName, DeviceId)> = (0..KEYS)
        .map(|k| {
            (
                TopicName::new(format!("devices/dev-{k}/telemetry")).expect("valid topic"),
                DeviceId::new(format!("dev-{k}")).expect("valid device id"),
            )
        })
        .collect();
    let msgs: Vec<Message> = events(n)
        .into_iter()
        .map(|(k, t, temp)| {
            let (topic, dev) = &devices[k as usize];
            let mut m = Message::new(
                topic.clone(),
                serde_json::json!({ "temp": temp - 19.0, "hum": 40 }),
                Timestamp::from_nanos(t),
            );
            m.device_id = Some(dev.clone());
            m
        })
        .collect();
    let sql = "SELECT device_id() AS device, count(*) AS n, avg(temp) AS mean \
               FROM 'devices/+/telemetry' WHERE temp > 0 \
               GROUP BY device_id(), TUMBLE('10s')";
    let mut g = c.benchmark_group("rule");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("sql_tumble_count_avg", |b| {
        b.iter_batched(
            || Rule::new(sql, RuleOptions::default()).expect("valid rule"),
            |mut rule| {
                let mut out = Vec::new();
                for m in &msgs {
                    rule.process(m, &mut out);
                    out.clear();
                }
                rule.flush(&mut out);
                out.len()
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, operator, rule);
criterion_main!(benches);
