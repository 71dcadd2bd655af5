//! Plausible sensor readings for one device: a daily temperature cycle with noise, humidity
//! moving against temperature, and a battery that drains slowly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The reading generator of one device; deterministic for a (seed, device) pair.
#[derive(Debug)]
pub struct Readings {
    rng: StdRng,
    /// Device-specific phase of the daily cycle and base levels.
    phase: f64,
    base_temp: f64,
    base_humidity: f64,
    battery: f64,
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
            rng,
        }
    }

    /// The next reading as a flat JSON object stamped `ts_us` (microseconds since the epoch,
    /// which Ferrite tells from seconds, milliseconds and nanoseconds by magnitude).
    pub fn next_json(&mut self, ts_us: i64) -> String {
        let day = (ts_us as f64 / 86_400_000_000.0) * std::f64::consts::TAU + self.phase;
        let noise: f64 = self.rng.random_range(-0.3..0.3);
        let temperature = self.base_temp + 3.0 * day.sin() + noise;
        let humidity = (self.base_humidity - 5.0 * day.sin() + self.rng.random_range(-1.0..1.0))
            .clamp(0.0, 100.0);
        self.battery = (self.battery - 0.001).max(0.0);
        format!(
            r#"{{"ts":{ts_us},"temperature":{temperature:.2},"humidity":{humidity:.1},"battery":{:.3}}}"#,
            self.battery
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_plausible() {
        let mut a = Readings::new(7, 3);
        let mut b = Readings::new(7, 3);
        for i in 0..100 {
            let ja = a.next_json(1_700_000_000_000_000 + i * 1_000_000);
            assert_eq!(ja, b.next_json(1_700_000_000_000_000 + i * 1_000_000));
            let v: serde_json::Value = serde_json::from_str(&ja).expect("valid JSON");
            let t = v["temperature"].as_f64().expect("number");
            let h = v["humidity"].as_f64().expect("number");
            let bat = v["battery"].as_f64().expect("number");
            assert!((14.0..28.0).contains(&t), "{t}");
            assert!((0.0..=100.0).contains(&h), "{h}");
            assert!((0.0..=100.0).contains(&bat), "{bat}");
        }
        assert_ne!(
            Readings::new(7, 4).next_json(0),
            Readings::new(7, 3).next_json(0)
        );
    }
}
