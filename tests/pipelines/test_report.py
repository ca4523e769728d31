"""`winnow report` over a real score store: content, run selection, and bad input."""

import base64
import html
import re

import numpy as np
import pytest

from winnow.pipelines.cli import main as cli_main
from winnow.pipelines.report import render_report, write_report
from winnow.store import ScoreStore

N = 600
EPOCHS = 4


def _write_scores(store: ScoreStore, run: str = "scored") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.arange(N)
    loss = rng.gamma(2.0, 0.5, N).astype(np.float32)
    values = {
        "loss": loss,
        "learnability": (loss - rng.gamma(2.0, 0.3, N)).astype(np.float32),
        "el2n": rng.random(N).astype(np.float32),
        "cluster": rng.integers(0, 7, N).astype(np.float32),
        "is_duplicate": (rng.random(N) < 0.1).astype(np.float32),
    }
    store.begin_run(run, kind="scores", num_examples=N, metrics=tuple(values))
    for metric, v in values.items():
        # two shards, as a Ray job would write them
        store.write(run, metric, ids[: N // 2], v[: N // 2], shard=0)
        store.write(run, metric, ids[N // 2 :], v[N // 2 :], shard=1)
    store.finish_run(run)
    return values


def _write_trace(store: ScoreStore, run: str = "trained") -> np.ndarray:
    """Epoch e keeps a known subset; returns kept [EPOCHS, N] bool."""
    rng = np.random.default_rng(1)
    kept = rng.random((EPOCHS, N)) < np.array([[1.0], [0.5], [0.7], [1.0]])
    store.begin_run(run, kind="training", num_examples=N)
    writer = store.trace_writer(run)
    for epoch in range(EPOCHS):
        writer.write(
            epoch,
            np.arange(N),
            kept[epoch],
            np.where(kept[epoch], 2.0, 0.0),
            rng.random(N).astype(np.float32),
        )
    store.finish_run(run)
    return kept


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _assert_embedded_pngs(page: str) -> None:
    for src in _images(page):
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 1000


def test_scores_and_trace(tmp_path):
    store = ScoreStore(tmp_path / "store")
    values = _write_scores(store)
    kept = _write_trace(store)
    page = render_report(store, top_k=3)

    assert "Run scored" in page and "Run trained" in page
    # histograms (1 figure for loss/learnability/el2n), scatter, cluster bars, 2 trace figures
    assert len(_images(page)) == 5
    _assert_embedded_pngs(page)
    assert "learnability vs loss" in page
    # no external resource: the page is self-contained
    assert not re.search(r'(src|href)="(http|file|/)', page)

    top = np.argsort(-values["el2n"])[:3]
    assert ", ".join(f"{i} ({values['el2n'][i]:.4g})" for i in top) in html.unescape(page)
    sizes = np.bincount(values["cluster"].astype(int))
    assert f"cluster: 7 clusters, sizes {sizes.min()}–{sizes.max()}" in page
    dup = int(values["is_duplicate"].sum())
    assert f"<td>is_duplicate</td><td>{dup}</td><td>{N}</td>" in page

    for epoch in range(EPOCHS):
        k = int(kept[epoch].sum())
        pruned = 1 - k / N
        assert f"<td>{epoch}</td><td>{N}</td><td>{k}</td><td>{pruned:.4g}</td>" in page


def test_only_scores_and_only_trace(tmp_path):
    scores_only = ScoreStore(tmp_path / "a")
    _write_scores(scores_only)
    page = render_report(scores_only)
    assert "Scores" in page and "Training trace" not in page
    assert len(_images(page)) == 3

    trace_only = ScoreStore(tmp_path / "b")
    _write_trace(trace_only)
    page = render_report(trace_only)
    assert "Training trace" in page and "<h3>Scores</h3>" not in page
    assert len(_images(page)) == 2
    _assert_embedded_pngs(page)


def test_cli_selects_runs_and_rejects_unknown(tmp_path, capsys):
    store = ScoreStore(tmp_path / "store")
    _write_scores(store, "first")
    _write_scores(store, "second")
    out = tmp_path / "r" / "report.html"
    code = cli_main(
        ["report", "--store", str(tmp_path / "store"), "--run", "second", "--out", str(out)]
    )
    assert code == 0
    page = out.read_text()
    assert "Run second" in page and "Run first" not in page

    before = page
    code = cli_main(
        ["report", "--store", str(tmp_path / "store"), "--run", "nope", "--out", str(out)]
    )
    assert code == 1  # a bad input, not a usage error
    err = capsys.readouterr().err
    assert "nope" in err and "first" in err and "second" in err
    assert out.read_text() == before  # a failed report leaves the old page alone


def test_empty_store_and_bad_top_k(tmp_path):
    store = ScoreStore(tmp_path / "empty")
    with pytest.raises(ValueError, match="no scores and no traces"):
        render_report(store)
    _write_scores(store)
    with pytest.raises(ValueError, match="top_k"):
        render_report(store, top_k=0)


def test_write_report_is_atomic_file(tmp_path):
    store = ScoreStore(tmp_path / "store")
    _write_trace(store)
    out = write_report(tmp_path / "store", tmp_path / "page.html")
    assert out.read_text().startswith("<!doctype html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def _write_selector_runs(store: ScoreStore) -> dict:
    """A real RHO-LOSS selector run, an ODM run and a noise scale with a known reading."""
    import torch

    from winnow.samplers import NoiseScaleMonitor, ODMSampler, RhoLossSelector

    gen = torch.Generator().manual_seed(0)
    il = np.random.default_rng(2).random(N).astype(np.float32)
    with store.trace_writer("rho") as writer:
        rho = RhoLossSelector(il, keep=0.1, trace=writer)
        for _ in range(40):
            ids = torch.randperm(N, generator=gen)[:50]
            rho.select(ids, torch.rand(50, generator=gen))
        rho.close()
    domains = np.arange(N) % 3
    odm = ODMSampler(domains, 6, 30, trace=store.trace_writer("odm"))
    for batch in odm:
        odm.update(batch, torch.tensor(domains[batch] + 1.0))
    odm.close()
    # |G|^2 = 1, tr(Sigma) = 100: E|G_b|^2 = 1 + 100 / b, so B_simple = 100 at batch 32
    monitor = NoiseScaleMonitor(log_every=10, trace=store.trace_writer("noise"))
    for _ in range(25):
        monitor.observe(1 + 100 / 16, 1 + 100 / 32, 16, 32)
    monitor.close()
    return {"il": il}


def test_selector_trace_mixture_and_noise_sections(tmp_path):
    store = ScoreStore(tmp_path / "store")
    kept = _write_trace(store)  # an epoch sampler's run next to the per-step runs
    _write_selector_runs(store)
    page = render_report(store, top_k=3)
    _assert_embedded_pngs(page)
    # epoch trace 2, rho 2 (selection over steps, pick counts), odm 2 + mixture, noise 1
    assert len(_images(page)) == 8
    text = html.unescape(page)
    assert "Run rho" in page and "Run odm" in page and "Run noise" in page
    assert "40 steps traced (0–39): 2000 candidates, 200 kept (10.0%)" in text
    top = store.sql(
        "SELECT example_id, count(*) FILTER (WHERE kept) AS k FROM trace WHERE run = 'rho' "
        "GROUP BY example_id ORDER BY k DESC, example_id LIMIT 1"
    ).to_pylist()[0]
    assert f"<tr><td>{top['example_id']}</td><td>{top['k']}</td>" in page
    assert "Domain mixture" in page and "domain 2" in page
    assert "B<sub>crit</sub> ≈ B<sub>simple</sub> ≈ 100 examples" in text
    assert "The batch used, 32, is below the critical batch" in text
    assert "4.12× the fewest possible steps and 1.32× the fewest possible examples" in text
    # the per-step rows do not leak into the epoch sampler's section
    for epoch in range(EPOCHS):
        k = int(kept[epoch].sum())
        assert f"<td>{epoch}</td><td>{N}</td><td>{k}</td>" in page
    assert "Selection trace" not in page.split("Run trained")[1].split("<h2>")[0]
