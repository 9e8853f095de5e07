use std::path::Path;

use super::*;
use crate::config::{load_pipeline, ConfigError, LoadedPipeline};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/model");
const PREFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/prefs.jsonl");
const SFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/sft.jsonl");

fn pipeline_text(engine: &str, stage_extra: &str) -> String {
    format!(
        "[run]\nname = \"t\"\ndevice = \"cpu\"\n\n[model]\npath = \"{MODEL}\"\n\n{engine}\n\n\
         [[stage]]\nname = \"sft\"\nengine = \"trl\"\nbatch_size = 4\n{stage_extra}\n[stage.sft]\ndata = [\"{SFT}\"]\n\n\
         [[stage]]\nname = \"dpo\"\nengine = \"trl\"\nbatch_size = 4\n[stage.sft]\non_chosen = true\nweight = 0.5\n\
         [stage.pref]\ndata = [\"{PREFS}\", \"labels.jsonl\"]\nlambda = 0.5\n"
    )
}

fn load(dir: &Path, text: &str) -> Result<LoadedPipeline, ConfigError> {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    load_pipeline(&path)
}

const TORCHRUN: &str = "[engine.trl]\npython = \"/venv/bin/python\"\nlauncher = \"torchrun\"\nnum_processes = 2";

#[test]
fn a_trl_pipeline_loads_and_its_spec_says_what_the_stage_is() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load(dir.path(), &pipeline_text(TORCHRUN, "")).unwrap();
    let run = Path::new("/runs/r1");
    let prefs = |i: usize| -> Vec<PrefFile> {
        loaded.pref_sources[i].iter().map(|s| PrefFile { path: s.resolve(run), live: s.is_run_relative() }).collect()
    };
    let spec = stage_spec(&loaded.pipeline, 1, run, Path::new("/runs/r1/trl/sft/model"), 7, &prefs(1)).unwrap();
    assert_eq!(spec["kind"], "dpo");
    assert_eq!(spec["step_offset"], 7);
    assert_eq!(spec["batch_size"], 4);
    assert_eq!(spec["pref"]["data"], json!([PREFS]));
    assert_eq!(spec["pref"]["live"], json!(["/runs/r1/labels.jsonl"]));
    assert_eq!(spec["sft"]["on_chosen"], true);
    assert_eq!(spec["export_dir"], "/runs/r1/trl/dpo/model");
    let sft = stage_spec(&loaded.pipeline, 0, run, Path::new(MODEL), 0, &prefs(0)).unwrap();
    assert_eq!(sft["kind"], "sft");
    assert!(sft.get("pref").is_none());
}

#[test]
fn launch_lines_for_each_launcher() {
    let spec = Path::new("/r/trl/dpo.json");
    let python = Path::new("/venv/bin/python");
    let mut s = TrlSettings {
        python: None,
        launcher: Launcher::Torchrun,
        num_processes: 2,
        num_machines: 1,
        config_file: None,
        command: Vec::new(),
    };
    assert_eq!(
        launch(&s, python, spec, "cpu").display(),
        "PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES='' /venv/bin/python -m torch.distributed.run --standalone \
         --nproc_per_node 2 -m hone_trl --spec /r/trl/dpo.json"
    );
    s.launcher = Launcher::Accelerate;
    s.num_processes = 16;
    s.num_machines = 2;
    s.config_file = Some("/cfg/zero3 two nodes.yaml".into());
    assert_eq!(
        launch(&s, python, spec, "cuda").display(),
        "PYTHONUNBUFFERED=1 /venv/bin/python -m accelerate.commands.launch --config_file '/cfg/zero3 two nodes.yaml' \
         --num_processes 16 --num_machines 2 -m hone_trl --spec /r/trl/dpo.json"
    );
    s.launcher = Launcher::Command;
    s.config_file = None;
    s.command = vec!["srun".into(), "--ntasks-per-node=8".into()];
    let l = launch(&s, python, spec, "cuda");
    assert_eq!(l.program, "srun");
    assert_eq!(l.args, ["--ntasks-per-node=8", "/venv/bin/python", "-m", "hone_trl", "--spec", "/r/trl/dpo.json"]);
}

fn error_of(extra_engine: &str, stage_extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), &pipeline_text(extra_engine, stage_extra)).unwrap_err().to_string();
    err.replace(&dir.path().display().to_string(), "DIR")
}

