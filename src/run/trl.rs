//! Stages on the TRL engine (`engine = "trl"`): the stage spec the Python side reads, the exact
//! launcher command line and environment, the package check behind `hone check`, and the
//! launcher as a child of the worker (same process group, output appended to `worker.log`), with
//! control requests relayed to it through a file.
//!
//! The Python side is `python/hone_trl` (this repository): TRL's `SFTTrainer`/`DPOTrainer`
//! subclasses and a `TrainerCallback` that writes hone's events to `events.jsonl` from rank 0.
//!
//! Files, all under `<run>/trl/` (named here rather than in `dir.rs`, which only the native
//! engine's files need): `<stage>.json` (the spec), `<stage>/checkpoints/checkpoint-N/` (TRL's
//! checkpoints, `hone_state.json` written last in each), `<stage>/model/` (the exported HF
//! directory: the next stage's model, what hone evaluates and gates), `<stage>/input/` (the policy
//! the stage starts from, when it is not already a directory: after a native stage),
//! `control.jsonl` (the relay).
//!
//! The relay: the worker keeps serving `control.sock`; each request that changes training is
//! appended to `control.jsonl` as the socket's own JSON (`{"cmd":"pause"}`) and fsynced. Rank 0
//! reads the new complete lines at every step boundary and broadcasts them to every rank, so all
//! ranks apply the same request at the same step. A file needs no port, survives a restart of
//! either side (the offset read is saved in every TRL checkpoint), and is what a test appends to.
//! A stop of the worker (SIGTERM/SIGINT) is relayed as `stop`: checkpoint, then exit 0 without an
//! export. Launchers replace a rank's exit status by their own, so a status of 0 with the
//! export's marker means finished, 0 without it stopped, anything else failed.
//!
//! The worker (`run::worker::RunHost::run_external_stage`) calls [`run_stage`] when the trainer
//! reaches a TRL stage, then hands the export back to the trainer, which evaluates and gates it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::control::{Request, Status};
use super::Event;
use crate::config::{Launcher, Pipeline, TrlSettings};
use crate::kind;
use crate::train::host::{DataOrders, PrefFile};

/// The file in an export directory that marks the stage as finished (written before the rename).
pub const EXPORT_MARKER: &str = "hone_export.json";
/// The file a TRL checkpoint directory gets last (`python/hone_trl`): its presence marks it complete.
pub const CHECKPOINT_MARKER: &str = "hone_state.json";
/// How many lines of the launcher's output an error carries.
const TAIL_LINES: usize = 20;
/// How often [`run_stage`] looks at the child and the control inbox.
const POLL: Duration = Duration::from_millis(200);

/// What can go wrong around a TRL stage.
#[derive(Debug, thiserror::Error)]
pub enum TrlError {
    /// A stage asks for the TRL engine but the pipeline has no `[engine.trl]`.
    #[error("stage {stage}: engine = \"trl\" but the pipeline has no [engine.trl] table")]
    NoSettings {
        /// The stage.
        stage: String,
    },
    /// No interpreter given and no default venv found.
    #[error(
        "no Python for the TRL engine: set [engine.trl] python, or create the default venv with \
         python/setup-venv.sh (expected at {expected})"
    )]
    NoPython {
        /// Where the default venv's interpreter was looked for.
        expected: String,
    },
    /// `[engine.trl] python` names a file that does not exist.
    #[error("[engine.trl] python: no such interpreter: {}", python.display())]
    MissingPython {
        /// The configured interpreter.
        python: PathBuf,
    },
    /// A program could not be started.
    #[error("{program}: cannot start: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The venv's packages do not import.
    #[error("{python}: the TRL engine's packages do not import: {detail}")]
    Packages {
        /// The interpreter.
        python: PathBuf,
        /// The last lines of its output.
        detail: String,
    },
    /// A file of the run directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The launcher ended with a failure.
    #[error("stage {stage}: the TRL launcher {status}; its last lines:\n{tail}")]
    Failed {
        /// The stage.
        stage: String,
        /// How it ended (`exited with status 1`, `was killed by signal 9`).
        status: String,
        /// The last lines of `worker.log`.
        tail: String,
    },
    /// A stage index that the pipeline does not have.
    #[error("stage index {0} is out of range")]
    NoStage(usize),
    /// The pipeline's model directory, read for a LoRA stage's target modules.
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrlError + '_ {
    move |source| TrlError::Io { path: path.to_path_buf(), source }
}

/// `<run>/trl/`.
pub fn trl_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("trl")
}

/// The spec file of a stage.
pub fn spec_path(run_dir: &Path, stage: &str) -> PathBuf {
    trl_dir(run_dir).join(format!("{}.json", super::dir_component(stage)))
}

