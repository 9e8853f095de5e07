//! `TuiError`: every way attaching to a run can fail, each naming what a person can act on.

use std::io;
use std::path::PathBuf;

use crate::run::RunError;

/// An error from the terminal UI.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The terminal could not be set up, drawn to or restored; `op` says which.
    #[error("terminal: cannot {op}: {source}")]
    Terminal {
        /// What was being done, as a verb phrase.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The theme file could not be read.
    #[error("cannot read theme {}: {source}", path.display())]
    ReadTheme {
        /// The theme file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The theme file has an unknown role, a bad value or a syntax error.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Theme {
        /// The theme file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong, starting with the role when there is one.
        message: String,
    },
    /// A configuration file (keys.toml) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// keys.toml has an unknown command, a bad key, a key bound twice or a syntax error.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Keymap {
        /// The keymap file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong, starting with the command.
        message: String,
    },
    /// `--theme NAME` names no built-in theme, no user theme and no file.
    #[error("unknown theme {name:?}: not one of {builtin}, not in {searched}, and not a file")]
    UnknownTheme {
        /// What was asked for.
        name: String,
        /// The built-in names.
        builtin: String,
        /// Where user themes were looked for.
        searched: String,
    },
    /// The run directory could not be opened.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A background thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The UI thread panicked; the terminal has been restored and the panic message printed.
    #[error("the UI thread panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
}
