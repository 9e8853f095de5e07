"""TRL's trainers with hone's data order, live pool, λ weights and per-term losses.

* `HoneOrder` is the batch sampler of both trainers: hone's file order, epoch after epoch (no
  shuffle of TRL's own), with newly admitted examples served first and retracted ones skipped
  (hone's `train::sampler` rule). Every rank runs the same sampler; accelerate hands global batch
  i to rank i mod world_size. Its position is a pure function of the number of examples drawn and
  the admissions log (draw position, labels offset), so a resume rebuilds it exactly.
* `HoneSFTTrainer` is TRL's SFTTrainer; its loss is `w_sft · L_sft`.
* `HoneDPOTrainer` is TRL's DPOTrainer. TRL 1.16 expresses `λ_pref·L_pref + w_sft·L_sft` as
  `loss_type=[pref, "sft"]`, `loss_weights=[λ_pref, w_sft]` but logs only the sum; the override
  asks TRL for `L_pref` alone, reads `L_sft` (TRL's own "sft" formula) off the same forward's
  log-probs through a forward hook, and weighs them with the current λ (which `set_lambda`
  changes between steps). `tests/test_objective.py` checks it against stock TRL's combined loss.
  Given hone's SFT order (`sft_orders`), the SFT term is instead the same formula on the chosen
  responses that order draws, one more policy forward per micro-batch: the native engine draws
  that term from a sampler of its own, so this is how the two engines train on the same batches.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch.utils.data import DataLoader
from trl import DPOTrainer, SFTTrainer

from . import relay


class LivePool(torch.utils.data.Dataset):
    """The examples a stage trains on: its data, then admitted labels, in admission order."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = list(rows)
        self.active = [True] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class HoneOrder:
    """A stateful batch sampler: `per_device` pool indices per batch, `batches` batches in all."""

    def __init__(self, pool: LivePool, per_device: int, batches: int, orders: list[list[int]] | None = None):
        self.pool, self.per_device, self.batches = pool, per_device, batches
        self.orders = orders or []  # hone's sampler order per epoch over the files' examples
        self.admissions: list[dict[str, Any]] = []  # {"pos", "added": [idx], "retracted": [idx]}
        self._reset()

    def _reset(self) -> None:
        self.drawn = 0
        self.epoch = 0
        self.order = self._epoch_order(0)
        self.cursor = 0
        self.queue: list[int] = []
        self._applied = 0

    def _epoch_order(self, epoch: int) -> list[int]:
        """hone's order for the epoch when the spec gave one (its examples, then any pool rows
        it does not cover: labels, in pool order), else the pool's order."""
        if epoch < len(self.orders):
            order = list(self.orders[epoch])
            return order + list(range(len(order), len(self.pool)))
        return list(range(len(self.pool)))

    def _apply_due(self) -> None:
        while self._applied < len(self.admissions) and self.admissions[self._applied]["pos"] <= self.drawn:
            a = self.admissions[self._applied]
            self.queue.extend(a["added"])
            for i in a["retracted"]:
                self.pool.active[i] = False
            self._applied += 1

    def _draw(self) -> int:
        self._apply_due()
        while True:
            if self.queue:
                i = self.queue.pop(0)
            elif self.cursor < len(self.order):
                i = self.order[self.cursor]
                self.cursor += 1
            else:
                if not any(self.pool.active):
                    raise RuntimeError("no active examples left in the pool")
                self.epoch += 1
                self.order = self._epoch_order(self.epoch)
                self.cursor = 0
                continue
            if self.pool.active[i]:
                self.drawn += 1
                return i

    def admit(self, added: list[int], retracted: list[int], **extra: Any) -> None:
        """Admissions from the next draw on (every rank calls this at the same boundary)."""
        self.admissions.append({"pos": self.drawn, "added": added, "retracted": retracted, **extra})
        self._apply_due()

    def fast_forward(self, draws: int) -> None:
        """Replays the sampler from the start to `draws` examples drawn (a resume)."""
        for i in range(len(self.pool)):
            self.pool.active[i] = True
        self._reset()
        for _ in range(draws):
            self._draw()

    def progress(self) -> float:
        """Epochs done, as a fraction (hone's `epoch` metric)."""
        return self.epoch + (self.cursor / len(self.order) if self.order else 0.0)

    def __iter__(self):
        total = self.batches * self.per_device
        while self.drawn < total:
            yield self.take(self.per_device)

    def take(self, n: int) -> list[int]:
        """The next `n` examples."""
        return [self._draw() for _ in range(n)]


