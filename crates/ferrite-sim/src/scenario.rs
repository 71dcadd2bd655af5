//! Scenarios: what a simulated fleet measures, how its values move, when it sends and how it
//! misbehaves, written as a TOML file.
//!
//! Four scenarios are built in ([`Scenario::builtin`], names in [`BUILTIN_NAMES`]), embedded
//! from `src/scenarios/*.toml`, which double as commented examples of the format:
//! `smart_building`, `fleet_trucks` (the TSBS `iot` use case's schema), `factory_vibration`
//! and `city_air_quality`. [`Scenario::load`] takes a built-in name or a path.
//!
//! # Format (version 1)
//!
//! ```toml
//! name = "smart_building"             # required
//! description = "…"
//!
//! [devices]
//! id_prefix = "room-"                 # device ids are {id_prefix}{index}      [dev-]
//! id_tag = "device_id"                # tag carrying the id in file output    [device_id]
//! spacing_m = 8.0                     # devices stand on a square grid        [25]
//! tag_order = ["device_id", "building"] # optional: output order of all tags
//! [[devices.tags]]                    # one value per device, drawn from the seed:
//! name = "zone"
//! choices = ["north", "south"]        #   uniformly (or by `weights`)
//! # range = [1, 12]                   #   an integer, uniformly, inclusive
//! # template = "b{block:100}"         #   from the index: {index}, {block:N} = index/N, {mod:N}
//! # names = ["model", "capacity"]     #   several tags chosen together: one of the `rows`
//! # rows = [["F-150", "2000"], ["H-2", "1500"]]
//!
//! [arrival]                           # λ(t) = base + Σ amplitude·cos(2π(t − peak)/period) + ε
//! base = 1.0                          # relative: scaled so the fleet's mean rate is --rate
//! noise_sd = 0.02
//! harmonics = [{ amplitude = 0.3, period = "1d", peak = "13h" }]   # peak: offset from the
//!                                     # Unix epoch (UTC midnight, a Thursday) modulo period
//!
//! [[measurements]]                    # a table; one reading per measurement per device tick
//! name = "room"
//! [[measurements.fields]]
//! name = "temperature"
//! type = "float"                      # float | integer | bool                [float]
//! mean = 21.5                         # the fleet's mean level
//! device_sd = 1.0                     # sd of each device's own offset from the mean
//! sd = 0.3                            # stationary sd of the ARMA part (not the innovations)
//! ar = [0.8]                          # ARMA(p, q) coefficients; stepped once per reading
//! ma = [0.2]
//! cycles = [{ amplitude = 1.5, period = "1d", peak = "15h" }]
//! spatial_sd = 0.8                    # shared field, C(d) = spatial_sd²·exp(−d/spatial_range_m)
//! spatial_range_m = 30.0
//! spatial_time_scale = "1h"           # the field's correlation time          [1h]
//! spatial_step = "5m"                 # the field is redrawn (AR(1)) this often [5m]
//! min = 10.0                          # values are clamped to [min, max]
//! max = 35.0
//! decimals = 2                        # floats: digits kept                    [all]
//! threshold = 0.5                     # bool: true when the latent value ≥ threshold
//!
//! [faults]                            # every table optional; absent = never
//! offline = { per_day = 0.5, duration_mean = "10m", abrupt = 0.5, will = true }
//! duplicate = { probability = 0.001, retry_after = "2s" }
//! delay = { probability = 0.002, distribution = "exponential", mean = "30s", sigma = 1.0 }
//! clock = { probability = 0.05, skew_sd = "2s", drift_ppm_sd = 20.0 }
//! stuck = { per_day = 0.2, duration_mean = "30m" }
//! noise_burst = { per_day = 0.2, duration_mean = "5m", factor = 3.0 }
//! spike = { probability = 0.0005, magnitude = 6.0 }
//! level_shift = { per_day = 0.05, duration_mean = "6h", magnitude = 3.0 }
//! ```
//!
//! A field's value at true time t is
//! `mean + device offset + Σ cycles(t) + spatial field(position, t) + ARMA`, clamped to
//! [min, max], then anomalies, then rounded (`decimals`, integers) or thresholded (bool).
//! Fault semantics (what each does to the data and what the ground truth records) are in
//! [`crate::faults`]. Episodes of one kind (offline, stuck, noise_burst, level_shift) never
//! overlap on one device: they start at `per_day` per device per day of time *outside* an
//! episode of that kind, with exponential durations of mean `duration_mean`, so over a long
//! run a device spends `per_day·mean / (1 + per_day·mean)` of its time in them (mean in days).
//! `probability` faults are drawn per reading (spike: per numeric field per reading; clock:
//! per device). Anomaly magnitudes are in units of the field's *scale*,
//! √(sd² + spatial_sd² + Σ amplitude²/2), its typical spread within one device.
//!
//! Every problem of a file is reported at once ([`ScenarioError::Invalid`]); unknown keys are
//! errors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::models::{Arma, ArrivalRate, Harmonic};

