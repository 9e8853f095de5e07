//! KTO on thumbs labels: a `pref.loss = "kto"` stage trains on TRL's unpaired records with TRL's
//! metrics, thumbs the labeling pane appends to the run's labels file join at the next step
//! boundary (undone and disputed ones do not) and a resumed stage admits them at the same steps
//! as an uninterrupted one, and `hone check` refuses KTO data with only one kind of label, located.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // the first step's rewards are exactly 0

mod memory_host;

use std::path::PathBuf;

use candle_core::{DType, Device};
use hone::config::Pipeline;
use hone::train::trainer::{Finished, RunOptions, Trainer};
use memory_host::MemoryHost;
use serde_json::json;
use std::path::Path;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample")
}

fn pipeline(steps: u64) -> Pipeline {
    let text = format!(
        "[run]\nseed = 3\ncheckpoint_every = 0\nsample_every = 4\n\n[model]\npath = \"{model}\"\n\n\
         [[stage]]\nname = \"kto\"\nepochs = 20\nmax_steps = {steps}\nbatch_size = 4\nlr = 3e-3\nmax_length = 256\n\n\
         [stage.pref]\ndata = [\"{thumbs}\", \"labels.jsonl\"]\nloss = \"kto\"\nbeta = 0.1\n",
        model = sample().join("model").display(),
        thumbs = sample().join("thumbs.jsonl").display(),
    );
    toml::from_str(&text).unwrap()
}

fn thumbs(id: &str, prompt: &str, completion: &str, label: bool) -> String {
    json!({"id": id, "prompt": prompt, "completion": completion, "label": label, "labeler": "ann", "ts": 1}).to_string()
}

#[test]
fn a_kto_stage_trains_on_thumbs_with_trls_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(8);
    let mut host = MemoryHost::new(tmp.path(), &p);
    let mut trainer = Trainer::new(p, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);
    let started = host.events.iter().find(|e| e.0 == "stage_started").unwrap();
    assert_eq!(started.3["examples"], json!({"kto": 12, "desirable": 6, "undesirable": 6}), "{started:?}");
    let metrics = host.metrics();
    assert_eq!(metrics.len(), 8);
    for (_, _, m) in &metrics {
        for key in ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "grad_norm"]
        {
            assert!(m.get(key).and_then(serde_json::Value::as_f64).is_some(), "metrics without {key}: {m:?}");
        }
        assert!(m["kl"].as_f64().unwrap() >= 0.0, "the KL estimate is clamped at 0");
    }
    assert_eq!(host.events.iter().filter(|e| e.0 == "sample").count(), 6, "live samples answer the thumbs' prompts");
    // Evaluation's contamination check reads thumbs files' prompts (the SFT parser refuses them).
    let prompts = hone::train::evaluate::training_prompts(&[sample().join("thumbs.jsonl").as_path()]).unwrap();
    assert_eq!(prompts.len(), 12);
    let margins = host.series("kto", "rewards/margins");
    let losses = host.series("kto", "loss");
    // The first step starts at the reference: every reward is 0.
    assert_eq!(margins[0], 0.0);
    assert!(margins[7] > 0.0, "desirable answers gain on undesirable ones: {margins:?}");
    assert!(losses[7] < losses[0], "{losses:?}");
}

#[test]
fn live_thumbs_join_at_the_next_step_and_undone_or_disputed_ones_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(4);
    let mut host = MemoryHost::new(tmp.path(), &p);
    let lines = [
        thumbs("s-1", "What is 2+2?", "4", true),
        thumbs("s-2", "What is 2+3?", "6", false),
        json!({"id": "s-3", "kind": "undo", "supersedes": "s-2", "labeler": "ann", "ts": 2}).to_string(),
        // Two labelers disagree about one answer: held back.
        thumbs("s-4", "Capital of France?", "Lyon", false),
        thumbs("s-5", "Capital of France?", "Lyon", true),
    ];
    host.label_at = Some((2, lines.join("\n") + "\n"));
    let mut trainer = Trainer::new(p, RunOptions::default(), &mut host, Device::Cpu, DType::F32).unwrap();
    assert_eq!(trainer.run().unwrap(), Finished::Completed);
    drop(trainer);
    let admitted: Vec<_> = host.events.iter().filter(|e| e.0 == "labels_admitted").collect();
    assert_eq!(admitted.len(), 1, "{admitted:?}");
    let (_, stage, step, f) = admitted[0];
    assert_eq!((stage.as_deref(), *step), (Some("kto"), Some(2)));
    assert_eq!((f["count"].as_u64(), f["held_back"].as_u64(), f["lines"].as_u64()), (Some(1), Some(1), Some(5)));
}

/// Every metrics event's (global step, loss bits, grad-norm bits).
fn trajectory(host: &MemoryHost) -> Vec<(u64, u64, u64)> {
    host.metrics()
        .iter()
        .map(|m| (m.1, m.2["loss"].as_f64().unwrap().to_bits(), m.2["grad_norm"].as_f64().unwrap().to_bits()))
        .collect()
}