#[test]
fn bad_trl_configs_are_located_errors() {
    assert_eq!(
        error_of("", ""),
        "DIR/pipeline.toml:12:10: stage[0].engine: engine = \"trl\" needs an [engine.trl] table"
    );
    let e = error_of(&TORCHRUN.replace("num_processes = 2", "num_processes = 3"), "");
    assert!(e.starts_with("DIR/pipeline.toml:16:14: stage[0].batch_size: engine = \"trl\": batch_size is the global batch and must be divisible by num_processes (3) x grad_accum (1) = 3 (got 4)"), "{e}");
    let e = error_of("[engine.trl]\nconfig_file = \"nope.yaml\"", "");
    assert!(e.starts_with("DIR/pipeline.toml:9:15: engine.trl.config_file: no such file: DIR/nope.yaml"), "{e}");
    let e = error_of("[engine.trl]\nlauncher = \"command\"", "");
    assert!(e.contains("engine.trl.command: launcher = \"command\" needs command = [\"program\", ...]"), "{e}");
    let e = error_of(&TORCHRUN.replace("num_processes = 2", "num_processes = 4\nnum_machines = 2"), "");
    assert!(e.contains("engine.trl.num_machines: torchrun on several machines"), "{e}");
    let adaptive = "[stage.safety]\ndata = [\"".to_string() + SFT + "\"]\n[stage.safety.adaptive]\nepsilon = 0.1\n";
    let e = error_of(TORCHRUN, &adaptive);
    assert!(e.contains("stage[0].safety.adaptive: adaptive λ_safe is not supported on engine = \"trl\""), "{e}");
}

#[test]
fn native_pipelines_freeze_without_engine_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline_text("", "").replace("engine = \"trl\"\n", "");
    let loaded = load(dir.path(), &text).unwrap();
    let toml = toml::to_string(&loaded.pipeline).unwrap();
    assert!(!toml.contains("engine"), "{toml}");
}

#[test]
fn the_relay_appends_the_socket_requests_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = relay_path(dir.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    append_request(&path, &Request::Pause).unwrap();
    append_request(&path, &Request::SetLambda { term: crate::run::control::LambdaTerm::Pref, value: 0.25 }).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "{\"cmd\":\"pause\"}\n{\"cmd\":\"set_lambda\",\"term\":\"pref\",\"value\":0.25}\n");
}

fn fake_launch(script: &str) -> Launch {
    Launch { program: "sh".into(), args: vec!["-c".into(), script.into()], env: Vec::new() }
}

fn wait(child: &mut TrlChild) -> Result<TrlOutcome, TrlError> {
    loop {
        if let Some(outcome) = child.poll().transpose() {
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_launcher_exit_status_decides_the_outcome_and_a_failure_carries_its_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut stopped = TrlChild::start(&fake_launch("exit 0"), dir.path(), "sft", &log).unwrap();
    assert_eq!(wait(&mut stopped).unwrap(), TrlOutcome::Stopped);
    let export = export_dir(dir.path(), "sft");
    let script = format!("mkdir -p '{0}' && echo '{{}}' > '{0}/{EXPORT_MARKER}'", export.display());
    let mut finished = TrlChild::start(&fake_launch(&script), dir.path(), "sft", &log).unwrap();
    assert_eq!(wait(&mut finished).unwrap(), TrlOutcome::Finished);
    let script = "echo starting; echo 'Traceback: \u{1b}[31mboom' >&2; exit 3";
    let mut failed = TrlChild::start(&fake_launch(script), dir.path(), "dpo", &log).unwrap();
    let err = wait(&mut failed).unwrap_err().to_string();
    assert!(err.starts_with("stage dpo: the TRL launcher exited with status 3; its last lines:\n"), "{err}");
    assert!(err.contains("starting\nTraceback: ") && err.contains("boom") && !err.contains('\u{1b}'), "{err}");
}

#[test]
fn a_requested_stop_is_relayed_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut child = TrlChild::start(&fake_launch("exit 0"), dir.path(), "sft", &log).unwrap();
    child.stop_if(false).unwrap();
    child.stop_if(true).unwrap();
    child.stop_if(true).unwrap();
    child.relay(&Request::Status).unwrap();
    assert_eq!(std::fs::read_to_string(relay_path(dir.path())).unwrap(), "{\"cmd\":\"stop\"}\n");
    wait(&mut child).unwrap();
}

#[test]
fn the_package_check_reports_versions_or_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    write_executable(&good, "#!/bin/sh\necho '{\"torch\":\"2.15.0\",\"trl\":\"1.16.0\"}'\n");
    let bad = dir.path().join("bad");
    write_executable(&bad, "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'trl'\" >&2\nexit 1\n");
    let versions = check_packages(&good).unwrap();
    let loaded =
        load(dir.path(), &pipeline_text(&TORCHRUN.replace("/venv/bin/python", &good.display().to_string()), ""))
            .unwrap();
    let line = check(&loaded.pipeline).unwrap().unwrap();
    assert!(line.ends_with("(torch 2.15.0, trl 1.16.0); launcher torchrun, 2 processes on 1 machines"), "{line}");
    assert_eq!(versions["trl"], "1.16.0");
    let err = check_packages(&bad).unwrap_err().to_string();
    assert!(
        err.ends_with("the TRL engine's packages do not import: ModuleNotFoundError: No module named 'trl'"),
        "{err}"
    );
    let err = check_packages(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("missing: cannot start"), "{err}");
}

