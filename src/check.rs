//! `drainscaler check`: validates policy documents offline and explains what is wrong; also
//! loads the one policy `drainscaler simulate` runs. Pure apart from the caller reading the file.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;
use serde_json::Value;
use serde_path_to_error::{Path, Segment};

use crate::api::{DURATION_PATTERN, ScalingPolicy};
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
    let docs = parse_stream(yaml)?;
    let schema = policy_schema();
    let documents = docs
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|d| check_document(d, schema.as_ref()))
        .collect();
    Ok(Report { documents })
}

/// The single ScalingPolicy of a YAML stream, validated, with its name; or every reason it
/// cannot be used, one message per problem. Other kinds of document are ignored.
pub fn single_policy(yaml: &str) -> Result<(String, Policy), Vec<String>> {
    let docs = parse_stream(yaml).map_err(|e| vec![e])?;
    let schema = policy_schema();
    let mut found = docs.into_iter().filter(|d| !d.is_null()).filter_map(|d| {
        match load_document(d, schema.as_ref()) {
            Loaded::Skipped { .. } => None,
            Loaded::Valid { name, policy } => Some(Ok((name, *policy))),
            Loaded::Invalid { name, errors } => Some(Err(errors
                .into_iter()
                .map(|e| format!("ScalingPolicy {name}: {e}"))
                .collect())),
        }
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

/// The single ScalingPolicy of a YAML stream as written (for tools that change and write it
/// back), with its validated policy; or every reason it cannot be used, as `single_policy`.
pub fn single_resource(yaml: &str) -> Result<(ScalingPolicy, Policy), Vec<String>> {
    let (_, policy) = single_policy(yaml)?;
    let docs = parse_stream(yaml).map_err(|e| vec![e])?;
    let doc = docs
        .into_iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some("ScalingPolicy"))
        .ok_or_else(|| vec!["no ScalingPolicy found".to_owned()])?;
    let resource = serde_json::from_value(doc).map_err(|e| vec![e.to_string()])?;
    Ok((resource, policy))
}

/// The documents of a YAML stream, or one line saying where the YAML is broken.
fn parse_stream(yaml: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple(yaml).map_err(|e| {
        // One line, as every other message: the position is enough to find the mistake.
        let plain = e.without_snippet().to_string();
        let plain = plain.strip_prefix("error: ").unwrap_or(&plain);
        // The parser's advice is for programmers, not for the person writing the file.
        let plain = plain.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        // The parser's limits on size and alias expansion (a YAML bomb), said in words.
        let plain = plain.replace(
            "budget breached: ",
            "over a limit (aliases that expand too far, or too many nodes, documents or levels): ",
        );
        format!("not valid YAML: {plain}")
    })
}

/// The OpenAPI schema the API server checks policies against.
fn policy_schema() -> Option<JSONSchemaProps> {
    ScalingPolicy::crd()
        .spec
        .versions
        .into_iter()
        .next()?
        .schema?
        .open_api_v3_schema
}

fn check_document(doc: Value, schema: Option<&JSONSchemaProps>) -> Verdict {
    match load_document(doc, schema) {
        Loaded::Skipped { kind } => Verdict::Skipped { kind },
        Loaded::Invalid { name, errors } => Verdict::Invalid { name, errors },
        Loaded::Valid { name, policy } => Verdict::Valid {
            name,
            summary: one_line(&policy.summary()),
        },
    }
}

/// One document, loaded: a validated policy, the reasons it is not one, or another kind.
enum Loaded {
    Valid { name: String, policy: Box<Policy> },
    Invalid { name: String, errors: Vec<String> },
    Skipped { kind: String },
}

/// The most characters of one printed message or name; past it the middle is left out.
const MAX_SHOWN: usize = 500;

/// `text` as one printable line: control characters escaped, so that a key or name with a
/// newline cannot forge a line of output, and a long one cut in the middle, where a hostile
/// value sits between the field's path and the advice.
pub fn one_line(text: &str) -> String {
    let chars: Vec<char> = text
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if chars.len() <= MAX_SHOWN {
        return chars.into_iter().collect();
    }
    let (head, tail) = (MAX_SHOWN * 3 / 5, MAX_SHOWN / 5);
    let left_out = chars.len() - head - tail;
    format!(
        "{}...({left_out} characters left out)...{}",
        chars[..head].iter().collect::<String>(),
        chars[chars.len() - tail..].iter().collect::<String>()
    )
}

fn load_document(doc: Value, schema: Option<&JSONSchemaProps>) -> Loaded {
    match load_raw(doc, schema) {
        Loaded::Skipped { kind } => Loaded::Skipped {
            kind: one_line(&kind),
        },
        Loaded::Invalid { name, errors } => Loaded::Invalid {
            name: one_line(&name),
            errors: errors.iter().map(|e| one_line(e)).collect(),
        },
        Loaded::Valid { name, policy } => Loaded::Valid {
            name: one_line(&name),
            policy,
        },
    }
}

fn load_raw(doc: Value, schema: Option<&JSONSchemaProps>) -> Loaded {
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
    // The API server rejects unknown fields (kubectl's strict field validation); serde
    // would silently drop them, and a misspelt `minReplica: 3` would mean minReplicas 1.
    if let Some(schema) = schema {
        unknown_fields(&doc, schema, "", &mut errors);
    }
    let policy: ScalingPolicy = match serde_path_to_error::deserialize(doc) {
        Ok(p) => p,
        Err(e) => {
            errors.push(explain(e.path(), e.inner(), schema));
            return Loaded::Invalid { name, errors };
        }
    };
    match policy::validate(&policy.spec) {
        Ok(p) if errors.is_empty() => Loaded::Valid {
            name,
            policy: Box::new(p),
        },
        Ok(_) => Loaded::Invalid { name, errors },
        Err(e) => {
            errors.extend(e.errors.iter().map(ToString::to_string));
            Loaded::Invalid { name, errors }
        }
    }
}

/// `at.key`, or `key` at the top.
fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// Reports every field the schema does not know, with the nearest known name.
fn unknown_fields(value: &Value, schema: &JSONSchemaProps, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            let Some(known) = &schema.properties else {
                return;
            };
            for (key, value) in fields {
                let here = join(at, key);
                match known.get(key) {
                    Some(inner) => unknown_fields(value, inner, &here, out),
                    // Every object has these; the CRD schema leaves them out.
                    None if at.is_empty()
                        && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) => {}
                    None => out.push(format!(
                        "{here}: unknown field; {}",
                        suggestion(key, known.keys().map(String::as_str))
                    )),
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(inner)) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item, inner, &format!("{at}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// "did you mean minReplicas?" when a known name is close, or the names allowed here.
fn suggestion<'a>(key: &str, known: impl Iterator<Item = &'a str> + Clone) -> String {
    let close = known
        .clone()
        .map(|k| (edit_distance(&key.to_lowercase(), &k.to_lowercase()), k))
        .filter(|&(d, _)| d <= 2)
        .min();
    match close {
        Some((_, k)) => format!("did you mean {k}?"),
        None => format!(
            "the fields here are {}",
            known.collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The schema of the field at `path`, if the schema describes it.
fn schema_at<'a>(schema: &'a JSONSchemaProps, path: &Path) -> Option<&'a JSONSchemaProps> {
    path.iter().try_fold(schema, |s, segment| match segment {
        Segment::Map { key } => s.properties.as_ref()?.get(key),
        Segment::Seq { .. } => match s.items.as_ref()? {
            JSONSchemaPropsOrArray::Schema(inner) => Some(inner.as_ref()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        },
        Segment::Enum { .. } | Segment::Unknown => None,
    })
}

/// Turns serde's account of a value of the wrong shape into a message that says what to
/// write instead.
fn explain(path: &Path, error: &serde_json::Error, schema: Option<&JSONSchemaProps>) -> String {
    let at = path
        .iter()
        .fold(String::new(), |at, segment| match segment {
            Segment::Map { key } => join(&at, key),
            Segment::Seq { index } => format!("{at}[{index}]"),
            Segment::Enum { variant } => join(&at, variant),
            Segment::Unknown => join(&at, "?"),
        });
    let shown = if at.is_empty() { "document" } else { &at };
    let raw = error.to_string();
    if let Some(field) = between(&raw, "missing field `", "`") {
        return format!("{}: is required", join(&at, field));
    }
    let variant = raw
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.split_once("`, expected "));
    if let Some((got, expected)) = variant {
        let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return format!("{shown}: must be {}, got {got:?}", alternatives(&allowed));
    }
    let invalid = raw
        .strip_prefix("invalid type: ")
        .map(|rest| (rest, false))
        .or_else(|| raw.strip_prefix("invalid value: ").map(|rest| (rest, true)))
        .and_then(|(rest, out_of_range)| {
            rest.rsplit_once(", expected ")
                .map(|(got, expected)| (got, expected, out_of_range))
        });
    if let Some((got, expected, out_of_range)) = invalid {
        let number = between(got, "`", "`")
            .filter(|_| got.starts_with("integer") || got.starts_with("floating point"));
        let duration = schema
            .and_then(|s| schema_at(s, path))
            .is_some_and(|f| f.pattern.as_deref() == Some(DURATION_PATTERN));
        return match number {
            Some(n) if duration => format!(
                "{shown}: {n} has no unit; write a duration such as {n}s, 5m or 1h30m (units: ms, s, m, h)"
            ),
            Some(n) if out_of_range => format!("{shown}: {n} is out of range"),
            _ => format!(
                "{shown}: must be {}, got {}",
                describe_expected(expected),
                describe_got(got)
            ),
        };
    }
    if raw.contains("untagged enum Raw") {
        return format!(
            "{shown}: must be a number or a Kubernetes quantity such as 100, 0.5 or 250m"
        );
    }
    format!("{shown}: {raw}")
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

fn alternatives(options: &[&str]) -> String {
    match options {
        [] => "something else".to_owned(),
        [one] => (*one).to_owned(),
        [first, second] => format!("{first} or {second}"),
        many => format!("one of {}", many.join(", ")),
    }
}

fn describe_expected(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping of fields".to_owned(),
        other if other.starts_with("struct ") => "a mapping of fields".to_owned(),
        other => other.to_owned(),
    }
}

fn describe_got(got: &str) -> String {
    if let Some(value) = between(got, "`", "`") {
        return value.to_owned();
    }
    match got {
        "map" => "a mapping".to_owned(),
        "sequence" => "a list".to_owned(),
        "null" | "unit value" => "nothing".to_owned(),
        other => other.strip_prefix("string ").unwrap_or(other).to_owned(),
    }
}

#[cfg(test)]
mod fuzz_tests;
