//! The frozen config of a run (`run.toml` in its directory): the resolved pipeline with every
//! default written out and every path absolute, plus a `[frozen]` table of input file hashes, the
//! hone version and the CLI overrides. Resuming a run compares it with the config at hand.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::ConfigError;
use super::load::{parse_located, read_source, DataSource, LoadedPipeline};
use super::types::{EvalSettings, Iterate, LabelSettings, ModelSettings, Pipeline, RunSettings, Stage};
use super::validate::{show_f64, validate};

/// What a run adds to its pipeline when freezing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrozenExtras {
    /// hone's version string (`env!("CARGO_PKG_VERSION")`, possibly with a git hash).
    pub hone_version: String,
    /// The command-line overrides applied on top of the pipeline file, as the user gave them.
    pub overrides: Vec<String>,
}

/// The `[frozen]` table of a run's `run.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenInfo {
    /// The version of hone that started the run.
    pub hone_version: String,
    /// The pipeline file the run was started from (absolute).
    pub source: PathBuf,
    /// The command-line overrides applied on top of it.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Every input file: data files of every stage, the red-team files, and the model's
    /// `config.json` and `tokenizer.json`.
    #[serde(default, rename = "file")]
    pub files: Vec<FrozenFile>,
    /// The exact command of each stage on the TRL engine, as the worker starts it (filled in
    /// by whoever creates the run: only `run::trl` knows the launcher and the spec's file).
    #[serde(default, rename = "trl_launch", skip_serializing_if = "Vec::is_empty")]
    pub trl_launches: Vec<FrozenLaunch>,
}

/// The launcher command of one TRL stage (`[[frozen.trl_launch]]` in `run.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenLaunch {
    /// The stage.
    pub stage: String,
    /// The command line, shell-quoted, environment first.
    pub command: String,
}

/// One input file of a run and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenFile {
    /// The pipeline field naming it, e.g. `stage[0].sft.data[1]` (`model.path` for the model's
    /// files).
    pub field: String,
    /// The file: absolute, or relative to the run directory when `run_relative`.
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of its contents; absent for run-relative files (they grow while
    /// the run goes on; the trainer checks the consumed prefix itself) and for model files that
    /// do not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Whether the file lives in the run directory (a growing label file).
    #[serde(default, skip_serializing_if = "is_false")]
    pub run_relative: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// A resolved pipeline together with its `[frozen]` record: what `run.toml` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Frozen {
    /// The pipeline, as loaded (its `source_path` is `info.source`).
    pub loaded: LoadedPipeline,
    /// Hashes, version and overrides.
    pub info: FrozenInfo,
}

/// `run.toml`'s layout: a pipeline plus `[frozen]`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunToml {
    run: RunSettings,
    model: ModelSettings,
    #[serde(rename = "stage")]
    stages: Vec<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eval: Option<EvalSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engine: Option<super::engine::EngineSettings>,
    label: Option<LabelSettings>,
    #[serde(default, rename = "iterate", skip_serializing_if = "Vec::is_empty")]
    iterates: Vec<Iterate>,
    frozen: FrozenInfo,
}

/// The lower-case hex SHA-256 of a file's contents, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(crate::hex::encode(&hasher.finalize()))
}

