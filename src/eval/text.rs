//! Text helpers shared by the checks and the contamination filter: answer and prompt
//! normalisation, word counting, the first number in a response, `[S1]`-style citations and
//! typographic apostrophe folding. Pure functions over `&str`; never sees items or verdicts.

use std::borrow::Cow;
use std::collections::BTreeSet;

/// Normalises an answer for the `exact` check: trims, collapses runs of whitespace to one
/// space, lowercases, and strips trailing periods (`"  Paris. "` → `"paris"`).
pub fn normalise_answer(s: &str) -> String {
    let collapsed = collapse_whitespace(s).to_lowercase();
    collapsed.trim_end_matches('.').trim_end().to_string()
}

/// Normalises a prompt for contamination matching: lowercases, collapses runs of whitespace to
/// one space, trims. Idempotent.
pub fn normalise_prompt(s: &str) -> String {
    collapse_whitespace(s).to_lowercase()
}

/// Trims and joins the whitespace-separated words of `s` with single spaces.
pub(crate) fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Number of whitespace-separated words.
pub fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

/// Maps typographic apostrophes (`’`, `‘`, `ʼ`) to `'` so that one pattern such as `I can't`
/// matches both spellings.
pub(crate) fn fold_apostrophes(s: &str) -> Cow<'_, str> {
    if s.contains(['\u{2019}', '\u{2018}', '\u{02BC}']) {
        Cow::Owned(s.replace(['\u{2019}', '\u{2018}', '\u{02BC}'], "'"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The first number written in `s`, in decimal notation.
///
/// Rules: ASCII digits; a leading `-`, `+` or `−` counts as a sign only when it does not follow a
/// letter or digit (`COVID-19` reads as 19); `1,234,567` is read with thousands separators;
/// a `.` or `,` followed by digits is a decimal point (`3.5`, `3,5`); exponents are not read.
pub fn first_number(s: &str) -> Option<f64> {
    let chars: Vec<char> = s.chars().collect();
    let start = chars.iter().position(char::is_ascii_digit)?;
    let negative =
        start > 0 && matches!(chars[start - 1], '-' | '\u{2212}') && (start < 2 || !chars[start - 2].is_alphanumeric());
    let mut i = start;
    let mut int = String::new();
    while i < chars.len() && chars[i].is_ascii_digit() {
        int.push(chars[i]);
        i += 1;
    }
    let digits_at = |from: usize, n: usize| (from..from + n).all(|j| chars.get(j).is_some_and(char::is_ascii_digit));
    if int.len() <= 3 {
        while chars.get(i) == Some(&',') && digits_at(i + 1, 3) && !digits_at(i + 4, 1) {
            int.extend(&chars[i + 1..i + 4]);
            i += 4;
        }
    }
    let mut text = int;
    if matches!(chars.get(i), Some('.' | ',')) && digits_at(i + 1, 1) {
        text.push('.');
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            text.push(chars[i]);
            i += 1;
        }
    }
    let value: f64 = text.parse().ok()?;
    Some(if negative { -value } else { value })
}

/// The source ids cited in `s`, written in square brackets: `[S1]`, `[S1, S2]` or `[S1; S2]`.
///
/// A bracket group counts only when every comma/semicolon-separated piece is an id (letters,
/// digits, `_`, `-`, `.`, `:`); groups with other text (`[see above]`) and Markdown links
/// (`[S1](http://…)`) are ignored.
pub fn citations(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find([']', '[', '\n']) else { break };
        if after[close..].starts_with(']') && !after[close + 1..].starts_with('(') {
            let pieces: Vec<&str> = after[..close].split([',', ';']).map(str::trim).collect();
            let is_id = |p: &&str| {
                !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            };
            if pieces.iter().all(is_id) {
                out.extend(pieces.iter().map(|p| (*p).to_string()));
            }
        }
        rest = &after[close..];
    }
    out
}

/// `s` without a surrounding Markdown code fence (```` ```json … ``` ````), trimmed.
pub(crate) fn strip_code_fence(s: &str) -> &str {
    let t = s.trim();
    let Some(body) = t.strip_prefix("```") else { return t };
    let Some(body) = body.strip_suffix("```") else { return t };
    match body.find('\n') {
        Some(nl) => body[nl + 1..].trim(),
        None => body.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(first_number("The answer is 42."), Some(42.0));
        assert_eq!(first_number("about -3.5 degrees"), Some(-3.5));
        assert_eq!(first_number("COVID-19"), Some(19.0));
        assert_eq!(first_number("1,234,567 people"), Some(1_234_567.0));
        assert_eq!(first_number("3,5 kg"), Some(3.5));
        assert_eq!(first_number("no digits"), None);
        assert_eq!(first_number("x 12345,678"), Some(12345.678));
    }

    #[test]
    fn cites() {
        let got: Vec<_> =
            citations("A [S1] and [S2; S3], not [see above] nor [S9](http://x) [S4").into_iter().collect();
        assert_eq!(got, ["S1", "S2", "S3"]);
    }

    #[test]
    fn fences() {
        assert_eq!(strip_code_fence("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(strip_code_fence(" {} "), "{}");
    }
}
