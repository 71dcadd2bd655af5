//! Plausible sensor readings for one device: temperature = the device's base level + a daily
//! cycle + a spatially correlated field shared by the fleet (devices close together read
//! alike, C(d) = σ²·exp(−d/r)) + ARMA(1,1) sensor noise; humidity moving against the
//! temperature with its own AR(1) noise; and a battery that drains slowly.

use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::models::{Arma, SpatialField};

/// The fleet's shared spatial field, stepped in time by the simulator.
pub type SharedField = Arc<RwLock<SpatialField>>;

/// The reading generator of one device; deterministic for a (seed, device) pair.
#[derive(Debug)]
pub struct Readings {
    rng: StdRng,
    /// Device-specific phase of the daily cycle and base levels.
    phase: f64,
    base_temp: f64,
    base_humidity: f64,
    battery: f64,
    temp_noise: Option<Arma>,
    humidity_noise: Option<Arma>,
    /// The shared field and this device's position in it (meters).
    field: Option<(SharedField, (f64, f64))>,
}

impl Readings {
    /// Generator for device number `device` under `seed`.
    pub fn new(seed: u64, device: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ device.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Self {
            phase: rng.random_range(0.0..std::f64::consts::TAU),
            base_temp: rng.random_range(18.0..24.0),
            base_humidity: rng.random_range(35.0..55.0),
            battery: rng.random_range(60.0..100.0),
            // Constant, stationary parameters: construction cannot fail; `ok()` keeps the
            // generator total anyway.
            temp_noise: Arma::new(vec![0.7], vec![0.2], 0.15).ok(),
            humidity_noise: Arma::new(vec![0.9], vec![], 0.3).ok(),
            field: None,
            rng,
        }
    }

    /// Add the fleet's spatial field, sampled at `position`.
    pub fn with_field(mut self, field: SharedField, position: (f64, f64)) -> Self {
        self.field = Some((field, position));
        self
    }

    /// The next reading as a flat JSON object stamped `ts_us` (microseconds since the epoch,
    /// which Ferrite tells from seconds, milliseconds and nanoseconds by magnitude).
    pub fn next_json(&mut self, ts_us: i64) -> String {
        let (temperature, humidity, battery) = self.next_values(ts_us);
        format!(
            r#"{{"ts":{ts_us},"temperature":{temperature:.2},"humidity":{humidity:.1},"battery":{battery:.3}}}"#
        )
    }

    /// Append the next reading as one line of line protocol (with the newline), table
    /// `telemetry` tagged `device_id`, stamped `ts_ns`: what the MQTT run stores, over HTTP.
    pub fn write_line_protocol(&mut self, device_id: &str, ts_ns: i64, out: &mut String) {
        let (temperature, humidity, battery) = self.next_values(ts_ns.div_euclid(1000));
        out.push_str(ferrite_core::DEFAULT_MEASUREMENT);
        out.push_str(",device_id=");
        crate::encode::escape_lp(out, device_id, b",= ");
        let _ = writeln!(
            out,
            " temperature={temperature:.2},humidity={humidity:.1},battery={battery:.3} {ts_ns}"
        );
    }

    /// (temperature, humidity, battery) at `ts_us`.
    fn next_values(&mut self, ts_us: i64) -> (f64, f64, f64) {
        let day = (ts_us as f64 / 86_400_000_000.0) * std::f64::consts::TAU + self.phase;
        let spatial = self.field.as_ref().map_or(0.0, |(f, (x, y))| {
            f.read()
                .unwrap_or_else(PoisonError::into_inner)
                .value_at(*x, *y)
        });
        let noise = self
            .temp_noise
            .as_mut()
            .map_or(0.0, |a| a.next(&mut self.rng));
        let temperature = self.base_temp + 3.0 * day.sin() + spatial + noise;
        let h_noise = self
            .humidity_noise
            .as_mut()
            .map_or(0.0, |a| a.next(&mut self.rng));
        let humidity =
            (self.base_humidity - 2.0 * (temperature - self.base_temp) + h_noise).clamp(0.0, 100.0);
        self.battery = (self.battery - 0.001).max(0.0);
        (temperature, humidity, self.battery)
    }
}

