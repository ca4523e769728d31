"""The public extension contracts, used as a user would: a toy epoch method written as an
``EpochPolicy`` and a toy in-step method written as an ``InStepSelector`` in this file, nothing
else. Both resume exactly through ``torch.save``/``torch.load`` defaults and run under a real
two-process gloo group; every built-in state obeys the same state convention."""

import io

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from winnow.samplers import (
    EpochPlan,
    EpochPolicy,
    EpochSampler,
    HardBatchSampler,
    ImportanceSelector,
    IndexedDataset,
    InfoBatchSampler,
    InStepSelector,
    JESTSelector,
    PrunedSampler,
    RhoLossSelector,
    RS2Sampler,
    ScoreTable,
    TopLossSelector,
)

N, EPOCHS, BATCH = 301, 5, 16


class HardHalf(EpochPolicy):
    """Toy method: every example at or above the median score, plus a random ``share`` of the
    rest reweighted by ``1 / share`` (so the epoch's gradient stays unbiased)."""

    def __init__(self, num_examples: int, share: float = 0.5):
        super().__init__(num_examples)
        self.share = share
        self.planned: list[int] = []

    def config(self):
        return {"share": self.share}

    def plan(self, epoch, scores, rng):
        gen = rng(epoch)
        easy = scores.values < np.median(scores.values)
        lucky = easy & (gen.random(self.num_examples) < self.share)
        ids = gen.permutation(np.flatnonzero(~easy | lucky))
        self.planned.append(epoch)
        return EpochPlan(ids=ids, weight_mask=easy, gamma=1.0 / self.share)

    def state_dict(self):
        return {"planned": list(self.planned)}

    def load_state_dict(self, state):
        self.planned = list(state["planned"])


class NoisyEasiest(InStepSelector):
    """Toy selector: the ``k`` lowest scores after Gumbel noise of scale ``noise``."""

    default_keep = 0.25

    def __init__(self, keep=None, *, noise: float = 0.1, **options):
        super().__init__(keep=keep, **options)
        self.noise = noise

    def config(self):
        return {**super().config(), "noise": self.noise}

    def choose(self, scores, k, generator):
        u = torch.rand(scores.shape, generator=generator, device=scores.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-12)))
        rows = torch.topk(-scores + self.noise * gumbel, k).indices
        return rows, torch.full((k,), 2.0, device=scores.device)


def loss_of(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    return ((ids * 2654435761 + epoch * 97) % 1000).float() / 1000 + 0.01


def save_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()))  # weights_only=True, torch's default


def drive_epochs(sampler, *, start=0, stop_at=None):
    loader = DataLoader(IndexedDataset(range(sampler.num_examples)), batch_size=BATCH,
                        sampler=sampler)  # fmt: skip
    seen = []
    for epoch in range(start, EPOCHS):
        sampler.set_epoch(epoch)
        consumed = sampler.position
        for ids, _ in loader:
            weighted = sampler.reweight(ids, loss_of(ids, epoch))
            seen.append((epoch, ids.tolist(), round(float(weighted), 6)))
            consumed += len(ids)
            if len(seen) == stop_at:
                return seen, save_load(
                    {"sampler": sampler.state_dict(position=consumed),
                     "scores": sampler.scores.state_dict()}
                )  # fmt: skip
    sampler.set_epoch(EPOCHS)
    return seen, sampler.scores.values.copy()


def test_toy_policy_runs_and_resumes_exactly_anywhere():
    full, final = drive_epochs(EpochSampler(HardHalf(N), seed=4))
    assert len({len([b for b in full if b[0] == e]) for e in range(EPOCHS)}) > 1  # plans vary
    for stop in (1, 7, 19, len(full) - 1):
        head, ckpt = drive_epochs(EpochSampler(HardHalf(N), seed=4), stop_at=stop)
        resumed = EpochSampler(HardHalf(N), seed=4)
        resumed.scores.load_state_dict(ckpt["scores"])
        resumed.load_state_dict(ckpt["sampler"])
        assert resumed.policy.planned == list(range(head[-1][0] + 1))
        tail, final_resumed = drive_epochs(resumed, start=ckpt["sampler"]["epoch"])
        assert head + tail == full
        np.testing.assert_array_equal(final_resumed, final)


