//! The TUI state driven by `update` with synthetic events, no terminal at all: stage states,
//! resume semantics, the warnings ring, progress and λ, keys.

mod tui_support;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hone::tui::{key_action, update, Action, App, Level, Pane, RunStatus, StageState, Window, Worker, NOTICES_KEPT};
use serde_json::json;
use tui_support::{completed, event, metrics, mid_dpo, run_started, sample_run};

fn app_with(events: Vec<hone::run::Event>) -> App {
    let mut app = App::default();
    update(&mut app, Action::EventsArrived(events));
    app
}

fn states(app: &App) -> Vec<(String, StageState)> {
    app.stages.iter().map(|s| (s.name.clone(), s.state)).collect()
}

#[test]
fn stages_follow_the_pipeline_order_and_their_events() {
    let mut app = app_with(vec![run_started()]);
    assert_eq!(app.status, RunStatus::Running);
    assert_eq!(app.run_id.as_deref(), Some("20250220-000000-demo"));
    let names: Vec<String> = app.stages.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["sft", "dpo", "safety"]);
    assert!(app.stages.iter().all(|s| s.state == StageState::Pending));

    update(&mut app, Action::EventsArrived(mid_dpo()));
    assert_eq!(
        states(&app),
        [("sft".into(), StageState::Done), ("dpo".into(), StageState::Running), ("safety".into(), StageState::Pending)]
    );
    let dpo = &app.stages[1];
    assert_eq!((dpo.stage_step, dpo.total_steps), (45, Some(60)));
    assert_eq!(dpo.examples, [("sft".to_string(), 64), ("pref".to_string(), 32)]);
    assert_eq!((dpo.truncated, dpo.dropped), (3, 1));

    let app = app_with(completed());
    assert!(app.stages.iter().all(|s| s.state == StageState::Done));
    assert_eq!(app.status, RunStatus::Completed(65.5));
}

#[test]
fn a_failed_or_stopped_run_marks_the_running_stage() {
    let mut events = mid_dpo();
    events.push(event("error", Some("dpo"), Some(85), json!({"message": "out of memory"})));
    events.push(event("run_finished", None, None, json!({"status": "failed", "seconds": 12.0})));
    let app = app_with(events);
    assert_eq!(app.stages[1].state, StageState::Failed);
    assert_eq!(app.stages[2].state, StageState::Pending);
    assert_eq!(app.status, RunStatus::Failed(12.0));
    let last = app.notices.back().expect("the error is kept");
    assert_eq!((last.level, last.message.as_str()), (Level::Error, "out of memory"));

    let mut events = mid_dpo();
    events.push(event("run_finished", None, None, json!({"status": "stopped", "seconds": 3.0})));
    let app = app_with(events);
    assert_eq!(app.stages[1].state, StageState::Stopped);
}

#[test]
fn resume_drops_superseded_points_and_keeps_appending() {
    let mut events = mid_dpo();
    events.push(event("run_finished", None, None, json!({"status": "stopped", "seconds": 3.0})));
    let mut app = app_with(events);
    assert_eq!(app.series["loss"].last_step(), Some(85));

    // The worker restarts from the checkpoint at step 80: steps 81..=85 are logged again.
    update(
        &mut app,
        Action::EventsArrived(vec![
            event("resumed", None, Some(80), json!({"from_step": 80, "pid": 777})),
            event("stage_resumed", Some("dpo"), Some(80), json!({"total_steps": 60})),
        ]),
    );
    let loss = &app.series["loss"];
    assert_eq!(loss.last_step(), Some(80), "steps after from_step are gone");
    assert!(app.series.values().all(|s| s.last_step().is_none_or(|x| x <= 80)));
    assert_eq!(app.status, RunStatus::Running);
    assert_eq!(app.stages[1].state, StageState::Running);
    assert!(app.notices.back().is_some_and(|n| n.message == "resumed from step 80 (pid 777)"));

    let again: Vec<_> = (41..=46).map(|k| metrics("dpo", 40 + k, k, 60)).collect();
    update(&mut app, Action::EventsArrived(again));
    let steps: Vec<f64> = app.series["loss"].points().iter().map(|p| p.0).skip(78).collect();
    assert_eq!(steps, [79.0, 80.0, 81.0, 82.0, 83.0, 84.0, 85.0, 86.0], "one point per step, in order");
}

#[test]
fn resume_drops_later_lambda_changes() {
    let mut app = app_with(completed());
    assert_eq!(app.lambda_safe_trajectory().count(), 3);
    update(&mut app, Action::EventsArrived(vec![event("resumed", None, Some(115), json!({"from_step": 115}))]));
    let steps: Vec<u64> = app.lambda_safe_trajectory().map(|c| c.step).collect();
    assert_eq!(steps, [110]);
}

#[test]
fn the_warnings_ring_keeps_the_last_fifty() {
    let mut app = app_with(vec![run_started()]);
    let warnings: Vec<_> = (0..NOTICES_KEPT as u64 + 7)
        .map(|i| event("warning", None, Some(i), json!({"message": format!("w{i}")})))
        .collect();
    update(&mut app, Action::EventsArrived(warnings));
    assert_eq!(app.notices.len(), NOTICES_KEPT);
    assert_eq!(app.notices.front().map(|n| n.message.as_str()), Some("w7"));
    assert_eq!(app.notices.back().map(|n| n.message.as_str()), Some("w56"));
}

