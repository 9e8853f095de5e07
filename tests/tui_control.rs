//! State tests of the interactive parts, with no terminal: control keys and their dialogs, the
//! λ input field, replies on the status line, attaching another run, the keymap file, and the
//! history that replaces the tail shown first.

#![allow(clippy::unwrap_used)]

mod tui_support;

use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hone::control::{LambdaTerm, Request};
use hone::tui::{
    key_action, render_to_string, update, Action, App, Keymap, Level, Loaded, Modal, Pane, TuiError, Window,
};
use tui_support::{completed, mid_dpo, runs_list};

fn app_with(events: Vec<hone::run::Event>) -> App {
    let mut app = App::default();
    update(&mut app, Action::EventsArrived(events));
    app
}

fn press(app: &mut App, code: KeyCode) {
    let modifiers = if matches!(code, KeyCode::Char(c) if c.is_ascii_uppercase()) {
        KeyModifiers::SHIFT
    } else {
        KeyModifiers::NONE
    };
    if let Some(action) = key_action(app, KeyEvent::new(code, modifiers)) {
        update(app, action);
    }
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        press(app, KeyCode::Char(c));
    }
}

#[test]
fn stop_and_skip_ask_first_and_only_yes_sends() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Stages));
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(app.modal, Some(Modal::Confirm(Request::Stop)));
    press(&mut app, KeyCode::Char('q'));
    assert!(!app.quit, "a dialog takes every key: q does not detach under it");
    press(&mut app, KeyCode::Char('n'));
    assert_eq!(app.modal, None);
    assert!(app.take_requests().is_empty(), "no means nothing is sent");

    press(&mut app, KeyCode::Char('n'));
    assert_eq!(app.modal, Some(Modal::Confirm(Request::SkipStage { stage: None })));
    press(&mut app, KeyCode::Char('y'));
    assert_eq!(app.take_requests(), vec![Request::SkipStage { stage: None }]);
    assert!(app.take_requests().is_empty(), "taken once");
    assert!(app.status_line.as_ref().unwrap().text.contains("skip the rest of the running stage"));
}

#[test]
fn pause_resume_and_checkpoint_send_at_once_and_replies_show() {
    let mut app = app_with(mid_dpo());
    press(&mut app, KeyCode::Char('p'));
    press(&mut app, KeyCode::Char('r'));
    press(&mut app, KeyCode::Char('c'));
    assert_eq!(app.take_requests(), vec![Request::Pause, Request::Resume, Request::CheckpointNow]);
    update(&mut app, Action::ControlReplied(Request::Pause, Ok("paused at step 86".into())));
    let status = app.status_line.clone().unwrap();
    assert_eq!((status.level, status.text.as_str()), (Level::Info, "pause: paused at step 86"));
    update(&mut app, Action::ControlReplied(Request::CheckpointNow, Err("no live worker".into())));
    let status = app.status_line.clone().unwrap();
    assert_eq!((status.level, status.text.as_str()), (Level::Error, "checkpoint_now failed: no live worker"));
    assert!(render_to_string(&app, 80, 24).contains("checkpoint_now failed: no live worker"));
}

#[test]
fn lambda_is_typed_checked_and_sent() {
    let mut app = app_with(mid_dpo());
    press(&mut app, KeyCode::Char('e'));
    assert_eq!(app.modal, Some(Modal::EditLambda { term: "pref".into(), input: "0.5".into(), error: None }));
    for _ in 0..3 {
        press(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "1e");
    press(&mut app, KeyCode::Char('z'));
    press(&mut app, KeyCode::Enter);
    let Some(Modal::EditLambda { input, error, .. }) = &app.modal else { panic!("still open: {:?}", app.modal) };
    assert_eq!(input, "1e", "letters other than e are not taken");
    assert!(error.as_ref().unwrap().contains("not a number"));
    assert!(app.take_requests().is_empty());
    press(&mut app, KeyCode::Backspace);
    type_text(&mut app, ".25");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.modal, None);
    assert_eq!(app.take_requests(), vec![Request::SetLambda { term: LambdaTerm::Pref, value: 1.25 }]);

    press(&mut app, KeyCode::Char('E'));
    assert!(matches!(&app.modal, Some(Modal::EditLambda { term, .. }) if term == "safe"));
    type_text(&mut app, "-1");
    press(&mut app, KeyCode::Enter);
    assert!(app.modal.is_some(), "a negative λ is refused");
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.modal, None);
    assert!(app.take_requests().is_empty());
}

#[test]
fn enter_on_the_runs_pane_asks_to_attach_the_selected_run() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::RunsListed(runs_list()));
    press(&mut app, KeyCode::Char('5'));
    assert_eq!(app.pane, Pane::Runs);
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    assert_eq!(app.selected_run, 2, "selection stops at the last run");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.take_attach(), None, "the attached run is not attached again");
    press(&mut app, KeyCode::Char('k'));
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.take_attach().as_deref(), Some("20250219-121212-crashed"));
    assert_eq!(app.pane, Pane::Dashboard, "a finished run opens on its dashboard");
    update(&mut app, Action::RunsListed(runs_list()[..1].to_vec()));
    assert_eq!(app.selected_run, 0, "a shorter list keeps the selection inside it");
}

#[test]
fn selection_moves_on_the_stages_pane_only() {
    let mut app = app_with(mid_dpo());
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected_stage, 0, "the dashboard has no list");
    press(&mut app, KeyCode::Char('2'));
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected_stage, 2);
    press(&mut app, KeyCode::Up);
    assert_eq!(app.selected_stage, 1);
}

