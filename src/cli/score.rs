//! `hone score`: per-record SFT losses or DPO/IPO numbers as JSON lines, computed exactly as
//! transformers and TRL compute them, so hone can be checked against the user's own stack.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::{json, Value};

use crate::data::{encode_preference, encode_sft, read_records_with_lines, ChatTemplate, Records, TextTokenizer};
use crate::model::{Model, ModelError};
use crate::train::batch::Sequence;
use crate::train::loss::PreferenceLoss;
use crate::train::score::{neg_log_sigmoid, pair_logps, sequence_logps, summarize_rewards, PairLogps};

/// What `hone score` was asked.
pub struct ScoreArgs {
    /// The policy model directory.
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory applied to the policy.
    pub adapter: Option<PathBuf>,
    /// The reference model directory (preference data only).
    pub reference: Option<PathBuf>,
    /// The JSONL file.
    pub data: PathBuf,
    /// DPO β.
    pub beta: f64,
    /// Preference loss.
    pub loss: PreferenceLoss,
}

/// A model with the tokenizer and chat template of its directory.
pub struct Loaded {
    /// The network and its configs.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template, when it has one.
    pub template: Option<ChatTemplate>,
}

impl Loaded {
    /// Loads model, tokenizer and template from one directory, checking they fit together.
    pub fn open(dir: &Path, device: &Device, dtype: candle_core::DType) -> Result<Self> {
        Self::open_with_adapter(dir, None, device, dtype)
    }

    /// [`Loaded::open`], with a PEFT LoRA adapter directory on top of the model when given.
    pub fn open_with_adapter(
        dir: &Path,
        adapter: Option<&Path>,
        device: &Device,
        dtype: candle_core::DType,
    ) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let model = match adapter {
            Some(a) => Model::load_with_adapter(dir, device, dtype, &crate::model::AdapterInit::Dir(a.to_path_buf()))?,
            None => Model::load(dir, device, dtype)?,
        };
        model.check_tokenizer_len(tokenizer.len())?;
        let template = ChatTemplate::for_tokenizer(&tokenizer)?;
        Ok(Self { model, tokenizer, template })
    }

    /// The id used to pad batches ([`crate::train::score::pad_id`]).
    pub fn pad_id(&self) -> u32 {
        crate::train::score::pad_id(&self.tokenizer, &self.model)
    }
}

fn at(path: &Path, line: usize) -> String {
    format!("{}:{line}", path.display())
}

/// Runs the command, writing JSON lines to `out`.
pub fn run(args: &ScoreArgs, device: &Device, out: &mut impl Write) -> Result<()> {
    let dtype = candle_core::DType::F32;
    let policy = Loaded::open_with_adapter(&args.model, args.adapter.as_deref(), device, dtype)?;
    let (records, lines) = read_records_with_lines(&args.data)?;
    match records {
        Records::Sft(recs) => {
            if args.reference.is_some() {
                bail!("--ref is only used with preference data; {} holds SFT records", args.data.display());
            }
            let mut seqs = Vec::with_capacity(recs.len());
            for (rec, &line) in recs.iter().zip(&lines) {
                let ex = encode_sft(&policy.tokenizer, policy.template.as_ref(), rec)
                    .with_context(|| at(&args.data, line))?;
                seqs.push(Sequence { ids: ex.input_ids, targets: ex.loss_mask });
            }
            let scored = sequence_logps(policy.model.decoder(), &seqs, policy.pad_id()).map_err(ModelError::from)?;
            let (mut total_logp, mut total_tokens) = (0.0, 0usize);
            for (index, (logp, n)) in scored.iter().enumerate() {
                let loss = if *n == 0 { Value::Null } else { json!(-logp / *n as f64) };
                writeln!(out, "{}", json!({"index": index, "num_loss_tokens": n, "loss": loss, "logp": logp}))?;
                total_logp += logp;
                total_tokens += n;
            }
            let loss = if total_tokens == 0 { Value::Null } else { json!(-total_logp / total_tokens as f64) };
            writeln!(out, "{}", json!({"summary": {"loss": loss, "num_loss_tokens": total_tokens}}))?;
        }
        Records::Preference(recs) => {
            let mut pairs = Vec::with_capacity(recs.len());
            for (rec, &line) in recs.iter().zip(&lines) {
                let ex = encode_preference(&policy.tokenizer, policy.template.as_ref(), rec)
                    .with_context(|| at(&args.data, line))?;
                pairs.push((ex.prompt_ids, ex.chosen_ids, ex.rejected_ids));
            }
            let pol = pair_logps(policy.model.decoder(), &pairs, policy.pad_id()).map_err(ModelError::from)?;
            let reference = match &args.reference {
                Some(dir) => {
                    let r = Loaded::open(dir, device, dtype)?;
                    if r.tokenizer.len() != policy.tokenizer.len() {
                        bail!("{}: the reference tokenizer differs from the policy's", dir.display());
                    }
                    Some(pair_logps(r.model.decoder(), &pairs, policy.pad_id()).map_err(ModelError::from)?)
                }
                None => None,
            };
            write_preferences(args, &pol, reference.as_deref(), out)?;
        }
        Records::Safety(_) => bail!(
            "{}: safety records ({{prompt, unsafe}}) are scored by the trainer's safety term, not by `hone score`",
            args.data.display()
        ),
    }
    Ok(())
}

