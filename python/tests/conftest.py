"""Shared helpers: stage specs on the tiny Llama fixture and launching hone_trl as hone does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "llama"
PYTHON = sys.executable


def spec(run_dir: Path, stage: str, kind: str, model: Path, **over) -> Path:
    """Writes `<run>/trl/<stage>.json` (the file hone's src/run/trl.rs writes) and returns it."""
    raw = {
        "run_dir": str(run_dir), "stage": stage, "kind": kind, "model": str(model),
        "output_dir": str(run_dir / "trl" / stage / "checkpoints"),
        "export_dir": str(run_dir / "trl" / stage / "model"),
        "seed": 42, "device": "cpu", "dtype": "f32", "lr": 1e-3, "schedule": "constant",
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "max_length": 256,
        "epochs": 1, "max_steps": None, "batch_size": 4, "grad_accum": 1, "log_every": 1,
        "checkpoint_every": 0, "keep_checkpoints": 3, "step_offset": 0,
    }
    raw.update(over)
    path = run_dir / "trl" / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    return path


def command(spec_path: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [PYTHON, "-m", "hone_trl", "--spec", str(spec_path)]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "hone_trl", "--spec", str(spec_path)]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return e


def start(spec_path: Path, nproc: int, log: Path) -> subprocess.Popen:
    """Starts a stage in its own process group (as hone's worker does)."""
    out = open(log, "ab")
    return subprocess.Popen(command(spec_path, nproc), stdout=out, stderr=subprocess.STDOUT, env=env(),
                            start_new_session=True)


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group (as a crash of hone's worker group would)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def run(spec_path: Path, nproc: int, log: Path, timeout: float = 240) -> int:
    p = start(spec_path, nproc, log)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


def wait_for(run_dir: Path, pred, proc: subprocess.Popen, timeout: float = 180) -> dict:
    """The first event matching `pred`, polling the file; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(run_dir):
            if pred(e):
                return e
        if proc.poll() is not None:
            for e in events(run_dir):
                if pred(e):
                    return e
            pytest.fail(f"process exited with {proc.returncode} before the awaited event")
        time.sleep(0.05)
    pytest.fail("timed out waiting for an event")


def relay(run_dir: Path, request: dict) -> None:
    """What hone's worker does with a control request on the TRL engine."""
    path = run_dir / "trl" / "control.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(request) + "\n")
