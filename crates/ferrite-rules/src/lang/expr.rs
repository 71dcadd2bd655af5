//! Compiled expressions and their evaluation over a message (row stage) or a window result
//! (output stage).

use std::collections::HashMap;

use ferrite_core::{DeviceId, Timestamp, TopicName};
use regex::Regex;

use super::Message;
use crate::datum::Datum;
use crate::detect::{
    Detector, EwmaZScore, FlatLine, Gap, HalfSpaceTrees, OutOfRange, RateOfChange,
    SeasonalBaseline, StuckAt,
};

/// One step of a JSON path.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PathSeg {
    Key(String),
    Index(usize),
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// Stateless scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Topic,
    ClientId,
    DeviceId,
    Timestamp,
    Now,
    Tag,
    Abs,
    Round,
    Floor,
    Ceil,
    Sqrt,
    Pow,
    Ln,
    Log10,
    Exp,
    Lower,
    Upper,
    Concat,
    Substr,
    Length,
    Trim,
    Coalesce,
}

/// `CAST` targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CastType {
    Int,
    Float,
    Str,
    Bool,
}

/// A compiled expression.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Lit(Datum),
    /// A path into the payload (empty: the whole payload).
    Payload(Vec<PathSeg>),
    Func(Func, Vec<Expr>),
    RegexMatch(Box<Expr>, Regex),
    RegexReplace(Box<Expr>, Regex, String),
    Like(Box<Expr>, Regex, bool),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    IsNull(Box<Expr>, bool),
    InList(Box<Expr>, Vec<Expr>, bool),
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast(Box<Expr>, CastType),
    /// A stateful detector call: index into the rule's detectors (whose inputs live there).
    Detector(usize),
    /// Output stage: the i-th aggregate result.
    AggRef(usize),
    /// Output stage: the i-th group key.
    KeyRef(usize),
    WindowStart,
    WindowEnd,
}

/// What a detector call site computes (its constant parameters are fixed at compile time).
#[derive(Clone, Debug)]
pub(crate) enum DetectorSpec {
    ZScore {
        alpha: f64,
        warmup: u64,
    },
    Seasonal {
        period: std::time::Duration,
        slots: usize,
    },
    Hst {
        dims: usize,
    },
    Stuck {
        n: u64,
    },
    FlatLine {
        span: std::time::Duration,
        tolerance: f64,
    },
    OutOfRange {
        lo: f64,
        hi: f64,
    },
    Gap {
        max: std::time::Duration,
    },
    RateOfChange {
        max: f64,
    },
}

/// A detector's per-series state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum DetectorState {
    ZScore(EwmaZScore),
    Seasonal(SeasonalBaseline),
    Hst(Box<HalfSpaceTrees>),
    Stuck(StuckAt),
    FlatLine(FlatLine),
    OutOfRange(OutOfRange),
    Gap(Gap),
    RateOfChange(RateOfChange),
}

impl DetectorSpec {
    /// Build fresh state; parameters were validated at compile time by building once.
    pub(crate) fn build(&self) -> Result<DetectorState, crate::error::RulesError> {
        Ok(match *self {
            DetectorSpec::ZScore { alpha, warmup } => {
                DetectorState::ZScore(EwmaZScore::new(alpha, 3.0, warmup)?)
            }
            DetectorSpec::Seasonal { period, slots } => {
                DetectorState::Seasonal(SeasonalBaseline::new(period, slots, 0.1, 3.0, 3)?)
            }
            DetectorSpec::Hst { dims } => DetectorState::Hst(Box::new(HalfSpaceTrees::new(
                dims,
                crate::detect::HstConfig::default(),
            )?)),
            DetectorSpec::Stuck { n } => DetectorState::Stuck(StuckAt::new(n)?),
            DetectorSpec::FlatLine { span, tolerance } => {
                DetectorState::FlatLine(FlatLine::new(span, tolerance)?)
            }
            DetectorSpec::OutOfRange { lo, hi } => {
                DetectorState::OutOfRange(OutOfRange::new(lo, hi)?)
            }
            DetectorSpec::Gap { max } => DetectorState::Gap(Gap::new(max)?),
            DetectorSpec::RateOfChange { max } => {
                DetectorState::RateOfChange(RateOfChange::new(max)?)
            }
        })
    }
}

