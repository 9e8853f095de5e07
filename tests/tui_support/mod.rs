//! Deterministic synthetic event streams for the TUI tests: the shapes the trainer writes, with
//! fixed timestamps so screens never depend on the clock.

#![allow(dead_code)]

use hone::run::Event;
use serde_json::{json, Value};

/// Milliseconds of the first event.
pub const T0: u64 = 1_740_000_000_000;
/// Milliseconds between steps.
pub const STEP_MS: u64 = 500;

/// An event at a fixed time.
pub fn event(kind: &str, stage: Option<&str>, step: Option<u64>, fields: Value) -> Event {
    let ts = T0 + step.unwrap_or(0) * STEP_MS;
    let Value::Object(fields) = fields else { panic!("fields must be an object") };
    Event { ts, event: kind.to_string(), stage: stage.map(str::to_string), step, fields }
}

/// `run_started` for the sft → dpo → safety pipeline, evaluated and gated (it has `[eval]`).
pub fn run_started() -> Event {
    event(
        "run_started",
        None,
        Some(0),
        json!({"run_id": "20250220-000000-demo", "pid": 4242, "pipeline": "/data/pipeline.toml",
               "stages": ["sft", "dpo", "safety"], "eval": true}),
    )
}

/// `stage_started`.
pub fn stage_started(stage: &str, step: u64, total: u64) -> Event {
    event(
        "stage_started",
        Some(stage),
        Some(step),
        json!({"total_steps": total, "examples": {"sft": 64, "pref": 32, "unsafe": 0},
               "truncation": {"sft": {"truncated": 2, "dropped": 1}, "pref": {"truncated": 1, "dropped": 0}}}),
    )
}

/// One `metrics` event of `stage` at global `step` (`stage_step` of `total`), smooth and
/// deterministic. In DPO the chosen reward rises for 25 steps, then falls while the margin keeps
/// growing.
pub fn metrics(stage: &str, step: u64, stage_step: u64, total: u64) -> Event {
    let s = step as f64;
    let wobble = (s * 0.7).sin() * 0.05;
    let sft = 2.0 * (-s / 40.0).exp() + 0.6 + wobble;
    let mut f = json!({
        "loss/sft": sft,
        "learning_rate": 1e-3 * (stage_step as f64 / total as f64 * 3.0).min(1.0),
        "grad_norm": 1.5 + (s * 0.3).cos() * 0.5,
        "tokens_per_second": 2048.0 + s,
        "epoch": stage_step as f64 / total as f64,
        "stage_step": stage_step,
        "total_steps": total,
    });
    let m = f.as_object_mut().expect("an object");
    let mut loss = sft;
    match stage {
        "dpo" => {
            let k = stage_step as f64;
            let pref = 0.69 * (-k / 30.0).exp() + 0.1;
            let chosen = if k < 25.0 { 0.01 * k } else { 0.25 - 0.02 * (k - 25.0) };
            let margin = 0.03 * k;
            m.insert("loss/pref".into(), json!(pref));
            m.insert("weighted/pref".into(), json!(0.5 * pref));
            m.insert("lambda/pref".into(), json!(0.5));
            m.insert("rewards/chosen".into(), json!(chosen));
            m.insert("rewards/rejected".into(), json!(chosen - margin));
            m.insert("rewards/margins".into(), json!(margin));
            m.insert("rewards/accuracies".into(), json!((0.5 + k / 100.0).min(1.0)));
            loss = 0.2 * sft + 0.5 * pref;
        }
        "safety" => {
            let safe = 0.3 * (-s / 50.0).exp();
            m.insert("loss/safe".into(), json!(safe));
            m.insert("weighted/safe".into(), json!(0.2 * safe));
            m.insert("lambda/safe".into(), json!(0.2));
            loss = 0.5 * sft + 0.2 * safe;
        }
        _ => {}
    }
    m.insert("loss".into(), json!(loss));
    event("metrics", Some(stage), Some(step), f)
}

/// A run in the middle of DPO: sft done (40 steps), dpo at 45 of 60, a checkpoint, labels, a
/// warning whose message carries an escape sequence.
pub fn mid_dpo() -> Vec<Event> {
    let mut events = vec![run_started(), stage_started("sft", 0, 40)];
    for k in 1..=40 {
        events.push(metrics("sft", k, k, 40));
    }
    events.push(event(
        "checkpoint_saved",
        None,
        Some(40),
        json!({"path": "/runs/demo/checkpoints/step-000040", "bytes": 1_884_637, "pruned": [], "best_step": 40}),
    ));
    events.push(event("stage_finished", Some("sft"), Some(40), json!({"steps": 40})));
    events.push(stage_started("dpo", 40, 60));
    for k in 1..=45 {
        events.push(metrics("dpo", 40 + k, k, 60));
        if k == 10 {
            events.push(event("labels_admitted", Some("dpo"), Some(50),
                json!({"count": 3, "retracted": 0, "held_back": 0, "lines": 3, "file": "labels.jsonl", "byte_offset": 312})));
        }
        if k == 20 {
            events.push(event(
                "warning",
                Some("dpo"),
                Some(60),
                json!({"message": "prefs.jsonl:7: prompt \u{1b}[31mtruncated\u{1b}[0m to 256 tokens"}),
            ));
        }
    }
    events
}

/// A finished run: the whole pipeline, with adaptive λ_safe changes and a completed status.
pub fn completed() -> Vec<Event> {
    let mut events = mid_dpo();
    for k in 46..=60 {
        events.push(metrics("dpo", 40 + k, k, 60));
    }
    events.push(event("stage_finished", Some("dpo"), Some(100), json!({"steps": 60})));
    events.push(stage_started("safety", 100, 30));
    for k in 1..=30 {
        events.push(metrics("safety", 100 + k, k, 30));
        if k % 10 == 0 {
            let from = 0.2 - 0.05 * (k / 10 - 1) as f64;
            events.push(event(
                "lambda_changed",
                Some("safety"),
                Some(100 + k),
                json!({"lambda": "safe", "from": from, "to": from - 0.05, "unsafe_rate": 0.0, "reason": "adaptive"}),
            ));
        }
    }
    events.push(event(
        "checkpoint_saved",
        None,
        Some(130),
        json!({"path": "/runs/demo/checkpoints/step-000130", "bytes": 1_884_941, "pruned": [40], "best_step": 130}),
    ));
    events.push(event("stage_finished", Some("safety"), Some(130), json!({"steps": 30})));
    events.push(event("run_finished", None, None, json!({"status": "completed", "seconds": 65.5})));
    events
}

/// The events.jsonl of a real sample run (hone run sample-data/pipeline.toml --headless).
pub fn sample_run() -> Vec<Event> {
    let text = include_str!("sample-events.jsonl");
    text.lines().map(|l| Event::from_json(l).expect("the sample run's events parse")).collect()
}

/// Three runs beside each other: finished long ago, crashed, and the live one attached.
pub fn runs_list() -> Vec<hone::tui::RunSummary> {
    use hone::tui::{RunState, RunSummary};
    let run = |id: &str, state, attached, stage: &str, step, age| RunSummary {
        id: id.to_string(),
        state,
        attached,
        stage: Some(stage.to_string()),
        step: Some(step),
        age_seconds: Some(age),
    };
    vec![
        run("20250219-101010-old", RunState::Completed, false, "safety", 180, 3 * 86_400),
        run("20250219-121212-crashed", RunState::Interrupted, false, "dpo", 77, 5_400),
        run("20250220-000000-demo", RunState::Live(Some(4242)), true, "dpo", 95, 2),
    ]
}
