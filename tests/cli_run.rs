//! `hone run` / `hone resume` as processes: SIGKILL at arbitrary points and resume reproduces
//! the uninterrupted loss sequence bit for bit, checkpoints are never half written, signals
//! checkpoint and exit 0, changed inputs refuse a resume, and a live run keeps a second worker out.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // bit-exact equality is the point

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hone::run::{list_checkpoints, EventReader, RunDir, WorkerLock};

const HONE: &str = env!("CARGO_BIN_EXE_hone");

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

/// A private copy of the sample data, so tests may change it.
fn sample_copy(dir: &Path) -> PathBuf {
    let to = dir.join("sample");
    copy_dir(&sample(), &to);
    to
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(HONE).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn only_run(runs: &Path) -> RunDir {
    let mut all = RunDir::list(runs).unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// Loss per global step, where a step logged again after a resume replaces the earlier value;
/// also checks that no metrics event after `resumed` is at or before its `from_step`.
fn losses(run: &RunDir) -> BTreeMap<u64, f64> {
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    assert!(batch.bad_lines.is_empty(), "{:?}", batch.bad_lines);
    let mut out = BTreeMap::new();
    let mut floor = 0u64;
    for e in batch.events {
        match e.event.as_str() {
            "resumed" => floor = e.fields["from_step"].as_u64().unwrap(),
            "metrics" => {
                let step = e.step.unwrap();
                assert!(step > floor, "step {step} re-logged at or before resume point {floor}");
                out.insert(step, e.fields["loss"].as_f64().unwrap());
            }
            _ => {}
        }
    }
    out
}

fn wait_for_metrics(run_events: &Path, at_least: usize, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(batch) = EventReader::read_all(run_events) {
            if batch.events.iter().filter(|e| e.event == "metrics").count() >= at_least {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no progress within two minutes");
}

fn events_path_of_only_run(runs: &Path) -> Option<PathBuf> {
    RunDir::list(runs).ok().and_then(|mut v| v.pop()).map(|r| r.events_path())
}

#[test]
fn sigkill_then_resume_reproduces_the_uninterrupted_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = sample().join("pipeline.toml");
    let p = pipeline.to_str().unwrap();
    let args = ["--max-steps", "7", "--checkpoint-every", "2"];

    let clean = tmp.path().join("clean");
    let (code, _, err) =
        finish(spawn(&[&["run", p, "--headless", "--runs-dir", clean.to_str().unwrap()][..], &args].concat()));
    assert_eq!(code, 0, "{err}");
    let want = losses(&only_run(&clean));
    assert_eq!(want.len(), 21);

    let killed = tmp.path().join("killed");
    let mut child = spawn(&[&["run", p, "--headless", "--runs-dir", killed.to_str().unwrap()][..], &args].concat());
    // Kill at several points: after 3, 9 and 16 logged steps (mid SFT, mid DPO, mid safety),
    // resuming in between; the last resume runs to the end.
    let mut kills = 0;
    for at in [3usize, 9, 16] {
        let events = loop {
            if let Some(e) = events_path_of_only_run(&killed) {
                break e;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if wait_for_metrics(&events, at, &mut child) {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let run = only_run(&killed);
        for ck in list_checkpoints(&run).unwrap() {
            ck.verify().unwrap();
        }
        child = spawn(&["resume", run.path().to_str().unwrap(), "--headless"]);
    }
    let (code, _, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert!(kills >= 2, "the run finished before it could be killed ({kills} kills)");
    let run = only_run(&killed);
    let got = losses(&run);
    assert_eq!(got.len(), want.len());
    for ((s1, a), (s2, b)) in got.iter().zip(&want) {
        assert_eq!(s1, s2);
        assert_eq!(a.to_bits(), b.to_bits(), "loss at step {s1}: {a} vs {b}");
    }
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    assert!(batch.events.iter().filter(|e| e.event == "resumed").count() >= 1);
    assert!(batch.events.last().is_some_and(|e| e.event == "run_finished" && e.fields["status"] == "completed"));
}

#[test]
fn sigterm_checkpoints_at_the_step_boundary_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = sample().join("pipeline.toml");
    let mut child = spawn(&[
        "run",
        p.to_str().unwrap(),
        "--headless",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--checkpoint-every",
        "1000",
    ]);
    let events = loop {
        if let Some(e) = events_path_of_only_run(&runs) {
            break e;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(wait_for_metrics(&events, 3, &mut child));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (code, stdout, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    let run = only_run(&runs);
    assert_eq!(stdout.trim(), run.path().display().to_string());
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    let last = batch.events.last().unwrap();
    assert_eq!(last.event, "run_finished");
    assert_eq!(last.fields["status"], "stopped");
    let last_step = batch.events.iter().filter(|e| e.event == "metrics").map(|e| e.step.unwrap()).max().unwrap();
    let checkpoints = list_checkpoints(&run).unwrap();
    assert_eq!(checkpoints.last().unwrap().step, last_step, "the stop checkpoint is at the last completed step");
    assert!(!run.worker_pid_path().exists(), "the worker removed its pid file");
}

#[test]
fn resume_refuses_changed_data_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copy(tmp.path());
    let runs = tmp.path().join("runs");
    let p = data.join("pipeline.toml");
    let (code, _, err) = finish(spawn(&[
        "run",
        p.to_str().unwrap(),
        "--headless",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--max-steps",
        "1",
        "--stages",
        "sft",
    ]));
    assert_eq!(code, 0, "{err}");
    let run = only_run(&runs);
    let mut text = std::fs::read_to_string(data.join("sft.jsonl")).unwrap();
    text.push_str(&text.clone());
    std::fs::write(data.join("sft.jsonl"), text).unwrap();
    let (code, _, err) = finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless"]));
    assert_eq!(code, 2);
    assert!(err.contains("refusing to resume") && err.contains("sft.jsonl"), "{err}");
    let (code, _, err) = finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless", "--force"]));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_live_worker_keeps_a_second_one_out() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = sample().join("pipeline.toml");
    let (code, _, err) = finish(spawn(&[
        "run",
        p.to_str().unwrap(),
        "--headless",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--max-steps",
        "1",
        "--stages",
        "sft",
    ]));
    assert_eq!(code, 0, "{err}");
    let run = only_run(&runs);
    let held = WorkerLock::acquire(&run).unwrap();
    let (code, _, err) = finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless"]));
    assert_eq!(code, 2);
    assert!(err.contains("already running") && err.contains(&std::process::id().to_string()), "{err}");
    drop(held);
}

#[test]
fn check_reports_a_bad_config_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sample_copy(tmp.path());
    let p = data.join("pipeline.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("epochs = 6\nbatch_size = 4\nlr = 3e-3", "epochs = 6\nbatch_size = 4\nlearning_rate = 3e-3");
    std::fs::write(&p, text).unwrap();
    let (code, out, _) = finish(spawn(&["check", p.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(out.contains("pipeline.toml:") && out.contains("learning_rate"), "{out}");
    let (code, out, err) = finish(spawn(&["check", sample().join("pipeline.toml").to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("⟦") && out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn retention_keeps_the_last_n_plus_the_best_and_any_kept_checkpoint_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = sample().join("pipeline.toml");
    let (code, _, err) = finish(spawn(&[
        "run",
        p.to_str().unwrap(),
        "--headless",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--checkpoint-every",
        "1",
        "--stages",
        "sft",
    ]));
    assert_eq!(code, 0, "{err}");
    let run = only_run(&runs);
    let kept: Vec<u64> = list_checkpoints(&run).unwrap().iter().map(|c| c.step).collect();
    // keep_checkpoints = 3 in the sample pipeline, plus the best of the stage.
    assert!(kept.len() <= 4 && kept.len() >= 3, "{kept:?}");
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    let best = batch.events.iter().rev().find(|e| e.event == "checkpoint_saved").unwrap().fields["best_step"]
        .as_u64()
        .unwrap();
    assert!(kept.contains(&best), "best {best} kept in {kept:?}");
    let oldest = kept[0];
    let (code, _, err) =
        finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless", "--from-step", &oldest.to_string()]));
    assert_eq!(code, 0, "{err}");
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    let resumed = batch.events.iter().rev().find(|e| e.event == "resumed").unwrap();
    assert_eq!(resumed.fields["from_step"].as_u64(), Some(oldest));
    let (code, listing, _) = finish(spawn(&["runs", "--runs-dir", runs.to_str().unwrap()]));
    assert_eq!(code, 0);
    assert!(listing.contains(run.id()) && listing.contains("completed"), "{listing}");
    let (code, _, err) = finish(spawn(&["resume", run.path().to_str().unwrap(), "--headless", "--from-step", "99999"]));
    assert_eq!(code, 2);
    assert!(err.contains("no complete checkpoint"), "{err}");
}
