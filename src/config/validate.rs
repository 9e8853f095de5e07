//! The checks a pipeline must pass beyond its TOML types: ranges of numbers, names, device and
//! dtype syntax, and which terms a stage has. Each error names the offending field.

use std::collections::HashMap;

use super::error::ConfigError;
use super::load::Locator;
use super::locate::FieldPath;
use super::types::{AdaptiveLambda, Pipeline, PrefLossKind, PrefTerm, RmTerm, RunSettings, Stage};

/// The shortest of `{}` and `{:e}` (`0.5`, `1e-4`), for messages and diffs.
pub(crate) fn show_f64(x: f64) -> String {
    let plain = x.to_string();
    let exp = format!("{x:e}");
    if exp.len() < plain.len() {
        exp
    } else {
        plain
    }
}

/// Whether `device` is `cpu`, `cuda`, `cuda:N` or `auto` (syntax only; nothing is opened).
pub(crate) fn is_device(device: &str) -> bool {
    match device {
        "cpu" | "cuda" | "auto" => true,
        _ => device
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<usize>().is_ok()),
    }
}

/// Checks everything that does not need the file system.
pub(crate) fn validate(pipeline: &Pipeline, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let root = FieldPath::default();
    check_run(&pipeline.run, &root.key("run"), locator)?;
    if let Some(eval) = &pipeline.eval {
        let at = root.key("eval");
        if eval.baseline != "base" && !pipeline.stages.iter().any(|s| s.name == eval.baseline) {
            let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
            return Err(locator.error(
                &at.key("baseline"),
                format!("`{}` is neither `base` nor a stage ({})", eval.baseline, names.join(", ")),
            ));
        }
        if pipeline.stages.iter().any(|s| s.name == eval.baseline && s.rm.is_some()) {
            return Err(locator.error(
                &at.key("baseline"),
                format!(
                    "`{}` trains a reward model, not the policy: it has no evaluation to compare with",
                    eval.baseline
                ),
            ));
        }
        if eval.baseline == "base" && !eval.base {
            return Err(locator.error(&at.key("base"), "the baseline is `base`, so the base model must be evaluated"));
        }
        if eval.max_new_tokens == 0 {
            return Err(locator.error(&at.key("max_new_tokens"), "must be at least 1"));
        }
        if eval.batch_size == 0 {
            return Err(locator.error(&at.key("batch_size"), "must be at least 1"));
        }
        if !(eval.price_per_device_hour >= 0.0 && eval.price_per_device_hour.is_finite()) {
            return Err(locator.error(&at.key("price_per_device_hour"), "must be a non-negative number"));
        }
        if let Some(best_of) = &eval.best_of {
            let at = at.key("best_of");
            at_least(locator, &at.key("n"), best_of.n as u64, 1)?;
            positive(locator, &at.key("temperature"), best_of.temperature)?;
        }
    }
    let stages = root.key("stage");
    if pipeline.stages.is_empty() {
        return Err(locator.error(&stages, "a pipeline needs at least one [[stage]]"));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, stage) in pipeline.stages.iter().enumerate() {
        let at = stages.index(i);
        if let Some(first) = seen.insert(stage.name.as_str(), i) {
            return Err(
                locator.error(&at.key("name"), format!("duplicate stage name `{}` (also stage[{first}])", stage.name))
            );
        }
        check_stage(stage, &at, locator)?;
    }
    check_iterates(pipeline, locator)?;
    super::engine::check(pipeline, locator)
}

