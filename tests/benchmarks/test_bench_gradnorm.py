"""The gradient-norm benchmark's peer: Opacus ghost clipping gives the same per-example norms on
every benchmark model, and the benchmark runs end to end. Speed belongs in the benchmark run,
not here."""

import copy
import json
import warnings

import opacus.grad_sample as opacus_gsm  # noqa: E402 (the dev extra installs opacus)
import pytest
import torch

from benchmarks import bench_gradnorm
from benchmarks._gradnorm_models import CASES
from winnow.selection.gradnorm import per_example_grad_norms


def _opacus_norms(model, loss_fn, x, y):
    wrapped = opacus_gsm.GradSampleModuleFastGradientClipping(
        copy.deepcopy(model), batch_first=True, loss_reduction="sum"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss_fn(wrapped(x), y).sum().backward()
    return wrapped.get_norm_sample()


@pytest.mark.parametrize("name", list(CASES))
def test_norms_equal_opacus_ghost_clipping(name):
    """In float64, so that a difference beyond rounding would show."""
    case = CASES[name]
    torch.manual_seed(0)
    model = case.make().double()
    x, y = case.batch(16, torch.Generator().manual_seed(3))
    x = x.double() if x.is_floating_point() else x
    ours = per_example_grad_norms(model, case.loss_fn, x, y, method="ghost")
    theirs = _opacus_norms(model, case.loss_fn, x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=0.0)


def test_benchmark_runs_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "bench_gradnorm.json"
    names = ["mlp 40-100-100-10 (toydata.MLP)", "transformer block d64 h4, 32 tokens, LM"]
    argv = ["--batch", "8", "--repeats", "2", "--out", str(out), "--models", *names]
    bench_gradnorm.main(argv)
    doc = json.loads(out.read_text())
    assert [r["model"] for r in doc["rows"]] == names
    for row in doc["rows"]:
        assert set(row["median"]) == {"winnow/plain", "winnow/opacus", "walk/plain"}
        assert row["max_rel_diff_vs_opacus"] < 1e-5 and row["max_rel_err_vs_exact"] < 1e-5
    assert "w/opacus" in capsys.readouterr().out
