"""With one process, hone's data order and seed, TRL's first step has hone's native loss (1e-4).

Both stages use a batch of the whole fixture file (8 records), so the loss of step 1 does not
depend on the order examples are drawn in; step 1 of the DPO stage runs after one AdamW step of
the SFT stage on each engine, so it also checks that the two SFT updates agree. The native
numbers come from `target/release/hone` when it is built (CI builds it before these tests) and
otherwise from values recorded with the same command:
    hone run --headless --runs-dir RUNS tests/native.toml  (the file `native_pipeline` writes)
"""

import json
import os
import subprocess
from pathlib import Path

from conftest import FIXTURE, REPO, events, run, spec

RECORDED = {"sft": 9.01122760772705, "dpo": 4.717136383056641}


def native_pipeline(path: Path) -> None:
    path.write_text(f"""[run]
name = "parity"
seed = 42
checkpoint_every = 0
sample_every = 0

[model]
path = "{FIXTURE / 'model'}"

[[stage]]
name = "sft"
max_steps = 1
batch_size = 8
lr = 1e-3
schedule = "constant"
max_length = 256
[stage.sft]
data = ["{FIXTURE / 'sft.jsonl'}"]

[[stage]]
name = "dpo"
max_steps = 1
batch_size = 8
lr = 1e-3
schedule = "constant"
max_length = 256
[stage.sft]
on_chosen = true
weight = 0.5
[stage.pref]
data = ["{FIXTURE / 'prefs.jsonl'}"]
lambda = 0.5
beta = 0.1
reference = "{FIXTURE / 'ref'}"
""")


def native_losses(tmp_path: Path) -> dict[str, float]:
    hone = Path(os.environ.get("HONE_BIN", REPO / "target" / "release" / "hone"))
    if not hone.exists():
        return RECORDED
    pipeline = tmp_path / "native.toml"
    native_pipeline(pipeline)
    out = subprocess.run([str(hone), "run", "--headless", "--runs-dir", str(tmp_path / "runs"), str(pipeline)],
                         capture_output=True, text=True, timeout=120, check=True)
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    return {e["stage"]: e["loss"] for e in events(run_dir) if e["event"] == "metrics"}


def test_first_step_loss_equals_hone_native(tmp_path):
    native = native_losses(tmp_path)
    run_dir = tmp_path / "run"
    common = dict(batch_size=8, max_steps=1, lr=1e-3, schedule="constant")
    sft = spec(run_dir, "sft", "sft", FIXTURE / "model",
               sft={"data": [str(FIXTURE / "sft.jsonl")], "weight": 1.0, "on_chosen": False}, **common)
    assert run(sft, 1, tmp_path / "log") == 0
    dpo = spec(run_dir, "dpo", "dpo", run_dir / "trl" / "sft" / "model", step_offset=1,
               sft={"data": [], "weight": 0.5, "on_chosen": True},
               pref={"data": [str(FIXTURE / "prefs.jsonl")], "live": [], "lambda": 0.5, "beta": 0.1,
                     "loss": "sigmoid", "reference": str(FIXTURE / "ref")}, **common)
    assert run(dpo, 1, tmp_path / "log") == 0, (tmp_path / "log").read_text()[-3000:]
    trl = {e["stage"]: e for e in events(run_dir) if e["event"] == "metrics"}
    assert abs(trl["sft"]["loss"] - native["sft"]) < 1e-4, (trl["sft"]["loss"], native["sft"])
    assert abs(trl["dpo"]["loss"] - native["dpo"]) < 1e-4, (trl["dpo"]["loss"], native["dpo"])
    assert trl["dpo"]["step"] == 2 and trl["dpo"]["lambda/pref"] == 0.5
