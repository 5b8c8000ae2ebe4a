//! Inline SVG charts for the HTML report: no scripts, no fonts to fetch, text escaped, the
//! Okabe–Ito colour-blind-safe palette, and dash patterns so series differ without colour too.

use std::fmt::Write;

/// Okabe–Ito: distinguishable with the common colour-vision deficiencies.
pub(crate) const PALETTE: [&str; 7] = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000"];
const DASHES: [&str; 7] = ["", "6 3", "2 2", "8 3 2 3", "1 3", "10 4", "4 2 1 2"];

/// Text safe inside HTML and SVG (elements and quoted attributes).
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

fn open(title: &str, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {height}\" width=\"100%\" role=\"img\" aria-label=\"{t}\" font-family=\"sans-serif\" font-size=\"11\"><title>{t}</title>",
        t = esc(title)
    )
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn y_axis(s: &mut String, ymax: f64, height: f64, unit: &str, pct: bool) {
    let ph = height - TOP - BOTTOM;
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = TOP + ph - ph * f64::from(i) / 4.0;
        let label = if pct { format!("{:.0} %", v * 100.0) } else { format!("{}{unit}", fmt_num(v)) };
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            esc(&label)
        );
    }
}

fn legend(s: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = TOP + 6.0 + 16.0 * i as f64;
        let x = W - RIGHT + 10.0;
        let _ = write!(
            s,
            "<line x1=\"{x}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2.5\" stroke-dasharray=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            PALETTE[i % PALETTE.len()],
            DASHES[i % DASHES.len()],
            x + 26.0,
            y + 4.0,
            esc(n)
        );
    }
}

/// Lines over categorical x labels (days); `None` leaves a gap.
pub(crate) fn lines(title: &str, x_labels: &[String], series: &[(String, Vec<Option<f64>>)], unit: &str) -> String {
    let mut s = open(title, H);
    let ymax = nice_max(series.iter().flat_map(|(_, v)| v.iter().flatten()).fold(0.0f64, |a, b| a.max(*b)));
    y_axis(&mut s, ymax, H, unit, false);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let n = x_labels.len().max(1);
    let x = |i: usize| if n == 1 { LEFT + pw / 2.0 } else { LEFT + pw * i as f64 / (n - 1) as f64 };
    let step = n.div_ceil(8);
    for (i, l) in x_labels.iter().enumerate() {
        if i % step == 0 || i == n - 1 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x(i),
                H - BOTTOM + 16.0,
                esc(l)
            );
        }
    }
    for (si, (_, vals)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen_up = true;
        for (i, v) in vals.iter().enumerate() {
            match v {
                Some(v) => {
                    let y = TOP + ph - ph * (v / ymax).min(1.0);
                    let _ = write!(d, "{}{:.1},{:.1} ", if pen_up { "M" } else { "L" }, x(i), y);
                    let _ = write!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{}\"><title>{}</title></circle>",
                        x(i),
                        PALETTE[si % PALETTE.len()],
                        esc(&format!(
                            "{} {}: {}{unit}",
                            series[si].0,
                            x_labels.get(i).map(String::as_str).unwrap_or(""),
                            fmt_num(*v)
                        ))
                    );
                    pen_up = false;
                }
                None => pen_up = true,
            }
        }
        let _ = write!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"{}\"/>",
            PALETTE[si % PALETTE.len()],
            DASHES[si % DASHES.len()]
        );
    }
    legend(&mut s, &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    s.push_str("</svg>");
    s
}

/// A Pareto chart: bars (counts, largest first) and the cumulative share as a line.
pub(crate) fn pareto(title: &str, items: &[(String, u64)], total: u64) -> String {
    let mut s = open(title, H);
    let ymax = nice_max(items.first().map(|i| i.1 as f64).unwrap_or(1.0));
    y_axis(&mut s, ymax, H, "", false);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let n = items.len().max(1);
    let bw = pw / n as f64;
    let mut cum = 0u64;
    let mut d = String::new();
    for (i, (label, c)) in items.iter().enumerate() {
        let h = ph * (*c as f64 / ymax).min(1.0);
        let x = LEFT + bw * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}</title></rect><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x + bw * 0.1,
            TOP + ph - h,
            bw * 0.8,
            PALETTE[0],
            esc(&format!("#{} {label}: {c}", i + 1)),
            x + bw / 2.0,
            H - BOTTOM + 14.0,
            i + 1
        );
        cum += c;
        let share = if total == 0 { 0.0 } else { cum as f64 / total as f64 };
        let _ = write!(d, "{}{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, x + bw / 2.0, TOP + ph - ph * share);
    }
    let _ = write!(
        s,
        "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>",
        PALETTE[3]
    );
    for i in 0..=4 {
        let y = TOP + ph - ph * f64::from(i) / 4.0;
        let _ = write!(s, "<text x=\"{}\" y=\"{:.1}\">{} %</text>", W - RIGHT + 4.0, y + 4.0, i * 25);
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" fill=\"{}\">bars: errors</text><text x=\"{}\" y=\"{}\" fill=\"{}\">line: cumulative</text>",
        W - RIGHT + 40.0,
        TOP + 30.0,
        PALETTE[0],
        W - RIGHT + 40.0,
        TOP + 46.0,
        PALETTE[3]
    );
    s.push_str("</svg>");
    s
}

