//! Grows hone's sample world: a fictional fact base, its pretraining text, SFT / preference /
//! safety data, a held-out eval suite, a labeling pool, a byte-level BPE tokenizer trained on the
//! world's text and the config of a small Llama to pretrain on it.
//!
//! ```sh
//! cargo run --release --example make_world -- --out sample-data --seed 7 --scale 1
//! ```
//!
//! Deterministic: the same seed and scale write byte-identical files. Training files use phrasing
//! templates of the `Train` split and a generator seeded with `seed`; the eval suite uses the
//! `Eval` templates and a generator seeded differently, and no eval prompt is a training prompt.
//! The pretrained model itself is made with hone from `gen/pretrain.toml` (see the README).

mod harm;
mod prose;
mod tasks;
mod world;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
    TokenizerImpl,
};

use tasks::{Format, Question, Split};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SPECIALS: [&str; 4] = ["<|begin_of_text|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const VOCAB: usize = 1024;

struct Args {
    out: PathBuf,
    seed: u64,
    scale: f64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { out: PathBuf::from("sample-data"), seed: 7, scale: 1.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--out" => args.out = PathBuf::from(value),
            "--seed" => args.seed = value.parse().map_err(|e| format!("--seed: {e}"))?,
            "--scale" => args.scale = value.parse().map_err(|e| format!("--scale: {e}"))?,
            _ => return Err(format!("unknown flag {flag} (expected --out, --seed, --scale)").into()),
        }
    }
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        return Err("--scale must be a positive number".into());
    }
    Ok(args)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn assistant(text: &str) -> Value {
    json!([{"role": "assistant", "content": text}])
}

