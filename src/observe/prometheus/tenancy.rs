//! Tenancy on a shared Prometheus: every series selector of a policy's query gets a matcher
//! `LABEL="<the policy's namespace>"`, on the parsed query, never by string edits (the
//! semantics of prom-label-proxy with its error-on-replace option: a query that already selects
//! the label with anything but that same matcher is refused, not silently rewritten). Pure, no
//! I/O.

use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{self, Expr, VectorSelector};

/// The longest query accepted for rewriting, and the deepest nesting: a parser and a printer
/// must not be driven into unbounded work or recursion by a hostile policy.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
const MAX_DEPTH: usize = 128;

/// `query` with `label="value"` enforced on each of its selectors, or why it cannot be.
pub fn enforce(query: &str, label: &str, value: &str) -> Result<String, String> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is longer than {MAX_QUERY_BYTES} bytes; shorten it"
        ));
    }
    let mut expr = parser::parse(query).map_err(|e| format!("the query does not parse: {e}"))?;
    let wanted = Matcher::new(MatchOp::Equal, label, value);
    walk(&mut expr, 0, &mut |vs| enforce_selector(vs, &wanted))?;
    let rewritten = expr.to_string();
    // The printed query is what Prometheus runs: check that it still carries the matcher on
    // every selector, so that a printer that drops one cannot widen what the policy reads.
    let mut reparsed = parser::parse(&rewritten)
        .map_err(|e| format!("the rewritten query {rewritten:?} does not parse: {e}"))?;
    walk(&mut reparsed, 0, &mut |vs| {
        if carries(&vs.matchers, &wanted) {
            Ok(())
        } else {
            Err(format!(
                "the rewritten query {rewritten:?} lost the matcher {wanted} on {vs}"
            ))
        }
    })?;
    Ok(rewritten)
}

/// Calls `on` with every vector selector in `expr`, including those of range selectors and
/// subqueries.
fn walk(
    expr: &mut Expr,
    depth: usize,
    on: &mut dyn FnMut(&mut VectorSelector) -> Result<(), String>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "the query nests deeper than {MAX_DEPTH} levels; simplify it"
        ));
    }
    let next = depth + 1;
    match expr {
        Expr::VectorSelector(vs) => on(vs),
        Expr::MatrixSelector(ms) => on(&mut ms.vs),
        Expr::Aggregate(a) => {
            if let Some(param) = a.param.as_mut() {
                walk(param, next, on)?;
            }
            walk(&mut a.expr, next, on)
        }
        Expr::Unary(u) => walk(&mut u.expr, next, on),
        Expr::Binary(b) => {
            walk(&mut b.lhs, next, on)?;
            walk(&mut b.rhs, next, on)
        }
        Expr::Paren(p) => walk(&mut p.expr, next, on),
        Expr::Subquery(s) => walk(&mut s.expr, next, on),
        Expr::Call(c) => c
            .args
            .args
            .iter_mut()
            .try_for_each(|arg| walk(arg, next, on)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Extension(_) => Err("the query uses an extension that cannot be checked".to_owned()),
    }
}

/// Adds `wanted` to a selector (to each alternative of an `or` selector); refuses one that
/// already matches the label in another way.
fn enforce_selector(vs: &mut VectorSelector, wanted: &Matcher) -> Result<(), String> {
    let selector = vs.to_string();
    let check = |set: &[Matcher]| -> Result<bool, String> {
        let mut present = false;
        for m in set.iter().filter(|m| m.name == wanted.name) {
            if m.op == wanted.op && m.value == wanted.value {
                present = true;
            } else {
                return Err(format!(
                    "{selector} selects {m}, but this controller lets a policy read only its own \
                     namespace ({wanted}): remove that matcher"
                ));
            }
        }
        Ok(present)
    };
    let m = &mut vs.matchers;
    if m.or_matchers.is_empty() {
        if !check(&m.matchers)? {
            m.matchers.push(wanted.clone());
        }
    } else {
        // The printer shows only the alternatives of an `or` selector: each one gets the matcher.
        if !m.matchers.is_empty() {
            return Err(format!(
                "{selector} mixes plain and `or` matchers; write it as alternatives only"
            ));
        }
        for set in &mut m.or_matchers {
            if !check(set)? {
                set.push(wanted.clone());
            }
        }
    }
    Ok(())
}

