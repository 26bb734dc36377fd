//! `report.html`: the run's report as one self-contained page (contract:
//! docs/eval.md). Inline CSS, plots drawn by `plotters`' SVG backend and
//! inlined as `<svg>` elements, thumbnails inlined as `data:` URLs read from
//! the run folder's `thumbs/` ([`thumb_name`]); nothing is fetched from
//! anywhere when the page opens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{CaseRecord, GroupSummary, Selections, Summary};
use crate::stats::{mean_ci95, spearman, Interval};

/// How many of the cases made worse are shown.
const WORST: usize = 10;

/// Thumbnails larger than this are not inlined (they are meant to be
/// ≤ 256 px PNGs, a few tens of KiB).
const MAX_THUMB_BYTES: u64 = 2 * 1024 * 1024;

/// The selection rules, in the order plotted and tabulated.
const RULES: [&str; 4] = ["first turn", "last turn", "service", "best turn (ceiling)"];

/// The file name, under the run folder's `thumbs/`, of the thumbnail of a
/// case's turn: `{case_id}-t{turn}.png`, every character of the id outside
/// `[A-Za-z0-9._-]` replaced by `_`.
pub fn thumb_name(case_id: &str, turn: u32) -> String {
    let id: String = case_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{id}-t{turn}.png")
}

