//! Stop means stop, also between steps: SIGTERM and a `stop` request sent while a DPO stage
//! computes its reference log-probs (one forward over every pair, before the first step), while
//! the base model is evaluated, while a resume verifies its checkpoint or while live samples are
//! generated, end the worker within a batch (a block read, a sample), not at the end of the
//! phase; a resume then finishes the run. The reference log-probs computed before a stop or a
//! crash are kept: the resume computes only the rest, and the numbers are an uninterrupted run's.
//!
//! The bound is relative: each stop must take well under the phase's full duration, measured in
//! the same test on the same machine (the last resume runs the phase to its end).
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hone::run::control::Request;
use hone::run::{Event, Manifest, ManifestFile, RunDir};
use hone::train::logps_chunk::LogpsChunk;
use sha2::{Digest, Sha256};

mod live;
use live::{connect, events, fixture, only_run, wait_for, HONE};

const WAIT: Duration = Duration::from_secs(120);
/// Pairs in the generated preference file: enough that scoring them all takes seconds.
const PAIRS: usize = 3000;

/// A one-stage DPO pipeline over `PAIRS` generated pairs (distinct texts, so none is cached twice).
fn pipeline(dir: &Path) -> PathBuf {
    pipeline_with(dir, PAIRS, Extra::default())
}

/// What [`pipeline_with`] adds to the one-step DPO pipeline.
#[derive(Default)]
struct Extra<'a> {
    /// Lines for the `[run]` table.
    run: &'a str,
    /// The stage's steps (1 when 0).
    steps: u64,
    /// Tables appended (an `[eval]` table).
    tables: &'a str,
}

