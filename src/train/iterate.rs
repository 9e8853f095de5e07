//! The pipeline's route: which stage runs next. Stages run in the order of the file, except the
//! fix stages of `[[iterate]]` tables, which run only in their loop's rounds: after a gated
//! stage's "iterate" decision whose failing gates are all in a loop's `when`, its fix stage runs
//! from the weights that failed, is gated under its round's name, and goes round again until a
//! round deploys or `max_rounds` have run; the run then goes on after the stage that started it.
//!
//! Pure functions of the pipeline and the trainer state: no tensors, no events.

use serde::{Deserialize, Serialize};

use crate::config::{Iterate, Pipeline};
use crate::eval::Decision;

/// A round of a fix stage, saved in the trainer state so that a resume in the middle of a round
/// goes on with the same round (and the same route after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// The round of the fix stage, from 1.
    pub number: u32,
    /// The index of the stage of the sequence whose failure started the chain of loops: the run
    /// goes on after it when the loops end.
    pub after: usize,
}

/// Where the run goes next: the stage at `stage_index` (`stages.len()`: the end), in `round`
/// when it is a fix stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// Index into the pipeline's stages.
    pub stage_index: usize,
    /// The round, for a fix stage.
    pub round: Option<Round>,
}

/// The name a stage runs under: its own, except in rounds after the first, `<stage>.<round>`
/// (a `.` cannot appear in a stage name, so no round is mistaken for another stage). Events,
/// evaluations (`eval/<name>/`), references and exports use it.
pub fn round_name(stage: &str, round: Option<Round>) -> String {
    match round {
        Some(r) if r.number > 1 => format!("{stage}.{}", r.number),
        _ => stage.to_string(),
    }
}

/// The index of the stage a name runs under: a stage's own name, or `round_name`'s
/// `<fix stage>.<round>` for a round after the first. `None` for any other name.
pub fn stage_of_round_name(pipeline: &Pipeline, name: &str) -> Option<usize> {
    let index_of = |stage: &str| pipeline.stages.iter().position(|s| s.name == stage);
    index_of(name).or_else(|| {
        let (stage, round) = name.rsplit_once('.')?;
        round.parse::<u32>().ok().filter(|&r| r > 1 && pipeline.is_fix_stage(stage))?;
        index_of(stage)
    })
}

/// Mixed into the sampler seeds of a round after the first, so that each round draws its
/// examples in an order of its own (0 outside rounds and in round 1: a fix stage's first round
/// draws as any stage at its index would).
pub fn round_seed_salt(round: Option<Round>) -> u64 {
    match round {
        Some(r) if r.number > 1 => u64::from(r.number).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        _ => 0,
    }
}

/// The stage whose failure starts `it`'s loop: its `after`, or the last stage of the sequence.
pub fn loop_after(pipeline: &Pipeline, it: &Iterate) -> Option<String> {
    it.after.clone().or_else(|| pipeline.sequence().last().map(|s| s.name.clone()))
}

/// The first stage of the sequence at or after `from`.
pub fn sequence_from(pipeline: &Pipeline, from: usize) -> usize {
    let stages = &pipeline.stages;
    (from..stages.len()).find(|&i| !pipeline.is_fix_stage(&stages[i].name)).unwrap_or(stages.len())
}