/// The built-in scenarios' names, in [`Scenario::builtin`]'s order.
pub const BUILTIN_NAMES: [&str; 4] = [
    "smart_building",
    "fleet_trucks",
    "factory_vibration",
    "city_air_quality",
];

/// The built-in scenario files, embedded at compile time.
const BUILTIN_FILES: [(&str, &str); 4] = [
    (
        "smart_building",
        include_str!("scenarios/smart_building.toml"),
    ),
    ("fleet_trucks", include_str!("scenarios/fleet_trucks.toml")),
    (
        "factory_vibration",
        include_str!("scenarios/factory_vibration.toml"),
    ),
    (
        "city_air_quality",
        include_str!("scenarios/city_air_quality.toml"),
    ),
];

/// A whole scenario; see the [module docs](self) for the format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, reported back in reports.
    pub name: String,
    /// What the scenario models.
    #[serde(default)]
    pub description: String,
    /// Device ids, positions and tags.
    #[serde(default)]
    pub devices: DeviceSpec,
    /// The shape λ(t) of each device's sending rate.
    #[serde(default)]
    pub arrival: ArrivalSpec,
    /// The tables each device writes one reading of per tick.
    pub measurements: Vec<MeasurementSpec>,
    /// How often each fault happens.
    #[serde(default)]
    pub faults: FaultSpec,
}

/// The fleet's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Device ids are `{id_prefix}{index}`.
    #[serde(default = "default_id_prefix")]
    pub id_prefix: String,
    /// The tag that carries the device id in file output and line protocol.
    #[serde(default = "default_id_tag")]
    pub id_tag: String,
    /// Devices stand on a square grid this far apart (meters), for spatial fields.
    #[serde(default = "default_spacing")]
    pub spacing_m: f64,
    /// Tag generators, applied in order.
    #[serde(default)]
    pub tags: Vec<TagSpec>,
    /// Output order of every tag (the id tag included); empty: the id tag, then the
    /// generators' tags in order.
    #[serde(default)]
    pub tag_order: Vec<String>,
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self {
            id_prefix: default_id_prefix(),
            id_tag: default_id_tag(),
            spacing_m: default_spacing(),
            tags: Vec::new(),
            tag_order: Vec::new(),
        }
    }
}

fn default_id_prefix() -> String {
    "dev-".to_owned()
}

fn default_id_tag() -> String {
    ferrite_core::DEVICE_ID_TAG.to_owned()
}

fn default_spacing() -> f64 {
    25.0
}

/// A generator of one tag (`name` with `choices`, `range` or `template`) or of several tags
/// chosen together (`names` with `rows`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    /// The tag, for a single-tag generator.
    pub name: Option<String>,
    /// The tags, for a `rows` generator.
    #[serde(default)]
    pub names: Vec<String>,
    /// Values to choose from.
    #[serde(default)]
    pub choices: Vec<String>,
    /// Tuples of values to choose from (one value per name).
    #[serde(default)]
    pub rows: Vec<Vec<String>>,
    /// Relative weights of the choices or rows; empty: uniform.
    #[serde(default)]
    pub weights: Vec<f64>,
    /// An inclusive integer range to draw from.
    pub range: Option<[i64; 2]>,
    /// A value computed from the device index: `{index}`, `{block:N}` (index / N),
    /// `{mod:N}` (index % N).
    pub template: Option<String>,
}

/// The relative arrival rate λ(t); see [`crate::models::rate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalSpec {
    /// λ₀ (relative; > 0).
    #[serde(default = "one")]
    pub base: f64,
    /// σ of ε(t), relative to the same unit as `base`.
    #[serde(default)]
    pub noise_sd: f64,
    /// The periodic components.
    #[serde(default)]
    pub harmonics: Vec<CycleSpec>,
}

impl Default for ArrivalSpec {
    fn default() -> Self {
        Self {
            base: 1.0,
            noise_sd: 0.0,
            harmonics: Vec::new(),
        }
    }
}

fn one() -> f64 {
    1.0
}

/// One periodic component `amplitude·cos(2π(t − peak)/period)`, t in Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CycleSpec {
    /// Height of the peak above the mean.
    pub amplitude: f64,
    /// Length of one cycle, e.g. `"1d"`.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Where in the cycle the peak is, from the Unix epoch modulo `period` (`"13h"` with a
    /// daily period is 13:00 UTC; the epoch was a Thursday).
    #[serde(default, with = "humantime_serde")]
    pub peak: Duration,
}