/// Where a TRL stage's final model is exported (an HF directory).
pub fn export_dir(run_dir: &Path, stage: &str) -> PathBuf {
    trl_dir(run_dir).join(super::dir_component(stage)).join("model")
}

/// Where the policy a TRL stage starts from is written when it exists only in memory.
pub fn input_dir(run_dir: &Path, stage: &str) -> PathBuf {
    trl_dir(run_dir).join(super::dir_component(stage)).join("input")
}

/// Where a TRL stage's checkpoints go.
pub fn checkpoints_dir(run_dir: &Path, stage: &str) -> PathBuf {
    trl_dir(run_dir).join(super::dir_component(stage)).join("checkpoints")
}

/// The control relay file.
pub fn relay_path(run_dir: &Path) -> PathBuf {
    trl_dir(run_dir).join("control.jsonl")
}

/// The default venv's interpreter: `$XDG_CACHE_HOME/hone/trl-venv/bin/python`, else
/// `~/.cache/hone/trl-venv/bin/python` (what `python/setup-venv.sh` creates).
pub fn default_python() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("hone").join("trl-venv").join("bin").join("python"))
}

/// The interpreter a pipeline's TRL stages run with.
pub fn python_of(settings: &TrlSettings) -> Result<PathBuf, TrlError> {
    if let Some(python) = &settings.python {
        // A bare name (`python3`) is looked up in PATH when it starts.
        if python.components().count() > 1 && !python.exists() {
            return Err(TrlError::MissingPython { python: python.clone() });
        }
        return Ok(python.clone());
    }
    match default_python() {
        Some(p) if p.exists() => Ok(p),
        Some(p) => Err(TrlError::NoPython { expected: p.display().to_string() }),
        None => Err(TrlError::NoPython { expected: "$HOME/.cache/hone/trl-venv/bin/python".into() }),
    }
}

/// One launcher invocation: the program, its arguments and the environment it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// The command as one shell-quoted line (environment first), for `run.toml` and messages.
    pub fn display(&self) -> String {
        let env = self.env.iter().map(|(k, v)| format!("{k}={}", quote(v)));
        let words = std::iter::once(&self.program).chain(&self.args).map(|w| quote(w));
        env.chain(words).collect::<Vec<_>>().join(" ")
    }
}

/// A word as a POSIX shell reads it back.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'=' | b':' | b','));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The exact command that runs a stage whose spec is at `spec` with `python` on `device`
/// (`run.device`: `cpu` hides the GPUs).
pub fn launch(settings: &TrlSettings, python: &Path, spec: &Path, device: &str) -> Launch {
    let python_s = python.display().to_string();
    let module = ["-m".to_string(), "hone_trl".into(), "--spec".into(), spec.display().to_string()];
    let n = settings.num_processes.to_string();
    let (program, mut args) = match settings.launcher {
        Launcher::Accelerate => {
            let mut args = vec!["-m".into(), "accelerate.commands.launch".into()];
            if let Some(file) = &settings.config_file {
                args.extend(["--config_file".into(), file.display().to_string()]);
            }
            args.extend(["--num_processes".into(), n, "--num_machines".into(), settings.num_machines.to_string()]);
            if device == "cpu" {
                args.push("--cpu".into());
            }
            (python_s, args)
        }
        Launcher::Torchrun => (
            python_s,
            vec!["-m".into(), "torch.distributed.run".into(), "--standalone".into(), "--nproc_per_node".into(), n],
        ),
        Launcher::Command => {
            let mut words = settings.command.clone();
            let program = if words.is_empty() { String::new() } else { words.remove(0) };
            words.push(python_s);
            (program, words)
        }
    };
    args.extend(module);
    let mut env = vec![("PYTHONUNBUFFERED".to_string(), "1".to_string())];
    if device == "cpu" {
        env.push(("CUDA_VISIBLE_DEVICES".into(), String::new()));
    }
    Launch { program, args, env }
}

