//! Screens rendered into ratatui's `TestBackend` at 80x24 and 120x40 and compared with insta
//! snapshots (`cargo insta review` after an intended change). The event streams are fixed, with
//! event-time stamps only, so every screen is deterministic.

mod tui_support;

use hone::tui::{render_to_string, update, Action, App, Pane};
use serde_json::{json, Value};
use tui_support::{completed, event, mid_dpo, run_started, sample_run};

fn app_with(events: Vec<hone::run::Event>) -> App {
    let mut app = App::default();
    update(&mut app, Action::EventsArrived(events));
    app
}

#[test]
fn dashboard_mid_dpo_80x24() {
    insta::assert_snapshot!(render_to_string(&app_with(mid_dpo()), 80, 24));
}

#[test]
fn dashboard_mid_dpo_120x40() {
    insta::assert_snapshot!(render_to_string(&app_with(mid_dpo()), 120, 40));
}

#[test]
fn dashboard_completed_120x40() {
    insta::assert_snapshot!(render_to_string(&app_with(completed()), 120, 40));
}

#[test]
fn dashboard_sample_run_120x40() {
    insta::assert_snapshot!(render_to_string(&app_with(sample_run()), 120, 40));
}

#[test]
fn dashboard_toggles_120x40() {
    let mut app = app_with(completed());
    for action in [Action::ToggleSmoothing, Action::ToggleLogScale, Action::ToggleWindow] {
        update(&mut app, action);
    }
    insta::assert_snapshot!(render_to_string(&app, 120, 40));
}

#[test]
fn dashboard_before_any_event_80x24() {
    insta::assert_snapshot!(render_to_string(&App::default(), 80, 24));
}

#[test]
fn stages_pane_120x40() {
    let mut app = app_with(completed());
    update(&mut app, Action::SwitchPane(Pane::Stages));
    insta::assert_snapshot!(render_to_string(&app, 120, 40));
}

/// The Label and Eval panes exist once the runtime attaches to a run; a bare `App` shows them as
/// empty titled panels, with no placeholder text.
#[test]
fn label_and_eval_without_their_panes_are_empty_80x24() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Label));
    let label = render_to_string(&app, 80, 24);
    assert!(label.contains("┌ Label ─"), "{label}");
    update(&mut app, Action::SwitchPane(Pane::Eval));
    insta::assert_snapshot!(render_to_string(&app, 80, 24));
}

#[test]
fn runs_pane_80x24() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::RunsListed(tui_support::runs_list()));
    update(&mut app, Action::SwitchPane(Pane::Runs));
    insta::assert_snapshot!(render_to_string(&app, 80, 24));
    update(&mut app, Action::SelectNext);
    insta::assert_snapshot!("runs_pane_120x40_second_selected", render_to_string(&app, 120, 40));
}

#[test]
fn help_overlay_80x24() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::ShowHelp);
    insta::assert_snapshot!(render_to_string(&app, 80, 24));
}

#[test]
fn escape_sequences_in_untrusted_text_are_shown_escaped() {
    let mut started = run_started();
    started.fields.insert("stages".into(), json!(["sft\u{1b}[2J", "dpo"]));
    let app = app_with(vec![
        started,
        event("warning", Some("sft\u{1b}[2J"), Some(3), json!({"message": "bad \u{1b}]0;pwned\u{7} title"})),
    ]);
    let screen = render_to_string(&app, 200, 40);
    assert!(!screen.contains('\u{1b}') && !screen.contains('\u{7}'), "{screen}");
    assert!(screen.contains("sft\\u{1b}[2J"), "the stage name is shown escaped:\n{screen}");
    assert!(screen.contains("bad \\u{1b}]0;pwned\\u{7} title"), "the message is shown escaped:\n{screen}");
}

#[test]
fn the_sft_hint_shows_while_chosen_falls_and_margin_grows() {
    let screen = render_to_string(&app_with(mid_dpo()), 120, 40);
    assert!(screen.contains("chosen reward falling while the margin grows: consider an SFT term (sft.on_chosen)"));
    let screen = render_to_string(&app_with(completed()), 120, 40);
    assert!(!screen.contains("chosen reward falling"));
}

#[test]
fn a_million_points_render_without_trouble() {
    let mut app = App::default();
    let events: Vec<_> = (1..=1_000_000u64)
        .step_by(1)
        .map(|s| event("metrics", Some("sft"), Some(s), json!({"loss": 1.0 + (s as f64 * 1e-3).sin()})))
        .collect();
    update(&mut app, Action::EventsArrived(events));
    update(&mut app, Action::ToggleWindow);
    update(&mut app, Action::Resize(120, 40));
    let screen = render_to_string(&app, 120, 40);
    assert!(screen.contains("step 1,000,000") || screen.contains("step 1000000"), "{screen}");
}

