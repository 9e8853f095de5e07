//! Blind candidate-vs-baseline labeling in the eval pane (`v`): one suite item at a time, the
//! selected checkpoint's answer and its baseline's answer side by side in an order randomised per
//! item, neither side named. `a`/`←` left is better, `b`/`→` right is better, `t` tie, `s` next
//! item, `Esc`/`v` back. A judgement becomes an `eval_pairwise` record (the format
//! [`crate::eval::read_pairwise_labels`] reads, plus the shown order) appended through the label
//! store's writer; once saved it counts as a human label and the scorecard is recomputed, so the
//! win rate and its gate move at once.

use crossterm::event::{KeyCode, KeyEvent};
use serde_json::{json, Value as Json};

use super::{EvalEffect, EvalPane, Pending};
use crate::eval::{HumanLabel, Winner, EVAL_PAIRWISE_KIND};

/// The blind mode's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blind {
    /// The item shown (its id), `None` once every item is labeled.
    pub item: Option<String>,
}

/// One item as the labeler sees it: the two answers in shown order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlindItem {
    /// The suite item's id (shown: it names the question, not a model).
    pub id: String,
    /// The prompt's text.
    pub prompt: String,
    /// The answer shown on the left.
    pub left: String,
    /// The answer shown on the right.
    pub right: String,
    /// Whether the left answer is the candidate's.
    pub candidate_left: bool,
}

/// A 64-bit mix (splitmix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether the candidate goes on the left for `item` (FNV-1a of the id, mixed with the seed).
fn candidate_left(seed: u64, item: &str) -> bool {
    let h = item.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    mix(seed ^ h) & 1 == 0
}

impl EvalPane {
    /// The baseline's name when the shown stage can be compared with it (it is not the baseline
    /// and both have responses); otherwise why not.
    fn blind_pair(&self) -> Result<(String, String), String> {
        let inputs = self.inputs.as_ref().ok_or("blind labeling needs the suite (run.toml unreadable)")?;
        let stage = self.stage().ok_or("no evaluated checkpoint")?;
        if stage.name == inputs.baseline {
            return Err("this is the baseline: select a later checkpoint with ] to compare".into());
        }
        let has = |name: &str| self.stages.iter().any(|s| s.name == name && s.responses.is_some());
        if !has(&stage.name) || !has(&inputs.baseline) {
            return Err(format!("no responses of both {} and the baseline {} to compare", stage.name, inputs.baseline));
        }
        Ok((stage.name.clone(), inputs.baseline.clone()))
    }

    /// The human labels of `stage` against the baseline.
    pub fn human_labels(&self, stage: &str) -> &[HumanLabel] {
        self.human.get(stage).map_or(&[], Vec::as_slice)
    }

    /// The items both the shown stage and its baseline answered, in suite order, as shown blind.
    pub fn blind_items(&self) -> Vec<BlindItem> {
        let (Ok((cand, base)), Some(inputs)) = (self.blind_pair(), self.inputs.as_ref()) else { return Vec::new() };
        let responses = |name: &str| self.stages.iter().find(|s| s.name == name).and_then(|s| s.responses.as_ref());
        let (Some(cand), Some(base)) = (responses(&cand), responses(&base)) else { return Vec::new() };
        inputs
            .items
            .iter()
            .filter_map(|item| {
                let c = cand.iter().find(|r| r.id == item.id)?;
                let b = base.iter().find(|r| r.id == item.id)?;
                let candidate_left = candidate_left(self.blind_seed, &item.id);
                let (left, right) = if candidate_left { (&c.text, &b.text) } else { (&b.text, &c.text) };
                Some(BlindItem {
                    id: item.id.clone(),
                    prompt: item.prompt.text(),
                    left: left.clone(),
                    right: right.clone(),
                    candidate_left,
                })
            })
            .collect()
    }

