//! Decoding Prometheus API answers: the response envelope, one-number results for metrics,
//! per-pod results for heartbeats and one-series range results for `simulate`. A failed, empty, NaN or ambiguous result is never zero.
//! Pure, no I/O.

use std::collections::BTreeMap;

use prometheus_http_query::response::{Data, PromqlResult};
use serde::Deserialize;

use crate::engine::{Reading, Time};

/// The most series a heartbeat query may return: one per pod of one workload, with room to
/// spare. More means the query selects far more than the target's pods.
pub const MAX_HEARTBEAT_SERIES: usize = 10_000;

/// Labels that may carry the pod's UID (kube-state-metrics writes `uid`; a relabelling of
/// `__meta_kubernetes_pod_uid` usually writes `pod_uid`).
const UID_LABELS: [&str; 2] = ["pod_uid", "uid"];

/// Longest part of an error message from the server that is repeated in a status.
const MAX_SERVER_MESSAGE: usize = 300;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Success {
    status: String,
    data: PromqlResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Failure {
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The `data` of an `/api/v1/query` answer with HTTP status `status`, or why there is none.
pub fn envelope(status: u16, body: &[u8]) -> Result<Data, String> {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Success>(body) {
            Ok(ok) if ok.status == "success" => Ok(ok.data.into_inner().0),
            Ok(ok) => Err(format!(
                "Prometheus answered status {:?}",
                shorten(&ok.status)
            )),
            // serde quotes a value of the wrong type in full: the server's, of any length.
            Err(e) => Err(format!(
                "the answer is not a Prometheus query result ({}); is spec.prometheus.address a Prometheus server?",
                shorten(&e.to_string())
            )),
        };
    }
    let said = serde_json::from_slice::<Failure>(body)
        .ok()
        .and_then(|f| match (f.error_type, f.error) {
            (Some(t), Some(e)) => Some(format!("{t}: {e}")),
            (None, Some(e)) => Some(e),
            _ => None,
        })
        .map(|m| format!(": {}", shorten(&m)))
        .unwrap_or_default();
    let hint = match status {
        300..=399 => {
            "; drainscaler does not follow redirects, so that credentials go only to the address \
             the policy names: set spec.prometheus.address to the final address"
        }
        401 | 403 => {
            "; check the credentials in spec.prometheus (bearerTokenSecret or basicAuthSecret)"
        }
        404 => "; is spec.prometheus.address the server's base URL, without /api/v1?",
        _ => "",
    };
    Err(format!("Prometheus answered HTTP {status}{said}{hint}"))
}

fn shorten(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_SERVER_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > MAX_SERVER_MESSAGE {
        out.push_str("...");
    }
    out
}

/// A result that should be one number: a scalar, or a vector of exactly one sample.
pub fn classify(data: &Data) -> Reading {
    let value = match data {
        Data::Scalar(s) => s.value(),
        Data::Vector(v) if v.is_empty() => {
            return unavailable("the query returned no samples (is the metric being scraped?)");
        }
        Data::Vector(v) if v.len() > 1 => {
            return unavailable(&format!(
                "the query returned {} series; aggregate it to one, e.g. with sum(...)",
                v.len()
            ));
        }
        Data::Vector(v) => v[0].sample().value(),
        Data::Matrix(_) => {
            return unavailable("the query returned a range vector; use an instant query");
        }
    };
    if value.is_finite() {
        Reading::Value(value)
    } else {
        unavailable(&format!("the query returned {value}"))
    }
}

fn unavailable(reason: &str) -> Reading {
    Reading::Unavailable {
        reason: reason.to_owned(),
    }
}

/// The samples of a range query that must return one series: `(milliseconds since the epoch,
/// value)` in time order. No series at all is an empty list (a range with no data); NaN and
/// infinite samples are left out, as gaps. Several series are an error that names the labels
/// that tell them apart, so that the query can be aggregated over exactly those.
pub fn range(data: &Data) -> Result<Vec<(i64, f64)>, String> {
    let Data::Matrix(series) = data else {
        return Err("a range query must return a range vector (a matrix)".to_owned());
    };
    match series.as_slice() {
        [] => Ok(Vec::new()),
        [one] => Ok(one
            .samples()
            .iter()
            .filter(|s| s.value().is_finite())
            .map(|s| ((s.timestamp() * 1000.0).round() as i64, s.value()))
            .collect()),
        several => {
            let labels: Vec<&std::collections::HashMap<String, String>> =
                several.iter().map(|s| s.metric()).collect();
            Err(several_series(&labels))
        }
    }
}

/// Labels shown per differing label name in `several_series`.
const SHOWN_VALUES: usize = 3;

/// "the query returned N series that differ in ...; aggregate ...".
fn several_series(labels: &[&std::collections::HashMap<String, String>]) -> String {
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for l in labels {
        names.extend(l.keys().map(String::as_str));
    }
    let differing: Vec<(&str, Vec<&str>)> = names
        .into_iter()
        .filter_map(|name| {
            let mut values: Vec<&str> = labels
                .iter()
                .map(|l| l.get(name).map_or("(none)", String::as_str))
                .collect();
            values.sort_unstable();
            values.dedup();
            (values.len() > 1).then_some((name, values))
        })
        .collect();
    let shown: Vec<String> = differing
        .iter()
        .map(|(name, values)| {
            let mut v: Vec<String> = values
                .iter()
                .take(SHOWN_VALUES)
                .map(|v| shorten(v))
                .collect();
            if values.len() > SHOWN_VALUES {
                v.push("...".to_owned());
            }
            format!("{} ({})", shorten(name), v.join(", "))
        })
        .collect();
    let by: Vec<&str> = differing.iter().map(|(name, _)| *name).collect();
    let fix = if by.is_empty() {
        "aggregate it to one, such as sum(...)".to_owned()
    } else {
        format!(
            "aggregate it to one, such as sum(...) or sum without ({}) (...)",
            shorten(&by.join(", "))
        )
    };
    let at_least = if labels.len() == 2 { "at least " } else { "" };
    if shown.is_empty() {
        format!(
            "the query returned {at_least}{} series; {fix}",
            labels.len()
        )
    } else {
        format!(
            "the query returned {at_least}{} series that differ in {}; {fix}",
            labels.len(),
            shown.join(", ")
        )
    }
}

/// One pod's session count as Prometheus reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSample {
    /// Rounded up: 0.4 sessions is not none.
    pub sessions: u64,
    /// The sample's own time (never later than the query's `now`).
    pub at: Time,
    /// The pod UID the series carries, when it carries one.
    pub uid: Option<String>,
}

