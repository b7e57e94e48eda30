//! Prometheus: a client for a policy's server, with credentials only from Secrets that opt in,
//! and instant and range queries whose answers are read up to a byte bound. Needs a client.

pub mod decode;
pub mod tenancy;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use prometheus_http_query::response::Data;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::engine::{Reading, Time};
use crate::names::PROMETHEUS_AUTH_LABEL;
use crate::observe::prometheus::decode::{MAX_HEARTBEAT_SERIES, PerPod};
use crate::policy::{PrometheusAuth, PrometheusServer};

/// The largest answer read from Prometheus; reading stops past it. A per-pod answer for the
/// most series allowed is well under 4 MiB.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// The time budget of a policy that names no server: `spec.prometheus.timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus server ready to query: the client, the `Authorization` header and the policy's
/// time budget.
#[derive(Clone)]
pub struct Prometheus {
    http: reqwest::Client,
    address: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("address", &self.address)
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
    #[error("Secret {name} named in spec.prometheus does not exist in the policy's namespace")]
    SecretNotFound { name: String },
    #[error(
        "drainscaler may not read Secret {name}: bind the ClusterRole \
         drainscaler-prometheus-secrets to its ServiceAccount with a RoleBinding in this namespace"
    )]
    SecretForbidden { name: String },
    #[error(
        "Secret {name} named in spec.prometheus does not allow drainscaler to use it: if it is meant \
         to be sent to {address}, label it {PROMETHEUS_AUTH_LABEL}=true \
         (kubectl label secret {name} {PROMETHEUS_AUTH_LABEL}=true)"
    )]
    NotOptedIn { name: String, address: String },
    #[error("Secret {name} has no key {key}")]
    MissingKey { name: String, key: String },
    #[error("Secret {name} key {key} is not usable: {reason}")]
    BadSecret {
        name: String,
        key: String,
        reason: String,
    },
    #[error("building the HTTP client for {address}: {reason}")]
    Build { address: String, reason: String },
}

impl ConnectError {
    /// Whether the user must change the policy or a Secret: retrying the same will not help.
    pub fn needs_a_fix(&self) -> bool {
        match self {
            ConnectError::ReadSecret { .. } | ConnectError::NoServer => false,
            ConnectError::SecretNotFound { .. }
            | ConnectError::SecretForbidden { .. }
            | ConnectError::NotOptedIn { .. }
            | ConnectError::MissingKey { .. }
            | ConnectError::BadSecret { .. }
            | ConnectError::Build { .. } => true,
        }
    }
}

fn http_client(
    builder: reqwest::ClientBuilder,
    address: &str,
) -> Result<reqwest::Client, ConnectError> {
    // reqwest needs a process-wide rustls provider; `main` installs ring, and this makes sure
    // of it (an error only means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No redirects: credentials go to the address the policy names and nowhere else.
    builder
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(DEFAULT_TIMEOUT)
        .build()
        .map_err(|e| build_error(address, &e))
}

impl Prometheus {
    /// A client for `address` with no authentication: the controller-wide default.
    pub fn plain(address: &str) -> Result<Prometheus, ConnectError> {
        let parsed = reqwest::Url::parse(address).map_err(|e| build_error(address, &e))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(build_error(address, &"the address must be an http(s) URL"));
        }
        Ok(Prometheus {
            http: http_client(reqwest::Client::builder(), address)?,
            address: address.trim_end_matches('/').to_owned(),
            authorization: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The server a policy names, with credentials read from Secrets in `namespace` that opt
    /// in; the default server when the policy names none.
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
        let address = server.address.as_str();
        let read = |name: &str| {
            let secrets = secrets.clone();
            let name = name.to_owned();
            async move {
                match secrets.get_opt(&name).await {
                    Ok(Some(s)) => Ok(s),
                    Ok(None) => Err(ConnectError::SecretNotFound { name }),
                    Err(kube::Error::Api(e)) if e.code == 403 => {
                        Err(ConnectError::SecretForbidden { name })
                    }
                    Err(source) => Err(ConnectError::ReadSecret { name, source }),
                }
            }
        };
        let mut http = reqwest::Client::builder();
        if let Some(ca) = &server.ca_secret {
            let pem = secret_key(&read(&ca.name).await?, &ca.name, &ca.key, address)?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| ConnectError::BadSecret {
                    name: ca.name.clone(),
                    key: ca.key.clone(),
                    reason: format!("not a PEM certificate ({e})"),
                })?;
            http = http.add_root_certificate(cert);
        }
        let authorization = match &server.auth {
            PrometheusAuth::None => None,
            PrometheusAuth::BearerToken(key) => {
                let token = secret_key(&read(&key.name).await?, &key.name, &key.key, address)?;
                let token = String::from_utf8_lossy(&token).trim().to_owned();
                Some(header(&key.name, &key.key, &format!("Bearer {token}"))?)
            }
            PrometheusAuth::Basic(secret) => {
                let s = read(&secret.name).await?;
                let user = secret_key(&s, &secret.name, "username", address)?;
                let pass = secret_key(&s, &secret.name, "password", address)?;
                let raw = [user.as_slice(), b":", pass.as_slice()].concat();
                Some(header(
                    &secret.name,
                    "username",
                    &format!("Basic {}", base64(&raw)),
                )?)
            }
        };
        Ok(Prometheus {
            http: http_client(http, address)?,
            address: address.to_owned(),
            authorization,
            timeout: server.timeout,
        })
    }

