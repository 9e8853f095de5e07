//! A stage made ready to train: its data read and tokenized, truncation counted, and the
//! reference log-probs of its pairs computed once and cached by example hash.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::batch::Sequence;
use super::examples::{fit_pair, lm_example, pair_example, sft_example, PairExample, TruncationStats};
use super::score::{pair_logps, SCORE_BATCH};
use super::TrainError;
use crate::config::{SafetyLossKind, SafetyTerm, Stage};
use crate::data::{
    encode_preference, read_preferences, read_records_with_lines, read_safety, read_text_records, ChatTemplate,
    PreferenceRecord, Records, SafetyRecord, TextTokenizer,
};
use crate::model::Model;

/// Pairs per reference scoring batch (two sequences each).
pub const PAIRS_PER_BATCH: usize = if SCORE_BATCH >= 2 { SCORE_BATCH / 2 } else { 1 };

/// One pair a reward model is trained on: `prompt + chosen` and `prompt + rejected` as TRL's
/// `RewardTrainer` tokenizes them, and the record's `margin` (0 when it has none).
#[derive(Debug, Clone, PartialEq)]
pub struct RmPair {
    /// The whole chosen sequence.
    pub chosen: Vec<u32>,
    /// The whole rejected sequence.
    pub rejected: Vec<u32>,
    /// The record's `margin`, subtracted from `r_c − r_r` in the loss.
    pub margin: f64,
}

impl RmPair {
    /// Tokens the reward model processes for this pair.
    pub fn num_tokens(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }
}

/// Tokenized data of one stage, by term.
#[derive(Debug, Default)]
pub struct StageData {
    /// SFT sequences (from the SFT files, plus chosen/safe responses when `on_chosen`).
    pub sft: Vec<Sequence>,
    /// Plain-text sequences of the language-modelling term (every token a target).
    pub lm: Vec<Sequence>,
    /// Preference pairs.
    pub pairs: Vec<PairExample>,
    /// Unsafe responses (unlikelihood targets).
    pub unsafe_seqs: Vec<Sequence>,
    /// Safe-vs-unsafe pairs (safety DPO).
    pub safety_pairs: Vec<PairExample>,
    /// Held-out red-team pairs for the adaptive λ_safe measurement (safe may equal unsafe when
    /// a record has no safe response).
    pub redteam: Vec<PairExample>,
    /// Reward-model pairs (whole chosen and rejected sequences, with their margins).
    pub rm_pairs: Vec<RmPair>,
    /// Truncation per dataset kind.
    pub truncation: HashMap<&'static str, TruncationStats>,
}

fn ctx(path: &Path, line: usize, e: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("{}:{line}: {e}", path.display()))
}

/// Reads and tokenizes everything a stage trains on. `pref_files` are the resolved preference
/// sources that exist now (a live labels file that does not exist yet is simply empty).
pub fn load_stage_data(
    stage: &Stage,
    pref_files: &[PathBuf],
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
) -> Result<StageData, TrainError> {
    let cx =
        Encoding { tok, template, max: stage.max_length, on_chosen: stage.sft.as_ref().is_some_and(|s| s.on_chosen) };
    let mut data = StageData::default();
    if let Some(sft) = &stage.sft {
        load_sft(&cx, &sft.data, &mut data)?;
    }
    if let Some(lm) = &stage.lm {
        let stats = data.truncation.entry("lm").or_default();
        for path in &lm.data {
            for (line, text) in read_text_records(path)? {
                if let Some(seq) = lm_example(tok, &text, cx.max, stats).map_err(|e| ctx(path, line, e))? {
                    data.lm.push(seq);
                }
            }
        }
    }
    for path in pref_files.iter().filter(|p| p.exists()) {
        let stats = data.truncation.entry("pref").or_default();
        for (i, rec) in read_preferences(path)?.iter().enumerate() {
            if let Some(p) = pair_example(tok, template, rec, cx.max, stats).map_err(|e| ctx(path, i + 1, e))? {
                if cx.on_chosen {
                    data.sft.push(p.chosen_sequence());
                }
                data.pairs.push(p);
            }
        }
    }
    if let Some(rm) = &stage.rm {
        load_rm(&cx, &rm.data, &mut data)?;
    }
    if let Some(safety) = &stage.safety {
        load_safety(&cx, safety, &mut data)?;
        if let Some(adaptive) = &safety.adaptive {
            let files = adaptive.redteam.as_ref().map_or_else(|| safety.data.clone(), |p| vec![p.clone()]);
            let mut stats = TruncationStats::default();
            for path in &files {
                for (i, rec) in read_safety(path)?.iter().enumerate() {
                    if let Some(p) = safety_pair(&cx, path, i + 1, rec, &mut stats)? {
                        data.redteam.push(p);
                    }
                }
            }
        }
    }
    Ok(data)
}

