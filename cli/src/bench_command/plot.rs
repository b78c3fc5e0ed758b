//! A hand-written SVG of latency and throughput over time: one panel with p50 and p99 per
//! window, one with completions per second, one line style per target.

use super::report::Summary;
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 64.0;
const PANEL_GAP: f64 = 70.0;
const TICKS: usize = 5;
/// Line colours, one per target.
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Draws `runs` (one per target) over a shared time axis; `title` heads the figure.
pub fn svg(runs: &[Summary], title: &str) -> String {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let height = MARGIN_TOP + 2.0 * PANEL_HEIGHT + PANEL_GAP + 50.0;
    let time_max_s = runs
        .iter()
        .flat_map(|run| run.windows.last())
        .map(|window| (window.start_ms + window.width_ms) as f64 / 1000.0)
        .fold(0.0, f64::max)
        .max(0.1);
    let latency_max_ms = runs
        .iter()
        .flat_map(|run| &run.windows)
        .map(|window| window.p99_us as f64 / 1000.0)
        .fold(0.0, f64::max);
    let throughput_max = runs
        .iter()
        .flat_map(|run| &run.windows)
        .map(|window| window.throughput())
        .fold(0.0, f64::max);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // The title is long; one clause per line keeps it inside the figure.
    let (headline, details) = title.split_once(": ").unwrap_or((title, ""));
    let _ = writeln!(
        out,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(headline)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="34" text-anchor="middle" font-size="11">{}</text>"#,
        WIDTH / 2.0,
        escape(details)
    );

    let latency_top = MARGIN_TOP;
    let throughput_top = MARGIN_TOP + PANEL_HEIGHT + PANEL_GAP;
    let latency_axis = Axis {
        top: latency_top,
        max: nice_ceiling(latency_max_ms),
    };
    let throughput_axis = Axis {
        top: throughput_top,
        max: nice_ceiling(throughput_max),
    };
    draw_frame(
        &mut out,
        &latency_axis,
        time_max_s,
        plot_width,
        "latency per window (ms)",
    );
    draw_frame(
        &mut out,
        &throughput_axis,
        time_max_s,
        plot_width,
        "throughput (ops/s)",
    );

    for (position, run) in runs.iter().enumerate() {
        let colour = COLOURS[position % COLOURS.len()];
        let point = |window_start_ms: u64, width_ms: u64, value: f64, axis: &Axis| {
            let x = MARGIN_LEFT
                + plot_width * ((window_start_ms + width_ms) as f64 / 1000.0) / time_max_s;
            let y = axis.top + PANEL_HEIGHT * (1.0 - value / axis.max);
            format!("{x:.1},{y:.1}")
        };
        let with_ops: Vec<_> = run.windows.iter().filter(|window| window.ops > 0).collect();
        let p99: Vec<String> = with_ops
            .iter()
            .map(|w| {
                point(
                    w.start_ms,
                    w.width_ms,
                    w.p99_us as f64 / 1000.0,
                    &latency_axis,
                )
            })
            .collect();
        let p50: Vec<String> = with_ops
            .iter()
            .map(|w| {
                point(
                    w.start_ms,
                    w.width_ms,
                    w.p50_us as f64 / 1000.0,
                    &latency_axis,
                )
            })
            .collect();
        let throughput: Vec<String> = run
            .windows
            .iter()
            .map(|w| point(w.start_ms, w.width_ms, w.throughput(), &throughput_axis))
            .collect();
        polyline(&mut out, &p99, colour, "");
        polyline(&mut out, &p50, colour, "4,3");
        polyline(&mut out, &throughput, colour, "");
        let legend_y = height - 18.0;
        let legend_x = MARGIN_LEFT + 400.0 * position as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" y1="{ly}" x2="{lx2}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{tx}" y="{ty}">{}: p99 solid, p50 dashed; throughput below</text>"#,
            escape(&run.target),
            ly = legend_y,
            lx2 = legend_x + 24.0,
            tx = legend_x + 30.0,
            ty = legend_y + 4.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

struct Axis {
    top: f64,
    max: f64,
}

fn draw_frame(out: &mut String, axis: &Axis, time_max_s: f64, plot_width: f64, label: &str) {
    let bottom = axis.top + PANEL_HEIGHT;
    let right = MARGIN_LEFT + plot_width;
    let _ = writeln!(
        out,
        r#"<rect x="{MARGIN_LEFT}" y="{}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="black"/>"#,
        axis.top
    );
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN_LEFT}" y="{}">{}</text>"#,
        axis.top - 8.0,
        escape(label)
    );
    for tick in 0..=TICKS {
        let fraction = tick as f64 / TICKS as f64;
        let y = bottom - PANEL_HEIGHT * fraction;
        let _ = writeln!(
            out,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            tick_label(axis.max * fraction)
        );
    }
    let time_step_s = nice_ceiling(time_max_s / TICKS as f64);
    let mut time_s: f64 = 0.0;
    while time_s <= time_max_s * (1.0 + 1e-9) {
        let x = MARGIN_LEFT + plot_width * time_s / time_max_s;
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{} s</text>"#,
            bottom + 16.0,
            tick_label(time_s)
        );
        time_s += time_step_s;
    }
}

fn polyline(out: &mut String, points: &[String], colour: &str, dash: &str) {
    if points.is_empty() {
        return;
    }
    let dash = if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    };
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{}"/>"#,
        points.join(" ")
    );
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value` (1 for zero).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|&candidate| candidate >= value)
        .unwrap_or(10.0 * power)
}

fn tick_label(value: f64) -> String {
    if value >= 100.0 || value == value.round() {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(9080.0), 10_000.0);
    }

    #[test]
    fn titles_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
