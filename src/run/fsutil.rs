//! Small file-system helpers shared by the run module: error context, atomic whole-file writes and
//! directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

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
    File::open(dir).ctx("open directory", dir)?.sync_all().ctx("fsync directory", dir)
}

/// Fsyncs an existing file by path.
pub(crate) fn fsync_file(path: &Path) -> Result<(), RunError> {
    File::open(path).ctx("open", path)?.sync_all().ctx("fsync", path)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written, fsynced
/// and renamed over `path`, then the directory is fsynced. A reader sees the old file or the new
/// one, never a mix; after a crash at most a `.<name>.tmp-*` file is left behind.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).ctx("create", &tmp)?;
        file.write_all(bytes).ctx("write", &tmp)?;
        file.sync_all().ctx("fsync", &tmp)?;
        drop(file);
        fs::rename(&tmp, path).ctx("rename into place", path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(dir)
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
