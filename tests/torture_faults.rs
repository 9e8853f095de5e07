//! Kills at the worst moments: the worker is SIGKILLed by a named crash point (`hone::fault`,
//! armed with `HONE_FAULT=<point>@<n>`) inside a checkpoint write, between reading new labels and
//! admitting them, between an evaluation's files and its report, inside a directory's durable
//! write (the DPO stage's reference weights: between its files, and complete before its rename)
//! and after a chunk of the stage's reference log-probs is stored (the resume uses it), then
//! resumed until it finishes. Labels are appended
//! only while the worker is dead, at the same moment in every trial and in the reference, so an
//! uninterrupted-after-that reference sees the same labels at the same steps. Every trial must end
//! with every step's loss bit-identical to the reference, every listed checkpoint verifying after
//! every kill, the lock free, each stage evaluated and gated once with the reference's decisions.
//! Short mode: every point at least once; `HONE_TORTURE=long`: later passes too. A KTO stage gets
//! the same treatment for thumbs appended while its worker is dead.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // bit-exact equality is the point

mod live;
mod torture;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use hone::run::{list_checkpoints, RunDir};
use live::{events, HONE};
use torture::pipeline::{check_after_kill, killed, losses, only_run, sft_dpo_pipeline, SftDpo};

/// SFT then DPO (its pairs plus the run's live labels.jsonl), 8 steps each, a checkpoint every 3
/// steps, both evaluated on the tiny suite and DPO gated against SFT.
fn pipeline(dir: &Path) -> PathBuf {
    sft_dpo_pipeline(dir, SftDpo { name: "faults", seed: 5, steps: 8, live_labels: true, eval: true })
}