impl DetectorState {
    fn eval(&mut self, time: Timestamp, args: &[Datum]) -> Datum {
        let x = args.first().and_then(Datum::as_f64);
        let flag = |hit: bool| Datum::Bool(hit);
        match self {
            DetectorState::ZScore(d) => x
                .and_then(|x| d.update(x))
                .map_or(Datum::Null, Datum::Float),
            DetectorState::Seasonal(d) => x
                .and_then(|x| d.update(time, x))
                .map_or(Datum::Null, |(z, _)| Datum::Float(z)),
            DetectorState::Hst(d) => {
                let xs: Option<Vec<f64>> = args.iter().map(Datum::as_f64).collect();
                xs.and_then(|xs| d.update(&xs))
                    .map_or(Datum::Null, Datum::Float)
            }
            DetectorState::Stuck(d) => {
                x.map_or(Datum::Null, |x| flag(d.observe(time, x).is_some()))
            }
            DetectorState::FlatLine(d) => {
                x.map_or(Datum::Null, |x| flag(d.observe(time, x).is_some()))
            }
            DetectorState::OutOfRange(d) => {
                x.map_or(Datum::Null, |x| flag(d.observe(time, x).is_some()))
            }
            DetectorState::Gap(d) => flag(d.observe(time, 0.0).is_some()),
            DetectorState::RateOfChange(d) => {
                x.map_or(Datum::Null, |x| flag(d.observe(time, x).is_some()))
            }
        }
    }
}

/// Detector states of one rule: per series (device) one state per distinct detector call.
///
/// Every detector sees every message that matches the rule's topic filter, once, in
/// arrival order — before `WHERE`, and regardless of which branch of an `OR` or `CASE`
/// mentions it. Identical calls (same SQL text) share one state. [`DetectorStates::update`]
/// runs them all per message and the expressions read the cached [`DetectorStates::values`].
#[derive(Debug, Default)]
pub(crate) struct DetectorStates {
    pub(crate) specs: Vec<DetectorSpec>,
    /// Input expressions per detector; they may read earlier detectors' values only.
    pub(crate) inputs: Vec<Vec<Expr>>,
    pub(crate) series: HashMap<String, Vec<Option<DetectorState>>, foldhash::fast::RandomState>,
    /// Rules with `gap()`: each series' latest message (topic and identity, no payload), which
    /// a silence is reported as.
    pub(crate) origins: HashMap<String, Origin, foldhash::fast::RandomState>,
    /// This message's value of each detector.
    pub(crate) values: Vec<Datum>,
}

/// Where a series' messages come from, for reporting its silence.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Origin {
    topic: String,
    client_id: String,
    device_id: Option<String>,
}

impl DetectorStates {
    /// Whether a `gap()` detector is among them.
    pub(crate) fn has_gap(&self) -> bool {
        self.specs
            .iter()
            .any(|s| matches!(s, DetectorSpec::Gap { .. }))
    }