impl CycleSpec {
    /// As a [`Harmonic`] of the arrival-rate model, amplitudes multiplied by `scale`.
    pub fn harmonic(&self, scale: f64) -> Harmonic {
        let period = self.period.as_secs_f64();
        Harmonic {
            amplitude: self.amplitude * scale,
            frequency_hz: 1.0 / period,
            phase: -std::f64::consts::TAU * (self.peak.as_secs_f64() % period) / period,
        }
    }

    /// The component's value at Unix time `t_s` (seconds).
    pub fn at(&self, t_s: f64) -> f64 {
        let period = self.period.as_secs_f64();
        let phase = (t_s - self.peak.as_secs_f64()).rem_euclid(period) / period;
        self.amplitude * (std::f64::consts::TAU * phase).cos()
    }
}

/// One table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementSpec {
    /// The table name (a valid [`ferrite_core::Measurement`]).
    pub name: String,
    /// Its fields, in output order.
    pub fields: Vec<FieldSpec>,
}

/// The type of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// 64-bit float.
    #[default]
    Float,
    /// 64-bit integer (the rounded value).
    Integer,
    /// Boolean (the latent value compared with `threshold`).
    Bool,
}

/// One field and its value model; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The field (column) name.
    pub name: String,
    /// Its type.
    #[serde(default, rename = "type")]
    pub kind: FieldKind,
    /// The fleet's mean level.
    #[serde(default)]
    pub mean: f64,
    /// Standard deviation of each device's constant offset from `mean`.
    #[serde(default)]
    pub device_sd: f64,
    /// Stationary standard deviation of the ARMA component.
    #[serde(default)]
    pub sd: f64,
    /// AR coefficients α₁…αₚ (stationary).
    #[serde(default)]
    pub ar: Vec<f64>,
    /// MA coefficients β₁…β_q.
    #[serde(default)]
    pub ma: Vec<f64>,
    /// Periodic components (daily, weekly, …).
    #[serde(default)]
    pub cycles: Vec<CycleSpec>,
    /// Standard deviation of the fleet-wide spatial field; 0 for none.
    #[serde(default)]
    pub spatial_sd: f64,
    /// Range r of the spatial covariance σ²·exp(−d/r), meters.
    #[serde(default = "default_spatial_range")]
    pub spatial_range_m: f64,
    /// Correlation time τ of the spatial field: ρ = exp(−step/τ) per step.
    #[serde(default = "default_time_scale", with = "humantime_serde")]
    pub spatial_time_scale: Duration,
    /// How often the spatial field moves.
    #[serde(default = "default_spatial_step", with = "humantime_serde")]
    pub spatial_step: Duration,
    /// Random Fourier features of the spatial field.
    #[serde(default = "default_features")]
    pub spatial_features: usize,
    /// Lower clamp.
    pub min: Option<f64>,
    /// Upper clamp.
    pub max: Option<f64>,
    /// Digits kept after the decimal point (floats).
    pub decimals: Option<u8>,
    /// Bool fields: true when the latent value ≥ threshold.
    #[serde(default = "half")]
    pub threshold: f64,
}

fn default_spatial_range() -> f64 {
    100.0
}

fn default_time_scale() -> Duration {
    Duration::from_secs(3600)
}

fn default_spatial_step() -> Duration {
    Duration::from_secs(300)
}

fn default_features() -> usize {
    128
}

fn half() -> f64 {
    0.5
}

impl FieldSpec {
    /// The field's typical spread within one device, the unit of anomaly magnitudes:
    /// √(sd² + spatial_sd² + Σ amplitude²/2), or 1 if that is 0.
    pub fn scale(&self) -> f64 {
        let s = (self.sd * self.sd
            + self.spatial_sd * self.spatial_sd
            + self
                .cycles
                .iter()
                .map(|c| c.amplitude * c.amplitude / 2.0)
                .sum::<f64>())
        .sqrt();
        if s > 0.0 { s } else { 1.0 }
    }

    /// The ARMA model of the field (mean 0), its innovations scaled so its stationary standard
    /// deviation is `sd`.
    pub fn arma(&self) -> Result<Arma, crate::models::ModelError> {
        let unit = Arma::new(self.ar.clone(), self.ma.clone(), 1.0)?;
        let sigma = if self.sd > 0.0 {
            self.sd / unit.variance().sqrt()
        } else {
            0.0
        };
        Arma::new(self.ar.clone(), self.ma.clone(), sigma)
    }
}

/// How often each fault happens; every kind is optional (absent: never).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The device goes away for a while.
    pub offline: Option<OfflineSpec>,
    /// A reading is sent again (same timestamp and values).
    pub duplicate: Option<DuplicateSpec>,
    /// A reading is held back by the network and arrives late.
    pub delay: Option<DelaySpec>,
    /// A device's clock is off and drifts.
    pub clock: Option<ClockSpec>,
    /// A sensor repeats one value.
    pub stuck: Option<EpisodeSpec>,
    /// A sensor gets noisy for a while.
    pub noise_burst: Option<NoiseBurstSpec>,
    /// Single readings far off.
    pub spike: Option<SpikeSpec>,
    /// A sensor's level jumps for a while.
    pub level_shift: Option<LevelShiftSpec>,
}

