//! SQL text → [`Plan`]: parsing with `sqlparser` (generic dialect, which reads the quoted
//! topic filter in `FROM` as a quoted name), name resolution, static type checks, aggregate
//! extraction and window spec. Every error carries the position of the offending
//! expression.

use std::time::Duration;

use ferrite_core::TopicFilter;
use sqlparser::ast::{
    self as sql, AccessExpr, BinaryOperator, CeilFloorKind, DataType, DateTimeField, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, ObjectNamePart, SelectItem, SetExpr, Spanned,
    Statement, Subscript, TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};

use super::expr::{BinOp, CastType, DetectorSpec, Expr, Func, PathSeg, like_regex};
use crate::agg::{AggSpec, DEFAULT_HLL_PRECISION, DEFAULT_QUANTILE_ACCURACY};
use crate::datum::Datum;
use crate::error::{Position, RulesError};
use crate::window::WindowAssigner;

/// One output column.
#[derive(Clone, Debug)]
pub(crate) enum Projection {
    /// `*`: the payload object's fields.
    Wildcard,
    /// A named expression.
    Column { name: String, expr: Expr },
}

/// The windowed part of a plan.
#[derive(Clone, Debug)]
pub(crate) struct WindowPlan {
    pub(crate) assigner: WindowAssigner,
    /// Group keys, evaluated per message.
    pub(crate) keys: Vec<Expr>,
    /// Aggregates and their per-message argument (`None`: `COUNT(*)`).
    pub(crate) aggs: Vec<(AggSpec, Option<Expr>)>,
    pub(crate) having: Option<Expr>,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) filter: TopicFilter,
    pub(crate) projection: Vec<Projection>,
    pub(crate) predicate: Option<Expr>,
    pub(crate) window: Option<WindowPlan>,
    /// Detectors and their input expressions, inner calls first.
    pub(crate) detectors: Vec<(DetectorSpec, Vec<Expr>)>,
}

/// Static types, as far as they are known (payload data is `Any`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Float,
    Str,
    Json,
    /// A number of unknown kind (arithmetic on payload data).
    Num,
    Any,
    Null,
}

impl Ty {
    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Num | Ty::Any | Ty::Null)
    }
    fn string(self) -> bool {
        matches!(self, Ty::Str | Ty::Any | Ty::Null)
    }
    fn boolean(self) -> bool {
        matches!(self, Ty::Bool | Ty::Any | Ty::Null)
    }
    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "boolean",
            Ty::Int => "integer",
            Ty::Float => "float",
            Ty::Str => "string",
            Ty::Json => "JSON",
            Ty::Num => "number",
            Ty::Any => "any",
            Ty::Null => "null",
        }
    }
    fn of(d: &Datum) -> Ty {
        match d {
            Datum::Null => Ty::Null,
            Datum::Bool(_) => Ty::Bool,
            Datum::Int(_) => Ty::Int,
            Datum::Float(_) => Ty::Float,
            Datum::Str(_) => Ty::Str,
            Datum::Json(_) => Ty::Json,
        }
    }
    /// The type of a numeric result of two operands.
    fn num_join(a: Ty, b: Ty) -> Ty {
        match (a, b) {
            (Ty::Int, Ty::Int) => Ty::Int,
            (Ty::Float, _) | (_, Ty::Float) => Ty::Float,
            _ => Ty::Num,
        }
    }
}

/// Which stage an expression is evaluated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Per message: WHERE, stateless projections, group keys, aggregate arguments.
    Row,
    /// Per window result: windowed projections and HAVING.
    Output,
}

fn semantic(pos: Position, message: impl Into<String>) -> RulesError {
    RulesError::Semantic {
        pos,
        message: message.into(),
    }
}

fn position_of(e: &impl Spanned, parent: Position) -> Position {
    let start = e.span().start;
    if start.line == 0 {
        parent
    } else {
        Position {
            line: start.line,
            column: start.column,
        }
    }
}

/// Turn a parser error's trailing "at Line: L, Column: C" into a position.
fn syntax_error(err: ParserError) -> RulesError {
    let text = match err {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
        ParserError::RecursionLimitExceeded => "expression nested too deeply".to_owned(),
    };
    let mut pos = Position { line: 1, column: 1 };
    let mut message = text.clone();
    if let Some(i) = text.rfind(" at Line: ") {
        let tail = &text[i + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        if let (Some(l), Some(c)) = (parts.next(), parts.next()) {
            let c: String = c.chars().take_while(char::is_ascii_digit).collect();
            if let (Ok(line), Ok(column)) = (l.trim().parse(), c.parse()) {
                pos = Position { line, column };
                message = text[..i].to_owned();
            }
        }
    }
    RulesError::Syntax { pos, message }
}

/// Parse a duration literal: `'10s'` (humantime) or `INTERVAL '10' SECOND`.
fn duration_of(e: &sql::Expr, parent: Position) -> Result<Duration, RulesError> {
    let pos = position_of(e, parent);
    let bad = |why: String| semantic(pos, why);
    match e {
        sql::Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => humantime::parse_duration(s.trim())
                .map_err(|err| bad(format!("invalid duration {s:?}: {err}"))),
            _ => Err(bad(
                "expected a duration such as '10s' or INTERVAL '10' SECOND".into(),
            )),
        },
        sql::Expr::Interval(iv) => {
            let text = match iv.value.as_ref() {
                sql::Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
                    _ => return Err(bad("INTERVAL needs a literal".into())),
                },
                _ => return Err(bad("INTERVAL needs a literal".into())),
            };
            match &iv.leading_field {
                None => humantime::parse_duration(text.trim())
                    .map_err(|err| bad(format!("invalid interval {text:?}: {err}"))),
                Some(field) => {
                    let n: f64 = text
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("invalid interval amount {text:?}")))?;
                    let unit = match field {
                        DateTimeField::Millisecond | DateTimeField::Milliseconds => 1e-3,
                        DateTimeField::Second | DateTimeField::Seconds => 1.0,
                        DateTimeField::Minute | DateTimeField::Minutes => 60.0,
                        DateTimeField::Hour | DateTimeField::Hours => 3600.0,
                        DateTimeField::Day | DateTimeField::Days => 86_400.0,
                        other => return Err(bad(format!("unsupported interval unit {other}"))),
                    };
                    Duration::try_from_secs_f64(n * unit)
                        .map_err(|_| bad(format!("invalid interval {text} {field}")))
                }
            }
        }
        _ => Err(bad(
            "expected a duration such as '10s' or INTERVAL '10' SECOND".into(),
        )),
    }
}

