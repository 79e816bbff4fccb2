"""PNG plots of a report: loss curves per task and one summary figure.

matplotlib runs on the non-interactive Agg backend (no display needed, safe
in CI and over ssh). Curves show the seed mean with a min..max band.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_STYLE = {"adam_default": ("tab:gray", "--"), "adam_tuned": ("tab:blue", "-"), "adamw_cosine": ("tab:olive", "-")}
_LEARNED_COLORS = ["tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
_EXTRA_COLORS = ["tab:orange", "tab:cyan", "black", "gold", "navy", "lime", "teal"]


def _styles(report: dict) -> dict[str, tuple[str, str]]:
    styles = dict(_STYLE)
    for i, n in enumerate(report["learned"]):
        styles[n] = (_LEARNED_COLORS[i % len(_LEARNED_COLORS)], "-")
    extra = [b for b in report["baselines"] if b not in styles]
    for i, n in enumerate(extra):
        styles[n] = (_EXTRA_COLORS[i % len(_EXTRA_COLORS)], ":")
    return styles


def safe_filename(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "task"


def _band(ax, steps, runs, color, ls, label, log_y):
    arr = np.asarray([[np.nan if v is None else v for v in r] for r in runs], np.float64)
    arr[~np.isfinite(arr)] = np.nan
    if np.all(np.isnan(arr)):
        return
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, axis=0)
        lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    ax.plot(steps, mean, color=color, ls=ls, label=label, lw=1.5)
    if arr.shape[0] > 1:
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
    if log_y and np.nanmin(arr) > 0:
        ax.set_yscale("log")


def plot_task(report: dict, task: dict, path: Path) -> Path:
    """Train and valid loss (and accuracy where defined) against steps for every optimizer."""
    has_acc = any("valid_accuracy" in o["curve"] for o in task["optimizers"].values())
    panels = ["train_loss", "valid_loss"] + (["valid_accuracy"] if has_acc else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    styles = _styles(report)
    steps = task["curve_steps"]
    for ax, key in zip(np.atleast_1d(axes), panels):
        for name, entry in task["optimizers"].items():
            if key in entry["curve"]:
                color, ls = styles.get(name, ("black", "-"))
                label = f"{name} (lr {entry['lr']:.2g})" if "lr" in entry else name
                _band(ax, steps, entry["curve"][key], color, ls, label, log_y=key != "valid_accuracy")
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"{task['label']} ({task['num_params']} params, {task['steps']} steps)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_summary(report: dict, path: Path) -> Path:
    """Best valid loss and final train loss of every optimizer relative to the reference baseline (log scale,
    <1 is better), and each learned optimizer's validation speedup over it (hatched = censored lower bound)."""
    styles = _styles(report)
    labels = [t["label"] for t in report["tasks"]]
    ref = _reference(report)
    names = [n for n in report["learned"] + report["baselines"] if n != ref]
    fig, axes = plt.subplots(1, 3, figsize=(max(12.0, 2.0 * len(labels) + 6), 3.8))
    x = np.arange(len(labels))
    width = 0.8 / max(len(names), 1)
    for ax, key, title in ((axes[0], "best_valid_loss", "best valid loss"), (axes[1], "final_train_loss", "final train loss")):
        for i, n in enumerate(names):
            ratios = []
            for t in report["tasks"]:
                a, b = t["optimizers"][n][key], (t["optimizers"][ref][key] if ref else None)
                ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b > 0 and a > 0
                ratios.append(a / b if ok else np.nan)
            ax.bar(x + i * width, ratios, width, color=styles[n][0], label=n)
            for xi, t in zip(x, report["tasks"]):
                if t["optimizers"][n]["diverged"]:
                    ax.annotate("div", (xi + i * width, 1.0), ha="center", fontsize=7, color=styles[n][0])
        ax.axhline(1.0, color="black", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(x + 0.4 - width / 2, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{title} / {ref or '?'} (lower is better)", fontsize=9)
    axes[0].legend(fontsize=7)
    lw = 0.8 / max(len(report["learned"]), 1)
    top = 1.0
    for i, n in enumerate(report["learned"] if ref else []):
        entries = [t["speedup"][n][ref]["valid"] for t in report["tasks"]]
        vals = [np.nan if e["speedup"] is None else e["speedup"] for e in entries]
        top = max([top] + [v for v in vals if np.isfinite(v)])
        bars = axes[2].bar(x + i * lw, vals, lw, color=styles[n][0], label=n)
        for bar, e in zip(bars, entries):
            if e["censored"]:
                bar.set_hatch("//")
    axes[2].axhline(1.0, color="black", lw=1)
    axes[2].set_ylim(0, 1.1 * top)
    axes[2].set_xticks(x + 0.4 - lw / 2, labels, rotation=30, ha="right", fontsize=8)
    axes[2].set_title(f"valid speedup over {ref or '?'} (hatched: lower bound)", fontsize=9)
    if ref and report["learned"]:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _reference(report: dict) -> str | None:
    """The baseline the summary is relative to: the saturation rule's reference where it ran."""
    for t in report["tasks"]:
        ref = t["counted"]["valid"].get("reference")
        if ref:
            return ref
    return report["baselines"][0] if report["baselines"] else None


def plot_all(report: dict, out_dir: Path) -> dict[str, Path]:
    """``curves_<task>.png`` per task and ``summary.png``."""
    out_dir = Path(out_dir)
    paths = {t["label"]: plot_task(report, t, out_dir / f"curves_{safe_filename(t['label'])}.png") for t in report["tasks"]}
    paths["summary"] = plot_summary(report, out_dir / "summary.png")
    return paths
