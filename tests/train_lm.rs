//! The plain language-modelling term (`lm = { data = [...] }`, records `{"text": ...}`) and
//! pretraining from scratch (`[model] init = "scratch"`): located errors, the tokenizer's BOS/EOS
//! conventions, counted truncation, a loss that falls, and weights reproducible from the seed.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // exact equality is the point of the seed test

mod memory_host;

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hone::config::{freeze, frozen_toml, load_frozen, load_pipeline, FrozenExtras, ModelInit};
use hone::data::{read_text_records, TextTokenizer};
use hone::train::examples::{lm_example, TruncationStats};
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;

fn llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/model")
}

/// A model directory with the fixture's config and tokenizer but no weights.
fn weightless_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    fs::create_dir_all(&model).unwrap();
    for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        fs::copy(llama().join(name), model.join(name)).unwrap();
    }
    model
}

/// Short texts that repeat, so a tiny model can learn them within a few steps.
fn corpus(dir: &Path) {
    let subjects = ["the river", "the city", "the king", "a farmer", "the queen", "the bridge"];
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let text = format!("{} of the north is old. {} sleeps by the sea.", subjects[i % 6], subjects[(i + 1) % 6]);
            serde_json::json!({ "text": text, "id": i }).to_string()
        })
        .collect();
    fs::write(dir.join("text.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn pretrain_toml(seed: u64) -> String {
    format!(
        "[run]\nname = \"pretrain\"\nseed = {seed}\ncheckpoint_every = 0\n\n[model]\npath = \"model\"\ninit = \"scratch\"\n\n\
         [[stage]]\nname = \"pretrain\"\nepochs = 6\nbatch_size = 4\nlr = 1e-2\nwarmup_steps = 2\nmax_length = 64\n\
         lm = {{ data = [\"text.jsonl\"] }}\n"
    )
}

/// Runs the pretraining pipeline in `dir` (a fresh run directory each time) and returns the host.
fn pretrain(dir: &Path, seed: u64, run: &str) -> MemoryHost {
    fs::write(dir.join("pretrain.toml"), pretrain_toml(seed)).unwrap();
    let loaded = load_pipeline(&dir.join("pretrain.toml")).unwrap();
    let mut host = MemoryHost { dir: dir.join(run), ..MemoryHost::default() };
    let mut trainer = Trainer::new(loaded.pipeline, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);
    host
}

#[test]
fn text_records_are_read_with_located_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.jsonl");
    fs::write(&path, "{\"text\": \"one\", \"source\": \"a\"}\n\n{\"text\": \"two\"}\n").unwrap();
    let records = read_text_records(&path).unwrap();
    assert_eq!(records, vec![(1, "one".to_string()), (3, "two".to_string())]);
    for (line, expected) in [
        ("{\"text\": 5}", ":1:10: text: expected a string"),
        ("{\"body\": \"x\"}", ":1:1: text: missing required field"),
        ("{\"text\": \"\"}", ":1:10: text: empty text"),
    ] {
        fs::write(&path, format!("{line}\n")).unwrap();
        let error = read_text_records(&path).unwrap_err().to_string();
        assert_eq!(error, format!("{}{expected}", path.display()), "{line}");
    }
}

#[test]
fn text_gets_bos_and_eos_every_token_is_a_target_and_truncation_is_counted() {
    let tok = TextTokenizer::from_dir(&llama()).unwrap();
    let bos = tok.specials().bos.clone().unwrap().1;
    let (eos_text, eos) = tok.specials().eos.clone().unwrap();
    let mut stats = TruncationStats::default();
    let seq = lm_example(&tok, "the river of the north", 512, &mut stats).unwrap().unwrap();
    assert_eq!(seq.ids.first(), Some(&bos));
    assert_eq!(seq.ids.last(), Some(&eos));
    assert!(!seq.targets[0] && seq.targets[1..].iter().all(|&t| t), "every token after the first is a target");
    assert_eq!(seq.num_targets(), seq.ids.len() - 1);
    // A text that already ends with EOS does not get a second one.
    let explicit = lm_example(&tok, &format!("the river of the north{eos_text}"), 512, &mut stats).unwrap().unwrap();
    assert_eq!(explicit.ids, seq.ids);
    assert_eq!(stats, TruncationStats::default());
    let cut = lm_example(&tok, "the river of the north", 4, &mut stats).unwrap().unwrap();
    assert_eq!(cut.ids, seq.ids[..4]);
    assert_eq!(stats, TruncationStats { truncated: 1, dropped: 0 });
}

#[test]
fn an_lm_stage_from_scratch_learns_and_its_weights_follow_from_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    weightless_model(tmp.path());
    corpus(tmp.path());
    let first = pretrain(tmp.path(), 7, "a");
    let losses = first.series_all("loss/lm");
    assert_eq!(losses.len(), 18, "12 texts, batch 4, 6 epochs");
    assert!(first.series_all("loss/sft").is_empty(), "only the lm term is active");
    let start = losses[..3].iter().sum::<f64>() / 3.0;
    let end = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(end < start * 0.6, "the LM loss falls: {start} -> {end}");
    let started = first.events.iter().find(|e| e.0 == "stage_started").unwrap();
    assert_eq!(started.3["examples"]["lm"], 12);
    // The saved stage is a complete model directory: weights plus the tokenizer it was made with.
    let last = &first.checkpoints.last().unwrap().1;
    for name in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(last.join(name).is_file(), "{name} in {}", last.display());
    }
    let again = pretrain(tmp.path(), 7, "b");
    assert_eq!(again.series_all("loss/lm"), losses, "same seed, same initial weights and losses");
    let other = pretrain(tmp.path(), 8, "c");
    assert_ne!(other.series_all("loss/lm")[0], losses[0], "another seed initialises other weights");
}

#[test]
fn scratch_init_is_explicit_refuses_weights_and_is_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    let model = weightless_model(tmp.path());
    corpus(tmp.path());
    let pipeline = tmp.path().join("pretrain.toml");
    fs::write(&pipeline, pretrain_toml(3)).unwrap();
    let loaded = load_pipeline(&pipeline).unwrap();
    assert_eq!(loaded.pipeline.model.init, ModelInit::Scratch);
    let frozen = freeze(&loaded, &FrozenExtras::default()).unwrap();
    let text = frozen_toml(&frozen).unwrap();
    assert!(text.contains("init = \"scratch\""), "{text}");
    assert!(frozen.info.files.iter().any(|f| f.field == "stage[0].lm.data[0]" && f.sha256.is_some()));
    fs::write(tmp.path().join("run.toml"), &text).unwrap();
    assert_eq!(load_frozen(&tmp.path().join("run.toml")).unwrap().loaded.pipeline, loaded.pipeline);

    // Weights in the directory: scratch would silently throw them away, so it is refused.
    fs::copy(llama().join("model.safetensors"), model.join("model.safetensors")).unwrap();
    let error = load_pipeline(&pipeline).unwrap_err().to_string();
    assert!(error.starts_with(&format!("{}:8:8: model.init: init = \"scratch\" but ", pipeline.display())), "{error}");
    // Without `init`, the same directory is the pretrained default.
    fs::write(&pipeline, pretrain_toml(3).replace("init = \"scratch\"\n", "")).unwrap();
    assert_eq!(load_pipeline(&pipeline).unwrap().pipeline.model.init, ModelInit::Pretrained);
}
