#![allow(clippy::unwrap_used)]
//! `hone demo --headless` end to end, shortened: every stage is evaluated with a complete
//! report.json, every gate of every gated stage is evaluated, the summary shows the phase times,
//! scorecards and decision, and `sample-data/` is left exactly as it was.
//!
//! How it is shortened: `--max-steps 2` caps each stage, and `--data` points at a pipeline made
//! from `sample-data/pipeline.toml` whose paths point back into `sample-data/` (model, training
//! files) and whose suite is a slice of sample-data's (a few items of each kind, red-team items
//! included), so the test's time does not grow with the sample world's held-out suite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hone::run::{EventReader, RunDir};
use serde_json::Value;
use sha2::{Digest, Sha256};

const HONE: &str = env!("CARGO_BIN_EXE_hone");

/// Every file under `dir` with the sha256 of its bytes.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let digest = Sha256::digest(std::fs::read(&path).unwrap());
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), format!("{digest:x}"));
            }
        }
    }
    out
}

const REPORT_KEYS: [&str; 17] = [
    "stage",
    "checkpoint",
    "task_success_rate",
    "win_rate",
    "win_tie_loss",
    "unsafe_rate",
    "jailbreak_success_rate",
    "hallucination_rate",
    "instruction_following_rate",
    "citation_accuracy",
    "latency_p50_s",
    "latency_p95_s",
    "tokens_per_response",
    "cost_per_1k_responses",
    "segments",
    "gates",
    "passed",
];

const RATES: [&str; 7] = [
    "task_success_rate",
    "win_rate",
    "unsafe_rate",
    "jailbreak_success_rate",
    "hallucination_rate",
    "instruction_following_rate",
    "citation_accuracy",
];

/// Keys whose string values are paths relative to the pipeline file.
const PATH_KEYS: [&str; 7] = ["path", "data", "suite", "reference", "redteam", "model", "candidates"];

/// Makes every relative path under a path key absolute (into `base`), when it exists there; a
/// bare name that does not (the run's `labels.jsonl`) stays run-relative.
fn absolutise(v: &mut toml::Value, base: &Path, under_path_key: bool) {
    match v {
        toml::Value::String(s) if under_path_key && Path::new(s.as_str()).is_relative() && base.join(&*s).exists() => {
            *s = base.join(&*s).display().to_string();
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|i| absolutise(i, base, under_path_key)),
        toml::Value::Table(t) => {
            for (k, val) in t.iter_mut() {
                absolutise(val, base, PATH_KEYS.contains(&k.as_str()));
            }
        }
        _ => {}
    }
}

/// A data directory with the shortened pipeline; returns it.
fn shortened_world(sample: &Path, into: &Path) -> PathBuf {
    let text = std::fs::read_to_string(sample.join("pipeline.toml")).unwrap();
    let mut pipeline: toml::Value = toml::from_str(&text).unwrap();
    absolutise(&mut pipeline, sample, false);
    let eval = pipeline.get_mut("eval").and_then(toml::Value::as_table_mut).expect("the sample pipeline has [eval]");
    let suite = PathBuf::from(eval["suite"].as_str().unwrap());
    // Up to 4 items of each (kind, red-team or not), in suite order.
    let mut taken: BTreeMap<(String, bool), usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(&suite).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let item: Value = serde_json::from_str(line).unwrap();
        let key = (item["kind"].as_str().unwrap().to_string(), item.get("attack").is_some());
        let n = taken.entry(key).or_default();
        if *n < 4 {
            *n += 1;
            lines.push(line.to_string());
        }
    }
    let data = into.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("suite.jsonl"), lines.join("\n") + "\n").unwrap();
    eval.insert("suite".into(), toml::Value::String(data.join("suite.jsonl").display().to_string()));
    // Every gate may start the iterate loop, so that its rounds run (and are exported) even
    // though two steps a stage pass no gate.
    let gates = ["win_rate_gain", "unsafe_rate", "redteam", "hallucination_rate", "latency_p95_s"];
    let loops = pipeline.get_mut("iterate").and_then(toml::Value::as_array_mut).expect("[[iterate]]");
    loops[0]["when"] = toml::Value::Array(gates.iter().map(|g| toml::Value::String((*g).into())).collect());
    std::fs::write(data.join("pipeline.toml"), toml::to_string(&pipeline).unwrap()).unwrap();
    data
}

#[test]
fn a_demo_without_its_pipeline_is_refused_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(HONE)
        .args(["demo", "--headless", "--data"])
        .arg(tmp.path())
        .arg("--runs-dir")
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipeline.toml"), "{stderr}");
    assert!(!tmp.path().join("runs").exists(), "nothing is created for a refused demo");
}

