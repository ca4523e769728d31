"""A run name that already exists: continue it (--resume), replace it (--overwrite, or a failed
run), or a refusal that says which option applies; and `winnow rm`."""

import numpy as np
import pytest

from tests.pipelines.scoring_fixtures import BAD_MARKER, make_arrays, write_parquet
from tests.pipelines.test_score_job import _expected_loss
from winnow import pipelines
from winnow.pipelines.cli import main
from winnow.pipelines.scorer import ShardError
from winnow.store import ScoreStore

FIX = "tests.pipelines.scoring_fixtures"


@pytest.fixture
def job(tmp_path):
    """A 300-row Parquet job in 100-row shards whose row 250 (shard 2) breaks exploding_mlp."""
    x, y = make_arrays(300, seed=4)
    x[250, 0] = BAD_MARKER
    data = write_parquet(tmp_path / "data", x, y, files=1)
    options = dict(feature_columns="x", store=tmp_path / "s", run="r", shard_size=100,
                   executor="inline", progress=False)  # fmt: skip
    return str(data), options, _expected_loss(x, y)[0]


def test_failed_run_whose_model_differs_is_replaced_by_a_plain_rerun(job):
    data, options, loss = job
    with pytest.raises(ShardError, match="shard 2 failed"):
        pipelines.score(data, f"{FIX}:exploding_mlp", **options)
    store = ScoreStore(options["store"])
    assert store.manifest("r")["status"] == "failed"
    assert store.completed_shards("r", "loss") == {0, 1}
    with pytest.raises(ValueError, match=r"the model differs .* The run failed, so rerun "
                       r"without --resume to start it again under its name"):  # fmt: skip
        pipelines.score(data, f"{FIX}:mlp", resume=True, **options)
    manifest = pipelines.score(data, f"{FIX}:mlp", **options)  # the fixed model, same name
    assert manifest["status"] == "complete" and manifest["extra"]["shards_skipped"] == 0
    assert manifest["extra"]["replaced"] == "failed run whose model differs"
    assert "resumed" not in manifest and manifest["extra"]["error"] is None
    values, present = store.read("r", "loss")
    assert present.all()
    np.testing.assert_allclose(values[:250], loss[:250], rtol=1e-5, atol=1e-6)


def test_failed_run_without_committed_shards_is_replaced(job, tmp_path):
    data, options, _ = job
    options = {**options, "shard_size": 300}  # one shard, which fails
    flag = tmp_path / "broken"
    flag.touch()
    model = pipelines.ModelSpec(f"{FIX}:exploding_mlp", kwargs={"flag": str(flag)})
    with pytest.raises(ShardError):
        pipelines.score(data, model, **options)
    flag.unlink()  # the model is fixed; its identity is the same
    manifest = pipelines.score(data, model, **options)
    assert manifest["status"] == "complete"
    assert manifest["extra"]["replaced"] == "failed run with no committed shard"


def test_failed_run_with_committed_shards_and_same_job_needs_a_choice(job):
    data, options, _ = job
    with pytest.raises(ShardError):
        pipelines.score(data, f"{FIX}:exploding_mlp", **options)
    with pytest.raises(ValueError, match=r"run 'r' failed after committing 2 of 3 shards; pass "
                       r"--resume to continue it .* or --overwrite to start again"):  # fmt: skip
        pipelines.score(data, f"{FIX}:exploding_mlp", **options)


def test_complete_run_is_refused_unless_resume_or_overwrite(job):
    data, options, loss = job
    first = pipelines.score(data, f"{FIX}:mlp", **options)
    with pytest.raises(ValueError, match=r"run 'r' already exists in .* \(status 'complete'\); "
                       r"pass --resume to continue it, --overwrite to replace it, or choose "
                       r"another --run"):  # fmt: skip
        pipelines.score(data, f"{FIX}:mlp", **options)
    advice = r"rerun without --resume under a new --run name, or with --overwrite"
    with pytest.raises(ValueError, match=r"cannot resume run 'r': the model differs .*; " + advice):
        pipelines.score(data, f"{FIX}:mlp_with_loss", resume=True, **options)
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        pipelines.score(data, f"{FIX}:mlp", resume=True, overwrite=True, **options)
    again = pipelines.score(data, f"{FIX}:mlp", overwrite=True, metrics="el2n", **options)
    assert again["extra"]["replaced"] == "--overwrite" and again["created"] >= first["created"]
    assert ScoreStore(options["store"]).metrics("r") == ["el2n"]  # nothing of the old run left


def test_a_job_that_fails_outside_a_shard_is_marked_failed(job, monkeypatch):
    data, options, _ = job

    def broken(*args):
        raise RuntimeError("the executor broke")

    monkeypatch.setattr("winnow.pipelines.job.run_inline", broken)
    with pytest.raises(RuntimeError, match="the executor broke"):
        pipelines.score(data, f"{FIX}:mlp", **options)
    manifest = ScoreStore(options["store"]).manifest("r")
    assert manifest["status"] == "failed"
    assert manifest["extra"]["error"] == "RuntimeError: the executor broke"


def test_winnow_rm_and_score_overwrite(job, capsys):
    data, options, _ = job
    root = str(options["store"])
    argv = ["score", "--data", data, "--feature-columns", "x", "--model", f"{FIX}:mlp",
            "--store", root, "--run", "r", "--executor", "inline", "--quiet",
            "--shard-size", "100"]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 1
    assert "--overwrite to replace it" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["rm", "r", "--store", root]) == 0
    assert capsys.readouterr().out == "removed run 'r' (status complete, 300 score rows)\n"
    assert ScoreStore(root).runs() == []
    assert main(["rm", "r", "--store", root]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("winnow rm: error: unknown run 'r'")
