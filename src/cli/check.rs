//! `hone check`: validates a pipeline and its data before any training and shows, per stage,
//! what the trainer would see: counts, token lengths, truncation, and one example with the
//! tokens that train marked.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Result;

use candle_core::Device;

use crate::config::ModelSettings;
use crate::config::{load_pipeline, Stage};
use crate::data::{ChatTemplate, TextTokenizer};
use crate::memory::{
    adapter_parameters, device_total_bytes, estimate, human_bytes, parameter_count, MemoryEstimate, MemoryPlan,
};
use crate::model::lora::AdapterConfig;
use crate::model::{LoraSpec, ModelConfig, Precision};
use crate::sanitize::sanitize;
use crate::train::batch::Sequence;
use crate::train::plan::{load_stage_data, StageData};

/// Token-length histogram buckets: powers of two.
fn histogram(lengths: &[usize]) -> Vec<(usize, usize)> {
    let mut buckets: Vec<(usize, usize)> = Vec::new();
    for &len in lengths {
        let upper = len.max(1).next_power_of_two();
        match buckets.iter_mut().find(|(u, _)| *u == upper) {
            Some((_, n)) => *n += 1,
            None => buckets.push((upper, 1)),
        }
    }
    buckets.sort_unstable();
    buckets
}

/// One example, decoded token by token, trained tokens marked (reverse video on a terminal,
/// `⟦…⟧` otherwise). The text is sanitized: dataset contents never reach the terminal raw.
fn show_example(tok: &TextTokenizer, seq: &Sequence, tty: bool) -> String {
    let mut out = String::new();
    let mut inside = false;
    for (t, id) in seq.ids.iter().enumerate() {
        let target = t > 0 && seq.targets[t];
        if target != inside {
            out.push_str(match (target, tty) {
                (true, true) => "\u{1b}[7m",
                (false, true) => "\u{1b}[0m",
                (true, false) => "⟦",
                (false, false) => "⟧",
            });
            inside = target;
        }
        let piece = tok.decode(&[*id], false).unwrap_or_else(|_| format!("<{id}>"));
        out.push_str(&sanitize(&piece, true));
    }
    if inside {
        out.push_str(if tty { "\u{1b}[0m" } else { "⟧" });
    }
    out
}

/// A GRPO stage's prompt files: each read as an eval suite (located errors), and which of the
/// stage's rule rewards the items carry (a reward no item has would never score).
fn check_grpo(grpo: &crate::config::GrpoTerm, out: &mut impl Write) -> Result<bool> {
    let mut items = Vec::new();
    for path in &grpo.prompts {
        match crate::eval::read_suite(path) {
            Ok(read) => items.extend(read),
            Err(e) => {
                writeln!(out, "  error: {}", sanitize(&e.to_string(), true))?;
                return Ok(false);
            }
        }
    }
    writeln!(out, "  grpo: {} prompts, {} completions each", items.len(), grpo.group_size)?;
    for name in &grpo.reward {
        let scored = items
            .iter()
            .filter(|item| {
                item.checks.iter().any(|c| if name == "format" { c.is_instruction() } else { c.name() == name })
            })
            .count();
        writeln!(out, "  reward {}: {scored} of {} prompts carry it", sanitize(name, false), items.len())?;
        if scored == 0 {
            writeln!(out, "  warning: no prompt has a `{}` check: this reward never scores", sanitize(name, false))?;
        }
    }
    if let Some(dir) = &grpo.reward_model {
        writeln!(out, "  reward model: {}", sanitize(&dir.display().to_string(), false))?;
    }
    Ok(true)
}