/// `report.html` of a run whose folder is `out` (thumbnails are read from
/// `out/thumbs/`; a missing one shows as a placeholder).
pub fn render(summary: &Summary, cases: &[CaseRecord], out: &Path) -> anyhow::Result<String> {
    let mut page = String::from(HEAD);
    let _ = writeln!(
        page,
        "<h1>Evaluation report</h1>\n<p class=\"lead\">{} cases judged, {} not succeeded; \
         {} editor calls, {:.4} {} spent.</p>",
        summary.cases,
        summary.failed,
        summary.editor_calls,
        summary.cost,
        esc(&summary.currency)
    );
    by_turn_section(&mut page, summary, cases)?;
    selections_section(&mut page, summary)?;
    cost_section(&mut page, summary);
    agreement_section(&mut page, summary, cases)?;
    worst_section(&mut page, cases, out);
    page.push_str("</body>\n</html>\n");
    Ok(page)
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Evaluation report</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.lead { color: #555; }
.note { color: #777; font-style: italic; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; vertical-align: middle; }
th { background: #f4f4f4; }
td.l, th.l { text-align: left; }
svg { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figure img, .ph { width: 128px; height: 128px; object-fit: contain; background: #f4f4f4; display: block; }
.ph { display: flex; align-items: center; justify-content: center; color: #999; font-size: 0.8em; border: 1px dashed #ccc; }
figcaption { font-size: 0.8em; color: #555; text-align: center; }
.neg { color: #b00; }
</style>
</head>
<body>
"#;

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

fn group_name(group: &str) -> &str {
    if group.is_empty() {
        "(none)"
    } else {
        group
    }
}

fn interval(i: &Interval) -> String {
    format!("{:.2} [{:.2}, {:.2}]", i.mean, i.lo, i.hi)
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

/// An HTML table; the first column is left-aligned.
fn table(page: &mut String, head: &[&str], rows: &[Vec<String>]) {
    page.push_str("<table>\n<tr>");
    for (i, h) in head.iter().enumerate() {
        let class = if i == 0 { " class=\"l\"" } else { "" };
        let _ = write!(page, "<th{class}>{}</th>", esc(h));
    }
    page.push_str("</tr>\n");
    for row in rows {
        page.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if i == 0 { " class=\"l\"" } else { "" };
            let _ = write!(page, "<td{class}>{cell}</td>");
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}

/// One plot: `draw` paints on an SVG drawing area of `size`; the result is
/// an inline `<svg>` element (without the namespace attribute, which
/// inline SVG in HTML does not need).
fn plot(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

/// O is on 0–10: interval ends outside are clipped to it in the plots.
fn clip(v: f64) -> f64 {
    v.clamp(0.0, 10.0)
}

fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// The cases by group (`""` for none).
fn groups_of(cases: &[CaseRecord]) -> BTreeMap<&str, Vec<&CaseRecord>> {
    let mut groups: BTreeMap<&str, Vec<&CaseRecord>> = BTreeMap::new();
    for case in cases {
        let group = case.group.as_deref().unwrap_or("");
        groups.entry(group).or_default().push(case);
    }
    groups
}

/// Turn → mean judge O of each group's cases.
fn by_turn_per_group(cases: &[CaseRecord]) -> Vec<(String, BTreeMap<u32, Interval>)> {
    groups_of(cases)
        .into_iter()
        .map(|(group, members)| {
            let mut values: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for turn in members.iter().flat_map(|c| &c.turns) {
                values.entry(turn.index).or_default().push(turn.judge.o);
            }
            let turns = values
                .into_iter()
                .filter_map(|(t, v)| Some((t, mean_ci95(&v)?)))
                .collect();
            (group_name(group).to_string(), turns)
        })
        .collect()
}

fn by_turn_section(
    page: &mut String,
    summary: &Summary,
    cases: &[CaseRecord],
) -> anyhow::Result<()> {
    page.push_str("<h2 id=\"by-turn\">Judge O by turn</h2>\n");
    let (Some(&first_turn), Some(&max_turn)) =
        (summary.by_turn.keys().next(), summary.by_turn.keys().last())
    else {
        page.push_str("<p class=\"note\">No judged turns.</p>\n");
        return Ok(());
    };
    page.push_str(
        "<p>Mean judge O of the cases that reached each turn, with its 95 % interval \
         (clipped to 0–10), overall (black) and per group.</p>\n",
    );
    let mut series: Vec<(String, BTreeMap<u32, Interval>)> =
        vec![("all".to_string(), summary.by_turn.clone())];
    if summary.by_group.len() > 1 {
        series.extend(by_turn_per_group(cases));
    }
    let svg = plot((900, 420), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Judge O by turn (mean, 95 % interval)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d(first_turn as f64 - 0.5..max_turn as f64 + 0.5, 0.0..10.0)?;
        chart
            .configure_mesh()
            .x_labels((max_turn - first_turn) as usize + 2)
            .x_label_formatter(&|x| {
                // Turns only: no label between two.
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .x_desc("turn")
            .y_desc("judge O")
            .light_line_style(WHITE)
            .draw()?;
        let spread = 0.3 / series.len() as f64;
        for (k, (name, turns)) in series.iter().enumerate() {
            let dx = (k as f64 - (series.len() - 1) as f64 / 2.0) * spread;
            let c = if k == 0 { BLACK } else { color(k - 1) };
            let points: Vec<(f64, &Interval)> =
                turns.iter().map(|(t, i)| (*t as f64 + dx, i)).collect();
            chart.draw_series(points.iter().map(|(x, i)| {
                ErrorBar::new_vertical(*x, clip(i.lo), i.mean, clip(i.hi), c.filled(), 8)
            }))?;
            let width = if k == 0 { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(x, i)| (*x, i.mean)),
                    c.stroke_width(width),
                ))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        Ok(())
    })?;
    page.push_str(&svg);
    let rows: Vec<Vec<String>> = summary
        .by_turn
        .iter()
        .map(|(t, i)| vec![t.to_string(), i.n.to_string(), interval(i)])
        .collect();
    table(page, &["turn", "cases", "O (mean [95 % interval])"], &rows);
    Ok(())
}

fn rules(s: &Selections<Interval>) -> [Interval; 4] {
    [s.first, s.last, s.service, s.oracle]
}

fn selections_section(page: &mut String, summary: &Summary) -> anyhow::Result<()> {
    page.push_str("<h2 id=\"selections\">Selection rules</h2>\n");
    let Some(all) = summary.selections else {
        page.push_str("<p class=\"note\">No judged cases.</p>\n");
        return Ok(());
    };
    page.push_str(
        "<p>What each rule would have returned, as the judge's mean O with its 95 % \
         interval: the first turn (the editor alone), the last turn (the paper's rule), \
         the service's selection, and the judge's best turn (the ceiling of any rule).</p>\n",
    );
    let bars = rules(&all);
    let svg = plot((900, 400), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Selection rules, all cases (mean judge O, 95 % interval)",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d((0usize..RULES.len()).into_segmented(), 0.0..10.0)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    RULES.get(*i).copied().unwrap_or("").to_string()
                }
                SegmentValue::Last => String::new(),
            })
            .y_desc("judge O")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.mean),
                ],
                color(i).mix(0.75).filled(),
            );
            bar.set_margin(0, 0, 30, 30);
            bar
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            ErrorBar::new_vertical(
                SegmentValue::CenterOf(i),
                clip(b.lo),
                b.mean,
                clip(b.hi),
                BLACK.filled().stroke_width(2),
                12,
            )
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!("{:.2}", b.mean),
                (SegmentValue::CenterOf(i), (clip(b.hi) + 0.15).min(9.5)),
                ("sans-serif", 16)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
        Ok(())
    })?;
    page.push_str(&svg);
    let overall = GroupSummary {
        cases: summary.cases,
        selections: summary.selections,
        spearman_thinker_judge: summary.spearman_thinker_judge,
    };
    let rows: Vec<Vec<String>> = std::iter::once(("all", &overall))
        .chain(summary.by_group.iter().map(|(g, s)| (group_name(g), s)))
        .filter_map(|(name, g)| {
            let s = g.selections.as_ref()?;
            let mut row = vec![esc(name), g.cases.to_string()];
            row.extend(rules(s).iter().map(interval));
            Some(row)
        })
        .collect();
    let mut head = vec!["group", "cases"];
    head.extend(RULES);
    table(page, &head, &rows);
    Ok(())
}

fn cost_section(page: &mut String, summary: &Summary) {
    page.push_str(
        "<h2 id=\"cost\">Cost</h2>\n<p>What the thinking cost per point of judge O the \
         service's selection gained over the first turn (n/a without a gain).</p>\n",
    );
    let per_case = |total: f64| {
        if summary.cases == 0 {
            "n/a".to_string()
        } else {
            format!("{:.4}", total / summary.cases as f64)
        }
    };
    let gain = summary.selections.map(|s| s.service.mean - s.first.mean);
    let currency = esc(&summary.currency);
    let rows = vec![
        vec![
            "editor calls".to_string(),
            summary.editor_calls.to_string(),
            per_case(summary.editor_calls as f64),
        ],
        vec![
            format!("cost ({currency})"),
            format!("{:.4}", summary.cost),
            per_case(summary.cost),
        ],
        vec![
            "O gained over the first turn".to_string(),
            String::new(),
            opt(gain, 2),
        ],
        vec![
            "editor calls per point of O".to_string(),
            String::new(),
            opt(summary.editor_calls_per_point, 2),
        ],
        vec![
            format!("cost per point of O ({currency})"),
            String::new(),
            opt(summary.cost_per_point, 4),
        ],
    ];
    table(page, &["", "total", "per case"], &rows);
}

/// `(score, judge O)` of every turn that has a score.
fn pairs<'a>(
    cases: impl Iterator<Item = &'a CaseRecord>,
    score: fn(&crate::report::TurnRecord) -> Option<f64>,
) -> Vec<(f64, f64)> {
    cases
        .flat_map(|c| c.turns.iter())
        .filter_map(|t| Some((score(t)?, t.judge.o)))
        .collect()
}

fn thinker_score(t: &crate::report::TurnRecord) -> Option<f64> {
    t.thinker.overall
}

fn verifier_score(t: &crate::report::TurnRecord) -> Option<f64> {
    t.verifier
}

fn rho_of(pairs: &[(f64, f64)]) -> Option<f64> {
    let (a, b): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    spearman(&a, &b)
}

/// A scatter of `(score, judge O)` pairs with ρ in its title.
fn scatter(
    who: &str,
    points: &[(f64, f64)],
    rho: Option<f64>,
    c: RGBColor,
) -> anyhow::Result<String> {
    let hi = points.iter().map(|p| p.0).fold(10.0_f64, f64::max).ceil();
    let lo = points.iter().map(|p| p.0).fold(0.0_f64, f64::min).floor();
    let title = format!(
        "{who} vs judge O (Spearman ρ = {}, n = {})",
        opt(rho, 3),
        points.len()
    );
    plot((540, 440), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d(lo..hi, 0.0..10.0)?;
        chart
            .configure_mesh()
            .x_desc(format!("{who} overall"))
            .y_desc("judge O")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, c.mix(0.55).filled())),
        )?;
        Ok(())
    })
}

