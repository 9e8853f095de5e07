//! The labeling pane for real: `hone label` in a tmux pane (120x40) labels pairs, undoes one and
//! writes a better answer through `$EDITOR`, and the labels file holds exactly those records; and
//! the attached app's panes 3 and 4 route keys and save labels through the `label-write` thread.
//! The tmux test polls `capture-pane` (never a fixed sleep); without tmux it fails unless HONE_SKIP_TMUX=1.
#![allow(clippy::unwrap_used)]

mod live;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use hone::data::label_store::Candidate;
use hone::data::labels::LabelLog;
use hone::data::Text;
use hone::tui::label::attach;
use hone::tui::{update, Action, App, Pane};
use serde_json::Value as Json;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().unwrap()
    }

    fn keys(&self, keys: &str) {
        self.cmd(&["send-keys", "-t", "label", keys]);
    }

    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "label"]).stdout).into_owned();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {texts:?}; the pane shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn records(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn hone_label_in_a_real_terminal_labels_undoes_and_edits() {
    if !live::tmux_available("the real-terminal labeling test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let candidates = dir.path().join("candidates.jsonl");
    let mut f = std::fs::File::create(&candidates).unwrap();
    for (p, a, b) in
        [("First question?", "one", "uno"), ("Second question?", "two", "dos"), ("Third?", "three", "tres")]
    {
        writeln!(f, "{}", serde_json::json!({"prompt": p, "responses": [a, b], "source": "model-x"})).unwrap();
    }
    drop(f);
    let editor = dir.path().join("editor.sh");
    live::write_executable(&editor, "#!/bin/sh\nprintf 'a better answer' > \"$1\"\n");
    let labels = dir.path().join("labels.jsonl");
    let command = format!(
        "EDITOR='{}' '{}' label --candidates '{}' --labels '{}' --labeler ann --seed 5 --repeat-share 0; echo \"EXITED $?\"; sleep 30",
        editor.display(),
        env!("CARGO_BIN_EXE_hone"),
        candidates.display(),
        labels.display()
    );
    let tmux = Tmux { socket: format!("hone-label-test-{}", std::process::id()) };
    let started = tmux.cmd(&["new-session", "-d", "-x", "120", "-y", "40", "-s", "label", &command]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));

    let first = tmux.wait_for(&["First question?", "labeled 0 · queue 3"]);
    assert!(!first.contains("model-x"), "the labeler is blind to the source:\n{first}");
    tmux.keys("a");
    tmux.wait_for(&["Second question?", "labeled 1 · queue 2"]);
    tmux.keys("b");
    tmux.wait_for(&["Third?", "labeled 2 · queue 1"]);
    tmux.keys("u");
    tmux.wait_for(&["Second question?", "labeled 1 · queue 2", "undid"]);
    tmux.keys("e");
    tmux.wait_for(&["Third?", "labeled 2 · queue 1"]);
    tmux.keys("t");
    tmux.wait_for(&["queue is empty", "labeled 3 · queue 0"]);
    tmux.keys("q");
    tmux.wait_for(&["EXITED 0"]);

    let recs = records(&labels);
    assert_eq!(recs.len(), 5, "{recs:#?}");
    for r in &recs[..2] {
        for field in ["prompt", "chosen", "rejected", "labeler", "id", "ts", "order", "pair_hash", "source"] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["labeler"], "ann");
    }
    assert_eq!(recs[2]["kind"], "undo");
    assert_eq!(recs[2]["supersedes"], recs[1]["id"], "the undo supersedes the second label");
    assert_eq!(recs[3]["chosen"], "a better answer");
    assert_eq!(recs[3]["prompt"], "Second question?");
    assert_eq!(recs[4]["kind"], "tie");
    let mut log = LabelLog::new(&labels);
    log.read_new(None).unwrap();
    let (admitted, held) = log.resolve();
    assert_eq!(admitted.len(), 2, "the first label and the edited answer train; the undone one and the tie do not");
    assert!(held.is_empty());
}

#[test]
fn the_attached_label_pane_saves_through_the_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut app = App::default();
    attach::init(&mut app);
    // init serves a random 10% of items again; this test is about the writer thread, so none.
    app.label.as_mut().unwrap().repeat_share = 0.0;
    let cand = Candidate {
        prompt: Text::Plain("q".into()),
        responses: vec![Text::Plain("x".into()), Text::Plain("y".into())],
        source: "policy".into(),
    };
    update(&mut app, Action::Panes(attach::PaneMsg::Candidates(vec![cand])));
    assert_eq!(app.label.as_ref().unwrap().left(), 1);

    app.pane = Pane::Dashboard;
    assert!(
        !attach::route_key(&mut app, KeyEvent::from(KeyCode::Char('a')), dir.path(), &tx),
        "other panes keep their keys"
    );
    app.pane = Pane::Label;
    assert!(
        !attach::route_key(&mut app, KeyEvent::from(KeyCode::Char('2')), dir.path(), &tx),
        "pane numbers stay global"
    );
    assert!(attach::route_key(&mut app, KeyEvent::from(KeyCode::Char('a')), dir.path(), &tx));
    let action = rx.blocking_recv().unwrap();
    assert_eq!(action, Action::Panes(attach::PaneMsg::LabelSaved(Ok(()))));
    update(&mut app, action);
    let label = app.label.as_ref().unwrap();
    assert_eq!((label.labeled, label.left()), (1, 0));
    let recs = records(&dir.path().join("labels.jsonl"));
    assert_eq!(recs.len(), 1);
    assert!(recs[0]["ts"].as_u64().unwrap() > 1_600_000_000_000, "stamped with the time of writing");
}
