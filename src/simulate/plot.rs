//! The picture of a simulation: load on top, the three runs' replica counts in the middle,
//! draining instances and dropped sessions below. SVG or PNG by file extension, drawn with
//! plotters and an embedded font (no system fonts). Writes the file; everything else is pure.

use std::path::Path;

use plotters::chart::{ChartBuilder, SeriesLabelPosition};
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::PathElement;
use plotters::prelude::{BitMapBackend, DrawingBackend, SVGBackend};
use plotters::style::{
    BLACK, Color, FontStyle, IntoFont, RGBColor, ShapeStyle, TextStyle, WHITE, register_font,
};

use crate::policy::{Policy, Source};
use crate::simulate::runs::{Outcome, Point};
use crate::simulate::trace::Trace;
use crate::simulate::{ARRIVALS_COLUMN, SimulateError, Simulation};

const SIZE: (u32, u32) = (1400, 1050);
const FONT: &str = "sans-serif";
/// More points than this per series are reduced to their per-pixel minimum and maximum.
const MAX_POINTS: usize = 2400;

const DRAINSCALER: RGBColor = RGBColor(31, 119, 180);
const HPA: RGBColor = RGBColor(214, 39, 40);
const ORACLE: RGBColor = RGBColor(44, 160, 44);
const LOAD: [RGBColor; 4] = [
    RGBColor(70, 70, 70),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(188, 189, 34),
];
const SESSIONS: RGBColor = RGBColor(255, 127, 14);

/// The file formats `--plot` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// The format named by the file's extension.
    pub fn of(path: &Path) -> Result<Format, SimulateError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(SimulateError::CheckOptions {
                flag: "plot",
                message: format!(
                    "{} must end in .svg or .png to say which picture to write",
                    path.display()
                ),
            }),
        }
    }
}

/// One line on a panel.
#[derive(Clone, Debug)]
struct Series {
    label: String,
    color: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
}

/// One of the three stacked charts; `right` series use the right-hand axis.
#[derive(Clone, Debug)]
struct Panel {
    caption: String,
    left_label: String,
    left: Vec<Series>,
    right_label: String,
    right: Vec<Series>,
    /// The left axis counts whole things (replicas, instances): integer ticks only.
    counts: bool,
}

/// Everything drawn, in display units.
#[derive(Clone, Debug)]
struct Figure {
    title: String,
    x_label: String,
    x_max: f64,
    panels: [Panel; 3],
}

/// Draws the simulation to `path` (SVG or PNG by extension).
pub fn render(
    path: &Path,
    sim: &Simulation,
    policy: &Policy,
    trace: &Trace,
) -> Result<(), SimulateError> {
    let file = path.display().to_string();
    let fail = |message: String| SimulateError::Plot {
        file: file.clone(),
        message,
    };
    let format = Format::of(path)?;
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .and_then(|()| register_font(FONT, FontStyle::Bold, dejavu::sans::bold()))
        .map_err(|_| fail("the embedded font could not be loaded".to_owned()))?;
    let figure = Figure::new(sim, policy, trace);
    match format {
        Format::Svg => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            draw(&root, &figure).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
        Format::Png => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            draw(&root, &figure).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
    }
}

