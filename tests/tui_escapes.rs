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

/// The whole escape corpus: OSC 52 (clipboard), OSC 0 (title), OSC 8 (hyperlink), DCS, 7- and
/// 8-bit CSI, 8-bit OSC/DCS/ST, a device-status query (the terminal would answer into stdin), a
/// full reset, every bidi control, BEL, NUL, backspace, carriage return and DEL.
const CORPUS: &[&str] = &[
    "\u{1b}]52;c;ZXZpbA==\u{7}",
    "\u{1b}]0;pwned\u{1b}\\",
    "\u{1b}]8;;https://evil.example/\u{1b}\\click\u{1b}]8;;\u{1b}\\",
    "\u{1b}P1$qm\u{1b}\\",
    "\u{1b}[2J\u{1b}[6n",
    "\u{1b}c",
    "\u{9b}31m\u{9d}0;t\u{9c}\u{90}q\u{9c}",
    "\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}\u{2066}\u{2067}\u{2068}\u{2069}\u{200e}\u{200f}\u{61c}",
    "bell\u{7}nul\u{0}bs\u{8}cr\r del\u{7f}",
];

fn corpus() -> String {
    format!("<{}>", CORPUS.join("|"))
}

/// Fails on any byte of the terminal stream that ratatui did not mean: after removing the cursor
/// moves, colours and cursor visibility ratatui writes, no C0 or C1 control, DEL or bidi control
/// may remain.
fn assert_only_ratatuis_own_sequences(bytes: &[u8], what: &str) {
    assert_inert_text(bytes, what, false);
}

/// The check itself; a command's output may also hold its own line breaks.
fn assert_inert_text(bytes: &[u8], what: &str, newlines: bool) {
    let text = String::from_utf8(bytes.to_vec()).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    let own = regex::Regex::new(r"\x1b\[(\d+;\d+H|[0-9;]*m|\?25[lh]|\d*[ABCDGJK])").unwrap();
    let rest = own.replace_all(&text, "");
    let bad: Vec<char> = rest
        .chars()
        .filter(|&c| {
            (c.is_control() && !(newlines && c == '\n'))
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
        })
        .collect();
    assert!(bad.is_empty(), "{what}: raw control characters reached the terminal: {bad:?}");
}

/// Panes 3 and 4 with the corpus in every field they show.
fn hostile_label_and_eval(evil: &str) -> (hone::tui::label::LabelPane, hone::tui::eval_pane::EvalPane) {
    use hone::data::label_store::{Candidate, PairAgreement};
    use hone::data::Text;
    use hone::eval::{failures, read_suite, score, GateConfig, Judge, JudgeConfig, Response, ScoreInputs};
    use hone::tui::eval_pane::{EvalPane, StageEval};
    use hone::tui::label::LabelPane;
    let cand = Candidate {
        prompt: Text::Plain(format!("prompt{evil}")),
        responses: vec![Text::Plain(format!("left{evil}")), Text::Plain(format!("right{evil}"))],
        source: format!("source{evil}"),
    };
    let mut label = LabelPane::new(&format!("ann{evil}"), vec![cand], 3, &format!("session{evil}"));
    label.rubric = Some(format!("rubric{evil}"));
    label.agreement =
        vec![PairAgreement { a: evil.into(), b: evil.into(), n: 2, agreed: 1, percent: 0.5, kappa: None }];
    label.status = Some(Err(format!("error{evil}")));

    let suite = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/tiny_suite.jsonl");
    let mut items = read_suite(&suite).unwrap();
    for item in &mut items {
        item.prompt = hone::eval::Prompt::Text(format!("item{evil}"));
    }
    let judge = Judge::new(&JudgeConfig::default()).unwrap();
    let gates = GateConfig::default();
    let responses: Vec<Response> = items
        .iter()
        .map(|i| Response { id: i.id.clone(), text: format!("answer{evil}"), latency_s: 0.5, tokens: 5 })
        .collect();
    let scored = score(&ScoreInputs::new("dpo", "dpo", &items, &responses, &judge, &gates)).unwrap();
    let mut stage = StageEval {
        name: format!("dpo{evil}"),
        failures: failures(&items, &scored.verdicts, &responses),
        report: scored.report,
        responses: Some(responses),
        original_contaminated: Vec::new(),
    };
    for f in &mut stage.failures {
        f.failed_check = format!("check{evil}");
        f.reference = Some(format!("reference{evil}"));
        f.segment.language = format!("lang{evil}");
    }
    let mut eval = EvalPane::new(vec![stage], None, Vec::new(), &format!("user{evil}"), "s");
    eval.problems.push(format!("problem{evil}"));
    (label, eval)
}

