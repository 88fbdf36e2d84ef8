//! The default model's training curve: per-step losses (raw, and their moving average) and,
//! on a right-hand axis, validation accuracy. `rdla-train` writes it beside the weights.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::plot::{blend, line, nice_step};
use crate::png::{PngError, blit, rasterize, text_width};

const W: u32 = 900;
const H: u32 = 520;
const LEFT: f32 = 72.0;
const RIGHT: f32 = 64.0;
const TOP: f32 = 80.0;
const BOTTOM: f32 = 60.0;

struct Text<'a> {
    font: FontRef<'a>,
}

impl Text<'_> {
    /// Draw with the baseline at `y`; `align` 0 = left, 0.5 = centre, 1 = right of `x`
    /// (the heatmap renderer's rasteriser, placed by its baseline).
    fn draw(
        &self,
        img: &mut RgbImage,
        size: f32,
        (x, y): (f32, f32),
        align: f32,
        s: &str,
        c: [u8; 3],
    ) {
        let left = x - align * text_width(&self.font, size, s);
        let ascent = self.font.as_scaled(PxScale::from(size)).ascent();
        let mask = rasterize(&self.font, size, s);
        blit(
            img,
            &mask,
            left.round() as i32,
            (y - ascent).round() as i32,
            c,
        );
    }
}

/// Exponential moving average (bias-corrected) of `xs`.
pub fn ema(xs: &[f32], beta: f64) -> Vec<f32> {
    let mut acc = 0.0f64;
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            acc = beta * acc + (1.0 - beta) * f64::from(x);
            (acc / (1.0 - beta.powi(i as i32 + 1))) as f32
        })
        .collect()
}