/// A KTO stage's thumbs files (read with located errors): KTO needs thumbs up and thumbs down
/// among them, which is an error located at the first record of the first file when not so
/// (the run's live labels file is read while the stage runs and is not checked here).
fn check_kto(files: &[std::path::PathBuf], out: &mut impl Write) -> Result<bool> {
    let mut ups = 0usize;
    let mut downs = 0usize;
    for path in files {
        match crate::data::read_thumbs(path) {
            Ok(records) => {
                ups += records.iter().filter(|(_, r)| r.label).count();
                downs += records.iter().filter(|(_, r)| !r.label).count();
            }
            Err(e) => {
                writeln!(out, "  error: {}", sanitize(&e.to_string(), true))?;
                return Ok(false);
            }
        }
    }
    if ups + downs > 0 && (ups == 0 || downs == 0) {
        if let Some(Err(e)) = files.first().map(|f| crate::data::read_thumbs_for_kto(f)) {
            writeln!(out, "  error: {}", sanitize(&e.to_string(), true))?;
            return Ok(false);
        }
    }
    writeln!(out, "  kto: {} thumbs labels ({ups} up, {downs} down)", ups + downs)?;
    Ok(true)
}

/// What a stage's memory estimate depends on beyond the stage itself.
struct StageMemory<'a> {
    config: &'a ModelConfig,
    precision: Precision,
    checkpointing: bool,
    /// Labels may arrive while the stage trains: the reference model stays loaded.
    live_labels: bool,
    /// The LoRA adapter trained instead of every weight.
    lora: Option<LoraSpec>,
}

/// The adapter a LoRA pipeline trains: its `lora` table, else its adapter directory's config
/// (validation has read both).
fn lora_spec(model: &ModelSettings) -> Option<LoraSpec> {
    match (&model.lora, &model.adapter) {
        (Some(table), _) => Some(table.spec()),
        (None, Some(dir)) => AdapterConfig::read(dir).ok().map(|c| c.spec),
        (None, None) => None,
    }
}

impl StageMemory<'_> {
    /// The estimated peak of one training step of `stage` on `device` (full fine-tuning, every
    /// term's micro-batch at `max_length`, every position scored), with and without gradient
    /// checkpointing, and a warning line when the run's choice exceeds the device's memory.
    fn lines(&self, stage: &Stage, data: &StageData, device: &Device) -> Vec<String> {
        let b = stage.batch_size;
        let sequences = [
            (!data.sft.is_empty() || stage.sft.as_ref().is_some_and(|t| t.on_chosen), b),
            (!data.lm.is_empty(), b),
            (!data.pairs.is_empty() || stage.pref.is_some(), 2 * b),
            (!data.unsafe_seqs.is_empty(), b),
            (!data.safety_pairs.is_empty(), 2 * b),
        ]
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, n)| n)
        .sum::<usize>();
        let needs_reference = !data.pairs.is_empty() || !data.safety_pairs.is_empty() || self.live_labels;
        // With LoRA and no reference directory the reference is the policy's own base.
        let separate = self.lora.is_none() || stage.pref.as_ref().is_some_and(|p| p.reference.is_some());
        let params = parameter_count(self.config);
        let plan = |checkpointing| MemoryPlan {
            config: self.config,
            total_params: params,
            trainable_params: self.lora.as_ref().map_or(params, |s| adapter_parameters(self.config, s)),
            reference: needs_reference && self.live_labels && separate,
            sequences,
            seq_len: stage.max_length,
            target_rows: sequences * stage.max_length,
            precision: self.precision,
            checkpointing,
            lora: self.lora.as_ref(),
        };
        let (plain, ckpt) = (estimate(&plan(false)), estimate(&plan(true)));
        let chosen = if self.checkpointing { ckpt } else { plain };
        let device_name = match device {
            Device::Cpu => "cpu".to_string(),
            other => format!("{:?}", other.location()),
        };
        let total = device_total_bytes(device);
        let mut lines = vec![
            format!(
                "memory on {device_name} (estimate, {sequences} sequences x {} tokens, weights {}, matmuls {}): {}{}",
                stage.max_length,
                self.precision.master.as_str(),
                self.precision.compute.as_str(),
                format!("peak {}", human_bytes(chosen.total())),
                total.map_or_else(|| " (device memory unknown)".to_string(), |t| format!(" of {}", human_bytes(t))),
            ),
            self.lora_line(),
            format!("    {}", parts(&chosen)),
            format!(
                "    gradient checkpointing {}: {}; {}: {}",
                if self.checkpointing { "on (chosen)" } else { "off (chosen)" },
                human_bytes(chosen.total()),
                if self.checkpointing { "off" } else { "on" },
                human_bytes(if self.checkpointing { plain.total() } else { ckpt.total() }),
            ),
        ];
        lines.retain(|l| !l.is_empty());
        lines.push(match (needs_reference, self.live_labels) {
            (false, _) => "    reference: none".to_string(),
            (true, _) if !separate => {
                "    reference: the policy's frozen base with its adapters off (no second model)".to_string()
            }
            (true, true) => "    reference: held while training (live labels need its log-probs)".to_string(),
            (true, false) => format!(
                "    reference: scored before training, then freed (that phase holds {} of weights)",
                human_bytes(2 * params * self.precision.master.size_in_bytes() as u64)
            ),
        });
        if let Some(t) = total.filter(|t| chosen.total() > *t) {
            let hint = if self.checkpointing { "" } else { "; try [run] gradient_checkpointing = true" };
            lines.push(format!(
                "warning: estimated peak {} exceeds the device's {}{hint}",
                human_bytes(chosen.total()),
                human_bytes(t)
            ));
        }
        lines
    }
}

