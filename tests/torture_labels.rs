//! Labelers under fire: N writer processes append M labels each (every tenth retracting the one
//! before it) to one labels.jsonl while a reader resolves it as a running DPO stage does; then a
//! labeler is SIGKILLed at random moments, again and again. The file ends with exactly the lines
//! written, none torn; the pool the live reader resolved equals a sequential replay of the file
//! and the expected labels; no label reported saved is missing or duplicated.
//! Short mode: 4 x 150 appends, 12 kills; `HONE_TORTURE=long`: 8 x 10,000 appends, 1,000 kills.
#![allow(clippy::unwrap_used)]

mod torture;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone::data::label_store::{undo_record, Candidate, LabelDraft, LabelWriter, Verdict};
use hone::data::labels::LabelLog;
use hone::data::Text;

const FILE: &str = "HONE_TORTURE_LABELS_FILE";
const PREFIX: &str = "HONE_TORTURE_LABELS_PREFIX";
const COUNT: &str = "HONE_TORTURE_LABELS_COUNT";

/// The label `i` of a writer: a distinct item, with text that is long and multi-byte so that a
/// torn write would show.
fn draft(id: &str, i: usize) -> LabelDraft {
    let candidate = Candidate {
        prompt: Text::Plain(format!("question {id} — é😀 {}", "x".repeat(i % 97))),
        responses: vec![Text::Plain(format!("answer a {id}")), Text::Plain(format!("answer b {id}"))],
        source: "torture".into(),
    };
    LabelDraft {
        id: id.into(),
        candidate,
        order: [i % 2, 1 - i % 2],
        labeler: "torture".into(),
        verdict: Verdict::Prefer(0),
    }
}

/// Whether label `i` is an undo of label `i - 1` (every tenth).
fn is_undo(i: usize) -> bool {
    i % 10 == 9
}

/// The child: appends through `LabelWriter` (flock + fsync) and prints each id once `append`
/// returned, until killed or `COUNT` labels are written.
#[test]
#[ignore = "the child process of the labeler torture tests; run by them"]
fn labeler_child() {
    let Ok(path) = std::env::var(FILE) else { return };
    let prefix = std::env::var(PREFIX).unwrap();
    let count: usize = std::env::var(COUNT).ok().and_then(|c| c.parse().ok()).unwrap_or(usize::MAX);
    let writer = LabelWriter::new(Path::new(&path));
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let record = if is_undo(i) {
            undo_record(&id, &format!("{prefix}-{}", i - 1), "torture", 1)
        } else {
            draft(&id, i).to_record(1_700_000_000_000)
        };
        writer.append(&record).unwrap();
        writeln!(out, "SAVED {id}").unwrap();
        out.flush().unwrap();
    }
}

fn child(path: &Path, prefix: &str, count: Option<usize>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "labeler_child", "--nocapture", "--test-threads", "1"])
        .env(FILE, path)
        .env(PREFIX, prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(n) = count {
        cmd.env(COUNT, n.to_string());
    }
    cmd.spawn().unwrap()
}

fn saved_ids(stdout: impl std::io::Read) -> Vec<String> {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test labeler_child ... " without a newline before the child's output.
        .filter_map(|l| l.find("SAVED ").map(|at| l[at + 6..].to_string()))
        .collect()
}

/// The ids a set of saved ids leaves in the training pool: every preference label not retracted.
fn expected_pool(saved: &[String]) -> BTreeSet<String> {
    let mut pool = BTreeSet::new();
    let mut undone = BTreeSet::new();
    for id in saved {
        let (prefix, i) = id.rsplit_once('-').unwrap();
        let i: usize = i.parse().unwrap();
        if is_undo(i) {
            undone.insert(format!("{prefix}-{}", i - 1));
        } else {
            pool.insert(id.clone());
        }
    }
    &pool - &undone
}

/// The ids of the pool a log resolves to, found through each pair's prompt.
fn pool_ids(log: &LabelLog) -> Vec<String> {
    let (admitted, held) = log.resolve();
    assert!(held.is_empty(), "no item has disagreeing labels: {held:?}");
    admitted
        .iter()
        .map(|(_, rec)| match &rec.prompt {
            Text::Plain(p) => p.strip_prefix("question ").unwrap().split(' ').next().unwrap().to_string(),
            Text::Messages(_) => panic!("plain prompts only"),
        })
        .collect()
}