/// `[[iterate]]` tables: an `[eval]` table to gate with, gates and stages that exist, a fix stage
/// that is neither the baseline nor another loop's, a sequence left to run, at least one round,
/// and no loop that leads back to itself.
fn check_iterates(pipeline: &Pipeline, locator: &Locator<'_>) -> Result<(), ConfigError> {
    if pipeline.iterates.is_empty() {
        return Ok(());
    }
    let root = FieldPath::default().key("iterate");
    let Some(eval) = &pipeline.eval else {
        return Err(
            locator.error(&root.index(0), "[[iterate]] acts on gate decisions: the pipeline needs an [eval] table")
        );
    };
    let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    let gates = crate::eval::gate_names(&eval.gates);
    let mut fixed: HashMap<&str, usize> = HashMap::new();
    for (i, it) in pipeline.iterates.iter().enumerate() {
        let at = root.index(i);
        if !names.contains(&it.stage.as_str()) {
            return Err(locator.error(
                &at.key("stage"),
                format!("`{}` is not a stage of this pipeline ({})", it.stage, names.join(", ")),
            ));
        }
        if it.stage == eval.baseline {
            return Err(locator.error(
                &at.key("stage"),
                format!("`{}` is the baseline of the gates, which is never gated", it.stage),
            ));
        }
        if let Some(other) = fixed.insert(it.stage.as_str(), i) {
            return Err(
                locator.error(&at.key("stage"), format!("`{}` is already the fix stage of iterate[{other}]", it.stage))
            );
        }
        if it.when.is_empty() {
            return Err(locator.error(&at.key("when"), format!("name at least one gate ({})", gates.join(", "))));
        }
        for (j, gate) in it.when.iter().enumerate() {
            if !gates.contains(gate) {
                return Err(
                    locator.error(&at.key("when").index(j), format!("`{gate}` is not a gate ({})", gates.join(", ")))
                );
            }
        }
        at_least(locator, &at.key("max_rounds"), u64::from(it.max_rounds), 1)?;
        if let Some(after) = &it.after {
            if !names.contains(&after.as_str()) {
                return Err(locator.error(
                    &at.key("after"),
                    format!("`{after}` is not a stage of this pipeline ({})", names.join(", ")),
                ));
            }
            if *after == eval.baseline {
                return Err(locator
                    .error(&at.key("after"), format!("`{after}` is the baseline of the gates, which is never gated")));
            }
        }
    }
    if pipeline.sequence().next().is_none() {
        return Err(locator
            .error(&root.index(0).key("stage"), "every stage is a fix stage: no stage is left to run in sequence"));
    }
    if let Some((i, cycle)) = iterate_cycle(pipeline) {
        return Err(
            locator.error(&root.index(i).key("after"), format!("the loops form a cycle: {}", cycle.join(" → ")))
        );
    }
    Ok(())
}

/// A chain of loops that leads back to where it started: the index of an `[[iterate]]` on it
/// and the stages along it (`a → b → a`). Each stage is the fix stage of at most one loop, so
/// walking back from a fix stage through the `after` of its loop is a single path; it either
/// reaches a stage of the sequence or comes back.
fn iterate_cycle(pipeline: &Pipeline) -> Option<(usize, Vec<&str>)> {
    let loop_of = |stage: &str| pipeline.iterates.iter().position(|it| it.stage == stage);
    for (i, it) in pipeline.iterates.iter().enumerate() {
        let mut path = vec![it.stage.as_str()];
        let mut at = i;
        for _ in 0..pipeline.iterates.len() {
            let Some(after) = pipeline.iterates[at].after.as_deref() else { break };
            path.push(after);
            if after == it.stage {
                path.reverse();
                return Some((i, path));
            }
            match loop_of(after) {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    None
}

fn check_run(run: &RunSettings, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let name_ok = (1..=64).contains(&run.name.len())
        && run.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(
            locator.error(&at.key("name"), format!("`{}` is not a run name (1 to 64 of A-Z a-z 0-9 _ . -)", run.name))
        );
    }
    if !is_device(&run.device) {
        return Err(
            locator.error(&at.key("device"), format!("`{}` is not a device (cpu, cuda, cuda:N or auto)", run.device))
        );
    }
    if !matches!(run.dtype.as_str(), "f32" | "bf16" | "f16") {
        return Err(locator.error(&at.key("dtype"), format!("`{}` is not a dtype (f32, bf16 or f16)", run.dtype)));
    }
    if run.keep_checkpoints < 1 {
        return Err(locator.error(&at.key("keep_checkpoints"), "must be at least 1"));
    }
    if run.max_consecutive_nan < 1 {
        return Err(locator.error(&at.key("max_consecutive_nan"), "must be at least 1"));
    }
    if run.log_every < 1 {
        return Err(locator.error(&at.key("log_every"), "must be at least 1"));
    }
    if run.sample_max_tokens < 1 {
        return Err(locator.error(&at.key("sample_max_tokens"), "must be at least 1"));
    }
    if let Some(i) = run.sample_prompts.iter().position(|p| p.trim().is_empty()) {
        return Err(locator.error(&at.key("sample_prompts").index(i), "must not be empty"));
    }
    Ok(())
}

/// `x > 0` and finite.
fn positive(locator: &Locator<'_>, at: &FieldPath, x: f64) -> Result<(), ConfigError> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(locator.error(at, format!("must be a finite number > 0 (got {})", show_f64(x))))
    }
}

/// `x ≥ 0` and finite.
fn non_negative(locator: &Locator<'_>, at: &FieldPath, x: f64) -> Result<(), ConfigError> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(locator.error(at, format!("must be a finite number ≥ 0 (got {})", show_f64(x))))
    }
}

