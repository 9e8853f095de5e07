//! README's "Commands" block matches `--help`: every visible subcommand has an entry (`hone NAME`,
//! bare `hone` for the top-level flags), and each entry names exactly the long flags clap
//! accepts for it (hidden ones aside).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use clap::CommandFactory;
use hone::cli::Cli;

/// The README's Commands block: entry name ("" for bare `hone`) → its text.
fn readme_entries() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Commands\n\n```\n").expect("README has a Commands block");
    let block = &readme[start + "## Commands\n\n```\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("hone") {
            let name = rest.split_whitespace().next().filter(|w| !w.starts_with(['-', '['])).unwrap_or("");
            entries.push((name.to_string(), rest.to_string()));
        } else if let Some((_, text)) = entries.last_mut() {
            text.push('\n');
            text.push_str(line);
        }
    }
    entries
}

fn flags_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == '-' && bytes[i + 1] == '-' && (i == 0 || !bytes[i - 1].is_alphanumeric()) {
            let flag: String = bytes[i + 2..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '-').collect();
            if !flag.is_empty() {
                out.insert(flag);
            }
        }
        i += 1;
    }
    out
}

fn clap_flags(cmd: &clap::Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(String::from))
        .filter(|l| l != "help" && l != "version")
        .collect()
}

#[test]
fn the_readme_commands_block_matches_the_help() {
    let cli = Cli::command();
    let entries = readme_entries();
    let bare = entries.iter().find(|(n, _)| n.is_empty()).expect("an entry for bare `hone`");
    assert_eq!(flags_in(&bare.1), clap_flags(&cli), "bare `hone`'s flags");
    let visible: Vec<&clap::Command> = cli.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    for sub in &visible {
        let name = sub.get_name();
        let (_, text) = entries
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("README's Commands block has no `hone {name}` entry"));
        assert_eq!(flags_in(text), clap_flags(sub), "`hone {name}`: README flags vs --help");
    }
    for (name, _) in entries.iter().filter(|(n, _)| !n.is_empty()) {
        assert!(visible.iter().any(|c| c.get_name() == name), "README lists `hone {name}`, which --help does not");
    }
}
