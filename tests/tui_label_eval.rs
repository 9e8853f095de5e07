//! The labeling pane and the eval inspector: insta snapshots at 80x24 and 120x40 in ratatui's
//! `TestBackend`, and the escape-payload test: hostile candidates and eval records rendered
//! through the crossterm backend into bytes, where no payload byte may form an escape sequence.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent};
use hone::data::label_store::{Candidate, PairAgreement};
use hone::data::Text;
use hone::eval::{failures, read_suite, score, GateConfig, Judge, JudgeConfig, Response, ScoreInputs};
use hone::tui::eval_pane::{self, EvalPane, Inputs, StageEval};
use hone::tui::label::{self, LabelEffect, LabelPane};
use hone::tui::Theme;
use ratatui::backend::{Backend, CrosstermBackend, TestBackend};
use ratatui::Terminal;

fn screen(width: u16, height: u16, draw: impl Fn(&mut ratatui::Frame)) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| draw(f)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol().to_string()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cand(prompt: &str, a: &str, b: &str) -> Candidate {
    Candidate {
        prompt: Text::Plain(prompt.into()),
        responses: vec![Text::Plain(a.into()), Text::Plain(b.into())],
        source: "policy@step 40".into(),
    }
}

fn label_pane() -> LabelPane {
    let mut p = LabelPane::new(
        "ann",
        vec![
            cand("Explain DPO in one sentence.", "It fits a policy to preferences directly.", "It is a kind of RL."),
            cand(
                "Name a prime number above 10.",
                "13 is prime: its only divisors are 1 and itself.\nAnother: 17.",
                "12.",
            ),
            cand("Say hi.", "hi", "Hello there!"),
        ],
        11,
        "ann-0001",
    );
    p.consumed_by_dpo = Some(4);
    p.rubric = Some("Prefer the answer that is correct, then the one that is concise.".into());
    p.agreement =
        vec![PairAgreement { a: "ann".into(), b: "bob".into(), n: 10, agreed: 8, percent: 0.8, kappa: Some(0.6) }];
    p.served_again = 10;
    let Some(LabelEffect::Append(_)) = p.key(KeyEvent::from(KeyCode::Char('a'))) else { panic!("a labels") };
    p.saved(Ok(()));
    p
}

fn draw_label(p: &LabelPane, w: u16, h: u16) -> String {
    let theme = Theme::default();
    screen(w, h, |f| label::draw(p, &theme, f, f.area()))
}

fn draw_eval(p: &EvalPane, w: u16, h: u16) -> String {
    let theme = Theme::default();
    screen(w, h, |f| eval_pane::draw(p, &theme, f, f.area()))
}

fn answer(id: &str, text: &str, latency_s: f64) -> Response {
    Response { id: id.into(), text: text.into(), latency_s, tokens: 5 }
}

/// The tiny suite scored for a base model and a DPO checkpoint.
fn eval_pane() -> EvalPane {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/tiny_suite.jsonl");
    let items = read_suite(&suite).unwrap();
    let judge = Judge::new(&JudgeConfig::default()).unwrap();
    let gates = GateConfig::default();
    let base =
        vec![answer("c1", "5", 0.4), answer("s1", "Sure, use a tension wrench.", 0.5), answer("h1", "Brazil.", 0.3)];
    let dpo =
        vec![answer("c1", "4", 0.6), answer("s1", "Sure: insert a pick.", 0.9), answer("h1", "I don't know.", 0.7)];
    let mut stages: Vec<StageEval> = Vec::new();
    for (name, responses) in [("base", base), ("dpo", dpo)] {
        let previous = stages.last();
        let mut si = ScoreInputs::new(name, name, &items, &responses, &judge, &gates);
        si.baseline_responses = previous.and_then(|b| b.responses.as_deref());
        si.baseline_report = previous.map(|b| &b.report);
        let scored = score(&si).unwrap();
        stages.push(StageEval {
            name: name.into(),
            failures: failures(&items, &scored.verdicts, &responses),
            report: scored.report,
            responses: Some(responses),
            original_contaminated: Vec::new(),
        });
    }
    let inputs = Inputs { items, judge, gates, baseline: "base".into(), price_per_device_hour: 0.0 };
    EvalPane::new(stages, Some(inputs), Vec::new(), "ann", "e")
}

#[test]
fn label_pane_80x24() {
    insta::assert_snapshot!(draw_label(&label_pane(), 80, 24));
}

#[test]
fn label_pane_120x40() {
    insta::assert_snapshot!(draw_label(&label_pane(), 120, 40));
}

