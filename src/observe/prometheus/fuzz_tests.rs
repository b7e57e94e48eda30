//! Property-based fuzzing of the Prometheus answer path (the bounded read, the envelope, and
//! the one-number and per-pod decoders) on hostile answers: valid envelopes with wrong types,
//! NaN and infinite values, odd timestamps, missing and duplicate labels, huge arrays, deep
//! nesting, truncated bodies and bodies past the size bound. No answer panics; a failure says
//! what was wrong in a bounded message; no more series are used than allowed, and a body is
//! read no further than its bound.
//!
//! `PROPTEST_CASES` sets the number of inputs (256 by default, in the normal test run). A
//! longer run: `PROPTEST_CASES=10000 cargo test --lib observe::prometheus::fuzz_tests`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use proptest::collection::vec;
use proptest::prelude::{BoxedStrategy, Just, Strategy, any, prop_oneof, proptest};
use proptest::sample::{Index, select};

use super::decode::{MAX_HEARTBEAT_SERIES, classify, envelope, per_pod};
use super::{MAX_RESPONSE_BYTES, read_bounded};
use crate::engine::{Reading, Time};
use crate::testing::fuzz_config;

const NOW: Time = Time(1_700_000_100_000);

/// The longest failure message: the server's words are quoted only in part.
const MAX_MESSAGE: usize = 1_000;

/// How an answer's body is made: small ones whole, long ones from a size (so that proptest
/// keeps and shrinks a number, not megabytes).
#[derive(Clone, Debug)]
enum Body {
    Text(String),
    Bytes(Vec<u8>),
    /// `n` copies of one series in a vector answer.
    Series {
        series: String,
        n: usize,
    },
    /// A valid answer padded with spaces to `MAX_RESPONSE_BYTES + over` bytes.
    AtTheBound {
        over: i64,
    },
    /// `depth` nested lists where the result belongs.
    Nested {
        depth: usize,
    },
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Text(t) => t.clone().into_bytes(),
            Body::Bytes(b) => b.clone(),
            Body::Series { series, n } => success(&format!(
                r#"{{"resultType":"vector","result":[{}]}}"#,
                vec![series.as_str(); *n].join(",")
            ))
            .into_bytes(),
            Body::AtTheBound { over } => {
                let mut body =
                    success(r#"{"resultType":"scalar","result":[1700000000,"2"]}"#).into_bytes();
                let size = i64::try_from(MAX_RESPONSE_BYTES).expect("fits") + over;
                body.resize(usize::try_from(size).expect("positive"), b' ');
                body
            }
            Body::Nested { depth } => success(&format!(
                r#"{{"resultType":"vector","result":{}{}}}"#,
                "[".repeat(*depth),
                "]".repeat(*depth)
            ))
            .into_bytes(),
        }
    }
}

fn success(data: &str) -> String {
    format!(r#"{{"status":"success","data":{data}}}"#)
}

/// JSON text of a number or a string that may or may not be one.
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "NaN",
            "+Inf",
            "-Inf",
            "Inf",
            "inf",
            "infinity",
            "1e400",
            "-1e400",
            "-0",
            "0",
            "0.4",
            "-1",
            "1e30",
            "18446744073709551616",
            "0x10",
            "",
            " 1",
            "1_0",
            "nan",
        ])
        .prop_map(|v| format!("{v:?}")),
        any::<f64>().prop_map(|v| format!("\"{v}\"")),
        any::<i64>().prop_map(|v| v.to_string()),
        select(vec!["null", "true", "[]", "{}", "1.5"]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn timestamp() -> BoxedStrategy<String> {
    prop_oneof![
        select(vec![
            "1700000000",
            "1700000000.5",
            "1800000000",
            "0",
            "-1",
            "-1700000000",
            "1e308",
            "-1e308",
            "1e19",
            "\"1700000000\"",
            "\"NaN\"",
            "null",
            "[]",
        ])
        .prop_map(str::to_owned),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |t| t.is_finite())
            .prop_map(|t| format!("{t:e}")),
        any::<i64>().prop_map(|t| t.to_string()),
    ]
    .boxed()
}

