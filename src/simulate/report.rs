//! The results of a simulation as scripts and people read them: JSON with stable field names,
//! and a table. Pure, no I/O.

use std::io::Write;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::simulate::runs::{Outcome, Outcomes, Point};

/// A duration (or replica-duration) kept in milliseconds and written in seconds: a whole
/// number when it is one, so that output is exact and stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub i64);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            serializer.serialize_i64(self.0 / 1000)
        } else {
            serializer.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

impl Seconds {
    fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// `{"runs": {"drainscaler": R, "hpa": R, "oracle": R}}`. These names are an interface.
/// Borrows the outcomes, so that a long timeline is not copied to be written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report<'a> {
    pub runs: Runs<'a>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Runs<'a> {
    pub drainscaler: RunReport<'a>,
    pub hpa: RunReport<'a>,
    pub oracle: RunReport<'a>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport<'a> {
    pub replica_seconds: Seconds,
    pub peak_replicas: u32,
    pub scale_events: u64,
    pub sessions_started: u64,
    pub sessions_rejected: u64,
    pub sessions_dropped: u64,
    pub drain_p95_seconds: Seconds,
    pub timeline: Timeline<'a>,
}

/// A run's points, written as timeline entries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeline<'a>(pub &'a [Point]);

impl Serialize for Timeline<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            seq.serialize_element(&TimelineEntry::from(p))?;
        }
        seq.end()
    }
}

/// The state right after one decision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TimelineEntry {
    pub t: Seconds,
    pub replicas: u32,
    pub desired: u32,
    pub draining: u32,
    pub sessions: u64,
}

impl<'a> Report<'a> {
    pub fn new(outcomes: &'a Outcomes) -> Report<'a> {
        Report {
            runs: Runs {
                drainscaler: RunReport::new(&outcomes.drainscaler),
                hpa: RunReport::new(&outcomes.hpa),
                oracle: RunReport::new(&outcomes.oracle),
            },
        }
    }

    /// The runs with their names, in report order.
    pub fn named(&self) -> [(&'static str, &RunReport<'a>); 3] {
        [
            ("drainscaler", &self.runs.drainscaler),
            ("hpa", &self.runs.hpa),
            ("oracle", &self.runs.oracle),
        ]
    }

    /// Writes one compact JSON object and a newline.
    pub fn write_json<W: Write>(&self, mut out: W) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut out, self)?;
        out.write_all(b"\n").map_err(serde_json::Error::io)
    }

    /// One row per run.
    pub fn table(&self) -> String {
        let oracle = self.runs.oracle.replica_seconds;
        let header = [
            "run",
            "replica-seconds",
            "vs oracle",
            "peak",
            "scale events",
            "sessions",
            "rejected",
            "dropped",
            "p95 drain",
        ];
        let mut rows = vec![header.map(str::to_owned).to_vec()];
        for (name, r) in self.named() {
            let ratio = if oracle.0 > 0 {
                format!("{:.3}x", r.replica_seconds.as_f64() / oracle.as_f64())
            } else {
                "-".to_owned()
            };
            rows.push(vec![
                name.to_owned(),
                fmt_seconds(r.replica_seconds),
                ratio,
                r.peak_replicas.to_string(),
                r.scale_events.to_string(),
                r.sessions_started.to_string(),
                r.sessions_rejected.to_string(),
                r.sessions_dropped.to_string(),
                format!("{}s", fmt_seconds(r.drain_p95_seconds)),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, &w))| {
                    if c == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

impl<'a> RunReport<'a> {
    fn new(o: &'a Outcome) -> RunReport<'a> {
        RunReport {
            replica_seconds: Seconds(o.replica_ms),
            peak_replicas: o.peak_replicas,
            scale_events: o.scale_events,
            sessions_started: o.tally.started,
            sessions_rejected: o.tally.rejected,
            sessions_dropped: o.tally.dropped,
            drain_p95_seconds: Seconds(p95(&o.drains_ms)),
            timeline: Timeline(&o.timeline),
        }
    }
}

impl From<&Point> for TimelineEntry {
    fn from(p: &Point) -> TimelineEntry {
        TimelineEntry {
            t: Seconds(p.t_ms),
            replicas: p.replicas,
            desired: p.desired,
            draining: p.draining,
            sessions: p.sessions,
        }
    }
}

/// The 95th percentile by nearest rank; zero when there is nothing to rank.
fn p95(values: &[i64]) -> i64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * 95).div_ceil(100);
    sorted[rank.max(1) - 1]
}

fn fmt_seconds(s: Seconds) -> String {
    if s.0 % 1000 == 0 {
        (s.0 / 1000).to_string()
    } else {
        format!("{:.3}", s.as_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::{Seconds, p95};

    #[test]
    fn whole_seconds_are_written_as_integers_and_others_as_decimals() {
        assert_eq!(serde_json::to_string(&Seconds(15_000)).unwrap(), "15");
        assert_eq!(serde_json::to_string(&Seconds(1_500)).unwrap(), "1.5");
    }

    #[test]
    fn p95_takes_the_nearest_rank() {
        assert_eq!(p95(&[]), 0);
        assert_eq!(p95(&[7]), 7);
        let hundred: Vec<i64> = (1..=100).collect();
        assert_eq!(p95(&hundred), 95);
        let twenty: Vec<i64> = (1..=20).rev().collect();
        assert_eq!(p95(&twenty), 19);
    }
}