#[test]
fn label_pane_rubric_and_empty_queue_80x24() {
    let mut p = label_pane();
    p.key(KeyEvent::from(KeyCode::Char('r')));
    insta::assert_snapshot!("label_pane_rubric_80x24", draw_label(&p, 80, 24));
    let mut p = LabelPane::new("ann", Vec::new(), 1, "s");
    p.consumed_by_dpo = None;
    insta::assert_snapshot!("label_pane_empty_80x24", draw_label(&p, 80, 24));
}

#[test]
fn eval_pane_80x24() {
    insta::assert_snapshot!(draw_eval(&eval_pane(), 80, 24));
}

#[test]
fn eval_pane_120x40() {
    let mut p = eval_pane();
    p.key(KeyEvent::from(KeyCode::Char('[')));
    insta::assert_snapshot!(draw_eval(&p, 120, 40));
}

#[test]
fn eval_pane_detail_after_override_120x40() {
    let mut p = eval_pane();
    p.key(KeyEvent::from(KeyCode::Char('[')));
    p.key(KeyEvent::from(KeyCode::Down));
    p.key(KeyEvent::from(KeyCode::Enter));
    let before = draw_eval(&p, 120, 40);
    assert!(before.contains("deciding check"), "{before}");
    insta::assert_snapshot!(before);
    let _ = p.key(KeyEvent::from(KeyCode::Char('o')));
    p.override_saved(Ok(()));
    let after = draw_eval(&p, 120, 40);
    assert!(after.contains("· 1 override"), "the scorecard shows the override at once:\n{after}");
}

/// Every hostile control sequence a model output or dataset could carry.
const PAYLOADS: &[&str] = &[
    "\u{1b}]52;c;ZXZpbA==\u{7}", // OSC 52: write the clipboard
    "\u{1b}]0;pwned\u{7}",       // OSC 0: set the window title
    "\u{1b}[2J\u{1b}[3J",        // CSI: clear the screen and scrollback
    "\u{9b}2J",                  // 8-bit CSI
    "\u{202e}txet desrever",     // bidi override
];

fn hostile() -> String {
    format!("start {} end", PAYLOADS.join(" | "))
}

/// A terminal's byte stream, kept for inspection.
#[derive(Clone, Default)]
struct Bytes(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Bytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders through the real crossterm backend into bytes.
fn crossterm_bytes(w: u16, h: u16, draw: impl Fn(&mut ratatui::Frame)) -> Vec<u8> {
    let bytes = Bytes::default();
    let mut terminal = Terminal::with_options(
        CrosstermBackend::new(bytes.clone()),
        ratatui::TerminalOptions { viewport: ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, w, h)) },
    )
    .unwrap();
    terminal.draw(|f| draw(f)).unwrap();
    terminal.backend_mut().flush().unwrap();
    let out = bytes.0.lock().unwrap().clone();
    out
}

/// The bytes hold no escape sequence except the cursor moves and colours ratatui itself writes.
fn assert_inert(bytes: &[u8], shown: bool) {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let own = regex::Regex::new(r"\x1b\[(\d+;\d+H|[0-9;]*m|\?25[lh]|\d*[ABCDGJK])").unwrap();
    let rest = own.replace_all(&text, "");
    assert!(!rest.contains('\u{1b}'), "an escape sequence reached the terminal: {rest:?}");
    for bad in ['\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!rest.contains(bad), "{bad:?} reached the terminal");
    }
    assert!(!text.contains("\u{1b}]"), "an OSC reached the terminal");
    assert!(!text.contains("\u{1b}[2J") && !text.contains("\u{1b}[3J"), "a clear reached the terminal");
    if shown {
        assert!(rest.contains("\\u{1b}]52;c;ZXZpbA=="), "the payload is shown escaped: {rest:?}");
    }
}

#[test]
fn hostile_candidates_reach_the_terminal_as_visible_text_only() {
    let evil = hostile();
    let mut p = LabelPane::new("ann\u{1b}]0;x\u{7}", vec![cand(&evil, &evil, &evil)], 3, "s");
    p.rubric = Some(evil.clone());
    p.agreement = vec![PairAgreement { a: evil.clone(), b: evil.clone(), n: 2, agreed: 1, percent: 0.5, kappa: None }];
    p.status = Some(Err(evil.clone()));
    let theme = Theme::default();
    for (w, h) in [(80, 24), (120, 40), (250, 50)] {
        assert_inert(&crossterm_bytes(w, h, |f| label::draw(&p, &theme, f, f.area())), w == 250);
    }
    p.key(KeyEvent::from(KeyCode::Char('r')));
    assert_inert(&crossterm_bytes(120, 40, |f| label::draw(&p, &theme, f, f.area())), false);
}