/// Runs (no run yet) or resumes the only run in `runs`, with `fault` armed if given.
fn go(pipeline: &Path, runs: &Path, fault: Option<&str>) -> (ExitStatus, String) {
    let mut cmd = Command::new(HONE);
    match only_run(runs) {
        None => cmd.args(["run", pipeline.to_str().unwrap(), "--headless", "--runs-dir"]).arg(runs),
        Some(run) => cmd.args(["resume", run.path().to_str().unwrap(), "--headless"]),
    };
    cmd.env_remove(hone::fault::ENV);
    if let Some(fault) = fault {
        cmd.env(hone::fault::ENV, fault);
    }
    let out = cmd.output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Two preference pairs a labeler added while the worker was down.
fn append_labels(run: &RunDir) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(run.labels_path()).unwrap();
    for (i, (chosen, rejected)) in [("Paris.", "Lyon."), ("Four.", "Five.")].iter().enumerate() {
        let line = serde_json::json!({
            "id": format!("torture-{i}"),
            "prompt": [{"role": "user", "content": format!("Question {i}?")}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "labeler": "torture",
            "ts": 1_700_000_000_000u64 + i as u64,
        });
        writeln!(file, "{line}").unwrap();
    }
}

/// What a finished run must agree on: each step's loss bits (a step logged again after a resume
/// replaces the earlier line), the stages evaluated, the gate decisions and the labels admitted.
#[derive(Debug, PartialEq)]
struct Outcome {
    losses: BTreeMap<u64, u64>,
    evaluated: Vec<String>,
    decisions: Vec<(String, String)>,
    admitted: BTreeMap<u64, u64>,
}

fn outcome(run: &RunDir) -> Outcome {
    let all = events(run);
    let stage = |e: &hone::run::Event| e.stage.clone().unwrap_or_default();
    let mut evaluated: Vec<String> = all.iter().filter(|e| e.event == "eval_finished").map(stage).collect();
    evaluated.dedup();
    Outcome {
        losses: losses(run),
        evaluated,
        decisions: all
            .iter()
            .filter(|e| e.event == "gate_decided")
            .map(|e| (stage(e), e.fields["decision"].as_str().unwrap_or_default().to_owned()))
            .collect(),
        admitted: all
            .iter()
            .filter(|e| e.event == "labels_admitted")
            .map(|e| (e.step.unwrap_or_default(), e.fields["count"].as_u64().unwrap_or_default()))
            .collect(),
    }
}

/// Where each crash point is armed: before the labels arrive (a fresh run, or the resume after
/// the first kill) or after (the resume that reads them). Passes count from the armed process's
/// start. Long mode adds later passes of the points passed several times.
fn schedule() -> Vec<(Phase, String)> {
    let mut out: Vec<(Phase, String)> = [
        (Phase::Before, "checkpoint.file@1"),
        (Phase::Before, "checkpoint.manifest@1"),
        (Phase::Before, "eval.report@1"),
        (Phase::Before, "eval.report@2"),
        (Phase::Before, "durable.dir.file@1"),
        (Phase::Before, "durable.dir@1"),
        (Phase::Before, "reference.logps@1"),
        (Phase::After, "labels.read@1"),
        (Phase::After, "checkpoint.file@3"),
        (Phase::After, "checkpoint.manifest@2"),
        (Phase::After, "checkpoint.saved@2"),
        (Phase::After, "eval.report@1"),
    ]
    .into_iter()
    .map(|(phase, fault)| (phase, fault.to_owned()))
    .collect();
    if torture::long() {
        for n in 2..=12 {
            out.push((Phase::Before, format!("checkpoint.file@{n}")));
            out.push((Phase::After, format!("checkpoint.file@{}", n + 2)));
        }
        for n in 2..=4 {
            out.push((Phase::Before, format!("durable.dir.file@{n}")));
        }
        for n in 2..=3 {
            out.push((Phase::Before, format!("checkpoint.manifest@{n}")));
            out.push((Phase::Before, format!("checkpoint.saved@{n}")));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Before,
    After,
}

/// The step whose checkpoint the labelers wait for: the DPO stage's first.
const LABELS_AFTER_STEP: u64 = 9;

/// One run to its end: `fault` armed in its phase; before the labels, runs killed after each
/// checkpoint until the one at [`LABELS_AFTER_STEP`] is saved (whatever killed it earlier), then
/// the labels appended while it is dead; at the end, a resume without faults.
fn trial(p: &Path, runs: &Path, fault: Option<(Phase, &str)>, what: &str) -> (Outcome, usize) {
    let mut kills = 0;
    let kill_at = |fault: &str, kills: &mut usize| {
        let (status, err) = go(p, runs, Some(fault));
        assert!(killed(status), "{what}: {fault} fired ({status}): {err}");
        let run = only_run(runs).unwrap();
        check_after_kill(&run, &format!("{what} after {fault}"));
        *kills += 1;
        run
    };
    if let Some((Phase::Before, fault)) = fault {
        kill_at(fault, &mut kills);
    }
    let newest = |run: &RunDir| list_checkpoints(run).unwrap().iter().map(|c| c.step).max().unwrap_or(0);
    let run = loop {
        let run = kill_at("checkpoint.saved@1", &mut kills);
        let step = newest(&run);
        assert!(step <= LABELS_AFTER_STEP, "{what}: the checkpoints passed step {LABELS_AFTER_STEP}: {step}");
        if step == LABELS_AFTER_STEP {
            break run;
        }
    };
    append_labels(&run);
    if let Some((Phase::After, fault)) = fault {
        kill_at(fault, &mut kills);
    }
    let (status, err) = go(p, runs, None);
    assert!(status.success(), "{what}: the last resume finishes: {err}");
    check_after_kill(&run, &format!("{what} at the end"));
    let finished = events(&run).into_iter().rev().find(|e| e.event == "run_finished").unwrap();
    assert_eq!(finished.fields["status"], "completed", "{what}");
    (outcome(&run), kills)
}

#[test]
fn kills_inside_checkpoints_label_reads_reports_and_durable_writes_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path());
    let start = std::time::Instant::now();
    let (reference, _) = trial(&p, &tmp.path().join("reference"), None, "reference");
    assert_eq!(reference.losses.keys().copied().collect::<Vec<_>>(), (1..=16).collect::<Vec<_>>());
    assert_eq!(reference.evaluated, ["base", "sft", "dpo"], "{reference:?}");
    assert_eq!(
        reference.admitted.iter().map(|(step, n)| (*step, *n)).collect::<Vec<_>>(),
        [(LABELS_AFTER_STEP, 2)],
        "the labels join at the first boundary after they were written"
    );

    let mut kills_by_point: BTreeMap<String, usize> = BTreeMap::new();
    let mut trials = 0;
    for (phase, fault) in schedule() {
        let runs = tmp.path().join(format!("{phase:?}-{}", fault.replace(['.', '@'], "-")));
        let (got, kills) = trial(&p, &runs, Some((phase, &fault)), &fault);
        assert_eq!(got, reference, "{fault}: the run after the crash agrees with the reference");
        let point = fault.split('@').next().unwrap_or_default().to_owned();
        *kills_by_point.entry(point).or_insert(0) += 1;
        *kills_by_point.entry("checkpoint.saved (to reach the labels)".into()).or_insert(0) += kills - 1;
        trials += 1;
    }
    let mut figures: Vec<(&str, String)> = kills_by_point.iter().map(|(k, v)| (k.as_str(), v.to_string())).collect();
    let trials = trials.to_string();
    figures.push(("trials", trials));
    figures.push(("seconds", format!("{:.1}", start.elapsed().as_secs_f64())));
    torture::figures("faults", &figures);
}

/// One KTO stage on the sample model's thumbs plus the run's live labels.jsonl, 8 steps, a
/// checkpoint every 2 steps.
fn kto_pipeline(dir: &Path) -> PathBuf {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample");
    let text = format!(
        "[run]\nname = \"kto-faults\"\nseed = 3\ncheckpoint_every = 2\nsample_every = 0\n\n\
         [model]\npath = \"{model}\"\n\n[[stage]]\nname = \"kto\"\nepochs = 20\nmax_steps = 8\nbatch_size = 4\n\
         lr = 3e-3\nmax_length = 256\npref = {{ data = [\"{thumbs}\", \"labels.jsonl\"], loss = \"kto\" }}\n",
        model = sample.join("model").display(),
        thumbs = sample.join("thumbs.jsonl").display(),
    );
    let path = dir.join("kto.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Three thumbs a labeler gave while the worker was down.
fn append_thumbs(run: &RunDir) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(run.labels_path()).unwrap();
    for (i, (answer, up)) in [("Paris.", true), ("Lyon.", false), ("It is Paris.", true)].iter().enumerate() {
        let line = serde_json::json!({
            "id": format!("thumb-{i}"),
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "completion": [{"role": "assistant", "content": answer}],
            "label": up,
            "labeler": "torture",
            "ts": 1_700_000_000_000u64 + i as u64,
        });
        writeln!(file, "{line}").unwrap();
    }
}

/// A KTO run killed after its checkpoint at step 2, thumbs appended while it is dead, then (with
/// `fault`) killed once more by that crash point, then resumed to its end.
fn kto_trial(p: &Path, runs: &Path, fault: Option<&str>) -> Outcome {
    let (status, err) = go(p, runs, Some("checkpoint.saved@1"));
    assert!(killed(status), "the first checkpoint's kill fired ({status}): {err}");
    let run = only_run(runs).unwrap();
    append_thumbs(&run);
    if let Some(fault) = fault {
        let (status, err) = go(p, runs, Some(fault));
        assert!(killed(status), "{fault} fired ({status}): {err}");
        check_after_kill(&run, fault);
    }
    let (status, err) = go(p, runs, None);
    assert!(status.success(), "{fault:?}: the last resume finishes: {err}");
    outcome(&run)
}

/// Kills inside the thumbs read, inside the next checkpoint's write (the resume goes back before
/// the logged admission and replays it at its step) and after later checkpoints (the resume
/// replays the stage's earlier reads): every step's loss stays bit-identical to the reference.
#[test]
fn kills_around_a_kto_stages_thumbs_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let p = kto_pipeline(tmp.path());
    let reference = kto_trial(&p, &tmp.path().join("reference"), None);
    assert_eq!(reference.losses.keys().copied().collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    let admitted: Vec<(u64, u64)> = reference.admitted.iter().map(|(step, n)| (*step, *n)).collect();
    assert_eq!(admitted, [(2, 3)], "admitted at the resume's first boundary");
    for fault in ["labels.read@1", "checkpoint.file@1", "checkpoint.saved@1", "checkpoint.saved@2"] {
        let got = kto_trial(&p, &tmp.path().join(fault.replace(['.', '@'], "-")), Some(fault));
        assert_eq!(got, reference, "{fault}: the run after the crash agrees with the reference");
    }
}

/// `hone` in `dir` with `args`, `fault` armed if given.
fn hone_in(dir: &Path, args: &[&str], fault: Option<&str>) -> ExitStatus {
    let mut cmd = Command::new(HONE);
    cmd.current_dir(dir).args(args).env_remove(hone::fault::ENV);
    if let Some(fault) = fault {
        cmd.env(hone::fault::ENV, fault);
    }
    cmd.status().unwrap()
}

/// A KTO run started with a relative `--runs-dir`, killed after it read thumbs, resumes from
/// another directory through the run's absolute path and still ends as the reference does: the
/// live labels file keeps one name whatever directory the worker runs from.
#[test]
fn a_kto_run_resumes_from_another_directory_after_reading_thumbs() {
    let tmp = tempfile::tempdir().unwrap();
    let p = kto_pipeline(tmp.path());
    let reference = kto_trial(&p, &tmp.path().join("reference"), None);
    let pipeline = p.to_str().unwrap();
    let status =
        hone_in(tmp.path(), &["run", pipeline, "--headless", "--runs-dir", "runs"], Some("checkpoint.saved@1"));
    assert!(killed(status), "{status}");
    let run = only_run(&tmp.path().join("runs")).unwrap();
    append_thumbs(&run);
    let relative = format!("runs/{}", run.path().file_name().unwrap().to_str().unwrap());
    // Killed after the checkpoint at step 4, which holds the read of the thumbs at step 2.
    let status = hone_in(tmp.path(), &["resume", &relative, "--headless"], Some("checkpoint.saved@1"));
    assert!(killed(status), "{status}");
    let absolute = std::fs::canonicalize(run.path()).unwrap();
    let status = hone_in(Path::new("/"), &["resume", absolute.to_str().unwrap(), "--headless"], None);
    assert!(status.success(), "{status}");
    assert_eq!(outcome(&run), reference);
}
