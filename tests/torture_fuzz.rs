//! Structured fuzzing of every parser that reads untrusted input, on stable Rust with proptest:
//! dataset JSONL of every format (SFT messages and prompt/completion, preference, safety, text),
//! eval suites, overrides, labels and candidates, the pipeline TOML, `tokenizer_config.json`,
//! `config.json`, chat templates, the control socket's request lines and checkpoint manifests.
//!
//! Inputs are the corpus in `tests/fixtures/fuzz/<target>/` mutated (bit flips, dictionary
//! tokens, deletions, duplications, splices, truncations, number swaps) or generated from scratch
//! (JSON values whose keys and strings are the format's own). The oracle: no panic, and every
//! rejection is located: `path:line:col: ` where the input has lines (the line within the file),
//! otherwise the file and the field. Short mode (CI): 256 cases per target; `HONE_TORTURE=long`:
//! 100,000 (`HONE_TORTURE_N` sets any other count). Each target prints its execution count.
#![allow(clippy::unwrap_used)]

mod torture;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hone::data::labels::LabelLog;
use hone::data::{label_store, read_records_with_lines, ChatTemplate, Message, TextTokenizer};
use hone::model::ModelConfig;
use hone::run::control::{ControlServer, Reply};
use hone::run::{list_checkpoints, Checkpoint, RunDir, WorkerLock};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use regex::Regex;
use serde_json::Value as Json;

/// Cases per target.
fn cases() -> u32 {
    torture::scale(256, 100_000) as u32
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every file of `tests/fixtures/fuzz/<target>/` plus `extra` fixtures, as seeds.
fn corpus(target: &str, extra: &[&str]) -> Vec<Vec<u8>> {
    let dir = fixtures().join("fuzz").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.extend(extra.iter().map(|p| fixtures().join(p)));
    paths.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).collect()
}

/// Tokens every format's mutations draw from: JSON/TOML syntax, extreme numbers, escapes, invalid
/// UTF-8, control and bidi characters, the private-use sentinels of `{% generation %}` tracking.
const COMMON_TOKENS: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "=",
    "null",
    "true",
    "false",
    "-1",
    "0",
    "-0",
    "1e999",
    "-1e999",
    "18446744073709551616",
    "9007199254740993",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0.1",
    "1e-400",
    "\\u0000",
    "\\ud800",
    "\\udfff\\ud800",
    "\\n",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\u{feff}",
    "\u{1b}]52;c;AAAA\u{7}",
    "\u{202e}",
    "\u{e000}",
    "\u{e001}",
    "\u{10ffff}",
    "é",
    "😀",
    "\u{0301}",
    "\"\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "]]]]]]]]]]]]]]]]",
    "\"a\":",
    "\"id\": \"x\", ",
    "#",
    "'''",
    "\"\"\"",
    "[[stage]]",
    "[run]",
    "[model]",
    "[eval]",
    "1979-05-27T07:32:00Z",
    "0x10",
    "+1",
];

/// Bytes that are not UTF-8 on their own.
const BAD_BYTES: &[u8] = &[0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xf0, 0xf8, 0xfe, 0xff, 0x00];

/// One mutation: an operation and three choices it reads as it likes.
type Op = (u8, Index, Index, Index);

