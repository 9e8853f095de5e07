"""The labels file's resolver, mirroring hone's `src/data/labels.rs` rule for rule.

Record kinds: a preference label (TRL's `{"prompt", "chosen", "rejected"}` plus `id`, optionally
`item`, `labeler`, ...); `{"id", "kind": "tie" | "skip", "item"}`; `{"id", "kind":
"eval_pairwise", ...}` (never trains); any record with `"supersedes": "<id>"` retracts that
earlier record (`"kind": "undo"` records carry nothing else). Resolution: retracted records and
undos are ignored; per item the live labels must agree (one chosen response and no tie) to train;
disagreeing items are held back. Skips never train and never dispute.

`pair_hash` is byte-for-byte hone's item key (sha256 over length-prefixed canonical JSON texts,
first 12 bytes as hex), so a record without `item` files under the same item in both engines.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any


def text_key(text: Any) -> str:
    """The canonical JSON of a text (a string or a message list), as serde_json writes it."""
    return json.dumps(text, ensure_ascii=False, separators=(",", ":"))


def pair_hash(prompt: Any, one: Any, other: Any) -> str:
    """The item key of a prompt and two responses, independent of the responses' order."""
    a, b = text_key(one), text_key(other)
    first, second = (a, b) if a <= b else (b, a)
    h = hashlib.sha256()
    for part in (text_key(prompt), first, second):
        raw = part.encode("utf-8")
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
    return h.digest()[:12].hex()


def _message(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("role"), str):
        return None
    if not isinstance(value.get("content"), str):
        return None
    # serde's struct order: role, content, then the other keys as they came.
    out = {"role": value["role"], "content": value["content"]}
    out.update({k: v for k, v in value.items() if k not in ("role", "content")})
    return out


def _text(obj: dict[str, Any], key: str) -> Any:
    value = obj.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        msgs = [_message(m) for m in value]
        if all(m is not None for m in msgs):
            return msgs
        raise ValueError(f"{key}: expected messages with string role and content")
    if value is None:
        raise ValueError(f"{key}: missing")
    raise ValueError(f"{key}: expected a string or a non-empty list of messages")


