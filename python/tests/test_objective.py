"""The DPO stage's override of TRL's loss: `λ_pref·L_pref + w_sft·L_sft` with each term logged
equals stock TRL 1.16 configured with `loss_type=[pref, "sft"]`, `loss_weights=[λ, w]`."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from conftest import FIXTURE
from hone_trl.trainers import HoneDPOTrainer


def rows():
    with open(FIXTURE / "prefs.jsonl") as f:
        return [json.loads(line) for line in f][:4]


def trainer(cls, tmp_path, **cfg):
    tok = AutoTokenizer.from_pretrained(FIXTURE / "model")
    model = AutoModelForCausalLM.from_pretrained(FIXTURE / "model", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(FIXTURE / "ref", dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                     beta=0.1, max_length=256, **cfg)
    return cls(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows()), processing_class=tok)


@pytest.mark.parametrize("pref_loss", ["sigmoid", "ipo"])
def test_override_equals_trl_combined_loss(tmp_path, pref_loss):
    lam, w = 0.5, 0.7
    stock = trainer(DPOTrainer, tmp_path / "a", loss_type=[pref_loss, "sft"], loss_weights=[lam, w])
    ours = trainer(HoneDPOTrainer, tmp_path / "b", loss_type=[pref_loss])
    ours.hone_pref_loss, ours.hone_sft_weight, ours.hone_lambdas = pref_loss, w, {"pref": lam}
    stock.model.train()
    ours.model.train()
    batch = stock.data_collator([stock.train_dataset[i] for i in range(4)])
    expected = stock.compute_loss(stock.model, batch).item()
    got = ours.compute_loss(ours.model, batch)
    assert got.requires_grad
    assert abs(got.item() - expected) < 1e-6
    metrics = ours._metrics["train"]
    assert abs(lam * metrics["loss/pref"][-1] + w * metrics["loss/sft"][-1] - expected) < 1e-5
    # Changing λ (what set_lambda does) changes the next step's objective.
    ours.hone_lambdas["pref"] = 0.0
    assert abs(ours.compute_loss(ours.model, batch).item() - w * metrics["loss/sft"][-1]) < 1e-6
