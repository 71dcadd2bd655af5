//! The sans-IO fleet generator: a [`Scenario`] compiled for N devices ([`Fleet`]) and one
//! generator per device ([`DeviceSim`]) that turns ticks into readings, faults and ground
//! truth. No clock, no sockets: time is always an argument (Unix nanoseconds), so the file
//! writer ([`crate::file`]) and the live MQTT shell ([`crate::live`]) drive the same code,
//! and a seed reproduces everything.
//!
//! # One tick
//!
//! A device *ticks* at times from its [`Cadence`]: every `interval` (aligned across the
//! fleet, as TSBS does), or at the arrival times of a non-homogeneous Poisson process with
//! the scenario's λ(t) scaled so the fleet writes `rate` readings per second on average
//! ([`Scenario::device_rate`]), or whenever the caller says (live mode at maximum rate). At
//! each tick it writes one [`Reading`] per measurement, unless it is offline. Each reading
//! leaves as an [`Outgoing`]: immediately, or later when delayed, and a second time when
//! duplicated. Faults are described in [`crate::faults`].
//!
//! # Determinism
//!
//! Every device draws from its own generators, seeded from (seed, device index, purpose), so
//! a device's output depends only on the seed, its index and its tick times, never on how
//! the caller interleaves devices. Spatial fields are the one shared state: a
//! [`SpatialTrack`] keeps the field's weights for each time step, computed in step order
//! from the seed whoever asks first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferrite_core::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::faults::{FaultKind, TruthDetail, TruthRecord};
use crate::models::{Arma, ArrivalRate, FieldWeights, ModelError, SpatialField, standard_normal};
use crate::scenario::{DelayDistribution, FieldKind, FieldSpec, Scenario, ScenarioError, Template};

/// Nanoseconds per second.
const NS: f64 = 1e9;
/// Nanoseconds per day.
const DAY_NS: f64 = 86_400e9;
/// Most field-weight snapshots a spatial track keeps; older steps read the oldest kept.
const MAX_SNAPSHOTS: usize = 10_000;
/// Most arrivals drawn at once per device.
const ARRIVAL_CHUNK: usize = 4096;

/// When devices tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cadence {
    /// Every device ticks at `from + k·interval` (aligned, like TSBS).
    Interval(Duration),
    /// Readings per second over the whole fleet, on average; tick times follow the
    /// scenario's λ(t).
    Rate(f64),
    /// No schedule: the caller ticks devices whenever it wants (live mode at maximum rate).
    Manual,
}

/// What to build a fleet for.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Number of devices.
    pub devices: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Device ids are `{prefix}{index}`; `None` takes the scenario's `id_prefix`.
    pub prefix: Option<String>,
    /// Start of the run, Unix ns: the first tick time, time step 0 of spatial fields and the
    /// reference of clock drift.
    pub start_ns: i64,
    /// End of the run (exclusive), Unix ns; `None` runs open-ended.
    pub end_ns: Option<i64>,
    /// When devices tick.
    pub cadence: Cadence,
    /// Inject the scenario's faults (false: clean data).
    pub faults: bool,
}

/// A scenario compiled for a number of devices; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Fleet {
    inner: Arc<FleetInner>,
}

#[derive(Debug)]
struct FleetInner {
    scenario: Scenario,
    config: FleetConfig,
    prefix: String,
    /// Output order of the tags, the id tag included.
    tag_names: Vec<String>,
    /// Position in `tag_names` of each generated tag, per generator.
    tag_slots: Vec<Vec<usize>>,
    templates: Vec<Option<Template>>,
    /// Where the id goes in `tag_names`.
    id_slot: usize,
    measurements: Vec<CompiledMeasurement>,
    /// The per-device arrival rate (`Cadence::Rate`).
    rate: Option<ArrivalRate>,
    /// Side of the device grid.
    side: usize,
    /// Fields anomalies can target: every (measurement, field), and the numeric ones.
    all_fields: Vec<(usize, usize)>,
    numeric_fields: Vec<(usize, usize)>,
}

#[derive(Debug)]
struct CompiledMeasurement {
    name: String,
    fields: Vec<CompiledField>,
}

#[derive(Debug)]
struct CompiledField {
    spec: FieldSpec,
    arma: Arma,
    scale: f64,
    track: Option<SpatialTrack>,
}

