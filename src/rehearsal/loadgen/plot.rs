//! The report as a picture: orders answered per second and their p99 latency, per second
//! of the order phase, drawn with `plotters` into an SVG file.

use std::path::Path;

use plotters::prelude::*;

use super::Report;

/// Width and height of the picture, in pixels.
const SIZE_PX: (u32, u32) = (1000, 720);

/// Draws `report`'s timeline into the SVG file `path`.
pub fn draw(report: &Report, title: &str, path: &Path) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| failed(&e))?;
    let (upper, lower) = root.split_vertically(SIZE_PX.1 / 2 - 20);
    // The last second is usually partial; it is drawn as it was.
    let seconds = report.timeline.len().max(1) as u64;
    let rate: Vec<(u64, f64)> = report.timeline.iter().enumerate().map(|(s, (n, _))| (s as u64, *n as f64)).collect();
    let p99: Vec<(u64, f64)> = report.timeline.iter().enumerate().map(|(s, (_, ms))| (s as u64, *ms)).collect();
    panel(&upper, "orders answered per second", "orders/s", seconds, &rate, &BLUE).map_err(|e| failed(&e))?;
    panel(&lower, "p99 latency of placing an order", "ms", seconds, &p99, &RED).map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    seconds: u64,
    points: &[(u64, f64)],
    color: &RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let top = points.iter().map(|(_, y)| *y).fold(0.0_f64, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, 0.0..top)?;
    chart.configure_mesh().x_desc("second of the order phase").y_desc(unit).draw()?;
    chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?;
    Ok(())
}
