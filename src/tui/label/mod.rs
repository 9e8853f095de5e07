//! Pane 3, labeling preference pairs: the queue of pairs, the pair shown (left/right order
//! randomised per serve from a seed, recorded in each label), the labeler's keys, counters and
//! agreement. Besides a preference, each answer of the pair can get a thumbs up or down on its
//! own (`+`/`-`, the left answer then the right: KTO's unpaired labels).
//!
//! The state never touches files, the clock or the terminal: a key returns a [`LabelEffect`]
//! (append a record, open the editor), the caller performs it and reports back with
//! [`LabelPane::saved`] or [`LabelPane::edited`]. Only then does the pane count the label as
//! saved and move on, so "saved" on screen means on disk. Drawing is in `view`.

pub mod attach;
mod view;

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
use serde_json::Value as Json;

pub use view::draw;
pub(crate) use view::{safe, safe_lines};

use crate::data::label_store::{thumbs_record, undo_record, Candidate, LabelDraft, PairAgreement, Verdict};
use crate::data::Text;

/// One pair waiting to be shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The candidate.
    pub candidate: Candidate,
    /// Which two of its responses (indexes, ascending).
    pub pair: [usize; 2],
    /// How many times this pair was served before.
    pub served: u32,
}

/// What the caller must do for the pane.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelEffect {
    /// Append this record to the labels file, then call [`LabelPane::saved`].
    Append(Json),
    /// Open `$EDITOR` on this text, then call [`LabelPane::edited`] with the result.
    Edit(String),
    /// Ask the run's live worker for candidates from the current policy (`generate_candidates`
    /// with this many prompts, two responses each), off the UI thread, then call
    /// [`LabelPane::generated`] with the reply.
    Generate(usize),
}

/// Pane 3's own keys, for the help overlay: the keys, what they do. Attached, every other key
/// but the pane switches (1-5), `?` and `q` goes to the pane.
pub const KEYS: &[(&str, &str)] = &[
    ("a, ←", "the left answer is better"),
    ("b, →", "the right answer is better"),
    ("t, s", "tie: neither is better (never trains); skip this pair"),
    ("+, -", "thumbs up/down: the left answer, then the right"),
    ("u", "undo the last label of this session"),
    ("e", "write a better answer ($EDITOR; in `hone label`)"),
    ("r", "show or hide the rubric"),
    ("g", "ask the live policy for new pairs"),
];

/// How many prompts `g` asks the worker for.
pub const GENERATE_PROMPTS: usize = 2;

/// What the pane is waiting for.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Label { id: String, counts: bool },
    Thumbs { id: String, side: usize },
    Undo { id: String },
}

/// A label saved this session (what `u` can undo).
#[derive(Debug, Clone, PartialEq)]
struct Saved {
    id: String,
    queued: Queued,
    counts: bool,
    /// For a thumbs label: which side it judged (0 left, 1 right).
    thumbs: Option<usize>,
}

/// The labeling pane's state.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelPane {
    /// Who is labeling (recorded in each label).
    pub labeler: String,
    /// The pair on screen.
    pub current: Option<Queued>,
    /// Pairs waiting.
    pub queue: VecDeque<Queued>,
    /// Labels (preferences, ties, edits; not skips) saved this session, net of undos.
    pub labeled: u64,
    /// Pairs the running DPO stage has consumed (from `labels_admitted`); `None` with no run.
    pub consumed_by_dpo: Option<u64>,
    /// The share of pairs served a second time, for agreement (0 to 1).
    pub repeat_share: f64,
    /// The pipeline's labeling rubric, if any (untrusted text).
    pub rubric: Option<String>,
    /// Whether the rubric overlay is open.
    pub show_rubric: bool,
    /// The last outcome: `Ok(message)` or `Err(message)`.
    pub status: Option<Result<String, String>>,
    /// Agreement per labeler pair, from the labels file.
    pub agreement: Vec<PairAgreement>,
    /// Items judged more than once in the labels file.
    pub served_again: usize,
    /// Whether a `generate_candidates` request is outstanding.
    pub generating: bool,
    /// Pairs never queued because their two responses are the same text (a sampled policy
    /// often answers a prompt the same way twice): such a pair teaches nothing.
    pub identical_dropped: u64,
    /// Which answer of the pair shown the next `+`/`-` judges: 0 the left, 1 the right (after
    /// the left got its thumbs; the pair moves on once both have).
    pub thumbs_side: usize,
    seed: u64,
    session: String,
    next_id: u64,
    saved: Vec<Saved>,
    pending: Option<Pending>,
}

