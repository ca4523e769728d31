"""``winnow bench --task lm``: Online Data Mixing against fixed mixtures on a generated corpus.

    winnow bench --task lm [--quick] [--out DIR] [--steps N] [--seeds S] [--methods ...]

A tiny causal transformer trains on ``toylm.make_corpus`` (five languages in unequal natural
proportions, one of them pure noise) for the same number of steps under each method of
``_lm_methods``: natural proportions, uniform over domains, ODM (``ODMSampler``), uniform with
ODM's one-domain batches, and natural proportions over the documents a learnability filter
keeps (scored by the scoring job). It reports the validation loss per domain and on average
over time, the steps to the best baseline's final loss, ODM's mixture over time and its
overhead per step (docs/odm.md, "Benchmark").

Writes ``lm[_TAG].json``, ``lm[_TAG].md``, ``lm[_TAG]_loss.png`` and ``lm[_TAG]_mixture.png``
under ``--out`` (default ``./winnow-bench``) and prints the table. ``--quick`` is a smaller
model, corpus and run (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

__all__ = ["build_parser", "main", "run_benchmark", "write_outputs"]

_OUT = Path("winnow-bench")
_QUICK = {"train_docs": 3000, "heldout_docs": 1500, "val_per_domain": 60, "dim": 32,
          "heads": 2, "layers": 2, "steps": 160, "batch_size": 16, "eval_every": 20,
          "reference_steps": 80, "min_length": 10, "max_length": 24}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from winnow.pipelines.bench._lm_methods import method_names

    p = argparse.ArgumentParser(
        prog="winnow bench --task lm",
        description="Online Data Mixing against natural and uniform mixtures (and a "
        "learnability filter) on a generated multi-domain token corpus.",
    )
    p.add_argument("--task", choices=("lm",), default="lm", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke-test configuration")
    p.add_argument("--out", type=Path, default=_OUT, help="output directory (./winnow-bench)")
    p.add_argument("--steps", type=int, help="training steps of every method (2000; quick 160)")
    p.add_argument("--seeds", type=int, help="seeds per method (default 2; quick 1)")
    p.add_argument(
        "--methods",
        default=",".join(method_names()),
        help=f"comma-separated subset of: {', '.join(method_names())} (natural and uniform, "
        "the baselines, always run)",
    )
    p.add_argument("--keep", type=float, help="learnability filter: share kept (default 0.5)")
    p.add_argument("--batch-size", type=int, help="documents per step (32; quick 16)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (50; quick 20)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--tag", help="output name suffix (default: 'quick' with --quick, else none)")
    return p


def _config(args: argparse.Namespace):
    from winnow.pipelines.bench._lm_train import LMConfig

    cfg = LMConfig(**(_QUICK if args.quick else {}), data_seed=args.data_seed)
    given = {"steps": args.steps, "keep": args.keep, "batch_size": args.batch_size,
             "eval_every": args.eval_every}  # fmt: skip
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if args.steps is not None:  # the reference model keeps its share of the run
        base = _QUICK if args.quick else asdict(LMConfig())
        cfg = replace(cfg, reference_steps=max(1, round(args.steps * base["reference_steps"]
                                                         / base["steps"])))  # fmt: skip
    return cfg


def _methods(text: str) -> list[str]:
    from winnow.pipelines.bench._lm_methods import method_names

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {method_names()}")
    # natural first: its checkpoint is the learnability filter's learner
    return [m for m in method_names() if m in {"natural", "uniform", *names}]


def _resolve(args: argparse.Namespace) -> tuple:
    """``(LMConfig, methods, seeds)`` from the arguments; ``ValueError`` for a bad one."""
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 2)
    if seeds < 1 or args.threads < 1:
        raise ValueError(f"seeds and threads must be >= 1, got {seeds}, {args.threads}")
    return _config(args), _methods(args.methods), seeds


def run_benchmark(cfg, methods: list[str], seeds: int, *, threads: int = 1) -> dict:
    """Train every (method, seed) under ``cfg`` (an ``LMConfig``); the JSON-ready document."""
    import torch

    from winnow.pipelines.bench._lm_methods import METHODS, SeedState
    from winnow.pipelines.bench._lm_summary import summarise
    from winnow.pipelines.bench._lm_train import make_data

    torch.set_num_threads(threads)
    started = time.perf_counter()
    data = make_data(cfg)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in range(seeds):
        state = SeedState()
        for name in methods:
            res = METHODS[name][0](cfg, data, seed, state)
            results[name].append(res)
            last = res["history"][-1]
            print(
                f"[{time.perf_counter() - started:7.1f}s] {name:16s} seed {seed}: mean loss "
                f"{last['mean']:.3f}, natural-weighted {last['natural']:.3f}, "
                f"{res['train_cpu_s']:.1f} CPU s",
                flush=True,
            )
    return {
        "benchmark": "lm_mixing",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": threads},  # fmt: skip
        "config": {**asdict(cfg), "seeds": seeds, "methods": methods},
        "summary": summarise(results),
        "runs": results,
        "total_wall_s": time.perf_counter() - started,
    }


def write_outputs(doc: dict, out: Path, tag: str) -> dict[str, Path]:
    """JSON, Markdown and two PNGs; returns their paths."""
    from winnow.pipelines.bench._lm_methods import METHODS
    from winnow.pipelines.bench._lm_summary import markdown, plot_losses, plot_mixture
    from winnow.pipelines.bench.outcomes import _write_atomic

    stem = "lm" + (f"_{tag}" if tag else "")
    cfg = doc["config"]
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    title = (
        f"Language-model data mixing: {cfg['train_docs']} generated documents in 5 domains, "
        f"TinyCausalLM (dim {cfg['dim']}, {cfg['layers']} layers), {cfg['steps']} steps of "
        f"{cfg['batch_size']} documents, {cfg['seeds']} seed(s)"
    )
    text = f"# {title}\n\n" + markdown(doc["summary"], {k: v[1] for k, v in METHODS.items()})
    paths["png_loss"] = plot_losses(doc["runs"], "validation loss", out / f"{stem}_loss.png")
    if "odm" in doc["runs"]:
        paths["png_mixture"] = plot_mixture(
            doc["runs"]["odm"], "ODM mixture over steps", out / f"{stem}_mixture.png"
        )
    _write_atomic(paths["md"], text)
    _write_atomic(paths["json"], json.dumps(doc, separators=(",", ":"), allow_nan=False))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg, methods, seeds = _resolve(args)
    except ValueError as exc:
        parser.error(str(exc))
    run = run_benchmark(cfg, methods, seeds, threads=args.threads)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    paths = write_outputs(run, args.out, tag)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
