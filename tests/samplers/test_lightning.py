"""Lightning with winnow samplers (winnow.samplers.lightning), with the real framework.

One 2-process CPU DDP run with default Trainer arguments (``_lightning_ddp_script.py``, which
Lightning relaunches per rank) checks which ids every rank trained on in every epoch, Lightning's
step counts, a HardBatchSampler, a selector, resuming from checkpoints and a Fabric loop;
in-process fits check what Lightning recomputes per epoch and what the callback refuses."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from winnow.samplers import IndexedDataset, InfoBatchSampler, RS2Sampler

pl = pytest.importorskip("lightning.pytorch")
from winnow.samplers.lightning import WinnowCallback  # noqa: E402 - needs Lightning

SCRIPT = Path(__file__).with_name("_lightning_ddp_script.py")
EPOCHS = 3


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning-ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=out, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]

    def load(name):
        return [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]

    load.out = out
    return load


def per_epoch(record, key="batches"):
    """{epoch: [ids in the order trained]} and {epoch: number of batches} of one rank."""
    ids, batches = {}, {}
    for epoch, batch in record[key]:
        ids.setdefault(epoch, []).extend(batch)
        batches[epoch] = batches.get(epoch, 0) + 1
    return ids, batches


def check_shards(ranks, plans):
    """Rank r trained exactly plan[r::2] (DistributedSampler's padding for an odd plan)."""
    trained = [per_epoch(record)[0] for record in ranks]
    for epoch, plan in plans.items():
        padded = plan + plan[: len(plan) % 2]
        assert trained[0][epoch] == padded[0::2], epoch
        assert trained[1][epoch] == padded[1::2], epoch
        assert sorted(set(trained[0][epoch]) | set(trained[1][epoch])) == sorted(plan)
        assert len(set(trained[0][epoch])) == len(trained[0][epoch])  # no repeats in a shard


@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", ["full", "rs2", "pruned"])
def test_ddp_each_rank_trains_its_own_shard_of_every_plan(ddp, run):
    ranks = ddp(run)
    plans = {int(e): p for e, p in ranks[0]["plans"].items()}
    assert plans == {int(e): p for e, p in ranks[1]["plans"].items()}  # one plan for all ranks
    assert sorted(plans) == list(range(EPOCHS))
    check_shards(ranks, plans)
    if run == "full":
        assert len({len(p) for p in plans.values()}) == EPOCHS  # InfoBatch pruned differently
    for record in ranks:  # Lightning's counts follow each epoch's plan; validation every epoch
        batches = per_epoch(record)[1]
        assert {int(e): n for e, n in record["num_training_batches"].items()} == batches
        assert record["val_epochs"] == list(range(EPOCHS))
        assert record["global_step"] == sum(batches.values())
        if run == "full":  # InfoBatch with a fixed ratio: pruned epochs count as full
            assert record["estimated_stepping_batches"] >= record["global_step"]
        else:
            assert record["estimated_stepping_batches"] == record["global_step"]
    np.testing.assert_array_equal(ranks[0]["scores"], ranks[1]["scores"])


@pytest.mark.timeout(900)
def test_ddp_fabric_leaves_the_sampler_in_place(ddp):
    ranks = ddp("fabric")
    assert ranks[0]["kept"] and ranks[1]["kept"]
    plans = {int(e): p for e, p in ranks[0]["plans"].items()}
    assert len({len(p) for p in plans.values()}) > 1
    check_shards(ranks, plans)


@pytest.mark.timeout(900)
def test_ddp_hard_batch_sampler_needs_lightning_to_leave_it_alone(ddp):
    message = (ddp.out / "hard-default-error-rank0.txt").read_text()
    assert "Pass Trainer(use_distributed_sampler=False)" in message
    ranks = ddp("hard")
    steps = [[ids for _, ids in record["batches"]] for record in ranks]
    assert len(steps[0]) == len(steps[1]) == ranks[0]["estimated_stepping_batches"] == 18
    for a, b in zip(*steps, strict=True):  # each step: the two halves of one global batch
        assert len(a) == len(b) == 16 and not set(a) & set(b)
    warmup = [i for a, b in zip(steps[0][:6], steps[1][:6], strict=True) for i in a + b]
    assert len(warmup) == len(set(warmup)) == 6 * 32  # the warm-up trains every batch once


@pytest.mark.timeout(900)
def test_ddp_selector_picks_from_its_ranks_super_batches_and_resumes(ddp):
    ranks = ddp("toploss")
    for record in ranks:
        for (_, chosen), (_, super_batch) in zip(record["batches"], record["super_batches"],
                                                 strict=True):  # fmt: skip
            assert len(chosen) == len(super_batch) // 2 and set(chosen) <= set(super_batch)
    plans = {int(e): p for e, p in ranks[0]["plans"].items()}
    super_ids = [per_epoch(record, "super_batches")[0] for record in ranks]
    for epoch, plan in plans.items():  # the super-batches are the RS2 plan's shards
        padded = plan + plan[: len(plan) % 2]
        assert (super_ids[0][epoch], super_ids[1][epoch]) == (padded[0::2], padded[1::2])
    assert ranks[0]["batches"] != ranks[1]["batches"]
    resumed = ddp("toploss-from-step4")
    for full, tail in zip(ranks, resumed, strict=True):  # each rank's own noise stream resumes
        assert full["batches"][4:] == tail["batches"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("run", "done"), [("from-step10", 10), ("from-end0", 7)])
def test_ddp_resume_continues_the_uninterrupted_run(ddp, run, done):
    full, resumed = ddp("full"), ddp(run)
    assert per_epoch(full[0])[1][0] == 7 and sum(per_epoch(full[0])[1].values()) > 10 > 7
    for whole, tail in zip(full, resumed, strict=True):
        assert whole["batches"][done:] == tail["batches"]
        assert whole["scores"] == tail["scores"]


# ---------------------------------------------------------------- in one process
N, BATCH = 150, 16


def make_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=generator)
    return IndexedDataset(TensorDataset(x, (x[:, 0] > 0).long()))


