//! The keymap: which key runs which [`Command`]. Defaults are built in; a user's `keys.toml` (in
//! the config directory) is merged over them, each command it names getting exactly the keys it
//! lists. A bad entry is an error located as `path:line:col: command: message`. Ctrl-C always
//! detaches and the dialog keys (y/n/Enter/Esc) are fixed; everything else can be rebound.
//!
//! ```toml
//! pause = "p"
//! stop = ["x", "ctrl-s"]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use toml::Spanned;

use super::error::TuiError;
use crate::config::line_column;

macro_rules! commands {
    ($($variant:ident => $name:literal [$($key:literal),*]: $doc:literal,)*) => {
        /// Something a key can ask for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Command {
            $(#[doc = $doc] $variant,)*
        }

        impl Command {
            /// Every command, in help order.
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            /// The command's name in keys.toml.
            pub fn name(self) -> &'static str {
                match self {
                    $(Command::$variant => $name,)*
                }
            }

            /// What it does, for the help overlay.
            pub fn describe(self) -> &'static str {
                match self {
                    $(Command::$variant => $doc,)*
                }
            }

            fn default_keys(self) -> &'static [&'static str] {
                match self {
                    $(Command::$variant => &[$($key),*],)*
                }
            }
        }
    };
}

commands! {
    Dashboard => "pane_dashboard" ["1"]: "show pane 1, the dashboard",
    Stages => "pane_stages" ["2"]: "show pane 2, the stages",
    Label => "pane_label" ["3"]: "show pane 3, labeling",
    Eval => "pane_eval" ["4"]: "show pane 4, evaluation",
    Runs => "pane_runs" ["5"]: "show pane 5, the runs",
    Up => "up" ["up", "k"]: "select the previous row",
    Down => "down" ["down", "j"]: "select the next row",
    Activate => "activate" ["enter"]: "attach the selected run (Runs pane)",
    Smoothing => "smoothing" ["s"]: "toggle EMA smoothing of the charts",
    LogScale => "log_scale" ["l"]: "toggle log scale of the loss chart",
    Window => "window" ["w"]: "toggle window: last 200 steps / whole run",
    Pause => "pause" ["p"]: "pause training",
    Resume => "resume" ["r"]: "resume training",
    Stop => "stop" ["x"]: "stop the run, checkpointing first (asks to confirm)",
    SkipStage => "skip_stage" ["n"]: "skip the rest of the running stage (asks to confirm)",
    Checkpoint => "checkpoint" ["c"]: "write a checkpoint now",
    EditLambdaPref => "edit_lambda_pref" ["e"]: "edit λ_pref of the live run",
    EditLambdaSafe => "edit_lambda_safe" ["E"]: "edit λ_safe of the live run",
    Help => "help" ["?"]: "show or hide this help",
    Close => "close" ["esc"]: "close the overlay or dialog",
    Quit => "quit" ["q"]: "detach: leave the TUI; training goes on",
}

/// The commands that still work on panes 3 and 4, which take every other key for themselves.
pub const PANE_GLOBAL: &[Command] =
    &[Command::Dashboard, Command::Stages, Command::Label, Command::Eval, Command::Runs, Command::Help, Command::Quit];

impl FromStr for Command {
    type Err = ();

    fn from_str(name: &str) -> Result<Command, ()> {
        Command::ALL.iter().copied().find(|c| c.name() == name).ok_or(())
    }
}

/// One key with its modifiers (Ctrl and Alt; Shift is part of the character).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    code: KeyCodeOrd,
    ctrl: bool,
    alt: bool,
}

/// The key codes a keymap can name, ordered so keys sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum KeyCodeOrd {
    Char(char),
    F(u8),
    Named(u8),
}

const NAMED: [(&str, KeyCode); 12] = [
    ("enter", KeyCode::Enter),
    ("esc", KeyCode::Esc),
    ("tab", KeyCode::Tab),
    ("backspace", KeyCode::Backspace),
    ("up", KeyCode::Up),
    ("down", KeyCode::Down),
    ("left", KeyCode::Left),
    ("right", KeyCode::Right),
    ("pageup", KeyCode::PageUp),
    ("pagedown", KeyCode::PageDown),
    ("home", KeyCode::Home),
    ("end", KeyCode::End),
];

impl Key {
    /// The key a terminal event stands for, if a keymap can name it.
    pub fn from_event(event: KeyEvent) -> Option<Key> {
        let code = match event.code {
            KeyCode::Char(c) => KeyCodeOrd::Char(c),
            KeyCode::F(n) => KeyCodeOrd::F(n),
            other => KeyCodeOrd::Named(NAMED.iter().position(|(_, c)| *c == other)? as u8),
        };
        Some(Key {
            code,
            ctrl: event.modifiers.contains(KeyModifiers::CONTROL),
            alt: event.modifiers.contains(KeyModifiers::ALT),
        })
    }
}

impl FromStr for Key {
    type Err = String;