/// Like [`pipeline`] with `pairs` pairs and `extra` added.
fn pipeline_with(dir: &Path, pairs: usize, extra: Extra<'_>) -> PathBuf {
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
{run_extra}

[model]
path = "{model}"

[[stage]]
name = "dpo"
epochs = {steps}
max_steps = {steps}
batch_size = 4
lr = 1e-3
max_length = 128
pref = {{ data = ["{prefs}"], lambda = 1.0, beta = 0.1 }}
{tables}
"#,
        run_extra = extra.run,
        steps = extra.steps.max(1),
        tables = extra.tables,
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

/// [`spawn`] with the crash point `fault` armed (`hone::fault`).
fn spawn_with_fault(args: &[&str], fault: &str) -> Child {
    Command::new(HONE)
        .args(args)
        .env(hone::fault::ENV, fault)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every reference log-prob the run stored for `stage`, in the pairs' order, as bits.
fn stored_logps(run: &RunDir, stage: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for index in 0.. {
        let Ok(bytes) = std::fs::read(run.reference_logps_path(stage, index)) else { break };
        let chunk = LogpsChunk::from_bytes(&bytes).expect("a stored chunk reads back");
        out.extend(chunk.entries.iter().map(|(hash, (c, r))| (*hash, c.to_bits(), r.to_bits())));
    }
    out
}

/// `(kept, total)` of each `reference_logps_resumed` event so far.
fn kept(evs: &[Event]) -> Vec<(u64, u64)> {
    evs.iter()
        .filter(|e| e.event == "reference_logps_resumed")
        .map(|e| (e.fields["kept"].as_u64().unwrap(), e.fields["total"].as_u64().unwrap()))
        .collect()
}

/// Where the first `phase_interrupted` event after the first `skip` of them says the phase was.
fn interrupted_at(evs: &[Event], skip: usize) -> (String, u64) {
    let e = evs.iter().filter(|e| e.event == "phase_interrupted").nth(skip).expect("a phase_interrupted event");
    (e.fields["phase"].as_str().unwrap().to_string(), e.fields["done"].as_u64().unwrap())
}

#[test]
fn sigterm_and_stop_take_effect_within_a_batch_of_the_reference_precompute_and_a_resume_keeps_its_work() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path());

    // An uninterrupted run: the phase's full duration (for the bound) and the numbers.
    let plain_runs = tmp.path().join("plain");
    let child = spawn(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", plain_runs.to_str().unwrap()]);
    let plain = only_run(&plain_runs, WAIT);
    let started = wait_stage_started(&plain, 1);
    wait_for("the first step", WAIT, || (count(&events(&plain), "metrics") > 0).then_some(()));
    let full = started.elapsed();
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");

    // SIGTERM during the reference log-probs.
    let runs = tmp.path().join("runs");
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

    // A SIGKILL right after the next chunk of log-probs is stored.
    let child = spawn_with_fault(&["resume", &run_arg, "--headless"], "reference.logps@1");
    let out = child.wait_with_output().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "the crash point fired");

    // The last resume computes the rest and the run finishes.
    let (code, err) = finish(spawn(&["resume", &run_arg, "--headless"]));
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
    let (phase, at_sigterm) = interrupted_at(&after_sigterm, 0);
    assert_eq!(phase, "reference");
    assert!(at_sigterm < PAIRS as u64);
    assert_eq!(count(&after_stop, "metrics"), 0, "stopped before the first step");
    assert!(after_stop.iter().any(|e| e.event == "stop_requested" && e.fields["source"] == "control"));
    let (_, at_stop) = interrupted_at(&after_stop, 1);

    // Each resume kept what the worker before it had computed, and went on from there.
    let kept = kept(&evs);
    let total = PAIRS as u64;
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(kept[0], (at_sigterm, total), "the first resume kept what was scored before SIGTERM");
    assert_eq!(kept[1], (at_stop, total), "the second kept what was scored before the stop");
    assert!(at_stop >= at_sigterm && kept[2].0 > at_stop, "the third kept the chunk stored before the kill: {kept:?}");
    // ... with the numbers of an uninterrupted run, bit for bit.
    let (ours, theirs) = (stored_logps(&run, "dpo"), stored_logps(&plain, "dpo"));
    assert_eq!(ours.len(), PAIRS);
    assert!(ours == theirs, "the stored reference log-probs equal the uninterrupted run's");
    let loss = |evs: &[Event]| evs.iter().find(|e| e.event == "metrics").unwrap().fields["loss"].as_f64().unwrap();
    assert_eq!(loss(&evs).to_bits(), loss(&events(&plain)).to_bits(), "the step's loss is the uninterrupted run's");
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
    let p = pipeline_with(tmp.path(), 8, Extra { tables: &eval, ..Extra::default() });

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

/// Live-sample prompts per step: enough that answering them all takes seconds.
const SAMPLE_PROMPTS: usize = 100;
/// The size of the file that makes a checkpoint take seconds to verify (sparse: no disk used).
const PADDING: u64 = 1 << 30;

/// The live samples at global step `step` so far.
fn samples_at(run: &RunDir, step: u64) -> usize {
    events(run).iter().filter(|e| e.event == "sample" && e.step == Some(step)).count()
}

/// Makes the checkpoint at `step` as slow to verify as a large model's: a sparse file of
/// [`PADDING`] zero bytes, listed in its manifest with its true size and sha256.
fn pad_checkpoint(run: &RunDir, step: u64) {
    let dir = run.checkpoint_dir(step);
    let file = std::fs::File::create(dir.join("padding.bin")).unwrap();
    file.set_len(PADDING).unwrap();
    let mut hasher = Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..PADDING / zeros.len() as u64 {
        hasher.update(&zeros);
    }
    let manifest_path = dir.join("MANIFEST.json");
    let mut manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let sha256 = hone::hex::encode(&hasher.finalize());
    manifest.files.push(ManifestFile { name: "padding.bin".into(), size: PADDING, sha256 });
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// Waits until the resumed worker says it is verifying its checkpoint.
fn wait_verifying(run: &RunDir) -> Instant {
    let mut client = connect(run, WAIT);
    wait_for("the verifying state", WAIT, || {
        let reply = client.send(&Request::Status).ok()?;
        (reply.status?.state == "verifying").then_some(())
    });
    Instant::now()
}

/// SIGTERMs `child` and waits for it to end cleanly; the time since `started`.
fn sigterm(child: Child, started: Instant) -> Duration {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    started.elapsed()
}

/// A `stop` request to the run's worker; waits for it to end cleanly; the time since `started`.
fn stop(run: &RunDir, child: Child, started: Instant) -> Duration {
    assert!(connect(run, WAIT).send(&Request::Stop).unwrap().ok);
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    started.elapsed()
}

#[test]
fn sigterm_and_stop_take_effect_within_a_block_of_checkpoint_verification_and_a_sample_of_live_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let prompts: Vec<String> =
        (0..SAMPLE_PROMPTS).map(|i| format!("\"Tell me about the number {i} and what follows it.\"")).collect();
    let run_extra = format!("sample_every = 1\nsample_max_tokens = 48\nsample_prompts = [{}]", prompts.join(", "));
    let p = pipeline_with(tmp.path(), 8, Extra { run: &run_extra, steps: 3, ..Extra::default() });
    let started_samples = |run: &RunDir, step| {
        wait_for("the first live sample", WAIT, || (samples_at(run, step) > 0).then_some(()));
        Instant::now()
    };

    // SIGTERM while step 1's samples are generated: the worker checkpoints step 1 and ends.
    let child = spawn(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()]);
    let run = only_run(&runs, WAIT);
    let samples_sigterm = sigterm(child, started_samples(&run, 1));
    assert!(samples_at(&run, 1) < SAMPLE_PROMPTS, "stopped inside the samples");
    assert_eq!(interrupted_at(&events(&run), 0).0, "samples");

    // The checkpoint a resume verifies is now as large as a big model's.
    pad_checkpoint(&run, 1);
    let run_arg = run.path().to_str().unwrap().to_string();
    let resumed = |run: &RunDir| count(&events(run), "resumed");
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let verify_sigterm = sigterm(child, wait_verifying(&run));
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let verify_stop = stop(&run, child, wait_verifying(&run));
    let evs = events(&run);
    assert_eq!(resumed(&run), 0, "both stopped before the resume went on");
    for skip in [1, 2] {
        let (phase, done) = interrupted_at(&evs, skip);
        assert!(phase == "verify" && done < PADDING, "{phase} at {done}");
    }

    // A verification to its end (its full duration), then a stop while step 2's samples run.
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let started = wait_verifying(&run);
    wait_for("the verified resume", WAIT, || (resumed(&run) > 0).then_some(()));
    let verify_full = started.elapsed();
    let samples_stop = stop(&run, child, started_samples(&run, 2));
    assert!(samples_at(&run, 2) < SAMPLE_PROMPTS, "stopped inside the samples");

    // The last resume: step 3's samples in full, and the run finishes.
    let child = spawn(&["resume", &run_arg, "--headless"]);
    let started = started_samples(&run, 3);
    wait_for("every sample", WAIT, || (samples_at(&run, 3) == SAMPLE_PROMPTS).then_some(()));
    let samples_full = started.elapsed();
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    let evs = events(&run);
    assert_eq!(evs.iter().rev().find(|e| e.event == "run_finished").unwrap().fields["status"], "completed");
    assert_eq!(count(&evs, "metrics"), 3, "three steps, none lost to the stops");

    eprintln!(
        "verify: sigterm {verify_sigterm:?}, stop {verify_stop:?}, full {verify_full:?}; samples: sigterm \
         {samples_sigterm:?}, stop {samples_stop:?}, full {samples_full:?}"
    );
    for (what, latency, full) in [
        ("SIGTERM during checkpoint verification", verify_sigterm, verify_full),
        ("stop during checkpoint verification", verify_stop, verify_full),
        ("SIGTERM during live samples", samples_sigterm, samples_full),
        ("stop during live samples", samples_stop, samples_full),
    ] {
        assert!(latency * 3 < full, "{what} took {latency:?} to end the worker; the whole phase takes {full:?}");
    }
}