    /// The series whose `gap()` silence passed its limit as of `now` (each reported once per
    /// silence): a message standing for the silent series — its last topic and identity, an
    /// empty payload, time `now` — and the detector values to evaluate it with (`true` for
    /// the gaps that fired, `false` for other gaps, `NULL` for every other detector).
    pub(crate) fn silences(&mut self, now: Timestamp) -> Vec<(Message, Vec<Datum>)> {
        let mut found = Vec::new();
        for (key, states) in &mut self.series {
            let mut fired = false;
            let values: Vec<Datum> = states
                .iter_mut()
                .map(|s| match s {
                    Some(DetectorState::Gap(g)) => {
                        let f = g.silence(now).is_some();
                        fired |= f;
                        Datum::Bool(f)
                    }
                    _ => Datum::Null,
                })
                .collect();
            if !fired {
                continue;
            }
            let Some(origin) = self.origins.get(key) else {
                continue;
            };
            let Ok(topic) = TopicName::new(origin.topic.as_str()) else {
                continue;
            };
            let mut msg = Message::new(
                topic,
                serde_json::Value::Object(serde_json::Map::new()),
                now,
            );
            msg.client_id.clone_from(&origin.client_id);
            msg.device_id = origin
                .device_id
                .as_deref()
                .and_then(|d| DeviceId::new(d).ok());
            msg.event_time = Some(now);
            found.push((msg, values));
        }
        found
    }

    /// Feed `msg` to every detector of its series.
    pub(crate) fn update(&mut self, msg: &Message) {
        if self.specs.is_empty() {
            return;
        }
        if self.has_gap() {
            let key = msg.series_key();
            let origin = Origin {
                topic: msg.topic.as_str().to_owned(),
                client_id: msg.client_id.clone(),
                device_id: msg.device_id.as_ref().map(|d| d.as_str().to_owned()),
            };
            if self.origins.get(key) != Some(&origin) {
                self.origins.insert(key.to_owned(), origin);
            }
        }
        let mut values = std::mem::take(&mut self.values);
        values.clear();
        let key = msg.series_key();
        if !self.series.contains_key(key) {
            self.series
                .insert(key.to_owned(), vec![None; self.specs.len()]);
        }
        for (i, inputs) in self.inputs.iter().enumerate() {
            let args: Vec<Datum> = {
                let mut ctx = Ctx {
                    msg: Some(msg),
                    window: None,
                    detectors: &values,
                };
                inputs.iter().map(|e| e.eval(&mut ctx)).collect()
            };
            let slot = self.series.get_mut(key).and_then(|v| v.get_mut(i));
            let value = match slot {
                Some(slot) => {
                    if slot.is_none() {
                        *slot = self.specs.get(i).and_then(|s| s.build().ok());
                    }
                    slot.as_mut()
                        .map_or(Datum::Null, |s| s.eval(msg.time(), &args))
                }
                None => Datum::Null,
            };
            values.push(value);
        }
        self.values = values;
    }
}

/// The output stage's inputs.
pub(crate) struct WindowRow<'a> {
    pub(crate) keys: &'a [Datum],
    pub(crate) aggs: &'a [Datum],
    pub(crate) start: Timestamp,
    pub(crate) end: Timestamp,
}

/// Evaluation context.
pub(crate) struct Ctx<'a> {
    pub(crate) msg: Option<&'a Message>,
    pub(crate) window: Option<WindowRow<'a>>,
    /// This message's detector values (see [`DetectorStates`]).
    pub(crate) detectors: &'a [Datum],
}

