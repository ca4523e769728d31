"""Hugging Face with winnow samplers (winnow.samplers.huggingface), with the real frameworks:
``WinnowTrainer`` fits and resumes a tiny GPT-2 built from a config (no download), and a
2-process CPU run (torchrun, gloo) trains an accelerate loop and a WinnowTrainer on each rank's
own shard."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from winnow.samplers import InfoBatchSampler, RS2Sampler, TopLossSelector

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
from winnow.samplers.huggingface import (  # noqa: E402 - needs transformers
    ID_KEY,
    STATE_FILE,
    WinnowTrainer,
    per_example_loss,
)

SCRIPT = Path(__file__).with_name("_hf_ddp_script.py")
N, EPOCHS, BATCH, VOCAB, LENGTH = 40, 3, 4, 32, 8


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=LENGTH, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def token_dataset(n=N, seed=0):
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    return datasets.Dataset.from_dict({"input_ids": tokens.tolist(), "labels": tokens.tolist()})


def test_per_example_loss_matches_the_models_own_loss():
    model = tiny_gpt2()
    tokens = torch.randint(0, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    out = model(input_ids=tokens, labels=tokens)
    per = per_example_loss(out.logits, tokens, shift=True)
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), out.loss)  # equal token counts: mean of means
    masked = tokens.clone()
    masked[0, :5] = -100
    masked[1] = -100
    per = per_example_loss(model(input_ids=tokens).logits, masked, shift=True)
    alone = model(input_ids=tokens[:1], labels=masked[:1]).loss
    torch.testing.assert_close(per[0], alone)
    assert per[1] == 0  # no labelled token
    def bert(num_labels):
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=16,
                                         num_labels=num_labels)  # fmt: skip
        return transformers.BertForSequenceClassification(config).eval()

    labels = torch.tensor([0, 2, 1])
    out = bert(3)(input_ids=tokens, labels=labels)
    torch.testing.assert_close(per_example_loss(out.logits, labels).mean(), out.loss)
    regress = bert(1)
    target = torch.tensor([0.5, -1.0, 2.0])
    out = regress(input_ids=tokens, labels=target)
    torch.testing.assert_close(per_example_loss(out.logits, target).mean(), out.loss)
    with pytest.raises(ValueError, match="one dimension more than integer labels"):
        per_example_loss(torch.zeros(3), labels)


class Recorder:
    """Wraps a sampler's reweight (and a selector's select) to record what each step saw."""

    def __init__(self, sampler=None, selector=None):
        self.batches, self.super_batches = [], []
        if sampler is not None:
            reweight = sampler.reweight

            def recording_reweight(ids, losses):
                self.batches.append((sampler.epoch, ids.tolist()))
                return reweight(ids, losses)

            sampler.reweight = recording_reweight
        if selector is not None:
            select = selector.select

            def recording_select(ids, scores):
                rows, weights = select(ids, scores)
                self.super_batches.append(ids.tolist())
                self.batches.append(ids[rows].tolist())
                return rows, weights

            selector.select = recording_select


def train(tmp_path, *, sampler=None, selector=None, resume=None, save_steps=None, **extra):
    args = transformers.TrainingArguments(
        str(tmp_path), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
        use_cpu=True, report_to=[], logging_strategy="no", disable_tqdm=True, seed=0,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        learning_rate=1e-3, **extra,
    )  # fmt: skip
    trainer = WinnowTrainer(model=tiny_gpt2(), args=args, train_dataset=token_dataset(),
                            eval_dataset=token_dataset(8, seed=5), sampler=sampler,
                            selector=selector)  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_trainer_trains_on_each_epochs_plan_and_counts_its_steps(tmp_path):
    sampler = InfoBatchSampler(N, EPOCHS, prune_ratio=0.7, seed=1)
    record = Recorder(sampler)
    trainer = train(tmp_path, sampler=sampler, gradient_accumulation_steps=2)
    steps = {}
    for epoch, ids in record.batches:
        steps[epoch] = steps.get(epoch, []) + ids
    plans = {e: n for e, n in sampler.plan_lengths.items() if e < EPOCHS}
    assert {e: len(ids) for e, ids in steps.items()} == plans
    assert len(set(plans.values())) > 1  # pruned epochs differ from the first
    batches = [-(-n // BATCH) for n in plans.values()]
    assert trainer.state.global_step == sum(-(-b // 2) for b in batches)
    # the LR schedule's length: pruned epochs not planned yet at the start count as full
    assert trainer.state.max_steps == EPOCHS * -(-(N // BATCH) // 2) > trainer.state.global_step
    pending = sampler.scores.num_pending
    metrics = trainer.evaluate()  # the Trainer's own loss; nothing fed back
    assert np.isfinite(metrics["eval_loss"]) and sampler.scores.num_pending == pending


def test_trainer_resumes_mid_epoch_as_the_uninterrupted_run(tmp_path):
    def make():
        sampler = InfoBatchSampler(N, EPOCHS, prune_ratio=0.7, seed=1)
        return sampler, Recorder(sampler)

    sampler, full = make()
    train(tmp_path / "full", sampler=sampler, save_steps=3)
    sampler.set_epoch(EPOCHS)  # settle what the last epoch fed back
    final = sampler.scores.values.copy()
    starts = np.cumsum([0] + [sum(1 for e, _ in full.batches if e == k) for k in range(EPOCHS)])
    assert starts[1] == N // BATCH > starts[2] - starts[1]  # epoch 1 was pruned
    # The Trainer would place step s in epoch s // (first epoch's steps): wrong in epoch 2.
    for epoch in (1, 2):
        step = next(s for s in range(3, 100, 3) if starts[epoch] < s < starts[epoch + 1])
        checkpoint = tmp_path / "full" / f"checkpoint-{step}"
        assert (checkpoint / STATE_FILE).is_file()
        sampler, resumed = make()
        train(tmp_path / f"from-{step}", sampler=sampler, resume=str(checkpoint))
        assert resumed.batches == full.batches[step:], epoch
        sampler.set_epoch(EPOCHS)
        np.testing.assert_array_equal(sampler.scores.values, final)


def test_trainer_drives_an_in_step_selector(tmp_path):
    selector = TopLossSelector(keep=0.5, beta=1.0, seed=2)
    record = Recorder(selector=selector)
    trainer = train(tmp_path, selector=selector)
    assert len(record.batches) == trainer.state.global_step == EPOCHS * N // BATCH
    for chosen, super_batch in zip(record.batches, record.super_batches, strict=True):
        assert len(chosen) == BATCH // 2 and set(chosen) <= set(super_batch)
    seen = sorted(i for batch in record.super_batches for i in batch)
    assert seen == sorted(list(range(N)) * EPOCHS)  # each epoch: every example in a super-batch


def test_trainer_refuses_a_mismatched_sampler(tmp_path):
    args = transformers.TrainingArguments(str(tmp_path), num_train_epochs=2, use_cpu=True,
                                          report_to=[])  # fmt: skip
    with pytest.raises(ValueError, match="num_epochs=3 but the Trainer runs num_train_epochs=2"):
        WinnowTrainer(model=tiny_gpt2(), args=args, train_dataset=token_dataset(),
                      sampler=InfoBatchSampler(N, 3))  # fmt: skip
    with pytest.raises(ValueError, match="plans over 41 examples but train_dataset has 40"):
        WinnowTrainer(model=tiny_gpt2(), args=args, train_dataset=token_dataset(),
                      sampler=RS2Sampler(N + 1, 0.5))  # fmt: skip
    assert ID_KEY == "example_id"


def padded_half(plan):
    """Rank 0's shard of a plan over two ranks (DistributedSampler's padding)."""
    return (plan + plan[: len(plan) % 2])[0::2]


@pytest.mark.timeout(900)
def test_two_processes_train_on_their_own_shards(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(SCRIPT), str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]
    message = (tmp_path / "accelerate-error-rank0.txt").read_text()
    assert "accelerate.data_loader.BatchSamplerShard (over 2 replicas)" in message
    for name in ("accelerate", "trainer"):
        ranks = [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["plans"] == ranks[1]["plans"]
        plans = {int(e): p for e, p in ranks[0]["plans"].items()}
        assert sorted(plans) == list(range(EPOCHS)) and len({len(p) for p in plans.values()}) > 1
        for epoch, plan in plans.items():
            trained = [[i for e, ids in r["batches"] if e == epoch for i in ids] for r in ranks]
            padded = plan + plan[: len(plan) % 2]
            assert trained == [padded[0::2], padded[1::2]], (name, epoch)
        if name == "accelerate":  # len(prepared loader) follows each epoch's shard
            lengths = {int(e): n for e, n in ranks[0]["lengths"].items()}
            assert lengths == {e: math.ceil(len(padded_half(p)) / BATCH) for e, p in plans.items()}
