//! The error type of the config module: every way reading, validating, resolving, hashing or
//! freezing a pipeline file can fail.

use std::path::PathBuf;

use crate::located::Located;

/// Everything that can go wrong in [`crate::config`].
///
/// Errors inside a file carry a `path:line:column` location and, where one applies, the dotted
/// field such as `stage[1].pref.beta` ([`Located`]).
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

    /// The file is not valid TOML (no field), or a field is unknown, has the wrong type or an
    /// invalid value, or names a missing file; also a problem toml reports that belongs to no
    /// field (a missing `[model]` table).
    #[error("{0}")]
    Located(Located),

    /// A problem with a file as a whole that has no place inside it.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