fn lookup<'v>(mut v: &'v serde_json::Value, path: &[PathSeg]) -> Option<&'v serde_json::Value> {
    for seg in path {
        v = match seg {
            PathSeg::Key(k) => v.as_object()?.get(k)?,
            PathSeg::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

fn num(d: &Datum) -> Option<f64> {
    d.as_f64()
}

fn arith(op: BinOp, a: &Datum, b: &Datum) -> Datum {
    if let (Datum::Int(x), Datum::Int(y)) = (a, b) {
        let r = match op {
            BinOp::Add => x.checked_add(*y),
            BinOp::Sub => x.checked_sub(*y),
            BinOp::Mul => x.checked_mul(*y),
            BinOp::Div => x.checked_div(*y),
            BinOp::Mod => x.checked_rem(*y),
            _ => None,
        };
        // Overflow or division by zero: fall through to float, where /0 is NULL below.
        if let Some(r) = r {
            return Datum::Int(r);
        }
    }
    let (Some(x), Some(y)) = (num(a), num(b)) else {
        return Datum::Null;
    };
    let r = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div if y != 0.0 => x / y,
        BinOp::Mod if y != 0.0 => x % y,
        _ => return Datum::Null,
    };
    if r.is_finite() {
        Datum::Float(r)
    } else {
        Datum::Null
    }
}

fn compare(op: BinOp, a: &Datum, b: &Datum) -> Datum {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Datum::Null, _) | (_, Datum::Null) => None,
        (Datum::Int(x), Datum::Int(y)) => Some(x.cmp(y)),
        (Datum::Int(_) | Datum::Float(_), Datum::Int(_) | Datum::Float(_)) => {
            num(a).zip(num(b)).and_then(|(x, y)| x.partial_cmp(&y))
        }
        (Datum::Str(x), Datum::Str(y)) => Some(x.cmp(y)),
        (Datum::Bool(x), Datum::Bool(y)) => Some(x.cmp(y)),
        (Datum::Json(x), Datum::Json(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
            Some(if x == y {
                Ordering::Equal
            } else {
                Ordering::Less
            })
        }
        _ => None,
    };
    let Some(ord) = ord else {
        return Datum::Null;
    };
    Datum::Bool(match op {
        BinOp::Eq => ord.is_eq(),
        BinOp::Ne => !ord.is_eq(),
        BinOp::Lt => ord.is_lt(),
        BinOp::Le => ord.is_le(),
        BinOp::Gt => ord.is_gt(),
        BinOp::Ge => ord.is_ge(),
        _ => return Datum::Null,
    })
}

fn text(d: &Datum) -> Option<String> {
    match d {
        Datum::Null => None,
        Datum::Str(s) => Some(s.clone()),
        Datum::Json(v) => Some(v.to_string()),
        other => Some(other.to_json().to_string()),
    }
}