fn mutate(seeds: &[Vec<u8>], dict: &[&str], seed: Index, ops: &[Op]) -> Vec<u8> {
    const MAX: usize = 48 * 1024;
    let mut b = seeds[seed.index(seeds.len())].clone();
    for (op, x, y, z) in ops {
        let n = b.len();
        match op % 9 {
            0 if n > 0 => {
                let i = x.index(n);
                b[i] ^= 1 << y.index(8);
            }
            1 => {
                let token = if y.index(3) == 0 {
                    COMMON_TOKENS[z.index(COMMON_TOKENS.len())]
                } else {
                    dict[z.index(dict.len())]
                };
                let i = x.index(n + 1);
                b.splice(i..i, token.bytes());
            }
            2 if n > 0 => {
                let i = x.index(n);
                let len = (y.index(32) + 1).min(n - i);
                b.drain(i..i + len);
            }
            3 if n > 0 => {
                let i = x.index(n);
                let len = (y.index(256) + 1).min(n - i);
                let chunk = b[i..i + len].to_vec();
                let j = z.index(n + 1);
                b.splice(j..j, chunk);
            }
            4 => b.truncate(x.index(n + 1)),
            5 => {
                let other = &seeds[z.index(seeds.len())];
                if !other.is_empty() {
                    let i = x.index(other.len());
                    let len = (y.index(512) + 1).min(other.len() - i);
                    let at = y.index(n + 1);
                    b.splice(at..at, other[i..i + len].iter().copied());
                }
            }
            6 if n > 0 => {
                let i = x.index(n);
                b[i] = BAD_BYTES[y.index(BAD_BYTES.len())];
            }
            7 if n > 0 => {
                // Replace the run of digits at or after a position with an extreme number.
                let start = x.index(n);
                if let Some(off) = b[start..].iter().position(u8::is_ascii_digit) {
                    let s = start + off;
                    let e = b[s..].iter().position(|c| !c.is_ascii_digit()).map_or(b.len(), |l| s + l);
                    let numbers = ["0", "-1", "1e999", "18446744073709551616", "4294967296", "-0.0", "99999999999"];
                    b.splice(s..e, numbers[y.index(numbers.len())].bytes());
                }
            }
            8 if n > 0 => {
                // Swap a quoted word for a dictionary word (keeps the JSON valid more often).
                let start = x.index(n);
                if let Some(off) = b[start..].iter().position(|&c| c == b'"') {
                    let s = start + off + 1;
                    if let Some(len) = b.get(s..).and_then(|r| r.iter().position(|&c| c == b'"')) {
                        b.splice(s..s + len, dict[z.index(dict.len())].bytes());
                    }
                }
            }
            _ => {}
        }
        b.truncate(MAX);
    }
    b
}

/// Mutated seeds.
fn mutated(seeds: Vec<Vec<u8>>, dict: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    let ops = prop::collection::vec((any::<u8>(), any::<Index>(), any::<Index>(), any::<Index>()), 0..8);
    (any::<Index>(), ops).prop_map(move |(seed, ops)| mutate(&seeds, dict, seed, &ops)).boxed()
}

/// Strings that JSON values draw from, beside arbitrary ones.
const STRINGS: &[&str] = &[
    "",
    "user",
    "assistant",
    "system",
    "tool",
    "preference",
    "tie",
    "skip",
    "undo",
    "eval_pairwise",
    "capability",
    "safety",
    "hallucination",
    "exact",
    "contains",
    "regex",
    "numeric",
    "must_refuse",
    "must_abstain",
    "cite_sources",
    "lowercase",
    "max_words",
    "json",
    "prefix",
    "candidate",
    "baseline",
    "status",
    "pause",
    "resume",
    "stop",
    "skip_stage",
    "set_lambda",
    "checkpoint_now",
    "generate_candidates",
    "pref",
    "safe",
    "(a+)+$",
    "[",
    "\u{e000}",
    "\u{1b}[2J",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "llama",
    "qwen2",
    "silu",
    "float32",
    "bfloat16",
    "<|endoftext|>",
    "<|im_start|>",
    "{{ messages }}",
    "{% for m in messages %}",
    "model.safetensors",
    "../x",
    "/etc/passwd",
    "a/b",
    "step-000001",
];

