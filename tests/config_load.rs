//! Loading pipeline files: defaults, path resolution, and the exact located error of every file
//! under `tests/fixtures/config/invalid` (each paired with a `.err` file holding the message,
//! `{path}` standing for the file as passed and `{dir}` for the canonical fixtures directory).

use std::fs;
use std::path::{Path, PathBuf};

use hone::config::{
    default_runs_dir, load_pipeline, user_config_dir, ConfigError, DataSource, NanPolicy, PrefLossKind, RunSettings,
    SafetyLossKind, Schedule,
};
use hone::located::Located;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");

fn fixture(relative: &str) -> PathBuf {
    Path::new(FIXTURES).join(relative)
}

fn canonical_fixtures() -> PathBuf {
    fs::canonicalize(FIXTURES).expect("the fixtures directory exists")
}

fn load_error(name: &str) -> ConfigError {
    load_pipeline(&fixture(&format!("invalid/{name}.toml"))).expect_err("an invalid fixture must not load")
}

/// The located parts of an error inside a file.
fn located(error: &ConfigError) -> (usize, usize, Option<&str>) {
    match error {
        ConfigError::Located(at) => (at.line, at.column, at.field.as_deref()),
        other => panic!("not located: {other}"),
    }
}

/// The message in an invalid fixture's `.err` file, for the fixture at `path`.
fn expected_error(expected_path: &Path, path: &Path, dir: &Path) -> String {
    let expected = fs::read_to_string(expected_path)
        .unwrap_or_else(|e| panic!("{}: every invalid fixture needs a .err file: {e}", path.display()));
    expected.trim_end().replace("{path}", &path.display().to_string()).replace("{dir}", &dir.display().to_string())
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_message() {
    let dir = canonical_fixtures();
    let mut checked = 0;
    let mut entries: Vec<PathBuf> =
        fs::read_dir(fixture("invalid")).unwrap().map(|entry| entry.unwrap().path()).collect();
    entries.sort();
    for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let expected_path = path.with_extension("err");
        let expected = expected_error(&expected_path, path, &dir);
        let error = load_pipeline(path).expect_err("an invalid fixture must not load");
        assert_eq!(error.to_string(), expected, "{}", path.display());
        checked += 1;
    }
    for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "err")) {
        assert!(path.with_extension("toml").exists(), "{}: .err without .toml", path.display());
    }
    assert!(checked >= 8, "only {checked} invalid fixtures");
}

/// The bad inputs of GRPO and robust DPO, through `hone check` itself: the check fails with the
/// located line, and nothing else.
#[test]
fn hone_check_locates_bad_grpo_and_label_smoothing_settings() {
    let dir = canonical_fixtures();
    for name in [
        "grpo_no_prompts",
        "grpo_group_size",
        "grpo_unknown_reward",
        "label_smoothing_half",
        "label_smoothing_negative",
    ] {
        let path = fixture(&format!("invalid/{name}.toml"));
        let expected = expected_error(&path.with_extension("err"), &path, &dir);
        let mut out = Vec::new();
        assert!(!hone::cli::check::run(&path, &mut out).unwrap(), "{name}");
        assert_eq!(String::from_utf8(out).unwrap(), format!("error: {expected}\n"), "{name}");
    }
}

#[test]
fn unknown_key_at_top_level_is_located_at_the_key() {
    let error = load_error("unknown_top_level_key");
    assert_eq!(located(&error), (2, 1, Some("colour")));
    assert!(error.to_string().ends_with(
        "colour: unknown field `colour`, expected one of `run`, `model`, `stage`, `eval`, `engine`, `label`, `iterate`"
    ));
}

#[test]
fn unknown_key_in_a_stage_is_located_at_the_key() {
    let error = load_error("unknown_stage_key");
    assert_eq!(located(&error), (10, 3, Some("stage[1].learning_rate")));
    assert!(error.to_string().contains(": stage[1].learning_rate: unknown field `learning_rate`, expected one of"));
    assert_eq!(located(&load_error("unknown_dotted_key")), (7, 6, Some("stage[0].pref.betta")));
}

