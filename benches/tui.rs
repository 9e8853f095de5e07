//! TUI benchmarks (`cargo bench --bench tui`):
//! - drawing the dashboard at 200x50 with four series of 10^6 points each, after the first frame
//!   (target: well under 2 ms a frame);
//! - attaching to a run of 10^6 events up to the first frame, drawn from the log's tail (target:
//!   under 0.5 s), and, for comparison, folding that whole history (which happens behind the first
//!   frame, off the UI thread).

#![allow(clippy::unwrap_used)]

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::OnceLock;

use divan::Bencher;
use hone::tui::{draw, fold_history, read_tail, update, Action, App, TAIL_BYTES};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn main() {
    divan::main();
}

const POINTS: u64 = 1_000_000;

/// A state with four loss series of 10^6 points each, sized to `width`×`height`.
fn big_app(width: u16, height: u16, whole_run: bool) -> App {
    let mut app = App::default();
    for (i, key) in ["loss", "loss/sft", "weighted/pref", "weighted/safe"].into_iter().enumerate() {
        let series = app.series.entry(key.to_string()).or_default();
        for step in 0..POINTS {
            let x = step as f64;
            let spike = if step % 99_991 == 0 { 5.0 } else { 0.0 };
            series.push(step, 2.0 * (-x / 3e5).exp() + 0.1 * (x * 0.001 + i as f64).sin() + spike);
        }
    }
    app.progress.global_step = POINTS - 1;
    if whole_run {
        update(&mut app, Action::ToggleWindow);
    }
    update(&mut app, Action::Resize(width, height));
    app
}

fn frames(bencher: Bencher, whole_run: bool) {
    let app = big_app(200, 50, whole_run);
    let mut terminal = Terminal::new(TestBackend::new(200, 50)).unwrap();
    terminal.draw(|frame| draw(&app, frame)).unwrap();
    bencher.bench_local(|| {
        terminal.draw(|frame| draw(&app, frame)).unwrap();
    });
}

/// One frame of the dashboard at 200x50, four series of 10^6 points, whole-run window.
#[divan::bench(sample_count = 200)]
fn dashboard_frame_200x50_whole_run(bencher: Bencher) {
    frames(bencher, true);
}

/// The same with the recent window (last 200 steps).
#[divan::bench(sample_count = 200)]
fn dashboard_frame_200x50_recent(bencher: Bencher) {
    frames(bencher, false);
}

/// An events.jsonl of 10^6 events in the trainer's shapes, written once per bench run.
fn big_log() -> &'static PathBuf {
    static LOG: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut out = BufWriter::new(std::fs::File::create(&path).unwrap());
        let t0 = 1_740_000_000_000u64;
        writeln!(out, r#"{{"ts":{t0},"event":"run_started","stage":null,"step":0,"run_id":"bench","stages":["sft","dpo"]}}"#).unwrap();
        writeln!(out, r#"{{"ts":{t0},"event":"stage_started","stage":"sft","step":0,"total_steps":{POINTS}}}"#).unwrap();
        for step in 1..POINTS - 1 {
            let x = step as f64;
            let sft = 2.0 * (-x / 3e5).exp() + 0.6;
            writeln!(
                out,
                r#"{{"ts":{},"event":"metrics","stage":"sft","step":{step},"loss":{},"loss/sft":{sft},"learning_rate":0.0001,"grad_norm":{},"tokens_per_second":2048.0,"stage_step":{step},"total_steps":{POINTS}}}"#,
                t0 + step * 100,
                sft * 1.01,
                1.0 + (x * 0.01).sin() * 0.3,
            )
            .unwrap();
        }
        out.flush().unwrap();
        drop(out);
        (dir, path)
    })
    .1
}

/// From nothing to the first frame of a run with 10^6 events: read the log's tail, fold it, draw.
#[divan::bench(sample_count = 10)]
fn attach_first_frame_1e6_events(bencher: Bencher) {
    let path = big_log();
    bencher.bench_local(|| {
        let mut app = App::default();
        update(&mut app, Action::Resize(200, 50));
        let (events, _) = read_tail(path, TAIL_BYTES).unwrap();
        update(&mut app, Action::TailShown(events));
        let mut terminal = Terminal::new(TestBackend::new(200, 50)).unwrap();
        terminal.draw(|frame| draw(&app, frame)).unwrap();
        app
    });
}

/// The whole history of 10^6 events folded into a state (behind the first frame, off the UI).
#[divan::bench(sample_count = 2, sample_size = 1)]
fn attach_full_history_1e6_events(bencher: Bencher) {
    let path = big_log();
    bencher.bench_local(|| fold_history(path).unwrap());
}