/// A spatial field shared by the fleet, moving in steps, with the weights of every step kept
/// so devices can read any recent moment of it independently; see the [module docs](self).
#[derive(Debug)]
pub struct SpatialTrack {
    /// The field's frequencies and σ (its own weights unused).
    shape: SpatialField,
    /// Length of one step, ns.
    step_ns: i64,
    /// Start of step 0, Unix ns.
    origin_ns: i64,
    /// AR(1) coefficient of the weights per step.
    rho: f64,
    /// Snapshots and the stepping state; locked briefly by whichever device needs a new step.
    state: Mutex<TrackState>,
}

#[derive(Debug)]
struct TrackState {
    /// Step number of `snapshots[0]`.
    first: u64,
    snapshots: VecDeque<Arc<FieldWeights>>,
    field: SpatialField,
    rng: StdRng,
}

impl SpatialTrack {
    /// A track of a field of standard deviation `sigma`, range `range_m`, stepping every
    /// `step` from `origin_ns` with correlation time `time_scale`.
    pub fn new(
        sigma: f64,
        range_m: f64,
        features: usize,
        step: Duration,
        time_scale: Duration,
        origin_ns: i64,
        seed: u64,
    ) -> Result<Self, ModelError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let field = SpatialField::new(&[], sigma, range_m, features, &mut rng)?;
        let step_ns = i64::try_from(step.as_nanos()).unwrap_or(i64::MAX).max(1);
        let rho = (-(step.as_secs_f64() / time_scale.as_secs_f64().max(1e-9))).exp();
        Ok(Self {
            shape: field.clone(),
            step_ns,
            origin_ns,
            rho,
            state: Mutex::new(TrackState {
                first: 0,
                snapshots: VecDeque::from([Arc::new(field.weights())]),
                field,
                rng,
            }),
        })
    }

    /// The step that time `t_ns` falls in.
    pub fn step_of(&self, t_ns: i64) -> u64 {
        u64::try_from(t_ns.saturating_sub(self.origin_ns) / self.step_ns).unwrap_or(0)
    }

    /// The field's weights at step `k` (computing the steps up to it if needed).
    pub fn weights_at(&self, k: u64) -> Arc<FieldWeights> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &mut *s;
        while s.first + s.snapshots.len() as u64 <= k {
            // ρ = exp(−x) is in (0, 1]: the step cannot be refused.
            let _ = s.field.step(self.rho, &mut s.rng);
            s.snapshots.push_back(Arc::new(s.field.weights()));
            if s.snapshots.len() > MAX_SNAPSHOTS {
                s.snapshots.pop_front();
                s.first += 1;
            }
        }
        let at = usize::try_from(k.saturating_sub(s.first)).unwrap_or(0);
        Arc::clone(&s.snapshots[at])
    }

    /// The field's value at a point (meters) during step `k`.
    pub fn value(&self, k: u64, x: f64, y: f64) -> f64 {
        self.shape.value_with(&self.weights_at(k), x, y)
    }
}

/// One reading of one measurement by one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device's index in the fleet.
    pub device: usize,
    /// The measurement's index in the scenario.
    pub measurement: usize,
    /// Its timestamp: the device's clock at the tick, Unix ns.
    pub time_ns: i64,
    /// One value per field of the measurement, in the scenario's order.
    pub values: Vec<Value>,
}

/// A reading on its way out.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// What is sent.
    pub reading: Reading,
    /// When it leaves the device, true Unix ns (≥ the tick: later when delayed or a retry).
    pub send_at_ns: i64,
    /// Whether this is the duplicate copy of a reading sent before.
    pub duplicate: bool,
}

/// What a tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// The device was online and pushed its readings.
    Online,
    /// The device is offline until `until_ns` (true time) and wrote nothing.
    Offline {
        /// End of the offline period, true Unix ns.
        until_ns: i64,
        /// Whether the connection ends without DISCONNECT.
        abrupt: bool,
        /// Whether this tick is the period's first (live mode disconnects now).
        starts: bool,
    },
}

