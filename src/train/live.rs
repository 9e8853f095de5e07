//! Live labels: the labeling pane appends to a labels file while a DPO (pairs) or KTO (thumbs)
//! stage runs; at every step boundary the trainer reads what is new, resolves it (supersedes,
//! ties, skips, held-back disagreements) and admits the difference into the sampling pool. A
//! resumed stage replays its earlier reads, so the pool gets the same examples at the same steps.

use std::collections::HashMap;
use std::path::PathBuf;

use super::examples::{pair_example, PairExample, TruncationStats};
use super::trainer::Admission;
use super::TrainError;
use crate::data::labels::{prefix_sha256, LabelLog};
use crate::data::{ChatTemplate, PreferenceRecord, TextTokenizer};

/// What a live labels file trains: which of its records count and what they become.
pub trait LiveKind {
    /// One resolved label.
    type Record;
    /// What joins the sampling pool.
    type Example;
    /// The admitted items with their records (in first-seen order), and the items held back.
    fn resolve(log: &LabelLog) -> (Vec<(String, Self::Record)>, Vec<String>);
    /// Equal keys for the same admitted answer: an item whose answer changes leaves the pool
    /// and rejoins it with the new one.
    fn key(record: &Self::Record) -> String;
    /// Tokenizes one record; `None` when truncation to `max_len` leaves nothing to train on.
    fn example(
        tok: &TextTokenizer,
        template: Option<&ChatTemplate>,
        record: &Self::Record,
        max_len: usize,
    ) -> Result<Option<Self::Example>, TrainError>;
}

/// Preference pairs, for DPO.
pub struct Pairs;

impl LiveKind for Pairs {
    type Record = PreferenceRecord;
    type Example = PairExample;

    fn resolve(log: &LabelLog) -> (Vec<(String, PreferenceRecord)>, Vec<String>) {
        log.resolve()
    }

    fn key(rec: &PreferenceRecord) -> String {
        let s = |t: &crate::data::Text| format!("{t:?}");
        serde_json::to_string(&(s(&rec.prompt), s(&rec.chosen), s(&rec.rejected))).unwrap_or_default()
    }

    fn example(
        tok: &TextTokenizer,
        template: Option<&ChatTemplate>,
        record: &PreferenceRecord,
        max_len: usize,
    ) -> Result<Option<PairExample>, TrainError> {
        Ok(pair_example(tok, template, record, max_len, &mut TruncationStats::default())?)
    }
}

/// What one read changed.
#[derive(Debug)]
pub struct LiveUpdate<E = PairExample> {
    /// Newly admitted examples, to be appended to the pool in this order.
    pub added: Vec<E>,
    /// Pool indices of pairs that left training (retracted, or now disputed).
    pub retracted: Vec<usize>,
    /// Items currently held back because their labels disagree.
    pub held_back: usize,
    /// Complete lines read.
    pub lines: usize,
    /// Unusable lines, located (`path:line:col: field: message`).
    pub problems: Vec<String>,
    /// Byte offset reached in each file (file name as displayed → offset).
    pub offsets: Vec<(String, u64)>,
}

impl<E> Default for LiveUpdate<E> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            retracted: Vec::new(),
            held_back: 0,
            lines: 0,
            problems: Vec::new(),
            offsets: Vec::new(),
        }
    }
}

impl<E> LiveUpdate<E> {
    /// The fields of the `labels_admitted` event, with the file and offset a resumed worker
    /// replays the read to.
    pub fn event_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut f = serde_json::Map::new();
        f.insert("count".into(), self.added.len().into());
        f.insert("retracted".into(), self.retracted.len().into());
        f.insert("held_back".into(), self.held_back.into());
        f.insert("lines".into(), self.lines.into());
        if let Some((file, offset)) = self.offsets.last() {
            f.insert("file".into(), file.clone().into());
            f.insert("byte_offset".into(), (*offset).into());
        }
        f
    }
}

/// How far to read one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Not now.
    Skip,
    /// To the end of what is complete.
    ToEnd,
    /// Up to this byte offset (replaying an earlier read).
    UpTo(u64),
}

struct Source {
    name: String,
    log: LabelLog,
    /// Admitted item → (what was admitted, its pool index).
    admitted: HashMap<String, (String, usize)>,
}

/// All live label files of a stage.
pub struct LiveLabels<K = Pairs> {
    sources: Vec<Source>,
    kind: std::marker::PhantomData<K>,
}

