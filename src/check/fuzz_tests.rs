//! Property-based fuzzing of `drainscaler check` (and the loader `simulate` uses) on hostile
//! YAML: a valid policy with every schema field in turn given a value of the wrong type, out of
//! range, huge, unicode or very long; and streams of many documents, deep nesting, anchors,
//! aliases and alias bombs. No input panics, every problem is one printable line that names
//! where it is, and an alias bomb is refused, not expanded.
//!
//! In the normal test run each property tries a few inputs (64 policies, 128 streams, 16 string
//! bombs, 1 alias bomb: a few seconds); `PROPTEST_CASES` sets how many. A longer run, the bombs
//! apart as each takes seconds:
//! `PROPTEST_CASES=5000 cargo test --lib check::fuzz_tests -- --skip alias` and
//! `PROPTEST_CASES=30 cargo test --lib check::fuzz_tests::an_alias`.

use proptest::collection::vec;
use proptest::prelude::{Just, Strategy, any, prop_oneof, proptest};
use proptest::sample::select;
use serde_json::Value;

use super::{Report, Verdict, check, policy_schema, single_policy};
use crate::api::DURATION_PATTERN;
use crate::testing::fuzz_config;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray,
};

/// The example policy every mutation starts from (valid as it is).
const CHAT: &str = include_str!("../../examples/policies/chat.yaml");

/// The longest line `check` may print for one problem: a hostile value is shortened, not
/// repeated in full.
const MAX_LINE: usize = 2_000;

/// One step of a path into a policy document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    First,
}

/// What a field holds, by its schema: the values that reach furthest into validation.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Duration,
    Integer,
    Quantity,
    Other,
}

fn kind(schema: &JSONSchemaProps) -> Kind {
    if schema.pattern.as_deref() == Some(DURATION_PATTERN) {
        Kind::Duration
    } else if schema.x_kubernetes_int_or_string == Some(true) {
        Kind::Quantity
    } else if matches!(schema.type_.as_deref(), Some("integer" | "number")) {
        Kind::Integer
    } else {
        Kind::Other
    }
}

/// Every field the CRD schema describes below `spec` (lists by their first item), with what
/// it holds.
fn fields() -> Vec<(Vec<Step>, Kind)> {
    fn walk(schema: &JSONSchemaProps, at: &[Step], out: &mut Vec<(Vec<Step>, Kind)>) {
        if let Some(properties) = &schema.properties {
            for (key, inner) in properties {
                let mut here = at.to_vec();
                here.push(Step::Key(key.clone()));
                out.push((here.clone(), kind(inner)));
                walk(inner, &here, out);
            }
        }
        if let Some(JSONSchemaPropsOrArray::Schema(inner)) = &schema.items {
            let mut here = at.to_vec();
            here.push(Step::First);
            out.push((here.clone(), kind(inner)));
            walk(inner, &here, out);
        }
    }
    let schema = policy_schema().expect("the CRD has a schema");
    let spec = schema
        .properties
        .as_ref()
        .and_then(|p| p.get("spec"))
        .expect("the schema has a spec");
    let mut out = Vec::new();
    walk(spec, &[Step::Key("spec".to_owned())], &mut out);
    out
}

/// The path as `check` prints it: `spec.metrics[0].target`.
fn shown(path: &[Step]) -> String {
    path.iter().fold(String::new(), |at, step| match step {
        Step::Key(k) if at.is_empty() => k.clone(),
        Step::Key(k) => format!("{at}.{k}"),
        Step::First => format!("{at}[0]"),
    })
}

/// Puts `value` at `path`, making the objects and lists on the way.
fn put(doc: &mut Value, path: &[Step], value: Value) {
    let Some((step, rest)) = path.split_first() else {
        *doc = value;
        return;
    };
    let next = match step {
        Step::Key(k) => {
            if !doc.is_object() {
                *doc = Value::Object(serde_json::Map::new());
            }
            doc.as_object_mut()
                .expect("an object")
                .entry(k.clone())
                .or_insert(Value::Null)
        }
        Step::First => {
            if doc.as_array().is_none_or(Vec::is_empty) {
                *doc = Value::Array(vec![Value::Null]);
            }
            &mut doc.as_array_mut().expect("a list")[0]
        }
    };
    put(next, rest, value);
}

