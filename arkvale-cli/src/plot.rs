//! PNG plots of `arkvale eval` and `arkvale bench` results with `plotters` (bitmap backend;
//! text drawn with ab_glyph from the DejaVu Sans bytes the `dejavu` crate embeds, so no system
//! fonts are needed).

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Result, anyhow};
use arkvale_eval::Record;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu Sans font does not load"));
    });
    result
}

fn err<E: std::fmt::Debug>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e:?}", path.display())
}

/// A named series of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Distinct colours for up to a dozen series (then repeating).
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// A line plot with markers and a legend.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    register_font()?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(());
    }
    if x0 == x1 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let pad = ((y1 - y0) * 0.08).max(1e-6);
        (y0 - pad, y1 + pad)
    });
    let pad = (x1 - x0) * 0.04;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0 - pad..x1 + pad, y0..y1)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .draw()
        .map_err(err(path))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err(path))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err(path))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// A depth × context heatmap of accuracy in [0, 1] (red 0 → green 1), the value in each cell.
pub fn heatmap(
    path: &Path,
    title: &str,
    depths: &[f64],
    contexts: &[usize],
    value: impl Fn(usize, usize) -> Option<f64>,
) -> Result<()> {
    register_font()?;
    let root =
        BitMapBackend::new(path, (760, 120 + 70 * contexts.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            -0.5..depths.len() as f64 - 0.5,
            -0.5..contexts.len() as f64 - 0.5,
        )
        .map_err(err(path))?;
    // Cell i spans [i - 0.5, i + 0.5]: integer ticks fall on cell centres.
    let at = |v: f64, n: usize| {
        let i = v.round();
        ((v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n).then_some(i as usize)
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("needle depth")
        .y_desc("context (tokens)")
        .x_labels(depths.len())
        .y_labels(contexts.len())
        .x_label_formatter(&|v| {
            at(*v, depths.len()).map_or(String::new(), |i| format!("{:.0}%", depths[i] * 100.0))
        })
        .y_label_formatter(&|v| {
            at(*v, contexts.len()).map_or(String::new(), |i| contexts[i].to_string())
        })
        .label_style((FONT, 13))
        .draw()
        .map_err(err(path))?;
    let mut cells = Vec::new();
    for ci in 0..contexts.len() {
        for di in 0..depths.len() {
            if let Some(v) = value(ci, di) {
                cells.push((di as f64, ci as f64, v));
            }
        }
    }
    chart
        .draw_series(cells.iter().map(|&(x, y, v)| {
            let c = RGBColor(
                (230.0 * (1.0 - v) + 40.0 * v) as u8,
                (60.0 * (1.0 - v) + 170.0 * v) as u8,
                (60.0 * (1.0 - v) + 80.0 * v) as u8,
            );
            Rectangle::new([(x - 0.48, y - 0.48), (x + 0.48, y + 0.48)], c.filled())
        }))
        .map_err(err(path))?;
    let centered = TextStyle::from((FONT, 15).into_font())
        .color(&WHITE)
        .pos(Pos::new(HPos::Center, VPos::Center));
    chart
        .draw_series(
            cells.iter().map(|&(x, y, v)| {
                Text::new(format!("{:.0}%", v * 100.0), (x, y), centered.clone())
            }),
        )
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

fn file_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Retrieval plots: one depth × context heatmap per task × policy@budget (mean `score`),
/// and accuracy vs budget per task (one line per policy; `full` flat).
pub fn retrieval(dir: &Path, records: &[Record]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut tasks: Vec<&str> = records.iter().map(|r| r.task.as_str()).collect();
    tasks.sort();
    tasks.dedup();
    for task in tasks {
        let mine: Vec<&Record> = records.iter().filter(|r| r.task == task).collect();
        let mut contexts: Vec<usize> = mine
            .iter()
            .map(|r| r.metric("target_context").map_or(r.context, |c| c as usize))
            .collect();
        contexts.sort();
        contexts.dedup();
        let mut depths: Vec<f64> = mine.iter().filter_map(|r| r.depth).collect();
        depths.sort_by(f64::total_cmp);
        depths.dedup();
        let mut labels: Vec<String> = mine.iter().map(|r| r.label()).collect();
        labels.dedup();
        let mut seen = Vec::new();
        for label in labels {
            if seen.contains(&label) {
                continue;
            }
            seen.push(label.clone());
            let cell = |ci: usize, di: usize| {
                let v: Vec<f64> = mine
                    .iter()
                    .filter(|r| {
                        r.label() == label
                            && r.metric("target_context").map_or(r.context, |c| c as usize)
                                == contexts[ci]
                            && r.depth == Some(depths[di])
                    })
                    .map(|r| {
                        r.metric("score")
                            .unwrap_or(f64::from(u8::from(r.correct == Some(true))))
                    })
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let path = dir.join(format!(
                "heatmap_{}_{}.png",
                file_name(task),
                file_name(&label)
            ));
            heatmap(&path, &format!("{task}: {label}"), &depths, &contexts, cell)?;
            out.push(path);
        }
        let series = budget_series(&mine, |r| {
            f64::from(u8::from(r.correct == Some(true))) * 100.0
        });
        let path = dir.join(format!("accuracy_vs_budget_{}.png", file_name(task)));
        lines(
            &path,
            &format!("{task}: accuracy vs budget"),
            "budget (tokens)",
            "accuracy (%)",
            &series,
            Some((-2.0, 102.0)),
        )?;
        out.push(path);
    }
    Ok(out)
}

/// Mean of `metric` per policy per budget; `full` (no budget) spans the budgets seen.
pub fn budget_series(records: &[&Record], metric: impl Fn(&Record) -> f64) -> Vec<Series> {
    let mut budgets: Vec<usize> = records.iter().filter_map(|r| r.budget).collect();
    budgets.sort();
    budgets.dedup();
    let mut policies: Vec<&str> = Vec::new();
    for r in records {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    policies
        .iter()
        .map(|p| {
            let mean = |b: Option<usize>| {
                let v: Vec<f64> = records
                    .iter()
                    .filter(|r| r.policy == *p && r.budget == b)
                    .map(|r| metric(r))
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let pts = if *p == "full" {
                let m = mean(None).unwrap_or(0.0);
                budgets.iter().map(|&b| (b as f64, m)).collect()
            } else {
                budgets
                    .iter()
                    .filter_map(|&b| mean(Some(b)).map(|m| (b as f64, m)))
                    .collect()
            };
            (p.to_string(), pts)
        })
        .collect()
}
