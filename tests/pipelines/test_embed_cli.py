"""`winnow embed` / `winnow score` through the CLI, the embedding metrics step, BatchScorer math."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.pipelines.scoring_fixtures import BAD_MARKER, make_arrays, mlp, write_parquet
from winnow.pipelines.cli import main
from winnow.pipelines.embed import write_embedding_metrics
from winnow.pipelines.metric_registry import scalar_outputs, validate_metrics
from winnow.pipelines.scorer import BatchScorer
from winnow.store import ScoreStore

FIX = "tests.pipelines.scoring_fixtures"


def sequential_net(seed: int = 0) -> nn.Module:
    """No ``embed`` method: the embedding must come from a named layer."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))


def test_embed_command_writes_vectors_clusters_and_duplicates(tmp_path, capsys):
    x, y = make_arrays(300, seed=4)
    x[250:260] = x[10:20] + 1e-4  # ten near-copies of rows 10..19
    data = write_parquet(tmp_path / "data", x, y)
    code = main(
        [
            "embed", "--data", str(data), "--feature-columns", "x",
            "--model", "tests.pipelines.test_embed_cli:sequential_net", "--embed-layer", "1",
            "--store", str(tmp_path / "store"), "--run", "emb", "--executor", "inline",
            "--clusters", "5", "--dedup-eps", "0.001,0.3", "--shard-size", "128",
        ]
    )  # fmt: skip
    assert code == 0
    assert "300 rows scored" in capsys.readouterr().err
    store = ScoreStore(tmp_path / "store")
    ids, vectors = store.read_vectors("emb", "embedding")
    assert vectors.dtype == np.float16 and vectors.shape == (300, 16)
    with torch.no_grad():
        relu = torch.relu(sequential_net()[0](torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(vectors.astype(np.float32), relu, rtol=1e-2, atol=1e-3)
    norms = store.read("emb", "embedding_norm")[0]
    np.testing.assert_allclose(norms, np.linalg.norm(relu, axis=1), rtol=1e-2, atol=1e-3)
    clusters = store.read("emb", "cluster")[0]
    assert set(np.unique(clusters)) <= set(range(5)) and len(np.unique(clusters)) > 1
    assert (store.read("emb", "proto_dist")[0] >= -1e-6).all()
    strict = store.read("emb", "dup_eps0.001")[0]
    pairs = [(i, i + 240) for i in range(10, 20)]
    assert all(strict[a] + strict[b] == 1 for a, b in pairs)  # exactly one of each pair goes
    assert strict.sum() == 10
    loose = store.read("emb", "dup_eps0.3")[0]
    assert loose.sum() >= strict.sum() and (loose >= strict).all()
    manifest = store.manifest("emb")
    assert manifest["status"] == "complete" and manifest["vector_rows"] == {"embedding": 300}


def test_embedding_metrics_are_deterministic(tmp_path):
    store = ScoreStore(tmp_path)
    rng = np.random.default_rng(0)
    store.write_vectors("r", "embedding", np.arange(200), rng.normal(size=(200, 8)))
    write_embedding_metrics(store, "r", num_clusters=4, dedup_eps=())
    first = store.read("r", "cluster")[0].copy(), store.read("r", "proto_dist")[0].copy()
    write_embedding_metrics(store, "r", num_clusters=4, dedup_eps=())
    np.testing.assert_array_equal(store.read("r", "cluster")[0], first[0])
    np.testing.assert_array_equal(store.read("r", "proto_dist")[0], first[1])
    with pytest.raises(ValueError, match="eps must be in"):
        write_embedding_metrics(store, "r", dedup_eps=(1.5,))


def test_score_command_reports_a_failing_model_with_exit_code_1(tmp_path, capsys):
    x, y = make_arrays(120, seed=5)
    x[77, 0] = BAD_MARKER
    data = write_parquet(tmp_path / "data", x, y, files=1)
    argv = [
        "score", "--data", str(data), "--feature-columns", "x", "--model", f"{FIX}:exploding_mlp",
        "--metrics", "loss,margin", "--store", str(tmp_path / "s"), "--run", "r",
        "--executor", "inline", "--shard-size", "50", "--batch-size", "16", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "shard 1 failed, first failing example_id 77" in err and "--resume" in err
    store = ScoreStore(tmp_path / "s")
    assert store.completed_shards("r", "loss") == {0}  # inline stops at the first failure
    assert main([*argv, "--resume"]) == 1  # still broken: same clear error, nothing lost
    assert store.completed_shards("r", "loss") == {0}
    assert main(["score", "--data", str(data), "--model", f"{FIX}:mlp", "--run", "x"]) == 1
    assert "needs feature columns" in capsys.readouterr().err


def test_unreadable_dataset_item_is_named(tmp_path):
    from winnow import pipelines

    source = pipelines.DatasetSource(f"{FIX}:broken_dataset", {"n": 100, "bad": 42})
    with pytest.raises(pipelines.ShardError, match="shard 1 failed, first failing example_id 42"):
        pipelines.score(source, f"{FIX}:mlp", store=tmp_path, run="r", shard_size=40,
                        executor="inline", progress=False)  # fmt: skip
    assert ScoreStore(tmp_path).completed_shards("r", "loss") == {0}


def test_batch_scorer_learnability_and_margin_match_torch():
    model, reference = mlp(0).eval(), mlp(1).eval()
    from winnow.selection.losses import per_example_cross_entropy

    scorer = BatchScorer(
        model,
        per_example_cross_entropy,
        validate_metrics("learnability,margin", has_reference=True, has_labels=True),
        reference=reference,
        reference_loss_fn=per_example_cross_entropy,
    )
    x, y = torch.randn(9, 40), torch.arange(9) % 10
    out = scorer(x, y)
    assert set(out) == {"loss", "ref_loss", "learnability", "margin"}
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y, reduction="none")
        ref = F.cross_entropy(reference(x), y, reduction="none")
        p = model(x).softmax(1)
    np.testing.assert_allclose(out["learnability"], (loss - ref).numpy(), rtol=1e-5, atol=1e-6)
    others = p.clone()
    others[torch.arange(9), y] = -1
    margin = p[torch.arange(9), y] - others.max(1).values
    np.testing.assert_allclose(out["margin"], margin.numpy(), rtol=1e-5, atol=1e-6)
    assert all(v.dtype == np.float32 for v in out.values())
    assert scalar_outputs(("learnability", "embedding")) == (
        "loss", "ref_loss", "learnability", "embedding_norm"
    )  # fmt: skip


def test_embedding_needs_embed_method_or_layer():
    from winnow.selection.losses import per_example_cross_entropy

    with pytest.raises(ValueError, match="no embed\\(\\) method"):
        BatchScorer(sequential_net(), per_example_cross_entropy, ("embedding",))


def test_winnow_script_finds_factories_in_the_working_directory(tmp_path):
    """The `winnow` console script, unlike `python -m`, does not put the CWD on sys.path."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "my_models.py").write_text(
        "from winnow.pipelines.toydata import MLP\n\ndef build():\n    return MLP(40, 8)\n"
    )
    write_parquet(tmp_path / "data", *make_arrays(30))
    winnow = Path(sys.executable).with_name("winnow")
    done = subprocess.run(
        [str(winnow), "score", "--data", "data", "--feature-columns", "x",
         "--model", "my_models:build", "--store", "store", "--run", "r", "--executor", "inline"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert ScoreStore(tmp_path / "store").manifest("r")["row_counts"] == {"loss": 30}


def _relu_embeddings(n: int = 1000, copies: int = 30) -> np.ndarray:
    """Post-ReLU embeddings (SmallCNN, untrained) of random inputs; the last ``copies`` rows
    repeat the first ones exactly."""
    from winnow.pipelines.toydata import SmallCNN

    x = np.random.default_rng(0).normal(size=(n, 40)).astype(np.float32)
    x = np.concatenate([x, x[:copies]])
    torch.manual_seed(0)
    with torch.no_grad():
        return SmallCNN().eval().embed(torch.from_numpy(x)).numpy()


def test_default_dedup_eps_finds_copies_and_few_others_and_a_loose_one_warns(tmp_path):
    """Non-negative (post-ReLU) vectors are all alike by cosine: eps 0.1 flags most of them,
    which warns; the default (docs/embeddings.md) flags the planted copies only."""
    from winnow.pipelines import ScoreJob
    from winnow.pipelines.embed import DuplicatesWarning

    assert ScoreJob(data=f"{FIX}:tensor_dataset", model=f"{FIX}:mlp", store=tmp_path,
                    run="r").dedup_eps == (0.001,)  # fmt: skip
    store = ScoreStore(tmp_path)
    vectors = _relu_embeddings()
    store.write_vectors("r", "embedding", np.arange(len(vectors)), vectors)
    with pytest.warns(DuplicatesWarning, match=r"dup_eps0.1 flags [5-9]\d% of the 1030 rows"):
        shares = write_embedding_metrics(store, "r", dedup_eps=(0.1, 0.001))["duplicate_share"]
    assert shares["dup_eps0.1"] > 0.5
    flags = store.read("r", "dup_eps0.001")[0].astype(bool)
    assert (flags[:30] | flags[1000:]).all()  # one of each planted pair
    assert flags[30:1000].mean() < 0.01 and shares["dup_eps0.001"] < 0.05


def test_embed_command_prints_a_warning_line_when_most_rows_are_flagged(tmp_path, capsys):
    x, y = make_arrays(300, seed=4)
    data = write_parquet(tmp_path / "data", x, y)
    argv = ["embed", "--data", str(data), "--feature-columns", "x",
            "--model", "tests.pipelines.test_embed_cli:sequential_net", "--embed-layer", "1",
            "--store", str(tmp_path / "store"), "--run", "emb", "--executor", "inline",
            "--dedup-eps", "0.5", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("winnow embed: warning: ")]
    assert len(lines) == 1 and "dup_eps0.5 flags" in lines[0] and "--dedup-eps" in lines[0]
    manifest = ScoreStore(tmp_path / "store").manifest("emb")
    assert manifest["extra"]["duplicate_share"]["dup_eps0.5"] > 0.5