/// Offline periods: a Poisson number per device per day, exponential durations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineSpec {
    /// Expected periods per device per day.
    pub per_day: f64,
    /// Mean length of a period.
    #[serde(with = "humantime_serde")]
    pub duration_mean: Duration,
    /// Share of periods that end the connection abruptly (no DISCONNECT: the broker publishes
    /// the will); the rest disconnect cleanly.
    #[serde(default = "half")]
    pub abrupt: f64,
    /// Whether devices connect with a will (`devices/{id}/status`, retained).
    #[serde(default = "yes")]
    pub will: bool,
}

fn yes() -> bool {
    true
}

/// Duplicate sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuplicateSpec {
    /// Probability that a reading is sent twice.
    pub probability: f64,
    /// How long after the original the retry goes out.
    #[serde(default, with = "humantime_serde")]
    pub retry_after: Duration,
}

/// The distribution of network delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DelayDistribution {
    /// Exponential with the given mean.
    #[default]
    Exponential,
    /// Log-normal with the given mean and log-sd `sigma`: a heavy tail.
    Lognormal,
    /// Uniform on [0, 2·mean].
    Uniform,
}

/// Delayed (late, out-of-order) readings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    /// Probability that a reading is delayed.
    pub probability: f64,
    /// The delay's distribution.
    #[serde(default)]
    pub distribution: DelayDistribution,
    /// The mean delay.
    #[serde(with = "humantime_serde")]
    pub mean: Duration,
    /// Log-normal only: σ of the delay's logarithm.
    #[serde(default = "one")]
    pub sigma: f64,
}

/// Clock skew and drift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    /// Share of devices whose clock is off.
    pub probability: f64,
    /// Standard deviation of the offset at the start.
    #[serde(with = "humantime_serde")]
    pub skew_sd: Duration,
    /// Standard deviation of the drift, parts per million.
    #[serde(default)]
    pub drift_ppm_sd: f64,
}

/// Episodes: a Poisson number per device per day, exponential durations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeSpec {
    /// Expected episodes per device per day.
    pub per_day: f64,
    /// Mean length of an episode.
    #[serde(with = "humantime_serde")]
    pub duration_mean: Duration,
}

/// Noise bursts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseBurstSpec {
    /// Expected bursts per device per day.
    pub per_day: f64,
    /// Mean length of a burst.
    #[serde(with = "humantime_serde")]
    pub duration_mean: Duration,
    /// sd of the added noise, in units of the field's scale.
    #[serde(default = "default_burst_factor")]
    pub factor: f64,
}

fn default_burst_factor() -> f64 {
    3.0
}

/// Spikes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeSpec {
    /// Probability per numeric field per reading.
    pub probability: f64,
    /// Size, in units of the field's scale (sign random).
    #[serde(default = "default_spike")]
    pub magnitude: f64,
}

fn default_spike() -> f64 {
    6.0
}

/// Level shifts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelShiftSpec {
    /// Expected shifts per device per day.
    pub per_day: f64,
    /// Mean length of a shift.
    #[serde(with = "humantime_serde")]
    pub duration_mean: Duration,
    /// Size, in units of the field's scale (sign random).
    #[serde(default = "default_shift")]
    pub magnitude: f64,
}

fn default_shift() -> f64 {
    3.0
}

/// Why a scenario could not be loaded. Always the caller's input; never retryable.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither a built-in name nor an existing file.
    #[error("unknown scenario {name:?}: not a built-in ({}) nor an existing file", BUILTIN_NAMES.join(", "))]
    Unknown {
        /// What was asked for.
        name: String,
    },
    /// The file could not be read.
    #[error("reading scenario {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML for a scenario.
    #[error("scenario {origin}: {source}")]
    Parse {
        /// The file or built-in name.
        origin: String,
        /// The parser's error (with line and column).
        source: Box<toml::de::Error>,
    },
    /// Parsed, but some values are out of their domain; every problem is listed.
    #[error("scenario {name:?} is invalid:\n  {}", problems.join("\n  "))]
    Invalid {
        /// The scenario's name.
        name: String,
        /// One line per problem, naming the key.
        problems: Vec<String>,
    },
}

impl ferrite_core::Classify for ScenarioError {
    fn kind(&self) -> ferrite_core::ErrorKind {
        match self {
            ScenarioError::Unknown { .. } => ferrite_core::ErrorKind::NotFound,
            _ => ferrite_core::ErrorKind::InvalidInput,
        }
    }
}

