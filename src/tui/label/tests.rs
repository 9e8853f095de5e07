#![allow(clippy::unwrap_used)]

use crossterm::event::{KeyCode, KeyEvent};
use serde_json::Value as Json;

use super::*;

fn cand(prompt: &str, responses: &[&str]) -> Candidate {
    Candidate {
        prompt: Text::Plain(prompt.into()),
        responses: responses.iter().map(|r| Text::Plain((*r).into())).collect(),
        source: "model-x".into(),
    }
}

fn press(p: &mut LabelPane, c: char) -> Option<LabelEffect> {
    p.key(KeyEvent::from(KeyCode::Char(c)))
}

fn record(effect: Option<LabelEffect>) -> Json {
    match effect {
        Some(LabelEffect::Append(r)) => r,
        other => panic!("expected an append, got {other:?}"),
    }
}

#[test]
fn a_label_is_counted_only_once_saved_and_names_the_side_shown() {
    let mut p = LabelPane::new("ann", vec![cand("q1", &["x", "y"]), cand("q2", &["u", "v", "w"])], 7, "s");
    assert_eq!(p.left(), 4, "one pair plus three pairs of three responses");
    let (_, left, right) = p.shown().unwrap();
    let rec = record(press(&mut p, 'a'));
    assert_eq!(rec["chosen"], Json::String(left.clone()));
    assert_eq!(rec["rejected"], Json::String(right));
    assert_eq!(rec["labeler"], "ann");
    assert_eq!(rec["source"], "model-x");
    assert_eq!(rec["item"], rec["pair_hash"]);
    assert_eq!(p.labeled, 0, "not counted before the write is reported");
    assert!(press(&mut p, 'b').is_none(), "no second label while one is being written");
    p.saved(Err("disk full".into()));
    assert_eq!(p.labeled, 0);
    assert_eq!(p.shown().unwrap().1, left, "a failed write keeps the pair on screen");
    let _ = record(press(&mut p, 'b'));
    p.saved(Ok(()));
    assert_eq!((p.labeled, p.left()), (1, 3));
}

#[test]
fn order_is_randomised_per_item_from_the_seed_and_recorded() {
    let cands: Vec<Candidate> = (0..32).map(|i| cand(&format!("q{i}"), &["first", "second"])).collect();
    let orders = |seed| {
        let mut p = LabelPane::new("ann", cands.clone(), seed, "s");
        let mut out = Vec::new();
        while p.current.is_some() {
            let rec = record(press(&mut p, 't'));
            out.push(rec["order"].clone());
            p.saved(Ok(()));
        }
        out
    };
    let a = orders(1);
    assert_eq!(a, orders(1), "the same seed gives the same orders");
    assert_ne!(a, orders(2), "another seed gives other orders");
    let swapped = a.iter().filter(|o| **o == serde_json::json!([1, 0])).count();
    assert!(swapped > 0 && swapped < 32, "both orders occur: {swapped} of 32 swapped");
}

#[test]
fn undo_supersedes_the_last_label_and_serves_its_pair_again() {
    let mut p = LabelPane::new("ann", vec![cand("q1", &["x", "y"]), cand("q2", &["u", "v"])], 3, "s");
    let first = record(press(&mut p, 'a'));
    p.saved(Ok(()));
    assert_eq!(p.shown().unwrap().0, "q2");
    let undo = record(press(&mut p, 'u'));
    assert_eq!(undo["kind"], "undo");
    assert_eq!(undo["supersedes"], first["id"]);
    assert_ne!(undo["id"], first["id"]);
    p.saved(Ok(()));
    assert_eq!(p.labeled, 0);
    assert_eq!(p.shown().unwrap().0, "q1", "the undone pair is back on screen");
    assert_eq!(p.left(), 2);
    assert!(press(&mut p, 'u').is_none(), "nothing left to undo");
}

#[test]
fn skips_do_not_count_ties_do_and_edits_become_chosen() {
    let mut p =
        LabelPane::new("ann", vec![cand("q1", &["x", "y"]), cand("q2", &["u", "v"]), cand("q3", &["m", "n"])], 3, "s");
    assert_eq!(record(press(&mut p, 's'))["kind"], "skip");
    p.saved(Ok(()));
    assert_eq!(p.labeled, 0);
    assert_eq!(record(press(&mut p, 't'))["kind"], "tie");
    p.saved(Ok(()));
    assert_eq!(p.labeled, 1);
    let (_, left, _) = p.shown().unwrap();
    assert_eq!(press(&mut p, 'e'), Some(LabelEffect::Edit(left.clone())));
    assert!(p.edited(Some(left.clone())).is_none(), "an unchanged answer cancels");
    let rec = record(p.edited(Some("a better answer\n".into())));
    assert_eq!(rec["chosen"], "a better answer");
    assert_eq!(rec["rejected"], Json::String(left));
    assert_eq!(rec["edited"], true);
    p.saved(Ok(()));
    assert_eq!((p.labeled, p.left()), (2, 0));
}

#[test]
fn a_share_of_pairs_is_served_again() {
    let cands: Vec<Candidate> = (0..40).map(|i| cand(&format!("q{i}"), &["a", "b"])).collect();
    let mut p = LabelPane::new("ann", cands, 9, "s");
    p.repeat_share = 0.5;
    let mut served = 0;
    while p.current.is_some() {
        let _ = record(press(&mut p, 'a'));
        p.saved(Ok(()));
        served += 1;
    }
    let again = served - 40;
    assert!((10..=30).contains(&again), "about half served again: {again}");
}

#[test]
fn the_rubric_opens_and_closes_and_blocks_labels_while_open() {
    let mut p = LabelPane::new("ann", vec![cand("q1", &["x", "y"])], 3, "s");
    assert!(press(&mut p, 'r').is_none());
    assert!(p.show_rubric);
    assert!(press(&mut p, 'a').is_none(), "keys do not label under the rubric");
    p.key(KeyEvent::from(KeyCode::Esc));
    assert!(!p.show_rubric);
    assert!(p.key(KeyEvent::from(KeyCode::Left)).is_some());
}

#[test]
fn g_asks_the_worker_once_until_it_answers_and_shows_the_answer() {
    let mut p = LabelPane::new("ann", vec![cand("q1", &["x", "y"])], 7, "s");
    assert_eq!(press(&mut p, 'g'), Some(LabelEffect::Generate(GENERATE_PROMPTS)));
    assert!(p.generating);
    assert_eq!(press(&mut p, 'g'), None, "no second request while one is outstanding");
    assert!(matches!(p.status, Some(Err(ref m)) if m.contains("waiting")));
    p.generated(Err("the worker isn't live".into()));
    assert!(!p.generating);
    assert_eq!(p.status, Some(Err("the worker isn't live".into())));
    // A label write in flight does not block asking for more candidates.
    let _ = record(press(&mut p, 'a'));
    assert_eq!(press(&mut p, 'g'), Some(LabelEffect::Generate(GENERATE_PROMPTS)));
    p.generated(Ok("asked".into()));
    assert_eq!(p.status, Some(Ok("asked".into())));
    assert_eq!(p.left(), 1, "generating leaves the queue to the candidates file");
}
