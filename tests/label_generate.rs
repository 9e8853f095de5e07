//! Candidates from the current policy: the label pane's request (`attach::request_candidates`, what
//! `g` sends over the control socket) to a real worker training the tiny fixture model, and the
//! lines the worker appends to `candidates.jsonl` read back with the label pane's candidates
//! reader. Without a live worker the request says so.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use hone::data::Text;
use hone::run::control::{Client, Request};
use hone::run::{EventReader, RunDir};
use hone::tui::label::attach::{read_candidates_from, request_candidates};

mod live;
use live::{dpo_pipeline, DpoRun, HONE};

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    live::wait_for(what, Duration::from_secs(180), f)
}

#[test]
fn candidates_generated_on_request_parse_with_the_label_panes_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let p = dpo_pipeline(tmp.path(), DpoRun { name: "gen", ..DpoRun::default() });
    let mut child = Command::new(HONE)
        .args(["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = wait_for("the run directory", || RunDir::list(&runs).ok().and_then(|mut v| v.pop()));
    let mut client = wait_for("the control socket", || Client::connect(run.path()).ok());

    let said = request_candidates(run.path(), 2).unwrap();
    assert!(said.contains('2'), "{said}");
    let mut got = Vec::new();
    let (mut offset, mut line) = (0, 0);
    wait_for("two candidates in candidates.jsonl", || {
        let (fresh, problems) = read_candidates_from(&run.candidates_path(), &mut offset, &mut line);
        assert!(problems.is_empty(), "{problems:?}");
        got.extend(fresh);
        (got.len() >= 2).then_some(())
    });
    assert_eq!(got.len(), 2);
    for c in &got {
        assert_eq!(c.responses.len(), 2, "two sampled responses per prompt");
        assert!(matches!(c.prompt, Text::Messages(ref m) if !m.is_empty()), "conversational prompts stay messages");
    }
    let refused = request_candidates(run.path(), 0).unwrap_err();
    assert!(refused.contains("count"), "{refused}");

    assert!(client.send(&Request::Stop).unwrap().ok);
    let status = child.wait().unwrap();
    assert!(status.success());
    let events = EventReader::read_all(&run.events_path()).unwrap().events;
    assert!(events.iter().any(|e| e.event == "candidates_generated" && e.fields["count"] == 2));

    let gone = request_candidates(run.path(), 2).unwrap_err();
    assert!(gone.contains("isn't live"), "{gone}");
}
