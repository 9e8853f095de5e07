//! `hone run` without `--headless`: the worker starts detached in its own session, writes
//! worker.pid while it lives, and keeps training after the process group and session that
//! started it are killed (as when a terminal closes or an SSH link drops).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hone::run::{EventReader, RunDir};

mod live;
use live::HONE;

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    live::wait_for(what, Duration::from_secs(240), f)
}

fn pipeline(dir: &Path) -> PathBuf {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    let text = format!(
        "[run]\nname = \"detached\"\nseed = 3\ncheckpoint_every = 20\n\n[model]\npath = \"{}\"\n\n[[stage]]\nname = \"sft\"\nepochs = 30\nbatch_size = 2\nlr = 1e-3\nmax_length = 128\nsft = {{ data = [\"{}\"] }}\n",
        f.join("model").display(),
        f.join("sft.jsonl").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn max_step(run: &RunDir) -> u64 {
    EventReader::read_all(&run.events_path())
        .map(|b| b.events.iter().filter(|e| e.event == "metrics").filter_map(|e| e.step).max().unwrap_or(0))
        .unwrap_or(0)
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(n - 3)?.parse().ok()
}

#[test]
fn the_detached_worker_survives_its_session_and_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = pipeline(tmp.path());
    // A stand-in for a terminal session: a shell leading its own process group runs `hone run`
    // and stays (like a login shell); the whole group is then hung up and killed.
    let script = format!(
        "'{HONE}' run '{}' --runs-dir '{}' >'{}' 2>&1; exec sleep 600",
        p.display(),
        runs.display(),
        tmp.path().join("parent.out").display()
    );
    let mut shell = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).process_group(0).spawn().unwrap();
    let group = shell.id();
    let run = wait_for("the run directory", || RunDir::list(&runs).ok().and_then(|mut v| v.pop()));
    let pid: u32 = wait_for("worker.pid", || {
        std::fs::read_to_string(run.worker_pid_path()).ok().and_then(|s| s.trim().parse().ok())
    });
    // The worker leads a session of its own, apart from the shell's group.
    assert_eq!(stat_field(pid, 6), Some(i64::from(pid)), "the worker is a session leader");
    assert_ne!(stat_field(pid, 5), Some(i64::from(group)));
    wait_for("the parent to print the run directory", || {
        let out = std::fs::read_to_string(tmp.path().join("parent.out")).ok()?;
        out.contains(run.path().to_str().unwrap()).then_some(())
    });
    wait_for("progress", || (max_step(&run) >= 2).then_some(()));

    for signal in ["-HUP", "-KILL"] {
        let status = Command::new("kill").args([signal, "--", &format!("-{group}")]).status().unwrap();
        assert!(status.success());
    }
    shell.wait().unwrap();
    let at_kill = max_step(&run);
    wait_for("progress after the session died", || (max_step(&run) > at_kill + 2).then_some(()));
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the worker lives on");

    let finished = wait_for("the run to finish", || {
        let batch = EventReader::read_all(&run.events_path()).ok()?;
        batch.events.iter().rev().find(|e| e.event == "run_finished").cloned()
    });
    assert_eq!(finished.fields["status"], "completed");
    wait_for("worker.pid to be removed", || (!run.worker_pid_path().exists()).then_some(()));
    let log = std::fs::read_to_string(run.worker_log_path()).unwrap();
    assert!(log.contains("[sft"), "the worker's progress lines go to worker.log: {log}");
}

#[test]
fn a_worker_that_cannot_start_is_reported_with_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = pipeline(tmp.path());
    // The first detached run holds its lock; `hone resume` of the same run (detached) starts a
    // second worker, which must fail, and the parent says why.
    let out =
        Command::new(HONE).args(["run", p.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = RunDir::list(&runs).unwrap().pop().unwrap();
    let second = Command::new(HONE).args(["resume", run.path().to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("already running"), "{err}");
    // Stop the first one through its socket.
    let mut client = hone::run::control::Client::connect(run.path()).unwrap();
    assert!(client.send(&hone::run::control::Request::Stop).unwrap().ok);
    wait_for("the first worker to stop", || (!run.worker_pid_path().exists()).then_some(()));
}
