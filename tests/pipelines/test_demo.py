"""The README's main command, `winnow demo`, end to end on the session's Ray (small size)."""

import io

import numpy as np
import pytest
import torch

from winnow.pipelines.demo import _train, run_demo
from winnow.store import ScoreStore


@pytest.mark.timeout(300)  # two demo runs: about 50 s on a quiet 2-core machine
def test_demo_answers_its_questions_and_can_run_twice(ray_session, tmp_path):
    out = io.StringIO()
    torch.manual_seed(1234)
    rng_before = torch.random.get_rng_state()
    first = run_demo(tmp_path / "store", num_samples=2000, out=out)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    text = out.getvalue()
    assert "hardest examples" in text and "pairs_found" in text

    store = ScoreStore(tmp_path / "store")
    manifest = store.manifest(first["run"])
    assert manifest["status"] == "complete"
    pool = 800 + 100  # even ids of the 1600 training examples, plus the injected copies
    for metric in ("loss", "ref_loss", "learnability", "el2n", "grad_norm", "cluster"):
        assert manifest["row_counts"][metric] == pool
    assert manifest["vector_rows"] == {"embedding": pool}

    answers = list(first["answers"].values())
    hardest, shares, quantiles, _clusters, dedup = (a.to_pylist() for a in answers)
    assert len(hardest) == 8
    share = {row["metric"]: row["mislabelled_share"] for row in shares}
    # RHO-LOSS: learnability discounts examples the reference also gets wrong (noisy labels),
    # so its top picks hold far fewer flipped labels than the top by loss.
    assert share["learnability"] < 0.5 * share["loss"]
    assert quantiles[0]["examples"] == pool
    assert dedup[0]["pairs_found"] >= 90 and dedup[0]["others_flagged"] < 50

    torch.manual_seed(999)  # another global RNG state changes nothing: the demo has its own
    second = run_demo(tmp_path / "store", num_samples=2000, out=io.StringIO())
    assert second["run"] != first["run"]
    names = {r["name"] for r in store.runs()}
    assert {first["run"], first["truth_run"], second["run"], second["truth_run"]} <= names
    for metric in ("loss", "ref_loss", "grad_norm", "cluster"):
        np.testing.assert_array_equal(
            store.read(second["run"], metric)[0], store.read(first["run"], metric)[0]
        )


def test_demo_training_is_deterministic_and_leaves_the_global_rng_alone():
    x = np.random.default_rng(0).normal(size=(200, 40)).astype(np.float32)
    y = np.arange(200) % 10
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    first = _train(x, y, epochs=1, seed=3, out=io.StringIO(), name="a")
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(8)  # a different global state must not change the model
    second = _train(x, y, epochs=1, seed=3, out=io.StringIO(), name="a")
    other = _train(x, y, epochs=1, seed=4, out=io.StringIO(), name="a")
    for name, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[name], value, rtol=0, atol=0)
    assert not torch.equal(other.state_dict()["classifier.weight"], first.classifier.weight)
