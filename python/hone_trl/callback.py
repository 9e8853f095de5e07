"""The TrainerCallback that makes a TRL run look like a hone stage: events on rank 0, and at each
step boundary the relayed control requests, signals and live labels applied on every rank."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from . import relay

# TRL's log keys that keep their name in hone's events (hone names its metrics as TRL does).
KEPT = (
    "loss", "loss/sft", "loss/pref", "loss/safe", "weighted/pref", "weighted/safe",
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "entropy", "mean_token_accuracy",
)
PAUSE_POLL_S = 0.25


class HoneCallback(TrainerCallback):
    def __init__(self, spec, writer, control_relay, signals, live, admit_fn, info: dict[str, Any]):
        self.spec, self.writer, self.relay, self.signals = spec, writer, control_relay, signals
        self.live = live  # LiveLabels or None
        self.admit_fn = admit_fn  # pairs -> pool indices (tokenizes on every rank)
        self.info = info
        self.trainer = None
        self.rank0 = relay.rank() == 0
        self._tokens: tuple[float, float] | None = None  # (num_tokens, time) at the last log

    def step(self, state) -> int:
        return int(self.spec.step_offset) + int(state.global_step)

    def emit(self, kind: str, state, **fields: Any) -> None:
        if self.rank0 and self.writer is not None:
            self.writer.emit(kind, self.spec.stage, self.step(state), **fields)

    # --- lifecycle -------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        kind = "stage_resumed" if state.global_step > 0 else "stage_started"
        self.emit(kind, state, **self.info)
        self._tokens = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not self.rank0:
            return
        t = self.trainer
        fields: dict[str, Any] = {k: logs[k] for k in KEPT if k in logs}
        lam = t.hone_lambdas
        if self.spec.kind == "sft" and "loss" in logs:
            w = float(self.spec.sft.get("weight", 1.0))
            if w > 0:
                fields["loss/sft"] = logs["loss"] / w
        fields["lambda/pref"] = logs.get("lambda/pref", lam.get("pref", 0.0))
        fields["lambda/safe"] = lam.get("safe", 0.0)
        now = time.monotonic()
        tokens = logs.get("num_tokens")
        if tokens is not None:
            if self._tokens is not None and now > self._tokens[1]:
                fields["tokens_per_second"] = (tokens - self._tokens[0]) / (now - self._tokens[1])
            self._tokens = (tokens, now)
        per_step = t.args.gradient_accumulation_steps * t.accelerator.num_processes * t.hone_order.per_device
        fields["epoch"] = state.global_step * per_step / max(1, t.hone_base)
        fields["stage_step"] = state.global_step
        fields["total_steps"] = state.max_steps
        self.emit("metrics", state, **fields)

    def on_save(self, args, state, control, **kwargs):
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        self.emit("checkpoint_saved", state, path=path, engine="trl")

    # --- the step boundary ------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        requests, problems = self.relay.read_new() if self.rank0 else ([], [])
        return {"requests": requests, "problems": problems, "control_offset": self.relay.offset}

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        payload, signalled = relay.sync(self._payload(), self.signals.received is not None)
        t.hone_state["control_offset"] = payload["control_offset"]
        for message in payload["problems"]:
            self.emit("warning", state, message=message)
        if self.live is not None:
            self._admit(state)
        paused = False
        stop_source = "signal" if signalled else None
        queue = list(payload["requests"])
        while True:
            for req in queue:
                cmd = req["cmd"]
                if cmd == "pause" and not paused:
                    paused = True
                    self.emit("paused", state)
                elif cmd == "resume" and paused:
                    paused = False
                    self.emit("resumed", state, from_step=self.step(state), reason="unpause")
                elif cmd == "stop":
                    stop_source = stop_source or "control"
                elif cmd == "checkpoint_now":
                    control.should_save = True
                elif cmd == "set_lambda":
                    term, value = req.get("term"), req.get("value")
                    ok = term in ("pref", "safe") and isinstance(value, (int, float)) and value >= 0
                    if not ok:
                        self.emit("warning", state, message=f"set_lambda ignored: {req!r}")
                        continue
                    before = t.hone_lambdas.get(term, 0.0)
                    t.hone_lambdas[term] = float(value)
                    self.emit("lambda_changed", state, **{"lambda": term, "from": before, "to": float(value), "reason": "control"})
                elif cmd == "skip_stage":
                    if req.get("stage") not in (None, self.spec.stage):
                        self.emit("warning", state, message=f"skip_stage for stage {req['stage']!r} ignored")
                        continue
                    t.hone_skipped = True
                    control.should_training_stop = True
                    self.emit("stage_skipped", state, stage_step=state.global_step, total_steps=state.max_steps)
                elif cmd in ("generate_candidates", "status"):
                    self.emit("warning", state, message=f"{cmd} is not available on the TRL engine")
            if stop_source is not None or not paused:
                break
            time.sleep(PAUSE_POLL_S)
            payload, signalled = relay.sync(self._payload(), self.signals.received is not None)
            t.hone_state["control_offset"] = payload["control_offset"]
            queue = list(payload["requests"])
            if signalled:
                stop_source = "signal"
        if stop_source is not None:
            if paused:
                self.emit("resumed", state, from_step=self.step(state), reason="unpause")
            self.emit("stop_requested", state, source=stop_source)
            t.hone_stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def _admit(self, state) -> None:
        """Reads the live labels files on rank 0 (to a byte offset shared with every rank), then
        every rank resolves the same bytes and admits the same pairs."""
        offsets = {}
        if self.rank0:
            offsets = {path: _complete_len(path) for path in self.live}
        offsets, _ = relay.sync(offsets, False)
        t = self.trainer
        for path, live in self.live.items():
            if offsets.get(path, 0) <= live.log.offset:
                continue
            update = live.update(limit=offsets[path])
            t.hone_state["label_offsets"][path] = update["offset"]
            for message in update["problems"]:
                self.emit("warning", state, message=message)
            added = self.admit_fn([pair for _item, pair in update["added"]])
            retracted = [t.hone_items[item] for item in update["retracted"] if item in t.hone_items]
            for (item, _pair), idx in zip(update["added"], added):
                t.hone_items[item] = idx
            t.hone_admit(added, retracted, file=path, offset=update["offset"])
            self.emit(
                "labels_admitted", state, count=len(added), retracted=len(retracted),
                held_back=update["held_back"], lines=update["lines"], file=path, byte_offset=update["offset"],
            )


def _complete_len(path: str) -> int:
    """Bytes of `path` up to and including its last newline (0 when missing)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    return data.rfind(b"\n") + 1
