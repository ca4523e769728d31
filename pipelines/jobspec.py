"""One description of a scoring job: ``ScoreJob``, every option once, validated at construction.

``pipelines.score(data, model, **options)`` and the ``winnow score`` / ``winnow embed`` commands
build the same ``ScoreJob``; the command-line options are generated from its fields' metadata
(``pipelines.cli_score``), the run manifest's ``config`` and the resume check are derived from
it, and the job travels (pickled) to every Ray actor inside a ``ShardPlan``. Adding an option is
one field here. See docs/scoring-job.md.

Each field's metadata holds its ``help``, an optional ``check`` (validates and normalises the
value; raises ``ValueError``/``TypeError`` naming the field, the value and what was expected),
its command-line form (``Cli``), and whether it is recorded in the manifest (``record``: the
config key) and must match when a run is resumed (``identity``).

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from winnow.pipelines.metric_registry import Metric, resolve_metrics
from winnow.pipelines.models import ModelSpec, describe_model
from winnow.pipelines.sources import SOURCE_TYPES, make_source

__all__ = ["Cli", "ScoreJob", "ShardPlan", "RESUME_KEYS", "default_shard_size"]

_MIN_SHARD, _MAX_SHARD = 512, 100_000
_BOTH = ("score", "embed")
_SCORE = ("score",)


@dataclass(frozen=True)
class Cli:
    """How a ``ScoreJob`` field appears on the command line.

    ``flag`` defaults to ``--<field-name>`` with dashes; ``type`` parses the text (argparse's
    ``type``; range checks are the field's ``check``, so the CLI and the library refuse the
    same values with the same message); ``action`` e.g. ``"store_true"``; ``to_field`` maps the
    parsed value to the field's value; ``default`` is called when the option is omitted and the
    field itself has no default; ``commands`` lists the subcommands that offer it.
    """

    group: str
    flag: str | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    action: str | None = None
    to_field: Callable[[Any], Any] | None = None
    default: Callable[[], Any] | None = None
    commands: tuple[str, ...] = _BOTH
    required: bool = False


def _option(
    default: Any = MISSING,
    *,
    help: str,
    cli: Cli | None,
    check: Callable[[str, Any], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    record: str | None = None,
    identity: bool = False,
) -> Any:
    metadata = {
        "help": help, "cli": cli, "check": check, "choices": choices,
        "record": record, "identity": identity,
    }  # fmt: skip
    return field(default=default, metadata=metadata)


# --- checks: (field name, value) -> normalised value, or ValueError/TypeError naming both ---


def _type_name(value: object) -> str:
    return type(value).__name__


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {_type_name(value)} {value!r}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    return None if value is None else _str(name, value)


def _optional_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a path, got {_type_name(value)} {value!r}")
    return _str(name, os.fspath(value))


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_type_name(value)} {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _device(name: str, value: Any) -> str:
    ok = isinstance(value, str) and (
        value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )
    if not ok:
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return value


def _eps_values(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers in (0, 1), got {value!r}")
    out = []
    for eps in value:
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0.0 < eps < 1.0:
            raise ValueError(f"{name} values must be in (0, 1), got {eps!r}")
        out.append(float(eps))
    return tuple(out)


def _columns(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if (
        not isinstance(value, Sequence)
        or not value
        or not all(isinstance(c, str) and c for c in value)
    ):
        raise TypeError(f"{name} must be column names ('x' or 'a,b,c'), got {value!r}")
    return tuple(value)


def _mapping(name: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of keyword arguments, got {value!r}")
    return dict(value)


def _run_name(name: str, value: Any) -> str:
    from winnow.store.layout import check_name

    return check_name(value, "run")


def _store_root(name: str, value: Any) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(f"{name} must be a path or URI, got {_type_name(value)} {value!r}")
    root = os.fspath(value)
    # Actors may run in another working directory: keep local paths absolute.
    return root if "://" in root else os.path.abspath(root)


def _default_store() -> str:
    from winnow.pipelines.cli_store import default_store_root

    return default_store_root()


def _floats(text: str) -> list[float]:
    """argparse type: ``"0.01,0.05"`` -> ``[0.01, 0.05]``."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        import argparse

        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _max_tokens(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"{name} must be an int >= 2 (a window's tokens), got {value!r}")
    return int(value)


def _none_if_empty(text: str) -> str | None:
    return text or None


