//! SIGKILL at random moments while a worker appends events, writes checkpoints and prunes: after
//! every kill, each listed checkpoint verifies and every complete events.jsonl line parses.
//! The worker is this test binary re-invoked with an environment variable.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hone::run::{
    clean_incomplete, latest_checkpoint, list_checkpoints, prune, CheckpointWriter, Event, EventReader, EventWriter,
    RunDir, WorkerLock,
};
use serde_json::json;

const CHILD_ENV: &str = "HONE_RUN_CRASH_CHILD_DIR";
const TEST_NAME: &str = "sigkill_at_random_times_leaves_only_complete_checkpoints";

/// Deterministic pseudo-random bytes (xorshift64*).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The worker: resume after the last complete checkpoint and loop until killed.
fn child(dir: &str) -> ! {
    let run = RunDir::open(dir.as_ref()).unwrap();
    let lock = WorkerLock::acquire(&run).unwrap();
    let mut events = EventWriter::open(&lock).unwrap();
    let cleaned = clean_incomplete(&lock).unwrap();
    let mut step = latest_checkpoint(&run).unwrap().map_or(0, |c| c.step);
    events
        .append(
            &Event::new("resume", None, Some(step))
                .with("discarded_tail_bytes", events.discarded_tail_bytes())
                .with("cleaned", cleaned.len()),
        )
        .unwrap();
    loop {
        step += 1;
        for micro in 0..20 {
            events
                .append(&Event::new("step", Some("sft"), Some(step)).with("micro", micro).with("pad", "y".repeat(300)))
                .unwrap();
        }
        let mut p = CheckpointWriter::begin(&run, step).unwrap();
        p.write_file("model.safetensors", &bytes(step, 1 << 20)).unwrap();
        {
            let mut f = p.create_file("optimizer.bin").unwrap();
            for chunk in 0..4 {
                std::io::Write::write_all(&mut f, &bytes(step * 100 + chunk, 64 << 10)).unwrap();
            }
            f.close().unwrap();
        }
        p.write_file("trainer_state.json", json!({ "step": step }).to_string().as_bytes()).unwrap();
        p.finish(json!({ "step": step })).unwrap();
        events.append(&Event::new("checkpoint", Some("sft"), Some(step))).unwrap();
        prune(&lock, 2, Some(1)).unwrap();
    }
}

fn check(run: &RunDir) -> Vec<u64> {
    let listed = list_checkpoints(run).unwrap();
    for ck in &listed {
        ck.verify().unwrap_or_else(|e| panic!("listed checkpoint {} does not verify: {e}", ck.step));
        assert_eq!(std::fs::read(ck.path("model.safetensors")).unwrap(), bytes(ck.step, 1 << 20));
    }
    let batch = EventReader::read_all(&run.events_path()).unwrap();
    assert!(batch.bad_lines.is_empty(), "bad lines: {:?}", batch.bad_lines);
    listed.iter().map(|c| c.step).collect()
}

#[test]
fn sigkill_at_random_times_leaves_only_complete_checkpoints() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), "crash").unwrap();
    run.write_frozen_config("").unwrap();
    // The kill delays come from this seed: printed, and replayable with HONE_CRASH_SEED=<seed>.
    let mut seed = match std::env::var("HONE_CRASH_SEED") {
        Ok(s) => s.parse().expect("HONE_CRASH_SEED is a u64"),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    eprintln!("run_crash seed: {seed} (replay with HONE_CRASH_SEED={seed})");
    let rounds = 12;
    for round in 0..rounds {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(30 + (seed >> 33) % 400);
        let mut worker = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture"])
            .env(CHILD_ENV, run.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let still_running = worker.try_wait().unwrap().is_none();
        assert!(still_running, "round {round}: the worker died on its own");
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
        let steps = check(&run);
        // prune keeps 2 + best; a kill between finish and prune leaves one more.
        assert!(steps.len() <= 4, "round {round}: got {steps:?}");
    }
    // A final clean start: the lock is free, torn tails are cut, temporaries cleaned.
    let lock = WorkerLock::acquire(&run).unwrap();
    let writer = EventWriter::open(&lock).unwrap();
    clean_incomplete(&lock).unwrap();
    drop(writer);
    let steps = check(&run);
    let leftovers: Vec<_> = std::fs::read_dir(run.checkpoints_dir())
        .map(|d| d.map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().starts_with('.')).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let events = EventReader::read_all(&run.events_path()).unwrap().events;
    let resumes: Vec<_> = events.iter().filter(|e| e.event == "resume").collect();
    assert!(!resumes.is_empty(), "no worker got as far as its first event in {rounds} rounds");
    let torn = resumes.iter().filter(|e| e.fields["discarded_tail_bytes"] != 0).count();
    let cleaned = resumes.iter().filter(|e| e.fields["cleaned"] != 0).count();
    eprintln!(
        "after {rounds} kills: complete checkpoints {steps:?}; {} resumes, {torn} cut a torn event line, \
         {cleaned} cleaned checkpoint temporaries",
        resumes.len()
    );
}
