//! The runs list: each run directory's state from its worker lock and its last `run_finished`.

use std::path::Path;

use hone::run::{RunDir, WorkerLock};
use hone::tui::{scan_runs, RunScanner, RunState};

fn write_run(runs: &Path, id: &str, lines: &[&str]) -> RunDir {
    let dir = runs.join(id);
    std::fs::create_dir(&dir).expect("mkdir");
    let text = lines.join("\n") + "\n";
    std::fs::write(dir.join("events.jsonl"), text).expect("write");
    RunDir::open(&dir).expect("a run")
}

const STARTED: &str = r#"{"ts":1,"event":"run_started","stage":null,"step":0,"stages":["sft"]}"#;

#[test]
fn runs_are_live_finished_or_interrupted() {
    let runs = tempfile::tempdir().expect("tempdir");
    let done = r#"{"ts":2,"event":"run_finished","stage":null,"step":null,"status":"completed","seconds":1.0}"#;
    let stopped = r#"{"ts":2,"event":"run_finished","stage":null,"step":null,"status":"stopped","seconds":1.0}"#;
    let resumed = r#"{"ts":3,"event":"resumed","stage":null,"step":0,"from_step":0,"pid":1}"#;
    write_run(runs.path(), "20250101-000000-a", &[STARTED, done]);
    write_run(runs.path(), "20250102-000000-b", &[STARTED, stopped, resumed]);
    let live = write_run(runs.path(), "20250103-000000-c", &[STARTED]);
    let lock = WorkerLock::acquire(&live).expect("lock");

    let listed = scan_runs(runs.path(), live.path()).expect("scan");
    let got: Vec<(&str, RunState, bool)> = listed.iter().map(|r| (r.id.as_str(), r.state, r.attached)).collect();
    assert_eq!(
        got,
        [
            ("20250101-000000-a", RunState::Completed, false),
            ("20250102-000000-b", RunState::Interrupted, false),
            ("20250103-000000-c", RunState::Live(Some(std::process::id())), true),
        ]
    );

    // Once the worker lets go without a run_finished, the run reads as interrupted; a scanner
    // rereads a log only when it grew.
    drop(lock);
    let mut scanner = RunScanner::default();
    let states = |s: &mut RunScanner| -> Vec<RunState> {
        s.scan(runs.path(), live.path()).expect("scan").into_iter().map(|r| r.state).collect()
    };
    assert_eq!(states(&mut scanner)[2], RunState::Interrupted);
    let failed = r#"{"ts":9,"event":"run_finished","stage":null,"step":null,"status":"failed","seconds":2.0}"#;
    std::fs::write(live.events_path(), format!("{STARTED}\n{failed}\n")).expect("rewrite");
    assert_eq!(states(&mut scanner)[2], RunState::Failed);
}

/// A run stopped, resumed and then killed (no second `run_finished`) reads as interrupted in
/// both `hone runs` and the TUI's runs pane: the two share one reader of a run's state.
#[test]
fn hone_runs_and_the_runs_pane_agree_on_a_stopped_resumed_killed_run() {
    let runs = tempfile::tempdir().expect("tempdir");
    let stopped = r#"{"ts":2,"event":"run_finished","stage":null,"step":3,"status":"stopped","seconds":1.0}"#;
    let resumed = r#"{"ts":3,"event":"resumed","stage":"sft","step":3,"from_step":3,"pid":1}"#;
    let step = r#"{"ts":4,"event":"metrics","stage":"sft","step":4,"loss":1.0}"#;
    let run = write_run(runs.path(), "20250101-000000-a", &[STARTED, stopped, resumed, step]);

    let pane = scan_runs(runs.path(), run.path()).expect("scan");
    assert_eq!(pane[0].state, RunState::Interrupted);

    let mut out = Vec::new();
    hone::cli::runs::run(runs.path(), &mut out).expect("hone runs");
    let out = String::from_utf8(out).expect("utf-8");
    let line = out.lines().find(|l| l.starts_with("20250101-000000-a")).expect("the run's line");
    assert!(line.contains("interrupted"), "hone runs says {line:?}");
    assert!(!line.contains("stopped"), "hone runs says {line:?}");
}