impl Fleet {
    /// Compile `scenario` for `config.devices` devices.
    pub fn new(scenario: &Scenario, config: FleetConfig) -> Result<Self, ScenarioError> {
        scenario.validate()?;
        let invalid = |problem: String| ScenarioError::Invalid {
            name: scenario.name.clone(),
            problems: vec![problem],
        };
        let tag_names = scenario.tag_names();
        let slot = |name: &str| tag_names.iter().position(|n| n == name).unwrap_or(0);
        let id_slot = slot(&scenario.devices.id_tag);
        let tag_slots = scenario
            .devices
            .tags
            .iter()
            .map(|t| t.name.iter().chain(&t.names).map(|n| slot(n)).collect())
            .collect();
        let templates = scenario
            .devices
            .tags
            .iter()
            .map(|t| t.template.as_deref().and_then(|s| Template::parse(s).ok()))
            .collect();
        let mut measurements = Vec::new();
        let mut all_fields = Vec::new();
        let mut numeric_fields = Vec::new();
        for (mi, m) in scenario.measurements.iter().enumerate() {
            let mut fields = Vec::new();
            for (fi, f) in m.fields.iter().enumerate() {
                let arma = f
                    .arma()
                    .map_err(|e| invalid(format!("{}.{}: {e}", m.name, f.name)))?;
                let track = if f.spatial_sd > 0.0 {
                    let seed = mix(config.seed, 0x05EA_71A1, ((mi as u64) << 32) | fi as u64);
                    Some(
                        SpatialTrack::new(
                            f.spatial_sd,
                            f.spatial_range_m,
                            f.spatial_features,
                            f.spatial_step,
                            f.spatial_time_scale,
                            config.start_ns,
                            seed,
                        )
                        .map_err(|e| invalid(format!("{}.{}: {e}", m.name, f.name)))?,
                    )
                } else {
                    None
                };
                all_fields.push((mi, fi));
                if f.kind != FieldKind::Bool {
                    numeric_fields.push((mi, fi));
                }
                fields.push(CompiledField {
                    scale: f.scale(),
                    spec: f.clone(),
                    arma,
                    track,
                });
            }
            measurements.push(CompiledMeasurement {
                name: m.name.clone(),
                fields,
            });
        }
        let rate = match config.cadence {
            Cadence::Rate(r) => Some(
                scenario
                    .device_rate(config.devices, r.max(0.0))
                    .map_err(|e| invalid(format!("arrival: {e}")))?,
            ),
            _ => None,
        };
        let prefix = config
            .prefix
            .clone()
            .unwrap_or_else(|| scenario.devices.id_prefix.clone());
        Ok(Self {
            inner: Arc::new(FleetInner {
                scenario: scenario.clone(),
                side: (config.devices as f64).sqrt().ceil().max(1.0) as usize,
                config,
                prefix,
                tag_names,
                tag_slots,
                templates,
                id_slot,
                measurements,
                rate,
                all_fields,
                numeric_fields,
            }),
        })
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.inner.scenario
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &FleetConfig {
        &self.inner.config
    }

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.inner.config.devices
    }

    /// The id of device `index`.
    pub fn device_id(&self, index: usize) -> String {
        format!("{}{index}", self.inner.prefix)
    }

    /// Every tag key, in output order.
    pub fn tag_names(&self) -> &[String] {
        &self.inner.tag_names
    }

    /// The name of measurement `m`.
    pub fn measurement_name(&self, m: usize) -> &str {
        self.inner
            .measurements
            .get(m)
            .map_or("", |c| c.name.as_str())
    }

    /// The field names of measurement `m`.
    pub fn field_names(&self, m: usize) -> impl Iterator<Item = &str> {
        self.inner
            .measurements
            .get(m)
            .into_iter()
            .flat_map(|c| c.fields.iter().map(|f| f.spec.name.as_str()))
    }

    /// Number of measurements.
    pub fn measurements(&self) -> usize {
        self.inner.measurements.len()
    }

    /// The per-device arrival rate in use (`Cadence::Rate`).
    pub fn device_rate(&self) -> Option<&ArrivalRate> {
        self.inner.rate.as_ref()
    }

    /// The generator of device `index`, positioned before its first tick.
    pub fn device(&self, index: usize) -> DeviceSim {
        DeviceSim::new(Arc::clone(&self.inner), index)
    }
}

/// A seed for one purpose of one device, by SplitMix64 finalisation.
fn mix(seed: u64, purpose: u64, index: u64) -> u64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Purposes of per-device generators.
const TAGS: u64 = 1;
const VALUES: u64 = 2;
const FAULTS: u64 = 3;
const DELIVERY: u64 = 4;
const SCHEDULE: u64 = 5;

/// The per-field state of one device.
#[derive(Debug)]
struct FieldState {
    arma: Arma,
    /// The device's constant offset from the fleet mean.
    offset: f64,
    /// The spatial field at this device for the step it was last read: (step, value).
    spatial: Option<(u64, f64)>,
}

