//! The history fetch against a tiny local Prometheus: pages within the server's limit, one
//! grid for all columns, the saved CSV read back the same, and the errors a user meets.

use std::sync::Arc;
use std::time::Duration;

use super::{
    Column, FetchError, MAX_POINTS_PER_SERIES, Range, assemble, columns, fetch, rfc3339, to_csv,
};
use crate::check::single_policy;
use crate::observe::prometheus::Prometheus;
use crate::observe::prometheus::fake::{Answer, Responder, Server};
use crate::simulate::trace::Trace;

/// A guard against a hang, not a speed assertion.
const GUARD: Duration = Duration::from_secs(60);

const DAY_MS: i64 = 86_400_000;
/// 2026-11-01T00:00:00Z.
const NOV_1: i64 = 1_793_491_200_000;

fn column(name: &str, query: &str) -> Column {
    Column {
        name: name.to_owned(),
        query: query.to_owned(),
    }
}

/// A form field of a request's body (values here need no decoding).
fn field(request: &str, name: &str) -> Option<f64> {
    let body = request.split("\r\n\r\n").nth(1)?;
    body.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// A Prometheus whose every series is `value(t)` at each step of the asked range; a query
/// that contains `several` answers two series.
fn server(value: fn(i64) -> f64) -> Server {
    Server::start(Answer::Compute(Responder(Arc::new(
        move |request: &str| {
            let (start, end, step) = (
                field(request, "start").unwrap_or(0.0),
                field(request, "end").unwrap_or(0.0),
                field(request, "step").unwrap_or(1.0),
            );
            let mut points = Vec::new();
            let mut t = start;
            while t <= end {
                let ms = (t * 1000.0).round() as i64;
                points.push(format!("[{t},\"{}\"]", value(ms)));
                t += step;
            }
            let one = |labels: &str| {
                format!(
                    r#"{{"metric":{{{labels}}},"values":[{}]}}"#,
                    points.join(",")
                )
            };
            let result = if request.contains("several") {
                format!("{},{}", one(r#""pod":"a""#), one(r#""pod":"b""#))
            } else {
                one("")
            };
            format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[{result}]}}}}"#
            )
        },
    ))))
}

fn prometheus(server: &Server) -> Prometheus {
    Prometheus::plain(&server.url()).expect("a client")
}

async fn fetch_all(
    p: &Prometheus,
    cols: &[Column],
    range: Range,
) -> Result<super::Fetched, FetchError> {
    tokio::time::timeout(GUARD, fetch(p, cols, range, &mut |_| {}))
        .await
        .expect("the fetch ends")
}

#[test]
fn a_week_at_15s_is_read_in_pages_of_at_most_11000_points_that_neither_overlap_nor_skip() {
    let range = Range::ending(
        NOV_1 + 7 * DAY_MS + 7_000,
        Duration::from_secs(7 * 86_400),
        Duration::from_secs(15),
    )
    .expect("a range");
    assert_eq!((range.start_ms, range.end_ms), (NOV_1, NOV_1 + 7 * DAY_MS));
    assert_eq!(range.points(), 40_321);
    let pages = range.pages();
    assert_eq!(pages.len(), 4);
    assert!(pages.iter().all(|p| p.points() <= MAX_POINTS_PER_SERIES));
    assert_eq!(pages[0].start_ms, range.start_ms);
    assert_eq!(pages[3].end_ms, range.end_ms);
    for pair in pages.windows(2) {
        assert_eq!(pair[1].start_ms, pair[0].end_ms + range.step_ms);
    }
    assert_eq!(pages.iter().map(Range::points).sum::<i64>(), range.points());
}

#[test]
fn a_step_under_a_second_or_a_range_shorter_than_a_step_is_refused() {
    let err =
        Range::ending(NOV_1, Duration::from_secs(60), Duration::from_millis(500)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--step: must be at least 1s, got 500ms; Prometheus scrapes every few seconds at best"
    );
    let err = Range::ending(NOV_1, Duration::from_secs(10), Duration::from_secs(15)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--since: must be at least one --step (15s), got 10s"
    );
}