/// A pod whose sample cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub pod: String,
    pub reason: String,
}

/// A heartbeat query's answer: usable samples by pod name, and those that are not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerPod {
    pub samples: BTreeMap<String, PodSample>,
    pub unusable: Vec<Unusable>,
}

/// A result with one sample per pod, keyed by the `pod` label, taken at `now`. The query as a
/// whole fails when it cannot be read per pod (no `pod` label, a pod twice, too many series);
/// a single pod's NaN, infinite or negative value makes only that pod `unusable`.
pub fn per_pod(data: &Data, now: Time) -> Result<PerPod, String> {
    let Data::Vector(v) = data else {
        return Err("the heartbeat query must return an instant vector".to_owned());
    };
    if v.len() > MAX_HEARTBEAT_SERIES {
        return Err(format!(
            "the heartbeat query returned {} series, more than the {MAX_HEARTBEAT_SERIES} allowed: \
             select only the target's pods, e.g. sum by (pod) (app_active_sessions{{namespace=\"...\"}})",
            v.len()
        ));
    }
    let mut out = PerPod::default();
    let mut seen = std::collections::BTreeSet::new();
    for series in v {
        let Some(pod) = series.metric().get("pod") else {
            return Err(
                "the heartbeat query's series need a pod label: aggregate with sum by (pod) (...)"
                    .to_owned(),
            );
        };
        if !seen.insert(pod.as_str()) {
            return Err(format!(
                "the heartbeat query returned pod {} twice: aggregate with sum by (pod) (...)",
                shorten(pod)
            ));
        }
        let uid = UID_LABELS
            .iter()
            .find_map(|l| series.metric().get(*l))
            .cloned();
        match sample(series.sample().value(), series.sample().timestamp(), now) {
            Ok((sessions, at)) => {
                out.samples
                    .insert(pod.clone(), PodSample { sessions, at, uid });
            }
            Err(reason) => out.unusable.push(Unusable {
                pod: pod.clone(),
                reason,
            }),
        }
    }
    Ok(out)
}