impl Scenario {
    /// Parse and validate a scenario; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_owned(),
            source: Box::new(e),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// A built-in scenario by name (see [`BUILTIN_NAMES`]).
    pub fn builtin(name: &str) -> Result<Self, ScenarioError> {
        let text = Self::builtin_toml(name).ok_or_else(|| ScenarioError::Unknown {
            name: name.to_owned(),
        })?;
        Self::from_toml(text, name)
    }

    /// The TOML text of a built-in scenario, to print or start a custom one from.
    pub fn builtin_toml(name: &str) -> Option<&'static str> {
        BUILTIN_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| *text)
    }

    /// A built-in name, or else the path of a scenario file.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if Self::builtin_toml(name_or_path).is_some() {
            return Self::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ScenarioError::Unknown {
                name: name_or_path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Every tag key of a device, in output order (the id tag included).
    pub fn tag_names(&self) -> Vec<String> {
        if !self.devices.tag_order.is_empty() {
            return self.devices.tag_order.clone();
        }
        let mut names = vec![self.devices.id_tag.clone()];
        for spec in &self.devices.tags {
            names.extend(spec.name.iter().cloned());
            names.extend(spec.names.iter().cloned());
        }
        names
    }

    /// Readings (rows) a device writes per tick: one per measurement.
    pub fn readings_per_tick(&self) -> usize {
        self.measurements.len()
    }

    /// The arrival rate of one device such that `devices` devices write `readings_per_s`
    /// readings per second on average: λ(t) scaled by readings_per_s / (devices · λ₀ ·
    /// readings per tick). (The mean of the cosines over whole periods is 0; noise that
    /// would push λ below 0 is clamped, which raises the mean slightly near zero.)
    pub fn device_rate(
        &self,
        devices: usize,
        readings_per_s: f64,
    ) -> Result<ArrivalRate, crate::models::ModelError> {
        let denominator =
            devices.max(1) as f64 * self.arrival.base * self.readings_per_tick().max(1) as f64;
        let scale = if denominator > 0.0 {
            readings_per_s / denominator
        } else {
            0.0
        };
        ArrivalRate::new(
            self.arrival.base * scale,
            self.arrival
                .harmonics
                .iter()
                .map(|h| h.harmonic(scale))
                .collect(),
            self.arrival.noise_sd * scale,
        )
    }

    /// Check every value; all problems are reported together.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut p = Problems::default();
        if self.name.trim().is_empty() {
            p.add("name", "must not be empty");
        }
        self.validate_devices(&mut p);
        let arrival = &self.arrival;
        if !(arrival.base.is_finite() && arrival.base > 0.0) {
            p.add("arrival.base", "must be a finite rate > 0");
        }
        for (i, h) in arrival.harmonics.iter().enumerate() {
            validate_cycle(&mut p, &format!("arrival.harmonics[{i}]"), h);
        }
        if ArrivalRate::new(
            arrival.base.max(0.0),
            arrival.harmonics.iter().map(|h| h.harmonic(1.0)).collect(),
            arrival.noise_sd,
        )
        .is_err()
        {
            p.add(
                "arrival",
                "base, harmonics and noise_sd must be finite, ≥ 0",
            );
        }
        let tags: HashSet<String> = self.tag_names().into_iter().collect();
        if self.measurements.is_empty() {
            p.add("measurements", "at least one measurement is needed");
        }
        let mut names = HashSet::new();
        for (i, m) in self.measurements.iter().enumerate() {
            let at = format!("measurements[{i}] ({})", m.name);
            if let Err(e) = ferrite_core::Measurement::new(m.name.clone()) {
                p.add(&at, &e.to_string());
            }
            if !names.insert(m.name.clone()) {
                p.add(&at, "duplicate measurement name");
            }
            if m.fields.is_empty() {
                p.add(&at, "at least one field is needed");
            }
            let mut fields = HashSet::new();
            for (j, f) in m.fields.iter().enumerate() {
                let at = format!("{at}.fields[{j}] ({})", f.name);
                if !fields.insert(f.name.clone()) {
                    p.add(&at, "duplicate field name");
                }
                if tags.contains(&f.name) {
                    p.add(&at, "a tag has the same name");
                }
                validate_field(&mut p, &at, f);
            }
        }
        self.validate_faults(&mut p);
        p.finish(&self.name)
    }

    fn validate_devices(&self, p: &mut Problems) {
        let d = &self.devices;
        if let Err(e) = ferrite_core::DeviceId::new(format!("{}0", d.id_prefix)) {
            p.add("devices.id_prefix", &e.to_string());
        }
        if !(d.spacing_m.is_finite() && d.spacing_m > 0.0) {
            p.add("devices.spacing_m", "must be a finite distance > 0");
        }
        let mut seen = HashSet::new();
        let mut check_name = |p: &mut Problems, at: &str, name: &str| {
            if name.is_empty() || name == ferrite_core::TIME_COLUMN || name == "measurement" {
                p.add(
                    at,
                    "tag names must be non-empty and not `time` or `measurement`",
                );
            }
            if name.chars().any(char::is_control) {
                p.add(at, "tag names must not contain control characters");
            }
            if !seen.insert(name.to_owned()) {
                p.add(at, &format!("tag {name:?} is generated twice"));
            }
        };
        check_name(p, "devices.id_tag", &d.id_tag);
        for (i, t) in d.tags.iter().enumerate() {
            let at = format!("devices.tags[{i}]");
            let kinds = usize::from(!t.choices.is_empty())
                + usize::from(!t.rows.is_empty())
                + usize::from(t.range.is_some())
                + usize::from(t.template.is_some());
            if kinds != 1 {
                p.add(
                    &at,
                    "needs exactly one of `choices`, `rows`, `range`, `template`",
                );
            }
            match (&t.name, t.names.is_empty()) {
                (Some(name), true) => {
                    check_name(p, &at, name);
                    if !t.rows.is_empty() {
                        p.add(&at, "`rows` go with `names`, not `name`");
                    }
                }
                (None, false) => {
                    for name in &t.names {
                        check_name(p, &at, name);
                    }
                    if t.rows.is_empty() {
                        p.add(&at, "`names` needs `rows`");
                    }
                    if t.rows.iter().any(|r| r.len() != t.names.len()) {
                        p.add(&at, "every row needs one value per name");
                    }
                }
                _ => p.add(&at, "needs either `name` or `names`"),
            }
            let options = t.choices.len().max(t.rows.len());
            if !t.weights.is_empty()
                && (t.weights.len() != options
                    || t.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
                    || t.weights.iter().sum::<f64>() <= 0.0)
            {
                p.add(
                    &at,
                    "`weights` needs one finite weight ≥ 0 per choice or row, not all 0",
                );
            }
            if t.choices
                .iter()
                .chain(t.rows.iter().flatten())
                .any(|v| v.is_empty() || v.chars().any(char::is_control) || v.contains(['\\', '"']))
            {
                p.add(
                    &at,
                    "tag values must be non-empty, without control characters, \\ or \"",
                );
            }
            if let Some([lo, hi]) = t.range
                && lo > hi
            {
                p.add(&at, "`range` must be [low, high] with low ≤ high");
            }
            if let Some(template) = &t.template
                && let Err(e) = Template::parse(template)
            {
                p.add(&at, &e);
            }
        }
        if !d.tag_order.is_empty() {
            let mut generated: Vec<String> = vec![d.id_tag.clone()];
            for t in &d.tags {
                generated.extend(t.name.iter().cloned());
                generated.extend(t.names.iter().cloned());
            }
            let mut want = d.tag_order.clone();
            want.sort();
            generated.sort();
            if want != generated {
                p.add(
                    "devices.tag_order",
                    "must list every tag (the id tag included) exactly once",
                );
            }
        }
    }

    fn validate_faults(&self, p: &mut Problems) {
        let f = &self.faults;
        let probability = |p: &mut Problems, at: &str, v: f64| {
            if !(0.0..=1.0).contains(&v) {
                p.add(at, "must be a probability in [0, 1]");
            }
        };
        let per_day = |p: &mut Problems, at: &str, v: f64, d: Duration| {
            if !(v.is_finite() && v >= 0.0) {
                p.add(at, "per_day must be a finite rate ≥ 0");
            }
            if d.is_zero() {
                p.add(at, "duration_mean must be > 0");
            }
        };
        let magnitude = |p: &mut Problems, at: &str, v: f64| {
            if !(v.is_finite() && v >= 0.0) {
                p.add(at, "must be finite and ≥ 0");
            }
        };
        if let Some(o) = &f.offline {
            per_day(p, "faults.offline", o.per_day, o.duration_mean);
            probability(p, "faults.offline.abrupt", o.abrupt);
        }
        if let Some(d) = &f.duplicate {
            probability(p, "faults.duplicate.probability", d.probability);
        }
        if let Some(d) = &f.delay {
            probability(p, "faults.delay.probability", d.probability);
            if d.mean.is_zero() {
                p.add("faults.delay.mean", "must be > 0");
            }
            if !(d.sigma.is_finite() && d.sigma > 0.0 && d.sigma < 5.0) {
                p.add("faults.delay.sigma", "must be in (0, 5)");
            }
        }
        if let Some(c) = &f.clock {
            probability(p, "faults.clock.probability", c.probability);
            if !(c.drift_ppm_sd.is_finite() && (0.0..1e5).contains(&c.drift_ppm_sd)) {
                p.add("faults.clock.drift_ppm_sd", "must be in [0, 100000)");
            }
        }
        if let Some(s) = &f.stuck {
            per_day(p, "faults.stuck", s.per_day, s.duration_mean);
        }
        if let Some(n) = &f.noise_burst {
            per_day(p, "faults.noise_burst", n.per_day, n.duration_mean);
            magnitude(p, "faults.noise_burst.factor", n.factor);
        }
        if let Some(s) = &f.spike {
            probability(p, "faults.spike.probability", s.probability);
            magnitude(p, "faults.spike.magnitude", s.magnitude);
        }
        if let Some(l) = &f.level_shift {
            per_day(p, "faults.level_shift", l.per_day, l.duration_mean);
            magnitude(p, "faults.level_shift.magnitude", l.magnitude);
        }
    }
}