#[test]
fn pair_hash_is_shared_with_python() {
    use crate::data::labels::pair_hash;
    use crate::data::{Message, Text};
    let p = |s: &str| Text::Plain(s.into());
    // python/tests/test_labels.py asserts the same two values for hone_trl.labels.pair_hash.
    assert_eq!(pair_hash(&p("What is 2+2?"), &p("4"), &p("5")), "6dd3b676725a39b4e21d85f2");
    let m = |role: &str, c: &str| Text::Messages(vec![Message::new(role, c)]);
    assert_eq!(pair_hash(&m("user", "hé"), &m("assistant", "a"), &m("assistant", "b")), "a44d84b3dd7669173722f39c");
}

#[test]
fn launch_lines_name_each_trl_stage_and_refuse_a_missing_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python");
    std::fs::write(&python, "").unwrap();
    let loaded =
        load(dir.path(), &pipeline_text(&TORCHRUN.replace("/venv/bin/python", &python.display().to_string()), ""))
            .unwrap();
    let lines = launch_lines(&loaded.pipeline, Path::new("/runs/r1")).unwrap();
    let stages: Vec<&str> = lines.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stages, ["sft", "dpo"]);
    assert!(lines[1].1.ends_with("--nproc_per_node 2 -m hone_trl --spec /runs/r1/trl/dpo.json"), "{}", lines[1].1);
    let missing =
        load(dir.path(), &pipeline_text(&TORCHRUN.replace("/venv/bin/python", "/nowhere/python"), "")).unwrap();
    let err = launch_lines(&missing.pipeline, Path::new("/runs/r1")).unwrap_err().to_string();
    assert_eq!(err, "[engine.trl] python: no such interpreter: /nowhere/python");
}

/// Writes an executable script without this process ever holding a writable descriptor to it:
/// another test thread's fork could inherit that descriptor and make running the script fail
/// with ETXTBSY ("Text file busy"). `install` writes the file in its own, finished process.
fn write_executable(path: &std::path::Path, text: &str) {
    let source = path.with_extension("source");
    std::fs::write(&source, text).unwrap();
    let status = std::process::Command::new("install").args(["-m", "755"]).arg(&source).arg(path).status().unwrap();
    assert!(status.success(), "install {} failed", path.display());
}

