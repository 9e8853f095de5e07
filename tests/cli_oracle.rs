//! `hone score` and `hone generate` end to end, against the numbers transformers and TRL
//! produced for each oracle set (`tests/fixtures/<set>/expected.json`; see each README).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{assert_close, expected, fixture, ids, num};
use serde_json::Value;

fn hone(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hone")).args(args).output().expect("hone runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8(out.stderr).unwrap())
}

fn path(set: &str, rel: &str) -> String {
    fixture(&format!("{set}/{rel}")).display().to_string()
}

fn check_sft(set: &str) {
    let exp = expected(set);
    let (code, lines, err) = hone(&["score", "--model", &path(set, "model"), "--data", &path(set, "sft.jsonl")]);
    assert_eq!(code, 0, "{err}");
    let examples = exp["sft"]["examples"].as_array().unwrap();
    assert_eq!(lines.len(), examples.len() + 1);
    for (i, e) in examples.iter().enumerate() {
        assert_eq!(lines[i]["index"], i);
        assert_eq!(lines[i]["num_loss_tokens"], e["num_loss_tokens"], "{set} sft {i}");
        assert_close(&format!("{set} sft {i} loss"), num(&lines[i]["loss"]), num(&e["loss"]), 1e-5 * num(&e["loss"]));
        assert_close(&format!("{set} sft {i} logp"), num(&lines[i]["logp"]), -num(&e["nll_sum"]), 1e-3);
    }
    let summary = &lines[examples.len()]["summary"];
    let want = num(&exp["sft"]["batch"]["loss"]);
    assert_close(&format!("{set} sft batch loss"), num(&summary["loss"]), want, 1e-5 * want);
    assert_eq!(summary["num_loss_tokens"], exp["sft"]["batch"]["num_loss_tokens"]);
}

fn check_preferences(set: &str, kind: &str, file: &str) {
    let exp = expected(set);
    let cases = &exp["dpo"][kind];
    let examples = cases["examples"].as_array().unwrap();
    for (loss, field, tol) in [("sigmoid", "dpo_sigmoid_loss", 1e-4), ("ipo", "ipo_loss", 1e-3)] {
        let (code, lines, err) = hone(&[
            "score",
            "--model",
            &path(set, "model"),
            "--ref",
            &path(set, "ref"),
            "--data",
            &path(set, file),
            "--loss",
            loss,
            "--beta",
            "0.1",
        ]);
        assert_eq!(code, 0, "{err}");
        for (i, e) in examples.iter().enumerate() {
            for key in ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"] {
                assert_close(&format!("{set} {kind} {i} {key}"), num(&lines[i][key]), num(&e[key]), 1e-3);
            }
            assert_close(&format!("{set} {kind} {i} {loss}"), num(&lines[i]["loss"]), num(&e[field]), tol);
            assert_close(
                &format!("{set} {kind} {i} reward_chosen"),
                num(&lines[i]["reward_chosen"]),
                num(&e["reward_chosen"]),
                1e-4,
            );
            assert_close(
                &format!("{set} {kind} {i} reward_rejected"),
                num(&lines[i]["reward_rejected"]),
                num(&e["reward_rejected"]),
                1e-4,
            );
        }
        let summary = &lines[examples.len()]["summary"];
        let batch = &cases["batch"];
        assert_close(&format!("{set} {kind} batch {loss}"), num(&summary["loss"]), num(&batch[field]), tol);
        for key in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
            assert_close(&format!("{set} {kind} {key}"), num(&summary[key]), num(&batch[key]), 1e-4);
        }
        for key in ["logps/chosen", "logps/rejected"] {
            assert_close(&format!("{set} {kind} {key}"), num(&summary[key]), num(&batch[key]), 1e-3);
        }
    }
}

fn check_generation(set: &str) {
    let exp = expected(set);
    let (code, lines, err) = hone(&[
        "generate",
        "--model",
        &path(set, "model"),
        "--data",
        &path(set, "gen_prompts.jsonl"),
        "--max-new-tokens",
        "20",
    ]);
    assert_eq!(code, 0, "{err}");
    for (i, case) in exp["generation"].as_array().unwrap().iter().enumerate() {
        assert_eq!(ids(&lines[i]["prompt_ids"]), ids(&case["prompt_ids"]), "{set} prompt {i}");
        assert_eq!(ids(&lines[i]["new_token_ids"]), ids(&case["new_token_ids"]), "{set} generation {i}");
    }
}

#[test]
fn llama_score_sft() {
    check_sft("llama");
}

