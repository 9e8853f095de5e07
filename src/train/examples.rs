//! From records to training examples: tokenization through the data module, truncation to the
//! stage's `max_length` (always counted, never silent), and stable example hashes that key the
//! reference log-prob cache.

use sha2::{Digest, Sha256};

use super::batch::Sequence;
use crate::data::{
    encode_preference, encode_sft, encode_text, ChatTemplate, DataError, PreferenceRecord, SftRecord, TextTokenizer,
};

/// A tokenized preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    /// Shared prompt tokens.
    pub prompt: Vec<u32>,
    /// Preferred completion.
    pub chosen: Vec<u32>,
    /// Dispreferred completion.
    pub rejected: Vec<u32>,
    /// Stable hash of the three id lists (the reference cache key).
    pub hash: u64,
}

impl PairExample {
    /// `prompt + chosen` with the completion as targets.
    pub fn chosen_sequence(&self) -> Sequence {
        join(&self.prompt, &self.chosen)
    }

    /// `prompt + rejected` with the completion as targets.
    pub fn rejected_sequence(&self) -> Sequence {
        join(&self.prompt, &self.rejected)
    }

    /// Tokens the policy processes for this pair.
    pub fn num_tokens(&self) -> usize {
        2 * self.prompt.len() + self.chosen.len() + self.rejected.len()
    }
}

fn join(prompt: &[u32], completion: &[u32]) -> Sequence {
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(completion);
    Sequence::with_completion_from(ids, prompt.len())
}

/// What truncation did to a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TruncationStats {
    /// Examples shortened to fit.
    pub truncated: usize,
    /// Examples dropped (nothing left to train on, or a pair whose difference was cut off).
    pub dropped: usize,
}

fn hash_ids(parts: &[&[u32]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        for id in *p {
            h.update(id.to_le_bytes());
        }
    }
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Tokenizes an SFT record and cuts it to `max_len` tokens (keeping the start, as TRL does).
/// `None` when nothing trainable is left.
pub fn sft_example(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    record: &SftRecord,
    max_len: usize,
    stats: &mut TruncationStats,
) -> Result<Option<Sequence>, DataError> {
    let ex = encode_sft(tok, template, record)?;
    let mut seq = Sequence { ids: ex.input_ids, targets: ex.loss_mask };
    if seq.ids.len() > max_len {
        seq.ids.truncate(max_len);
        seq.targets.truncate(max_len);
        if seq.num_targets() == 0 {
            stats.dropped += 1;
            return Ok(None);
        }
        stats.truncated += 1;
    }
    Ok(Some(seq))
}

/// Tokenizes a plain-text record for language modelling (every token after the first is a
/// target) and cuts it to `max_len` tokens, keeping the start; a cut is counted. `None` when
/// fewer than two tokens remain (nothing to predict).
pub fn lm_example(
    tok: &TextTokenizer,
    text: &str,
    max_len: usize,
    stats: &mut TruncationStats,
) -> Result<Option<Sequence>, DataError> {
    let mut ids = encode_text(tok, text)?;
    if ids.len() > max_len {
        ids.truncate(max_len);
        stats.truncated += 1;
    }
    if ids.len() < 2 {
        stats.dropped += 1;
        return Ok(None);
    }
    Ok(Some(Sequence::with_completion_from(ids, 1)))
}

/// Tokenizes a preference record (TRL's split) and fits it into `max_len` tokens: the prompt is
/// cut from the left first (keeping its end, next to the answer), then both completions from
/// the right. A pair is dropped when what remains of chosen and rejected no longer differs.
pub fn pair_example(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    record: &PreferenceRecord,
    max_len: usize,
    stats: &mut TruncationStats,
) -> Result<Option<PairExample>, DataError> {
    let ex = encode_preference(tok, template, record)?;
    Ok(fit_pair(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, max_len, stats))
}

/// The truncation rule of [`pair_example`] on token ids.
pub fn fit_pair(
    mut prompt: Vec<u32>,
    mut chosen: Vec<u32>,
    mut rejected: Vec<u32>,
    max_len: usize,
    stats: &mut TruncationStats,
) -> Option<PairExample> {
    let longest = chosen.len().max(rejected.len());
    if prompt.len() + longest > max_len {
        // Keep at least a quarter of the budget for the prompt when completions are long.
        let keep_prompt = max_len.saturating_sub(longest).max(max_len / 4).min(prompt.len());
        prompt.drain(..prompt.len() - keep_prompt);
        let room = max_len - prompt.len();
        let differs_at =
            chosen.iter().zip(&rejected).position(|(a, b)| a != b).unwrap_or(chosen.len().min(rejected.len()));
        let same_after_cut = chosen.len().min(room) == rejected.len().min(room) && differs_at >= room;
        if room == 0 || same_after_cut {
            stats.dropped += 1;
            return None;
        }
        chosen.truncate(room);
        rejected.truncate(room);
        stats.truncated += 1;
    }
    if chosen.is_empty() || rejected.is_empty() {
        stats.dropped += 1;
        return None;
    }
    let hash = hash_ids(&[&prompt, &chosen, &rejected]);
    Some(PairExample { prompt, chosen, rejected, hash })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_cut_prompt_first_and_dropped_when_the_difference_is_lost() {
        let mut stats = TruncationStats::default();
        let fits = fit_pair(vec![1, 2, 3], vec![4, 5], vec![4, 6], 8, &mut stats).unwrap();
        assert_eq!(fits.prompt, vec![1, 2, 3]);
        let cut = fit_pair((0..10).collect(), vec![4, 5], vec![4, 6], 8, &mut stats).unwrap();
        assert_eq!(cut.prompt, (4..10).collect::<Vec<u32>>());
        assert_eq!(stats, TruncationStats { truncated: 1, dropped: 0 });
        // Completions differ only at their 7th token; a budget of 8 keeps 2 prompt tokens and
        // 6 completion tokens, so the difference is cut off and the pair is dropped.
        let lost = fit_pair(vec![1, 2, 3], vec![9; 7], vec![9, 9, 9, 9, 9, 9, 8], 8, &mut stats);
        assert!(lost.is_none());
        assert_eq!(stats.dropped, 1);
    }
}
