//! `engine = "trl"` stages inside `hone run`/`hone resume`, without Python: `[engine.trl] python`
//! is a shell script that plays the TRL engine's side of the contract (`--versions`, the stage
//! spec, rank 0's events, `control.jsonl`, the export with its marker). What it proves is the
//! worker's part: the stage is launched with the previous stage's model, control requests and
//! stops are relayed, the export comes back as the policy and is evaluated and gated, the command
//! is in `run.toml`, and a failing launcher or a missing interpreter is a clear error. The real
//! engine (TRL, two processes) is `python/tests/test_hone_run.py`, run by `.ci/run` with its venv.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hone::run::control::Request;
use hone::run::{Event, RunDir};

mod live;
use live::{connect, events, fixture, only_run, wait_for, HONE};

const WAIT: Duration = Duration::from_secs(120);

/// The fake engine. `FAKE_TRL` picks what it does: `finish` (default: one `metrics` event, then
/// the input model exported as the stage's model), `fail` (two lines of output, status 3),
/// `bad-export` (an export whose weights do not load), `wait-stop` (one `metrics` event at stage step 2 of 4, then runs until `control.jsonl`
/// holds a stop, then exits 0 without an export: stopped). Every spec it sees is appended to
/// `calls.log` beside it.
const FAKE: &str = r#"#!/bin/sh
for a in "$@"; do last="$a"; done
case " $* " in *" --versions "*) echo '{"torch":"0.0-fake","trl":"0.0-fake"}'; exit 0;; esac
spec="$last"
get() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$spec"; }
run=$(get run_dir); stage=$(get stage); model=$(get model); export=$(get export_dir); offset=$(get step_offset)
echo "$stage $model $offset $*" >> "$(dirname "$0")/calls.log"
ev() { printf '{"ts":%s000,"event":"%s","stage":"%s","step":%s%s}\n' "$(date +%s)" "$1" "$stage" "$2" "$3" >> "$run/events.jsonl"; }
ev stage_started "$offset" ',"engine":"trl","world_size":2'
case "${FAKE_TRL:-finish}" in
  fail) echo "Traceback (most recent call last):"; echo "RuntimeError: fake engine failure"; exit 3;;
  wait-stop)
    ev metrics "$((offset + 2))" ',"loss":1.5,"lambda/pref":0.5,"stage_step":2,"total_steps":4'
    until grep -q '"stop"' "$run/trl/control.jsonl" 2>/dev/null; do sleep 0.1; done
    ev stop_requested "$((offset + 1))" ',"source":"control"'; exit 0;;
