"""ODMSampler: the EXP3 mixture against its formula, warm-up, one domain per batch, exact resume
through a prefetching DataLoader and torch.save/load, and a real two-process gloo run."""

import io
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from winnow.samplers import IndexedDataset, ODMSampler

K = 4
DOMAINS = np.repeat(np.arange(K), [50, 30, 15, 5])  # unequal natural proportions
N = len(DOMAINS)
DIFFICULTY = np.array([0.5, 2.0, 1.0, 3.0])


def loss_of(ids: torch.Tensor, step: int) -> torch.Tensor:
    d = torch.from_numpy(DIFFICULTY[DOMAINS[ids.numpy()]])
    wobble = ((ids * 2654435761 + step * 97) % 100).double() / 1000
    return (d + wobble).float()


def reference_mixture(stream, alpha, warmup):
    """The paper's EXP3 with decaying exploration, written from the formula, for a list of
    (domain, loss) observations; returns pi before each draw."""
    rewards, out = np.zeros(K), []
    natural = np.bincount(DOMAINS) / N

    def eps(n):
        return 1 / K if n <= 0 else min(1 / K, math.sqrt(math.log(K) / (K * n)))

    for t, (domain, loss) in enumerate(stream):
        if t < warmup:
            pi = natural
        else:
            w = np.exp(eps(t - 1) * rewards)
            pi = (1 - K * eps(t)) * w / w.sum() + eps(t)
        out.append(pi)
        rewards[domain] = alpha * rewards[domain] + (1 - alpha) * loss / pi[domain]
    return np.array(out)


def drive(sampler, *, stop_at=None, start=0):
    loader = DataLoader(IndexedDataset(range(N)), batch_sampler=sampler)
    seen = []
    for step, (ids, _) in enumerate(loader, start=start):
        losses = loss_of(ids, step)
        sampler.update(ids, losses)
        seen.append((ids.tolist(), float(losses.double().mean())))
        if len(seen) == stop_at:
            buffer = io.BytesIO()
            torch.save(sampler.state_dict(), buffer)
            return seen, buffer.getvalue()
    return seen, None


def test_mixture_follows_the_exp3_formula_on_a_fixed_loss_stream():
    s = ODMSampler(DOMAINS, batch_size=8, num_steps=60, alpha=0.9, warmup_steps=5, seed=3)
    seen, _ = drive(s)
    stream = [(int(DOMAINS[ids[0]]), loss) for ids, loss in seen]
    np.testing.assert_allclose(s.mixture_history(), reference_mixture(stream, 0.9, 5), rtol=1e-12)
    assert len({d for d, _ in stream}) == K
    # the hard domains earn the larger share of the mixture as rewards accumulate
    final = s.domain_weights
    assert final[3] > final[0] and final[1] > final[0]
    np.testing.assert_allclose(final.sum(), 1.0)


def test_warmup_draws_follow_the_natural_proportions():
    s = ODMSampler(DOMAINS, batch_size=2, num_steps=4000, warmup_steps=4000, seed=1)
    counts = np.zeros(K)
    for ids in s:
        counts[DOMAINS[ids[0]]] += 1
        s.update(torch.tensor(ids), torch.ones(2))
    np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.025)
    assert np.allclose(s.mixture_history(), np.bincount(DOMAINS) / N)


def test_every_batch_is_one_domain_drawn_without_replacement():
    s = ODMSampler(DOMAINS, batch_size=5, num_steps=200, seed=2)
    per_domain = {d: [] for d in range(K)}
    for ids in s:
        domains = set(DOMAINS[ids].tolist())
        assert len(domains) == 1
        per_domain[domains.pop()].extend(ids)
        s.update(torch.tensor(ids), loss_of(torch.tensor(ids), 0))
    for d, got in per_domain.items():
        size = int((DOMAINS == d).sum())
        full = len(got) // size * size
        for c in range(0, full, size):  # each full pass over a domain is a permutation of it
            assert sorted(got[c : c + size]) == sorted(np.flatnonzero(DOMAINS == d).tolist())


@pytest.mark.parametrize("stop", [1, 7, 23, 44])
def test_resume_at_any_step_equals_the_uninterrupted_run(stop):
    make = lambda: ODMSampler(DOMAINS, batch_size=6, num_steps=45, warmup_steps=3, seed=9)  # noqa: E731
    uninterrupted = make()
    full, _ = drive(uninterrupted)
    head, ckpt = drive(make(), stop_at=stop)
    resumed = make()
    resumed.load_state_dict(torch.load(io.BytesIO(ckpt)))  # torch's defaults: weights_only
    tail, _ = drive(resumed, start=stop)
    assert head + tail == full
    np.testing.assert_array_equal(resumed.mixture_history(), uninterrupted.mixture_history())


