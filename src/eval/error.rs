//! The error type of the eval module: every way reading a suite, an overrides or labels file, a
//! judge/gate configuration, or the responses handed to scoring can be wrong. Owns only
//! [`EvalError`]; never formats reports.

use crate::located::{Located, Unreadable};

/// Everything that can go wrong in [`crate::eval`].
///
/// File errors carry a `path:line:column` location ([`Located`]).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] Unreadable),

    /// A line is not valid JSON (or not UTF-8), or it is but a field is missing, has the wrong
    /// shape or an invalid value.
    #[error("{0}")]
    Located(Located),

    /// A judge or gate configuration value is invalid (e.g. a refusal pattern that is not a
    /// regex), or a TOML configuration could not be parsed.
    #[error("{field}: {message}")]
    Config {
        /// Dotted path of the setting, e.g. `judge.refusal_patterns[2]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// The data handed to scoring does not fit together (a missing or duplicate response, a
    /// non-finite latency, ...).
    #[error("{input}: {message}")]
    Input {
        /// Which input is wrong: `responses`, `baseline_responses`, `price_per_device_hour`, ...
        input: String,
        /// What is wrong with it.
        message: String,
    },
}

impl EvalError {
    /// Shorthand for an [`EvalError::Input`].
    pub(crate) fn input(input: &str, message: impl Into<String>) -> Self {
        EvalError::Input { input: input.to_string(), message: message.into() }
    }
}
