//! The one heatmap renderer: a [`Heatmap`] to a PNG with a title, axis labels (token text,
//! component names) and a colour bar. Text is rasterised with `ab_glyph` (DejaVu Sans).

use std::path::Path as FsPath;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::heatmap::{ColorMap, Heatmap};

/// DejaVu Sans, also the GUI's fallback font (wide Unicode coverage).
pub static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("font: {0}")]
    Font(String),
    #[error("{path}: cannot write PNG: {source}")]
    Write {
        path: String,
        #[source]
        source: image::ImageError,
    },
}

/// Rendering options.
#[derive(Debug, Clone, Copy)]
pub struct PngOptions {
    /// Pixel scale (2 = twice the base resolution).
    pub scale: f32,
    pub colormap: ColorMap,
}

impl Default for PngOptions {
    fn default() -> Self {
        Self {
            scale: 2.0,
            colormap: ColorMap::default(),
        }
    }
}

fn font() -> Result<FontRef<'static>, PngError> {
    FontRef::try_from_slice(FONT_BYTES).map_err(|e| PngError::Font(e.to_string()))
}

fn text_width(font: &FontRef<'_>, px: f32, text: &str) -> f32 {
    let f = font.as_scaled(PxScale::from(px));
    text.chars().map(|c| f.h_advance(f.glyph_id(c))).sum()
}

/// Coverage mask of `text` at `px`.
fn rasterize(font: &FontRef<'_>, px: f32, text: &str) -> GrayImage {
    let scaled = font.as_scaled(PxScale::from(px));
    let w = text_width(font, px, text).ceil() as u32 + 2;
    let h = (scaled.ascent() - scaled.descent()).ceil() as u32 + 2;
    let mut img = GrayImage::new(w.max(1), h.max(1));
    let mut caret = 0.0;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        let g = id.with_scale_and_position(PxScale::from(px), point(caret, scaled.ascent()));
        caret += scaled.h_advance(id);
        if let Some(o) = font.outline_glyph(g) {
            let b = o.px_bounds();
            o.draw(|gx, gy, cov| {
                let x = b.min.x as i32 + gx as i32;
                let y = b.min.y as i32 + gy as i32;
                if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                    let v = (cov * 255.0) as u8;
                    let p = img.get_pixel_mut(x as u32, y as u32);
                    p.0[0] = p.0[0].max(v);
                }
            });
        }
    }
    img
}

fn blit(img: &mut RgbImage, mask: &GrayImage, x: i32, y: i32, color: [u8; 3]) {
    for (mx, my, Luma([a])) in mask.enumerate_pixels() {
        if *a == 0 {
            continue;
        }
        let (px, py) = (x + mx as i32, y + my as i32);
        if px < 0 || py < 0 || px as u32 >= img.width() || py as u32 >= img.height() {
            continue;
        }
        let p = img.get_pixel_mut(px as u32, py as u32);
        let t = f32::from(*a) / 255.0;
        for (ch, &c) in p.0.iter_mut().zip(&color) {
            *ch = (f32::from(*ch) * (1.0 - t) + f32::from(c) * t) as u8;
        }
    }
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, c: [u8; 3]) {
    for y in y0..(y0 + h).min(img.height()) {
        for x in x0..(x0 + w).min(img.width()) {
            img.put_pixel(x, y, Rgb(c));
        }
    }
}

