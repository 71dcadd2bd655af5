//! Topic-filter algebra for authorization, pure: matching a topic without allocating,
//! whether one filter's topics are all covered by a set of filters (the subscribe check), and
//! whether two filters can match a common topic (deny rules).
//!
//! All three follow MQTT 4.7 exactly, including that a filter whose first level is a wildcard
//! does not match topics starting with `$`, and that `a/#` also matches `a`. The cover and
//! overlap checks are proven against brute-force enumeration by property tests: every literal
//! level is either one that appears in the filters or stands for "any other value", so a
//! finite universe of topics decides them.

/// One level of a compiled filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// An exact level.
    Lit(Box<str>),
    /// `+`: any one level.
    Plus,
    /// `#`: any number of levels, including none; always last.
    Hash,
}

/// A topic filter split into levels. Build with [`Filter::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter(Box<[Level]>);

/// Why a string is not a topic or filter an ACL can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterError {
    Empty,
    TooLong,
    Nul,
    BadWildcard,
}

impl Filter {
    /// Parse and validate an MQTT topic filter.
    pub(crate) fn parse(s: &str) -> Result<Self, FilterError> {
        check_common(s)?;
        let n = s.split('/').count();
        let mut levels = Vec::with_capacity(n);
        for (i, level) in s.split('/').enumerate() {
            levels.push(match level {
                "+" => Level::Plus,
                "#" if i + 1 == n => Level::Hash,
                l if l.contains(['+', '#']) => return Err(FilterError::BadWildcard),
                l => Level::Lit(l.into()),
            });
        }
        Ok(Self(levels.into_boxed_slice()))
    }

    pub(crate) fn levels(&self) -> &[Level] {
        &self.0
    }

    /// Whether the topic name `topic` (already validated: no wildcards) matches. Does not
    /// allocate.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && matches!(self.0.first(), Some(Level::Plus | Level::Hash)) {
            return false;
        }
        let mut name = topic.split('/');
        let mut filter = self.0.iter();
        loop {
            match (filter.next(), name.next()) {
                (Some(Level::Hash), _) => return true,
                (Some(Level::Plus), Some(_)) => {}
                (Some(Level::Lit(f)), Some(n)) if **f == *n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

fn check_common(s: &str) -> Result<(), FilterError> {
    if s.is_empty() {
        return Err(FilterError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(FilterError::TooLong);
    }
    if s.contains('\0') {
        return Err(FilterError::Nul);
    }
    Ok(())
}

/// Validate a topic *name* (publish target): the MQTT rules plus no wildcard.
pub(crate) fn valid_topic_name(s: &str) -> bool {
    check_common(s).is_ok() && !s.contains(['+', '#'])
}

/// Where in a topic the checks are, for the two rules that depend on it: wildcard-first
/// filters do not match `$` topics, and a topic has at least one character (so neither zero
/// levels nor the single empty level `""` is a topic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    /// Before the first level.
    First,
    /// After a first level that was empty: ending here would be the topic `""`.
    AfterEmptyFirst,
    /// Anywhere else: ending here is a valid topic.
    Other,
}

impl Pos {
    /// The position after consuming a level of value `v` (`None`: some non-empty value).
    fn after(self, v: Option<&str>) -> Self {
        match (self, v) {
            (Self::First, Some("")) => Self::AfterEmptyFirst,
            _ => Self::Other,
        }
    }

    /// Whether a topic may end here.
    fn may_end(self) -> bool {
        self == Self::Other
    }
}

/// Whether every topic that `req` can match is matched by at least one of `allowed`.
pub(crate) fn covered_by<'a>(req: &[Level], allowed: impl IntoIterator<Item = &'a Filter>) -> bool {
    let mut cands: Vec<&[Level]> = allowed.into_iter().map(|f| f.levels()).collect();
    // At the first level, a `$` literal is matched only by filters that name it: wildcard-first
    // filters never match `$` topics.
    if let Some(Level::Lit(v)) = req.first()
        && v.starts_with('$')
    {
        cands.retain(|c| matches!(c.first(), Some(Level::Lit(_))));
    }
    cover(req, cands, Pos::First)
}

/// `cands` are the unconsumed suffixes of the allowed filters after the levels before `req`.
fn cover(req: &[Level], cands: Vec<&[Level]>, pos: Pos) -> bool {
    // A remaining `#` matches whatever follows, including nothing.
    if cands.iter().any(|c| matches!(c, [Level::Hash])) {
        return true;
    }
    match req.split_first() {
        // The topic ends here: covered if it is no topic at all, or some filter ends here too.
        None => !pos.may_end() || cands.iter().any(|c| c.is_empty()),
        // Nothing left to cover with, while `req` still matches topics.
        Some(_) if cands.is_empty() => false,
        Some((Level::Hash, _)) => {
            // `#` = the topic ending here, or one more level of any value followed by anything.
            (!pos.may_end() || cover(&[], cands.clone(), pos))
                && cover(&[Level::Plus, Level::Hash], cands, pos)
        }
        Some((Level::Plus, rest)) => {
            // Any value, and almost all values are none of the literals: only wildcard
            // candidates survive. A fresh value covered means every value is covered, since a
            // literal value only adds candidates (and an empty first level only excuses the
            // end).
            let next = advance(&cands, None);
            cover(rest, next, pos.after(None))
        }
        Some((Level::Lit(v), rest)) => {
            let next = advance(&cands, Some(v));
            cover(rest, next, pos.after(Some(v)))
        }
    }
}

/// The candidates that accept one more level of value `v` (`None`: a value none of them names),
/// with that level consumed.
fn advance<'a>(cands: &[&'a [Level]], v: Option<&str>) -> Vec<&'a [Level]> {
    cands
        .iter()
        .filter_map(|c| match c.split_first() {
            Some((Level::Plus, rest)) => Some(rest),
            Some((Level::Hash, _)) => Some(*c),
            Some((Level::Lit(l), rest)) if Some(&**l) == v => Some(rest),
            _ => None,
        })
        .collect()
}