class HoneMixin:
    """What both trainers share: the live pool and sampler, λ, state saved with checkpoints."""

    hone_order: HoneOrder
    hone_state: dict[str, Any]
    # A DPO stage's SFT-on-chosen term in hone's own order (the spec's `sft_orders`), over the
    # same pool; None elsewhere.
    hone_sft_order: HoneOrder | None = None

    def hone_setup(self, pool: LivePool, per_device: int, total_steps: int, lambdas: dict[str, float],
                   orders: list[list[int]] | None = None) -> None:
        world = self.accelerator.num_processes
        self.hone_pool = pool
        batches = total_steps * self.args.gradient_accumulation_steps * world
        self.hone_order = HoneOrder(pool, per_device, batches, orders)
        self.hone_lambdas = dict(lambdas)
        self.hone_state = {"control_offset": 0, "label_offsets": {}}
        self.hone_stopped = False
        self.hone_skipped = False

    def hone_admit(self, added: list[int], retracted: list[int], **extra: Any) -> None:
        """Admitted labels join the data order (and a DPO stage's SFT order) from the next draw;
        the SFT order's own draw position goes into the admissions log, for a resume."""
        sft = self.hone_sft_order
        if sft is not None:
            extra["sft_pos"] = sft.drawn
            sft.admit(added, retracted)
        self.hone_order.admit(added, retracted, **extra)

    def get_train_dataloader(self) -> DataLoader:
        collator = self._get_collator_with_removed_columns(self.data_collator, description="Training")
        loader = DataLoader(self.hone_pool, batch_sampler=self.hone_order, collate_fn=collator, num_workers=0)
        return self.accelerator.prepare(loader)

    def hone_snapshot(self) -> dict[str, Any]:
        return {
            "global_step": self.state.global_step,
            "lambdas": self.hone_lambdas,
            "admissions": [{k: v for k, v in a.items()} for a in self.hone_order.admissions],
            **self.hone_state,
        }

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # Every rank has written its part (its RNG state) before the marker makes it complete.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # Written last: a checkpoint without it is incomplete and never resumed from.
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            tmp = os.path.join(folder, ".hone_state.json.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.hone_snapshot(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(folder, "hone_state.json"))

    def hone_metric(self, name: str, value: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())


class HoneSFTTrainer(HoneMixin, SFTTrainer):
    """TRL's SFTTrainer minimising `w_sft · L_sft`."""

    hone_sft_weight = 1.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self.hone_sft_weight == 1.0:
            return result
        if return_outputs:
            return result[0] * self.hone_sft_weight, result[1]
        return result * self.hone_sft_weight


class HoneDPOTrainer(HoneMixin, DPOTrainer):
    """TRL's DPOTrainer minimising `λ_pref · L_pref + w_sft · L_sft(chosen)`."""

    hone_pref_loss = "sigmoid"
    hone_sft_weight: float | None = None

    def _compute_loss(self, model, inputs, return_outputs):
        captured: list[Any] = []

        def keep_first(_module, _args, output):
            if not captured:
                captured.append(output)

        own_batch = self.hone_sft_order is not None and self.model.training
        watched = self.hone_sft_weight is not None and not own_batch
        handle = self.accelerator.unwrap_model(model).register_forward_hook(keep_first) if watched else None
        saved = (self.loss_types, self.loss_weights)
        self.loss_types, self.loss_weights = [self.hone_pref_loss], [1.0]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            if handle is not None:
                handle.remove()
            self.loss_types, self.loss_weights = saved
        pref = result[0] if return_outputs else result
        lam = float(self.hone_lambdas.get("pref", 1.0))
        total = lam * pref
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["lambda/pref"].append(lam)  # the λ this step used (same on every rank)
        self.hone_metric("loss/pref", pref)
        self.hone_metric("weighted/pref", lam * pref)
        if self.hone_sft_weight is not None:
            if own_batch:
                sft = self.hone_drawn_sft(model)
            elif captured:
                # The batch is [chosen; rejected]: the term is on the chosen half.
                log_probs = captured[0].log_probs.chunk(2, dim=0)[0]
                sft = completion_nll(log_probs, inputs["completion_mask"].chunk(2, dim=0)[0])
            else:
                raise RuntimeError("the policy forward was not observed; cannot compute the SFT term")
            total = total + self.hone_sft_weight * sft
            self.hone_metric("loss/sft", sft)
        return (total, result[1]) if return_outputs else total

    def hone_drawn_sft(self, model) -> torch.Tensor:
        """The SFT term on this rank's share of the next global batch of hone's SFT order (rank r
        takes the r-th slice, as accelerate hands global batch i to rank i mod world size)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per = self.hone_order.per_device
        mine = self.hone_sft_order.take(world * per)[rank * per:(rank + 1) * per]
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
        batch = self.data_collator([{k: self.hone_pool[i][k] for k in keys} for i in mine])
        # The collator stacks [chosen; rejected], right-padded: keep the chosen half, cut to its width.
        n = len(mine)
        width = int(batch["attention_mask"][:n].sum(dim=1).max())
        ids, attention, mask = (batch[k][:n, :width].to(self.accelerator.device)
                                for k in ("input_ids", "attention_mask", "completion_mask"))
        labels = ids.masked_fill(mask == 0, -100)
        out = model(input_ids=ids, attention_mask=attention, labels=labels, use_cache=False, fused_lm_head=True)
        return completion_nll(out.log_probs, mask)


def completion_nll(log_probs: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """TRL's "sft" loss: the mean negative log-probability over the batch's completion tokens
    (`log_probs` per predicted token, `completion_mask` per input token)."""
    mask = completion_mask[..., 1:]
    return -log_probs[:, -mask.size(1):][mask.bool()].mean()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


__all__ = ["HoneDPOTrainer", "HoneOrder", "HoneSFTTrainer", "LivePool", "relay", "world_size"]