/// A stable 64-bit mix (FNV-1a over the bytes, then a splitmix finaliser): the same seed and
/// item always give the same order, on every platform and Rust version.
fn mix(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn text_of(t: &Text) -> String {
    match t {
        Text::Plain(s) => s.clone(),
        Text::Messages(m) => m.iter().map(|m| format!("{}: {}", m.role, m.content)).collect::<Vec<_>>().join("\n"),
    }
}

impl LabelPane {
    /// A pane for `labeler` over `candidates` (every two responses of a candidate form a pair).
    /// `seed` fixes the left/right orders and which pairs are served again; `session` prefixes
    /// record ids (make it unique per process, e.g. random hex).
    pub fn new(labeler: &str, candidates: Vec<Candidate>, seed: u64, session: &str) -> LabelPane {
        let mut pane = LabelPane {
            labeler: labeler.to_string(),
            current: None,
            queue: VecDeque::new(),
            labeled: 0,
            consumed_by_dpo: None,
            repeat_share: 0.0,
            rubric: None,
            show_rubric: false,
            status: None,
            agreement: Vec::new(),
            served_again: 0,
            generating: false,
            identical_dropped: 0,
            thumbs_side: 0,
            seed,
            session: session.to_string(),
            next_id: 1,
            saved: Vec::new(),
            pending: None,
        };
        pane.enqueue(candidates);
        pane
    }

    /// Adds candidates at the back of the queue (from a file, the policy or eval failures). A
    /// pair whose two responses are the same text (up to surrounding whitespace) is dropped and
    /// counted in [`LabelPane::identical_dropped`].
    pub fn enqueue(&mut self, candidates: Vec<Candidate>) {
        for candidate in candidates {
            let texts: Vec<String> = candidate.responses.iter().map(text_of).collect();
            let n = texts.len();
            for i in 0..n {
                for j in i + 1..n {
                    if texts[i].trim() == texts[j].trim() {
                        self.identical_dropped += 1;
                        continue;
                    }
                    self.queue.push_back(Queued { candidate: candidate.clone(), pair: [i, j], served: 0 });
                }
            }
        }
        if self.current.is_none() {
            self.current = self.queue.pop_front();
        }
    }

    /// Pairs left, the one on screen included.
    pub fn left(&self) -> usize {
        self.queue.len() + usize::from(self.current.is_some())
    }

    /// Whether a write is outstanding (keys that label are ignored until it is reported).
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// The responses shown on the left and the right (indexes into the candidate's responses).
    pub fn order(&self, q: &Queued) -> [usize; 2] {
        let key = serde_json::to_string(&q.pair).unwrap_or_default();
        let prompt = text_of(&q.candidate.prompt);
        let bit = mix(self.seed, &[prompt.as_bytes(), key.as_bytes(), &q.served.to_le_bytes()]) & 1;
        if bit == 0 {
            q.pair
        } else {
            [q.pair[1], q.pair[0]]
        }
    }

    /// The prompt and the left and right texts on screen, unsanitized.
    pub fn shown(&self) -> Option<(String, String, String)> {
        let q = self.current.as_ref()?;
        let [l, r] = self.order(q);
        let c = &q.candidate;
        Some((text_of(&c.prompt), text_of(&c.responses[l]), text_of(&c.responses[r])))
    }

    fn new_id(&mut self) -> String {
        let id = format!("{}-{}", self.session, self.next_id);
        self.next_id += 1;
        id
    }

    fn label(&mut self, verdict: &dyn Fn([usize; 2]) -> Verdict, counts: bool) -> Option<LabelEffect> {
        let q = self.current.as_ref()?;
        let order = self.order(q);
        let candidate = q.candidate.clone();
        let id = self.new_id();
        let draft =
            LabelDraft { id: id.clone(), candidate, order, labeler: self.labeler.clone(), verdict: verdict(order) };
        self.pending = Some(Pending::Label { id, counts });
        // ts 0 is a placeholder: the caller stamps the record when it writes it.
        Some(LabelEffect::Append(draft.to_record(0)))
    }

    /// A thumbs label on the answer `thumbs_side` points at.
    fn thumbs(&mut self, label: bool) -> Option<LabelEffect> {
        let q = self.current.as_ref()?;
        let side = self.thumbs_side.min(1);
        let response = self.order(q)[side];
        let candidate = q.candidate.clone();
        let id = self.new_id();
        let record = thumbs_record(&id, &candidate, response, label, &self.labeler, 0);
        self.pending = Some(Pending::Thumbs { id, side });
        Some(LabelEffect::Append(record))
    }

    /// Handles a key; returns what the caller must do, if anything.
    pub fn key(&mut self, key: KeyEvent) -> Option<LabelEffect> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if self.show_rubric {
            if matches!(key.code, KeyCode::Char('r') | KeyCode::Esc) {
                self.show_rubric = false;
            }
            return None;
        }
        if key.code == KeyCode::Char('r') {
            self.show_rubric = true;
            return None;
        }
        if key.code == KeyCode::Char('g') {
            if self.generating {
                self.status = Some(Err("still waiting for the worker's answer".to_string()));
                return None;
            }
            self.generating = true;
            self.status = Some(Ok("asking the worker for candidates…".to_string()));
            return Some(LabelEffect::Generate(GENERATE_PROMPTS));
        }
        if self.pending.is_some() {
            return None;
        }
        match key.code {
            KeyCode::Char('a') | KeyCode::Left => self.label(&|o| Verdict::Prefer(o[0]), true),
            KeyCode::Char('b') | KeyCode::Right => self.label(&|o| Verdict::Prefer(o[1]), true),
            KeyCode::Char('t') => self.label(&|_| Verdict::Tie, true),
            KeyCode::Char('s') => self.label(&|_| Verdict::Skip, false),
            KeyCode::Char('+') => self.thumbs(true),
            KeyCode::Char('-') => self.thumbs(false),
            KeyCode::Char('e') => self.shown().map(|(_, left, _)| LabelEffect::Edit(left)),
            KeyCode::Char('u') => self.undo(),
            _ => None,
        }
    }

    fn undo(&mut self) -> Option<LabelEffect> {
        let Some(last) = self.saved.last() else {
            self.status = Some(Err("nothing to undo this session".to_string()));
            return None;
        };
        let supersedes = last.id.clone();
        let id = self.new_id();
        self.pending = Some(Pending::Undo { id: id.clone() });
        Some(LabelEffect::Append(undo_record(&id, &supersedes, &self.labeler, 0)))
    }

    /// The editor closed: `Some(text)` is the better answer written (it becomes chosen; the left
    /// response, which the editor started from, becomes rejected); `None` or an unchanged or
    /// empty text cancels.
    pub fn edited(&mut self, text: Option<String>) -> Option<LabelEffect> {
        let (_, left, _) = self.shown()?;
        let text = text.map(|t| t.trim_end().to_string()).filter(|t| !t.trim().is_empty() && *t != left.trim_end());
        let Some(text) = text else {
            self.status = Some(Err("edit cancelled: no new answer written".to_string()));
            return None;
        };
        self.label(&|o| Verdict::Edited { chosen: Text::Plain(text.clone()), rejected: o[0] }, true)
    }

    /// The worker answered a [`LabelEffect::Generate`] (or it could not be asked): the message to
    /// show. The candidates themselves arrive through the run's `candidates.jsonl`.
    pub fn generated(&mut self, outcome: Result<String, String>) {
        self.generating = false;
        self.status = Some(outcome);
    }

    /// The append asked for last has finished: `Ok` once the record is durably in the file.
    pub fn saved(&mut self, outcome: Result<(), String>) {
        let Some(pending) = self.pending.take() else { return };
        if let Err(e) = outcome {
            self.status = Some(Err(format!("not saved: {e}")));
            return;
        }
        match pending {
            Pending::Label { id, counts } => {
                let Some(queued) = self.current.take() else { return };
                if counts {
                    self.labeled += 1;
                }
                if queued.served == 0 && self.repeat(&queued) {
                    self.queue.push_back(Queued { served: 1, ..queued.clone() });
                }
                self.status = Some(Ok(format!("saved {id}")));
                self.saved.push(Saved { id, queued, counts, thumbs: None });
                self.current = self.queue.pop_front();
                self.thumbs_side = 0;
            }
            Pending::Thumbs { id, side } => {
                let Some(queued) = self.current.clone() else { return };
                self.labeled += 1;
                self.saved.push(Saved { id: id.clone(), queued, counts: true, thumbs: Some(side) });
                if side == 0 {
                    // The right answer is judged next, on the same pair.
                    self.thumbs_side = 1;
                    self.status = Some(Ok(format!("saved {id} · +/- now judges the right answer")));
                } else {
                    self.thumbs_side = 0;
                    self.current = self.queue.pop_front();
                    self.status = Some(Ok(format!("saved {id}")));
                }
            }
            Pending::Undo { id } => {
                let Some(undone) = self.saved.pop() else { return };
                if undone.counts {
                    self.labeled = self.labeled.saturating_sub(1);
                }
                // The pair served again because of the undone label is no longer owed.
                let again = Queued { served: 1, ..undone.queued.clone() };
                if let Some(pos) = self.queue.iter().rposition(|q| *q == again) {
                    self.queue.remove(pos);
                }
                self.status = Some(Ok(format!("undid {} (saved {id})", undone.id)));
                if undone.thumbs == Some(0) {
                    // The left answer's thumbs: the pair is still on screen; judge it again.
                    self.thumbs_side = 0;
                    return;
                }
                self.thumbs_side = undone.thumbs.unwrap_or(0);
                if let Some(current) = self.current.take() {
                    self.queue.push_front(current);
                }
                self.current = Some(undone.queued);
            }
        }
    }

    /// Whether `q` is served again, decided by the seed so a session replays identically.
    fn repeat(&self, q: &Queued) -> bool {
        if self.repeat_share <= 0.0 {
            return false;
        }
        let key = serde_json::to_string(&q.pair).unwrap_or_default();
        let prompt = text_of(&q.candidate.prompt);
        let draw = mix(self.seed ^ 0x5eed, &[prompt.as_bytes(), key.as_bytes()]);
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.repeat_share
    }
}

#[cfg(test)]
mod tests;
