"""Time-to-accuracy of every selection method on one task, side by side.

    winnow bench [--quick] [--out DIR] [...]     (or: python -m winnow.pipelines.bench ...)
    winnow bench --task lm [...]                  language-model data mixing (``bench.lm``)

Task: MNIST-1D generated locally (``--num-train`` training rows, 80/20 with the test split),
a small CNN and an MLP, one recipe for all methods (AdamW, cosine decay, fixed epochs, batch
size), optional symmetric label noise on the training labels, several seeds. Every method is
accounted the same way: forward and backward examples, optimiser steps, wall-clock (evaluation
excluded) and test accuracy every ``--eval-every`` epochs' worth of backward examples. Time to
target (target = ``--target-frac`` of full data's final accuracy) includes every selection
overhead: EL2N scoring runs, the irreducible-loss / reference models, scoring forwards.

Writes ``outcomes[_quick].json`` and ``.md`` and ``outcomes[_quick]_<model>.png`` under
``--out`` (default ``./winnow-bench`` in the working directory; the repository's published
results use ``--out benchmarks/results``) and prints the Markdown table. Generated MNIST-1D
arrays are cached under ``~/.cache/winnow`` (``--cache-dir``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

__all__ = ["main", "build_parser"]

# Relative, so it lands in the user's working directory (never inside site-packages).
_OUT = Path("winnow-bench")
_DEFAULTS = {"num_train": 40_000, "epochs": 20, "seeds": 3, "models": "cnn,mlp"}
_QUICK = {"num_train": 4_000, "epochs": 30, "seeds": 1, "models": "cnn,mlp"}


def build_parser() -> argparse.ArgumentParser:
    from winnow.pipelines.bench._methods import method_names

    p = argparse.ArgumentParser(
        prog="winnow bench",
        description="Time-to-accuracy benchmark of every selection method on MNIST-1D.",
    )
    p.add_argument(
        "--task",
        choices=("mnist1d", "lm"),
        default="mnist1d",
        help="lm: Online Data Mixing on a generated token corpus (winnow bench --task lm --help)",
    )
    p.add_argument("--quick", action="store_true", help="a ~2 minute smoke-test configuration")
    p.add_argument(
        "--out", type=Path, default=_OUT, help="output directory (default: ./winnow-bench)"
    )
    p.add_argument("--num-train", type=int, help="training rows (default 40000; quick 4000)")
    p.add_argument("--epochs", type=int, help="epochs of the shared recipe (default 20; quick 30)")
    p.add_argument("--seeds", type=int, help="seeds per method (default 3; quick 1)")
    p.add_argument("--models", help="comma-separated: cnn, mlp (default both)")
    p.add_argument(
        "--methods",
        default=",".join(method_names()),
        help=f"comma-separated subset of: {', '.join(method_names())}",
    )
    p.add_argument("--label-noise", type=float, default=0.0, help="symmetric noise fraction")
    p.add_argument(
        "--keep", type=float, default=0.3, help="RS2 / static subsets: the share of data kept"
    )
    p.add_argument(
        "--il-epochs",
        type=int,
        help="epochs of each twin irreducible-loss model (RHO-LOSS, JEST); default epochs // 2",
    )
    p.add_argument("--el2n-runs", type=int, default=3, help="EL2N scoring runs averaged")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--target-frac", type=float, default=0.98)
    p.add_argument("--eval-every", type=float, default=0.25, help="in epochs of backward rows")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--data-seed", type=int, default=42)
    p.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "winnow"),
        help="where generated MNIST-1D arrays are cached",
    )
    p.add_argument(
        "--store",
        help="also keep the first seed's scores, every method's trace and the full-data run's "
        "gradient noise scale in this score store (for `winnow report`)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        help="no training: re-summarise a saved outcomes JSON (e.g. with another --target-frac)",
    )
    p.add_argument("--tag", help="output name suffix (default: 'quick' with --quick, else none)")
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    from winnow.pipelines.bench._methods import method_names

    for key, value in (_QUICK if args.quick else _DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in method_names()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {method_names()}")
    if "full" not in args.methods:
        args.methods.insert(0, "full")  # the baseline every ratio is measured against
    bad_models = [m for m in args.models if m not in ("cnn", "mlp")]
    if bad_models or not args.models:
        raise ValueError(f"models must be a non-empty subset of cnn, mlp, got {args.models}")
    if (args.il_epochs is not None and args.il_epochs < 1) or args.el2n_runs < 1:
        raise ValueError(
            f"il-epochs and el2n-runs must be >= 1, got {args.il_epochs}, {args.el2n_runs}"
        )
    if args.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {args.seeds}")
    if not 0.0 < args.target_frac <= 1.0:
        raise ValueError(f"target-frac must be in (0, 1], got {args.target_frac}")
    if not args.eval_every > 0:
        raise ValueError(f"eval-every must be > 0, got {args.eval_every}")
    if args.tag is None:
        args.tag = "quick" if args.quick else ""
    return args


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)


def run_benchmark(args: argparse.Namespace) -> dict:
    """Train every (model, method, seed); return the JSON-ready document."""
    import torch

    from winnow.pipelines.bench._engine import MethodRun, Recipe, make_task
    from winnow.pipelines.bench._methods import METHODS, MethodConfig, SharedSetups
    from winnow.pipelines.bench._summary import summarise

    torch.set_num_threads(args.threads)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    overrides = {"keep": args.keep, "el2n_runs": args.el2n_runs}
    if args.il_epochs is not None:
        overrides["il_epochs"] = args.il_epochs
    cfg = MethodConfig.for_recipe(args.epochs, **overrides)
    doc: dict = {
        "benchmark": "outcomes",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": args.threads,
        },
        "config": {
            "num_train": args.num_train,
            "label_noise": args.label_noise,
            "seeds": args.seeds,
            "models": args.models,
            "methods": args.methods,
            "target_frac": args.target_frac,
            "eval_every_epochs": args.eval_every,
            "recipe": asdict(recipe),
            "method_config": asdict(cfg),
        },
        "models": {},
    }
    keep = None
    if args.store:
        from winnow.pipelines.bench._store import BenchStore

        keep = BenchStore(args.store, doc["config"])
    started = time.perf_counter()
    for model in args.models:
        task = make_task(
            args.num_train,
            model,
            label_noise=args.label_noise,
            data_seed=args.data_seed,
            cache_dir=args.cache_dir,
        )
        eval_every = max(1, round(args.eval_every * task.num_examples))
        results: dict[str, list[dict]] = {m: [] for m in args.methods}
        for seed in range(args.seeds):
            shared = SharedSetups()
            for name in args.methods:
                run = MethodRun(task, recipe, seed, eval_every)
                traced = keep is not None and seed == 0
                if traced:
                    keep.attach_trace(run, model, name)
                METHODS[name][0](run, cfg, shared)
                res = run.finish()
                results[name].append(res)
                if traced:
                    keep.finish_trace(run)
                if keep and seed == 0 and name == "full":
                    full_run = run
                print(
                    f"[{time.perf_counter() - started:7.1f}s] {model} {name:14s} seed {seed}: "
                    f"acc {100 * res['final_acc']:.2f} %, {res['cost']['cpu_s']:.1f} CPU s "
                    f"({res['cost']['wall_s']:.1f} s wall), "
                    f"{res['cost']['backward']} backward rows",
                    flush=True,
                )
            if keep and seed == 0:
                keep.write_scores(
                    model, full_run, shared.cached(("el2n",)), shared.cached(("twin_il",))
                )
        doc["models"][model] = {
            "summary": summarise(results, args.target_frac),
            "runs": results,
        }
    doc["total_wall_s"] = time.perf_counter() - started
    return doc


def resummarise(doc: dict, target_frac: float) -> dict:
    """Recompute every model's summary of a saved document at ``target_frac``."""
    from winnow.pipelines.bench._summary import summarise

    doc["config"]["target_frac"] = target_frac
    for entry in doc["models"].values():
        entry["summary"] = summarise(entry["runs"], target_frac)
    return doc