/// A label set: with or without `pod`, a UID, odd names and values.
fn labels() -> BoxedStrategy<String> {
    let pod = prop_oneof![
        select(vec!["chat-a", "chat-b", "", "chat-a"]).prop_map(str::to_owned),
        any::<String>(),
        (0..100_000usize).prop_map(|n| "p".repeat(n)),
    ];
    prop_oneof![
        pod.clone()
            .prop_map(|p| format!(r#"{{"pod":{}}}"#, json(&p))),
        (pod.clone(), any::<String>()).prop_map(|(p, uid)| format!(
            r#"{{"pod":{},"pod_uid":{},"uid":"u"}}"#,
            json(&p),
            json(&uid)
        )),
        Just("{}".to_owned()),
        Just(r#"{"pod":1}"#.to_owned()),
        Just(r#"{"pod":null}"#.to_owned()),
        Just(r#"{"pod":"a","pod":"b"}"#.to_owned()),
        Just("[]".to_owned()),
        (any::<String>(), any::<String>()).prop_map(|(k, v)| format!(
            "{{{}:{}}}",
            json(&k),
            json(&v)
        )),
    ]
    .boxed()
}

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// One series of an instant vector, or something in its place.
fn series() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (labels(), timestamp(), value())
            .prop_map(|(m, t, v)| format!(r#"{{"metric":{m},"value":[{t},{v}]}}"#)),
        1 => (timestamp(), value()).prop_map(|(t, v)| format!(r#"{{"value":[{t},{v}]}}"#)),
        1 => labels().prop_map(|m| format!(r#"{{"metric":{m},"values":[[1700000000,"1"]]}}"#)),
        1 => labels().prop_map(|m| format!(r#"{{"metric":{m},"value":[1700000000]}}"#)),
        1 => select(vec!["null", "1", "\"x\"", "[]", "{}"]).prop_map(str::to_owned),
    ]
    .boxed()
}

/// The `data` member: every result type, and wrong ones.
fn data() -> BoxedStrategy<String> {
    prop_oneof![
        vec(series(), 0..20)
            .prop_map(|s| format!(r#"{{"resultType":"vector","result":[{}]}}"#, s.join(","))),
        (timestamp(), value())
            .prop_map(|(t, v)| format!(r#"{{"resultType":"scalar","result":[{t},{v}]}}"#)),
        (labels(), vec((timestamp(), value()), 0..20)).prop_map(|(m, samples)| {
            let values: Vec<String> = samples.iter().map(|(t, v)| format!("[{t},{v}]")).collect();
            format!(
                r#"{{"resultType":"matrix","result":[{{"metric":{m},"values":[{}]}}]}}"#,
                values.join(",")
            )
        }),
        select(vec![
            r#"{"resultType":"string","result":[1700000000,"x"]}"#,
            r#"{"resultType":"VECTOR","result":[]}"#,
            r#"{"resultType":"vector"}"#,
            r#"{"result":[]}"#,
            r#"{"resultType":42,"result":[]}"#,
            r#"{"resultType":"vector","result":{}}"#,
            r#"{"resultType":"scalar","result":[]}"#,
            r#"{"resultType":"vector","result":[],"stats":"x"}"#,
            "null",
            "[]",
        ])
        .prop_map(str::to_owned),
        (0..100_000usize)
            .prop_map(|n| format!(r#"{{"resultType":"vector","result":"{}"}}"#, "x".repeat(n))),
    ]
    .boxed()
}

/// A whole answer body.
fn body() -> BoxedStrategy<Body> {
    let envelope = prop_oneof![
        8 => data().prop_map(|d| success(&d)),
        1 => data().prop_map(|d| format!(r#"{{"status":"error","data":{d}}}"#)),
        1 => (any::<String>(), any::<String>()).prop_map(|(t, e)| {
            format!(r#"{{"status":"error","errorType":{},"error":{}}}"#, json(&t), json(&e))
        }),
        1 => (0..100_000usize).prop_map(|n| format!(r#"{{"status":"{}"}}"#, "s".repeat(n))),
        1 => select(vec!["{}", "null", r#"{"status":1}"#, r#"{"status":"success"}"#, "<html>login</html>"])
            .prop_map(str::to_owned),
    ];
    prop_oneof![
        6 => envelope.clone().prop_map(Body::Text),
        2 => (envelope, any::<Index>())
            .prop_map(|(e, at)| Body::Bytes(e.as_bytes()[..at.index(e.len() + 1)].to_vec())),
        1 => vec(any::<u8>(), 0..2_000).prop_map(Body::Bytes),
        1 => (series(), prop_oneof![0..20usize, (MAX_HEARTBEAT_SERIES - 2)..(MAX_HEARTBEAT_SERIES + 3)])
            .prop_map(|(series, n)| Body::Series { series, n }),
        1 => (-2..=2i64).prop_map(|over| Body::AtTheBound { over }),
        1 => (1..2_000usize).prop_map(|depth| Body::Nested { depth }),
    ]
    .boxed()
}

/// The body read through `read_bounded` as a response with `status`, in chunks of `chunk`
/// bytes, or whole (when the length is known up front); and how many bytes were pulled.
fn read(status: u16, body: Vec<u8>, chunk: Option<usize>) -> (Result<Vec<u8>, String>, usize) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let body = match chunk {
        None => {
            counter.fetch_add(body.len(), Ordering::SeqCst);
            reqwest::Body::from(body)
        }
        Some(size) => {
            let chunks: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
            let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
                counter.fetch_add(c.len(), Ordering::SeqCst);
                Ok::<_, Infallible>(Frame::data(c))
            }));
            reqwest::Body::wrap(StreamBody::new(stream))
        }
    };
    let response = axum::http::Response::builder()
        .status(status)
        .body(body)
        .expect("a response");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let read = runtime.block_on(read_bounded(
        reqwest::Response::from(response),
        MAX_RESPONSE_BYTES,
    ));
    (read, pulled.load(Ordering::SeqCst))
}

fn assert_bounded(message: &str) {
    assert!(!message.is_empty(), "an empty reason");
    assert!(
        message.chars().count() <= MAX_MESSAGE,
        "a message of {} characters: {}...",
        message.chars().count(),
        message.chars().take(300).collect::<String>()
    );
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn no_prometheus_answer_panics_uses_too_much_or_fails_without_a_clear_reason(
        body in body(),
        status in prop_oneof![8 => Just(200u16), 1 => 100..600u16],
        chunk in prop_oneof![Just(None), (1..70_000usize).prop_map(Some)],
    ) {
        let bytes = body.bytes();
        let (read, pulled) = read(status, bytes.clone(), chunk);
        if bytes.len() > MAX_RESPONSE_BYTES {
            let Err(why) = read else {
                panic!("a body of {} bytes, past the bound, was read", bytes.len());
            };
            assert!(why.contains("larger than 8 MiB"), "{why}");
            // Read no further than the chunk that crossed the bound.
            if let Some(chunk) = chunk {
                assert!(pulled <= MAX_RESPONSE_BYTES + chunk, "pulled {pulled} bytes");
            }
            return Ok(());
        }
        let read = read.expect("a body within the bound is read");
        assert_eq!(read, bytes);
        let data = match envelope(status, &read) {
            Ok(data) => data,
            Err(why) => {
                assert_bounded(&why);
                if (200..300).contains(&status) {
                    assert!(
                        why.contains("not a Prometheus query result") || why.starts_with("Prometheus answered status"),
                        "{why}"
                    );
                } else {
                    assert!(why.starts_with(&format!("Prometheus answered HTTP {status}")), "{why}");
                }
                return Ok(());
            }
        };
        match classify(&data) {
            Reading::Value(v) => assert!(v.is_finite(), "{v}"),
            Reading::Unavailable { reason } | Reading::Pending { reason } => assert_bounded(&reason),
        }
        match per_pod(&data, NOW) {
            Ok(pods) => {
                assert!(pods.samples.len() + pods.unusable.len() <= MAX_HEARTBEAT_SERIES);
                for sample in pods.samples.values() {
                    assert!(sample.at <= NOW && sample.at.0 >= 0, "{sample:?}");
                }
                for unusable in &pods.unusable {
                    assert_bounded(&unusable.reason);
                }
            }
            Err(why) => assert_bounded(&why),
        }
    }
}

#[test]
fn a_long_value_from_the_server_is_not_repeated_in_full() {
    let long = "p".repeat(1_000_000);
    let series = format!(r#"{{"metric":{{"pod":"{long}"}},"value":[1700000000,"1"]}}"#);
    let twice = Body::Series { series, n: 2 }.bytes();
    let data = envelope(200, &twice).expect("an answer");
    let why = per_pod(&data, NOW).expect_err("a pod twice");
    assert!(why.contains("twice"), "{why}");
    assert_bounded(&why);
    let wrong_type = success(&format!(r#"{{"resultType":"vector","result":"{long}"}}"#));
    let why = envelope(200, wrong_type.as_bytes()).expect_err("not a result");
    assert!(why.contains("not a Prometheus query result"), "{why}");
    assert_bounded(&why);
}