/// Render per-step losses (raw, light; smoothed, dark) with axes, ticks and labels, and
/// optionally `(step, accuracy in [0, 1])` points on a right-hand 0–100 % axis.
///
/// Long because a plot is drawn in one pass over its parts (frame, grid, ticks, curves,
/// legend) that share the same coordinate transforms.
pub fn render_loss_curve(
    losses: &[f32],
    accuracy: &[(usize, f64)],
    title: &str,
    subtitle: &str,
) -> Result<RgbImage, PngError> {
    let text = Text {
        font: crate::png::font()?,
    };
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = (W as f32 - LEFT - RIGHT, H as f32 - TOP - BOTTOM);
    let n = losses.len().max(2);
    let ymax = losses
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0f32, f32::max)
        .max(1e-3);
    let ystep = nice_step(f64::from(ymax), 6.0);
    let ytop = ((f64::from(ymax) / ystep).ceil() * ystep) as f32;
    let xstep = nice_step(n as f64, 8.0);
    let sx = |s: f32| LEFT + pw * s / (n - 1) as f32;
    let sy = |v: f32| TOP + ph * (1.0 - v / ytop);

    let (grid, axis, ink) = ([228, 228, 228], [60, 60, 60], [30, 30, 30]);
    // grid + tick labels
    let mut v = 0.0f64;
    while v <= f64::from(ytop) + 1e-9 {
        let y = sy(v as f32);
        line(&mut img, (LEFT, y), (LEFT + pw, y), 1.0, grid);
        line(&mut img, (LEFT - 5.0, y), (LEFT, y), 1.0, axis);
        text.draw(
            &mut img,
            13.0,
            (LEFT - 8.0, y + 4.5),
            1.0,
            &format_tick(v),
            ink,
        );
        v += ystep;
    }
    let mut s = 0.0f64;
    while s <= (n - 1) as f64 + 1e-9 {
        let x = sx(s as f32);
        line(&mut img, (x, TOP), (x, TOP + ph), 1.0, grid);
        line(&mut img, (x, TOP + ph), (x, TOP + ph + 5.0), 1.0, axis);
        text.draw(
            &mut img,
            13.0,
            (x, TOP + ph + 20.0),
            0.5,
            &format_tick(s),
            ink,
        );
        s += xstep;
    }
    // curves
    let pts = |ys: &[f32]| -> Vec<(f32, f32)> {
        ys.iter()
            .enumerate()
            .map(|(i, &y)| (sx(i as f32), sy(y.clamp(0.0, ytop))))
            .collect()
    };
    for w in pts(losses).windows(2) {
        line(&mut img, w[0], w[1], 1.0, [170, 200, 235]);
    }
    for w in pts(&ema(losses, 0.95)).windows(2) {
        line(&mut img, w[0], w[1], 2.2, [20, 80, 170]);
    }
    // accuracy on the right axis
    let green = [20, 140, 60];
    if !accuracy.is_empty() {
        let ay = |a: f64| TOP + ph * (1.0 - a as f32);
        for k in 0..=5 {
            let a = f64::from(k) / 5.0;
            line(
                &mut img,
                (LEFT + pw, ay(a)),
                (LEFT + pw + 5.0, ay(a)),
                1.0,
                green,
            );
            let label = format!("{}%", k * 20);
            text.draw(
                &mut img,
                13.0,
                (LEFT + pw + 8.0, ay(a) + 4.5),
                0.0,
                &label,
                green,
            );
        }
        let apts: Vec<(f32, f32)> = accuracy
            .iter()
            .map(|&(s, a)| (sx(s as f32), ay(a.clamp(0.0, 1.0))))
            .collect();
        for w in apts.windows(2) {
            line(&mut img, w[0], w[1], 1.4, green);
        }
        for &p in &apts {
            line(&mut img, p, p, 6.0, green);
        }
        line(
            &mut img,
            (LEFT + pw, TOP),
            (LEFT + pw, TOP + ph),
            1.4,
            green,
        );
        text.draw(
            &mut img,
            15.0,
            (W as f32 - 6.0, TOP - 12.0),
            1.0,
            "validation top-1",
            green,
        );
    }
    // axes
    line(&mut img, (LEFT, TOP), (LEFT, TOP + ph), 1.4, axis);
    line(&mut img, (LEFT, TOP + ph), (LEFT + pw, TOP + ph), 1.4, axis);
    text.draw(
        &mut img,
        15.0,
        (LEFT + pw / 2.0, H as f32 - 14.0),
        0.5,
        "training step",
        ink,
    );
    text.draw(
        &mut img,
        15.0,
        (8.0, TOP - 12.0),
        0.0,
        "loss (nats/token)",
        ink,
    );
    text.draw(&mut img, 18.0, (LEFT, 26.0), 0.0, title, ink);
    text.draw(&mut img, 13.0, (LEFT, 46.0), 0.0, subtitle, [90, 90, 90]);
    // legend
    let (lx, ly) = (LEFT + pw - 250.0, TOP + 22.0);
    let rows = if accuracy.is_empty() { 2.0 } else { 3.0 };
    for y in (ly - 12.0) as i64..(ly + 20.0 * rows - 4.0) as i64 {
        for x in (lx - 10.0) as i64..(lx + 236.0) as i64 {
            blend(&mut img, x, y, [255, 255, 255], 0.85);
        }
    }
    line(&mut img, (lx, ly), (lx + 28.0, ly), 1.0, [170, 200, 235]);
    text.draw(&mut img, 13.0, (lx + 36.0, ly + 4.5), 0.0, "per step", ink);
    line(
        &mut img,
        (lx, ly + 20.0),
        (lx + 28.0, ly + 20.0),
        2.2,
        [20, 80, 170],
    );
    text.draw(
        &mut img,
        13.0,
        (lx + 36.0, ly + 24.5),
        0.0,
        "moving average (0.95)",
        ink,
    );
    if !accuracy.is_empty() {
        line(
            &mut img,
            (lx, ly + 40.0),
            (lx + 28.0, ly + 40.0),
            1.4,
            green,
        );
        line(
            &mut img,
            (lx + 14.0, ly + 40.0),
            (lx + 14.0, ly + 40.0),
            6.0,
            green,
        );
        let label = "validation next-number top-1";
        text.draw(&mut img, 13.0, (lx + 36.0, ly + 44.5), 0.0, label, ink);
    }
    Ok(img)
}

fn format_tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// [`render_loss_curve`] as PNG bytes.
pub fn loss_curve_png(
    losses: &[f32],
    accuracy: &[(usize, f64)],
    title: &str,
    subtitle: &str,
) -> Result<Vec<u8>, PngError> {
    crate::png::encode(&render_loss_curve(losses, accuracy, title, subtitle)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_curve() {
        let losses: Vec<f32> = (0..300)
            .map(|i| 6.0 * (-(i as f32) / 50.0).exp() + 0.3)
            .collect();
        let acc = [(0, 0.0), (150, 0.5), (299, 1.0)];
        let img = render_loss_curve(&losses, &acc, "title", "subtitle").expect("render");
        assert_eq!(img.dimensions(), (W, H));
        let dark = img.pixels().filter(|p| p.0[2] > 150 && p.0[0] < 60).count();
        assert!(dark > 300, "{dark}");
    }

    #[test]
    fn nice_steps() {
        assert!((nice_step(6.6, 6.0) - 1.0).abs() < 1e-12);
        assert!((nice_step(1500.0, 8.0) - 200.0).abs() < 1e-9);
    }
}
