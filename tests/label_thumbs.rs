//! Thumbs labels in pane 3 and the labels file: `+`/`-` judge the left answer of the pair shown,
//! then the right one (TRL's unpaired records plus hone's `id`, `labeler`, `ts`), `u` undoes the
//! last one, and the labels file's resolver gives KTO the live, agreeing thumbs while pairs in
//! the same file keep resolving as before.
#![allow(clippy::unwrap_used)]

use crossterm::event::{KeyCode, KeyEvent};
use hone::data::label_store::Candidate;
use hone::data::labels::{thumbs_hash, LabelLog};
use hone::data::Text;
use hone::tui::label::{LabelEffect, LabelPane};
use serde_json::{json, Value as Json};

fn press(p: &mut LabelPane, c: char) -> Json {
    match p.key(KeyEvent::from(KeyCode::Char(c))) {
        Some(LabelEffect::Append(r)) => r,
        other => panic!("expected an append, got {other:?}"),
    }
}

fn candidate(prompt: &str, responses: &[&str]) -> Candidate {
    Candidate {
        prompt: Text::Plain(prompt.into()),
        responses: responses.iter().map(|r| Text::Plain((*r).into())).collect(),
        source: "policy".into(),
    }
}

#[test]
fn plus_and_minus_judge_the_left_answer_then_the_right_and_u_undoes() {
    let mut p = LabelPane::new("ann", vec![candidate("q1", &["x", "y"]), candidate("q2", &["u", "v"])], 7, "s");
    let (prompt, left, right) = p.shown().unwrap();
    let up = press(&mut p, '+');
    assert_eq!(up["prompt"], json!(prompt));
    assert_eq!(up["completion"], json!(left));
    assert_eq!(up["label"], json!(true));
    assert_eq!((up["labeler"].as_str(), up["kind"].as_str()), (Some("ann"), Some("thumbs")));
    assert_eq!(up["item"], json!(thumbs_hash(&Text::Plain(prompt.clone()), &Text::Plain(left.clone()))));
    p.saved(Ok(()));
    assert_eq!((p.labeled, p.thumbs_side), (1, 1));
    assert_eq!(p.shown().unwrap().0, prompt, "the pair stays for its right answer");
    let down = press(&mut p, '-');
    assert_eq!((down["completion"].clone(), down["label"].clone()), (json!(right), json!(false)));
    p.saved(Ok(()));
    assert_eq!((p.labeled, p.thumbs_side), (2, 0));
    assert_eq!(p.shown().unwrap().0, "q2", "both answers judged: the next pair");
    // Undo the right answer's thumbs: back to q1, right side next.
    let undo = press(&mut p, 'u');
    assert_eq!((undo["kind"].as_str(), undo["supersedes"].clone()), (Some("undo"), down["id"].clone()));
    p.saved(Ok(()));
    assert_eq!((p.labeled, p.thumbs_side, p.shown().unwrap().0), (1, 1, prompt.clone()));
    // Undo the left one too: still q1, left side next.
    let undo = press(&mut p, 'u');
    assert_eq!(undo["supersedes"], up["id"]);
    p.saved(Ok(()));
    assert_eq!((p.labeled, p.thumbs_side, p.shown().unwrap().0), (0, 0, prompt));
}

#[test]
fn the_resolver_keeps_live_agreeing_thumbs_beside_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let lines = [
        json!({"id": "1", "prompt": "p", "chosen": "a", "rejected": "b"}),
        json!({"id": "2", "prompt": "p", "completion": "a", "label": true, "labeler": "ann", "ts": 1}),
        json!({"id": "3", "prompt": "p", "completion": "b", "label": false, "labeler": "ann", "ts": 2}),
        json!({"id": "4", "kind": "undo", "supersedes": "3"}),
        json!({"id": "5", "prompt": "q", "completion": "c", "label": true, "labeler": "ann"}),
        json!({"id": "6", "prompt": "q", "completion": "c", "label": false, "labeler": "bob"}),
        json!({"id": "7", "prompt": "r", "completion": "d", "label": "yes"}),
    ];
    std::fs::write(&path, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let mut log = LabelLog::new(&path);
    let update = log.read_new(None).unwrap();
    assert_eq!(update.lines, 7);
    assert_eq!(update.problems.len(), 1, "{:?}", update.problems);
    assert!(update.problems[0].message.contains(":7:") && update.problems[0].message.contains("label"));
    let (thumbs, held) = log.resolve_thumbs();
    assert_eq!(thumbs.len(), 1, "{thumbs:?}");
    assert_eq!((thumbs[0].1.completion.clone(), thumbs[0].1.label), (Text::Plain("a".into()), true));
    assert_eq!(held, [thumbs_hash(&Text::Plain("q".into()), &Text::Plain("c".into()))]);
    let (pairs, _) = log.resolve();
    assert_eq!(pairs.len(), 1, "the pair resolves as before");
}
