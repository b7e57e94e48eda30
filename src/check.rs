//! `drainscaler check`: validates policy documents offline and explains what is wrong; also
//! loads the one policy `drainscaler simulate` runs. Pure apart from the caller reading the file.

use serde_json::Value;

use crate::api::ScalingPolicy;
use crate::policy::{self, Policy};

/// The verdict on one YAML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid policy, with a summary of what it will do.
    Valid { name: String, summary: String },
    /// An invalid policy (or one that does not parse), with one message per problem.
    Invalid { name: String, errors: Vec<String> },
    /// A document of another kind, left alone.
    Skipped { kind: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// One verdict per document, in file order (1-based document numbers are their index + 1).
    pub documents: Vec<Verdict>,
}

impl Report {
    pub fn ok(&self) -> bool {
        let any_policy = self
            .documents
            .iter()
            .any(|d| !matches!(d, Verdict::Skipped { .. }));
        any_policy
            && self
                .documents
                .iter()
                .all(|d| !matches!(d, Verdict::Invalid { .. }))
    }

    /// The lines `check` prints for `file`.
    pub fn lines(&self, file: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, doc) in self.documents.iter().enumerate() {
            let n = i + 1;
            match doc {
                Verdict::Valid { name, summary } => out.push(format!(
                    "{file}: document {n}: ScalingPolicy {name}: ok: {summary}"
                )),
                Verdict::Invalid { name, errors } => {
                    for e in errors {
                        out.push(format!("{file}: document {n}: ScalingPolicy {name}: {e}"));
                    }
                }
                Verdict::Skipped { kind } => out.push(format!(
                    "{file}: document {n}: skipped: a {kind}, not a ScalingPolicy"
                )),
            }
        }
        if self
            .documents
            .iter()
            .all(|d| matches!(d, Verdict::Skipped { .. }))
        {
            out.push(format!("{file}: no ScalingPolicy found; expected kind: ScalingPolicy, apiVersion: drainscaler.io/v1alpha1"));
        }
        out
    }
}

/// Checks every document of a YAML stream. A stream that is not YAML at all is an error.
pub fn check(yaml: &str) -> Result<Report, String> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| format!("not valid YAML: {e}"))?;
    let documents = docs
        .into_iter()
        .filter(|d| !d.is_null())
        .map(check_document)
        .collect();
    Ok(Report { documents })
}

fn check_document(doc: Value) -> Verdict {
    match load_document(doc) {
        Loaded::Skipped { kind } => Verdict::Skipped { kind },
        Loaded::Invalid { name, errors } => Verdict::Invalid { name, errors },
        Loaded::Valid { name, policy } => Verdict::Valid {
            name,
            summary: policy.summary(),
        },
    }
}

/// One document, loaded: a validated policy, the reasons it is not one, or another kind.
enum Loaded {
    Valid { name: String, policy: Box<Policy> },
    Invalid { name: String, errors: Vec<String> },
    Skipped { kind: String },
}

/// The single ScalingPolicy of a YAML stream, validated, with its name; or every reason it
/// cannot be used, one message per problem. Other kinds of document are ignored.
pub fn single_policy(yaml: &str) -> Result<(String, Policy), Vec<String>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| vec![format!("not valid YAML: {e}")])?;
    let mut found =
        docs.into_iter()
            .filter(|d| !d.is_null())
            .filter_map(|d| match load_document(d) {
                Loaded::Skipped { .. } => None,
                Loaded::Valid { name, policy } => Some(Ok((name, *policy))),
                Loaded::Invalid { name, errors } => Some(Err(errors
                    .into_iter()
                    .map(|e| format!("ScalingPolicy {name}: {e}"))
                    .collect())),
            });
    let first = found.next();
    let extra = found.count();
    match first {
        None => Err(vec![
            "no ScalingPolicy found; expected kind: ScalingPolicy, apiVersion: drainscaler.io/v1alpha1"
                .to_owned(),
        ]),
        Some(_) if extra > 0 => Err(vec![format!(
            "holds {} ScalingPolicy documents; pass a file with exactly one",
            extra + 1
        )]),
        Some(loaded) => loaded,
    }
}

fn load_document(doc: Value) -> Loaded {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("document without a kind")
        .to_owned();
    if kind != "ScalingPolicy" {
        return Loaded::Skipped { kind };
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map_or_else(|| "(no name)".to_owned(), str::to_owned);
    let mut errors = Vec::new();
    match doc.get("apiVersion").and_then(Value::as_str) {
        Some("drainscaler.io/v1alpha1") => {}
        other => errors.push(format!(
            "apiVersion: must be drainscaler.io/v1alpha1, got {}",
            other.map_or("nothing".to_owned(), |v| format!("{v:?}"))
        )),
    }
    if doc.pointer("/metadata/name").is_none() {
        errors.push("metadata.name: is required".to_owned());
    }
    let policy: ScalingPolicy = match serde_path_to_error::deserialize(doc) {
        Ok(p) => p,
        Err(e) => {
            let path = e.path().to_string();
            errors.push(format!(
                "{}: {}",
                if path == "." {
                    "document".to_owned()
                } else {
                    path
                },
                e.into_inner()
            ));
            return Loaded::Invalid { name, errors };
        }
    };
    match policy::validate(&policy.spec) {
        Ok(policy) if errors.is_empty() => Loaded::Valid {
            name,
            policy: Box::new(policy),
        },
        Ok(_) => Loaded::Invalid { name, errors },
        Err(e) => {
            errors.extend(e.errors.iter().map(ToString::to_string));
            Loaded::Invalid { name, errors }
        }
    }
}