#[test]
fn wrong_type_is_located_at_the_value() {
    let error = load_error("wrong_type");
    assert_eq!(located(&error), (6, 6, Some("stage[0].lr")));
    assert!(error.to_string().ends_with("stage[0].lr: invalid type: string \"fast\", expected f64"));
}

#[test]
fn negative_beta_is_rejected() {
    let error = load_error("negative_beta");
    assert_eq!(located(&error), (13, 8, Some("stage[1].pref.beta")));
    assert!(error.to_string().ends_with("must be a finite number > 0 (got -0.1)"));
}

#[test]
fn duplicate_stage_names_are_rejected_at_the_second() {
    let error = load_error("duplicate_stage");
    assert_eq!(located(&error), (9, 8, Some("stage[1].name")));
    assert!(error.to_string().ends_with("duplicate stage name `sft` (also stage[0])"));
}

#[test]
fn a_missing_data_file_names_the_list_entry() {
    let error = load_error("missing_data_file");
    assert_eq!(located(&error), (6, 34, Some("stage[0].sft.data[1]")));
    let missing = canonical_fixtures().join("data/missing.jsonl");
    assert!(error.to_string().ends_with(&format!("no such file: {}", missing.display())));
}

#[test]
fn a_stage_without_terms_is_located_at_its_header() {
    let error = load_error("no_terms");
    assert_eq!(located(&error), (8, 1, Some("stage[1]")));
}

#[test]
fn syntax_errors_have_a_location_but_no_field() {
    let error = load_error("syntax");
    assert!(matches!(error, ConfigError::Located(Located { field: None, .. })), "{error:?}");
    assert_eq!(located(&error), (5, 12, None));
}

#[test]
fn a_missing_pipeline_file_cannot_be_read() {
    let path = fixture("valid/no-such-pipeline.toml");
    let error = load_pipeline(&path).expect_err("the file does not exist");
    let text = error.to_string();
    assert!(text.starts_with(&format!("{}: cannot read: ", path.display())), "{text}");
    assert!(matches!(error, ConfigError::Read { .. }));
}

#[test]
fn minimal_pipeline_gets_every_default() {
    let dir = canonical_fixtures();
    let loaded = load_pipeline(&fixture("valid/minimal.toml")).unwrap();
    assert_eq!(loaded.source_path, dir.join("valid/minimal.toml"));
    let pipeline = &loaded.pipeline;
    assert_eq!(pipeline.run, RunSettings::default());
    assert_eq!(pipeline.run.name, "run");
    assert_eq!(pipeline.run.nan_policy, NanPolicy::Skip);
    assert_eq!(pipeline.model.path, dir.join("model"));
    assert_eq!(pipeline.stages.len(), 1);
    let stage = &pipeline.stages[0];
    assert_eq!(stage.name, "sft");
    assert_eq!((stage.epochs, stage.max_steps, stage.batch_size, stage.grad_accum), (1, None, 4, 1));
    assert_eq!((stage.lr, stage.schedule, stage.warmup_steps), (1e-5, Schedule::Cosine, 0));
    assert_eq!((stage.weight_decay, stage.max_grad_norm, stage.max_length), (0.0, 1.0, 1024));
    let sft = stage.sft.as_ref().unwrap();
    assert_eq!(sft.data, vec![dir.join("data/sft.jsonl")]);
    assert_eq!((sft.weight, sft.on_chosen), (1.0, false));
    assert!(stage.pref.is_none() && stage.safety.is_none());
    assert_eq!(loaded.pref_sources, vec![Vec::<DataSource>::new()]);
}

