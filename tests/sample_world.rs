//! The shipped sample world (`sample-data/`, grown by `examples/make_world`): every file reads
//! with hone's own readers, the eval suite is large enough for the gates to mean something, and
//! it is held out: no eval prompt is a prompt of any training file, the labeling pool or the
//! candidates, and none appears in the pretraining text.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hone::config::load_pipeline;
use hone::data::{
    read_jsonl, read_preferences, read_safety, read_sft, read_text_records, SftRecord, Text, TextTokenizer,
};
use hone::eval::{normalise_prompt, read_suite, Kind};
use hone::model::Model;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-data")
}

fn text_of(t: &Text) -> String {
    match t {
        Text::Plain(s) => s.clone(),
        Text::Messages(ms) => ms.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
    }
}

/// Every prompt a training file (or the labeling pane's pool) could put into training, folded as
/// the eval module compares prompts.
fn training_prompts(dir: &Path) -> HashSet<String> {
    training_prompts_verbatim(dir).iter().map(|p| normalise_prompt(p)).collect()
}

/// Every prompt a training file (or the labeling pane's pool) could put into training, as written.
fn training_prompts_verbatim(dir: &Path) -> HashSet<String> {
    let mut prompts = HashSet::new();
    for file in ["sft.jsonl", "retain.jsonl", "rehearse.jsonl"] {
        for rec in read_sft(&dir.join(file)).unwrap() {
            match rec {
                SftRecord::Messages(ms) => {
                    prompts.extend(ms.iter().filter(|m| m.role != "assistant").map(|m| m.content.clone()));
                }
                SftRecord::PromptCompletion { prompt, .. } => {
                    prompts.insert(text_of(&prompt));
                }
            }
        }
    }
    prompts.extend(read_preferences(&dir.join("prefs.jsonl")).unwrap().iter().map(|r| text_of(&r.prompt)));
    for file in ["safety.jsonl", "contrast.jsonl"] {
        prompts.extend(read_safety(&dir.join(file)).unwrap().iter().map(|r| text_of(&r.prompt)));
    }
    for line in read_jsonl(&dir.join("prompts.jsonl")).unwrap() {
        for m in line.value["messages"].as_array().unwrap() {
            prompts.insert(m["content"].as_str().unwrap().to_string());
        }
    }
    for line in read_jsonl(&dir.join("candidates.jsonl")).unwrap() {
        let prompt = &line.value["prompt"];
        let text = prompt.as_str().map(String::from).unwrap_or_else(|| prompt[0]["content"].as_str().unwrap().into());
        prompts.insert(text);
        assert!(line.value["responses"].as_array().unwrap().len() >= 2, "line {}", line.number);
    }
    prompts
}

#[test]
fn the_eval_suite_is_held_out_and_large_enough_for_the_gates() {
    let dir = sample();
    let items = read_suite(&dir.join("eval.jsonl")).unwrap();
    let count = |kind: Kind| items.iter().filter(|i| i.kind == kind).count();
    assert!(count(Kind::Safety) >= 200, "safety + red-team items: {}", count(Kind::Safety));
    assert!(count(Kind::Capability) >= 200, "capability items: {}", count(Kind::Capability));
    assert!(count(Kind::Hallucination) >= 20, "unanswerable items: {}", count(Kind::Hallucination));
    let attacks = items.iter().filter(|i| i.attack.is_some()).count();
    assert!(attacks >= 100, "red-team items: {attacks}");
    assert!(items.iter().any(|i| i.checks.iter().any(hone::eval::Check::is_instruction)));
    // Segments: both languages in every kind.
    let mut languages: HashMap<(Kind, &str), usize> = HashMap::new();
    for item in &items {
        *languages.entry((item.kind, item.segment.language.as_str())).or_default() += 1;
    }
    for kind in [Kind::Capability, Kind::Safety, Kind::Hallucination] {
        for lang in ["en", "fr"] {
            assert!(languages.get(&(kind, lang)).copied().unwrap_or(0) >= 10, "{kind:?} {lang}: {languages:?}");
        }
    }

    let train = training_prompts(&dir);
    assert!(train.len() > 500, "{} training prompts", train.len());
    let pretrain: Vec<String> = read_text_records(&dir.join("gen/pretrain.jsonl"))
        .unwrap()
        .into_iter()
        .map(|(_, t)| t.to_lowercase())
        .collect();
    let mut seen = HashSet::new();
    for item in &items {
        let prompt = normalise_prompt(&item.prompt.text());
        assert!(seen.insert(prompt.clone()), "{}: the prompt appears twice in the suite", item.id);
        assert!(!train.contains(&prompt), "{}: eval prompt is a training prompt: {prompt}", item.id);
        assert!(!pretrain.iter().any(|t| t.contains(&prompt)), "{}: eval prompt is in the pretraining text", item.id);
    }
}

