"""Run by tests/samplers/test_huggingface.py under ``torchrun --nproc_per_node=2``.

``python -m torch.distributed.run --nproc_per_node=2 _hf_ddp_script.py OUT`` trains on 2 CPU
processes (gloo): a plain accelerate loop with ``prepare_loader``, the same loader through plain
``accelerator.prepare`` (refused), and a ``WinnowTrainer`` fit; every rank writes what it trained
on to ``OUT/<run>-rank<r>.json``.
"""

import json
import os
import sys
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from winnow.samplers import IndexedDataset, InfoBatchSampler, RS2Sampler
from winnow.samplers.huggingface import WinnowTrainer, prepare_loader

OUT = Path(sys.argv[1])
N, EPOCHS, BATCH = 41, 3, 4  # odd N: the sampler's padding is exercised


def dump(run, record):
    (OUT / f"{run}-rank{os.environ['RANK']}.json").write_text(json.dumps(record))


# -- accelerate: a hand-written loop ------------------------------------------------------------
accelerator = Accelerator(cpu=True)
generator = torch.Generator().manual_seed(0)
x, y = torch.randn(N, 4, generator=generator), torch.randint(0, 2, (N,), generator=generator)
sampler = InfoBatchSampler(N, EPOCHS, prune_ratio=0.7, seed=2)
loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=BATCH, sampler=sampler)
torch.manual_seed(0)
net = torch.nn.Linear(4, 2)
net, optimizer = accelerator.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1))
prepared = prepare_loader(accelerator, loader)
record = {"batches": [], "plans": {}, "lengths": {}}
for epoch in range(EPOCHS):
    sampler.set_epoch(epoch)
    record["plans"][epoch] = sampler.plan.ids.tolist()
    record["lengths"][epoch] = len(prepared)
    for ids, (xb, yb) in prepared:
        record["batches"].append([epoch, ids.tolist()])
        loss = sampler.reweight(ids, F.cross_entropy(net(xb), yb, reduction="none"))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
dump("accelerate", record)
try:
    for _ in accelerator.prepare(DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=BATCH,
                                            sampler=RS2Sampler(N, 0.5))):  # fmt: skip
        pass
except ValueError as err:
    (OUT / f"accelerate-error-rank{os.environ['RANK']}.txt").write_text(str(err))

# -- transformers: WinnowTrainer ---------------------------------------------------------------
tokens = torch.randint(0, 32, (N, 8), generator=generator).tolist()
train = datasets.Dataset.from_dict({"input_ids": tokens, "labels": tokens})
torch.manual_seed(0)
config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=8,
                    bos_token_id=0, eos_token_id=0)  # fmt: skip
sampler = InfoBatchSampler(N, EPOCHS, prune_ratio=0.7, seed=3)
record = {"batches": [], "plans": {}}
reweight = sampler.reweight


def recording_reweight(ids, losses):
    record["batches"].append([sampler.epoch, ids.tolist()])
    record["plans"].setdefault(sampler.epoch, sampler.plan.ids.tolist())
    return reweight(ids, losses)


sampler.reweight = recording_reweight
args = TrainingArguments(
    str(OUT / "trainer"), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
    use_cpu=True, report_to=[], logging_strategy="no", save_strategy="no", disable_tqdm=True,
)  # fmt: skip
trainer = WinnowTrainer(model=GPT2LMHeadModel(config), args=args, train_dataset=train,
                        sampler=sampler)  # fmt: skip
trainer.train()
record["global_step"] = trainer.state.global_step
record["world"] = trainer.args.world_size
dump("trainer", record)
