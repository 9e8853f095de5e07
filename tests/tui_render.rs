//! Screens rendered into ratatui's `TestBackend` at 80x24 and 120x40 and compared with insta
//! snapshots (`cargo insta review` after an intended change). The event streams are fixed, with
//! event-time stamps only, so every screen is deterministic.

mod tui_support;

use hone::tui::{render_to_string, update, Action, App, Pane};
use serde_json::json;
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

#[test]
fn unbuilt_panes_say_so_80x24() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Label));
    let label = render_to_string(&app, 80, 24);
    assert!(label.contains("Label: not built yet"), "{label}");
    update(&mut app, Action::SwitchPane(Pane::Eval));
    insta::assert_snapshot!(render_to_string(&app, 80, 24));
}

#[test]
fn runs_pane_80x24() {
    use hone::tui::{RunState, RunSummary};
    let mut app = app_with(mid_dpo());
    let run = |id: &str, state, attached| RunSummary { id: id.to_string(), state, attached };
    update(
        &mut app,
        Action::RunsListed(vec![
            run("20250219-101010-old", RunState::Completed, false),
            run("20250219-121212-crashed", RunState::Interrupted, false),
            run("20250220-000000-demo", RunState::Live(Some(4242)), true),
        ]),
    );
    update(&mut app, Action::SwitchPane(Pane::Runs));
    insta::assert_snapshot!(render_to_string(&app, 80, 24));
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
