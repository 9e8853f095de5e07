//! Golden metrics: a short, deterministic run of the sample-world pipeline and of the small
//! fixture pipeline (a few steps of every stage) must log exactly the `metrics` events recorded
//! in `tests/fixtures/golden/` (timing fields removed). Any change to the numbers of training
//! (data order, losses, optimizer, schedules, λ updates) shows up here; a change meant to move
//! them regenerates the files with `HONE_BLESS=1` and says so in its commit.
//!
//! On the machine that blessed the files the match is byte for byte; `HONE_GOLDEN_EXACT=1`
//! demands that (the check for a refactor that must not move a bit: bless on the old code, then
//! run the new code on the same machine). Elsewhere the matmul kernels the CPU dispatches to
//! (AVX2 or AVX-512, different blockings) sum in another order and move the last bits, so by
//! default every number must agree within `|got - want| <= ABS + REL * |want|`, while keys,
//! stages, steps and line counts must be identical: a real change of the training (data order, a
//! loss, the schedule) moves numbers by far more than that.
#![allow(clippy::unwrap_used)]

mod memory_host;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hone::config::load_pipeline;
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;
use serde_json::{json, Value};

/// Tolerance for numbers blessed on another CPU (see the module docs).
const ABS: f64 = 1e-5;
const REL: f64 = 1e-6;

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
    if got == want {
        return;
    }
    let exact = std::env::var_os("HONE_GOLDEN_EXACT").is_some();
    let mismatch = if exact { Some("not byte-identical".to_string()) } else { first_mismatch(&got, &want) };
    if let Some(why) = mismatch {
        panic!("{name}: metrics differ from the golden file {}: {why}\nnow:\n{got}", path.display());
    }
    eprintln!("{name}: equal within |d| <= {ABS} + {REL}*|x|, not byte for byte (another CPU's kernels)");
}

/// The first difference between two metrics files beyond the tolerance, described.
fn first_mismatch(got: &str, want: &str) -> Option<String> {
    let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    if got.len() != want.len() {
        return Some(format!("{} lines now, {} recorded", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w): (Value, Value) = (serde_json::from_str(g).unwrap(), serde_json::from_str(w).unwrap());
        if let Some(why) = value_mismatch(&g, &w, "") {
            return Some(format!("line {}: {why}", i + 1));
        }
    }
    None
}

fn value_mismatch(got: &Value, want: &Value, at: &str) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let (gk, wk): (Vec<&String>, Vec<&String>) = (g.keys().collect(), w.keys().collect());
            if gk != wk {
                return Some(format!("{at}: keys {gk:?} now, {wk:?} recorded"));
            }
            g.iter().find_map(|(k, v)| value_mismatch(v, &w[k], &format!("{at}/{k}")))
        }
        (Value::Number(g), Value::Number(w)) if g.is_f64() || w.is_f64() => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            ((g - w).abs() > ABS + REL * w.abs()).then(|| format!("{at}: {g} now, {w} recorded"))
        }
        _ => (got != want).then(|| format!("{at}: {got} now, {want} recorded")),
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
