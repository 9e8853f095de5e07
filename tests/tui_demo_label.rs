//! Issue 6's real-terminal proof: `hone run PIPELINE` (no --headless) in a tmux pane (120x40)
//! detaches a worker training a live DPO stage on the tiny fixture model, whose preference data
//! includes the run's `labels.jsonl`, and attaches the TUI. With the worker paused over the control
//! socket, pane 3 labels three pairs from the run's `candidates.jsonl` and undoes one; the labels
//! file holds exactly those records. After resuming, the running DPO stage reports the new pairs in
//! `labels_admitted` and the pane shows them as consumed. Every wait polls with a timeout.
//!
//! Without tmux the test fails loudly; set `HONE_SKIP_TMUX=1` to skip it instead.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hone::run::control::{Client, Request};
use hone::run::{Event, RunDir};
use serde_json::{json, Value as Json};

const WAIT: Duration = Duration::from_secs(30);

mod live;
use live::{dpo_pipeline, events, tmux_available, DpoRun, HONE};

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    live::wait_for(what, WAIT, f)
}

/// A DPO stage long enough to label against; its preference data is the fixture's pairs plus the
/// run-relative `labels.jsonl` (the file the label pane writes), read live.
fn pipeline(dir: &Path) -> PathBuf {
    dpo_pipeline(dir, DpoRun { name: "labeling", extra_prefs: &["labels.jsonl"], ..DpoRun::default() })
}

/// The tmux server on a private socket and the detached worker, both ended however the test ends.
struct Session {
    socket: String,
    run: Option<PathBuf>,
}

impl Session {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().unwrap()
    }

    fn keys(&self, keys: &str) {
        let sent = self.cmd(&["send-keys", "-t", "hone", keys]);
        assert!(sent.status.success(), "tmux send-keys: {}", String::from_utf8_lossy(&sent.stderr));
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "hone"]).stdout).into_owned()
    }

    /// Polls the pane until it shows every one of `texts`, or panics with the last screen.
    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {texts:?}; the pane shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(run) = &self.run {
            if let Ok(mut client) = Client::connect(run) {
                let _ = client.send(&Request::Stop);
            }
        }
        let _ = self.cmd(&["kill-server"]);
    }
}

const CANDIDATES: [(&str, &str, &str); 4] = [
    ("Which planet is red?", "Mars is the red planet.", "Venus is the red planet."),
    ("What do bees make?", "Bees make honey.", "Bees make silk."),
    ("How many legs has a spider?", "A spider has eight legs.", "A spider has six legs."),
    ("What is ice made of?", "Ice is frozen water.", "Ice is frozen sand."),
];

fn records(path: &Path) -> Vec<Json> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a bad line {l:?}: {e}"))).collect()
}

/// The text of a record's field: a string, or the content of its last message.
fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Array(m) => m.last().and_then(|m| m["content"].as_str()).unwrap_or_default().to_string(),
        other => panic!("not a text: {other}"),
    }
}

#[test]
fn labels_from_the_attached_tui_reach_the_running_dpo_stage() {
    if !tmux_available("issue 6's real-terminal labeling proof") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = pipeline(tmp.path());
    let command = format!(
        "USER=ann '{HONE}' run '{}' --runs-dir '{}'; echo \"EXITED $?\"; sleep 60",
        p.display(),
        runs.display()
    );
    let mut s = Session { socket: format!("hone-demo-label-{}", std::process::id()), run: None };
    let started = s.cmd(&["new-session", "-d", "-x", "120", "-y", "40", "-s", "hone", &command]);
    assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));

    let run = wait_for("the run directory", || RunDir::list(&runs).ok().and_then(|mut v| v.pop()));
    s.run = Some(run.path().to_path_buf());
    let mut client = wait_for("the control socket", || Client::connect(run.path()).ok());
    assert!(client.send(&Request::Pause).unwrap().ok);
    wait_for("the paused event", || events(&run).iter().any(|e| e.event == "paused").then_some(()));

    // The queue: a candidates file in the run, written whole.
    let lines: String = CANDIDATES
        .iter()
        .map(|(q, a, b)| {
            json!({"prompt": [{"role": "user", "content": q}], "responses": [a, b], "source": "model-x"}).to_string()
                + "\n"
        })
        .collect();
    let tmp_candidates = run.path().join(".candidates.tmp");
    std::fs::write(&tmp_candidates, lines).unwrap();
    std::fs::rename(&tmp_candidates, run.candidates_path()).unwrap();

    s.wait_for(&["labeling", "dpo"]);
    s.keys("3");
    let first = s.wait_for(&["labeled 0 · queue 4"]);
    assert!(!first.contains("model-x"), "the labeler is blind to the source:\n{first}");
    let labels = run.labels_path();
    let grown =
        |n: usize| wait_for(&format!("{n} records in labels.jsonl"), || (records(&labels).len() == n).then_some(()));
    s.keys("a");
    s.wait_for(&["labeled 1 ·"]);
    grown(1);
    s.keys("b");
    s.wait_for(&["labeled 2 ·"]);
    grown(2);
    s.keys("t");
    s.wait_for(&["labeled 3 ·"]);
    grown(3);
    s.keys("u");
    s.wait_for(&["labeled 2 ·", "undid"]);
    grown(4);

    let recs = records(&labels);
    for r in &recs[..2] {
        for field in ["prompt", "chosen", "rejected", "labeler", "id", "ts", "order", "pair_hash"] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["labeler"], "ann");
        let prompt = text(&r["prompt"]);
        let (_, a, b) =
            CANDIDATES.iter().find(|(q, _, _)| *q == prompt).unwrap_or_else(|| panic!("unknown prompt in {r}"));
        let (chosen, rejected) = (text(&r["chosen"]), text(&r["rejected"]));
        assert!((chosen == *a && rejected == *b) || (chosen == *b && rejected == *a), "{r}");
    }
    assert_ne!(recs[0]["prompt"], recs[1]["prompt"], "two different items were labeled");
    assert_eq!(recs[2]["kind"], "tie");
    assert_eq!(recs[3]["kind"], "undo");
    assert_eq!(recs[3]["supersedes"], recs[2]["id"], "the undo supersedes the tie, never rewrites it");
    assert!(!events(&run).iter().any(|e| e.event == "labels_admitted"), "a paused stage reads no labels");

    // Resume: at its next step boundary the stage reads the four lines and admits the two pairs.
    assert!(client.send(&Request::Resume).unwrap().ok);
    let admitted = wait_for("labels_admitted covering the four lines", || {
        let got: Vec<Event> = events(&run).into_iter().filter(|e| e.event == "labels_admitted").collect();
        let lines: u64 = got.iter().map(|e| e.fields["lines"].as_u64().unwrap()).sum();
        (lines >= 4).then_some(got)
    });
    let sum = |k: &str| admitted.iter().map(|e| e.fields[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("lines"), 4, "{admitted:?}");
    assert_eq!(sum("count") - sum("retracted"), 2, "the two preferences train; the undone tie does not: {admitted:?}");
    assert_eq!(sum("held_back"), 0, "{admitted:?}");
    assert!(admitted.iter().all(|e| e.stage.as_deref() == Some("dpo")));
    s.wait_for(&["consumed by DPO 2"]);

    assert!(client.send(&Request::Stop).unwrap().ok);
    s.keys("q");
    s.wait_for(&["EXITED 0"]);
}
