//! Starting the worker detached: `hone run PIPELINE` (without `--headless`) and `hone resume
//! RUN_DIR` spawn `hone worker --run-dir DIR` in its own session with stdin from /dev/null and
//! stdout/stderr appended to `worker.log`, wait until it is up (its pid in `worker.pid` and its
//! control socket listening), then attach the dashboard. Quitting the dashboard never touches
//! the worker. `hone` alone opens the newest run, or offers the demo.

use std::fs::OpenOptions;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::run::{control, Ending, EventReader, RunDir, RunState, WorkerLock};
use crate::sanitize::sanitize;

/// How long a worker may take to come up (load nothing yet: it only locks and binds).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// Lines of `worker.log` shown when a worker fails to start.
const LOG_TAIL_LINES: usize = 20;

/// How to resume: the arguments `hone resume` and `hone worker` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// Resume even though inputs changed.
    #[arg(long)]
    pub force: bool,
    /// Resume from the checkpoint of this global step instead of the newest.
    #[arg(long)]
    pub from_step: Option<u64>,
    /// Fault injection for tests: a NaN loss at these global steps.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub inject_nan_at: Vec<u64>,
}

/// Spawns the detached worker of `run` and waits until it is up; returns its pid.
pub fn spawn_worker(run: &RunDir, args: &WorkerArgs) -> Result<u32> {
    let exe = std::env::current_exe().context("cannot find the hone executable")?;
    let log_path = run.worker_log_path();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker").arg("--run-dir").arg(run.path());
    if args.force {
        cmd.arg("--force");
    }
    if let Some(step) = args.from_step {
        cmd.arg("--from-step").arg(step.to_string());
    }
    if !args.inject_nan_at.is_empty() {
        let steps: Vec<String> = args.inject_nan_at.iter().map(u64::to_string).collect();
        cmd.arg("--inject-nan-at").arg(steps.join(","));
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = cmd.spawn().context("cannot start the worker")?;
    wait_until_up(run, child)
}

fn wait_until_up(run: &RunDir, mut child: Child) -> Result<u32> {
    let pid = child.id();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the worker exited at once ({status}); the end of {}:\n{}",
                run.worker_log_path().display(),
                log_tail(run)
            );
        }
        let pid_ok =
            std::fs::read_to_string(run.worker_pid_path()).ok().and_then(|s| s.trim().parse::<u32>().ok()) == Some(pid);
        if pid_ok && control::socket_path(run).is_some() {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!(
                "the worker (pid {pid}) did not come up within {}s; see {}",
                STARTUP_TIMEOUT.as_secs(),
                run.worker_log_path().display()
            );
        }
        thread::sleep(POLL);
    }
}

/// The run's state as `hone runs` reports it (live while a worker holds its lock).
fn state_now(run: &RunDir) -> RunState {
    let events = EventReader::read_all(&run.events_path()).map(|b| b.events).unwrap_or_default();
    let live = WorkerLock::is_live(run).ok().flatten();
    Ending::of(&events).state(live.as_ref())
}

fn log_tail(run: &RunDir) -> String {
    let Ok(file) = std::fs::File::open(run.worker_log_path()) else { return String::new() };
    let lines: Vec<String> = std::io::BufReader::new(file).lines().map_while(Result::ok).collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].iter().map(|l| format!("  {}", sanitize(l, false))).collect::<Vec<_>>().join("\n")
}

/// After a detached start: the dashboard on a terminal, otherwise the run directory on stdout.
pub fn attach_or_print(run: &RunDir, pid: u32, theme: Option<&Path>) -> Result<()> {
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        crate::tui::attach(run.path(), theme)?;
        let path = sanitize(&run.path().display().to_string(), false);
        match state_now(run) {
            RunState::Live(_) => {
                eprintln!("detached; the worker (pid {pid}) keeps training. `hone attach {path}` reattaches.");
            }
            RunState::Interrupted => {
                eprintln!("the worker (pid {pid}) is gone; `hone resume {path}` continues the run.");
            }
            ended => eprintln!("the run is {}; `hone attach {path}` shows it again.", ended.label()),
        }
    } else {
        eprintln!(
            "worker started (pid {pid}); its log is {}",
            sanitize(&run.worker_log_path().display().to_string(), false)
        );
        println!("{}", run.path().display());
    }
    Ok(())
}

/// `hone` with no arguments: the newest run of `runs_dir`, or, where there is none, an offer to
/// start the demo (`hone demo`).
pub fn open_default(runs_dir: &Path, theme: Option<&Path>) -> Result<ExitCode> {
    if let Some(run) = RunDir::newest(runs_dir)? {
        crate::tui::attach(run.path(), theme)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "No runs in {} yet.\n\n`hone demo` runs the embedded sample pipeline (base evaluation, SFT, DPO and safety \
         tuning of a tiny model, each evaluated and gated) in a few minutes on this CPU and opens the dashboard on it.",
        sanitize(&runs_dir.display().to_string(), false)
    )?;
    if !std::io::stdin().is_terminal() {
        writeln!(err, "Start it with `hone demo`, or a pipeline of your own with `hone run PIPELINE.toml`.")?;
        return Ok(ExitCode::SUCCESS);
    }
    write!(err, "Start the demo now? [Y/n] ")?;
    err.flush()?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "" | "y" | "yes") {
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("cannot find the hone executable")?;
    let mut demo = Command::new(exe);
    demo.arg("demo").arg("--runs-dir").arg(runs_dir);
    if let Some(theme) = theme {
        demo.arg("--theme").arg(theme);
    }
    let status = demo.status().map_err(|e| anyhow!("cannot start `hone demo`: {e}"))?;
    Ok(status.code().and_then(|c| u8::try_from(c).ok()).map_or(ExitCode::FAILURE, ExitCode::from))
}
