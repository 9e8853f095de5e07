//! `hone label`: the labeling pane on its own, with no run attached (or beside a run with
//! `--run DIR`). The UI thread draws and reads keys; the `label-writer` thread appends and fsyncs
//! each label (the pane shows it as saved only once that returns); the `label-watch` thread tails
//! the labels file (agreement), the run's `candidates.jsonl` (new pairs) and `events.jsonl`
//! (`labels_admitted`: pairs the running DPO stage consumed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::text::Line;
use serde_json::Value as Json;

use crate::data::jsonl::new_lines;
use crate::data::label_store::{read_candidates, Candidate, LabelWriter};
use crate::run::{kind, now_ms, RunDir, WorkerLock};
use crate::sanitize::sanitize;
use crate::tui::label::attach::{spawn_generate, LabelFeed};
use crate::tui::label::{LabelEffect, LabelPane};
use crate::tui::{Role, TerminalGuard, Theme};

/// What `hone label` was asked.
#[derive(Debug, Clone)]
pub struct LabelArgs {
    /// Candidates JSONL.
    pub candidates: Option<PathBuf>,
    /// The labels file (default: the run's labels.jsonl, or labels.jsonl here).
    pub labels: Option<PathBuf>,
    /// Who labels (default: `$USER`).
    pub labeler: Option<String>,
    /// A rubric shown on `r`.
    pub rubric: Option<PathBuf>,
    /// A run directory to label for.
    pub run: Option<PathBuf>,
    /// The share of pairs served again (0 to 1).
    pub repeat_share: f64,
    /// Seed of the left/right orders and of the repeats (default: random).
    pub seed: Option<u64>,
    /// Where the newest live run is looked for when neither `labels` nor `run` is given.
    pub runs_dir: PathBuf,
}

/// What the background threads tell the UI.
enum Msg {
    Saved(Result<(), String>),
    Agreement { pairs: Vec<crate::data::label_store::PairAgreement>, again: usize },
    Consumed(u64),
    Candidates(Vec<Candidate>),
    Problem(String),
    Generated(Result<String, String>),
}

/// The newest run of `runs_dir` whose worker is alive (it holds the run's lock; its pid is in
/// `worker.pid`).
pub fn newest_live_run(runs_dir: &Path) -> Result<Option<RunDir>> {
    for run in RunDir::list(runs_dir)?.into_iter().rev() {
        if WorkerLock::is_live(&run)?.is_some() {
            return Ok(Some(run));
        }
    }
    Ok(None)
}

/// Runs the labeling pane until `q`.
pub fn run(args: &LabelArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.repeat_share) {
        anyhow::bail!("--repeat-share must be between 0 and 1, got {}", args.repeat_share);
    }
    let mut args = args.clone();
    let labels = match (&args.labels, &args.run) {
        (Some(p), _) => p.clone(),
        (None, Some(run)) => RunDir::open(run)?.labels_path(),
        (None, None) => {
            // A labels file no stage reads is a trap: label for the live run, or say how to choose.
            let Some(live) = newest_live_run(&args.runs_dir)? else {
                anyhow::bail!(
                    "no live run in {} to label for: pass --run DIR to label for a run (its labels.jsonl \
                     feeds its DPO stage), or --labels FILE to write labels to a file of your own",
                    sanitize(&args.runs_dir.display().to_string(), false)
                );
            };
            eprintln!(
                "labeling for the live run {} (its labels.jsonl); --run or --labels chooses another",
                sanitize(&live.path().display().to_string(), false)
            );
            args.run = Some(live.path().to_path_buf());
            live.labels_path()
        }
    };
    let args = &args;
    let mut candidates = match &args.candidates {
        Some(p) => read_candidates(p)?,
        None => Vec::new(),
    };
    // With a run, its candidates.jsonl (now or later) and `g` fill the queue.
    if args.candidates.is_none() && args.run.is_none() {
        anyhow::bail!(
            "nothing to label: give --candidates FILE (JSONL of {{\"prompt\", \"responses\": [..]}}) or --run DIR"
        );
    }
    let rubric = match &args.rubric {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    let labeler = args.labeler.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "labeler".to_string());
    let seed = args.seed.unwrap_or_else(rand::random);
    let session = format!("{}-{:08x}", sanitize(&labeler, false).replace(' ', "_"), rand::random::<u32>());
    candidates.retain(|c| c.responses.len() >= 2);
    let mut pane = LabelPane::new(&labeler, candidates, seed, &session);
    pane.repeat_share = args.repeat_share;
    pane.rubric = rubric;
    pane.consumed_by_dpo = args.run.as_ref().map(|_| 0);

    let (to_ui, from_bg) = mpsc::channel();
    let (to_writer, writer_rx) = mpsc::channel::<Json>();
    let writer = LabelWriter::new(&labels);
    let saved_tx = to_ui.clone();
    let writer_thread = thread::Builder::new().name("label-writer".into()).spawn(move || {
        for record in writer_rx {
            let outcome = writer.append(&record).map_err(|e| e.to_string());
            if saved_tx.send(Msg::Saved(outcome)).is_err() {
                break;
            }
        }
    })?;
    let generate_tx = to_ui.clone();
    let watch = Watch { labels: labels.clone(), run: args.run.clone(), tx: to_ui };
    thread::Builder::new().name("label-watch".into()).spawn(move || watch.run())?;

    let theme = Theme::load(None).unwrap_or_default();
    let bg = Background { rx: from_bg, tx: generate_tx, run: args.run.clone() };
    let result = ui(&mut pane, &theme, &labels, &bg, &to_writer);
    drop(to_writer);
    // Labels still in flight are written before the process ends.
    let _ = writer_thread.join();
    result
}

