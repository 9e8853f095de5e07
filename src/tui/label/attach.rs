//! Panes 3 (Label) and 4 (Eval) inside the attached TUI: the glue between [`LabelPane`] /
//! [`EvalPane`] and the app's loop, kept here so the app itself changes by a few lines.
//!
//! - The `panes` thread loads the eval pane (again whenever a report.json changes), tails the
//!   run's `candidates.jsonl` into the label queue and the labels file into the agreement
//!   figures, and sends each result as an [`Action::Panes`].
//! - [`route_key`] gives a key to the pane shown (global keys excepted) and performs its effect:
//!   appends run on a short-lived `label-write` thread (locked, fsynced by [`LabelWriter`]) whose
//!   outcome comes back as an action, so the UI never waits on the disk.
//! - `$EDITOR` is not offered while attached: the terminal's input belongs to the event loop, so
//!   an editor would fight it for keys; `hone label --run DIR` has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde_json::Value as Json;
use tokio::sync::mpsc::Sender;

use super::{LabelEffect, LabelPane};
use crate::data::jsonl::new_lines;
use crate::data::label_store::{agreement, parse_candidate, served_again, Candidate, LabelWriter, PairAgreement};
use crate::data::labels::LabelLog;
use crate::run::control::{Client, Request};
use crate::run::{now_ms, RunDir, EVAL_REPORT};
use crate::tui::eval_pane::{self, EvalEffect, EvalPane};
use crate::tui::keymap::PANE_GLOBAL;
use crate::tui::{Action, App, Pane};

/// What the `panes` thread and the write threads report.
#[derive(Debug, Clone)]
pub enum PaneMsg {
    /// A label append finished.
    LabelSaved(Result<(), String>),
    /// An override append finished.
    OverrideSaved(Result<(), String>),
    /// A label sent from the eval pane finished.
    EvalLabelSaved(Result<(), String>),
    /// The eval pane was (re)loaded from the run directory.
    EvalLoaded(Arc<EvalPane>),
    /// New candidates arrived in the run's candidates.jsonl.
    Candidates(Vec<Candidate>),
    /// The labels file changed: agreement per labeler pair and items served again.
    Agreement(Vec<PairAgreement>, usize),
    /// A bad line in the run's candidates.jsonl, located.
    Problem(String),
    /// The worker's answer to `generate_candidates` (or why it could not be asked).
    Generated(Result<String, String>),
}

impl PartialEq for PaneMsg {
    fn eq(&self, other: &PaneMsg) -> bool {
        match (self, other) {
            (PaneMsg::LabelSaved(a), PaneMsg::LabelSaved(b))
            | (PaneMsg::OverrideSaved(a), PaneMsg::OverrideSaved(b))
            | (PaneMsg::EvalLabelSaved(a), PaneMsg::EvalLabelSaved(b)) => a == b,
            (PaneMsg::EvalLoaded(a), PaneMsg::EvalLoaded(b)) => Arc::ptr_eq(a, b),
            (PaneMsg::Candidates(a), PaneMsg::Candidates(b)) => a == b,
            (PaneMsg::Agreement(a, x), PaneMsg::Agreement(b, y)) => a == b && x == y,
            (PaneMsg::Problem(a), PaneMsg::Problem(b)) => a == b,
            (PaneMsg::Generated(a), PaneMsg::Generated(b)) => a == b,
            _ => false,
        }
    }
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "labeler".to_string())
}

/// Gives `app` its label and eval panes (empty until the `panes` thread reports).
pub fn init(app: &mut App) {
    let session = format!("{}-{:08x}", user(), rand::random::<u32>());
    let mut label = LabelPane::new(&user(), Vec::new(), rand::random(), &session);
    label.consumed_by_dpo = Some(app.labels_admitted);
    label.repeat_share = 0.1;
    app.label = Some(label);
    app.eval = Some(EvalPane::new(Vec::new(), None, Vec::new(), &user(), &format!("{session}-eval")));
}

