//! The comparison's chart: a hand-written SVG with, per scenario, one row per system — a bar of
//! requests/s (median, with a line from the slowest to the fastest run) and a bar of p99
//! latency (median over runs). Bars are scaled per scenario, since scenarios differ by orders
//! of magnitude; every bar carries its value as text, so the chart reads without a scale.

use std::fmt::Write as _;

use crate::scenario::SystemSummary;

/// One group of bars: a scenario and its systems.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartGroup<'a> {
    pub title: String,
    pub systems: &'a [SystemSummary],
}

const WIDTH: f64 = 1000.0;
const LABEL_X: f64 = 16.0;
const RPS_X: f64 = 250.0;
const P99_X: f64 = 640.0;
const BAR_W: f64 = 260.0;
const ROW_H: f64 = 22.0;
const BAR_H: f64 = 14.0;
const GROUP_HEAD: f64 = 30.0;
const TOP: f64 = 78.0;

/// `s` with the five XML special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// `106272.4` → `106,272`.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// Microseconds as `850 µs` below a millisecond, else `1.23 ms`.
pub fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The fill colour of a system, by family.
fn colour(system: &str) -> &'static str {
    if system == "ceiling" {
        "#9e9e9e"
    } else if system.starts_with("cathedral") {
        "#1f6fb2"
    } else if system.starts_with("nginx") {
        "#2e9e4f"
    } else if system.starts_with("wasmtime") {
        "#e07b00"
    } else if system.starts_with("varnish") {
        "#c0392b"
    } else {
        "#7b4fa0"
    }
}

/// Scaled bar length for `value` of at most `max`.
fn length(value: f64, max: f64) -> f64 {
    if max > 0.0 && value.is_finite() && value > 0.0 {
        (value / max * BAR_W).clamp(1.0, BAR_W)
    } else {
        0.0
    }
}

/// The whole SVG document.
pub fn render_svg(title: &str, subtitle: &str, groups: &[ChartGroup<'_>]) -> String {
    let rows: usize = groups.iter().map(|g| g.systems.len()).sum();
    let height = TOP + groups.len() as f64 * GROUP_HEAD + rows as f64 * ROW_H + 24.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>\n\
         <text x=\"{LABEL_X}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>\n\
         <text x=\"{LABEL_X}\" y=\"42\" fill=\"#555555\">{}</text>\n\
         <text x=\"{RPS_X}\" y=\"66\" font-weight=\"bold\">requests/s (median; line: min–max over runs)</text>\n\
         <text x=\"{P99_X}\" y=\"66\" font-weight=\"bold\">p99 latency (median over runs; shorter is better)</text>",
        escape(title),
        escape(subtitle)
    );
    let mut y = TOP;
    for group in groups {
        let _ = writeln!(
            out,
            "<text x=\"{LABEL_X}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n\
             <line x1=\"{LABEL_X}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#dddddd\"/>",
            y + 18.0,
            escape(&group.title),
            y + 24.0,
            WIDTH - LABEL_X,
            y + 24.0
        );
        y += GROUP_HEAD;
        let max_rps = group
            .systems
            .iter()
            .filter_map(|s| s.requests_per_sec.map(|r| r.max))
            .fold(0.0, f64::max);
        let max_p99 = group
            .systems
            .iter()
            .filter_map(|s| s.p99_us)
            .fold(0.0, f64::max);
        for system in group.systems {
            let fill = colour(&system.system);
            let text_y = y + BAR_H - 2.0;
            let _ = writeln!(
                out,
                "<text x=\"{LABEL_X}\" y=\"{text_y:.1}\">{}</text>",
                escape(&system.system)
            );
            match system.requests_per_sec {
                Some(rps) => {
                    let w = length(rps.median, max_rps);
                    let (lo, hi) = (
                        RPS_X + length(rps.min, max_rps),
                        RPS_X + length(rps.max, max_rps),
                    );
                    let mid = y + BAR_H / 2.0;
                    let _ = writeln!(
                        out,
                        "<rect x=\"{RPS_X}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR_H}\" fill=\"{fill}\"/>\n\
                         <line x1=\"{lo:.1}\" y1=\"{mid:.1}\" x2=\"{hi:.1}\" y2=\"{mid:.1}\" stroke=\"#000000\" stroke-width=\"1.5\"/>\n\
                         <text x=\"{:.1}\" y=\"{text_y:.1}\">{}</text>",
                        RPS_X + w.max(hi - RPS_X) + 4.0,
                        thousands(rps.median)
                    );
                }
                None => {
                    let _ = writeln!(out, "<text x=\"{RPS_X}\" y=\"{text_y:.1}\">—</text>");
                }
            }
            match system.p99_us {
                Some(p99) => {
                    let w = length(p99, max_p99);
                    let _ = writeln!(
                        out,
                        "<rect x=\"{P99_X}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR_H}\" fill=\"{fill}\" fill-opacity=\"0.6\"/>\n\
                         <text x=\"{:.1}\" y=\"{text_y:.1}\">{}</text>",
                        P99_X + w + 4.0,
                        escape(&micros(p99))
                    );
                }
                None => {
                    let _ = writeln!(out, "<text x=\"{P99_X}\" y=\"{text_y:.1}\">—</text>");
                }
            }
            y += ROW_H;
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::summarise;
    use crate::scenario::tests::{measurement, scenario};

    #[test]
    fn numbers_and_text_are_formatted_for_the_chart() {
        assert_eq!(thousands(106_272.4), "106,272");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(0.2), "0");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(thousands(f64::NAN), "—");
        assert_eq!(micros(850.0), "850 µs");
        assert_eq!(micros(1234.0), "1.23 ms");
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(escape("bell\u{7}"), "bell?");
    }

    #[test]
    fn the_svg_is_well_formed_and_has_a_bar_per_system() -> anyhow::Result<()> {
        let s = scenario();
        let ms = [
            measurement(1, "direct", 100_000.0, 500, 1500, 0),
            measurement(1, "cathedral", 45_000.0, 1000, 2000, 0),
            measurement(2, "direct", 90_000.0, 500, 1600, 0),
            measurement(2, "cathedral", 50_000.0, 1000, 2100, 0),
        ];
        let summary = summarise(&s, &ms);
        let empty = summarise(&s, &[]);
        let groups = [
            ChartGroup {
                title: "cache <hit> & 1 KiB".into(),
                systems: &summary,
            },
            ChartGroup {
                title: "nothing measured".into(),
                systems: &empty,
            },
        ];
        let svg = render_svg("title \"x\"", "commit abc & co", &groups);
        let doc = roxmltree::Document::parse(&svg)?;
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let rects = root
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .count();
        // Background, then two bars per measured system; none for the empty group.
        assert_eq!(rects, 1 + 2 * 2);
        let texts: Vec<String> = root
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::to_owned))
            .collect();
        for expected in [
            "title \"x\"",
            "cache <hit> & 1 KiB",
            "cathedral",
            "95,000",
            "47,500",
            "2.05 ms",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "{expected:?} in {texts:?}"
            );
        }
        assert_eq!(texts.iter().filter(|t| *t == "—").count(), 4);
        // Bars stay inside their panel.
        for rect in root
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .skip(1)
        {
            let w: f64 = rect.attribute("width").unwrap_or("0").parse()?;
            assert!(w > 0.0 && w <= BAR_W, "{w}");
        }
        Ok(())
    }
}