/// An episode of a fault (offline, stuck, noise burst, level shift).
#[derive(Debug, Clone)]
struct Episode {
    start: i64,
    end: i64,
    /// (measurement, field) for field faults.
    target: Option<(usize, usize)>,
    abrupt: bool,
    /// Level shift offset or noise-burst sd, in the field's unit.
    amount: f64,
    /// Recorded in the truth (a tick fell inside it).
    realized: bool,
    /// The value a stuck field repeats, captured at the first tick inside.
    stuck: Option<Value>,
}

/// The episodes of one fault kind of one device: a Poisson process of starts with
/// exponential durations, one at a time.
#[derive(Debug)]
struct EpisodeTrack {
    kind: FaultKind,
    /// Starts per ns.
    rate: f64,
    /// Mean duration, ns.
    mean_ns: f64,
    /// Size (level shift magnitude, burst factor), in units of the field's scale.
    size: f64,
    /// Share of abrupt offline periods.
    abrupt: f64,
    current: Option<Episode>,
    /// The next episode starts after this.
    next_from: i64,
}

/// The device's clock error.
#[derive(Debug, Clone, Copy)]
struct ClockError {
    skew_ns: i64,
    drift_ppm: f64,
}

/// The generator of one device; see the [module docs](self).
#[derive(Debug)]
pub struct DeviceSim {
    fleet: Arc<FleetInner>,
    index: usize,
    id: String,
    /// Tag values aligned with the fleet's `tag_names`.
    tags: Vec<String>,
    /// The tags as line protocol writes them (`,k=v,…`, escaped), computed once.
    pub(crate) lp_tags: String,
    position: (f64, f64),
    /// Per measurement, per field.
    fields: Vec<Vec<FieldState>>,
    values_rng: StdRng,
    faults_rng: StdRng,
    delivery_rng: StdRng,
    schedule_rng: StdRng,
    clock: Option<ClockError>,
    clock_reported: bool,
    episodes: Vec<EpisodeTrack>,
    /// Tick schedule: the next interval tick number, or buffered arrival times.
    next_interval: u64,
    arrivals: VecDeque<i64>,
    /// Arrivals are drawn up to here (Unix seconds).
    arrivals_until_s: f64,
    /// The last tick's true time; ticks are strictly increasing.
    last_tick: i64,
}

impl DeviceSim {
    fn new(fleet: Arc<FleetInner>, index: usize) -> Self {
        let seed = fleet.config.seed;
        let i = index as u64;
        let scenario = &fleet.scenario;
        let mut tags_rng = StdRng::seed_from_u64(mix(seed, TAGS, i));
        let id = format!("{}{index}", fleet.prefix);
        let mut tags = vec![String::new(); fleet.tag_names.len()];
        if let Some(t) = tags.get_mut(fleet.id_slot) {
            t.clone_from(&id);
        }
        for ((spec, slots), template) in scenario
            .devices
            .tags
            .iter()
            .zip(&fleet.tag_slots)
            .zip(&fleet.templates)
        {
            let values: Vec<String> = if let Some(t) = template {
                vec![t.render(i)]
            } else if let Some([lo, hi]) = spec.range {
                vec![tags_rng.random_range(lo..=hi).to_string()]
            } else {
                let options = spec.choices.len().max(spec.rows.len());
                let pick = choose(&mut tags_rng, options, &spec.weights);
                if spec.rows.is_empty() {
                    spec.choices.get(pick).cloned().into_iter().collect()
                } else {
                    spec.rows.get(pick).cloned().unwrap_or_default()
                }
            };
            for (slot, v) in slots.iter().zip(values) {
                if let Some(t) = tags.get_mut(*slot) {
                    *t = v;
                }
            }
        }
        let spacing = scenario.devices.spacing_m;
        let position = (
            (index % fleet.side) as f64 * spacing,
            (index / fleet.side) as f64 * spacing,
        );
        let mut values_rng = StdRng::seed_from_u64(mix(seed, VALUES, i));
        let fields = fleet
            .measurements
            .iter()
            .map(|m| {
                m.fields
                    .iter()
                    .map(|f| {
                        let mut arma = f.arma.clone();
                        arma.start_stationary(&mut values_rng);
                        FieldState {
                            arma,
                            offset: f.spec.device_sd * standard_normal(&mut values_rng),
                            spatial: None,
                        }
                    })
                    .collect()
            })
            .collect();
        let mut faults_rng = StdRng::seed_from_u64(mix(seed, FAULTS, i));
        let faults = &scenario.faults;
        let enabled = fleet.config.faults;
        let clock = faults
            .clock
            .filter(|c| enabled && faults_rng.random::<f64>() < c.probability)
            .map(|c| ClockError {
                skew_ns: (c.skew_sd.as_secs_f64() * NS * standard_normal(&mut faults_rng)) as i64,
                drift_ppm: c.drift_ppm_sd * standard_normal(&mut faults_rng),
            });
        let start = fleet.config.start_ns;
        let mut episodes = Vec::new();
        let mut track = |kind, per_day: f64, mean: Duration, size: f64, abrupt: f64| {
            if enabled && per_day > 0.0 {
                episodes.push(EpisodeTrack {
                    kind,
                    rate: per_day / DAY_NS,
                    mean_ns: mean.as_secs_f64() * NS,
                    size,
                    abrupt,
                    current: None,
                    next_from: start,
                });
            }
        };
        if let Some(o) = faults.offline {
            track(
                FaultKind::Offline,
                o.per_day,
                o.duration_mean,
                0.0,
                o.abrupt,
            );
        }
        if let Some(s) = faults.stuck {
            track(FaultKind::Stuck, s.per_day, s.duration_mean, 0.0, 0.0);
        }
        if let Some(n) = faults.noise_burst
            && !fleet.numeric_fields.is_empty()
        {
            track(
                FaultKind::NoiseBurst,
                n.per_day,
                n.duration_mean,
                n.factor,
                0.0,
            );
        }
        if let Some(l) = faults.level_shift
            && !fleet.numeric_fields.is_empty()
        {
            track(
                FaultKind::LevelShift,
                l.per_day,
                l.duration_mean,
                l.magnitude,
                0.0,
            );
        }
        let lp_tags = crate::encode::line_protocol_tags(&fleet.tag_names, &tags);
        Self {
            index,
            id,
            tags,
            lp_tags,
            position,
            fields,
            values_rng,
            faults_rng,
            delivery_rng: StdRng::seed_from_u64(mix(seed, DELIVERY, i)),
            schedule_rng: StdRng::seed_from_u64(mix(seed, SCHEDULE, i)),
            clock,
            clock_reported: false,
            episodes,
            next_interval: 0,
            arrivals: VecDeque::new(),
            arrivals_until_s: start as f64 / NS,
            last_tick: i64::MIN,
            fleet,
        }
    }

