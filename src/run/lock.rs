//! `WorkerLock`: at most one live worker per run, enforced with flock(2) on worker.lock, plus
//! worker.pid so others can name that worker.
//!
//! Semantics:
//! - The lock is an exclusive `flock` on worker.lock, taken without blocking. flock locks belong to
//!   the open file description, so the kernel releases it when the worker exits in any way,
//!   SIGKILL included; a second `open` + lock of the same file, even in the same process, conflicts.
//!   Files are opened close-on-exec (Rust's default), so an exec'd child does not inherit it.
//! - The holder writes its pid to worker.pid atomically right after locking and removes worker.pid
//!   before unlocking on drop. After a crash worker.pid stays behind, stale; liveness is decided by
//!   the lock only, never by worker.pid.
//! - [`WorkerLock::is_live`] probes with a momentary *shared* lock. A worker starting during such a
//!   probe would see the lock taken, so [`WorkerLock::acquire`] retries for a short while
//!   (`ACQUIRE_TRIES` × `RETRY_SLEEP`) before reporting [`RunError::Busy`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::thread;
use std::time::Duration;

use fs4::fs_std::FileExt;

use super::dir::RunDir;
use super::error::RunError;
use super::fsutil::{write_atomic, IoContext};
use crate::durable::process_exists;

const ACQUIRE_TRIES: u32 = 10;
const PID_READ_TRIES: u32 = 50;
const RETRY_SLEEP: Duration = Duration::from_millis(10);

/// Proof that this process is a run's single live worker. Dropping it removes worker.pid and
/// releases the lock.
#[derive(Debug)]
pub struct WorkerLock {
    // Held open for the lock's lifetime; closing it releases the flock.
    file: File,
    run: RunDir,
    pid: u32,
}

/// A worker found holding a run's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveWorker {
    /// Its pid from worker.pid; `None` only if worker.pid could not be read (in practice: a
    /// worker that is between taking the lock and writing its pid for longer than half a second).
    pub pid: Option<u32>,
}

impl WorkerLock {
    /// Takes the run's worker lock without blocking (beyond a short retry, see the module docs)
    /// and writes worker.pid. Fails with [`RunError::Busy`], naming the holder's pid, if another
    /// worker (or another `WorkerLock` in this process) holds it.
    pub fn acquire(run: &RunDir) -> Result<WorkerLock, RunError> {
        let lock_path = run.worker_lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .ctx("open", &lock_path)?;
        let mut locked = false;
        for attempt in 0..ACQUIRE_TRIES {
            if attempt > 0 {
                thread::sleep(RETRY_SLEEP);
            }
            if FileExt::try_lock_exclusive(&file).ctx("lock", &lock_path)? {
                locked = true;
                break;
            }
        }
        if !locked {
            return Err(RunError::Busy { run: run.path().to_path_buf(), pid: read_live_pid(run) });
        }
        let pid = std::process::id();
        // On failure `file` is dropped here, which releases the lock.
        write_atomic(&run.worker_pid_path(), format!("{pid}\n").as_bytes())?;
        Ok(WorkerLock { file, run: run.clone(), pid })
    }

    /// Whether another live worker holds the run's lock, and its pid. `None` if nobody holds it
    /// (including a run that never had a worker). Holding a `WorkerLock` on the run in this very
    /// process also counts as live.
    pub fn is_live(run: &RunDir) -> Result<Option<LiveWorker>, RunError> {
        let lock_path = run.worker_lock_path();
        let file = match File::open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("open", &lock_path),
        };
        if FileExt::try_lock_shared(&file).ctx("lock", &lock_path)? {
            // Closing the file releases the probe lock at once.
            drop(file);
            return Ok(None);
        }
        Ok(Some(LiveWorker { pid: read_live_pid(run) }))
    }

    /// The locked run.
    pub fn run(&self) -> &RunDir {
        &self.run
    }

    /// This process's pid, as written to worker.pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for WorkerLock {
    fn drop(&mut self) {
        // Remove the pid file while still holding the lock, so a new worker's pid is never removed.
        let _ = fs::remove_file(self.run.worker_pid_path());
        let _ = FileExt::unlock(&self.file);
    }
}

/// Reads worker.pid of a run whose lock is held, retrying briefly while it is missing or names a
/// process that no longer exists (a stale file the new holder is about to replace).
fn read_live_pid(run: &RunDir) -> Option<u32> {
    let path = run.worker_pid_path();
    for attempt in 0..PID_READ_TRIES {
        if attempt > 0 {
            thread::sleep(RETRY_SLEEP);
        }
        let pid = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            if i32::try_from(pid).is_ok_and(process_exists) {
                return Some(pid);
            }
        }
    }
    None
}
