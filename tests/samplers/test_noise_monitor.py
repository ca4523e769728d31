"""NoiseScaleMonitor: a known answer, exactness against hand-computed norms, no host sync,
the store's noise_scale view, resume, refusals, and a real two-process gloo run."""

import copy

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from winnow.samplers import NoiseScaleMonitor
from winnow.selection import noise_scale_two_batches, per_example_grad_norms
from winnow.store import ScoreStore

D, SIGMA = 10, 1.0
# Linear regression y = x.w* + eps, x ~ N(0, I_D), eps ~ N(0, SIGMA^2), per-example loss
# 0.5 (x.w - y)^2 at w = w* + delta with |delta| = 1: g_i = x_i (x_i.delta - eps_i), so
# G = delta and Sigma = (|delta|^2 + SIGMA^2) I + delta delta^T (Gaussian fourth moments):
# B_simple = tr(Sigma) / |G|^2 = D (1 + SIGMA^2) + 1 = 21 exactly.
TRUTH = D * (1 + SIGMA**2) + 1.0
TOLERANCE = 0.10  # relative; 600 steps at beta = 0.999 land within ~3 % (seeds 0-7)


def _loss(out, y):
    return 0.5 * (out.squeeze(-1) - y) ** 2


def _regression(seed: int = 0, data_seed: int | None = None):
    """The model at ``w* + delta`` and a batch sampler (its own stream per ``data_seed``)."""
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(D, generator=gen)
    delta = torch.randn(D, generator=gen)
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + delta / delta.norm())[None])
    if data_seed is not None:
        gen = torch.Generator().manual_seed(data_seed)

    def batch(b: int):
        x = torch.randn(b, D, generator=gen)
        return x, x @ w_star + SIGMA * torch.randn(b, generator=gen)

    return model, batch


def test_both_estimators_find_the_known_noise_scale_of_linear_regression():
    found = {}
    for estimator, micro, accumulate in (("per_example", 64, 1), ("two_batch", 32, 2)):
        model, batch = _regression()
        monitor = NoiseScaleMonitor(beta=0.999).attach(model, estimator=estimator)
        for _ in range(600):  # the parameters stay put: every step samples the same B_simple
            model.zero_grad()
            for _ in range(accumulate):
                x, y = batch(micro)
                (_loss(model(x), y).mean() / accumulate).backward()
            monitor.step()
        found[estimator] = monitor.b_simple
        assert monitor.estimate.grad_sq == pytest.approx(1.0, rel=TOLERANCE)
    for estimator, value in found.items():
        assert value == pytest.approx(TRUTH, rel=TOLERANCE), (estimator, value)


def _hand_estimates(model, batch, micro, accumulate, reduction):
    """Per step: the two-batch estimate from gradients taken apart by hand (no hooks)."""
    reference = copy.deepcopy(model)
    x, y = zip(*(batch(micro) for _ in range(accumulate)), strict=True)
    grads = [
        torch.autograd.grad(_loss(reference(xj), yj).mean(), reference.weight)[0]
        for xj, yj in zip(x, y, strict=True)
    ]
    small = float(np.mean([float(g.square().sum()) for g in grads]))
    big = float(torch.stack(grads).mean(0).square().sum())
    norms = per_example_grad_norms(reference, _loss, torch.cat(x), torch.cat(y))
    per_example = float(norms.double().square().mean())
    n = micro * accumulate
    two = noise_scale_two_batches(small, big, micro, n) if accumulate > 1 else None
    return (x, y), two, noise_scale_two_batches(per_example, big, 1, n)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("estimator", ["two_batch", "per_example"])
def test_hooks_measure_exactly_what_the_gradients_say(estimator, reduction):
    model, batch = _regression(1)
    monitor = NoiseScaleMonitor(beta=0.0, log_every=1)  # beta 0: each row is that step's
    monitor.attach(model, estimator=estimator, loss_reduction=reduction)
    expected = []
    for _ in range(4):
        (x, y), two, per_example = _hand_estimates(model, batch, 16, 3, reduction)
        expected.append(two if estimator == "two_batch" else per_example)
        model.zero_grad()
        for xj, yj in zip(x, y, strict=True):
            losses = _loss(model(xj), yj)
            (losses.mean() / 3 if reduction == "mean" else losses.sum()).backward()
        # the norms were taken as the backwards ran: clipping before step() changes nothing
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        monitor.step()
    got = monitor.history()
    np.testing.assert_allclose(got["grad_sq"], [e.grad_sq for e in expected], rtol=1e-4)
    np.testing.assert_allclose(got["trace_cov"], [e.trace_cov for e in expected], rtol=1e-4)
    assert set(got["batch_size"]) == {48} and set(got["estimator"]) == {estimator}


@pytest.mark.parametrize("estimator", ["two_batch", "per_example"])
def test_steps_never_read_a_device_value_until_settled(estimator):
    """On the meta device every read of a value raises: forward, backward, hooks and step()
    run there untouched; only reading the estimate needs the data (one copy)."""
    model = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 1)).to("meta")
    monitor = NoiseScaleMonitor(log_every=2).attach(model, estimator=estimator)
    for _ in range(5):
        model.zero_grad()
        for _ in range(2):
            x, y = torch.randn(8, D, device="meta"), torch.randn(8, device="meta")
            (_loss(model(x), y).mean() / 2).backward()
        monitor.step()
    assert len(monitor._log.pending) == 5
    with pytest.raises(NotImplementedError, match="meta"):
        _ = monitor.b_simple