#[test]
fn progress_eta_lambdas_labels_and_checkpoints() {
    let app = app_with(mid_dpo());
    let p = &app.progress;
    assert_eq!((p.stage.as_deref(), p.stage_step, p.total_steps, p.global_step), (Some("dpo"), 45, 60, 85));
    // One step per 500 ms of event time: 15 steps left take 7.5 s.
    let eta = p.eta_seconds.expect("an ETA while running");
    assert!((eta - 7.5).abs() < 1e-9, "{eta}");
    assert_eq!(p.tokens_per_second, Some(2048.0 + 85.0));
    assert_eq!(app.lambdas.get("pref"), Some(&0.5));
    assert_eq!(app.labels_admitted, 3);
    assert_eq!(app.last_checkpoint.as_ref().map(|c| c.step), Some(40));
    assert!(app.chosen_falls_while_margin_grows(), "the fixture's chosen reward falls at the end");

    let app = app_with(completed());
    assert_eq!(app.progress.eta_seconds, None);
    assert!((app.lambdas["safe"] - 0.05).abs() < 1e-12, "the last lambda_changed wins");
    assert!(!app.chosen_falls_while_margin_grows(), "no hint once the preference stage is over");
}

#[test]
fn the_real_sample_run_reads_cleanly() {
    let app = app_with(sample_run());
    assert_eq!(app.status, RunStatus::Completed(10.094_030_765));
    assert!(app.stages.iter().all(|s| s.state == StageState::Done));
    assert_eq!(app.series["loss"].len(), 42);
    assert_eq!(app.series["rewards/margins"].len(), 12);
    assert_eq!(app.lambda_safe_trajectory().count(), 3);
}

#[test]
fn unknown_events_and_missing_fields_are_ignored() {
    let app = app_with(vec![
        event("from_the_future", None, None, json!({"x": 1})),
        event("stage_started", Some("mystery"), Some(0), json!({})),
        event("metrics", Some("mystery"), None, json!({"loss": "not a number"})),
    ]);
    assert_eq!(states(&app), [("mystery".into(), StageState::Running)]);
    assert!(app.series.is_empty());
}

#[test]
fn toggles_panes_and_quit() {
    let mut app = App::default();
    update(&mut app, Action::SwitchPane(Pane::Runs));
    assert_eq!(app.pane, Pane::Runs);
    update(&mut app, Action::ToggleSmoothing);
    update(&mut app, Action::ToggleLogScale);
    update(&mut app, Action::ToggleWindow);
    assert!(app.smoothing && app.log_scale && app.window == Window::Whole);
    update(&mut app, Action::ShowHelp);
    assert!(app.show_help);
    update(&mut app, Action::CloseOverlay);
    assert!(!app.show_help);
    update(&mut app, Action::WorkerChecked(Worker::Live(Some(9))));
    assert_eq!(app.worker, Worker::Live(Some(9)));
    assert!(!app.quit);
    update(&mut app, Action::Quit);
    assert!(app.quit, "quit only ends the UI loop");
}

#[test]
fn keys_map_to_actions() {
    let app = App::default();
    let key = |code| key_action(&app, KeyEvent::new(code, KeyModifiers::NONE));
    assert_eq!(key(KeyCode::Char('q')), Some(Action::Quit));
    assert_eq!(key(KeyCode::Char('3')), Some(Action::SwitchPane(Pane::Label)));
    assert_eq!(key(KeyCode::Char('5')), Some(Action::SwitchPane(Pane::Runs)));
    assert_eq!(key(KeyCode::Char('6')), None);
    assert_eq!(key(KeyCode::Char('?')), Some(Action::ShowHelp));
    assert_eq!(key(KeyCode::Char('s')), Some(Action::ToggleSmoothing));
    assert_eq!(key(KeyCode::Char('l')), Some(Action::ToggleLogScale));
    assert_eq!(key(KeyCode::Char('w')), Some(Action::ToggleWindow));
    assert_eq!(key_action(&app, KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Action::Quit));
}

#[test]
fn a_replaced_log_starts_over_keeping_the_view() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::SwitchPane(Pane::Stages));
    update(&mut app, Action::LogReplaced);
    assert!(app.series.is_empty() && app.stages.is_empty());
    assert_eq!(app.pane, Pane::Stages);
    assert_eq!(app.notices.len(), 1);
}

#[test]
fn caches_are_refreshed_for_the_terminal_size() {
    let mut app = app_with(mid_dpo());
    update(&mut app, Action::Resize(120, 40));
    let series = &app.series["loss"];
    let columns = hone::tui::chart_columns((120, 40), app.chosen_falls_while_margin_grows());
    assert!(series.cache().is_fresh(&series.key(columns.loss, 0, false)));
    update(&mut app, Action::Resize(80, 24));
    let series = &app.series["loss"];
    let narrow = hone::tui::chart_columns((80, 24), true).loss;
    assert!(narrow < columns.loss);
    assert!(series.cache().is_fresh(&series.key(narrow, 0, false)));
}
