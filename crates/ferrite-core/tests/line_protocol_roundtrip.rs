//! Property: any point written as line protocol (with every escape the format has) decodes
//! back to the same point; and no input makes the decoder panic.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use ferrite_core::decode::{Precision, decode_line_protocol};
use ferrite_core::{Measurement, Point, Timestamp, Value};
use proptest::prelude::*;

fn escape(s: &str, specials: &[char]) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn encode(p: &Point) -> String {
    let mut line = p.measurement.as_str().to_owned();
    for (k, v) in &p.tags {
        line.push(',');
        line.push_str(&escape(k, &[',', '=', ' ']));
        line.push('=');
        line.push_str(&escape(v, &[',', '=', ' ']));
    }
    line.push(' ');
    let fields: Vec<String> = p
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::F64(f) => format!("{f:?}"),
                Value::I64(i) => format!("{i}i"),
                Value::U64(u) => format!("{u}u"),
                Value::Bool(b) => b.to_string(),
                Value::Str(s) => format!("\"{}\"", escape(s, &['"', '\\'])),
            };
            format!("{}={v}", escape(k, &[',', '=', ' ']))
        })
        .collect();
    line.push_str(&fields.join(","));
    line.push_str(&format!(" {}", p.time.as_nanos()));
    line
}

// Keys and values: printable text including the characters that need escaping, but not
// starting with '#' (a comment line) or a space, and no trailing backslash (ambiguous in LP).
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ ,=.:/-]{0,11}[a-zA-Z0-9_]".prop_map(|s| s)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1e12f64..1e12).prop_map(Value::F64),
        any::<i64>().prop_map(Value::I64),
        any::<u64>().prop_map(Value::U64),
        any::<bool>().prop_map(Value::Bool),
        "[ -~]{0,16}".prop_map(Value::Str),
    ]
}

fn point() -> impl Strategy<Value = Point> {
    (
        "[a-z_][a-z0-9_]{0,10}",
        any::<i64>(),
        prop::collection::btree_map(text(), text(), 0..3),
        prop::collection::btree_map(text(), value(), 1..4),
    )
        .prop_filter(
            "tags and fields must not share a name, nor use reserved ones",
            |(_, _, tags, fields)| {
                fields
                    .keys()
                    .all(|k| !tags.contains_key(k) && k != "time" && k != "device_id")
                    && tags.keys().all(|k| k != "time")
            },
        )
        .prop_map(|(m, t, tags, fields)| Point {
            measurement: Measurement::new(m).unwrap(),
            time: Timestamp::from_nanos(t),
            tags,
            fields,
        })
}

proptest! {
    #[test]
    fn encoded_points_decode_to_themselves(points in prop::collection::vec(point(), 1..8)) {
        let text: Vec<String> = points.iter().map(encode).collect();
        let decoded = decode_line_protocol(&text.join("\n"), Precision::Nanoseconds, Timestamp::from_nanos(0), &[]);
        prop_assert_eq!(decoded, Ok(points), "{}", text.join("\n"));
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = decode_line_protocol(&s, Precision::Seconds, Timestamp::from_nanos(0), &[("device_id", "d")]);
    }
}

#[test]
fn same_key_twice_keeps_the_last() {
    let p = decode_line_protocol(
        "m v=1,v=2 5",
        Precision::Nanoseconds,
        Timestamp::from_nanos(0),
        &[],
    )
    .unwrap();
    assert_eq!(
        p[0].fields,
        BTreeMap::from([("v".to_owned(), Value::F64(2.0))])
    );
}
