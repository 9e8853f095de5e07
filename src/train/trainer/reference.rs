//! The reference log-prob precompute of a preference stage, kept as it goes: every few hundred
//! pairs (and at a stop, and at the end) the pairs scored since are stored through the host as a
//! chunk, so a stop or a crash in the middle loses at most the last chunk's worth, and the next
//! worker computes only the rest.
//!
//! The numbers are the same bits as an uninterrupted precompute's: chunks hold whole scoring
//! batches of the stage's pair list from its start, so the pairs left form the batches an
//! uninterrupted run would. A stored chunk is used only when its key names the same reference
//! and its hashes are the pairs at its position in the list; from the first that is not, the
//! rest is computed again.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::stage::Reference;
use super::{control, Host, Trainer};
use crate::config::Stage;
use crate::kind;
use crate::train::examples::PairExample;
use crate::train::logps_chunk::LogpsChunk;
use crate::train::plan::{RefCache, ScoredBatch, PAIRS_PER_BATCH};
use crate::train::TrainError;

/// Pairs scored before they are stored (a multiple of the scoring batch).
const CHUNK_PAIRS: usize = 128 * PAIRS_PER_BATCH;
/// A chunk is also stored when this long has passed since the last (a large model scores slowly).
const CHUNK_EVERY: Duration = Duration::from_secs(10);

/// Entries scored and not yet stored, and where the next chunk goes.
struct Pending {
    key: String,
    entries: Vec<(u64, (f64, f64))>,
    index: usize,
    since: Instant,
}

impl Pending {
    fn due(&self) -> bool {
        self.entries.len() >= CHUNK_PAIRS || self.since.elapsed() >= CHUNK_EVERY
    }

    fn store<H: Host>(&mut self, host: &mut H, stage: &str) -> Result<(), TrainError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let chunk = LogpsChunk { key: self.key.clone(), entries: std::mem::take(&mut self.entries) };
        host.save_reference_logps(stage, self.index, &chunk)?;
        crate::fault::point("reference.logps");
        self.index += 1;
        self.since = Instant::now();
        Ok(())
    }
}

impl<H: Host> Trainer<'_, H> {
    /// Reference log-probs of `all` (the stage's pairs, in order) into a cache: what earlier
    /// workers stored, then the rest, stored as it goes. A stop between two scoring batches ends
    /// it (`Break`, what was scored stored).
    pub(super) fn precompute_reference(
        &mut self,
        stage: &Stage,
        reference: &Reference,
        all: &[&PairExample],
    ) -> Result<ControlFlow<(), RefCache>, TrainError> {
        let pad = self.pad_id();
        let key =
            format!("{} on {:?} in {:?}, pad {pad}", reference.describe(stage), self.device.location(), self.precision);
        let (mut cache, covered, index) = self.stored_logps(&stage.name, &key, all)?;
        let mut pending = Pending { key, entries: Vec::new(), index, since: Instant::now() };
        let mut interrupts = control::Interrupts {
            host: &mut *self.host,
            paused: &mut self.paused,
            stop: &mut self.stop,
            deferred: &mut self.deferred,
            state: &self.state,
        };
        let name = stage.name.as_str();
        let mut after = |entries: &ScoredBatch, done: usize, total: usize| {
            pending.entries.extend_from_slice(entries);
            if done == total || pending.due() {
                pending.store(&mut *interrupts.host, name)?;
            }
            if done == total {
                return Ok(ControlFlow::Continue(()));
            }
            let flow = interrupts.between_batches(name, "reference", (covered + done, all.len()))?;
            if flow.is_break() {
                pending.store(&mut *interrupts.host, name)?;
            }
            Ok(flow)
        };
        let rest = all.get(covered..).unwrap_or_default();
        if reference.score_slice(&self.policy, rest, pad, &mut cache, &mut after)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(cache))
    }

    /// The stored chunks that fit `all` under `key`, as a cache: with how many pairs of `all` they
    /// cover and the index the next chunk takes. A `reference_logps_resumed` event says how many
    /// pairs were kept.
    fn stored_logps(
        &mut self,
        stage: &str,
        key: &str,
        all: &[&PairExample],
    ) -> Result<(RefCache, usize, usize), TrainError> {
        let mut cache = RefCache::new();
        let (mut covered, mut index) = (0, 0);
        for chunk in self.host.load_reference_logps(stage)? {
            let place = all.get(covered..covered + chunk.entries.len());
            let fits = chunk.key == key
                && place.is_some_and(|pairs| pairs.iter().zip(&chunk.entries).all(|(p, (hash, _))| p.hash == *hash));
            if !fits {
                break;
            }
            covered += chunk.entries.len();
            index += 1;
            cache.extend(chunk.entries);
        }
        if covered > 0 {
            let mut f = serde_json::Map::new();
            f.insert("kept".into(), serde_json::json!(covered));
            f.insert("total".into(), serde_json::json!(all.len()));
            self.host.emit(kind::REFERENCE_LOGPS_RESUMED, Some(stage), Some(self.state.global_step), f)?;
        }
        Ok((cache, covered, index))
    }
}
