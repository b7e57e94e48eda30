//! A trace from the user's own Prometheus history: the policy's queries (and an arrivals
//! query) read with `query_range` over a range split into pages the server accepts, put on one
//! time grid, and written back as the CSV `simulate --trace` reads. `fetch` needs a client;
//! the rest is pure.

use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::engine::Time;
use crate::observe::prometheus::decode;
use crate::observe::prometheus::{Prometheus, QueryError};
use crate::policy::{Policy, Source, fmt_duration};
use crate::simulate::ARRIVALS_COLUMN;
use crate::simulate::trace::Trace;

/// The most points Prometheus returns per series for one range query.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The time range to read: `start` and `end` are multiples of `step` (both included), in
/// milliseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

impl Range {
    /// The `since` before `until`, on a grid of `step`: the ends are rounded down to a
    /// multiple of the step, so that two runs over the same hours read the same points.
    pub fn ending(until_ms: i64, since: Duration, step: Duration) -> Result<Range, FetchError> {
        let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
        let since_ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        if step_ms < 1_000 {
            return Err(FetchError::CheckOptions {
                flag: "step",
                message: format!(
                    "must be at least 1s, got {}; Prometheus scrapes every few seconds at best",
                    fmt_duration(step)
                ),
            });
        }
        if since_ms < step_ms {
            return Err(FetchError::CheckOptions {
                flag: "since",
                message: format!(
                    "must be at least one --step ({}), got {}",
                    fmt_duration(step),
                    fmt_duration(since)
                ),
            });
        }
        let end_ms = until_ms.div_euclid(step_ms) * step_ms;
        Ok(Range {
            start_ms: end_ms.saturating_sub(since_ms).div_euclid(step_ms) * step_ms,
            end_ms,
            step_ms,
        })
    }

    /// Points per series over the whole range.
    pub fn points(&self) -> i64 {
        (self.end_ms - self.start_ms) / self.step_ms + 1
    }

    /// The range in pages of at most `MAX_POINTS_PER_SERIES` points each, in order, each
    /// starting one step after the last one ended: no point is read twice or missed.
    pub fn pages(&self) -> Vec<Range> {
        let span = (MAX_POINTS_PER_SERIES - 1) * self.step_ms;
        let mut pages = Vec::new();
        let mut start = self.start_ms;
        while start <= self.end_ms {
            let end = (start + span).min(self.end_ms);
            pages.push(Range {
                start_ms: start,
                end_ms: end,
                step_ms: self.step_ms,
            });
            start = end + self.step_ms;
        }
        pages
    }
}

/// One series to read: a trace column and the query that fills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub query: String,
}

/// The columns a policy's trace needs: one per Prometheus metric, by the metric's name, and
/// `arrivals` when an arrivals query is given.
pub fn columns(policy: &Policy, arrivals_query: Option<&str>) -> Vec<Column> {
    let mut out: Vec<Column> = policy
        .metrics
        .iter()
        .filter_map(|m| match &m.source {
            Source::Prometheus { query } => Some(Column {
                name: m.name.clone(),
                query: query.clone(),
            }),
            Source::Sessions => None,
        })
        .collect();
    if let Some(q) = arrivals_query {
        out.push(Column {
            name: ARRIVALS_COLUMN.to_owned(),
            query: q.to_owned(),
        });
    }
    out
}

/// How far the fetch has come, after each page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    pub column: &'a str,
    /// Pages read so far over all columns, and in all.
    pub done: usize,
    pub total: usize,
}

/// What went wrong, by step.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("--{flag}: {message}")]
    CheckOptions { flag: &'static str, message: String },
    #[error(
        "cannot reach Prometheus at {address}: {reason}; check --prometheus (the server's base URL, such as http://prometheus.monitoring:9090)"
    )]
    Unreachable { address: String, reason: String },
    #[error("column {column} ({query}) from {from} to {to}: {reason}")]
    Query {
        column: String,
        query: String,
        from: String,
        to: String,
        reason: String,
    },
    #[error(
        "column {column} ({query}) has no samples from {from} to {to}: is the metric scraped over that time? Try the query in Prometheus, or move the range with --since and --until"
    )]
    Empty {
        column: String,
        query: String,
        from: String,
        to: String,
    },
    #[error(
        "the policy has no Prometheus metric and no --arrivals-query was given: there is nothing to read from Prometheus"
    )]
    NothingToRead,
    #[error(
        "reading {column} from {address} took longer than {timeout}; raise --query-timeout or lower --since"
    )]
    Timeout {
        column: String,
        address: String,
        timeout: String,
    },
}

impl FetchError {
    /// A stable name for the step that failed.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::CheckOptions { .. } => "check_options",
            FetchError::Unreachable { .. } => "unreachable",
            FetchError::Query { .. } => "query",
            FetchError::Empty { .. } => "empty",
            FetchError::NothingToRead => "nothing_to_read",
            FetchError::Timeout { .. } => "timeout",
        }
    }
}

/// A fetched trace and what the user should know about it.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub trace: Trace,
    pub notes: Vec<String>,
}

