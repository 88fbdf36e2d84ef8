//! The Census view: attribute every prompt of a file (JSONL, CSV or Parquet) on the worker,
//! with progress and a Stop button; then the mean heatmap over the prompts (layers × heads,
//! the attention bias, the MLP; each cell's 95 % interval on hover), and for the node clicked
//! its distribution over the prompts (a histogram) and the prompts sorted by its value — a
//! click opens that prompt in the explorer at that node. The mean view exports as PNG.

use egui::Ui;
use egui_plot::{Bar, BarChart, Plot, VLine};
use rdla_attrib::Path;
use rdla_session::Heatmap;
use rdla_session::census::CensusTable;

use crate::panels::heatmap::HeatmapView;
use crate::settings::Settings;
use crate::state::{Action, AppState, Pick};
use crate::theme;

/// Histogram bins of a node's distribution.
const BINS: usize = 30;
/// Prompts listed under the histogram (the largest and the smallest values).
const LISTED: usize = 12;

pub fn show(
    ui: &mut Ui,
    state: &AppState,
    settings: &Settings,
    mean: Option<&Heatmap>,
    actions: &mut Vec<Action>,
) {
    let c = &state.census;
    let mut file = c.file.clone();
    ui.horizontal_wrapped(|ui| {
        if ui.button("Back to the heatmap").clicked() {
            actions.push(Action::ShowCensus(false));
        }
        ui.separator();
        ui.label("Prompts file");
        let edit = ui.add(
            egui::TextEdit::singleline(&mut file)
                .hint_text("prompts.jsonl / .csv / .parquet")
                .desired_width(280.0),
        );
        edit.widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::TextInput, true, "Census prompts file")
        });
        if ui.button("Browse…").clicked() {
            actions.push(Action::Pick(Pick::CensusPrompts));
        }
        let ready = c.running.is_none() && state.model.is_some() && !file.trim().is_empty();
        let run = ui
            .add_enabled(ready, egui::Button::new("Run census"))
            .on_hover_text(
                "attribute every record ({\"prompt\", \"answer\", \"foil\"?}) with this model; \
                 records whose answer is not one token are skipped and listed",
            );
        let entered = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (run.clicked() || entered) && ready {
            actions.push(Action::RunCensus(file.trim().into()));
        }
        if c.table.is_some() && ui.button("Export census PNG…").clicked() {
            actions.push(Action::ExportCensusPng);
        }
    });
    if file != c.file {
        actions.push(Action::SetCensusFile(file));
    }
    if let Some((done, total)) = c.running {
        ui.horizontal(|ui| {
            let frac = if total > 0 {
                done as f32 / total as f32
            } else {
                0.0
            };
            let left = c.started.filter(|_| done > 0).map(|t| {
                let spent = t.elapsed().as_secs_f64();
                spent / done as f64 * (total - done) as f64
            });
            let text = match left {
                Some(s) => format!("{done} / {total} prompts · {:.0} s left", s.ceil()),
                None => format!("{done} / {total} prompts"),
            };
            ui.add(egui::ProgressBar::new(frac).desired_width(300.0).text(text));
            if ui.button("Stop census").clicked() {
                actions.push(Action::CancelCensus);
            }
        });
    }
    if let Some(e) = &c.error {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    let (Some(table), Some(hm)) = (c.table.as_ref(), mean) else {
        if c.running.is_none() && c.error.is_none() {
            ui.label(
                "A census attributes every prompt of a file and shows each node's mean over \
                 them. One record per line: {\"prompt\": \"…\", \"answer\": \" Mary\", \
                 \"foil\": \" John\"} (JSONL), or a CSV / Parquet table with those columns.",
            );
        }
        return;
    };
    summary_line(ui, table);
    // the mean heatmap above, the selected node's distribution below
    let height = ui.available_height();
    ui.allocate_ui(egui::vec2(ui.available_width(), height * 0.55), |ui| {
        let mean_target = if table.prompts.is_empty() {
            0.0
        } else {
            table.prompts.iter().map(|p| p.target_value).sum::<f32>() / table.prompts.len() as f32
        };
        let selected = c.selected.as_ref().and_then(|p| cell_of(hm, p));
        let resp = HeatmapView {
            hm,
            colormap: settings.colormap,
            selected,
            parent_value: mean_target,
        }
        .show(ui);
        if let Some(t) = resp.clicked.and_then(|(r, col)| hm.target(r, col)) {
            actions.push(Action::CensusSelect(t.clone()));
        }
    });
    ui.separator();
    if let Some(p) = &c.selected {
        distribution(ui, table, p, actions);
    }
}