#[test]
fn a_keymap_file_rebinds_and_the_help_shows_it() {
    let mut keymap = Keymap::default();
    keymap.merge(Path::new("keys.toml"), "# mine\npause = [\"P\", \"ctrl-p\"]\nquit = \"ctrl-q\"\n").unwrap();
    let mut app = App::default();
    app.keymap = keymap;
    press(&mut app, KeyCode::Char('p'));
    assert!(app.take_requests().is_empty(), "p is no longer bound");
    press(&mut app, KeyCode::Char('P'));
    assert_eq!(app.take_requests(), vec![Request::Pause]);
    let action = key_action(&app, KeyEvent::new(KeyCode::Char('p'), KeyModifiers::CONTROL)).unwrap();
    update(&mut app, action);
    assert_eq!(app.take_requests(), vec![Request::Pause]);
    press(&mut app, KeyCode::Char('q'));
    assert!(!app.quit);
    update(&mut app, Action::ShowHelp);
    let help = render_to_string(&app, 80, 24);
    assert!(help.contains("ctrl-p, P  pause training") || help.contains("P, ctrl-p  pause training"), "{help}");
    assert!(help.contains("ctrl-q  detach"), "{help}");
    update(&mut app, Action::CloseOverlay);
    app.status_line = None;
    assert!(render_to_string(&app, 80, 24).contains("ctrl-q detach"), "the footer names the rebound key");
}

fn keymap_error(text: &str) -> String {
    let mut keymap = Keymap::default();
    let before = keymap.clone();
    let err = keymap.merge(Path::new("keys.toml"), text).expect_err("a bad keymap");
    assert!(matches!(err, TuiError::Keymap { .. }), "{err:?}");
    assert_eq!(keymap, before, "a bad file changes nothing");
    err.to_string()
}

#[test]
fn bad_keymap_entries_are_located() {
    assert_eq!(
        keymap_error("pause = \"p\"\n  pasue = \"x\"\n"),
        "keys.toml:2:3: pasue: unknown command (see `?` in the TUI for the list)"
    );
    assert!(keymap_error("stop = \"ctrl-\"\n").starts_with("keys.toml:1:8: stop: unknown key \"ctrl-\""));
    assert_eq!(keymap_error("stop = 3\n"), "keys.toml:1:8: stop: expected a key or a list of keys, not integer");
    assert_eq!(
        keymap_error("pause = \"x\"\n"),
        "keys.toml:1:9: pause: key `x` is bound to stop by default; rebind stop too"
    );
    assert_eq!(keymap_error("pause = \"z\"\nstop = \"z\"\n"), "keys.toml:2:8: stop: key `z` is also bound to pause");
    assert!(keymap_error("pause = = 1\n").starts_with("keys.toml:1:9: "));
    // Swapping two defaults is fine when both are rebound.
    let mut keymap = Keymap::default();
    keymap.merge(Path::new("keys.toml"), "pause = \"x\"\nstop = \"p\"\n").unwrap();
}

#[test]
fn a_missing_keymap_file_means_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Keymap::load(Some(&dir.path().join("keys.toml"))).unwrap(), Keymap::default());
    std::fs::write(dir.path().join("keys.toml"), "help = \"h\"\n").unwrap();
    let keymap = Keymap::load(Some(&dir.path().join("keys.toml"))).unwrap();
    assert_eq!(keymap.keys_for(hone::tui::Command::Help), vec!["h"]);
}

#[test]
fn the_history_replaces_the_tail_and_keeps_the_view() {
    let all = completed();
    let tail = all[all.len() - 20..].to_vec();
    let mut app = App::default();
    update(&mut app, Action::TailShown(tail));
    assert!(app.loading_history);
    assert!(render_to_string(&app, 120, 40).contains("loading history…"));
    assert_eq!(app.run_id, None, "the tail alone does not hold run_started");
    update(&mut app, Action::SwitchPane(Pane::Stages));
    update(&mut app, Action::ToggleWindow);
    update(&mut app, Action::ShowHelp);
    update(&mut app, Action::Send(Request::Pause));

    let mut history = App::default();
    for event in &all {
        history.apply(event);
    }
    update(&mut app, Action::HistoryLoaded(Loaded(Box::new(history))));
    assert!(!app.loading_history);
    assert_eq!(app.run_id.as_deref(), Some("20250220-000000-demo"));
    assert_eq!(app.stages.len(), 3);
    assert_eq!((app.pane, app.window, app.show_help), (Pane::Stages, Window::Whole, true), "the view is kept");
    assert_eq!(app.take_requests(), vec![Request::Pause], "queued requests survive");
    assert_eq!(app.series["loss"].len(), app_with(all).series["loss"].len());
}

#[test]
fn ctrl_c_always_detaches_even_in_a_dialog() {
    let mut app = App::default();
    update(&mut app, Action::AskToConfirm(Request::Stop));
    let action = key_action(&app, KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)).unwrap();
    update(&mut app, action);
    assert!(app.quit);
    assert!(app.take_requests().is_empty(), "detaching never stops training");
}

#[test]
fn a_lambda_the_worker_does_not_have_is_refused_in_the_dialog() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::EditLambda("sft".into()));
    type_text(&mut app, "1");
    press(&mut app, KeyCode::Enter);
    let Some(Modal::EditLambda { error, .. }) = &app.modal else { panic!("still open: {:?}", app.modal) };
    assert!(error.as_ref().unwrap().contains("no λ named \"sft\""), "{error:?}");
    assert!(app.take_requests().is_empty());
}