/// A sample's session count (rounded up) and time, or why it is unusable.
fn sample(value: f64, seconds: f64, now: Time) -> Result<(u64, Time), String> {
    if value.is_nan() {
        return Err("the sample is NaN (a division by zero in the query?)".to_owned());
    }
    if value.is_infinite() {
        return Err(format!("the sample is {value}"));
    }
    if value < 0.0 {
        return Err(format!(
            "the sample is negative ({value}); a session count cannot be"
        ));
    }
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("the sample has no usable timestamp ({seconds})"));
    }
    // Float to integer casts saturate: a huge count stays huge, never wraps to small.
    let sessions = value.ceil() as u64;
    let at = Time((seconds * 1000.0).floor() as i64);
    // A server clock ahead of ours must not make a sample look newer than the query.
    Ok((sessions, at.min(now)))
}

/// Parses the `data` member of a Prometheus API response, for tests and tools.
pub fn parse_data(json: &str) -> Result<Data, serde_json::Error> {
    serde_json::from_str::<PromqlResult>(json).map(|r| r.into_inner().0)
}

#[cfg(test)]
mod tests {
    use super::{MAX_HEARTBEAT_SERIES, PodSample, classify, envelope, parse_data, per_pod, range};
    use crate::engine::{Reading, Time};

    fn data(json: &str) -> prometheus_http_query::response::Data {
        parse_data(json).expect("recorded response parses")
    }

    fn is_unavailable(r: &Reading, containing: &str) -> bool {
        matches!(r, Reading::Unavailable { reason } if reason.contains(containing))
    }

    const NOW: Time = Time(1_700_000_100_000);

