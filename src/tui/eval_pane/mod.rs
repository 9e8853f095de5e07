//! Pane 4, the eval inspector: the scorecard of every evaluated checkpoint, the gates and the
//! decision, the failures (filterable by segment and failed check) with a detail view, verdict
//! overrides and sending a failure to the labeling queue.
//!
//! [`load`] reads `eval/<stage>/report.json`, `failures.jsonl` and `responses.jsonl`, the run's
//! `overrides.jsonl` and, through `run.toml`, the suite, judge and gates; it is file work for a
//! background thread. The state never touches files: a key returns an [`EvalEffect`] that the
//! caller performs and reports back. An override or a label sent to training recomputes the
//! scorecard at once with [`crate::eval::score`] (an item sent to training becomes contaminated
//! and leaves the gate metrics). Drawing is in `view`.

mod blind;
mod load;
mod view;

use std::collections::{BTreeMap, BTreeSet};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
use serde_json::{json, Value as Json};

pub use blind::{Blind, BlindItem};
pub use load::{load, Inputs, StageEval};
pub use view::draw;

use crate::data::label_store::{Candidate, LabelDraft, Verdict};
use crate::data::Text;
use crate::eval::{failures, score, Contamination, FailureRecord, HumanLabel, Override, Prompt, ScoreInputs};

/// What the caller must do for the pane.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalEffect {
    /// Append this line to the run's `overrides.jsonl`, then call [`EvalPane::override_saved`].
    AppendOverride(Json),
    /// Append this label to the labels file, then call [`EvalPane::label_saved`].
    AppendLabel(Json),
    /// Open `$EDITOR` on this text, then call [`EvalPane::edited`].
    Edit(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Override(Override),
    Label(String),
    /// A blind judgement of (candidate stage, item).
    Pairwise(String, HumanLabel),
}

/// The eval pane's state.
#[derive(Debug, Clone)]
pub struct EvalPane {
    /// Every evaluated stage, oldest first.
    pub stages: Vec<StageEval>,
    /// What a recompute needs; `None` when the suite or the config could not be read.
    pub inputs: Option<Inputs>,
    /// The overrides read from, and appended to, `overrides.jsonl`.
    pub overrides: Vec<Override>,
    /// The stage shown.
    pub selected: usize,
    /// `dimension=value` the failures are filtered by.
    pub segment_filter: Option<String>,
    /// The failed check the failures are filtered by.
    pub check_filter: Option<String>,
    /// The highlighted failure (index into the filtered list).
    pub cursor: usize,
    /// Whether the detail view of the highlighted failure is open.
    pub detail: bool,
    /// Ids sent to the labeling queue (and so to training) this session.
    pub sent: BTreeSet<String>,
    /// Who overrides and labels.
    pub user: String,
    /// Blind pairwise labels per candidate stage (against the baseline), from the labels file
    /// and this session; they decide the win rate where they exist.
    pub human: BTreeMap<String, Vec<HumanLabel>>,
    /// The blind candidate-vs-baseline mode, when on.
    pub blind: Option<Blind>,
    /// Seeds the per-item left/right order of the blind mode.
    pub blind_seed: u64,
    /// The last outcome.
    pub status: Option<Result<String, String>>,
    /// Problems met while loading (untrusted paths and messages).
    pub problems: Vec<String>,
    session: String,
    next_id: u64,
    pending: Option<Pending>,
}

fn segment_values(f: &FailureRecord) -> [String; 3] {
    [
        format!("language={}", f.segment.language),
        format!("domain={}", f.segment.domain),
        format!("intent={}", f.segment.intent),
    ]
}

fn prompt_text(p: &Prompt) -> Text {
    match p {
        Prompt::Text(s) => Text::Plain(s.clone()),
        Prompt::Messages(m) => {
            Text::Messages(m.iter().map(|m| crate::data::Message::new(m.role.clone(), m.content.clone())).collect())
        }
    }
}

/// The next value after `current` in `options` (`None` = all; after the last comes `None`).
fn cycle(current: Option<&String>, options: &BTreeSet<String>) -> Option<String> {
    match current {
        None => options.iter().next().cloned(),
        Some(c) => {
            options.range::<String, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)).next().cloned()
        }
    }
}

