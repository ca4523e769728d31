"""The language-model mixing benchmark: `winnow bench --task lm --quick` end to end (its outputs
well-formed and consistent), the fixed-mixture batches, and the steps-to-target rule. Outcome
numbers belong in the benchmark run, not here."""

import json
import time

import numpy as np
import pytest

from winnow.pipelines.bench import outcomes
from winnow.pipelines.bench._lm_methods import method_names
from winnow.pipelines.bench._lm_summary import summarise
from winnow.pipelines.bench._lm_train import MixtureBatches
from winnow.pipelines.toylm import DOMAINS


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_lm")
    started = time.perf_counter()
    assert outcomes.main(["--task", "lm", "--quick", "--out", str(out), "--tag", "smoke"]) == 0
    return out, time.perf_counter() - started


def test_json_is_complete_and_consistent(quick_run):
    out, seconds = quick_run
    doc = json.loads((out / "lm_smoke.json").read_text())
    cfg, summary = doc["config"], doc["summary"]
    assert cfg["methods"] == method_names() and cfg["seeds"] == 1
    assert doc["total_wall_s"] <= seconds
    for name, seeds in doc["runs"].items():
        (res,) = seeds
        steps = [h["step"] for h in res["history"]]
        assert steps == list(range(0, cfg["steps"] + 1, cfg["eval_every"])), name
        assert res["steps"] == cfg["steps"] and sum(res["domain_docs"]) == cfg["steps"] * 16
        for h in res["history"]:
            assert len(h["per_domain"]) == len(DOMAINS)
            assert h["mean"] == pytest.approx(np.mean(h["per_domain"]))
        assert res["train_cpu_s"] > res["sampler_cpu_s"] > 0
        row = summary["methods"][name]
        for key in ("mean", "natural"):
            reached = row[f"steps_to_{key}"]
            assert reached is None or reached % cfg["eval_every"] == 0
    for key in ("mean", "natural"):
        target = summary["targets"][key]
        best = summary["methods"][target["baseline"]]
        assert target["baseline"] in ("natural", "uniform") and target["loss"] == best[key]
        assert best[f"steps_to_{key}"] == target["steps"] is not None
    odm = doc["runs"]["odm"][0]
    pi = np.array(odm["mixture"]["pi"])
    np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-4)  # rounded to 5 digits
    assert (pi >= 0).all() and pi.shape[1] == len(DOMAINS)
    setup = summary["learnability_setup"]
    shares = np.asarray(setup["kept_share_per_domain"])
    assert ((shares >= 0) & (shares <= 1)).all()
    assert setup["learner_steps"] == round(cfg["learner_frac"] * cfg["steps"])
    assert np.isfinite(setup["mean_learnability_per_domain"]).all()
    trained = np.asarray(doc["runs"]["learnability"][0]["domain_docs"])
    assert (trained[shares == 0] == 0).all()  # only kept documents are trained on


def test_markdown_and_plots(quick_run):
    out, _ = quick_run
    text = (out / "lm_smoke.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(method_names())
    assert all(r.count("|") == rows[0].count("|") for r in rows)
    for name in method_names():
        assert f"| {name} |" in text
    assert "ODM's overhead" in text and "Learnability filter" in text and "Wall clock" in text
    for png in ("lm_smoke_loss.png", "lm_smoke_mixture.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bad_arguments_exit_2_naming_them(capsys):
    with pytest.raises(SystemExit) as info:
        outcomes.main(["--task", "lm", "--methods", "odm,nope"])
    assert info.value.code == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err


def test_mixture_batches_follow_their_weights_and_pool():
    domains = np.repeat(np.arange(5), [300, 150, 100, 100, 350])
    weights = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    it = iter(MixtureBatches(domains, weights, 50, seed=3))
    drawn = np.concatenate([next(it) for _ in range(400)])
    share = np.bincount(domains[drawn], minlength=5) / len(drawn)
    np.testing.assert_allclose(share, weights, atol=0.02)
    # each domain's stream is a permutation: the first pass never repeats an id
    first = drawn[domains[drawn] == 2][:100]
    assert len(np.unique(first)) == 100
    pool = np.arange(len(domains)) % 3 == 0
    it = iter(MixtureBatches(domains, np.ones(5), 20, seed=0, pool=pool, one_domain=True))
    batches = [next(it) for _ in range(100)]
    assert all(pool[b].all() and len(set(domains[b])) == 1 for b in batches)
    again = iter(MixtureBatches(domains, np.ones(5), 20, seed=0, pool=pool, one_domain=True))
    assert all(np.array_equal(b, next(again)) for b in batches)


def _result(curve):
    history = [{"step": 10 * i, "per_domain": [v] * 5, "mean": v, "natural": v}
               for i, v in enumerate(curve)]  # fmt: skip
    return {"history": history, "steps": 10 * (len(curve) - 1), "sampler_cpu_s": 0.1,
            "train_cpu_s": 1.0, "sampler_wall_s": 0.1, "train_wall_s": 1.0,
            "domain_docs": [1] * 5}  # fmt: skip


def test_steps_to_the_best_baselines_final_loss():
    summary = summarise({
        "natural": [_result([4, 3, 2.5, 2.2])],
        "uniform": [_result([4, 3, 2.4, 2.0]), _result([4, 3, 2.2, 2.0])],
        "fast": [_result([4, 2.5, 2.0, 1.9])],
        "slow": [_result([4, 3.5, 3, 2.5])],
    })  # fmt: skip
    target = summary["targets"]["mean"]
    assert target == {"baseline": "uniform", "loss": 2.0, "steps": 30}
    rows = summary["methods"]
    assert rows["fast"]["steps_to_mean"] == 20
    assert rows["fast"]["fewer_steps_mean"] == pytest.approx(1 / 3)
    assert rows["slow"]["steps_to_mean"] is None and rows["natural"]["steps_to_mean"] is None
    assert rows["uniform"]["mean_std"] == 0.0 and rows["uniform"]["seeds"] == 2
