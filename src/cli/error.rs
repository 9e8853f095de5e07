//! How a command's error reads on the terminal.

/// An error and its causes on one line, each cause once: a message that already quotes its
/// source (`nope.jsonl: No such file or directory`) is not followed by it again. A missing file
/// says what to do about it.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    let missing = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound));
    if missing {
        out.push_str(" (check the path: relative paths start from the current directory)");
    }
    out
}

/// A closed stdout (`hone score ... | head`) ends the command quietly, as for any Unix filter.
pub(super) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
