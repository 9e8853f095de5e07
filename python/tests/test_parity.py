"""With one process, hone's data order and the same seed, TRL's first step has hone's native loss
(1e-4), both run by `hone run`: the same pipeline once on hone's engine and once with
`engine = "trl"` on every stage.

The SFT stage's batch (2 of the fixture's 8 records) is the first batch of hone's seeded sampler,
not the files' first two records, so the loss only matches if the worker feeds TRL hone's order
(the spec's `orders`); the test checks that the two differ. The DPO stage with an SFT term takes
4 of the 8 pairs per batch; the native engine draws its SFT-on-chosen term from a sampler of its
own, so its chosen responses are other pairs' than the preference batch's (the spec's
`sft_orders`, checked to differ too): each term and their λ-weighted sum must agree, and the DPO
stage's step 1 starts from the SFT stage's update, so that agrees as well. Needs the `hone` binary
(`HONE_BIN`, else `target/release/hone`)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURE, PYTHON, REPO, env, events

HONE = Path(os.environ.get("HONE_BIN", REPO / "target" / "release" / "hone"))


def pipeline(path: Path, engine: str) -> None:
    trl = f'[engine.trl]\npython = "{PYTHON}"\nlauncher = "torchrun"\nnum_processes = 1\n' if engine == "trl" else ""
    path.write_text(f"""[run]
name = "parity-{engine}"
seed = 42
device = "cpu"
checkpoint_every = 0
sample_every = 0

[model]
path = "{FIXTURE / 'model'}"

{trl}
[[stage]]
name = "sft"
engine = "{engine}"
max_steps = 1
batch_size = 2
lr = 1e-3
schedule = "constant"
max_length = 256
[stage.sft]
data = ["{FIXTURE / 'sft.jsonl'}"]

[[stage]]
name = "dpo"
engine = "{engine}"
max_steps = 1
batch_size = 4
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


def run(tmp: Path, engine: str) -> Path:
    path = tmp / f"{engine}.toml"
    pipeline(path, engine)
    out = subprocess.run([str(HONE), "run", "--headless", "--runs-dir", str(tmp / engine), str(path)],
                         capture_output=True, text=True, timeout=400, env=env())
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HONE.exists(), reason=f"no hone binary at {HONE} (cargo build --release)")
def test_first_step_loss_equals_hone_native_in_hones_order(tmp_path):
    native_dir, trl_dir = run(tmp_path, "hone"), run(tmp_path, "trl")
    native = {e["stage"]: e for e in events(native_dir) if e["event"] == "metrics"}
    trl = {e["stage"]: e for e in events(trl_dir) if e["event"] == "metrics"}
    spec = json.loads((trl_dir / "trl" / "sft.json").read_text())
    first = spec["orders"][0][:2]
    assert sorted(spec["orders"][0]) == list(range(8)) and first != [0, 1], first
    dpo = json.loads((trl_dir / "trl" / "dpo.json").read_text())
    pref, sft = dpo["orders"][0][:4], dpo["sft_orders"][0][:4]
    assert sorted(dpo["orders"][0]) == sorted(dpo["sft_orders"][0]) == list(range(8))
    # Shuffled, and the two terms' first batches are not the same pairs.
    assert pref != [0, 1, 2, 3] and sorted(pref) != sorted(sft), (pref, sft)
    for stage in ("sft", "dpo"):
        assert abs(trl[stage]["loss"] - native[stage]["loss"]) < 1e-4, (stage, trl[stage]["loss"], native[stage]["loss"])
    assert abs(trl["dpo"]["loss/sft"] - native["dpo"]["loss/sft"]) < 1e-4
    assert abs(trl["dpo"]["loss/pref"] - native["dpo"]["loss/pref"]) < 1e-4
    assert trl["dpo"]["step"] == native["dpo"]["step"] == 2