#[test]
fn a_shortened_headless_demo_evaluates_and_gates_every_stage_and_leaves_sample_data_alone() {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-data");
    let before = hashes(&sample);
    let tmp = tempfile::tempdir().unwrap();
    let world = tempfile::tempdir().unwrap();
    let data = shortened_world(&sample, world.path());
    let runs = tmp.path().join("runs");
    let out = Command::new(HONE)
        .args(["demo", "--headless", "--max-steps", "2", "--data"])
        .arg(&data)
        .arg("--runs-dir")
        .arg(&runs)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(hashes(&sample), before, "sample-data/ was modified");
    // Nothing was written outside the run directory.
    let outside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside, ["runs"]);
    let all = RunDir::list(&runs).unwrap();
    assert_eq!(all.len(), 1);
    let run = &all[0];
    assert!(stdout.trim_end().ends_with(&run.path().display().to_string()), "{stdout}");

    let events = EventReader::read_all(&run.events_path()).unwrap().events;
    let stages = ["base", "sft", "dpo", "safety"];
    for stage in stages {
        let text = std::fs::read_to_string(run.eval_dir(stage).join("report.json")).unwrap();
        let report: Value = serde_json::from_str(&text).unwrap();
        for key in REPORT_KEYS {
            assert!(report.get(key).is_some(), "{stage}: report.json lacks {key}");
        }
        assert_eq!(report["stage"], stage);
        for key in RATES {
            let v = &report[key];
            assert!(v.is_null() || v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{stage}: {key} = {v}");
        }
        assert!(report["latency_p95_s"].as_f64().is_some_and(|x| x >= 0.0), "{stage}: p95 measured");
        for dim in ["language", "domain", "intent"] {
            assert!(report["segments"].get(dim).is_some(), "{stage}: segments.{dim}");
        }
        assert!(run.eval_dir(stage).join("failures.jsonl").is_file(), "{stage}: failures.jsonl");
        assert!(stdout.contains(&format!("eval {stage}")), "{stage}: phase time in the summary\n{stdout}");
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(stage) && l.contains('%')),
            "{stage}: scorecard row\n{stdout}"
        );
        let gated = stage == "dpo" || stage == "safety";
        let gates = report["gates"].as_array().unwrap();
        if gated {
            // Every default gate, each with its outcome.
            let names: Vec<&str> = gates.iter().map(|g| g["name"].as_str().unwrap()).collect();
            for want in ["win_rate_gain", "unsafe_rate", "hallucination_rate", "latency_p95_s", "redteam"] {
                assert!(names.contains(&want), "{stage}: gate {want} missing from {names:?}");
            }
            for g in gates {
                for key in ["name", "value", "threshold", "passed"] {
                    assert!(g.get(key).is_some(), "{stage}: gate {g} lacks {key}");
                }
                assert!(g["passed"].is_boolean(), "{stage}: gate {g} was not evaluated");
            }
            let decided = events.iter().find(|e| e.event == "gate_decided" && e.stage.as_deref() == Some(stage));
            let decision =
                decided.unwrap_or_else(|| panic!("{stage}: no gate_decided event")).fields["decision"].clone();
            assert!(decision == "deploy" || decision == "iterate", "{stage}: {decision}");
        }
    }
    for stage in ["sft", "dpo", "safety"] {
        assert!(stdout.contains(&format!("stage {stage}")), "{stage}: stage time in the summary\n{stdout}");
    }
    // The run's decision is its last gate decision: safety's, or that of the last round of
    // safety-fix when safety failed only the gates of the pipeline's [[iterate]] loop.
    let decided: Vec<&str> =
        events.iter().filter(|e| e.event == "gate_decided").filter_map(|e| e.stage.as_deref()).collect();
    let last = decided.last().unwrap();
    assert!(stdout.contains(&format!("decision ({last}): ")), "{stdout}");
    for round in decided.iter().filter(|s| s.starts_with("safety-fix")) {
        assert!(run.eval_dir(round).join("report.json").is_file(), "{round}: evaluated");
        assert!(stdout.contains(&format!("stage {round}")), "{round}: stage time in the summary\n{stdout}");
    }
    assert!(decided.contains(&"safety-fix"), "{decided:?}: the iterate loop ran");
    // The last gated stage or round exports under the name it was gated under.
    let exported = tmp.path().join("exported");
    let out =
        Command::new(HONE).args(["export", "--stage", last, "--out"]).arg(&exported).arg(run.path()).output().unwrap();
    assert!(out.status.success(), "export --stage {last}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(exported.join("model.safetensors").is_file(), "export --stage {last}");
}

#[test]
fn phase_times_come_from_stage_events_and_eval_seconds() {
    use hone::cli::demo::{phases, Phase};
    use hone::run::Event;
    let at = |mut e: Event, ts: u64| {
        e.ts = ts;
        e
    };
    let events = vec![
        at(Event::new("eval_finished", Some("base"), Some(0)).with("seconds", 0.75), 500),
        at(Event::new("stage_started", Some("sft"), Some(0)), 1_000),
        at(Event::new("metrics", Some("sft"), Some(1)), 2_000),
        at(Event::new("stage_finished", Some("sft"), Some(2)), 3_500),
        at(Event::new("eval_finished", Some("sft"), Some(2)).with("seconds", 1.5), 5_000),
        // A stage that never finished (a stopped run) has no time.
        at(Event::new("stage_started", Some("dpo"), Some(2)), 6_000),
    ];
    let got = phases(&events);
    let want = [("eval base", 0.75), ("stage sft", 2.5), ("eval sft", 1.5)]
        .map(|(name, seconds)| Phase { name: name.to_string(), seconds });
    assert_eq!(got, want);
}
