//! The HTML page: inline CSS and SVG, the montage as a data URI, so one file travels alone.

use std::fmt::Write;

use base64::Engine;

use crate::plots::{colour_hex, embedding_map, line_chart, Series};
use crate::{Report, ReportError, RunResult};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
.summary{color:#555;margin:2px 0}
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 8px;border:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td.name,th.name{text-align:left}
.gain{color:#1a7f37;font-size:85%}.loss{color:#b42318;font-size:85%}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}
figcaption{color:#555;font-size:90%;max-width:560px}
table.heat td{width:34px;height:22px;font-size:80%;text-align:center;border:1px solid #fff}
table.heat th{font-size:80%;font-weight:normal;background:none;border:none}
table.heat th.row{text-align:right;white-space:nowrap}
.legend span{display:inline-block;margin:2px 10px 2px 0;font-size:90%}
.legend i{display:inline-block;width:11px;height:11px;border-radius:6px;margin-right:4px;vertical-align:-1px}
img.montage{image-rendering:pixelated;max-width:100%}";

/// Difference from the previous row, coloured.
fn gain(now: f64, before: Option<f64>) -> String {
    match before {
        Some(b) => {
            let d = now - b;
            format!(
                " <span class=\"{}\">({}{d:.1})</span>",
                if d >= 0.0 { "gain" } else { "loss" },
                if d >= 0.0 { "+" } else { "" }
            )
        }
        None => String::new(),
    }
}

fn results_table(report: &Report, out: &mut String) {
    let has_novel = report.runs.iter().any(|r| r.novel.is_some());
    let has_zero = report.runs.iter().any(|r| r.novel.as_ref().is_some_and(|n| n.zero_shot.is_some()));
    out.push_str("<table><tr><th class=\"name\" rowspan=2>model</th><th colspan=4>drug identification</th><th colspan=4>MoA recognition</th>");
    if has_novel {
        out.push_str(&format!("<th colspan={}>novel drugs: MoA named right</th>", if has_zero { 2 } else { 1 }));
    }
    out.push_str("<th rowspan=2>training</th></tr><tr>");
    for _ in 0..2 {
        out.push_str("<th>mAP</th><th>rank-1</th><th>rank-5</th><th>rank-10</th>");
    }
    if has_novel {
        out.push_str("<th>video vote</th>");
        if has_zero {
            out.push_str("<th>zero-shot from structure (top-1 / top-3; chance)</th>");
        }
    }
    out.push_str("</tr>");
    let mut prev: Option<&RunResult> = None;
    for r in &report.runs {
        let _ = write!(
            out,
            "<tr><td class=\"name\"><b>{}</b> <span class=\"summary\">{}</span></td>",
            esc(&r.kind),
            esc(&r.name)
        );
        for (task, before) in [(&r.drug, prev.map(|p| p.drug.map)), (&r.moa, prev.map(|p| p.moa.map))] {
            let _ = write!(
                out,
                "<td><b>{:.2}</b>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>",
                task.map,
                gain(task.map, before),
                task.rank1,
                task.rank5,
                task.rank10
            );
        }
        if has_novel {
            match &r.novel {
                Some(n) => {
                    match n.video_vote {
                        Some(v) => write!(out, "<td>{v:.0}% of {}</td>", n.drugs),
                        None => write!(out, "<td>{} drugs, MoA unknown: not scored</td>", n.drugs),
                    }
                    .ok();
                    if has_zero {
                        match n.zero_shot {
                            Some([t1, t3, c1, c3]) => {
                                let _ = write!(out, "<td>{t1:.0}% / {t3:.0}% (chance {c1:.0}% / {c3:.0}%)</td>");
                            }
                            None => out.push_str("<td>-</td>"),
                        }
                    }
                }
                None => out.push_str(if has_zero { "<td>-</td><td>-</td>" } else { "<td>-</td>" }),
            }
        }
        let _ = write!(out, "<td>{}</td></tr>", r.train_seconds.map_or("-".into(), |s| format!("{s:.0} s")));
        prev = Some(r);
    }
    out.push_str("</table><p class=\"summary\">mAP and CMC in percent, MitoReID protocol: cosine distance; gallery videos of the query's drug in the query's replicate are left out, so drug identification must find the drug in other replicates. In brackets: the gain over the row above, in mAP points.</p>");
}

/// Moving average over a window, so noisy per-step losses read as curves.
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, p) in points.iter().enumerate() {
        sum += p.1;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push((p.0, sum / (i + 1).min(w) as f64));
    }
    out
}

/// The run's loss curves and, when it was validated, its validation curves, with captions.
fn curves(r: &RunResult) -> Result<Vec<(String, String)>, ReportError> {
    if r.curves.is_empty() {
        return Ok(Vec::new());
    }
    let window = (r.curves.len() / 40).max(1);
    let mut series = vec![Series {
        name: "total".into(),
        points: smooth(&r.curves.iter().map(|c| (c.step, c.loss)).collect::<Vec<_>>(), window),
    }];
    let names: Vec<String> = r.curves[0].terms.iter().map(|t| t.0.clone()).collect();
    for name in names {
        let pts: Vec<(f64, f64)> =
            r.curves.iter().filter_map(|c| c.terms.iter().find(|t| t.0 == name).map(|t| (c.step, t.1))).collect();
        series.push(Series { name, points: smooth(&pts, window) });
    }
    let mut charts = vec![(
        line_chart(&format!("{}: training loss", r.kind), "step", "loss (moving average)", &series, None)?,
        format!(
            "{} ({}): the total loss and each weighted term, drug stage then MoA stage.",
            esc(&r.kind),
            esc(&r.name)
        ),
    )];
    let val: Vec<(f64, (f64, f64))> = r.curves.iter().filter_map(|c| c.validation.map(|v| (c.step, v))).collect();
    if !val.is_empty() {
        let s = vec![
            Series { name: "drug mAP".into(), points: val.iter().map(|(x, v)| (*x, v.0)).collect() },
            Series { name: "MoA mAP".into(), points: val.iter().map(|(x, v)| (*x, v.1)).collect() },
        ];
        charts.push((
            line_chart(&format!("{}: validation", r.kind), "step", "mAP %", &s, None)?,
            format!("{}: drug and MoA mAP on the query and gallery videos after each epoch.", esc(&r.kind)),
        ));
    }
    Ok(charts)
}

/// A colour from white to blue for a value in [0, 1].
fn heat(v: f64) -> String {
    let v = v.clamp(0.0, 1.0);
    let mix = |white: f64, full: f64| (white + (full - white) * v).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(255.0, 8.0), mix(255.0, 69.0), mix(255.0, 148.0))
}

fn heat_table(
    rows: &[String],
    cols: &[String],
    values: &[Vec<f64>],
    labels: &dyn Fn(usize, usize) -> String,
    out: &mut String,
) {
    let max = values.iter().flatten().copied().fold(0.0f64, f64::max).max(1e-12);
    out.push_str("<table class=\"heat\"><tr><th></th>");
    for c in cols {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr>");
    for (i, name) in rows.iter().enumerate() {
        let _ = write!(out, "<tr><th class=\"row\">{}</th>", esc(name));
        for (j, v) in values[i].iter().enumerate() {
            let text_colour = if v / max > 0.55 { "#fff" } else { "#222" };
            let _ = write!(out, "<td style=\"background:{};color:{text_colour}\">{}</td>", heat(v / max), labels(i, j));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn moa_legend(report: &Report, out: &mut String) {
    out.push_str("<div class=\"legend\">");
    for (i, m) in report.moas.iter().enumerate() {
        let _ = write!(out, "<span><i style=\"background:{}\"></i>{}</span>", colour_hex(i), esc(m));
    }
    out.push_str("</div>");
}

fn figure(svg: &str, caption: &str, out: &mut String) {
    let _ = write!(out, "<figure>{svg}<figcaption>{caption}</figcaption></figure>");
}

/// The report as one self-contained HTML page (inline SVG plots).
pub fn render(report: &Report) -> Result<String, ReportError> {
    if report.runs.is_empty() {
        return Err(ReportError::Input("a report needs at least one run".into()));
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&report.title)
    );
    let _ = write!(out, "<h1>{}</h1>", esc(&report.title));
    for line in &report.summary {
        let _ = write!(out, "<p class=\"summary\">{}</p>", esc(line));
    }

    out.push_str("<h2>Results</h2>");
    results_table(report, &mut out);

    out.push_str("<h2>CMC curves</h2><div class=\"grid\">");
    for (task, pick) in [("drug identification", 0), ("MoA recognition", 1)] {
        let series: Vec<Series> = report
            .runs
            .iter()
            .map(|r| {
                let cmc = if pick == 0 { &r.drug.cmc } else { &r.moa.cmc };
                Series {
                    name: r.kind.clone(),
                    points: cmc.iter().enumerate().map(|(k, v)| ((k + 1) as f64, *v)).collect(),
                }
            })
            .collect();
        figure(
            &line_chart(&format!("CMC, {task}"), "rank", "share of queries matched (%)", &series, Some(100.0))?,
            &format!("{task}: the share of queries whose first true match is within the top k."),
            &mut out,
        );
    }
    out.push_str("</div>");

    out.push_str("<h2>Training</h2><div class=\"grid\">");
    for r in &report.runs {
        for (svg, caption) in curves(r)? {
            figure(&svg, &caption, &mut out);
        }
    }
    out.push_str("</div>");

    if report.runs.iter().any(|r| r.map.is_some()) {
        out.push_str("<h2>Embedding map</h2>");
        moa_legend(report, &mut out);
        out.push_str("<div class=\"grid\">");
        for r in &report.runs {
            if let Some(m) = &r.map {
                let caption = format!(
                    "{}: t-SNE of {}, coloured by MoA. Dots are videos{}.",
                    esc(&r.kind),
                    esc(&m.space),
                    if m.points.iter().any(|p| p.molecule) {
                        "; outlined triangles are the drugs' molecules, placed by the molecule encoder"
                    } else {
                        ""
                    }
                );
                figure(&embedding_map(&format!("{}: embedding map", r.kind), &m.points)?, &caption, &mut out);
            }
        }
        out.push_str("</div>");
    }

    if report.runs.iter().any(|r| r.confusion.is_some()) {
        out.push_str("<h2>MoA confusion</h2><div class=\"grid\">");
        let short: Vec<String> = (1..=report.moas.len()).map(|i| i.to_string()).collect();
        let named: Vec<String> = report.moas.iter().enumerate().map(|(i, m)| format!("{} {}", i + 1, m)).collect();
        for r in &report.runs {
            if let Some(c) = &r.confusion {
                out.push_str("<figure>");
                let values: Vec<Vec<f64>> =
                    c.counts.iter().map(|row| row.iter().map(|&v| v as f64).collect()).collect();
                let counts = &c.counts;
                heat_table(
                    &named,
                    &short,
                    &values,
                    &|i, j| if counts[i][j] > 0 { counts[i][j].to_string() } else { String::new() },
                    &mut out,
                );
                let _ = write!(
                    out,
                    "<figcaption>{}: rows are the true MoA, columns the predicted one ({}).</figcaption></figure>",
                    esc(&r.kind),
                    esc(&c.method)
                );
            }
        }
        out.push_str("</div>");
    }

    if report.runs.iter().any(|r| r.attention.is_some()) {
        out.push_str("<h2>Which time points mattered</h2><div class=\"grid\">");
        for r in &report.runs {
            if let Some(a) = &r.attention {
                out.push_str("<figure>");
                heat_table(&report.moas, &a.steps, &a.weights, &|i, j| format!("{:.2}", a.weights[i][j]), &mut out);
                let _ = write!(
                    out,
                    "<figcaption>{}: mean temporal attention weight per MoA over the encoder's time steps (columns: the frames each step covers); a row sums to 1.</figcaption></figure>",
                    esc(&r.kind)
                );
            }
        }
        out.push_str("</div>");
    }

    if let Some(png) = &report.montage_png {
        let _ = write!(
            out,
            "<h2>Example videos</h2><figure><img class=\"montage\" alt=\"montage\" src=\"data:image/png;base64,{}\"><figcaption>One training cell per MoA, frames across the movie (the cell that changes most among a few).</figcaption></figure>",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attention, Confusion, CurvePoint, EmbeddingMap, NovelResult, TaskResult};

    fn run(kind: &str, drug: f64, moa: f64) -> RunResult {
        let task =
            |m: f64| TaskResult { map: m, rank1: m, rank5: m + 1.0, rank10: m + 2.0, cmc: vec![m, m + 1.0, m + 2.0] };
        RunResult {
            name: format!("runs/{kind}"),
            kind: kind.into(),
            drug: task(drug),
            moa: task(moa),
            curves: (0..10)
                .map(|s| CurvePoint {
                    step: s as f64,
                    loss: 5.0 - s as f64 * 0.3,
                    terms: vec![("ce".into(), 1.0)],
                    validation: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_page_holds_every_section_and_the_gains() {
        let mut mol = run("molclip", 30.0, 60.0);
        mol.map = Some(EmbeddingMap {
            space: "the shared space".into(),
            points: vec![
                crate::plots::MapPoint { x: 0.0, y: 1.0, category: 0, molecule: false },
                crate::plots::MapPoint { x: 1.0, y: 0.0, category: 1, molecule: true },
            ],
        });
        mol.confusion = Some(Confusion { counts: vec![vec![3, 1], vec![0, 4]], method: "10-NN vote".into() });
        mol.attention = Some(Attention {
            steps: vec!["1-8".into(), "9-16".into()],
            weights: vec![vec![0.25, 0.75], vec![0.5, 0.5]],
        });
        mol.novel = Some(NovelResult { drugs: 2, video_vote: Some(50.0), zero_shot: Some([50.0, 100.0, 50.0, 100.0]) });
        let report = Report {
            title: "demo <report>".into(),
            summary: vec!["seed 0".into()],
            moas: vec!["DMSO".into(), "uncoupler".into()],
            runs: vec![run("video-only", 20.0, 55.5), mol],
            montage_png: Some(vec![137, 80, 78, 71]),
        };
        let html = render(&report).unwrap();
        for needle in [
            "demo &lt;report&gt;",
            "(+10.0)",
            "(+4.5)",
            "CMC, drug identification",
            "embedding map",
            "uncoupler",
            "0.75",
            "50% / 100%",
            "data:image/png;base64,iVBORw==",
            "10-NN vote",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert!(!html.contains("<report>"), "titles are escaped");
        let mut worse = report.clone();
        worse.runs[1].moa.map = 50.0;
        assert!(render(&worse).unwrap().contains("class=\"loss\">(-5.5)"));
    }

    #[test]
    fn an_empty_report_is_refused_and_smoothing_averages() {
        assert!(render(&Report::default()).is_err());
        let s = smooth(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)], 2);
        assert_eq!(s, vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]);
        assert_eq!(heat(0.0), "#ffffff");
        assert_eq!(heat(1.0), "#084594");
    }
}
