//! The error type of the config module: every way reading, validating, resolving, hashing or
//! freezing a pipeline file can fail.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::config`].
///
/// Errors inside a file carry a `path:line:column` location (1-based line, 1-based column in
/// Unicode characters) and, where one applies, the dotted field such as `stage[1].pref.beta`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read (the pipeline file itself, or a file being hashed).
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML, or toml reports a problem that belongs to no field (a
    /// missing `[model]` table).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column (in characters) within that line.
        column: usize,
        /// What the TOML parser reported.
        message: String,
    },

    /// A field is unknown, has the wrong type or an invalid value, or names a missing file.
    #[error("{}:{line}:{column}: {field}: {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column (in characters) of the offending key or value; for a field the file
        /// leaves out, of the enclosing table.
        column: usize,
        /// Dotted path of the field, e.g. `stage[1].pref.beta`.
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// A problem with a file as a whole that has no place inside it.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
