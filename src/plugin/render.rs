//! `PolicyView` as text for a person: one screen per policy, aligned tables, ages counted from
//! `now`, and colour only when asked for (a terminal without NO_COLOR). Pure, no I/O.

use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{HeartbeatState, TargetType};
use crate::plugin::view::{DecisionView, MetricView, PodState, PodView, PolicyView};

/// ANSI colours, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paint {
    pub on: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Colour {
    Bold,
    Red,
    Yellow,
    Green,
    Cyan,
    Dim,
}

impl Paint {
    fn paint(self, colour: Option<Colour>, text: &str) -> String {
        let code = match colour {
            Some(c) if self.on => match c {
                Colour::Bold => "1",
                Colour::Red => "31",
                Colour::Yellow => "33",
                Colour::Green => "32",
                Colour::Cyan => "36",
                Colour::Dim => "2",
            },
            _ => return text.to_owned(),
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// Every view, separated by a blank line.
pub fn render_all(views: &[PolicyView], now: Timestamp, paint: Paint) -> String {
    views
        .iter()
        .map(|v| render(v, now, paint))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One policy's screen.
pub fn render(v: &PolicyView, now: Timestamp, paint: Paint) -> String {
    let mut out = String::new();
    let title = format!("ScalingPolicy {}/{}", v.namespace, v.name);
    let _ = writeln!(
        out,
        "{}  ->  {}  (min {}, max {})",
        paint.paint(Some(Colour::Bold), &title),
        v.target,
        v.min_replicas,
        v.max_replicas
    );
    let count = |n: Option<i32>| n.map_or("-".to_owned(), |n| n.to_string());
    let _ = write!(
        out,
        "Replicas:   current {}, desired {}",
        count(v.current_replicas),
        count(v.desired_replicas)
    );
    if let Some(s) = v.sessions {
        let _ = write!(out, "; {s} sessions");
    }
    if let Some(n) = v.held_back {
        let _ = write!(out, "; {n} held back (no new sessions)");
    }
    out.push('\n');

    out.push_str("Metrics:\n");
    let rows: Vec<Vec<Cell>> = v.metrics.iter().map(metric_row).collect();
    table(&mut out, "  ", None, &rows, paint);

    if v.conditions.is_empty() {
        let _ = writeln!(
            out,
            "Conditions: {}",
            paint.paint(Some(Colour::Green), "all healthy")
        );
    } else {
        out.push_str("Conditions (not healthy):\n");
        for c in &v.conditions {
            let head = format!("{}={}", c.type_, c.status);
            let _ = writeln!(
                out,
                "  {} {} ({} ago): {}",
                paint.paint(Some(Colour::Yellow), &head),
                c.reason,
                age(&c.since, now),
                c.message
            );
        }
    }

    if let Some(why) = &v.pods_unknown {
        let _ = writeln!(out, "Pods:       unknown: {why}");
    } else if v.pods.is_empty() {
        out.push_str("Pods:       none of the target's pods found\n");
    } else {
        out.push_str("Pods:\n");
        let rows: Vec<Vec<Cell>> = v
            .pods
            .iter()
            .map(|p| pod_row(p, v.heartbeat_timeout.as_deref(), now))
            .collect();
        table(
            &mut out,
            "  ",
            Some(&["NAME", "STATE", "SESSIONS", "HEARTBEAT", "AGE"]),
            &rows,
            paint,
        );
    }

    if v.decisions.is_empty() {
        out.push_str("Last decisions: none recorded\n");
    } else {
        out.push_str("Last decisions:\n");
        let rows: Vec<Vec<Cell>> = v.decisions.iter().map(|d| decision_row(d, now)).collect();
        table(
            &mut out,
            "  ",
            Some(&["AGE", "REASON", "MESSAGE"]),
            &rows,
            paint,
        );
    }
    out
}

/// A table cell: its text and the colour it is shown in.
#[derive(Clone, Debug)]
struct Cell {
    text: String,
    colour: Option<Colour>,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            colour: None,
        }
    }

    fn coloured(text: impl Into<String>, colour: Option<Colour>) -> Cell {
        Cell {
            text: text.into(),
            colour,
        }
    }
}

/// Rows aligned in columns; the last column is not padded. Widths count characters, and the
/// colour is put around the padded text so that escapes do not shift columns.
fn table(
    out: &mut String,
    indent: &str,
    header: Option<&[&str]>,
    rows: &[Vec<Cell>],
    paint: Paint,
) {
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain(header.map(<[&str]>::len))
        .max()
        .unwrap_or(0);
    let mut widths = vec![0; columns];
    let head: Option<Vec<Cell>> = header.map(|h| h.iter().map(|t| Cell::plain(*t)).collect());
    for row in head.iter().chain(rows) {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.text.chars().count());
        }
    }
    for row in head.iter().chain(rows) {
        let mut line = indent.to_owned();
        for (i, c) in row.iter().enumerate() {
            let last = i + 1 == row.len();
            let text = if last {
                c.text.clone()
            } else {
                format!("{:<w$}  ", c.text, w = widths[i])
            };
            line.push_str(&paint.paint(c.colour, &text));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn metric_row(m: &MetricView) -> Vec<Cell> {
    let per = match m.target_type {
        TargetType::AverageValue => " per replica",
        TargetType::Value => "",
    };
    let current = match (&m.value, &m.error) {
        (Some(v), _) => Cell::plain(v.clone()),
        (None, Some(_)) => Cell::coloured("unavailable", Some(Colour::Red)),
        (None, None) => Cell::plain("-"),
    };
    let wants = match (m.desired_replicas, &m.error) {
        (Some(r), _) => format!("wants {r}"),
        (None, Some(e)) => e.clone(),
        (None, None) => String::new(),
    };
    vec![
        Cell::plain(m.name.clone()),
        current,
        Cell::plain(format!("/ {}{per}", m.target)),
        Cell::plain(wants),
    ]
}

fn pod_row(p: &PodView, timeout: Option<&str>, now: Timestamp) -> Vec<Cell> {
    let (state, colour) = match p.state {
        PodState::Draining => (
            match &p.draining_since {
                Some(since) => format!("draining {}", age(since, now)),
                None => "draining".to_owned(),
            },
            Some(Colour::Cyan),
        ),
        PodState::Removable => ("removable".to_owned(), Some(Colour::Green)),
        PodState::Lost => ("lost".to_owned(), Some(Colour::Red)),
        PodState::Silent => ("silent".to_owned(), Some(Colour::Yellow)),
        PodState::HeldBack => (p.state.as_str().to_owned(), Some(Colour::Cyan)),
        PodState::Terminating | PodState::NotReady => {
            (p.state.as_str().to_owned(), Some(Colour::Dim))
        }
        PodState::Serving => (p.state.as_str().to_owned(), None),
    };
    let sessions = match (p.sessions, p.heartbeat) {
        (Some(n), _) => n.to_string(),
        (None, Some(_)) => "?".to_owned(),
        (None, None) => "-".to_owned(),
    };
    let heartbeat = match (p.heartbeat, &p.last_heartbeat) {
        (Some(HeartbeatState::Reporting), _) => format!("<{}", timeout.unwrap_or("timeout")),
        (Some(HeartbeatState::Awaited), _) => "awaited".to_owned(),
        (Some(HeartbeatState::Silent | HeartbeatState::Lost), Some(t)) => {
            format!("{} ago", age(t, now))
        }
        (Some(HeartbeatState::Silent | HeartbeatState::Lost), None) => "never".to_owned(),
        (None, _) => "-".to_owned(),
    };
    vec![
        Cell::plain(p.name.clone()),
        Cell::coloured(state, colour),
        Cell::plain(sessions),
        Cell::plain(heartbeat),
        Cell::plain(p.created.as_ref().map_or("-".to_owned(), |t| age(t, now))),
    ]
}

fn decision_row(d: &DecisionView, now: Timestamp) -> Vec<Cell> {
    let when = d.time.as_ref().map_or("-".to_owned(), |t| age(t, now));
    let reason = if d.type_ == "Warning" {
        Cell::coloured(d.reason.clone(), Some(Colour::Yellow))
    } else {
        Cell::plain(d.reason.clone())
    };
    let message = if d.count > 1 {
        format!("{} (x{})", d.message, d.count)
    } else {
        d.message.clone()
    };
    vec![Cell::plain(when), reason, Cell::plain(message)]
}

/// Time since `t` as kubectl prints ages: `45s`, `3m10s`, `2h5m`, `3d4h`.
pub fn age(t: &Time, now: Timestamp) -> String {
    let secs = now.duration_since(t.0).as_secs().max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}