/// Unicode text with control characters (proptest's own strings have none), bidi overrides
/// and astral characters.
fn text() -> impl Strategy<Value = String> {
    "[a-zé🦀\\x00-\\x1f\\x7f-\\x9f\\u{202e}\\u{feff}]{0,40}"
}

fn digits(n: usize) -> String {
    "9".repeat(n)
}

fn numbers() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "0",
            "-1",
            "1",
            "2",
            "3",
            "2147483647",
            "2147483648",
            "-2147483649",
            "9223372036854775808",
            "-9223372036854775809",
            "1e400",
            "-1e400",
            ".inf",
            "-.inf",
            ".nan",
            "0x7fffffffffffffff",
            "0o777",
            "1_000",
            "0.0000001",
            "-0",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:e}")),
        (1..400usize).prop_map(digits),
    ]
}

fn durations() -> impl Strategy<Value = String> {
    let units = select(vec!["ms", "s", "m", "h", "", "d", "µs", "e9s"]);
    prop_oneof![
        (any::<u64>(), units.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (1..400usize, units.clone()).prop_map(|(n, u)| format!("{}{u}", digits(n))),
        (any::<f64>(), units).prop_map(|(n, u)| format!("\"{}{u}\"", n.abs())),
        select(vec![
            "1.5.5s",
            "5m5",
            "ms",
            "1h-1m",
            "0",
            "0s",
            "00000000000000000001s"
        ])
        .prop_map(str::to_owned),
    ]
}

fn quantities() -> impl Strategy<Value = String> {
    let suffixes = select(vec![
        "",
        "m",
        "k",
        "Ki",
        "Ei",
        "E",
        "n",
        "e999",
        "e-999",
        "e2147483647",
        "e99999999999",
        "x",
    ]);
    prop_oneof![
        (any::<i64>(), suffixes.clone()).prop_map(|(n, s)| format!("\"{n}{s}\"")),
        (1..400usize, suffixes).prop_map(|(n, s)| format!("\"{}{s}\"", digits(n))),
        select(vec!["\"+-1\"", "\"1..2\"", "\"--\"", "\" 5 \"", "\"5e\""]).prop_map(str::to_owned),
    ]
}

/// YAML flow text for a value of the wrong type, out of range, huge or odd.
fn hostile_value() -> impl Strategy<Value = String> {
    let wrong_types = select(vec![
        "[]",
        "{}",
        "[1, [2, [3]]]",
        "{a: {b: c}}",
        "true",
        "~",
        "\"\"",
        "!!binary aGVsbG8=",
        "!custom {x: 1}",
        "[*undefined]",
    ])
    .prop_map(str::to_owned);
    let words = select(vec![
        "Deployment",
        "StatefulSet",
        "apps/v1",
        "Push",
        "Prometheus",
        "None",
        "Replace",
        "Remove",
        "Wait",
        "Percent",
        "Pods",
        "Max",
        "Min",
        "Disabled",
        "AverageValue",
        "Value",
        "http://prometheus:9090",
        "https://user:pass@prometheus",
        "sum(up)",
        "chat",
    ])
    .prop_map(str::to_owned);
    let strings = prop_oneof![
        text().prop_map(|s| serde_json::to_string(&s).expect("a string")),
        (0..20_000usize).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        (0..1_000usize).prop_map(|n| format!("\"{}\"", "é🦀\\n\\u0007\\t".repeat(n))),
    ];
    prop_oneof![
        numbers(),
        durations(),
        quantities(),
        wrong_types,
        words,
        strings
    ]
}

/// A hostile value of the field's own kind (to reach its validation), or of any other.
fn hostile_value_for(kind: Kind) -> impl Strategy<Value = String> {
    let own = match kind {
        Kind::Duration => durations().boxed(),
        Kind::Integer => numbers().boxed(),
        Kind::Quantity => prop_oneof![numbers(), quantities()].boxed(),
        Kind::Other => hostile_value().boxed(),
    };
    prop_oneof![3 => own, 1 => hostile_value()]
}

/// The example policy with up to three fields given hostile values, as YAML; and the paths
/// that were changed, as `check` prints them.
fn mutated_policy() -> impl Strategy<Value = (String, Vec<String>)> {
    // A kind first, so that the few duration and quantity fields are changed as often as
    // the many others.
    let all = fields();
    let of_kind = |wanted: fn(Kind) -> bool| -> Vec<(Vec<Step>, Kind)> {
        all.iter().filter(|(_, k)| wanted(*k)).cloned().collect()
    };
    let field = prop_oneof![
        select(of_kind(|k| matches!(k, Kind::Duration))),
        select(of_kind(|k| matches!(k, Kind::Integer))),
        select(of_kind(|k| matches!(k, Kind::Quantity))),
        select(of_kind(|k| matches!(k, Kind::Other))),
    ];
    let change = field.prop_flat_map(|(path, kind)| (Just(path), hostile_value_for(kind)));
    // Mostly one change, so that the others do not stop validation before it is reached.
    prop_oneof![3 => vec(change.clone(), 1..=1), 1 => vec(change, 2..=3)].prop_map(|changes| {
        let mut doc: Value = serde_saphyr::from_str(CHAT).expect("the example parses");
        let mut raw = Vec::new();
        for (i, (path, value)) in changes.iter().enumerate() {
            put(&mut doc, path, Value::String(format!("HOSTILE{i}X")));
            raw.push(value);
        }
        let mut yaml = serde_saphyr::to_string(&doc).expect("renders");
        for (i, value) in raw.iter().enumerate() {
            yaml = yaml.replace(&format!("HOSTILE{i}X"), value);
        }
        (yaml, changes.iter().map(|(p, _)| shown(p)).collect())
    })
}

/// What must hold of every answer: an error is one line that says the YAML is broken; every
/// printed line is one bounded line without control characters.
fn assert_well_formed(yaml: &str, outcome: &Result<Report, String>) {
    match outcome {
        Err(why) => {
            assert!(why.starts_with("not valid YAML: "), "{why}");
            assert_printable(why);
        }
        Ok(report) => {
            for doc in &report.documents {
                if let Verdict::Invalid { errors, .. } = doc {
                    assert!(!errors.is_empty(), "invalid without a reason");
                }
            }
            for line in report.lines("policy.yaml") {
                assert_printable(&line);
            }
        }
    }
    // The loader `simulate` uses takes the same input without panicking, and agrees.
    let loaded = single_policy(yaml);
    if let Ok(report) = outcome {
        let valid = report
            .documents
            .iter()
            .filter(|d| matches!(d, Verdict::Valid { .. }))
            .count();
        let policies = report
            .documents
            .iter()
            .filter(|d| !matches!(d, Verdict::Skipped { .. }))
            .count();
        assert_eq!(loaded.is_ok(), valid == 1 && policies == 1, "{loaded:?}");
    } else {
        assert!(loaded.is_err());
    }
}

fn assert_printable(line: &str) {
    assert!(
        line.chars().count() <= MAX_LINE,
        "a line of {} characters: {}...",
        line.chars().count(),
        line.chars().take(200).collect::<String>()
    );
    assert!(
        !line.chars().any(char::is_control),
        "a control character in {line:?}"
    );
}

proptest! {
    #![proptest_config(fuzz_config(64))]

    #[test]
    fn no_hostile_field_value_panics_and_each_problem_names_its_field(
        (yaml, changed) in mutated_policy(),
    ) {
        let outcome = check(&yaml);
        assert_well_formed(&yaml, &outcome);
        let Ok(report) = outcome else { return Ok(()) };
        assert_eq!(report.documents.len(), 1, "{yaml}");
        if let Verdict::Invalid { errors, .. } = &report.documents[0] {
            // A problem is reported at the field that was changed, or at one that contains it
            // or depends on it (min against max, a list against its items).
            let named = errors.iter().any(|e| {
                changed.iter().any(|path| {
                    path.split(['.', '['])
                        .skip(1)
                        .filter(|part| !part.ends_with(']'))
                        .any(|part| e.contains(part))
                })
            });
            assert!(named, "changed {changed:?}, told {errors:#?}");
        }
    }
}

/// `levels` of lists, each holding `width` aliases of the level below: width^levels nodes.
fn alias_bomb(levels: u32, width: usize) -> String {
    let mut out = String::from("kind: ScalingPolicy\nspec:\n  l0: &l0 {lol: lol}\n");
    for level in 1..=levels {
        let items = vec![format!("*l{}", level - 1); width].join(", ");
        out.push_str(&format!("  l{level}: &l{level} [{items}]\n"));
    }
    out
}

/// One document of a stream: policies, other kinds, scalars, deep nesting, anchors, odd keys.
fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(CHAT.to_owned()),
        mutated_policy().prop_map(|(yaml, _)| yaml),
        Just("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}".to_owned()),
        select(vec!["", "~", "42", "\"text\"", "[]", "kind: [ScalingPolicy]", "kind: ~"])
            .prop_map(str::to_owned),
        (1..400usize).prop_map(|d| format!("kind: ScalingPolicy\nspec: {}{}", "[".repeat(d), "]".repeat(d))),
        (1..100usize).prop_map(|d| {
            let nested: String = (0..d).map(|i| format!("{}k{i}:\n", "  ".repeat(i + 1))).collect();
            format!("kind: ScalingPolicy\nspec:\n{nested}")
        }),
        Just(CHAT.replace("spec:", "spec: &spec").replace("  minReplicas: 2", "  minReplicas: 2\n  copy: *spec")),
        Just("base: &b {minReplicas: 1, maxReplicas: 2}\nkind: ScalingPolicy\nspec:\n  <<: *b\n  <<: *b".to_owned()),
        (2..6u32, 2..6usize).prop_map(|(levels, width)| alias_bomb(levels, width)),
        text().prop_map(|key| format!("kind: ScalingPolicy\n{}: 1", serde_json::to_string(&key).expect("a key"))),
        (0..3_000usize).prop_map(|n| format!("kind: ScalingPolicy\n{}: 1", "k".repeat(n))),
        Just("kind: ScalingPolicy\nkind: ScalingPolicy".to_owned()),
        Just("kind: !!binary U2NhbGluZ1BvbGljeQ==\nspec: !!set {a, b}\n? [complex, key]\n: 1".to_owned()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(fuzz_config(128))]

    #[test]
    fn no_stream_of_hostile_documents_panics(
        docs in vec(document(), 1..6),
        separator in select(vec!["\n---\n", "\n...\n---\n", "\n--- ", "\n"]),
    ) {
        let yaml = docs.join(separator);
        assert_well_formed(&yaml, &check(&yaml));
    }
}

