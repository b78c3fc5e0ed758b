//! A violation drawn for people: one self-contained HTML page with an inline SVG timeline.
//!
//! One lane per process; the horizontal axis is the history's event order (the order that decides
//! real-time precedence). Each operation is a bar from its invoke to its completion, labelled
//! with its call and result; an operation that may still take effect (`info`, or no completion)
//! runs to the right edge with a dashed outline. The longest linearizable prefix is green and
//! numbered in its linearization order; the operations that cannot come next after it are
//! orange, and the one that cannot be placed is red. The violation's text explanation is printed
//! under the drawing. The page loads nothing: no scripts, fonts or stylesheets from elsewhere.
//!
//! ```
//! # use synod_check::{check, read_jsonl, CheckOptions, KvModel, Verdict};
//! # let history = r#"
//! # {"process":1,"type":"invoke","f":"put","key":"k","value":"a","time":1}
//! # {"process":1,"type":"ok","f":"put","key":"k","value":"a","time":2}
//! # {"process":2,"type":"invoke","f":"get","key":"k","value":null,"time":3}
//! # {"process":2,"type":"ok","f":"get","key":"k","value":"b","time":4}
//! # "#;
//! # let events = read_jsonl(history.as_bytes(), "h")?;
//! let Verdict::NotLinearizable(violation) = check(&KvModel, &events, &CheckOptions::default())?.verdict
//! else { unreachable!() };
//! let page = synod_check::html::render_violation(&violation, "h.jsonl");
//! assert!(page.starts_with("<!DOCTYPE html>"));
//! assert!(page.contains("class=\"op failing\""));
//! # Ok::<(), synod_check::HistoryError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::checker::{Violation, describe_call, describe_operation};
use crate::history::Outcome;

/// Height of one process lane, in pixels.
const LANE_HEIGHT_PX: usize = 34;

/// Height of an operation's bar.
const BAR_HEIGHT_PX: usize = 22;

/// Width of the lane labels on the left.
const LABEL_WIDTH_PX: usize = 110;

/// Horizontal space per history event: enough for a short label on a one-event bar.
const EVENT_WIDTH_PX: usize = 36;

/// The most pixels the drawing may be wide; longer histories get squeezed (labels then live in
/// the tooltips).
const DRAWING_WIDTH_PX_MAX: usize = 30_000;

/// The average width of one label character at the drawing's font size, to cut labels to fit.
const CHARACTER_WIDTH_PX: f64 = 6.6;

