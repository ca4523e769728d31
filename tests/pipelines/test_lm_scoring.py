"""Per-document LM scores in the scoring job, against per-document reference loops: ragged token
documents from Parquet and Hugging Face datasets, windows, domains in SQL, learnability, grad
norms, the inline executor and real Ray, resume, and bad token columns refused before Ray."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.nn import functional as F

from tests.pipelines.lm_fixtures import VOCAB, corpus_table, tiny_lm, write_corpus
from tests.selection.test_lm import _reference_nll
from winnow import pipelines
from winnow.store import ScoreStore

FIX = "tests.pipelines.lm_fixtures"
REPO = Path(__file__).resolve().parents[2]
N = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """48 ragged documents (4-40 tokens) in 2 Parquet files, with ids and domain names."""
    root = tmp_path_factory.mktemp("lm")
    table = corpus_table(N, seed=5)
    return {"table": table, "data": str(write_corpus(root / "data", table)), "root": root}


def _docs(table):
    return [torch.tensor(d) for d in table.column("tokens").to_pylist()]


def _loop(model, docs, max_tokens=None):
    with torch.no_grad():
        return torch.stack([_reference_nll(model, doc, max_tokens) for doc in docs]).numpy()


def _stored(root, run, metric, ids):
    values, present = ScoreStore(root).read(run, metric)
    assert present.sum() == len(ids)
    return values[ids]


def _score(corpus, run, **options):
    job = {"token_column": "tokens", "domain_column": "domain", "store": corpus["root"] / "s",
           "run": run, "executor": "inline", "batch_size": 10, "shard_size": 20,
           "progress": False, **options}  # fmt: skip
    return pipelines.score(corpus["data"], f"{FIX}:tiny_lm", **job)


def test_inline_scores_equal_a_per_document_loop(corpus):
    manifest = _score(
        corpus, "inline", metrics="nll,perplexity,learnability,embedding",
        reference=f"{FIX}:tiny_lm", embed_layer="norm", num_clusters=2,
    )  # fmt: skip
    table, root = corpus["table"], corpus["root"] / "s"
    ids = table.column("example_id").to_numpy()
    assert manifest["status"] == "complete" and manifest["row_counts"]["nll"] == N
    assert manifest["config"]["metrics"] == ["learnability", "embedding", "nll", "perplexity",
                                             "domain"]  # fmt: skip
    learner, reference = tiny_lm(0).eval(), tiny_lm(1).eval()
    # (the reference factory's default seed is 0 too: give it another model through kwargs)
    nll = _loop(learner, _docs(table))
    np.testing.assert_allclose(_stored(root, "inline", "nll", ids), nll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_stored(root, "inline", "loss", ids), nll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        _stored(root, "inline", "perplexity", ids), np.exp(nll), rtol=1e-5, atol=1e-5
    )
    ref = _stored(root, "inline", "ref_loss", ids)
    np.testing.assert_allclose(ref, nll, rtol=1e-5, atol=1e-5)  # the same factory and seed
    assert np.abs(_stored(root, "inline", "learnability", ids)).max() < 1e-5
    assert not np.allclose(_loop(reference, _docs(table)[:4]), nll[:4])
    # embedding: the mean of the final norm's output over each document's tokens
    got_ids, vectors = ScoreStore(root).read_vectors("inline", "embedding")
    order = np.argsort(ids)
    captured = []
    hook = learner.norm.register_forward_hook(lambda m, i, o: captured.append(o[0].mean(0)))
    with torch.no_grad():
        for doc in _docs(table):
            learner(doc[None])
    hook.remove()
    want = torch.stack(captured).numpy()[order]
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_allclose(vectors.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_domains_are_queryable_per_domain_in_sql(corpus):
    manifest = _score(corpus, "domains", metrics="nll")
    names = manifest["config"]["domain_names"]
    assert names == sorted(set(corpus["table"].column("domain").to_pylist()))
    rows = (
        ScoreStore(corpus["root"] / "s")
        .sql(
            "SELECT d.value AS domain, avg(n.value) AS nll, count(*) AS docs "
            "FROM scores n JOIN scores d USING (run, example_id) "
            "WHERE n.run = 'domains' AND n.metric = 'nll' AND d.metric = 'domain' "
            "GROUP BY 1 ORDER BY 1"
        )
        .to_pylist()
    )
    domains = np.array(corpus["table"].column("domain").to_pylist())
    nll = _loop(tiny_lm(0).eval(), _docs(corpus["table"]))
    assert [names[int(r["domain"])] for r in rows] == sorted(set(domains))
    for row in rows:
        mine = domains == names[int(row["domain"])]
        assert row["docs"] == mine.sum()
        assert row["nll"] == pytest.approx(nll[mine].mean(), rel=1e-5)


def test_windows_longer_documents_by_the_documented_rule(corpus):
    _score(corpus, "windows", metrics="nll", max_tokens=8)
    table = corpus["table"]
    ids = table.column("example_id").to_numpy()
    got = _stored(corpus["root"] / "s", "windows", "nll", ids)
    model = tiny_lm(0).eval()
    np.testing.assert_allclose(got, _loop(model, _docs(table), 8), rtol=1e-5, atol=1e-5)
    lengths = np.array([len(d) for d in table.column("tokens").to_pylist()])
    whole = _loop(model, _docs(table))
    short = lengths <= 8  # one window: the whole document
    np.testing.assert_allclose(got[short], whole[short], rtol=1e-5, atol=1e-5)
    assert np.abs(got[~short] - whole[~short]).min() > 1e-4


def test_grad_norm_of_the_document_mean_loss_and_a_user_token_loss(tmp_path):
    table = corpus_table(6, seed=2, max_length=12)
    data = write_corpus(tmp_path / "data", table, files=1)
    manifest = pipelines.score(
        str(data), f"{FIX}:tiny_lm_with_loss", token_column="tokens", metrics="nll,grad_norm",
        store=tmp_path / "s", run="g", executor="inline", batch_size=4, progress=False,
    )  # fmt: skip
    assert manifest["row_counts"]["grad_norm"] == 6
    ids = table.column("example_id").to_numpy()
    norms = _stored(tmp_path / "s", "g", "grad_norm", ids)
    nll = _stored(tmp_path / "s", "g", "nll", ids)
    model = tiny_lm(0).eval()
    for row, doc in enumerate(_docs(table)):
        model.zero_grad()
        loss = F.cross_entropy(model(doc[None])[0, :-1], doc[1:], label_smoothing=0.1)
        loss.backward()
        norm = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
        assert nll[row] == pytest.approx(loss.item(), rel=1e-5)
        assert norms[row] == pytest.approx(float(norm), rel=1e-4)
    with pytest.raises(pipelines.ShardError, match="longer than --max-tokens 4"):
        pipelines.score(
            str(data), f"{FIX}:tiny_lm", token_column="tokens", metrics="grad_norm",
            max_tokens=4, store=tmp_path / "s", run="g4", executor="inline", progress=False,
        )  # fmt: skip


@pytest.mark.timeout(180)
def test_ray_job_equals_the_inline_job(ray_session, corpus):
    manifest = _score(corpus, "ray", metrics="nll,perplexity", executor="ray", actors=2,
                      max_tokens=16)  # fmt: skip
    assert manifest["status"] == "complete" and manifest["extra"]["shards"] == 3
    ids = corpus["table"].column("example_id").to_numpy()
    got = _stored(corpus["root"] / "s", "ray", "nll", ids)
    want = _loop(tiny_lm(0).eval(), _docs(corpus["table"]), 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    domains = _stored(corpus["root"] / "s", "ray", "domain", ids)
    names = manifest["config"]["domain_names"]
    assert [names[int(d)] for d in domains] == corpus["table"].column("domain").to_pylist()


def test_resume_checks_the_token_source_and_max_tokens(corpus, tmp_path):
    data = write_corpus(tmp_path / "data", corpus["table"])
    options = {"token_column": "tokens", "metrics": "nll", "store": tmp_path / "s", "run": "r",
               "executor": "inline", "progress": False}  # fmt: skip
    pipelines.score(str(data), f"{FIX}:tiny_lm", **options)
    again = pipelines.score(str(data), f"{FIX}:tiny_lm", resume=True, **options)
    assert again["extra"]["shards_skipped"] == again["extra"]["shards"]
    with pytest.raises(ValueError, match="max_tokens differs"):
        pipelines.score(str(data), f"{FIX}:tiny_lm", resume=True, max_tokens=8, **options)
    changed = corpus_table(N // 2, seed=9)
    pq.write_table(changed, data / "part-001.parquet")
    with pytest.raises(ValueError, match="part-001.parquet"):
        pipelines.score(str(data), f"{FIX}:tiny_lm", resume=True, **options)


def test_hugging_face_datasets_with_input_ids(corpus, tmp_path):
    datasets = pytest.importorskip("datasets")
    table = corpus["table"]
    ds = datasets.Dataset.from_dict({
        "input_ids": table.column("tokens").to_pylist(),
        "source": table.column("domain").to_pylist(),
    })  # fmt: skip
    ds = ds.cast_column("input_ids", datasets.List(datasets.Value("int32")))  # as tokenizers
    options = {"token_column": "input_ids", "domain_column": "source", "metrics": "nll",
               "store": tmp_path / "s", "executor": "inline", "progress": False}  # fmt: skip
    pipelines.score(ds, f"{FIX}:tiny_lm", run="object", **options)
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    manifest = pipelines.score(str(tmp_path / "saved"), f"{FIX}:tiny_lm", run="saved", **options)
    assert manifest["config"]["source"]["tokens"] is True
    want = _loop(tiny_lm(0).eval(), _docs(table))
    for run in ("object", "saved"):
        got = _stored(tmp_path / "s", run, "nll", np.arange(N))  # ids: row positions
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _bad_tables(tmp_path):
    good = corpus_table(8, seed=1)
    docs = good.column("tokens").to_pylist()
    out = {}
    for name, column in {
        "floats": pa.array([[float(t) for t in d] for d in docs], pa.list_(pa.float32())),
        "scalar": pa.array([d[0] for d in docs], pa.int64()),
        "negative": pa.array([[-1, *d[1:]] if i == 3 else d for i, d in enumerate(docs)]),
        "too_large": pa.array([[*d[:-1], VOCAB] if i == 5 else d for i, d in enumerate(docs)]),
    }.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(good.set_column(1, "tokens", column), path)
        out[name] = str(path)
    return out


BAD = [
    ("floats", "token column 'tokens' in Parquet file", "expected a list of integer token ids"),
    ("scalar", "token column 'tokens' in Parquet file", "has type int64"),
    ("negative", "holds token id -1", "must be >= 0"),
    ("too_large", f"holds token id {VOCAB}", f"vocabulary of {VOCAB} (ids 0..{VOCAB - 1})"),
]


@pytest.mark.parametrize(("case", "first", "second"), BAD)
def test_bad_token_columns_are_refused_before_ray(tmp_path, ray_forbidden, case, first, second):
    data = _bad_tables(tmp_path)[case]
    with pytest.raises((ValueError, TypeError)) as info:
        pipelines.score(data, f"{FIX}:tiny_lm", token_column="tokens", metrics="nll",
                        store=tmp_path / "s", run="r", progress=False)  # fmt: skip
    assert first in str(info.value) and second in str(info.value)
    assert not (tmp_path / "s").exists()


OPTION_ERRORS = [
    ({"feature_columns": "x"}, "not both"),
    ({"metrics": "el2n"}, "do not apply to token documents"),
    ({"metrics": "domain"}, "needs a domain column"),
    ({"label_column": "y"}, "their own targets"),
    ({"max_tokens": 1}, "max_tokens must be an int >= 2"),
    ({"token_column": None, "feature_columns": "tokens", "max_tokens": 8}, "applies to token"),
    ({"data": f"{FIX}:tiny_lm"}, "needs a Parquet or Hugging Face source"),
]


@pytest.mark.parametrize(("options", "message"), OPTION_ERRORS)
def test_bad_options_name_the_option(corpus, options, message):
    job = {"data": corpus["data"], "model": f"{FIX}:tiny_lm", "token_column": "tokens",
           "metrics": "nll", "store": "unused", "run": "r", **options}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        pipelines.ScoreJob(**job)


@pytest.mark.timeout(120)
def test_cli_refuses_a_bad_token_column_in_one_line_without_importing_ray(tmp_path, cli_refusals):
    """torch._dynamo is imported first: building a transformer on the meta device imports it
    (torch's meta ops are Python references that do), ~3 s once on a loaded 2-core box."""
    bad = _bad_tables(tmp_path)
    runs = [["--data", bad["floats"]], ["--data", bad["too_large"]]]
    argv = ["score", "--token-column", "tokens", "--metrics", "nll,perplexity",
            "--model", f"{FIX}:tiny_lm", "--store", str(tmp_path / "s"), "--run", "r",
            "--quiet"]  # fmt: skip
    results, stderr = cli_refusals(argv, runs, preload="torch, torch._dynamo")
    assert [rc for rc, _ in results] == [1, 1]
    assert not any(imported for _, imported in results)
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("winnow score: error: ") for line in lines)
    assert "list<int>" in lines[0] and f"vocabulary of {VOCAB}" in lines[1]
    assert not (tmp_path / "s").exists()