/// Whether some topic is matched by both `a` and `b`.
pub(crate) fn overlaps(a: &[Level], b: &[Level]) -> bool {
    overlap(a, b, Pos::First)
}

fn overlap(a: &[Level], b: &[Level], pos: Pos) -> bool {
    let dollar = |l: &Level| pos == Pos::First && matches!(l, Level::Lit(v) if v.starts_with('$'));
    match (a.split_first(), b.split_first()) {
        (None, None) => pos.may_end(),
        (Some((Level::Hash, _)), other) | (other, Some((Level::Hash, _))) => match other {
            // `x/#` against the end of `x`: the common topic is the prefix.
            None => pos.may_end(),
            // Otherwise `#` takes whatever the other side's remaining levels match.
            Some((l, _)) => !dollar(l),
        },
        (None, Some(_)) | (Some(_), None) => false,
        (Some((x, ra)), Some((y, rb))) => {
            let value = match (x, y) {
                (Level::Plus, Level::Plus) => Some(None),
                (Level::Plus, l @ Level::Lit(v)) | (l @ Level::Lit(v), Level::Plus) => {
                    (!dollar(l)).then_some(Some(&**v))
                }
                (Level::Lit(p), Level::Lit(q)) => (p == q).then_some(Some(&**p)),
                _ => None,
            };
            value.is_some_and(|v| overlap(ra, rb, pos.after(v)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_core::{TopicFilter, TopicName};
    use proptest::prelude::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).expect("valid filter in test")
    }

    fn covers(req: &str, allowed: &[&str]) -> bool {
        let allowed: Vec<Filter> = allowed.iter().map(|s| f(s)).collect();
        covered_by(f(req).levels(), &allowed)
    }

    #[test]
    fn parse_rejects_bad_filters() {
        assert_eq!(Filter::parse(""), Err(FilterError::Empty));
        assert_eq!(Filter::parse("a/#/b"), Err(FilterError::BadWildcard));
        assert_eq!(Filter::parse("a+"), Err(FilterError::BadWildcard));
        assert_eq!(Filter::parse("a\0"), Err(FilterError::Nul));
        assert!(Filter::parse("a/+/#").is_ok());
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name(""));
    }

    #[test]
    fn matching() {
        assert!(f("devices/d1/#").matches("devices/d1"));
        assert!(f("devices/d1/#").matches("devices/d1/telemetry/x"));
        assert!(!f("devices/d1/#").matches("devices/d2/telemetry"));
        assert!(f("devices/+/status").matches("devices/d2/status"));
        assert!(!f("#").matches("$SYS/x"));
        assert!(f("$SYS/#").matches("$SYS/x"));
    }

    #[test]
    fn subset_examples() {
        let own = ["devices/d1/#"];
        assert!(covers("devices/d1/#", &own));
        assert!(covers("devices/d1/telemetry", &own));
        assert!(covers("devices/d1/+/x", &own));
        assert!(covers("devices/d1", &own));
        assert!(!covers("devices/+/telemetry", &own));
        assert!(!covers("#", &own));
        assert!(!covers("devices/#", &own));
        assert!(!covers("+/d1/#", &own));
        // A union covers what no single member does.
        assert!(covers("a/#", &["a", "a/+/#"]));
        assert!(!covers("a/#", &["a/+/#"]));
        assert!(covers("a/+", &["a/+"]));
        assert!(!covers("a/+", &["a/x", "a/y"]));
        // `#` covers everything but `$` topics.
        assert!(covers("x/y", &["#"]));
        assert!(!covers("$SYS/x", &["#"]));
        assert!(!covers("$SYS/x", &["+/x"]));
        assert!(covers("$SYS/x", &["$SYS/#"]));
        assert!(covers("#", &["#"]));
        assert!(covers("+/#", &["#"]));
        assert!(covers("#", &["+/#"]));
    }

    #[test]
    fn overlap_examples() {
        let o = |a: &str, b: &str| overlaps(f(a).levels(), f(b).levels());
        assert!(o("devices/+/telemetry", "devices/d1/#"));
        assert!(o("devices/d1/#", "devices/d1"));
        assert!(!o("devices/d1/x", "devices/d2/#"));
        assert!(!o("#", "$SYS/x"));
        assert!(!o("+/x", "$SYS/+"));
        assert!(o("$SYS/#", "$SYS/x"));
        assert!(o("#", "+"));
        assert!(!o("a/b", "a"));
        assert!(o("a/+", "+/b"));
    }

    // --- brute-force oracle -------------------------------------------------------------

    /// Level values the generated filters may name; `zz` stands for "any other value".
    const WORDS: [&str; 4] = ["a", "b", "", "$s"];
    const FRESH: &str = "zz";

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => proptest::sample::select(WORDS.to_vec()).prop_map(str::to_owned),
            2 => Just("+".to_owned()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (proptest::collection::vec(level(), 1..=3), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                levels.join("/")
            })
            .prop_filter("valid filter", |s| TopicFilter::new(s.clone()).is_ok())
    }

    /// Every topic up to `max_levels` levels over the named words plus a fresh one.
    fn universe(max_levels: usize) -> Vec<String> {
        let alphabet: Vec<&str> = WORDS.iter().copied().chain([FRESH]).collect();
        let mut out: Vec<String> = Vec::new();
        let mut layer: Vec<String> = alphabet.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..max_levels {
            out.extend(layer.iter().cloned());
            let mut next = Vec::new();
            for t in &layer {
                for w in &alphabet {
                    next.push(format!("{t}/{w}"));
                }
            }
            layer = next;
        }
        out.retain(|t| TopicName::new(t.clone()).is_ok());
        out
    }

    fn core(filter: &str) -> TopicFilter {
        TopicFilter::new(filter).expect("generated valid")
    }

    fn oracle_match(filter: &TopicFilter, topic: &TopicName) -> bool {
        filter.matches(topic)
    }

    fn names(topics: &[String]) -> Vec<TopicName> {
        topics
            .iter()
            .map(|t| TopicName::new(t.clone()).expect("universe valid"))
            .collect()
    }

    fn depth(s: &str) -> usize {
        s.split('/').count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn cover_agrees_with_enumeration(req in filter(), allowed in proptest::collection::vec(filter(), 0..4)) {
            let max = allowed.iter().map(|s| depth(s)).chain([depth(&req)]).max().unwrap_or(1) + 1;
            let topics = names(&universe(max));
            let r = core(&req);
            let al: Vec<TopicFilter> = allowed.iter().map(|s| core(s)).collect();
            let expected = topics.iter().all(|t| {
                !oracle_match(&r, t) || al.iter().any(|a| oracle_match(a, t))
            });
            let compiled: Vec<Filter> = allowed.iter().map(|s| f(s)).collect();
            prop_assert_eq!(covered_by(f(&req).levels(), &compiled), expected, "req {} allowed {:?}", req, allowed);
        }

        #[test]
        fn overlap_agrees_with_enumeration(a in filter(), b in filter()) {
            let max = depth(&a).max(depth(&b)) + 1;
            let (ca, cb) = (core(&a), core(&b));
            let expected = names(&universe(max)).iter().any(|t| oracle_match(&ca, t) && oracle_match(&cb, t));
            prop_assert_eq!(overlaps(f(&a).levels(), f(&b).levels()), expected, "a {} b {}", a, b);
        }

        #[test]
        fn matches_agrees_with_core(flt in filter(), idx in 0usize..400) {
            let topics = universe(depth(&flt) + 1);
            let t = &topics[idx % topics.len()];
            let name = TopicName::new(t.clone()).expect("universe valid");
            prop_assert_eq!(f(&flt).matches(t), oracle_match(&core(&flt), &name));
        }
    }
}
