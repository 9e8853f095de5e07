//! Deterministic, resumable sampling of examples: a seeded permutation per epoch, with examples
//! of similar length grouped into the same batch to waste little padding. The whole state is a
//! position and an epoch, so a checkpoint resumes the exact same order.

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

/// Batches per window sorted by length before the window's batches are shuffled.
const WINDOW_BATCHES: usize = 8;

/// Where a sampler stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Examples already taken in the current epoch.
    pub position: usize,
}

/// Draws batches of indices into a dataset of fixed size.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    lengths: Vec<usize>,
    batch_size: usize,
    order: Vec<usize>,
    /// The resumable state.
    pub state: SamplerState,
}

impl Sampler {
    /// A sampler over examples of the given lengths.
    pub fn new(seed: u64, lengths: Vec<usize>, batch_size: usize, state: SamplerState) -> Self {
        let mut s = Self { seed, lengths, batch_size: batch_size.max(1), order: Vec::new(), state };
        s.order = s.epoch_order(state.epoch);
        s
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether the dataset is empty.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The order of one epoch: a seeded shuffle, then windows of a few batches sorted by length,
    /// cut into batches, and the batches of each window shuffled again.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut idx: Vec<usize> = (0..self.lengths.len()).collect();
        idx.shuffle(&mut rng);
        let window = self.batch_size * WINDOW_BATCHES;
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(window) {
            let mut sorted = chunk.to_vec();
            sorted.sort_by_key(|&i| (self.lengths[i], i));
            let mut batches: Vec<&[usize]> = sorted.chunks(self.batch_size).collect();
            batches.shuffle(&mut rng);
            for b in batches {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// The next batch (shorter at the end of an epoch) and whether it finished the epoch.
    pub fn next_batch(&mut self) -> (Vec<usize>, bool) {
        if self.lengths.is_empty() {
            return (Vec::new(), true);
        }
        let end = (self.state.position + self.batch_size).min(self.order.len());
        let batch = self.order[self.state.position..end].to_vec();
        self.state.position = end;
        let finished = end == self.order.len();
        if finished {
            self.state.epoch += 1;
            self.state.position = 0;
            self.order = self.epoch_order(self.state.epoch);
        }
        (batch, finished)
    }

    /// Fractional epochs consumed.
    pub fn progress(&self) -> f64 {
        self.state.epoch as f64 + self.state.position as f64 / self.lengths.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_resumable() {
        let lengths: Vec<usize> = (0..23).map(|i| (i * 7) % 11).collect();
        let mut a = Sampler::new(5, lengths.clone(), 4, SamplerState { epoch: 0, position: 0 });
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
        let (x, _) = a.next_batch();
        let mut resumed = Sampler::new(5, lengths, 4, SamplerState { epoch: 1, position: 0 });
        assert_eq!(resumed.next_batch().0, x);
    }
}
