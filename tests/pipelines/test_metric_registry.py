"""The metric registry: built-ins and user metrics through one contract, inline and on Ray."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.pipelines.scoring_fixtures import make_arrays, mlp, write_parquet
from winnow import pipelines
from winnow.pipelines.cli import main
from winnow.pipelines.metric_registry import (
    get_metric,
    register_metric,
    registered_metrics,
    scalar_outputs,
    unregister_metric,
    vector_outputs,
)
from winnow.pipelines.scorer import BatchScorer
from winnow.selection.losses import per_example_cross_entropy
from winnow.store import ScoreStore

FIX = "tests.pipelines.scoring_fixtures"


# User metrics, registered when this module is imported (on a Ray worker too, where unpickling
# the functions imports it; the job carries the entries either way).
@pipelines.register_metric(
    "confidence", help="max softmax probability (lower = less sure)", needs_labels=False
)
def confidence(logits, targets, ctx):
    return logits.softmax(1).amax(1)


@register_metric(
    "true_logit",
    help="the true class's logit and its gap to the best other logit (lower = harder)",
    outputs=("true_logit", "logit_gap"),
)
def true_logit(logits, targets, ctx):
    true = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return {"true_logit": true, "logit_gap": true - others.amax(1)}


def _expected(x, y):
    model = mlp(0).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    yt = torch.from_numpy(y)
    true = logits.gather(1, yt[:, None]).squeeze(1)
    others = logits.scatter(1, yt[:, None], float("-inf")).amax(1)
    return {
        "loss": F.cross_entropy(logits, yt, reduction="none").numpy(),
        "confidence": logits.softmax(1).amax(1).numpy(),
        "true_logit": true.numpy(),
        "logit_gap": (true - others).numpy(),
        "scaled": 3.0 * logits.softmax(1).amax(1).numpy(),
    }


def _check_store(store_root, run, expected, columns):
    store = ScoreStore(store_root)
    manifest = store.manifest(run)
    assert manifest["status"] == "complete"
    assert manifest["config"]["metrics"][0] == "loss"
    for column in columns:
        values, present = store.read(run, column)
        assert present.all(), column
        np.testing.assert_allclose(values, expected[column], rtol=1e-5, atol=1e-6)


def test_user_metric_lands_in_the_store_inline(tmp_path):
    n = 150
    x, y = make_arrays(n, seed=3)
    data = write_parquet(tmp_path / "data", x, y, files=1)
    manifest = pipelines.score(
        str(data), f"{FIX}:mlp", feature_columns="x", metrics="true_logit,loss,confidence",
        store=tmp_path / "s", run="u", shard_size=64, batch_size=20, executor="inline",
        progress=False,
    )  # fmt: skip
    # Registry order: built-ins first, then user metrics in registration order.
    assert manifest["config"]["metrics"] == ["loss", "confidence", "true_logit"]
    assert manifest["row_counts"] == {"loss": n, "confidence": n, "true_logit": n, "logit_gap": n}
    _check_store(tmp_path / "s", "u", _expected(x, y),
                 ["loss", "confidence", "true_logit", "logit_gap"])  # fmt: skip


@pytest.mark.timeout(120)
def test_user_metrics_land_in_the_store_through_ray(ray_session, tmp_path):
    """A module-level metric (pickled by reference) and a closure registered only in this
    process (pickled by value): the actors use the entries the job carries."""
    n = 300
    x, y = make_arrays(n, seed=4)
    data = write_parquet(tmp_path / "data", x, y, files=2, row_group_size=50)
    factor = 3.0
    register_metric(
        "scaled",
        lambda logits, targets, ctx: factor * logits.softmax(1).amax(1),
        help="3 x confidence; a closure no Ray worker can import",
        needs_labels=False,
    )
    try:
        manifest = pipelines.score(
            str(data), f"{FIX}:mlp", feature_columns="x",
            metrics="loss,confidence,true_logit,scaled", store=tmp_path / "s", run="ray",
            shard_size=100, batch_size=32, actors=2, progress=False,
        )  # fmt: skip
    finally:
        unregister_metric("scaled")
    assert manifest["extra"]["executor"] == "ray" and manifest["extra"]["shards"] == 3
    _check_store(tmp_path / "s", "ray", _expected(x, y),
                 ["loss", "confidence", "true_logit", "logit_gap", "scaled"])  # fmt: skip


def test_help_lists_every_registered_metric_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    names = [m.name for m in registered_metrics()]
    assert names[:7] == ["loss", "el2n", "grad_norm", "learnability", "entropy", "margin",
                         "embedding"]  # fmt: skip
    assert "confidence" in names and "true_logit" in names
    for metric in registered_metrics():
        assert f"{metric.name} {' '.join(metric.help.split())}" in text, metric.name
    assert "stores: true_logit, logit_gap" in text
    assert "stores: embedding_norm, embedding (vectors)" in text


def test_unknown_metric_lists_the_registered_names(tmp_path):
    source = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 10})
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['nope'\]; registered metrics: "
                       r"\['loss', .*'confidence', 'true_logit'\]"):  # fmt: skip
        pipelines.score(source, f"{FIX}:mlp", metrics="loss,nope", store=tmp_path, run="r")
    with pytest.raises(ValueError, match=r"unknown metric 'nope'; registered metrics: \['loss'"):
        get_metric("nope")


def test_metric_names_follow_the_store_rule():
    from winnow.pipelines.metric_registry import NAME_PATTERN
    from winnow.store.layout import NAME_PATTERN as STORE_NAME_PATTERN

    assert NAME_PATTERN.pattern == STORE_NAME_PATTERN.pattern


def test_outputs_are_read_from_the_entries():
    assert scalar_outputs(["learnability", "loss", "embedding", "true_logit"]) == (
        "loss", "ref_loss", "learnability", "embedding_norm", "true_logit", "logit_gap"
    )  # fmt: skip
    assert vector_outputs(["loss", "embedding"]) == ("embedding",)
    grad = get_metric("grad_norm")
    assert grad.needs_grad and not grad.needs_logits and grad.needs_labels
    assert get_metric("learnability").needs_reference
    assert get_metric("embedding").needs_embedding and not get_metric("entropy").needs_labels


def _noop(logits, targets, ctx):
    return logits[:, 0]


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("loss", {}, r"metric 'loss' is already registered"),
        ("loss", {"replace": True}, r"metric 'loss' is built in and cannot be replaced"),
        ("confidence", {}, r"metric 'confidence' is already registered \(by tests\."),
        ("bad name", {}, r"invalid metric name 'bad name'"),
        ("m", {"outputs": ("ref_loss",)}, r"column 'ref_loss' is already stored by metric "
         r"'learnability'"),
        ("m", {"outputs": ("cluster",)}, r"column 'cluster' is reserved"),
        ("m", {"outputs": ("dup_eps0.1",)}, r"column 'dup_eps0.1' is reserved"),
        ("m", {"vectors": ("v",), "outputs": ()}, r"stores only vectors \['v'\]"),
        ("m", {"outputs": "abc"}, r"outputs must be a sequence of column names"),
        ("m", {"help": " "}, r"help must be a non-empty string"),
    ],
)  # fmt: skip
def test_bad_registrations_are_refused(name, kwargs, match):
    kwargs = {"help": "a test metric", **kwargs}
    before = registered_metrics()
    with pytest.raises((ValueError, TypeError), match=match):
        register_metric(name, _noop, **kwargs)
    assert registered_metrics() == before


def test_replace_and_unregister_a_user_metric():
    register_metric("tmp_metric", _noop, help="first")
    try:
        register_metric("tmp_metric", confidence, help="second", replace=True)
        assert get_metric("tmp_metric").help == "second"
    finally:
        unregister_metric("tmp_metric")
    with pytest.raises(ValueError, match="unknown metric 'tmp_metric'"):
        get_metric("tmp_metric")
    with pytest.raises(ValueError, match="'entropy' is built in and cannot be removed"):
        unregister_metric("entropy")
    # A module imported again registers the same definition again: allowed, same entry.
    entry = get_metric("confidence")
    register_metric("confidence", confidence, help=entry.help, needs_labels=False)
    assert get_metric("confidence") == entry
    # Two lambdas share a qualified name but are different definitions: refused.
    register_metric("tmp_lambda", lambda o, t, c: o[:, 0], help="first")
    try:
        with pytest.raises(ValueError, match="'tmp_lambda' is already registered"):
            register_metric("tmp_lambda", lambda o, t, c: o[:, 1], help="second")
    finally:
        unregister_metric("tmp_lambda")


def test_user_metric_needing_labels_is_refused_on_unlabelled_data(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, _ = make_arrays(12)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 40)
    pq.write_table(pa.table({"example_id": np.arange(12), "x": flat}), tmp_path / "u.parquet")
    args = dict(feature_columns="x", label_column=None, executor="inline", progress=False)
    with pytest.raises(ValueError, match=r"metrics \['true_logit'\] need labels"):
        pipelines.score(str(tmp_path / "u.parquet"), f"{FIX}:mlp", metrics="true_logit",
                        store=tmp_path / "s2", run="r", **args)  # fmt: skip
    assert not (tmp_path / "s2").exists()
    manifest = pipelines.score(str(tmp_path / "u.parquet"), f"{FIX}:mlp", metrics="confidence",
                               store=tmp_path / "s2", run="r", **args)  # fmt: skip
    assert manifest["row_counts"] == {"confidence": 12}


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (lambda logits: {"wrong": logits[:, 0]}, r"metric 'bad' returned columns \['wrong'\]; "
         r"expected \['bad'\]"),
        (lambda logits: logits, r"metric 'bad': column 'bad' has shape \[4, 10\]; expected \[4\]"),
    ],
)  # fmt: skip
def test_a_metric_returning_wrong_columns_or_shapes_is_named(result, match):
    register_metric("bad", lambda logits, targets, ctx: result(logits), help="broken")
    try:
        scorer = BatchScorer(mlp().eval(), per_example_cross_entropy, ["loss", "bad"])
        with pytest.raises(ValueError, match=match):
            scorer(torch.randn(4, 40), torch.arange(4))
    finally:
        unregister_metric("bad")


def test_import_option_registers_a_metric_for_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_cli_metrics.py").write_text(
        "from winnow import pipelines\n\n\n"
        "@pipelines.register_metric('max_logit', help='the largest logit', needs_labels=False)\n"
        "def max_logit(logits, targets, ctx):\n"
        "    return logits.amax(1)\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["score", "--import", "my_cli_metrics", "--data", f"{FIX}:tensor_dataset",
            "--model", f"{FIX}:mlp", "--metrics", "max_logit", "--store", "s", "--run", "r",
            "--executor", "inline", "--quiet"]  # fmt: skip
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["score", "--import", "my_cli_metrics", "--help"])
        assert exit_info.value.code == 0
        assert "max_logit     the largest logit" in capsys.readouterr().out
        assert main(argv) == 0
    finally:
        unregister_metric("max_logit")
        sys.modules.pop("my_cli_metrics", None)
    x, _ = make_arrays(300)  # = tensor_dataset()
    with torch.no_grad():
        expected = mlp(0).eval()(torch.from_numpy(x)).amax(1).numpy()
    values, present = ScoreStore(tmp_path / "s").read("r", "max_logit")
    assert present.all()
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)


def test_builtin_learnability_subtracts_in_float32_for_half_precision_models():
    """A bf16 learner and a float32 reference: the reference must not be rounded to bf16 (its
    step near 2.5 is 0.0156, the size of the differences that matter); learnability is float32."""
    import torch

    from winnow.pipelines.builtin_metrics import learnability
    from winnow.pipelines.metric_registry import MetricContext

    learner = torch.tensor([2.5, 2.4844, 7.0], dtype=torch.bfloat16)
    reference = torch.tensor([2.4901, 2.4950, 7.0313], dtype=torch.float32)
    ctx = MetricContext(
        x=torch.zeros(3, 1),
        model=None,
        loss_fn=lambda out, y: learner,
        reference=lambda x: None,
        reference_loss_fn=lambda out, y: reference,
    )
    got = learnability(None, None, ctx)["learnability"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, learner.float() - reference.float(), rtol=0, atol=0)