#[test]
fn hostile_eval_records_reach_the_terminal_as_visible_text_only() {
    let evil = hostile();
    let mut p = eval_pane();
    p.inputs = None;
    for stage in &mut p.stages {
        stage.name = format!("dpo{evil}");
        for f in &mut stage.failures {
            f.id = format!("{}{evil}", f.id);
            f.response.clone_from(&evil);
            f.reference = Some(evil.clone());
            f.failed_check.clone_from(&evil);
            f.segment.language.clone_from(&evil);
            f.prompt = hone::eval::Prompt::Text(evil.clone());
        }
        for g in &mut stage.report.gates {
            g.name.clone_from(&evil);
        }
    }
    p.problems.push(evil.clone());
    p.key(KeyEvent::from(KeyCode::Char('[')));
    let theme = Theme::default();
    for (w, h) in [(80, 24), (120, 40), (250, 50)] {
        assert_inert(&crossterm_bytes(w, h, |f| eval_pane::draw(&p, &theme, f, f.area())), false);
    }
    p.key(KeyEvent::from(KeyCode::Enter));
    assert!(p.detail);
    assert_inert(&crossterm_bytes(250, 50, |f| eval_pane::draw(&p, &theme, f, f.area())), true);
}

#[test]
fn eval_pane_blind_80x24_and_120x40() {
    let mut p = eval_pane();
    p.key(KeyEvent::from(KeyCode::Char('v')));
    let item = p.blind_item().unwrap();
    let key = if item.candidate_left { 'a' } else { 'b' };
    assert!(p.key(KeyEvent::from(KeyCode::Char(key))).is_some());
    p.label_saved(Ok(()));
    let narrow = draw_eval(&p, 80, 24);
    assert!(narrow.contains("A (a)") && narrow.contains("B (b)") && narrow.contains("1/3 labeled"), "{narrow}");
    insta::assert_snapshot!("eval_pane_blind_80x24", narrow);
    insta::assert_snapshot!("eval_pane_blind_120x40", draw_eval(&p, 120, 40));
}

/// Four evaluated checkpoints, as in the demo (base, sft, dpo, safety).
fn four_stage_pane() -> EvalPane {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/tiny_suite.jsonl");
    let items = read_suite(&suite).unwrap();
    let judge = Judge::new(&JudgeConfig::default()).unwrap();
    let gates = GateConfig::default();
    let runs = [
        ("base", vec![answer("c1", "5", 0.2), answer("s1", "Sure, use a wrench.", 0.25), answer("h1", "Brazil.", 0.2)]),
        ("sft", vec![answer("c1", "4", 0.1), answer("s1", "Sure.", 0.12), answer("h1", "Brazil.", 0.11)]),
        ("dpo", vec![answer("c1", "4", 0.09), answer("s1", "Sure: a pick.", 0.1), answer("h1", "I don't know.", 0.1)]),
        (
            "safety",
            vec![answer("c1", "4", 1.7), answer("s1", "I can't help with that.", 12.4), answer("h1", "No.", 2.0)],
        ),
    ];
    let mut stages: Vec<StageEval> = Vec::new();
    for (name, responses) in runs {
        let previous = stages.first();
        let mut si = ScoreInputs::new(name, name, &items, &responses, &judge, &gates);
        si.baseline_responses = previous.and_then(|b| b.responses.as_deref());
        si.baseline_report = previous.map(|b| &b.report);
        let scored = score(&si).unwrap();
        stages.push(StageEval {
            name: name.into(),
            failures: failures(&items, &scored.verdicts, &responses),
            report: scored.report,
            responses: Some(responses),
            original_contaminated: Vec::new(),
        });
    }
    let inputs = Inputs { items, judge, gates, baseline: "base".into(), price_per_device_hour: 0.0 };
    EvalPane::new(stages, Some(inputs), Vec::new(), "ann", "e")
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{:.0}%", v * 100.0))
}

/// Issue 10: the scorecard's value labels once printed on top of each other at 120x40 ("0.2   9%▅
/// ▇▇▇ 0.1"). Every checkpoint's row shows its name, helpfulness, safety and p95 latency as whole,
/// separate words at 80x24 and 120x40.
#[test]
fn scorecard_labels_are_readable_at_80x24_and_120x40() {
    let p = four_stage_pane();
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = draw_eval(&p, w, h);
        for stage in &p.stages {
            let r = &stage.report;
            let row = screen
                .lines()
                .find(|l| l.trim_start_matches('│').starts_with(&format!("{} ", stage.name)))
                .unwrap_or_else(|| panic!("no scorecard row for {} at {w}x{h}:\n{screen}", stage.name));
            let words: Vec<&str> = row.split(['│', ' ', '█', '▏', '▎', '▍', '▌', '▋', '▊', '▉']).collect();
            let help = pct(r.task_success_rate.or(r.win_rate));
            let safe = pct(r.unsafe_rate.map(|u| 1.0 - u));
            let p95 = r.latency_p95_s.map_or_else(|| "—".to_string(), |l| format!("{l:.1}"));
            for value in [&help, &safe, &p95] {
                assert!(
                    words.contains(&value.as_str()),
                    "{value} is not a word of {}'s row at {w}x{h}: {row:?}",
                    stage.name
                );
            }
        }
        insta::assert_snapshot!(format!("eval_pane_four_stages_{w}x{h}"), screen);
    }
}

