//! `[eval] best_of` inside a pipeline (issue 16): every evaluated stage also gets a best-of-n
//! evaluation of its own (`<stage>-best-of-<n>`) whose tokens grow with n and whose latency and
//! cost are reported beside the greedy ones; the reranker never sees an item's checks; and a
//! resumed run that finds a stage's greedy evaluation saved still makes its best-of one.
#![allow(clippy::unwrap_used)]

mod memory_host;

use std::path::PathBuf;

use candle_core::{DType, Device};
use hone::config::{load_pipeline, BestOf, Pipeline};
use hone::data::{ChatTemplate, TextTokenizer};
use hone::eval::{read_suite, Check, Report};
use hone::model::{Model, RewardModel};
use hone::train::evaluate::{answer_best_of, Answerer};
use hone::train::plan::never_interrupt;
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

/// The reward model fixture: the same tokenizer as the sample fixture's policy.
fn reward_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/llama")
}

fn best_of(n: usize) -> BestOf {
    BestOf { n, reward_model: reward_model(), temperature: 0.8, seed: 5, gate: false }
}

/// sft → safety on the tiny fixture, three steps a stage, evaluated (no base evaluation) with
/// `best_of`, a checkpoint at the end of every stage.
fn pipeline(n: usize) -> Pipeline {
    // Paths resolved against the fixture directory, as `hone run` resolves them.
    let mut p = load_pipeline(&sample().join("pipeline.toml")).unwrap().pipeline;
    p.run.checkpoint_every = 3;
    p.stages.retain(|s| s.name != "dpo");
    let eval = p.eval.as_mut().unwrap();
    eval.base = false;
    eval.max_new_tokens = 4;
    eval.price_per_device_hour = 2.0;
    eval.best_of = Some(best_of(n));
    p
}

fn options() -> RunOptions {
    RunOptions { max_steps: Some(3), ..RunOptions::default() }
}

fn report<'a>(host: &'a MemoryHost, stage: &str) -> &'a Report {
    host.reports.iter().find(|r| r.stage == stage).unwrap_or_else(|| panic!("no report of {stage}"))
}

fn run(n: usize, dir: &std::path::Path) -> MemoryHost {
    let p = pipeline(n);
    let mut host = MemoryHost::new(dir, &p);
    let finished = Trainer::new(p, options(), &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap();
    assert_eq!(finished, Finished::Completed);
    host
}

#[test]
fn every_stage_gets_a_best_of_row_whose_tokens_grow_with_n_and_whose_cost_is_reported() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let two = run(2, a.path());
    let four = run(4, b.path());
    let evaluated: Vec<&str> = four.reports.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(evaluated, ["sft", "sft-best-of-4", "safety", "safety-best-of-4"]);
    for stage in ["sft", "safety"] {
        let greedy = report(&four, stage);
        let rows = [greedy, report(&two, &format!("{stage}-best-of-2")), report(&four, &format!("{stage}-best-of-4"))];
        assert!(greedy.best_of.is_none());
        assert_eq!(rows[1].best_of.as_ref().unwrap().n, 2);
        assert_eq!(rows[2].best_of.as_ref().unwrap().n, 4);
        let tokens: Vec<f64> = rows.iter().map(|r| r.tokens_per_response.unwrap()).collect();
        assert!(tokens[0] < tokens[1] && tokens[1] < tokens[2], "{stage}: tokens per response {tokens:?}");
        for r in rows {
            let (p50, p95) = (r.latency_p50_s.unwrap(), r.latency_p95_s.unwrap());
            assert!(p50 > 0.0 && p95 >= p50, "{}: latency p50 {p50} p95 {p95}", r.stage);
            assert!(r.cost_per_1k_responses.unwrap() > 0.0, "{}: cost", r.stage);
        }
    }
    // The gates use the greedy answers (n = 1): one decision, on the safety stage's greedy report.
    let decided: Vec<&str> =
        four.events.iter().filter(|e| e.0 == "gate_decided").map(|e| e.1.as_deref().unwrap()).collect();
    assert_eq!(decided, ["safety"]);
}

#[test]
fn the_reranker_chooses_the_same_answers_whatever_the_checks_say() {
    let dir = sample().join("model");
    let model = Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let reward = RewardModel::load(&reward_model(), &Device::Cpu, DType::F32).unwrap();
    let items = read_suite(&sample().join("eval.jsonl")).unwrap();
    // The same prompts with every item's checks (and reference) turned into their opposite kind.
    let mut flipped = items.clone();
    for item in &mut flipped {
        item.checks =
            if item.checks.contains(&Check::MustRefuse) { vec![Check::MustAbstain] } else { vec![Check::MustRefuse] };
        item.reference = None;
    }
    let answerer = Answerer { model: &model, tok: &tok, template: template.as_ref() };
    let answer =
        |items| answer_best_of(answerer, (&reward, &best_of(4)), items, (6, 8), &mut never_interrupt).unwrap().unwrap();
    let texts = |r: Vec<hone::eval::Response>| r.into_iter().map(|r| r.text).collect::<Vec<_>>();
    let (a, b) = (texts(answer(&items)), texts(answer(&flipped)));
    assert_eq!(a.len(), items.len());
    assert_eq!(a, b);
}

#[test]
fn a_resume_that_finds_the_greedy_evaluation_saved_makes_the_best_of_one() {
    let p = pipeline(2);
    let dir = tempfile::tempdir().unwrap();
    let mut first = MemoryHost::new(dir.path(), &p);
    Trainer::new(p.clone(), options(), &mut first, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let (step, checkpoint) = first.checkpoints.iter().find(|c| c.0 == 3).unwrap().clone();
    assert_eq!(step, 3, "the sft stage's last checkpoint");

    // As if the worker died between sft's greedy evaluation and its best-of one.
    let mut evals = first.evals.clone();
    evals.retain(|name, _| name == "sft");
    let mut second = MemoryHost { evals, ..MemoryHost::new(dir.path(), &p) };
    let resumed =
        Trainer::resume(p, options(), &mut second, Device::Cpu, DType::F32, &checkpoint).unwrap().run().unwrap();
    assert_eq!(resumed, Finished::Completed);
    let evaluated: Vec<&str> = second.reports.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(evaluated, ["sft-best-of-2", "safety", "safety-best-of-2"]);
    let redone = report(&second, "sft-best-of-2");
    let original = report(&first, "sft-best-of-2");
    assert_eq!(redone.tokens_per_response, original.tokens_per_response, "the same samples from the same weights");
    assert_eq!(redone.task_success_rate, original.task_success_rate);
}
