//! The GRPO stage on the small sample model: groups sampled with the KV cache (one seed per
//! completion), rule rewards through the evaluation's judge, TRL's metrics logged, the policy
//! moving, a reward model's scores added to the rule rewards as the docs say, and a stopped run
//! resuming bit-exactly (sampling included).
#![allow(clippy::unwrap_used, clippy::float_cmp)] // exact equality is the point of the resume test

mod memory_host;

use std::path::PathBuf;

use candle_core::{DType, Device};
use hone::config::Pipeline;
use hone::data::{encode_generation_prompt, encode_sft, ChatTemplate, Message, SftRecord, Text, TextTokenizer};
use hone::eval::{read_suite, Judge, JudgeConfig, Prompt};
use hone::model::generate::{generate, generate_batch_seeded, Sampling};
use hone::model::{Model, RewardModel};
use hone::train::grpo::{completion_seed, rule_reward};
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

fn pipeline(beta: f64, steps: u64) -> Pipeline {
    let text = format!(
        "[run]\nseed = 7\ncheckpoint_every = 0\nsample_every = 0\n\n[model]\npath = \"{model}\"\n\n\
         [[stage]]\nname = \"grpo\"\nepochs = 10\nmax_steps = {steps}\nbatch_size = 2\ngrad_accum = 2\nlr = 5e-3\nmax_length = 128\n\n\
         [stage.grpo]\nprompts = [\"{prompts}\"]\ngroup_size = 4\nbeta = {beta}\nmax_new_tokens = 6\n\
         reward = [\"lowercase\", \"max_words\", \"contains\", \"must_abstain\"]\n",
        model = sample().join("model").display(),
        prompts = sample().join("grpo.jsonl").display(),
    );
    toml::from_str(&text).unwrap()
}

#[test]
fn a_batch_row_with_its_own_seed_is_the_completion_alone() {
    let model = Model::load(&sample().join("model"), &Device::Cpu, DType::F32).unwrap();
    let prompt: Vec<u32> = vec![1, 15, 27, 300, 12];
    let stops = model.generation.eos_token_ids.clone();
    let sampling = Sampling { temperature: 1.0, top_p: 1.0, seed: 0, max_new_tokens: 10 };
    let seeds = [3u64, 4, 5, 3];
    let rows = generate_batch_seeded(&model, &vec![prompt.clone(); 4], &stops, &sampling, &seeds).unwrap();
    for (row, &seed) in rows.iter().zip(&seeds) {
        let alone = generate(&model, &prompt, &stops, &Sampling { seed, ..sampling.clone() }).unwrap();
        assert_eq!(row.generated, alone, "seed {seed}");
    }
    // Different seeds give a group of different completions; the same seed the same one.
    assert_ne!(rows[0].generated, rows[1].generated);
    assert_eq!(rows[0].generated, rows[3].generated);
}

#[test]
fn a_grpo_stage_samples_scores_and_logs_trls_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(0.04, 3);
    let mut host = MemoryHost::new(tmp.path(), &p);
    let mut trainer = Trainer::new(p, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);
    let metrics = host.metrics();
    assert_eq!(metrics.len(), 3);
    for (stage, _, m) in &metrics {
        assert_eq!(stage, "grpo");
        for key in [
            "loss",
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "kl",
            "completions/mean_length",
            "rewards/lowercase/mean",
            "grad_norm",
        ] {
            assert!(m.get(key).and_then(serde_json::Value::as_f64).is_some(), "metrics without {key}: {m:?}");
        }
        let reward = m["reward"].as_f64().unwrap();
        // Each completion: at most 2 of its item's rule rewards can be present, each 0 or 1.
        assert!((0.0..=2.0).contains(&reward), "{reward}");
        let length = m["completions/mean_length"].as_f64().unwrap();
        assert!(length > 0.0 && length <= 6.0, "{length}");
        let zero = m["frac_reward_zero_std"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&zero));
        assert!(m["kl"].as_f64().unwrap() >= 0.0);
    }
    // The first step's policy is the reference: its KL is zero; updates then move the policy away.
    assert_eq!(metrics[0].2["kl"].as_f64().unwrap(), 0.0);
    assert!(metrics[2].2["kl"].as_f64().unwrap() > 0.0, "{:?}", metrics[2].2);
    assert!(metrics.iter().any(|m| m.2["grad_norm"].as_f64().unwrap() > 0.0), "some group had reward variance");
}

#[test]
fn a_stopped_grpo_run_resumes_bit_exactly() {
    let p = pipeline(0.04, 6);
    let key = |m: &serde_json::Map<String, serde_json::Value>| {
        (
            m["loss"].as_f64().unwrap().to_bits(),
            m["reward"].as_f64().unwrap().to_bits(),
            m["kl"].as_f64().unwrap().to_bits(),
        )
    };
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = MemoryHost::new(full_dir.path(), &p);
    Trainer::new(p.clone(), RunOptions::default(), &mut full, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let want: Vec<_> = full.metrics().iter().map(|m| (m.1, key(&m.2))).collect();
    assert_eq!(want.len(), 6);

    let dir = tempfile::tempdir().unwrap();
    let mut host = MemoryHost::new(dir.path(), &p);
    host.stop_after_metrics = Some(2);
    let mut trainer = Trainer::new(p.clone(), RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Stopped);
    drop(trainer);
    let mut got: Vec<_> = host.metrics().iter().map(|m| (m.1, key(&m.2))).collect();
    let checkpoint = host.checkpoints.last().unwrap().1.clone();
    let mut second = MemoryHost::new(dir.path(), &p);
    let mut trainer =
        Trainer::resume(p, RunOptions::default(), &mut second, Device::Cpu, DType::F32, &checkpoint).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);
    got.extend(second.metrics().iter().map(|m| (m.1, key(&m.2))));
    assert_eq!(got, want);
}

