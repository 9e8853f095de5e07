//! Untrusted text never reaches the terminal as an escape sequence: payloads (OSC 52 clipboard,
//! OSC 0 title, CSI clear, 8-bit CSI, bidi overrides) are put in every untrusted field the screen
//! shows (prompts, samples, warnings, run names, stage names, paths, the status line, the GPU's
//! name), every pane is drawn through the real crossterm backend into a byte buffer, and the bytes
//! are searched for the payloads.

#![allow(clippy::unwrap_used)]

mod tui_support;

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use hone::tui::{draw, update, Action, App, GpuReading, GpuStatus, Level, Pane, RunState, RunSummary};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};
use serde_json::json;
use tui_support::{event, stage_started};

/// Each payload and a piece of it that must never appear in the output.
const PAYLOADS: &[(&str, &str)] = &[
    ("\u{1b}]52;c;cHduZWQ=\u{7}", "\u{1b}]52"),
    ("\u{1b}]0;pwned title\u{7}", "\u{1b}]0;"),
    ("\u{1b}[2J\u{1b}[3J", "\u{1b}[3J"),
    ("\u{9b}31mred", "\u{9b}"),
    ("abc\u{202e}evil\u{2066}x\u{2069}", "\u{202e}"),
];

fn all_payloads() -> String {
    PAYLOADS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join("|")
}

fn hostile_app() -> App {
    let bad = all_payloads();
    let stage = format!("sft{bad}");
    let mut app = App::default();
    let events = vec![
        event("run_started", None, Some(0), json!({"run_id": format!("run{bad}"), "stages": [stage.clone(), "dpo"]})),
        stage_started(&stage, 0, 10),
        event("metrics", Some(&stage), Some(1), json!({"loss": 1.0, "stage_step": 1, "total_steps": 10})),
        event("warning", Some(&stage), Some(1), json!({"message": format!("warn{bad}")})),
        event("error", Some(&stage), Some(1), json!({"message": format!("err{bad}")})),
        event(
            "sample",
            Some(&stage),
            Some(1),
            json!({"prompt": format!("prompt{bad}"), "response": format!("line one{bad}\nline two{bad}")}),
        ),
        event("checkpoint_saved", Some(&stage), Some(1), json!({"path": format!("/ckpt{bad}"), "bytes": 10})),
        event(
            "lambda_changed",
            Some(&stage),
            Some(1),
            json!({"lambda": format!("safe{bad}"), "from": 0.1, "to": 0.2, "reason": bad}),
        ),
    ];
    update(&mut app, Action::EventsArrived(events));
    let run = |id: String, state, attached| RunSummary {
        id,
        state,
        attached,
        stage: Some(stage.clone()),
        step: Some(1),
        age_seconds: Some(5),
    };
    update(
        &mut app,
        Action::RunsListed(vec![
            run(format!("other{bad}"), RunState::Completed, false),
            run(format!("run{bad}"), RunState::Live(None), true),
        ]),
    );
    let reading = GpuReading {
        name: format!("NVIDIA{bad}"),
        utilisation: Some(1),
        memory_used: None,
        memory_total: None,
        temperature: None,
        power_mw: None,
    };
    update(&mut app, Action::GpuRead(GpuStatus::Readings(vec![reading])));
    app.set_status(Level::Error, format!("reply{bad}"));
    app
}

/// A writer whose bytes the test can read after the terminal has written them.
#[derive(Clone, Default)]
struct Bytes(Rc<RefCell<Vec<u8>>>);

impl Write for Bytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes crossterm writes for one frame of `app` at `width`×`height`.
fn terminal_bytes(app: &App, width: u16, height: u16) -> Vec<u8> {
    let out = Bytes::default();
    let options = TerminalOptions { viewport: Viewport::Fixed(Rect::new(0, 0, width, height)) };
    let mut terminal = Terminal::with_options(CrosstermBackend::new(out.clone()), options).unwrap();
    terminal.draw(|frame| draw(app, frame)).unwrap();
    let bytes = out.0.borrow().clone();
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_payload_reaches_the_terminal_on_any_pane() {
    let mut app = hostile_app();
    for pane in Pane::ALL {
        update(&mut app, Action::SwitchPane(pane));
        for (w, h) in [(200, 50), (80, 24)] {
            update(&mut app, Action::Resize(w, h));
            let bytes = terminal_bytes(&app, w, h);
            assert!(bytes.len() > 1000, "something was drawn");
            for (payload, marker) in PAYLOADS {
                assert!(!find(&bytes, marker.as_bytes()), "{pane:?} at {w}x{h} let {payload:?} through");
            }
            // The payloads' visible escapes show that the fields were drawn at all. (Spaces are not
            // written on a first frame, so only space-free pieces can be searched for.)
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains("\\u{1b}]52") || text.contains("\\u{1b}"), "{pane:?}: payloads drawn escaped");
        }
    }
}

#[test]
fn every_untrusted_field_is_drawn_escaped() {
    let mut app = hostile_app();
    let shown = |app: &App, w, h| String::from_utf8_lossy(&terminal_bytes(app, w, h)).into_owned();
    let dashboard = shown(&app, 200, 50);
    for field in
        ["run\\u{1b}]52", "sft\\u{1b}]52", "prompt\\u{1b}]52", "one\\u{1b}]52", "two\\u{1b}]52", "reply\\u{1b}]52"]
    {
        assert!(dashboard.contains(field), "dashboard lacks {field}");
    }
    update(&mut app, Action::SwitchPane(Pane::Runs));
    assert!(shown(&app, 200, 50).contains("other\\u{1b}]52"));
    update(&mut app, Action::SwitchPane(Pane::Stages));
    assert!(shown(&app, 200, 50).contains("/ckpt\\u{1b}]52"));
}