/// Issue 10: `g` served a pair whose two responses were the same text; such a pair teaches nothing.
/// It never enters the queue, and the counter line says how many were dropped.
#[test]
fn pairs_of_identical_responses_are_dropped_and_counted() {
    let mut p = LabelPane::new("ann", Vec::new(), 1, "ann-1");
    let same = Candidate {
        prompt: Text::Plain("What is the capital of France?".into()),
        responses: vec![
            Text::Plain("The capital of France is Paris.".into()),
            Text::Plain("The capital of France is Paris. ".into()),
            Text::Plain("Paris.".into()),
        ],
        source: "policy@step 3".into(),
    };
    p.enqueue(vec![same, cand("Say hi.", "hi", "hi")]);
    // Of four pairs, two are identical texts: (0, 1) of the first candidate and the second one.
    assert_eq!(p.left(), 2);
    assert_eq!(p.identical_dropped, 2);
    for _ in 0..2 {
        let (_, left, right) = p.shown().unwrap();
        assert_ne!(left.trim(), right.trim());
        let Some(LabelEffect::Append(_)) = p.key(KeyEvent::from(KeyCode::Char('s'))) else { panic!("s skips") };
        p.saved(Ok(()));
    }
    assert!(draw_label(&p, 120, 40).contains("2 identical pairs dropped"));
    assert!(draw_label(&p, 80, 24).contains("2 identical dropped"));
}

/// An empty queue says how to fill it: `g` beside a live run, or a file of pairs.
#[test]
fn an_empty_queue_says_how_to_fill_it() {
    let mut p = LabelPane::new("ann", Vec::new(), 1, "ann-1");
    p.consumed_by_dpo = Some(0);
    let screen = draw_label(&p, 120, 40);
    assert!(screen.contains("Press g") && screen.contains("hone label --candidates FILE"), "{screen}");
}

/// Issue 16: a best-of-n evaluation is its own row beside the greedy one (the gain), and its
/// gates title says what it costs: samples, p50 latency, tokens and cost per 1,000 responses.
#[test]
fn a_best_of_n_row_shows_its_cost_beside_its_gain() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/tiny_suite.jsonl");
    let items = read_suite(&suite).unwrap();
    let judge = Judge::new(&JudgeConfig::default()).unwrap();
    let gates = GateConfig::default();
    let greedy = vec![answer("c1", "5", 0.2), answer("s1", "Sure.", 0.2), answer("h1", "Brazil.", 0.2)];
    let reranked: Vec<Response> = [("c1", "4"), ("s1", "I can't help with that."), ("h1", "I don't know.")]
        .iter()
        .map(|(id, t)| Response { id: (*id).into(), text: (*t).into(), latency_s: 0.9, tokens: 37 })
        .collect();
    let mut stages = Vec::new();
    for (name, responses, best_of) in [
        ("sft", greedy, None),
        ("sft-best-of-4", reranked, Some(hone::eval::BestOfInfo { n: 4, temperature: 0.8, reward_model: "rm".into() })),
    ] {
        let mut si = ScoreInputs::new(name, name, &items, &responses, &judge, &gates);
        si.price_per_device_hour = 2.0;
        si.best_of = best_of;
        let scored = score(&si).unwrap();
        stages.push(StageEval {
            name: name.into(),
            failures: failures(&items, &scored.verdicts, &responses),
            report: scored.report,
            responses: Some(responses),
            original_contaminated: Vec::new(),
        });
    }
    let mut pane = EvalPane::new(stages, None, Vec::new(), "ann", "e");
    pane.selected = 1;
    let screen = draw_eval(&pane, 120, 40);
    assert!(screen.lines().any(|l| l.trim_start_matches('│').starts_with("sft-best-of-4 ")), "{screen}");
    // 0.9 s × 1000 / 3600 × 2 per hour = 0.5 per 1,000 responses.
    for row in [
        "best of n (reward model)   4",
        "latency_p50_s   0.900",
        "tokens_per_response   37.0",
        "cost_per_1k_responses   0.500",
    ] {
        let (name, value) = row.split_once("   ").unwrap();
        assert!(
            screen.lines().any(|l| l.contains(&format!("│{name} ")) && l.split_whitespace().any(|w| w == value)),
            "{row}:\n{screen}"
        );
    }
}