    /// The device's index in the fleet.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device's tags as (key, value), in output order, the id tag included.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fleet
            .tag_names
            .iter()
            .map(String::as_str)
            .zip(self.tags.iter().map(String::as_str))
    }

    /// The fleet this device belongs to.
    pub fn fleet(&self) -> Fleet {
        Fleet {
            inner: Arc::clone(&self.fleet),
        }
    }

    /// The device's position on the grid, meters.
    pub fn position(&self) -> (f64, f64) {
        self.position
    }

    /// The device's clock at true time `t_ns`.
    pub fn device_time(&self, t_ns: i64) -> i64 {
        match self.clock {
            None => t_ns,
            Some(c) => {
                let drift = c.drift_ppm * 1e-6 * (t_ns - self.fleet.config.start_ns) as f64;
                t_ns.saturating_add(c.skew_ns).saturating_add(drift as i64)
            }
        }
    }

    /// The next tick time (true Unix ns) of the cadence, or `None` when the run is over or
    /// the cadence is [`Cadence::Manual`]. Each call moves on: call it once per tick.
    pub fn next_tick_time(&mut self) -> Option<i64> {
        let (cadence, start_ns, end_ns) = {
            let cfg = &self.fleet.config;
            (cfg.cadence, cfg.start_ns, cfg.end_ns)
        };
        let t = match cadence {
            Cadence::Manual => return None,
            Cadence::Interval(every) => {
                let every = i64::try_from(every.as_nanos()).unwrap_or(i64::MAX).max(1);
                let k = i64::try_from(self.next_interval).unwrap_or(i64::MAX);
                self.next_interval += 1;
                start_ns.checked_add(k.checked_mul(every)?)?
            }
            Cadence::Rate(_) => loop {
                if let Some(t) = self.arrivals.pop_front() {
                    break t;
                }
                self.draw_arrivals()?;
            },
        };
        match end_ns {
            Some(end) if t >= end => None,
            _ => Some(t),
        }
    }

    /// Draw the next chunk of arrival times; `None` when there will be none before the end.
    fn draw_arrivals(&mut self) -> Option<()> {
        let rate = self.fleet.rate.as_ref()?;
        let bound = rate.peak_rate() + 6.0 * rate.noise_sd();
        if bound.is_nan() || bound <= 0.0 {
            return None;
        }
        let end_s = self.fleet.config.end_ns.map(|e| e as f64 / NS);
        loop {
            let from = self.arrivals_until_s;
            if end_s.is_some_and(|e| from >= e) {
                return None;
            }
            // About a thousand candidates per chunk, at most a day.
            let mut to = from + (1000.0 / bound).clamp(1.0, 86_400.0);
            if let Some(e) = end_s {
                to = to.min(e);
            }
            let times = rate.arrivals(from, to, ARRIVAL_CHUNK, &mut self.schedule_rng);
            // Cut short at the cap: continue from the last arrival (the process is memoryless).
            self.arrivals_until_s = match times.last() {
                Some(&last) if times.len() == ARRIVAL_CHUNK => last,
                _ => to,
            };
            self.arrivals
                .extend(times.iter().map(|t| (t * NS).round() as i64));
            if !self.arrivals.is_empty() {
                return Some(());
            }
        }
    }

    /// Tick at true time `t_ns` (moved to just after the previous tick if not later): push
    /// this tick's readings to `out` and the faults injected to `truth`.
    pub fn tick(
        &mut self,
        t_ns: i64,
        out: &mut Vec<Outgoing>,
        truth: &mut Vec<TruthRecord>,
    ) -> Tick {
        let t = t_ns.max(self.last_tick.saturating_add(1));
        self.last_tick = t;
        if let Some(c) = self.clock
            && !self.clock_reported
        {
            self.clock_reported = true;
            let end = self.run_end();
            truth.push(self.record(
                FaultKind::ClockSkew,
                None,
                self.device_time(t),
                self.device_time(end),
                TruthDetail {
                    skew_ns: Some(c.skew_ns),
                    drift_ppm: Some(c.drift_ppm),
                    ..TruthDetail::default()
                },
            ));
        }
        self.advance_episodes(t);
        if let Some(e) = self.active(FaultKind::Offline) {
            let (until_ns, abrupt) = (e.end, e.abrupt);
            let starts = !e.realized;
            if starts {
                self.realize(FaultKind::Offline, truth);
            }
            return Tick::Offline {
                until_ns,
                abrupt,
                starts,
            };
        }
        for kind in [
            FaultKind::Stuck,
            FaultKind::NoiseBurst,
            FaultKind::LevelShift,
        ] {
            if self.active(kind).is_some_and(|e| !e.realized) {
                self.realize(kind, truth);
            }
        }
        let time_ns = self.device_time(t);
        for m in 0..self.fleet.measurements.len() {
            let values = (0..self.fleet.measurements[m].fields.len())
                .map(|f| self.value(t, time_ns, m, f, truth))
                .collect();
            let reading = Reading {
                device: self.index,
                measurement: m,
                time_ns,
                values,
            };
            self.deliver(t, reading, out, truth);
        }
        Tick::Online
    }

    /// End of the run (exclusive end − 1), or `i64::MAX` when open-ended.
    fn run_end(&self) -> i64 {
        self.fleet
            .config
            .end_ns
            .map_or(i64::MAX, |e| e.saturating_sub(1))
    }

    fn record(
        &self,
        kind: FaultKind,
        target: Option<(usize, Option<usize>)>,
        start_ns: i64,
        end_ns: i64,
        detail: TruthDetail,
    ) -> TruthRecord {
        let measurement = target.and_then(|(m, _)| self.fleet.measurements.get(m));
        let field = target
            .and_then(|(_, f)| f)
            .and_then(|f| measurement.and_then(|m| m.fields.get(f)));
        TruthRecord {
            kind,
            device: self.id.clone(),
            measurement: measurement.map(|m| m.name.clone()),
            field: field.map(|f| f.spec.name.clone()),
            start_ns,
            end_ns,
            detail,
        }
    }

    /// Move every episode track to time `t`: finish episodes that ended before it and draw
    /// the next ones.
    fn advance_episodes(&mut self, t: i64) {
        let fleet = Arc::clone(&self.fleet);
        for track in &mut self.episodes {
            loop {
                if track.current.is_none() {
                    let rng = &mut self.faults_rng;
                    let gap = exponential(rng, 1.0 / track.rate);
                    let start = track.next_from.saturating_add(gap as i64).saturating_add(1);
                    let length = exponential(rng, track.mean_ns).max(1.0);
                    let end = start.saturating_add(length as i64);
                    let target = match track.kind {
                        FaultKind::Offline => None,
                        FaultKind::Stuck => pick(rng, &fleet.all_fields),
                        _ => pick(rng, &fleet.numeric_fields),
                    };
                    let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                    let scale = target.map_or(1.0, |(m, f)| fleet.measurements[m].fields[f].scale);
                    let amount = match track.kind {
                        FaultKind::LevelShift => sign * track.size * scale,
                        _ => track.size * scale,
                    };
                    track.current = Some(Episode {
                        start,
                        end,
                        target,
                        abrupt: rng.random::<f64>() < track.abrupt,
                        amount,
                        realized: false,
                        stuck: None,
                    });
                }
                match &track.current {
                    Some(e) if e.end < t => {
                        track.next_from = e.end;
                        track.current = None;
                    }
                    _ => break,
                }
            }
        }
    }

    /// The episode of `kind` in progress at the last tick, if any.
    fn active(&self, kind: FaultKind) -> Option<&Episode> {
        let t = self.last_tick;
        self.episodes
            .iter()
            .find(|e| e.kind == kind)
            .and_then(|e| e.current.as_ref())
            .filter(|e| e.start <= t && t <= e.end)
    }

    /// Record the active episode of `kind` in the truth.
    fn realize(&mut self, kind: FaultKind, truth: &mut Vec<TruthRecord>) {
        let end_limit = self.run_end();
        let will = self.fleet.scenario.faults.offline.is_some_and(|o| o.will);
        let Some(e) = self
            .episodes
            .iter_mut()
            .find(|e| e.kind == kind)
            .and_then(|e| e.current.as_mut())
        else {
            return;
        };
        e.realized = true;
        let e = e.clone();
        let detail = match kind {
            FaultKind::Offline => TruthDetail {
                abrupt: Some(e.abrupt),
                will: Some(will),
                ..TruthDetail::default()
            },
            FaultKind::NoiseBurst => TruthDetail {
                sd: Some(e.amount),
                ..TruthDetail::default()
            },
            FaultKind::LevelShift => TruthDetail {
                offset: Some(e.amount),
                ..TruthDetail::default()
            },
            _ => TruthDetail::default(),
        };
        let record = self.record(
            kind,
            e.target.map(|(m, f)| (m, Some(f))),
            self.device_time(e.start),
            self.device_time(e.end.min(end_limit)),
            detail,
        );
        truth.push(record);
    }

    /// The value of field `f` of measurement `m` at true time `t`, with anomalies.
    fn value(
        &mut self,
        t: i64,
        time_ns: i64,
        m: usize,
        f: usize,
        truth: &mut Vec<TruthRecord>,
    ) -> Value {
        let fleet = Arc::clone(&self.fleet);
        let field = &fleet.measurements[m].fields[f];
        let spec = &field.spec;
        let t_s = t as f64 / NS;
        let state = &mut self.fields[m][f];
        let spatial = match &field.track {
            None => 0.0,
            Some(track) => {
                let k = track.step_of(t);
                match state.spatial {
                    Some((step, v)) if step == k => v,
                    _ => {
                        let v = track.value(k, self.position.0, self.position.1);
                        state.spatial = Some((k, v));
                        v
                    }
                }
            }
        };
        let mut v = spec.mean
            + state.offset
            + spec.cycles.iter().map(|c| c.at(t_s)).sum::<f64>()
            + spatial
            + state.arma.next(&mut self.values_rng);
        v = clamp(v, spec);
        let on_field = |e: &Episode| e.target == Some((m, f));
        if self.active(FaultKind::Stuck).is_some_and(on_field) {
            let normal = finish(v, spec);
            let episode = self
                .episodes
                .iter_mut()
                .find(|e| e.kind == FaultKind::Stuck)
                .and_then(|e| e.current.as_mut());
            if let Some(e) = episode {
                return e.stuck.get_or_insert(normal).clone();
            }
        }
        if spec.kind != FieldKind::Bool {
            if let Some(e) = self.active(FaultKind::LevelShift).filter(|e| on_field(e)) {
                v += e.amount;
            }
            let burst = self
                .active(FaultKind::NoiseBurst)
                .filter(|e| on_field(e))
                .map(|e| e.amount);
            if let Some(sd) = burst {
                v += sd * standard_normal(&mut self.faults_rng);
            }
            if let Some(spike) = self.fleet.scenario.faults.spike
                && self.fleet.config.faults
                && self.faults_rng.random::<f64>() < spike.probability
            {
                let sign = if self.faults_rng.random::<bool>() {
                    1.0
                } else {
                    -1.0
                };
                let offset = sign * spike.magnitude * field.scale;
                v += offset;
                truth.push(self.record(
                    FaultKind::Spike,
                    Some((m, Some(f))),
                    time_ns,
                    time_ns,
                    TruthDetail {
                        offset: Some(offset),
                        ..TruthDetail::default()
                    },
                ));
            }
        }
        finish(v, spec)
    }

    /// Send `reading` at tick `t`: maybe delayed, maybe twice.
    fn deliver(
        &mut self,
        t: i64,
        reading: Reading,
        out: &mut Vec<Outgoing>,
        truth: &mut Vec<TruthRecord>,
    ) {
        let faults = &self.fleet.scenario.faults;
        let enabled = self.fleet.config.faults;
        let mut send_at = t;
        if let Some(d) = faults.delay.filter(|_| enabled)
            && self.delivery_rng.random::<f64>() < d.probability
        {
            let mean = d.mean.as_secs_f64() * NS;
            let delay = match d.distribution {
                DelayDistribution::Exponential => exponential(&mut self.delivery_rng, mean),
                DelayDistribution::Uniform => self.delivery_rng.random::<f64>() * 2.0 * mean,
                DelayDistribution::Lognormal => {
                    let mu = mean.ln() - d.sigma * d.sigma / 2.0;
                    (mu + d.sigma * standard_normal(&mut self.delivery_rng)).exp()
                }
            };
            let delay = (delay as i64).max(1);
            send_at = t.saturating_add(delay);
            truth.push(self.record(
                FaultKind::Delay,
                Some((reading.measurement, None)),
                reading.time_ns,
                reading.time_ns,
                TruthDetail {
                    arrival_ns: Some(send_at),
                    delay_ns: Some(delay),
                    ..TruthDetail::default()
                },
            ));
        }
        let duplicate = faults
            .duplicate
            .filter(|d| enabled && self.delivery_rng.random::<f64>() < d.probability);
        if let Some(d) = duplicate {
            let retry = i64::try_from(d.retry_after.as_nanos()).unwrap_or(i64::MAX);
            let again = send_at.saturating_add(retry);
            truth.push(self.record(
                FaultKind::Duplicate,
                Some((reading.measurement, None)),
                reading.time_ns,
                reading.time_ns,
                TruthDetail {
                    arrival_ns: Some(again),
                    ..TruthDetail::default()
                },
            ));
            out.push(Outgoing {
                reading: reading.clone(),
                send_at_ns: send_at,
                duplicate: false,
            });
            out.push(Outgoing {
                reading,
                send_at_ns: again,
                duplicate: true,
            });
        } else {
            out.push(Outgoing {
                reading,
                send_at_ns: send_at,
                duplicate: false,
            });
        }
    }
}

