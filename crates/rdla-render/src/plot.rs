//! Line plots and their drawing primitives (tick steps, anti-aliased segments): the
//! benchmark's memory-against-prompt-length curve here (measured points joined by a line, a
//! least-squares line through them), the default model's loss curve in [`crate::loss`]. Same
//! font and text helpers as the heatmap renderer.

use image::RgbImage;

use crate::png::{PngError, blit, fill, font, rasterize, text_width};

const W: u32 = 1000;
const H: u32 = 620;
const LEFT: f32 = 110.0;
const RIGHT: f32 = 40.0;
const TOP: f32 = 90.0;
const BOTTOM: f32 = 80.0;
const INK: [u8; 3] = [40, 40, 40];
const GRID: [u8; 3] = [225, 225, 225];
const SERIES: [u8; 3] = [33, 102, 172];
const FIT: [u8; 3] = [178, 24, 43];

/// What to draw.
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub subtitle: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// `(x, y)` in drawing order; at least two points with distinct `x`.
    pub points: &'a [(f64, f64)],
}

/// A step of 1, 2 or 5 × 10^k giving about `n` ticks over `range`.
pub fn nice_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    }
}

/// Blend colour `c` into pixel `(x, y)` with coverage `a` (outside the image: nothing).
pub fn blend(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3], a: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) || a <= 0.0 {
        return;
    }
    let a = a.min(1.0);
    let p = img.get_pixel_mut(x as u32, y as u32);
    for (ch, &target) in p.0.iter_mut().zip(&c) {
        let v = f32::from(*ch) * (1.0 - a) + f32::from(target) * a;
        *ch = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// Anti-aliased segment of the given width (coverage from the distance to the segment); a
/// point when `a == b` (a dot of that diameter).
pub fn line(
    img: &mut RgbImage,
    (x0, y0): (f32, f32),
    (x1, y1): (f32, f32),
    width: f32,
    c: [u8; 3],
) {
    let r = width / 2.0 + 1.0;
    let (minx, maxx) = (x0.min(x1) - r, x0.max(x1) + r);
    let (miny, maxy) = (y0.min(y1) - r, y0.max(y1) + r);
    let (dx, dy) = (x1 - x0, y1 - y0);
    let len2 = (dx * dx + dy * dy).max(1e-12);
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for y in (miny.floor() as i64).max(0)..=(maxy.ceil() as i64).min(h - 1) {
        for x in (minx.floor() as i64).max(0)..=(maxx.ceil() as i64).min(w - 1) {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0);
            let (qx, qy) = (x0 + t * dx - px, y0 + t * dy - py);
            let dist = (qx * qx + qy * qy).sqrt();
            blend(img, x, y, c, width / 2.0 + 0.5 - dist);
        }
    }
}

/// Render `plot` to PNG bytes.
pub fn line_plot_png(plot: &LinePlot<'_>) -> Result<Vec<u8>, PngError> {
    let f = font()?;
    let mut img = RgbImage::from_pixel(W, H, image::Rgb([255, 255, 255]));
    let text = |img: &mut RgbImage, px: f32, s: &str, x: f32, y: f32, c: [u8; 3]| {
        blit(img, &rasterize(&f, px, s), x as i32, y as i32, c);
    };
    text(&mut img, 24.0, plot.title, LEFT, 18.0, INK);
    text(&mut img, 15.0, plot.subtitle, LEFT, 48.0, [90, 90, 90]);
    let pts = plot.points;
    let finite: Vec<(f64, f64)> = pts
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (xmin, xmax) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let ymax = finite.iter().fold(0.0f64, |m, p| m.max(p.1));
    if finite.len() < 2 || xmax <= xmin || ymax <= 0.0 {
        return Err(PngError::Font(
            "a line plot needs two finite points with distinct x".into(),
        ));
    }
    let (pw, ph) = (W as f32 - LEFT - RIGHT, H as f32 - TOP - BOTTOM);
    let xstep = nice_step(xmax, 8.0);
    let xtop = (xmax / xstep).ceil() * xstep;
    let ystep = nice_step(ymax, 6.0);
    let ytop = (ymax / ystep).ceil() * ystep;
    let sx = |x: f64| LEFT + (x / xtop) as f32 * pw;
    let sy = |y: f64| TOP + ph - (y / ytop) as f32 * ph;
    // grid, ticks
    let mut v = 0.0;
    while v <= ytop + 1e-9 {
        let y = sy(v);
        fill(&mut img, LEFT as u32, y as u32, pw as u32, 1, GRID);
        let s = format!("{v:.0}");
        text(
            &mut img,
            14.0,
            &s,
            LEFT - 10.0 - text_width(&f, 14.0, &s),
            y - 9.0,
            INK,
        );
        v += ystep;
    }
    let mut v = 0.0;
    while v <= xtop + 1e-9 {
        let x = sx(v);
        fill(&mut img, x as u32, TOP as u32, 1, ph as u32, GRID);
        let s = format!("{v:.0}");
        text(
            &mut img,
            14.0,
            &s,
            x - text_width(&f, 14.0, &s) / 2.0,
            TOP + ph + 8.0,
            INK,
        );
        v += xstep;
    }
    fill(&mut img, LEFT as u32, (TOP + ph) as u32, pw as u32, 2, INK);
    fill(&mut img, LEFT as u32, TOP as u32, 2, ph as u32, INK);
    text(
        &mut img,
        16.0,
        plot.x_label,
        LEFT + pw / 2.0 - text_width(&f, 16.0, plot.x_label) / 2.0,
        H as f32 - 40.0,
        INK,
    );
    text(&mut img, 16.0, plot.y_label, 10.0, TOP - 22.0, INK);
    // least-squares line
    let n = finite.len() as f64;
    let (mx, my) = finite
        .iter()
        .fold((0.0, 0.0), |(a, b), p| (a + p.0 / n, b + p.1 / n));
    let sxx: f64 = finite.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = finite.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let icept = my - slope * mx;
    line(
        &mut img,
        (sx(0.0), sy(icept.max(0.0))),
        (sx(xtop), sy((icept + slope * xtop).min(ytop))),
        1.5,
        FIT,
    );
    let fit = format!("least squares: {icept:.0} + {slope:.3} · x");
    text(&mut img, 14.0, &fit, LEFT + 12.0, TOP + 8.0, FIT);
    // the measured points
    for w in finite.windows(2) {
        line(
            &mut img,
            (sx(w[0].0), sy(w[0].1)),
            (sx(w[1].0), sy(w[1].1)),
            3.0,
            SERIES,
        );
    }
    for &(x, y) in &finite {
        let (cx, cy) = (sx(x), sy(y));
        line(&mut img, (cx, cy), (cx, cy), 10.0, SERIES);
        let s = format!("{y:.0}");
        text(&mut img, 13.0, &s, cx + 8.0, cy - 22.0, SERIES);
    }
    crate::png::encode(&img)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn draws_the_points_and_refuses_too_few() {
        let pts = [(1024.0, 1255.0), (2048.0, 1683.0), (8192.0, 4103.0)];
        let png = line_plot_png(&LinePlot {
            title: "t",
            subtitle: "s",
            x_label: "x",
            y_label: "y",
            points: &pts,
        })
        .unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        // the series colour is drawn somewhere
        assert!(img.pixels().any(|p| p.0 == SERIES));
        let one = line_plot_png(&LinePlot {
            points: &pts[..1],
            title: "t",
            subtitle: "s",
            x_label: "x",
            y_label: "y",
        });
        assert!(one.is_err());
    }
}