fn agreement_section(
    page: &mut String,
    summary: &Summary,
    cases: &[CaseRecord],
) -> anyhow::Result<()> {
    page.push_str(
        "<h2 id=\"agreement\">Agreement with the judge</h2>\n<p>Each critiqued turn's \
         overall score against the judge's O; Spearman's ρ measures how well the scores \
         rank turns alike.</p>\n",
    );
    let thinker = pairs(cases.iter(), thinker_score);
    let verifier = pairs(cases.iter(), verifier_score);
    if thinker.is_empty() && verifier.is_empty() {
        page.push_str("<p class=\"note\">No turn was scored by the thinker or a verifier.</p>\n");
        return Ok(());
    }
    page.push_str("<div class=\"plots\">\n");
    if !thinker.is_empty() {
        page.push_str(&scatter(
            "thinker",
            &thinker,
            summary.spearman_thinker_judge,
            color(0),
        )?);
    }
    if !verifier.is_empty() {
        page.push_str(&scatter(
            "verifier",
            &verifier,
            summary.spearman_verifier_judge,
            color(1),
        )?);
    }
    page.push_str("</div>\n");
    let with_verifier = !verifier.is_empty();
    let row = |name: &str, members: &[&CaseRecord], thinker_rho: Option<f64>| {
        let t = pairs(members.iter().copied(), thinker_score);
        let mut row = vec![esc(name), t.len().to_string(), opt(thinker_rho, 3)];
        if with_verifier {
            let v = pairs(members.iter().copied(), verifier_score);
            row.extend([v.len().to_string(), opt(rho_of(&v), 3)]);
        }
        row
    };
    let everyone: Vec<&CaseRecord> = cases.iter().collect();
    let mut rows = vec![row("all", &everyone, summary.spearman_thinker_judge)];
    rows.extend(groups_of(cases).iter().map(|(g, members)| {
        let rho = summary
            .by_group
            .get(*g)
            .and_then(|s| s.spearman_thinker_judge);
        row(group_name(g), members, rho)
    }));
    let mut head = vec!["group", "turns", "ρ thinker–judge"];
    if with_verifier {
        head.extend(["verified turns", "ρ verifier–judge"]);
    }
    table(page, &head, &rows);
    Ok(())
}