impl<K: LiveKind> LiveLabels<K> {
    /// Live sources at these paths (they may not exist yet).
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let sources = paths
            .into_iter()
            .map(|p| Source { name: p.display().to_string(), log: LabelLog::new(&p), admitted: HashMap::new() })
            .collect();
        Self { sources, kind: std::marker::PhantomData }
    }

    /// SHA-256 of the consumed prefix of every source (file name → (offset, hash)).
    pub fn consumed_prefixes(&self) -> Result<Vec<(String, u64, String)>, TrainError> {
        self.sources
            .iter()
            .map(|s| {
                Ok((s.name.clone(), s.log.offset(), prefix_sha256(std::path::Path::new(&s.name), s.log.offset())?))
            })
            .collect()
    }

    /// Refuses a resume whose labels files changed in the part the checkpointed run had read.
    pub fn verify_prefixes(&self, saved: &[(String, u64, String)]) -> Result<(), TrainError> {
        let mut changed = Vec::new();
        for (name, offset, hash) in saved {
            if prefix_sha256(std::path::Path::new(name), *offset)? != *hash {
                changed.push(format!("{name}: the first {offset} bytes (already trained on) changed"));
            }
        }
        if changed.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Data(format!("refusing to resume: {}", changed.join("; "))))
        }
    }

    /// Whether the stage has no live source.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// For a stage resumed from a checkpoint (`history`: file and offset of each read it had
    /// made, in order, possibly none), replays those reads so the pool is rebuilt with the same
    /// indices, and nothing beyond: lines written since then are admitted at the next step
    /// boundary, as they would have been without the interruption. For a fresh stage (`None`),
    /// reads each file to its end.
    pub fn read_initial(
        &mut self,
        history: Option<&[(String, u64)]>,
        pool_len: usize,
        max_len: usize,
        tok: &TextTokenizer,
        template: Option<&ChatTemplate>,
    ) -> Result<Vec<LiveUpdate<K::Example>>, TrainError> {
        let mut updates = Vec::new();
        let mut pool = pool_len;
        let Some(history) = history else {
            let limits = vec![Limit::ToEnd; self.sources.len()];
            updates.push(self.read(&limits, pool, max_len, tok, template)?);
            return Ok(updates);
        };
        for (file, offset) in history {
            let limits: Vec<Limit> = self
                .sources
                .iter()
                .map(|s| if same_file(&s.name, file) { Limit::UpTo(*offset) } else { Limit::Skip })
                .collect();
            let update = self.read(&limits, pool, max_len, tok, template)?;
            pool += update.added.len();
            updates.push(update);
        }
        Ok(updates)
    }

    /// The read before global step `step`: replays a previous worker's admission at this step
    /// when the plan has one, reads nothing at planned-over steps without one, and reads to the
    /// end of each file beyond the plan.
    pub fn read_at_step(
        &mut self,
        step: u64,
        plan: &[Admission],
        pool_len: usize,
        max_len: usize,
        tok: &TextTokenizer,
        template: Option<&ChatTemplate>,
    ) -> Result<LiveUpdate<K::Example>, TrainError> {
        let limits: Vec<Limit> = self
            .sources
            .iter()
            .map(|s| {
                let mine: Vec<&Admission> = plan.iter().filter(|a| same_file(&a.file, &s.name)).collect();
                match mine.iter().map(|a| a.step).max() {
                    Some(last) if step <= last => {
                        mine.iter().find(|a| a.step == step).map_or(Limit::Skip, |a| Limit::UpTo(a.offset))
                    }
                    _ => Limit::ToEnd,
                }
            })
            .collect();
        self.read(&limits, pool_len, max_len, tok, template)
    }

    /// Reads each source as far as its limit says.
    fn read(
        &mut self,
        limits: &[Limit],
        mut pool_len: usize,
        max_len: usize,
        tok: &TextTokenizer,
        template: Option<&ChatTemplate>,
    ) -> Result<LiveUpdate<K::Example>, TrainError> {
        let mut update = LiveUpdate::default();
        for (source, limit) in self.sources.iter_mut().zip(limits) {
            let read = match limit {
                Limit::Skip => continue,
                Limit::ToEnd => source.log.read_new(None)?,
                Limit::UpTo(offset) => source.log.read_new(Some(*offset))?,
            };
            update.problems.extend(read.problems.into_iter().map(|p| p.message));
            if read.lines == 0 {
                continue;
            }
            crate::fault::point("labels.read");
            update.lines += read.lines;
            update.offsets.push((source.name.clone(), read.offset));
            let (admitted, held) = K::resolve(&source.log);
            update.held_back += held.len();
            let now: HashMap<&str, String> = admitted.iter().map(|(item, rec)| (item.as_str(), K::key(rec))).collect();
            // Items that left, or whose admitted answer changed, leave the pool.
            let mut gone: Vec<String> = Vec::new();
            for (item, (key, idx)) in &source.admitted {
                if now.get(item.as_str()) != Some(key) {
                    update.retracted.push(*idx);
                    gone.push(item.clone());
                }
            }
            for item in gone {
                source.admitted.remove(&item);
            }
            for (item, rec) in &admitted {
                if source.admitted.contains_key(item) {
                    continue;
                }
                let example = K::example(tok, template, rec, max_len)
                    .map_err(|e| TrainError::Data(format!("{}: item {item}: {e}", source.name)))?;
                if let Some(example) = example {
                    source.admitted.insert(item.clone(), (now[item.as_str()].clone(), pool_len));
                    pool_len += 1;
                    update.added.push(example);
                } else {
                    update
                        .problems
                        .push(format!("{}: item {item}: dropped by truncation to max_length {max_len}", source.name));
                }
            }
        }
        Ok(update)
    }
}

/// Whether two names of labels files (a source's, and one a checkpoint or an event kept) are the
/// same file: a name spelled otherwise (relative, saved by an older worker resumed from the same
/// directory; or with `.` components) still replays its reads.
fn same_file(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}