fn cast(d: Datum, to: CastType) -> Datum {
    match (to, d) {
        (_, Datum::Null) => Datum::Null,
        (CastType::Int, Datum::Int(i)) => Datum::Int(i),
        (CastType::Int, Datum::Float(f)) if f.is_finite() && f.abs() < 9.2e18 => {
            Datum::Int(f.trunc() as i64)
        }
        (CastType::Int, Datum::Bool(b)) => Datum::Int(i64::from(b)),
        (CastType::Int, Datum::Str(s)) => s
            .trim()
            .parse::<i64>()
            .map(Datum::Int)
            .or_else(|_| {
                s.trim()
                    .parse::<f64>()
                    .map(|f| cast(Datum::Float(f), CastType::Int))
            })
            .unwrap_or(Datum::Null),
        (CastType::Float, Datum::Int(i)) => Datum::Float(i as f64),
        (CastType::Float, Datum::Float(f)) => Datum::Float(f),
        (CastType::Float, Datum::Bool(b)) => Datum::Float(f64::from(u8::from(b))),
        (CastType::Float, Datum::Str(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or(Datum::Null, Datum::Float),
        (CastType::Str, d) => text(&d).map_or(Datum::Null, Datum::Str),
        (CastType::Bool, Datum::Bool(b)) => Datum::Bool(b),
        (CastType::Bool, Datum::Int(i)) => Datum::Bool(i != 0),
        (CastType::Bool, Datum::Float(f)) => Datum::Bool(f != 0.0),
        (CastType::Bool, Datum::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "on" => Datum::Bool(true),
            "false" | "f" | "0" | "no" | "off" => Datum::Bool(false),
            _ => Datum::Null,
        },
        _ => Datum::Null,
    }
}

fn float_fn(d: &Datum, f: impl Fn(f64) -> f64) -> Datum {
    match num(d).map(f) {
        Some(r) if r.is_finite() => Datum::Float(r),
        _ => Datum::Null,
    }
}

impl Expr {
    /// Evaluate. Never fails: type mismatches on dynamic data give `NULL`.
    pub(crate) fn eval(&self, ctx: &mut Ctx<'_>) -> Datum {
        match self {
            Expr::Lit(d) => d.clone(),
            Expr::Payload(path) => ctx
                .msg
                .and_then(|m| lookup(&m.payload, path))
                .map_or(Datum::Null, Datum::from_json),
            Expr::Func(f, args) => self.eval_func(*f, args, ctx),
            Expr::RegexMatch(e, re) => match e.eval(ctx) {
                Datum::Str(s) => Datum::Bool(re.is_match(&s)),
                _ => Datum::Null,
            },
            Expr::RegexReplace(e, re, rep) => match e.eval(ctx) {
                Datum::Str(s) => Datum::Str(re.replace_all(&s, rep.as_str()).into_owned()),
                _ => Datum::Null,
            },
            Expr::Like(e, re, negated) => match e.eval(ctx) {
                Datum::Str(s) => Datum::Bool(re.is_match(&s) != *negated),
                _ => Datum::Null,
            },
            Expr::Binary(op, a, b) => match op {
                BinOp::And => match a.eval(ctx) {
                    Datum::Bool(false) => Datum::Bool(false),
                    l => match (l, b.eval(ctx)) {
                        (_, Datum::Bool(false)) => Datum::Bool(false),
                        (Datum::Bool(true), Datum::Bool(true)) => Datum::Bool(true),
                        _ => Datum::Null,
                    },
                },
                BinOp::Or => match a.eval(ctx) {
                    Datum::Bool(true) => Datum::Bool(true),
                    l => match (l, b.eval(ctx)) {
                        (_, Datum::Bool(true)) => Datum::Bool(true),
                        (Datum::Bool(false), Datum::Bool(false)) => Datum::Bool(false),
                        _ => Datum::Null,
                    },
                },
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
                    arith(*op, &a.eval(ctx), &b.eval(ctx))
                }
                _ => compare(*op, &a.eval(ctx), &b.eval(ctx)),
            },
            Expr::Not(e) => match e.eval(ctx) {
                Datum::Bool(b) => Datum::Bool(!b),
                _ => Datum::Null,
            },
            Expr::Neg(e) => match e.eval(ctx) {
                Datum::Int(i) => i.checked_neg().map_or(Datum::Null, Datum::Int),
                Datum::Float(f) => Datum::Float(-f),
                _ => Datum::Null,
            },
            Expr::IsNull(e, negated) => Datum::Bool(e.eval(ctx).is_null() != *negated),
            Expr::InList(e, list, negated) => {
                let v = e.eval(ctx);
                if v.is_null() {
                    return Datum::Null;
                }
                let found = list
                    .iter()
                    .any(|x| compare(BinOp::Eq, &v, &x.eval(ctx)).is_true());
                Datum::Bool(found != *negated)
            }
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => {
                let subject = operand.as_ref().map(|o| o.eval(ctx));
                for (cond, then) in whens {
                    let c = cond.eval(ctx);
                    let hit = match &subject {
                        Some(s) => compare(BinOp::Eq, s, &c).is_true(),
                        None => c.is_true(),
                    };
                    if hit {
                        return then.eval(ctx);
                    }
                }
                otherwise.as_ref().map_or(Datum::Null, |e| e.eval(ctx))
            }
            Expr::Cast(e, to) => cast(e.eval(ctx), *to),
            Expr::Detector(i) => ctx.detectors.get(*i).cloned().unwrap_or(Datum::Null),
            Expr::AggRef(i) => ctx
                .window
                .as_ref()
                .and_then(|w| w.aggs.get(*i).cloned())
                .unwrap_or(Datum::Null),
            Expr::KeyRef(i) => ctx
                .window
                .as_ref()
                .and_then(|w| w.keys.get(*i).cloned())
                .unwrap_or(Datum::Null),
            Expr::WindowStart => ctx
                .window
                .as_ref()
                .map_or(Datum::Null, |w| Datum::Int(w.start.as_nanos())),
            Expr::WindowEnd => ctx
                .window
                .as_ref()
                .map_or(Datum::Null, |w| Datum::Int(w.end.as_nanos())),
        }
    }

    fn eval_func(&self, f: Func, args: &[Expr], ctx: &mut Ctx<'_>) -> Datum {
        let msg = ctx.msg;
        let arg = |i: usize, ctx: &mut Ctx<'_>| args.get(i).map_or(Datum::Null, |a| a.eval(ctx));
        match f {
            Func::Topic => {
                let Some(m) = msg else { return Datum::Null };
                if args.is_empty() {
                    return Datum::Str(m.topic.as_str().to_owned());
                }
                match arg(0, ctx) {
                    Datum::Int(n) if n >= 1 => m
                        .topic
                        .levels()
                        .nth((n - 1) as usize)
                        .map_or(Datum::Null, Datum::from),
                    _ => Datum::Null,
                }
            }
            Func::ClientId => msg.map_or(Datum::Null, |m| Datum::Str(m.client_id.clone())),
            Func::DeviceId => msg
                .and_then(|m| m.device_id.as_ref())
                .map_or(Datum::Null, |d| Datum::from(d.as_str())),
            Func::Timestamp => msg.map_or(Datum::Null, |m| Datum::Int(m.time().as_nanos())),
            Func::Now => msg.map_or(Datum::Null, |m| Datum::Int(m.received_at.as_nanos())),
            Func::Tag => match (msg, arg(0, ctx)) {
                (Some(m), Datum::Str(k)) => m
                    .tags
                    .get(&k)
                    .map_or(Datum::Null, |v| Datum::from(v.as_str())),
                _ => Datum::Null,
            },
            Func::Abs => match arg(0, ctx) {
                Datum::Int(i) => i.checked_abs().map_or(Datum::Null, Datum::Int),
                d => float_fn(&d, f64::abs),
            },
            Func::Round => {
                let x = arg(0, ctx);
                let digits = match args.len() {
                    2 => match arg(1, ctx) {
                        Datum::Int(n) => n.clamp(-15, 15) as i32,
                        _ => return Datum::Null,
                    },
                    _ => 0,
                };
                match x {
                    Datum::Int(i) if digits >= 0 => Datum::Int(i),
                    d => {
                        let p = 10f64.powi(digits);
                        float_fn(&d, |v| (v * p).round() / p)
                    }
                }
            }
            Func::Floor => match arg(0, ctx) {
                Datum::Int(i) => Datum::Int(i),
                d => float_fn(&d, f64::floor),
            },
            Func::Ceil => match arg(0, ctx) {
                Datum::Int(i) => Datum::Int(i),
                d => float_fn(&d, f64::ceil),
            },
            Func::Sqrt => float_fn(&arg(0, ctx), f64::sqrt),
            Func::Ln => float_fn(&arg(0, ctx), f64::ln),
            Func::Log10 => float_fn(&arg(0, ctx), f64::log10),
            Func::Exp => float_fn(&arg(0, ctx), f64::exp),
            Func::Pow => {
                let (b, e) = (arg(0, ctx), arg(1, ctx));
                match num(&e) {
                    Some(e) => float_fn(&b, |b| b.powf(e)),
                    None => Datum::Null,
                }
            }
            Func::Lower => match arg(0, ctx) {
                Datum::Str(s) => Datum::Str(s.to_lowercase()),
                _ => Datum::Null,
            },
            Func::Upper => match arg(0, ctx) {
                Datum::Str(s) => Datum::Str(s.to_uppercase()),
                _ => Datum::Null,
            },
            Func::Trim => match arg(0, ctx) {
                Datum::Str(s) => Datum::Str(s.trim().to_owned()),
                _ => Datum::Null,
            },
            Func::Length => match arg(0, ctx) {
                Datum::Str(s) => Datum::Int(s.chars().count() as i64),
                Datum::Json(serde_json::Value::Array(a)) => Datum::Int(a.len() as i64),
                _ => Datum::Null,
            },
            Func::Concat => {
                // SQL CONCAT skips NULLs.
                let mut out = String::new();
                for i in 0..args.len() {
                    if let Some(t) = text(&arg(i, ctx)) {
                        out.push_str(&t);
                    }
                }
                Datum::Str(out)
            }
            Func::Substr => {
                let s = arg(0, ctx);
                let start = arg(1, ctx);
                let len = if args.len() > 2 {
                    Some(arg(2, ctx))
                } else {
                    None
                };
                let (Datum::Str(s), Datum::Int(start)) = (s, start) else {
                    return Datum::Null;
                };
                // 1-based like SQL; positions before 1 shorten the result as in PostgreSQL.
                let from = start - 1;
                let to = match len {
                    None => i64::MAX,
                    Some(Datum::Int(n)) if n >= 0 => from.saturating_add(n),
                    Some(_) => return Datum::Null,
                };
                let (from, to) = (from.max(0) as usize, to.max(0) as usize);
                Datum::Str(s.chars().skip(from).take(to.saturating_sub(from)).collect())
            }
            Func::Coalesce => {
                for i in 0..args.len() {
                    let v = arg(i, ctx);
                    if !v.is_null() {
                        return v;
                    }
                }
                Datum::Null
            }
        }
    }
}

/// Translate a SQL `LIKE` pattern (`%`, `_`, optional escape) to an anchored regex.
pub(crate) fn like_regex(pattern: &str, escape: Option<char>) -> Result<Regex, regex::Error> {
    let mut re = String::from("(?s)^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            c if Some(c) == escape => {
                if let Some(n) = chars.next() {
                    re.push_str(&regex::escape(&n.to_string()));
                }
            }
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        let re = like_regex("dev_%.x", None).expect("valid");
        assert!(re.is_match("dev1-abc.x"));
        assert!(!re.is_match("dev.x"));
        let re = like_regex("100!%", Some('!')).expect("valid");
        assert!(re.is_match("100%") && !re.is_match("1000"));
    }

    #[test]
    fn arithmetic_and_comparison_semantics() {
        assert_eq!(
            arith(BinOp::Add, &Datum::Int(2), &Datum::Int(3)),
            Datum::Int(5)
        );
        assert_eq!(
            arith(BinOp::Div, &Datum::Int(7), &Datum::Int(2)),
            Datum::Int(3)
        );
        assert_eq!(
            arith(BinOp::Div, &Datum::Int(7), &Datum::Int(0)),
            Datum::Null
        );
        assert_eq!(
            arith(BinOp::Mul, &Datum::Float(1.5), &Datum::Int(2)),
            Datum::Float(3.0)
        );
        assert_eq!(
            arith(BinOp::Add, &Datum::Str("a".into()), &Datum::Int(2)),
            Datum::Null
        );
        assert_eq!(
            compare(BinOp::Lt, &Datum::Int(1), &Datum::Float(1.5)),
            Datum::Bool(true)
        );
        assert_eq!(
            compare(BinOp::Eq, &Datum::Int(1), &Datum::Str("1".into())),
            Datum::Null
        );
        assert_eq!(
            cast(Datum::Str(" 42 ".into()), CastType::Int),
            Datum::Int(42)
        );
        assert_eq!(cast(Datum::Str("2.9".into()), CastType::Int), Datum::Int(2));
        assert_eq!(
            cast(Datum::Float(2.5), CastType::Str),
            Datum::Str("2.5".into())
        );
        assert_eq!(
            cast(Datum::Str("yes".into()), CastType::Bool),
            Datum::Bool(true)
        );
    }
}