/// One string of `bytes` and `aliases` aliases of it: its bytes times as many.
fn string_bomb(bytes: usize, aliases: usize) -> String {
    // Anchors of their own keep the alias-to-anchor ratio under the parser's heuristic.
    let anchors: String = (0..aliases / 5)
        .map(|i| format!("  - &a{i} {i}\n"))
        .collect();
    let uses = "  - *big\n".repeat(aliases);
    format!(
        "kind: ScalingPolicy\nbig: &big \"{}\"\nanchors:\n{anchors}uses:\n{uses}",
        "x".repeat(bytes)
    )
}

proptest! {
    // Slow (each expands to the parser's node limit, a few seconds in a debug build): one in
    // the normal run.
    #![proptest_config(fuzz_config(1))]

    /// Billion laughs: the parser's budget refuses the expansion, with a message that says so.
    #[test]
    fn an_alias_bomb_is_refused_not_expanded(levels in 6..12u32, width in 10..20usize) {
        let why = check(&alias_bomb(levels, width)).expect_err("an alias bomb is refused");
        assert!(why.contains("aliases that expand too far"), "{why}");
        assert_printable(&why);
    }
}

proptest! {
    #![proptest_config(fuzz_config(16))]

    /// A long string aliased thousands of times: refused before its copies add up past the
    /// parser's 64 MiB of scalars.
    #[test]
    fn a_string_aliased_past_the_scalar_budget_is_refused(
        bytes in 100_000..1_000_000usize,
        aliases in 1_000..5_000usize,
    ) {
        let why = check(&string_bomb(bytes, aliases)).expect_err("a string bomb is refused");
        assert!(why.contains("aliases that expand too far"), "{why}");
        assert_printable(&why);
    }
}

#[test]
fn a_hostile_key_or_value_is_shown_on_one_short_line() {
    let yaml = CHAT
        .replace(
            "  minReplicas: 2",
            "  minReplicas: 2\n  \"x\\nforged.yaml: document 1: ScalingPolicy chat: ok\": 1",
        )
        .replace(
            "maxReplicas: 50",
            &format!("maxReplicas: \"{}\"", "9".repeat(100_000)),
        );
    let outcome = check(&yaml);
    assert_well_formed(&yaml, &outcome);
    let lines = outcome.expect("YAML").lines("policy.yaml");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains(r"spec.x\nforged.yaml"), "{}", lines[0]);
    assert!(lines[1].contains("characters left out"), "{}", lines[1]);
}
