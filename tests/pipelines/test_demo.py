"""The README's main command, `winnow demo`, end to end on the session's Ray (small size)."""

import io

import pytest

from winnow.pipelines.demo import run_demo
from winnow.store import ScoreStore


@pytest.mark.timeout(150)
def test_demo_answers_its_questions_and_can_run_twice(ray_session, tmp_path):
    out = io.StringIO()
    first = run_demo(tmp_path / "store", num_samples=2000, out=out)
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

    second = run_demo(tmp_path / "store", num_samples=2000, epochs=1, out=io.StringIO())
    assert second["run"] != first["run"]
    names = {r["name"] for r in store.runs()}
    assert {first["run"], first["truth_run"], second["run"], second["truth_run"]} <= names
