//! Text from the server made harmless for a terminal. Process names, agent versions, host
//! names, error messages and LAMI cells come from traced hosts and agents: a process can name
//! itself `"\x1b]0;title\x07\x1b[2J"`, and printed as is that would retitle the window and
//! clear the screen (or worse, on terminals that answer queries). Every control character
//! (C0, newline and tab included, DEL, C1) and every bidirectional override or isolate (which
//! reorder what is shown) is printed as a visible escape instead: `\x1b`, `\x07`, `\u{202e}`.
//! An escape sequence then reads as plain text and nothing moves the cursor.
//!
//! [`line`] is for one value (a cell, a name, a message); [`block`] for several lines the CLI
//! built itself, whose own newlines stay; [`json`] for `--json` output, where serde escapes C0
//! but leaves DEL and C1 raw.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as is.
pub fn is_unsafe(c: char) -> bool {
    // `char::is_control` is the Cc category: C0 (U+0000-U+001F), DEL and C1 (U+0080-U+009F).
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| is_unsafe(c) && !(keep_newlines && c == '\n');
    if !text.chars().any(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !bad(c) {
            out.push(c);
        } else if u32::from(c) <= 0xff {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// One value from the server, for a terminal: every control character, newlines included,
/// shown as an escape (`\x1b`, `\x0a`).
pub fn line(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// Lines the CLI built around server values: like [`line`], but its newlines stay.
pub fn block(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

/// Serialized JSON for a terminal: the control characters serde leaves raw inside strings
/// (DEL, C1) and the bidirectional controls become `\uXXXX` escapes, which decode to the same
/// value. The pretty printer's own newlines stay (serde escapes those inside strings).
pub fn json(text: &str) -> Cow<'_, str> {
    let bad = |c: char| is_unsafe(c) && c != '\n';
    if !text.chars().any(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if bad(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A hostile process name: set the window title, ring the bell, clear the screen.
    const HOSTILE: &str = "\x1b]0;pwned\x07evil\x1b[2J";

    #[test]
    fn escape_sequences_print_as_text() {
        assert_eq!(line(HOSTILE), r"\x1b]0;pwned\x07evil\x1b[2J");
        assert!(line(HOSTILE).chars().all(|c| !is_unsafe(c)));
        assert_eq!(
            line("a\nb\tc\r\x7f\u{9b}31m"),
            r"a\x0ab\x09c\x0d\x7f\x9b31m"
        );
        assert_eq!(line("abc\u{202e}cba"), r"abc\u{202e}cba");
        // Ordinary text, Unicode included, is untouched (and not copied).
        assert!(matches!(line("ust-app µs – café"), Cow::Borrowed(_)));
        assert_eq!(line(""), "");
    }

    #[test]
    fn blocks_keep_their_newlines() {
        assert_eq!(
            block(&format!("job 1\nprocess {HOSTILE}\n")),
            "job 1\nprocess \\x1b]0;pwned\\x07evil\\x1b[2J\n"
        );
        assert_eq!(block("a\r\nb"), "a\\x0d\nb");
    }

    #[test]
    fn json_stays_json_with_the_same_value() {
        let value = serde_json::json!({"procname": format!("{HOSTILE}\u{7f}\u{9b}2J\u{202e}")});
        let text = serde_json::to_string_pretty(&value).unwrap();
        assert!(text.contains('\u{9b}'), "serde leaves C1 raw: {text:?}");
        let safe = json(&text);
        assert!(!safe.chars().any(|c| is_unsafe(c) && c != '\n'), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }
}