/// Resumes the stopped run in `dir` from its checkpoint at `step`, with the admissions its
/// events logged after that step replayed as the worker does; the resumed host.
fn resume_from(p: &Pipeline, dir: &Path, stopped: &MemoryHost, step: u64) -> Result<MemoryHost, String> {
    let ck = &stopped.checkpoints.iter().find(|c| c.0 == step).unwrap().1;
    let mut host = MemoryHost::new(dir, p);
    // The logged file named another way (as an older worker may have saved it) is the same file.
    host.plan = stopped.admissions_after(step);
    for admission in &mut host.plan {
        admission.file = admission.file.replace("/labels.jsonl", "/./labels.jsonl");
        assert!(admission.file.ends_with("/./labels.jsonl"), "{admission:?}");
    }
    let mut trainer = Trainer::resume(p.clone(), RunOptions::default(), &mut host, Device::Cpu, DType::F32, ck)
        .map_err(|e| e.to_string())?;
    trainer.run().map_err(|e| e.to_string())?;
    drop(trainer);
    Ok(host)
}

#[test]
fn a_resumed_kto_stage_admits_live_thumbs_at_the_same_steps_bit_exactly() {
    let mut p = pipeline(8);
    p.run.checkpoint_every = 2;
    let lines = [
        thumbs("t-1", "What is 2+2?", "4", true),
        thumbs("t-2", "What is 2+3?", "6", false),
        thumbs("t-3", "Capital of France?", "Paris", true),
    ]
    .join("\n")
        + "\n";
    let label_step = 3;
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = MemoryHost::new(full_dir.path(), &p);
    full.label_at = Some((label_step, lines.clone()));
    Trainer::new(p.clone(), RunOptions::default(), &mut full, Device::Cpu, DType::F32).unwrap().run().unwrap();
    let admitted: Vec<_> =
        full.events.iter().filter(|e| e.0 == "labels_admitted").map(|e| (e.2, e.3["count"].clone())).collect();
    assert_eq!(admitted, [(Some(label_step), json!(3))]);
    // What a resumed worker replays the read to.
    let event = &full.events.iter().find(|e| e.0 == "labels_admitted").unwrap().3;
    assert_eq!(event["byte_offset"].as_u64(), Some(lines.len() as u64));
    assert!(event["file"].as_str().unwrap().ends_with("labels.jsonl"), "{event:?}");
    let want = trajectory(&full);
    assert_eq!(want.len(), 8);

    // Stopped after step 5: checkpoints at 2 (before the thumbs arrived) and 4 (after).
    let dir = tempfile::tempdir().unwrap();
    let mut stopped = MemoryHost::new(dir.path(), &p);
    stopped.label_at = Some((label_step, lines));
    stopped.stop_after_metrics = Some(5);
    let finished =
        Trainer::new(p.clone(), RunOptions::default(), &mut stopped, Device::Cpu, DType::F32).unwrap().run().unwrap();
    assert_eq!(finished, Finished::Stopped);
    assert_eq!(trajectory(&stopped)[..], want[..5]);
    for step in [2, 4] {
        let resumed = resume_from(&p, dir.path(), &stopped, step).unwrap();
        let admitted: Vec<_> = resumed.events.iter().filter(|e| e.0 == "labels_admitted").map(|e| e.2).collect();
        // From step 2 the thumbs, already in the file, wait for step 3; from step 4 they are in
        // the rebuilt pool from the start, with the indices they had.
        assert_eq!(admitted, if step == 2 { vec![Some(label_step)] } else { vec![] }, "resumed from {step}");
        assert_eq!(trajectory(&resumed)[..], want[step as usize..], "resumed from {step}");
    }

    // Editing thumbs the stage already trained on makes the resume refuse.
    let labels = dir.path().join("labels.jsonl");
    let original = std::fs::read_to_string(&labels).unwrap();
    std::fs::write(&labels, original.replacen("Paris", "Lyon", 1)).unwrap();
    let err = resume_from(&p, dir.path(), &stopped, 4).err().unwrap();
    assert!(err.contains("refusing to resume") && err.contains("labels.jsonl"), "{err}");
}

#[test]
fn hone_check_refuses_kto_data_with_one_kind_of_label() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ups.jsonl");
    std::fs::write(&data, thumbs("a", "2+2?", "4", true) + "\n" + &thumbs("b", "3+3?", "6", true) + "\n").unwrap();
    let file = tmp.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "[model]\npath = \"{}\"\n\n[[stage]]\nname = \"kto\"\npref = {{ data = [\"ups.jsonl\"], loss = \"kto\" }}\n",
            sample().join("model").display()
        ),
    )
    .unwrap();
    let mut out = Vec::new();
    assert!(!hone::cli::check::run(&file, &mut out).unwrap());
    let out = String::from_utf8(out).unwrap();
    let want = format!("error: {}:1:", std::fs::canonicalize(&data).unwrap_or(data.clone()).display());
    assert!(out.contains("label: every record is a thumbs up (true): KTO needs thumbs down (false) too"), "{out}");
    assert!(out.contains(&want) || out.contains(&format!("error: {}:1:", data.display())), "{out}");
}
