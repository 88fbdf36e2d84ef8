//! The one heatmap renderer: a [`Heatmap`] to a PNG with a title, axis labels (token text,
//! component names) and a colour bar. Text is rasterised with `ab_glyph` (DejaVu Sans).

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::geometry::{Fit, Geometry, LABEL_PT, Rect, SUBTITLE_PT, TITLE_PT, VALUE_PT};
use crate::heatmap::{ColorMap, Heatmap};

/// DejaVu Sans, also the GUI's fallback font (wide Unicode coverage).
pub static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("font: {0}")]
    Font(String),
    #[error("cannot encode PNG: {source}")]
    Encode {
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

pub fn font() -> Result<FontRef<'static>, PngError> {
    FontRef::try_from_slice(FONT_BYTES).map_err(|e| PngError::Font(e.to_string()))
}

/// The width of `text` at `px` pixels (points at scale 1).
pub fn text_width(font: &FontRef<'_>, px: f32, text: &str) -> f32 {
    let f = font.as_scaled(PxScale::from(px));
    text.chars().map(|c| f.h_advance(f.glyph_id(c))).sum()
}

/// Coverage mask of `text` at `px`.
pub(crate) fn rasterize(font: &FontRef<'_>, px: f32, text: &str) -> GrayImage {
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

pub(crate) fn blit(img: &mut RgbImage, mask: &GrayImage, x: i32, y: i32, color: [u8; 3]) {
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

pub(crate) fn fill(img: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, c: [u8; 3]) {
    for y in y0..(y0 + h).min(img.height()) {
        for x in x0..(x0 + w).min(img.width()) {
            img.put_pixel(x, y, Rgb(c));
        }
    }
}

/// Shorten a label to at most `max` characters.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The logical size (points) the PNG lays a heatmap out in before scaling.
pub const PNG_FIT: (f32, f32) = (1400.0, 900.0);

/// An image being drawn: logical coordinates (points) scaled to pixels.
struct Canvas<'f> {
    img: RgbImage,
    font: FontRef<'f>,
    scale: f32,
}

/// Ink colours of the PNG.
const INK: [u8; 3] = [20, 20, 20];
const WEAK: [u8; 3] = [70, 70, 70];
const WHITE: [u8; 3] = [255, 255, 255];
const MISSING: [u8; 3] = [225, 225, 225];
const AXIS: [u8; 3] = [150, 150, 150];

impl Canvas<'_> {
    fn px(&self, v: f32) -> i32 {
        (v * self.scale).round() as i32
    }

    fn rect(&mut self, r: Rect, c: [u8; 3]) {
        let (x0, y0) = (self.px(r.x).max(0) as u32, self.px(r.y).max(0) as u32);
        let (x1, y1) = (
            self.px(r.right()).max(0) as u32,
            self.px(r.bottom()).max(0) as u32,
        );
        fill(
            &mut self.img,
            x0,
            y0,
            x1.saturating_sub(x0).max(1),
            y1.saturating_sub(y0).max(1),
            c,
        );
    }

    /// Text at `(x, y)`, placed by `anchor` (0 = left/top, 0.5 = centre, 1 = right/bottom on
    /// each axis); `rotated` runs it bottom to top.
    fn text(
        &mut self,
        t: &str,
        pt: f32,
        (x, y): (f32, f32),
        anchor: (f32, f32),
        c: [u8; 3],
        rotated: bool,
    ) {
        let mut m = rasterize(&self.font, pt * self.scale, t);
        if rotated {
            m = image::imageops::rotate270(&m);
        }
        let (w, h) = (m.width() as f32, m.height() as f32);
        let (ax, ay) = anchor;
        blit(
            &mut self.img,
            &m,
            (x * self.scale - ax * w) as i32,
            (y * self.scale - ay * h) as i32,
            c,
        );
    }

    fn label(&mut self, t: &str, at: (f32, f32), anchor: (f32, f32)) {
        self.text(t, LABEL_PT, at, anchor, INK, false);
    }

    /// A value printed inside a cell, white on strong colours.
    fn value(&mut self, cell: Rect, v: f32, range: f32) {
        let c = if v.abs() > 0.6 * range { WHITE } else { INK };
        self.text(
            &format!("{v:.2}"),
            VALUE_PT,
            cell.center(),
            (0.5, 0.5),
            c,
            false,
        );
    }
}