/// Curves of y in [0, 1] over x on a log scale, with labelled vertical and horizontal markers.
pub(crate) fn curves(
    title: &str,
    x_unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
    vlines: &[(String, f64)],
    hlines: &[(String, f64)],
) -> String {
    let mut s = open(title, H);
    y_axis(&mut s, 1.0, H, "", true);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let xs =
        series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).chain(vlines.iter().map(|v| v.1)).filter(|x| *x > 0.0);
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo.ln(), hi.ln()) } else { (0.0, 1.0) };
    let x = |v: f64| LEFT + pw * ((v.max(1e-9).ln() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let y = |v: f64| TOP + ph - ph * v.clamp(0.0, 1.0);
    for i in 0..=4 {
        let v = (lo + (hi - lo) * f64::from(i) / 4.0).exp();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}{}</text>",
            x(v),
            H - BOTTOM + 16.0,
            fmt_num(v),
            esc(x_unit)
        );
    }
    for (si, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[si % PALETTE.len()];
        let mut d = String::new();
        for (i, (px, py)) in pts.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, x(*px), y(*py));
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{}</title></circle>",
                x(*px),
                y(*py),
                esc(&format!("{name} at {}{x_unit}: {:.1} %", fmt_num(*px), py * 100.0))
            );
        }
        let _ = write!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" stroke-dasharray=\"{}\"/>",
            DASHES[si % DASHES.len()]
        );
    }
    for (i, (label, v)) in vlines.iter().enumerate() {
        // Labels right of their line, or left of it near the right edge; staggered.
        let right_edge = x(*v) > LEFT + 0.7 * pw;
        let _ = write!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{1:.1}\" stroke=\"#555\" stroke-dasharray=\"3 3\"/><text x=\"{2:.1}\" y=\"{3:.1}\" fill=\"#333\" text-anchor=\"{5}\">{4}</text>",
            x(*v),
            TOP + ph,
            if right_edge { x(*v) - 3.0 } else { x(*v) + 3.0 },
            TOP + ph - 6.0 - 13.0 * i as f64,
            esc(label),
            if right_edge { "end" } else { "start" }
        );
    }
    for (label, v) in hlines {
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{0}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"#555\" stroke-dasharray=\"1 3\"/><text x=\"{2}\" y=\"{3:.1}\" fill=\"#333\">{4}</text>",
            W - RIGHT,
            y(*v),
            LEFT + 4.0,
            y(*v) - 3.0,
            esc(label)
        );
    }
    legend(&mut s, &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    s.push_str("</svg>");
    s
}

/// The lower end of a zoomed [lo, 1] scale that shows every value and target.
fn zoom_floor(values: impl Iterator<Item = f64>) -> f64 {
    let min = values.fold(1.0f64, f64::min);
    [0.999, 0.995, 0.99, 0.95, 0.9, 0.5, 0.0].into_iter().find(|lo| min - (1.0 - lo) * 0.1 >= *lo).unwrap_or(0.0)
}

/// Horizontal bars of values in [0, 1] against a target each (a tick), e.g. SLI vs objective,
/// on a scale zoomed to [lo, 1] so that 99.9 % and 99 % look different.
pub(crate) fn bars_with_targets(title: &str, items: &[(String, f64, Option<f64>)]) -> String {
    let row = 22.0;
    let height = TOP + BOTTOM + row * items.len().max(1) as f64;
    let mut s = open(title, height);
    let left = 220.0;
    let pw = W - left - 80.0;
    let lo = zoom_floor(items.iter().flat_map(|(_, v, t)| std::iter::once(*v).chain(*t)));
    let x = |v: f64| left + pw * ((v - lo) / (1.0 - lo)).clamp(0.0, 1.0);
    for (i, (label, v, target)) in items.iter().enumerate() {
        let y = TOP + row * i as f64;
        let met = target.is_none_or(|t| *v >= t);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" fill=\"{}\"><title>{}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{:.2} %{}</text>",
            left - 6.0,
            y + 11.0,
            esc(label),
            y,
            x(*v) - left,
            if met { PALETTE[2] } else { PALETTE[3] },
            esc(&format!("{label}: {:.3} %", v * 100.0)),
            left + pw + 4.0,
            y + 11.0,
            v * 100.0,
            if met { "" } else { " ✗" }
        );
        if let Some(t) = target {
            let tx = x(*t);
            let _ = write!(
                s,
                "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-width=\"2\"/>",
                y - 2.0,
                y + 16.0
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"{left}\" y=\"{:.1}\">scale {:.1} % to 100 %; bar: SLI (green met, vermillion missed); black tick: objective</text>",
        height - 12.0,
        lo * 100.0
    );
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_draws() {
        assert_eq!(esc("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
        let c = curves("t<", "MiB", &[("lru".into(), vec![(1.0, 0.1), (10.0, 0.5)])], &[("now".into(), 4.0)], &[]);
        assert!(c.starts_with("<svg") && c.ends_with("</svg>") && c.contains("t&lt;"));
        assert!(!c.contains("NaN"));
        let p = pareto("p", &[("a".into(), 10), ("b".into(), 5)], 15);
        assert!(p.contains("<rect") && !p.contains("NaN"));
        let l = lines("l", &["d1".into()], &[("x".into(), vec![Some(1.0)])], " ms");
        assert!(l.contains("<circle") && !l.contains("NaN"));
    }
}