def test_resume_with_batches_still_in_the_prefetch_queue():
    make = lambda: ODMSampler(DOMAINS, batch_size=4, num_steps=30, seed=4)  # noqa: E731
    full, _ = drive(make())
    s = make()
    it = iter(s)
    drawn = [next(it) for _ in range(5)]  # a loader 3 batches ahead of training
    for step, ids in enumerate(drawn[:2]):
        s.update(torch.tensor(ids), loss_of(torch.tensor(ids), step))
    state = s.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail, _ = drive(resumed, start=2)
    assert [ids for ids, _ in tail][:3] == drawn[2:]  # in-flight batches come again first
    assert len(tail) == 28


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match=r"domains \[1\] have no examples"):
        ODMSampler(np.array([0, 0, 2]), 2, 5)
    with pytest.raises(TypeError, match="integers"):
        ODMSampler(np.array([0.0, 1.0]), 2, 5)
    with pytest.raises(ValueError, match=r"in \[0, K\)"):
        ODMSampler(np.array([0, -1]), 2, 5)
    with pytest.raises(ValueError, match="alpha"):
        ODMSampler(DOMAINS, 2, 5, alpha=1.0)
    with pytest.raises(ValueError, match="reward"):
        ODMSampler(DOMAINS, 2, 5, reward="log")
    s = ODMSampler(DOMAINS, 4, 5)
    with pytest.raises(ValueError, match="no batch is awaiting"):
        s.update(torch.arange(4), torch.ones(4))
    ids = next(iter(s))
    with pytest.raises(ValueError, match="not the batch of step 0"):
        s.update(torch.tensor(ids[::-1]), torch.ones(4))
    with pytest.raises(ValueError, match="NaN/inf"):
        s.update(torch.tensor(ids), torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(ValueError, match="per-example"):
        s.update(torch.tensor(ids), torch.tensor(1.0))
    with pytest.raises(ValueError, match="alpha: stored 0.9, here 0.5"):
        ODMSampler(DOMAINS, 4, 5, alpha=0.5).load_state_dict(s.state_dict())


def test_official_code_variants_change_the_mixture():
    runs = {}
    variants = (("loss_over_pi", "softmax"), ("exp_loss", "linear"), ("loss", "softmax"))
    for reward, normalize in variants:
        s = ODMSampler(DOMAINS, 4, 40, reward=reward, normalize=normalize, seed=5)
        drive(s)
        runs[reward, normalize] = s.domain_weights
        assert np.all(runs[reward, normalize] >= s._eps(40) - 1e-12)  # exploration floor
    values = list(runs.values())
    assert not np.allclose(values[0], values[1]) and not np.allclose(values[0], values[2])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        s = ODMSampler(DOMAINS, batch_size=6, num_steps=40, warmup_steps=2, seed=8)
        got = []
        for step, ids in enumerate(s):
            got.append(ids)
            s.update(torch.tensor(ids), loss_of(torch.tensor(ids), step))
        torch.save({"got": got, "history": s.mixture_history(), "final": s.domain_weights},
                   f"{out_dir}/rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_share_one_mixture_and_split_every_batch(tmp_path):
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    np.testing.assert_array_equal(r0["history"], r1["history"])
    np.testing.assert_array_equal(r0["final"], r1["final"])
    single = ODMSampler(DOMAINS, batch_size=6, num_steps=40, warmup_steps=2, seed=8)
    for step, (a, b, ids) in enumerate(zip(r0["got"], r1["got"], single, strict=True)):
        assert len(a) == len(b) == 3 and a + b != [] and sorted(a + b) == sorted(ids)
        assert a == ids[0::2] and b == ids[1::2]
        # the mean over both ranks' slices is the one-process batch mean: the same reward
        single.update(torch.tensor(ids), loss_of(torch.tensor(ids), step))
    np.testing.assert_allclose(r0["history"], single.mixture_history(), rtol=1e-12)


def test_domains_read_from_a_scoring_run_in_the_store(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow import pipelines
    from winnow.pipelines.toylm import DOMAINS as NAMES
    from winnow.pipelines.toylm import make_corpus
    from winnow.store import ScoreStore

    corpus = make_corpus(60, max_length=16, seed=2)
    names = np.array(NAMES)[corpus.domain]
    table = pa.table({"tokens": pa.array(corpus.documents(), pa.list_(pa.int64())),
                      "domain": pa.array(names.tolist())})  # fmt: skip
    pq.write_table(table, tmp_path / "toks.parquet")
    from winnow.pipelines.models import ModelSpec

    model = ModelSpec("winnow.pipelines.toylm:TinyCausalLM",
                      kwargs={"vocab_size": 32, "max_length": 16, "dim": 16, "heads": 2})
    pipelines.score(str(tmp_path / "toks.parquet"), model,
                    token_column="tokens", domain_column="domain", metrics=["nll"],
                    store=tmp_path / "store", run="lm", executor="inline",
                    progress=False)  # fmt: skip
    with pytest.raises(TypeError, match="store must be a ScoreStore"):
        ODMSampler.from_store(tmp_path / "store", "lm", batch_size=4, num_steps=20)
    sampler = ODMSampler.from_store(ScoreStore(tmp_path / "store"), "lm", 4, num_steps=20)
    # string domains are stored as codes of the sorted names
    order = sorted(NAMES)
    want = np.array([order.index(n) for n in names])
    assert sampler.num_domains == len(NAMES)
    for batch in sampler:
        assert len(set(want[batch])) == 1  # one domain per batch, the stored one
    with pytest.raises(ValueError, match=r"domains \[5, 6\] have no examples"):
        ODMSampler.from_store(ScoreStore(tmp_path / "store"), "lm", 4, 5, num_domains=7)

    store = ScoreStore(tmp_path / "store")
    store.write("partial", "domain", np.delete(np.arange(10), 5), np.zeros(9), shard=0)
    with pytest.raises(ValueError, match=r"no domain for 1 of 10 example_ids \(first \[5\]\)"):
        ODMSampler.from_store(store, "partial", 4, 5)
    store.write("half", "domain", np.arange(4), np.array([0, 1.5, 1, 0]), shard=0)
    with pytest.raises(ValueError, match="non-integer"):
        ODMSampler.from_store(store, "half", 4, 5)