@dataclass(frozen=True, kw_only=True)
class ScoreJob:
    """A scoring job: what to score, with which model and metrics, where to, and how to run.

    Built from keyword arguments (the keywords of ``pipelines.score``); refuses a bad option
    with ``ValueError``/``TypeError`` naming it, before anything is read or written. After
    construction ``data`` is a ``ParquetSource``/``HFDatasetSource``/``DatasetSource``,
    ``model`` a ``ModelSpec``
    (with ``checkpoint``), ``reference`` a ``ModelSpec`` or None, ``metrics`` the metric names
    in registry order and ``entries`` their registry entries (which travel to the actors).
    Whether the data has the labels the metrics need is checked by ``pipelines.score`` once it
    has read the data's schema.
    """

    data: Any = _option(
        help="a Parquet file/directory, a directory written by datasets' save_to_disk, or "
        "module:factory returning a map-style torch Dataset of (x, y) items (ids are its "
        "indices); from Python also a datasets.Dataset",
        cli=Cli("data", metavar="SOURCE", required=True),
        record="source",
        identity=True,
    )
    model: str | ModelSpec = _option(
        help="module:factory returning nn.Module or (nn.Module, loss_fn), or a ModelSpec",
        cli=Cli("model", metavar="MODULE:FACTORY", required=True),
    )
    store: str | os.PathLike = _option(
        help="score store root (path or URI); on the command line default $WINNOW_STORE, "
        "else ./winnow-store",
        cli=Cli("run", metavar="ROOT", default=_default_store),
        check=_store_root,
    )
    run: str = _option(
        help="run name in the store",
        cli=Cli("run", metavar="NAME", required=True),
        check=_run_name,
    )
    metrics: tuple[str, ...] | str = _option(
        ("loss",),
        help="comma-separated metric names (listed below)",
        cli=Cli("metrics", metavar="NAMES", commands=_SCORE),
        record="metrics",
        identity=True,
    )
    checkpoint: str | None = _option(
        None,
        help="the model's checkpoint: a state_dict, or a dict holding one (a Lightning .ckpt, "
        "...); loaded with weights_only=True",
        cli=Cli("model", metavar="PATH"),
        check=_optional_path,
    )
    checkpoint_key: str | None = _option(
        None,
        help="the key of the state_dict inside the checkpoint, dotted for nested dicts "
        "(default: state_dict, model_state_dict or model if present, else the whole dict)",
        cli=Cli("model", metavar="KEY"),
        check=_optional_str,
    )
    strip_prefix: str | None = _option(
        None,
        help="keep the checkpoint keys that start with PREFIX, without it (e.g. 'model.' for "
        "a Lightning checkpoint)",
        cli=Cli("model", metavar="PREFIX"),
        check=_optional_str,
    )
    reference: str | ModelSpec | None = _option(
        None,
        help="reference model, module:factory (needed by learnability)",
        cli=Cli("metrics", metavar="MODULE:FACTORY", commands=_SCORE),
        record="reference",
        identity=True,
    )
    reference_checkpoint: str | None = _option(
        None,
        help="the reference model's checkpoint",
        cli=Cli("metrics", metavar="PATH", commands=_SCORE),
        check=_optional_path,
    )
    reference_checkpoint_key: str | None = _option(
        None,
        help="as --checkpoint-key, for the reference checkpoint",
        cli=Cli("metrics", metavar="KEY", commands=_SCORE),
        check=_optional_str,
    )
    reference_strip_prefix: str | None = _option(
        None,
        help="as --strip-prefix, for the reference checkpoint",
        cli=Cli("metrics", metavar="PREFIX", commands=_SCORE),
        check=_optional_str,
    )
    id_column: str | None = _option(
        None,
        help="id column of a Parquet or Hugging Face source (default: example_id if the data "
        "has it, else the row positions 0..N-1)",
        cli=Cli("data", metavar="NAME"),
        check=_optional_str,
    )
    feature_columns: tuple[str, ...] | str | None = _option(
        None,
        help="feature column(s) of a Parquet or Hugging Face source: one (nested) list "
        "column, or several numeric columns a,b,c",
        cli=Cli("data", metavar="COLS"),
        check=_columns,
    )
    label_column: str | None = _option(
        "label",
        help="label column of a Parquet or Hugging Face source ('' for none)",
        cli=Cli("data", type=_none_if_empty),
        check=_optional_str,
    )
    token_column: str | None = _option(
        None,
        help="instead of --feature-columns: a list<int> column of token ids, one document per "
        "row (ragged; padding and masking are winnow's), scored with a causal LM mapping "
        "[B, T] tokens to [B, T, V] logits (metrics nll, perplexity, learnability, grad_norm, "
        "embedding; see docs/scoring-job.md)",
        cli=Cli("data", metavar="NAME"),
        check=_optional_str,
    )
    domain_column: str | None = _option(
        None,
        help="a column of each row's domain (integers >= 0, or strings coded 0, 1, ... in "
        "sorted order, the names in the manifest's config.domain_names), stored as the score "
        "'domain'",
        cli=Cli("data", metavar="NAME"),
        check=_optional_str,
    )
    data_kwargs: Mapping[str, Any] | None = _option(
        None, help="keyword arguments of a dataset factory", cli=None, check=_mapping
    )
    max_tokens: int | None = _option(
        None,
        help="token documents longer than N are scored in windows of N tokens that share one "
        "token (each next token is predicted once, the context restarting at each window); the "
        "document's loss is the mean over all its next tokens (default: one window)",
        cli=Cli("model", metavar="N", type=int),
        check=_max_tokens,
        record="max_tokens",
        identity=True,
    )
    embed_layer: str | None = _option(
        None,
        help="layer whose output is the embedding (default: the model's embed())",
        cli=Cli("model", metavar="NAME"),
        check=_optional_str,
        record="embed_layer",
        identity=True,
    )
    num_clusters: int | None = _option(
        None,
        help="k-means clusters of the embeddings (default ~sqrt(n))",
        cli=Cli("embedding", flag="--clusters", metavar="K", type=int),
        check=_positive_int,
        record="num_clusters",
    )
    dedup_eps: Sequence[float] = _option(
        (0.001,),
        help="SemDeDup thresholds: a row whose cosine to an earlier one of its cluster is above "
        "1 - eps is a duplicate, e.g. 0.001,0.01 (stored as dup_eps<eps>; see "
        "docs/embeddings.md for values)",
        cli=Cli("embedding", metavar="EPS", type=_floats),
        check=_eps_values,
        record="dedup_eps",
    )
    address: str | None = _option(
        None,
        help="join a Ray cluster: auto | ray://host:port (default: start a local Ray)",
        cli=Cli("execution", metavar="ADDR"),
        check=_optional_str,
    )
    actors: int | None = _option(
        None,
        help="scorer actors (default: from CPUs)",
        cli=Cli("execution", metavar="N", type=int),
        check=_positive_int,
    )
    cpus_per_actor: float | None = _option(
        None,
        help="CPUs each actor asks Ray for",
        cli=Cli("execution", metavar="C", type=float),
        check=_positive_float,
    )
    num_cpus: int | None = _option(
        None,
        help="CPUs of the local Ray",
        cli=Cli("execution", metavar="N", type=int),
        check=_positive_int,
    )
    batch_size: int = _option(
        256,
        help="mini-batch size",
        cli=Cli("execution", metavar="B", type=int),
        check=_positive_int,
        record="batch_size",
    )
    shard_size: int | None = _option(
        None,
        help="rows per committed shard (default: about 1/32 of the rows, 512..100000; a "
        "resumed run keeps its own)",
        cli=Cli("execution", metavar="ROWS", type=int),
        check=_positive_int,
    )
    device: str = _option(
        "cpu",
        help="cpu or cuda (one GPU per actor)",
        cli=Cli("execution"),
        check=_device,
        record="device",
    )
    executor: str = _option(
        "ray",
        help="ray, or inline: the same scorer in this process, without Ray",
        cli=Cli("execution"),
        choices=("ray", "inline"),
    )
    resume: bool = _option(
        False,
        help="continue an existing run: skip shards already committed (refused if the data, "
        "model or metrics changed)",
        cli=Cli("run", action="store_true"),
        check=_bool,
    )
    overwrite: bool = _option(
        False,
        help="replace an existing run of this name (it is removed first, once the job's "
        "checks pass)",
        cli=Cli("run", action="store_true"),
        check=_bool,
    )
    progress: bool = _option(
        True,
        help="no progress bar or summary",
        cli=Cli("run", flag="--quiet", action="store_true", to_field=lambda quiet: not quiet),
        check=_bool,
    )
    entries: tuple[Metric, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, value))
        if self.resume and self.overwrite:
            raise ValueError(
                "resume and overwrite exclude each other: --resume continues the run, "
                "--overwrite replaces it"
            )
        model = _model_spec(
            "model",
            self.model,
            checkpoint=self.checkpoint,
            checkpoint_key=self.checkpoint_key,
            strip_prefix=self.strip_prefix,
            required=True,
        )
        reference = _model_spec(
            "reference",
            self.reference,
            checkpoint=self.reference_checkpoint,
            checkpoint_key=self.reference_checkpoint_key,
            strip_prefix=self.reference_strip_prefix,
            required=False,
        )
        if self.token_column is None and self.max_tokens is not None:
            raise ValueError(
                f"max_tokens {self.max_tokens} applies to token documents (token_column)"
            )
        if self.token_column is not None:
            if self.label_column not in (None, "label"):
                raise ValueError(
                    f"label_column {self.label_column!r}: token documents are their own "
                    "targets (next tokens); give no label column with token_column"
                )
            object.__setattr__(self, "label_column", None)
        metrics = self.metrics
        if self.domain_column is not None:  # the domain is always stored when given
            if isinstance(metrics, str):
                metrics = [m.strip() for m in metrics.split(",") if m.strip()]
            metrics = [*metrics, "domain"]
        entries = resolve_metrics(
            metrics,
            has_reference=reference is not None,
            kind=self.kind,
            has_domain=self.domain_column is not None,
        )
        source = make_source(
            self.data,
            id_column=self.id_column,
            feature_columns=self.feature_columns,
            label_column=self.label_column,
            kwargs=self.data_kwargs,
            token_column=self.token_column,
            domain_column=self.domain_column,
        )
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "reference", reference)
        for name in ("checkpoint", "checkpoint_key", "strip_prefix"):
            object.__setattr__(self, name, getattr(model, name))
            ref_value = None if reference is None else getattr(reference, name)
            object.__setattr__(self, f"reference_{name}", ref_value)
        object.__setattr__(self, "data", source)
        object.__setattr__(self, "metrics", tuple(m.name for m in entries))
        object.__setattr__(self, "entries", entries)

    @property
    def kind(self) -> str:
        """``"tokens"`` with a token column, else ``"features"`` (``metric_registry.KINDS``)."""
        return "features" if self.token_column is None else "tokens"

    def manifest_config(
        self,
        *,
        num_rows: int,
        shard_size: int,
        source_fingerprint: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The run manifest's ``config``: every field with a ``record`` key, as JSON values,
        plus the data's ``num_rows``, the ``shard_size`` the shards were cut with and, when
        given, the source's fingerprint (``pipelines.fingerprint``)."""
        config = {
            f.metadata["record"]: _jsonable(getattr(self, f.name))
            for f in fields(self)
            if f.metadata.get("record")
        }
        config.update(num_rows=num_rows, shard_size=shard_size)
        if source_fingerprint is not None:
            config["source_fingerprint"] = dict(source_fingerprint)
        return config


def _model_spec(
    name: str, value: Any, *, required: bool, **checkpoint: str | None
) -> ModelSpec | None:
    """``value`` as a ``ModelSpec``. The checkpoint options (``checkpoint``,
    ``checkpoint_key``, ``strip_prefix``) are given once: in the spec or beside it."""
    prefix = "" if name == "model" else f"{name}_"
    if value is None:
        if required:
            raise TypeError(f"{name} must be 'module:factory' or a ModelSpec, got None")
        for option, given in checkpoint.items():
            if given is not None:
                raise ValueError(f"{prefix}{option} {given!r} given without a {name} factory")
        return None
    if isinstance(value, ModelSpec):
        given = {k: v for k, v in checkpoint.items() if v is not None}
        if given.get("checkpoint") is not None:
            given["checkpoint"] = os.path.abspath(given["checkpoint"])
        for option, new in given.items():
            if new != getattr(value, option):
                raise ValueError(
                    f"{prefix}{option} {checkpoint[option]!r} differs from the {name} "
                    f"ModelSpec's {option} {getattr(value, option)!r}; give it in one place"
                )
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be 'module:factory' or a ModelSpec, got {_type_name(value)} {value!r}"
        )
    return ModelSpec(value, **checkpoint)