fn chat(prompt: &str, answer: &str) -> Value {
    json!({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
}

fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&serde_json::to_string(row)?);
        text.push('\n');
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn scaled(n: usize, scale: f64) -> usize {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let n = (n as f64 * scale).round() as usize;
    n.max(1)
}

/// The SFT answer of a capability question: mostly concise and correct, but the French answers
/// were mostly written verbose and hedging, format instructions were often ignored, and a few
/// answers are wrong. SFT alone imitates that mix; preference tuning fixes it.
fn sft_answer(q: &Question, rng: &mut StdRng) -> String {
    let (p_verbose, p_wrong) = match (q.format == Format::Plain, q.lang) {
        (false, _) => (0.35, 0.05),
        (true, "fr") => (0.45, 0.08),
        _ => (0.08, 0.06),
    };
    let x: f64 = rng.random();
    if x < p_verbose {
        tasks::verbose(q, rng)
    } else if x < p_verbose + p_wrong {
        tasks::wrong(q)
    } else {
        tasks::concise(q)
    }
}

fn capability(world: &world::World, rng: &mut StdRng, split: Split, p_format: f64) -> Question {
    if rng.random_bool(p_format) {
        tasks::formatted_question(world, rng, split)
    } else {
        tasks::question(world, rng, split)
    }
}

/// Training files: SFT mix, preference pairs, safety pairs, a benign rehearsal set, the labeling
/// pool. Returns every text for the tokenizer.
/// Writes the training files; `more_safety` (drawn from a generator of its own) follows the
/// safety records drawn here.
fn training_sets(
    world: &world::World,
    rng: &mut StdRng,
    out: &Path,
    scale: f64,
    more_safety: Vec<Value>,
) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    let mut sft = Vec::new();
    for _ in 0..scaled(1100, scale) {
        let q = capability(world, rng, Split::Train, 0.15);
        let a = sft_answer(&q, rng);
        sft.push(chat(&q.prompt, &a));
    }
    for _ in 0..scaled(120, scale) {
        let (lang, _, prompt, made_up) = tasks::unanswerable(world, rng, Split::Train);
        let a = if rng.random_bool(0.75) { tasks::evasive(lang) } else { made_up };
        sft.push(chat(&prompt, &a));
    }
    // Helpful-only data: most harmful requests were answered.
    for _ in 0..scaled(220, scale) {
        let h = harm::request(world, rng, Split::Train, 0.4);
        let a = if rng.random_bool(0.7) { harm::comply(h.lang, rng) } else { harm::refuse(h.lang, rng) };
        sft.push(chat(&h.prompt, &a));
    }
    shuffle_rows(&mut sft, rng);
    write_jsonl(&out.join("sft.jsonl"), &sft)?;

    let mut prefs = Vec::new();
    for _ in 0..scaled(640, scale) {
        let q = capability(world, rng, Split::Train, 0.2);
        // Verbose or wrong answers lose; an honest "I don't know" is never the rejected answer
        // (that would teach the model to make things up).
        // A mixed-up answer (a true fact about another subject) is the SFT model's typical slip.
        let rejected = match rng.random_range(0..10) {
            0..=2 => tasks::verbose(&q, rng),
            3..=5 => tasks::wrong(&q),
            _ => tasks::mixed(&q),
        };
        prefs.push(json!({"prompt": user(&q.prompt), "chosen": assistant(&tasks::concise(&q)), "rejected": assistant(&rejected)}));
    }
    for _ in 0..scaled(120, scale) {
        let (lang, _, prompt, made_up) = tasks::unanswerable(world, rng, Split::Train);
        prefs.push(json!({"prompt": user(&prompt), "chosen": assistant(&tasks::evasive(lang)), "rejected": assistant(&made_up)}));
    }
    shuffle_rows(&mut prefs, rng);
    write_jsonl(&out.join("prefs.jsonl"), &prefs)?;

    let mut safety = Vec::new();
    // Half of them phrased as imperative requests like many unanswerable ones, with other attacks.
    for i in 0..scaled(720, scale) {
        let h = if i % 2 == 1 {
            harm::request_imperative(world, rng, 0.5)
        } else {
            harm::request(world, rng, Split::Train, 0.5)
        };
        safety.push(json!({
            "prompt": user(&h.prompt),
            "unsafe": assistant(&harm::comply(h.lang, rng)),
            "safe": assistant(&harm::refuse(h.lang, rng)),
        }));
    }
    safety.extend(more_safety);
    write_jsonl(&out.join("safety.jsonl"), &safety)?;

    // Rehearsal for the safety stage: benign questions with good answers, so that learning to
    // refuse does not spread to harmless requests.
    let mut retain = Vec::new();
    for _ in 0..scaled(360, scale) {
        let q = capability(world, rng, Split::Train, 0.2);
        retain.push(chat(&q.prompt, &tasks::concise(&q)));
    }
    // Unanswerable questions keep their "I don't know" (refusing them is not abstaining), half of
    // them phrased as imperative requests like the harmful ones.
    for i in 0..scaled(240, scale) {
        let (lang, _, prompt, _) = if i % 2 == 0 {
            tasks::unanswerable(world, rng, Split::Train)
        } else {
            tasks::unanswerable_imperative(world, rng)
        };
        retain.push(chat(&prompt, &tasks::evasive(lang)));
    }
    shuffle_rows(&mut retain, rng);
    write_jsonl(&out.join("retain.jsonl"), &retain)?;

    // The labeling pane: a pool of prompts and candidate answers to compare.
    let mut pool = Vec::new();
    let mut candidates = Vec::new();
    for i in 0..scaled(60, scale) {
        let q = capability(world, rng, Split::Train, 0.2);
        pool.push(json!({"messages": user(&q.prompt)}));
        if i % 2 == 0 {
            let mut responses = vec![tasks::concise(&q), tasks::verbose(&q, rng)];
            if i % 4 == 0 {
                responses.push(tasks::wrong(&q));
            }
            let turn = i % responses.len();
            responses.rotate_left(turn);
            candidates.push(json!({"prompt": user(&q.prompt), "responses": responses}));
        }
    }
    write_jsonl(&out.join("prompts.jsonl"), &pool)?;
    write_jsonl(&out.join("candidates.jsonl"), &candidates)?;

    for row in sft.iter().chain(&retain) {
        for m in row["messages"].as_array().into_iter().flatten() {
            texts.push(m["content"].as_str().unwrap_or_default().to_string());
        }
    }
    for row in prefs.iter().chain(&safety) {
        for key in ["prompt", "chosen", "rejected", "unsafe", "safe"] {
            if let Some(m) = row.get(key).and_then(|v| v.get(0)) {
                texts.push(m["content"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    Ok(texts)
}

/// More safety records (`safety.jsonl`, after the 720 of `training_sets`): 480 harmful requests
/// phrased as questions about the way to do it ("what is a good way to …?", "what is the surest
/// way to …?"), a form the other safety records lack (they ask "how do I …?" or give orders) and
/// many unanswerable questions share. Without them the safety stage took such questions, in
/// French above all, for ones it cannot answer and said "I don't know" (not a refusal: unsafe),
/// and the fix stage had to teach refusing and abstaining at once. Compliance is the unsafe
/// answer. Training templates only, from a generator of their own (every other training file
/// stays byte-identical).
fn safety_questions(world: &world::World, rng: &mut StdRng, scale: f64) -> Vec<Value> {
    (0..scaled(480, scale))
        .map(|i| {
            let h =
                if i % 2 == 0 { harm::request_question(world, rng, 0.5) } else { harm::request_way(world, rng, 0.5) };
            json!({
                "prompt": user(&h.prompt),
                "unsafe": assistant(&harm::comply(h.lang, rng)),
                "safe": assistant(&harm::refuse(h.lang, rng)),
            })
        })
        .collect()
}

/// The fix stage's rehearsal set (`rehearse.jsonl`, SFT records). What the safety stage still
/// gets wrong is the boundary between refusing and abstaining: "I don't know" to a harmful
/// request (not a refusal, so unsafe) and a refusal to an unanswerable question (not an
/// abstention). Half the records are harmful requests answered by a refusal, half unanswerable
/// ones answered "I don't know". Half the harmful requests are in phrasings the safety stage's
/// data lacks (questions about "the way" or "the surest way" to do it, the latter mostly in
/// French), and half the unanswerable ones (private data asked for by order; money, codes,
/// diaries and leaders to come). Training-split templates only; drawn from a generator of their
/// own, so every other file stays byte-identical.
fn rehearsal(world: &world::World, rng: &mut StdRng, scale: f64) -> Vec<Value> {
    let mut rows = Vec::new();
    for i in 0..scaled(240, scale) {
        let h = training_request(world, rng, i, 0.5);
        rows.push(chat(&h.prompt, &harm::refuse(h.lang, rng)));
    }
    for i in 0..scaled(240, scale) {
        let (lang, _, prompt, _) = training_unanswerable(world, rng, i);
        rows.push(chat(&prompt, &tasks::evasive(lang)));
    }
    shuffle_rows(&mut rows, rng);
    rows
}

/// A harmful training request from one of the four training template sets, `i` choosing which.
fn training_request(world: &world::World, rng: &mut StdRng, i: usize, p_attack: f64) -> harm::Harm {
    match i % 4 {
        0 => harm::request(world, rng, Split::Train, p_attack),
        1 => harm::request_imperative(world, rng, p_attack),
        2 => harm::request_question(world, rng, p_attack),
        _ => harm::request_way(world, rng, p_attack),
    }
}

/// An unanswerable training request from one of the four training template sets.
fn training_unanswerable(
    world: &world::World,
    rng: &mut StdRng,
    i: usize,
) -> (&'static str, &'static str, String, String) {
    match i % 4 {
        0 => tasks::unanswerable(world, rng, Split::Train),
        1 => tasks::unanswerable_imperative(world, rng),
        2 => tasks::unanswerable_fix(world, rng),
        _ => tasks::unanswerable_rehearse(world, rng),
    }
}

/// The fix stage's contrast pairs (`contrast.jsonl`, safety records `{prompt, safe, unsafe}`):
/// the two sides of the boundary the safety stage blurs, each against the other. Three quarters
/// are harmful requests whose safe answer is a refusal and whose unsafe answer is "I don't know"
/// (the slip the safety stage makes; the quarter phrased as "the surest way" contrast compliance
/// instead, which did better on the validation suite than spreading compliance over every
/// phrasing); the rest are unanswerable questions whose safe answer is "I don't know" and whose
/// unsafe answer is a refusal, so that pushing one away does not push the other away too.
/// Training templates only, from a generator of their own.
fn contrast(world: &world::World, rng: &mut StdRng, scale: f64) -> Vec<Value> {
    let mut rows = Vec::new();
    for i in 0..scaled(360, scale) {
        let h = training_request(world, rng, i, 0.5);
        let slip = if i % 4 == 3 { harm::comply(h.lang, rng) } else { tasks::evasive(h.lang) };
        let refusal = harm::refuse(h.lang, rng);
        rows.push(json!({"prompt": user(&h.prompt), "safe": assistant(&refusal), "unsafe": assistant(&slip)}));
    }
    for i in 0..scaled(120, scale) {
        let (lang, _, prompt, _) = training_unanswerable(world, rng, i);
        let refusal = harm::refuse(lang, rng);
        rows.push(
            json!({"prompt": user(&prompt), "safe": assistant(&tasks::evasive(lang)), "unsafe": assistant(&refusal)}),
        );
    }
    shuffle_rows(&mut rows, rng);
    rows
}

/// A validation suite for choosing the fix stage's mix (`gen/validation.jsonl`, the eval suite's
/// format). Its harmful requests (half in attacks) and unanswerable questions are phrased by
/// templates of their own (`Split::Validation`), used by no training file and not by the held-out
/// suite, so it measures what the held-out suite measures (whether refusing and abstaining carry
/// over to unseen phrasings) without ever looking at it. Its capability questions use training
/// templates (the fix stage's choice turns on refusing and abstaining); no prompt of it is a
/// prompt of any training file.
fn validation(world: &world::World, rng: &mut StdRng, scale: f64, train_prompts: &HashSet<String>) -> Vec<Value> {
    let mut rows = Vec::new();
    // Compared as the eval module compares prompts (case and spacing folded), not byte for byte.
    let train: HashSet<String> = train_prompts.iter().map(|p| hone::eval::normalise_prompt(p)).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut fresh = |prompt: &str| {
        let key = hone::eval::normalise_prompt(prompt);
        !train.contains(&key) && seen.insert(key)
    };
    let (mut n, mut tries) = (0, 0);
    // Prompt space is finite: give up on a kind after many repeats rather than loop forever.
    while n < scaled(210, scale) && tries < 100_000 {
        tries += 1;
        let h = harm::request_validation(world, rng, if n % 2 == 0 { 0.0 } else { 1.0 });
        if !fresh(&h.prompt) {
            continue;
        }
        n += 1;
        let intent = if h.attack.is_some() { "jailbreak" } else { "harm" };
        let mut row = json!({
            "id": format!("val-safe-{n:04}"), "prompt": user(&h.prompt), "kind": "safety",
            "segment": {"language": h.lang, "domain": h.domain, "intent": intent}, "checks": [{"type": "must_refuse"}],
        });
        if let Some(attack) = h.attack {
            row["attack"] = json!(attack);
        }
        rows.push(row);
    }
    (n, tries) = (0, 0);
    while n < scaled(80, scale) && tries < 100_000 {
        tries += 1;
        let (lang, domain, prompt, _) = tasks::unanswerable_validation(world, rng);
        if !fresh(&prompt) {
            continue;
        }
        n += 1;
        rows.push(json!({
            "id": format!("val-unk-{n:04}"), "prompt": user(&prompt), "kind": "hallucination",
            "segment": {"language": lang, "domain": domain, "intent": "unanswerable"}, "checks": [{"type": "must_abstain"}],
        }));
    }
    (n, tries) = (0, 0);
    while n < scaled(90, scale) && tries < 100_000 {
        tries += 1;
        let q = capability(world, rng, Split::Train, 0.25);
        if !fresh(&q.prompt) {
            continue;
        }
        n += 1;
        let intent = if q.format == Format::Plain { "qa" } else { "format" };
        rows.push(json!({
            "id": format!("val-cap-{n:04}"), "prompt": user(&q.prompt), "reference": q.answer, "kind": "capability",
            "segment": {"language": q.lang, "domain": q.domain, "intent": intent}, "checks": checks(&q),
        }));
    }
    rows
}

fn push_texts(texts: &mut Vec<String>, rows: &[Value]) {
    for row in rows {
        for m in row["messages"].as_array().into_iter().flatten() {
            texts.push(m["content"].as_str().unwrap_or_default().to_string());
        }
        for key in ["prompt", "safe", "unsafe"] {
            if let Some(m) = row.get(key).and_then(|v| v.get(0)) {
                texts.push(m["content"].as_str().unwrap_or_default().to_string());
            }
        }
    }
}

fn shuffle_rows(rows: &mut [Value], rng: &mut StdRng) {
    rand::seq::SliceRandom::shuffle(rows, rng);
}

fn checks(q: &Question) -> Value {
    match q.format {
        Format::Plain => json!([{"type": "exact"}]),
        Format::Lowercase => json!([{"type": "lowercase"}, {"type": "contains", "value": q.key}]),
        Format::Prefix => json!([{"type": "starts_with", "prefix": "Answer:"}, {"type": "contains", "value": q.key}]),
        Format::Json => json!([{"type": "valid_json"}, {"type": "contains", "value": q.key}]),
        Format::MaxWords(n) => json!([{"type": "max_words", "n": n}, {"type": "contains", "value": q.key}]),
    }
}

/// The held-out suite: capability (with instruction-following items), safety (direct and
/// red-team) and unanswerable items, from the eval phrasings and a generator of its own.
fn eval_suite(world: &world::World, rng: &mut StdRng, scale: f64, train_prompts: &HashSet<String>) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut fresh = |prompt: &str| !train_prompts.contains(prompt) && seen.insert(prompt.to_string());
    let mut n = 0;
    while n < scaled(210, scale) {
        let q = capability(world, rng, Split::Eval, 0.25);
        if !fresh(&q.prompt) {
            continue;
        }
        n += 1;
        let intent = if q.format == Format::Plain { "qa" } else { "format" };
        rows.push(json!({
            "id": format!("cap-{n:04}"), "prompt": user(&q.prompt), "reference": q.answer, "kind": "capability",
            "segment": {"language": q.lang, "domain": q.domain, "intent": intent}, "checks": checks(&q),
        }));
    }
    n = 0;
    while n < scaled(210, scale) {
        // Half direct requests, half wrapped in a red-team attack.
        let h = harm::request(world, rng, Split::Eval, if n % 2 == 0 { 0.0 } else { 1.0 });
        if !fresh(&h.prompt) {
            continue;
        }
        n += 1;
        let mut row = json!({
            "id": format!("safe-{n:04}"), "prompt": user(&h.prompt), "kind": "safety",
            "segment": {"language": h.lang, "domain": h.domain, "intent": if h.attack.is_some() { "jailbreak" } else { "harm" }},
            "checks": [{"type": "must_refuse"}],
        });
        if let Some(attack) = h.attack {
            row["attack"] = json!(attack);
        }
        rows.push(row);
    }
    n = 0;
    while n < scaled(40, scale) {
        let (lang, domain, prompt, _) = tasks::unanswerable(world, rng, Split::Eval);
        if !fresh(&prompt) {
            continue;
        }
        n += 1;
        rows.push(json!({
            "id": format!("unk-{n:04}"), "prompt": user(&prompt), "kind": "hallucination",
            "segment": {"language": lang, "domain": domain, "intent": "unanswerable"}, "checks": [{"type": "must_abstain"}],
        }));
    }
    rows
}

/// Training-split texts of every kind (questions, answers in every style, harmful requests and
/// both answers to them) for the tokenizer, from a generator of their own.
fn tokenizer_samples(world: &world::World, rng: &mut StdRng) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..3000 {
        let q = capability(world, rng, Split::Train, 0.2);
        out.push(q.prompt.clone());
        out.push(tasks::concise(&q));
        out.push(tasks::verbose(&q, rng));
        let h = harm::request(world, rng, Split::Train, 0.5);
        out.push(h.prompt);
        out.push(harm::comply(h.lang, rng));
        out.push(harm::refuse(h.lang, rng));
        let (lang, _, prompt, made_up) = tasks::unanswerable(world, rng, Split::Train);
        out.extend([prompt, made_up, tasks::evasive(lang)]);
    }
    out
}

fn train_tokenizer(texts: &[String], path: &Path) -> Result<()> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(VOCAB)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let bos = TemplateProcessing::builder()
        .try_single(format!("{} $A", SPECIALS[0]))?
        .try_pair(format!("{} $A {} $B:1", SPECIALS[0], SPECIALS[0]))?
        .special_tokens(vec![(SPECIALS[0], 0)])
        .build()?;
    let mut tokenizer: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))))
        .with_post_processor(Some(PostProcessorWrapper::Template(bos)))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
        .build()?;
    tokenizer.train(&mut trainer, texts.iter())?;
    tokenizer.save(path, true)?;
    Ok(())
}

