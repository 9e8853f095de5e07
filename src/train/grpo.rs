//! GRPO's pieces between sampling and the loss (`rl.rs`): the seed of every sampled completion,
//! the rule rewards (the evaluation's judge deciding an item's checks), the sum of reward
//! functions as TRL forms it, and the per-token log-probs of completions as `[completions,
//! tokens]` tensors with their mask.
//!
//! Nothing here generates, reads files or knows the trainer; `trainer/grpo.rs` drives a stage.

use candle_core::{DType, Device, Result, Tensor};

use super::batch::TokenBatch;
use super::loss::{logsumexp_last, target_logps};
use crate::eval::{Check, EvalItem, Judge};
use crate::model::Decoder;
use crate::rng::splitmix64;

/// The sampling seed of completion `k` (counted over the whole optimizer step) at global step
/// `step` of stage `stage_index` of a run seeded `seed`: a pure function of where the completion
/// is, so a resumed run samples exactly what the uninterrupted one did.
#[must_use]
pub fn completion_seed(seed: u64, stage_index: usize, step: u64, k: usize) -> u64 {
    let stage = splitmix64(seed ^ (stage_index as u64).wrapping_mul(0x1000_0000_01b3) ^ 0x6772_706f);
    splitmix64(splitmix64(stage ^ step) ^ k as u64)
}

/// Whether `check` is one the reward `name` judges (`format`: the instruction-following checks).
fn selects(name: &str, check: &Check) -> bool {
    if name == "format" {
        check.is_instruction()
    } else {
        check.name() == name
    }
}

/// The rule reward `name` of `response` to `item`: 1 when every check of that name the item
/// carries passes (decided by the evaluation's judge), 0 when one fails, `None` when the item
/// has no such check (TRL's `None` from a reward function: it adds nothing).
#[must_use]
pub fn rule_reward(judge: &Judge, item: &EvalItem, name: &str, response: &str) -> Option<f64> {
    let mut chosen = item.checks.iter().filter(|c| selects(name, c)).peekable();
    chosen.peek()?;
    Some(if chosen.all(|c| judge.passes(item, c, response)) { 1.0 } else { 0.0 })
}

/// TRL's total reward of each completion: the sum over reward functions of the values that are
/// present (`nansum`); a completion no function scores gets 0. `per_function[f][i]` is function
/// `f`'s value for completion `i`.
#[must_use]
pub fn total_rewards(per_function: &[Vec<Option<f64>>], completions: usize) -> Vec<f64> {
    (0..completions).map(|i| per_function.iter().filter_map(|f| f.get(i).copied().flatten()).sum()).collect()
}

/// The mean of one reward function's present values (TRL's `rewards/<name>/mean`, a `nanmean`).
#[must_use]
pub fn present_mean(values: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = values.iter().copied().flatten().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

/// Log-probs `[n]` of the target tokens of `batch` with the logits divided by `temperature`
/// (TRL scores completions under the distribution it sampled them from).
pub fn tempered_target_logps(decoder: &Decoder, batch: &TokenBatch, temperature: f64) -> Result<Tensor> {
    if (temperature - 1.0).abs() < f64::EPSILON {
        return target_logps(decoder, batch);
    }
    let rows = decoder.hidden_rows(&batch.ids)?.index_select(&batch.predictor_rows, 0)?;
    let logits = decoder.lm_head(&rows)?.to_dtype(DType::F32)?;
    let logits = (logits / temperature)?;
    let picked = logits.gather(&batch.target_ids, 1)?.squeeze(1)?;
    picked.sub(&logsumexp_last(&logits)?)
}

/// Per-target values `[n]` laid out as `[sequences, longest]` (row `i` holds sequence `i`'s
/// targets in order, then padding), with the mask `[sequences, longest]` (1 on targets). The
/// layout is a gather, so gradients flow back to `flat`; padding repeats target 0 and is masked.
pub fn per_sequence_rows(flat: &Tensor, per_sequence: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let rows = per_sequence.len();
    let width = per_sequence.iter().copied().max().unwrap_or(0).max(1);
    let mut index = Vec::with_capacity(rows * width);
    let mut mask = Vec::with_capacity(rows * width);
    let mut start = 0u32;
    for &n in per_sequence {
        let count = u32::try_from(n).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        for t in 0..u32::try_from(width).map_err(|e| candle_core::Error::Msg(e.to_string()))? {
            let real = t < count;
            index.push(if real { start + t } else { 0 });
            mask.push(if real { 1f32 } else { 0.0 });
        }
        start += count;
    }
    if flat.dim(0)? == 0 {
        let zeros = Tensor::zeros((rows, width), flat.dtype(), device)?;
        return Ok((zeros.clone(), zeros.to_dtype(DType::F32)?));
    }
    let index = Tensor::from_vec(index, rows * width, device)?;
    let laid = flat.index_select(&index, 0)?.reshape((rows, width))?;
    Ok((laid, Tensor::from_vec(mask, (rows, width), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_position_and_are_stable() {
        let a = completion_seed(42, 1, 7, 3);
        assert_eq!(a, completion_seed(42, 1, 7, 3));
        for other in [completion_seed(43, 1, 7, 3), completion_seed(42, 2, 7, 3), completion_seed(42, 1, 8, 3)] {
            assert_ne!(a, other);
        }
        assert_ne!(a, completion_seed(42, 1, 7, 4));
    }

    #[test]
    fn rewards_sum_present_values_only() {
        let per = vec![vec![Some(1.0), None, Some(0.0)], vec![Some(0.5), None, None]];
        assert_eq!(total_rewards(&per, 3), [1.5, 0.0, 0.0]);
        assert_eq!(present_mean(&per[0]), Some(0.5));
        assert_eq!(present_mean(&[None, None]), None);
    }

    #[test]
    fn rows_gather_each_sequences_targets() {
        let flat = Tensor::new(&[1f32, 2., 3., 4., 5.], &Device::Cpu).unwrap();
        let (laid, mask) = per_sequence_rows(&flat, &[2, 0, 3], &Device::Cpu).unwrap();
        assert_eq!(laid.to_vec2::<f32>().unwrap(), [[1., 2., 1.], [1., 1., 1.], [3., 4., 5.]]);
        assert_eq!(mask.to_vec2::<f32>().unwrap(), [[1., 1., 0.], [0., 0., 0.], [1., 1., 1.]]);
    }
}
