//! Packing tokenized sequences into one right-padded batch, with the positions whose next token
//! is a training target. Only those positions go through the LM head, which is where a causal LM
//! spends much of its time and memory.

use candle_core::{Device, Result, Tensor};

/// One sequence and which of its tokens are training targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `targets[t]`: token `t` is predicted and scored (token 0 never is: nothing predicts it).
    pub targets: Vec<bool>,
}

impl Sequence {
    /// A sequence whose tokens from `start` on are targets (a prompt followed by a completion).
    pub fn with_completion_from(ids: Vec<u32>, start: usize) -> Self {
        let targets = (0..ids.len()).map(|t| t >= start.max(1)).collect();
        Self { ids, targets }
    }

    /// Number of scored tokens.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&m| m).count()
    }
}

/// A right-padded batch on a device, with the gather indices of its targets.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, max_len]` ids, padded with the pad id.
    pub ids: Tensor,
    /// `[n]` indices into the flattened `[batch * max_len]` positions that predict a target.
    pub predictor_rows: Tensor,
    /// `[n, 1]` the target ids, aligned with `predictor_rows`.
    pub target_ids: Tensor,
    /// `[batch, n]` 1.0 where target `j` belongs to sequence `i`: per-sequence sums by matmul.
    pub membership: Tensor,
    /// Scored tokens per sequence.
    pub targets_per_sequence: Vec<usize>,
    /// Sum of all sequence lengths, padding excluded.
    pub real_tokens: usize,
}

impl TokenBatch {
    /// Pads `seqs` to the longest with `pad_id` and indexes their targets.
    pub fn new(seqs: &[Sequence], pad_id: u32, device: &Device) -> Result<Self> {
        let batch = seqs.len();
        let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        if batch == 0 || width == 0 {
            candle_core::bail!("cannot build a batch from no tokens");
        }
        let mut ids = Vec::with_capacity(batch * width);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut owner = Vec::new();
        let mut per_seq = Vec::with_capacity(batch);
        for (i, s) in seqs.iter().enumerate() {
            if s.targets.len() != s.ids.len() {
                candle_core::bail!("sequence {i}: {} target flags for {} tokens", s.targets.len(), s.ids.len());
            }
            ids.extend_from_slice(&s.ids);
            ids.extend(std::iter::repeat_n(pad_id, width - s.ids.len()));
            let mut count = 0;
            for t in 1..s.ids.len() {
                if s.targets[t] {
                    rows.push(u32::try_from(i * width + t - 1).map_err(|e| candle_core::Error::Msg(e.to_string()))?);
                    targets.push(s.ids[t]);
                    owner.push(i);
                    count += 1;
                }
            }
            per_seq.push(count);
        }
        let n = rows.len();
        let mut membership = vec![0f32; batch * n];
        for (j, &i) in owner.iter().enumerate() {
            membership[i * n + j] = 1.0;
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (batch, width), device)?,
            predictor_rows: Tensor::from_vec(rows, n, device)?,
            target_ids: Tensor::from_vec(targets, (n, 1), device)?,
            membership: Tensor::from_vec(membership, (batch, n), device)?,
            targets_per_sequence: per_seq,
            real_tokens: seqs.iter().map(|s| s.ids.len()).sum(),
        })
    }

    /// Total scored tokens.
    pub fn num_targets(&self) -> usize {
        self.targets_per_sequence.iter().sum()
    }
}