#[test]
fn the_resume_step_is_the_checkpoint_the_ranks_restore_not_the_newest_event() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let out = checkpoints_dir(run, "dpo");
    let spec = json!({"export_dir": export_dir(run, "dpo"), "output_dir": out, "step_offset": 2});
    std::fs::create_dir_all(trl_dir(run)).unwrap();
    std::fs::write(spec_path(run, "dpo"), spec.to_string()).unwrap();
    // 3 and 4 complete, 5 still being written, "+9" not a name the ranks take.
    for (name, complete) in
        [("checkpoint-3", true), ("checkpoint-4", true), ("checkpoint-5", false), ("checkpoint-+9", true)]
    {
        std::fs::create_dir_all(out.join(name)).unwrap();
        if complete {
            std::fs::write(out.join(name).join(CHECKPOINT_MARKER), "{}").unwrap();
        }
    }
    let started = crate::run::Event::new(crate::run::kind::STAGE_STARTED, Some("dpo"), Some(2)).with("engine", "trl");
    // Killed after checkpoint-4's marker, before its `checkpoint_saved` event.
    let saved = crate::run::Event::new(crate::run::kind::CHECKPOINT_SAVED, Some("dpo"), Some(5))
        .with("engine", "trl")
        .with("path", out.join("checkpoint-3").display().to_string());
    assert_eq!(resume_step(run, &[started.clone(), saved]), Some(6));
    assert_eq!(resume_step(run, &[]), None, "no TRL stage started");
    std::fs::create_dir_all(export_dir(run, "dpo")).unwrap();
    std::fs::write(export_dir(run, "dpo").join(EXPORT_MARKER), r#"{"step": 26}"#).unwrap();
    assert_eq!(resume_step(run, &[started]), Some(26), "a finished stage resumes past its export");
}

#[test]
fn status_during_a_trl_stage_follows_its_metrics() {
    use crate::run::control::Status;
    let mut status = Status { state: "running".into(), stage: Some("dpo".into()), step: 6, ..Status::default() };
    let metrics = |stage: &str, step: u64| {
        format!(
            "{{\"ts\":1,\"event\":\"metrics\",\"stage\":\"{stage}\",\"step\":{step},\"loss\":0.5,\
             \"lambda/pref\":0.5,\"lambda/safe\":0.0,\"stage_step\":{},\"total_steps\":12}}",
            step - 6
        )
    };
    assert!(!follow_status(&mut status, &metrics("sft", 9), "dpo"), "another stage's metrics are not this stage's");
    assert!(!follow_status(
        &mut status,
        "{\"ts\":1,\"event\":\"checkpoint_saved\",\"stage\":\"dpo\",\"step\":8}",
        "dpo"
    ));
    assert!(!follow_status(&mut status, "{torn", "dpo"));
    assert_eq!((status.step, status.stage_step, status.stage_total), (6, 0, None));
    assert!(follow_status(&mut status, &metrics("dpo", 9), "dpo"));
    assert_eq!((status.step, status.stage_step, status.stage_total), (9, 3, Some(12)));
    assert_eq!((status.lambda_pref, status.lambda_safe), (Some(0.5), Some(0.0)));
    assert_eq!(status.state, "running");
}

#[test]
fn a_lora_pipeline_on_the_trl_engine_resolves_its_targets_to_module_names() {
    let dir = tempfile::tempdir().unwrap();
    let model = format!("[model]\npath = \"{MODEL}\"\n");
    let with = |lora: &str| pipeline_text(TORCHRUN, "").replace(&model, &format!("{model}lora = {lora}\n"));
    let names = |lora: &str| {
        let loaded = load(dir.path(), &with(lora)).unwrap();
        let spec = stage_spec(&loaded.pipeline, 0, Path::new("/r"), Path::new(MODEL), 0, &[]).unwrap();
        (spec["lora"]["r"].clone(), spec["lora"]["alpha"].clone(), spec["lora"]["target_modules"].clone())
    };
    // The fixture has two layers; the default targets are PEFT's q_proj and v_proj.
    let qv = json!([
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj"
    ]);
    assert_eq!(names("{ r = 4, alpha = 16 }"), (json!(4), json!(16.0), qv.clone()));
    assert_eq!(names(r#"{ target_modules = ".*\\.[qv]_proj" }"#).2, qv);
    let all = names(r#"{ target_modules = "all-linear" }"#).2;
    assert_eq!(all.as_array().unwrap().len(), 14);
    assert_eq!(all[6], "model.layers.0.mlp.down_proj");
    assert_eq!(names(r#"{ target_modules = ["layers.1.mlp.up_proj"] }"#).2, json!(["model.layers.1.mlp.up_proj"]));
    // Without LoRA the spec has none.
    let loaded = load(dir.path(), &pipeline_text(TORCHRUN, "")).unwrap();
    assert!(stage_spec(&loaded.pipeline, 0, Path::new("/r"), Path::new(MODEL), 0, &[]).unwrap().get("lora").is_none());
}
