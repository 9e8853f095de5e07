//! Issue 10's traps of a new user's first ten minutes, outside a terminal: each test runs the
//! `hone` binary as a user would and failed before its fix.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use hone::cli::{Cli, Command as Sub};
use hone::run::{RunDir, WorkerLock};

const HONE: &str = env!("CARGO_BIN_EXE_hone");

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

fn sample_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-data")
}

/// `hone ARGS` in `dir` with a private HOME and data directory and no HONE_RUNS_DIR.
fn hone(dir: &Path, args: &[&str]) -> Output {
    Command::new(HONE)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.join(".home"))
        .env("XDG_DATA_HOME", dir.join(".data"))
        .env("XDG_CONFIG_HOME", dir.join(".config"))
        .env_remove("HONE_RUNS_DIR")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A one-stage DPO pipeline on the fixture whose preference files are `prefs`.
fn dpo_pipeline(dir: &Path, prefs: &str, extra_run: &str) -> PathBuf {
    let f = fixture();
    std::fs::copy(f.join("prefs.jsonl"), dir.join("prefs.jsonl")).unwrap();
    let text = format!(
        "[run]\nname = \"t\"\n{extra_run}\n\n[model]\npath = \"{}\"\n\n[[stage]]\nname = \"dpo\"\nmax_length = 64\n\
         pref = {{ data = [{prefs}] }}\n",
        f.join("model").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_refuses_a_typo_in_a_preference_file_naming_its_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    dpo_pipeline(tmp.path(), r#""prefs.jsonl", "prefz.jsonl""#, "");
    let out = hone(tmp.path(), &["check", "pipeline.toml"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("pipeline.toml:11:"), "the error is located: {stdout}");
    assert!(stdout.contains("stage[0].pref.data[1]") && stdout.contains("prefz.jsonl"), "{stdout}");
    assert!(!stdout.contains("live labels"), "a typo is not a live labels file: {stdout}");

    // The run's own labels file may be missing: it is created in the run directory.
    dpo_pipeline(tmp.path(), r#""prefs.jsonl", "labels.jsonl""#, "");
    let out = hone(tmp.path(), &["check", "pipeline.toml"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("live labels: <run dir>/labels.jsonl"), "{stdout}");
}

#[test]
fn check_refuses_an_unusable_cuda_device_with_the_words_run_uses() {
    let tmp = tempfile::tempdir().unwrap();
    dpo_pipeline(tmp.path(), r#""prefs.jsonl""#, "device = \"cuda\"");
    let probe = hone::model::parse_device("cuda");
    let Err(expected) = probe else {
        eprintln!("a CUDA device is usable here: nothing to refuse");
        return;
    };
    let expected = expected.to_string();
    let out = hone(tmp.path(), &["check", "pipeline.toml"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&expected), "check says {expected:?}: {stdout}");

    let out = hone(tmp.path(), &["run", "pipeline.toml", "--headless"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "run says {expected:?} too: {stderr}");
    assert!(!tmp.path().join("runs").exists(), "no run directory is created for a run that cannot start");
}

#[test]
fn label_without_a_run_refuses_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let candidates = sample_data().join("candidates.jsonl");
    let out = hone(tmp.path(), &["label", "--candidates", candidates.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--run") && stderr.contains("--labels"), "{stderr}");
    assert!(!tmp.path().join("labels.jsonl").exists(), "nothing is written");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing at all is written");
}

#[test]
fn label_without_a_run_labels_for_the_newest_live_run_and_says_which() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let old = RunDir::create(&runs, "old").unwrap();
    std::fs::write(old.config_path(), "").unwrap();
    let live = RunDir::create(&runs, "live").unwrap();
    std::fs::write(live.config_path(), "").unwrap();
    // This test holds the live run's worker lock, as its worker would.
    let _lock = WorkerLock::acquire(&live).unwrap();
    let finished = RunDir::create(&runs, "finished").unwrap();
    std::fs::write(finished.config_path(), "").unwrap();
    let out = hone(tmp.path(), &["label"]);
    let (_, stderr) = text(&out);
    let said = stderr.lines().find(|l| l.starts_with("labeling for the live run")).unwrap_or_default();
    assert!(said.contains(live.id()), "names the live run: {stderr}");
    assert!(!tmp.path().join("labels.jsonl").exists(), "no labels file outside the run");
}

#[test]
fn an_unreadable_data_file_is_named_once_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture().join("model");
    let out = hone(tmp.path(), &["score", "--model", model.to_str().unwrap(), "--data", "nope.jsonl"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("nope.jsonl").count(), 1, "the path once: {stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "the cause once: {stderr}");
    assert!(stderr.contains("check the path"), "what to do: {stderr}");
}

#[test]
fn runs_with_no_runs_names_the_directory_once_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hone(tmp.path(), &["runs"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("no runs in runs"), "{stdout}");
    assert_eq!(stdout.matches("./runs").count(), 1, "the directory once: {stdout}");
    assert!(stdout.contains("hone demo") && stdout.contains("--runs-dir"), "what to do: {stdout}");
}

#[test]
fn the_runs_directory_is_the_flag_then_the_environment_then_dot_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = |env: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(HONE);
        cmd.arg("paths").args(args).current_dir(tmp.path()).env("XDG_DATA_HOME", tmp.path().join("d"));
        cmd.env("XDG_CONFIG_HOME", tmp.path().join("c"));
        match env {
            Some(v) => cmd.env("HONE_RUNS_DIR", v),
            None => cmd.env_remove("HONE_RUNS_DIR"),
        };
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let default = paths(None, &[]);
    assert!(default.lines().any(|l| l.starts_with("runs    ./runs ")), "{default}");
    assert!(default.contains(&format!("config  {}", tmp.path().join("c/hone").display())), "{default}");
    assert!(default.contains(&format!("data    {}", tmp.path().join("d/hone").display())), "{default}");
    let env = paths(Some("/srv/runs"), &[]);
    assert!(env.lines().any(|l| l.starts_with("runs    /srv/runs ") && l.contains("HONE_RUNS_DIR")), "{env}");
    let flag = paths(Some("/srv/runs"), &["--runs-dir", "mine"]);
    assert!(flag.lines().any(|l| l.starts_with("runs    mine ") && l.contains("--runs-dir")), "{flag}");
    // One rule for every command, bare `hone` included.
    assert_eq!(hone::config::runs_dir_from(None, Some("".into())), PathBuf::from("./runs"));
    for args in [
        vec!["hone", "--runs-dir", "x"],
        vec!["hone", "demo", "--runs-dir", "x"],
        vec!["hone", "run", "p.toml", "--runs-dir", "x"],
        vec!["hone", "attach", "--runs-dir", "x"],
        vec!["hone", "runs", "--runs-dir", "x"],
        vec!["hone", "label", "--runs-dir", "x"],
        vec!["hone", "paths", "--runs-dir", "x"],
    ] {
        assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
    }
}

#[test]
fn the_dashboard_commands_take_a_theme_and_eval_answers_default_to_64_tokens() {
    for args in [
        vec!["hone", "--theme", "light"],
        vec!["hone", "demo", "--theme", "light"],
        vec!["hone", "run", "p.toml", "--theme", "light"],
        vec!["hone", "resume", "runs/x", "--theme", "light"],
        vec!["hone", "attach", "--theme", "light"],
    ] {
        assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
    }
    let cli = Cli::try_parse_from(["hone", "eval", "--model", "m", "--suite", "s"]).unwrap();
    let Some(Sub::Eval { args }) = cli.command else { panic!("eval") };
    let max_new_tokens = args.max_new_tokens;
    assert_eq!(max_new_tokens, 64);
    let eval: hone::config::EvalSettings = toml::from_str("suite = \"s\"").unwrap();
    assert_eq!(eval.max_new_tokens, max_new_tokens, "hone eval and a pipeline's [eval] agree");
}

#[test]
fn a_run_of_the_sample_pipeline_starts_with_its_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let run =
        hone::cli::run::create(&sample_data().join("pipeline.toml"), &runs, &hone::cli::run::Overrides::default())
            .unwrap();
    let copied = std::fs::read_to_string(run.candidates_path()).unwrap();
    let original = std::fs::read_to_string(sample_data().join("candidates.jsonl")).unwrap();
    assert_eq!(copied, original);
    assert_eq!(copied.lines().count(), 30);
}

#[test]
fn a_bad_candidates_file_is_refused_before_a_run_directory_exists() {
    let tmp = tempfile::tempdir().unwrap();
    dpo_pipeline(tmp.path(), r#""prefs.jsonl""#, "");
    let mut pipeline = std::fs::read_to_string(tmp.path().join("pipeline.toml")).unwrap();
    pipeline.push_str("\n[label]\ncandidates = [\"pairs.jsonl\"]\n");
    std::fs::write(tmp.path().join("pipeline.toml"), pipeline).unwrap();
    std::fs::write(
        tmp.path().join("pairs.jsonl"),
        "{\"prompt\": \"hi\", \"responses\": [\"a\", \"b\"]}\n{\"prompt\": 3}\n",
    )
    .unwrap();
    let out = hone(tmp.path(), &["run", "pipeline.toml", "--headless"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pairs.jsonl:2:"), "located: {stderr}");
    assert!(!tmp.path().join("runs").exists(), "no run directory: {stderr}");

    // A missing one is the pipeline's located error.
    std::fs::remove_file(tmp.path().join("pairs.jsonl")).unwrap();
    let out = hone(tmp.path(), &["check", "pipeline.toml"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("label.candidates[0]") && stdout.contains("pairs.jsonl"), "{stdout}");
}

#[test]
fn the_built_in_world_unpacks_once_atomically_and_mends_a_damaged_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Two hones unpacking at once both get one complete copy.
    let unpack = || {
        let data = data.clone();
        std::thread::spawn(move || hone::cli::world::ensure_unpacked(&data).unwrap())
    };
    let (a, b) = (unpack(), unpack());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(a, b);
    assert_eq!(a, hone::cli::world::unpacked_dir(&data));
    let names: Vec<String> =
        std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "no temporary directory is left behind: {names:?}");
    for (path, bytes) in hone::cli::world::files() {
        assert_eq!(&std::fs::read(a.join(path)).unwrap(), bytes, "{path}");
    }
    assert!(a.join("pipeline.toml").is_file() && a.join("model/model.safetensors").is_file());
    // A truncated file is noticed and the world unpacked again.
    std::fs::write(a.join("model/model.safetensors"), b"").unwrap();
    let again = hone::cli::world::ensure_unpacked(&data).unwrap();
    assert_eq!(std::fs::read(again.join("model/model.safetensors")).unwrap().len(), {
        let (_, bytes) = hone::cli::world::files().iter().find(|(p, _)| *p == "model/model.safetensors").unwrap();
        bytes.len()
    });
}

/// Issue 10: an installed binary found no demo (`sample-data` was looked up in the source tree).
/// From an empty directory, with HOME and XDG_DATA_HOME empty, the demo unpacks its built-in world
/// into the data directory and runs from there.
#[test]
fn demo_runs_from_an_empty_directory_with_an_empty_home() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, home, data) = (tmp.path().join("work"), tmp.path().join("home"), tmp.path().join("data"));
    for d in [&work, &home, &data] {
        std::fs::create_dir(d).unwrap();
    }
    let out = Command::new(HONE)
        .args(["demo", "--headless", "--max-steps", "3"])
        .current_dir(&work)
        .env("HOME", &home)
        .env("XDG_DATA_HOME", &data)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("HONE_RUNS_DIR")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("decision"), "the summary ends with the decision: {stdout}");
    let world = hone::cli::world::unpacked_dir(&data.join("hone"));
    assert!(world.join("pipeline.toml").is_file(), "unpacked into the data directory");
    let run = RunDir::newest(&work.join("runs")).unwrap().expect("the run is in ./runs");
    let frozen = hone::config::load_frozen(&run.config_path()).unwrap();
    assert_eq!(frozen.info.source, std::fs::canonicalize(world.join("pipeline.toml")).unwrap());
    assert_eq!(std::fs::read_to_string(run.candidates_path()).unwrap().lines().count(), 30);
}
