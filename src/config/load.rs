//! Reading a pipeline file: TOML → typed [`Pipeline`] with located errors, validation, and
//! resolution of every relative path against the pipeline file's directory.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::ConfigError;
use super::locate::{line_column, FieldPath, Node};
use super::types::{ModelInit, ModelSettings, Pipeline, TargetModules};
use super::validate::validate;
use crate::located::Located;
use crate::model::lora::{AdapterConfig, LoraSpec, Targets};

/// Where one preference file of a stage is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// An existing file, by absolute path.
    File(PathBuf),
    /// A file of the run directory, relative to it (e.g. the labeling pane's `labels.jsonl`); it
    /// may not exist yet and may grow while the run goes on.
    RunRelative(PathBuf),
}

impl DataSource {
    /// The path as stored: absolute for [`DataSource::File`], relative to the run directory for
    /// [`DataSource::RunRelative`].
    pub fn path(&self) -> &Path {
        match self {
            Self::File(path) | Self::RunRelative(path) => path,
        }
    }

    /// Whether the file lives in the run directory.
    pub fn is_run_relative(&self) -> bool {
        matches!(self, Self::RunRelative(_))
    }

    /// The file's path for a run whose directory is `run_dir`.
    pub fn resolve(&self, run_dir: &Path) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::RunRelative(path) => run_dir.join(path),
        }
    }
}

/// A validated pipeline whose paths are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedPipeline {
    /// The pipeline. Every path is absolute, except run-relative preference files, which stay
    /// as written (see `pref_sources`).
    pub pipeline: Pipeline,
    /// The absolute path of the pipeline file it was read from.
    pub source_path: PathBuf,
    /// For each stage, in order, where each of its `pref.data` files is (empty for a stage
    /// without a preference term).
    pub pref_sources: Vec<Vec<DataSource>>,
}

/// The labels file every run keeps in its directory (written by the labeling pane). A `pref.data`
/// entry of exactly this name that does not exist beside the pipeline is that file.
pub const RUN_LABELS_FILE: &str = "labels.jsonl";

/// Reads, validates and resolves the pipeline file at `path`.
///
/// Relative paths (`model.path`, data files, `pref.reference`, `adaptive.redteam`, `label.candidates`)
/// resolve against the directory of the pipeline file. A `pref.data` entry `labels.jsonl` that
/// does not exist there is the run's own labels file ([`DataSource::RunRelative`]), created or
/// appended in the run directory; any other path that does not exist is an error (so that a
/// mistyped `prefz.jsonl` is not silently taken for an empty label file).
pub fn load_pipeline(path: &Path) -> Result<LoadedPipeline, ConfigError> {
    let source = read_source(path)?;
    let (pipeline, locator) = parse_located::<Pipeline>(path, &source)?;
    validate(&pipeline, &locator)?;
    let source_path = fs::canonicalize(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let base = source_path.parent().map(Path::to_path_buf).unwrap_or_default();
    if base.to_str().is_none() {
        return Err(ConfigError::File {
            path: path.to_owned(),
            message: "the pipeline file's directory is not valid UTF-8 (paths are recorded in TOML)".into(),
        });
    }
    resolve(pipeline, &base, source_path, &locator)
}

/// Reads a whole file as UTF-8; bytes that are not UTF-8 are a syntax error at their line and
/// column (not an unlocated read error).
pub(crate) fn read_source(path: &Path) -> Result<String, ConfigError> {
    let bytes = fs::read(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = std::str::from_utf8(&e.as_bytes()[..e.utf8_error().valid_up_to()]).unwrap_or_default();
        let (line, column) = super::locate::line_column(valid, valid.len());
        ConfigError::Located(Located::new(path, line, column, "invalid UTF-8"))
    })
}

/// Locates errors in one source file.
pub(crate) struct Locator<'a> {
    path: &'a Path,
    source: &'a str,
    tree: Option<Node>,
}

impl Locator<'_> {
    /// An error about `field`, located at its value (or its key, or the nearest enclosing
    /// table the file has).
    pub(crate) fn error(&self, field: &FieldPath, message: impl Into<String>) -> ConfigError {
        let offset = self.tree.as_ref().and_then(|tree| tree.offset_of(field)).unwrap_or(0);
        let (line, column) = line_column(self.source, offset);
        ConfigError::Located(Located::new(self.path, line, column, message).in_field(field.to_string()))
    }

    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let (line, column) = line_column(self.source, span.start);
        // toml's messages may span lines ("invalid string\nexpected `\"`"); keep one line.
        let mut message =
            error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        if message.is_empty() {
            // toml says nothing for some bytes (a control character in a comment).
            message = "invalid TOML syntax here".into();
        }
        let field = self.tree.as_ref().and_then(|tree| tree.path_within(&span)).filter(|f| !f.0.is_empty());
        let at = Located::new(self.path, line, column, message);
        ConfigError::Located(match field {
            Some(field) => at.in_field(field.to_string()),
            None => at,
        })
    }
}