/// How a stage encodes its examples.
struct Encoding<'a> {
    tok: &'a TextTokenizer,
    template: Option<&'a ChatTemplate>,
    max: usize,
    on_chosen: bool,
}

fn load_sft(cx: &Encoding, files: &[PathBuf], data: &mut StageData) -> Result<(), TrainError> {
    let stats = data.truncation.entry("sft").or_default();
    for path in files {
        let (records, lines) = read_records_with_lines(path)?;
        let Records::Sft(records) = records else {
            return Err(TrainError::Data(format!(
                "{}: expected SFT records (messages or prompt/completion)",
                path.display()
            )));
        };
        for (rec, line) in records.iter().zip(lines) {
            if let Some(seq) = sft_example(cx.tok, cx.template, rec, cx.max, stats).map_err(|e| ctx(path, line, e))? {
                data.sft.push(seq);
            }
        }
    }
    Ok(())
}

/// The reward model's pairs: each record encoded as a preference pair (TRL's tokenization, the
/// same truncation rule), kept as whole sequences, with its optional numeric `margin`.
fn load_rm(cx: &Encoding, files: &[PathBuf], data: &mut StageData) -> Result<(), TrainError> {
    let stats = data.truncation.entry("rm").or_default();
    for path in files {
        for (i, rec) in read_preferences(path)?.iter().enumerate() {
            let margin = match rec.extra.get("margin") {
                None | Some(serde_json::Value::Null) => 0.0,
                Some(v) => match v.as_f64().filter(|m| m.is_finite()) {
                    Some(m) => m,
                    None => return Err(ctx(path, i + 1, format!("margin: expected a finite number, found {v}"))),
                },
            };
            if let Some(p) = pair_example(cx.tok, cx.template, rec, cx.max, stats).map_err(|e| ctx(path, i + 1, e))? {
                let (chosen, rejected) = (p.chosen_sequence().ids, p.rejected_sequence().ids);
                data.rm_pairs.push(RmPair { chosen, rejected, margin });
            }
        }
    }
    Ok(())
}

/// A safety record as a (safe, unsafe) pair; a record without a safe response pairs its unsafe
/// response with itself. `None` when it does not fit `max_length`.
fn safety_pair(
    cx: &Encoding,
    path: &Path,
    line: usize,
    rec: &SafetyRecord,
    stats: &mut TruncationStats,
) -> Result<Option<PairExample>, TrainError> {
    let as_pair = PreferenceRecord {
        prompt: rec.prompt.clone(),
        chosen: rec.safe.clone().unwrap_or_else(|| rec.unsafe_.clone()),
        rejected: rec.unsafe_.clone(),
        extra: serde_json::Map::new(),
    };
    let ex = encode_preference(cx.tok, cx.template, &as_pair).map_err(|e| ctx(path, line, e))?;
    Ok(fit_pair(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, cx.max, stats))
}

