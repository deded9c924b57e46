//! `report.png`: panels of a report's series, drawn with plotters into a bitmap.
//!
//! Text is rendered through ab_glyph with DejaVu Sans embedded in the binary (crate `dejavu`),
//! so plotting needs no fontconfig and no system fonts, and looks the same everywhere.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Report;
use crate::{Error, Result};

/// The font family name the plots use.
const FONT: &str = "sans-serif";

/// Size of the image in pixels.
pub const SIZE: (u32, u32) = (1400, 900);

/// Line colours, in series order within a panel.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Above this many points a series is drawn as a line without markers.
const MARKERS_UP_TO: usize = 200;

/// One panel: some series of the report on shared axes.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Names of the series to draw (missing ones are skipped).
    pub series: Vec<String>,
    /// A horizontal reference line (for example 1.0 for a ratio to the ideal).
    pub reference: Option<f64>,
}

impl Panel {
    /// A panel of `series` without reference line.
    pub fn new(title: &str, y_label: &str, series: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            y_label: y_label.to_owned(),
            series: series.iter().map(|s| (*s).to_owned()).collect(),
            reference: None,
        }
    }

    /// With a horizontal reference line at `y`.
    pub fn reference(mut self, y: f64) -> Self {
        self.reference = Some(y);
        self
    }
}

/// Registers the embedded font once. `false` if the font data was rejected (then text fails
/// to draw and [`render`] returns the error).
fn register_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let normal =
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let bold = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        normal.is_ok() && bold.is_ok()
    })
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

/// Draws `panels` (stacked, one per row) of `report`'s series into a PNG at `path`.
pub fn render(report: &Report, panels: &[Panel], path: &Path) -> Result<()> {
    if !register_font() {
        return Err(Error::Plot("the embedded font was rejected".into()));
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let title = format!(
        "loadtest {} · {} · {}",
        report.scenario,
        report.started_at.strftime("%Y-%m-%d %H:%M UTC"),
        if report.ok { "ok" } else { "PROBLEMS" }
    );
    let body = root
        .titled(&title, (FONT, 24).into_font().style(FontStyle::Bold))
        .map_err(plot_error)?;
    let rows = panels.len().max(1);
    for (area, panel) in body.split_evenly((rows, 1)).iter().zip(panels) {
        draw_panel(report, panel, area)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_panel(
    report: &Report,
    panel: &Panel,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<()> {
    let series: Vec<_> = panel
        .series
        .iter()
        .filter_map(|name| report.series(name))
        .collect();
    let points = || series.iter().flat_map(|s| s.points.iter());
    let finite = |v: &f64| v.is_finite();
    let xs = points().map(|p| p.0).filter(finite);
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let ys = points().map(|p| p.1).chain(panel.reference).filter(finite);
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let (x0, x1) = padded(x0, x1, 0.0);
    // Start the y axis at 0 for non-negative data: ratios and loads read better from 0.
    let (y0, y1) = padded(y0.min(0.0), y1, 0.05);
    let x_unit = series.first().map_or("", |s| s.x_unit.as_str());

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_unit)
        .y_desc(panel.y_label.as_str())
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(240, 240, 240))
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .draw()
        .map_err(plot_error)?;

    if let Some(r) = panel.reference {
        chart
            .draw_series(LineSeries::new(
                [(x0, r), (x1, r)],
                ShapeStyle::from(&RGBColor(120, 120, 120)).stroke_width(1),
            ))
            .map_err(plot_error)?;
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let data: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| (p.0, p.1))
            .collect();
        chart
            .draw_series(LineSeries::new(
                data.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        if data.len() <= MARKERS_UP_TO {
            chart
                .draw_series(
                    data.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
                )
                .map_err(plot_error)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.7))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT, 14))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// An axis label: integers without decimals, others with up to 3 decimals.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A non-empty range around `lo..hi`, widened by `pad` of its span at the top (and at the
/// bottom when it does not start at 0); `0..1` when there is no data.
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let span = hi - lo;
    let bottom = if lo == 0.0 { 0.0 } else { lo - span * pad };
    (bottom, hi + span * pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Series, unit};

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(5.0), "5");
        assert_eq!(tick(0.2), "0.2");
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(-1.25), "-1.25");
    }

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(padded(f64::INFINITY, f64::NEG_INFINITY, 0.1), (0.0, 1.0));
        assert_eq!(padded(0.0, 0.0, 0.1), (-1.0, 1.0));
        let (a, b) = padded(5.0, 5.0, 0.1);
        assert!(a < 5.0 && b > 5.0);
        assert_eq!(padded(0.0, 10.0, 0.1), (0.0, 11.0));
    }

    #[test]
    fn writes_a_png_with_text_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let mut report = crate::report::tests_support::minimal("simulate");
        let mut s = Series::new("ratio_to_ideal", unit::RATIO, unit::EVENT);
        for i in 0..10 {
            s.push(f64::from(i), 1.0 + f64::from(i % 3) / 10.0);
        }
        report.series.push(s);
        let panels = [
            Panel::new("ratio", "moved / ideal", &["ratio_to_ideal"]).reference(1.0),
            Panel::new("empty", "nothing", &["missing"]),
        ];
        render(&report, &panels, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
