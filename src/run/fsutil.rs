//! Small file-system helpers shared by the run module: error context, atomic whole-file writes and
//! directory fsync.

use std::fs::File;
use std::io;
use std::path::Path;

use super::error::RunError;

/// Attaches an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Converts the error into `RunError::Io { op, path }`.
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, RunError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, RunError> {
        self.map_err(|source| RunError::Io { op, path: path.to_path_buf(), source })
    }
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), RunError> {
    crate::durable::fsync_dir(dir).ctx("fsync directory", dir)
}

/// Fsyncs an existing file by path.
pub(crate) fn fsync_file(path: &Path) -> Result<(), RunError> {
    File::open(path).ctx("open", path)?.sync_all().ctx("fsync", path)
}

/// Writes `bytes` to `path` atomically and durably ([`crate::durable::write_file`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    crate::durable::write_file(path, bytes).ctx("write atomically", path)
}

/// Checks that `name` is a single plain path component: non-empty, no separators, no NUL, not
/// starting with '.', so joining it to a directory cannot escape or hide.
pub(crate) fn check_component(dir: &Path, name: &str) -> Result<(), RunError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if name.contains(['/', '\\', '\0']) {
        Some("contains a path separator or NUL")
    } else if name.len() > 200 {
        Some("longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RunError::InvalidName { path: dir.to_path_buf(), name: name.to_string(), reason }),
        None => Ok(()),
    }
}