/// Prompts, skipped records, the mean target.
fn summary_line(ui: &mut Ui, t: &CensusTable) {
    let n = t.prompts.len();
    let mean = |f: fn(&rdla_session::census::PromptRow) -> f32| {
        t.prompts.iter().map(|p| f64::from(f(p))).sum::<f64>() / n.max(1) as f64
    };
    let mut line = format!(
        "{n} prompts · mean target {:+.4} · mean answer probability {:.3}",
        mean(|p| p.target_value),
        mean(|p| p.prob)
    );
    if n < t.todo {
        line.push_str(&format!(" · stopped after {n} of {}", t.todo));
    }
    ui.label(line);
    if !t.skipped.is_empty() {
        ui.collapsing(format!("{} records skipped", t.skipped.len()), |ui| {
            for (r, why) in &t.skipped {
                ui.label(format!("{}: {why}", r.place));
            }
        });
    }
}

/// The heatmap cell whose target is `p`.
fn cell_of(hm: &Heatmap, p: &Path) -> Option<(usize, usize)> {
    let k = hm.targets.iter().position(|t| t.as_ref() == Some(p))?;
    Some((k / hm.n_cols(), k % hm.n_cols()))
}

/// A node's histogram over the prompts, its statistics, and the prompts by its value.
fn distribution(ui: &mut Ui, t: &CensusTable, p: &Path, actions: &mut Vec<Action>) {
    let key = p.to_string();
    let (Some(values), Some(s)) = (t.column(&key), t.stat(&key)) else {
        return;
    };
    ui.label(format!(
        "{key}: mean {:+.4}, 95 % interval [{:+.4}, {:+.4}], std {:.4}, among its siblings' \
         ten largest in {:.0} % of prompts",
        s.mean,
        s.ci95_low,
        s.ci95_high,
        s.std,
        100.0 * s.top10_frac
    ));
    ui.columns(2, |cols| {
        histogram(&mut cols[0], &key, &values, s.mean);
        prompts(&mut cols[1], t, p, actions);
    });
}

fn histogram(ui: &mut Ui, key: &str, values: &[f32], mean: f64) {
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return;
    }
    let width = f64::from((hi - lo).max(1e-6)) / BINS as f64;
    let mut counts = [0u32; BINS];
    for &v in values {
        let b = ((f64::from(v - lo)) / width) as usize;
        counts[b.min(BINS - 1)] += 1;
    }
    let bars: Vec<Bar> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let x = f64::from(lo) + (i as f64 + 0.5) * width;
            Bar::new(x, f64::from(n))
                .width(width * 0.9)
                .fill(if x >= 0.0 {
                    theme::POSITIVE
                } else {
                    theme::NEGATIVE
                })
        })
        .collect();
    Plot::new(("census-histogram", key))
        .height(ui.available_height().clamp(120.0, 260.0))
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .x_axis_label(format!("{key} (logit) over the prompts"))
        .y_axis_label("prompts")
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("prompts", bars));
            plot.vline(VLine::new("mean", mean));
        });
}

/// The prompts with the largest and the smallest values of `p`; a click opens one in the
/// explorer at `p`.
fn prompts(ui: &mut Ui, t: &CensusTable, p: &Path, actions: &mut Vec<Action>) {
    let sorted = t.sorted_by(&p.to_string());
    let n = sorted.len();
    let shown: Vec<(usize, f32)> = if n <= 2 * LISTED {
        sorted
    } else {
        sorted[..LISTED]
            .iter()
            .chain(&sorted[n - LISTED..])
            .copied()
            .collect()
    };
    ui.label("prompts by this node's value (click: open it in the explorer here)");
    egui::ScrollArea::vertical()
        .id_salt("census-prompts")
        .show(ui, |ui| {
            egui::Grid::new("census-prompts-grid")
                .num_columns(2)
                .striped(true)
                .show(ui, |ui| {
                    for (k, &(row, v)) in shown.iter().enumerate() {
                        if k == LISTED && n > 2 * LISTED {
                            ui.label("…");
                            ui.label(format!("{} more", n - 2 * LISTED));
                            ui.end_row();
                        }
                        let r = &t.prompts[row];
                        ui.monospace(format!("{v:+.4}"));
                        let text = format!("#{} {} → {:?}", r.index, short(&r.prompt), r.answer);
                        if ui
                            .link(text)
                            .on_hover_text(format!("open prompt #{} at {p}", r.index))
                            .clicked()
                        {
                            actions.push(Action::OpenCensusPrompt {
                                row,
                                path: p.clone(),
                            });
                        }
                        ui.end_row();
                    }
                });
        });
}

/// A prompt on one line, at most 60 characters (its end kept: the answer follows it).
fn short(prompt: &str) -> String {
    let one: String = prompt
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let n = one.chars().count();
    if n <= 60 {
        one
    } else {
        format!("…{}", one.chars().skip(n - 59).collect::<String>())
    }
}