/// One completion scored on its own by the reward model in `dir`: the conversation (prompt, one
/// assistant message) in the reward model's own tokenizer and chat template.
fn rm_score(rm: &RewardModel, dir: &std::path::Path, prompt: &Text, response: &str) -> f64 {
    let tok = TextTokenizer::from_dir(dir).unwrap();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let record = SftRecord::PromptCompletion {
        prompt: prompt.clone(),
        completion: Text::Messages(vec![Message::new("assistant", response)]),
    };
    let ids = encode_sft(&tok, template.as_ref(), &record).unwrap().input_ids;
    f64::from(rm.scores(&[ids]).unwrap().to_vec1::<f32>().unwrap()[0])
}

/// A GRPO stage with a sequence-classification reward model (a fresh head on the sample model,
/// saved as a transformers directory) and rule rewards: the first step's completions, sampled
/// again here from the same seeds and scored one by one through the `RewardModel` API and the
/// judge, give the logged per-function means, and each completion's reward is the reward model's
/// score plus the rule rewards present (a rule the item has no check for adds nothing).
#[test]
fn a_reward_models_scores_are_added_to_the_rule_rewards() {
    let tmp = tempfile::tempdir().unwrap();
    let rm_dir = tmp.path().join("rm");
    RewardModel::from_causal_lm(&sample().join("model"), &Device::Cpu, DType::F32, 11)
        .unwrap()
        .save(&rm_dir, DType::F32)
        .unwrap();
    // One prompt (checks: contains, lowercase): every row of the step is a completion of it.
    let prompts = tmp.path().join("sky.jsonl");
    let line = std::fs::read_to_string(sample().join("grpo.jsonl")).unwrap().lines().next().unwrap().to_string();
    std::fs::write(&prompts, line + "\n").unwrap();
    let (seed, group, max_new) = (7u64, 6usize, 6usize);
    let text = format!(
        "[run]\nseed = {seed}\ncheckpoint_every = 0\nsample_every = 0\n\n[model]\npath = \"{model}\"\n\n\
         [[stage]]\nname = \"grpo\"\nmax_steps = 2\nbatch_size = 1\nlr = 5e-3\nmax_length = 128\n\n\
         [stage.grpo]\nprompts = [\"{prompts}\"]\ngroup_size = {group}\nmax_new_tokens = {max_new}\n\
         reward = [\"contains\", \"must_abstain\"]\nreward_model = \"{rm}\"\n",
        model = sample().join("model").display(),
        prompts = prompts.display(),
        rm = rm_dir.display(),
    );
    let p: Pipeline = toml::from_str(&text).unwrap();
    let mut host = MemoryHost::new(tmp.path(), &p);
    Trainer::new(p, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let logged = host.metrics()[0].2.clone();

    let policy = Model::load(&sample().join("model"), &Device::Cpu, DType::F32).unwrap();
    let tok = TextTokenizer::from_dir(&sample().join("model")).unwrap();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let item = read_suite(&prompts).unwrap().remove(0);
    let Prompt::Messages(messages) = &item.prompt else { panic!("a chat prompt") };
    let prompt = Text::Messages(messages.iter().map(|m| Message::new(&m.role, &m.content)).collect());
    let ids = encode_generation_prompt(&tok, template.as_ref(), &prompt).unwrap();
    let rm = RewardModel::load(&rm_dir, &Device::Cpu, DType::F32).unwrap();
    let judge = Judge::new(&JudgeConfig::default()).unwrap();
    let stops = policy.generation.eos_token_ids.clone();
    let (mut scores, mut contains, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..group {
        let sampling =
            Sampling { temperature: 1.0, top_p: 1.0, seed: completion_seed(seed, 0, 0, k), max_new_tokens: max_new };
        let out = generate(&policy, &ids, &stops, &sampling).unwrap();
        let response = tok.decode(&out.new_token_ids, true).unwrap();
        let score = rm_score(&rm, &rm_dir, &prompt, &response);
        let rule = rule_reward(&judge, &item, "contains", &response).expect("the item has a contains check");
        assert_eq!(rule_reward(&judge, &item, "must_abstain", &response), None);
        scores.push(score);
        contains.push(rule);
        totals.push(score + rule);
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let std = |xs: &[f64]| {
        let m = mean(xs);
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
    };
    assert!(std(&scores) > 1e-4, "the completions get different scores: {scores:?}");
    let close = |key: &str, want: f64| {
        let got = logged[key].as_f64().unwrap_or_else(|| panic!("no {key}: {logged:?}"));
        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{key}: logged {got}, recomputed {want}");
    };
    close("rewards/reward_model/mean", mean(&scores));
    close("rewards/contains/mean", mean(&contains));
    close("reward", mean(&totals));
    close("reward_std", std(&totals));
    assert!(logged.get("rewards/must_abstain/mean").is_none(), "no item has the check: {logged:?}");
}