fn function_args(f: &sql::Function, pos: Position) -> Result<Vec<FunctionArgExpr>, RulesError> {
    if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
        return Err(semantic(
            pos,
            "OVER, FILTER and WITHIN GROUP are not supported in rules",
        ));
    }
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::Subquery(_) => Err(semantic(pos, "subqueries are not supported")),
        FunctionArguments::List(list) => {
            if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                return Err(semantic(
                    pos,
                    "DISTINCT and clauses in function arguments are not supported",
                ));
            }
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(e) => Ok(e.clone()),
                    _ => Err(semantic(pos, "named function arguments are not supported")),
                })
                .collect()
        }
    }
}

fn function_name(f: &sql::Function) -> String {
    f.name.to_string().to_ascii_lowercase()
}

fn is_aggregate(name: &str) -> bool {
    matches!(
        name,
        "count"
            | "sum"
            | "min"
            | "max"
            | "avg"
            | "mean"
            | "stddev"
            | "stddev_samp"
            | "stddev_pop"
            | "first"
            | "last"
            | "approx_distinct"
            | "approx_percentile"
            | "quantile"
            | "heavy_hitters"
            | "top_k"
            | "sample"
    )
}

fn is_window_fn(name: &str) -> bool {
    matches!(name, "tumble" | "hop" | "session")
}

/// A literal number argument.
fn literal_f64(e: &sql::Expr, pos: Position, what: &str) -> Result<f64, RulesError> {
    let (neg, inner) = match e {
        sql::Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => (true, expr.as_ref()),
        other => (false, other),
    };
    match inner {
        sql::Expr::Value(v) => match &v.value {
            Value::Number(s, _) => s
                .parse::<f64>()
                .map(|x| if neg { -x } else { x })
                .map_err(|_| semantic(position_of(e, pos), format!("{what}: bad number {s}"))),
            _ => Err(semantic(
                position_of(e, pos),
                format!("{what} must be a number literal"),
            )),
        },
        _ => Err(semantic(
            position_of(e, pos),
            format!("{what} must be a number literal"),
        )),
    }
}

fn literal_str(e: &sql::Expr, pos: Position, what: &str) -> Result<String, RulesError> {
    match e {
        sql::Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Ok(s.clone()),
            _ => Err(semantic(
                position_of(e, pos),
                format!("{what} must be a string literal"),
            )),
        },
        _ => Err(semantic(
            position_of(e, pos),
            format!("{what} must be a string literal"),
        )),
    }
}

struct Compiler {
    stage: Stage,
    windowed: bool,
    /// SQL text of each group key, for matching in the output stage.
    key_texts: Vec<String>,
    /// Aggregates found so far: SQL text, spec, argument.
    aggs: Vec<(String, AggSpec, Option<Expr>)>,
    /// Detector calls found so far: SQL text, spec, inputs.
    detectors: Vec<(String, DetectorSpec, Vec<Expr>)>,
    sample_seed: u64,
}

impl Compiler {
    fn bool_expr(
        &mut self,
        e: &sql::Expr,
        pos: Position,
        clause: &str,
    ) -> Result<Expr, RulesError> {
        let (x, ty) = self.expr(e, pos)?;
        if !ty.boolean() {
            return Err(semantic(
                position_of(e, pos),
                format!("{clause} needs a boolean condition, found {}", ty.name()),
            ));
        }
        Ok(x)
    }