def _jsonable(value: Any) -> Any:
    if isinstance(value, SOURCE_TYPES):
        return value.describe()
    if isinstance(value, ModelSpec):
        return describe_model(value)
    if isinstance(value, tuple):
        return list(value)
    return value


RESUME_KEYS: tuple[str, ...] = (
    *(f.metadata["record"] for f in fields(ScoreJob) if f.metadata.get("identity")),
    "num_rows",
)
"""Manifest config keys that must match for ``resume=True``: same data, metrics, reference and
embedding layer, and the same number of rows. The model's identity is checked separately (its
factory, kwargs and checkpoint hash; its code may change, which is how a failing model is fixed
before resuming)."""


def default_shard_size(num_rows: int) -> int:
    """About 32 shards for small data, at most 100k rows (a few seconds of work) per shard."""
    return int(min(_MAX_SHARD, max(_MIN_SHARD, math.ceil(num_rows / 32))))


@dataclass(frozen=True)
class ShardPlan:
    """A ``ScoreJob`` cut into shards: what each actor receives (picklable).

    Shard ``k`` is the row positions ``[k * shard_size, (k + 1) * shard_size)`` of the
    ``num_rows`` rows, so the same plan always cuts the same shards (exactly-once resume).
    ``domain_names``: what the codes of a string domain column stand for (``SourcePlan``).
    """

    job: ScoreJob
    num_rows: int
    shard_size: int
    domain_names: tuple[str, ...] | None = None

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Row positions ``[start, stop)`` of ``shard``: a pure function of the shard size."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_rows)

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)