impl Figure {
    fn new(sim: &Simulation, policy: &Policy, trace: &Trace) -> Figure {
        let end = trace.end();
        let hours = end <= 3 * 86_400_000;
        let (unit_ms, x_label) = if hours {
            (3_600_000.0, "time since the start of the trace (hours)")
        } else {
            (86_400_000.0, "time since the start of the trace (days)")
        };
        let x = |ms: i64| ms as f64 / unit_ms;
        let x_max = x(end).max(f64::MIN_POSITIVE);
        let o = &sim.outcomes;
        let sessions = trace.column(ARRIVALS_COLUMN).is_some();

        let mut load_columns: Vec<(String, usize)> = policy
            .metrics
            .iter()
            .filter(|m| m.source != Source::Sessions)
            .filter_map(|m| trace.column(&m.name).map(|c| (m.name.clone(), c)))
            .collect();
        if load_columns.is_empty()
            && let Some(c) = trace.column(ARRIVALS_COLUMN)
        {
            load_columns.push(("arrivals per second".to_owned(), c));
        }
        let load = load_columns
            .iter()
            .zip(LOAD.iter().cycle())
            .map(|((name, c), &color)| Series {
                label: name.clone(),
                color,
                width: 2,
                points: reduce(steps(
                    trace
                        .times
                        .iter()
                        .map(|&t| x(t))
                        .zip(trace.series(*c).iter().copied()),
                    x_max,
                )),
            })
            .collect();
        let timeline = |o: &Outcome, value: fn(&Point) -> f64| {
            reduce(steps(
                o.timeline.iter().map(|p| (x(p.t_ms), value(p))),
                x_max,
            ))
        };
        let active = if sessions {
            vec![Series {
                label: "active sessions, drainscaler run".to_owned(),
                color: SESSIONS,
                width: 2,
                points: timeline(&o.drainscaler, |p| p.sessions as f64),
            }]
        } else {
            Vec::new()
        };
        let run = |label: &str, color, width, o: &Outcome| Series {
            label: label.to_owned(),
            color,
            width,
            points: timeline(o, |p| f64::from(p.replicas)),
        };
        let dropped = if sessions {
            vec![
                Series {
                    label: "sessions dropped so far, hpa".to_owned(),
                    color: HPA,
                    width: 2,
                    points: timeline(&o.hpa, |p| p.dropped as f64),
                },
                Series {
                    label: "sessions dropped so far, drainscaler".to_owned(),
                    color: DRAINSCALER,
                    width: 3,
                    points: timeline(&o.drainscaler, |p| p.dropped as f64),
                },
            ]
        } else {
            Vec::new()
        };
        Figure {
            title: format!(
                "drainscaler simulate: policy {} on {}",
                sim.policy_name,
                Path::new(&trace.file)
                    .file_name()
                    .map_or(trace.file.clone(), |f| f.to_string_lossy().into_owned())
            ),
            x_label: x_label.to_owned(),
            x_max,
            panels: [
                Panel {
                    caption: "Load from the trace".to_owned(),
                    left_label: match load_columns.as_slice() {
                        [(name, _)] => name.clone(),
                        _ => "value".to_owned(),
                    },
                    left: load,
                    right_label: "sessions".to_owned(),
                    right: active,
                    counts: false,
                },
                Panel {
                    caption: "Replicas of each run".to_owned(),
                    left_label: "replicas".to_owned(),
                    left: vec![
                        run("oracle (lower bound)", ORACLE, 2, &o.oracle),
                        // Wider and beneath hpa, so both show where they agree.
                        run("drainscaler", DRAINSCALER, 5, &o.drainscaler),
                        run("hpa", HPA, 2, &o.hpa),
                    ],
                    right_label: String::new(),
                    right: Vec::new(),
                    counts: true,
                },
                Panel {
                    caption: "Draining instances and dropped sessions".to_owned(),
                    left_label: "instances draining".to_owned(),
                    left: vec![Series {
                        label: "instances draining (drainscaler)".to_owned(),
                        color: RGBColor(100, 100, 100),
                        width: 2,
                        points: timeline(&o.drainscaler, |p| f64::from(p.draining)),
                    }],
                    right_label: "sessions dropped".to_owned(),
                    right: dropped,
                    counts: true,
                },
            ],
        }
    }
}

/// Points of a step function: each value holds until the next point, the last until `end`.
fn steps(points: impl Iterator<Item = (f64, f64)>, end: f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (x, y) in points {
        if let Some(&(_, prev)) = out.last() {
            if prev == y {
                continue;
            }
            out.push((x, prev));
        }
        out.push((x, y));
    }
    if let Some(&(x, y)) = out.last()
        && x < end
    {
        out.push((end, y));
    }
    out
}

/// Keeps at most about `MAX_POINTS` points: for each slice of the x range, the first, lowest,
/// highest and last point, so peaks and dips survive.
fn reduce(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let buckets = MAX_POINTS / 4;
    if points.len() <= MAX_POINTS {
        return points;
    }
    let (x0, x1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (a.0, b.0),
        _ => return points,
    };
    let width = (x1 - x0) / buckets as f64;
    let mut out = Vec::with_capacity(MAX_POINTS + 4);
    let mut i = 0;
    while i < points.len() {
        let bucket = ((points[i].0 - x0) / width).floor();
        let mut j = i;
        let (mut lo, mut hi) = (i, i);
        while j < points.len() && ((points[j].0 - x0) / width).floor() == bucket {
            if points[j].1 < points[lo].1 {
                lo = j;
            }
            if points[j].1 > points[hi].1 {
                hi = j;
            }
            j += 1;
        }
        let mut keep = [i, lo, hi, j - 1];
        keep.sort_unstable();
        let mut previous = None;
        for k in keep {
            if previous != Some(k) {
                out.push(points[k]);
                previous = Some(k);
            }
        }
        i = j;
    }
    out
}