/// Pane 4's own keys, for the help overlay: the keys, what they do.
pub const KEYS: &[(&str, &str)] = &[
    ("[, ], ←, →", "the previous / next evaluated checkpoint"),
    ("k, j, ↑, ↓", "move through the failures"),
    ("enter", "show or hide the highlighted failure's detail"),
    ("f", "filter by segment (cycles)"),
    ("c", "filter by failed check (cycles)"),
    ("o", "override: the highlighted answer is acceptable"),
    ("l", "send the reference answer to training (labels.jsonl)"),
    ("e", "write the chosen answer ($EDITOR; in `hone label`)"),
    ("v", "blind comparison with the baseline: a/b/t judge, s next, esc back"),
];

impl EvalPane {
    /// A pane over loaded stages.
    pub fn new(
        stages: Vec<StageEval>,
        inputs: Option<Inputs>,
        overrides: Vec<Override>,
        user: &str,
        session: &str,
    ) -> EvalPane {
        let selected = stages.len().saturating_sub(1);
        EvalPane {
            stages,
            inputs,
            overrides,
            selected,
            segment_filter: None,
            check_filter: None,
            cursor: 0,
            detail: false,
            sent: BTreeSet::new(),
            human: BTreeMap::new(),
            blind: None,
            blind_seed: session.bytes().fold(0, |h: u64, b| h.rotate_left(5) ^ u64::from(b)),
            user: user.to_string(),
            status: None,
            problems: Vec::new(),
            session: session.to_string(),
            next_id: 1,
            pending: None,
        }
    }

    /// The stage shown.
    pub fn stage(&self) -> Option<&StageEval> {
        self.stages.get(self.selected)
    }

    /// The failures of the stage shown that pass the filters.
    pub fn filtered(&self) -> Vec<&FailureRecord> {
        let Some(stage) = self.stage() else { return Vec::new() };
        stage
            .failures
            .iter()
            .filter(|f| self.segment_filter.as_ref().is_none_or(|s| segment_values(f).contains(s)))
            .filter(|f| self.check_filter.as_ref().is_none_or(|c| &f.failed_check == c))
            .collect()
    }

    /// The highlighted failure.
    pub fn highlighted(&self) -> Option<&FailureRecord> {
        self.filtered().get(self.cursor).copied()
    }