def write_outputs(doc: dict, out: Path, tag: str) -> dict[str, Path]:
    """JSON, Markdown and one PNG per model; returns their paths."""
    from winnow.pipelines.bench._methods import METHODS
    from winnow.pipelines.bench._summary import markdown_table, plot_curves

    stem = "outcomes" + (f"_{tag}" if tag else "")
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    descriptions = {k: v[1] for k, v in METHODS.items()}
    cfg = doc["config"]
    sections = [
        f"# Time to accuracy on MNIST-1D ({cfg['num_train']} train rows, label noise "
        f"{cfg['label_noise']}, {cfg['seeds']} seed(s), {cfg['recipe']['epochs']} epochs)\n"
    ]
    for model, entry in doc["models"].items():
        summary = entry["summary"]
        sections.append(f"## {model}\n\n{markdown_table(summary, descriptions)}")
        png = out / f"{stem}_{model}.png"
        plot_curves(entry["runs"], summary["target"], f"MNIST-1D, {model}", png)
        paths[f"png_{model}"] = png
    _write_atomic(paths["md"], "\n".join(sections))
    _write_atomic(paths["json"], json.dumps(doc, separators=(",", ":"), allow_nan=False))
    return paths


def _task(argv: list[str]) -> str:
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", default="mnist1d")
    return task.parse_known_args(argv)[0].task


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _task(argv) == "lm":
        from winnow.pipelines.bench.lm import main as lm_main

        return lm_main(argv)
    parser = build_parser()
    try:
        args = _resolve(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
    if args.from_json:
        doc = resummarise(json.loads(args.from_json.read_text()), args.target_frac)
    else:
        doc = run_benchmark(args)
    paths = write_outputs(doc, args.out, args.tag)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
