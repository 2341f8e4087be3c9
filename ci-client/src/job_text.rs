//! A job's output made safe for the user's terminal.
//!
//! A job is code from anyone who can push: written to a terminal byte for
//! byte, its output could set the clipboard (OSC 52), the window title, plant
//! links (OSC 8) or clear the screen. On a terminal only colour (SGR)
//! sequences, `\n` and `\t` pass; every other control character is shown
//! escaped. Piped output keeps its bytes, without the colours.

/// What happens to a job's output on its way to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Byte for byte (`--raw`).
    Raw,
    /// A terminal: colours kept (unless `colours` is false), other control
    /// characters escaped.
    Terminal { colours: bool },
    /// A pipe or file: the bytes as they are, colour sequences removed.
    Plain,
}

impl OutputMode {
    /// The mode for stdout: `raw` from `--raw`, whether stdout is a terminal,
    /// and whether `NO_COLOR` is set (to anything but the empty string, as
    /// no-color.org says).
    pub fn choose(raw: bool, is_terminal: bool, no_color: bool) -> Self {
        match (raw, is_terminal) {
            (true, _) => OutputMode::Raw,
            (false, true) => OutputMode::Terminal { colours: !no_color },
            (false, false) => OutputMode::Plain,
        }
    }
}

/// The longest escape sequence held back while waiting for its end; a
/// longer one is shown escaped instead of being buffered without limit.
const MAX_PENDING: usize = 256;

/// Filters a job's output chunk by chunk; an escape sequence split between
/// chunks is held until its end arrives.
#[derive(Debug)]
pub struct OutputFilter {
    mode: OutputMode,
    /// The start of an escape sequence whose end has not arrived yet.
    pending: String,
}

impl OutputFilter {
    pub fn new(mode: OutputMode) -> Self {
        OutputFilter {
            mode,
            pending: String::new(),
        }
    }

    /// The text to write for `chunk`.
    pub fn filter(&mut self, chunk: &str) -> String {
        if self.mode == OutputMode::Raw {
            return chunk.to_string();
        }
        let mut text = std::mem::take(&mut self.pending);
        text.push_str(chunk);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(c) = rest.chars().next() {
            if c == '\x1b' {
                match sgr_length(rest) {
                    Sgr::Complete(len) => {
                        self.colour(&rest[..len], &mut out);
                        rest = &rest[len..];
                        continue;
                    }
                    Sgr::Incomplete if rest.len() < MAX_PENDING => {
                        self.pending = rest.to_string();
                        return out;
                    }
                    Sgr::Incomplete | Sgr::Other => {}
                }
            }
            self.character(c, &mut out);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// What is still held back at the end of the output, shown escaped.
    pub fn finish(&mut self) -> String {
        let pending = std::mem::take(&mut self.pending);
        let mut out = String::new();
        for c in pending.chars() {
            self.character(c, &mut out);
        }
        out
    }

    fn colour(&self, sequence: &str, out: &mut String) {
        if self.mode == (OutputMode::Terminal { colours: true }) {
            out.push_str(sequence);
        }
    }

    fn character(&self, c: char, out: &mut String) {
        let is_terminal = matches!(self.mode, OutputMode::Terminal { .. });
        if is_terminal && c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

enum Sgr {
    /// A whole `ESC [ <digits and ;> m` of this many bytes.
    Complete(usize),
    /// Could still become one: the text ends inside it.
    Incomplete,
    /// Any other escape sequence.
    Other,
}

/// Whether `text` (starting with ESC) starts with a colour sequence.
fn sgr_length(text: &str) -> Sgr {
    let bytes = text.as_bytes();
    match bytes.get(1) {
        None => return Sgr::Incomplete,
        Some(b'[') => {}
        Some(_) => return Sgr::Other,
    }
    for (i, b) in bytes.iter().enumerate().skip(2) {
        match b {
            b'0'..=b'9' | b';' | b':' => {}
            b'm' => return Sgr::Complete(i + 1),
            _ => return Sgr::Other,
        }
    }
    Sgr::Incomplete
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMINAL: OutputMode = OutputMode::Terminal { colours: true };

    fn through(mode: OutputMode, chunks: &[&str]) -> String {
        let mut filter = OutputFilter::new(mode);
        let mut out: String = chunks.iter().map(|c| filter.filter(c)).collect();
        out.push_str(&filter.finish());
        out
    }

    #[test]
    fn a_terminal_gets_colours_newlines_and_tabs_only() {
        let text = "\x1b[31mFAILED\x1b[0m\ta\n\x1b]52;c;ZXZpbA==\x07\x1b]0;title\x07\x1b[2J\rx";
        assert_eq!(
            through(TERMINAL, &[text]),
            "\x1b[31mFAILED\x1b[0m\ta\n\\u{1b}]52;c;ZXZpbA==\\u{7}\\u{1b}]0;title\\u{7}\\u{1b}[2J\\rx"
        );
    }

    #[test]
    fn links_are_shown_not_planted() {
        let link = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\";
        let shown = through(TERMINAL, &[link]);
        assert!(!shown.contains('\x1b'), "{shown:?}");
        assert!(shown.contains("click"));
    }

    #[test]
    fn sequences_split_between_chunks_are_recognised() {
        assert_eq!(
            through(TERMINAL, &["a\x1b", "[3", "2mok\x1b[0m\n"]),
            "a\x1b[32mok\x1b[0m\n"
        );
        assert_eq!(
            through(TERMINAL, &["a\x1b", "]0;t\x07"]),
            "a\\u{1b}]0;t\\u{7}"
        );
        // An escape at the very end is shown, not lost.
        assert_eq!(through(TERMINAL, &["end\x1b["]), "end\\u{1b}[");
    }

    #[test]
    fn no_color_and_pipes_drop_only_the_colours() {
        let text = "\x1b[1;31mE\x1b[0m \x1b]0;t\x07\n";
        assert_eq!(
            through(OutputMode::Terminal { colours: false }, &[text]),
            "E \\u{1b}]0;t\\u{7}\n"
        );
        assert_eq!(through(OutputMode::Plain, &[text]), "E \x1b]0;t\x07\n");
        assert_eq!(through(OutputMode::Raw, &[text]), text);
    }

    #[test]
    fn modes_follow_the_flags() {
        assert_eq!(OutputMode::choose(true, true, false), OutputMode::Raw);
        assert_eq!(OutputMode::choose(false, true, false), TERMINAL);
        assert_eq!(
            OutputMode::choose(false, true, true),
            OutputMode::Terminal { colours: false }
        );
        assert_eq!(OutputMode::choose(false, false, false), OutputMode::Plain);
    }
}