    /// Handles a key; returns what the caller must do, if anything.
    pub fn key(&mut self, key: KeyEvent) -> Option<EvalEffect> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if self.blind.is_some() {
            return self.blind_key(key);
        }
        let n = self.filtered().len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.cursor = (self.cursor + 1).min(n.saturating_sub(1)),
            KeyCode::Enter => self.detail = !self.detail && n > 0,
            KeyCode::Esc => self.detail = false,
            KeyCode::Char('[') | KeyCode::Left => self.select(self.selected.saturating_sub(1)),
            KeyCode::Char(']') | KeyCode::Right => {
                self.select((self.selected + 1).min(self.stages.len().saturating_sub(1)));
            }
            KeyCode::Char('f') => {
                let options =
                    self.stage().map(|s| s.failures.iter().flat_map(segment_values).collect()).unwrap_or_default();
                self.segment_filter = cycle(self.segment_filter.as_ref(), &options);
                self.cursor = 0;
            }
            KeyCode::Char('c') => {
                let options = self
                    .stage()
                    .map(|s| s.failures.iter().map(|f| f.failed_check.clone()).collect())
                    .unwrap_or_default();
                self.check_filter = cycle(self.check_filter.as_ref(), &options);
                self.cursor = 0;
            }
            KeyCode::Char('v') => self.toggle_blind(),
            KeyCode::Char('o') if self.pending.is_none() => return self.override_highlighted(),
            KeyCode::Char('l') if self.pending.is_none() => return self.send_reference(),
            KeyCode::Char('e') if self.pending.is_none() => {
                return self.highlighted().map(|f| EvalEffect::Edit(f.reference.clone().unwrap_or_default()));
            }
            _ => {}
        }
        None
    }

    fn select(&mut self, index: usize) {
        if index != self.selected {
            self.selected = index;
            self.cursor = 0;
            self.detail = false;
            self.segment_filter = None;
            self.check_filter = None;
        }
    }

    fn override_highlighted(&mut self) -> Option<EvalEffect> {
        let f = self.highlighted()?;
        // The override records a human decision that the answer is acceptable after all.
        let o = Override {
            id: f.id.clone(),
            passed: true,
            by: Some(self.user.clone()),
            note: Some(format!("was: {}", f.failed_check)),
            ts: None,
        };
        let line = serde_json::to_value(&o).ok()?;
        self.pending = Some(Pending::Override(o));
        Some(EvalEffect::AppendOverride(line))
    }

    fn send_reference(&mut self) -> Option<EvalEffect> {
        let Some(reference) = self.highlighted()?.reference.clone() else {
            self.status = Some(Err("no reference answer: press e to write the chosen answer".to_string()));
            return None;
        };
        self.send(reference)
    }

    /// The editor closed: a non-empty text becomes the chosen answer of the highlighted failure.
    pub fn edited(&mut self, text: Option<String>) -> Option<EvalEffect> {
        if let Some(t) = text.map(|t| t.trim_end().to_string()).filter(|t| !t.trim().is_empty()) {
            return self.send(t);
        }
        self.status = Some(Err("edit cancelled: no answer written".to_string()));
        None
    }

    fn send(&mut self, chosen: String) -> Option<EvalEffect> {
        let stage = self.stage()?.name.clone();
        let f = self.highlighted()?.clone();
        let candidate = Candidate {
            prompt: prompt_text(&f.prompt),
            responses: vec![Text::Plain(f.response.clone())],
            source: format!("eval:{stage}:{}", f.id),
        };
        let id = format!("{}-{}", self.session, self.next_id);
        self.next_id += 1;
        let draft = LabelDraft {
            id,
            candidate,
            order: [0, 0],
            labeler: self.user.clone(),
            verdict: Verdict::Edited { chosen: Text::Plain(chosen), rejected: 0 },
        };
        let mut record = draft.to_record(0);
        record["eval_id"] = json!(f.id);
        self.pending = Some(Pending::Label(f.id));
        Some(EvalEffect::AppendLabel(record))
    }

    /// The override asked for last was written (or not).
    pub fn override_saved(&mut self, outcome: Result<(), String>) {
        let Some(Pending::Override(o)) = self.pending.take() else { return };
        match outcome {
            Ok(()) => {
                self.status = Some(Ok(format!("override saved: {} passes", o.id)));
                self.overrides.push(o);
                self.recompute();
            }
            Err(e) => self.status = Some(Err(format!("override not saved: {e}"))),
        }
    }

    /// The label asked for last was written (or not).
    pub fn label_saved(&mut self, outcome: Result<(), String>) {
        let id = match self.pending.take() {
            Some(Pending::Label(id)) => id,
            Some(Pending::Pairwise(stage, label)) => return self.pairwise_saved(stage, label, outcome),
            other => {
                self.pending = other;
                return;
            }
        };
        match outcome {
            Ok(()) => {
                self.status = Some(Ok(format!("{id} sent to training; it leaves the gate metrics")));
                self.sent.insert(id);
                self.recompute();
            }
            Err(e) => self.status = Some(Err(format!("label not saved: {e}"))),
        }
    }

    /// Rescores every stage from its responses with the current overrides and contamination.
    /// Stages without responses, or a pane without inputs, keep their report as read.
    pub fn recompute(&mut self) {
        let Some(inputs) = &self.inputs else {
            self.status =
                Some(Err("saved; the scorecard cannot be recomputed here (suite or config unreadable)".into()));
            return;
        };
        let mut prompts: Vec<String> = Vec::new();
        for item in &inputs.items {
            let contaminated = self.stages.iter().any(|s| s.original_contaminated.contains(&item.id));
            if contaminated || self.sent.contains(&item.id) {
                prompts.push(item.prompt.text());
            }
        }
        let contamination = Contamination::from_prompts(prompts);
        let mut problems = Vec::new();
        let mut done: Vec<StageEval> = Vec::new();
        for stage in &self.stages {
            let mut stage = stage.clone();
            if let Some(responses) = &stage.responses {
                let base = done.iter().find(|s| s.name == inputs.baseline);
                let mut si = ScoreInputs::new(
                    &stage.name,
                    &stage.report.checkpoint,
                    &inputs.items,
                    responses,
                    &inputs.judge,
                    &inputs.gates,
                );
                si.baseline_responses = base.and_then(|b| b.responses.as_deref());
                si.baseline_report = base.map(|b| &b.report);
                si.overrides = &self.overrides;
                if stage.name != inputs.baseline {
                    si.human_labels = self.human.get(&stage.name).map_or(&[], Vec::as_slice);
                }
                si.contamination = Some(&contamination);
                si.price_per_device_hour = inputs.price_per_device_hour;
                match score(&si) {
                    Ok(scored) => {
                        stage.failures = failures(&inputs.items, &scored.verdicts, responses);
                        stage.report = scored.report;
                    }
                    Err(e) => problems.push(format!("{}: {e}", stage.name)),
                }
            }
            done.push(stage);
        }
        self.stages = done;
        self.problems.extend(problems);
        self.cursor = self.cursor.min(self.filtered().len().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests;