fn validate_cycle(p: &mut Problems, at: &str, c: &CycleSpec) {
    if !c.amplitude.is_finite() {
        p.add(at, "amplitude must be finite");
    }
    if c.period.is_zero() {
        p.add(at, "period must be > 0");
    }
}

fn validate_field(p: &mut Problems, at: &str, f: &FieldSpec) {
    if let Err(e) = ferrite_core::decode::check_field_name(&f.name) {
        p.add(at, &e.to_string());
    }
    for (name, v) in [
        ("mean", f.mean),
        ("threshold", f.threshold),
        ("spatial_range_m", f.spatial_range_m),
    ] {
        if !v.is_finite() {
            p.add(at, &format!("{name} must be finite"));
        }
    }
    for (name, v) in [
        ("device_sd", f.device_sd),
        ("sd", f.sd),
        ("spatial_sd", f.spatial_sd),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            p.add(at, &format!("{name} must be finite and ≥ 0"));
        }
    }
    if let Err(e) = f.arma() {
        p.add(at, &e.to_string());
    }
    for (i, c) in f.cycles.iter().enumerate() {
        validate_cycle(p, &format!("{at}.cycles[{i}]"), c);
    }
    if f.spatial_sd > 0.0 {
        if f.spatial_range_m.is_nan() || f.spatial_range_m <= 0.0 {
            p.add(at, "spatial_range_m must be > 0");
        }
        if f.spatial_step.is_zero() || f.spatial_time_scale.is_zero() {
            p.add(at, "spatial_step and spatial_time_scale must be > 0");
        }
        if !(1..=4096).contains(&f.spatial_features) {
            p.add(at, "spatial_features must be in 1..=4096");
        }
    }
    match (f.min, f.max) {
        (Some(lo), Some(hi)) if lo > hi => p.add(at, "min must be ≤ max"),
        _ => {}
    }
    if f.min.is_some_and(|v| !v.is_finite()) || f.max.is_some_and(|v| !v.is_finite()) {
        p.add(at, "min and max must be finite");
    }
    if f.decimals.is_some_and(|d| d > 12) {
        p.add(at, "decimals must be ≤ 12");
    }
}

