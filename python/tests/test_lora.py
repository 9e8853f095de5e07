"""LoRA on the TRL engine (the spec's `lora`): TRL trains a PEFT adapter on the stage's model, the
export is that adapter merged into the base (a full HF directory), and a DPO stage's reference is
its starting model with the adapter switched off. Real TRL on the tiny Llama fixture: the SFT
stage on two CPU processes (gloo), the DPO stage on one."""

import json
import math

import torch
from safetensors.torch import load_file

from conftest import FIXTURE, events, run, spec

LORA = {"r": 4, "alpha": 16.0, "dropout": 0.0,
        "target_modules": [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]}


def test_lora_stage_exports_merged_model_and_dpo_reference_is_its_start(tmp_path):
    run_dir = tmp_path / "run"
    sft = spec(run_dir, "sft", "sft", FIXTURE / "model", sft={"data": [str(FIXTURE / "sft.jsonl")], "weight": 1.0},
               max_steps=2, checkpoint_every=2, lora=LORA)
    assert run(sft, 2, tmp_path / "sft.log") == 0, (tmp_path / "sft.log").read_text()[-3000:]
    export = run_dir / "trl" / "sft" / "model"
    assert (export / "hone_export.json").is_file() and not (export / "adapter_config.json").exists()
    base, merged = load_file(FIXTURE / "model" / "model.safetensors"), load_file(export / "model.safetensors")
    adapter = load_file(run_dir / "trl" / "sft" / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert len(adapter) == 2 * len(LORA["target_modules"]), sorted(adapter)
    scale = LORA["alpha"] / LORA["r"]
    for name, w in base.items():
        module = name.removesuffix(".weight")
        if module in LORA["target_modules"]:
            a = adapter[f"base_model.model.{module}.lora_A.weight"]
            b = adapter[f"base_model.model.{module}.lora_B.weight"]
            assert b.abs().max() > 0, module  # trained: B starts at zero
            torch.testing.assert_close(merged[name], w + scale * b @ a, rtol=0, atol=1e-6)
        else:
            assert torch.equal(merged[name], w), f"{name} is not a target but changed"

    dpo = spec(run_dir, "dpo", "dpo", export, max_steps=1, step_offset=2, batch_size=4, lora=LORA,
               pref={"data": [str(FIXTURE / "prefs.jsonl")], "lambda": 1.0, "beta": 0.1, "loss": "sigmoid"})
    assert run(dpo, 1, tmp_path / "dpo.log") == 0, (tmp_path / "dpo.log").read_text()[-3000:]
    first = next(e for e in events(run_dir) if e["event"] == "metrics" and e["stage"] == "dpo")
    # A fresh adapter (B = 0) is the model itself: against its own start the rewards are 0 and the
    # sigmoid loss log 2. A reference other than the stage's start (the fixture's base) is not.
    assert abs(first["loss/pref"] - math.log(2)) < 1e-5 and abs(first["rewards/margins"]) < 1e-5, first
    info = json.loads((run_dir / "trl" / "dpo" / "model" / "hone_export.json").read_text())
    assert info["step"] == 3
