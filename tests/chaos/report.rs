//! What a round found, and the table over many rounds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::chaos::faults::Kind;

/// One fault as injected, in seconds since the round started.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub kind: Kind,
    pub start: f64,
    pub end: f64,
    pub detail: String,
}

impl FaultRecord {
    pub fn describe(&self) -> String {
        format!(
            "{} (+{:.1}s..+{:.1}s{}{})",
            self.kind.name(),
            self.start,
            self.end,
            if self.detail.is_empty() { "" } else { ", " },
            self.detail
        )
    }
}

/// A broken invariant, with the fault it happened under.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The fault in force (or ended within a heartbeat timeout) when it happened.
    pub fault: Option<Kind>,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct RoundReport {
    pub seed: u64,
    /// The command that replays this round's schedule (up to timing).
    pub replay: String,
    pub faults: Vec<FaultRecord>,
    pub opened: u64,
    /// Sessions the traffic generator saw cut.
    pub cut_by_generator: u64,
    /// Sessions the node's kill records say were cut.
    pub cut_by_node: u64,
    /// Pods deleted while they held sessions.
    pub early_removals: u64,
    /// From the end of the last fault to the steady state; `None` when it was not reached.
    pub recovery: Option<Duration>,
    pub violations: Vec<Violation>,
}

impl RoundReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The fault that was in force at `t`, or had ended less than `after` seconds before.
    pub fn fault_at(&self, t: f64, after: f64) -> Option<&FaultRecord> {
        self.faults
            .iter()
            .rev()
            .find(|f| f.start <= t && t <= f.end + after)
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos round seed={} ({}; replay: {})",
            self.seed,
            if self.passed() { "passed" } else { "FAILED" },
            self.replay
        );
        for f in &self.faults {
            let _ = writeln!(s, "  fault {}", f.describe());
        }
        let _ = writeln!(
            s,
            "  sessions opened {}, cut by the generator's count {}, by the node's record {}; early removals {}; recovery {}",
            self.opened,
            self.cut_by_generator,
            self.cut_by_node,
            self.early_removals,
            self.recovery.map_or("NOT REACHED".to_owned(), |d| format!(
                "{:.1}s",
                d.as_secs_f64()
            ))
        );
        for v in &self.violations {
            let _ = writeln!(
                s,
                "  VIOLATION [{}] {}",
                v.fault.map_or("no fault", Kind::name),
                v.message
            );
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "seed": self.seed,
            "replay": self.replay,
            "passed": self.passed(),
            "faults": self.faults.iter().map(|f| json!({
                "kind": f.kind.name(), "start": f.start, "end": f.end, "detail": f.detail,
            })).collect::<Vec<_>>(),
            "opened": self.opened,
            "cutByGenerator": self.cut_by_generator,
            "cutByNode": self.cut_by_node,
            "earlyRemovals": self.early_removals,
            "recoverySeconds": self.recovery.map(|d| d.as_secs_f64()),
            "violations": self.violations.iter().map(|v| json!({
                "fault": v.fault.map(Kind::name), "message": v.message,
            })).collect::<Vec<_>>(),
        })
    }
}

impl RoundReport {
    /// Reads back what [`RoundReport::json`] wrote (one line of `DRAINSCALER_CHAOS_OUT`), so
    /// that rounds run apart (two planes, several runs) make one table.
    pub fn from_json(v: &Value) -> Result<RoundReport, String> {
        let uint = |key: &str| {
            v[key]
                .as_u64()
                .ok_or_else(|| format!("{key:?} is not a count in {v}"))
        };
        let kind = |name: &Value| -> Result<Kind, String> {
            let name = name
                .as_str()
                .ok_or_else(|| format!("a fault kind: {name}"))?;
            Kind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| format!("unknown fault kind {name:?}"))
        };
        let list = |key: &str| {
            v[key]
                .as_array()
                .ok_or_else(|| format!("{key:?} is not a list in {v}"))
        };
        let faults = list("faults")?
            .iter()
            .map(|f| {
                Ok(FaultRecord {
                    kind: kind(&f["kind"])?,
                    start: f["start"].as_f64().ok_or("a fault's start")?,
                    end: f["end"].as_f64().ok_or("a fault's end")?,
                    detail: f["detail"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect::<Result<_, String>>()?;
        let violations = list("violations")?
            .iter()
            .map(|x| {
                Ok(Violation {
                    fault: match &x["fault"] {
                        Value::Null => None,
                        name => Some(kind(name)?),
                    },
                    message: x["message"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let report = RoundReport {
            seed: uint("seed")?,
            replay: v["replay"].as_str().unwrap_or_default().to_owned(),
            faults,
            opened: uint("opened")?,
            cut_by_generator: uint("cutByGenerator")?,
            cut_by_node: uint("cutByNode")?,
            early_removals: uint("earlyRemovals")?,
            recovery: v["recoverySeconds"].as_f64().map(Duration::from_secs_f64),
            violations,
        };
        if v["passed"].as_bool() != Some(report.passed()) {
            return Err(format!("\"passed\" disagrees with the violations in {v}"));
        }
        Ok(report)
    }
}

/// The table over rounds: faults injected by kind with the violations under each, then the
/// totals.
pub fn table(rounds: &[RoundReport]) -> String {
    let mut by_kind: BTreeMap<&'static str, (u64, u64, Vec<u64>)> = BTreeMap::new();
    for r in rounds {
        for f in &r.faults {
            by_kind.entry(f.kind.name()).or_default().0 += 1;
        }
        for v in &r.violations {
            let e = by_kind
                .entry(v.fault.map_or("(no fault)", Kind::name))
                .or_default();
            e.1 += 1;
            if !e.2.contains(&r.seed) {
                e.2.push(r.seed);
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:>8} {:>11}  failing seeds",
        "fault", "injected", "violations"
    );
    for (kind, (n, v, seeds)) in &by_kind {
        let seeds: Vec<String> = seeds.iter().take(8).map(u64::to_string).collect();
        let _ = writeln!(s, "{kind:<24} {n:>8} {v:>11}  {}", seeds.join(" "));
    }
    let sum = |f: fn(&RoundReport) -> u64| rounds.iter().map(f).sum::<u64>();
    let longest = rounds.iter().filter_map(|r| r.recovery).max();
    let unrecovered = rounds.iter().filter(|r| r.recovery.is_none()).count();
    let _ = writeln!(
        s,
        "\nrounds {} (failed {}), faults {}, sessions opened {}, cut (generator/node) {}/{}, early removals {}, longest recovery {}{}",
        rounds.len(),
        rounds.iter().filter(|r| !r.passed()).count(),
        sum(|r| r.faults.len() as u64),
        sum(|r| r.opened),
        sum(|r| r.cut_by_generator),
        sum(|r| r.cut_by_node),
        sum(|r| r.early_removals),
        longest.map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
        if unrecovered > 0 {
            format!(" ({unrecovered} rounds never recovered)")
        } else {
            String::new()
        }
    );
    s
}
