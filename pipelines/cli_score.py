"""``winnow score``, ``winnow embed`` and ``winnow demo``.

The options of ``score`` and ``embed`` are generated from the fields of ``ScoreJob``
(``pipelines.jobspec``): its metadata holds each option's help, group and flag, and
``job_from_args`` turns the parsed namespace back into the same ``ScoreJob`` that
``pipelines.score`` builds. Only argparse and the job description happen at import time; Ray and
torch are imported inside the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import shutil
import sys
import textwrap
import warnings
from collections.abc import Iterator
from typing import Any

from winnow.pipelines.jobspec import Cli, ScoreJob
from winnow.pipelines.metric_registry import registered_metrics

__all__ = ["add_job_arguments", "job_from_args", "metrics_help", "register"]

_STORE_HELP = "score store root (path or URI); default $WINNOW_STORE, else ./winnow-store"
_GROUPS = ("data", "model", "metrics", "run", "execution", "embedding")
# What a subcommand fixes instead of offering it as an option.
_FIXED: dict[str, dict[str, Any]] = {"score": {}, "embed": {"metrics": ("embedding",)}}
_KIND_WORDS = {"features": "feature rows", "tokens": "token documents"}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _cli(f: dataclasses.Field) -> Cli | None:
    return f.metadata.get("cli")


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    cli = _cli(f)
    shown = f.default is not dataclasses.MISSING and f.default is not None and cli.action is None
    if shown:
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        text += f" (default: {default})"
    return text.replace("%", "%%")


def add_job_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add every ``ScoreJob`` option that ``command`` offers, in groups (``_GROUPS`` order).

    Omitted options are absent from the namespace (``argparse.SUPPRESS``), so the dataclass
    default applies: defaults live in one place.
    """
    by_group: dict[str, list[dataclasses.Field]] = {group: [] for group in _GROUPS}
    for f in dataclasses.fields(ScoreJob):
        cli = _cli(f)
        if cli is not None and command in cli.commands:
            if cli.group not in by_group:
                raise ValueError(f"ScoreJob.{f.name}: unknown option group {cli.group!r}")
            by_group[cli.group].append(f)
    for group, members in by_group.items():
        if not members:
            continue
        arguments = parser.add_argument_group(group)
        for f in members:
            cli = _cli(f)
            kwargs: dict[str, Any] = {
                "dest": f.name,
                "help": _help(f),
                "default": argparse.SUPPRESS,
            }
            if cli.action is not None:
                kwargs["action"] = cli.action
            else:
                kwargs["metavar"] = cli.metavar
                if cli.type is not None:
                    kwargs["type"] = cli.type
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
                    kwargs["metavar"] = cli.metavar or "{" + ",".join(kwargs["choices"]) + "}"
            if cli.required:
                kwargs["required"] = True
            arguments.add_argument(cli.flag or "--" + f.name.replace("_", "-"), **kwargs)


def job_from_args(args: argparse.Namespace) -> ScoreJob:
    """The ``ScoreJob`` of a parsed ``winnow score``/``embed`` command line."""
    given = vars(args)
    options: dict[str, Any] = dict(_FIXED[args.command])
    for f in dataclasses.fields(ScoreJob):
        cli = _cli(f)
        if cli is None or f.name in options:
            continue
        if f.name in given:
            value = given[f.name]
            options[f.name] = value if cli.to_field is None else cli.to_field(value)
        elif cli.default is not None:
            options[f.name] = cli.default()
    return ScoreJob(**options)


