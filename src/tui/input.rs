//! Keys to actions: dialogs take every key first, then the keymap. Ctrl-C always detaches; nothing
//! here stops training. When no dialog or help is open, the event loop gives keys to the Label and
//! Eval panes first (`label::attach::route_key`, which needs the run path because their keys
//! write files); only the keys they leave come here.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::action::Action;
use super::app::App;
use super::keymap::Command;
use super::model::{Modal, Pane};
use crate::control::Request;

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
    app.keymap.command(key).map(command_action)
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
        Command::Pause => Action::Send(Request::Pause),
        Command::Resume => Action::Send(Request::Resume),
        Command::Stop => Action::AskToConfirm(Request::Stop),
        Command::SkipStage => Action::AskToConfirm(Request::SkipStage { stage: None }),
        Command::Checkpoint => Action::Send(Request::CheckpointNow),
        Command::EditLambdaPref => Action::EditLambda("pref".to_string()),
        Command::EditLambdaSafe => Action::EditLambda("safe".to_string()),
        Command::Help => Action::ShowHelp,
        Command::Close => Action::CloseOverlay,
        Command::Quit => Action::Quit,
    }
}
