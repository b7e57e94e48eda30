//! Traffic traces: a CSV whose first column is the time and whose other columns are named
//! series, parsed with errors that name the file, line and column. Pure: the caller reads
//! the file.

use std::fmt;

/// A parsed trace. Times are milliseconds from the start; a row's values hold until the next
/// row.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The file name, for messages.
    pub file: String,
    /// Series names, in header order, without the time column.
    pub columns: Vec<String>,
    /// Row times, non-decreasing, milliseconds from the start.
    pub times: Vec<i64>,
    /// `values[column][row]`.
    values: Vec<Vec<f64>>,
    /// Milliseconds since the epoch of time 0, when the trace's times are on the clock.
    pub origin_ms: Option<i64>,
    /// The 1-based line of the header and of each row.
    header_line: usize,
    lines: Vec<usize>,
}

/// Where in the file something went wrong, and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct TraceError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based; absent when the problem is the whole line.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(c) => write!(f, "{}:{}:{}: {}", self.file, self.line, c, self.message),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.message),
        }
    }
}

/// How the time column is written; every row must use the form of the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeForm {
    Seconds,
    /// Milliseconds since the Unix epoch of the first row.
    Timestamp {
        first: i64,
    },
}

impl Trace {
    /// Parses CSV text. Fields are separated by commas; surrounding spaces and double quotes
    /// are ignored; blank lines are skipped.
    pub fn parse(file: &str, text: &str) -> Result<Trace, TraceError> {
        let err = |line: usize, column: Option<usize>, message: String| TraceError {
            file: file.to_owned(),
            line,
            column,
            message,
        };
        let mut rows = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((header_line, header)) = rows.next() else {
            return Err(err(
                1,
                None,
                "the trace is empty; the first line must be a header such as time,rps".to_owned(),
            ));
        };
        let names: Vec<String> = fields(header).map(str::to_owned).collect();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(err(
                    header_line,
                    Some(i + 1),
                    format!("column {} of the header has no name", i + 1),
                ));
            }
            if names[..i].contains(name) {
                return Err(err(
                    header_line,
                    Some(i + 1),
                    format!("column {name:?} appears twice in the header"),
                ));
            }
        }
        if names.len() < 2 {
            return Err(err(
                header_line,
                None,
                "the header has only a time column; add a column for each series, such as time,rps"
                    .to_owned(),
            ));
        }
        let columns = names[1..].to_vec();
        let mut trace = Trace {
            file: file.to_owned(),
            columns,
            times: Vec::new(),
            values: vec![Vec::new(); names.len() - 1],
            origin_ms: None,
            header_line,
            lines: Vec::new(),
        };
        let mut form = None;
        for (line, text) in rows {
            let cells: Vec<&str> = fields(text).collect();
            if cells.len() != names.len() {
                return Err(err(
                    line,
                    Some(cells.len().min(names.len()) + 1),
                    format!(
                        "this row has {} fields but the header has {}",
                        cells.len(),
                        names.len()
                    ),
                ));
            }
            let at = parse_time(cells[0], &mut form).map_err(|m| err(line, Some(1), m))?;
            if let Some(&previous) = trace.times.last()
                && at < previous
            {
                return Err(err(
                    line,
                    Some(1),
                    format!(
                        "time {} is before the previous row's; rows must be in time order",
                        cells[0]
                    ),
                ));
            }
            for (c, cell) in cells[1..].iter().enumerate() {
                let value = cell.parse::<f64>().ok().filter(|v| v.is_finite());
                let Some(value) = value else {
                    return Err(err(
                        line,
                        Some(c + 2),
                        format!("{cell:?} in column {} is not a number", names[c + 1]),
                    ));
                };
                trace.values[c].push(value);
            }
            trace.times.push(at);
            trace.lines.push(line);
        }
        if let Some(TimeForm::Timestamp { first }) = form {
            trace.origin_ms = Some(first);
        }
        if trace.times.is_empty() {
            return Err(err(
                header_line + 1,
                None,
                "the trace has a header but no rows".to_owned(),
            ));
        }
        Ok(trace)
    }

    /// A trace built in memory: `values[column][row]`, one value per time in each column.
    /// Rows are numbered as the CSV `history::to_csv` writes would number them (header on
    /// line 1), so that a message about a cell points into the saved file.
    pub fn from_columns(
        file: &str,
        columns: Vec<String>,
        times: Vec<i64>,
        values: Vec<Vec<f64>>,
        origin_ms: Option<i64>,
    ) -> Trace {
        debug_assert!(values.iter().all(|v| v.len() == times.len()));
        let lines = (0..times.len()).map(|row| row + 2).collect();
        Trace {
            file: file.to_owned(),
            columns,
            times,
            values,
            origin_ms,
            header_line: 1,
            lines,
        }
    }

    /// The index of a series by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// A series' value in a row.
    pub fn value(&self, column: usize, row: usize) -> f64 {
        self.values[column][row]
    }

    /// A whole series.
    pub fn series(&self, column: usize) -> &[f64] {
        &self.values[column]
    }

    /// The last row's time: the end of the simulation.
    pub fn end(&self) -> i64 {
        self.times.last().copied().unwrap_or(0)
    }

    /// An error about one cell: its file, line and column.
    pub fn cell_error(&self, column: usize, row: usize, message: String) -> TraceError {
        TraceError {
            file: self.file.clone(),
            line: self.lines[row],
            column: Some(column + 2),
            message,
        }
    }

    /// An error about the header.
    pub fn header_error(&self, message: String) -> TraceError {
        TraceError {
            file: self.file.clone(),
            line: self.header_line,
            column: None,
            message,
        }
    }
}

