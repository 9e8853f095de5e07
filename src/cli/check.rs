//! `hone check`: validates a pipeline and its data before any training and shows, per stage,
//! what the trainer would see: counts, token lengths, truncation, and one example with the
//! tokens that train marked.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Result;

use crate::config::load_pipeline;
use crate::data::{ChatTemplate, TextTokenizer};
use crate::model::ModelConfig;
use crate::sanitize::sanitize;
use crate::train::batch::Sequence;
use crate::train::plan::load_stage_data;

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
    if let Err(e) = crate::model::parse_device(&loaded.pipeline.run.device) {
        writeln!(
            out,
            "error: {}: {}",
            sanitize(&pipeline.display().to_string(), false),
            sanitize(&e.to_string(), true)
        )?;
        return Ok(false);
    }
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
    for (i, stage) in loaded.pipeline.stages.iter().enumerate() {
        writeln!(out, "\nstage {} (max_length {})", sanitize(&stage.name, false), stage.max_length)?;
        let prefs: Vec<_> =
            loaded.pref_sources[i].iter().filter(|s| !s.is_run_relative()).map(|s| s.path().to_path_buf()).collect();
        for s in loaded.pref_sources[i].iter().filter(|s| s.is_run_relative()) {
            writeln!(
                out,
                "  live labels: <run dir>/{} (read while the stage runs)",
                sanitize(&s.path().display().to_string(), false)
            )?;
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