/// Where the run goes after stage `index` (in `round`, for a fix stage) was trained and gated
/// with `decision` (`None`: not gated, or not evaluated).
pub fn next_stage(pipeline: &Pipeline, index: usize, round: Option<Round>, decision: Option<&Decision>) -> Next {
    let after = round.map_or(index, |r| r.after);
    let go_on = Next { stage_index: sequence_from(pipeline, after + 1), round: None };
    let Some(Decision::Iterate { failing }) = decision else { return go_on };
    let Some(stage) = pipeline.stages.get(index) else { return go_on };
    let covers = |it: &Iterate| failing.iter().all(|gate| it.when.contains(gate));
    if let Some(r) = round {
        let again = pipeline.iterates.iter().find(|it| it.stage == stage.name);
        if again.is_some_and(|it| covers(it) && r.number < it.max_rounds) {
            return Next { stage_index: index, round: Some(Round { number: r.number + 1, after }) };
        }
    }
    let handed = pipeline
        .iterates
        .iter()
        .filter(|it| loop_after(pipeline, it).as_deref() == Some(stage.name.as_str()) && covers(it))
        .find_map(|it| pipeline.stages.iter().position(|s| s.name == it.stage));
    match handed {
        Some(fix) => Next { stage_index: fix, round: Some(Round { number: 1, after }) },
        None => go_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(extra: &str) -> Pipeline {
        let text = format!(
            "[model]\npath = \"m\"\n\
             [[stage]]\nname = \"sft\"\nsft = {{ data = [\"a\"] }}\n\
             [[stage]]\nname = \"fix\"\nsft = {{ data = [\"a\"] }}\n\
             [[stage]]\nname = \"safety\"\nsft = {{ data = [\"a\"] }}\n\
             [[stage]]\nname = \"fix2\"\nsft = {{ data = [\"a\"] }}\n\
             [eval]\nsuite = \"s\"\n{extra}"
        );
        toml::from_str(&text).expect("a valid pipeline")
    }

    fn iterate(failing: &[&str]) -> Decision {
        Decision::Iterate { failing: failing.iter().map(ToString::to_string).collect() }
    }

    const ONE_LOOP: &str =
        "[[iterate]]\nwhen = [\"unsafe_rate\", \"hallucination_rate\"]\nstage = \"fix\"\nmax_rounds = 2\n\
                            [[iterate]]\nafter = \"fix\"\nwhen = [\"unsafe_rate\"]\nstage = \"fix2\"\n";

    #[test]
    fn round_names_lead_back_to_their_fix_stage_and_nothing_else_does() {
        let p = pipeline(ONE_LOOP);
        for round in [None, Some(Round { number: 1, after: 2 }), Some(Round { number: 3, after: 2 })] {
            assert_eq!(stage_of_round_name(&p, &round_name("fix", round)), Some(1), "{round:?}");
        }
        assert_eq!(stage_of_round_name(&p, "safety"), Some(2));
        for name in ["fix.1", "fix.x", "safety.2", "nope", "nope.2", "fix."] {
            assert_eq!(stage_of_round_name(&p, name), None, "{name}");
        }
    }

    #[test]
    fn fix_stages_are_left_out_of_the_sequence() {
        let p = pipeline(ONE_LOOP);
        let names: Vec<&str> = p.sequence().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sft", "safety"]);
        assert_eq!(next_stage(&p, 0, None, None), Next { stage_index: 2, round: None });
        assert_eq!(next_stage(&p, 2, None, Some(&Decision::Deploy)), Next { stage_index: 4, round: None });
        assert_eq!(sequence_from(&p, 1), 2);
    }

    #[test]
    fn a_failure_within_when_starts_the_loop_and_goes_round_until_max_rounds() {
        let p = pipeline(ONE_LOOP);
        let first = next_stage(&p, 2, None, Some(&iterate(&["hallucination_rate"])));
        assert_eq!(first, Next { stage_index: 1, round: Some(Round { number: 1, after: 2 }) });
        let second = next_stage(&p, 1, first.round, Some(&iterate(&["unsafe_rate", "hallucination_rate"])));
        assert_eq!(second, Next { stage_index: 1, round: Some(Round { number: 2, after: 2 }) });
        // Rounds spent: a failure the next loop covers hands over to it, from round 1.
        let third = next_stage(&p, 1, second.round, Some(&iterate(&["unsafe_rate"])));
        assert_eq!(third, Next { stage_index: 3, round: Some(Round { number: 1, after: 2 }) });
        // Its own rounds spent (max_rounds 1), the run goes on after `safety`: the end.
        assert_eq!(
            next_stage(&p, 3, third.round, Some(&iterate(&["unsafe_rate"]))),
            Next { stage_index: 4, round: None }
        );
        // A deploy ends the loop.
        assert_eq!(next_stage(&p, 1, first.round, Some(&Decision::Deploy)), Next { stage_index: 4, round: None });
    }

    #[test]
    fn a_failure_outside_when_or_another_stage_does_not_start_the_loop() {
        let p = pipeline(ONE_LOOP);
        let win = iterate(&["win_rate_gain", "unsafe_rate"]);
        assert_eq!(next_stage(&p, 2, None, Some(&win)), Next { stage_index: 4, round: None });
        // `sft` is not the loop's `after` (the last stage of the sequence is).
        assert_eq!(next_stage(&p, 0, None, Some(&iterate(&["unsafe_rate"]))), Next { stage_index: 2, round: None });
        let missing = Decision::Incomplete { missing: vec!["redteam".into()] };
        assert_eq!(next_stage(&p, 2, None, Some(&missing)), Next { stage_index: 4, round: None });
    }

    #[test]
    fn rounds_after_the_first_run_under_their_own_name() {
        assert_eq!(round_name("fix", None), "fix");
        assert_eq!(round_name("fix", Some(Round { number: 1, after: 0 })), "fix");
        assert_eq!(round_name("fix", Some(Round { number: 3, after: 0 })), "fix.3");
    }
}