    /// The item the blind mode shows.
    pub fn blind_item(&self) -> Option<BlindItem> {
        let id = self.blind.as_ref()?.item.clone()?;
        self.blind_items().into_iter().find(|i| i.id == id)
    }

    /// The first item after `after` (from the start with `None`) not yet labeled for the shown
    /// stage, wrapping around; `None` when every item is labeled.
    fn next_unlabeled(&self, after: Option<&str>) -> Option<String> {
        let items = self.blind_items();
        let stage = self.stage().map(|s| s.name.clone()).unwrap_or_default();
        let done = |id: &str| self.human_labels(&stage).iter().any(|l| l.id == id);
        let start = after.and_then(|a| items.iter().position(|i| i.id == a)).map_or(0, |p| p + 1);
        (0..items.len()).map(|k| &items[(start + k) % items.len()]).find(|i| !done(&i.id)).map(|i| i.id.clone())
    }

    /// `v`: enters (or leaves) the blind mode for the shown stage.
    pub(super) fn toggle_blind(&mut self) {
        if self.blind.take().is_some() {
            return;
        }
        match self.blind_pair() {
            Ok(_) => {
                self.blind = Some(Blind { item: self.next_unlabeled(None) });
                self.detail = false;
            }
            Err(e) => self.status = Some(Err(e)),
        }
    }

    /// A key in the blind mode.
    pub(super) fn blind_key(&mut self, key: KeyEvent) -> Option<EvalEffect> {
        let side = match key.code {
            KeyCode::Esc | KeyCode::Char('v') => {
                self.blind = None;
                return None;
            }
            KeyCode::Char('s' | 'j') | KeyCode::Down => {
                let current = self.blind.as_ref().and_then(|b| b.item.clone());
                let next = self.next_unlabeled(current.as_deref());
                if let Some(b) = self.blind.as_mut() {
                    b.item = next;
                }
                return None;
            }
            KeyCode::Char('a') | KeyCode::Left => Some(true),
            KeyCode::Char('b') | KeyCode::Right => Some(false),
            KeyCode::Char('t') => None,
            _ => return None,
        };
        if self.pending.is_some() {
            return None;
        }
        let item = self.blind_item()?;
        let (cand, base) = self.blind_pair().ok()?;
        let winner = match side {
            None => Winner::Tie,
            Some(left) if left == item.candidate_left => Winner::Candidate,
            Some(_) => Winner::Baseline,
        };
        let id = format!("{}-{}", self.session, self.next_id);
        self.next_id += 1;
        let order = if item.candidate_left { ["candidate", "baseline"] } else { ["baseline", "candidate"] };
        let record: Json = json!({
            "id": id,
            "kind": EVAL_PAIRWISE_KIND,
            "item": item.id,
            "candidate": cand,
            "baseline": base,
            "winner": winner,
            "labeler": self.user,
            "ts": 0,
            "order": order,
        });
        self.pending = Some(Pending::Pairwise(cand, HumanLabel { id: item.id, winner }));
        Some(EvalEffect::AppendLabel(record))
    }

    /// The blind label asked for last was written: it counts from now on.
    pub(super) fn pairwise_saved(&mut self, stage: String, label: HumanLabel, outcome: Result<(), String>) {
        if let Err(e) = outcome {
            self.status = Some(Err(format!("label not saved: {e}")));
            return;
        }
        let item = label.id.clone();
        let labels = self.human.entry(stage.clone()).or_default();
        // For one item the last live label wins, as the eval reader resolves it.
        labels.retain(|l| l.id != item);
        labels.push(label);
        self.recompute();
        let win = self.stages.iter().find(|s| s.name == stage).and_then(|s| s.report.win_rate);
        let win = win.map_or_else(|| "—".to_string(), |w| format!("{:.0}%", w * 100.0));
        self.status = Some(Ok(format!("{item} labeled blind; {stage}'s win rate is now {win}")));
        let next = self.next_unlabeled(Some(&item));
        if let Some(b) = self.blind.as_mut() {
            b.item = next;
        }
    }
}