/// `n ≥ min`.
fn at_least(locator: &Locator<'_>, at: &FieldPath, n: u64, min: u64) -> Result<(), ConfigError> {
    if n >= min {
        Ok(())
    } else {
        Err(locator.error(at, format!("must be at least {min} (got {n})")))
    }
}

fn check_stage(stage: &Stage, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let name_ok =
        !stage.name.is_empty() && stage.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !name_ok {
        return Err(locator
            .error(&at.key("name"), format!("`{}` is not a stage name (one or more of A-Z a-z 0-9 _ -)", stage.name)));
    }
    if stage.max_steps.is_none() && stage.epochs < 1 {
        return Err(locator.error(&at.key("epochs"), "must be at least 1 (or set max_steps)"));
    }
    if let Some(max_steps) = stage.max_steps {
        at_least(locator, &at.key("max_steps"), max_steps, 1)?;
    }
    at_least(locator, &at.key("batch_size"), stage.batch_size as u64, 1)?;
    at_least(locator, &at.key("grad_accum"), stage.grad_accum as u64, 1)?;
    positive(locator, &at.key("lr"), stage.lr)?;
    non_negative(locator, &at.key("weight_decay"), stage.weight_decay)?;
    non_negative(locator, &at.key("max_grad_norm"), stage.max_grad_norm)?;
    at_least(locator, &at.key("max_length"), stage.max_length as u64, 8)?;

    if stage.grpo.is_some() {
        return super::grpo::check(stage, at, locator);
    }
    if stage.sft.is_none() && stage.pref.is_none() && stage.safety.is_none() && stage.lm.is_none() && stage.rm.is_none()
    {
        return Err(locator.error(
            at,
            "a stage needs at least one term: [stage.sft], [stage.pref], [stage.safety], [stage.lm], [stage.rm] or [stage.grpo]",
        ));
    }
    if let Some(rm) = &stage.rm {
        check_rm(stage, rm, at, locator)?;
    }
    if let Some(lm) = &stage.lm {
        let at = at.key("lm");
        if lm.data.is_empty() {
            return Err(locator.error(&at.key("data"), "no text data files"));
        }
        non_negative(locator, &at.key("weight"), lm.weight)?;
    }
    let has_pref_data = stage.pref.as_ref().is_some_and(|p| !p.data.is_empty());
    let has_safety_data = stage.safety.as_ref().is_some_and(|s| !s.data.is_empty());
    if let Some(sft) = &stage.sft {
        let at = at.key("sft");
        if sft.data.is_empty() && !(sft.on_chosen && (has_pref_data || has_safety_data)) {
            return Err(locator.error(
                &at.key("data"),
                "no SFT data: list files, or set on_chosen = true in a stage with preference or safety data",
            ));
        }
        non_negative(locator, &at.key("weight"), sft.weight)?;
    }
    if let Some(pref) = &stage.pref {
        let at = at.key("pref");
        if pref.data.is_empty() {
            return Err(locator.error(&at.key("data"), "no preference data files"));
        }
        non_negative(locator, &at.key("lambda"), pref.lambda)?;
        positive(locator, &at.key("beta"), pref.beta)?;
        check_label_smoothing(pref, &at, locator)?;
        if pref.loss == PrefLossKind::Kto && (stage.sft.is_some() || stage.safety.is_some() || stage.lm.is_some()) {
            return Err(locator.error(
                &at.key("loss"),
                "a KTO stage trains on thumbs labels only: move [stage.sft], [stage.safety] and [stage.lm] to a \
                 stage of their own",
            ));
        }
    }
    if let Some(safety) = &stage.safety {
        let at = at.key("safety");
        if safety.data.is_empty() {
            return Err(locator.error(&at.key("data"), "no safety data files"));
        }
        non_negative(locator, &at.key("lambda"), safety.lambda)?;
        positive(locator, &at.key("beta"), safety.beta)?;
        if let Some(adaptive) = &safety.adaptive {
            check_adaptive(adaptive, &at.key("adaptive"), locator)?;
        }
    }
    Ok(())
}

