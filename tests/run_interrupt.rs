//! Stop means stop, also between steps: SIGTERM and a `stop` request sent while a DPO stage
//! computes its reference log-probs (one forward over every pair, before the first step), or
//! while the base model is evaluated, end the worker within a batch, not at the end of the phase;
//! a resume then finishes the run.
//!
//! The bound is relative: each stop must take well under the phase's full duration, measured in
//! the same test on the same machine (the last resume runs the phase to its end).
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hone::run::control::Request;
use hone::run::{Event, RunDir};

mod live;
use live::{connect, events, fixture, only_run, wait_for, HONE};

const WAIT: Duration = Duration::from_secs(120);
/// Pairs in the generated preference file: enough that scoring them all takes seconds.
const PAIRS: usize = 3000;

/// A one-stage DPO pipeline over `PAIRS` generated pairs (distinct texts, so none is cached twice).
fn pipeline(dir: &Path) -> PathBuf {
    pipeline_with(dir, PAIRS, "")
}

/// Like [`pipeline`] with `pairs` pairs and `extra` appended (an `[eval]` table).
fn pipeline_with(dir: &Path, pairs: usize, extra: &str) -> PathBuf {
    let mut prefs = String::new();
    for i in 0..pairs {
        let line = serde_json::json!({
            "prompt": format!("Question {i}: what color is the sky on a clear day number {i}, and why is it so?"),
            "chosen": format!("The sky is blue on a clear day, because air scatters blue light most ({i})."),
            "rejected": format!("The sky is green on clear day {i}, because grass reflects upwards."),
        });
        writeln!(prefs, "{line}").unwrap();
    }
    std::fs::write(dir.join("prefs.jsonl"), prefs).unwrap();
    let text = format!(
        r#"[run]
name = "interrupt"
seed = 7
checkpoint_every = 1000

[model]
path = "{model}"

[[stage]]
name = "dpo"
epochs = 1
max_steps = 1
batch_size = 4
lr = 1e-3
max_length = 128
pref = {{ data = ["{prefs}"], lambda = 1.0, beta = 0.1 }}
{extra}
"#,
        model = fixture().join("model").display(),
        prefs = dir.join("prefs.jsonl").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(args: &[&str]) -> Child {
    Command::new(HONE).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn count(evs: &[Event], kind: &str) -> usize {
    evs.iter().filter(|e| e.event == kind).count()
}

/// Waits for the `n`th `stage_started` event (the reference phase starts right after it).
fn wait_stage_started(run: &RunDir, n: usize) -> Instant {
    wait_for("stage_started", WAIT, || (count(&events(run), "stage_started") >= n).then_some(()));
    Instant::now()
}

/// Waits for the worker to exit; its exit code and stderr.
fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn sigterm_and_stop_take_effect_within_a_batch_of_the_reference_precompute() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = pipeline(tmp.path());

    // SIGTERM during the reference log-probs.
    let child = spawn(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()]);
    let run = only_run(&runs, WAIT);
    let started = wait_stage_started(&run, 1);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (code, err) = finish(child);
    let sigterm_latency = started.elapsed();
    assert_eq!(code, 0, "{err}");
    let after_sigterm = events(&run);

    // A `stop` request during the resumed run's reference log-probs.
    let run_arg = run.path().to_str().unwrap().to_string();
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let mut client = connect(&run, WAIT);
    let started = wait_stage_started(&run, 2);
    assert!(client.send(&Request::Stop).unwrap().ok);
    let (code, err) = finish(child);
    let stop_latency = started.elapsed();
    assert_eq!(code, 0, "{err}");
    let after_stop = events(&run);

    // A resume runs the phase to its end (its full duration, for the bound) and the run finishes.
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let started = wait_stage_started(&run, 3);
    wait_for("the first step", WAIT, || (count(&events(&run), "metrics") > 0).then_some(()));
    let full = started.elapsed();
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    let evs = events(&run);
    let last = evs.iter().rev().find(|e| e.event == "run_finished").unwrap();
    assert_eq!(last.fields["status"], "completed", "{err}");

    eprintln!("sigterm {sigterm_latency:?}, stop {stop_latency:?}, full phase {full:?}");
    for (what, latency) in [("SIGTERM", sigterm_latency), ("stop", stop_latency)] {
        assert!(
            latency * 3 < full,
            "{what} during the reference log-probs took {latency:?} to end the worker; the whole phase \
             takes {full:?}"
        );
    }
    // Where each stop took effect: before the first step, inside the reference phase.
    assert_eq!(count(&after_sigterm, "metrics"), 0, "stopped before the first step");
    let interrupted = after_sigterm.iter().find(|e| e.event == "phase_interrupted").expect("a phase_interrupted event");
    assert_eq!(interrupted.fields["phase"], "reference");
    assert!(interrupted.fields["done"].as_u64().unwrap() < interrupted.fields["total"].as_u64().unwrap());
    assert_eq!(count(&after_stop, "metrics"), 0, "stopped before the first step");
    assert_eq!(count(&after_stop, "phase_interrupted"), 2);
    assert!(after_stop.iter().any(|e| e.event == "stop_requested" && e.fields["source"] == "control"));
}

/// Eval items in the generated suite: enough that answering them all takes seconds.
const ITEMS: usize = 480;

/// Waits until the worker says it is evaluating (the base model, before the first stage).
fn wait_evaluating(run: &RunDir) -> Instant {
    let mut client = connect(run, WAIT);
    wait_for("the evaluating state", WAIT, || {
        let reply = client.send(&Request::Status).ok()?;
        (reply.status?.state == "evaluating").then_some(())
    });
    Instant::now()
}

#[test]
fn sigterm_and_stop_take_effect_within_a_batch_of_an_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut suite = String::new();
    for i in 0..ITEMS {
        let item = serde_json::json!({
            "id": format!("c{i}"),
            "prompt": [{"role": "user", "content": format!("What is {i} plus 2? Explain the sum step by step.")}],
            "reference": format!("{}", i + 2),
            "kind": "capability",
            "segment": {"language": "en", "domain": "math", "intent": "qa"},
            "checks": [{"type": "numeric"}],
        });
        writeln!(suite, "{item}").unwrap();
    }
    let suite_path = tmp.path().join("suite.jsonl");
    std::fs::write(&suite_path, suite).unwrap();
    let eval = format!(
        "[eval]\nsuite = \"{}\"\nbaseline = \"base\"\nmax_new_tokens = 48\nbatch_size = 8\n",
        suite_path.display()
    );
    let p = pipeline_with(tmp.path(), 8, &eval);

    // SIGTERM while the base model is evaluated.
    let child = spawn(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()]);
    let run = only_run(&runs, WAIT);
    let started = wait_evaluating(&run);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (code, err) = finish(child);
    let sigterm_latency = started.elapsed();
    assert_eq!(code, 0, "{err}");
    let after_sigterm = events(&run);

    // A `stop` request while the resumed run evaluates the base model again.
    let run_arg = run.path().to_str().unwrap().to_string();
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let started = wait_evaluating(&run);
    assert!(connect(&run, WAIT).send(&Request::Stop).unwrap().ok);
    let (code, err) = finish(child);
    let stop_latency = started.elapsed();
    assert_eq!(code, 0, "{err}");
    let after_stop = events(&run);

    // A resume evaluates to the end (the full duration, for the bound) and finishes the run.
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let started = wait_evaluating(&run);
    wait_for("the base evaluation", WAIT, || (count(&events(&run), "eval_finished") > 0).then_some(()));
    let full = started.elapsed();
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    let evs = events(&run);
    assert_eq!(evs.iter().rev().find(|e| e.event == "run_finished").unwrap().fields["status"], "completed");

    eprintln!("sigterm {sigterm_latency:?}, stop {stop_latency:?}, full evaluation {full:?}");
    for (what, latency) in [("SIGTERM", sigterm_latency), ("stop", stop_latency)] {
        assert!(
            latency * 3 < full,
            "{what} during an evaluation took {latency:?} to end the worker; the whole evaluation takes {full:?}"
        );
    }
    for evs in [&after_sigterm, &after_stop] {
        assert_eq!(count(evs, "eval_finished"), 0, "stopped inside the base evaluation");
        let phases: Vec<&str> =
            evs.iter().filter(|e| e.event == "phase_interrupted").filter_map(|e| e.fields["phase"].as_str()).collect();
        assert!(!phases.is_empty() && phases.iter().all(|p| *p == "eval"), "{phases:?}");
    }
}