/// Runs `python -m hone_trl --versions`: every package the engine needs must import; returns
/// their versions (`torch`, `transformers`, `trl`, `accelerate`, `datasets`, `hone_trl`).
pub fn check_packages(python: &Path) -> Result<BTreeMap<String, String>, TrlError> {
    let out = Command::new(python)
        .args(["-m", "hone_trl", "--versions"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TrlError::Spawn { program: python.display().to_string(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = serde_json::from_str::<BTreeMap<String, String>>(text.trim()).ok().filter(|_| out.status.success());
    parsed.ok_or_else(|| {
        let all = format!("{}{}", text, String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
        let detail = lines[lines.len().saturating_sub(3)..].join(" | ");
        TrlError::Packages { python: python.to_path_buf(), detail: crate::sanitize::sanitize(&detail, false) }
    })
}

/// What `hone check` reports for a pipeline's TRL stages: `None` when no stage uses the TRL
/// engine; otherwise one line naming the interpreter, the versions it imports and the launcher,
/// or the reason it cannot run (no venv, a package that does not import).
pub fn check(pipeline: &Pipeline) -> Result<Option<String>, TrlError> {
    let Some(stage) = pipeline.stages.iter().find(|s| s.engine == crate::config::Engine::Trl) else {
        return Ok(None);
    };
    let settings = settings_of(pipeline, &stage.name)?;
    let python = python_of(settings)?;
    let versions = check_packages(&python)?;
    let list = versions.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let launcher = match settings.launcher {
        Launcher::Accelerate => "accelerate",
        Launcher::Torchrun => "torchrun",
        Launcher::Command => "command",
    };
    Ok(Some(format!(
        "TRL engine: {} ({list}); launcher {launcher}, {} processes on {} machines",
        python.display(),
        settings.num_processes,
        settings.num_machines
    )))
}

/// How a TRL stage ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrlOutcome {
    /// Trained to the end and exported its model to [`export_dir`].
    Finished,
    /// Stopped after a checkpoint (a stop request or a signal); running it again resumes.
    Stopped,
}

/// A running launcher: a child of the worker in the worker's process group (a signal to the
/// group reaches every rank), stdin from /dev/null, stdout and stderr appended to `log`.
#[derive(Debug)]
pub struct TrlChild {
    child: Child,
    stage: String,
    log: PathBuf,
    relay: PathBuf,
    marker: PathBuf,
    stop_relayed: bool,
}

impl TrlChild {
    /// Starts `launch` for `stage` of the run at `run_dir`.
    pub fn start(launch: &Launch, run_dir: &Path, stage: &str, log: &Path) -> Result<TrlChild, TrlError> {
        let out = OpenOptions::new().create(true).append(true).open(log).map_err(io_err(log))?;
        let err = out.try_clone().map_err(io_err(log))?;
        let dir = trl_dir(run_dir);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let child = Command::new(&launch.program)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| TrlError::Spawn { program: launch.program.clone(), source })?;
        Ok(TrlChild {
            child,
            stage: stage.into(),
            log: log.into(),
            relay: relay_path(run_dir),
            marker: export_dir(run_dir, stage).join(EXPORT_MARKER),
            stop_relayed: false,
        })
    }

    /// The launcher's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Appends a control request to the relay file (fsynced); rank 0 reads it at the next step
    /// boundary. `status` is answered by the worker itself and never relayed.
    pub fn relay(&mut self, request: &Request) -> Result<(), TrlError> {
        if matches!(request, Request::Status) {
            return Ok(());
        }
        if matches!(request, Request::Stop) {
            self.stop_relayed = true;
        }
        append_request(&self.relay, request)
    }

    /// Relays one `stop` (once) if `requested`: how the worker's SIGTERM/SIGINT reaches the ranks.
    pub fn stop_if(&mut self, requested: bool) -> Result<(), TrlError> {
        if requested && !self.stop_relayed {
            self.relay(&Request::Stop)?;
        }
        Ok(())
    }

    /// The outcome if the launcher has ended.
    pub fn poll(&mut self) -> Result<Option<TrlOutcome>, TrlError> {
        let status = self.child.try_wait().map_err(io_err(&self.log))?;
        status.map(|s| self.outcome(s)).transpose()
    }

    fn outcome(&self, status: ExitStatus) -> Result<TrlOutcome, TrlError> {
        match status.code() {
            Some(0) if self.marker.is_file() => Ok(TrlOutcome::Finished),
            Some(0) => Ok(TrlOutcome::Stopped),
            _ => {
                let how = describe(status);
                Err(TrlError::Failed {
                    stage: self.stage.clone(),
                    status: how,
                    tail: tail_lines(&self.log, TAIL_LINES),
                })
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}

/// Appends one request as a JSON line to the relay file and fsyncs it.
pub fn append_request(path: &Path, request: &Request) -> Result<(), TrlError> {
    let mut line = serde_json::to_string(request).map_err(|e| TrlError::Io { path: path.into(), source: e.into() })?;
    line.push('\n');
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    file.write_all(line.as_bytes()).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

/// The last `n` non-empty lines of a log file, sanitized for the terminal (empty if unreadable).
pub fn tail_lines(path: &Path, n: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| crate::sanitize::sanitize(l, false))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The exact command of every TRL stage of `pipeline` for the run at `run_dir` (stage name,
/// command line), as `run.toml` records it; empty without TRL stages. Fails without a Python.
pub fn launch_lines(pipeline: &Pipeline, run_dir: &Path) -> Result<Vec<(String, String)>, TrlError> {
    let mut out = Vec::new();
    for stage in pipeline.stages.iter().filter(|s| s.engine == crate::config::Engine::Trl) {
        let settings = settings_of(pipeline, &stage.name)?;
        let python = python_of(settings)?;
        let command = launch(settings, &python, &spec_path(run_dir, &stage.name), &pipeline.run.device);
        out.push((stage.name.clone(), command.display()));
    }
    Ok(out)
}

fn settings_of<'p>(pipeline: &'p Pipeline, stage: &str) -> Result<&'p TrlSettings, TrlError> {
    pipeline
        .engine
        .as_ref()
        .and_then(|e| e.trl.as_ref())
        .ok_or_else(|| TrlError::NoSettings { stage: stage.to_string() })
}

/// What one TRL stage starts from.
pub struct StageLaunch<'a> {
    /// The pipeline.
    pub pipeline: &'a Pipeline,
    /// Its preference files, resolved.
    pub pref_files: &'a [PrefFile],
    /// The stage's index in the pipeline.
    pub index: usize,
    /// The run directory.
    pub run_dir: &'a Path,
    /// The HF directory the stage starts from: the previous stage's export, or the pipeline's model.
    pub model: &'a Path,
    /// The run's step the stage continues from.
    pub step_offset: u64,
    /// hone's data order (the spec's `orders` and `sft_orders`, one permutation of the files'
    /// examples per epoch).
    pub orders: Option<&'a DataOrders>,
    /// The log the launcher's output goes to.
    pub log: &'a Path,
}

/// Runs a stage on the TRL engine to its end: checks that the venv's packages import, writes the
/// spec, starts the launcher (its command line first in the log), and until it exits relays what
/// `next_request` yields and a stop once `stop_requested` turns true. The stage's own export is
/// [`export_dir`]. Returns the command it ran with the outcome.
pub fn run_stage(
    launch_of: &StageLaunch<'_>,
    stop_requested: &dyn Fn() -> bool,
    next_request: &mut dyn FnMut() -> Option<Request>,
) -> Result<(Launch, TrlOutcome), TrlError> {
    let StageLaunch { pipeline, pref_files, index, run_dir, model, step_offset, orders, log } = *launch_of;
    let stage = pipeline.stages.get(index).ok_or(TrlError::NoStage(index))?;
    let settings = settings_of(pipeline, &stage.name)?;
    let python = python_of(settings)?;
    let command = launch(settings, &python, &spec_path(run_dir, &stage.name), &pipeline.run.device);
    if export_dir(run_dir, &stage.name).join(EXPORT_MARKER).is_file() {
        // Finished and exported by an earlier worker of this run (a resumed pipeline).
        return Ok((command, TrlOutcome::Finished));
    }
    check_packages(&python)?;
    let mut spec = stage_spec(pipeline, index, run_dir, model, step_offset, pref_files)?;
    if let Some(orders) = orders {
        spec["orders"] = json!(orders.main);
        if let Some(sft) = &orders.sft {
            spec["sft_orders"] = json!(sft);
        }
    }
    write_spec(run_dir, &stage.name, &spec)?;
    let header = format!("hone: stage {} on the TRL engine: {}\n", stage.name, command.display());
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(header.as_bytes()))
        .map_err(io_err(log))?;
    let mut child = TrlChild::start(&command, run_dir, &stage.name, log)?;
    loop {
        if let Some(outcome) = child.poll()? {
            return Ok((command, outcome));
        }
        while let Some(request) = next_request() {
            child.relay(&request)?;
        }
        child.stop_if(stop_requested())?;
        std::thread::sleep(POLL);
    }
}

/// Folds one line of `events.jsonl` written by the TRL stage's rank 0 into the status the
/// control socket answers, so `status` during a TRL stage says its step, length and λs like a
/// native stage's; true when the line changed it.
pub fn follow_status(status: &mut Status, line: &str, stage: &str) -> bool {
    let Ok(e) = Event::from_json(line) else { return false };
    if e.event != kind::METRICS || e.stage.as_deref() != Some(stage) {
        return false;
    }
    let number = |key: &str| e.fields.get(key).and_then(Value::as_f64);
    status.step = e.step.unwrap_or(status.step);
    status.stage_step = number("stage_step").map_or(status.stage_step, |v| v as u64);
    status.stage_total = number("total_steps").map(|v| v as u64).or(status.stage_total);
    status.lambda_pref = number("lambda/pref").or(status.lambda_pref);
    status.lambda_safe = number("lambda/safe").or(status.lambda_safe);
    true
}

#[path = "trl_resume.rs"]
mod resume;
pub use resume::{exported_step, resume_step};

#[path = "trl_spec.rs"]
mod spec;
pub use spec::{stage_spec, write_spec};

#[cfg(test)]
#[path = "trl_tests.rs"]
mod tests;