/// A reward-model stage trains the reward model alone: policy terms beside it would train a model
/// the stage does not keep.
fn check_rm(stage: &Stage, rm: &RmTerm, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let others = [
        ("sft", stage.sft.is_some()),
        ("pref", stage.pref.is_some()),
        ("safety", stage.safety.is_some()),
        ("lm", stage.lm.is_some()),
    ];
    if let Some((name, _)) = others.iter().find(|(_, present)| *present) {
        return Err(locator.error(
            &at.key(name),
            format!(
                "a stage with [stage.rm] trains only the reward model (the policy is left as it was): \
                 move [stage.{name}] to a stage of its own"
            ),
        ));
    }
    let at = at.key("rm");
    if rm.data.is_empty() {
        return Err(locator.error(&at.key("data"), "no preference data files"));
    }
    if let Some(c) = rm.center_rewards_coefficient {
        non_negative(locator, &at.key("center_rewards_coefficient"), c)?;
    }
    Ok(())
}

/// ε is a flip probability below one half (at 0.5 the labels carry no information and robust
/// DPO divides by zero), and only the sigmoid-family losses have one.
fn check_label_smoothing(pref: &PrefTerm, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    let eps = pref.label_smoothing;
    if !(eps.is_finite() && (0.0..0.5).contains(&eps)) {
        return Err(locator.error(
            &at.key("label_smoothing"),
            format!("must be in [0, 0.5): the probability that a label is flipped (got {})", show_f64(eps)),
        ));
    }
    if eps != 0.0 && pref.loss == PrefLossKind::Kto {
        return Err(
            locator.error(&at.key("label_smoothing"), "applies to loss = \"sigmoid\" or \"robust\", not to \"kto\"")
        );
    }
    if eps != 0.0 && pref.loss == PrefLossKind::Ipo {
        return Err(locator
            .error(&at.key("label_smoothing"), "applies to loss = \"sigmoid\" (cDPO) or \"robust\", not to \"ipo\""));
    }
    Ok(())
}

fn check_adaptive(adaptive: &AdaptiveLambda, at: &FieldPath, locator: &Locator<'_>) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&adaptive.epsilon) {
        return Err(
            locator.error(&at.key("epsilon"), format!("must be between 0 and 1 (got {})", show_f64(adaptive.epsilon)))
        );
    }
    positive(locator, &at.key("eta"), adaptive.eta)?;
    at_least(locator, &at.key("every"), adaptive.every, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        for ok in ["cpu", "cuda", "cuda:0", "cuda:12", "auto"] {
            assert!(is_device(ok), "{ok}");
        }
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "CPU", "metal"] {
            assert!(!is_device(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_read_short() {
        assert_eq!(show_f64(1e-4), "1e-4");
        assert_eq!(show_f64(0.5), "0.5");
        assert_eq!(show_f64(2.0), "2");
        assert_eq!(show_f64(-0.1), "-0.1");
        assert_eq!(show_f64(3e-5), "3e-5");
    }
}
