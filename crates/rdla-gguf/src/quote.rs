//! Text that comes out of a file, made safe to put in a message: an architecture name, a
//! tensor name, a metadata key or a token is written between backticks with control and
//! direction-changing characters escaped (an escape sequence in a file must not clear the
//! terminal or fake a line of output) and cut after [`MAX_CHARS`] characters (a 1 MB name
//! must not make a 1 MB error line).

use std::fmt::{self, Write as _};

/// How many characters of a quoted text a message shows.
pub const MAX_CHARS: usize = 200;

/// `text` as [`quote`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(&'a str);

/// `text` quoted for a message: `` `text` ``, control characters (`\u{1b}`, `\n`, …) and
/// Unicode direction/format controls escaped, and anything beyond [`MAX_CHARS`] characters
/// replaced by `…` and the text's full length in bytes.
pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

/// Unicode format characters that change how the text around them is shown (zero-width
/// characters, line/paragraph separators, bidirectional overrides and isolates, BOM).
fn is_invisible_control(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('`')?;
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_CHARS {
                return write!(f, "…` ({} bytes)", self.0.len());
            }
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() || is_invisible_control(c) => {
                    write!(f, "{}", c.escape_unicode())?;
                }
                c => f.write_char(c)?,
            }
        }
        f.write_char('`')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        assert_eq!(quote("llama").to_string(), "`llama`");
        assert_eq!(
            quote("a\u{1b}[2Jb\nc\u{202E}d").to_string(),
            "`a\\u{1b}[2Jb\\nc\\u{202e}d`"
        );
        let long = "é".repeat(1000);
        let q = quote(&long).to_string();
        assert_eq!(q, format!("`{}…` (2000 bytes)", "é".repeat(MAX_CHARS)));
        let exact = "x".repeat(MAX_CHARS);
        assert_eq!(quote(&exact).to_string(), format!("`{exact}`"));
    }
}