#[test]
fn the_whole_escape_corpus_stays_inert_in_every_field_of_every_pane_at_80x24() {
    let evil = corpus();
    let mut app = hostile_app();
    // Every event field again, now with the whole corpus: run, stage and file names, prompts,
    // responses, worker warnings and errors (what the worker logs), λ reasons, the GPU's name,
    // the control socket's replies on the status line.
    let stage = format!("sft{evil}");
    update(
        &mut app,
        Action::EventsArrived(vec![
            event("run_started", None, Some(0), json!({"run_id": format!("run{evil}"), "stages": [stage.clone()]})),
            stage_started(&stage, 0, 10),
            event("metrics", Some(&stage), Some(2), json!({"loss": 1.0, "stage_step": 2, "total_steps": 10})),
            event("warning", Some(&stage), Some(2), json!({"message": format!("log line{evil}")})),
            event("error", Some(&stage), Some(2), json!({"message": format!("error{evil}")})),
            event("sample", Some(&stage), Some(2), json!({"prompt": evil.clone(), "response": evil.clone()})),
            event("checkpoint_saved", Some(&stage), Some(2), json!({"path": format!("/runs/{evil}/ckpt"), "bytes": 1})),
            event(
                "lambda_changed",
                Some(&stage),
                Some(2),
                json!({"lambda": "safe", "from": 0.1, "to": 0.2, "reason": evil.clone()}),
            ),
        ]),
    );
    let summary = RunSummary {
        id: format!("file name{evil}"),
        state: RunState::Completed,
        attached: false,
        stage: Some(stage.clone()),
        step: Some(2),
        age_seconds: Some(5),
    };
    update(&mut app, Action::RunsListed(vec![summary]));
    app.set_status(Level::Error, format!("reply{evil}"));
    let (label, eval) = hostile_label_and_eval(&evil);
    app.label = Some(label);
    app.eval = Some(eval);
    for pane in Pane::ALL {
        update(&mut app, Action::SwitchPane(pane));
        for (w, h) in [(80, 24), (120, 40)] {
            update(&mut app, Action::Resize(w, h));
            let bytes = terminal_bytes(&app, w, h);
            assert!(bytes.len() > 500, "{pane:?}: something was drawn");
            assert_only_ratatuis_own_sequences(&bytes, &format!("{pane:?} at {w}x{h}"));
        }
    }
    // The detail view of a failure and the help overlay draw more of the same fields.
    update(&mut app, Action::SwitchPane(Pane::Eval));
    if let Some(eval) = app.eval.as_mut() {
        eval.key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter));
        assert!(eval.detail);
    }
    assert_only_ratatuis_own_sequences(&terminal_bytes(&app, 80, 24), "eval detail at 80x24");
}

#[test]
fn the_cli_prints_hostile_file_names_and_errors_escaped() {
    // A pipeline file whose name and contents carry the corpus (minus NUL and '/', which a file
    // name cannot hold): `hone check` reports it on the terminal.
    let dir = tempfile::tempdir().unwrap();
    let name: String = corpus().chars().filter(|&c| c != '\0' && c != '/').collect();
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, format!("[model]\npath = \"{}\"\n", corpus().replace(['"', '\\'], ""))).unwrap();
    for args in [vec!["check", path.to_str().unwrap()], vec!["runs", "--runs-dir", path.to_str().unwrap()]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hone")).args(&args).output().unwrap();
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert_inert_text(bytes, &format!("hone {} {stream}", args[0]), true);
        }
        assert!(!out.stderr.is_empty() || !out.stdout.is_empty(), "hone {} said something", args[0]);
    }
}