    fn expr(&mut self, e: &sql::Expr, parent: Position) -> Result<(Expr, Ty), RulesError> {
        let pos = position_of(e, parent);
        if self.stage == Stage::Output {
            let text = e.to_string();
            if let Some(i) = self.key_texts.iter().position(|k| *k == text) {
                return Ok((Expr::KeyRef(i), Ty::Any));
            }
        }
        match e {
            sql::Expr::Nested(inner) => self.expr(inner, pos),
            sql::Expr::Value(v) => {
                let d = match &v.value {
                    Value::Number(s, _) => match s.parse::<i64>() {
                        Ok(i) => Datum::Int(i),
                        Err(_) => s
                            .parse::<f64>()
                            .map(Datum::Float)
                            .map_err(|_| semantic(pos, format!("bad number {s}")))?,
                    },
                    Value::SingleQuotedString(s) => Datum::Str(s.clone()),
                    Value::Boolean(b) => Datum::Bool(*b),
                    Value::Null => Datum::Null,
                    other => return Err(semantic(pos, format!("unsupported literal {other}"))),
                };
                let ty = Ty::of(&d);
                Ok((Expr::Lit(d), ty))
            }
            sql::Expr::Identifier(_)
            | sql::Expr::CompoundIdentifier(_)
            | sql::Expr::CompoundFieldAccess { .. } => {
                let path = self.path(e, pos)?;
                if self.stage == Stage::Output {
                    return Err(semantic(
                        pos,
                        format!("{e} must appear in GROUP BY or be used inside an aggregate"),
                    ));
                }
                Ok((Expr::Payload(path), Ty::Any))
            }
            sql::Expr::BinaryOp { left, op, right } => self.binary(left, op, right, pos),
            sql::Expr::UnaryOp { op, expr } => {
                let (x, ty) = self.expr(expr, pos)?;
                match op {
                    UnaryOperator::Not if ty.boolean() => Ok((Expr::Not(Box::new(x)), Ty::Bool)),
                    UnaryOperator::Minus if ty.numeric() => Ok((Expr::Neg(Box::new(x)), ty)),
                    UnaryOperator::Plus if ty.numeric() => Ok((x, ty)),
                    UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus => {
                        Err(semantic(pos, format!("cannot apply {op} to {}", ty.name())))
                    }
                    other => Err(semantic(pos, format!("unsupported operator {other}"))),
                }
            }
            sql::Expr::IsNull(inner) | sql::Expr::IsNotNull(inner) => {
                let (x, _) = self.expr(inner, pos)?;
                Ok((
                    Expr::IsNull(Box::new(x), matches!(e, sql::Expr::IsNotNull(_))),
                    Ty::Bool,
                ))
            }
            sql::Expr::InList {
                expr,
                list,
                negated,
            } => {
                let (x, _) = self.expr(expr, pos)?;
                let items = list
                    .iter()
                    .map(|i| self.expr(i, pos).map(|(x, _)| x))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((Expr::InList(Box::new(x), items, *negated), Ty::Bool))
            }
            sql::Expr::Between { .. } => {
                Err(semantic(pos, "use a >= x AND a <= y instead of BETWEEN"))
            }
            sql::Expr::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | sql::Expr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any {
                    return Err(semantic(pos, "LIKE ANY is not supported"));
                }
                let (x, ty) = self.expr(expr, pos)?;
                if !ty.string() {
                    return Err(semantic(
                        pos,
                        format!("LIKE needs a string, found {}", ty.name()),
                    ));
                }
                let pat = literal_str(pattern, pos, "the LIKE pattern")?;
                let escape = match escape_char.as_ref().map(|v| &v.value) {
                    None => None,
                    Some(Value::SingleQuotedString(s)) if s.chars().count() == 1 => {
                        s.chars().next()
                    }
                    Some(_) => return Err(semantic(pos, "ESCAPE needs one character")),
                };
                let re = like_regex(&pat, escape)
                    .and_then(|re| {
                        if matches!(e, sql::Expr::ILike { .. }) {
                            regex::Regex::new(&format!("(?i){}", re.as_str()))
                        } else {
                            Ok(re)
                        }
                    })
                    .map_err(|err| semantic(position_of(pattern.as_ref(), pos), err.to_string()))?;
                Ok((Expr::Like(Box::new(x), re, *negated), Ty::Bool))
            }
            sql::Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let operand = match operand {
                    Some(o) => Some(Box::new(self.expr(o, pos)?.0)),
                    None => None,
                };
                let mut whens = Vec::new();
                let mut ty: Option<Ty> = None;
                for cw in conditions {
                    let cond = if operand.is_some() {
                        self.expr(&cw.condition, pos)?.0
                    } else {
                        self.bool_expr(&cw.condition, pos, "WHEN")?
                    };
                    let (then, t) = self.expr(&cw.result, pos)?;
                    ty = Some(match ty {
                        None => t,
                        Some(prev) if prev == t => t,
                        Some(_) => Ty::Any,
                    });
                    whens.push((cond, then));
                }
                let otherwise = match else_result {
                    Some(x) => Some(Box::new(self.expr(x, pos)?.0)),
                    None => None,
                };
                Ok((
                    Expr::Case {
                        operand,
                        whens,
                        otherwise,
                    },
                    ty.unwrap_or(Ty::Any),
                ))
            }
            sql::Expr::Cast {
                expr, data_type, ..
            } => {
                let (x, _) = self.expr(expr, pos)?;
                let (to, ty) = match data_type {
                    DataType::Int(_)
                    | DataType::Integer(_)
                    | DataType::BigInt(_)
                    | DataType::SmallInt(_)
                    | DataType::Int64
                    | DataType::Int8(_) => (CastType::Int, Ty::Int),
                    DataType::Float(_)
                    | DataType::Double(_)
                    | DataType::DoublePrecision
                    | DataType::Real
                    | DataType::Float64
                    | DataType::Float8 => (CastType::Float, Ty::Float),
                    DataType::Text | DataType::String(_) | DataType::Varchar(_) => {
                        (CastType::Str, Ty::Str)
                    }
                    DataType::Boolean | DataType::Bool => (CastType::Bool, Ty::Bool),
                    other => {
                        return Err(semantic(
                            pos,
                            format!("cannot CAST to {other}; use INT, FLOAT, STRING or BOOLEAN"),
                        ));
                    }
                };
                Ok((Expr::Cast(Box::new(x), to), ty))
            }
            sql::Expr::Ceil { expr, field } | sql::Expr::Floor { expr, field } => {
                if !matches!(
                    field,
                    CeilFloorKind::DateTimeField(DateTimeField::NoDateTime)
                ) {
                    return Err(semantic(pos, "CEIL/FLOOR take one numeric argument"));
                }
                let (x, ty) = self.expr(expr, pos)?;
                if !ty.numeric() {
                    return Err(semantic(
                        pos,
                        format!("expected a number, found {}", ty.name()),
                    ));
                }
                let f = if matches!(e, sql::Expr::Ceil { .. }) {
                    Func::Ceil
                } else {
                    Func::Floor
                };
                Ok((
                    Expr::Func(f, vec![x]),
                    if ty == Ty::Int { Ty::Int } else { Ty::Num },
                ))
            }
            sql::Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut args = vec![self.string_arg(expr, pos)?];
                if let Some(f) = substring_from {
                    args.push(self.int_arg(f, pos)?);
                } else {
                    args.push(Expr::Lit(Datum::Int(1)));
                }
                if let Some(f) = substring_for {
                    args.push(self.int_arg(f, pos)?);
                }
                Ok((Expr::Func(Func::Substr, args), Ty::Str))
            }
            sql::Expr::Trim {
                expr,
                trim_where,
                trim_what,
                trim_characters,
            } => {
                if trim_where.is_some() || trim_what.is_some() || trim_characters.is_some() {
                    return Err(semantic(pos, "only TRIM(x) is supported"));
                }
                Ok((
                    Expr::Func(Func::Trim, vec![self.string_arg(expr, pos)?]),
                    Ty::Str,
                ))
            }
            sql::Expr::Function(f) => self.function(f, pos),
            other => Err(semantic(pos, format!("unsupported expression {other}"))),
        }
    }

    fn string_arg(&mut self, e: &sql::Expr, pos: Position) -> Result<Expr, RulesError> {
        let (x, ty) = self.expr(e, pos)?;
        if !ty.string() {
            return Err(semantic(
                position_of(e, pos),
                format!("expected a string, found {}", ty.name()),
            ));
        }
        Ok(x)
    }

    fn num_arg(&mut self, e: &sql::Expr, pos: Position) -> Result<(Expr, Ty), RulesError> {
        let (x, ty) = self.expr(e, pos)?;
        if !ty.numeric() {
            return Err(semantic(
                position_of(e, pos),
                format!("expected a number, found {}", ty.name()),
            ));
        }
        Ok((x, ty))
    }

    fn int_arg(&mut self, e: &sql::Expr, pos: Position) -> Result<Expr, RulesError> {
        let (x, ty) = self.num_arg(e, pos)?;
        if ty == Ty::Float {
            return Err(semantic(
                position_of(e, pos),
                "expected an integer, found float",
            ));
        }
        Ok(x)
    }

    /// A name or path into the payload.
    fn path(&mut self, e: &sql::Expr, pos: Position) -> Result<Vec<PathSeg>, RulesError> {
        let strip = |mut parts: Vec<PathSeg>| {
            if matches!(parts.first(), Some(PathSeg::Key(k)) if k == "payload") {
                parts.remove(0);
            }
            parts
        };
        match e {
            sql::Expr::Identifier(id) => Ok(strip(vec![PathSeg::Key(id.value.clone())])),
            sql::Expr::CompoundIdentifier(ids) => Ok(strip(
                ids.iter().map(|i| PathSeg::Key(i.value.clone())).collect(),
            )),
            sql::Expr::CompoundFieldAccess { root, access_chain } => {
                let mut path = match root.as_ref() {
                    sql::Expr::Identifier(id) => vec![PathSeg::Key(id.value.clone())],
                    sql::Expr::CompoundIdentifier(ids) => {
                        ids.iter().map(|i| PathSeg::Key(i.value.clone())).collect()
                    }
                    _ => return Err(semantic(pos, "paths must start with a field name")),
                };
                for access in access_chain {
                    match access {
                        AccessExpr::Dot(sql::Expr::Identifier(id)) => {
                            path.push(PathSeg::Key(id.value.clone()));
                        }
                        AccessExpr::Subscript(Subscript::Index { index }) => match index {
                            sql::Expr::Value(v) => match &v.value {
                                Value::SingleQuotedString(s) => path.push(PathSeg::Key(s.clone())),
                                Value::Number(n, _) => {
                                    path.push(PathSeg::Index(n.parse().map_err(|_| {
                                        semantic(
                                            position_of(index, pos),
                                            "array index must be a non-negative integer",
                                        )
                                    })?))
                                }
                                _ => {
                                    return Err(semantic(
                                        position_of(index, pos),
                                        "subscripts must be literals",
                                    ));
                                }
                            },
                            _ => {
                                return Err(semantic(
                                    position_of(index, pos),
                                    "subscripts must be literals",
                                ));
                            }
                        },
                        _ => return Err(semantic(pos, "unsupported path step")),
                    }
                }
                Ok(strip(path))
            }
            _ => Err(semantic(pos, "expected a field path")),
        }
    }

    fn binary(
        &mut self,
        left: &sql::Expr,
        op: &BinaryOperator,
        right: &sql::Expr,
        pos: Position,
    ) -> Result<(Expr, Ty), RulesError> {
        let (l, lt) = self.expr(left, pos)?;
        let (r, rt) = self.expr(right, pos)?;
        let lpos = position_of(left, pos);
        let mismatch = |what: &str| {
            semantic(
                lpos,
                format!("cannot apply {what} to {} and {}", lt.name(), rt.name()),
            )
        };
        let (bop, ty) = match op {
            BinaryOperator::Plus => (BinOp::Add, None),
            BinaryOperator::Minus => (BinOp::Sub, None),
            BinaryOperator::Multiply => (BinOp::Mul, None),
            BinaryOperator::Divide => (BinOp::Div, None),
            BinaryOperator::Modulo => (BinOp::Mod, None),
            BinaryOperator::Eq => (BinOp::Eq, Some(Ty::Bool)),
            BinaryOperator::NotEq => (BinOp::Ne, Some(Ty::Bool)),
            BinaryOperator::Lt => (BinOp::Lt, Some(Ty::Bool)),
            BinaryOperator::LtEq => (BinOp::Le, Some(Ty::Bool)),
            BinaryOperator::Gt => (BinOp::Gt, Some(Ty::Bool)),
            BinaryOperator::GtEq => (BinOp::Ge, Some(Ty::Bool)),
            BinaryOperator::And => (BinOp::And, Some(Ty::Bool)),
            BinaryOperator::Or => (BinOp::Or, Some(Ty::Bool)),
            BinaryOperator::StringConcat => {
                return Ok((Expr::Func(Func::Concat, vec![l, r]), Ty::Str));
            }
            other => return Err(semantic(pos, format!("unsupported operator {other}"))),
        };
        match bop {
            BinOp::And | BinOp::Or => {
                if !lt.boolean() || !rt.boolean() {
                    return Err(mismatch(if bop == BinOp::And { "AND" } else { "OR" }));
                }
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
                if !lt.numeric() || !rt.numeric() {
                    return Err(mismatch(&op.to_string()));
                }
            }
            _ => {
                let known = |t: Ty| !matches!(t, Ty::Any | Ty::Null);
                let same_family = (lt.numeric() && rt.numeric()) || lt == rt;
                if known(lt) && known(rt) && !same_family {
                    return Err(mismatch(&op.to_string()));
                }
            }
        }
        let ty = ty.unwrap_or(match bop {
            BinOp::Div => {
                if lt == Ty::Int && rt == Ty::Int {
                    Ty::Int
                } else {
                    Ty::num_join(lt, rt)
                }
            }
            _ => Ty::num_join(lt, rt),
        });
        Ok((Expr::Binary(bop, Box::new(l), Box::new(r)), ty))
    }

    fn function(&mut self, f: &sql::Function, pos: Position) -> Result<(Expr, Ty), RulesError> {
        let name = function_name(f);
        let args = function_args(f, pos)?;
        let exprs: Vec<&sql::Expr> = args
            .iter()
            .filter_map(|a| match a {
                FunctionArgExpr::Expr(e) => Some(e),
                _ => None,
            })
            .collect();
        let star = args.iter().any(|a| matches!(a, FunctionArgExpr::Wildcard));
        if star && name != "count" {
            return Err(semantic(pos, format!("{name}(*) is not supported")));
        }
        let arity = |lo: usize, hi: usize| -> Result<(), RulesError> {
            if exprs.len() < lo || exprs.len() > hi {
                let want = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo} to {hi}")
                };
                return Err(semantic(
                    pos,
                    format!("{name} takes {want} argument(s), got {}", exprs.len()),
                ));
            }
            Ok(())
        };
        if is_aggregate(&name) {
            return self.aggregate(&name, f, &exprs, star, pos);
        }
        if is_window_fn(&name) {
            return Err(semantic(pos, format!("{name}(...) belongs in GROUP BY")));
        }
        if matches!(name.as_str(), "window_start" | "window_end") {
            arity(0, 0)?;
            if self.stage != Stage::Output {
                return Err(semantic(
                    pos,
                    format!("{name}() needs a window (GROUP BY ..., TUMBLE(...))"),
                ));
            }
            let e = if name == "window_start" {
                Expr::WindowStart
            } else {
                Expr::WindowEnd
            };
            return Ok((e, Ty::Int));
        }
        if let Some(res) = self.detector(&name, f.to_string(), &exprs, pos)? {
            return Ok(res);
        }
        let (func, ty) = match name.as_str() {
            "topic" => {
                arity(0, 1)?;
                let args = match exprs.first() {
                    Some(e) => vec![self.int_arg(e, pos)?],
                    None => vec![],
                };
                return self.row_only(Expr::Func(Func::Topic, args), Ty::Str, &name, pos);
            }
            "clientid" | "client_id" => (Func::ClientId, Ty::Str),
            "device_id" | "deviceid" => (Func::DeviceId, Ty::Str),
            "timestamp" => (Func::Timestamp, Ty::Int),
            "now" => (Func::Now, Ty::Int),
            "tag" => {
                arity(1, 1)?;
                let k = self.string_arg(exprs[0], pos)?;
                return self.row_only(Expr::Func(Func::Tag, vec![k]), Ty::Str, &name, pos);
            }
            "regex_match" | "regex_replace" => {
                let replace = name == "regex_replace";
                arity(if replace { 3 } else { 2 }, if replace { 3 } else { 2 })?;
                let s = self.string_arg(exprs[0], pos)?;
                let pat = literal_str(exprs[1], pos, "the regex pattern")?;
                let re = regex::Regex::new(&pat).map_err(|err| {
                    semantic(position_of(exprs[1], pos), format!("invalid regex: {err}"))
                })?;
                return Ok(if replace {
                    let rep = literal_str(exprs[2], pos, "the replacement")?;
                    (Expr::RegexReplace(Box::new(s), re, rep), Ty::Str)
                } else {
                    (Expr::RegexMatch(Box::new(s), re), Ty::Bool)
                });
            }
            "abs" | "round" | "floor" | "ceil" | "ceiling" | "sqrt" | "ln" | "log10" | "exp" => {
                if name == "round" {
                    arity(1, 2)?;
                } else {
                    arity(1, 1)?;
                }
                let mut xs = Vec::new();
                let mut first_ty = Ty::Any;
                for (i, e) in exprs.iter().enumerate() {
                    let (x, t) = if i == 1 {
                        (self.int_arg(e, pos)?, Ty::Int)
                    } else {
                        self.num_arg(e, pos)?
                    };
                    if i == 0 {
                        first_ty = t;
                    }
                    xs.push(x);
                }
                let (f, ty) = match name.as_str() {
                    "abs" => (
                        Func::Abs,
                        if first_ty == Ty::Int {
                            Ty::Int
                        } else {
                            Ty::Num
                        },
                    ),
                    "round" => (Func::Round, Ty::Num),
                    "floor" => (Func::Floor, Ty::Num),
                    "ceil" | "ceiling" => (Func::Ceil, Ty::Num),
                    "sqrt" => (Func::Sqrt, Ty::Float),
                    "ln" => (Func::Ln, Ty::Float),
                    "log10" => (Func::Log10, Ty::Float),
                    _ => (Func::Exp, Ty::Float),
                };
                return Ok((Expr::Func(f, xs), ty));
            }
            "pow" | "power" => {
                arity(2, 2)?;
                let a = self.num_arg(exprs[0], pos)?.0;
                let b = self.num_arg(exprs[1], pos)?.0;
                return Ok((Expr::Func(Func::Pow, vec![a, b]), Ty::Float));
            }
            "lower" | "upper" | "trim" | "length" | "char_length" => {
                arity(1, 1)?;
                let (x, t) = self.expr(exprs[0], pos)?;
                let ok = t.string() || (t == Ty::Json && name.ends_with("length"));
                if !ok {
                    return Err(semantic(
                        position_of(exprs[0], pos),
                        format!("{name} needs a string, found {}", t.name()),
                    ));
                }
                let (f, ty) = match name.as_str() {
                    "lower" => (Func::Lower, Ty::Str),
                    "upper" => (Func::Upper, Ty::Str),
                    "trim" => (Func::Trim, Ty::Str),
                    _ => (Func::Length, Ty::Int),
                };
                return Ok((Expr::Func(f, vec![x]), ty));
            }
            "concat" => {
                arity(1, 64)?;
                let xs = exprs
                    .iter()
                    .map(|e| self.expr(e, pos).map(|(x, _)| x))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok((Expr::Func(Func::Concat, xs), Ty::Str));
            }
            "substr" | "substring" => {
                arity(2, 3)?;
                let mut xs = vec![self.string_arg(exprs[0], pos)?];
                for e in &exprs[1..] {
                    xs.push(self.int_arg(e, pos)?);
                }
                return Ok((Expr::Func(Func::Substr, xs), Ty::Str));
            }
            "coalesce" => {
                arity(1, 64)?;
                let xs = exprs
                    .iter()
                    .map(|e| self.expr(e, pos).map(|(x, _)| x))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok((Expr::Func(Func::Coalesce, xs), Ty::Any));
            }
            _ => return Err(semantic(pos, format!("unknown function {name}"))),
        };
        arity(0, 0)?;
        self.row_only(Expr::Func(func, vec![]), ty, &name, pos)
    }

    /// Message facts (topic, ids, time, tags) exist only per message.
    fn row_only(
        &self,
        e: Expr,
        ty: Ty,
        name: &str,
        pos: Position,
    ) -> Result<(Expr, Ty), RulesError> {
        if self.stage == Stage::Output {
            return Err(semantic(
                pos,
                format!("{name}() must appear in GROUP BY or be used inside an aggregate"),
            ));
        }
        Ok((e, ty))
    }

    fn detector(
        &mut self,
        name: &str,
        text: String,
        args: &[&sql::Expr],
        pos: Position,
    ) -> Result<Option<(Expr, Ty)>, RulesError> {
        let arity = |lo: usize, hi: usize| -> Result<(), RulesError> {
            if args.len() < lo || args.len() > hi {
                return Err(semantic(
                    pos,
                    format!("{name} takes {lo} to {hi} arguments, got {}", args.len()),
                ));
            }
            Ok(())
        };
        let (spec, inputs, ty) = match name {
            "zscore" => {
                arity(1, 3)?;
                let alpha = match args.get(1) {
                    Some(a) => literal_f64(a, pos, "zscore alpha")?,
                    None => 0.05,
                };
                let warmup = match args.get(2) {
                    Some(a) => literal_f64(a, pos, "zscore warmup")?.max(0.0) as u64,
                    None => 30,
                };
                (DetectorSpec::ZScore { alpha, warmup }, 1, Ty::Float)
            }
            "seasonal" => {
                arity(3, 3)?;
                let period = duration_of(args[1], pos)?;
                let slots = literal_f64(args[2], pos, "seasonal slots")?;
                (
                    DetectorSpec::Seasonal {
                        period,
                        slots: slots.max(0.0) as usize,
                    },
                    1,
                    Ty::Float,
                )
            }
            "hst" => {
                arity(1, 64)?;
                (
                    DetectorSpec::Hst { dims: args.len() },
                    args.len(),
                    Ty::Float,
                )
            }
            "stuck" => {
                arity(2, 2)?;
                let n = literal_f64(args[1], pos, "stuck run length")?;
                (
                    DetectorSpec::Stuck {
                        n: n.max(0.0) as u64,
                    },
                    1,
                    Ty::Bool,
                )
            }
            "flatline" => {
                arity(3, 3)?;
                let span = duration_of(args[1], pos)?;
                let tolerance = literal_f64(args[2], pos, "flatline tolerance")?;
                (DetectorSpec::FlatLine { span, tolerance }, 1, Ty::Bool)
            }
            "out_of_range" => {
                arity(3, 3)?;
                let lo = literal_f64(args[1], pos, "lower bound")?;
                let hi = literal_f64(args[2], pos, "upper bound")?;
                (DetectorSpec::OutOfRange { lo, hi }, 1, Ty::Bool)
            }
            "gap" => {
                arity(1, 1)?;
                (
                    DetectorSpec::Gap {
                        max: duration_of(args[0], pos)?,
                    },
                    0,
                    Ty::Bool,
                )
            }
            "rate_of_change" => {
                arity(2, 2)?;
                let max = literal_f64(args[1], pos, "rate limit")?;
                (DetectorSpec::RateOfChange { max }, 1, Ty::Bool)
            }
            _ => return Ok(None),
        };
        if self.stage == Stage::Output {
            return Err(semantic(
                pos,
                format!("{name}() works per message, not on window results"),
            ));
        }
        // Validate the parameters now, so a bad one is an error at creation.
        spec.build()
            .map_err(|err| semantic(pos, format!("{name}: {err}")))?;
        if let Some(i) = self.detectors.iter().position(|(t, _, _)| *t == text) {
            return Ok(Some((Expr::Detector(i), ty)));
        }
        let mut xs = Vec::new();
        for a in &args[..inputs] {
            xs.push(self.num_arg(a, pos)?.0);
        }
        self.detectors.push((text, spec, xs));
        Ok(Some((Expr::Detector(self.detectors.len() - 1), ty)))
    }

    fn aggregate(
        &mut self,
        name: &str,
        f: &sql::Function,
        args: &[&sql::Expr],
        star: bool,
        pos: Position,
    ) -> Result<(Expr, Ty), RulesError> {
        if !self.windowed {
            return Err(semantic(
                pos,
                format!("aggregate {name}() needs a window: add GROUP BY ..., TUMBLE('1m')"),
            ));
        }
        if self.stage != Stage::Output {
            return Err(semantic(
                pos,
                format!("aggregate {name}() is not allowed here"),
            ));
        }
        let text = f.to_string();
        if let Some(i) = self.aggs.iter().position(|(t, _, _)| *t == text) {
            let ty = agg_type(&self.aggs[i].1);
            return Ok((Expr::AggRef(i), ty));
        }
        let want = |lo: usize, hi: usize| -> Result<(), RulesError> {
            if args.len() < lo || args.len() > hi {
                return Err(semantic(
                    pos,
                    format!("{name} takes {lo} to {hi} arguments, got {}", args.len()),
                ));
            }
            Ok(())
        };
        // The argument is a per-message expression.
        self.stage = Stage::Row;
        let arg = if star {
            None
        } else {
            args.first().map(|a| self.expr(a, pos))
        };
        self.stage = Stage::Output;
        let arg = arg.transpose()?;
        let numeric = |arg: &Option<(Expr, Ty)>| -> Result<(), RulesError> {
            match arg {
                Some((_, t)) if !t.numeric() => Err(semantic(
                    pos,
                    format!("{name} needs a number, found {}", t.name()),
                )),
                _ => Ok(()),
            }
        };
        let spec = match name {
            "count" => {
                if !star {
                    want(1, 1)?;
                }
                AggSpec::Count
            }
            "sum" | "avg" | "mean" | "stddev" | "stddev_samp" | "stddev_pop" => {
                want(1, 1)?;
                numeric(&arg)?;
                match name {
                    "sum" => AggSpec::Sum,
                    "avg" | "mean" => AggSpec::Mean,
                    "stddev_pop" => AggSpec::StddevPop,
                    _ => AggSpec::StddevSamp,
                }
            }
            "min" | "max" | "first" | "last" => {
                want(1, 1)?;
                match name {
                    "min" => AggSpec::Min,
                    "max" => AggSpec::Max,
                    "first" => AggSpec::First,
                    _ => AggSpec::Last,
                }
            }
            "approx_distinct" => {
                want(1, 1)?;
                AggSpec::Distinct {
                    precision: DEFAULT_HLL_PRECISION,
                }
            }
            "approx_percentile" | "quantile" => {
                want(2, 2)?;
                numeric(&arg)?;
                AggSpec::Quantile {
                    q: literal_f64(args[1], pos, "the quantile")?,
                    relative_accuracy: DEFAULT_QUANTILE_ACCURACY,
                }
            }
            "heavy_hitters" | "top_k" => {
                want(2, 2)?;
                AggSpec::HeavyHitters {
                    k: literal_f64(args[1], pos, "k")?.max(0.0) as usize,
                    epsilon: 0.001,
                    delta: 0.01,
                }
            }
            _ => {
                want(2, 2)?;
                self.sample_seed = self.sample_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                AggSpec::Sample {
                    size: literal_f64(args[1], pos, "the sample size")?.max(0.0) as usize,
                    seed: self.sample_seed,
                }
            }
        };
        spec.validate()
            .map_err(|err| semantic(pos, format!("{name}: {err}")))?;
        let ty = agg_type(&spec);
        self.aggs.push((text, spec, arg.map(|(x, _)| x)));
        Ok((Expr::AggRef(self.aggs.len() - 1), ty))
    }
}

