//! Disk full and read-only: a runs directory on a read-only file system is a clear error at start,
//! and a checkpoint write that runs out of space leaves the previous checkpoint intact while the
//! worker stops with an error event that names the file and the cause. Both use a small tmpfs,
//! which needs root (mount); without it the tests say that they skipped.
#![allow(clippy::unwrap_used)]

mod live;

use std::path::{Path, PathBuf};
use std::process::Command;

use hone::run::{list_checkpoints, RunDir, WorkerLock};
use live::{events, fixture, HONE};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Option<Tmpfs> {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(at).status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: mount -t tmpfs failed here (no CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A DPO pipeline on the fixture that checkpoints every 5 steps and keeps one.
fn pipeline(dir: &Path) -> PathBuf {
    let f = fixture();
    let text = format!(
        "[run]\nname = \"disk\"\nseed = 7\ncheckpoint_every = 5\nkeep_checkpoints = 1\n\n[model]\npath = \"{}\"\n\n\
         [[stage]]\nname = \"dpo\"\nepochs = 400\nbatch_size = 4\nlr = 1e-3\nmax_length = 128\n\
         pref = {{ data = [\"{}\"], lambda = 0.5, beta = 0.1 }}\n",
        f.join("model").display(),
        f.join("prefs.jsonl").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_read_only_runs_directory_is_a_clear_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("ro"), "size=64k,ro") else { return };
    let p = pipeline(tmp.path());
    let out =
        Command::new(HONE).args(["run", p.to_str().unwrap(), "--headless", "--runs-dir"]).arg(&fs.0).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot create run directory") && err.contains("Read-only file system"), "{err}");
    assert!(err.contains(&fs.0.display().to_string()), "the error names the directory: {err}");
}

#[test]
fn a_checkpoint_that_runs_out_of_space_keeps_the_previous_one_and_stops_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for the reference copy (~0.7 MB) and one checkpoint (~1.9 MB), not for a second.
    let Some(fs) = Tmpfs::mount(&tmp.path().join("small"), "size=3000k") else { return };
    let p = pipeline(tmp.path());
    let out =
        Command::new(HONE).args(["run", p.to_str().unwrap(), "--headless", "--runs-dir"]).arg(&fs.0).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let run = RunDir::list(&fs.0).unwrap().pop().unwrap();
    let listed = list_checkpoints(&run).unwrap();
    assert_eq!(listed.len(), 1, "the checkpoint before the full disk is listed, and nothing half-written");
    listed[0].verify().unwrap();
    assert_eq!(listed[0].step, 5, "the failed save was the next one, at step 10");
    let all = events(&run);
    let error = all.iter().rev().find(|e| e.event == "error").expect("an error event");
    let message = error.fields["message"].as_str().unwrap();
    assert!(message.contains("No space left on device") && message.contains("checkpoints"), "{message}");
    let finished = all.last().unwrap();
    assert_eq!((finished.event.as_str(), finished.fields["status"].as_str()), ("run_finished", Some("failed")));
    assert!(WorkerLock::is_live(&run).unwrap().is_none(), "the lock is released");
}
