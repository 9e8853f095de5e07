//! The frozen `run.toml`: hashing, the load → freeze → write → read round trip, and the
//! differences that make a resume refuse.

use std::fs;
use std::path::{Path, PathBuf};

use hone::config::{
    diff_frozen, freeze, frozen_toml, load_frozen, load_pipeline, sha256_file, ConfigError, DataSource, Frozen,
    FrozenExtras,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");

fn extras() -> FrozenExtras {
    FrozenExtras { hone_version: "0.1.0-test".into(), overrides: vec!["stage.sft.lr=2e-5".into()] }
}

fn write_frozen(frozen: &Frozen, dir: &Path) -> PathBuf {
    let path = dir.join("run.toml");
    fs::write(&path, frozen_toml(frozen).expect("fixture paths are UTF-8"))
        .expect("the temporary directory is writable");
    path
}

/// A copy of the fixture model and data next to a pipeline file with the given text.
fn scratch_pipeline(dir: &Path, text: &str) -> PathBuf {
    let fixtures = Path::new(FIXTURES);
    for sub in ["model", "data"] {
        fs::create_dir_all(dir.join(sub)).expect("the temporary directory is writable");
        for entry in fs::read_dir(fixtures.join(sub)).expect("the fixtures exist") {
            let entry = entry.expect("the fixtures are readable");
            fs::copy(entry.path(), dir.join(sub).join(entry.file_name())).expect("the fixtures can be copied");
        }
    }
    let path = dir.join("pipeline.toml");
    fs::write(&path, text).expect("the temporary directory is writable");
    path
}

const SCRATCH: &str = "[model]\npath = \"model\"\n\n[[stage]]\nname = \"sft\"\nlr = 1e-5\nsft.data = [\"data/sft.jsonl\"]\n\n[[stage]]\nname = \"dpo\"\npref.data = [\"data/prefs.jsonl\", \"labels.jsonl\"]\n";

#[test]
fn sha256_of_known_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("abc");
    fs::write(&path, "abc").unwrap();
    assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    fs::write(&path, "").unwrap();
    assert_eq!(sha256_file(&path).unwrap(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    // Larger than one read block.
    fs::write(&path, vec![b'x'; 200_000]).unwrap();
    assert_eq!(sha256_file(&path).unwrap().len(), 64);
    let missing = tmp.path().join("missing");
    let error = sha256_file(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().starts_with(&format!("{}: cannot read: ", missing.display())));
}

#[test]
fn round_trip_of_the_full_pipeline() {
    let loaded = load_pipeline(&Path::new(FIXTURES).join("valid/full.toml")).unwrap();
    let frozen = freeze(&loaded, &extras()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let back = load_frozen(&write_frozen(&frozen, tmp.path())).unwrap();
    assert_eq!(back, frozen);
    assert_eq!(back.loaded, loaded);
    assert!(diff_frozen(&frozen, &back).is_empty());
}

#[test]
fn round_trip_writes_every_default_and_every_hash() {
    let dir = fs::canonicalize(FIXTURES).unwrap();
    let loaded = load_pipeline(&dir.join("valid/minimal.toml")).unwrap();
    let frozen = freeze(&loaded, &extras()).unwrap();
    let text = frozen_toml(&frozen).unwrap();
    for line in [
        "name = \"run\"",
        "seed = 42",
        "nan_policy = \"skip\"",
        "batch_size = 4",
        "max_grad_norm = 1.0",
        "max_length = 1024",
        "schedule = \"cosine\"",
        "on_chosen = false",
        "[frozen]",
        "hone_version = \"0.1.0-test\"",
    ] {
        assert!(text.lines().any(|l| l.trim() == line), "missing `{line}` in\n{text}");
    }
    let hashes: Vec<(&str, &Path, Option<&str>)> =
        frozen.info.files.iter().map(|f| (f.field.as_str(), f.path.as_path(), f.sha256.as_deref())).collect();
    let sha = |p: &Path| sha256_file(p).unwrap();
    let (config, tokenizer, sft) =
        (dir.join("model/config.json"), dir.join("model/tokenizer.json"), dir.join("data/sft.jsonl"));
    assert_eq!(
        hashes,
        vec![
            ("model.path", config.as_path(), Some(sha(&config).as_str())),
            ("model.path", tokenizer.as_path(), Some(sha(&tokenizer).as_str())),
            ("stage[0].sft.data[0]", sft.as_path(), Some(sha(&sft).as_str())),
        ]
    );
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(load_frozen(&write_frozen(&frozen, tmp.path())).unwrap(), frozen);
}

#[test]
fn run_relative_label_files_are_recorded_not_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = load_pipeline(&scratch_pipeline(tmp.path(), SCRATCH)).unwrap();
    let frozen = freeze(&loaded, &extras()).unwrap();
    let labels = frozen.info.files.iter().find(|f| f.field == "stage[1].pref.data[1]").unwrap();
    assert_eq!(
        (labels.path.as_path(), labels.sha256.as_deref(), labels.run_relative),
        (Path::new("labels.jsonl"), None, true)
    );
    let text = frozen_toml(&frozen).unwrap();
    assert!(text.contains("run_relative = true"), "{text}");

    let run_dir = tmp.path().join("runs/r1");
    fs::create_dir_all(&run_dir).unwrap();
    let back = load_frozen(&write_frozen(&frozen, &run_dir)).unwrap();
    assert_eq!(back.loaded.pref_sources[1][1], DataSource::RunRelative("labels.jsonl".into()));
    // Labels growing in the run directory change nothing.
    fs::write(run_dir.join("labels.jsonl"), "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n").unwrap();
    let again = freeze(&back.loaded, &extras()).unwrap();
    assert_eq!(diff_frozen(&back, &again), Vec::<String>::new());
}

#[test]
fn diff_reports_a_changed_lr_and_a_changed_data_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = scratch_pipeline(tmp.path(), SCRATCH);
    let old = freeze(&load_pipeline(&pipeline).unwrap(), &extras()).unwrap();
    let sft = fs::canonicalize(tmp.path().join("data/sft.jsonl")).unwrap();
    let old_hash = sha256_file(&sft).unwrap();

    fs::write(&pipeline, SCRATCH.replace("lr = 1e-5", "lr = 2e-4")).unwrap();
    fs::write(&sft, "{\"messages\": []}\n").unwrap();
    let new_hash = sha256_file(&sft).unwrap();
    let new = freeze(&load_pipeline(&pipeline).unwrap(), &FrozenExtras::default()).unwrap();

    assert_eq!(
        diff_frozen(&old, &new),
        vec![
            "stage[0].lr: 1e-5 → 2e-4".to_owned(),
            format!(
                "stage[0].sft.data[0]: {} changed (sha256 {}… → {}…)",
                sft.display(),
                &old_hash[..12],
                &new_hash[..12]
            ),
        ]
    );
}

#[test]
fn diff_reports_added_removed_and_unset_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = scratch_pipeline(tmp.path(), SCRATCH);
    let old = freeze(&load_pipeline(&pipeline).unwrap(), &extras()).unwrap();
    let changed = SCRATCH.replace("name = \"dpo\"\n", "name = \"dpo\"\nmax_steps = 10\n")
        + "\n[[stage]]\nname = \"more\"\nsft.data = [\"data/sft.jsonl\"]\n";
    fs::write(&pipeline, changed).unwrap();
    let new = freeze(&load_pipeline(&pipeline).unwrap(), &extras()).unwrap();
    assert_eq!(diff_frozen(&old, &new), ["stage[1].max_steps: (unset) → 10", "stage[2]: added (name = more)"]);
    assert_eq!(diff_frozen(&new, &old), ["stage[1].max_steps: 10 → (unset)", "stage[2]: removed"]);
}

#[test]
fn frozen_files_are_checked_like_pipelines() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = load_pipeline(&Path::new(FIXTURES).join("valid/minimal.toml")).unwrap();
    let text = frozen_toml(&freeze(&loaded, &extras()).unwrap()).unwrap();
    let path = tmp.path().join("run.toml");

    fs::write(&path, text.replace("hone_version = ", "colour = \"red\"\nhone_version = ")).unwrap();
    let error = load_frozen(&path).unwrap_err().to_string();
    assert!(error.contains(": frozen.colour: unknown field `colour`"), "{error}");

    fs::write(&path, text.replace("batch_size = 4", "batch_size = 0")).unwrap();
    let error = load_frozen(&path).unwrap_err().to_string();
    assert!(error.ends_with(": stage[0].batch_size: must be at least 1 (got 0)"), "{error}");

    let error = load_frozen(&tmp.path().join("missing.toml")).unwrap_err().to_string();
    assert!(error.contains("missing.toml: cannot read: "), "{error}");
}