/// Hashes every input file of `loaded` and records `extras`: the [`Frozen`] form of a pipeline
/// about to run (or about to be compared with a run's `run.toml`).
pub fn freeze(loaded: &LoadedPipeline, extras: &FrozenExtras) -> Result<Frozen, ConfigError> {
    let mut hashes: HashMap<PathBuf, String> = HashMap::new();
    let mut hash = |path: &Path| -> Result<String, ConfigError> {
        if let Some(known) = hashes.get(path) {
            return Ok(known.clone());
        }
        let digest = sha256_file(path)?;
        hashes.insert(path.to_owned(), digest.clone());
        Ok(digest)
    };
    let mut files = Vec::new();
    for name in ["config.json", "tokenizer.json"] {
        let path = loaded.pipeline.model.path.join(name);
        let sha256 = if path.is_file() { Some(hash(&path)?) } else { None };
        files.push(FrozenFile { field: "model.path".into(), path, sha256, run_relative: false });
    }
    if let Some(dir) = &loaded.pipeline.model.adapter {
        // A changed starting adapter refuses a resume like any other changed input.
        for name in [crate::model::lora::ADAPTER_CONFIG, crate::model::lora::ADAPTER_WEIGHTS] {
            let path = dir.join(name);
            let sha256 = Some(hash(&path)?);
            files.push(FrozenFile { field: "model.adapter".into(), path, sha256, run_relative: false });
        }
    }
    for (i, stage) in loaded.pipeline.stages.iter().enumerate() {
        // `None` for a run-relative file: recorded, never hashed.
        let mut add = |field: String, path: &Path, hashed: bool| -> Result<(), ConfigError> {
            let sha256 = if hashed { Some(hash(path)?) } else { None };
            files.push(FrozenFile { field, path: path.to_owned(), sha256, run_relative: !hashed });
            Ok(())
        };
        if let Some(sft) = &stage.sft {
            for (j, path) in sft.data.iter().enumerate() {
                add(format!("stage[{i}].sft.data[{j}]"), path, true)?;
            }
        }
        for (j, source) in loaded.pref_sources.get(i).into_iter().flatten().enumerate() {
            add(format!("stage[{i}].pref.data[{j}]"), source.path(), !source.is_run_relative())?;
        }
        if let Some(lm) = &stage.lm {
            for (j, path) in lm.data.iter().enumerate() {
                add(format!("stage[{i}].lm.data[{j}]"), path, true)?;
            }
        }
        if let Some(grpo) = &stage.grpo {
            for (j, path) in grpo.prompts.iter().enumerate() {
                add(format!("stage[{i}].grpo.prompts[{j}]"), path, true)?;
            }
        }
        if let Some(rm) = &stage.rm {
            for (j, path) in rm.data.iter().enumerate() {
                add(format!("stage[{i}].rm.data[{j}]"), path, true)?;
            }
        }
        if let Some(safety) = &stage.safety {
            for (j, path) in safety.data.iter().enumerate() {
                add(format!("stage[{i}].safety.data[{j}]"), path, true)?;
            }
            if let Some(redteam) = safety.adaptive.as_ref().and_then(|a| a.redteam.as_ref()) {
                add(format!("stage[{i}].safety.adaptive.redteam"), redteam, true)?;
            }
        }
    }
    if let Some(eval) = &loaded.pipeline.eval {
        let sha256 = Some(hash(&eval.suite)?);
        files.push(FrozenFile { field: "eval.suite".into(), path: eval.suite.clone(), sha256, run_relative: false });
    }
    let info = FrozenInfo {
        hone_version: extras.hone_version.clone(),
        source: loaded.source_path.clone(),
        overrides: extras.overrides.clone(),
        files,
        trl_launches: Vec::new(),
    };
    Ok(Frozen { loaded: loaded.clone(), info })
}

/// The text of `run.toml`: the fully resolved pipeline (every default explicit, absolute paths)
/// followed by the `[frozen]` table. Fails only on a path that is not valid UTF-8.
pub fn frozen_toml(frozen: &Frozen) -> Result<String, ConfigError> {
    let pipeline = &frozen.loaded.pipeline;
    let document = RunToml {
        run: pipeline.run.clone(),
        model: pipeline.model.clone(),
        stages: pipeline.stages.clone(),
        eval: pipeline.eval.clone(),
        engine: pipeline.engine.clone(),
        label: pipeline.label.clone(),
        iterates: pipeline.iterates.clone(),
        frozen: frozen.info.clone(),
    };
    let body = toml::to_string(&document)
        .map_err(|e| ConfigError::File { path: frozen.info.source.clone(), message: format!("cannot freeze: {e}") })?;
    Ok(format!(
        "# The frozen config of this run, written by hone {}: the pipeline as it ran, every default\n\
         # explicit and every path absolute. Resuming compares it with the current config.\n\n{body}",
        frozen.info.hone_version
    ))
}

