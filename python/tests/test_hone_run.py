"""The TRL engine through the `hone` binary: `hone run` and `hone resume` of a pipeline whose two
stages run on real TRL (torchrun, two CPU processes, gloo) on the tiny Llama fixture: SFT, then
DPO with an SFT term; pause, λ, a label and stop through the run's control socket; a SIGKILL of
the worker's process group and a resume; every stage's export evaluated and gated by hone.
(The same flow once drove `python -m hone_trl` directly; through hone it covers that and the
worker's part, in four launches instead of eight.)

Needs the `hone` binary (`HONE_BIN`, else `target/release/hone`); `.ci/run` builds it first."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FIXTURE, PYTHON, REPO, env, events, wait_for

HONE = Path(os.environ.get("HONE_BIN", REPO / "target" / "release" / "hone"))
LABEL = {
    "id": "l1", "labeler": "ann",
    "prompt": [{"role": "user", "content": "Name a fruit."}],
    "chosen": [{"role": "assistant", "content": "An apple."}],
    "rejected": [{"role": "assistant", "content": "A chair."}],
}


def pipeline(tmp: Path) -> Path:
    suite = tmp / "suite.jsonl"
    with open(suite, "w") as f:
        for i in range(3):
            f.write(json.dumps({
                "id": f"c{i}", "prompt": [{"role": "user", "content": f"What is {i} plus 2?"}],
                "reference": str(i + 2), "kind": "capability",
                "segment": {"language": "en", "domain": "math", "intent": "qa"}, "checks": [{"type": "numeric"}],
            }) + "\n")
    path = tmp / "pipeline.toml"
    path.write_text(f"""[run]
name = "trl"
seed = 42
device = "cpu"
checkpoint_every = 2

[model]
path = "{FIXTURE / 'model'}"

[engine.trl]
python = "{PYTHON}"
launcher = "torchrun"
num_processes = 2

[[stage]]
name = "sft"
engine = "trl"
max_steps = 2
batch_size = 4
lr = 1e-3
max_length = 256
sft = {{ data = ["{FIXTURE / 'sft.jsonl'}"] }}

[[stage]]
name = "dpo"
engine = "trl"
epochs = 20
max_steps = 24
batch_size = 4
lr = 1e-3
max_length = 256
sft = {{ on_chosen = true, weight = 0.5 }}
pref = {{ data = ["{FIXTURE / 'prefs.jsonl'}", "labels.jsonl"], lambda = 0.5, beta = 0.1 }}

[eval]
suite = "{suite}"
baseline = "base"
max_new_tokens = 4
batch_size = 4
""")
    return path


def hone(*args: str) -> subprocess.Popen:
    """`hone ARGS` in a process group of its own (the TRL launcher joins it)."""
    return subprocess.Popen([str(HONE), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env(), start_new_session=True)


def control(run_dir: Path, request: dict) -> dict:
    """One request on the run's control socket, as `hone attach` sends it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(run_dir / "control.sock"))
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply)
    assert answer.get("ok", True), answer
    return answer