/// Reads every column over `range`, page by page, and puts them on one grid. `progress` is
/// called after each page.
pub async fn fetch(
    prometheus: &Prometheus,
    columns: &[Column],
    range: Range,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<Fetched, FetchError> {
    if columns.is_empty() {
        return Err(FetchError::NothingToRead);
    }
    let pages = range.pages();
    let total = pages.len() * columns.len();
    let mut done = 0;
    let mut read = Vec::with_capacity(columns.len());
    // A page may take the server's whole budget; a little more lets its own error arrive.
    let deadline = prometheus.timeout() + Duration::from_secs(5);
    for column in columns {
        let mut samples = Vec::new();
        for page in &pages {
            let query = prometheus.range(
                &column.query,
                Time(page.start_ms),
                Time(page.end_ms),
                Duration::from_millis(page.step_ms.unsigned_abs()),
            );
            let answer =
                tokio::time::timeout(deadline, query)
                    .await
                    .map_err(|_| FetchError::Timeout {
                        column: column.name.clone(),
                        address: prometheus.address().to_owned(),
                        timeout: fmt_duration(prometheus.timeout()),
                    })?;
            let failed = |reason: String| FetchError::Query {
                column: column.name.clone(),
                query: column.query.clone(),
                from: rfc3339(page.start_ms),
                to: rfc3339(page.end_ms),
                reason,
            };
            let data = answer.map_err(|e| match e {
                QueryError::Unreachable { address, reason } => {
                    FetchError::Unreachable { address, reason }
                }
                QueryError::Answer(reason) => failed(reason),
            })?;
            samples.extend(decode::range(&data).map_err(failed)?);
            done += 1;
            progress(&Progress {
                column: &column.name,
                done,
                total,
            });
        }
        read.push(samples);
    }
    let file = format!(
        "{} (line numbers as --save-trace writes it)",
        prometheus.address()
    );
    assemble(&file, columns, &read, range)
}

/// Puts each column's samples on the range's grid. A point with no sample holds the column's
/// last value (a trace row holds until the next); the trace starts at the first point where
/// every column has a value.
pub fn assemble(
    file: &str,
    columns: &[Column],
    samples: &[Vec<(i64, f64)>],
    range: Range,
) -> Result<Fetched, FetchError> {
    let slot = |t: i64| -> Option<usize> {
        let offset = t - range.start_ms;
        (offset >= 0 && offset % range.step_ms == 0 && t <= range.end_ms)
            .then(|| usize::try_from(offset / range.step_ms).unwrap_or(usize::MAX))
    };
    let points = usize::try_from(range.points()).unwrap_or(0);
    let mut grid: Vec<Vec<Option<f64>>> = Vec::with_capacity(columns.len());
    for (column, series) in columns.iter().zip(samples) {
        let mut cells = vec![None; points];
        for &(t, v) in series {
            if let Some(cell) = slot(t).and_then(|i| cells.get_mut(i)) {
                *cell = Some(v);
            }
        }
        if cells.iter().all(Option::is_none) {
            return Err(FetchError::Empty {
                column: column.name.clone(),
                query: column.query.clone(),
                from: rfc3339(range.start_ms),
                to: rfc3339(range.end_ms),
            });
        }
        grid.push(cells);
    }
    let first = grid
        .iter()
        .filter_map(|cells| cells.iter().position(Option::is_some))
        .max()
        .unwrap_or(0);
    let mut notes = Vec::new();
    if first > 0 {
        notes.push(format!(
            "the trace starts at {}, where every column first has a sample ({} earlier points left out)",
            rfc3339(range.start_ms + first as i64 * range.step_ms),
            first
        ));
    }
    let mut values = Vec::with_capacity(columns.len());
    for (column, cells) in columns.iter().zip(&grid) {
        let mut held = 0;
        let mut last = None;
        let mut series = Vec::with_capacity(points - first);
        for cell in &cells[first..] {
            match cell {
                Some(v) => last = Some(*v),
                None => held += 1,
            }
            series.push(last.unwrap_or(0.0));
        }
        if held > 0 {
            notes.push(format!(
                "column {} had no sample at {held} of {} points: each holds the value before it",
                column.name,
                points - first
            ));
        }
        values.push(series);
    }
    let origin = range.start_ms + first as i64 * range.step_ms;
    let times = (0..points - first)
        .map(|i| i as i64 * range.step_ms)
        .collect();
    let names = columns.iter().map(|c| c.name.clone()).collect();
    Ok(Fetched {
        trace: Trace::from_columns(file, names, times, values, Some(origin)),
        notes,
    })
}

/// The trace as the CSV `simulate --trace` reads: `time` (RFC 3339 when the trace has a start
/// on the clock, else seconds), then each column.
pub fn to_csv(trace: &Trace) -> String {
    let mut out = String::from("time");
    for c in &trace.columns {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    for (row, &t) in trace.times.iter().enumerate() {
        match trace.origin_ms {
            Some(origin) => out.push_str(&rfc3339(origin + t)),
            None => {
                let _ = write!(out, "{}", t as f64 / 1000.0);
            }
        }
        for c in 0..trace.columns.len() {
            // `{}` writes the shortest text that reads back as the same number.
            let _ = write!(out, ",{}", trace.value(c, row));
        }
        out.push('\n');
    }
    out
}

/// Milliseconds since the epoch as RFC 3339 in UTC.
pub fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms}ms"), |t| t.to_string())
}

#[cfg(test)]
mod tests;
