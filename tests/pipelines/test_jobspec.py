"""ScoreJob: every option validated once, the same object from `score()` and the CLI."""

import dataclasses
import pickle

import pytest
import torch

from tests.pipelines.scoring_fixtures import make_arrays, mlp, write_parquet
from winnow import pipelines
from winnow.pipelines import ScoreJob
from winnow.pipelines.cli import build_parser, main
from winnow.pipelines.cli_score import job_from_args
from winnow.pipelines.jobspec import RESUME_KEYS
from winnow.pipelines.models import ModelSpec
from winnow.pipelines.sources import DatasetSource, ParquetSource

FIX = "tests.pipelines.scoring_fixtures"

# (options that override a valid job, exception type, regex the message must match). Each
# message names the option (or its value) and says what was expected.
BAD_OPTIONS = [
    ({"metrics": "loss,bogus"}, ValueError, r"unknown metric\(s\) \['bogus'\]; registered "
     r"metrics: \['loss', 'el2n'"),
    ({"metrics": ""}, ValueError, r"no metrics requested; registered metrics: \['loss'"),
    ({"metrics": 3}, TypeError, r"metrics must be a comma-separated string or a sequence"),
    ({"metrics": "learnability"}, ValueError, r"metric 'learnability' needs a reference model"),
    ({"run": "a/b"}, ValueError, r"invalid run name 'a/b': expected 1-128 characters"),
    ({"run": 5}, TypeError, r"run name must be a str, got int 5"),
    ({"store": 3}, TypeError, r"store must be a path or URI, got int 3"),
    ({"batch_size": 0}, ValueError, r"batch_size must be a positive int, got 0"),
    ({"batch_size": 2.5}, ValueError, r"batch_size must be a positive int, got 2.5"),
    ({"shard_size": -1}, ValueError, r"shard_size must be a positive int, got -1"),
    ({"num_clusters": 0}, ValueError, r"num_clusters must be a positive int, got 0"),
    ({"actors": True}, ValueError, r"actors must be a positive int, got True"),
    ({"num_cpus": 0}, ValueError, r"num_cpus must be a positive int, got 0"),
    ({"cpus_per_actor": 0}, ValueError, r"cpus_per_actor must be a positive number, got 0"),
    ({"cpus_per_actor": float("inf")}, ValueError, r"cpus_per_actor must be finite, got inf"),
    ({"executor": "spark"}, ValueError,
     r"executor must be one of \['ray', 'inline'\], got 'spark'"),
    ({"device": "tpu"}, ValueError, r"device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ({"dedup_eps": (1.5,)}, ValueError, r"dedup_eps values must be in \(0, 1\), got 1.5"),
    ({"dedup_eps": 0.05}, TypeError, r"dedup_eps must be a sequence of numbers in \(0, 1\)"),
    ({"resume": "yes"}, TypeError, r"resume must be True or False, got str 'yes'"),
    ({"progress": 1}, TypeError, r"progress must be True or False, got int 1"),
    ({"id_column": ""}, ValueError, r"id_column must be a non-empty str, got ''"),
    ({"label_column": 3}, TypeError, r"label_column must be a str, got int 3"),
    ({"feature_columns": [1]}, TypeError, r"feature_columns must be column names"),
    ({"data_kwargs": [1]}, TypeError, r"data_kwargs must be a mapping"),
    ({"embed_layer": 3}, TypeError, r"embed_layer must be a str, got int 3"),
    ({"address": ""}, ValueError, r"address must be a non-empty str"),
    ({"checkpoint": "/nonexistent/ckpt.pt"}, FileNotFoundError,
     r"checkpoint '/nonexistent/ckpt.pt' does not exist"),
    ({"reference_checkpoint": "r.pt"}, ValueError,
     r"reference_checkpoint 'r.pt' given without a reference factory"),
    ({"strip_prefix": "model."}, ValueError, r"strip_prefix 'model.' given without a checkpoint"),
    ({"checkpoint_key": ""}, ValueError, r"checkpoint_key must be a non-empty str, got ''"),
    ({"reference": 3}, TypeError, r"reference must be 'module:factory' or a ModelSpec, got int"),
    ({"model": "no_colon"}, ValueError, r"model factory must look like 'package.module:attr'"),
    ({"model": None}, TypeError, r"model must be 'module:factory' or a ModelSpec, got None"),
    ({"data": "/nonexistent/d.parquet", "feature_columns": "x"}, FileNotFoundError,
     r"Parquet source '/nonexistent/d.parquet' does not exist"),
    ({"data": "/nonexistent/d.parquet"}, ValueError, r"needs feature columns"),
    ({"data": 3}, TypeError,
     r"data must be a path, 'module:factory', a datasets.Dataset or a source"),
    ({"bogus_option": 1}, TypeError, r"unexpected keyword argument 'bogus_option'"),
]  # fmt: skip


def _valid(tmp_path) -> dict:
    source = DatasetSource(f"{FIX}:tensor_dataset", {"n": 10})
    return {"data": source, "model": f"{FIX}:mlp", "store": tmp_path / "s", "run": "r"}


@pytest.mark.parametrize(("options", "error", "match"), BAD_OPTIONS)
def test_bad_option_is_refused_naming_it_and_nothing_is_written(tmp_path, options, error, match):
    kwargs = {**_valid(tmp_path), **options}
    with pytest.raises(error, match=match):
        ScoreJob(**kwargs)
    with pytest.raises(error, match=match):
        pipelines.score(**kwargs)
    assert not (tmp_path / "s").exists()


def test_valid_job_is_normalised_and_replace_revalidates(tmp_path):
    job = ScoreJob(**_valid(tmp_path), metrics="margin, loss", feature_columns="a,b")
    assert job.metrics == ("loss", "margin")  # registry order
    assert [m.name for m in job.entries] == ["loss", "margin"]
    assert job.model == ModelSpec(f"{FIX}:mlp") and job.reference is None
    assert job.store == str(tmp_path / "s") and job.feature_columns == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.batch_size = 1
    # replace() runs the checks again: normalised values pass, a bad one is refused
    assert dataclasses.replace(job, resume=True) == dataclasses.replace(job, resume=True)
    assert dataclasses.replace(job, resume=True) != job
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        dataclasses.replace(job, batch_size=0)


def test_checkpoint_is_given_in_one_place(tmp_path):
    ckpt, other = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(mlp().state_dict(), ckpt)
    torch.save(mlp().state_dict(), other)
    spec = ModelSpec(f"{FIX}:mlp", str(ckpt))
    base = {**_valid(tmp_path), "model": spec}
    assert ScoreJob(**base).checkpoint == str(ckpt)
    assert ScoreJob(**base, checkpoint=str(ckpt)) == ScoreJob(**base)
    with pytest.raises(ValueError, match=r"checkpoint '.*b.pt' differs from the model ModelSpec"):
        ScoreJob(**base, checkpoint=str(other))


def test_job_pickles_with_its_metric_entries(tmp_path):
    job = ScoreJob(**_valid(tmp_path), metrics="loss,embedding")
    again = pickle.loads(pickle.dumps(job))
    assert again == job and again.entries == job.entries
    assert [m.vectors for m in again.entries] == [(), ("embedding",)]


def test_manifest_config_and_resume_keys_come_from_the_fields(tmp_path):
    assert RESUME_KEYS == (
        "source", "metrics", "reference", "max_tokens", "embed_layer", "num_rows"
    )  # fmt: skip
    job = ScoreJob(**_valid(tmp_path), metrics="loss,embedding", dedup_eps=[0.01, 0.1])
    config = job.manifest_config(num_rows=10, shard_size=4)
    assert config == {
        "source": {"kind": "dataset", "factory": f"{FIX}:tensor_dataset", "kwargs": {"n": 10}},
        "metrics": ["loss", "embedding"],
        "reference": None,
        "max_tokens": None,
        "embed_layer": None,
        "num_clusters": None,
        "dedup_eps": [0.01, 0.1],
        "batch_size": 256,
        "device": "cpu",
        "num_rows": 10,
        "shard_size": 4,
    }


def _captured_jobs(monkeypatch) -> list:
    jobs = []

    def fake_run_job(job):
        jobs.append(job)
        return {}

    monkeypatch.setattr("winnow.pipelines.job.run_job", fake_run_job)
    return jobs


def test_cli_and_score_build_equal_jobs(tmp_path, monkeypatch):
    data = write_parquet(tmp_path / "data", *make_arrays(20))
    ckpt, ref = tmp_path / "m.pt", tmp_path / "r.pt"
    torch.save(mlp(0).state_dict(), ckpt)
    torch.save(mlp(1).state_dict(), ref)
    jobs = _captured_jobs(monkeypatch)
    argv = [
        "score", "--data", str(data), "--id-column", "id", "--feature-columns", "x,z",
        "--label-column", "y", "--model", f"{FIX}:mlp", "--checkpoint", str(ckpt),
        "--embed-layer", "body.1", "--store", str(tmp_path / "s"), "--run", "r1",
        "--resume", "--quiet", "--metrics", "learnability,grad_norm,embedding",
        "--reference", f"{FIX}:mlp", "--reference-checkpoint", str(ref),
        "--clusters", "7", "--dedup-eps", "0.01,0.1", "--address", "auto", "--actors", "3",
        "--cpus-per-actor", "0.5", "--num-cpus", "4", "--batch-size", "32",
        "--shard-size", "100", "--device", "cuda:1", "--executor", "inline",
        "--checkpoint-key", "ema.weights", "--strip-prefix", "model.",
        "--reference-checkpoint-key", "state_dict", "--reference-strip-prefix", "net.",
    ]  # fmt: skip
    assert main(argv) == 0
    pipelines.score(
        str(data), f"{FIX}:mlp", id_column="id", feature_columns=["x", "z"], label_column="y",
        checkpoint=str(ckpt), embed_layer="body.1", store=tmp_path / "s", run="r1",
        resume=True, progress=False, metrics=["embedding", "grad_norm", "learnability"],
        reference=f"{FIX}:mlp", reference_checkpoint=str(ref), num_clusters=7,
        dedup_eps=(0.01, 0.1), address="auto", actors=3, cpus_per_actor=0.5, num_cpus=4,
        batch_size=32, shard_size=100, device="cuda:1", executor="inline",
        checkpoint_key="ema.weights", strip_prefix="model.", reference_checkpoint_key="state_dict",
        reference_strip_prefix="net.",
    )  # fmt: skip
    from_cli, from_score = jobs
    assert from_cli == from_score
    assert isinstance(from_cli.data, ParquetSource) and from_cli.reference.checkpoint == str(ref)
    assert from_cli.model.strip_prefix == "model." and from_cli.reference.strip_prefix == "net."
    # --overwrite excludes --resume: it gets a command line of its own.
    argv[argv.index("--resume")] = "--overwrite"
    assert main(argv) == 0
    assert jobs[-1] == dataclasses.replace(from_cli, resume=False, overwrite=True)
    # Every command-line option was given a non-default value above (the token options in
    # the next test), so all of them reach the job.
    for f in dataclasses.fields(ScoreJob):
        if f.name in TOKEN_OPTIONS:
            continue
        if f.metadata.get("cli") is not None and f.default is not dataclasses.MISSING:
            job = jobs[-1] if f.name == "overwrite" else from_cli
            assert getattr(job, f.name) != f.default, f.name


TOKEN_OPTIONS = ("token_column", "domain_column", "max_tokens")


def test_cli_and_score_build_equal_token_jobs(tmp_path, monkeypatch):
    from tests.pipelines.lm_fixtures import corpus_table, write_corpus

    data = write_corpus(tmp_path / "data", corpus_table(10))
    jobs = _captured_jobs(monkeypatch)
    argv = ["score", "--data", str(data), "--token-column", "tokens", "--domain-column",
            "domain", "--max-tokens", "16", "--metrics", "nll,perplexity",
            "--model", "tests.pipelines.lm_fixtures:tiny_lm", "--run", "r", "--store",
            str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    pipelines.score(
        str(data), "tests.pipelines.lm_fixtures:tiny_lm", token_column="tokens",
        domain_column="domain", max_tokens=16, metrics=["perplexity", "nll"], run="r",
        store=tmp_path / "s",
    )  # fmt: skip
    from_cli, from_score = jobs
    assert from_cli == from_score and from_cli.kind == "tokens"
    assert from_cli.metrics == ("nll", "perplexity", "domain") and from_cli.label_column is None
    assert from_cli.data.tokens and from_cli.data.feature_columns == ("tokens",)
    for name in TOKEN_OPTIONS:
        assert getattr(from_cli, name) is not None, name


def test_cli_defaults_are_the_dataclass_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("WINNOW_STORE", str(tmp_path / "env-store"))
    jobs = _captured_jobs(monkeypatch)
    source = f"{FIX}:tensor_dataset"
    assert main(["score", "--data", source, "--model", f"{FIX}:mlp", "--run", "r"]) == 0
    assert main(["embed", "--data", source, "--model", f"{FIX}:mlp", "--run", "e"]) == 0
    score_job, embed_job = jobs
    assert score_job == ScoreJob(data=source, model=f"{FIX}:mlp", run="r",
                                 store=tmp_path / "env-store")  # fmt: skip
    assert embed_job == ScoreJob(data=source, model=f"{FIX}:mlp", run="e", metrics="embedding",
                                 store=tmp_path / "env-store")  # fmt: skip
    args = build_parser().parse_args(["embed", "--data", source, "--model", "m:f", "--run", "e"])
    assert job_from_args(args).metrics == ("embedding",)
    with pytest.raises(SystemExit):  # embed fixes its metrics: no --metrics option
        build_parser().parse_args(["embed", "--data", source, "--model", "m:f", "--run", "e",
                                   "--metrics", "loss"])  # fmt: skip


def test_every_cli_option_is_in_the_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(ScoreJob):
        cli = f.metadata.get("cli")
        if cli is not None:
            assert (cli.flag or "--" + f.name.replace("_", "-")) in text, f.name
