//! The worker: `hone run --headless` and `hone resume --headless` run it in the foreground, with
//! one progress line per stage on stderr and the run directory on stdout when done; `hone worker
//! --run-dir DIR` (hidden) is the same worker started detached by `hone run` (see `detach.rs`).
//! Every worker serves the run's control socket while it trains.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde_json::json;

use crate::config::{
    diff_frozen, freeze, frozen_toml, load_frozen, load_pipeline, FrozenExtras, FrozenLaunch, LoadedPipeline,
};
use crate::data::label_store::read_candidates;
use crate::model::{parse_device, parse_dtype};
use crate::run::control::ControlServer;
use crate::run::worker::RunHost;
use crate::run::{
    discard_after, kind, latest_checkpoint, list_checkpoints, verify_for_resume, Event, EventReader, RunDir, RunError,
    Shutdown, WorkerLock,
};
use crate::sanitize::sanitize;
use crate::train::trainer::{Finished, PrefFile, RunOptions, Trainer};

/// Overrides of the pipeline file from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--stages a,b`.
    pub stages: Option<Vec<String>>,
    /// `--max-steps N`.
    pub max_steps: Option<u64>,
    /// `--checkpoint-every N`.
    pub checkpoint_every: Option<u64>,
    /// `--seed S`.
    pub seed: Option<u64>,
    /// Hidden fault injection for tests.
    pub inject_nan_at: Vec<u64>,
}

impl Overrides {
    fn apply(&self, loaded: &mut LoadedPipeline) -> Result<Vec<String>> {
        let mut applied = Vec::new();
        if let Some(seed) = self.seed {
            loaded.pipeline.run.seed = seed;
            applied.push(format!("--seed {seed}"));
        }
        if let Some(every) = self.checkpoint_every {
            loaded.pipeline.run.checkpoint_every = every;
            applied.push(format!("--checkpoint-every {every}"));
        }
        if let Some(n) = self.max_steps {
            applied.push(format!("--max-steps {n}"));
        }
        if let Some(stages) = &self.stages {
            for s in stages {
                if !loaded.pipeline.stages.iter().any(|st| &st.name == s) {
                    let names: Vec<&str> = loaded.pipeline.stages.iter().map(|st| st.name.as_str()).collect();
                    bail!("--stages: no stage named {s:?} (stages: {})", names.join(", "));
                }
            }
            applied.push(format!("--stages {}", stages.join(",")));
        }
        Ok(applied)
    }

    fn options(&self) -> RunOptions {
        RunOptions { stages: self.stages.clone(), max_steps: self.max_steps, inject_nan_at: self.inject_nan_at.clone() }
    }
}

/// The progress line: one per stage, redrawn in place on a terminal, printed every 10% otherwise.
struct Progress {
    tty: bool,
    stage: String,
    started: Instant,
    last_decile: u64,
}

impl Progress {
    /// `redraw`: redraw the line in place when stderr is a terminal (a detached worker's log
    /// always gets whole lines).
    fn new(redraw: bool) -> Self {
        Self {
            tty: redraw && std::io::stderr().is_terminal(),
            stage: String::new(),
            started: Instant::now(),
            last_decile: 0,
        }
    }

    fn show(&mut self, event: &Event) {
        let mut err = std::io::stderr().lock();
        let stage = sanitize(event.stage.as_deref().unwrap_or("-"), false);
        let field = |k: &str| event.fields.get(k).and_then(serde_json::Value::as_f64);
        match event.event.as_str() {
            kind::STAGE_STARTED | kind::STAGE_RESUMED => {
                if let Some(round) = event.fields.get("round").and_then(serde_json::Value::as_u64) {
                    let _ = writeln!(err, "{}[iterate] round {round}: {stage}", if self.tty { "\r" } else { "" });
                }
                self.stage = stage;
                self.started = Instant::now();
                self.last_decile = 0;
            }
            kind::METRICS => {
                let (Some(done), Some(total)) = (field("stage_step"), field("total_steps")) else { return };
                let frac = if total > 0.0 { done / total } else { 1.0 };
                let width = 24usize;
                let filled = ((frac * width as f64).round() as usize).min(width);
                let elapsed = self.started.elapsed().as_secs_f64();
                let eta = if done > 0.0 { elapsed / done * (total - done) } else { 0.0 };
                let line = format!(
                    "[{:<8}] {}{} {:>5}/{:<5} loss {:>8.4}  ETA {:>4.0}s",
                    self.stage,
                    "█".repeat(filled),
                    "░".repeat(width - filled),
                    done,
                    total,
                    field("loss").unwrap_or(f64::NAN),
                    eta
                );
                let decile = (frac * 10.0).floor() as u64;
                if self.tty {
                    let _ = write!(err, "\r{line}");
                    if done >= total {
                        let _ = writeln!(err);
                    }
                } else if decile > self.last_decile || done >= total {
                    self.last_decile = decile;
                    let _ = writeln!(err, "{line}");
                }
            }
            kind::EVAL_FINISHED => {
                let rate = |k: &str| field(k).map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
                let _ = writeln!(
                    err,
                    "[eval {stage}] task success {}  win rate {}  unsafe {}  jailbreak {}  hallucination {}  p95 {}s",
                    rate("task_success_rate"),
                    rate("win_rate"),
                    rate("unsafe_rate"),
                    rate("jailbreak_success_rate"),
                    rate("hallucination_rate"),
                    rate("latency_p95_s"),
                );
            }
            kind::GATE_DECIDED => {
                let decision = event.fields.get("decision").and_then(serde_json::Value::as_str).unwrap_or("?");
                let detail = ["failing", "missing", "export"]
                    .iter()
                    .find_map(|k| event.fields.get(*k).map(|v| format!(" ({k}: {})", sanitize(&v.to_string(), false))))
                    .unwrap_or_default();
                let _ = writeln!(err, "[gates {stage}] {decision}{detail}");
            }
            kind::WARNING | kind::ERROR => {
                let msg = event.fields.get("message").and_then(serde_json::Value::as_str).unwrap_or("");
                let _ = writeln!(
                    err,
                    "{}{}: [{stage}] {}",
                    if self.tty { "\r" } else { "" },
                    event.event,
                    sanitize(msg, false)
                );
            }
            _ => {}
        }
    }
}