esac
step=$((offset + 3))
ev metrics "$step" ',"loss":1.5,"loss/sft":1.0,"loss/pref":1.0,"lambda/pref":0.5'
mkdir -p "$export.tmp"
cp "$model"/*.json "$model"/model.safetensors "$export.tmp"/
[ "${FAKE_TRL:-finish}" = bad-export ] && echo "not safetensors" > "$export.tmp/model.safetensors"
printf '{"stage":"%s","step":%s,"engine":"trl"}' "$stage" "$step" > "$export.tmp/hone_export.json"
rm -rf "$export"; mv "$export.tmp" "$export"
ev stage_finished "$step" ',"engine":"trl"'
"#;

/// A pipeline: a native SFT stage (1 step) then a TRL DPO stage with an SFT term, evaluated
/// against the base model. `python` is the interpreter `[engine.trl]` names.
fn pipeline(dir: &Path, python: &Path) -> PathBuf {
    let f = fixture();
    let mut suite = String::new();
    for i in 0..3 {
        let item = serde_json::json!({
            "id": format!("c{i}"),
            "prompt": [{"role": "user", "content": format!("What is {i} plus 2?")}],
            "reference": format!("{}", i + 2),
            "kind": "capability",
            "segment": {"language": "en", "domain": "math", "intent": "qa"},
            "checks": [{"type": "numeric"}],
        });
        writeln!(suite, "{item}").unwrap();
    }
    std::fs::write(dir.join("suite.jsonl"), suite).unwrap();
    let text = format!(
        r#"[run]
name = "trl"
seed = 7
device = "cpu"

[model]
path = "{model}"

[engine.trl]
python = "{python}"
launcher = "torchrun"
num_processes = 2

[[stage]]
name = "sft"
max_steps = 1
batch_size = 4
lr = 1e-3
max_length = 128
sft = {{ data = ["{sft}"] }}

[[stage]]
name = "dpo"
engine = "trl"
max_steps = 3
batch_size = 4
lr = 1e-3
max_length = 128
sft = {{ on_chosen = true, weight = 0.5 }}
pref = {{ data = ["{prefs}", "labels.jsonl"], lambda = 0.5, beta = 0.1 }}

[eval]
suite = "{suite}"
baseline = "base"
max_new_tokens = 4
batch_size = 4
"#,
        model = f.join("model").display(),
        python = python.display(),
        sft = f.join("sft.jsonl").display(),
        prefs = f.join("prefs.jsonl").display(),
        suite = dir.join("suite.jsonl").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn fake_python(dir: &Path) -> PathBuf {
    let path = dir.join("fake-python");
    live::write_executable(&path, FAKE);
    path
}

fn hone(args: &[&str], mode: &str) -> Output {
    Command::new(HONE).args(args).env("FAKE_TRL", mode).stdin(Stdio::null()).output().unwrap()
}

fn of<'e>(evs: &'e [Event], kind: &str, stage: &str) -> Vec<&'e Event> {
    evs.iter().filter(|e| e.event == kind && e.stage.as_deref() == Some(stage)).collect()
}

#[test]
fn a_trl_stage_runs_from_the_previous_stage_and_its_export_is_evaluated_and_gated() {
    let tmp = tempfile::tempdir().unwrap();
    let python = fake_python(tmp.path());
    let p = pipeline(tmp.path(), &python);
    let runs = tmp.path().join("runs");
    let (p, runs_s) = (p.to_str().unwrap(), runs.to_str().unwrap());

    let check = hone(&["check", p], "finish");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "TRL engine: {} (torch 0.0-fake, trl 0.0-fake); launcher torchrun, 2 processes",
            python.display()
        )),
        "{text}"
    );

    // A launcher that fails: the run fails, and the error carries its last lines.
    let out = hone(&["run", p, "--headless", "--runs-dir", runs_s], "fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("stage dpo: the TRL launcher exited with status 3; its last lines:"), "{err}");
    assert!(err.contains("RuntimeError: fake engine failure"), "{err}");
    let failed = only_run(&runs, WAIT);
    let evs = events(&failed);
    let error = evs.iter().find(|e| e.event == "error" && e.stage.is_none()).unwrap();
    assert!(error.fields["message"].as_str().unwrap().contains("fake engine failure"));
    assert!(of(&evs, "eval_finished", "dpo").is_empty());
    // The stage started from the native stage's policy, written for it; the command is recorded.
    let calls = std::fs::read_to_string(tmp.path().join("calls.log")).unwrap();
    let input = failed.path().join("trl/dpo/input");
    assert!(
        calls.starts_with(&format!(
            "dpo {} 1 -m torch.distributed.run --standalone --nproc_per_node 2 -m hone_trl --spec",
            input.display()
        )),
        "{calls}"
    );
    assert!(input.join("model.safetensors").is_file());
    let toml = std::fs::read_to_string(failed.config_path()).unwrap();
    let spec = failed.path().join("trl/dpo.json");
    let line = format!(
        "[[frozen.trl_launch]]\nstage = \"dpo\"\ncommand = \"PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES='' {} -m torch.distributed.run --standalone --nproc_per_node 2 -m hone_trl --spec {}\"",
        python.display(),
        spec.display()
    );
    assert!(toml.contains(&line), "{toml}");

    // Resumed with a working engine: the export is loaded, evaluated and gated like a native
    // stage's; the global step continues from the engine's.
    let out = hone(&["resume", failed.path().to_str().unwrap(), "--headless"], "finish");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let evs = events(&failed);
    let eval = of(&evs, "eval_finished", "dpo");
    assert_eq!(eval.len(), 1);
    assert_eq!(eval[0].step, Some(4));
    let gate = of(&evs, "gate_decided", "dpo");
    assert_eq!(gate.len(), 1);
    assert!(failed.path().join("eval/dpo/report.json").is_file());
    assert_eq!(evs.last().unwrap().fields["status"], "completed");
}

#[test]
fn an_export_that_does_not_load_fails_the_run_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &fake_python(tmp.path()));
    let runs = tmp.path().join("runs");
    let out = hone(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()], "bad-export");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("trl/dpo/model"), "{err}");
}

#[test]
fn control_requests_and_a_stop_reach_the_trl_stage_and_a_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &fake_python(tmp.path()));
    let runs = tmp.path().join("runs");
    let child = Command::new(HONE)
        .args(["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()])
        .env("FAKE_TRL", "wait-stop")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run: RunDir = only_run(&runs, WAIT);
    wait_for("the TRL stage", WAIT, || (!of(&events(&run), "stage_started", "dpo").is_empty()).then_some(()));
    let mut client = connect(&run, WAIT);
    // `status` follows the metrics the stage's rank 0 writes (step 2 of 4 after the SFT step).
    let status = wait_for("the TRL stage's status", WAIT, || {
        client.send(&Request::Status).unwrap().status.filter(|s| s.stage_step == 2)
    });
    assert_eq!((status.stage.as_deref(), status.step, status.stage_total), (Some("dpo"), 3, Some(4)));
    assert_eq!((status.state.as_str(), status.lambda_pref), ("running", Some(0.5)));
    client.send(&Request::Pause).unwrap();
    client.send(&Request::SetLambda { term: hone::run::control::LambdaTerm::Pref, value: 0.25 }).unwrap();
    client.send(&Request::Stop).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let relayed = std::fs::read_to_string(run.path().join("trl/control.jsonl")).unwrap();
    assert_eq!(
        relayed,
        "{\"cmd\":\"pause\"}\n{\"cmd\":\"set_lambda\",\"term\":\"pref\",\"value\":0.25}\n{\"cmd\":\"stop\"}\n"
    );
    let evs = events(&run);
    assert_eq!(evs.last().unwrap().fields["status"], "stopped");
    assert!(of(&evs, "eval_finished", "dpo").is_empty());

    let out = hone(&["resume", run.path().to_str().unwrap(), "--headless"], "finish");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let evs = events(&run);
    assert_eq!(of(&evs, "gate_decided", "dpo").len(), 1);
    assert_eq!(evs.last().unwrap().fields["status"], "completed");
}

#[test]
fn a_missing_interpreter_is_refused_at_check_and_before_a_run_directory_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &tmp.path().join("no-venv/bin/python"));
    let runs = tmp.path().join("runs");
    let check = hone(&["check", p.to_str().unwrap()], "finish");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(text.contains("error: [engine.trl] python: no such interpreter:"), "{text}");
    let out = hone(&["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()], "finish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no such interpreter"), "{err}");
    assert!(RunDir::list(&runs).map_or(true, |v| v.is_empty()));
}

#[test]
fn a_finished_trl_stage_is_a_native_checkpoint_that_a_resume_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &fake_python(tmp.path()));
    // A native DPO stage after the TRL one: its reference log-probs are the first the run computes.
    let prefs = fixture().join("prefs.jsonl");
    let dpo2 = format!(
        "\n[[stage]]\nname = \"dpo2\"\nmax_steps = 1\nbatch_size = 4\nlr = 1e-3\nmax_length = 128\n\
         pref = {{ data = [\"{}\"], beta = 0.1 }}\n",
        prefs.display()
    );
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap() + &dpo2).unwrap();
    let runs = tmp.path().join("runs");
    // The worker dies in the native stage after the TRL stage, before that stage checkpoints.
    let out = Command::new(HONE)
        .args(["run", p.to_str().unwrap(), "--headless", "--runs-dir", runs.to_str().unwrap()])
        .env("FAKE_TRL", "finish")
        .env(hone::fault::ENV, "reference.logps")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let run = only_run(&runs, WAIT);
    let evs = events(&run);
    assert!(!of(&evs, "stage_started", "dpo2").is_empty());
    // The TRL stage's end (global step 4: 1 native step, then the engine's 3) is a checkpoint.
    let saved: Vec<_> = evs.iter().filter(|e| e.event == "checkpoint_saved").collect();
    let last = saved.last().unwrap();
    assert_eq!(last.step, Some(4), "{saved:?}");
    let dir = PathBuf::from(last.fields["path"].as_str().unwrap());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!((state["stage_index"].clone(), state["stage_done"].clone()), (1.into(), true.into()));
    assert!(dir.join("model.safetensors").is_file() && !dir.join("optimizer.safetensors").exists());
    // The resume needs neither the engine nor its export: the checkpoint holds the policy. (Were
    // it to start from the native stage's checkpoint, the TRL stage would run again and fail.)
    std::fs::remove_dir_all(run.path().join("trl/dpo/model")).unwrap();
    let out = hone(&["resume", run.path().to_str().unwrap(), "--headless"], "fail");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let evs = events(&run);
    let resumed = evs.iter().rfind(|e| e.event == "resumed").unwrap();
    assert_eq!(resumed.fields["from_step"], 4);
    assert_eq!(of(&evs, "stage_started", "dpo").len(), 1);
    assert_eq!(of(&evs, "stage_finished", "dpo2").len(), 1);
    assert_eq!(evs.last().unwrap().fields["status"], "completed");
}
