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
    fn save_file(&mut self, default_name: &str, extension: &str) -> DialogResult;
}

/// Native dialogs through rfd (run on the main thread).
#[derive(Debug, Default)]
pub struct RfdDialogs;

const NO_DIALOG: &str = "no file dialog appeared? rfd needs xdg-desktop-portal or zenity on Linux";

impl Dialogs for RfdDialogs {
    fn pick_model(&mut self) -> DialogResult {
        match rfd::FileDialog::new()
            .set_title("Open a Hugging Face model folder")
            .pick_folder()
        {
            Some(p) => DialogResult::Picked(p),
            None => DialogResult::Unavailable(format!(
                "no folder chosen ({NO_DIALOG}; you can also type a path or drop a folder on the window)"
            )),
        }
    }

    fn pick_gguf(&mut self) -> DialogResult {
        match rfd::FileDialog::new()
            .set_title("Open a GGUF model file")
            .add_filter("GGUF", &["gguf"])
            .pick_file()
        {
            Some(p) => DialogResult::Picked(p),
            None => DialogResult::Unavailable(format!(
                "no file chosen ({NO_DIALOG}; you can also type its path)"
            )),
        }
    }

    fn pick_text(&mut self) -> DialogResult {
        match rfd::FileDialog::new()
            .set_title("Open a text file as the prompt")
            .add_filter("Text", &["txt", "md", "json", "jsonl", "csv", "py", "rs"])
            .add_filter("Any file", &["*"])
            .pick_file()
        {
            Some(p) => DialogResult::Picked(p),
            None => DialogResult::Unavailable(format!("no file chosen ({NO_DIALOG})")),
        }
    }

    fn save_file(&mut self, default_name: &str, extension: &str) -> DialogResult {
        match rfd::FileDialog::new()
            .set_file_name(default_name)
            .add_filter(extension.to_uppercase(), &[extension])
            .save_file()
        {
            Some(p) => DialogResult::Picked(p),
            None => DialogResult::Unavailable(format!("nothing saved ({NO_DIALOG})")),
        }
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

    fn save_file(&mut self, default_name: &str, _extension: &str) -> DialogResult {
        self.save_dir.as_ref().map_or(DialogResult::Cancelled, |d| {
            DialogResult::Picked(d.join(default_name))
        })
    }
}
