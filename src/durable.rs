//! Durable writes, the one way hone writes a file or a directory that must never be seen half
//! written: the content goes to a temporary name beside the target, is fsynced, renamed into
//! place, and the parent directory is fsynced, so after a crash a reader finds the old version or
//! the new one (and at worst a leftover `.tmp-*` entry, which [`remove_dead_temps`] clears), never
//! a mix. Used by model saving, checkpoints, references, evaluations, exports and the run
//! directory's small files.
//!
//! Owns no file names; knows nothing of runs, tensors or the terminal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary name beside `path`, unique within this process and across processes.
fn temp_beside(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Attaches the path to an I/O error, so every message says which file.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Fsyncs a directory, so entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| at(dir, e))
}

/// Writes `bytes` to a new file at `path` and fsyncs it (the file must not exist).
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| at(path, e))?;
    file.write_all(bytes).map_err(|e| at(path, e))?;
    file.sync_all().map_err(|e| at(path, e))
}

/// Writes `bytes` to `path` atomically and durably: temporary file beside it, fsync, rename over
/// `path`, fsync of the directory.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_beside(path);
    let result = write_new(&tmp, bytes).and_then(|()| fs::rename(&tmp, path).map_err(|e| at(path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(parent(path))
}

/// Writes a whole directory of `files` at `dir` atomically and durably: the files go into a
/// temporary directory beside it (each fsynced, then the directory), which replaces `dir` by a
/// rename (an existing `dir` is removed first), and the parent is fsynced. File names must be
/// plain components (the callers' names are their own constants or a model's file list).
pub fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) -> io::Result<()> {
    let parent = parent(dir);
    fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
    let tmp = temp_beside(dir);
    let result = (|| {
        fs::create_dir(&tmp).map_err(|e| at(&tmp, e))?;
        for (name, bytes) in files {
            write_new(&tmp.join(name), bytes)?;
            crate::fault::point("durable.dir.file");
        }
        fsync_dir(&tmp)?;
        crate::fault::point("durable.dir");
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| at(dir, e))?;
        }
        fs::rename(&tmp, dir).map_err(|e| at(dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result?;
    fsync_dir(parent)
}

/// Removes what writers of `path` that died left beside it: `.<name>.tmp-<pid>-<n>` entries
/// (see [`temp_beside`]) whose process no longer exists. Entries of live processes (a write in
/// progress) stay. Returns how many were removed.
pub fn remove_dead_temps(path: &Path) -> io::Result<usize> {
    let dir = parent(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.tmp-");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(at(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| at(dir, e))?;
        let file = entry.file_name();
        let pid = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|rest| rest.split('-').next());
        let Some(pid) = pid.and_then(|p| p.parse::<i32>().ok()) else { continue };
        if process_exists(pid) {
            continue;
        }
        let path = entry.path();
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        gone.map_err(|e| at(&path, e))?;
        removed += 1;
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Whether a process `pid` exists, by the signal-0 test (`kill(pid, 0)`) every Unix has (one of
/// another user's counts: it cannot be signalled, but it is there).
pub fn process_exists(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_is_replaced_whole_and_a_failed_write_leaves_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out/model");
        write_dir(&dir, &[("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]).unwrap();
        write_dir(&dir, &[("c".into(), b"3".to_vec())]).unwrap();
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["c"]);
        // A name that cannot be created fails before the old directory is touched.
        assert!(write_dir(&dir, &[("x/y".into(), b"4".to_vec())]).is_err());
        assert_eq!(fs::read(dir.join("c")).unwrap(), b"3");
        assert_eq!(fs::read_dir(tmp.path().join("out")).unwrap().count(), 1, "no temporary left");
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_a_live_writers_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("model");
        // A child that has exited and been reaped: its pid names no process (until reused).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mine = std::process::id();
        for name in [format!(".model.tmp-{dead}-0"), format!(".model.tmp-{mine}-3"), ".other.tmp-1-0".into()] {
            fs::create_dir(tmp.path().join(name)).unwrap();
        }
        fs::write(tmp.path().join(format!(".model.tmp-{dead}-1")), b"half").unwrap();
        assert_eq!(remove_dead_temps(&target).unwrap(), 2);
        let mut left: Vec<String> =
            fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [format!(".model.tmp-{mine}-3"), ".other.tmp-1-0".to_string()]);
    }
}