    /// The time all of one policy's queries together may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same server with another time budget per query (`simulate` reads long ranges).
    pub fn with_timeout(mut self, timeout: Duration) -> Prometheus {
        self.timeout = timeout;
        self
    }

    /// The server's base URL, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// One instant query that must return a single number.
    pub async fn reading(&self, query: &str) -> Reading {
        match self.query(query, None).await {
            Ok(data) => decode::classify(&data),
            Err(reason) => Reading::Unavailable { reason },
        }
    }

    /// One instant query returning a session count per pod (its `pod` label), taken at `now`.
    pub async fn per_pod(&self, query: &str, now: Time) -> Result<PerPod, String> {
        // One more than allowed, so that a server that honours `limit` still shows the excess.
        let data = self.query(query, Some(MAX_HEARTBEAT_SERIES + 1)).await?;
        decode::per_pod(&data, now)
    }

    /// One range query (`/api/v1/query_range`) from `start` to `end` (both included) every
    /// `step`. The caller keeps a range within the server's 11,000 points per series.
    pub async fn range(
        &self,
        query: &str,
        start: Time,
        end: Time,
        step: Duration,
    ) -> Result<Data, QueryError> {
        let seconds = |t: Time| format!("{:.3}", t.0 as f64 / 1000.0);
        let form = vec![
            ("query", query.to_owned()),
            ("start", seconds(start)),
            ("end", seconds(end)),
            ("step", format!("{:.3}", step.as_secs_f64())),
            ("timeout", format!("{}ms", self.timeout.as_millis())),
            // Two are enough to show that a query returns several series, on a server that
            // honours `limit`; others send them all, up to the byte bound.
            ("limit", "2".to_owned()),
        ];
        self.post("query_range", &form).await
    }

    async fn query(&self, query: &str, limit: Option<usize>) -> Result<Data, String> {
        let mut form = vec![
            ("query", query.to_owned()),
            ("timeout", format!("{}ms", self.timeout.as_millis())),
        ];
        if let Some(limit) = limit {
            form.push(("limit", limit.to_string()));
        }
        self.post("query", &form).await.map_err(|e| match e {
            QueryError::Unreachable { reason, .. } => format!("the query failed: {reason}"),
            QueryError::Answer(reason) => reason,
        })
    }

    async fn post(&self, endpoint: &str, form: &[(&str, String)]) -> Result<Data, QueryError> {
        let mut request = self
            .http
            .post(format!("{}/api/v1/{endpoint}", self.address))
            .form(form);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                QueryError::Unreachable {
                    address: self.address.clone(),
                    reason: chain(&e),
                }
            } else {
                QueryError::Answer(format!("the query failed: {}", chain(&e)))
            }
        })?;
        let status = response.status().as_u16();
        let body = read_bounded(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(QueryError::Answer)?;
        decode::envelope(status, &body).map_err(QueryError::Answer)
    }
}

/// Why a query has no answer: the server cannot be reached, or its answer is unusable.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot reach Prometheus at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("{0}")]
    Answer(String),
}

impl QueryError {
    /// A stable name for the way it failed.
    pub fn label(&self) -> &'static str {
        match self {
            QueryError::Unreachable { .. } => "unreachable",
            QueryError::Answer(_) => "answer",
        }
    }
}

/// The body of `response`, or an error once it is longer than `max` bytes (read no further).
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let too_large = || {
        format!(
            "the answer is larger than {} MiB: select fewer series, or aggregate them",
            max >> 20
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer failed: {}", chain(&e)))?
    {
        if body.len().saturating_add(chunk.len()) > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line: reqwest's own message alone rarely says what failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The bytes under `key` of a Secret that opted in to being sent to `address`.
fn secret_key(
    secret: &Secret,
    name: &str,
    key: &str,
    address: &str,
) -> Result<Vec<u8>, ConnectError> {
    let opted_in = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PROMETHEUS_AUTH_LABEL))
        .is_some_and(|v| v == "true");
    if !opted_in {
        return Err(ConnectError::NotOptedIn {
            name: name.to_owned(),
            address: address.to_owned(),
        });
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .ok_or_else(|| ConnectError::MissingKey {
            name: name.to_owned(),
            key: key.to_owned(),
        })
}

fn header(name: &str, key: &str, value: &str) -> Result<HeaderValue, ConnectError> {
    // The error must not repeat the value: it is a credential.
    let mut v = HeaderValue::from_str(value).map_err(|_| ConnectError::BadSecret {
        name: name.to_owned(),
        key: key.to_owned(),
        reason: "it holds characters that cannot be sent in an HTTP header".to_owned(),
    })?;
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

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
