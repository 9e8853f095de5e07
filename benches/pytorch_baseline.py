#!/usr/bin/env python3
"""PyTorch eager baseline for `hone bench --preset cpu-small|cpu-135m --mode sft|dpo|gemm`.

What it measures
----------------
The wall-clock time of one full training step, in plain PyTorch eager mode with a
transformers `LlamaForCausalLM`, on the same fixed shape as hone's `cpu-small` preset:

* model: vocab 4096, hidden 256, 4 layers, 4 heads / 2 KV heads (head_dim 64), MLP 688,
  tied embeddings, rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 1024,
  float32, attention implementation "sdpa";
* batch: 8 sequences x 256 token ids (the same LCG-generated ids as hone, seed 42), the
  first 64 tokens of each sequence masked as prompt (labels -100), i.e. 192 scored
  completion tokens per sequence;
* one step = optimizer.zero_grad, forward, loss, backward, clip_grad_norm_(1.0),
  AdamW(lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0).step.

Modes:

* `--mode sft`: the transformers causal-LM loss (`labels=`), the token-weighted mean NLL over
  the unmasked labels.
* `--mode dpo`: 4 chosen/rejected pairs (rows 0-3 chosen, 4-7 rejected) in one concatenated
  forward; policy sequence log-probs summed over completion tokens (positions >= 64);
  sigmoid DPO loss, beta 0.1:  -logsigmoid(beta * ((pc - rc) - (pr - rr))), mean over pairs.
  Reference log-probs come either from
    `--ref cached`:  computed once up front from the initial model (what hone does), or
    `--ref forward`: a frozen copy of the initial model run under torch.no_grad every step
                     (TRL's default when no precomputed reference log-probs are given).
    `--ref forward` step times include that reference forward.

Memory options (issue 13), compared with `hone bench --lora R --gradient-checkpointing`:

* `--lora R`: PEFT LoRA on the seven projections (`target_modules="all-linear"`), r R, alpha 2R,
  dropout 0, PEFT's default init; only the adapters are trained (AdamW over them alone). With
  `--ref forward` the reference is the same model with its adapters disabled
  (`model.disable_adapter()`), as TRL does with a PEFT model: no second copy.
* `--gradient-checkpointing`: transformers' activation checkpointing on every decoder layer
  (non-reentrant, transformers' default).

The JSON line also carries `peak_rss_bytes`: the whole process's peak resident set size
(`getrusage` ru_maxrss, interpreter and imports included), read after the timed steps, as hone
reports `VmHWM`.

`--preset cpu-135m` is the real 135M Llama shape (SmolLM-135M): vocab 49152, hidden 576,
30 layers, 9 heads / 3 KV heads, MLP 1536, tied, rms_norm_eps 1e-6, batch 8 x 128 with the first
32 tokens masked. `--seq N` / `--batch N` change the batch shape as hone's flags do (the prompt
stays a quarter of the sequence). `--mode gemm` times a 2048 x 2048 f32 matmul (GFLOP/s), the
same yardstick as `hone bench --mode gemm`.

Each step is timed with time.perf_counter; the first --warmup steps are discarded and the
reported number is tokens_per_step (2048) / the median of the timed steps, printed as one JSON
line shaped like hone's:

    {"impl": "pytorch-eager", "torch": ..., "mode": ..., "ref": ..., "threads": ..., "steps": ...,
     "warmup": ..., "tokens_per_step": 2048, "median_step_s": ..., "tokens_per_second": ...,
     "nominal_gflop_per_step": ..., "gflop_per_s": ..., "final_loss": ..., "lora": ...,
     "gradient_checkpointing": ..., "trainable_params": ..., "peak_rss_bytes": ...}

with the same nominal FLOP count as hone (`Preset::nominal_step_flops`: 6 per parameter per
token, the LM head on every position, the full attention matrix).

Note that the HF model computes LM-head logits for all 256 positions (as a normal HF / TRL
training step does), whereas hone only projects the rows that predict a target.

This is a manual comparison tool, NOT part of CI or of `cargo test` / `cargo bench` (CI has no
Python). Run it by hand with a Python that has torch and transformers, e.g.

    python benches/pytorch_baseline.py --mode sft --threads 2
    python benches/pytorch_baseline.py --mode dpo --ref cached --threads 2
    python benches/pytorch_baseline.py --mode dpo --ref forward --threads 2
    python benches/pytorch_baseline.py --preset cpu-135m --mode dpo --steps 2 --warmup 0 \
        --lora 16 --gradient-checkpointing --threads 2

and compare with `target/release/hone bench --preset cpu-small --mode sft|dpo --threads 2`
on the same machine, with nothing else running.
"""