#[test]
fn the_sample_pipeline_and_model_load_and_the_model_speaks_the_generated_tokenizer() {
    let dir = sample();
    let loaded = load_pipeline(&dir.join("pipeline.toml")).unwrap();
    let names: Vec<&str> = loaded.pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sft", "dpo", "safety", "safety-fix"]);
    let sequence: Vec<&str> = loaded.pipeline.sequence().map(|s| s.name.as_str()).collect();
    assert_eq!(sequence, ["sft", "dpo", "safety"], "safety-fix runs only in its [[iterate]] rounds");
    assert_eq!(loaded.pipeline.eval.as_ref().unwrap().baseline, "sft");
    assert!(loaded.pref_sources[1].iter().any(|s| s.is_run_relative() && s.path() == Path::new("labels.jsonl")));
    let model = Model::load(&dir.join("model"), &Device::Cpu, DType::F32).unwrap();
    let tok = TextTokenizer::from_dir(&dir.join("model")).unwrap();
    model.check_tokenizer_len(tok.len()).unwrap();
    let parameters: usize = model.parameters().iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    assert!((1_000_000..=3_000_000).contains(&parameters), "{parameters} parameters");
    // The shipped model was pretrained from the generator's base directory: same tokenizer.
    let shipped = std::fs::read(dir.join("model/tokenizer.json")).unwrap();
    assert_eq!(shipped, std::fs::read(dir.join("gen/base/tokenizer.json")).unwrap());
    assert!(tok.chat_template().unwrap().contains("{%- generation -%}"));
    // The pretraining pipeline starts from scratch on the prose.
    let pretrain = load_pipeline(&dir.join("gen/pretrain.toml")).unwrap();
    assert_eq!(pretrain.pipeline.model.init, hone::config::ModelInit::Scratch);
    assert!(pretrain.pipeline.stages[0].lm.is_some());
}

/// A prompt's phrasing with the world's names masked: every capitalised word that does not open
/// a sentence (countries, capitals, rivers, people) becomes `X`, so prompts of one template about
/// different subjects share a skeleton. Lower-case names (animals, words to translate) stay, which
/// can only hide a shared template, never invent one.
fn skeleton(prompt: &str) -> String {
    let mut out = Vec::new();
    let mut opens_sentence = true;
    for word in prompt.split_whitespace() {
        let capitalised = word.chars().next().is_some_and(char::is_uppercase);
        out.push(if capitalised && !opens_sentence { "X".to_string() } else { word.to_lowercase() });
        opens_sentence = word.ends_with(['.', ':', '?', '!']);
    }
    out.join(" ")
}

/// The validation suite the fix stage's mix is chosen on (`gen/validation.jsonl`) is made from
/// the training side: none of its prompts is a training prompt or a held-out eval prompt, so
/// tuning on it neither scores training data nor looks at the held-out suite. Its harmful and
/// unanswerable requests are phrased by templates of their own (neither training's nor the held-out
/// suite's), so that it measures how refusing and abstaining carry over to unseen phrasings.
#[test]
fn the_validation_suite_is_apart_from_training_and_from_the_held_out_suite() {
    let dir = sample();
    let validation = read_suite(&dir.join("gen/validation.jsonl")).unwrap();
    let count = |kind: Kind| validation.iter().filter(|i| i.kind == kind).count();
    assert!(count(Kind::Safety) >= 100, "safety items: {}", count(Kind::Safety));
    assert!(count(Kind::Hallucination) >= 40, "unanswerable items: {}", count(Kind::Hallucination));
    assert!(count(Kind::Capability) >= 50, "capability items: {}", count(Kind::Capability));
    let train = training_prompts(&dir);
    let suite = read_suite(&dir.join("eval.jsonl")).unwrap();
    let held_out: HashSet<String> = suite.iter().map(|i| normalise_prompt(&i.prompt.text())).collect();
    for item in &validation {
        let prompt = normalise_prompt(&item.prompt.text());
        assert!(!train.contains(&prompt), "{}: validation prompt is a training prompt: {prompt}", item.id);
        assert!(!held_out.contains(&prompt), "{}: validation prompt is a held-out prompt: {prompt}", item.id);
    }
    let mut phrasings: HashSet<String> = training_prompts_verbatim(&dir).iter().map(|p| skeleton(p)).collect();
    phrasings.extend(suite.iter().map(|i| skeleton(&i.prompt.text())));
    let mut own = HashSet::new();
    for item in validation.iter().filter(|i| i.kind != Kind::Capability) {
        let phrasing = skeleton(&item.prompt.text());
        assert!(!phrasings.contains(&phrasing), "{}: a training or held-out phrasing: {phrasing}", item.id);
        own.insert(phrasing);
    }
    assert!(own.len() >= 20, "{} phrasings of harmful and unanswerable requests", own.len());
}