fn hone_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn resolve_prefs(loaded: &LoadedPipeline, run: &RunDir) -> Vec<Vec<PrefFile>> {
    // Absolute: checkpoints and events name the live labels files a resume replays reads of, and
    // `hone resume` may run from another directory than `hone run --runs-dir <relative>` did.
    let dir = std::path::absolute(run.path()).unwrap_or_else(|_| run.path().to_path_buf());
    loaded
        .pref_sources
        .iter()
        .map(|stage| stage.iter().map(|s| PrefFile { path: s.resolve(&dir), live: s.is_run_relative() }).collect())
        .collect()
}

fn lock(run: &RunDir) -> Result<WorkerLock> {
    WorkerLock::acquire(run).map_err(|e| match e {
        RunError::Busy { pid, .. } => anyhow::anyhow!(
            "{}: a worker is already running this run (pid {}); attach to it or stop it first",
            run.path().display(),
            pid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
        ),
        other => other.into(),
    })
}

/// Creates the run directory of `pipeline` with its frozen config; returns it locked.
fn prepare(pipeline: &Path, runs_dir: &Path, overrides: &Overrides) -> Result<(LoadedPipeline, WorkerLock)> {
    let mut loaded = load_pipeline(pipeline)?;
    let applied = overrides.apply(&mut loaded)?;
    // Refused before a run directory exists (`hone check` says the same).
    parse_device(&loaded.pipeline.run.device).with_context(|| pipeline.display().to_string())?;
    let candidates = loaded.pipeline.label.as_ref().map(|l| l.candidates.clone()).unwrap_or_default();
    // A bad candidates file is refused (with its line) before a run directory exists.
    for file in &candidates {
        read_candidates(file)?;
    }
    // A TRL stage without its interpreter is refused before a run directory exists.
    crate::run::trl::launch_lines(&loaded.pipeline, Path::new("."))?;
    let run = RunDir::create(runs_dir, &loaded.pipeline.run.name)?;
    let lock = lock(&run)?;
    let mut frozen = freeze(&loaded, &FrozenExtras { hone_version: hone_version(), overrides: applied })?;
    frozen.info.trl_launches = crate::run::trl::launch_lines(&loaded.pipeline, run.path())?
        .into_iter()
        .map(|(stage, command)| FrozenLaunch { stage, command })
        .collect();
    run.write_frozen_config(&frozen_toml(&frozen)?)?;
    run.seed_candidates(&candidates)?;
    Ok((loaded, lock))
}

/// `hone run PIPELINE` (detached): creates the run directory and its frozen config, for a
/// worker to take over.
pub fn create(pipeline: &Path, runs_dir: &Path, overrides: &Overrides) -> Result<RunDir> {
    let (_, lock) = prepare(pipeline, runs_dir, overrides)?;
    Ok(lock.run().clone())
}

/// `hone run PIPELINE --headless`.
pub fn run(pipeline: &Path, runs_dir: &Path, overrides: &Overrides) -> Result<PathBuf> {
    let (loaded, lock) = prepare(pipeline, runs_dir, overrides)?;
    let path = lock.run().path().to_path_buf();
    start(&loaded, lock, overrides, true)?;
    Ok(path)
}

