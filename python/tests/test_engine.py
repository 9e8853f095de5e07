"""Real TRL, two processes (torchrun, gloo, CPU) on the tiny Llama fixture: SFT then DPO with an
SFT term, hone's events with per-term losses, pause/λ/stop through the control relay, a label
admitted mid-stage, a stop and a SIGKILL each resumed from the newest checkpoint, and the
exported models."""

import json
import os

from conftest import FIXTURE, events, kill_all, relay, run, spec, start, wait_for

LABEL = {
    "id": "l1", "labeler": "ann",
    "prompt": [{"role": "user", "content": "Name a fruit."}],
    "chosen": [{"role": "assistant", "content": "An apple."}],
    "rejected": [{"role": "assistant", "content": "A chair."}],
}


def of(run_dir, kind, stage):
    return [e for e in events(run_dir) if e["event"] == kind and e["stage"] == stage]


def test_two_processes_sft_then_dpo_controlled_labeled_stopped_killed_resumed(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "launcher.log"
    sft = spec(run_dir, "sft", "sft", FIXTURE / "model", max_steps=2,
               sft={"data": [str(FIXTURE / "sft.jsonl")], "weight": 1.0, "on_chosen": False})
    assert run(sft, 2, log) == 0, log.read_text()[-3000:]
    started = of(run_dir, "stage_started", "sft")[0]
    assert (started["engine"], started["world_size"], started["per_device_batch_size"]) == ("trl", 2, 2)
    metrics = of(run_dir, "metrics", "sft")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["loss/sft"] == m["loss"] and m["learning_rate"] > 0 and "grad_norm" in m for m in metrics)
    sft_model = run_dir / "trl" / "sft" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "hone_export.json"} <= set(os.listdir(sft_model))

    dpo = spec(run_dir, "dpo", "dpo", sft_model, epochs=20, max_steps=30, checkpoint_every=2, step_offset=2,
               sft={"data": [], "weight": 0.5, "on_chosen": True},
               pref={"data": [str(FIXTURE / "prefs.jsonl")], "live": [str(run_dir / "labels.jsonl")],
                     "lambda": 0.5, "beta": 0.1, "loss": "sigmoid"})
    labels = run_dir / "labels.jsonl"
    relay(run_dir, {"cmd": "pause"})
    p = start(dpo, 2, log)
    paused = wait_for(run_dir, lambda e: e["event"] == "paused", p)
    assert paused["step"] == 3
    with open(labels, "a") as f:
        f.write(json.dumps(LABEL) + "\n")
    relay(run_dir, {"cmd": "set_lambda", "term": "pref", "value": 0.25})
    relay(run_dir, {"cmd": "resume"})
    admitted = wait_for(run_dir, lambda e: e["event"] == "labels_admitted", p)
    assert (admitted["count"], admitted["byte_offset"]) == (1, labels.stat().st_size)
    relay(run_dir, {"cmd": "stop"})
    assert p.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert not (run_dir / "trl" / "dpo" / "model").exists()
    stop = of(run_dir, "stop_requested", "dpo")[0]
    assert stop["source"] == "control"
    k = stop["step"]
    assert of(run_dir, "checkpoint_saved", "dpo")[-1]["step"] == k and 4 <= k < 32
    assert not of(run_dir, "stage_finished", "dpo")
    started = of(run_dir, "stage_started", "dpo")[0]
    assert (started["world_size"], started["total_steps"]) == (2, 30)
    changed = of(run_dir, "lambda_changed", "dpo")[0]
    assert (changed["lambda"], changed["from"], changed["to"], changed["step"]) == ("pref", 0.5, 0.25, 3)
    metrics = of(run_dir, "metrics", "dpo")
    for m in metrics:
        assert {"loss", "loss/sft", "loss/pref", "weighted/pref", "rewards/margins", "logps/chosen"} <= m.keys()
        assert abs(m["lambda/pref"] * m["loss/pref"] + 0.5 * m["loss/sft"] - m["loss"]) < 1e-4
    assert [m["lambda/pref"] for m in metrics[:2]] == [0.5, 0.25]

    # Resume from the stop's checkpoint, pause it, and SIGKILL every process of the group.
    relay(run_dir, {"cmd": "pause"})
    p = start(dpo, 2, log)
    wait_for(run_dir, lambda e: e["event"] == "stage_resumed" and e["stage"] == "dpo", p)
    wait_for(run_dir, lambda e: e["event"] == "paused" and e["step"] == k + 1, p)
    kill_all(p)  # the ranks die with their launcher (PR_SET_PDEATHSIG), or the resume below hangs

    # The newest checkpoint is still the stop's: the pause after it is read again, then resumed.
    before = len(events(run_dir))
    p = start(dpo, 2, log)
    wait_for(run_dir, lambda e: e["event"] == "paused" and e["step"] == k + 1 and events(run_dir).index(e) >= before, p)
    relay(run_dir, {"cmd": "resume"})
    assert p.wait(timeout=240) == 0, log.read_text()[-3000:]
    after = events(run_dir)[before:]
    resumed = [e for e in after if e["event"] == "stage_resumed"][0]
    assert resumed["step"] == k and resumed["world_size"] == 2
    steps = [e["step"] for e in after if e["event"] == "metrics"]
    assert steps == list(range(k + 1, 33))
    assert all(e["lambda/pref"] == 0.25 for e in after if e["event"] == "metrics")
    assert not [e for e in after if e["event"] == "labels_admitted"]  # restored, not admitted twice
    finished = of(run_dir, "stage_finished", "dpo")[0]
    assert (finished["step"], finished["steps"]) == (32, 30)
    assert os.path.isfile(run_dir / "trl" / "dpo" / "model" / "model.safetensors")
