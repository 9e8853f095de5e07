//! SIGKILL inside `hone export`: the export is killed by a crash point (`hone::fault`) after each
//! file it writes into its temporary directory and once it is complete but not yet renamed. After
//! every kill the target is absent (what was written sits under a hidden temporary name, which no
//! reader takes for an export) or complete and byte-identical to an uninterrupted export; running
//! the same export again succeeds, writes byte-identical files, and clears the dead export's
//! temporary. Running it again over a complete export succeeds and changes nothing.
#![allow(clippy::unwrap_used)]

mod torture;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device};
use hone::model::Model;
use torture::pipeline::{killed, only_run, sft_dpo_pipeline, SftDpo};

const HONE: &str = env!("CARGO_BIN_EXE_hone");

/// `hone export RUN --stage dpo --out OUT`, with `fault` armed if given.
fn export(run: &Path, out: &Path, fault: Option<&str>) -> Output {
    let mut cmd = Command::new(HONE);
    cmd.args(["export", run.to_str().unwrap(), "--stage", "dpo", "--out", out.to_str().unwrap()]);
    cmd.env_remove(hone::fault::ENV);
    if let Some(fault) = fault {
        cmd.env(hone::fault::ENV, fault);
    }
    cmd.output().unwrap()
}

/// Every entry of `dir`: name to bytes (directories as empty).
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = if e.file_type().unwrap().is_dir() { Vec::new() } else { std::fs::read(e.path()).unwrap() };
            (e.file_name().into_string().unwrap(), bytes)
        })
        .collect()
}

#[test]
fn a_killed_export_is_absent_or_complete_and_running_it_again_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = sft_dpo_pipeline(tmp.path(), SftDpo { name: "export", seed: 3, steps: 2, live_labels: false, eval: false });
    let runs = tmp.path().join("runs");
    let out =
        Command::new(HONE).args(["run", p.to_str().unwrap(), "--headless", "--runs-dir"]).arg(&runs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&runs).unwrap();

    // The uninterrupted export: what every interrupted one must end as. It loads.
    let reference_dir = tmp.path().join("reference/dpo");
    let out = export(run.path(), &reference_dir, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = contents(&reference_dir);
    Model::load(&reference_dir, &Device::Cpu, DType::F32).unwrap();
    assert!(reference.len() >= 3, "{:?}", reference.keys());
    // Again over the complete export: succeeds, changes nothing.
    assert!(export(run.path(), &reference_dir, None).status.success());
    assert_eq!(contents(&reference_dir), reference);

    let mut points: Vec<String> = (1..=reference.len()).map(|n| format!("durable.dir.file@{n}")).collect();
    points.push("durable.dir@1".into());
    for fault in &points {
        let parent = tmp.path().join(fault.replace(['.', '@'], "-"));
        let target = parent.join("dpo");
        let out = export(run.path(), &target, Some(fault));
        assert!(killed(out.status), "{fault} fired ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        // Nothing that looks like an export, only a hidden temporary.
        assert!(!target.exists(), "{fault}: a killed export left its target");
        let left: Vec<String> = contents(&parent).into_keys().collect();
        assert!(left.len() == 1 && left[0].starts_with(".dpo.tmp-"), "{fault}: {left:?}");
        let out = export(run.path(), &target, None);
        assert!(out.status.success(), "{fault}: the export again: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), target.display().to_string());
        assert!(contents(&target) == reference, "{fault}: the export again is byte-identical");
        let left: Vec<String> = contents(&parent).into_keys().collect();
        assert_eq!(left, ["dpo"], "{fault}: the dead export's temporary is cleared");
    }
    torture::figures("export", &[("kills", points.len().to_string()), ("files", reference.len().to_string())]);
}