#[test]
fn concurrent_labelers_and_a_live_reader_agree_with_a_sequential_replay() {
    let (writers, appends) = (torture::scale(4, 8), torture::scale(150, 10_000));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let start = Instant::now();

    // The live reader: a resolver reading new lines as they land, like the trainer's.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done) = (path.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut log = LabelLog::new(&path);
            let mut reads = 0usize;
            let mut problems = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let update = log.read_new(None).unwrap();
                problems.extend(update.problems.into_iter().map(|p| p.message));
                reads += 1;
                if finished {
                    return (log, reads, problems);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let children: Vec<_> = (0..writers).map(|w| child(&path, &format!("w{w}"), Some(appends))).collect();
    let mut saved = Vec::new();
    for mut c in children {
        saved.extend(saved_ids(c.stdout.take().unwrap()));
        assert!(c.wait().unwrap().success());
    }
    done.store(true, Ordering::SeqCst);
    let (live, reads, problems) = reader.join().unwrap();
    assert!(problems.is_empty(), "the live reader saw bad lines: {:?}", &problems[..problems.len().min(3)]);

    let total = writers * appends;
    assert_eq!(saved.len(), total);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), total, "one line per label");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("torn or invalid line ({e}): {line}"));
    }
    let mut sequential = LabelLog::new(&path);
    let update = sequential.read_new(None).unwrap();
    assert!(update.problems.is_empty());
    assert_eq!(update.lines, total);
    assert_eq!(live.resolve(), sequential.resolve(), "the live reader's pool is the sequential replay's");
    let resolved: BTreeSet<String> = pool_ids(&sequential).into_iter().collect();
    assert_eq!(resolved, expected_pool(&saved), "the pool is every saved preference label not undone");
    torture::figures(
        "labels concurrent",
        &[
            ("writers", writers.to_string()),
            ("appends_each", appends.to_string()),
            ("lines", total.to_string()),
            ("torn", "0".into()),
            ("live_reads", reads.to_string()),
            ("pool", resolved.len().to_string()),
            ("seconds", format!("{:.1}", start.elapsed().as_secs_f64())),
        ],
    );
}

#[test]
fn labels_reported_saved_survive_random_sigkills() {
    let kills = torture::scale(12, 1_000);
    let seed = torture::Rng::seed_from_env();
    let mut rng = torture::Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let start = Instant::now();
    let mut saved = Vec::new();
    let mut mid_burst = 0usize;
    for round in 0..kills {
        let mut c = child(&path, &format!("k{round}"), None);
        let stdout = c.stdout.take().unwrap();
        let reader = std::thread::spawn(move || saved_ids(stdout));
        // Most kills land while labels are being written; a few during start-up.
        std::thread::sleep(Duration::from_millis(rng.range(5, 120)));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        let ids = reader.join().unwrap();
        mid_burst += usize::from(!ids.is_empty());
        saved.extend(ids);
    }
    let mut log = LabelLog::new(&path);
    let update = log.read_new(None).unwrap();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in log.ids() {
        *count.entry(id).or_default() += 1;
    }
    for id in &saved {
        assert_eq!(count.get(id.as_str()), Some(&1), "{id} was reported saved (seed {seed})");
    }
    assert!(count.values().all(|&n| n == 1), "no label is written twice (seed {seed})");
    // A kill tears at most the line being written; the next append ends it, so each torn
    // fragment is one reported problem and nothing else is lost.
    assert!(update.problems.len() <= kills, "{} problems for {kills} kills", update.problems.len());
    assert!(mid_burst > kills / 2, "most kills landed mid-burst ({mid_burst} of {kills}, seed {seed})");
    // Every whole label resolves: the pool is exactly what the labels in the file say (a label
    // can be written and its writer killed before it said so).
    let pool: BTreeSet<String> = pool_ids(&log).into_iter().collect();
    let in_file: Vec<String> = log.ids().map(String::from).collect();
    assert_eq!(pool, expected_pool(&in_file), "seed {seed}");
    torture::figures(
        "labels kills",
        &[
            ("kills", kills.to_string()),
            ("kills_mid_burst", mid_burst.to_string()),
            ("labels_saved", saved.len().to_string()),
            ("labels_lost", "0".into()),
            ("torn_fragments", update.problems.len().to_string()),
            ("seed", seed.to_string()),
            ("seconds", format!("{:.1}", start.elapsed().as_secs_f64())),
        ],
    );
}
