#!/usr/bin/env python3
"""`hone run` of an SFT stage against TRL's SFTTrainer at the 135M Llama shape, same records.

What it measures (issue 12, goal 2): a model of the `cpu-135m` shape (vocab 49152, hidden 576,
30 layers, 9 / 3 heads, MLP 1536, tied; float32) initialised from scratch, trained for 8 steps of
batch 8 at max_length 128 on the same 64 chat records (each longer than 128 tokens, so every
sequence is cut to exactly 128 tokens by both), lr 1e-4, no warmup, clipping at 1.0:

* hone: `hone run PIPELINE --headless` (`[model] init = "scratch"`); the step time is each
  `metrics` event's `tokens_per_second` turned back into seconds;
* TRL: `SFTTrainer` with `assistant_only_loss=True` (hone's SFT term trains on the assistant
  tokens too), `save_strategy="no"`, then `trainer.save_model` (the final checkpoint, as hone
  writes one); the step time is the wall time between TrainerCallback.on_step_begin/on_step_end.

Both sides train the same way, chosen by `--match`:

* `f32` (the default): float32 end to end, every activation kept for the backward pass. TRL is
  told `bf16=False, gradient_checkpointing=False`, because SFTConfig's own defaults are neither;
* `trl-defaults`: SFTConfig's defaults, bf16 autocast over float32 weights and gradient
  checkpointing; hone gets the same with `[run] dtype = "bf16"` and `gradient_checkpointing = true`.

Both: the median of steps 2..8 (the first step is warm-up) and the whole process's peak resident
set size (`/usr/bin/time -f %M`), final checkpoint included. The tokenizer is the sample world's
(vocab 1024; its ids are valid in the 49152-wide embedding).

Manual tool, not CI. Usage (2 threads each, the malloc settings of ../shared/torch_bench):

    python benches/sft_vs_trl.py --hone target/release/hone --rounds 2 [--match f32|trl-defaults]

Run it with a Python that has torch, transformers and trl (e.g. /work/venv/bin/python).
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPE = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
    "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 3, "pad_token_id": 1, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "dtype": "float32",
}
# What `--match` sets on each side (see the module's notes).
HONE_RUN = {"f32": "", "trl-defaults": 'dtype = "bf16"\ngradient_checkpointing = true\n'}
TRL_ARGS = {"f32": {"bf16": False, "gradient_checkpointing": False}, "trl-defaults": {}}
ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "8589934592", "MALLOC_TOP_PAD_": "268435456",
    "RAYON_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "TORCH_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
}


def prepare(work: pathlib.Path, match: str) -> pathlib.Path:
    model = work / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(SHAPE, indent=1))
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(ROOT / "sample-data/model" / f, model / f)
    answers = [json.loads(line)["messages"][-1]["content"] for line in open(ROOT / "sample-data/sft.jsonl")]
    with open(work / "sft.jsonl", "w") as out:
        for i in range(64):
            text = " ".join(answers[(i * 40 + j) % len(answers)] for j in range(40))
            rec = {"messages": [{"role": "user", "content": f"Tell me about record {i}."},
                                {"role": "assistant", "content": text}]}
            out.write(json.dumps(rec) + "\n")
    (work / "pipeline.toml").write_text(
        '[run]\nname = "sft135"\nseed = 1\ncheckpoint_every = 0\n' + HONE_RUN[match] +
        '\n[model]\npath = "model"\ninit = "scratch"\n\n'
        '[[stage]]\nname = "sft"\nmax_steps = 8\nbatch_size = 8\nlr = 1e-4\nwarmup_steps = 0\n'
        'max_length = 128\nschedule = "constant"\nsft = { data = ["sft.jsonl"] }\n')
    return work


def timed(cmd, env):
    """Runs cmd under /usr/bin/time; returns (stdout, peak RSS bytes)."""
    rss = pathlib.Path(tempfile.mktemp())
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss)] + cmd, env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout, int(rss.read_text().split()[-1]) * 1024


def run_hone(hone, work, env):
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    _, peak = timed([hone, "run", str(work / "pipeline.toml"), "--headless", "--runs-dir", str(runs)], env)
    events = next(runs.glob("*/events.jsonl"))
    steps = []
    for line in open(events):
        e = json.loads(line)
        if e.get("kind", e.get("event")) == "metrics":
            f = e.get("fields", e)
            steps.append(1024 / f["tokens_per_second"])
    return steps, peak


def run_trl(work, env, match):
    out, peak = timed([sys.executable, __file__, "--trl-child", str(work), match], env)
    return json.loads(out.strip().splitlines()[-1])["steps"], peak


def trl_child(work: pathlib.Path, match: str):
    import time

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(work / "model")
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(work / "model")).float()
    rows = [json.loads(line) for line in open(work / "sft.jsonl")]
    steps, start = [], [0.0]

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            start[0] = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - start[0])

    args = SFTConfig(output_dir=str(work / "trl_out"), max_steps=8, per_device_train_batch_size=8,
                     learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
                     max_length=128, assistant_only_loss=True, packing=False, logging_steps=1,
                     save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=1,
                     dataset_num_proc=None, **TRL_ARGS[match])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    trainer.save_model(str(work / "trl_out" / "final"))
    print(json.dumps({"steps": steps}))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--trl-child":
        trl_child(pathlib.Path(sys.argv[2]), sys.argv[3])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--hone", default=str(ROOT / "target/release/hone"))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--match", choices=sorted(HONE_RUN), default="f32")
    p.add_argument("--only", choices=["hone", "trl"], help="run one side only")
    a = p.parse_args()
    env = dict(os.environ, **ENV)
    with tempfile.TemporaryDirectory() as tmp:
        work = prepare(pathlib.Path(tmp), a.match)
        sides = [("hone", lambda: run_hone(a.hone, work, env)), ("trl", lambda: run_trl(work, env, a.match))]
        for r in range(a.rounds):
            for name, f in [(n, f) for n, f in sides if a.only in (None, n)]:
                load = os.getloadavg()[0]
                steps, peak = f()
                med = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
                print(json.dumps({"impl": name, "round": r, "steps": len(steps), "median_step_s": round(med, 3),
                                  "peak_rss_bytes": peak, "load_average_1m": load, "match": a.match}), flush=True)


if __name__ == "__main__":
    main()