def test_toy_policy_state_refuses_another_configuration():
    _, ckpt = drive_epochs(EpochSampler(HardHalf(N, share=0.5), seed=4), stop_at=3)
    with pytest.raises(ValueError, match="share: stored 0.5, here 0.3"):
        EpochSampler(HardHalf(N, share=0.3), seed=4).load_state_dict(ckpt["sampler"])
    with pytest.raises(ValueError, match="seed: stored 4, here 5"):
        EpochSampler(HardHalf(N), seed=5).load_state_dict(ckpt["sampler"])
    with pytest.raises(TypeError, match="policy must be an EpochPolicy"):
        EpochSampler(object())


def test_policy_must_return_a_plan_and_implement_the_contract():
    class Broken(EpochPolicy):
        def config(self):
            return {}

        def plan(self, epoch, scores, rng):
            return np.arange(3)

    with pytest.raises(TypeError, match="must return an EpochPlan"):
        len(EpochSampler(Broken(3)))
    with pytest.raises(NotImplementedError, match="must implement plan"):
        len(EpochSampler(type("Bare", (EpochPolicy,), {"config": lambda self: {}})(3)))


def test_toy_policy_total_steps_counts_planned_epochs_exactly():
    sampler = EpochSampler(HardHalf(N), seed=1)
    with pytest.raises(ValueError, match="pass num_epochs"):
        sampler.total_steps(BATCH)
    assert sampler.total_steps(BATCH, 3) == 3 * -(-N // BATCH)  # unknown lengths: full
    seen, _ = drive_epochs(sampler)
    steps = [sum(1 for b in seen if b[0] == e) for e in range(EPOCHS)]
    assert sampler.total_steps(BATCH, EPOCHS) == sum(steps) < EPOCHS * -(-N // BATCH)
    assert sampler.epoch_steps(BATCH, EPOCHS) == steps
    hard = HardBatchSampler(100, 10, delta=0.5, num_epochs=3)
    assert hard.epoch_steps() == [10, 10, 10] and hard.total_steps() == 30


def run_selector(make, steps, *, start_state=None, start_step=0):
    sel = make()
    if start_state is not None:
        sel.load_state_dict(start_state)
    picks, state = [], None
    for step in range(start_step, steps):
        ids = torch.arange(step * 40, step * 40 + 40)
        scores = loss_of(ids, step)
        rows, weights = sel.select(ids, scores)
        picks.append((rows.tolist(), weights.tolist()))
        if step == steps // 2:
            state = save_load(sel.state_dict())
    return picks, state


def test_toy_selector_picks_resumes_and_refuses_other_configurations():
    make = lambda: NoisyEasiest(noise=0.05, seed=3)  # noqa: E731
    full, state = run_selector(make, 12)
    assert all(len(rows) == 10 and set(w) == {2.0} for rows, w in full)
    scores = loss_of(torch.arange(0, 40), 0)
    assert np.mean(scores[full[0][0]].numpy()) < float(scores.mean())  # easy rows chosen
    tail, _ = run_selector(make, 12, start_state=state, start_step=7)
    assert tail == full[7:]
    assert run_selector(lambda: NoisyEasiest(noise=0.05, seed=4), 12)[0] != full
    with pytest.raises(ValueError, match="noise: stored 0.05, here 0.2"):
        NoisyEasiest(noise=0.2, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="'NoisyEasiest' state; expected a 'TopLossSelector'"):
        TopLossSelector(seed=3).load_state_dict(state)


def _selector_factories():
    il = np.linspace(0.0, 0.5, 2000).astype(np.float32)
    return {
        "jest": lambda: JESTSelector(il, filter_ratio=0.75, seed=1),
        "rho": lambda: RhoLossSelector(il, keep=0.2, kind="stochastic", seed=1),
        "toploss": lambda: TopLossSelector(keep=0.3, beta=1.0, seed=1),
        "importance": lambda: ImportanceSelector(batch_size=8, tau_th=0.0, seed=1),
    }


@pytest.mark.parametrize("name", sorted(_selector_factories()))
def test_every_selector_state_loads_with_torch_load_defaults(name):
    make = _selector_factories()[name]
    full, state = run_selector(make, 10)
    assert set(state) >= {"kind", "version", "config", "steps", "generators"}
    tail, _ = run_selector(make, 10, start_state=state, start_step=6)
    assert tail == full[6:]


@pytest.mark.parametrize(
    "make",
    [
        lambda: InfoBatchSampler(N, EPOCHS, prune_ratio=0.5, seed=2),
        lambda: RS2Sampler(N, 0.3, seed=2),
        lambda: PrunedSampler(np.cos(np.arange(N)), 0.4, seed=2),
        lambda: EpochSampler(HardHalf(N), seed=2),
    ],
    ids=["infobatch", "rs2", "pruned", "toy"],
)
def test_every_epoch_sampler_and_score_table_state_is_plain(make):
    sampler = make()
    _, ckpt = drive_epochs(sampler, stop_at=25)
    for key, state in ckpt.items():
        assert {"kind", "version", "config"} <= set(state), key
    fresh = make()
    fresh.scores.load_state_dict(ckpt["scores"])
    fresh.load_state_dict(ckpt["sampler"])
    assert fresh.epoch == ckpt["sampler"]["epoch"]


def test_hard_batch_and_score_table_states_refuse_mismatches():
    s = HardBatchSampler(100, 10, delta=0.5, num_epochs=3, seed=1)
    for ids in s:
        s.update(torch.tensor(ids), loss_of(torch.tensor(ids), 0))
    state = save_load(s.state_dict())
    again = HardBatchSampler(100, 10, delta=0.5, num_epochs=3, seed=1)
    again.load_state_dict(state)
    assert again.batch_losses()[0].tolist() == s.batch_losses()[0].tolist()
    with pytest.raises(ValueError, match="delta: stored 0.5, here 0.3"):
        HardBatchSampler(100, 10, delta=0.3, num_epochs=3, seed=1).load_state_dict(state)
    with pytest.raises(TypeError, match="num_epochs must be an int"):
        HardBatchSampler(100, 10, delta=0.5, num_epochs=2.7)
    table = ScoreTable(5)
    bad = dict(table.state_dict(), values=torch.tensor([0.0, 1, float("nan"), 1, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        table.load_state_dict(bad)
    short = dict(table.state_dict(), values=torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        table.load_state_dict(short)
    assert not table.restored  # a refused state leaves the table as it was


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sampler = EpochSampler(HardHalf(N), seed=7)
        loader = DataLoader(IndexedDataset(range(N)), batch_size=BATCH, sampler=sampler)
        plans, shards, state = [], [], None
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            plans.append(sampler.plan.ids.copy())
            shard = []
            for step, (ids, _) in enumerate(loader):
                shard.extend(ids.tolist())
                sampler.reweight(ids, loss_of(ids, epoch))
                if epoch == 2 and step == 1:
                    state = {"sampler": sampler.state_dict(position=(step + 1) * BATCH),
                             "scores": sampler.scores.state_dict()}  # fmt: skip
            shards.append(np.array(shard))
        sampler.set_epoch(EPOCHS)
        selector = NoisyEasiest(seed=7)
        picks = [selector.select(torch.arange(40) + 40 * rank, torch.rand(40))[0].tolist()
                 for _ in range(3)]  # fmt: skip
        torch.save(
            {"plans": plans, "shards": shards, "scores": sampler.scores.values.copy(),
             "state": state, "picks": picks, "selector_rank": selector.rank},
            f"{out_dir}/rank{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_toy_sampler_and_selector_under_two_gloo_ranks(tmp_path):
    mp.start_processes(
        _ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    single, final = drive_epochs(EpochSampler(HardHalf(N), seed=7, rank=0, world_size=1))
    for epoch in range(EPOCHS):
        plan = r0["plans"][epoch]
        np.testing.assert_array_equal(plan, r1["plans"][epoch])
        s0, s1 = r0["shards"][epoch], r1["shards"][epoch]
        padded = np.concatenate([plan, plan])[: 2 * len(s0)]
        np.testing.assert_array_equal(np.stack([s0, s1], axis=1).ravel(), padded)
        assert sorted(set(s0) | set(s1)) == sorted(plan.tolist())
    np.testing.assert_array_equal(r0["scores"], r1["scores"])
    np.testing.assert_array_equal(r0["scores"], final)  # gathered feedback = one process
    # both ranks checkpoint the same gathered state; a one-process resume continues it exactly
    for key in ("sampler", "scores"):
        assert r0["state"][key]["config"] == r1["state"][key]["config"]
    np.testing.assert_array_equal(
        np.sort(r0["state"]["scores"]["pending_ids"].numpy()),
        np.sort(r1["state"]["scores"]["pending_ids"].numpy()),
    )
    assert (r0["selector_rank"], r1["selector_rank"]) == (0, 1)
    assert r0["picks"] != r1["picks"]  # ranks draw independent noise
