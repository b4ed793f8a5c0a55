//! The report's charts, drawn with plotters into SVG strings (embedded inline).

use plotters::prelude::*;

use crate::error::ReportError;

/// Distinct colours for categories (MoAs, models); cycled beyond their number.
const PALETTE: [RGBColor; 14] = [
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
    RGBColor(0, 0, 128),
    RGBColor(128, 128, 0),
    RGBColor(0, 128, 128),
    RGBColor(128, 0, 0),
];

/// The `i`-th colour of the palette (categories, curves).
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// `#rrggbb` of a category colour, for HTML legends.
pub fn colour_hex(i: usize) -> String {
    let c = colour(i);
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn plot_err(what: &str) -> impl Fn(DrawingAreaErrorKind<std::io::Error>) -> ReportError + '_ {
    move |e| ReportError::Plot { what: what.to_string(), message: e.to_string() }
}

/// One named line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// The points (x, y).
    pub points: Vec<(f64, f64)>,
}

/// Axis range with a little margin; a flat or empty range still gets some height.
fn range(values: impl Iterator<Item = f64>, floor_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if floor_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let pad = 0.05 * (hi - lo);
    (if floor_zero && lo >= 0.0 { lo } else { lo - pad })..(hi + pad)
}

/// A line chart (training curves, CMC).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_max: Option<f64>,
) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(title))?;
        let xs = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), false);
        let mut ys = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), true);
        if let Some(m) = y_max {
            ys.end = m;
        }
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(xs, ys)
            .map_err(plot_err(title))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err(title))?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(plot_err(title))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()
                .map_err(plot_err(title))?;
        }
        root.present().map_err(plot_err(title))?;
    }
    Ok(svg)
}

/// A point of the embedding map: coordinates, category, and whether it is a molecule.
#[derive(Clone, Debug)]
pub struct MapPoint {
    /// Map x.
    pub x: f64,
    /// Map y.
    pub y: f64,
    /// Its MoA.
    pub category: usize,
    /// A molecule (a triangle), not a video.
    pub molecule: bool,
}

/// Scatter of the 2-D embedding map: videos as dots, molecules as outlined triangles on top.
pub fn embedding_map(title: &str, points: &[MapPoint]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(title))?;
        let xs = range(points.iter().map(|p| p.x), false);
        let ys = range(points.iter().map(|p| p.y), false);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .build_cartesian_2d(xs, ys)
            .map_err(plot_err(title))?;
        chart.configure_mesh().disable_mesh().disable_axes().draw().map_err(plot_err(title))?;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| !p.molecule)
                    .map(|p| Circle::new((p.x, p.y), 3, colour(p.category).mix(0.75).filled())),
            )
            .map_err(plot_err(title))?;
        // A black triangle under a smaller coloured one: an outlined marker in the MoA's colour.
        chart
            .draw_series(
                points.iter().filter(|p| p.molecule).map(|p| TriangleMarker::new((p.x, p.y), 9, BLACK.filled())),
            )
            .map_err(plot_err(title))?;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.molecule)
                    .map(|p| TriangleMarker::new((p.x, p.y), 6, colour(p.category).filled())),
            )
            .map_err(plot_err(title))?;
        root.present().map_err(plot_err(title))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let s = vec![
            Series { name: "molclip".into(), points: vec![(1.0, 10.0), (2.0, 20.0)] },
            Series { name: "video-only".into(), points: vec![(1.0, 5.0), (2.0, 8.0)] },
        ];
        let svg = line_chart("CMC", "rank", "%", &s, Some(100.0)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in ["CMC", "rank", "molclip", "video-only"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Each series: its line and its legend mark, in its own colour.
        for c in [colour_hex(0), colour_hex(1)] {
            let lines = svg.lines().filter(|l| l.contains("<polyline") && l.to_lowercase().contains(&c)).count();
            assert_eq!(lines, 2, "{c}");
        }
        let pts = [
            MapPoint { x: 0.0, y: 0.0, category: 0, molecule: false },
            MapPoint { x: 1.0, y: 1.0, category: 1, molecule: true },
        ];
        let map = embedding_map("map", &pts).unwrap();
        assert_eq!(map.matches("<circle").count(), 1);
        assert!(map.contains("<polygon"));
    }
}
