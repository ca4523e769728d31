"""Everything `winnow score` can check before Ray starts is checked before Ray starts: fast, one
line, nothing written, no Ray process."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.pipelines.scoring_fixtures import make_arrays, mlp, write_parquet
from tests.pipelines.test_models import _lightning_checkpoint
from winnow import pipelines

FIX = "tests.pipelines.scoring_fixtures"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def inputs(tmp_path):
    x, y = make_arrays(64)
    data = write_parquet(tmp_path / "data", x, y, files=1)
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": ["a"] * 4, "label": [0, 1, 0, 1]}), texts)
    _lightning_checkpoint(tmp_path / "last.ckpt", mlp(0).state_dict())
    torch.save(mlp(1).state_dict(), tmp_path / "ref.pt")
    return {"data": str(data), "texts": str(texts), "ckpt": str(tmp_path / "last.ckpt"),
            "ref": str(tmp_path / "ref.pt")}  # fmt: skip


# (options over a valid Parquet job, message). Each is refused by pipelines.score before Ray.
CASES = [
    ({"model": "no_such_module_xyz:build"}, "cannot import module 'no_such_module_xyz'"),
    ({"model": f"{FIX}:nope"}, "has no attribute 'nope'"),
    ({"checkpoint": "{ckpt}"}, "checkpoint keys start with 'model.'; pass --strip-prefix model."),
    ({"checkpoint": "{ckpt}", "checkpoint_key": "state_dict", "strip_prefix": "net."},
     "no key of checkpoint"),
    ({"metrics": "learnability", "reference": f"{FIX}:mlp", "reference_checkpoint": "{ckpt}"},
     "does not fit the model"),
    ({"metrics": "embedding", "embed_layer": "body.9"}, "--embed-layer 'body.9': the model"),
    ({"metrics": "embedding", "model": "tests.pipelines.test_embed_cli:sequential_net"},
     "has no embed() method"),
    ({"feature_columns": "nope"}, "lacks column(s) ['nope']"),
    ({"data": "{texts}", "feature_columns": "text"}, "feature column 'text'"),
    ({"label_column": None}, "need labels"),
    ({"data": "no_such_module_xyz:dataset"}, "cannot import module 'no_such_module_xyz'"),
    ({"actors": 3, "cpus_per_actor": 1.0, "num_cpus": 2}, "need 3 CPUs; the Ray cluster has 2"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "message"), CASES)
def test_bad_input_is_refused_before_ray_starts(tmp_path, inputs, ray_forbidden, options, message):
    options = {k: v.format(**inputs) if isinstance(v, str) else v for k, v in options.items()}
    job = {"data": inputs["data"], "model": f"{FIX}:mlp", "feature_columns": "x",
           "store": tmp_path / "s", "run": "r", "progress": False, **options}  # fmt: skip
    with pytest.raises((ValueError, TypeError)) as info:
        pipelines.score(**job)
    assert message in str(info.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(120)
def test_cli_refuses_in_one_line_without_importing_ray(tmp_path, inputs, cli_refusals):
    """The `winnow score` process itself: exit 1, one line, and Ray never imported (so no
    raylet or GCS was started). The clock starts after torch is imported, which every run pays
    (2-7 s on a loaded 2-core box)."""
    runs = [
        ["--checkpoint", inputs["ckpt"]],
        ["--metrics", "embedding", "--embed-layer", "body.9"],
        ["--feature-columns", "nope"],
    ]
    argv = ["score", "--data", inputs["data"], "--feature-columns", "x", "--model", f"{FIX}:mlp",
            "--store", str(tmp_path / "s"), "--run", "r", "--quiet"]  # fmt: skip
    results, stderr = cli_refusals(argv, runs)
    assert [rc for rc, _ in results] == [1, 1, 1]
    assert not any(imported for _, imported in results)
    lines = stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("winnow score: error: ") for line in lines)
    assert "pass --strip-prefix model." in lines[0] and "'body.9'" in lines[1]
    assert not (tmp_path / "s").exists()


def test_a_gpu_pool_sized_by_the_gpu_count_is_not_refused_before_ray(tmp_path, monkeypatch):
    """Without --actors, a cuda pool has one actor per GPU, known only once Ray runs."""
    class Reached(Exception):
        pass

    def ray_pool(job, shards, timings):
        raise Reached(job.device, shards)

    monkeypatch.setattr("winnow.pipelines.job.ray_pool", ray_pool)
    source = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 20})
    with pytest.raises(Reached) as reached:
        pipelines.score(source, f"{FIX}:mlp", store=tmp_path / "s", run="r", device="cuda",
                        cpus_per_actor=1.0, num_cpus=2, progress=False)  # fmt: skip
    assert reached.value.args == ("cuda", 1)


@pytest.mark.parametrize(
    ("cluster", "request_", "expected"),
    [
        ((2.0, 0.0), (None, None, "cpu"), (2, 0.5, 0.0)),  # default: one CPU left over
        ((16.0, 0.0), (None, None, "cpu"), (8, 15 / 8, 0.0)),
        ((2.0, 0.0), (2, 1.0, "cpu"), (2, 1.0, 0.0)),  # sized by the user: may claim all
        ((4.0, 2.0), (None, None, "cuda"), (2, 1.5, 1.0)),  # one actor per GPU
    ],
)
def test_plan_actors_sizes_the_pool(cluster, request_, expected):
    from winnow.pipelines.executors import plan_actors

    assert plan_actors(*cluster, *request_) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("cluster", "request_", "message"),
    [
        ((2.0, 0.0), (3, 1.0, "cpu"), "3 actors x 1 CPUs need 3 CPUs; the Ray cluster has 2"),
        ((2.0, 0.0), (1, 2.5, "cpu"), "need 2.5 CPUs; the Ray cluster has 2"),
        ((8.0, 0.0), (None, None, "cuda"), "requested but the Ray cluster has no GPU"),
        ((8.0, 2.0), (3, None, "cuda"), "3 actors x 1 GPU need 3 GPUs; the Ray cluster has 2"),
    ],
)
def test_plan_actors_refuses_a_pool_the_cluster_cannot_place(cluster, request_, message):
    """Ray would keep the actors it cannot place pending: the job would wait forever."""
    from winnow.pipelines.executors import plan_actors

    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        plan_actors(*cluster, *request_)
