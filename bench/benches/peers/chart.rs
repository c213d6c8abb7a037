//! A log-log line chart as hand-written SVG: panels side by side, one line per series.
//!
//! Written by hand rather than with plotters because plotters lays text out through a font
//! backend (fontconfig/freetype or a bundled TTF); SVG `<text>` needs none, and a browser
//! or GitHub renders it as is.

use std::fmt::Write;

/// One line: (x, y) points, both > 0 (log axes).
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One plot area.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 340.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 50.0;
const MARGIN_B: f64 = 50.0;
const LEGEND_H: f64 = 22.0;

/// Colours that stay apart for up to ten series.
const COLOURS: [&str; 10] = [
    "#000000", "#1f77b4", "#aec7e8", "#d62728", "#ff9896", "#2ca02c", "#9467bd", "#ff7f0e",
    "#8c564b", "#e377c2",
];

/// The decades `[lo, hi]` that hold every value of `vals` (powers of ten).
fn decades(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let mut hi = 10f64.powf(hi.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// `10`, `0.1`, `1000` without trailing zeros.
fn tick_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart: `title` on top, the panels side by side sharing the y range, one legend.
pub fn svg(title: &str, x_label: &str, y_label: &str, panels: &[Panel]) -> String {
    let all = || {
        panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|s| s.points.iter())
    };
    let (x_lo, x_hi) = decades(all().map(|p| p.0));
    let (y_lo, y_hi) = decades(all().map(|p| p.1));
    let labels: Vec<&str> = panels
        .first()
        .map(|p| p.series.iter().map(|s| s.label.as_str()).collect())
        .unwrap_or_default();
    let legend_rows = labels.len().div_ceil(4);
    let width = PANEL_W * panels.len().max(1) as f64;
    let height = PANEL_H + 10.0 + LEGEND_H * legend_rows as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    let plot_w = PANEL_W - MARGIN_L - MARGIN_R;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    for (i, panel) in panels.iter().enumerate() {
        let ox = PANEL_W * i as f64 + MARGIN_L;
        let oy = MARGIN_T;
        let x = |v: f64| ox + (v.log10() - x_lo.log10()) / (x_hi.log10() - x_lo.log10()) * plot_w;
        let y = |v: f64| {
            oy + plot_h - (v.log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()) * plot_h
        };
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            ox + plot_w / 2.0,
            oy - 10.0,
            esc(&panel.title)
        );
        // Grid and ticks at every decade (and 2× and 5× on the x axis, whose values are
        // the tree sizes).
        let mut v = x_lo;
        while v <= x_hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let t = v * m;
                if t > x_hi * 1.0001 {
                    break;
                }
                let _ = writeln!(
                    out,
                    r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
                    x(t),
                    oy,
                    oy + plot_h,
                    oy + plot_h + 16.0,
                    tick_label(t)
                );
            }
            v *= 10.0;
        }
        let mut v = y_lo;
        while v <= y_hi * 1.0001 {
            let _ = writeln!(
                out,
                r##"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="#ddd"/><text x="{3}" y="{4:.1}" text-anchor="end">{5}</text>"##,
                ox,
                y(v),
                ox + plot_w,
                ox - 6.0,
                y(v) + 4.0,
                tick_label(v)
            );
            v *= 10.0;
        }
        let _ = writeln!(
            out,
            r##"<rect x="{ox}" y="{oy}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            ox + plot_w / 2.0,
            oy + plot_h + 36.0,
            esc(x_label)
        );
        let (yx, yy) = (ox - 44.0, oy + plot_h / 2.0);
        let _ = writeln!(
            out,
            r#"<text x="{yx}" y="{yy}" text-anchor="middle" transform="rotate(-90 {yx} {yy})">{}</text>"#,
            esc(y_label)
        );
        for (k, s) in panel.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let pts: Vec<String> = s
                .points
                .iter()
                .filter(|(a, b)| *a > 0.0 && *b > 0.0 && b.is_finite())
                .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"><title>{}</title></polyline>"#,
                pts.join(" "),
                esc(&s.label)
            );
            for p in &pts {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    out,
                    r#"<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>"#
                );
            }
        }
    }
    // The legend, four entries a row.
    for (k, label) in labels.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let lx = 20.0 + (k % 4) as f64 * (width - 40.0) / 4.0;
        let ly = PANEL_H + 20.0 + LEGEND_H * (k / 4) as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            esc(label)
        );
    }
    out += "</svg>\n";
    out
}