/// A case the service's selection made worse than its first turn.
struct Worse<'a> {
    case: &'a CaseRecord,
    first_turn: u32,
    first: f64,
    selected_turn: u32,
    selected: f64,
}

/// The cases whose service selection the judge scored below their first
/// turn, most negative change first.
fn made_worse(cases: &[CaseRecord]) -> Vec<Worse<'_>> {
    let mut worse: Vec<Worse<'_>> = cases
        .iter()
        .filter_map(|case| {
            let first = case.turns.first()?;
            let last = case.turns.last()?;
            let chosen = case
                .selected_turn
                .and_then(|n| case.turns.iter().find(|t| t.index == n))
                .unwrap_or(last);
            Some(Worse {
                case,
                first_turn: first.index,
                first: first.judge.o,
                selected_turn: chosen.index,
                selected: chosen.judge.o,
            })
        })
        .filter(|w| w.selected < w.first)
        .collect();
    worse.sort_by(|a, b| (a.selected - a.first).total_cmp(&(b.selected - b.first)));
    worse
}

/// A thumbnail as an inline `<img>`, or a placeholder when the run folder
/// has no PNG for it.
fn thumbnail(out: &Path, case_id: &str, turn: u32) -> String {
    let path = out.join("thumbs").join(thumb_name(case_id, turn));
    let png = std::fs::metadata(&path)
        .ok()
        .filter(|m| m.is_file() && m.len() <= MAX_THUMB_BYTES)
        .and_then(|_| std::fs::read(&path).ok())
        .filter(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let body = match png {
        Some(bytes) => format!(
            "<img alt=\"turn {turn}\" src=\"data:image/png;base64,{}\">",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        None => "<div class=\"ph\">no image</div>".to_string(),
    };
    format!("<figure>{body}<figcaption>turn {turn}</figcaption></figure>")
}

fn worst_section(page: &mut String, cases: &[CaseRecord], out: &Path) {
    let worse = made_worse(cases);
    let _ = writeln!(
        page,
        "<h2 id=\"worse\">Cases made worse than turn 1</h2>\n<p>{} cases whose service \
         selection the judge scored below their first turn; the {} worst (selected turn's \
         O minus the first turn's), most negative first.</p>",
        worse.len(),
        WORST.min(worse.len())
    );
    if worse.is_empty() {
        page.push_str("<p class=\"note\">None.</p>\n");
        return;
    }
    let rows: Vec<Vec<String>> = worse
        .iter()
        .take(WORST)
        .enumerate()
        .map(|(rank, w)| {
            let c = w.case;
            let instruction = c.turns.first().map_or("", |t| t.instruction.as_str());
            vec![
                format!(
                    "{}. <b class=\"case\">{}</b><br><small>{} · job {}</small><br><small>{}</small>",
                    rank + 1,
                    esc(&c.id),
                    esc(group_name(c.group.as_deref().unwrap_or(""))),
                    esc(&c.job_id),
                    esc(instruction)
                ),
                format!("{:.2}", w.first),
                format!("{:.2} (turn {})", w.selected, w.selected_turn),
                format!("<span class=\"neg\">{:+.2}</span>", w.selected - w.first),
                thumbnail(out, &c.id, w.first_turn),
                thumbnail(out, &c.id, w.selected_turn),
            ]
        })
        .collect();
    table(
        page,
        &[
            "case",
            "first turn O",
            "selected O",
            "change",
            "first turn",
            "selected turn",
        ],
        &rows,
    );
}
