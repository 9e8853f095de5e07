//! Themes: a style per *role* (`loss_total`, `chosen`, `gate_fail`, ...), never per colour name.
//!
//! The defaults are `themes/default.toml`, embedded at build time, as are the built-in `light` and
//! `high-contrast` themes; a user file is a patch over the defaults that lists only the roles it
//! changes. `--theme NAME|PATH` picks a built-in, a user theme `NAME.toml` in the config
//! directory's `themes/`, or a file. `NO_COLOR` drops every colour and keeps bold, reversed and the
//! like ([`Theme::without_colour`]). An unknown role or a bad value is an error located as
//! `path:line:col`. This module reads no files except the ones [`Theme::resolve`] names.

use crate::config::line_column;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use toml::Spanned;

use super::error::TuiError;

const DEFAULT_THEME: &str = include_str!("../../themes/default.toml");

/// The built-in themes by name, each a patch over the default.
pub const BUILTIN_THEMES: &[(&str, &str)] = &[
    ("default", DEFAULT_THEME),
    ("light", include_str!("../../themes/light.toml")),
    ("high-contrast", include_str!("../../themes/high-contrast.toml")),
];

macro_rules! roles {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// What a styled thing on screen is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Role {
            $(#[doc = $doc] $variant,)*
        }

        impl Role {
            /// Every role, in file order.
            pub const ALL: &'static [Role] = &[$(Role::$variant,)*];

            /// The role's key in a theme file.
            pub fn name(self) -> &'static str {
                match self {
                    $(Role::$variant => $name,)*
                }
            }
        }
    };
}

roles! {
    LossTotal => "loss_total": "The total loss line.",
    LossSft => "loss_sft": "The SFT loss term.",
    WeightedPref => "weighted_pref": "The λ-weighted preference term.",
    WeightedSafe => "weighted_safe": "The λ-weighted safety term.",
    Chosen => "chosen": "The chosen answers' reward.",
    Rejected => "rejected": "The rejected answers' reward.",
    Margin => "margin": "The reward margin.",
    Accuracy => "accuracy": "The preference accuracy.",
    GatePass => "gate_pass": "An evaluation gate that passed.",
    GateFail => "gate_fail": "An evaluation gate that failed.",
    FocusBorder => "focus_border": "The focused pane or tab.",
    Warning => "warning": "Warnings.",
    Error => "error": "Errors and failed stages.",
    StageRunning => "stage_running": "The running stage.",
    StageDone => "stage_done": "Finished stages.",
    StagePending => "stage_pending": "Stages not started yet.",
    Text => "text": "Plain text.",
    Dim => "dim": "Secondary text.",
}

impl FromStr for Role {
    type Err = ();

    fn from_str(name: &str) -> Result<Role, ()> {
        Role::ALL.iter().copied().find(|r| r.name() == name).ok_or(())
    }
}

/// A style for every [`Role`].
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    styles: BTreeMap<Role, Style>,
}

impl Default for Theme {
    /// The embedded default theme.
    fn default() -> Theme {
        let mut theme = Theme { styles: Role::ALL.iter().map(|&r| (r, Style::default())).collect() };
        theme
            .patch(Path::new("themes/default.toml"), DEFAULT_THEME)
            .expect("the embedded default theme is valid (tested in theme::tests)");
        theme
    }
}

impl Theme {
    /// The default theme, patched with the user's file when one is given.
    pub fn load(user: Option<&Path>) -> Result<Theme, TuiError> {
        let mut theme = Theme::default();
        if let Some(path) = user {
            let text = std::fs::read_to_string(path)
                .map_err(|source| TuiError::ReadTheme { path: path.to_path_buf(), source })?;
            theme.patch(path, &text)?;
        }
        Ok(theme)
    }

    /// The theme `spec` names: a built-in name, a user theme `NAME.toml` in `user_dir`, or a file
    /// path; the default when `spec` is `None`.
    pub fn resolve(spec: Option<&str>, user_dir: Option<&Path>) -> Result<Theme, TuiError> {
        let Some(spec) = spec else { return Ok(Theme::default()) };
        if let Some((name, text)) = BUILTIN_THEMES.iter().find(|(n, _)| *n == spec) {
            let mut theme = Theme::default();
            theme.patch(&Path::new("themes").join(format!("{name}.toml")), text)?;
            return Ok(theme);
        }
        let is_name = !spec.contains(['/', '.']);
        if is_name {
            if let Some(path) = user_dir.map(|d| d.join(format!("{spec}.toml"))).filter(|p| p.is_file()) {
                return Theme::load(Some(&path));
            }
            return Err(TuiError::UnknownTheme {
                name: spec.to_string(),
                builtin: BUILTIN_THEMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
                searched: user_dir.map_or_else(|| "(no config directory)".to_string(), |d| d.display().to_string()),
            });
        }
        Theme::load(Some(Path::new(spec)))
    }

