"""``winnow score``, ``winnow embed`` and ``winnow demo``.

Only argparse happens at import time; Ray and torch are imported inside the commands.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["register"]

_STORE_HELP = "score store root (path or URI); default $WINNOW_STORE, else ./winnow-store"


def _store(args: argparse.Namespace) -> str:
    from winnow.pipelines.cli_store import default_store_root

    return args.store or default_store_root()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _add_job_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="a Parquet file/directory, or module:factory returning a map-style Dataset of "
        "(x, y) items (ids are its indices)",
    )
    data.add_argument("--id-column", default="example_id", help="Parquet id column")
    data.add_argument(
        "--feature-columns",
        metavar="COLS",
        help="Parquet feature column(s): one list column, or several scalar columns a,b,c",
    )
    data.add_argument("--label-column", default="label", help="Parquet label column ('' for none)")
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        metavar="MODULE:FACTORY",
        help="returns nn.Module or (nn.Module, loss_fn)",
    )
    model.add_argument("--checkpoint", metavar="PATH", help="state_dict (loaded weights_only)")
    model.add_argument("--embed-layer", metavar="NAME", help="layer whose output is the embedding")
    run = p.add_argument_group("run")
    run.add_argument("--store", metavar="ROOT", help=_STORE_HELP)
    run.add_argument("--run", required=True, metavar="NAME", help="run name in the store")
    run.add_argument("--resume", action="store_true", help="skip shards already committed")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    ray = p.add_argument_group("execution")
    ray.add_argument(
        "--address",
        metavar="ADDR",
        help="join a Ray cluster: auto | ray://host:port (default: local Ray)",
    )
    ray.add_argument("--actors", type=_positive_int, help="scorer actors (default: from CPUs)")
    ray.add_argument("--cpus-per-actor", type=float, help="CPUs each actor asks Ray for")
    ray.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray")
    ray.add_argument("--batch-size", type=_positive_int, default=256, help="mini-batch size")
    ray.add_argument("--shard-size", type=_positive_int, help="rows per committed shard")
    ray.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per actor)")
    ray.add_argument(
        "--executor",
        choices=("ray", "inline"),
        default="ray",
        help="inline: same scorer in this process, without Ray",
    )


def _add_embedding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clusters", type=_positive_int, help="k-means clusters (default ~sqrt(n))")
    p.add_argument(
        "--dedup-eps",
        type=_floats,
        default=[0.05],
        help="SemDeDup thresholds, e.g. 0.01,0.05 (stored as dup_eps<eps>)",
    )


def _job_kwargs(args: argparse.Namespace) -> dict:
    return {
        "store": _store(args),
        "run": args.run,
        "checkpoint": args.checkpoint,
        "id_column": args.id_column,
        "feature_columns": args.feature_columns,
        "label_column": args.label_column or None,
        "embed_layer": args.embed_layer,
        "num_clusters": args.clusters,
        "dedup_eps": args.dedup_eps,
        "address": args.address,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "num_cpus": args.num_cpus,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "device": args.device,
        "resume": args.resume,
        "executor": args.executor,
        "progress": not args.quiet,
    }


def _run_job(args: argparse.Namespace, **extra) -> int:
    from winnow.pipelines.job import ShardError, score

    # `module:factory` names resolve against the working directory, as with `python -m` (the
    # `winnow` script itself does not put it on sys.path); Ray workers get it from Ray.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    try:
        score(args.data, args.model, **_job_kwargs(args), **extra)
    except ShardError as exc:
        print(f"winnow {args.command}: error: {exc}", file=sys.stderr)
        print(
            "  committed shards are kept; fix the model or data and rerun with --resume",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    return _run_job(
        args,
        metrics=args.metrics,
        reference=args.reference,
        reference_checkpoint=args.reference_checkpoint,
    )


def _cmd_embed(args: argparse.Namespace) -> int:
    return _run_job(args, metrics=["embedding"])


def _cmd_demo(args: argparse.Namespace) -> int:
    from winnow.pipelines.demo import run_demo

    run_demo(store=_store(args), actors=args.actors, num_samples=args.num_samples)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``score``, ``embed`` and ``demo`` to the ``winnow`` command."""
    p = subparsers.add_parser(
        "score",
        help="score every example with a model (Ray) into the store",
        description="Score every example of a dataset with a model on Ray and commit the "
        "per-example metrics to the score store. Resumable (--resume), exactly-once.",
    )
    _add_job_arguments(p)
    p.add_argument(
        "--metrics",
        default="loss",
        help="comma-separated: loss,el2n,grad_norm,learnability,entropy,margin,embedding",
    )
    p.add_argument("--reference", metavar="MODULE:FACTORY", help="reference model (learnability)")
    p.add_argument("--reference-checkpoint", metavar="PATH", help="reference model state_dict")
    _add_embedding_arguments(p)
    p.set_defaults(func=_cmd_score)

    p = subparsers.add_parser(
        "embed",
        help="embed every example and store faiss cluster / prototype / SemDeDup scores",
        description="Write float16 embeddings (model.embed or --embed-layer) to the store, then "
        "spherical k-means cluster ids, cosine distance to the centroid (proto_dist) and SemDeDup "
        "duplicate flags as scores.",
    )
    _add_job_arguments(p)
    _add_embedding_arguments(p)
    p.set_defaults(func=_cmd_embed)

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