/// Shorten a label to at most `max` characters.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Render `hm` to an image.
pub fn render(hm: &Heatmap, opts: PngOptions) -> Result<RgbImage, PngError> {
    let font = font()?;
    let s = opts.scale.max(0.5);
    let (n_r, n_c) = (hm.n_rows().max(1), hm.n_cols().max(1));
    let label_px = 11.0 * s;
    let title_px = 16.0 * s;
    let sub_px = 12.0 * s;
    // cell size: square, within a sensible overall width
    let cell = ((1400.0 * s) / n_c as f32)
        .clamp(3.0 * s, 44.0 * s)
        .min((900.0 * s) / n_r as f32)
        .max(3.0 * s);
    let cell_u = cell.round().max(1.0) as u32;
    let row_labels: Vec<String> = hm.rows.iter().map(|r| clip(r, 24)).collect();
    let col_labels: Vec<String> = hm.cols.iter().map(|c| clip(c, 20)).collect();
    let row_w = row_labels
        .iter()
        .map(|l| text_width(&font, label_px, l))
        .fold(0.0, f32::max) as u32
        + (8.0 * s) as u32;
    let col_h = col_labels
        .iter()
        .map(|l| text_width(&font, label_px, l))
        .fold(0.0, f32::max) as u32
        + (8.0 * s) as u32;
    let line = (label_px * 1.3) as u32;
    // show every k-th label when cells are smaller than a text line
    let step_c = ((label_px * 1.2) / cell).ceil().max(1.0) as usize;
    let step_r = step_c;

    let margin = (12.0 * s) as u32;
    let header = (title_px * 1.4 + sub_px * 1.4) as u32 + margin + line; // + axis title line
    let grid_x = margin + line + row_w;
    let grid_y = header + col_h;
    let grid_w = cell_u * n_c as u32;
    let grid_h = cell_u * n_r as u32;
    let bar_w = (16.0 * s) as u32;
    let bar_gap = (24.0 * s) as u32;
    let tick_w = text_width(&font, label_px, "-0.0000e+00") as u32 + margin;
    let title_w =
        text_width(&font, title_px, &hm.title).max(text_width(&font, sub_px, &hm.subtitle)) as u32;
    let width = (grid_x + grid_w + bar_gap + bar_w + tick_w).max(title_w + 2 * margin);
    let height = (grid_y + grid_h + margin + line).max(header + (200.0 * s) as u32);

    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let ink = [20, 20, 20];
    blit(
        &mut img,
        &rasterize(&font, title_px, &hm.title),
        margin as i32,
        margin as i32 / 2,
        ink,
    );
    blit(
        &mut img,
        &rasterize(&font, sub_px, &hm.subtitle),
        margin as i32,
        (margin / 2) as i32 + (title_px * 1.4) as i32,
        [70, 70, 70],
    );

    // axis titles
    if !hm.col_title.is_empty() {
        let m = rasterize(&font, label_px, &hm.col_title);
        blit(
            &mut img,
            &m,
            (grid_x + grid_w / 2) as i32 - m.width() as i32 / 2,
            (header - line) as i32,
            ink,
        );
    }
    if !hm.row_title.is_empty() {
        let m = image::imageops::rotate270(&rasterize(&font, label_px, &hm.row_title));
        blit(
            &mut img,
            &m,
            margin as i32 / 2,
            (grid_y + grid_h / 2) as i32 - m.height() as i32 / 2,
            ink,
        );
    }

    let range = hm.max_abs();
    for r in 0..hm.n_rows() {
        for c in 0..hm.n_cols() {
            let (x, y) = (grid_x + c as u32 * cell_u, grid_y + r as u32 * cell_u);
            match hm.get(r, c) {
                Some(v) => fill(
                    &mut img,
                    x,
                    y,
                    cell_u,
                    cell_u,
                    opts.colormap.color(v, range),
                ),
                None => fill(&mut img, x, y, cell_u, cell_u, [225, 225, 225]),
            }
            if let Some(v) = hm.get(r, c)
                && cell >= 40.0 * s
            {
                let txt = format!("{v:.2}");
                let m = rasterize(&font, 9.0 * s, &txt);
                let col = if v.abs() > 0.6 * range {
                    [255, 255, 255]
                } else {
                    ink
                };
                blit(
                    &mut img,
                    &m,
                    (x + cell_u / 2) as i32 - m.width() as i32 / 2,
                    (y + cell_u / 2) as i32 - m.height() as i32 / 2,
                    col,
                );
            }
        }
    }
    for (r, l) in row_labels.iter().enumerate() {
        if r % step_r != 0 {
            continue;
        }
        let m = rasterize(&font, label_px, l);
        let y = grid_y as i32 + (r as u32 * cell_u + cell_u / 2) as i32 - m.height() as i32 / 2;
        blit(
            &mut img,
            &m,
            (grid_x - m.width() - (4.0 * s) as u32) as i32,
            y,
            ink,
        );
    }
    for (c, l) in col_labels.iter().enumerate() {
        if c % step_c != 0 {
            continue;
        }
        let m = image::imageops::rotate270(&rasterize(&font, label_px, l));
        let x = grid_x as i32 + (c as u32 * cell_u + cell_u / 2) as i32 - m.width() as i32 / 2;
        blit(
            &mut img,
            &m,
            x,
            (grid_y - m.height() - (4.0 * s) as u32) as i32,
            ink,
        );
    }

    // colour bar: top = +range, bottom = -range
    let bar_x = grid_x + grid_w + bar_gap;
    let bar_h = grid_h.max((160.0 * s) as u32);
    for i in 0..bar_h {
        let v = range * (1.0 - 2.0 * i as f32 / (bar_h.max(2) - 1) as f32);
        fill(
            &mut img,
            bar_x,
            grid_y + i,
            bar_w,
            1,
            opts.colormap.color(v, range),
        );
    }
    for (frac, v) in [(0.0, range), (0.5, 0.0), (1.0, -range)] {
        let m = rasterize(&font, label_px, &format!("{v:+.3}"));
        let y = grid_y as i32 + (frac * bar_h as f32) as i32 - m.height() as i32 / 2;
        blit(
            &mut img,
            &m,
            (bar_x + bar_w + (4.0 * s) as u32) as i32,
            y,
            ink,
        );
    }
    Ok(img)
}

/// Render and write `hm` as a PNG.
pub fn write_png(hm: &Heatmap, path: &FsPath, opts: PngOptions) -> Result<(u32, u32), PngError> {
    let img = render(hm, opts)?;
    img.save(path).map_err(|source| PngError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok(img.dimensions())
}
