//! Checkpoints: atomic completion, listing only complete ones, verify, cleanup, prune, no rewrite.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;

use hone::run::{
    clean_incomplete, latest_checkpoint, list_checkpoints, prune, Checkpoint, CheckpointWriter, RunDir, RunError,
    WorkerLock,
};
use serde_json::json;

fn new_run() -> (tempfile::TempDir, RunDir) {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "ck").unwrap();
    run.write_frozen_config("").unwrap();
    (tmp, run)
}

fn save(run: &RunDir, step: u64) -> Checkpoint {
    let mut p = CheckpointWriter::begin(run, step).unwrap();
    p.write_file("model.safetensors", &vec![step as u8; 1000 + step as usize]).unwrap();
    p.write_file("optimizer.bin", b"adam").unwrap();
    p.finish(json!({ "loss": 1.5 })).unwrap()
}

fn steps(run: &RunDir) -> Vec<u64> {
    list_checkpoints(run).unwrap().iter().map(|c| c.step).collect()
}

fn tmp_entries(run: &RunDir) -> Vec<String> {
    fs::read_dir(run.checkpoints_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn finished_checkpoint_is_listed_and_verifies() {
    let (_tmp, run) = new_run();
    assert!(list_checkpoints(&run).unwrap().is_empty());
    let mut p = CheckpointWriter::begin(&run, 120).unwrap();
    assert!(p.tmp_dir().file_name().unwrap().to_str().unwrap().starts_with(".tmp-step-000120-"));
    p.write_file("a.bin", b"hello").unwrap();
    {
        let mut f = p.create_file("b.bin").unwrap();
        for _ in 0..3000 {
            f.write_all(b"0123456789").unwrap();
        }
        assert_eq!(f.size(), 30_000);
        f.close().unwrap();
    }
    let ck = p.finish(json!({ "metrics": { "loss": 0.25 } })).unwrap();
    assert_eq!(ck.dir, run.checkpoint_dir(120));
    assert_eq!(ck.path("a.bin"), run.checkpoint_dir(120).join("a.bin"));
    assert_eq!(fs::read(ck.path("a.bin")).unwrap(), b"hello");
    assert!(tmp_entries(&run).is_empty());

    let listed = list_checkpoints(&run).unwrap();
    assert_eq!(listed, vec![ck.clone()]);
    listed[0].verify().unwrap();
    assert_eq!(latest_checkpoint(&run).unwrap().unwrap().step, 120);

    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(ck.path("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["step"], 120);
    assert_eq!(manifest["meta"]["metrics"]["loss"], 0.25);
    assert_eq!(manifest["files"][0]["name"], "a.bin");
    assert_eq!(manifest["files"][0]["size"], 5);
    // sha256("hello")
    assert_eq!(manifest["files"][0]["sha256"], "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_eq!(manifest["files"][1]["size"], 30_000);
}

#[test]
fn crashed_writer_leaves_an_unlisted_tmp_dir_that_clean_removes() {
    let (_tmp, run) = new_run();
    save(&run, 1);
    let mut p = CheckpointWriter::begin(&run, 2).unwrap();
    p.write_file("model.safetensors", b"partial").unwrap();
    std::mem::forget(p); // as if the process died here
    fs::create_dir_all(run.checkpoints_dir().join(".tmp-step-000003-999/sub")).unwrap();
    fs::create_dir_all(run.checkpoints_dir().join(".trash-step-000000-999")).unwrap();
    assert_eq!(steps(&run), [1]);
    assert_eq!(tmp_entries(&run).len(), 3);

    let lock = WorkerLock::acquire(&run).unwrap();
    let mut removed = clean_incomplete(&lock).unwrap();
    removed.sort();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(tmp_entries(&run).is_empty());
    assert_eq!(steps(&run), [1]);
    // The step can now be written for real.
    save(&run, 2);
    assert_eq!(steps(&run), [1, 2]);
}

#[test]
fn dropping_an_unfinished_checkpoint_removes_its_tmp_dir() {
    let (_tmp, run) = new_run();
    let mut p = CheckpointWriter::begin(&run, 5).unwrap();
    p.write_file("x", b"1").unwrap();
    let dir = p.tmp_dir().to_path_buf();
    assert!(dir.is_dir());
    drop(p);
    assert!(!dir.exists());
    assert!(steps(&run).is_empty());
}

#[test]
fn damaged_checkpoints_are_not_listed() {
    let (_tmp, run) = new_run();
    for step in 1..=4 {
        save(&run, step);
    }
    fs::remove_file(run.checkpoint_dir(1).join("optimizer.bin")).unwrap();
    let short = run.checkpoint_dir(2).join("model.safetensors");
    let bytes = fs::read(&short).unwrap();
    fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
    fs::remove_file(run.checkpoint_dir(3).join("MANIFEST.json")).unwrap();
    // A directory that merely looks like a checkpoint.
    fs::create_dir(run.checkpoints_dir().join("step-000009")).unwrap();
    assert_eq!(steps(&run), [4]);

    let err = Checkpoint::open(&run.checkpoint_dir(2)).unwrap_err();
    assert!(matches!(err, RunError::BadCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // Same size, different bytes: listed (sizes match) but verify() catches it.
    let f = run.checkpoint_dir(4).join("optimizer.bin");
    fs::write(&f, b"ADAM").unwrap();
    let listed = list_checkpoints(&run).unwrap();
    assert_eq!(listed.len(), 1);
    let err = listed[0].verify().unwrap_err();
    assert!(err.to_string().contains("optimizer.bin") && err.to_string().contains("sha256"), "{err}");
}

#[test]
fn manifest_with_wrong_step_or_escaping_name_is_not_listed() {
    let (_tmp, run) = new_run();
    save(&run, 7);
    fs::rename(run.checkpoint_dir(7), run.checkpoint_dir(8)).unwrap();
    assert!(steps(&run).is_empty());
    let ck = save(&run, 10);
    let m = ck.path("MANIFEST.json");
    let text = fs::read_to_string(&m).unwrap().replace("\"optimizer.bin\"", "\"../../run.toml\"");
    fs::write(&m, text).unwrap();
    assert!(steps(&run).is_empty());
}

#[test]
fn prune_keeps_the_last_n_and_the_best() {
    let (_tmp, run) = new_run();
    for step in [10, 20, 30, 40, 50, 60] {
        save(&run, step);
    }
    let lock = WorkerLock::acquire(&run).unwrap();
    assert_eq!(prune(&lock, 2, Some(20)).unwrap(), [10, 30, 40]);
    assert_eq!(steps(&run), [20, 50, 60]);
    assert!(tmp_entries(&run).is_empty(), "no trash left");
    assert_eq!(prune(&lock, 2, Some(20)).unwrap(), Vec::<u64>::new());
    assert_eq!(prune(&lock, 10, None).unwrap(), Vec::<u64>::new());
    assert_eq!(prune(&lock, 1, Some(60)).unwrap(), [20, 50]);
    assert_eq!(steps(&run), [60]);
    assert_eq!(prune(&lock, 0, None).unwrap(), [60]);
    assert!(steps(&run).is_empty());
}

#[test]
fn an_existing_step_is_never_rewritten() {
    let (_tmp, run) = new_run();
    let first = save(&run, 3);
    let err = CheckpointWriter::begin(&run, 3).unwrap_err();
    assert!(matches!(err, RunError::CheckpointExists { .. }), "{err}");
    assert!(err.to_string().contains("step-000003"), "{err}");

    // Two writers racing for one step: the second finish is refused and the first stays intact.
    let mut a = CheckpointWriter::begin(&run, 4).unwrap();
    let mut b = CheckpointWriter::begin(&run, 4).unwrap();
    assert_ne!(a.tmp_dir(), b.tmp_dir());
    a.write_file("w", b"from a").unwrap();
    b.write_file("w", b"from b!").unwrap();
    let a = a.finish(json!(null)).unwrap();
    let b_dir = b.tmp_dir().to_path_buf();
    let err = b.finish(json!(null)).unwrap_err();
    assert!(matches!(err, RunError::CheckpointExists { .. }), "{err}");
    assert!(!b_dir.exists(), "the refused temp dir is cleaned up");
    assert_eq!(fs::read(a.path("w")).unwrap(), b"from a");
    a.verify().unwrap();
    first.verify().unwrap();
    assert_eq!(steps(&run), [3, 4]);
}

#[test]
fn bad_file_names_are_refused() {
    let (_tmp, run) = new_run();
    let mut p = CheckpointWriter::begin(&run, 1).unwrap();
    for name in ["", "../x", "a/b", ".hidden", "MANIFEST.json"] {
        let err = p.write_file(name, b"").unwrap_err();
        assert!(matches!(err, RunError::InvalidName { .. }), "{name}: {err}");
    }
    p.write_file("once", b"1").unwrap();
    assert!(matches!(p.write_file("once", b"2").unwrap_err(), RunError::InvalidName { .. }));
    let ck = p.finish(json!({})).unwrap();
    assert_eq!(ck.manifest.files.len(), 1);
    ck.verify().unwrap();
}