fn write_preferences(
    args: &ScoreArgs,
    pol: &[PairLogps],
    reference: Option<&[PairLogps]>,
    out: &mut impl Write,
) -> Result<()> {
    let n = pol.len().max(1) as f64;
    let mut rewards = Vec::with_capacity(pol.len());
    let mut total_loss = 0.0;
    for (index, p) in pol.iter().enumerate() {
        let mut row = json!({"index": index, "policy_chosen_logps": p.chosen, "policy_rejected_logps": p.rejected});
        if let Some(r) = reference.map(|r| r[index]) {
            let (dc, dr) = (p.chosen - r.chosen, p.rejected - r.rejected);
            let loss = match args.loss {
                PreferenceLoss::Sigmoid => neg_log_sigmoid(args.beta * (dc - dr)),
                PreferenceLoss::Ipo => {
                    let d = dc / p.chosen_tokens.max(1) as f64 - dr / p.rejected_tokens.max(1) as f64;
                    (d - 1.0 / (2.0 * args.beta)).powi(2)
                }
            };
            let (rc, rr) = (args.beta * dc, args.beta * dr);
            let obj = row.as_object_mut().expect("json! of an object literal is an object");
            obj.insert("ref_chosen_logps".into(), json!(r.chosen));
            obj.insert("ref_rejected_logps".into(), json!(r.rejected));
            obj.insert("loss".into(), json!(loss));
            obj.insert("reward_chosen".into(), json!(rc));
            obj.insert("reward_rejected".into(), json!(rr));
            rewards.push((rc, rr));
            total_loss += loss;
        }
        writeln!(out, "{row}")?;
    }
    let mut summary = serde_json::Map::new();
    if reference.is_some() {
        let r = summarize_rewards(&rewards);
        summary.insert("loss".into(), json!(total_loss / n));
        summary.insert("rewards/chosen".into(), json!(r.chosen));
        summary.insert("rewards/rejected".into(), json!(r.rejected));
        summary.insert("rewards/margins".into(), json!(r.margins));
        summary.insert("rewards/accuracies".into(), json!(r.accuracies));
    }
    summary.insert("logps/chosen".into(), json!(pol.iter().map(|p| p.chosen).sum::<f64>() / n));
    summary.insert("logps/rejected".into(), json!(pol.iter().map(|p| p.rejected).sum::<f64>() / n));
    writeln!(out, "{}", json!({"summary": summary}))?;
    Ok(())
}