/// Whether every way `matchers` can select a series requires `wanted`.
fn carries(matchers: &Matchers, wanted: &Matcher) -> bool {
    let has = |set: &[Matcher]| set.iter().any(|m| m == wanted);
    if matchers.or_matchers.is_empty() {
        has(&matchers.matchers)
    } else {
        matchers.or_matchers.iter().all(|set| has(set))
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_QUERY_BYTES, enforce};

    fn ns(query: &str) -> Result<String, String> {
        enforce(query, "namespace", "team-a")
    }

    /// The rewritten query, parsed and printed, so that tests compare meaning, not spacing.
    fn same(a: &str, b: &str) {
        let norm = |q: &str| {
            promql_parser::parser::parse(q)
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .to_string()
        };
        assert_eq!(norm(a), norm(b));
    }

    #[test]
    fn every_selector_gets_the_namespace_matcher() {
        let got = ns(r#"sum(rate(http_requests_total{app="chat"}[1m])) / sum(up)"#).expect("ok");
        same(
            &got,
            r#"sum(rate(http_requests_total{app="chat",namespace="team-a"}[1m])) / sum(up{namespace="team-a"})"#,
        );
    }

    #[test]
    fn selectors_inside_functions_subqueries_and_aggregation_parameters_are_reached() {
        let got = ns(
            r#"max_over_time(sum by (pod) (sessions)[5m:30s]) + on(pod) group_left topk(scalar(count(kube_pod_info)), x) or label_replace(y, "a", "$1", "b", "(.*)")"#,
        )
        .expect("ok");
        for selector in ["sessions", "kube_pod_info", "x", "y"] {
            assert!(
                got.contains(&format!(r#"{selector}{{namespace="team-a"}}"#)),
                "{selector} not restricted in {got}"
            );
        }
    }

    #[test]
    fn a_query_that_names_another_namespace_is_refused_not_rewritten() {
        for query in [
            r#"sum(sessions{namespace="team-b"})"#,
            r#"sum(sessions{namespace=~"team-.*"})"#,
            r#"sum(sessions{namespace!="team-a"})"#,
        ] {
            let err = ns(query).expect_err(query);
            assert!(err.contains("only its own namespace"), "{query}: {err}");
        }
    }

    #[test]
    fn a_query_that_already_names_its_own_namespace_is_kept() {
        let got = ns(r#"sum(sessions{namespace="team-a"})"#).expect("ok");
        same(&got, r#"sum(sessions{namespace="team-a"})"#);
    }

    #[test]
    fn each_alternative_of_an_or_selector_is_restricted() {
        let got = ns(r#"sessions{app="a" or app="b"}"#).expect("ok");
        assert_eq!(got.matches(r#"namespace="team-a""#).count(), 2, "{got}");
        let err = ns(r#"sessions{app="a" or namespace="team-b"}"#).expect_err("refused");
        assert!(err.contains("only its own namespace"), "{err}");
    }

    #[test]
    fn a_query_without_selectors_reads_nothing_and_passes() {
        same(&ns("vector(1) + 2").expect("ok"), "vector(1) + 2");
    }

    #[test]
    fn label_values_with_quotes_survive_the_rewrite() {
        let got = ns(r#"sum(x{path="a\"b"})"#).expect("ok");
        same(&got, r#"sum(x{path="a\"b",namespace="team-a"})"#);
    }

    #[test]
    fn hostile_queries_are_refused_with_a_reason() {
        assert!(ns("sum(").expect_err("no parse").contains("does not parse"));
        let long = format!("x{}", " ".repeat(MAX_QUERY_BYTES));
        assert!(ns(&long).expect_err("too long").contains("longer than"));
        let deep = format!("{}x{}", "(".repeat(500), ")".repeat(500));
        let err = ns(&deep).expect_err("too deep");
        assert!(err.contains("deeper") || err.contains("parse"), "{err}");
    }
}
