"""Summaries of the time-to-accuracy benchmark: the table, the JSON document and the plots.

Per model and method, over seeds: final test accuracy (mean ± sample std), backward examples
(selection setup included) and the saving against full data, the setup overhead, and the time
to reach ``target = target_frac * mean final accuracy of full data``. Time and compute to target
include the setup (scoring runs, reference models): the first evaluation at or above the target
gives the time and the example counts spent until then.

Time is measured twice: wall-clock, and the process's CPU time. Training runs on one torch
thread, so CPU time is what the wall-clock would be on an idle core; it stays meaningful when
other jobs share the machine, and the speed-up column uses it. "compute" counts a backward as
two forwards: ``forward + 2 * backward`` examples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["summarise", "markdown_table", "plot_curves"]

BASELINE = "full"


def _first_reaching(history: list[dict], target: float) -> dict | None:
    return next((h for h in history if h["acc"] >= target), None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise(results: dict[str, list[dict]], target_frac: float) -> dict:
    """``results``: method -> per-seed results (``MethodRun.finish()``). Returns method -> row."""
    if BASELINE not in results:
        raise ValueError(f"the summary needs the {BASELINE!r} baseline, got {sorted(results)}")
    base_final = float(np.mean([r["final_acc"] for r in results[BASELINE]]))
    target = target_frac * base_final
    rows: dict[str, dict] = {}
    for name, seeds in results.items():
        acc_mean, acc_std = _mean_std([r["final_acc"] for r in seeds])
        hits = [_first_reaching(r["history"], target) for r in seeds]
        reached = [h for h in hits if h is not None]
        rows[name] = {
            "final_acc_mean": acc_mean,
            "final_acc_std": acc_std,
            "backward_mean": float(np.mean([r["cost"]["backward"] for r in seeds])),
            "forward_mean": float(np.mean([r["cost"]["forward"] for r in seeds])),
            "steps_mean": float(np.mean([r["cost"]["steps"] for r in seeds])),
            "wall_mean_s": float(np.mean([r["cost"]["wall_s"] for r in seeds])),
            "cpu_mean_s": float(np.mean([r["cost"]["cpu_s"] for r in seeds])),
            "setup_wall_mean_s": float(np.mean([r["setup"]["wall_s"] for r in seeds])),
            "setup_cpu_mean_s": float(np.mean([r["setup"]["cpu_s"] for r in seeds])),
            "setup_backward_mean": float(np.mean([r["setup"]["backward"] for r in seeds])),
            "setup_forward_mean": float(np.mean([r["setup"]["forward"] for r in seeds])),
            "noisy_trained_frac": float(np.mean([r.get("noisy_trained_frac", 0.0) for r in seeds])),
            "seeds": len(seeds),
            "reached": len(reached),
            "time_to_target_s": (
                float(np.mean([h["wall_s"] for h in reached])) if reached else None
            ),
            "cpu_to_target_s": (float(np.mean([h["cpu_s"] for h in reached])) if reached else None),
            "compute_to_target": (
                float(np.mean([h["forward"] + 2 * h["backward"] for h in reached]))
                if reached
                else None
            ),
        }
    base = rows[BASELINE]
    full_curves = [
        (
            np.array([h["backward"] for h in r["history"]]),
            np.array([h["acc"] for h in r["history"]]),
        )
        for r in results[BASELINE]
    ]
    for row in rows.values():
        # what simply stopping full-data training at this method's backward budget gives
        row["full_acc_at_budget"] = float(
            np.mean([np.interp(row["backward_mean"], x, y) for x, y in full_curves])
        )
        row["backward_saved"] = 1.0 - row["backward_mean"] / base["backward_mean"]
        for key, out in (
            ("cpu_to_target_s", "speedup"),
            ("time_to_target_s", "wall_speedup"),
            ("compute_to_target", "compute_speedup"),
        ):
            ok = row[key] is not None and base[key] is not None and row[key] > 0
            row[out] = base[key] / row[key] if ok else None
    return {"target": target, "baseline_final_acc": base_final, "methods": rows}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "not reached" if value is None else f"{value:{spec}}{suffix}"


def _count(value: float) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"


def markdown_table(summary: dict, descriptions: dict[str, str]) -> str:
    """One Markdown table (a row per method) for one model's summary."""
    noisy = any(row["noisy_trained_frac"] > 0 for row in summary["methods"].values())
    lines = [
        "| method | final acc % (± std) | full data at same backward % | backward examples "
        "| saved | setup CPU s | time to target: CPU s (wall s) | speed-up (CPU time) "
        "| speed-up (compute) |" + (" noisy share of trained rows |" if noisy else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if noisy else ""),
    ]
    for name, row in summary["methods"].items():
        ttt = _fmt(row["cpu_to_target_s"], ".1f")
        if row["cpu_to_target_s"] is not None:
            ttt += f" ({row['time_to_target_s']:.1f})"
        if row["cpu_to_target_s"] is not None and row["reached"] < row["seeds"]:
            ttt += f" ({row['reached']}/{row['seeds']} seeds)"
        lines.append(
            f"| {name} | {100 * row['final_acc_mean']:.1f} ± {100 * row['final_acc_std']:.1f} "
            f"| {100 * row['full_acc_at_budget']:.1f} | {_count(row['backward_mean'])} "
            f"| {100 * row['backward_saved']:.0f} % "
            f"| {row['setup_cpu_mean_s']:.1f} | {ttt} "
            f"| {_fmt(row['speedup'], '.2f', '×')} | {_fmt(row['compute_speedup'], '.2f', '×')} |"
            + (f" {100 * row['noisy_trained_frac']:.1f} % |" if noisy else "")
        )
    notes = [
        f"Target: {100 * summary['target']:.1f} % test accuracy "
        f"(= the fraction asked of full data's {100 * summary['baseline_final_acc']:.1f} %). "
        "'full data at same backward' is full-data training stopped at the method's backward "
        "count (its schedule not compressed): the bar a pruning method has to clear.",
        "Methods: " + "; ".join(f"`{k}`: {descriptions.get(k, k)}" for k in summary["methods"]),
    ]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _mean_curve(seeds: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of (x, acc), each seed cut to the shortest history."""
    length = min(len(r["history"]) for r in seeds)
    xs = np.array([[h[key] for h in r["history"][:length]] for r in seeds], dtype=np.float64)
    ys = np.array([[h["acc"] for h in r["history"][:length]] for r in seeds], dtype=np.float64)
    return xs.mean(0), ys.mean(0)


def plot_curves(results: dict[str, list[dict]], target: float, title: str, path: Path) -> Path:
    """Accuracy against backward examples and against CPU time, one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    cmap = [f"C{i}" for i in range(10)]
    for i, (name, seeds) in enumerate(results.items()):
        style = "-" if i < 10 else "--"
        for ax, key, scale in ((axes[0], "backward", 1e6), (axes[1], "cpu_s", 1.0)):
            x, y = _mean_curve(seeds, key)
            ax.plot(x / scale, 100 * y, style, color=cmap[i % 10], label=name, linewidth=1.4)
    # start the axis 30 points under the target: the approach to it is what matters
    bottom = max(0.0, math.floor((100 * target - 30) / 10) * 10)
    labels = ("backward examples (M, selection setup included)", "CPU s (one thread)")
    for ax, label in zip(axes, labels, strict=True):
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy %")
        ax.set_ylim(bottom=bottom)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