fn segments(
    points: &[(f64, f64)],
    style: ShapeStyle,
) -> impl Iterator<Item = PathElement<(f64, f64)>> + '_ {
    points
        .windows(2)
        .map(move |w| PathElement::new(vec![w[0], w[1]], style))
}

/// A y range from 0 with headroom above the highest point; for counts, a whole number.
fn y_max(series: &[Series], counts: bool) -> f64 {
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    match (top <= 0.0, counts) {
        (true, _) => 1.0,
        (false, true) => (top * 1.12).ceil().max(top + 1.0),
        (false, false) => top * 1.12,
    }
}

/// How many y labels to ask for: on a count axis, never more than there are whole numbers.
fn y_labels(max: f64, counts: bool) -> usize {
    if counts {
        (max as usize + 1).clamp(2, 8)
    } else {
        8
    }
}

fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> Result<(), String> {
    let err = |e: plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let title: TextStyle = (FONT, 26).into_font().style(FontStyle::Bold).into();
    let body = root.titled(&figure.title, title).map_err(err)?;
    let (h, _) = (body.dim_in_pixel().1, ());
    let top_h = h * 34 / 100;
    let mid_h = h * 38 / 100;
    let (top, rest) = body.split_vertically(top_h);
    let (middle, bottom) = rest.split_vertically(mid_h);
    for (area, panel) in [top, middle, bottom].iter().zip(&figure.panels) {
        draw_panel(area, panel, figure).map_err(err)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    figure: &Figure,
) -> Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>> {
    let has_right = !panel.right.is_empty();
    let last = std::ptr::eq(panel, &figure.panels[2]);
    let left_max = y_max(&panel.left, panel.counts);
    let right_max = y_max(&panel.right, panel.counts);
    let mut chart = ChartBuilder::on(area)
        .caption(
            &panel.caption,
            (FONT, 20).into_font().style(FontStyle::Bold),
        )
        .margin_left(12)
        .margin_right(if has_right { 12 } else { 92 })
        .margin_top(6)
        .margin_bottom(6)
        .x_label_area_size(if last { 50 } else { 28 })
        .y_label_area_size(80)
        .right_y_label_area_size(if has_right { 80 } else { 0 })
        .build_cartesian_2d(0f64..figure.x_max, 0f64..left_max)?
        .set_secondary_coord(0f64..figure.x_max, 0f64..right_max);
    chart
        .configure_mesh()
        .x_desc(if last { figure.x_label.as_str() } else { "" })
        .y_desc(panel.left_label.as_str())
        .y_labels(y_labels(left_max, panel.counts))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .y_label_formatter(&|v| label(*v))
        .x_label_formatter(&|v| label(*v))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    if has_right {
        chart
            .configure_secondary_axes()
            .y_desc(panel.right_label.as_str())
            .y_labels(y_labels(right_max, panel.counts))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .y_label_formatter(&|v| label(*v))
            .draw()?;
    }
    // Segments one by one: plotters joins a thick polyline with mitres, which spike at the
    // sharp turns of step lines.
    for s in &panel.left {
        let style = ShapeStyle::from(&s.color).stroke_width(s.width);
        let color = s.color;
        chart
            .draw_series(segments(&s.points, style))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(4))
            });
    }
    for s in &panel.right {
        let style = ShapeStyle::from(&s.color).stroke_width(s.width);
        let color = s.color;
        chart
            .draw_secondary_series(segments(&s.points, style))?
            .label(format!("{} (right axis)", s.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(4))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.88))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 15))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{reduce, steps};

    #[test]
    fn steps_hold_each_value_until_the_next_point_and_to_the_end() {
        let pts = steps([(0.0, 1.0), (1.0, 1.0), (2.0, 3.0)].into_iter(), 5.0);
        assert_eq!(pts, vec![(0.0, 1.0), (2.0, 1.0), (2.0, 3.0), (5.0, 3.0)]);
    }

    #[test]
    fn reducing_keeps_the_peaks() {
        let mut pts: Vec<(f64, f64)> = (0..100_000).map(|i| (f64::from(i), 1.0)).collect();
        pts[54_321].1 = 99.0;
        let kept = reduce(pts);
        assert!(kept.len() <= 2_500, "{}", kept.len());
        assert!(kept.iter().any(|p| p.1 == 99.0));
    }
}
