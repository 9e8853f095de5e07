//! Golden metrics: a short, deterministic run of the sample-world pipeline and of the small
//! fixture pipeline (a few steps of every stage) must log exactly the `metrics` events recorded
//! in `tests/fixtures/golden/`, byte for byte (timing fields removed). Any change to the numbers
//! of training (data order, losses, optimizer, schedules, λ updates) shows up here; a change
//! meant to move them regenerates the files with `HONE_BLESS=1` and says so in its commit.
#![allow(clippy::unwrap_used)]

mod memory_host;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hone::config::load_pipeline;
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;
use serde_json::{json, Value};

/// Fields that depend on the clock, not on the numbers.
const TIMING_FIELDS: &[&str] = &["tokens_per_second"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The metrics of `pipeline` run for at most `max_steps` steps per stage, without evaluation,
/// one JSON object per line.
fn metrics_lines(pipeline: &Path, max_steps: u64) -> String {
    let mut p = load_pipeline(pipeline).unwrap().pipeline;
    p.eval = None;
    let tmp = tempfile::tempdir().unwrap();
    let mut host = MemoryHost::new(tmp.path(), &p);
    let options = RunOptions { max_steps: Some(max_steps), ..RunOptions::default() };
    let finished = Trainer::new(p, options, &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap();
    assert_eq!(finished, Finished::Completed);
    let mut out = String::new();
    for (stage, step, mut fields) in host.metrics() {
        for key in TIMING_FIELDS {
            assert!(fields.shift_remove(*key).is_some(), "metrics carry {key}");
        }
        out.push_str(&json!({"stage": stage, "step": step, "fields": Value::Object(fields)}).to_string());
        out.push('\n');
    }
    out
}

fn check(name: &str, pipeline: &Path, max_steps: u64) {
    let got = metrics_lines(pipeline, max_steps);
    let path = root().join("tests/fixtures/golden").join(name);
    if std::env::var_os("HONE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap();
    if got != want {
        let first = got.lines().zip(want.lines()).position(|(g, w)| g != w);
        panic!(
            "{name}: metrics differ from the golden file {} (first differing line: {first:?}; \
             {} lines now, {} recorded)\nnow:\n{got}",
            path.display(),
            got.lines().count(),
            want.lines().count()
        );
    }
}

#[test]
fn the_sample_world_pipeline_logs_the_golden_metrics() {
    check("sample_world_metrics.jsonl", &root().join("sample-data/pipeline.toml"), 4);
}

#[test]
fn the_fixture_pipeline_logs_the_golden_metrics() {
    // Six steps per stage reach the fixture's adaptive λ_safe update (every 5 steps).
    check("fixture_metrics.jsonl", &root().join("tests/fixtures/sample/pipeline.toml"), 6);
}