/// Reads a run's `run.toml` (as written by [`frozen_toml`]) back.
///
/// Relative `pref.data` paths are the run-relative label files; nothing is checked on disk
/// (freeze the result again and [`diff_frozen`] to see whether the inputs changed).
pub fn load_frozen(path: &Path) -> Result<Frozen, ConfigError> {
    let source = read_source(path)?;
    let (document, locator) = parse_located::<RunToml>(path, &source)?;
    let pipeline = Pipeline {
        run: document.run,
        model: document.model,
        stages: document.stages,
        eval: document.eval,
        engine: document.engine,
        label: document.label,
        iterates: document.iterates,
    };
    validate(&pipeline, &locator)?;
    let pref_sources = pipeline
        .stages
        .iter()
        .map(|stage| {
            let files = stage.pref.as_ref().map(|p| p.data.as_slice()).unwrap_or_default();
            files
                .iter()
                .map(|file| {
                    if file.is_relative() {
                        DataSource::RunRelative(file.clone())
                    } else {
                        DataSource::File(file.clone())
                    }
                })
                .collect()
        })
        .collect();
    let loaded = LoadedPipeline { pipeline, source_path: document.frozen.source.clone(), pref_sources };
    Ok(Frozen { loaded, info: document.frozen })
}

/// What differs between two frozen configs that would change what a run computes, one line per
/// difference (`stage[0].lr: 1e-4 → 2e-4`, `stage[0].sft.data[0]: /d/sft.jsonl changed (sha256
/// 3f2a…  → 9bc1…)`); empty when a run may resume.
///
/// Compared: every pipeline setting and path, and the hashes of files present in both. Not
/// compared: run-relative label files (they grow; the trainer checks the consumed prefix), the
/// hone version, the overrides as text (their effect shows as settings) and the pipeline file's
/// own path.
pub fn diff_frozen(old: &Frozen, new: &Frozen) -> Vec<String> {
    let mut out = Vec::new();
    match (serde_json::to_value(&old.loaded.pipeline), serde_json::to_value(&new.loaded.pipeline)) {
        (Ok(a), Ok(b)) => diff_values("", &a, &b, &mut out),
        (Err(e), _) | (_, Err(e)) => out.push(format!("cannot compare the pipelines: {e}")),
    }
    let before: HashMap<&Path, &FrozenFile> =
        old.info.files.iter().filter(|f| !f.run_relative).map(|f| (f.path.as_path(), f)).collect();
    let mut reported = Vec::new();
    for file in new.info.files.iter().filter(|f| !f.run_relative) {
        let Some(was) = before.get(file.path.as_path()) else { continue };
        if was.sha256 != file.sha256 && !reported.contains(&&file.path) {
            reported.push(&file.path);
            out.push(format!(
                "{}: {} changed (sha256 {} → {})",
                file.field,
                file.path.display(),
                short_hash(was.sha256.as_deref()),
                short_hash(file.sha256.as_deref())
            ));
        }
    }
    out
}

fn short_hash(hash: Option<&str>) -> String {
    hash.map_or_else(|| "(missing)".into(), |h| format!("{}…", h.get(..12).unwrap_or(h)))
}

fn show_value(value: &Value) -> String {
    match value {
        Value::Null => "(unset)".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), show_f64),
        other => other.to_string(),
    }
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                diff_values(&join(key), value, b.get(key).unwrap_or(&Value::Null), out);
            }
            for (key, value) in b.iter().filter(|(key, _)| !a.contains_key(*key)) {
                diff_values(&join(key), &Value::Null, value, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let name = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => diff_values(&name, x, y, out),
                    (Some(_), None) => out.push(format!("{name}: removed")),
                    (None, Some(y)) => match y.get("name") {
                        Some(added) => out.push(format!("{name}: added (name = {})", show_value(added))),
                        None => out.push(format!("{name}: added ({})", show_value(y))),
                    },
                    (None, None) => {}
                }
            }
        }
        _ if old != new => {
            out.push(format!("{path}: {} → {}", show_value(old), show_value(new)));
        }
        _ => {}
    }
}
