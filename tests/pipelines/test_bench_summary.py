"""The benchmark's summary arithmetic on hand-made histories (no training)."""

import pytest

from winnow.pipelines.bench._summary import markdown_table, summarise


def _result(accs, *, step_bwd=100, cpu_per_point=1.0, setup_bwd=0, final=None):
    history = [
        {
            "forward": setup_bwd + i * step_bwd,
            "backward": setup_bwd + i * step_bwd,
            "steps": i,
            "wall_s": 2 * cpu_per_point * i,
            "cpu_s": cpu_per_point * i,
            "acc": a,
        }
        for i, a in enumerate(accs)
    ]
    last = history[-1]
    cost = {k: last[k] for k in ("forward", "backward", "steps", "wall_s", "cpu_s")}
    setup = {"forward": setup_bwd, "backward": setup_bwd, "steps": 0, "wall_s": 0.0, "cpu_s": 0.0}
    return {
        "seed": 0,
        "final_acc": final or accs[-1],
        "cost": cost,
        "setup": setup,
        "history": history,
    }


def test_time_to_target_speedup_and_savings():
    results = {
        # full reaches 0.9 * 1.0 = 0.9 at point 3 (cpu 3 s, 300 backward)
        "full": [_result([0.1, 0.5, 0.8, 0.95, 1.0])],
        # half the backward rows per point, reaches 0.9 at point 2: cpu 1 s with 0.5 s/point
        "fast": [_result([0.1, 0.7, 0.92, 0.93], step_bwd=50, cpu_per_point=0.5)],
        "never": [_result([0.1, 0.2, 0.3])],
    }
    s = summarise(results, 0.9)
    assert s["target"] == pytest.approx(0.9)
    full, fast, never = (s["methods"][k] for k in ("full", "fast", "never"))
    assert full["cpu_to_target_s"] == 3.0 and full["time_to_target_s"] == 6.0
    assert fast["cpu_to_target_s"] == 1.0
    assert fast["speedup"] == pytest.approx(3.0)
    # compute = forward + 2 backward at the first point over target: 3*300 vs 3*100
    assert fast["compute_speedup"] == pytest.approx(3.0)
    assert fast["backward_saved"] == pytest.approx(1 - 150 / 400)
    assert never["reached"] == 0 and never["speedup"] is None

    table = markdown_table(s, {"fast": "a fast method"})
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header and one row per method
    assert "| fast | 93.0 ± 0.0 |" in table and "3.00×" in table
    assert "not reached" in next(r for r in rows if r.startswith("| never |"))


def test_seeds_are_averaged_and_partial_reach_is_shown():
    results = {
        "full": [_result([0.1, 1.0]), _result([0.1, 0.8, 1.0])],
        "m": [_result([0.1, 0.99]), _result([0.1, 0.2])],
    }
    s = summarise(results, 0.95)
    m = s["methods"]["m"]
    assert m["final_acc_mean"] == pytest.approx((0.99 + 0.2) / 2)
    assert m["final_acc_std"] > 0.5
    assert m["reached"] == 1 and m["cpu_to_target_s"] == 1.0
    assert "(1/2 seeds)" in markdown_table(s, {})


def test_baseline_is_required():
    with pytest.raises(ValueError, match="full"):
        summarise({"m": [_result([0.1, 0.5])]}, 0.9)


def test_noisy_share_column_only_with_label_noise():
    clean = {"full": [_result([0.1, 1.0])], "m": [_result([0.1, 0.9])]}
    assert "noisy share" not in markdown_table(summarise(clean, 0.9), {})
    noisy = {"full": [_result([0.1, 1.0])], "m": [_result([0.1, 0.9])]}
    noisy["full"][0]["noisy_trained_frac"] = 0.2
    noisy["m"][0]["noisy_trained_frac"] = 0.05
    table = markdown_table(summarise(noisy, 0.9), {})
    assert "noisy share of trained rows" in table
    assert table.splitlines()[3].endswith("| 5.0 % |")  # header, rule, full, then m