/// Clamp to the field's bounds.
fn clamp(v: f64, spec: &FieldSpec) -> f64 {
    let v = spec.min.map_or(v, |lo| v.max(lo));
    spec.max.map_or(v, |hi| v.min(hi))
}

/// The typed value of a latent value: rounded to `decimals`, to an integer, or thresholded.
fn finish(v: f64, spec: &FieldSpec) -> Value {
    match spec.kind {
        FieldKind::Bool => Value::Bool(v >= spec.threshold),
        // `as` saturates; bounds keep realistic values far inside i64.
        FieldKind::Integer => Value::I64(v.round() as i64),
        FieldKind::Float => Value::F64(match spec.decimals {
            Some(d) => {
                let p = 10f64.powi(i32::from(d));
                let r = (v * p).round() / p;
                // No negative zero in the output.
                if r == 0.0 { 0.0 } else { r }
            }
            None => v,
        }),
    }
}

/// An exponential draw with the given mean.
fn exponential<R: Rng + ?Sized>(rng: &mut R, mean: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() * mean
}

/// A uniformly chosen element.
fn pick<R: Rng + ?Sized>(rng: &mut R, from: &[(usize, usize)]) -> Option<(usize, usize)> {
    if from.is_empty() {
        None
    } else {
        Some(from[rng.random_range(0..from.len())])
    }
}

/// An index in `0..n` by `weights` (uniform when empty).
fn choose<R: Rng + ?Sized>(rng: &mut R, n: usize, weights: &[f64]) -> usize {
    if n == 0 {
        return 0;
    }
    if weights.len() != n {
        return rng.random_range(0..n);
    }
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    n - 1
}

#[cfg(test)]
mod tests;