/// Problems found so far, each as "key: what is wrong".
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, what: &str) {
        self.0.push(format!("{at}: {what}"));
    }

    fn finish(self, name: &str) -> Result<(), ScenarioError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ScenarioError::Invalid {
                name: name.to_owned(),
                problems: self.0,
            })
        }
    }
}

/// A parsed tag template: literal text and placeholders computed from the device index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Index,
    Block(u64),
    Mod(u64),
}

impl Template {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template {s:?}: unclosed {{"))?
                + open;
            let inner = &rest[open + 1..close];
            let number = |arg: &str| -> Result<u64, String> {
                arg.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("template {s:?}: {{{inner}}} needs a number > 0"))
            };
            pieces.push(match inner.split_once(':') {
                None if inner == "index" => Piece::Index,
                Some(("block", n)) => Piece::Block(number(n)?),
                Some(("mod", n)) => Piece::Mod(number(n)?),
                _ => {
                    return Err(format!(
                        "template {s:?}: unknown placeholder {{{inner}}} (index, block:N, mod:N)"
                    ));
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces.is_empty() {
            return Err("template must not be empty".to_owned());
        }
        Ok(Self(pieces))
    }

    pub(crate) fn render(&self, index: u64) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Index => out.push_str(&index.to_string()),
                Piece::Block(n) => out.push_str(&(index / n).to_string()),
                Piece::Mod(n) => out.push_str(&(index % n).to_string()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_builtin_parses_and_validates() {
        for name in BUILTIN_NAMES {
            let s = Scenario::builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, name);
            assert!(!s.description.is_empty(), "{name} describes itself");
            assert!(s.device_rate(100, 10.0).is_ok());
            assert!(Scenario::load(name).is_ok());
        }
        assert!(matches!(
            Scenario::builtin("nope"),
            Err(ScenarioError::Unknown { .. })
        ));
        assert!(matches!(
            Scenario::load("/nonexistent/scenario.toml"),
            Err(ScenarioError::Unknown { .. })
        ));
    }

    #[test]
    fn a_scenario_loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            "name = \"mine\"\n[[measurements]]\nname = \"m\"\nfields = [{ name = \"x\" }]\n",
        )
        .unwrap();
        let s = Scenario::load(path.to_str().unwrap()).unwrap();
        assert_eq!(s.name, "mine");
        assert_eq!(s.devices, DeviceSpec::default());
        assert_eq!(s.tag_names(), vec!["device_id".to_owned()]);
        assert_eq!(s.measurements[0].fields[0].kind, FieldKind::Float);
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_parse_errors() {
        let err = Scenario::from_toml(
            "name = \"x\"\ncolour = 1\n[[measurements]]\nname = \"m\"\nfields = [{ name = \"x\" }]\n",
            "test",
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = Scenario::from_toml("name = ", "test").unwrap_err();
        assert!(matches!(err, ScenarioError::Parse { .. }), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
name = "bad"
[devices]
id_prefix = "bad prefix "
spacing_m = -1.0
tags = [{ name = "zone", choices = ["a"], range = [1, 2] }, { names = ["a", "b"], rows = [["x"]] }]
[arrival]
base = 0.0
[[measurements]]
name = "1bad"
fields = [{ name = "time" }, { name = "x", ar = [1.1] }, { name = "y", min = 3.0, max = 1.0 }]
[[measurements]]
name = "ok"
fields = []
[faults]
duplicate = { probability = 2.0 }
offline = { per_day = 1.0, duration_mean = "0s" }
"#;
        let Err(ScenarioError::Invalid { problems, .. }) = Scenario::from_toml(text, "test") else {
            panic!("expected Invalid");
        };
        for needle in [
            "devices.id_prefix",
            "devices.spacing_m",
            "devices.tags[0]",
            "devices.tags[1]",
            "arrival.base",
            "measurements[0] (1bad)",
            "fields[0] (time)",
            "fields[1] (x)",
            "fields[2] (y)",
            "measurements[1] (ok)",
            "faults.duplicate.probability",
            "faults.offline",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "missing {needle} in {problems:#?}"
            );
        }
    }

    #[test]
    fn templates_render_from_the_index() {
        let t = Template::parse("b{block:100}-f{mod:10}-{index}").unwrap();
        assert_eq!(t.render(1234), "b12-f4-1234");
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("{block:0}").is_err());
        assert!(Template::parse("{index").is_err());
        assert!(Template::parse("").is_err());
    }

    #[test]
    fn cycles_peak_where_they_say_and_match_the_harmonic() {
        let c = CycleSpec {
            amplitude: 2.0,
            period: Duration::from_secs(86_400),
            peak: Duration::from_secs(13 * 3600),
        };
        assert!((c.at(13.0 * 3600.0) - 2.0).abs() < 1e-12);
        assert!((c.at(86_400.0 * 100.0 + 1.0 * 3600.0) + 2.0).abs() < 1e-9);
        let h = c.harmonic(1.0);
        let rate = ArrivalRate::new(5.0, vec![h], 0.0).unwrap();
        for t in [0.0, 1234.5, 50_000.0, 1.7e9] {
            assert!((rate.mean_rate_at(t) - 5.0 - c.at(t)).abs() < 1e-6, "{t}");
        }
    }

    #[test]
    fn the_device_rate_scales_the_fleet_to_the_requested_mean() {
        let s = Scenario::builtin("fleet_trucks").unwrap();
        let rate = s.device_rate(50, 1000.0).unwrap();
        let per_tick = s.readings_per_tick() as f64;
        // Over one whole week the harmonics integrate to 0.
        let week = 7.0 * 86_400.0;
        let readings = rate.expected_count(0.0, week) * 50.0 * per_tick;
        assert!(
            (readings / week - 1000.0).abs() < 1e-6,
            "{}",
            readings / week
        );
    }

    #[test]
    fn field_arma_has_the_requested_stationary_sd() {
        let f = FieldSpec {
            name: "x".into(),
            kind: FieldKind::Float,
            mean: 0.0,
            device_sd: 0.0,
            sd: 2.5,
            ar: vec![0.9, -0.2],
            ma: vec![0.3],
            cycles: vec![],
            spatial_sd: 0.0,
            spatial_range_m: 100.0,
            spatial_time_scale: default_time_scale(),
            spatial_step: default_spatial_step(),
            spatial_features: 128,
            min: None,
            max: None,
            decimals: None,
            threshold: 0.5,
        };
        let arma = f.arma().unwrap();
        assert!((arma.variance().sqrt() - 2.5).abs() < 1e-9);
        assert!((f.scale() - 2.5).abs() < 1e-12);
    }
}