/// Folds a message into the app.
pub fn apply(app: &mut App, msg: PaneMsg) {
    match msg {
        PaneMsg::LabelSaved(r) => app.label.iter_mut().for_each(|p| p.saved(r.clone())),
        PaneMsg::OverrideSaved(r) => app.eval.iter_mut().for_each(|p| p.override_saved(r.clone())),
        PaneMsg::EvalLabelSaved(r) => app.eval.iter_mut().for_each(|p| p.label_saved(r.clone())),
        PaneMsg::EvalLoaded(pane) => {
            let mut pane = Arc::unwrap_or_clone(pane);
            if let Some(old) = app.eval.take() {
                pane.sent = old.sent;
                // The pane follows the newest stage until the person picks another; a pick is
                // kept (by name) across reloads.
                let followed_newest = old.selected + 1 >= old.stages.len();
                let picked = old.stages.get(old.selected).map(|s| s.name.as_str());
                let again = picked.and_then(|name| pane.stages.iter().position(|s| s.name == name));
                if let (false, Some(i)) = (followed_newest, again) {
                    pane.selected = i;
                    pane.blind = old.blind;
                }
                pane.blind_seed = old.blind_seed;
            }
            app.eval = Some(pane);
        }
        PaneMsg::Candidates(c) => app.label.iter_mut().for_each(|p| p.enqueue(c.clone())),
        PaneMsg::Generated(r) => app.label.iter_mut().for_each(|p| p.generated(r.clone())),
        PaneMsg::Problem(e) => app.label.iter_mut().for_each(|p| p.status = Some(Err(e.clone()))),
        PaneMsg::Agreement(pairs, again) => {
            if let Some(p) = app.label.as_mut() {
                (p.agreement, p.served_again) = (pairs, again);
            }
        }
    }
    if let Some(p) = app.label.as_mut() {
        p.consumed_by_dpo = Some(app.labels_admitted);
    }
}

/// Keys panes 3 and 4 leave to the keymap: those bound to [`PANE_GLOBAL`] commands, and Ctrl-C.
fn is_global(app: &App, key: &KeyEvent) -> bool {
    app.keymap.command(*key).is_some_and(|c| PANE_GLOBAL.contains(&c))
        || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
}

fn append(path: PathBuf, mut record: Json, tx: Sender<Action>, done: fn(Result<(), String>) -> PaneMsg) {
    if record.get("ts").is_some() {
        record["ts"] = Json::from(now_ms());
    }
    let to_pane = tx.clone();
    let spawned = thread::Builder::new().name("label-write".into()).spawn(move || {
        let outcome = LabelWriter::new(&path).append(&record).map_err(|e| e.to_string());
        let _ = tx.blocking_send(Action::Panes(done(outcome)));
    });
    if let Err(e) = spawned {
        // The pane shows the failure like a failed write; this runs on the UI task, so never block.
        let _ = to_pane.try_send(Action::Panes(done(Err(format!("could not start the label-write thread: {e}")))));
    }
}

/// Gives `key` to the pane shown when it is the label or eval pane; true when it was used.
pub fn route_key(app: &mut App, key: KeyEvent, run: &Path, tx: &Sender<Action>) -> bool {
    if key.kind == KeyEventKind::Release || app.show_help || is_global(app, &key) {
        return false;
    }
    let labels = RunDir::at(run).labels_path();
    match app.pane {
        Pane::Label => {
            let Some(pane) = app.label.as_mut() else { return false };
            match pane.key(key) {
                Some(LabelEffect::Append(record)) => append(labels, record, tx.clone(), PaneMsg::LabelSaved),
                Some(LabelEffect::Edit(_)) => {
                    pane.status = Some(Err("write answers with `hone label --run DIR` (it opens $EDITOR)".into()));
                }
                Some(LabelEffect::Generate(count)) => {
                    let (run, tx) = (run.to_path_buf(), tx.clone());
                    spawn_generate(run, count, move |r| {
                        let _ = tx.blocking_send(Action::Panes(PaneMsg::Generated(r)));
                    });
                }
                None => {}
            }
        }
        Pane::Eval => {
            let Some(pane) = app.eval.as_mut() else { return false };
            match pane.key(key) {
                Some(EvalEffect::AppendOverride(o)) => {
                    append(RunDir::at(run).overrides_path(), o, tx.clone(), PaneMsg::OverrideSaved);
                }
                Some(EvalEffect::AppendLabel(record)) => append(labels, record, tx.clone(), PaneMsg::EvalLabelSaved),
                Some(EvalEffect::Edit(_)) => {
                    pane.status = Some(Err("write answers with `hone label --run DIR` (it opens $EDITOR)".into()));
                }
                None => {}
            }
        }
        _ => return false,
    }
    app.touch();
    true
}

/// Asks the live worker of the run in `run` for `count` prompts' worth of candidates from the
/// current policy, blocking for the reply (at most the control client's timeout); the message to
/// show. The candidates reach the queue through the run's `candidates.jsonl`.
pub fn request_candidates(run: &Path, count: usize) -> Result<String, String> {
    let mut client =
        Client::connect(run).map_err(|e| format!("the worker isn't live, so nothing can generate candidates ({e})"))?;
    let reply = client.send(&Request::GenerateCandidates { count }).map_err(|e| e.to_string())?;
    if reply.ok {
        Ok(format!("the worker will sample {count} prompts × 2 responses at its next step; they join the queue"))
    } else {
        Err(format!("the worker refused: {}", reply.error.unwrap_or_default()))
    }
}

