"""Run by tests/samplers/test_lightning.py: Lightning's DDP relaunches this file once per rank.

``python _lightning_ddp_script.py OUT`` fits a tiny model on 2 CPU processes with default
Trainer arguments, once per winnow sampler (RS2 without the callback), a HardBatchSampler with
and without ``use_distributed_sampler=False``, a top-loss selector on RS2 super-batches, and
checkpointed runs resumed mid-epoch and at an epoch's end, and a Fabric loop; every rank writes
what it trained on to ``OUT/<run>-rank<r>.json``.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from winnow.samplers import (
    HardBatchSampler,
    IndexedDataset,
    InfoBatchSampler,
    PrunedSampler,
    RS2Sampler,
    TopLossSelector,
)
from winnow.samplers.lightning import WinnowCallback

N, EPOCHS, BATCH = 203, 3, 16  # odd N: DistributedSampler's padding is exercised
OUT = Path(sys.argv[1])
generator = torch.Generator().manual_seed(0)
X = torch.randn(N, 8, generator=generator)
Y = (X[:, 0] + 0.3 * torch.randn(N, generator=generator) > 0).long()
DATA = IndexedDataset(TensorDataset(X, Y))


class Model(pl.LightningModule):
    """Records what it trains on; feeds losses back through the sampler or selects rows."""

    def __init__(self, sampler=None, selector=None):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)
        self.sampler, self.selector = sampler, selector
        self.log_ = {"batches": [], "super_batches": [], "plans": {}, "num_training_batches": {},
                     "val_epochs": []}  # fmt: skip

    def training_step(self, batch, batch_idx):
        ids, (x, y) = batch
        if self.selector is not None:
            self.log_["super_batches"].append([self.current_epoch, ids.tolist()])
            with torch.no_grad():
                scores = F.cross_entropy(self.net(x), y, reduction="none")
            rows, weights = self.selector.select(ids.cpu(), scores)
            ids, x, y = ids[rows.cpu()], x[rows], y[rows]
        losses = F.cross_entropy(self.net(x), y, reduction="none")
        self.log_["batches"].append([self.current_epoch, ids.tolist()])
        if isinstance(self.sampler, HardBatchSampler):
            self.sampler.update(ids.cpu(), losses)
            return losses.mean()
        if self.selector is not None:
            self.sampler.update(ids, losses)
            return (weights * losses).mean()
        return self.sampler.reweight(ids, losses)

    def on_train_epoch_start(self):
        self.log_["num_training_batches"][self.current_epoch] = self.trainer.num_training_batches
        if hasattr(self.sampler, "plan"):
            self.log_["plans"][self.current_epoch] = self.sampler.plan.ids.tolist()

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log_["val_epochs"].append(self.current_epoch)

    def configure_optimizers(self):
        self.log_["estimated_stepping_batches"] = self.trainer.estimated_stepping_batches
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        self.log_["global_step"] = self.trainer.global_step
        if hasattr(self.sampler, "scores"):
            self.sampler.set_epoch(self.trainer.current_epoch)  # settled already: a no-op
            self.log_["scores"] = self.sampler.scores.values.tolist()
        path = OUT / f"{self.run}-rank{self.global_rank}.json"
        path.write_text(json.dumps(self.log_))


def fit(run, sampler=None, selector=None, *, loader=None, ckpt_path=None, callbacks=(),
        winnow=True, **kw):  # fmt: skip
    pl.seed_everything(0, verbose=False)
    model = Model(sampler, selector)
    model.run = run
    if loader is None:
        loader = DataLoader(DATA, batch_size=BATCH, sampler=sampler)
    if winnow:
        callbacks = [WinnowCallback(loader if sampler else None, selector=selector), *callbacks]
    val = DataLoader(TensorDataset(X[:8], Y[:8]), batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=EPOCHS, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=len(callbacks) > 1, callbacks=callbacks, **kw,
    )  # fmt: skip
    trainer.fit(model, loader, val, ckpt_path=ckpt_path)
    return trainer


def infobatch():
    return InfoBatchSampler(N, EPOCHS, prune_ratio=0.7, delta=0.67, seed=3)


def toploss(run, **kw):
    """RS2 draws the super-batches, top-loss picks half of each (with Gumbel noise per rank)."""
    sampler, selector = RS2Sampler(N, 0.6, seed=3), TopLossSelector(keep=0.5, beta=1.0, seed=3)
    loader = DataLoader(DATA, batch_size=2 * BATCH, sampler=sampler)
    fit(run, sampler, selector, loader=loader, **kw)


fit("rs2", RS2Sampler(N, 0.4, seed=3), winnow=False)  # the sampler alone shards right
fit("pruned", PrunedSampler(np.sin(np.arange(N)), 0.6, seed=3))
hard = HardBatchSampler(N, 2 * BATCH, delta=0.5, num_epochs=EPOCHS, seed=3)
try:
    fit("hard-default", hard, loader=DataLoader(DATA, batch_sampler=hard))
except ValueError as err:
    (OUT / f"hard-default-error-rank{torch.distributed.get_rank()}.txt").write_text(str(err))
hard = HardBatchSampler(N, 2 * BATCH, delta=0.5, num_epochs=EPOCHS, seed=3)
fit("hard", hard, loader=DataLoader(DATA, batch_sampler=hard), use_distributed_sampler=False)

# Checkpoints every 5 steps and at every epoch's end, then runs resumed from them.
steps = ModelCheckpoint(OUT / "ckpt", every_n_train_steps=5, save_top_k=-1, filename="{step}")
epochs = ModelCheckpoint(OUT / "ckpt", every_n_epochs=1, save_top_k=-1, filename="end-{epoch}")
fit("full", infobatch(), callbacks=[steps, epochs])
fit("from-step10", infobatch(), ckpt_path=OUT / "ckpt" / "step=10.ckpt")
fit("from-end0", infobatch(), ckpt_path=OUT / "ckpt" / "end-epoch=0.ckpt")
toploss("toploss", callbacks=[ModelCheckpoint(OUT / "sel", every_n_train_steps=4, save_top_k=-1,
                                              filename="{step}")])  # fmt: skip
toploss("toploss-from-step4", ckpt_path=OUT / "sel" / "step=4.ckpt")

# Fabric: setup_dataloaders leaves the sampler (a DistributedSampler) in place.
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
sampler = infobatch()
loader = fabric.setup_dataloaders(DataLoader(DATA, batch_size=BATCH, sampler=sampler))
record = {"batches": [], "plans": {}, "kept": loader.sampler is sampler}
for epoch in range(EPOCHS):
    sampler.set_epoch(epoch)
    record["plans"][epoch] = sampler.plan.ids.tolist()
    for ids, (x, y) in loader:
        record["batches"].append([epoch, ids.tolist()])
        sampler.update(ids, (x[:, 0] - y).abs())  # a stand-in loss: pruning needs feedback
(OUT / f"fabric-rank{fabric.global_rank}.json").write_text(json.dumps(record))