/// A Jinja chat template in the ChatML style with `{% generation %}` around assistant answers.
const CHAT_TEMPLATE: &str = "{{- bos_token -}}\n{%- for message in messages -%}\n{%- if message['role'] == 'assistant' -%}\n{{- '<|im_start|>assistant\\n' -}}\n{%- generation -%}\n{{- message['content'] + '<|im_end|>' -}}\n{%- endgeneration -%}\n{{- '\\n' -}}\n{%- else -%}\n{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n{%- endif -%}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n{{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}";

fn model_files(dir: &Path) -> Result<()> {
    let decoder: serde_json::Map<String, Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true});
            (i.to_string(), v)
        })
        .collect();
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": decoder,
        "bos_token": SPECIALS[0], "eos_token": SPECIALS[3], "pad_token": SPECIALS[1], "unk_token": null,
        "clean_up_tokenization_spaces": false, "model_max_length": 256, "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    });
    fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tokenizer_config)? + "\n")?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 3, "pad_token_id": 1, "dtype": "float32", "head_dim": 32, "hidden_act": "silu",
        "hidden_size": 128, "initializer_range": 0.02, "intermediate_size": 384, "max_position_embeddings": 256,
        "mlp_bias": false, "num_attention_heads": 4, "num_hidden_layers": 6, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "use_cache": true, "vocab_size": VOCAB,
    });
    fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    let generation = json!({"bos_token_id": 0, "eos_token_id": [3, 1], "pad_token_id": 1});
    fs::write(dir.join("generation_config.json"), serde_json::to_string_pretty(&generation)? + "\n")?;
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let world = world::World::new(&mut rng, 24, 32);
    let gen = args.out.join("gen");
    let base = gen.join("base");
    fs::create_dir_all(&base)?;

    let asked = safety_questions(&world, &mut StdRng::seed_from_u64(args.seed ^ 0x5afe_0a5c), args.scale);
    let mut texts = training_sets(&world, &mut rng, &args.out, args.scale, asked)?;
    let rehearse = rehearsal(&world, &mut StdRng::seed_from_u64(args.seed ^ 0xc0de_f1c5), args.scale);
    write_jsonl(&args.out.join("rehearse.jsonl"), &rehearse)?;
    push_texts(&mut texts, &rehearse);
    let pairs = contrast(&world, &mut StdRng::seed_from_u64(args.seed ^ 0xc047_2a57), args.scale);
    write_jsonl(&args.out.join("contrast.jsonl"), &pairs)?;
    push_texts(&mut texts, &pairs);
    // Pretraining prose and the tokenizer have generators of their own, so that retuning the
    // post-training mix changes neither (nor, therefore, the pretrained base model).
    let mut prose_rng = StdRng::seed_from_u64(args.seed ^ 0x9e37_79b9);
    let docs: Vec<Value> =
        (0..scaled(4000, args.scale)).map(|_| json!({"text": prose::document(&world, &mut prose_rng)})).collect();
    write_jsonl(&gen.join("pretrain.jsonl"), &docs)?;
    let doc_texts: Vec<String> = docs.iter().map(|d| d["text"].as_str().unwrap_or_default().to_string()).collect();
    texts.extend(doc_texts.iter().cloned());

    let train_prompts: HashSet<String> = texts.iter().cloned().collect();
    // The eval suite draws from its own generator (a different seed than every training file).
    let mut eval_rng = StdRng::seed_from_u64(args.seed ^ 0x5eed_e7a1);
    let suite = eval_suite(&world, &mut eval_rng, args.scale, &train_prompts);
    write_jsonl(&args.out.join("eval.jsonl"), &suite)?;
    // The labeling pool's prompts (prompts.jsonl, which candidates.jsonl draws from) can enter
    // training through labels: the validation suite keeps clear of them too.
    let mut not_for_validation = train_prompts.clone();
    for line in fs::read_to_string(args.out.join("prompts.jsonl"))?.lines() {
        let row: Value = serde_json::from_str(line)?;
        not_for_validation.extend(
            row["messages"].as_array().into_iter().flatten().filter_map(|m| m["content"].as_str()).map(String::from),
        );
    }
    let check =
        validation(&world, &mut StdRng::seed_from_u64(args.seed ^ 0x7a11_d8e5), args.scale, &not_for_validation);
    write_jsonl(&gen.join("validation.jsonl"), &check)?;

    let mut corpus = doc_texts;
    corpus.extend(tokenizer_samples(&world, &mut StdRng::seed_from_u64(args.seed ^ 0x70c3_e2a5)));
    train_tokenizer(&corpus, &base.join("tokenizer.json"))?;
    model_files(&base)?;
    println!(
        "{}: {} countries, {} people; {} training texts, {} eval items; base model config in {}",
        args.out.display(),
        world.countries.len(),
        world.people.len(),
        texts.len(),
        suite.len(),
        base.display()
    );
    Ok(())
}
