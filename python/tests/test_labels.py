"""The label resolver mirrors hone's src/data/labels.rs."""

import json

from hone_trl.labels import LabelLog, LiveLabels, pair_hash


def write(path, *records):
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def pref(i, chosen, rejected, prompt="p", **kw):
    return {"id": i, "prompt": prompt, "chosen": chosen, "rejected": rejected, **kw}


def test_pair_hash_matches_hone():
    # The same value is asserted by src/run/trl.rs's `pair_hash_is_shared_with_python`.
    assert pair_hash("What is 2+2?", "4", "5") == pair_hash("What is 2+2?", "5", "4")
    assert pair_hash("What is 2+2?", "4", "5") == "6dd3b676725a39b4e21d85f2"
    msgs = [{"role": "user", "content": "hé"}]
    assert pair_hash(msgs, [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]) == "a44d84b3dd7669173722f39c"


def test_supersede_undo_tie_and_held_back(tmp_path):
    path = tmp_path / "labels.jsonl"
    write(path, pref("a", "good", "bad"), pref("b", "x", "y", prompt="q"), pref("c", "y", "x", prompt="q"))
    log = LabelLog(str(path))
    log.read_new()
    admitted, held = log.resolve()
    assert [p["chosen"] for _, p in admitted] == ["good"]
    assert len(held) == 1  # b and c disagree about the same item
    write(path, {"id": "d", "kind": "undo", "supersedes": "c"})
    log.read_new()
    admitted, held = log.resolve()
    assert [p["chosen"] for _, p in admitted] == ["good", "x"] and held == []
    item = pair_hash("p", "good", "bad")
    write(path, {"id": "e", "kind": "tie", "item": item})
    log.read_new()
    admitted, held = log.resolve()
    assert [p["chosen"] for _, p in admitted] == ["x"] and held == [item]
    write(path, {"id": "f", "kind": "skip", "item": "other"}, {"id": "g", "kind": "eval_pairwise", "item": "z"})
    lines, problems = log.read_new()
    assert lines == 2 and problems == []


def test_bad_lines_are_located_and_torn_tail_waits(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": 1}\n{"id": "u", "kind": "undo"}\n{"id": "t", "prompt": "p", "chosen": "a", "rej')
    log = LabelLog(str(path))
    lines, problems = log.read_new()
    assert lines == 2
    assert problems[0].startswith(f"{path}:1:1: id:")
    assert problems[1].startswith(f"{path}:2:1: supersedes:")
    with open(path, "a") as f:
        f.write('ected": "b"}\n')
    lines, problems = log.read_new()
    assert lines == 1 and problems == [] and len(log.resolve()[0]) == 1


def test_live_labels_admit_and_retract(tmp_path):
    path = tmp_path / "labels.jsonl"
    live = LiveLabels(str(path))
    write(path, pref("a", "good", "bad"))
    u = live.update()
    assert len(u["added"]) == 1 and u["retracted"] == []
    write(path, {"id": "b", "kind": "undo", "supersedes": "a"})
    u = live.update()
    assert u["added"] == [] and len(u["retracted"]) == 1


def test_implicit_prompt_as_hone_extracts_it(tmp_path):
    path = tmp_path / "labels.jsonl"
    write(path, {"id": "a", "chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"})
    log = LabelLog(str(path))
    log.read_new()
    (_, p), = log.resolve()[0]
    assert (p["prompt"], p["chosen"], p["rejected"]) == ("Q: sky? A:", " blue", " green")
