//! Prometheus readings: building a client for a policy's server (auth and CA from Secrets) and
//! classifying instant-query results. A failed, empty, NaN or ambiguous result is
//! `Reading::Unavailable`, never zero. Needs a client.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use prometheus_http_query::response::{Data, PromqlResult};
use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::engine::Reading;
use crate::policy::{PrometheusAuth, PrometheusServer};

/// A Prometheus server ready to query: the client, the `Authorization` header and a timeout.
#[derive(Clone)]
pub struct Prometheus {
    client: prometheus_http_query::Client,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("address", &self.client.base_url().as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no Prometheus server: set spec.prometheus.address or run the controller with --prometheus-url"
    )]
    NoServer,
    #[error("reading Secret {name}: {source}")]
    ReadSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {name} has no key {key}")]
    MissingKey { name: String, key: String },
    #[error("building the HTTP client for {address}: {reason}")]
    Build { address: String, reason: String },
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Prometheus {
    /// A client for `address` with no authentication: the controller-wide default.
    pub fn plain(address: &str) -> Result<Prometheus, ConnectError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| build_error(address, &e))?;
        Ok(Prometheus {
            client: prometheus_http_query::Client::from(http, address)
                .map_err(|e| build_error(address, &e))?,
            authorization: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The server a policy names, with credentials read from Secrets in `namespace`; the
    /// default server when the policy names none.
    pub async fn for_policy(
        client: &Client,
        namespace: &str,
        server: Option<&PrometheusServer>,
        default: Option<&Prometheus>,
    ) -> Result<Prometheus, ConnectError> {
        let Some(server) = server else {
            return default.cloned().ok_or(ConnectError::NoServer);
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut http = reqwest::Client::builder();
        if let Some(ca) = &server.ca_secret {
            let pem = secret_key(&secrets, &ca.name, &ca.key).await?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| build_error(&server.address, &e))?;
            http = http.add_root_certificate(cert);
        }
        let authorization = match &server.auth {
            PrometheusAuth::None => None,
            PrometheusAuth::BearerToken(key) => {
                let token = secret_key(&secrets, &key.name, &key.key).await?;
                let token = String::from_utf8_lossy(&token).trim().to_owned();
                Some(header(&server.address, &format!("Bearer {token}"))?)
            }
            PrometheusAuth::Basic(secret) => {
                let user = secret_key(&secrets, &secret.name, "username").await?;
                let pass = secret_key(&secrets, &secret.name, "password").await?;
                let raw = [user.as_slice(), b":", pass.as_slice()].concat();
                Some(header(&server.address, &format!("Basic {}", base64(&raw)))?)
            }
        };
        let http = http.build().map_err(|e| build_error(&server.address, &e))?;
        Ok(Prometheus {
            client: prometheus_http_query::Client::from(http, &server.address)
                .map_err(|e| build_error(&server.address, &e))?,
            authorization,
            timeout: server.timeout,
        })
    }

    /// One instant query that must return a single number.
    pub async fn reading(&self, query: &str) -> Reading {
        match self.query(query).await {
            Ok(data) => classify(&data),
            Err(reason) => Reading::Unavailable { reason },
        }
    }

    /// One instant query returning a number per pod (its `pod` label).
    pub async fn per_pod(&self, query: &str) -> Result<BTreeMap<String, f64>, String> {
        self.query(query).await.and_then(|data| per_pod(&data))
    }

    async fn query(&self, query: &str) -> Result<Data, String> {
        let mut q = self
            .client
            .query(query)
            .timeout(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX));
        if let Some(auth) = &self.authorization {
            q = q.header(AUTHORIZATION, auth.clone());
        }
        match tokio::time::timeout(self.timeout, q.get()).await {
            Err(_) => Err(format!(
                "the query took longer than {}s",
                self.timeout.as_secs_f64()
            )),
            Ok(Err(e)) => Err(format!("the query failed: {e}")),
            Ok(Ok(result)) => Ok(result.into_inner().0),
        }
    }
}

async fn secret_key(secrets: &Api<Secret>, name: &str, key: &str) -> Result<Vec<u8>, ConnectError> {
    let secret = secrets
        .get(name)
        .await
        .map_err(|source| ConnectError::ReadSecret {
            name: name.to_owned(),
            source,
        })?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(|| ConnectError::MissingKey {
            name: name.to_owned(),
            key: key.to_owned(),
        })
}

fn header(address: &str, value: &str) -> Result<HeaderValue, ConnectError> {
    let mut v = HeaderValue::from_str(value).map_err(|e| build_error(address, &e))?;
    v.set_sensitive(true);
    Ok(v)
}

fn build_error(address: &str, e: &dyn std::fmt::Display) -> ConnectError {
    ConnectError::Build {
        address: address.to_owned(),
        reason: e.to_string(),
    }
}

/// Standard base64 with padding, for basic auth.
fn base64(raw: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
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

/// A result with one finite sample per pod, keyed by the `pod` label.
pub fn per_pod(data: &Data) -> Result<BTreeMap<String, f64>, String> {
    let Data::Vector(v) = data else {
        return Err("the heartbeat query must return an instant vector".to_owned());
    };
    let mut out = BTreeMap::new();
    for sample in v {
        let Some(pod) = sample.metric().get("pod") else {
            return Err(
                "the heartbeat query's series need a pod label: aggregate with sum by (pod) (...)"
                    .to_owned(),
            );
        };
        let value = sample.sample().value();
        if value.is_finite() && value >= 0.0 && out.insert(pod.clone(), value).is_some() {
            return Err(format!("the heartbeat query returned pod {pod} twice"));
        }
    }
    Ok(out)
}

fn unavailable(reason: &str) -> Reading {
    Reading::Unavailable {
        reason: reason.to_owned(),
    }
}

/// Parses the `data` member of a Prometheus API response, for tests and tools.
pub fn parse_data(json: &str) -> Result<Data, serde_json::Error> {
    serde_json::from_str::<PromqlResult>(json).map(|r| r.into_inner().0)
}

#[cfg(test)]
mod tests {
    use super::{base64, classify, parse_data, per_pod};
    use crate::engine::Reading;

    fn data(json: &str) -> prometheus_http_query::response::Data {
        parse_data(json).expect("recorded response parses")
    }

    fn is_unavailable(r: &Reading, containing: &str) -> bool {
        matches!(r, Reading::Unavailable { reason } if reason.contains(containing))
    }

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
        let got = per_pod(&d).expect("per pod");
        assert_eq!(got.get("chat-a"), Some(&3.0));
        assert_eq!(got.get("chat-b"), Some(&0.0));
        let unlabelled =
            data(r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"3"]}]}"#);
        assert!(per_pod(&unlabelled).is_err());
    }

    #[test]
    fn basic_auth_is_standard_base64() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