    #[test]
    fn a_single_sample_is_a_value() {
        let d = data(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"250.5"]}]}"#,
        );
        assert_eq!(classify(&d), Reading::Value(250.5));
    }

    #[test]
    fn a_scalar_is_a_value() {
        let d = data(r#"{"resultType":"scalar","result":[1700000000,"3"]}"#);
        assert_eq!(classify(&d), Reading::Value(3.0));
    }

    #[test]
    fn an_empty_result_is_unavailable_not_zero() {
        let d = data(r#"{"resultType":"vector","result":[]}"#);
        assert!(is_unavailable(&classify(&d), "no samples"));
    }

    #[test]
    fn nan_is_unavailable() {
        let d =
            data(r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"NaN"]}]}"#);
        assert!(is_unavailable(&classify(&d), "NaN"));
        let d =
            data(r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"+Inf"]}]}"#);
        assert!(is_unavailable(&classify(&d), "inf"));
    }

    #[test]
    fn several_series_are_unavailable_and_say_how_to_fix_it() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"a"},"value":[1700000000,"1"]},
                {"metric":{"pod":"b"},"value":[1700000000,"2"]}]}"#,
        );
        assert!(is_unavailable(&classify(&d), "sum("));
    }

    #[test]
    fn per_pod_results_are_keyed_by_the_pod_label() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"chat-a"},"value":[1700000000,"3"]},
                {"metric":{"pod":"chat-b"},"value":[1700000000,"0"]}]}"#,
        );
        let got = per_pod(&d, NOW).expect("per pod");
        assert_eq!(got.samples["chat-a"].sessions, 3);
        assert_eq!(got.samples["chat-b"].sessions, 0);
        let unlabelled =
            data(r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"3"]}]}"#);
        assert!(per_pod(&unlabelled, NOW).is_err());
    }

    #[test]
    fn a_heartbeat_takes_its_samples_own_time_not_the_query_time() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"chat-a"},"value":[1700000042.5,"3"]}]}"#,
        );
        let got = per_pod(&d, NOW).expect("per pod");
        assert_eq!(got.samples["chat-a"].at, Time(1_700_000_042_500));
    }

    #[test]
    fn a_sample_from_a_clock_ahead_of_ours_is_no_newer_than_the_query() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"chat-a"},"value":[1700009999,"3"]}]}"#,
        );
        let got = per_pod(&d, NOW).expect("per pod");
        assert_eq!(got.samples["chat-a"].at, NOW);
    }

    #[test]
    fn a_fraction_of_a_session_is_rounded_up_never_down() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"a"},"value":[1700000000,"0.4"]},
                {"metric":{"pod":"b"},"value":[1700000000,"2.0001"]},
                {"metric":{"pod":"c"},"value":[1700000000,"0"]},
                {"metric":{"pod":"d"},"value":[1700000000,"1e30"]}]}"#,
        );
        let got = per_pod(&d, NOW).expect("per pod");
        let sessions = |p: &str| got.samples[p].sessions;
        assert_eq!(
            (sessions("a"), sessions("b"), sessions("c")),
            (1, 3, 0),
            "0.4 must not become 0"
        );
        assert_eq!(
            sessions("d"),
            u64::MAX,
            "a huge count saturates, never wraps"
        );
    }

    #[test]
    fn nan_negative_and_infinite_samples_are_unusable_with_a_reason() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"nan"},"value":[1700000000,"NaN"]},
                {"metric":{"pod":"neg"},"value":[1700000000,"-1"]},
                {"metric":{"pod":"inf"},"value":[1700000000,"+Inf"]},
                {"metric":{"pod":"ok"},"value":[1700000000,"2"]}]}"#,
        );
        let got = per_pod(&d, NOW).expect("per pod");
        assert_eq!(got.samples.keys().collect::<Vec<_>>(), ["ok"]);
        let reason = |p: &str| {
            got.unusable
                .iter()
                .find(|u| u.pod == p)
                .map(|u| u.reason.clone())
                .unwrap_or_default()
        };
        assert!(reason("nan").contains("NaN"), "{}", reason("nan"));
        assert!(reason("neg").contains("negative"), "{}", reason("neg"));
        assert!(reason("inf").contains("inf"), "{}", reason("inf"));
    }

    #[test]
    fn a_series_uid_label_is_kept() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"chat-0","pod_uid":"u-1"},"value":[1700000000,"1"]},
                {"metric":{"pod":"chat-1","uid":"u-2"},"value":[1700000000,"1"]},
                {"metric":{"pod":"chat-2"},"value":[1700000000,"1"]}]}"#,
        );
        let got = per_pod(&d, NOW).expect("per pod");
        let uid = |p: &str| got.samples[p].uid.clone();
        assert_eq!(uid("chat-0").as_deref(), Some("u-1"));
        assert_eq!(uid("chat-1").as_deref(), Some("u-2"));
        assert_eq!(uid("chat-2"), None);
    }

    #[test]
    fn a_pod_twice_is_an_error_not_a_guess() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"a","ns":"x"},"value":[1700000000,"1"]},
                {"metric":{"pod":"a","ns":"y"},"value":[1700000000,"0"]}]}"#,
        );
        let err = per_pod(&d, NOW).expect_err("ambiguous");
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn too_many_series_fail_the_heartbeat_query() {
        let series: Vec<String> = (0..=MAX_HEARTBEAT_SERIES)
            .map(|i| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1700000000,"1"]}}"#))
            .collect();
        let json = format!(
            r#"{{"resultType":"vector","result":[{}]}}"#,
            series.join(",")
        );
        let err = per_pod(&data(&json), NOW).expect_err("too many");
        assert!(err.contains("more than the 10000"), "{err}");
        let fewer = format!(
            r#"{{"resultType":"vector","result":[{}]}}"#,
            series[..MAX_HEARTBEAT_SERIES].join(",")
        );
        assert_eq!(
            per_pod(&data(&fewer), NOW)
                .expect("at the bound")
                .samples
                .len(),
            MAX_HEARTBEAT_SERIES
        );
    }

    #[test]
    fn the_envelope_gives_data_on_success_and_the_servers_words_on_error() {
        let ok =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"3"]}}"#;
        assert_eq!(
            classify(&envelope(200, ok).expect("data")),
            Reading::Value(3.0)
        );
        let bad = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected <EOF>"}"#;
        let err = envelope(400, bad).expect_err("an error");
        assert!(
            err.contains("HTTP 400: bad_data: 1:5: parse error"),
            "{err}"
        );
        let err = envelope(302, b"").expect_err("a redirect");
        assert!(err.contains("does not follow redirects"), "{err}");
        let err = envelope(401, b"no").expect_err("refused");
        assert!(err.contains("bearerTokenSecret"), "{err}");
        let err = envelope(200, b"<html>login</html>").expect_err("not Prometheus");
        assert!(err.contains("not a Prometheus query result"), "{err}");
    }

    #[test]
    fn a_long_error_from_the_server_is_shortened() {
        let long = format!(r#"{{"status":"error","error":"{}"}}"#, "x".repeat(10_000));
        let err = envelope(422, long.as_bytes()).expect_err("an error");
        assert!(err.len() < 500, "{} characters", err.len());
    }

    #[test]
    fn a_sample_keeps_its_uid_time_and_count_together() {
        let d = data(
            r#"{"resultType":"vector","result":[
                {"metric":{"pod":"chat-0","pod_uid":"u-1"},"value":[1700000001,"0.5"]}]}"#,
        );
        assert_eq!(
            per_pod(&d, NOW).expect("per pod").samples["chat-0"],
            PodSample {
                sessions: 1,
                at: Time(1_700_000_001_000),
                uid: Some("u-1".to_owned()),
            }
        );
    }

    #[test]
    fn a_range_of_one_series_is_its_samples_in_milliseconds_without_nan() {
        let d = data(
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[
                [1700000000,"1.5"],[1700000015,"NaN"],[1700000030.5,"3"]]}]}"#,
        );
        assert_eq!(
            range(&d).expect("one series"),
            vec![(1_700_000_000_000, 1.5), (1_700_000_030_500, 3.0)]
        );
        let empty = data(r#"{"resultType":"matrix","result":[]}"#);
        assert_eq!(range(&empty).expect("no series"), vec![]);
    }

    #[test]
    fn a_range_of_several_series_names_the_labels_that_differ_and_how_to_aggregate() {
        let d = data(
            r#"{"resultType":"matrix","result":[
                {"metric":{"app":"chat","pod":"chat-a","instance":"1"},"values":[[1700000000,"1"]]},
                {"metric":{"app":"chat","pod":"chat-b","instance":"1"},"values":[[1700000000,"2"]]},
                {"metric":{"app":"chat","pod":"chat-c","instance":"2"},"values":[[1700000000,"2"]]}]}"#,
        );
        let err = range(&d).expect_err("ambiguous");
        assert_eq!(
            err,
            "the query returned 3 series that differ in instance (1, 2), pod (chat-a, chat-b, \
             chat-c); aggregate it to one, such as sum(...) or sum without (instance, pod) (...)"
        );
        let vector = data(r#"{"resultType":"vector","result":[]}"#);
        assert!(range(&vector).is_err());
    }
}
