//! RunDir: ids, open/list/newest, frozen config, path accessors.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use hone::run::{RunDir, RunError};

fn is_id_for(id: &str, name: &str) -> bool {
    let b = id.as_bytes();
    id.len() > 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && id[15..].starts_with(&format!("-{name}"))
}

#[test]
fn create_makes_timestamped_unique_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let a = RunDir::create(&runs, "sft").unwrap();
    let b = RunDir::create(&runs, "sft").unwrap();
    assert!(is_id_for(a.id(), "sft"), "{}", a.id());
    assert_ne!(a.path(), b.path());
    if a.id()[..15] == b.id()[..15] {
        assert_eq!(b.id(), format!("{}-2", a.id()));
    }
    assert!(a.path().is_dir() && b.path().is_dir());
    assert_eq!(a.path().parent().unwrap(), runs);
}

#[test]
fn concurrent_creators_never_share_a_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().to_path_buf();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let runs = runs.clone();
            std::thread::spawn(move || RunDir::create(&runs, "same").unwrap().path().to_path_buf())
        })
        .collect();
    let mut paths: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 8);
}

#[test]
fn bad_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["", "../x", "a/b", ".hidden"] {
        let err = RunDir::create(tmp.path(), name).unwrap_err();
        assert!(matches!(err, RunError::InvalidName { .. }), "{name}: {err}");
    }
}

#[test]
fn open_needs_config_or_events_and_config_is_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "cfg").unwrap();
    let err = RunDir::open(run.path()).unwrap_err();
    assert!(matches!(err, RunError::NotARun { .. }), "{err}");
    assert!(err.to_string().contains(run.id()));
    run.write_frozen_config("[train]\nlr = 1e-5\n").unwrap();
    run.write_frozen_config("[train]\nlr = 2e-5\n").unwrap();
    let opened = RunDir::open(run.path()).unwrap();
    assert_eq!(opened, run);
    assert_eq!(opened.read_frozen_config().unwrap(), "[train]\nlr = 2e-5\n");
    let names: Vec<String> =
        fs::read_dir(run.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["run.toml"], "no temporaries left behind");

    let events_only = tmp.path().join("manual");
    fs::create_dir(&events_only).unwrap();
    fs::write(events_only.join("events.jsonl"), "").unwrap();
    assert_eq!(RunDir::open(&events_only).unwrap().id(), "manual");
    let missing = RunDir::open(&tmp.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

fn make_run(runs: &Path, id: &str) {
    fs::create_dir_all(runs.join(id)).unwrap();
    fs::write(runs.join(id).join("run.toml"), "").unwrap();
}

#[test]
fn list_and_newest_order_by_id_timestamp() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    assert!(RunDir::newest(runs).unwrap().is_none());
    assert!(RunDir::list(&runs.join("missing")).unwrap().is_empty());
    make_run(runs, "20250101-000000-zzz");
    make_run(runs, "20250301-142233-aaa");
    make_run(runs, "20240101-000000-mmm");
    fs::create_dir(runs.join("20990101-000000-not-a-run")).unwrap();
    fs::write(runs.join("stray.txt"), "").unwrap();
    let ids: Vec<String> = RunDir::list(runs).unwrap().iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids, ["20240101-000000-mmm", "20250101-000000-zzz", "20250301-142233-aaa"]);
    assert_eq!(RunDir::newest(runs).unwrap().unwrap().id(), "20250301-142233-aaa");
    let fresh = RunDir::create(runs, "now").unwrap();
    fresh.write_frozen_config("").unwrap();
    assert_eq!(RunDir::newest(runs).unwrap().unwrap(), fresh);
}

#[test]
fn path_accessors_name_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "p").unwrap();
    let p = run.path();
    assert_eq!(run.config_path(), p.join("run.toml"));
    assert_eq!(run.events_path(), p.join("events.jsonl"));
    assert_eq!(run.worker_pid_path(), p.join("worker.pid"));
    assert_eq!(run.worker_lock_path(), p.join("worker.lock"));
    assert_eq!(run.labels_path(), p.join("labels.jsonl"));
    assert_eq!(run.overrides_path(), p.join("overrides.jsonl"));
    assert_eq!(run.checkpoints_dir(), p.join("checkpoints"));
    assert_eq!(run.checkpoint_dir(120), p.join("checkpoints/step-000120"));
    assert_eq!(run.checkpoint_dir(1_234_567), p.join("checkpoints/step-1234567"));
    assert_eq!(run.eval_dir("sft"), p.join("eval/sft"));
    assert_eq!(run.eval_dir("../up"), p.join("eval/_.._up"));
    assert_eq!(run.eval_dir(""), p.join("eval/_"));
    assert_eq!(run.exports_dir(), p.join("exports"));
}