impl StageMemory<'_> {
    /// What a LoRA run holds, in words (empty without one).
    fn lora_line(&self) -> String {
        let Some(spec) = &self.lora else { return String::new() };
        format!(
            "    LoRA r {} (alpha {}): {} trainable parameters in {}, frozen base ({} parameters) in {}",
            spec.r,
            spec.alpha,
            adapter_parameters(self.config, spec),
            self.precision.master.as_str(),
            parameter_count(self.config),
            self.precision.frozen_base().as_str()
        )
    }
}

/// `weights … + gradients … + …` of an estimate.
fn parts(e: &MemoryEstimate) -> String {
    format!(
        "weights {} + gradients {} + AdamW {} + reference {} + activations {} + runtime {}",
        human_bytes(e.weights),
        human_bytes(e.gradients),
        human_bytes(e.optimizer),
        human_bytes(e.reference),
        human_bytes(e.activations),
        human_bytes(e.runtime)
    )
}

/// Runs the check; `Ok(false)` when a problem was found (already described on `out`).
pub fn run(pipeline: &Path, out: &mut impl Write) -> Result<bool> {
    let loaded = match load_pipeline(pipeline) {
        Ok(l) => l,
        Err(e) => {
            writeln!(out, "error: {}", sanitize(&e.to_string(), true))?;
            return Ok(false);
        }
    };
    // `hone run` refuses an unusable device with these words (see `run::prepare`).
    let device = match crate::model::parse_device(&loaded.pipeline.run.device) {
        Ok(d) => d,
        Err(e) => {
            writeln!(
                out,
                "error: {}: {}",
                sanitize(&pipeline.display().to_string(), false),
                sanitize(&e.to_string(), true)
            )?;
            return Ok(false);
        }
    };
    // Validation has checked the spelling.
    let precision = Precision::for_training(
        crate::model::parse_dtype(&loaded.pipeline.run.dtype).unwrap_or(candle_core::DType::F32),
    );
    let tty = std::io::stdout().is_terminal();
    let model_dir = &loaded.pipeline.model.path;
    let setup = (|| -> Result<(TextTokenizer, Option<ChatTemplate>, ModelConfig)> {
        let tok = TextTokenizer::from_dir(model_dir)?;
        let config = ModelConfig::from_dir(model_dir)?;
        let template = ChatTemplate::for_tokenizer(&tok)?;
        Ok((tok, template, config))
    })();
    let (tok, template, config) = match setup {
        Ok(x) => x,
        Err(e) => {
            writeln!(out, "error: {}", sanitize(&format!("{e:#}"), true))?;
            return Ok(false);
        }
    };
    writeln!(
        out,
        "model {} ({}, {} layers, hidden {}, vocab {}; tokenizer {} tokens)",
        sanitize(&model_dir.display().to_string(), false),
        config.architecture,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        tok.len()
    )?;
    let mut ok = tok.len() <= config.vocab_size;
    if !ok {
        writeln!(out, "error: the tokenizer has more tokens than the model's embedding has rows")?;
    }
    // Stages on the TRL engine: the venv's packages must import (their versions are shown).
    match crate::run::trl::check(&loaded.pipeline) {
        Ok(None) => {}
        Ok(Some(line)) => writeln!(out, "{}", sanitize(&line, true))?,
        Err(e) => {
            writeln!(out, "error: {}", sanitize(&e.to_string(), true))?;
            ok = false;
        }
    }
    for (i, stage) in loaded.pipeline.stages.iter().enumerate() {
        writeln!(out, "\nstage {} (max_length {})", sanitize(&stage.name, false), stage.max_length)?;
        for it in loaded.pipeline.iterates.iter().filter(|it| it.stage == stage.name) {
            let after = crate::train::iterate::loop_after(&loaded.pipeline, it).unwrap_or_default();
            writeln!(
                out,
                "  fix stage: runs only when {} is gated \"iterate\" with every failing gate among {}; at most {} round(s)",
                sanitize(&after, false),
                sanitize(&it.when.join(", "), false),
                it.max_rounds
            )?;
        }
        let prefs: Vec<_> =
            loaded.pref_sources[i].iter().filter(|s| !s.is_run_relative()).map(|s| s.path().to_path_buf()).collect();
        for s in loaded.pref_sources[i].iter().filter(|s| s.is_run_relative()) {
            writeln!(
                out,
                "  live labels: <run dir>/{} (read while the stage runs)",
                sanitize(&s.path().display().to_string(), false)
            )?;
        }
        if let Some(grpo) = &stage.grpo {
            ok &= check_grpo(grpo, out)?;
            continue;
        }
        if stage.pref.as_ref().is_some_and(|p| p.loss == crate::config::PrefLossKind::Kto) {
            ok &= check_kto(&prefs, out)?;
            continue;
        }
        let data = match load_stage_data(stage, &prefs, &tok, template.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                writeln!(out, "  error: {}", sanitize(&e.to_string(), true))?;
                ok = false;
                continue;
            }
        };
        let sets: [(&str, Vec<usize>); 6] = [
            ("sft", data.sft.iter().map(|s| s.ids.len()).collect()),
            ("lm", data.lm.iter().map(|s| s.ids.len()).collect()),
            ("pref", data.pairs.iter().map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len())).collect()),
            ("safety (unlikelihood)", data.unsafe_seqs.iter().map(|s| s.ids.len()).collect()),
            (
                "safety (dpo)",
                data.safety_pairs.iter().map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len())).collect(),
            ),
            ("reward model pairs", data.rm_pairs.iter().map(|p| p.chosen.len().max(p.rejected.len())).collect()),
        ];
        for (name, lengths) in &sets {
            if lengths.is_empty() {
                continue;
            }
            let hist: Vec<String> = histogram(lengths).iter().map(|(u, n)| format!("≤{u}: {n}")).collect();
            writeln!(out, "  {name}: {} examples, tokens {}", lengths.len(), hist.join(", "))?;
        }
        for (kind, t) in &data.truncation {
            writeln!(out, "  {kind}: {} truncated, {} dropped", t.truncated, t.dropped)?;
        }
        let memory = StageMemory {
            config: &config,
            precision,
            checkpointing: loaded.pipeline.run.gradient_checkpointing,
            live_labels: loaded.pref_sources[i].iter().any(crate::config::DataSource::is_run_relative),
            lora: lora_spec(&loaded.pipeline.model),
        };
        for line in memory.lines(stage, &data, &device) {
            writeln!(out, "  {line}")?;
        }
        let example = data
            .sft
            .first()
            .cloned()
            .or_else(|| data.lm.first().cloned())
            .or_else(|| data.pairs.first().map(crate::train::examples::PairExample::chosen_sequence));
        if let Some(seq) = example {
            let marks = if tty { "highlighted" } else { "between ⟦ ⟧" };
            writeln!(out, "  example (trained tokens {marks}):")?;
            for line in show_example(&tok, &seq, tty).lines() {
                writeln!(out, "    {line}")?;
            }
        }
    }
    writeln!(out, "\n{}", if ok { "ok" } else { "problems found" })?;
    Ok(ok)
}