def _extract_prompt(chosen: list, rejected: list, is_space) -> tuple[list, list, list] | None:
    """TRL's implicit prompt: the longest common prefix (hone's `extract_prompt`)."""
    n = min(len(chosen), len(rejected))
    if n == 0:
        return None
    idx = n - 1
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i
            if idx > 0 and is_space(chosen[idx - 1]):
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def parse_preference(obj: dict[str, Any]) -> dict[str, Any]:
    """`{"prompt", "chosen", "rejected"}` of a preference record (prompt extracted when absent)."""
    chosen, rejected = _text(obj, "chosen"), _text(obj, "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError("rejected: must be of the same kind as chosen (text or messages)")
    if "prompt" in obj:
        prompt = _text(obj, "prompt")
        if isinstance(prompt, str) != isinstance(chosen, str):
            raise ValueError("prompt: must be of the same kind as chosen (text or messages)")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if isinstance(chosen, str):
        parts = _extract_prompt(list(chosen), list(rejected), lambda ch: ch == " ")
        if parts is None:
            raise ValueError("chosen: implicit prompt: `chosen` and `rejected` must not be empty")
        p, c, r = ("".join(x) for x in parts)
        return {"prompt": p, "chosen": c, "rejected": r}
    parts = _extract_prompt(chosen, rejected, lambda _m: False)
    if parts is None:
        raise ValueError("chosen: implicit prompt: `chosen` and `rejected` must not be empty")
    p, c, r = parts
    return {"prompt": p, "chosen": c, "rejected": r}


@dataclass
class _Record:
    id: str
    item: str
    supersedes: str | None
    verdict: str  # prefer | tie | skip | undo
    pair: dict[str, Any] | None = None


@dataclass
class LabelLog:
    """Reads a growing labels file from a byte offset and keeps the resolution state."""

    path: str
    offset: int = 0
    line_number: int = 0
    records: list[_Record] = field(default_factory=list)

    def read_new(self, limit: int | None = None) -> tuple[int, list[str]]:
        """Reads the complete lines appended since the last call (up to byte `limit` when
        given). Returns (lines read, located problems `path:line:col: field: message`)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0, []
        if limit is not None:
            data = data[: max(0, limit - self.offset)]
        end = data.rfind(b"\n")
        if end < 0:
            return 0, []
        lines, problems = 0, []
        for raw in data[:end].split(b"\n"):
            self.line_number += 1
            self.offset += len(raw) + 1
            lines += 1
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            if not text.strip():
                continue
            try:
                self.records.append(self._parse(text))
            except ValueError as e:
                problems.append(f"{self.path}:{self.line_number}:1: {e}")
        return lines, problems

    def _parse(self, text: str) -> _Record:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"line: {e.msg}") from None
        if not isinstance(value, dict):
            raise ValueError("line: expected a JSON object")
        rid = value.get("id")
        if not isinstance(rid, str):
            raise ValueError("id: missing or not a string")
        sup = value.get("supersedes")
        if sup is not None and not isinstance(sup, str):
            raise ValueError("supersedes: expected the id of an earlier record")
        kind = value.get("kind") if isinstance(value.get("kind"), str) else "preference"
        item = value.get("item") if isinstance(value.get("item"), str) else None
        pair = None
        if kind == "tie":
            verdict = "tie"
        elif kind in ("skip", "eval_pairwise"):
            verdict = "skip"
        elif kind == "undo":
            if sup is None:
                raise ValueError("supersedes: an undo record must name the record it retracts")
            verdict = "undo"
        elif kind == "preference":
            pair = parse_preference(value)
            verdict = "prefer"
        else:
            raise ValueError(f'kind: unknown kind "{kind}" (preference, tie, skip, undo, eval_pairwise)')
        if item is None:
            if pair is not None:
                item = pair_hash(pair["prompt"], pair["chosen"], pair["rejected"])
            elif verdict == "undo":
                item = ""
            else:
                raise ValueError("item: a tie or skip must name the item it judged")
        return _Record(rid, item, sup, verdict, pair)

    def resolve(self) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
        """The pairs that may train now (item, pair) in order of first appearance, and the items
        held back because their labels disagree."""
        retracted = {r.supersedes for r in self.records if r.supersedes is not None}
        order: list[str] = []
        by_item: dict[str, list[_Record]] = {}
        for r in self.records:
            if r.id in retracted or r.verdict == "undo":
                continue
            if r.item not in by_item:
                order.append(r.item)
                by_item[r.item] = []
            by_item[r.item].append(r)
        admitted, held = [], []
        for item in order:
            chosen: dict[str, dict[str, Any]] = {}
            ties = 0
            for r in by_item[item]:
                if r.verdict == "prefer":
                    chosen.setdefault(text_key(r.pair["chosen"]), r.pair)
                elif r.verdict == "tie":
                    ties += 1
            if not chosen:
                continue
            if len(chosen) == 1 and ties == 0:
                admitted.append((item, next(iter(chosen.values()))))
            else:
                held.append(item)
        return admitted, held


class LiveLabels:
    """What the running stage has admitted from one labels file: each `update` returns the pairs
    that newly train and the items that left training (retracted or now disputed), as hone's
    `train::live` does."""

    def __init__(self, path: str):
        self.log = LabelLog(path)
        self.admitted: dict[str, str] = {}  # item -> text_key of what was admitted

    def update(self, limit: int | None = None) -> dict[str, Any]:
        lines, problems = self.log.read_new(limit)
        added, retracted = [], []
        if lines:
            now, held = self.log.resolve()
            live = {item: pair for item, pair in now}
            for item, key in list(self.admitted.items()):
                pair = live.get(item)
                if pair is None or text_key(pair) != key:
                    retracted.append(item)
                    del self.admitted[item]
            for item, pair in now:
                if item not in self.admitted:
                    self.admitted[item] = text_key(pair)
                    added.append((item, pair))
            held_back = len(held)
        else:
            held_back = 0
        return {
            "lines": lines,
            "problems": problems,
            "added": added,
            "retracted": retracted,
            "held_back": held_back,
            "offset": self.log.offset,
        }
