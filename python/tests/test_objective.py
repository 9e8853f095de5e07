"""The DPO stage's override of TRL's loss: `λ_pref·L_pref + w_sft·L_sft` with each term logged
equals stock TRL 1.16 configured with `loss_type=[pref, "sft"]`, `loss_weights=[λ, w]`."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from conftest import FIXTURE
from hone_trl.trainers import HoneDPOTrainer, HoneOrder, LivePool


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


def test_sft_term_in_hones_own_order_is_trls_sft_loss_on_those_pairs(tmp_path):
    """Given hone's SFT order (the spec's `sft_orders`), the SFT term is TRL's "sft" loss on the
    chosen responses of the pairs that order draws, not of the preference batch's pairs."""
    lam, w = 0.5, 0.7
    ours = trainer(HoneDPOTrainer, tmp_path / "b", loss_type=["sigmoid"])
    pool = LivePool([ours.train_dataset[i] for i in range(4)])
    ours.hone_setup(pool, 2, 2, {"pref": lam})
    ours.hone_sft_order = HoneOrder(pool, 2, 2, [[3, 1, 0, 2]])
    ours.hone_pref_loss, ours.hone_sft_weight = "sigmoid", w
    ours.model.train()
    got = ours.compute_loss(ours.model, ours.data_collator([pool[0], pool[1]])).item()
    assert ours.hone_sft_order.drawn == 2

    def stock_loss(loss_type, pairs):
        stock = trainer(DPOTrainer, tmp_path / loss_type, loss_type=[loss_type])
        stock.model.train()
        return stock.compute_loss(stock.model, stock.data_collator([stock.train_dataset[i] for i in pairs])).item()

    pref, sft = stock_loss("sigmoid", [0, 1]), stock_loss("sft", [3, 1])
    assert abs(ours._metrics["train"]["loss/sft"][-1] - sft) < 1e-6
    assert abs(got - (lam * pref + w * sft)) < 1e-6
    # The preference batch's own chosen responses give another SFT loss: the order mattered.
    assert abs(stock_loss("sft", [0, 1]) - sft) > 1e-3