/// The UI's side of the background threads: their messages, a sender for `generate` threads and
/// the run (if any) whose worker `g` asks for candidates.
struct Background {
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    run: Option<PathBuf>,
}

fn ui(pane: &mut LabelPane, theme: &Theme, labels: &Path, bg: &Background, writer: &Sender<Json>) -> Result<()> {
    let rx = &bg.rx;
    // Raw mode and the alternate screen, restored on drop (also while unwinding from a panic).
    let mut screen = TerminalGuard::enter()?;
    let title = format!(
        " hone label · {} · {}",
        sanitize(&pane.labeler, false),
        sanitize(&labels.display().to_string(), false)
    );
    let mut dirty = true;
    loop {
        if dirty {
            screen.terminal.draw(|frame| {
                let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(frame.area());
                frame.render_widget(Line::styled(title.as_str(), theme.style(Role::Text)), head);
                crate::tui::label::draw(pane, theme, frame, body);
            })?;
            dirty = false;
        }
        while let Ok(msg) = rx.try_recv() {
            dirty = true;
            match msg {
                Msg::Saved(outcome) => pane.saved(outcome),
                Msg::Agreement { pairs, again } => (pane.agreement, pane.served_again) = (pairs, again),
                Msg::Consumed(n) => pane.consumed_by_dpo = Some(n),
                Msg::Candidates(c) => pane.enqueue(c),
                Msg::Problem(p) => pane.status = Some(Err(p)),
                Msg::Generated(r) => pane.generated(r),
            }
        }
        if !event::poll(Duration::from_millis(50))? {
            continue;
        }
        dirty = true;
        let Event::Key(key) = event::read()? else { continue };
        let quit = key.code == KeyCode::Char('q')
            || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL));
        if quit && !pane.show_rubric {
            return Ok(());
        }
        let mut effect = pane.key(key);
        while let Some(e) = effect.take() {
            match e {
                LabelEffect::Append(mut record) => {
                    record["ts"] = Json::from(now_ms());
                    writer.send(record).context("the label writer stopped")?;
                }
                LabelEffect::Edit(initial) => {
                    screen.suspend()?;
                    let written = edit(&initial);
                    screen.resume()?;
                    match written {
                        Ok(text) => effect = pane.edited(text),
                        Err(e) => pane.status = Some(Err(format!("editor: {e:#}"))),
                    }
                }
                LabelEffect::Generate(count) => match &bg.run {
                    Some(run) => {
                        let tx = bg.tx.clone();
                        spawn_generate(run.clone(), count, move |r| {
                            let _ = tx.send(Msg::Generated(r));
                        });
                    }
                    None => pane.generated(Err("no run: start `hone label --run DIR` to generate candidates".into())),
                },
            }
        }
    }
}

/// Opens `$VISUAL` or `$EDITOR` (default `vi`) on `initial` in a private temporary file; the
/// text saved, or `None` when the editor failed.
fn edit(initial: &str) -> Result<Option<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".to_string());
    // Split as a shell would (`code --wait`, a quoted path with spaces), without running a shell.
    let words = shell_words::split(&editor).with_context(|| format!("the editor command {editor:?} does not parse"))?;
    let (program, args) = words.split_first().map_or(("vi", &[][..]), |(p, a)| (p.as_str(), a));
    let path = std::env::temp_dir().join(format!("hone-answer-{}-{}.md", std::process::id(), now_ms()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(initial.as_bytes())?;
    drop(file);
    let status = std::process::Command::new(program).args(args).arg(&path).status();
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => Ok(Some(text?)),
        Ok(_) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not start {program:?}")),
    }
}

/// The `label-watch` thread: polls the labels file, the run's candidates and its events.
struct Watch {
    labels: PathBuf,
    run: Option<PathBuf>,
    tx: Sender<Msg>,
}

impl Watch {
    fn run(self) {
        let candidates = self.run.as_deref().map(|run| RunDir::at(run).candidates_path());
        let mut feed = LabelFeed::new(&self.labels, candidates);
        let (mut events_offset, mut consumed) = (0u64, 0u64);
        loop {
            let news = feed.poll();
            if let Some((pairs, again)) = news.agreement {
                if self.tx.send(Msg::Agreement { pairs, again }).is_err() {
                    return;
                }
            }
            if news.problems.into_iter().any(|p| self.tx.send(Msg::Problem(p)).is_err()) {
                return;
            }
            if !news.candidates.is_empty() && self.tx.send(Msg::Candidates(news.candidates)).is_err() {
                return;
            }
            if let Some(run) = &self.run {
                let before = consumed;
                for text in new_lines(&RunDir::at(run).events_path(), &mut events_offset) {
                    let Ok(v) = serde_json::from_str::<Json>(&text) else { continue };
                    if v.get("event").and_then(Json::as_str) == Some(kind::LABELS_ADMITTED) {
                        consumed += v.get("count").and_then(Json::as_u64).unwrap_or(0);
                    }
                }
                if consumed != before && self.tx.send(Msg::Consumed(consumed)).is_err() {
                    return;
                }
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}
