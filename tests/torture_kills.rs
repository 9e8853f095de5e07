//! Random SIGKILLs of a training worker: a short SFT + DPO pipeline on the tiny fixture model is
//! killed at random moments and resumed until it finishes, again and again. Every trial must end
//! with the loss of every step bit-identical to an uninterrupted run (after the readers' rule: a
//! step logged again after a resume replaces the earlier line), every step logged, no listed
//! checkpoint that fails verification at any moment, and the run lock free after every kill.
//! Short mode: 4 trials; `HONE_TORTURE=long`: 200. `HONE_TORTURE_SEED` replays a schedule.
//! Kills at chosen points inside checkpoint writes, label reads, reports and durable directory
//! writes are `tests/torture_faults.rs`'s.
#![allow(clippy::unwrap_used, clippy::float_cmp)] // bit-exact equality is the point

mod live;
mod torture;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use live::{events, HONE};
use torture::pipeline::{check_after_kill, losses, only_run, sft_dpo_pipeline, SftDpo};

/// SFT then DPO, 10 steps each, a checkpoint every 3 steps.
fn pipeline(dir: &Path) -> PathBuf {
    sft_dpo_pipeline(dir, SftDpo { name: "kills", seed: 11, steps: 10, live_labels: false, eval: false })
}

#[test]
fn random_sigkills_then_resume_end_bit_identical_to_an_uninterrupted_run() {
    let trials = torture::scale(4, 200);
    let seed = torture::Rng::seed_from_env();
    let mut rng = torture::Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path());
    let start = Instant::now();

    // The reference: one uninterrupted run, timed to place the kills.
    let runs = tmp.path().join("reference");
    let t0 = Instant::now();
    let out =
        Command::new(HONE).args(["run", p.to_str().unwrap(), "--headless", "--runs-dir"]).arg(&runs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let span_ms = (t0.elapsed().as_millis() as u64).max(200);
    let reference = losses(&only_run(&runs).unwrap());
    assert_eq!(reference.keys().copied().collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());

    let (mut kills, mut resumes) = (0usize, 0usize);
    for trial in 0..trials {
        let runs = tmp.path().join(format!("trial-{trial}"));
        let mut attempt = 0;
        loop {
            let mut cmd = Command::new(HONE);
            match only_run(&runs) {
                None => cmd.args(["run", p.to_str().unwrap(), "--headless", "--runs-dir"]).arg(&runs),
                Some(run) => {
                    resumes += 1;
                    cmd.args(["resume", run.path().to_str().unwrap(), "--headless"])
                }
            };
            let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
            // Kill somewhere in the run (after a resume there is less left, so some finish).
            let delay = Duration::from_millis(rng.range(span_ms / 20, span_ms));
            let deadline = Instant::now() + delay;
            let mut finished = None;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    finished = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let what = format!("trial {trial} attempt {attempt} (seed {seed})");
            if let Some(status) = finished {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                assert!(status.success(), "{what}: {err}");
                break;
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            if let Some(run) = only_run(&runs) {
                check_after_kill(&run, &what);
            }
            attempt += 1;
            assert!(attempt < 200, "{what}: the run never finished");
        }
        let run = only_run(&runs).unwrap();
        check_after_kill(&run, &format!("trial {trial} end"));
        let got = losses(&run);
        assert_eq!(got.len(), reference.len(), "trial {trial} (seed {seed}): every step is logged");
        for (step, bits) in &reference {
            assert_eq!(
                got.get(step).map(|b| f64::from_bits(*b)),
                Some(f64::from_bits(*bits)),
                "trial {trial} (seed {seed}): loss at step {step}"
            );
        }
        let finished = events(&run).into_iter().rev().find(|e| e.event == "run_finished").unwrap();
        assert_eq!(finished.fields["status"], "completed", "trial {trial}");
        if torture::long() && (trial + 1) % 10 == 0 {
            eprintln!(
                "torture kills: {} trials, {kills} sigkills, {resumes} resumes so far, all bit-identical",
                trial + 1
            );
        }
    }
    torture::figures(
        "kills",
        &[
            ("trials", trials.to_string()),
            ("sigkills", kills.to_string()),
            ("resumes", resumes.to_string()),
            ("bit_identical_trials", trials.to_string()),
            ("seed", seed.to_string()),
            ("seconds", format!("{:.1}", start.elapsed().as_secs_f64())),
        ],
    );
}