/// Deserializes `source` into `T`, locating any error, and returns a locator for later ones.
pub(crate) fn parse_located<'a, T: DeserializeOwned>(
    path: &'a Path,
    source: &'a str,
) -> Result<(T, Locator<'a>), ConfigError> {
    let mut locator = Locator { path, source, tree: None };
    let parsed = toml::from_str::<T>(source);
    // The span tree exists whenever the file is valid TOML; without it (a syntax error) errors
    // still carry a line and column.
    locator.tree = Node::parse(source);
    match parsed {
        Ok(value) => Ok((value, locator)),
        Err(error) => Err(locator.toml_error(&error)),
    }
}

/// `base/relative` (or `relative` when absolute) without `.` components, and with the leading
/// `..` components of `relative` applied to `base` (exact, since `base` is canonical).
fn absolute(base: &Path, relative: &Path) -> PathBuf {
    let mut out = base.to_path_buf();
    let mut rest = relative.components().peekable();
    while rest.peek() == Some(&Component::ParentDir) && out.parent().is_some() {
        rest.next();
        out.pop();
    }
    out.join(rest.collect::<PathBuf>()).components().collect()
}

/// Resolves `relative` to an existing file or directory, or says which field names a missing one.
fn existing(
    locator: &Locator<'_>,
    field: &FieldPath,
    base: &Path,
    relative: &Path,
    want_dir: bool,
) -> Result<PathBuf, ConfigError> {
    if relative.as_os_str().is_empty() {
        return Err(locator.error(field, "empty path"));
    }
    let path = absolute(base, relative);
    match (path.exists(), want_dir, path.is_dir()) {
        (false, true, _) => Err(locator.error(field, format!("no such directory: {}", path.display()))),
        (false, false, _) => Err(locator.error(field, format!("no such file: {}", path.display()))),
        (true, true, false) => Err(locator.error(field, format!("not a directory: {}", path.display()))),
        (true, false, true) => Err(locator.error(field, format!("is a directory, not a file: {}", path.display()))),
        _ => Ok(path),
    }
}