    /// `q`, `E`, `?`, `space`, `enter`, `f5`, `ctrl-x`, `alt-up`, ...
    fn from_str(text: &str) -> Result<Key, String> {
        let mut rest = text;
        let (mut ctrl, mut alt) = (false, false);
        loop {
            if let Some(r) = rest.strip_prefix("ctrl-").filter(|r| !r.is_empty()) {
                (ctrl, rest) = (true, r);
            } else if let Some(r) = rest.strip_prefix("alt-").filter(|r| !r.is_empty()) {
                (alt, rest) = (true, r);
            } else {
                break;
            }
        }
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (Some(c), None) if !c.is_control() && c != ' ' => KeyCodeOrd::Char(c),
            _ if rest == "space" => KeyCodeOrd::Char(' '),
            _ => {
                let lower = rest.to_ascii_lowercase();
                if let Some(i) = NAMED.iter().position(|(n, _)| *n == lower) {
                    KeyCodeOrd::Named(i as u8)
                } else if let Some(n) =
                    lower.strip_prefix('f').and_then(|n| n.parse::<u8>().ok()).filter(|n| (1..=12).contains(n))
                {
                    KeyCodeOrd::F(n)
                } else {
                    return Err(format!(
                        "unknown key {text:?} (a character, space, enter, esc, tab, backspace, up, down, left, \
                         right, pageup, pagedown, home, end or f1-f12, optionally after ctrl- or alt-)"
                    ));
                }
            }
        };
        Ok(Key { code, ctrl, alt })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ctrl {
            f.write_str("ctrl-")?;
        }
        if self.alt {
            f.write_str("alt-")?;
        }
        match self.code {
            KeyCodeOrd::Char(' ') => f.write_str("space"),
            KeyCodeOrd::Char(c) => write!(f, "{c}"),
            KeyCodeOrd::F(n) => write!(f, "f{n}"),
            KeyCodeOrd::Named(i) => f.write_str(NAMED[usize::from(i)].0),
        }
    }
}

/// Keys to commands.
#[derive(Debug, Clone, PartialEq)]
pub struct Keymap {
    keys: BTreeMap<Key, Command>,
}

impl Default for Keymap {
    fn default() -> Keymap {
        let mut keys = BTreeMap::new();
        for &command in Command::ALL {
            for spec in command.default_keys() {
                let key: Key = spec.parse().expect("default key specs are valid (tested in keymap::tests)");
                keys.insert(key, command);
            }
        }
        Keymap { keys }
    }
}

impl Keymap {
    /// The defaults, with `path` merged over them when it exists.
    pub fn load(path: Option<&Path>) -> Result<Keymap, TuiError> {
        let mut keymap = Keymap::default();
        if let Some(path) = path.filter(|p| p.exists()) {
            let text = std::fs::read_to_string(path)
                .map_err(|source| TuiError::ReadConfig { path: path.to_path_buf(), source })?;
            keymap.merge(path, &text)?;
        }
        Ok(keymap)
    }

    /// Merges a keys.toml read from `path` (named in errors): each command it names gets exactly
    /// the keys listed. A key bound to two commands afterwards is an error. Nothing changes when
    /// the file has an error.
    pub fn merge(&mut self, path: &Path, text: &str) -> Result<(), TuiError> {
        let locate = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            TuiError::Keymap { path: path.to_path_buf(), line, column, message }
        };
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(text)
            .map_err(|e| locate(e.span().map_or(0, |s| s.start), e.message().trim().to_string()))?;
        let mut merged = self.keys.clone();
        let mut placed: BTreeMap<Key, (Command, usize)> = BTreeMap::new();
        for (name, value) in &table {
            let command = Command::from_str(name.get_ref()).map_err(|()| {
                locate(
                    name.span().start,
                    format!("{}: unknown command (see `?` in the TUI for the list)", name.get_ref()),
                )
            })?;
            merged.retain(|_, c| *c != command);
            let specs: Vec<(&str, usize)> = match value.get_ref() {
                toml::Value::String(s) => vec![(s.as_str(), value.span().start)],
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(|s| (s, value.span().start)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| locate(value.span().start, format!("{}: keys must be strings", command.name())))?,
                other => {
                    return Err(locate(
                        value.span().start,
                        format!("{}: expected a key or a list of keys, not {}", command.name(), other.type_str()),
                    ))
                }
            };
            for (spec, offset) in specs {
                let key = Key::from_str(spec).map_err(|m| locate(offset, format!("{}: {m}", command.name())))?;
                if let Some((other, _)) = placed.get(&key).filter(|(c, _)| *c != command) {
                    return Err(locate(
                        offset,
                        format!("{}: key `{key}` is also bound to {}", command.name(), other.name()),
                    ));
                }
                placed.insert(key, (command, offset));
            }
        }
        for (key, (command, offset)) in placed {
            if let Some(other) = merged.get(&key).filter(|c| **c != command) {
                return Err(locate(
                    offset,
                    format!(
                        "{}: key `{key}` is bound to {} by default; rebind {} too",
                        command.name(),
                        other.name(),
                        other.name()
                    ),
                ));
            }
            merged.insert(key, command);
        }
        self.keys = merged;
        Ok(())
    }

    /// The command a key press runs.
    pub fn command(&self, event: KeyEvent) -> Option<Command> {
        let key = Key::from_event(event)?;
        self.keys.get(&key).copied()
    }

    /// The keys bound to `command`, as written in keys.toml.
    pub fn keys_for(&self, command: Command) -> Vec<String> {
        self.keys.iter().filter(|(_, c)| **c == command).map(|(k, _)| k.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn defaults_parse_and_are_unique() {
        let keymap = Keymap::default();
        let bound: usize = Command::ALL.iter().map(|c| c.default_keys().len()).sum();
        assert_eq!(keymap.keys.len(), bound, "no default key is bound twice");
        assert_eq!(keymap.command(press(KeyCode::Char('E'), KeyModifiers::SHIFT)), Some(Command::EditLambdaSafe));
        assert_eq!(keymap.command(press(KeyCode::Up, KeyModifiers::NONE)), Some(Command::Up));
    }

    #[test]
    fn keys_round_trip_through_text() {
        for spec in ["q", "E", "?", "space", "enter", "f5", "ctrl-x", "alt-up", "ctrl-alt-k"] {
            assert_eq!(Key::from_str(spec).expect(spec).to_string(), spec);
        }
        assert!(Key::from_str("ctrl-").is_err());
        assert!(Key::from_str("hyper").is_err());
        assert!(Key::from_str("f13").is_err());
    }
}
