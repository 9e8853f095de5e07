#![allow(clippy::unwrap_used)]
//! The run's human inputs in pipeline evaluation: overrides are applied to every report and
//! counted, blind `eval_pairwise` labels of the labels file decide their items' pairwise outcome
//! (only for the candidate/baseline pair they name, retracted ones not at all), and a prompt that
//! entered training through the labels file marks its eval item as contaminated.

mod memory_host;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hone::config::{load_pipeline, Pipeline};
use hone::eval::{read_pairwise_labels, read_suite, Winner};
use hone::train::trainer::{RunOptions, Trainer};
use memory_host::MemoryHost;
use serde_json::{json, Value};

/// The small fixture pipeline (its 16-item suite keeps four evaluations fast).
fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

#[test]
fn pairwise_labels_are_filtered_by_pair_and_retractions_and_other_records_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("labels.jsonl");
    let lines = [
        json!({"id": "p1", "prompt": "hi", "chosen": "a", "rejected": "b"}).to_string(),
        json!({"id": "l1", "kind": "eval_pairwise", "item": "x", "candidate": "dpo", "baseline": "sft", "winner": "candidate"}).to_string(),
        json!({"id": "l2", "kind": "eval_pairwise", "item": "y", "candidate": "dpo", "baseline": "sft", "winner": "tie"}).to_string(),
        json!({"id": "l3", "kind": "eval_pairwise", "item": "x", "candidate": "safety", "baseline": "sft", "winner": "baseline"}).to_string(),
        json!({"id": "u1", "kind": "undo", "supersedes": "l2"}).to_string(),
        "not json at all".to_string(),
    ];
    // The last line is torn (no newline yet): it does not count.
    let torn = json!({"id": "l4", "kind": "eval_pairwise", "item": "z", "candidate": "dpo", "baseline": "sft", "winner": "baseline"});
    std::fs::write(&path, format!("{}\n{}", lines.join("\n"), &torn.to_string()[..20])).unwrap();
    let dpo = read_pairwise_labels(&path, "dpo", "sft").unwrap();
    assert_eq!(dpo.len(), 1, "{dpo:?}");
    assert_eq!((dpo[0].id.as_str(), dpo[0].winner), ("x", Winner::Candidate));
    let safety = read_pairwise_labels(&path, "safety", "sft").unwrap();
    assert_eq!(safety.len(), 1);
    assert_eq!(safety[0].winner, Winner::Baseline);
    assert!(read_pairwise_labels(&path, "dpo", "base").unwrap().is_empty());
    assert!(read_pairwise_labels(&tmp.path().join("missing.jsonl"), "dpo", "sft").unwrap().is_empty());
}

#[test]
fn a_bad_pairwise_label_is_reported_at_its_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("labels.jsonl");
    let good = json!({"id": "p1", "prompt": "hi", "chosen": "a", "rejected": "b"}).to_string();
    let bad =
        r#"{"id": "l1", "kind": "eval_pairwise", "item": "x", "candidate": "dpo", "baseline": "sft", "winner": "A"}"#;
    std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
    let err = read_pairwise_labels(&path, "dpo", "sft").unwrap_err().to_string();
    let col = bad.find("\"A\"").unwrap() + 1;
    assert!(err.starts_with(&format!("{}:2:{col}: winner: ", path.display())), "{err}");
    assert!(err.contains("unknown winner"), "{err}");
}

/// The fixture pipeline, its paths resolved as `hone run` resolves them (the run's labels file
/// stays in the run directory).
fn pipeline() -> Pipeline {
    let p = load_pipeline(&sample().join("pipeline.toml")).unwrap().pipeline;
    assert!(p.eval.is_some(), "the fixture pipeline has an [eval] table");
    p
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

#[test]
fn overrides_labels_and_label_prompts_reach_every_pipeline_evaluation() {
    let p = pipeline();
    let items = read_suite(&p.eval.as_ref().unwrap().suite).unwrap();
    assert!(items.len() >= 4, "the sample suite has at least 4 items");
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("overrides.jsonl"), &[json!({"id": items[1].id, "passed": true, "by": "ana"})]);
    write_lines(
        &tmp.path().join("labels.jsonl"),
        &[
            // A preference label on an eval prompt: that prompt has entered training.
            json!({"id": "p1", "prompt": items[0].prompt.text(), "chosen": "yes", "rejected": "no"}),
            json!({"id": "l1", "kind": "eval_pairwise", "item": items[2].id, "candidate": "dpo", "baseline": "sft", "winner": "candidate"}),
            json!({"id": "l2", "kind": "eval_pairwise", "item": items[3].id, "candidate": "dpo", "baseline": "sft", "winner": "baseline"}),
            json!({"id": "l3", "kind": "eval_pairwise", "item": items[2].id, "candidate": "safety", "baseline": "sft", "winner": "tie"}),
            json!({"id": "u1", "kind": "undo", "supersedes": "l2"}),
        ],
    );
    let mut host = MemoryHost { human_inputs: true, ..MemoryHost::new(tmp.path(), &p) };
    let options = RunOptions { max_steps: Some(1), ..RunOptions::default() };
    Trainer::new(p, options, &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let stages: Vec<&str> = host.reports.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages, ["base", "sft", "dpo", "safety"]);
    for r in &host.reports {
        assert_eq!(r.overrides_applied, 1, "{}", r.stage);
        assert_eq!(r.contaminated.ids, [items[0].id.clone()], "{}", r.stage);
    }
    // Labels count only where there is a baseline, and only for their own pair.
    let applied: Vec<usize> = host.reports.iter().map(|r| r.human_labels_applied).collect();
    assert_eq!(applied, [0, 0, 1, 1]);
    let dpo = &host.reports[2];
    let wtl = dpo.win_tie_loss.unwrap();
    assert_eq!(wtl.total(), items.len() - 1, "every uncontaminated item is compared");
}