    /// The same theme with every colour removed (for `NO_COLOR`); bold, reversed, underlined and
    /// the other modifiers stay, so focus and states still read.
    pub fn without_colour(mut self) -> Theme {
        for style in self.styles.values_mut() {
            style.fg = None;
            style.bg = None;
        }
        self
    }

    /// Applies the roles set in `text` (a theme file read from `path`, named in errors); roles it
    /// does not mention keep their style. Nothing is changed when the file has an error.
    pub fn patch(&mut self, path: &Path, text: &str) -> Result<(), TuiError> {
        let locate = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            TuiError::Theme { path: path.to_path_buf(), line, column, message }
        };
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(text)
            .map_err(|e| locate(e.span().map_or(0, |s| s.start), e.message().trim().to_string()))?;
        let mut patched = self.styles.clone();
        for (key, value) in table {
            let role = Role::from_str(key.get_ref()).map_err(|()| {
                let known: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                locate(key.span().start, format!("unknown role `{}` (roles: {})", key.get_ref(), known.join(", ")))
            })?;
            let style = parse_style(value.get_ref())
                .map_err(|message| locate(value.span().start, format!("{}: {message}", role.name())))?;
            patched.insert(role, style);
        }
        self.styles = patched;
        Ok(())
    }

    /// The style of `role`.
    pub fn style(&self, role: Role) -> Style {
        self.styles.get(&role).copied().unwrap_or_default()
    }
}

/// A colour string or a `{ fg, bg, bold, ... }` table.
fn parse_style(value: &toml::Value) -> Result<Style, String> {
    match value {
        toml::Value::String(colour) => Ok(Style::default().fg(parse_colour(colour)?)),
        toml::Value::Table(table) => {
            let mut style = Style::default();
            for (key, v) in table {
                match (key.as_str(), v) {
                    ("fg", toml::Value::String(c)) => style = style.fg(parse_colour(c)?),
                    ("bg", toml::Value::String(c)) => style = style.bg(parse_colour(c)?),
                    (flag, toml::Value::Boolean(on)) => {
                        let modifier = match flag {
                            "bold" => Modifier::BOLD,
                            "dim" => Modifier::DIM,
                            "italic" => Modifier::ITALIC,
                            "underlined" => Modifier::UNDERLINED,
                            "reversed" => Modifier::REVERSED,
                            other => return Err(format!("unknown style key `{other}`")),
                        };
                        style = if *on { style.add_modifier(modifier) } else { style.remove_modifier(modifier) };
                    }
                    ("fg" | "bg", other) => {
                        return Err(format!("`{key}` must be a colour string, not {}", other.type_str()))
                    }
                    (other, _) => return Err(format!("unknown style key `{other}`")),
                }
            }
            Ok(style)
        }
        other => Err(format!("expected a colour string or a style table, not {}", other.type_str())),
    }
}

fn parse_colour(text: &str) -> Result<Color, String> {
    Color::from_str(text).map_err(|_| format!("unknown colour {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_theme_sets_every_role() {
        let table: toml::Table = toml::from_str(DEFAULT_THEME).expect("valid TOML");
        for role in Role::ALL {
            assert!(table.contains_key(role.name()), "default.toml lacks {}", role.name());
        }
        assert_eq!(Theme::default().style(Role::Chosen), Style::default().fg(Color::Green));
    }

    #[test]
    fn builtin_themes_parse_and_differ() {
        let light = Theme::resolve(Some("light"), None).expect("light");
        let contrast = Theme::resolve(Some("high-contrast"), None).expect("high-contrast");
        assert_ne!(light, Theme::default());
        assert_ne!(contrast, Theme::default());
        assert_eq!(Theme::resolve(None, None).expect("default"), Theme::default());
    }

    #[test]
    fn no_colour_keeps_modifiers_only() {
        let plain = Theme::resolve(Some("high-contrast"), None).expect("theme").without_colour();
        for &role in Role::ALL {
            let style = plain.style(role);
            assert_eq!((style.fg, style.bg), (None, None), "{}", role.name());
        }
        assert!(plain.style(Role::Error).add_modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn line_columns_count_characters() {
        assert_eq!(line_column("a\nbé = 1", 5), (2, 3));
        assert_eq!(line_column("ab", 0), (1, 1));
    }
}
