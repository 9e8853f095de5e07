//! A problem at a place in a file, reported as `path:line:column: field: message` (the field
//! left out where none applies, as for a line that is not valid JSON or TOML). Data, config and
//! eval files all report bad input this way, through this one type.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem at `line:column` of `path`, in `field` where one applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in Unicode characters) of the offending key or value; for a field that
    /// is missing, of the enclosing object or table.
    pub column: usize,
    /// Dotted path of the field (`messages[1].role`, `stage[1].pref.beta`); `None` for a
    /// problem that belongs to no field (a syntax error).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Located {
    /// A problem at `line:column` of `path` that belongs to no field.
    pub fn new(path: &Path, line: usize, column: usize, message: impl Into<String>) -> Self {
        Self { path: path.to_path_buf(), line, column, field: None, message: message.into() }
    }

    /// The same problem, in `field`.
    #[must_use]
    pub fn in_field(self, field: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..self }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A file that could not be read (or, for an append-only store, written).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Unreadable {
    /// The file.
    pub path: PathBuf,
    /// The underlying I/O error.
    #[source]
    pub source: std::io::Error,
}

impl Unreadable {
    /// The error of an I/O failure on `path`, as a function for `map_err`.
    pub fn at(path: &Path) -> impl Fn(std::io::Error) -> Self + Copy + '_ {
        move |source| Self { path: path.to_path_buf(), source }
    }
}
