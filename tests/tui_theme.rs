//! Themes: a user file patches the embedded defaults role by role; an unknown role, a bad colour
//! or a syntax error is reported as `path:line:col: message` and changes nothing.

use std::path::Path;

use hone::tui::{Role, Theme, TuiError};
use ratatui::style::{Color, Modifier, Style};

#[test]
fn a_user_file_patches_only_the_roles_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, "# mine\nchosen = \"#00ff7f\"\nerror = { fg = \"208\", bold = false, underlined = true }\n")
        .expect("write");
    let theme = Theme::load(Some(&path)).expect("a valid patch");
    let default = Theme::default();
    assert_eq!(theme.style(Role::Chosen), Style::default().fg(Color::Rgb(0, 255, 127)));
    assert_eq!(
        theme.style(Role::Error),
        Style::default().fg(Color::Indexed(208)).add_modifier(Modifier::UNDERLINED).remove_modifier(Modifier::BOLD)
    );
    for role in Role::ALL.iter().filter(|r| !matches!(r, Role::Chosen | Role::Error)) {
        assert_eq!(theme.style(*role), default.style(*role), "{} is untouched", role.name());
    }
    assert_eq!(Theme::load(None).expect("defaults"), default);
}

fn patch_error(text: &str) -> String {
    let mut theme = Theme::default();
    let before = theme.clone();
    let err = theme.patch(Path::new("themes/mine.toml"), text).expect_err("a bad theme");
    assert!(matches!(err, TuiError::Theme { .. }), "{err:?}");
    assert_eq!(theme, before, "a bad file changes nothing");
    err.to_string()
}

#[test]
fn an_unknown_role_is_located() {
    let msg = patch_error("chosen = \"green\"\n\n  loss_totl = \"red\"\n");
    assert!(msg.starts_with("themes/mine.toml:3:3: unknown role `loss_totl` (roles: loss_total, loss_sft,"), "{msg}");
}

#[test]
fn bad_values_are_located_and_name_the_role() {
    assert_eq!(patch_error("margin = \"blurple\"\n"), "themes/mine.toml:1:10: margin: unknown colour \"blurple\"");
    assert_eq!(
        patch_error("dim = 3\n"),
        "themes/mine.toml:1:7: dim: expected a colour string or a style table, not integer"
    );
    assert_eq!(
        patch_error("text = { fg = \"red\", blink = true }\n"),
        "themes/mine.toml:1:8: text: unknown style key `blink`"
    );
}

#[test]
fn syntax_errors_are_located() {
    let msg = patch_error("chosen = \"green\"\nrejected = = \"red\"\n");
    assert!(msg.starts_with("themes/mine.toml:2:12: "), "{msg}");
}

#[test]
fn a_missing_file_names_its_path() {
    let err = Theme::load(Some(Path::new("/nonexistent/theme.toml"))).expect_err("missing");
    assert!(err.to_string().starts_with("cannot read theme /nonexistent/theme.toml: "), "{err}");
}

#[test]
fn themes_resolve_by_builtin_name_user_name_or_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sunset.toml"), "chosen = \"#ff8800\"\n").expect("write");
    let user = Theme::resolve(Some("sunset"), Some(dir.path())).expect("a user theme by name");
    assert_eq!(user.style(Role::Chosen), Style::default().fg(Color::Rgb(255, 136, 0)));
    let by_path = dir.path().join("sunset.toml");
    assert_eq!(Theme::resolve(Some(by_path.to_str().expect("utf-8")), None).expect("by path"), user);
    for (name, _) in hone::tui::BUILTIN_THEMES {
        Theme::resolve(Some(name), Some(dir.path())).expect("every built-in resolves");
    }
    let light = Theme::resolve(Some("light"), Some(dir.path())).expect("light");
    assert_ne!(light.style(Role::Text), Theme::default().style(Role::Dim));
}

#[test]
fn an_unknown_theme_name_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Theme::resolve(Some("solarised"), Some(dir.path())).expect_err("unknown");
    assert!(matches!(err, TuiError::UnknownTheme { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"solarised\"") && msg.contains("default, light, high-contrast"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}