/// The mid-DPO run with a live sample, a fake GPU reading and the safety λ adapting.
fn live_app() -> App {
    use hone::tui::{GpuReading, GpuStatus};
    let mut events = mid_dpo();
    events.push(event(
        "sample",
        Some("dpo"),
        Some(95),
        json!({"prompt": "How do I boil an egg?", "response": "Put the egg in boiling water\nfor 9 minutes.\tThen cool it."}),
    ));
    for (step, v) in [(60u64, 0.2), (75, 0.35), (90, 0.5)] {
        events.push(event("metrics", Some("dpo"), Some(step), json!({"lambda/safe": v})));
    }
    let mut app = app_with(events);
    let reading = GpuReading {
        name: "NVIDIA H100 80GB HBM3".into(),
        utilisation: Some(93),
        memory_used: Some(41 << 30),
        memory_total: Some(80 << 30),
        temperature: Some(61),
        power_mw: Some(388_000),
    };
    update(&mut app, Action::GpuRead(GpuStatus::Readings(vec![reading])));
    app
}

#[test]
fn dashboard_live_sample_and_gpu_80x24() {
    insta::assert_snapshot!(render_to_string(&live_app(), 80, 24));
}

#[test]
fn dashboard_live_sample_and_gpu_120x40() {
    let screen = render_to_string(&live_app(), 120, 40);
    assert!(screen.contains("How do I boil an egg?") && screen.contains("for 9 minutes."), "{screen}");
    assert!(screen.contains("0 H100 93% 61°C 388 W 41.0/80GiB"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn dashboard_says_no_gpu_without_a_driver() {
    let mut app = live_app();
    update(&mut app, Action::GpuRead(hone::tui::GpuStatus::None("NVML not found".into())));
    assert!(render_to_string(&app, 120, 40).contains("no GPU"));
}

#[test]
fn the_strip_shows_the_gate_decision() {
    let mut app = app_with(completed());
    update(
        &mut app,
        Action::EventsArrived(vec![event(
            "gate_decided",
            Some("safety"),
            Some(180),
            json!({"decision": "iterate", "failing": ["unsafe_rate"]}),
        )]),
    );
    let screen = render_to_string(&app, 120, 40);
    assert!(screen.contains("✗ gates → ↺ iterate"), "{screen}");
    update(
        &mut app,
        Action::EventsArrived(vec![event("gate_decided", Some("safety"), Some(181), json!({"decision": "deploy"}))]),
    );
    assert!(render_to_string(&app, 120, 40).contains("✓ gates → ✓ deploy"));
}

/// Issue 16: each round of an `[[iterate]]` loop joins the strip when it starts, marked ↺ with
/// its number, and the gates follow the last round's decision.
#[test]
fn the_strip_shows_the_rounds_of_an_iterate_loop() {
    let mut app = app_with(completed());
    let gate = |stage: &str, step, decision: Value| event("gate_decided", Some(stage), Some(step), decision);
    let round = |stage: &str, step, n: u64| {
        event("stage_started", Some(stage), Some(step), json!({"total_steps": 10, "round": n, "fix_stage": "fix"}))
    };
    update(
        &mut app,
        Action::EventsArrived(vec![
            gate("safety", 180, json!({"decision": "iterate", "failing": ["unsafe_rate"]})),
            round("fix", 180, 1),
            event("stage_finished", Some("fix"), Some(190), json!({"steps": 10})),
            gate("fix", 190, json!({"decision": "iterate", "failing": ["unsafe_rate"], "round": 1})),
            round("fix.2", 190, 2),
        ]),
    );
    let screen = render_to_string(&app, 120, 40);
    assert!(screen.contains("✓ safety → ✓ ↺1 fix → ● ↺2 fix.2 → ✗ gates → ↺ iterate"), "{screen}");
    update(&mut app, Action::EventsArrived(vec![gate("fix.2", 200, json!({"decision": "deploy", "round": 2}))]));
    assert!(render_to_string(&app, 120, 40).contains("↺2 fix.2 → ✓ gates → ✓ deploy"));
}

/// Issue 10: a pipeline without `[eval]` showed "gates → deploy/iterate" it would never reach.
#[test]
fn the_strip_shows_gates_only_for_a_run_that_evaluates() {
    let mut events = mid_dpo();
    events[0].fields.insert("eval".into(), json!(false));
    let screen = render_to_string(&app_with(events), 120, 40);
    let strip = screen.lines().find(|l| l.contains("✓ base")).unwrap_or_default().to_string();
    assert!(strip.contains("● dpo → ○ safety"), "{screen}");
    assert!(!strip.contains("gates") && !strip.contains("deploy"), "no gates without [eval]: {strip}");
    let screen = render_to_string(&app_with(mid_dpo()), 120, 40);
    assert!(screen.contains("○ safety → ○ gates → ○ deploy/iterate"), "{screen}");
}

/// Issue 10: on pane 3 the overlay listed the dashboard's `s` (smoothing), `r` (resume) and `e`
/// (λ_pref), while the pane's own `s`, `r` and `e` mean skip, rubric and edit.
#[test]
fn the_help_overlay_shows_the_keys_of_the_pane_in_front_first() {
    for (pane, own, size) in [(Pane::Label, "skip this pair", (120, 40)), (Pane::Eval, "filter by segment", (120, 40))]
    {
        let mut app = app_with(mid_dpo());
        update(&mut app, Action::SwitchPane(pane));
        update(&mut app, Action::ShowHelp);
        let screen = render_to_string(&app, size.0, size.1);
        let at = |text: &str| screen.find(text).unwrap_or_else(|| panic!("{text:?} not shown:\n{screen}"));
        assert!(at(own) < at("show pane 1, the dashboard"), "the pane's keys come first:\n{screen}");
        assert!(at("detach: leave the TUI") > at(own));
        for dashboard_only in ["toggle EMA smoothing", "resume training", "edit λ_pref", "pause training"] {
            assert!(!screen.contains(dashboard_only), "{dashboard_only:?} does not apply on this pane:\n{screen}");
        }
    }
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Label));
    update(&mut app, Action::ShowHelp);
    insta::assert_snapshot!("help_overlay_label_pane_80x24", render_to_string(&app, 80, 24));
}

#[test]
fn stages_pane_80x24() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Stages));
    update(&mut app, Action::SelectNext);
    insta::assert_snapshot!(render_to_string(&app, 80, 24));
}