def test_logged_into_the_store_every_k_steps_and_resume_replaces_the_tail(tmp_path):
    store = ScoreStore(tmp_path / "store")

    def train(monitor, start, stop):
        for step in range(start, stop):
            gen = torch.Generator().manual_seed(step)
            norms = torch.rand(32, generator=gen) + 1.0
            monitor.observe_per_example(norms, torch.rand((), generator=gen) * 0.1)

    whole = NoiseScaleMonitor(log_every=5, trace=store.trace_writer("whole"))
    train(whole, 0, 23)
    whole.close()
    rows = store.sql(
        "SELECT step, b_simple, batch_size, estimator FROM noise_scale "
        "WHERE run = 'whole' ORDER BY step"
    ).to_pydict()
    assert rows["step"] == [4, 9, 14, 19, 22]  # every 5 steps, and the last one at close
    assert set(rows["batch_size"]) == {32} and set(rows["estimator"]) == {"per_example"}
    assert rows["b_simple"][-1] == pytest.approx(whole.b_simple)

    first = NoiseScaleMonitor(log_every=5, trace=store.trace_writer("resumed"))
    train(first, 0, 12)
    state = first.state_dict()
    train(first, 12, 18)
    first.flush()  # rows of steps 14 are stored, then the run "crashes"
    again = NoiseScaleMonitor(log_every=5, trace=store.trace_writer("resumed"))
    again.load_state_dict(state)
    train(again, 12, 23)
    again.close()
    resumed = store.sql(
        "SELECT step, b_simple FROM noise_scale WHERE run = 'resumed' ORDER BY step"
    ).to_pydict()
    assert resumed["step"] == rows["step"]
    np.testing.assert_allclose(resumed["b_simple"], rows["b_simple"], rtol=1e-12)


def test_every_k_measures_one_step_in_k():
    model, batch = _regression()
    monitor = NoiseScaleMonitor(every=3, beta=0.0, log_every=1)
    monitor.attach(model, estimator="per_example")
    for _ in range(7):
        model.zero_grad()
        x, y = batch(8)
        _loss(model(x), y).mean().backward()
        monitor.step()
    assert monitor.history()["step"].tolist() == [0, 3, 6]


def test_refusals():
    bn = nn.Sequential(nn.Linear(D, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"exact ghost-norm rule.*'1.weight', '1.bias'"):
        NoiseScaleMonitor().attach(bn, estimator="per_example")
    layer = nn.Linear(D, D)
    reused = nn.Sequential(layer, nn.ReLU(), layer)
    monitor = NoiseScaleMonitor().attach(reused, estimator="per_example")
    reused(torch.randn(4, D)).sum().backward()
    with pytest.raises(ValueError, match="called more than once per forward"):
        monitor.step()
    model, batch = _regression()
    single = NoiseScaleMonitor().attach(model, estimator="two_batch")
    x, y = batch(8)
    _loss(model(x), y).mean().backward()
    with pytest.raises(ValueError, match="needs DDP or gradient accumulation"):
        single.step()
    with pytest.raises(ValueError, match="attach"):
        NoiseScaleMonitor().step()
    with pytest.raises(ValueError, match="b_small < b_big"):
        NoiseScaleMonitor().observe(1.0, 0.5, 8, 8)
    with pytest.raises(TypeError, match="write_noise_scale"):
        NoiseScaleMonitor(trace=object())


# ---------------------------------------------------------------------------- DDP (gloo)


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model, batch = _regression(0, data_seed=100 + rank)  # same parameters, own data
        reference = _regression(0)[0]  # unhooked: this rank's own gradient
        ddp = nn.parallel.DistributedDataParallel(model)
        result = {}
        for estimator in ("two_batch", "per_example"):
            monitor = NoiseScaleMonitor(beta=0.0, log_every=1).attach(ddp, estimator=estimator)
            expected = []
            for _ in range(3):
                x, y = batch(16)
                local = torch.autograd.grad(_loss(reference(x), y).mean(), reference.weight)[0]
                both = local.clone()
                dist.all_reduce(both)
                big = float((both / 2).square().sum())
                if estimator == "two_batch":
                    small = float(local.square().sum())
                    expected.append(noise_scale_two_batches(small, big, 16, 32))
                else:
                    norms = per_example_grad_norms(reference, _loss, x, y)
                    small = float(norms.double().square().mean())
                    expected.append(noise_scale_two_batches(small, big, 1, 32))
                ddp.zero_grad()
                _loss(ddp(x), y).mean().backward()
                monitor.step()
            monitor.detach()
            result[estimator] = (monitor.history(), expected)
        # the known answer, from the two batch sizes DDP gives for free: 32 per rank vs 64
        monitor = NoiseScaleMonitor(beta=0.999).attach(ddp, estimator="two_batch")
        for _ in range(600):
            ddp.zero_grad()
            x, y = batch(32)
            _loss(ddp(x), y).mean().backward()
            monitor.step()
        result["b_simple"] = monitor.b_simple
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_measure_before_and_after_the_all_reduce(tmp_path):
    mp.start_processes(
        _ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for estimator in ("two_batch", "per_example"):
            got, expected = result[estimator]
            np.testing.assert_allclose(got["grad_sq"], [e.grad_sq for e in expected], rtol=1e-4)
            np.testing.assert_allclose(got["trace_cov"], [e.trace_cov for e in expected], rtol=1e-4)
            assert set(got["batch_size"]) == {32}
        assert result["b_simple"] == pytest.approx(TRUTH, rel=TOLERANCE)