fn load_safety(cx: &Encoding, safety: &SafetyTerm, data: &mut StageData) -> Result<(), TrainError> {
    for path in &safety.data {
        let stats = data.truncation.entry("safety").or_default();
        for (i, rec) in read_safety(path)?.iter().enumerate() {
            let has_safe = rec.safe.is_some();
            let Some(p) = safety_pair(cx, path, i + 1, rec, stats)? else { continue };
            match safety.loss {
                SafetyLossKind::Unlikelihood => data.unsafe_seqs.push(p.rejected_sequence()),
                SafetyLossKind::Dpo if has_safe => data.safety_pairs.push(p.clone()),
                SafetyLossKind::Dpo => {
                    return Err(ctx(path, i + 1, "safety loss \"dpo\" needs a `safe` response in every record"))
                }
            }
            if cx.on_chosen && has_safe {
                data.sft.push(p.chosen_sequence());
            }
        }
    }
    Ok(())
}

/// Reference log-probs `(chosen, rejected)` keyed by example hash.
pub type RefCache = HashMap<u64, (f64, f64)>;

/// Asked between two batches of a long phase with `(done, total)` items; `Break` ends the phase
/// there (a stop), `Continue` goes on.
pub type Between<'a> = dyn FnMut(usize, usize) -> Result<ControlFlow<()>, TrainError> + 'a;

/// A [`Between`] that never interrupts.
pub fn never_interrupt(_done: usize, _total: usize) -> Result<ControlFlow<()>, TrainError> {
    Ok(ControlFlow::Continue(()))
}

/// Reference log-probs of one scoring batch, `(hash, (chosen, rejected))` in the pairs' order.
pub type ScoredBatch = [(u64, (f64, f64))];

/// Told after each batch of [`fill_reference_slice`]: the batch's entries and `(done, total)`
/// pairs of the slice; `Break` ends the phase there.
pub type AfterBatch<'a> = dyn FnMut(&ScoredBatch, usize, usize) -> Result<ControlFlow<()>, TrainError> + 'a;

/// Computes reference log-probs for every pair not yet cached, one scoring batch at a time
/// (the batches [`pair_logps`] would form over all of them, so the numbers are the same), asking
/// `between` after each: on `Break` it returns there, the pairs scored so far cached.
pub fn fill_reference_cache(
    reference: &Model,
    pairs: &[&PairExample],
    pad_id: u32,
    cache: &mut RefCache,
    between: &mut Between<'_>,
) -> Result<ControlFlow<()>, TrainError> {
    let missing: Vec<&PairExample> = pairs.iter().copied().filter(|p| !cache.contains_key(&p.hash)).collect();
    let mut after = |_: &ScoredBatch, done: usize, total: usize| {
        if done < total {
            between(done, total)
        } else {
            Ok(ControlFlow::Continue(()))
        }
    };
    fill_reference_slice(reference, &missing, pad_id, cache, &mut after)
}

/// Scores `pairs` in order into `cache`, [`SCORE_BATCH`] sequences at a time, telling `after`
/// each batch's entries (the last batch too). A slice that starts at a batch boundary of a longer
/// list is scored in the batches the whole list would be, so its numbers are the same bits.
pub fn fill_reference_slice(
    reference: &Model,
    pairs: &[&PairExample],
    pad_id: u32,
    cache: &mut RefCache,
    after: &mut AfterBatch<'_>,
) -> Result<ControlFlow<()>, TrainError> {
    let mut done = 0;
    for chunk in pairs.chunks(PAIRS_PER_BATCH) {
        let triples: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> =
            chunk.iter().map(|p| (p.prompt.clone(), p.chosen.clone(), p.rejected.clone())).collect();
        let scored = pair_logps(reference.decoder(), &triples, pad_id)?;
        let entries: Vec<(u64, (f64, f64))> =
            chunk.iter().zip(scored).map(|(p, s)| (p.hash, (s.chosen, s.rejected))).collect();
        cache.extend(entries.iter().copied());
        done += chunk.len();
        if after(&entries, done, pairs.len())?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}