/// Positions of `n` devices on a square grid `spacing_m` apart.
pub fn grid_positions(n: usize, spacing_m: f64) -> Vec<(f64, f64)> {
    let side = (n as f64).sqrt().ceil().max(1.0) as usize;
    (0..n)
        .map(|i| ((i % side) as f64 * spacing_m, (i / side) as f64 * spacing_m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: &str, key: &str) -> f64 {
        let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        v[key].as_f64().expect("number")
    }

    #[test]
    fn deterministic_and_plausible() {
        let mut a = Readings::new(7, 3);
        let mut b = Readings::new(7, 3);
        for i in 0..100 {
            let ja = a.next_json(1_700_000_000_000_000 + i * 1_000_000);
            assert_eq!(ja, b.next_json(1_700_000_000_000_000 + i * 1_000_000));
            let t = field_of(&ja, "temperature");
            assert!((12.0..30.0).contains(&t), "{t}");
            assert!((0.0..=100.0).contains(&field_of(&ja, "humidity")));
            assert!((0.0..=100.0).contains(&field_of(&ja, "battery")));
        }
        assert_ne!(
            Readings::new(7, 4).next_json(0),
            Readings::new(7, 3).next_json(0)
        );
    }

    #[test]
    fn line_protocol_carries_the_same_reading_as_json() {
        let (mut a, mut b) = (Readings::new(7, 3), Readings::new(7, 3));
        let ts_ns = 1_700_000_000_123_456_789;
        let json = a.next_json(ts_ns / 1000);
        let mut lp = String::new();
        b.write_line_protocol("sim-3", ts_ns, &mut lp);
        assert!(
            lp.starts_with("telemetry,device_id=sim-3 temperature="),
            "{lp}"
        );
        assert!(lp.ends_with(" 1700000000123456789\n"), "{lp}");
        let points = ferrite_core::decode::decode_line_protocol(
            &lp,
            ferrite_core::decode::Precision::Nanoseconds,
            ferrite_core::Timestamp::from_nanos(0),
            &[],
        )
        .expect("valid line protocol");
        let p = &points[0];
        assert_eq!(p.time.as_nanos(), ts_ns);
        for key in ["temperature", "humidity", "battery"] {
            assert_eq!(
                p.fields[key],
                ferrite_core::Value::F64(field_of(&json, key)),
                "{key}"
            );
        }
    }

    #[test]
    fn neighbours_share_the_spatial_field_and_distant_devices_do_not() {
        // Two devices 1 m apart and one 5 km away, in a field of range 100 m; the field is
        // redrawn (ρ = 0) between readings so each reading sees an independent draw.
        let positions = vec![(0.0, 0.0), (1.0, 0.0), (5000.0, 0.0)];
        let mut rng = StdRng::seed_from_u64(11);
        let field = Arc::new(RwLock::new(
            SpatialField::new(&positions, 2.0, 100.0, 256, &mut rng).expect("valid"),
        ));
        let offset = |r: &mut Readings| {
            field_of(&r.next_json(0), "temperature") - r.base_temp - 3.0 * r.phase.sin()
        };
        let mut near = [
            Readings::new(1, 0).with_field(Arc::clone(&field), positions[0]),
            Readings::new(1, 1).with_field(Arc::clone(&field), positions[1]),
        ];
        let mut far = Readings::new(1, 2).with_field(Arc::clone(&field), positions[2]);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..2000 {
            a.push(offset(&mut near[0]));
            b.push(offset(&mut near[1]));
            c.push(offset(&mut far));
            field
                .write()
                .expect("not poisoned")
                .step(0.0, &mut rng)
                .expect("valid rho");
        }
        let corr = |x: &[f64], y: &[f64]| {
            let n = x.len() as f64;
            let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
            let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
            let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
            cov / (vx * vy).sqrt()
        };
        // exp(−1/100) ≈ 0.99 for the field; sensor noise (σ ≈ 0.2 vs field σ = 2) lowers it a little.
        assert!(corr(&a, &b) > 0.9, "near: {}", corr(&a, &b));
        assert!(corr(&a, &c).abs() < 0.1, "far: {}", corr(&a, &c));
    }

    #[test]
    fn grid_is_square_and_spaced() {
        let p = grid_positions(10, 25.0);
        assert_eq!(p.len(), 10);
        assert_eq!(p[0], (0.0, 0.0));
        // ceil(sqrt(10)) = 4 per row.
        assert_eq!(p[3], (75.0, 0.0));
        assert_eq!(p[4], (0.0, 25.0));
        assert_eq!(p[9], (25.0, 50.0));
    }
}
