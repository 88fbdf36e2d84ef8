//! The explorer's colours, in one place.

use egui::Color32;

/// Errors (compute errors, invalid input).
pub const ERROR: Color32 = Color32::from_rgb(230, 80, 60);
/// Warnings (an incomplete decomposition, a non-finite value).
pub const WARN: Color32 = Color32::from_rgb(230, 150, 40);
/// Confirmations (the answer is one token).
pub const OK: Color32 = Color32::from_rgb(90, 170, 90);
/// The background of the load-error banner.
pub const ERROR_BANNER: Color32 = Color32::from_rgb(90, 20, 20);
/// Behind the notice that the results shown are the previous computation's.
pub const STALE_BANNER: Color32 = Color32::from_rgb(110, 80, 20);
/// The BOS token in the token strip.
pub const BOS: Color32 = Color32::from_rgb(70, 70, 120);
/// The selected heatmap cell's outline.
pub const SELECTION: Color32 = Color32::from_rgb(255, 170, 0);
/// Text on strongly coloured cells.
pub const ON_STRONG: Color32 = Color32::WHITE;
/// Text on pale cells.
pub const ON_PALE: Color32 = Color32::from_gray(30);
/// The zero line under the bars.
pub const AXIS: Color32 = Color32::from_gray(150);

/// An `[r, g, b]` colour (the session's colour maps) as an egui colour.
pub fn rgb(c: [u8; 3]) -> Color32 {
    Color32::from_rgb(c[0], c[1], c[2])
}

/// Positive values in charts (bars, token lists): the red end of the diverging map.
pub const POSITIVE: Color32 = Color32::from_rgb(200, 70, 60);
/// Negative values in charts: the blue end.
pub const NEGATIVE: Color32 = Color32::from_rgb(60, 110, 200);
