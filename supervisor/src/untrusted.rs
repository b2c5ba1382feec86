//! Text that came from outside the miner (the Coordinator's answers, a job's fields, a worker's
//! words), made safe to write into a log line or the status report.
//!
//! A newline in such text would forge a whole log line (`... ERROR forged: API_KEY=stolen`), an
//! ESC byte would drive the operator's terminal, and a Unicode format character (U+202E, U+200B)
//! would make one string look like another. [`escape`] writes every such character as a
//! visible `\u{..}` escape (`\n`, `\r` and `\t` as themselves), so what is logged reads as one
//! line and shows what was sent. [`bounded`] also cuts it to a length.
//!
//! This module must never drop a character silently: an escaped text still says what arrived.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a log line or a terminal as it is: control characters (C0, DEL,
/// C1), the line and paragraph separators, and the format characters that reorder, hide or join
/// text (bidi controls, zero-width characters, the BOM, soft hyphen, interlinear annotation).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}')
}

/// `s` with every [`is_unsafe`] character written as an escape; borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`]d and cut to at most `max_chars` characters of the original, with `…` marking a
/// cut.
pub fn bounded(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", escape(&s[..end])),
        None => escape(s).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_as_it_is() {
        for s in [
            "",
            "torch_bench",
            "HTTP 409 STALE_ATTEMPT: attempt 2 is not 3",
            "ü 0xAbC",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn a_forged_line_stays_on_its_line_and_shows_what_was_sent() {
        let forged = "torch_bench\n2026-01-01T00:00:00Z ERROR forged: API_KEY=stolen\u{1b}[31m\r\t";
        assert_eq!(
            escape(forged),
            "torch_bench\\n2026-01-01T00:00:00Z ERROR forged: API_KEY=stolen\\u{1b}[31m\\r\\t"
        );
    }

    #[test]
    fn format_characters_are_visible() {
        assert_eq!(escape("wal\u{202e}let\u{200b}"), "wal\\u{202e}let\\u{200b}");
        assert_eq!(
            escape("\u{7f}\u{85}\u{2028}\u{feff}"),
            "\\u{7f}\\u{85}\\u{2028}\\u{feff}"
        );
        for c in ['\0', '\u{1b}', '\u{9b}', '\u{2066}', '\u{e0041}'] {
            assert!(is_unsafe(c), "{c:?}");
            assert!(!escape(&c.to_string()).chars().any(is_unsafe));
        }
    }

    #[test]
    fn bounded_cuts_on_a_character_and_marks_the_cut() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("üüüü", 2), "üü…");
        assert_eq!(bounded("a\nb", 2), "a\\n…");
    }
}