def only_run(runs: Path, proc: subprocess.Popen, timeout: float = 60) -> Path:
    """The run directory `hone run` creates, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(runs.iterdir()) if runs.exists() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"hone exited with {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("no run directory")


def of(evs, kind, stage=None):
    return [e for e in evs if e["event"] == kind and (stage is None or e["stage"] == stage)]


@pytest.mark.skipif(not HONE.exists(), reason=f"no hone binary at {HONE} (cargo build --release)")
def test_hone_runs_trl_stages_controls_them_resumes_after_sigkill_and_gates_them(tmp_path):
    runs = tmp_path / "runs"
    p = hone("run", "--headless", "--runs-dir", str(runs), str(pipeline(tmp_path)))
    try:
        run_dir = only_run(runs, p)
        wait_for(run_dir, lambda e: e["event"] == "stage_started" and e["stage"] == "dpo", p, timeout=300)
        control(run_dir, {"cmd": "pause"})
        wait_for(run_dir, lambda e: e["event"] == "paused" and e["stage"] == "dpo", p)
        with open(run_dir / "labels.jsonl", "a") as f:
            f.write(json.dumps(LABEL) + "\n")
        control(run_dir, {"cmd": "set_lambda", "term": "pref", "value": 0.25})
        control(run_dir, {"cmd": "resume"})
        wait_for(run_dir, lambda e: e["event"] == "labels_admitted", p)
        wait_for(run_dir, lambda e: e["event"] == "checkpoint_saved" and e["stage"] == "dpo", p)
        control(run_dir, {"cmd": "stop"})
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, err.decode()[-3000:]
    evs = events(run_dir)
    assert of(evs, "run_finished")[-1]["status"] == "stopped"
    run_toml = (run_dir / "run.toml").read_text()
    assert f"-m torch.distributed.run --standalone --nproc_per_node 2 -m hone_trl --spec {run_dir}/trl/dpo.json" in run_toml
    for stage in ("sft", "dpo"):
        started = of(evs, "stage_started", stage)[0]
        assert (started["engine"], started["world_size"]) == ("trl", 2)
    sft = of(evs, "eval_finished", "sft")
    assert len(sft) == 1 and sft[0]["step"] == 2 and len(of(evs, "gate_decided", "sft")) == 1
    assert (run_dir / "eval" / "sft" / "report.json").is_file()
    metrics = of(evs, "metrics", "dpo")
    for m in metrics:
        assert {"loss/sft", "loss/pref", "weighted/pref", "rewards/margins", "logps/chosen", "grad_norm"} <= m.keys()
        # Each term is logged, and the loss is their λ-weighted sum with the λ of that step.
        assert abs(m["lambda/pref"] * m["loss/pref"] + 0.5 * m["loss/sft"] - m["loss"]) < 1e-4
    changed = of(evs, "lambda_changed", "dpo")[0]
    assert (changed["lambda"], changed["from"], changed["to"], changed["reason"]) == ("pref", 0.5, 0.25, "control")
    # The change takes effect at the step boundary it is logged at (which one depends on when the
    # relayed request reaches the ranks): the old λ before it, the new one from it on.
    assert any(m["step"] > changed["step"] for m in metrics)
    for m in metrics:
        assert m["lambda/pref"] == (0.25 if m["step"] > changed["step"] else 0.5), (m["step"], changed["step"])
    assert of(evs, "labels_admitted")[0]["count"] == 1
    stop = of(evs, "stop_requested", "dpo")[0]
    assert stop["source"] == "control"
    k = stop["step"]
    assert not of(evs, "eval_finished", "dpo")

    resume_after_sigkill(run_dir, k)


def resume_after_sigkill(run_dir, k):
    """A resume SIGKILLed once it has trained a step, then a resume to the end, evaluated and gated."""
    before = len(events(run_dir))
    p = hone("resume", "--headless", str(run_dir))
    try:
        wait_for(run_dir, lambda e: e["event"] == "metrics" and e["stage"] == "dpo" and e["step"] > k
                 and events(run_dir).index(e) >= before, p, timeout=300)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    after_kill = events(run_dir)[before:]
    assert [e["step"] for e in of(after_kill, "stage_resumed", "dpo")] == [k]
    assert not of(after_kill, "stage_started", "sft"), "a finished TRL stage is not launched again"

    # The last resume finishes the stage from its newest checkpoint; hone evaluates and gates it.
    before = len(events(run_dir))
    p = hone("resume", "--headless", str(run_dir))
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, err.decode()[-3000:]
    evs = events(run_dir)
    last = evs[before:]
    assert of(last, "run_finished")[-1]["status"] == "completed"
    resumed = of(last, "stage_resumed", "dpo")[0]
    assert resumed["step"] >= k and resumed["world_size"] == 2
    # The run's `resumed` says where: the dashboard keeps the metrics up to that TRL checkpoint.
    assert of(last, "resumed")[0]["from_step"] == resumed["step"]
    steps = [e["step"] for e in of(last, "metrics", "dpo")]
    assert steps == list(range(resumed["step"] + 1, 2 + 24 + 1))
    assert all(m["lambda/pref"] == 0.25 for m in of(last, "metrics", "dpo"))
    assert not of(last, "labels_admitted")  # restored from the checkpoint, not admitted twice
    assert of(last, "stage_finished", "dpo")[0]["step"] == 26
    dpo_eval = of(last, "eval_finished", "dpo")
    assert len(dpo_eval) == 1 and dpo_eval[0]["step"] == 26
    assert len(of(last, "gate_decided", "dpo")) == 1
    assert (run_dir / "eval" / "dpo" / "report.json").is_file()
    assert (run_dir / "trl" / "dpo" / "model" / "hone_export.json").is_file()
