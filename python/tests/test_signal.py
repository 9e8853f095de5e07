"""SIGTERM (as hone's worker group gets it) ends a TRL stage at the next step boundary with a
checkpoint and no export; running it again resumes from that checkpoint and finishes."""

import os
import signal

from conftest import FIXTURE, events, relay, spec, start, wait_for


def test_sigterm_checkpoints_then_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "launcher.log"
    sft = spec(run_dir, "sft", "sft", FIXTURE / "model", max_steps=3, batch_size=2,
               sft={"data": [str(FIXTURE / "sft.jsonl")], "weight": 1.0, "on_chosen": False})
    relay(run_dir, {"cmd": "pause"})
    p = start(sft, 1, log)
    wait_for(run_dir, lambda e: e["event"] == "paused", p)
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=120) == 0, log.read_text()[-3000:]
    kinds = [(e["event"], e["step"]) for e in events(run_dir)]
    assert ("stop_requested", 1) in kinds and ("checkpoint_saved", 1) in kinds
    assert not (run_dir / "trl" / "sft" / "model").exists()
    assert [e["source"] for e in events(run_dir) if e["event"] == "stop_requested"] == ["signal"]
    relay(run_dir, {"cmd": "resume"})
    p = start(sft, 1, log)
    assert p.wait(timeout=240) == 0, log.read_text()[-3000:]
    after = events(run_dir)
    assert [e["step"] for e in after if e["event"] == "stage_resumed"] == [1]
    assert [e["step"] for e in after if e["event"] == "metrics"] == [1, 2, 3]
    assert os.path.isfile(run_dir / "trl" / "sft" / "model" / "hone_export.json")
