//! Shared helpers for the tests that drive a live run of the tiny fixture model (control socket,
//! candidates, the attached TUI): a long DPO pipeline, polling with a deadline, the run's events.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hone::run::control::Client;
use hone::run::{Event, EventReader, RunDir};

/// The `hone` binary under test.
pub const HONE: &str = env!("CARGO_BIN_EXE_hone");

/// The oracle fixture the live runs train (`tests/fixtures/llama`).
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// What varies between the live DPO pipelines of the tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct DpoRun<'a> {
    /// The run's name.
    pub name: &'a str,
    /// Extra lines for the `[run]` table.
    pub extra_run: &'a str,
    /// Preference files after the fixture's pairs (e.g. the run-relative `labels.jsonl`).
    pub extra_prefs: &'a [&'a str],
    /// Train on the chosen answers too (`sft = { on_chosen = true, weight = 0.2 }`).
    pub sft_on_chosen: bool,
}

/// Writes `dir/pipeline.toml`: one DPO stage on the fixture, long enough (400 epochs) to control
/// while it runs.
pub fn dpo_pipeline(dir: &Path, run: DpoRun<'_>) -> PathBuf {
    let f = fixture();
    let mut prefs = vec![format!("\"{}\"", f.join("prefs.jsonl").display())];
    prefs.extend(run.extra_prefs.iter().map(|p| format!("\"{p}\"")));
    let sft = if run.sft_on_chosen { "sft = { on_chosen = true, weight = 0.2 }\n" } else { "" };
    let text = format!(
        r#"[run]
name = "{name}"
seed = 7
checkpoint_every = 1000
{extra_run}

[model]
path = "{model}"

[[stage]]
name = "dpo"
epochs = 400
batch_size = 4
lr = 1e-3
max_length = 128
{sft}pref = {{ data = [{prefs}], lambda = 0.5, beta = 0.1 }}
"#,
        name = run.name,
        extra_run = run.extra_run,
        model = f.join("model").display(),
        prefs = prefs.join(", "),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write the pipeline");
    path
}

/// Polls `f` every 20 ms until it gives a value; fails the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The only run in `runs`, once its directory exists.
pub fn only_run(runs: &Path, limit: Duration) -> RunDir {
    wait_for("the run directory", limit, || RunDir::list(runs).ok().and_then(|mut v| v.pop()))
}

/// A client of the run's control socket, once it listens.
pub fn connect(run: &RunDir, limit: Duration) -> Client {
    wait_for("the control socket", limit, || Client::connect(run.path()).ok())
}

/// The run's events so far (none while the log is unreadable).
pub fn events(run: &RunDir) -> Vec<Event> {
    EventReader::read_all(&run.events_path()).map(|b| b.events).unwrap_or_default()
}

/// Whether tmux can run the real-terminal tests. Without it a test fails, saying so, unless
/// `HONE_SKIP_TMUX=1` asks to skip it knowingly (then it says that it skipped).
pub fn tmux_available(what: &str) -> bool {
    if Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var("HONE_SKIP_TMUX").is_ok_and(|v| v == "1"),
        "tmux is not installed, so {what} cannot run: install tmux, or set HONE_SKIP_TMUX=1 to skip \
         it knowingly"
    );
    eprintln!("HONE_SKIP_TMUX=1: SKIPPING {what} (tmux is not installed)");
    false
}

/// Writes an executable script at `path` without ever holding a writable descriptor to it in
/// this process: a test that writes a script and runs it while another test thread forks can
/// otherwise meet ETXTBSY ("Text file busy"), because the forked child briefly inherits the
/// writer. `install` writes the final file in its own process, which has exited when this returns.
pub fn write_executable(path: &std::path::Path, text: &str) {
    let source = path.with_extension("source");
    std::fs::write(&source, text).expect("write the script's source");
    let status =
        std::process::Command::new("install").args(["-m", "755"]).arg(&source).arg(path).status().expect("run install");
    assert!(status.success(), "install {} failed", path.display());
}