/// Whether a model directory holds weight files (`*.safetensors`).
fn has_weights(dir: &Path) -> bool {
    fs::read_dir(dir)
        .is_ok_and(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors")))
}

/// `init = "scratch"` needs a directory without weights, so that a trained model is never
/// silently replaced by noise. (Missing weights without it are the model loader's error: `hone
/// check` and config tests work on directories holding only `config.json` and a tokenizer.)
fn check_model_init(model: &ModelSettings, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    if model.init == ModelInit::Scratch && has_weights(&model.path) {
        return Err(locator.error(
            &at.key("init"),
            format!(
                "init = \"scratch\" but {} holds weights (*.safetensors); remove `init` to start from them",
                model.path.display()
            ),
        ));
    }
    Ok(())
}

/// A reward model reads the ids the policy's tokenizer makes, so both directories must hold the
/// same tokenizer (compared by [`crate::data::same_tokenizer`]).
fn same_tokenizer(locator: &Locator<'_>, at: &FieldPath, policy: &Path, other: &Path) -> Result<(), ConfigError> {
    let same = crate::data::same_tokenizer(policy, other).map_err(|e| locator.error(at, e))?;
    if !same {
        return Err(locator.error(
            at,
            format!(
                "{}'s tokenizer differs from the policy's ({}): a reward model must read the ids the policy's tokenizer makes",
                other.display(),
                policy.display()
            ),
        ));
    }
    Ok(())
}

/// A reranker must be a sequence-classification model (a scalar head), not a causal LM.
fn check_reward_model_dir(locator: &Locator<'_>, at: &FieldPath, dir: &Path) -> Result<(), ConfigError> {
    let path = dir.join("config.json");
    let text = fs::read_to_string(&path).map_err(|e| locator.error(at, format!("{}: {e}", path.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| locator.error(at, format!("{}: {e}", path.display())))?;
    let arch = json.get("architectures").and_then(|a| a.get(0)).and_then(serde_json::Value::as_str).unwrap_or("(none)");
    if !arch.ends_with("ForSequenceClassification") {
        return Err(locator.error(
            at,
            format!(
                "{} is a {arch}, not a reward model (a *ForSequenceClassification directory, e.g. what a stage with \
                 [stage.rm] exports)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

impl super::types::LoraSettings {
    /// The adapter settings this table describes.
    pub fn spec(&self) -> LoraSpec {
        let targets = match &self.target_modules {
            TargetModules::One(s) if s == "all-linear" => Targets::AllLinear,
            TargetModules::One(s) => Targets::Regex(s.clone()),
            TargetModules::List(names) => Targets::Names(names.clone()),
        };
        LoraSpec { r: self.r, alpha: self.alpha, dropout: self.dropout, targets, rslora: false }
    }
}

/// The `lora` table's values, the adapter directory's config, and their agreement; LoRA on a
/// `scratch` model is refused (the frozen base would be noise). Returns the adapter directory's
/// settings when there is one.
fn check_lora(
    model: &ModelSettings,
    at: &FieldPath,
    locator: &Locator<'_>,
) -> Result<Option<AdapterConfig>, ConfigError> {
    if let Some(lora) = &model.lora {
        let at = at.key("lora");
        if lora.r == 0 {
            return Err(locator.error(&at.key("r"), "must be at least 1"));
        }
        if !lora.alpha.is_finite() {
            return Err(locator.error(&at.key("alpha"), "must be a finite number"));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(locator.error(&at.key("dropout"), "must be in [0, 1)"));
        }
        lora.spec().targets.check().map_err(|m| locator.error(&at.key("target_modules"), m))?;
    }
    let scratch = model.init == ModelInit::Scratch;
    if scratch && (model.lora.is_some() || model.adapter.is_some()) {
        let field = if model.adapter.is_some() { "adapter" } else { "lora" };
        return Err(locator.error(
            &at.key(field),
            "an adapter trains on a frozen pretrained base; with init = \"scratch\" the base would be noise",
        ));
    }
    let Some(dir) = &model.adapter else { return Ok(None) };
    let config = AdapterConfig::read(dir).map_err(|e| locator.error(&at.key("adapter"), e.to_string()))?;
    let Some(lora) = &model.lora else { return Ok(Some(config)) };
    let (ours, theirs) = (lora.spec(), &config.spec);
    let file = config.path.display();
    let disagree = |field: &str, ours: String, theirs: String| {
        locator.error(&at.key("lora").key(field), format!("{ours}, but {file} says {theirs}"))
    };
    if ours.r != theirs.r {
        return Err(disagree("r", ours.r.to_string(), format!("r = {}", theirs.r)));
    }
    if (ours.alpha - theirs.alpha).abs() > 0.0 || theirs.rslora {
        return Err(disagree(
            "alpha",
            ours.alpha.to_string(),
            format!("lora_alpha = {} (use_rslora = {})", theirs.alpha, theirs.rslora),
        ));
    }
    if (ours.dropout - theirs.dropout).abs() > 0.0 {
        return Err(disagree("dropout", ours.dropout.to_string(), format!("lora_dropout = {}", theirs.dropout)));
    }
    // Targets agree when they pick the same projections of this model.
    let layers = crate::model::ModelConfig::from_dir(&model.path).map_or(0, |c| c.num_hidden_layers);
    let modules = crate::model::lora::projection_modules(layers);
    let pick = |t: &Targets| modules.iter().filter(|m| t.matches(m)).cloned().collect::<Vec<_>>();
    let same = if layers == 0 { ours.targets == theirs.targets } else { pick(&ours.targets) == pick(&theirs.targets) };
    if !same {
        return Err(disagree(
            "target_modules",
            ours.targets.to_json().to_string(),
            format!("target_modules = {}", theirs.targets.to_json()),
        ));
    }
    Ok(Some(config))
}

/// LoRA dropout, from the `lora` table or the adapter directory, is refused with gradient
/// checkpointing: the recompute in the backward pass would draw no dropout mask, so the
/// gradients would be those of another forward.
fn check_dropout_with_checkpointing(
    model: &ModelSettings,
    adapter: Option<&AdapterConfig>,
    at: &FieldPath,
    locator: &Locator<'_>,
) -> Result<(), ConfigError> {
    const WHY: &str = "LoRA dropout with [run] gradient_checkpointing = true is not supported yet";
    if model.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
        return Err(locator.error(&at.key("lora").key("dropout"), format!("{WHY}; use dropout = 0.0")));
    }
    if let Some(config) = adapter.filter(|c| c.spec.dropout > 0.0) {
        return Err(locator.error(
            &at.key("adapter"),
            format!(
                "{}: lora_dropout = {}: {WHY}; turn checkpointing off, or set lora_dropout to 0 in that file",
                config.path.display(),
                config.spec.dropout
            ),
        ));
    }
    Ok(())
}

fn resolve(
    mut pipeline: Pipeline,
    base: &Path,
    source_path: PathBuf,
    locator: &Locator<'_>,
) -> Result<LoadedPipeline, ConfigError> {
    let root = FieldPath::default();
    pipeline.model.path = existing(locator, &root.key("model").key("path"), base, &pipeline.model.path, true)?;
    check_model_init(&pipeline.model, &root.key("model"), locator)?;
    if let Some(adapter) = &mut pipeline.model.adapter {
        *adapter = existing(locator, &root.key("model").key("adapter"), base, adapter, true)?;
    }
    let adapter = check_lora(&pipeline.model, &root.key("model"), locator)?;
    if pipeline.run.gradient_checkpointing {
        check_dropout_with_checkpointing(&pipeline.model, adapter.as_ref(), &root.key("model"), locator)?;
    }
    super::engine::check_lora(&pipeline, locator)?;
    let mut pref_sources = Vec::with_capacity(pipeline.stages.len());
    for (i, stage) in pipeline.stages.iter_mut().enumerate() {
        let at = root.key("stage").index(i);
        if let Some(sft) = &mut stage.sft {
            let at = at.key("sft").key("data");
            for (j, file) in sft.data.iter_mut().enumerate() {
                *file = existing(locator, &at.index(j), base, file, false)?;
            }
        }
        if let Some(lm) = &mut stage.lm {
            let at = at.key("lm").key("data");
            for (j, file) in lm.data.iter_mut().enumerate() {
                *file = existing(locator, &at.index(j), base, file, false)?;
            }
        }
        if let Some(rm) = &mut stage.rm {
            let at = at.key("rm");
            for (j, file) in rm.data.iter_mut().enumerate() {
                *file = existing(locator, &at.key("data").index(j), base, file, false)?;
            }
            if let Some(model) = &mut rm.model {
                *model = existing(locator, &at.key("model"), base, model, true)?;
                same_tokenizer(locator, &at.key("model"), &pipeline.model.path, model)?;
            }
        }
        let mut sources = Vec::new();
        if let Some(pref) = &mut stage.pref {
            let at = at.key("pref");
            for (j, file) in pref.data.iter_mut().enumerate() {
                let field = at.key("data").index(j);
                let parts: Vec<_> = file.components().filter(|c| *c != Component::CurDir).collect();
                let run_labels = matches!(parts.as_slice(), [Component::Normal(name)] if *name == RUN_LABELS_FILE);
                let source = if run_labels && !base.join(&*file).exists() {
                    DataSource::RunRelative(PathBuf::from(RUN_LABELS_FILE))
                } else if file.is_relative() && !absolute(base, file).exists() {
                    return Err(locator.error(
                        &field,
                        format!(
                            "no such file: {} (only `{RUN_LABELS_FILE}`, the run's own labels file, may be \
                             missing: it is created in the run directory)",
                            absolute(base, file).display()
                        ),
                    ));
                } else {
                    DataSource::File(existing(locator, &field, base, file, false)?)
                };
                *file = source.path().to_path_buf();
                sources.push(source);
            }
            if let Some(reference) = &mut pref.reference {
                *reference = existing(locator, &at.key("reference"), base, reference, true)?;
            }
        }
        pref_sources.push(sources);
        if let Some(grpo) = &mut stage.grpo {
            let at = at.key("grpo");
            for (j, file) in grpo.prompts.iter_mut().enumerate() {
                *file = existing(locator, &at.key("prompts").index(j), base, file, false)?;
            }
            if let Some(dir) = &mut grpo.reward_model {
                *dir = existing(locator, &at.key("reward_model"), base, dir, true)?;
            }
        }
        if let Some(safety) = &mut stage.safety {
            let at = at.key("safety");
            for (j, file) in safety.data.iter_mut().enumerate() {
                *file = existing(locator, &at.key("data").index(j), base, file, false)?;
            }
            if let Some(redteam) = safety.adaptive.as_mut().and_then(|a| a.redteam.as_mut()) {
                *redteam = existing(locator, &at.key("adaptive").key("redteam"), base, redteam, false)?;
            }
        }
    }
    super::engine::resolve_paths(&mut pipeline, base, locator)?;
    if let Some(eval) = &mut pipeline.eval {
        eval.suite = existing(locator, &root.key("eval").key("suite"), base, &eval.suite, false)?;
        if let Some(best_of) = &mut eval.best_of {
            let at = root.key("eval").key("best_of").key("reward_model");
            best_of.reward_model = existing(locator, &at, base, &best_of.reward_model, true)?;
            check_reward_model_dir(locator, &at, &best_of.reward_model)?;
            same_tokenizer(locator, &at, &pipeline.model.path, &best_of.reward_model)?;
        }
    }
    if let Some(label) = &mut pipeline.label {
        let at = root.key("label").key("candidates");
        for (j, file) in label.candidates.iter_mut().enumerate() {
            *file = existing(locator, &at.index(j), base, file, false)?;
        }
    }
    Ok(LoadedPipeline { pipeline, source_path, pref_sources })
}