fn fields(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|f| f.trim().trim_matches('"').trim())
}

fn parse_time(raw: &str, form: &mut Option<TimeForm>) -> Result<i64, String> {
    let bad = || {
        format!(
            "{raw:?} is not a time; write seconds from the start, YYYY-MM-DD HH:MM:SS or RFC 3339"
        )
    };
    let seconds = raw.parse::<f64>().ok().filter(|v| v.is_finite());
    let stamp = || parse_timestamp(raw);
    match (*form, seconds) {
        (None | Some(TimeForm::Seconds), Some(s)) => {
            *form = Some(TimeForm::Seconds);
            if s < 0.0 {
                return Err(format!(
                    "time {raw} is negative; write seconds from the start"
                ));
            }
            Ok((s * 1000.0).round() as i64)
        }
        (None, None) => {
            let first = stamp().ok_or_else(bad)?;
            *form = Some(TimeForm::Timestamp { first });
            Ok(0)
        }
        (Some(TimeForm::Timestamp { first }), None) => Ok(stamp().ok_or_else(bad)? - first),
        (Some(TimeForm::Timestamp { .. }), Some(_)) => Err(format!(
            "{raw:?} is seconds but the first row's time is a timestamp; use one form throughout"
        )),
        (Some(TimeForm::Seconds), None) => Err(match stamp() {
            Some(_) => format!(
                "{raw:?} is a timestamp but the first row's time is seconds; use one form throughout"
            ),
            None => bad(),
        }),
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` (taken as UTC) or RFC 3339 (`2015-02-26T21:42:53Z`,
/// `...+01:00`, with optional fractional seconds) into milliseconds since the Unix epoch.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    let b = raw.as_bytes();
    if b.len() < 19 || !matches!(b[10], b' ' | b'T' | b't') {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = raw.get(from..from + len)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let sep = |at: usize, ch: u8| b.get(at) == Some(&ch);
    if !(sep(4, b'-') && sep(7, b'-') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &raw[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "" | "Z" | "z" => 0,
        zone if zone.len() == 6 && matches!(zone.as_bytes()[0], b'+' | b'-') => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let z = zone.as_bytes();
            if z[3] != b':' {
                return None;
            }
            let hh = num(raw.len() - 5, 2)?;
            let mm = num(raw.len() - 2, 2)?;
            if hh > 23 || mm > 59 {
                return None;
            }
            sign * (hh * 60 + mm)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::{Trace, parse_timestamp};

    #[test]
    fn timestamps_parse_as_utc_and_rfc3339_offsets_are_applied() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-02 00:00:01"), Some(86_401_000));
        assert_eq!(
            parse_timestamp("2015-02-26T21:42:53Z"),
            parse_timestamp("2015-02-26 21:42:53")
        );
        assert_eq!(
            parse_timestamp("2015-02-26T22:42:53.250+01:00"),
            parse_timestamp("2015-02-26 21:42:53").map(|t| t + 250)
        );
        assert_eq!(
            parse_timestamp("2016-02-29 00:00:00"),
            Some(1_456_704_000_000)
        );
        assert_eq!(parse_timestamp("2015-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp("2015-02-26"), None);
        assert_eq!(parse_timestamp("2015-02-26 21:42:53+0100"), None);
    }

    #[test]
    fn timestamps_become_seconds_from_the_first_row() {
        let trace = Trace::parse(
            "t.csv",
            "timestamp,value\n2014-07-01 00:00:00,5\n2014-07-01 00:30:00,7\n",
        )
        .expect("parses");
        assert_eq!(trace.times, vec![0, 1_800_000]);
        assert_eq!(trace.series(0), &[5.0, 7.0]);
    }

    #[test]
    fn numeric_times_are_seconds_and_may_be_fractional() {
        let trace = Trace::parse("t.csv", "time,rps\r\n0,1\r\n\r\n1.5,2\r\n").expect("parses");
        assert_eq!(trace.times, vec![0, 1500]);
        assert_eq!(trace.columns, vec!["rps".to_owned()]);
    }

    #[test]
    fn a_cell_that_is_not_a_number_names_its_line_and_column() {
        let err = Trace::parse("t.csv", "time,rps,arrivals\n0,1,2\n15,x,2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:3:2: \"x\" in column rps is not a number"
        );
    }

    #[test]
    fn time_that_goes_backwards_is_an_error() {
        let err = Trace::parse("t.csv", "time,rps\n0,1\n30,1\n15,1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:4:1: time 15 is before the previous row's; rows must be in time order"
        );
    }

    #[test]
    fn mixed_time_forms_are_an_error() {
        let err = Trace::parse("t.csv", "time,rps\n2014-07-01 00:00:00,1\n30,1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:3:1: \"30\" is seconds but the first row's time is a timestamp; use one form throughout"
        );
    }
}