#[test]
fn the_columns_are_the_policys_prometheus_metrics_by_name_and_the_arrivals() {
    let (_, policy) =
        single_policy(include_str!("../../../examples/policies/chat-keep.yaml")).expect("valid");
    assert_eq!(
        columns(&policy, Some("sum(rate(app_sessions_opened_total[1m]))")),
        vec![
            column("rps", r#"sum(rate(app_requests_total{app="chat"}[1m]))"#),
            column("arrivals", "sum(rate(app_sessions_opened_total[1m]))"),
        ]
    );
}

#[tokio::test]
async fn a_long_range_is_fetched_page_by_page_onto_one_grid() {
    let server = server(|ms| ((ms / 1000) % 1000) as f64);
    let p = prometheus(&server);
    let range = Range::ending(
        NOV_1 + 2 * DAY_MS,
        Duration::from_secs(2 * 86_400),
        Duration::from_secs(15),
    )
    .expect("a range");
    let cols = [column("rps", "up_rps"), column("arrivals", "up_arrivals")];
    let mut seen = Vec::new();
    let fetched = tokio::time::timeout(
        GUARD,
        fetch(&p, &cols, range, &mut |progress| {
            seen.push((progress.column.to_owned(), progress.done, progress.total))
        }),
    )
    .await
    .expect("ends")
    .expect("fetched");
    // 11,521 points: two pages per column.
    assert_eq!(server.seen.requests(), 4);
    assert_eq!(
        seen,
        vec![
            ("rps".to_owned(), 1, 4),
            ("rps".to_owned(), 2, 4),
            ("arrivals".to_owned(), 3, 4),
            ("arrivals".to_owned(), 4, 4)
        ]
    );
    let raw = server.seen.raw();
    assert!(
        raw[0].starts_with("POST /api/v1/query_range "),
        "{}",
        raw[0]
    );
    let trace = fetched.trace;
    assert_eq!(trace.times.len(), 11_521);
    assert_eq!(trace.origin_ms, Some(NOV_1));
    assert_eq!(trace.times[1], 15_000);
    let expected = |row: usize| ((NOV_1 / 1000 + row as i64 * 15) % 1000) as f64;
    for row in [0, 1, 10_999, 11_000, 11_520] {
        assert_eq!(trace.value(0, row), expected(row), "row {row}");
        assert_eq!(trace.value(1, row), expected(row), "row {row}");
    }
    assert!(fetched.notes.is_empty(), "{:?}", fetched.notes);
}

#[test]
fn gaps_hold_the_value_before_and_the_trace_starts_where_every_column_has_data() {
    let range = Range {
        start_ms: 0,
        end_ms: 60_000,
        step_ms: 15_000,
    };
    let cols = [column("rps", "a"), column("arrivals", "b")];
    let samples = vec![
        vec![(0, 1.0), (15_000, 2.0), (45_000, 4.0), (60_000, 5.0)],
        vec![(15_000, 0.5), (30_000, 0.25), (60_000, 0.125)],
    ];
    let fetched = assemble("p", &cols, &samples, range).expect("assembled");
    let t = &fetched.trace;
    assert_eq!(t.times, vec![0, 15_000, 30_000, 45_000]);
    assert_eq!(t.origin_ms, Some(15_000));
    assert_eq!(t.series(0), &[2.0, 2.0, 4.0, 5.0]);
    assert_eq!(t.series(1), &[0.5, 0.25, 0.25, 0.125]);
    assert_eq!(
        fetched.notes,
        vec![
            "the trace starts at 1970-01-01T00:00:15Z, where every column first has a sample (1 earlier points left out)".to_owned(),
            "column rps had no sample at 1 of 4 points: each holds the value before it".to_owned(),
            "column arrivals had no sample at 1 of 4 points: each holds the value before it".to_owned(),
        ]
    );
}

#[test]
fn a_saved_trace_reads_back_as_the_same_trace() {
    let range = Range {
        start_ms: NOV_1,
        end_ms: NOV_1 + 45_000,
        step_ms: 15_000,
    };
    let cols = [column("rps", "a"), column("arrivals", "b")];
    let samples = vec![
        vec![
            (NOV_1, 0.1),
            (NOV_1 + 15_000, 1e-7),
            (NOV_1 + 30_000, 123_456.789),
            (NOV_1 + 45_000, 2.0 / 3.0),
        ],
        vec![
            (NOV_1, 0.0),
            (NOV_1 + 15_000, 1.0),
            (NOV_1 + 30_000, 2.5),
            (NOV_1 + 45_000, 3.0),
        ],
    ];
    let fetched = assemble("p", &cols, &samples, range).expect("assembled");
    let csv = to_csv(&fetched.trace);
    assert!(
        csv.starts_with("time,rps,arrivals\n2026-11-01T00:00:00Z,0.1,0\n2026-11-01T00:00:15Z,"),
        "{csv}"
    );
    let back = Trace::parse("saved.csv", &csv).expect("parses");
    assert_eq!(back.columns, fetched.trace.columns);
    assert_eq!(back.times, fetched.trace.times);
    assert_eq!(back.origin_ms, Some(NOV_1));
    for c in 0..2 {
        assert_eq!(back.series(c), fetched.trace.series(c), "column {c}");
    }
}

#[tokio::test]
async fn an_unreachable_server_says_so_and_how_to_point_at_one() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = closed.local_addr().expect("an address");
    drop(closed);
    let p = Prometheus::plain(&format!("http://{addr}")).expect("a client");
    let range = Range {
        start_ms: NOV_1,
        end_ms: NOV_1 + 60_000,
        step_ms: 15_000,
    };
    let err = fetch_all(&p, &[column("rps", "up")], range)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unreachable");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach Prometheus at http://{addr}: ")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(
        text.ends_with(
            "check --prometheus (the server's base URL, such as http://prometheus.monitoring:9090)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_empty_range_names_the_column_its_query_and_the_range() {
    let server = Server::start(Answer::Full {
        status: 200,
        headers: vec![],
        body: br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.to_vec(),
    });
    let range = Range {
        start_ms: NOV_1,
        end_ms: NOV_1 + 60_000,
        step_ms: 15_000,
    };
    let err = fetch_all(
        &prometheus(&server),
        &[column("rps", "sum(rate(x[1m]))")],
        range,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column rps (sum(rate(x[1m]))) has no samples from 2026-11-01T00:00:00Z to 2026-11-01T00:01:00Z: is the metric scraped over that time? Try the query in Prometheus, or move the range with --since and --until"
    );
}

#[tokio::test]
async fn a_query_with_several_series_says_which_labels_differ_and_how_to_fix_it() {
    let server = server(|_| 1.0);
    let range = Range {
        start_ms: NOV_1,
        end_ms: NOV_1 + 60_000,
        step_ms: 15_000,
    };
    let err = fetch_all(&prometheus(&server), &[column("rps", "several_rps")], range)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "column rps (several_rps) from {} to {}: the query returned at least 2 series that differ in pod (a, b); aggregate it to one, such as sum(...) or sum without (pod) (...)",
            rfc3339(NOV_1),
            rfc3339(NOV_1 + 60_000)
        )
    );
}

#[tokio::test]
async fn a_policy_without_prometheus_metrics_or_arrivals_has_nothing_to_read() {
    let server = server(|_| 1.0);
    let range = Range {
        start_ms: NOV_1,
        end_ms: NOV_1 + 60_000,
        step_ms: 15_000,
    };
    let err = fetch_all(&prometheus(&server), &[], range)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "nothing_to_read");
    assert_eq!(server.seen.requests(), 0);
}