def metrics_help(width: int | None = None) -> str:
    """The registered metrics, one paragraph each: name, help, what it needs and stores."""
    if width is None:  # as argparse does: the terminal's width less a margin
        width = min(100, max(60, shutil.get_terminal_size().columns - 2))
    lines = ["metrics (--metrics NAME,NAME,...):"]
    for metric in registered_metrics():
        flags = (
            ("labels", metric.needs_labels),
            ("reference", metric.needs_reference),
            ("backward", metric.needs_grad),
            ("embedding", metric.needs_embedding),
        )
        needs = [word for word, flag in flags if flag]
        notes = [f"needs: {', '.join(needs)}"] if needs else []
        if metric.kinds != ("features",):
            notes.append("for: " + ", ".join(_KIND_WORDS[kind] for kind in metric.kinds))
        if metric.columns != (metric.name,):
            stored = [*metric.outputs, *(f"{v} (vectors)" for v in metric.vectors)]
            notes.append(f"stores: {', '.join(stored)}")
        text = metric.help + (f" [{'; '.join(notes)}]" if notes else "")
        lines.append(
            textwrap.fill(
                text,
                width,
                initial_indent=f"  {metric.name:<14}",
                subsequent_indent=" " * 16,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def _cwd_on_path() -> None:
    # `module:factory` names and --import modules resolve against the working directory, as
    # with `python -m` (the `winnow` script itself does not put it on sys.path); Ray workers
    # get it from Ray.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _import_module(name: str) -> None:
    """Import module ``name`` (found in the working directory too)."""
    _cwd_on_path()
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not name.startswith(exc.name):
            raise  # the module exists but imports something missing: its own error
        raise ValueError(f"--import {name!r}: no module named {exc.name!r}") from None


class _ImportAction(argparse.Action):
    """``--import MODULE``: import it while parsing, so that a later ``--help`` lists the
    metrics it registers; a module that cannot be found is reported by the command (exit 1)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        try:
            _import_module(values)
        except ValueError:
            return  # reported by _cmd_job
        parser.epilog = metrics_help()


def _cmd_job(args: argparse.Namespace) -> int:
    from winnow.pipelines.job import ShardError, run_job

    _cwd_on_path()
    for name in getattr(args, "imports", None) or ():
        _import_module(name)
    job = job_from_args(args)
    try:
        with _warnings_as_lines(args.command):
            run_job(job)
    except ShardError as exc:
        message = " ".join(str(exc).split())  # one line, as every `winnow` error
        print(f"winnow {args.command}: error: {message}", file=sys.stderr)
        print(
            "  committed shards are kept: fix the model's code or the data and rerun with "
            "--resume; with another --model, checkpoint or metric, rerun without --resume (the "
            "failed run is replaced)",
            file=sys.stderr,
        )
        return 1
    return 0


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """The job's own warnings (``DuplicatesWarning``) as ``winnow <cmd>: warning: ...`` lines;
    any other warning is shown as Python would."""
    from winnow.pipelines.embed import DuplicatesWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DuplicatesWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, DuplicatesWarning):
                    message = " ".join(str(w.message).split())
                    print(f"winnow {command}: warning: {message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _cmd_demo(args: argparse.Namespace) -> int:
    from winnow.pipelines.cli_store import default_store_root
    from winnow.pipelines.demo import run_demo

    run_demo(store=args.store or default_store_root(), actors=args.actors,
             num_samples=args.num_samples)  # fmt: skip
    return 0


def _add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action=_ImportAction,
        metavar="MODULE",
        help="import MODULE first, e.g. one that registers metrics with "
        "winnow.pipelines.register_metric (repeatable)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``score``, ``embed`` and ``demo`` to the ``winnow`` command."""
    p = subparsers.add_parser(
        "score",
        help="score every example with a model (Ray) into the store",
        description="Score every example of a dataset with a model on Ray and commit the\n"
        "per-example metrics to the score store. Resumable (--resume), exactly-once.",
        epilog=metrics_help(),
        # keeps the metric table's layout (and the two-line description above)
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_job_arguments(p, "score")
    _add_import_argument(p)
    p.set_defaults(func=_cmd_job)

    p = subparsers.add_parser(
        "embed",
        help="embed every example and store faiss cluster / prototype / SemDeDup scores",
        description="Write float16 embeddings (model.embed or --embed-layer) to the store, then "
        "spherical k-means cluster ids, cosine distance to the centroid (proto_dist) and SemDeDup "
        "duplicate flags as scores.",
    )
    add_job_arguments(p, "embed")
    p.set_defaults(func=_cmd_job)

    p = subparsers.add_parser(
        "demo",
        help="train on MNIST-1D, score it with Ray, and answer a few questions in SQL",
        description="Generate MNIST-1D, train a small CNN and a reference model on a held-out "
        "half, score loss/el2n/grad_norm/learnability/embeddings with Ray, then query the store.",
    )
    p.add_argument("--store", metavar="ROOT", help=_STORE_HELP)
    p.add_argument("--actors", type=_positive_int, help="scorer actors (default: from CPUs)")
    p.add_argument(
        "--num-samples",
        type=_positive_int,
        default=5000,
        help="MNIST-1D examples to generate (80%% train)",
    )
    p.set_defaults(func=_cmd_demo)
