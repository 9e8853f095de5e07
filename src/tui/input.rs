//! Keys to actions: dialogs take every key first, then the pane's own keys (the hook where panes
//! 3 and 4 plug in theirs), then the keymap. Ctrl-C always detaches; nothing here stops training.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::action::Action;
use super::app::App;
use super::control::ControlRequest;
use super::keymap::Command;
use super::model::{Modal, Pane};

/// The action a key press asks for in the current state, if any.
pub fn key_action(app: &App, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Some(Action::Quit);
    }
    match &app.modal {
        Some(Modal::Confirm(_)) => {
            return match key.code {
                KeyCode::Char('y' | 'Y') | KeyCode::Enter => Some(Action::Confirm),
                KeyCode::Char('n' | 'N') | KeyCode::Esc => Some(Action::CloseOverlay),
                _ => None,
            }
        }
        Some(Modal::EditLambda { .. }) => {
            return match key.code {
                KeyCode::Enter => Some(Action::Confirm),
                KeyCode::Esc => Some(Action::CloseOverlay),
                KeyCode::Backspace => Some(Action::InputBackspace),
                KeyCode::Char(c) if c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+') => {
                    Some(Action::InputChar(c))
                }
                _ => None,
            }
        }
        None => {}
    }
    if let Some(action) = pane_key(app, key) {
        return Some(action);
    }
    app.keymap.command(key).map(command_action)
}

/// Keys a pane handles itself before the keymap. Panes 3 (Label) and 4 (Eval) are built in part
/// 2; they plug their keys in here.
fn pane_key(app: &App, _key: KeyEvent) -> Option<Action> {
    match app.pane {
        Pane::Dashboard | Pane::Stages | Pane::Runs | Pane::Label | Pane::Eval => None,
    }
}

/// What a keymap command does.
pub fn command_action(command: Command) -> Action {
    match command {
        Command::Dashboard => Action::SwitchPane(Pane::Dashboard),
        Command::Stages => Action::SwitchPane(Pane::Stages),
        Command::Label => Action::SwitchPane(Pane::Label),
        Command::Eval => Action::SwitchPane(Pane::Eval),
        Command::Runs => Action::SwitchPane(Pane::Runs),
        Command::Up => Action::SelectPrevious,
        Command::Down => Action::SelectNext,
        Command::Activate => Action::Activate,
        Command::Smoothing => Action::ToggleSmoothing,
        Command::LogScale => Action::ToggleLogScale,
        Command::Window => Action::ToggleWindow,
        Command::Pause => Action::Send(ControlRequest::Pause),
        Command::Resume => Action::Send(ControlRequest::Resume),
        Command::Stop => Action::AskToConfirm(ControlRequest::Stop),
        Command::SkipStage => Action::AskToConfirm(ControlRequest::SkipStage),
        Command::Checkpoint => Action::Send(ControlRequest::CheckpointNow),
        Command::EditLambdaPref => Action::EditLambda("pref".to_string()),
        Command::EditLambdaSafe => Action::EditLambda("safe".to_string()),
        Command::Help => Action::ShowHelp,
        Command::Close => Action::CloseOverlay,
        Command::Quit => Action::Quit,
    }
}
