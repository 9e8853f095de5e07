#![allow(clippy::unwrap_used)]
//! `[model] lora` and `[model] adapter`: PEFT's defaults, agreement between the two, and the
//! resume refusal when the starting adapter's files change.

use std::path::{Path, PathBuf};

use hone::config::{diff_frozen, freeze, load_pipeline, FrozenExtras, TargetModules};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A pipeline in `dir` over the Qwen2 fixture model with `model_extra` in its `[model]` table.
fn write_pipeline(dir: &Path, model_extra: &str) -> PathBuf {
    let path = dir.join("pipeline.toml");
    let text = format!(
        "[model]\npath = \"{}\"\n{model_extra}\n\n[[stage]]\nname = \"sft\"\nsft.data = [\"{}\"]\n",
        fixtures().join("qwen2/model").display(),
        fixtures().join("qwen2/sft.jsonl").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_lora_table_gets_peft_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = load_pipeline(&write_pipeline(tmp.path(), "lora = {}")).unwrap();
    let lora = loaded.pipeline.model.lora.unwrap();
    assert_eq!((lora.r, lora.alpha, lora.dropout), (8, 8.0, 0.0));
    assert_eq!(lora.target_modules, TargetModules::List(vec!["q_proj".into(), "v_proj".into()]));
}

#[test]
fn a_lora_table_must_agree_with_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = fixtures().join("lora/adapter");
    let agree =
        format!("adapter = \"{}\"\nlora = {{ r = 4, alpha = 8, target_modules = \"all-linear\" }}", adapter.display());
    load_pipeline(&write_pipeline(tmp.path(), &agree)).unwrap();
    for (table, field) in [
        ("r = 8, alpha = 8, target_modules = \"all-linear\"", "model.lora.r"),
        ("r = 4, alpha = 16, target_modules = \"all-linear\"", "model.lora.alpha"),
        ("r = 4, alpha = 8, dropout = 0.1, target_modules = \"all-linear\"", "model.lora.dropout"),
        ("r = 4, alpha = 8", "model.lora.target_modules"),
    ] {
        let text = format!("adapter = \"{}\"\nlora = {{ {table} }}", adapter.display());
        let e = load_pipeline(&write_pipeline(tmp.path(), &text)).unwrap_err().to_string();
        assert!(e.contains("pipeline.toml:4:") && e.contains(field), "{table}: {e}");
        assert!(e.contains("lora/adapter/adapter_config.json says"), "{e}");
    }
}

#[test]
fn a_changed_adapter_refuses_the_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixtures().join("lora/adapter").join(name), adapter.join(name)).unwrap();
    }
    let path = write_pipeline(tmp.path(), &format!("adapter = \"{}\"", adapter.display()));
    let before = freeze(&load_pipeline(&path).unwrap(), &FrozenExtras::default()).unwrap();
    assert!(diff_frozen(&before, &freeze(&load_pipeline(&path).unwrap(), &FrozenExtras::default()).unwrap()).is_empty());
    let mut bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(adapter.join("adapter_model.safetensors"), bytes).unwrap();
    let after = freeze(&load_pipeline(&path).unwrap(), &FrozenExtras::default()).unwrap();
    let diff = diff_frozen(&before, &after);
    assert!(diff.iter().any(|d| d.contains("model.adapter") && d.contains("adapter_model.safetensors")), "{diff:?}");
}

#[test]
fn lora_dropout_with_gradient_checkpointing_is_refused_at_its_field() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::copy(fixtures().join("lora/adapter/adapter_model.safetensors"), adapter.join("adapter_model.safetensors"))
        .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("lora/adapter/adapter_config.json")).unwrap()).unwrap();
    config["lora_dropout"] = 0.1.into();
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    let cases = [
        // The `lora` table's dropout, and an adapter directory whose config carries it.
        ("lora = { r = 4, dropout = 0.05, target_modules = \"all-linear\" }".to_string(), "model.lora.dropout"),
        (format!("adapter = \"{}\"", adapter.display()), "model.adapter"),
    ];
    for (model_extra, field) in &cases {
        let path = write_pipeline(tmp.path(), model_extra);
        // Without checkpointing both load.
        load_pipeline(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("[run]\ngradient_checkpointing = true\n\n{text}")).unwrap();
        let e = load_pipeline(&path).unwrap_err().to_string();
        assert!(e.contains("pipeline.toml:6:") && e.contains(&format!("{field}:")), "{model_extra}: {e}");
        assert!(e.contains("gradient_checkpointing"), "{e}");
    }
    let e = load_pipeline(&tmp.path().join("pipeline.toml")).unwrap_err().to_string();
    assert!(e.contains("adapter/adapter_config.json: lora_dropout = 0.1"), "{e}");
}