#[test]
fn full_pipeline_resolves_every_path() {
    let dir = canonical_fixtures();
    let loaded = load_pipeline(&fixture("valid/full.toml")).unwrap();
    let p = &loaded.pipeline;
    assert_eq!(
        (p.run.name.as_str(), p.run.seed, p.run.device.as_str(), p.run.dtype.as_str()),
        ("full-run.v1", 7, "cuda:0", "bf16")
    );
    assert_eq!((p.run.checkpoint_every, p.run.keep_checkpoints, p.run.nan_policy), (20, 2, NanPolicy::Halt));
    assert_eq!(p.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["sft", "dpo", "safety"]);

    let dpo = &p.stages[1];
    assert_eq!((dpo.epochs, dpo.max_steps, dpo.schedule), (0, Some(100), Schedule::Constant));
    let sft = dpo.sft.as_ref().unwrap();
    assert!(sft.data.is_empty() && sft.on_chosen);
    let pref = dpo.pref.as_ref().unwrap();
    assert_eq!((pref.lambda, pref.beta, pref.loss), (1.0, 0.2, PrefLossKind::Ipo));
    assert_eq!(pref.reference.as_deref(), Some(dir.join("ref").as_path()));
    assert_eq!(pref.data, vec![dir.join("data/prefs.jsonl"), PathBuf::from("labels.jsonl")]);
    assert_eq!(
        loaded.pref_sources[1],
        vec![DataSource::File(dir.join("data/prefs.jsonl")), DataSource::RunRelative("labels.jsonl".into())]
    );
    assert_eq!(loaded.pref_sources[1][1].resolve(Path::new("/runs/r1")), Path::new("/runs/r1/labels.jsonl"));

    let safety = p.stages[2].safety.as_ref().unwrap();
    assert_eq!((safety.lambda, safety.loss, safety.beta), (0.3, SafetyLossKind::Dpo, 0.05));
    assert_eq!(safety.data, vec![dir.join("data/safety.jsonl")]);
    let adaptive = safety.adaptive.as_ref().unwrap();
    assert_eq!((adaptive.epsilon, adaptive.eta, adaptive.every), (0.05, 0.5, 20));
    assert_eq!(adaptive.redteam.as_deref(), Some(dir.join("data/redteam.jsonl").as_path()));
    assert_eq!(p.stages[2].pref.as_ref().unwrap().reference, None);
}

#[test]
fn a_label_file_next_to_the_pipeline_is_a_plain_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = canonical_fixtures().join("model");
    let pipeline = tmp.path().join("p.toml");
    let text = format!(
        "[model]\npath = {model:?}\n\n[[stage]]\nname = \"dpo\"\npref.data = [\"labels.jsonl\", \"./more.jsonl\"]\n",
        model = model.display().to_string()
    );
    fs::write(&pipeline, text).unwrap();
    // Only the run's own labels file may be missing; any other missing name is a typo to report.
    let err = load_pipeline(&pipeline).unwrap_err().to_string();
    assert!(err.contains("stage[0].pref.data[1]") && err.contains("more.jsonl"), "{err}");
    fs::write(tmp.path().join("more.jsonl"), "").unwrap();
    let loaded = load_pipeline(&pipeline).unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    assert_eq!(
        loaded.pref_sources[0],
        vec![DataSource::RunRelative("labels.jsonl".into()), DataSource::File(dir.join("more.jsonl"))]
    );

    fs::write(tmp.path().join("labels.jsonl"), "").unwrap();
    let loaded = load_pipeline(&pipeline).unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    assert_eq!(loaded.pref_sources[0][0], DataSource::File(dir.join("labels.jsonl")));
    assert_eq!(loaded.pipeline.stages[0].pref.as_ref().unwrap().data[0], dir.join("labels.jsonl"));
}

#[test]
fn the_model_path_must_be_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.toml");
    fs::write(tmp.path().join("sft.jsonl"), "{}\n").unwrap();
    fs::write(&pipeline, "[model]\npath = \"sft.jsonl\"\n\n[[stage]]\nname = \"s\"\nsft.data = [\"sft.jsonl\"]\n")
        .unwrap();
    let error = load_pipeline(&pipeline).unwrap_err();
    assert_eq!(located(&error), (2, 8, Some("model.path")));
    assert!(error.to_string().contains("not a directory"), "{error}");
}

#[test]
fn default_directories() {
    assert_eq!(default_runs_dir(), Path::new("./runs"));
    if let Some(dir) = user_config_dir() {
        assert!(dir.to_string_lossy().contains("hone"), "{}", dir.display());
    }
}