/// Render `hm` to an image, laid out by the same [`Geometry`] as the window.
pub fn render(hm: &Heatmap, opts: PngOptions) -> Result<RgbImage, PngError> {
    let font = font()?;
    let scale = opts.scale.max(0.5);
    let measure = |t: &str, pt: f32| text_width(&font, pt, t);
    let g = Geometry::new(
        hm,
        Fit {
            width: PNG_FIT.0,
            height: PNG_FIT.1,
            header: true,
        },
        &measure,
    );
    let (width, height) = (
        ((g.size.0 * scale).round() as u32).max(1),
        ((g.size.1 * scale).round() as u32).max(1),
    );
    let mut cv = Canvas {
        img: RgbImage::from_pixel(width, height, Rgb(WHITE)),
        font,
        scale,
    };
    let cm = opts.colormap;
    cv.header(hm, &g);
    cv.cells(hm, &g, cm);
    cv.strip(hm, &g);
    let col_sums = cv.sums(hm, &g, cm);
    cv.bars(hm, &g, &col_sums, cm);
    cv.row_bars(hm, &g, cm);
    cv.colour_bar(hm, &g, cm);
    Ok(cv.img)
}

impl Canvas<'_> {
    /// Title, subtitle and the axis titles.
    fn header(&mut self, hm: &Heatmap, g: &Geometry) {
        if let (Some(t), Some(st)) = (g.title, g.subtitle) {
            self.text(&hm.title, TITLE_PT, (t.x, t.y), (0.0, 0.0), INK, false);
            self.text(
                &hm.subtitle,
                SUBTITLE_PT,
                (st.x, st.y),
                (0.0, 0.0),
                WEAK,
                false,
            );
        }
        if !hm.col_title.is_empty() {
            self.label(
                &hm.col_title,
                (g.col_title.center().0, g.col_title.y),
                (0.5, 0.0),
            );
        }
        if !hm.row_title.is_empty() {
            self.text(
                &hm.row_title,
                LABEL_PT,
                g.row_title.center(),
                (0.5, 0.5),
                INK,
                true,
            );
        }
    }

    /// The grid and its row and column labels.
    fn cells(&mut self, hm: &Heatmap, g: &Geometry, cm: ColorMap) {
        let range = hm.color_range();
        for r in 0..hm.n_rows() {
            for c in 0..hm.n_cols() {
                let cell = g.cell_rect(r, c);
                match hm.get(r, c) {
                    Some(v) => {
                        self.rect(cell, cm.color(v, range));
                        if g.values_fit() {
                            self.value(cell, v, range);
                        }
                    }
                    None => self.rect(cell, MISSING),
                }
            }
        }
        let label_right = g.row_labels.right();
        for (r, l) in hm.rows.iter().enumerate().step_by(g.row_step) {
            let (_, cy) = g.cell_rect(r, 0).center();
            self.label(&clip(l, 24), (label_right, cy), (1.0, 0.5));
        }
        let labels_bottom = g.strip.map_or(g.grid.y, |st| st.y) - 4.0;
        for (c, l) in hm.cols.iter().enumerate().step_by(g.col_step) {
            let (cx, _) = g.cell_rect(0, c).center();
            self.text(
                &clip(l, 20),
                LABEL_PT,
                (cx, labels_bottom),
                (0.5, 1.0),
                INK,
                true,
            );
        }
    }

    /// The attention strip above the columns.
    fn strip(&mut self, hm: &Heatmap, g: &Geometry) {
        let (Some((label, values)), Some(strip)) = (&hm.strip, g.strip) else {
            return;
        };
        for (c, &a) in values.iter().enumerate().take(hm.n_cols()) {
            if let Some(sr) = g.strip_rect(c) {
                self.rect(sr, strip_color(a));
            }
        }
        self.label(label, (g.row_labels.right(), strip.center().1), (1.0, 0.5));
    }

    /// Row sums beside the grid and the column-sums row under it; returns the column sums.
    fn sums(&mut self, hm: &Heatmap, g: &Geometry, cm: ColorMap) -> Vec<f32> {
        let heading = g.row_sums_heading;
        self.label("row sum", (heading.x, heading.bottom() - 2.0), (0.0, 1.0));
        for (r, v) in hm.row_sums().iter().enumerate().step_by(g.row_step) {
            let (_, cy) = g.cell_rect(r, 0).center();
            self.label(&format!("{v:+.3}"), (g.row_sums.x, cy), (0.0, 0.5));
        }
        let col_sums = hm.col_sums();
        let col_max = crate::heatmap::max_abs(col_sums.iter().copied());
        self.label(
            "col sum",
            (g.row_labels.right(), g.col_sums.center().1),
            (1.0, 0.5),
        );
        for (c, v) in col_sums.iter().enumerate() {
            let cell = g.col_sum_rect(c);
            self.rect(cell, cm.color(*v, col_max));
            if g.values_fit() {
                self.value(cell, *v, col_max);
            }
        }
        col_sums
    }

    /// The row sums as horizontal bars beside the rows (a score's query side).
    fn row_bars(&mut self, hm: &Heatmap, g: &Geometry, cm: ColorMap) {
        let Some(b) = g.row_bars else {
            return;
        };
        let sums = hm.row_sums();
        let max = crate::heatmap::max_abs(sums.iter().copied());
        self.rect(Rect::new(b.x + b.w / 2.0, b.y, 0.0, b.h), AXIS);
        for (r, v) in sums.iter().enumerate() {
            if let Some(br) = g.row_bar_rect(r, *v, max) {
                self.rect(br, cm.color(v.signum() * max, max));
            }
        }
    }

    /// The column sums as bars under the columns (head views).
    fn bars(&mut self, hm: &Heatmap, g: &Geometry, col_sums: &[f32], cm: ColorMap) {
        let Some(b) = g.bars else {
            return;
        };
        let col_max = crate::heatmap::max_abs(col_sums.iter().copied());
        self.rect(Rect::new(b.x, b.y + b.h / 2.0, b.w, 0.0), AXIS);
        for (c, v) in col_sums.iter().enumerate() {
            if let Some(br) = g.bar_rect(c, *v, col_max) {
                self.rect(br, cm.color(v.signum() * col_max, col_max));
            }
        }
        let right = g.row_labels.right();
        self.label(&format!("{col_max:+.3}"), (right, b.y), (1.0, 0.0));
        self.label(
            &format!("{:+.3}", -col_max),
            (right, b.bottom()),
            (1.0, 1.0),
        );
        if let Some(cap) = g.bars_caption {
            self.text(
                hm.bars_caption(),
                LABEL_PT,
                (cap.x, cap.y),
                (0.0, 0.0),
                WEAK,
                false,
            );
        }
    }

    /// The colour bar (top = +range, bottom = −range), its ticks and the units.
    fn colour_bar(&mut self, hm: &Heatmap, g: &Geometry, cm: ColorMap) {
        let range = hm.color_range();
        let bar = g.colour_bar;
        let steps = (bar.h * self.scale).max(2.0) as usize;
        for i in 0..steps {
            let v = range * (1.0 - 2.0 * i as f32 / (steps - 1) as f32);
            let y = bar.y + bar.h * i as f32 / steps as f32;
            self.rect(
                Rect::new(bar.x, y, bar.w, bar.h / steps as f32),
                cm.color(v, range),
            );
        }
        for (frac, v) in [(0.0, range), (0.5, 0.0), (1.0, -range)] {
            self.label(
                &format!("{v:+.3}"),
                (bar.right() + 3.0, bar.y + frac * bar.h),
                (0.0, 0.5),
            );
        }
        self.text(
            hm.units.label(),
            LABEL_PT,
            (bar.x, bar.bottom() + 4.0),
            (0.0, 0.0),
            WEAK,
            false,
        );
    }
}

