"""Appends hone events to a run's events.jsonl under hone's rules (src/run/events.rs).

Every line is one flat JSON object: `{"ts": <unix ms>, "event", "stage", "step", <fields>}`.
Each event is one `os.write` of the whole line plus '\\n' on an `O_APPEND` descriptor, so lines
from this process and from hone's worker (which also appends) never interleave, and a line is
only ever torn at the end of the file if a writer dies mid-write. This writer never truncates:
cutting a torn tail is the job of the process holding the run's worker lock (hone's worker).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

RESERVED = ("ts", "event", "stage", "step")


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become null, as serde_json writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def event_line(kind: str, stage: str | None, step: int | None, fields: dict[str, Any]) -> str:
    """The JSON line (without newline) of one event; a reserved key in `fields` is an error."""
    clash = [k for k in RESERVED if k in fields]
    if clash:
        raise ValueError(f"event field {clash[0]!r} clashes with a reserved key")
    obj: dict[str, Any] = {"ts": int(time.time() * 1000), "event": kind, "stage": stage, "step": step}
    obj.update(_clean(fields))
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class EventWriter:
    """Appends events to one events.jsonl (opened once, `O_APPEND`)."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, kind: str, stage: str | None, step: int | None, **fields: Any) -> None:
        """Appends one event as a single write."""
        data = (event_line(kind, stage, step, fields) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a regular file on a local disk writes it whole; say so if not
            raise OSError(f"{self.path}: short append ({written} of {len(data)} bytes)")

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_events(path: str) -> list[dict[str, Any]]:
    """Every complete line of an events file, parsed (a torn last line is left out)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n")
    if end < 0:
        return []
    return [json.loads(line) for line in data[:end].split(b"\n") if line.strip()]