fn agg_type(spec: &AggSpec) -> Ty {
    match spec {
        AggSpec::Count | AggSpec::Distinct { .. } => Ty::Int,
        AggSpec::Mean | AggSpec::StddevSamp | AggSpec::StddevPop | AggSpec::Quantile { .. } => {
            Ty::Float
        }
        AggSpec::HeavyHitters { .. } | AggSpec::Sample { .. } => Ty::Json,
        _ => Ty::Any,
    }
}

/// The output name of an unaliased projection: the last path step of a field, else the
/// expression's SQL text.
fn column_name(e: &sql::Expr) -> String {
    match e {
        sql::Expr::Identifier(id) => id.value.clone(),
        sql::Expr::CompoundIdentifier(ids) => {
            ids.last().map_or_else(String::new, |i| i.value.clone())
        }
        sql::Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last() {
            Some(AccessExpr::Dot(sql::Expr::Identifier(id))) => id.value.clone(),
            Some(AccessExpr::Subscript(Subscript::Index {
                index: sql::Expr::Value(v),
            })) => match &v.value {
                Value::SingleQuotedString(s) => s.clone(),
                _ => e.to_string(),
            },
            _ => e.to_string(),
        },
        other => other.to_string(),
    }
}

/// Compile rule text into a plan.
pub(crate) fn compile(sql_text: &str) -> Result<Plan, RulesError> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql_text).map_err(syntax_error)?;
    let start = Position { line: 1, column: 1 };
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(semantic(start, "a rule is exactly one SELECT statement"));
    };
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
    {
        return Err(semantic(
            start,
            "WITH, ORDER BY, LIMIT and FETCH are not supported in rules",
        ));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(semantic(
            start,
            "a rule is a single SELECT (no UNION, VALUES, ...)",
        ));
    };
    let select_pos = position_of(&select.select_token.0, start);
    if select.distinct.is_some() || select.top.is_some() || select.into.is_some() {
        return Err(semantic(
            select_pos,
            "DISTINCT, TOP and INTO are not supported in rules",
        ));
    }
    if select.qualify.is_some()
        || !select.named_window.is_empty()
        || !select.lateral_views.is_empty()
    {
        return Err(semantic(
            select_pos,
            "QUALIFY, WINDOW and LATERAL VIEW are not supported",
        ));
    }
    // FROM '<topic filter>'
    let filter = match select.from.as_slice() {
        [twj] if twj.joins.is_empty() => match &twj.relation {
            TableFactor::Table {
                name,
                alias: None,
                args: None,
                ..
            } => {
                let pos = position_of(name, select_pos);
                let [ObjectNamePart::Identifier(id)] = name.0.as_slice() else {
                    return Err(semantic(
                        pos,
                        "FROM takes one quoted topic filter, e.g. FROM 'devices/+/telemetry'",
                    ));
                };
                TopicFilter::new(id.value.clone())
                    .map_err(|err| semantic(pos, format!("invalid topic filter: {err}")))?
            }
            other => {
                return Err(semantic(
                    position_of(other, select_pos),
                    "FROM takes one quoted topic filter, e.g. FROM 'devices/+/telemetry'",
                ));
            }
        },
        _ => {
            return Err(semantic(
                select_pos,
                "FROM takes exactly one topic filter (no joins)",
            ));
        }
    };
    let mut c = Compiler {
        stage: Stage::Row,
        windowed: false,
        key_texts: Vec::new(),
        aggs: Vec::new(),
        detectors: Vec::new(),
        sample_seed: 0x5eed,
    };
    let predicate = match &select.selection {
        Some(w) => Some(c.bool_expr(w, select_pos, "WHERE")?),
        None => None,
    };
    // GROUP BY keys and the window.
    let mut assigner = None;
    let mut keys = Vec::new();
    match &select.group_by {
        GroupByExpr::All(_) => return Err(semantic(select_pos, "GROUP BY ALL is not supported")),
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() {
                return Err(semantic(select_pos, "GROUP BY modifiers are not supported"));
            }
            for g in exprs {
                let pos = position_of(g, select_pos);
                if let sql::Expr::Function(f) = g
                    && is_window_fn(&function_name(f))
                {
                    if assigner.is_some() {
                        return Err(semantic(pos, "only one window per rule"));
                    }
                    let name = function_name(f);
                    let args = function_args(f, pos)?;
                    let durations = args
                        .iter()
                        .map(|a| match a {
                            FunctionArgExpr::Expr(e) => duration_of(e, pos),
                            _ => Err(semantic(pos, "expected a duration")),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let a = match (name.as_str(), durations.as_slice()) {
                        ("tumble", [size]) => WindowAssigner::Tumble { size: *size },
                        ("hop", [size, slide]) => WindowAssigner::Hop {
                            size: *size,
                            slide: *slide,
                        },
                        ("session", [gap]) => WindowAssigner::Session { gap: *gap },
                        _ => {
                            return Err(semantic(
                                pos,
                                "use TUMBLE(size), HOP(size, slide) or SESSION(gap)",
                            ));
                        }
                    };
                    a.compile().map_err(|err| semantic(pos, err.to_string()))?;
                    assigner = Some(a);
                } else {
                    c.key_texts.push(g.to_string());
                    keys.push(c.expr(g, select_pos)?.0);
                }
            }
        }
    }
    if assigner.is_none() && !keys.is_empty() {
        return Err(semantic(
            select_pos,
            "GROUP BY needs a window in rules: add TUMBLE(size), HOP(size, slide) or SESSION(gap)",
        ));
    }
    c.windowed = assigner.is_some();
    if c.windowed {
        c.stage = Stage::Output;
    }
    let mut projection = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for item in &select.projection {
        let (name, e) = match item {
            SelectItem::Wildcard(_) => {
                if c.windowed {
                    return Err(semantic(
                        select_pos,
                        "SELECT * is not allowed in windowed rules",
                    ));
                }
                projection.push(Projection::Wildcard);
                continue;
            }
            SelectItem::UnnamedExpr(e) => (column_name(e), e),
            SelectItem::ExprWithAlias { expr, alias } => (alias.value.clone(), expr),
            other => {
                return Err(semantic(
                    position_of(other, select_pos),
                    "unsupported select item",
                ));
            }
        };
        let pos = position_of(e, select_pos);
        if names.contains(&name) {
            return Err(semantic(
                pos,
                format!("duplicate output column {name:?}; add AS to rename"),
            ));
        }
        names.push(name.clone());
        let (expr, _) = c.expr(e, select_pos)?;
        projection.push(Projection::Column { name, expr });
    }
    let having = match &select.having {
        Some(h) if c.windowed => Some(c.bool_expr(h, select_pos, "HAVING")?),
        Some(h) => {
            return Err(semantic(
                position_of(h, select_pos),
                "HAVING needs a window in GROUP BY",
            ));
        }
        None => None,
    };
    let window = assigner.map(|assigner| WindowPlan {
        assigner,
        keys,
        aggs: c.aggs.drain(..).map(|(_, spec, arg)| (spec, arg)).collect(),
        having,
    });
    Ok(Plan {
        filter,
        projection,
        predicate,
        window,
        detectors: c
            .detectors
            .into_iter()
            .map(|(_, spec, inputs)| (spec, inputs))
            .collect(),
    })
}