#[test]
fn llama_score_conversational_preferences() {
    check_preferences("llama", "conversational", "prefs.jsonl");
}

#[test]
fn llama_score_plain_preferences() {
    check_preferences("llama", "plain", "prefs_plain.jsonl");
}

#[test]
fn llama_generate_greedy() {
    check_generation("llama");
}

#[test]
fn score_without_ref_omits_reference_fields() {
    let (code, lines, err) =
        hone(&["score", "--model", &path("llama", "model"), "--data", &path("llama", "prefs.jsonl")]);
    assert_eq!(code, 0, "{err}");
    assert!(lines[0].get("ref_chosen_logps").is_none() && lines[0].get("loss").is_none());
    assert!(lines.last().unwrap()["summary"].get("logps/chosen").is_some());
}

#[test]
fn bad_inputs_exit_2_with_a_located_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": [{\"role\": 3, \"content\": \"x\"}]}\n").unwrap();
    let (code, _, err) = hone(&["score", "--model", &path("llama", "model"), "--data", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{}:2:", bad.display())) && err.contains("messages[0].role"), "{err}");

    let (code, _, err) = hone(&["score", "--model", dir.path().to_str().unwrap(), "--data", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("tokenizer.json") || err.contains("config.json"), "{err}");

    // An architecture hone does not implement is named, with the supported ones.
    let model = dir.path().join("gpt2");
    std::fs::create_dir(&model).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("llama/model/{f}")), model.join(f)).unwrap();
    }
    std::fs::write(model.join("config.json"), r#"{"architectures": ["GPT2LMHeadModel"], "vocab_size": 954}"#).unwrap();
    let (code, _, err) = hone(&["score", "--model", model.to_str().unwrap(), "--data", &path("llama", "sft.jsonl")]);
    assert_eq!(code, 2);
    assert!(err.contains("GPT2LMHeadModel") && err.contains("LlamaForCausalLM, Qwen2ForCausalLM"), "{err}");
}

// The Qwen2 set: q/k/v biases, untied head, rope θ 1e6 from transformers-5 `rope_parameters`
// only, `sliding_window: null`, a vocabulary padded past the tokenizer, no BOS, two EOS ids,
// the real Qwen2.5 chat template (no generation blocks: the assistant spans come from the
// render difference rule) and a sharded reference model.

#[test]
fn qwen2_score_sft() {
    check_sft("qwen2");
}

#[test]
fn qwen2_score_conversational_preferences() {
    check_preferences("qwen2", "conversational", "prefs.jsonl");
}

#[test]
fn qwen2_score_plain_preferences() {
    check_preferences("qwen2", "plain", "prefs_plain.jsonl");
}

#[test]
fn qwen2_generate_greedy_stops_on_the_second_eos_id() {
    check_generation("qwen2");
    let exp = expected("qwen2");
    assert!(
        exp["generation"].as_array().unwrap().iter().any(|g| g["stopped_on_eos"] == true),
        "the fixture exercises an EOS stop"
    );
}

#[test]
fn eval_writes_a_complete_report_and_exits_with_the_gate_decision() {
    let out = tempfile::tempdir().unwrap();
    let suite = fixture("eval/tiny_suite.jsonl");
    let args = [
        "eval",
        "--model",
        &path("llama", "model"),
        "--baseline",
        &path("llama", "ref"),
        "--suite",
        suite.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--max-new-tokens",
        "8",
    ];
    let output = Command::new(env!("CARGO_BIN_EXE_hone")).args(args).output().unwrap();
    // A random model refuses nothing: the safety gates fail, so the decision is "iterate".
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("decision: iterate") && table.contains("unsafe_rate"), "{table}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    for key in [
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
    ] {
        assert!(report.get(key).is_some(), "report.json lacks {key}");
    }
    let gates: Vec<&str> = report["gates"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    for g in ["win_rate_gain", "unsafe_rate", "redteam", "hallucination_rate", "latency_p95_s"] {
        assert!(gates.contains(&g), "gate {g} evaluated: {gates:?}");
    }
    let failures = std::fs::read_to_string(out.path().join("failures.jsonl")).unwrap();
    assert!(failures.lines().count() >= 2);

    let bad = out.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"x\", \"prompt\": \"hi\", \"kind\": \"capability\", \"segment\": {\"language\": \"en\", \"domain\": \"d\", \"intent\": \"i\"}, \"checks\": [{\"type\": \"fuzzy\"}]}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args([
            "eval",
            "--model",
            &path("llama", "model"),
            "--suite",
            bad.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains(&format!("{}:1:", bad.display())) && err.contains("fuzzy"), "{err}");
}
