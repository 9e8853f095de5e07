//! The real terminal: raw mode and the alternate screen, entered by [`TerminalGuard::enter`] and
//! left when the guard drops, and a panic hook that restores the terminal only when the panic
//! happens on the UI thread (a panicking background thread leaves the UI running, so restoring
//! the terminal under it would break the screen). The hook chains to the one installed before.
//! The dashboard and `hone label` both take the terminal through [`TerminalGuard`].

use std::cell::Cell;
use std::io::{self, Stdout};
use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::thread;

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::error::TuiError;

/// The UI thread's name.
pub const UI_THREAD: &str = "ui";

thread_local! {
    static ON_UI_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether raw mode and the alternate screen are on (so there is something to restore).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Marks the calling thread as the UI thread for the panic hook.
pub fn mark_ui_thread() {
    ON_UI_THREAD.with(|flag| flag.set(true));
}

/// Whether a panic on the calling thread should restore the terminal.
pub fn on_ui_thread() -> bool {
    ON_UI_THREAD.with(Cell::get) || thread::current().name() == Some(UI_THREAD)
}

/// Installs (once per process) the panic hook that restores the terminal for UI-thread panics
/// before the previous hook prints the message.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if on_ui_thread() {
                restore();
            }
            previous(info);
        }));
    });
}

/// Leaves raw mode and the alternate screen if they are on; safe to call more than once.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        // Nothing useful can be done if restoring fails; the shell's `reset` still works.
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// The terminal in raw mode on the alternate screen; restored on drop.
pub struct TerminalGuard {
    /// The ratatui terminal drawing to stdout.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen and hides the cursor.
    pub fn enter() -> Result<TerminalGuard, TuiError> {
        let err = |op| move |source| TuiError::Terminal { op, source };
        enable_raw_mode().map_err(err("enter raw mode"))?;
        ACTIVE.store(true, Ordering::SeqCst);
        if let Err(source) = execute!(io::stdout(), EnterAlternateScreen, Hide) {
            restore();
            return Err(TuiError::Terminal { op: "enter the alternate screen", source });
        }
        match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(source) => {
                restore();
                Err(TuiError::Terminal { op: "set up the screen", source })
            }
        }
    }
}

impl TerminalGuard {
    /// Gives the terminal back for a while (an external editor): leaves the alternate screen and
    /// raw mode; [`TerminalGuard::resume`] takes it again.
    pub fn suspend(&mut self) -> Result<(), TuiError> {
        let err = |op| move |source| TuiError::Terminal { op, source };
        self.terminal.flush().map_err(err("flush the screen"))?;
        restore();
        Ok(())
    }

    /// Takes the terminal again after [`TerminalGuard::suspend`] and redraws from scratch.
    pub fn resume(&mut self) -> Result<(), TuiError> {
        let err = |op| move |source| TuiError::Terminal { op, source };
        enable_raw_mode().map_err(err("enter raw mode"))?;
        ACTIVE.store(true, Ordering::SeqCst);
        execute!(io::stdout(), EnterAlternateScreen, Hide).map_err(err("enter the alternate screen"))?;
        self.terminal.clear().map_err(err("clear the screen"))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ui_thread_restores() {
        let named = |name: &str| {
            thread::Builder::new().name(name.to_string()).spawn(on_ui_thread).expect("spawn").join().expect("join")
        };
        assert!(named(UI_THREAD));
        assert!(!named("tail"));
        assert!(!named("input"));
        let marked = thread::spawn(|| {
            mark_ui_thread();
            on_ui_thread()
        });
        assert!(marked.join().expect("join"), "a thread marked as the UI thread restores whatever its name");
    }
}