/// Trains a run from its start: `run_started`, then every stage.
fn start(loaded: &LoadedPipeline, lock: WorkerLock, overrides: &Overrides, progress_line: bool) -> Result<()> {
    let run = lock.run().clone();
    let prefs = resolve_prefs(loaded, &run);
    let mut host = RunHost::new(lock, Some(Shutdown::install()?), loaded.pipeline.run.keep_checkpoints, prefs)?;
    let control = ControlServer::start(host.lock())?;
    host.set_inbox(control.inbox());
    let mut progress = Progress::new(progress_line);
    host.set_observer(Box::new(move |e| progress.show(e)));
    // The stages run in sequence; a fix stage's rounds join the dashboard's strip when they start.
    let stages: Vec<&str> = loaded.pipeline.sequence().map(|s| s.name.as_str()).collect();
    host.append(
        Event::new(kind::RUN_STARTED, None, Some(0))
            .with("run_id", run.id())
            .with("pid", std::process::id())
            .with("pipeline", loaded.source_path.display().to_string())
            .with("stages", json!(stages))
            // Whether stages are evaluated and gated: the dashboard shows the gates only then.
            .with("eval", loaded.pipeline.eval.is_some()),
    )?;
    train(loaded, &mut host, overrides, None)
}

/// `hone worker --run-dir DIR`: the detached worker. Leaves the terminal's session, then starts
/// the run (when no worker ever started it) or resumes it from its newest checkpoint.
pub fn worker(run_path: &Path, force: bool, from_step: Option<u64>, overrides: &Overrides) -> Result<()> {
    // A new session: no controlling terminal, so closing the terminal or losing the SSH link
    // sends this process nothing. Fails only for a process-group leader (a worker started by
    // hand from a shell), which then relies on SIGHUP being ignored.
    let _ = rustix::process::setsid();
    let run = RunDir::open(run_path)?;
    let lock = lock(&run)?;
    let started = EventReader::read_all(&run.events_path())?.events.iter().any(|e| e.event == kind::RUN_STARTED);
    if started {
        return resume_locked(lock, force, from_step, overrides, false);
    }
    let frozen = load_frozen(&run.config_path())?;
    let mut options = overrides.clone();
    options.stages = options.stages.or_else(|| stages_override(&frozen.info.overrides));
    options.max_steps = options.max_steps.or_else(|| max_steps_override(&frozen.info.overrides));
    start(&frozen.loaded, lock, &options, false)
}

/// `hone resume RUN_DIR --headless`.
pub fn resume(run_path: &Path, force: bool, from_step: Option<u64>, overrides: &Overrides) -> Result<PathBuf> {
    let run = RunDir::open(run_path)?;
    let lock = lock(&run)?;
    resume_locked(lock, force, from_step, overrides, true)?;
    Ok(run.path().to_path_buf())
}

fn resume_locked(
    lock: WorkerLock,
    force: bool,
    from_step: Option<u64>,
    overrides: &Overrides,
    progress_line: bool,
) -> Result<()> {
    let run = lock.run().clone();
    let frozen = load_frozen(&run.config_path())?;
    // What would be frozen now, from the same pipeline file (or the frozen copy if it is gone).
    let current = if frozen.info.source.exists() {
        let mut now = load_pipeline(&frozen.info.source)?;
        // Overrides given when the run started are part of its config, not a change.
        now.pipeline.run.seed = frozen.loaded.pipeline.run.seed;
        now.pipeline.run.checkpoint_every = frozen.loaded.pipeline.run.checkpoint_every;
        now
    } else {
        frozen.loaded.clone()
    };
    let refrozen =
        freeze(&current, &FrozenExtras { hone_version: hone_version(), overrides: frozen.info.overrides.clone() })?;
    let changes = diff_frozen(&frozen, &refrozen);
    if !changes.is_empty() && !force {
        bail!(
            "{}: refusing to resume, the inputs changed since the run started:\n  {}\n(resume with --force to continue anyway)",
            run.path().display(),
            changes.iter().map(|c| sanitize(c, false)).collect::<Vec<_>>().join("\n  ")
        );
    }
    let loaded = frozen.loaded;
    let prefs = resolve_prefs(&loaded, &run);
    let mut host = RunHost::new(lock, Some(Shutdown::install()?), loaded.pipeline.run.keep_checkpoints, prefs)?;
    let control = ControlServer::start(host.lock())?;
    host.set_inbox(control.inbox());
    let mut progress = Progress::new(progress_line);
    host.set_observer(Box::new(move |e| progress.show(e)));
    let checkpoint = match from_step {
        None => latest_checkpoint(host.lock().run())?,
        Some(step) => {
            let all = list_checkpoints(host.lock().run())?;
            let steps: Vec<String> = all.iter().map(|c| c.step.to_string()).collect();
            let found = all.into_iter().find(|c| c.step == step);
            if found.is_none() {
                bail!("--from-step {step}: no complete checkpoint at that step (have: {})", steps.join(", "));
            }
            found
        }
    };
    if let Some(c) = &checkpoint {
        let started = Instant::now();
        let verified = verify_for_resume(&mut host, c).with_context(|| format!("checkpoint {}", c.dir.display()))?;
        if verified.is_break() {
            host.append(
                Event::new(kind::RUN_FINISHED, None, None)
                    .with("status", "stopped")
                    .with("seconds", started.elapsed().as_secs_f64()),
            )?;
            host.sync()?;
            return Ok(());
        }
        let discarded = discard_after(host.lock(), c.step)?;
        if !discarded.is_empty() {
            host.append(Event::new(kind::WARNING, None, Some(c.step)).with(
                "message",
                format!("resuming from step {}: discarded the later checkpoints {discarded:?}", c.step),
            ))?;
        }
    }
    if !changes.is_empty() {
        host.append(
            Event::new(kind::WARNING, None, None)
                .with("message", format!("resumed with --force despite: {}", changes.join("; "))),
        )?;
    }
    let from = checkpoint.as_ref().map_or(0, |c| c.step);
    host.plan_admissions_after(from)?;
    host.plan_controls_after(from)?;
    // TRL stages checkpoint on their own: metrics up to their newest checkpoint stand.
    let shown = match from_step {
        None => crate::run::trl::resume_step(run.path(), &EventReader::read_all(&run.events_path())?.events)
            .map_or(from, |s| s.max(from)),
        Some(_) => from,
    };
    host.append(Event::new(kind::RESUMED, None, Some(shown)).with("from_step", shown).with("pid", std::process::id()))?;
    let mut options = overrides.clone();
    if options.stages.is_none() {
        options.stages = stages_override(&frozen.info.overrides);
    }
    if options.max_steps.is_none() {
        options.max_steps = max_steps_override(&frozen.info.overrides);
    }
    train(&loaded, &mut host, &options, checkpoint.map(|c| c.dir))
}

