//! Deterministic, resumable sampling of examples from a pool that may grow while training (live
//! labels): a seeded permutation per epoch, with examples of similar length grouped into the same
//! batch to waste little padding. New examples are served first, then join later epochs;
//! retracted ones are skipped. The state (epoch, position, the epoch's order, the queue of new
//! examples) is saved in checkpoints, so a resume draws exactly the same batches.

use crate::rng::{seeded, shuffle};
use serde::{Deserialize, Serialize};

/// Batches per window sorted by length before the window's batches are shuffled.
const WINDOW_BATCHES: usize = 8;

/// Where a sampler stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Entries of `order` already taken.
    pub position: usize,
    /// This epoch's order of example indices.
    pub order: Vec<usize>,
    /// Examples added during the epoch, served before the rest of `order`.
    pub pending: Vec<usize>,
}

/// Draws batches of indices into a pool of examples.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    lengths: Vec<usize>,
    active: Vec<bool>,
    batch_size: usize,
    /// The resumable state.
    pub state: SamplerState,
}

impl Sampler {
    /// A sampler over examples of the given lengths, fresh or from a saved state.
    pub fn new(seed: u64, lengths: Vec<usize>, batch_size: usize, state: Option<SamplerState>) -> Self {
        let active = vec![true; lengths.len()];
        let mut s = Self { seed, lengths, active, batch_size: batch_size.max(1), state: SamplerState::default() };
        s.state = state.unwrap_or_else(|| SamplerState { order: s.epoch_order(0), ..SamplerState::default() });
        s
    }

    /// Number of examples ever added.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether no example is active.
    pub fn is_empty(&self) -> bool {
        !self.active.iter().any(|&a| a)
    }

    /// Adds an example; it is served before the rest of the current epoch.
    pub fn add(&mut self, length: usize) -> usize {
        let idx = self.lengths.len();
        self.lengths.push(length);
        self.active.push(true);
        self.state.pending.push(idx);
        idx
    }

    /// Retracts or restores an example.
    pub fn set_active(&mut self, idx: usize, active: bool) {
        if let Some(a) = self.active.get_mut(idx) {
            *a = active;
        }
    }

    /// The order of one epoch over the active examples: a seeded shuffle, then windows of a few
    /// batches sorted by length, cut into batches, and the batches of each window shuffled again.
    /// Public so that a stage on another engine can be fed the same order (`engine = "trl"`).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        // Epoch e of a sampler seeded s draws from `rng::seeded(s ^ e·0x9E37_79B9_7F4A_7C15)`.
        let mut rng = seeded(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut idx: Vec<usize> = (0..self.lengths.len()).filter(|&i| self.active[i]).collect();
        shuffle(&mut rng, &mut idx);
        let window = self.batch_size * WINDOW_BATCHES;
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(window) {
            let mut sorted = chunk.to_vec();
            sorted.sort_by_key(|&i| (self.lengths[i], i));
            let mut batches: Vec<&[usize]> = sorted.chunks(self.batch_size).collect();
            shuffle(&mut rng, &mut batches);
            for b in batches {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// The next batch (shorter at the end of an epoch) and whether it finished the epoch.
    pub fn next_batch(&mut self) -> (Vec<usize>, bool) {
        let mut batch = Vec::with_capacity(self.batch_size);
        while batch.len() < self.batch_size && !self.state.pending.is_empty() {
            let i = self.state.pending.remove(0);
            if self.active[i] {
                batch.push(i);
            }
        }
        while batch.len() < self.batch_size && self.state.position < self.state.order.len() {
            let i = self.state.order[self.state.position];
            self.state.position += 1;
            if self.active[i] {
                batch.push(i);
            }
        }
        let finished = self.state.position >= self.state.order.len();
        if finished {
            self.state.epoch += 1;
            self.state.position = 0;
            self.state.order = self.epoch_order(self.state.epoch);
        }
        (batch, finished)
    }

    /// Fractional epochs consumed.
    pub fn progress(&self) -> f64 {
        self.state.epoch as f64 + self.state.position as f64 / self.state.order.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_resumable() {
        let lengths: Vec<usize> = (0..23).map(|i| (i * 7) % 11).collect();
        let mut a = Sampler::new(5, lengths.clone(), 4, None);
        let mut seen = Vec::new();
        loop {
            let (b, done) = a.next_batch();
            seen.extend(b);
            if done {
                break;
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        let saved = a.state.clone();
        let (x, _) = a.next_batch();
        let mut resumed = Sampler::new(5, lengths, 4, Some(saved));
        assert_eq!(resumed.next_batch().0, x);
    }

    #[test]
    fn added_examples_come_first_and_retracted_ones_never() {
        let mut s = Sampler::new(1, vec![3; 8], 2, None);
        s.next_batch();
        let new = s.add(5);
        s.set_active(0, false);
        let (b, _) = s.next_batch();
        assert_eq!(b[0], new);
        let mut all = Vec::new();
        for _ in 0..20 {
            all.extend(s.next_batch().0);
        }
        assert!(!all.contains(&0));
        assert!(all.contains(&new));
    }
}
