"""`python -m hone_trl --spec <run>/trl/<stage>.json`: one hone stage on TRL, on every rank.

Exit status: 0 when the stage finished (its model exported, with `hone_export.json` inside) or
stopped cleanly (a stop request or SIGTERM/SIGINT, after a checkpoint: running it again resumes);
launchers turn any other status of a rank into their own failure status, so "finished" is told
from "stopped" by the export marker, not by the status. 2 for a bad spec; 1 for any other
failure (rank 0 also writes an `error` event)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback

def newest_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` that is complete (its `hone_state.json` is written last)."""
    best = None
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return None
    for name in names:
        if not name.startswith("checkpoint-") or not name[11:].isdigit():
            continue
        path = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(path, "hone_state.json")) and (best is None or int(name[11:]) > best[0]):
            best = (int(name[11:]), path)
    return best[1] if best else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hone_trl")
    parser.add_argument("--spec", required=True, help="the stage spec JSON written by hone")
    parser.add_argument("--versions", action="store_true", help="print package versions as JSON and exit")
    if argv is None and "--versions" in sys.argv[1:]:
        return print_versions()
    args = parser.parse_args(argv)

    die_with_parent()
    from . import relay
    from .relay import Signals

    signals = Signals()  # before anything slow, so an early SIGTERM is not a traceback
    from .events import EventWriter
    from .spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except (OSError, SpecError, json.JSONDecodeError) as e:
        print(f"hone_trl: {e}", file=sys.stderr)
        return 2
    writer = EventWriter(os.path.join(spec.run_dir, "events.jsonl")) if relay.rank() == 0 else None
    try:
        from .stage import run_stage

        run_stage(spec, signals, writer)
        return 0
    except SpecError as e:
        if writer is not None:
            writer.emit("error", spec.stage, None, message=str(e), engine="trl")
        print(f"hone_trl: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the launcher's log gets the traceback, hone the event
        traceback.print_exc()
        if writer is not None:
            writer.emit("error", spec.stage, None, message=f"{type(e).__name__}: {e}", engine="trl")
        return 1
    finally:
        close_process_group()


def close_process_group() -> None:
    """Tears the distributed process group down before the interpreter exits: left to the C++
    destructors at exit, gloo's threads can abort a rank ("terminate called without an active
    exception") after its work is done, failing a stage that finished."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def die_with_parent() -> None:
    """On Linux, ask the kernel to SIGKILL this rank when its launcher dies (torchrun starts each
    rank in a session of its own, so a SIGKILL to the worker's process group would otherwise leave
    orphaned ranks training on). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os._exit(1)


def print_versions() -> int:
    """What `hone check` runs: imports every package the engine needs, prints their versions."""
    import importlib

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "hone_trl"):
        out[name] = importlib.import_module(name).__version__
    print(json.dumps(out))
    return 0


def export_model(trainer, tokenizer, export_dir: str, stage: str, step: int, rank0: bool) -> None:
    """Writes the final model as an HF directory beside `export_dir`, then renames it in place. A
    LoRA stage's adapters are merged into their weights first (PEFT's `merge_and_unload`): the
    next stage and hone's evaluation read a full model."""
    tmp = export_dir + ".tmp"
    if rank0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        # Training is over: merging in place on rank 0 alone leaves nothing for the others to see.
        if rank0:
            model.merge_and_unload().save_pretrained(tmp)
    else:
        trainer.save_model(tmp)
    trainer.accelerator.wait_for_everyone()
    if rank0:
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "hone_export.json"), "w", encoding="utf-8") as f:
            json.dump({"stage": stage, "step": step, "engine": "trl"}, f)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(tmp, export_dir)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the C++ destructors at interpreter exit: with gloo, a rank whose work is done (events
    # written and synced, export renamed) could still abort there ("terminate called without an
    # active exception"), failing a finished stage.
    os._exit(code)
