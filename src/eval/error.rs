//! The error type of the eval module: every way reading a suite, an overrides or labels file, a
//! judge/gate configuration, or the responses handed to scoring can be wrong. Owns only
//! [`EvalError`]; never formats reports.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::eval`].
///
/// File errors carry a `path:line:column` location (1-based line of the JSONL file, 1-based
/// column in Unicode characters of the offending value, or of its enclosing object when a field
/// is missing).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A line is not valid JSON (or not UTF-8).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Json {
        /// The file holding the bad line.
        path: PathBuf,
        /// 1-based line number in the file.
        line: usize,
        /// 1-based column (in characters) within that line.
        column: usize,
        /// What the JSON parser reported.
        message: String,
    },

    /// A line is valid JSON but a field is missing, has the wrong shape or an invalid value.
    #[error("{}:{line}:{column}: {field}: {message}", path.display())]
    Field {
        /// The file holding the bad record.
        path: PathBuf,
        /// 1-based line number in the file.
        line: usize,
        /// 1-based column (in characters) of the offending value.
        column: usize,
        /// Dotted path of the field, e.g. `checks[1].pattern`.
        field: String,
        /// What is wrong with it.
        message: String,
    },

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