class Model(pl.LightningModule):
    def __init__(self, sampler, total_steps=None):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        self.sampler, self.total_steps = sampler, total_steps
        self.batches, self.counts, self.val_epochs = {}, {}, []

    def training_step(self, batch, batch_idx):
        ids, (x, y) = batch
        self.batches[self.current_epoch] = self.batches.get(self.current_epoch, 0) + 1
        return self.sampler.reweight(ids, F.cross_entropy(self.net(x), y, reduction="none"))

    def on_train_epoch_start(self):
        self.counts[self.current_epoch] = self.trainer.num_training_batches

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_epochs.append(self.current_epoch)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.total_steps = self.trainer.estimated_stepping_batches
        # OneCycleLR raises once stepped past its total: the estimate must not undercount.
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.5, total_steps=self.total_steps)
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]


def val_loader():
    return DataLoader(TensorDataset(torch.zeros(4, 4)), batch_size=4)


def fit_one(sampler, *, loader=None, callback=True, **trainer_args):
    loader = loader or DataLoader(make_data(), batch_size=BATCH, sampler=sampler)
    model = Model(sampler)
    options = dict(max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   num_sanity_val_steps=0, accelerator="cpu", devices=1)  # fmt: skip
    options.update(trainer_args)
    callbacks = [WinnowCallback(loader)] if callback else []
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(model, loader, val_loader())
    return model, trainer


@pytest.mark.parametrize("reload", [0, 1])
def test_each_epoch_counts_its_own_batches_and_the_schedule_fits(reload):
    sampler = InfoBatchSampler(N, EPOCHS, prune_ratio=0.8, delta=0.67, seed=1)
    # A reloaded loader's worker starts drawing ids before Lightning calls set_epoch: it must
    # find no unsettled feedback of the finished epoch (the sampler would warn).
    loader = DataLoader(make_data(), batch_size=BATCH, sampler=sampler, num_workers=reload)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*set_epoch.*")
        model, trainer = fit_one(
            sampler, loader=loader, accumulate_grad_batches=2,
            reload_dataloaders_every_n_epochs=reload,
        )  # fmt: skip
    assert len(set(model.batches.values())) > 1  # epochs had different lengths
    assert model.counts == model.batches
    assert model.val_epochs == list(range(EPOCHS))
    assert trainer.global_step == sum(-(-n // 2) for n in model.batches.values())
    assert model.total_steps == sum(-(-n // 2) for n in [10, 10, 10])  # unknown epochs: full
    assert trainer.max_steps == -1  # lent to configure_optimizers only


def test_the_step_total_applies_limit_train_batches_and_accumulation():
    sampler = RS2Sampler(N, 0.3, seed=1)
    model, trainer = fit_one(sampler, accumulate_grad_batches=2, limit_train_batches=2)
    assert model.total_steps == trainer.global_step == EPOCHS


def test_plain_lightning_keeps_the_first_epochs_count():
    # Why the callback exists: without it Lightning keeps epoch 0's batch count, so pruned
    # epochs end early by the loader and skip validation that was due at their count.
    sampler = InfoBatchSampler(N, EPOCHS, prune_ratio=0.8, delta=0.67, seed=1)
    model, _ = fit_one(sampler, callback=False)
    assert set(model.counts.values()) == {model.batches[0]} != set(model.batches.values())
    assert model.val_epochs != list(range(EPOCHS))


def test_the_callback_refuses_what_would_train_on_the_wrong_data():
    sampler = InfoBatchSampler(N, EPOCHS, seed=1)
    loader = DataLoader(make_data(), batch_size=BATCH, sampler=sampler)
    with pytest.raises(ValueError, match=r"num_epochs=3 but the Trainer runs max_epochs=2"):
        fit_one(sampler, loader=loader, max_epochs=2)
    other = DataLoader(make_data(), batch_size=BATCH, sampler=InfoBatchSampler(N, EPOCHS, seed=1))
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[WinnowCallback(other)])  # fmt: skip
    with pytest.raises(ValueError, match="is not the sampler of any train DataLoader"):
        trainer.fit(Model(sampler), loader, val_loader())
    with pytest.raises(ValueError, match=r"pass batch_size= \(the DataLoader's\)"):
        WinnowCallback(sampler)
    with pytest.raises(ValueError, match="differ from the DataLoader's"):
        WinnowCallback(loader, batch_size=8)
    with pytest.raises(TypeError, match="holds no winnow sampler"):
        WinnowCallback(DataLoader(make_data(), batch_size=BATCH))
    callback = WinnowCallback(sampler, batch_size=8)
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[callback])  # fmt: skip
    with pytest.raises(ValueError, match="batch_size=8, drop_last=False but the train DataLoader"):
        trainer.fit(Model(sampler), loader, val_loader())
