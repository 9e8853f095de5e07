"""One stage: build TRL's config, data, trainer and callback from the spec, resume from the newest
checkpoint, train, export. Returns True when the stage stopped (checkpoint saved, not done)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from . import relay
from .callback import HoneCallback
from .labels import LiveLabels
from .relay import ControlRelay
from .spec import Spec, SpecError, read_jsonl
from .trainers import HoneDPOTrainer, HoneOrder, HoneSFTTrainer, LivePool

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def common_args(spec: Spec, world: int) -> dict[str, Any]:
    every = int(spec.checkpoint_every)
    cpu = spec.device == "cpu"
    return dict(
        output_dir=spec.output_dir,
        per_device_train_batch_size=spec.per_device_batch(world),
        gradient_accumulation_steps=int(spec.grad_accum),
        learning_rate=float(spec.lr),
        lr_scheduler_type=SCHEDULES[spec.schedule],
        warmup_steps=int(spec.warmup_steps),
        weight_decay=float(spec.weight_decay),
        max_grad_norm=float(spec.max_grad_norm),
        optim="adamw_torch",
        logging_steps=int(spec.log_every),
        save_strategy="steps" if every > 0 else "no",
        save_steps=max(every, 1),
        save_total_limit=int(spec.keep_checkpoints),
        seed=int(spec.seed),
        data_seed=int(spec.seed),
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and world > 1 else None,
        bf16=spec.dtype == "bf16",
        fp16=spec.dtype == "f16",
        report_to=[],
        ignore_data_skip=True,  # the sampler restores its own position (HoneOrder.fast_forward)
        disable_tqdm=True,
        max_length=int(spec.max_length),
    )


def lora_config(spec: Spec):
    """PEFT's LoraConfig for the spec's `lora` (hone resolved `target_modules` to the full names
    of the modules it targets, which PEFT matches exactly), or None."""
    lora = spec.get("lora")
    if not lora:
        return None
    from peft import LoraConfig

    targets = lora.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise SpecError(f"{spec.path}: lora.target_modules: expected a non-empty list of module names")
    return LoraConfig(
        r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
        target_modules=targets, bias="none", task_type="CAUSAL_LM",
    )


def checked_orders(spec: Spec, key: str, examples: int) -> list[list[int]] | None:
    """The spec's `orders` or `sft_orders`: each epoch a permutation of the files' examples."""
    orders = spec.get(key)
    if orders and any(sorted(o) != list(range(len(o))) or len(o) > examples for o in orders):
        raise SpecError(f"{spec.path}: {key}: each epoch must be a permutation of the files' examples")
    return orders


def run_stage(spec: Spec, signals, writer) -> bool:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, SFTConfig

    from .__main__ import export_model, newest_checkpoint

    rank0 = relay.rank() == 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = spec.per_device_batch(world)
    if os.path.isfile(os.path.join(spec.export_dir, "hone_export.json")):
        return False  # this stage already finished and exported (a resumed pipeline)
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    dtype = DTYPES[spec.dtype]
    model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=dtype)
    checkpoint = newest_checkpoint(spec.output_dir)
    saved: dict[str, Any] = {}
    if checkpoint:
        with open(os.path.join(checkpoint, "hone_state.json"), encoding="utf-8") as f:
            saved = json.load(f)
    base = common_args(spec, world)
    peft_config = lora_config(spec)
    lambdas = {"pref": float((spec.get("pref") or {}).get("lambda", 0.0)), "safe": float(spec.get("lambda_safe") or 0.0)}
    live: dict[str, LiveLabels] | None = None
    items: dict[str, int] = {}

    if spec.kind == "sft":
        rows = [r for path in spec.sft["data"] for r in read_jsonl(path)]
        if not rows:
            raise SpecError(f"{spec.path}: sft.data: no records")
        from datasets import Dataset

        conversational = "messages" in rows[0]
        args = SFTConfig(**base, assistant_only_loss=conversational, packing=False, dataset_num_proc=None)
        trainer = HoneSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                 peft_config=peft_config)
        trainer.hone_sft_weight = float(spec.sft.get("weight", 1.0))
    else:
        from datasets import Dataset

        pref = spec.pref
        rows = [r for path in pref["data"] for r in read_jsonl(path)]
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected") if k in r} for r in rows]
        live = {path: LiveLabels(path) for path in pref.get("live", [])}
        start = saved.get("label_start", {})
        label_start: dict[str, int] = {}
        for path, labels in live.items():
            limit = start.get(path) if checkpoint else None
            update = labels.update(limit=limit)
            label_start[path] = update["offset"]
            for item, pair in update["added"]:
                items[item] = len(rows)
                rows.append(pair)
        if not rows:
            raise SpecError(f"{spec.path}: pref.data: no preference records (and no labels yet)")
        sft = spec.get("sft")
        losses = [pref.get("loss", "sigmoid")]
        args = DPOConfig(
            **base,
            beta=float(pref["beta"]),
            loss_type=losses,
            label_smoothing=float(pref.get("label_smoothing", 0.0)),
            precompute_ref_log_probs=False,
        )
        # With LoRA and no reference of its own, TRL's reference is the model with the adapter
        # switched off: the stage's starting weights, without a second copy in memory.
        reference = pref.get("reference") or (None if peft_config else spec.model)
        ref = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype) if reference else None
        trainer = HoneDPOTrainer(
            model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.hone_pref_loss = losses[0]
        trainer.hone_sft_weight = float(sft["weight"]) if sft and sft.get("on_chosen") else None

    pool = LivePool([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    total = spec.total_steps(len(pool))
    trainer.args.max_steps = total
    orders = checked_orders(spec, "orders", len(pool))
    trainer.hone_setup(pool, per_device, total, lambdas, orders)
    if spec.kind == "dpo" and trainer.hone_sft_weight is not None and spec.get("sft_orders"):
        sft_orders = checked_orders(spec, "sft_orders", len(pool))
        trainer.hone_sft_order = HoneOrder(pool, per_device, trainer.hone_order.batches, sft_orders)
    trainer.hone_items = items
    trainer.hone_base = len(pool)
    if live is not None:
        trainer.hone_state["label_start"] = label_start

    def admit(pairs: list[dict[str, Any]]) -> list[int]:
        if not pairs:
            return []
        ds = trainer._prepare_dataset(Dataset.from_list(pairs), tokenizer, trainer.args, "labels")
        start = len(pool.rows)
        for i in range(len(ds)):
            pool.rows.append(ds[i])
            pool.active.append(True)
        return list(range(start, len(pool.rows)))

    control_relay = ControlRelay(os.path.join(spec.run_dir, "trl", "control.jsonl"))
    info = {
        "engine": "trl",
        "trainer": type(trainer).__mro__[2].__name__,
        "world_size": world,
        "per_device_batch_size": per_device,
        "grad_accum": int(spec.grad_accum),
        "total_steps": total,
        "examples": {spec.kind if spec.kind == "sft" else "pref": len(pool)},
    }
    callback = HoneCallback(spec, writer, control_relay, signals, live, admit, info)
    callback.trainer = trainer
    trainer.add_callback(callback)

    if checkpoint:
        trainer.hone_lambdas.update(saved.get("lambdas", {}))
        control_relay.offset = int(saved.get("control_offset", 0))
        trainer.hone_state["control_offset"] = control_relay.offset
        for a in saved.get("admissions", []):
            labels = live[a["file"]]
            update = labels.update(limit=a["offset"])
            added = admit([pair for _item, pair in update["added"]])
            retracted = [items[i] for i in update["retracted"] if i in items]
            for (item, _pair), idx in zip(update["added"], added):
                items[item] = idx
            trainer.hone_order.admissions.append({**a, "added": added, "retracted": retracted})
            if trainer.hone_sft_order is not None:
                trainer.hone_sft_order.admissions.append({"pos": a["sft_pos"], "added": added, "retracted": retracted})
            trainer.hone_state["label_offsets"][a["file"]] = update["offset"]
        step = int(saved["global_step"])
        for order in (trainer.hone_order, trainer.hone_sft_order):
            if order is not None:
                order.fast_forward(step * int(spec.grad_accum) * world * per_device)

    trainer.train(resume_from_checkpoint=checkpoint)
    done = trainer.state.global_step >= total
    if trainer.hone_stopped and not done:
        return True
    export_model(trainer, tokenizer, spec.export_dir, spec.stage, callback.step(trainer.state), rank0)
    if rank0 and writer is not None:
        fields = {"steps": trainer.state.global_step, "export": spec.export_dir, "engine": "trl"}
        if trainer.hone_skipped:
            fields["skipped"] = True
        writer.emit("stage_finished", spec.stage, callback.step(trainer.state), **fields)
    return False