import argparse
import copy
import json
import os
import random
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "cpu-small": dict(vocab=4096, hidden=256, intermediate=688, layers=4, heads=4, kv_heads=2,
                      batch=8, seq=256, prompt=64),
    "cpu-135m": dict(vocab=49152, hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3,
                     batch=8, seq=128, prompt=32),
}
# Set from the preset in main().
P = dict(PRESETS["cpu-small"])
VOCAB = P["vocab"]
BATCH = P["batch"]
SEQ = P["seq"]
PROMPT = P["prompt"]
PAIRS = BATCH // 2
BETA = 0.1
SEED = 0


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def token_ids(seed=42):
    """The same pseudo-random ids as hone's bench (64-bit LCG, `(state >> 33) % vocab`)."""
    vocab = VOCAB
    mask = (1 << 64) - 1
    state = seed
    rows = []
    for _ in range(BATCH):
        row = []
        for _ in range(SEQ):
            state = (state * 6364136223846793005 + 1442695040888963407) & mask
            row.append((state >> 33) % vocab)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def nominal_step_flops():
    """hone's `Preset::nominal_step_flops`, the same formula."""
    h, i, v = P["hidden"], P["intermediate"], P["vocab"]
    kv = h // P["heads"] * P["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
    tokens = BATCH * SEQ
    return 6.0 * (per_layer * P["layers"] + h * v) * tokens + 12.0 * SEQ * h * P["layers"] * tokens


def gemm(runs, n=2048):
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        a @ b
        if i > 0:
            times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def build_model():
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=P["hidden"],
        intermediate_size=P["intermediate"],
        num_hidden_layers=P["layers"],
        num_attention_heads=P["heads"],
        num_key_value_heads=P["kv_heads"],
        head_dim=P["hidden"] // P["heads"],
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=max(1024, SEQ),
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.config.use_cache = False
    return model


def with_lora(model, r):
    """The model wrapped by PEFT: a LoRA of rank r (alpha 2r, dropout 0) on every projection."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def sequence_logps(model, input_ids, labels):
    """Per-sequence sum of log p(label) over the unmasked (completion) targets, TRL-style."""
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != -100
    safe = targets.masked_fill(~mask, 0)
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def dpo_loss(policy, ref):
    logits = (policy[:PAIRS] - ref[:PAIRS]) - (policy[PAIRS:] - ref[PAIRS:])
    return -F.logsigmoid(BETA * logits).mean()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=["sft", "dpo", "gemm"], default="sft")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--seq", type=int, help="tokens per sequence (prompt = a quarter)")
    parser.add_argument("--batch", type=int, help="sequences per step (even)")
    parser.add_argument("--ref", choices=["cached", "forward"], default="cached",
                        help="DPO reference log-probs: cached once up front, or a frozen "
                             "reference forward under no_grad every step (ignored for sft)")
    parser.add_argument("--lora", type=int, metavar="R",
                        help="train a PEFT LoRA of rank R (alpha 2R, all-linear) instead of every weight")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each decoder layer's activations in the backward pass")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.lora is not None and args.lora < 1:
        parser.error("--lora must be at least 1")

    torch.set_num_threads(args.threads)
    global VOCAB, BATCH, SEQ, PROMPT, PAIRS
    P.update(PRESETS[args.preset])
    if args.seq:
        P["seq"], P["prompt"] = args.seq, args.seq // 4
    if args.batch:
        P["batch"] = args.batch
    VOCAB, BATCH, SEQ, PROMPT = P["vocab"], P["batch"], P["seq"], P["prompt"]
    PAIRS = BATCH // 2
    if args.mode == "gemm":
        print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "mode": "gemm", "n": 2048,
                          "threads": torch.get_num_threads(), "runs": args.steps,
                          "gflop_per_s": gemm(args.steps)}))
        return
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    model = build_model()
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if args.lora:
        model = with_lora(model, args.lora)
    model.train()
    input_ids = token_ids()
    labels = input_ids.clone()
    labels[:, :PROMPT] = -100

    ref_model = None
    ref_logps = None
    if args.mode == "dpo":
        if args.ref == "forward" and args.lora:
            ref_model = model  # run with its adapters disabled below
        elif args.ref == "forward":
            ref_model = copy.deepcopy(model)
            ref_model.eval()
            ref_model.requires_grad_(False)
        else:
            with torch.no_grad():
                ref_logps = sequence_logps(model, input_ids, labels)

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)

    times = []
    loss_value = float("nan")
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if args.mode == "sft":
            loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
        else:
            policy = sequence_logps(model, input_ids, labels)
            if ref_model is model:
                with torch.no_grad(), model.disable_adapter():
                    ref = sequence_logps(model, input_ids, labels)
            elif ref_model is not None:
                with torch.no_grad():
                    ref = sequence_logps(ref_model, input_ids, labels)
            else:
                ref = ref_logps
            loss = dpo_loss(policy, ref)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        loss_value = loss.item()
        elapsed = time.perf_counter() - start
        if i >= args.warmup:
            times.append(elapsed)

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    med = statistics.median(times)
    tokens = BATCH * SEQ
    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "preset": args.preset,
        "mode": args.mode,
        "batch": BATCH,
        "seq": SEQ,
        "ref": args.ref if args.mode == "dpo" else None,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_step": tokens,
        "median_step_s": med,
        "tokens_per_second": tokens / med,
        "nominal_gflop_per_step": nominal_step_flops() / 1e9,
        "gflop_per_s": nominal_step_flops() / med / 1e9,
        "final_loss": loss_value,
        "lora": args.lora,
        "gradient_checkpointing": args.gradient_checkpointing,
        "trainable_params": sum(p.numel() for p in trainable),
        "peak_rss_bytes": peak_rss,
    }))


if __name__ == "__main__":
    main()