#[test]
fn help_overlay_120x40() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::ShowHelp);
    insta::assert_snapshot!(render_to_string(&app, 120, 40));
}

#[test]
fn confirm_and_lambda_dialogs_80x24() {
    use hone::control::Request;
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Stages));
    update(&mut app, Action::AskToConfirm(Request::Stop));
    insta::assert_snapshot!("confirm_stop_80x24", render_to_string(&app, 80, 24));
    update(&mut app, Action::CloseOverlay);
    update(&mut app, Action::EditLambda("pref".into()));
    update(&mut app, Action::InputBackspace);
    update(&mut app, Action::InputChar('7'));
    insta::assert_snapshot!("edit_lambda_80x24", render_to_string(&app, 80, 24));
}

#[test]
fn every_pane_fits_small_and_odd_sizes() {
    let mut app = live_app();
    update(&mut app, Action::RunsListed(tui_support::runs_list()));
    for pane in Pane::ALL {
        update(&mut app, Action::SwitchPane(pane));
        for (w, h) in [(80, 24), (40, 12), (200, 50), (1, 1), (0, 0)] {
            update(&mut app, Action::Resize(w, h));
            let _ = render_to_string(&app, w, h);
        }
    }
}

/// A GRPO stage's metrics take the rewards chart: reward, its spread, KL, the share of groups with
/// no reward variance and the mean completion length, with their newest values.
#[test]
fn dashboard_mid_grpo_shows_grpo_rewards() {
    let mut events = mid_dpo();
    events.push(event("stage_started", Some("grpo"), Some(100), json!({"total_steps": 20})));
    for k in 101..=110u64 {
        let x = (k - 100) as f64;
        events.push(event(
            "metrics",
            Some("grpo"),
            Some(k),
            json!({"loss": 0.01, "reward": 0.1 * x, "reward_std": 0.4, "kl": 0.002 * x,
                   "frac_reward_zero_std": 0.25, "completions/mean_length": 12.5,
                   "stage_step": k - 100, "total_steps": 20}),
        ));
    }
    let app = app_with(events);
    let screen = render_to_string(&app, 120, 40);
    assert!(screen.contains("GRPO rewards · len 12.5"), "{screen}");
    // Each curve's legend carries its newest value.
    for label in ["reward 1.000", "std 0.400", "kl 0.020", "zero-std 0.250"] {
        assert!(screen.contains(&format!("━ {label} ")), "{label}: {screen}");
    }
    assert!(!screen.contains("DPO rewards"), "{screen}");
    insta::assert_snapshot!("dashboard_mid_grpo_120x40", screen);
    insta::assert_snapshot!("dashboard_mid_grpo_80x24", render_to_string(&app, 80, 24));
    // Before the GRPO stage reports, the DPO chart stands.
    assert!(render_to_string(&app_with(mid_dpo()), 120, 40).contains("DPO rewards"));
}