/// The caption under the bars.
pub const BARS_CAPTION: &str = "contribution by source position (Σ over the column)";

/// The colour of an attention weight `a ∈ [0, 1]` in the strip: white to blue.
pub fn strip_color(a: f32) -> [u8; 3] {
    let v = (255.0 * (1.0 - a.clamp(0.0, 1.0))) as u8;
    [v, v, 255]
}

/// An image as PNG bytes: the one encoder of every picture rdla writes.
pub fn encode(img: &RgbImage) -> Result<Vec<u8>, PngError> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|source| PngError::Encode { source })?;
    Ok(out.into_inner())
}

/// Render `hm` and encode it as PNG bytes.
pub fn encode_png(hm: &Heatmap, opts: PngOptions) -> Result<(Vec<u8>, (u32, u32)), PngError> {
    let img = render(hm, opts)?;
    Ok((encode(&img)?, img.dimensions()))
}

/// Render an attribution graph (laid out by [`crate::graph::layout`], the window's layout) to
/// PNG bytes, with a title and caption lines (the summary; the verification once verified).
pub fn encode_graph_png(
    g: &crate::graph::GraphLayout,
    title: &str,
    caption: &[&str],
    scale: f32,
) -> Result<(Vec<u8>, (u32, u32)), PngError> {
    let scale = scale.max(0.5);
    // the title, then one line per caption line
    let header = 30.0 + 20.0 * caption.len().max(1) as f32;
    let (w, h) = (g.size.0, g.size.1 + header);
    let mut cv = Canvas {
        img: RgbImage::from_pixel(
            ((w * scale).round() as u32).max(1),
            ((h * scale).round() as u32).max(1),
            Rgb(WHITE),
        ),
        font: font()?,
        scale,
    };
    cv.text(title, TITLE_PT, (10.0, 8.0), (0.0, 0.0), INK, false);
    for (i, line) in caption.iter().enumerate() {
        cv.text(
            line,
            SUBTITLE_PT,
            (10.0, 30.0 + 20.0 * i as f32),
            (0.0, 0.0),
            WEAK,
            false,
        );
    }
    let shift = |(x, y): (f32, f32)| (x, y + header);
    for (y, label) in &g.rows {
        cv.label(label, (60.0, y + header), (1.0, 0.5));
    }
    for (x, label) in &g.columns {
        cv.text(
            label,
            LABEL_PT,
            (x + 0.0, g.size.1 + header - 85.0),
            (1.0, 0.5),
            INK,
            true,
        );
    }
    let max_w = crate::heatmap::max_abs(g.edges.iter().map(|e| e.width)).max(1e-6);
    for e in &g.edges {
        cv.line(
            shift(e.from),
            shift(e.to),
            e.width,
            crate::graph::sign_color(e.value, 0.35 + 0.65 * e.width / max_w),
        );
    }
    for n in &g.nodes {
        let (x, y) = shift((n.x, n.y));
        cv.disc((x, y), n.radius + 1.0, INK);
        cv.disc((x, y), n.radius, crate::graph::sign_color(n.value, 1.0));
        if n.radius >= 6.0 {
            cv.text(
                &n.site.to_string(),
                VALUE_PT,
                (x, y - n.radius - 1.0),
                (0.5, 1.0),
                INK,
                false,
            );
        }
    }
    Ok((encode(&cv.img)?, cv.img.dimensions()))
}

impl Canvas<'_> {
    /// A filled disc of radius `r` (points) centred at `c`.
    fn disc(&mut self, c: (f32, f32), r: f32, color: [u8; 3]) {
        let (cx, cy, rp) = (c.0 * self.scale, c.1 * self.scale, r * self.scale);
        let (w, h) = self.img.dimensions();
        let y0 = (cy - rp).floor().max(0.0) as u32;
        let y1 = ((cy + rp).ceil().max(0.0) as u32).min(h);
        let x0 = (cx - rp).floor().max(0.0) as u32;
        let x1 = ((cx + rp).ceil().max(0.0) as u32).min(w);
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if dx * dx + dy * dy <= rp * rp {
                    self.img.put_pixel(x, y, Rgb(color));
                }
            }
        }
    }

    /// A straight anti-aliased line of width `width` (points; at least 1.5 pixels).
    fn line(&mut self, a: (f32, f32), b: (f32, f32), width: f32, color: [u8; 3]) {
        let px = |p: (f32, f32)| (p.0 * self.scale, p.1 * self.scale);
        let w = (width * self.scale).max(1.5);
        crate::plot::line(&mut self.img, px(a), px(b), w, color);
    }
}
