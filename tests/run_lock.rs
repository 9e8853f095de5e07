//! WorkerLock: one live worker per run, named by pid; released on drop and on SIGKILL.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use hone::run::{RunDir, RunError, WorkerLock};

fn new_run() -> (tempfile::TempDir, RunDir) {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "lock").unwrap();
    run.write_frozen_config("").unwrap();
    (tmp, run)
}

#[test]
fn second_acquire_in_process_is_busy_and_names_the_pid() {
    let (_tmp, run) = new_run();
    assert_eq!(WorkerLock::is_live(&run).unwrap(), None, "never had a worker");
    let me = std::process::id();
    let lock = WorkerLock::acquire(&run).unwrap();
    assert_eq!(lock.pid(), me);
    assert_eq!(fs::read_to_string(run.worker_pid_path()).unwrap().trim(), me.to_string());
    // flock belongs to the open file description: a second open in the same process conflicts.
    let err = WorkerLock::acquire(&run).unwrap_err();
    match &err {
        RunError::Busy { run: path, pid } => {
            assert_eq!(path, run.path());
            assert_eq!(*pid, Some(me));
        }
        other => panic!("expected Busy, got {other}"),
    }
    assert!(err.to_string().contains(&format!("pid {me}")), "{err}");
    assert_eq!(WorkerLock::is_live(&run).unwrap().unwrap().pid, Some(me));
    // The failed attempt must not have disturbed the holder.
    assert_eq!(fs::read_to_string(run.worker_pid_path()).unwrap().trim(), me.to_string());

    drop(lock);
    assert!(!run.worker_pid_path().exists(), "drop removes worker.pid");
    assert_eq!(WorkerLock::is_live(&run).unwrap(), None);
    let again = WorkerLock::acquire(&run).unwrap();
    drop(again);
}

#[test]
fn is_live_probe_does_not_block_a_starting_worker() {
    let (_tmp, run) = new_run();
    drop(WorkerLock::acquire(&run).unwrap());
    let prober = {
        let run = run.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                // May see one of the short-lived locks below; only the acquisitions must not fail.
                WorkerLock::is_live(&run).unwrap();
            }
        })
    };
    for _ in 0..50 {
        drop(WorkerLock::acquire(&run).unwrap());
    }
    prober.join().unwrap();
}

#[test]
fn a_stale_pid_file_does_not_block() {
    let (_tmp, run) = new_run();
    fs::write(run.worker_pid_path(), "4000000000\n").unwrap();
    assert_eq!(WorkerLock::is_live(&run).unwrap(), None);
    let lock = WorkerLock::acquire(&run).unwrap();
    assert_eq!(fs::read_to_string(run.worker_pid_path()).unwrap().trim(), std::process::id().to_string());
    drop(lock);
}

const CHILD_ENV: &str = "HONE_RUN_LOCK_CHILD_DIR";

/// In child mode: take the lock, say so, then wait until killed.
#[test]
fn lock_is_exclusive_across_processes_and_released_by_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let run = RunDir::open(dir.as_ref()).unwrap();
        let _lock = WorkerLock::acquire(&run).unwrap();
        println!("LOCKED {}", std::process::id());
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let (_tmp, run) = new_run();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["lock_is_exclusive_across_processes_and_released_by_sigkill", "--exact", "--nocapture"])
        .env(CHILD_ENV, run.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited before locking");
        if line.starts_with("LOCKED ") {
            break;
        }
    }
    let child_pid: u32 = line.trim()["LOCKED ".len()..].parse().unwrap();
    assert_eq!(child_pid, child.id());
    let err = WorkerLock::acquire(&run).unwrap_err();
    assert!(matches!(err, RunError::Busy { pid: Some(p), .. } if p == child_pid), "{err}");
    assert!(err.to_string().contains(&child_pid.to_string()));
    assert_eq!(WorkerLock::is_live(&run).unwrap().unwrap().pid, Some(child_pid));

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(run.worker_pid_path().exists(), "a killed worker leaves worker.pid behind");
    assert_eq!(WorkerLock::is_live(&run).unwrap(), None, "the kernel released the flock");
    let lock = WorkerLock::acquire(&run).unwrap();
    assert_eq!(fs::read_to_string(run.worker_pid_path()).unwrap().trim(), std::process::id().to_string());
    drop(lock);
}