/// Runs [`request_candidates`] on a short-lived `generate` thread and hands the outcome to `done`.
/// If the thread cannot start, `done` gets that error instead.
pub fn spawn_generate(run: PathBuf, count: usize, done: impl FnOnce(Result<String, String>) + Send + 'static) {
    let done = Arc::new(Mutex::new(Some(done)));
    let in_thread = Arc::clone(&done);
    let spawned = thread::Builder::new().name("generate".into()).spawn(move || {
        let outcome = request_candidates(&run, count);
        if let Some(done) = in_thread.lock().ok().and_then(|mut d| d.take()) {
            done(outcome);
        }
    });
    if let Err(e) = spawned {
        if let Some(done) = done.lock().ok().and_then(|mut d| d.take()) {
            done(Err(format!("could not start the generate thread: {e}")));
        }
    }
}

/// Starts the `panes` thread for the run in `run`.
pub fn spawn_watch(run: PathBuf, tx: Sender<Action>) -> std::io::Result<()> {
    thread::Builder::new().name("panes".into()).spawn(move || watch(&run, &tx)).map(|_| ())
}

/// report.json modification times, by stage directory.
fn report_times(run: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let Ok(entries) = std::fs::read_dir(RunDir::at(run).eval_root()) else { return BTreeMap::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let report = e.path().join(EVAL_REPORT);
            let modified = std::fs::metadata(&report).and_then(|m| m.modified()).ok()?;
            Some((report, modified))
        })
        .collect()
}

fn watch(run: &Path, tx: &Sender<Action>) {
    let send = |msg| tx.blocking_send(Action::Panes(msg)).is_ok();
    let dir = RunDir::at(run);
    let mut feed = LabelFeed::new(&dir.labels_path(), Some(dir.candidates_path()));
    let mut reports = None;
    loop {
        let times = report_times(run);
        if reports.as_ref() != Some(&times) {
            reports = Some(times);
            let session = format!("{}-{:08x}-eval", user(), rand::random::<u32>());
            if !send(PaneMsg::EvalLoaded(Arc::new(eval_pane::load(run, &user(), &session)))) {
                return;
            }
        }
        let news = feed.poll();
        if let Some((pairs, again)) = news.agreement {
            if !send(PaneMsg::Agreement(pairs, again)) {
                return;
            }
        }
        if news.problems.into_iter().any(|p| !send(PaneMsg::Problem(p))) {
            return;
        }
        if !news.candidates.is_empty() && !send(PaneMsg::Candidates(news.candidates)) {
            return;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// Complete candidate lines appended to a growing candidates file since `offset` (a torn last
/// line waits for its newline), and the `path:line:col: field: message` of each bad line.
pub fn read_candidates_from(path: &Path, offset: &mut u64, line_number: &mut usize) -> (Vec<Candidate>, Vec<String>) {
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    for text in new_lines(path, offset) {
        *line_number += 1;
        if text.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(&text)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), line_number, e.column()))
            .and_then(|value| {
                let line = crate::data::Line { number: *line_number, text, value };
                parse_candidate(path, &line, "policy").map_err(|e| e.to_string())
            });
        match parsed {
            Ok(c) => out.push(c),
            Err(e) => problems.push(e),
        }
    }
    (out, problems)
}

/// What a labeling session watches, for the labeling pane's `panes` thread and `hone label`'s
/// `label-watch` thread alike: the labels file (for agreement) and a run's candidates file.
pub struct LabelFeed {
    log: LabelLog,
    candidates: Option<PathBuf>,
    offset: u64,
    line_number: usize,
}

/// What one [`LabelFeed::poll`] found.
#[derive(Debug, Default)]
pub struct FeedNews {
    /// Agreement per labeler pair and the items served again, when new labels arrived.
    pub agreement: Option<(Vec<PairAgreement>, usize)>,
    /// Candidates appended since the last poll.
    pub candidates: Vec<Candidate>,
    /// Bad candidate lines and labels-file read errors, each one line.
    pub problems: Vec<String>,
}

impl LabelFeed {
    /// Watches `labels` and, when given, a run's `candidates` file, from their start.
    pub fn new(labels: &Path, candidates: Option<PathBuf>) -> Self {
        Self { log: LabelLog::new(labels), candidates, offset: 0, line_number: 0 }
    }

    /// What is new since the last poll.
    pub fn poll(&mut self) -> FeedNews {
        let mut news = FeedNews::default();
        match self.log.read_new(None) {
            Ok(update) if update.lines > 0 => {
                let judged = self.log.judgements();
                news.agreement = Some((agreement(&judged), served_again(&judged)));
            }
            Ok(_) => {}
            Err(e) => news.problems.push(e.to_string()),
        }
        if let Some(path) = &self.candidates {
            let (fresh, problems) = read_candidates_from(path, &mut self.offset, &mut self.line_number);
            news.candidates = fresh;
            news.problems.extend(problems);
        }
        news
    }
}