#[test]
fn the_sample_pipeline_loads() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sample-data/pipeline.toml"));
    let loaded = load_pipeline(path).unwrap();
    let dir = fs::canonicalize(path.parent().unwrap()).unwrap();
    assert_eq!(loaded.pipeline.model.path, dir.join("model"));
    let names = |stages: Vec<&hone::config::Stage>| stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(loaded.pipeline.stages.iter().collect()), ["sft", "dpo", "safety", "safety-fix"]);
    // The fix stage runs only in the rounds of its [[iterate]] loop.
    assert_eq!(names(loaded.pipeline.sequence().collect()), ["sft", "dpo", "safety"]);
    assert_eq!(loaded.pipeline.iterates[0].stage, "safety-fix");
    let labels_next_to_pipeline = dir.join("labels.jsonl").exists();
    let labels = if labels_next_to_pipeline {
        DataSource::File(dir.join("labels.jsonl"))
    } else {
        DataSource::RunRelative("labels.jsonl".into())
    };
    assert_eq!(loaded.pref_sources[1], vec![DataSource::File(dir.join("prefs.jsonl")), labels]);
}

#[test]
fn robust_and_conservative_dpo_load_with_their_label_smoothing() {
    let loaded = load_pipeline(&fixture("valid/robust.toml")).unwrap();
    let terms: Vec<(PrefLossKind, f64)> =
        loaded.pipeline.stages.iter().map(|s| s.pref.as_ref().map(|p| (p.loss, p.label_smoothing)).unwrap()).collect();
    assert_eq!(terms, [(PrefLossKind::Robust, 0.1), (PrefLossKind::Sigmoid, 0.2)]);
    // A pipeline without label smoothing serialises (run.toml) exactly as before the option existed.
    let plain = load_pipeline(&fixture("valid/full.toml")).unwrap();
    assert!(plain.pipeline.stages.iter().any(|s| s.pref.is_some()));
    let text = toml::to_string(&plain.pipeline).unwrap();
    assert!(!text.contains("label_smoothing"), "{text}");
    let text = toml::to_string(&loaded.pipeline).unwrap();
    assert!(text.contains("label_smoothing = 0.1"), "{text}");
}

/// A reward model must read the ids the policy's tokenizer makes: `[eval] best_of.reward_model`
/// and `[stage.rm] model` with another tokenizer are located errors; the same tokenizer loads.
#[test]
fn a_reward_model_with_another_tokenizer_is_refused_where_it_is_named() {
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let policy = fixtures.join("llama/model");
    let other_rm = fixtures.join("reward/qwen2");
    let same_rm = fixtures.join("reward/llama");
    let tmp = tempfile::tempdir().unwrap();
    let data = fixtures.join("llama/prefs.jsonl");
    let pipeline = tmp.path().join("p.toml");
    let write = |rm: &Path, best_of: &Path| {
        let text = format!(
            "[model]\npath = {policy:?}\n\n[[stage]]\nname = \"sft\"\nsft.data = [{sft:?}]\n\n[[stage]]\nname = \"rm\"\n\
             rm = {{ data = [{data:?}], model = {rm:?} }}\n\n[eval]\nsuite = {suite:?}\n\
             best_of = {{ n = 4, reward_model = {best_of:?} }}\n",
            sft = fixtures.join("llama/sft.jsonl"),
            suite = fixtures.join("eval/tiny_suite.jsonl"),
        );
        fs::write(&pipeline, text).unwrap();
    };
    write(&other_rm, &same_rm);
    let error = load_pipeline(&pipeline).unwrap_err();
    // Line 10 is `rm = { data = [...], model = ... }`; the column is the model's value.
    let (line, column, field) = located(&error);
    assert_eq!((line, field), (10, Some("stage[1].rm.model")));
    assert_eq!(fs::read_to_string(&pipeline).unwrap().lines().nth(9).unwrap()[column - 1..].chars().next(), Some('"'));
    assert!(error.to_string().contains("tokenizer differs from the policy's"), "{error}");
    write(&same_rm, &other_rm);
    let error = load_pipeline(&pipeline).unwrap_err();
    assert_eq!(located(&error).2, Some("eval.best_of.reward_model"));
    assert!(error.to_string().contains("tokenizer differs from the policy's"), "{error}");
    write(&same_rm, &same_rm);
    let loaded = load_pipeline(&pipeline).unwrap();
    let best_of = loaded.pipeline.eval.unwrap().best_of.unwrap();
    assert_eq!((best_of.n, best_of.temperature, best_of.gate), (4, 0.8, false));
    assert!(best_of.reward_model.is_absolute());
}
