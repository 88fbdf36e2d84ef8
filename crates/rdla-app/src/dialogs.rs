//! File dialogs behind a trait: rfd in the app, a scripted stand-in in tests.

use std::path::PathBuf;

/// What a dialog gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogResult {
    Picked(PathBuf),
    Cancelled,
    /// No dialog could be shown; the message says what to do instead.
    Unavailable(String),
}

pub trait Dialogs {
    fn pick_model(&mut self) -> DialogResult;
    /// A single-file model (`.gguf`).
    fn pick_gguf(&mut self) -> DialogResult;
    /// A text file to use as the prompt.
    fn pick_text(&mut self) -> DialogResult;
    /// A census's prompts file (JSONL, CSV or Parquet).
    fn pick_prompts(&mut self) -> DialogResult;
    /// A result file (`.rdla`).
    fn pick_result(&mut self) -> DialogResult;
    fn save_file(&mut self, default_name: &str, extension: &str) -> DialogResult;
}

/// Native dialogs through rfd (run on the main thread).
#[derive(Debug, Default)]
pub struct RfdDialogs;

const NO_DIALOG: &str = "no file dialog appeared: rfd needs xdg-desktop-portal or zenity on Linux";

/// A dialog that gives nothing back this soon never appeared (no portal, no zenity); later,
/// the user closed it.
const SHOWN_AT_LEAST: std::time::Duration = std::time::Duration::from_millis(400);

/// What rfd's answer means: a path, a dialog the user closed, or none shown at all (rfd says
/// `None` for both; the time it took tells them apart). `unavailable` says what to do instead.
fn answered(
    started: std::time::Instant,
    picked: Option<PathBuf>,
    unavailable: impl FnOnce() -> String,
) -> DialogResult {
    match picked {
        Some(p) => DialogResult::Picked(p),
        None if started.elapsed() >= SHOWN_AT_LEAST => DialogResult::Cancelled,
        None => DialogResult::Unavailable(unavailable()),
    }
}

impl Dialogs for RfdDialogs {
    fn pick_model(&mut self) -> DialogResult {
        let t = std::time::Instant::now();
        let picked = rfd::FileDialog::new()
            .set_title("Open a Hugging Face model folder")
            .pick_folder();
        answered(t, picked, || {
            format!("{NO_DIALOG}; you can also type a path or drop a folder on the window")
        })
    }

    fn pick_gguf(&mut self) -> DialogResult {
        let t = std::time::Instant::now();
        let picked = rfd::FileDialog::new()
            .set_title("Open a GGUF model file")
            .add_filter("GGUF", &["gguf"])
            .pick_file();
        answered(t, picked, || {
            format!("{NO_DIALOG}; you can also type its path")
        })
    }

    fn pick_text(&mut self) -> DialogResult {
        let t = std::time::Instant::now();
        let picked = rfd::FileDialog::new()
            .set_title("Open a text file as the prompt")
            .add_filter("Text", &["txt", "md", "json", "jsonl", "csv", "py", "rs"])
            .add_filter("Any file", &["*"])
            .pick_file();
        answered(t, picked, || format!("{NO_DIALOG}; paste the text instead"))
    }

    fn pick_prompts(&mut self) -> DialogResult {
        let t = std::time::Instant::now();
        let picked = rfd::FileDialog::new()
            .set_title("Open a census's prompts file")
            .add_filter("Prompts", &["jsonl", "ndjson", "json", "csv", "parquet"])
            .pick_file();
        answered(t, picked, || {
            format!("{NO_DIALOG}; type the file's path instead")
        })
    }

    fn pick_result(&mut self) -> DialogResult {
        let t = std::time::Instant::now();
        let picked = rfd::FileDialog::new()
            .set_title("Open a result file")
            .add_filter("rdla result", &["rdla"])
            .pick_file();
        answered(t, picked, || {
            format!("{NO_DIALOG}; open it with `rdla explore FILE.rdla` instead")
        })
    }

    fn save_file(&mut self, default_name: &str, extension: &str) -> DialogResult {
        let t = std::time::Instant::now();
        let picked = rfd::FileDialog::new()
            .set_file_name(default_name)
            .add_filter(extension.to_uppercase(), &[extension])
            .save_file();
        answered(t, picked, || format!("nothing saved: {NO_DIALOG}"))
    }
}

/// Answers every dialog with a preset path (tests, scripted runs).
#[derive(Debug, Clone, Default)]
pub struct ScriptedDialogs {
    pub model: Option<PathBuf>,
    pub save_dir: Option<PathBuf>,
}

impl Dialogs for ScriptedDialogs {
    fn pick_model(&mut self) -> DialogResult {
        self.model
            .clone()
            .map_or(DialogResult::Cancelled, DialogResult::Picked)
    }

    fn pick_gguf(&mut self) -> DialogResult {
        self.pick_model()
    }

    fn pick_text(&mut self) -> DialogResult {
        DialogResult::Cancelled
    }

    fn pick_prompts(&mut self) -> DialogResult {
        DialogResult::Cancelled
    }

    /// The scripted `model` path stands for the picked result file too.
    fn pick_result(&mut self) -> DialogResult {
        self.pick_model()
    }

    fn save_file(&mut self, default_name: &str, _extension: &str) -> DialogResult {
        self.save_dir.as_ref().map_or(DialogResult::Cancelled, |d| {
            DialogResult::Picked(d.join(default_name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rfd answers `None` both when the user closes the dialog and when none could be shown;
    /// a cancelled save said "no file dialog appeared?".
    #[test]
    fn a_closed_dialog_is_a_cancel_and_an_instant_none_is_no_dialog() {
        let long_ago = std::time::Instant::now() - 2 * SHOWN_AT_LEAST;
        assert_eq!(
            answered(long_ago, None, || "none".into()),
            DialogResult::Cancelled
        );
        assert_eq!(
            answered(std::time::Instant::now(), None, || "none".into()),
            DialogResult::Unavailable("none".into())
        );
        let p = PathBuf::from("/x");
        assert_eq!(
            answered(std::time::Instant::now(), Some(p.clone()), || "none".into()),
            DialogResult::Picked(p)
        );
    }
}
