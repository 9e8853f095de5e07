//! A stage made ready to train: its data read and tokenized, truncation counted, and the
//! reference log-probs of its pairs computed once and cached by example hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::batch::Sequence;
use super::examples::{fit_pair, lm_example, pair_example, sft_example, PairExample, TruncationStats};
use super::score::pair_logps;
use super::TrainError;
use crate::config::{SafetyLossKind, Stage};
use crate::data::{
    encode_preference, read_preferences, read_records_with_lines, read_safety, read_text_records, ChatTemplate,
    PreferenceRecord, Records, TextTokenizer,
};
use crate::model::Model;

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
    let max = stage.max_length;
    let mut data = StageData::default();
    let on_chosen = stage.sft.as_ref().is_some_and(|s| s.on_chosen);
    if let Some(sft) = &stage.sft {
        let stats = data.truncation.entry("sft").or_default();
        for path in &sft.data {
            let (records, lines) = read_records_with_lines(path)?;
            let Records::Sft(records) = records else {
                return Err(TrainError::Data(format!(
                    "{}: expected SFT records (messages or prompt/completion)",
                    path.display()
                )));
            };
            for (rec, line) in records.iter().zip(lines) {
                if let Some(seq) = sft_example(tok, template, rec, max, stats).map_err(|e| ctx(path, line, e))? {
                    data.sft.push(seq);
                }
            }
        }
    }
    if let Some(lm) = &stage.lm {
        let stats = data.truncation.entry("lm").or_default();
        for path in &lm.data {
            for (line, text) in read_text_records(path)? {
                if let Some(seq) = lm_example(tok, &text, max, stats).map_err(|e| ctx(path, line, e))? {
                    data.lm.push(seq);
                }
            }
        }
    }
    for path in pref_files {
        if !path.exists() {
            continue;
        }
        let stats = data.truncation.entry("pref").or_default();
        for (i, rec) in read_preferences(path)?.iter().enumerate() {
            if let Some(p) = pair_example(tok, template, rec, max, stats).map_err(|e| ctx(path, i + 1, e))? {
                if on_chosen {
                    data.sft.push(p.chosen_sequence());
                }
                data.pairs.push(p);
            }
        }
    }
    if let Some(safety) = &stage.safety {
        for path in &safety.data {
            let stats = data.truncation.entry("safety").or_default();
            for (i, rec) in read_safety(path)?.iter().enumerate() {
                let safe = rec.safe.clone();
                let as_pair = PreferenceRecord {
                    prompt: rec.prompt.clone(),
                    chosen: safe.clone().unwrap_or_else(|| rec.unsafe_.clone()),
                    rejected: rec.unsafe_.clone(),
                    extra: serde_json::Map::new(),
                };
                let ex = encode_preference(tok, template, &as_pair).map_err(|e| ctx(path, i + 1, e))?;
                let Some(p) = fit_pair(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, max, stats) else { continue };
                match safety.loss {
                    SafetyLossKind::Unlikelihood => data.unsafe_seqs.push(p.rejected_sequence()),
                    SafetyLossKind::Dpo if safe.is_some() => data.safety_pairs.push(p.clone()),
                    SafetyLossKind::Dpo => {
                        return Err(ctx(path, i + 1, "safety loss \"dpo\" needs a `safe` response in every record"))
                    }
                }
                if on_chosen && safe.is_some() {
                    data.sft.push(p.chosen_sequence());
                }
            }
        }
        if let Some(adaptive) = &safety.adaptive {
            let files = adaptive.redteam.as_ref().map_or_else(|| safety.data.clone(), |p| vec![p.clone()]);
            let mut stats = TruncationStats::default();
            for path in &files {
                for (i, rec) in read_safety(path)?.iter().enumerate() {
                    let as_pair = PreferenceRecord {
                        prompt: rec.prompt.clone(),
                        chosen: rec.safe.clone().unwrap_or_else(|| rec.unsafe_.clone()),
                        rejected: rec.unsafe_.clone(),
                        extra: serde_json::Map::new(),
                    };
                    let ex = encode_preference(tok, template, &as_pair).map_err(|e| ctx(path, i + 1, e))?;
                    if let Some(p) = fit_pair(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, max, &mut stats) {
                        data.redteam.push(p);
                    }
                }
            }
        }
    }
    Ok(data)
}

/// Reference log-probs `(chosen, rejected)` keyed by example hash.
pub type RefCache = HashMap<u64, (f64, f64)>;

/// Computes reference log-probs for every pair not yet cached.
pub fn fill_reference_cache(
    reference: &Model,
    pairs: &[&PairExample],
    pad_id: u32,
    cache: &mut RefCache,
) -> Result<(), TrainError> {
    let missing: Vec<&PairExample> = pairs.iter().copied().filter(|p| !cache.contains_key(&p.hash)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let triples: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> =
        missing.iter().map(|p| (p.prompt.clone(), p.chosen.clone(), p.rejected.clone())).collect();
    let scored = pair_logps(reference.decoder(), &triples, pad_id)?;
    for (p, s) in missing.iter().zip(scored) {
        cache.insert(p.hash, (s.chosen, s.rejected));
    }
    Ok(())
}
