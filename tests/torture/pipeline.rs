//! The short SFT + DPO pipeline the kill tests torture (`torture_kills`, `torture_faults`,
//! `torture_export`), and what they check after every kill.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use hone::run::{list_checkpoints, EventReader, RunDir, WorkerLock};

/// What varies between the kill tests' pipelines.
#[derive(Debug, Clone, Copy)]
pub struct SftDpo<'a> {
    /// The run's name.
    pub name: &'a str,
    /// The run's seed.
    pub seed: u64,
    /// Steps of each stage.
    pub steps: u64,
    /// The DPO stage also reads the run's live `labels.jsonl`.
    pub live_labels: bool,
    /// Evaluate each stage on the tiny suite, DPO gated against SFT.
    pub eval: bool,
}

/// The tiny oracle fixture (`tests/fixtures/llama`) the pipelines train.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// Writes `dir/pipeline.toml`: SFT then DPO (its pairs, plus the live labels if asked), a
/// checkpoint every 3 steps, the last 2 kept.
pub fn sft_dpo_pipeline(dir: &Path, p: SftDpo<'_>) -> PathBuf {
    let f = fixture();
    let labels = if p.live_labels { ", \"labels.jsonl\"" } else { "" };
    let eval = if p.eval {
        let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/tiny_suite.jsonl");
        format!("\n[eval]\nsuite = \"{}\"\nbaseline = \"sft\"\nmax_new_tokens = 4\n", suite.display())
    } else {
        String::new()
    };
    let stage = |name: &str, data: String| {
        format!(
            "[[stage]]\nname = \"{name}\"\nepochs = 50\nmax_steps = {}\nbatch_size = 2\nlr = 1e-3\nmax_length = \
             128\n{data}\n",
            p.steps
        )
    };
    let text = format!(
        "[run]\nname = \"{}\"\nseed = {}\ncheckpoint_every = 3\nkeep_checkpoints = 2\nsample_every = 0\n\n[model]\n\
         path = \"{}\"\n\n{}\n{}{eval}",
        p.name,
        p.seed,
        f.join("model").display(),
        stage("sft", format!("sft = {{ data = [\"{}\"] }}", f.join("sft.jsonl").display())),
        stage(
            "dpo",
            format!(
                "sft = {{ on_chosen = true, weight = 0.2 }}\npref = {{ data = [\"{}\"{labels}], lambda = 0.5, beta = 0.1 }}",
                f.join("prefs.jsonl").display()
            )
        ),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write the pipeline");
    path
}

/// The only run in `runs`, if there is one yet.
pub fn only_run(runs: &Path) -> Option<RunDir> {
    RunDir::list(runs).ok().and_then(|mut v| v.pop())
}

/// Whether the process died of SIGKILL.
pub fn killed(status: ExitStatus) -> bool {
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(9)
}

/// Every listed checkpoint verifies, and nobody holds the lock.
pub fn check_after_kill(run: &RunDir, what: &str) {
    for ck in list_checkpoints(run).expect("list the checkpoints") {
        if let Err(e) = ck.verify() {
            panic!("{what}: listed checkpoint {} does not verify: {e}", ck.step);
        }
    }
    assert!(WorkerLock::is_live(run).expect("read the lock").is_none(), "{what}: the lock is released");
}

/// Loss bits per step, by the readers' rule (a later line for a step replaces an earlier one).
pub fn losses(run: &RunDir) -> BTreeMap<u64, u64> {
    let events = EventReader::read_all(&run.events_path()).map(|b| b.events).unwrap_or_default();
    events
        .iter()
        .filter(|e| e.event == "metrics")
        .filter_map(|e| Some((e.step?, e.fields.get("loss")?.as_f64()?.to_bits())))
        .collect()
}
