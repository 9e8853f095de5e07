//! Making untrusted text safe to print: model outputs, dataset contents and file names never
//! reach the terminal as escape sequences. Control characters become visible escapes.

/// Replaces every control character except `\n` and `\t` (and, when `keep_newlines` is false,
/// those too) with a visible `\u{..}`-style escape; C1 controls and bidi overrides included.
pub fn sanitize(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let visible_whitespace = keep_newlines && (c == '\n' || c == '\t');
        if (c.is_control() && !visible_whitespace) || is_bidi_control(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Unicode bidirectional controls can reorder what a terminal shows ("Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::sanitize;
    use proptest::prelude::*;

    #[test]
    fn escapes_are_made_visible() {
        assert_eq!(sanitize("a\u{1b}[31mred\u{7}", true), "a\\u{1b}[31mred\\u{7}");
        assert_eq!(sanitize("line\nnext\ttab\r", true), "line\nnext\ttab\\u{d}");
        assert_eq!(sanitize("x\ny", false), "x\\u{a}y");
        assert_eq!(sanitize("\u{9b}2J\u{202e}", true), "\\u{9b}2J\\u{202e}");
        assert_eq!(sanitize("héllo 🙂", true), "héllo 🙂");
    }

    proptest! {
        #[test]
        fn output_never_contains_control_characters(s in any::<String>()) {
            let out = sanitize(&s, false);
            prop_assert!(!out.chars().any(char::is_control));
            let out = sanitize(&s, true);
            prop_assert!(!out.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        }
    }
}