/// Arbitrary JSON whose object keys are `keys` (the format's own) and whose strings often are.
fn json_value(keys: &'static [&'static str]) -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Json::Number)),
        prop::sample::select(STRINGS).prop_map(Json::from),
        prop::sample::select(keys).prop_map(Json::from),
        ".{0,12}".prop_map(Json::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::vec((prop::sample::select(keys), inner), 0..7)
                .prop_map(|kv| Json::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
    .boxed()
}

/// Files of 1 to 4 lines, each a JSON object with the format's keys (or, rarely, any value).
fn json_lines(keys: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    let object = prop::collection::vec((prop::sample::select(keys), json_value(keys)), 0..8)
        .prop_map(|kv| Json::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    let line = prop_oneof![9 => object, 1 => json_value(keys)];
    prop::collection::vec(line, 1..4)
        .prop_map(|lines| lines.iter().map(Json::to_string).collect::<Vec<_>>().join("\n").into_bytes())
        .boxed()
}

/// Mutated seeds (three parts in four) or generated JSON lines.
fn jsonl_inputs(seeds: Vec<Vec<u8>>, keys: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![3 => mutated(seeds, keys), 1 => json_lines(keys)].boxed()
}

/// Runs `check` on `cases()` inputs of `strategy`, failing on a panic or an `Err` (the
/// oracle's complaint), and prints the count of executions.
fn fuzz(target: &str, strategy: BoxedStrategy<Vec<u8>>, check: impl Fn(&[u8]) -> Result<(), String>) {
    let executions = AtomicUsize::new(0);
    let rejections = AtomicUsize::new(0);
    let start = Instant::now();
    let config = Config { cases: cases(), failure_persistence: None, max_shrink_iters: 2048, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |input| {
        executions.fetch_add(1, Ordering::Relaxed);
        match check(&input) {
            Ok(()) => Ok(()),
            Err(e) if e.starts_with("rejected: ") => {
                rejections.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(format!("{e}\n    input: {:?}", String::from_utf8_lossy(&input)))),
        }
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!("{target}: minimal failing case: {reason}"),
        Err(e) => panic!("{target}: {e}"),
    }
    torture::figures(
        &format!("fuzz {target}"),
        &[
            ("executions", executions.load(Ordering::Relaxed).to_string()),
            ("rejected_with_location", rejections.load(Ordering::Relaxed).to_string()),
            ("panics", "0".into()),
            ("seconds", format!("{:.1}", start.elapsed().as_secs_f64())),
        ],
    );
}

/// Lines of `input` as a reader counts them (a last line without newline counts).
fn line_count(input: &[u8]) -> usize {
    input.split(|&b| b == b'\n').count()
}

/// Checks that `message` is `path:line:col: ...` with a line of the input and a column ≥ 1; `Ok`
/// carries the `rejected: ` marker the runner counts.
fn located(message: &str, path: &Path, lines: usize) -> Result<(), String> {
    let re = Regex::new(&format!(r"^{}:(\d+):(\d+): \S", regex::escape(&path.display().to_string()))).unwrap();
    let Some(c) = re.captures(message) else {
        return Err(format!("unlocated error (expected {}:LINE:COL: ...): {message}", path.display()));
    };
    let (line, col): (usize, usize) = (c[1].parse().unwrap(), c[2].parse().unwrap());
    if line == 0 || line > lines || col == 0 {
        return Err(format!("error located outside the input ({lines} lines): {message}"));
    }
    Err(format!("rejected: {message}"))
}

/// A temporary directory, in memory where the system has one (each case writes a file: on a
/// loaded disk that write, not the parser, would dominate the time).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Dataset files: a temp dir and the file the inputs go to.
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn scratch(name: &str) -> Scratch {
    let dir = scratch_dir();
    let path = dir.path().join(name);
    Scratch { _dir: dir, path }
}

const RECORD_KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "unsafe",
    "safe",
    "text",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "type",
    "id",
    "images",
    "score",
];

/// A dataset format: `read` returns the error's text, if any.
fn dataset(target: &str, extra: &[&str], read: fn(&Path) -> Result<(), String>) {
    let s = scratch(&format!("{target}.jsonl"));
    fuzz(target, jsonl_inputs(corpus(target, extra), RECORD_KEYS), |input| {
        std::fs::write(&s.path, input).unwrap();
        let lines = line_count(input);
        let detected = read_records_with_lines(&s.path).map(|_| ()).map_err(|e| e.to_string());
        if let Err(e) = detected {
            located(&e, &s.path, lines).or_else(only_located)?;
        }
        match read(&s.path) {
            Ok(()) => Ok(()),
            Err(e) => located(&e, &s.path, lines),
        }
    });
}

/// Turns the oracle's `rejected:` verdict into success (for a check that is not the last).
fn only_located(e: String) -> Result<(), String> {
    if e.starts_with("rejected: ") {
        Ok(())
    } else {
        Err(e)
    }
}

#[test]
fn fuzz_sft_records() {
    dataset("sft", &["llama/sft.jsonl", "qwen2/sft.jsonl"], |p| {
        hone::data::read_sft(p).map(|_| ()).map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_preference_records() {
    dataset("preference", &["llama/prefs.jsonl", "llama/prefs_plain.jsonl"], |p| {
        hone::data::read_preferences(p).map(|_| ()).map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_safety_records() {
    dataset("safety", &[], |p| hone::data::read_safety(p).map(|_| ()).map_err(|e| e.to_string()));
}

#[test]
fn fuzz_text_records() {
    dataset("text", &[], |p| hone::data::read_text_records(p).map(|_| ()).map_err(|e| e.to_string()));
}

const SUITE_KEYS: &[&str] = &[
    "id",
    "prompt",
    "reference",
    "kind",
    "segment",
    "language",
    "domain",
    "intent",
    "checks",
    "type",
    "value",
    "pattern",
    "attack",
    "sources",
    "role",
    "content",
    "passed",
    "by",
    "note",
    "ts",
    "flags",
];

#[test]
fn fuzz_eval_suites() {
    let s = scratch("suite.jsonl");
    fuzz("eval_suite", jsonl_inputs(corpus("eval_suite", &["eval/tiny_suite.jsonl"]), SUITE_KEYS), |input| {
        std::fs::write(&s.path, input).unwrap();
        match hone::eval::read_suite(&s.path) {
            Ok(_) => Ok(()),
            Err(e) => located(&e.to_string(), &s.path, line_count(input)),
        }
    });
}

#[test]
fn fuzz_overrides() {
    let s = scratch("overrides.jsonl");
    fuzz("overrides", jsonl_inputs(corpus("overrides", &[]), SUITE_KEYS), |input| {
        std::fs::write(&s.path, input).unwrap();
        match hone::eval::read_overrides(&s.path) {
            Ok(_) => Ok(()),
            Err(e) => located(&e.to_string(), &s.path, line_count(input)),
        }
    });
}

const LABEL_KEYS: &[&str] = &[
    "id",
    "kind",
    "prompt",
    "chosen",
    "rejected",
    "item",
    "labeler",
    "supersedes",
    "left",
    "right",
    "order",
    "source",
    "ts",
    "pair_hash",
    "edited",
    "candidate",
    "baseline",
    "winner",
    "role",
    "content",
    "responses",
    "step",
];

#[test]
fn fuzz_labels_file() {
    let s = scratch("labels.jsonl");
    fuzz("labels", jsonl_inputs(corpus("labels", &[]), LABEL_KEYS), |input| {
        std::fs::write(&s.path, input).unwrap();
        let mut log = LabelLog::new(&s.path);
        let update = log.read_new(None).map_err(|e| format!("reading the labels file failed: {e}"))?;
        // Only complete lines are read: the line count is that of the text before the last '\n'.
        let complete = input.iter().rposition(|&b| b == b'\n').map_or(0, |end| line_count(&input[..end]));
        if update.lines != complete {
            return Err(format!("read {} lines of {complete} complete ones", update.lines));
        }
        let _ = log.resolve();
        let _ = log.judgements();
        let _ = label_store::agreement(&log.judgements());
        // The eval module reads the same file for blind pairwise judgements: it ignores what is
        // not its own, and never fails on what the data module reports as a located problem.
        if let Err(e) = hone::eval::read_pairwise_labels(&s.path, "dpo", "sft") {
            located(&e.to_string(), &s.path, line_count(input)).or_else(only_located)?;
        }
        for problem in &update.problems {
            located(&problem.message, &s.path, line_count(input)).or_else(only_located)?;
        }
        if update.problems.is_empty() {
            Ok(())
        } else {
            Err("rejected: problems reported".into())
        }
    });
}

#[test]
fn fuzz_candidates_file() {
    let s = scratch("candidates.jsonl");
    fuzz("candidates", jsonl_inputs(corpus("candidates", &[]), LABEL_KEYS), |input| {
        std::fs::write(&s.path, input).unwrap();
        match label_store::read_candidates(&s.path) {
            Ok(_) => Ok(()),
            Err(e) => located(&e.to_string(), &s.path, line_count(input)),
        }
    });
}

const TOML_TOKENS: &[&str] = &[
    "[[stage]]\n",
    "[run]\n",
    "[model]\n",
    "[eval]\n",
    "[stage.pref]\n",
    "name = ",
    "epochs = ",
    "max_steps = ",
    "lambda = ",
    "beta = ",
    "lr = ",
    "seed = ",
    "path = ",
    "data = ",
    "loss = ",
    "\"ipo\"",
    "\"sigmoid\"",
    "adaptive = { target = 0.1 }",
    "weight = ",
    "on_chosen = true",
    "sft = { data = [] }",
    "pref.data = [\"x\"]",
    "= 1",
    "= \"",
    "= [",
    "= {",
    "}\n",
    "]\n",
    "'",
    "'''",
    "\"\"\"",
    "inf",
    "nan",
    "-inf",
    "1e308",
    "1e309",
    "0.0",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "1979-05-27",
    "07:32:00",
    "true",
    "false",
    ".",
    "a.b.c = 1\n",
    "\n",
    "# comment\n",
    "\\u0000",
    "\\U0010FFFF",
    "\"labels.jsonl\"",
    "\"../data/sft.jsonl\"",
    "\"../model\"",
    "\"/dev/null\"",
    "init = \"scratch\"",
    "device = \"cuda:99\"",
    "dtype = \"f8\"",
];

#[test]
fn fuzz_pipeline_toml() {
    // The fixture's config tree (a model dir and data files) beside the fuzzed pipeline, so that
    // path resolution and file checks run too.
    let dir = scratch_dir();
    for sub in ["model", "data"] {
        let to = dir.path().join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(fixtures().join("config").join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("valid")).unwrap();
    let path = dir.path().join("valid/pipeline.toml");
    let seeds = corpus("pipeline", &["sample/pipeline.toml"]);
    fuzz("pipeline", mutated(seeds, TOML_TOKENS), |input| {
        std::fs::write(&path, input).unwrap();
        match hone::config::load_pipeline(&path) {
            Ok(_) => Ok(()),
            Err(e) => located(&e.to_string(), &path, line_count(input)),
        }
    });
}

const CONFIG_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "dtype",
    "torch_dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "content",
    "chat_template",
    "name",
    "template",
    "added_tokens_decoder",
    "special",
];

/// Whether `input` is one JSON document (as serde_json reads a config file).
fn parses_as_json(input: &[u8]) -> bool {
    serde_json::from_slice::<Json>(input).is_ok()
}

/// A config-file error: `path:line:col: ` when the file is not JSON; otherwise one that names
/// the file (the field is in the message).
fn config_located(message: &str, path: &Path, input: &[u8], prefix: &str) -> Result<(), String> {
    if !parses_as_json(input) {
        let stripped = message.strip_prefix(prefix).unwrap_or(message);
        return located(stripped, path, line_count(input)).map_err(|e| e.replacen(stripped, message, 1));
    }
    if message.contains(&path.display().to_string()) {
        Err(format!("rejected: {message}"))
    } else {
        Err(format!("the error does not name {}: {message}", path.display()))
    }
}

#[test]
fn fuzz_model_config_json() {
    let dir = scratch_dir();
    let path = dir.path().join("config.json");
    let seeds = corpus("model_config", &["sample/model/config.json"]);
    let strategy = prop_oneof![3 => mutated(seeds, CONFIG_KEYS), 1 => json_lines(CONFIG_KEYS)].boxed();
    fuzz("model_config", strategy, |input| {
        std::fs::write(&path, input).unwrap();
        match ModelConfig::from_dir(dir.path()) {
            Ok(config) => {
                let _ = hone::model::GenerationConfig::from_dir(dir.path(), &config);
                Ok(())
            }
            Err(e) => config_located(&e.to_string(), &path, input, ""),
        }
    });
}

#[test]
fn fuzz_tokenizer_config_json() {
    let dir = scratch_dir();
    std::fs::copy(fixtures().join("llama/model/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let path = dir.path().join("tokenizer_config.json");
    let seeds = corpus("tokenizer_config", &["qwen2/model/tokenizer_config.json"]);
    let strategy = prop_oneof![3 => mutated(seeds, CONFIG_KEYS), 1 => json_lines(CONFIG_KEYS)].boxed();
    let conversation =
        [Message::new("system", "be brief"), Message::new("user", "hi"), Message::new("assistant", "yo")];
    fuzz("tokenizer_config", strategy, |input| {
        std::fs::write(&path, input).unwrap();
        match TextTokenizer::from_dir(dir.path()) {
            Ok(tok) => {
                if let Ok(Some(template)) = ChatTemplate::for_tokenizer(&tok) {
                    let _ = template.assistant_spans(&conversation);
                }
                Ok(())
            }
            Err(e) => config_located(&e.to_string(), &path, input, "tokenizer "),
        }
    });
}

const JINJA_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{%-",
    "-%}",
    "{#",
    "#}",
    "{% generation %}",
    "{% endgeneration %}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "{% else %}",
    "{% endif %}",
    "{{ raise_exception('no') }}",
    "{{ messages[0]['content'] }}",
    "{{ messages[-1].content }}",
    "{{ message | tojson }}",
    "| tojson",
    "| trim",
    "{{ strftime_now('%Y-%m-%d') }}",
    "{% for i in range(1000000) %}",
    "{{ loop.index }}",
    "{{ bos_token }}",
    "{{ eos_token }}",
    "{% set ns = namespace(x=1) %}",
    "{{ ns.x }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ 'a' * 100000 }}",
    "{{ 1 / 0 }}",
    "{{ none.x }}",
    "{{ message.content.split('a') }}",
    "{{ tools }}",
    "{{ '\u{e000}' }}",
    "\u{e000}",
    "\u{e001}",
    "message['role']",
    "'assistant'",
    "'user'",
    "==",
    "!=",
    " and ",
    " not ",
    "[::-1]",
    "{{ messages | length }}",
    "{% raw %}",
    "{% endraw %}",
    "{% include 'x' %}",
    "{% extends 'y' %}",
];

#[test]
fn fuzz_chat_templates() {
    let seeds = corpus("chat_template", &[]);
    let conversations = [
        vec![Message::new("user", "hi"), Message::new("assistant", "hello")],
        vec![
            Message::new("system", "be brief"),
            Message::new("user", "2+2?"),
            Message::new("assistant", "4"),
            Message::new("user", "and 3+3?"),
            Message::new("assistant", "6\u{1b}]52;c;AA\u{7}"),
        ],
    ];
    fuzz("chat_template", mutated(seeds, JINJA_TOKENS), |input| {
        let source = String::from_utf8_lossy(input);
        let template = match ChatTemplate::new(&source, Some("<s>"), Some("</s>")) {
            Ok(t) => t,
            Err(e) => return template_error(&e.to_string(), &source),
        };
        for conversation in &conversations {
            let _ = template.render(conversation, true);
            if let Err(e) = template.assistant_spans(conversation) {
                template_error(&e.to_string(), &source).or_else(only_located)?;
            }
        }
        Ok(())
    });
}

/// A template that does not compile is rejected with the line of the template (minijinja's
/// `(in template:LINE)`), or names the reserved character or the unbalanced generation block.
fn template_error(message: &str, source: &str) -> Result<(), String> {
    let lines = source.split('\n').count();
    let re = Regex::new(r"\(in [^:()]+:(\d+)\)").unwrap();
    if let Some(c) = re.captures(message) {
        let line: usize = c[1].parse().unwrap();
        // minijinja counts the rewritten source's lines, which match the original's.
        if line == 0 || line > lines + 1 {
            return Err(format!("template error on line {line} of a {lines}-line template: {message}"));
        }
        return Err(format!("rejected: {message}"));
    }
    let named = ["reserved character", "generation", "raised an exception", "assistant turn", "no assistant"];
    if named.iter().any(|n| message.contains(n)) {
        return Err(format!("rejected: {message}"));
    }
    Err(format!("template error without a line: {message}"))
}

const CONTROL_KEYS: &[&str] = &["cmd", "term", "value", "count", "stage"];

#[test]
fn fuzz_control_request_lines() {
    use std::io::{BufRead, BufReader, Write};
    let tmp = scratch_dir();
    let run = RunDir::create(tmp.path(), "fuzz").unwrap();
    run.write_frozen_config("").unwrap();
    let lock = WorkerLock::acquire(&run).unwrap();
    let server = ControlServer::start(&lock).unwrap();
    let inbox = server.inbox();
    let stream = UnixStream::connect(server.path()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let seeds = corpus("control", &[])
        .into_iter()
        .flat_map(|f| f.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect();
    let strategy = prop_oneof![3 => mutated(seeds, CONTROL_KEYS), 1 => json_lines(CONTROL_KEYS)].boxed();
    let mut exchange = move |line: &[u8]| -> Result<Reply, String> {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        writer.write_all(&bytes).map_err(|e| format!("send: {e}"))?;
        let mut reply = Vec::new();
        reader.read_until(b'\n', &mut reply).map_err(|e| format!("no reply: {e}"))?;
        serde_json::from_slice(&reply)
            .map_err(|e| format!("malformed reply {:?}: {e}", String::from_utf8_lossy(&reply)))
    };
    let exchange = std::cell::RefCell::new(&mut exchange);
    fuzz("control", strategy, |input| {
        // One request per line: the fuzzed bytes are one line.
        let line: Vec<u8> = input.iter().copied().filter(|&b| b != b'\n').collect();
        let reply = (exchange.borrow_mut())(&line)?;
        while inbox.next(None).is_some() {}
        let result = if reply.ok {
            if reply.error.is_some() {
                return Err(format!("an accepted request with an error: {reply:?}"));
            }
            Ok(())
        } else {
            let error = reply.error.clone().unwrap_or_default();
            let json = serde_json::from_slice::<Json>(&line).is_ok();
            if error.is_empty() {
                Err(format!("a refusal without a reason for {:?}", String::from_utf8_lossy(&line)))
            } else if !json && !error.starts_with("malformed request: ") {
                // A request is one line, so the reason is the location: serde's message names the
                // column of a syntax error, or the field or variant that is wrong.
                Err(format!("a line that is not JSON is not called malformed: {error}"))
            } else {
                Err(format!("rejected: {error}"))
            }
        };
        // The connection survives every refusal.
        let status = (exchange.borrow_mut())(b"{\"cmd\":\"status\"}")?;
        if !status.ok || status.status.is_none() {
            return Err(format!("status after {:?} failed: {status:?}", String::from_utf8_lossy(&line)));
        }
        result
    });
    drop(server);
}

const MANIFEST_KEYS: &[&str] = &["step", "files", "name", "size", "sha256", "meta", "loss"];

#[test]
fn fuzz_checkpoint_manifests() {
    let tmp = scratch_dir();
    let run = RunDir::create(tmp.path(), "fuzz").unwrap();
    run.write_frozen_config("").unwrap();
    let ck = run.checkpoint_dir(1);
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("model.safetensors"), [0u8; 16]).unwrap();
    std::fs::write(ck.join("trainer_state.json"), b"{}").unwrap();
    let manifest = ck.join("MANIFEST.json");
    let strategy =
        prop_oneof![3 => mutated(corpus("manifest", &[]), MANIFEST_KEYS), 1 => json_lines(MANIFEST_KEYS)].boxed();
    fuzz("manifest", strategy, |input| {
        std::fs::write(&manifest, input).unwrap();
        let listed = list_checkpoints(&run).map_err(|e| format!("listing failed: {e}"))?;
        match Checkpoint::open(&ck) {
            Ok(c) => {
                if listed.len() != 1 {
                    return Err(format!("an openable checkpoint is not listed: {listed:?}"));
                }
                match c.verify() {
                    Ok(()) => Ok(()),
                    Err(e) => manifest_error(&e.to_string(), &ck),
                }
            }
            Err(e) => {
                if !listed.is_empty() {
                    return Err(format!("a checkpoint that does not open is listed ({e})"));
                }
                manifest_error(&e.to_string(), &ck)
            }
        }
    });
}

/// A manifest error names the checkpoint (or its file) and, for a manifest that does not parse,
/// the line and column.
fn manifest_error(message: &str, dir: &Path) -> Result<(), String> {
    if !message.contains(&dir.display().to_string()) {
        return Err(format!("the error does not name the checkpoint: {message}"));
    }
    // serde skips unknown fields without checking them, so "unparsable" is the manifest's word.
    if message.contains("unparsable manifest") && !Regex::new(r"line \d+ column \d+").unwrap().is_match(message) {
        return Err(format!("an unparsable manifest's error has no line and column: {message}"));
    }
    Err(format!("rejected: {message}"))
}
