"""Summaries of the language-model mixing benchmark: the table, the notes and the plots.

Per method, over seeds: the final validation loss per domain (nats per token, averaged over a
domain's documents), its mean over the domains and its natural-weighted mean (the weights of
``toylm.NATURAL``); the steps each method needs to reach the best baseline's final loss (the
baselines are ``natural`` and ``uniform``; "best" = lower final loss, per average); and the
CPU time of drawing batches and feeding losses back, per step, against the training step.
Curves are means over seeds, evaluated every ``eval_every`` steps, so a step count is a
multiple of it. Lower loss is better. See docs/odm.md, "Benchmark".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from winnow.pipelines.toylm import DOMAINS, NATURAL

__all__ = ["BASELINES", "markdown", "plot_losses", "plot_mixture", "summarise"]

BASELINES = ("natural", "uniform")
AVERAGES = ("mean", "natural")


def _curve(seeds: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(r["history"]) for r in seeds)
    steps = np.array([h["step"] for h in seeds[0]["history"][:length]])
    values = np.array([[h[key] for h in r["history"][:length]] for r in seeds], dtype=np.float64)
    return steps, values.mean(0)


def _first_at_or_below(steps: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(curve <= target + 1e-12)
    return int(steps[hit[0]]) if hit.size else None


def summarise(results: dict[str, list[dict]]) -> dict:
    """``results``: method -> per-seed results (``Run.result()``). Returns the summary."""
    missing = [b for b in BASELINES if b not in results]
    if missing:
        raise ValueError(f"the summary needs the baselines {missing}, got {sorted(results)}")
    rows: dict[str, dict] = {}
    for name, seeds in results.items():
        finals = np.array([r["history"][-1]["per_domain"] for r in seeds], dtype=np.float64)
        steps = sum(r["steps"] for r in seeds)
        rows[name] = {
            "seeds": len(seeds),
            "per_domain": finals.mean(0).tolist(),
            "mean": float(finals.mean(1).mean()),
            "mean_std": float(finals.mean(1).std(ddof=1)) if len(seeds) > 1 else 0.0,
            "natural": float((finals @ np.asarray(NATURAL)).mean()),
            "sampler_us_per_step": 1e6 * sum(r["sampler_cpu_s"] for r in seeds) / steps,
            "train_ms_per_step": 1e3 * sum(r["train_cpu_s"] for r in seeds) / steps,
            "sampler_wall_us_per_step": 1e6 * sum(r["sampler_wall_s"] for r in seeds) / steps,
            "train_wall_ms_per_step": 1e3 * sum(r["train_wall_s"] for r in seeds) / steps,
            "domain_share": (
                np.sum([r["domain_docs"] for r in seeds], 0)
                / np.sum([r["domain_docs"] for r in seeds])
            ).tolist(),
        }
    targets = {}
    for key in AVERAGES:
        best = min(BASELINES, key=lambda b: rows[b][key])
        targets[key] = {"baseline": best, "loss": rows[best][key]}
        best_steps = _first_at_or_below(*_curve(results[best], key), rows[best][key])
        targets[key]["steps"] = best_steps
        for name, seeds in results.items():
            reached = _first_at_or_below(*_curve(seeds, key), rows[best][key])
            rows[name][f"steps_to_{key}"] = reached
            rows[name][f"fewer_steps_{key}"] = (
                None if reached is None or not best_steps else 1.0 - reached / best_steps
            )
    extra: dict = {}
    if "odm" in results:
        odm = results["odm"]
        extra["odm_mixture_mean"] = np.mean([r["mixture_mean"] for r in odm], 0).tolist()
        extra["odm_mixture_last_tenth"] = np.mean(
            [r["mixture_last_tenth"] for r in odm], 0
        ).tolist()
    if "learnability" in results:
        setups = [r["setup"] for r in results["learnability"]]
        extra["learnability_setup"] = {
            "cpu_s": float(np.mean([s["cpu_s"] for s in setups])),
            "reference_steps": setups[0]["reference_steps"],
            "learner_steps": setups[0]["learner_steps"],
            "kept_share_per_domain": np.mean(
                [s["kept_share_per_domain"] for s in setups], 0
            ).tolist(),
            "mean_learnability_per_domain": np.mean(
                [s["mean_learnability_per_domain"] for s in setups], 0
            ).tolist(),
        }
    return {"targets": targets, "methods": rows, **extra}


def _steps(row: dict, key: str) -> str:
    steps = row[f"steps_to_{key}"]
    if steps is None:
        return "not reached"
    fewer = row[f"fewer_steps_{key}"]
    return f"{steps}" if fewer is None else f"{steps} ({0.0 - 100 * fewer:+.0f} %)"


def _shares(values: list[float]) -> str:
    return ", ".join(f"{d} {100 * v:.0f} %" for d, v in zip(DOMAINS, values, strict=True))


def markdown(summary: dict, descriptions: dict[str, str]) -> str:
    """The table (a row per method) and the notes under it."""
    head = " | ".join(DOMAINS)
    lines = [
        f"| method | mean over domains (± std) | natural-weighted | {head} "
        "| steps to target (mean over domains) | steps to target (natural-weighted) "
        "| sampler CPU per step |",
        "|---|---|---|" + "---|" * len(DOMAINS) + "---|---|---|",
    ]
    for name, row in summary["methods"].items():
        domains = " | ".join(f"{v:.3f}" for v in row["per_domain"])
        lines.append(
            f"| {name} | {row['mean']:.3f} ± {row['mean_std']:.3f} | {row['natural']:.3f} "
            f"| {domains} | {_steps(row, 'mean')} | {_steps(row, 'natural')} "
            f"| {row['sampler_us_per_step']:.0f} µs |"
        )
    t = summary["targets"]
    notes = [
        "Validation loss in nats per token (lower is better), final, mean over seeds. Target: "
        f"the best baseline's final loss: mean over domains {t['mean']['loss']:.3f} "
        f"(`{t['mean']['baseline']}`, first reached at step {t['mean']['steps']}), "
        f"natural-weighted {t['natural']['loss']:.3f} (`{t['natural']['baseline']}`, step "
        f"{t['natural']['steps']}); in brackets the change in steps against that baseline.",
    ]
    rows = summary["methods"]
    if "odm" in rows:
        odm = rows["odm"]
        base = rows["natural"]
        notes.append(
            f"ODM's overhead: drawing a batch and feeding its losses back cost "
            f"{odm['sampler_us_per_step']:.0f} µs of CPU per step against "
            f"{odm['train_ms_per_step']:.1f} ms for the training step "
            f"({100 * odm['sampler_us_per_step'] / (1e3 * odm['train_ms_per_step']):.1f} %); "
            f"the fixed natural mixture's sampler {base['sampler_us_per_step']:.0f} µs. "
            f"Wall clock: {odm['sampler_wall_us_per_step']:.0f} µs against "
            f"{odm['train_wall_ms_per_step']:.1f} ms "
            f"({100 * odm['sampler_wall_us_per_step'] / (1e3 * odm['train_wall_ms_per_step']):.1f}"
            " %)."
        )
        notes.append(
            f"ODM's mixture, mean over the run: {_shares(summary['odm_mixture_mean'])}; over "
            f"the last tenth: {_shares(summary['odm_mixture_last_tenth'])} (natural: "
            f"{_shares(list(NATURAL))})."
        )
    if "learnability_setup" in summary:
        s = summary["learnability_setup"]
        notes.append(
            f"Learnability filter: learner checkpoint after {s['learner_steps']} natural steps, "
            f"reference model {s['reference_steps']} steps on the held-out corpus, setup "
            f"{s['cpu_s']:.0f} CPU s (not in the steps above); kept per domain: "
            f"{_shares(s['kept_share_per_domain'])}; mean learnability per domain: "
            + ", ".join(
                f"{d} {v:+.2f}"
                for d, v in zip(DOMAINS, s["mean_learnability_per_domain"], strict=True)
            )
            + "."
        )
    notes.append("Methods: " + "; ".join(f"`{k}`: {descriptions.get(k, k)}" for k in rows))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_losses(results: dict[str, list[dict]], title: str, path: Path) -> Path:
    """Validation loss against steps: both averages and each domain, one line per method."""
    fig = _figure((15, 7))
    axes = fig.subplots(2, 4).ravel()
    panels = [("mean", "mean over domains"), ("natural", "natural-weighted mean")]
    panels += [(i, name) for i, name in enumerate(DOMAINS)]
    for ax, (key, label) in zip(axes, panels, strict=False):
        for i, (name, seeds) in enumerate(results.items()):
            length = min(len(r["history"]) for r in seeds)
            steps = [h["step"] for h in seeds[0]["history"][:length]]
            if isinstance(key, str):
                y = np.mean([[h[key] for h in r["history"][:length]] for r in seeds], 0)
            else:
                y = np.mean([[h["per_domain"][key] for h in r["history"][:length]]
                             for r in seeds], 0)  # fmt: skip
            ax.plot(steps, y, color=f"C{i}", label=name, linewidth=1.3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[-1].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="center")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_mixture(odm_seeds: list[dict], title: str, path: Path) -> Path:
    """ODM's mixture over steps (mean over seeds), natural proportions dotted, uniform grey."""
    fig = _figure((9, 4.2))
    ax = fig.subplots()
    every = odm_seeds[0]["mixture"]["every"]
    pi = np.mean([r["mixture"]["pi"] for r in odm_seeds], 0)
    steps = np.arange(pi.shape[0]) * every
    for d, name in enumerate(DOMAINS):
        ax.plot(steps, pi[:, d], color=f"C{d}", label=name, linewidth=1.3)
        ax.axhline(NATURAL[d], color=f"C{d}", linestyle=":", linewidth=1)
    ax.axhline(1 / len(DOMAINS), color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_xlabel("step")
    ax.set_ylabel("probability of drawing the domain")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    ax.set_title(title + " (dotted: natural proportions)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
