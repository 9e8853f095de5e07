"""The stage spec: everything one TRL stage needs, written by hone (`src/run/trl.rs`) as JSON at
`<run>/trl/<stage>.json` from the frozen run.toml, so the Python side never parses hone's TOML.

Keys (all required unless marked optional):
  run_dir, stage, kind ("sft" | "dpo"), model (HF directory the stage starts from),
  output_dir (TRL checkpoints), export_dir (the final model, an HF directory),
  seed, device ("cpu" or a CUDA device), dtype ("f32" | "bf16" | "f16"),
  lr, schedule ("cosine" | "linear" | "constant"), warmup_steps, weight_decay, max_grad_norm,
  max_length, epochs, max_steps (optional), batch_size (global), grad_accum,
  log_every, checkpoint_every, keep_checkpoints, step_offset (global step before this stage),
  sft: {data: [paths], weight, on_chosen} (optional),
  pref: {data: [paths], live: [paths], lambda, beta, loss ("sigmoid" | "ipo"), reference (optional)}
  (optional), lambda_safe (optional, reported as lambda/safe),
  lora (optional): {r, alpha, dropout, target_modules: [full module names]}: the stage trains a
  fresh PEFT LoRA adapter on `model` and exports it merged,
  orders (optional): hone's sampler order of the main term, one permutation of the files'
  examples per epoch; the engine serves it (admitted labels first) and file order after it.
  sft_orders (optional, dpo with sft.on_chosen): hone's order of the SFT-on-chosen term, which
  the native engine draws from a sampler of its own (pair indices); with it the SFT term trains
  on those pairs' chosen responses, else on the chosen responses of the preference batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


class SpecError(ValueError):
    """A spec that cannot run, with the field it is about."""


@dataclass
class Spec:
    raw: dict[str, Any]
    path: str

    def __getattr__(self, name: str) -> Any:
        try:
            return self.raw[name]
        except KeyError:
            raise SpecError(f"{self.path}: {name}: missing") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.raw.get(name, default)

    def per_device_batch(self, world_size: int) -> int:
        """batch_size is the global batch of one optimizer step."""
        denom = world_size * self.grad_accum
        if self.batch_size % denom != 0:
            raise SpecError(
                f"{self.path}: batch_size: {self.batch_size} is not divisible by "
                f"num_processes ({world_size}) x grad_accum ({self.grad_accum})"
            )
        return self.batch_size // denom

    def total_steps(self, examples: int) -> int:
        """Optimizer steps of the stage, fixed when it starts (hone's rule)."""
        per_epoch = max(1, math.ceil(examples / self.batch_size))
        total = per_epoch * max(1, int(self.get("epochs", 1) or 1))
        max_steps = self.get("max_steps")
        return min(total, int(max_steps)) if max_steps else total


def load_spec(path: str) -> Spec:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a JSON object")
    spec = Spec(raw, path)
    if spec.kind not in ("sft", "dpo"):
        raise SpecError(f"{path}: kind: expected sft or dpo, got {spec.kind!r}")
    if spec.kind == "sft" and not spec.get("sft"):
        raise SpecError(f"{path}: sft: an sft stage needs its data")
    if spec.kind == "dpo" and not spec.get("pref"):
        raise SpecError(f"{path}: pref: a dpo stage needs preference data")
    return spec


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line is an error naming path:line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError(f"{path}:{number}:{e.colno}: line: {e.msg}") from None
            if not isinstance(value, dict):
                raise SpecError(f"{path}:{number}:1: line: expected a JSON object")
            out.append(value)
    return out