fn max_steps_override(overrides: &[String]) -> Option<u64> {
    overrides.iter().find_map(|o| o.strip_prefix("--max-steps ").and_then(|n| n.parse().ok()))
}

fn stages_override(overrides: &[String]) -> Option<Vec<String>> {
    overrides.iter().find_map(|o| o.strip_prefix("--stages ").map(|s| s.split(',').map(String::from).collect()))
}

fn train(
    loaded: &LoadedPipeline,
    host: &mut RunHost,
    overrides: &Overrides,
    checkpoint: Option<PathBuf>,
) -> Result<()> {
    let settings = &loaded.pipeline.run;
    let device = parse_device(&settings.device)?;
    let dtype: DType = parse_dtype(&settings.dtype)?;
    let started = Instant::now();
    let outcome = {
        let pipeline = loaded.pipeline.clone();
        let trainer = match &checkpoint {
            Some(dir) => Trainer::resume(pipeline, overrides.options(), host, device, dtype, dir),
            None => Trainer::new(pipeline, overrides.options(), host, device, dtype),
        };
        trainer.and_then(|mut t| t.run())
    };
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(Finished::Completed) => {
            host.append(
                Event::new(kind::RUN_FINISHED, None, None).with("status", "completed").with("seconds", seconds),
            )?;
        }
        Ok(Finished::Stopped) => {
            host.append(Event::new(kind::RUN_FINISHED, None, None).with("status", "stopped").with("seconds", seconds))?;
        }
        Err(e) => {
            let message = e.to_string();
            host.append(Event::new(kind::ERROR, None, None).with("message", message.clone()))?;
            host.append(Event::new(kind::RUN_FINISHED, None, None).with("status", "failed").with("seconds", seconds))?;
            host.sync()?;
            return Err(e).context(format!("run {}", host.lock().run().path().display()));
        }
    }
    host.sync()?;
    Ok(())
}

/// What `hone run PIPELINE [--headless]` does: headless, the worker runs in the foreground; otherwise
/// it starts detached and the terminal attaches to it. `hone demo` starts its pipeline through it
/// too. Returns the run directory.
pub fn start_run(
    pipeline: &Path,
    headless: bool,
    runs_dir: &Path,
    overrides: &Overrides,
    theme: Option<&Path>,
) -> Result<PathBuf> {
    if headless {
        return run(pipeline, runs_dir, overrides);
    }
    let inject_nan_at = overrides.inject_nan_at.clone();
    let overrides = Overrides { inject_nan_at: Vec::new(), ..overrides.clone() };
    let run = create(pipeline, runs_dir, &overrides)?;
    let args = super::detach::WorkerArgs { inject_nan_at, ..super::detach::WorkerArgs::default() };
    let pid = super::detach::spawn_worker(&run, &args)?;
    super::detach::attach_or_print(&run, pid, theme)?;
    Ok(run.path().to_path_buf())
}