/// Renders `violation` as a self-contained HTML page titled after `source_name`.
pub fn render_violation(violation: &Violation, source_name: &str) -> String {
    let operations = &violation.operations;
    let mut lanes: BTreeMap<u64, usize> = BTreeMap::new();
    for operation in operations {
        lanes.insert(operation.process, 0);
    }
    for (lane, index) in lanes.values_mut().zip(0..) {
        *lane = index;
    }
    let first_event = operations
        .iter()
        .map(|operation| operation.invoke_index)
        .min()
        .unwrap_or(0);
    let last_event = operations
        .iter()
        .map(|operation| operation.complete_index.unwrap_or(operation.invoke_index))
        .max()
        .unwrap_or(0);
    // One column past the last event for operations that never completed to run into.
    let columns = last_event - first_event + 2;
    let event_width = (DRAWING_WIDTH_PX_MAX as f64 / columns as f64).min(EVENT_WIDTH_PX as f64);
    let x = |event: usize| LABEL_WIDTH_PX as f64 + (event - first_event) as f64 * event_width;
    let width = x(last_event + 2) + 10.0;
    let axis_height = 24;
    let height = lanes.len() * LANE_HEIGHT_PX + axis_height + 10;

    let mut order_in_prefix = vec![None; operations.len()];
    for (order, &index) in violation.longest_prefix.iter().enumerate() {
        order_in_prefix[index] = Some(order + 1);
    }
    let mut stuck = vec![false; operations.len()];
    for &index in &violation.stuck {
        stuck[index] = true;
    }

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height}" font-family="monospace" font-size="11">"#
    );
    // Lanes and their labels.
    for (process, &lane) in &lanes {
        let top = lane * LANE_HEIGHT_PX;
        let _ = writeln!(
            svg,
            r#"<rect class="lane" x="0" y="{top}" width="{width:.0}" height="{LANE_HEIGHT_PX}"/><text x="6" y="{}">process {process}</text>"#,
            top + LANE_HEIGHT_PX / 2 + 4
        );
    }
    // The event axis, with a tick every so many events.
    let axis_top = lanes.len() * LANE_HEIGHT_PX + 4;
    let tick_every = ((60.0 / event_width).ceil() as usize).max(1);
    for event in (first_event..=last_event).step_by(tick_every) {
        let _ = writeln!(
            svg,
            r#"<line class="tick" x1="{0:.1}" y1="0" x2="{0:.1}" y2="{axis_top}"/><text x="{0:.1}" y="{1}">{event}</text>"#,
            x(event),
            axis_top + 14
        );
    }
    // The operations, with the failing one drawn last so its outline stays on top.
    let mut drawing_order: Vec<usize> = (0..operations.len()).collect();
    drawing_order.sort_by_key(|&index| index == violation.failing);
    for index in drawing_order {
        let operation = &operations[index];
        let lane = lanes[&operation.process];
        let start = x(operation.invoke_index);
        let open = operation.outcome == Outcome::Info;
        let end = match operation.complete_index {
            Some(complete) if !open => x(complete),
            _ => x(last_event + 1),
        };
        let bar_width = (end - start).max(3.0);
        let class = if index == violation.failing {
            "failing"
        } else if order_in_prefix[index].is_some() {
            "prefix"
        } else if stuck[index] {
            "stuck"
        } else if operation.outcome == Outcome::Fail {
            "failed"
        } else {
            "other"
        };
        let call = describe_call(operation, !violation.partitioned);
        let label = match order_in_prefix[index] {
            Some(order) => format!("{order}. {call}"),
            None => call,
        };
        let fitting = ((bar_width - 6.0) / CHARACTER_WIDTH_PX).max(0.0) as usize;
        let shown = shorten(&label, fitting);
        let tooltip = describe_operation(operation, !violation.partitioned);
        let top = lane * LANE_HEIGHT_PX + (LANE_HEIGHT_PX - BAR_HEIGHT_PX) / 2;
        let _ = writeln!(
            svg,
            r#"<g class="op {class}{}"><title>{}</title><rect x="{start:.1}" y="{top}" width="{bar_width:.1}" height="{BAR_HEIGHT_PX}" rx="3"/><text x="{:.1}" y="{}">{}</text></g>"#,
            if open { " open" } else { "" },
            escape(&tooltip),
            start + 3.0,
            top + BAR_HEIGHT_PX / 2 + 4,
            escape(&shown)
        );
    }
    svg.push_str("</svg>\n");

    let title = format!("{}: not linearizable", source_name);
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.scroll {{ overflow-x: auto; border: 1px solid #ccc; }}
.lane {{ fill: #fafafa; stroke: #e4e4e4; }}
.tick {{ stroke: #eee; }}
.op rect {{ stroke: #555; stroke-width: 1; }}
.op text {{ fill: #111; pointer-events: none; }}
.op.other rect {{ fill: #d6e4f0; }}
.op.failed rect {{ fill: #eeeeee; stroke: #aaa; stroke-dasharray: 2 2; }}
.op.prefix rect {{ fill: #b7e1b0; stroke: #2e7d32; }}
.op.stuck rect {{ fill: #ffd7a0; stroke: #e08600; }}
.op.failing rect {{ fill: #f4a6a6; stroke: #c00; stroke-width: 3; }}
.op.open rect {{ stroke-dasharray: 6 3; }}
.legend span {{ display: inline-block; padding: 2px 8px; margin-right: 8px; border: 1px solid #555; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{subject}, checked against the {model} model. One lane per process; the axis counts the
history's events. Hover over an operation for its details.</p>
<p class="legend"><span style="background:#b7e1b0">linearizable prefix (in order)</span><span style="background:#f4a6a6;border:3px solid #c00">cannot be placed</span><span style="background:#ffd7a0">cannot come next either</span><span style="background:#d6e4f0">not reached</span><span style="background:#eee;border-style:dashed">failed: did not happen</span><span style="border-style:dashed">dashed: may take effect any time after its invoke, or never</span></p>
<div class="scroll">
{svg}</div>
<h2>Why</h2>
<pre>{explanation}</pre>
</body>
</html>
"#,
        title = escape(&title),
        subject = escape(&violation.subject()),
        model = escape(violation.model),
        explanation = escape(&violation.to_string()),
    );
    page
}

/// `text` cut to at most `characters` characters, ending in "…" when cut.
fn shorten(text: &str, characters: usize) -> String {
    if text.chars().count() <= characters {
        return text.to_owned();
    }
    if characters == 0 {
        return String::new();
    }
    let mut shortened: String = text.chars().take(characters - 1).collect();
    shortened.push('…');
    shortened
}

/// `text` escaped for HTML and SVG text and attributes.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::checker::{CheckOptions, Verdict, check};
    use crate::history::{Event, EventKind};
    use crate::kv::KvModel;

    fn violation() -> Violation {
        let event = |process, kind, f: &str, value, time| Event {
            process,
            kind,
            f: f.to_owned(),
            key: Some("k<1>".to_owned()),
            value,
            time,
        };
        let events = [
            event(1, EventKind::Invoke, "put", json!("a&b"), 0),
            event(3, EventKind::Invoke, "append", json!("z"), 1),
            event(1, EventKind::Ok, "put", json!("a&b"), 2),
            event(2, EventKind::Invoke, "get", json!(null), 3),
            event(2, EventKind::Ok, "get", json!("<script>"), 4),
            event(4, EventKind::Invoke, "put", json!("q"), 5),
            event(4, EventKind::Fail, "put", json!("q"), 6),
        ];
        match check(&KvModel, &events, &CheckOptions::default())
            .expect("well-formed")
            .verdict
        {
            Verdict::NotLinearizable(violation) => violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn page_is_self_contained_and_marks_prefix_and_failing_operation() {
        let violation = violation();
        let page = render_violation(&violation, "h.jsonl");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        for external in ["src=", "href=", "@import", "url("] {
            assert!(!page.contains(external), "the page loads {external}");
        }
        // One lane per process.
        for process in 1..=4 {
            assert!(
                page.contains(&format!(">process {process}</text>")),
                "{page}"
            );
        }
        assert_eq!(page.matches("class=\"op failing\"").count(), 1);
        assert!(page.contains("class=\"op prefix\""));
        assert!(page.contains("class=\"op failed\""));
        assert!(page.contains("class=\"op prefix open\""));
        // The failing read's value is on the page, escaped.
        assert!(
            page.contains("get &quot;k&lt;1&gt;&quot; -&gt; &quot;&lt;script&gt;&quot;"),
            "{page}"
        );
        assert!(!page.contains("<script>"));
        // The prefix is numbered; labels too long for their bar are cut, tooltips never.
        assert!(page.contains(">1. put"), "{page}");
        assert!(page.contains("<title>process 1 put &quot;k&lt;1&gt;&quot; &quot;a&amp;b&quot; (ok, events 0-2)</title>"), "{page}");
        assert!(page.contains("the operation that cannot be placed"));
    }

    #[test]
    fn labels_are_shortened_to_fit() {
        assert_eq!(shorten("abcdef", 10), "abcdef");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abcdef", 0), "");
    }
}
