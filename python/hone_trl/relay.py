"""Control requests relayed from hone's worker, and the one collective that makes every rank see
the same requests, labels and signals at the same step boundary.

The relay is a file: hone's worker appends each control request it accepts on its socket as one
JSON line (`{"cmd": "pause"}`, `{"cmd": "set_lambda", "term": "pref", "value": 0.3}`, ...: the
socket protocol's own request objects) to `<run>/trl/control.jsonl`. Rank 0 reads the complete
lines past its offset at each step boundary; the offset is saved in every checkpoint, so a
resumed run never applies a request twice. A file is durable (a request sent while the ranks
are between steps, or restarting, is not lost), needs no port, and a test drives it by
appending a line.

At each boundary all ranks call `Boundary.sync`: an all-reduce of the local signal flags
(SIGTERM/SIGINT on any rank stops all of them) and a broadcast of rank 0's payload (requests,
label updates). Nothing else crosses ranks, so every rank applies the same changes at the same
step."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import torch
import torch.distributed as dist

CONTROL_FILE = "control.jsonl"
KNOWN = {"pause", "resume", "stop", "skip_stage", "set_lambda", "checkpoint_now", "generate_candidates", "status"}


class ControlRelay:
    """Reads new complete request lines from the relay file (rank 0 only)."""

    def __init__(self, path: str, offset: int = 0):
        self.path = path
        self.offset = offset

    def read_new(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Requests appended since the last read, and located problems with bad lines."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return [], []
        end = data.rfind(b"\n")
        if end < 0:
            return [], []
        requests, problems = [], []
        for raw in data[:end].split(b"\n"):
            self.offset += len(raw) + 1
            if not raw.strip():
                continue
            try:
                req = json.loads(raw)
            except json.JSONDecodeError as e:
                problems.append(f"{self.path}: line at byte {self.offset - len(raw) - 1}: {e.msg}")
                continue
            if not isinstance(req, dict) or req.get("cmd") not in KNOWN:
                problems.append(f"{self.path}: cmd: unknown request {raw[:80]!r}")
                continue
            requests.append(req)
        return requests, problems


class Signals:
    """SIGTERM and SIGINT set a flag (checked at the next step boundary) instead of killing."""

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if distributed() else int(os.environ.get("RANK", "0"))


def sync(payload: Any, signalled: bool) -> tuple[Any, bool]:
    """Rank 0's payload on every rank, and whether any rank was signalled."""
    if not distributed():
        return payload, signalled
    flag = torch.tensor([1 if signalled else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    box = [payload if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0], bool(flag.item())
