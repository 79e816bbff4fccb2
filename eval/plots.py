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

_STYLE = {"adam_default": ("tab:gray", "--"), "adam_tuned": ("tab:blue", "-")}
_LEARNED_COLORS = ["tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
_EXTRA_COLORS = ["tab:orange", "tab:cyan", "black"]


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
    """Left: final train loss of every optimizer relative to tuned Adam (log scale, <1 is better).
    Right: speedup of each learned optimizer over tuned Adam (hatched = censored lower bound)."""
    styles = _styles(report)
    labels = [t["label"] for t in report["tasks"]]
    names = [n for n in report["learned"] + report["baselines"] if n != "adam_tuned"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(labels) + 5), 3.8))
    x = np.arange(len(labels))
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        ratios = []
        for t in report["tasks"]:
            a, b = t["optimizers"][n]["final_train_loss"], t["optimizers"]["adam_tuned"]["final_train_loss"]
            ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b > 0 and a > 0
            ratios.append(a / b if ok else np.nan)
        ax1.bar(x + i * width, ratios, width, color=styles[n][0], label=n)
        for xi, t in zip(x, report["tasks"]):
            if t["optimizers"][n]["diverged"]:
                ax1.annotate("div", (xi + i * width, 1.0), ha="center", fontsize=7, color=styles[n][0])
    for xi, t in zip(x, report["tasks"]):  # a ratio to 0 is undefined: say why the bars are missing
        if t["optimizers"]["adam_tuned"]["final_train_loss"] == 0.0:
            ax1.annotate("tuned Adam\nreached 0", (xi + 0.4 - width / 2, 1.0), ha="center", va="bottom", fontsize=7)
    ax1.axhline(1.0, color="tab:blue", lw=1)
    ax1.set_yscale("log")
    ax1.set_xticks(x + 0.4 - width / 2, labels, rotation=30, ha="right", fontsize=8)
    ax1.set_title("final train loss / tuned Adam (lower is better)", fontsize=9)
    ax1.legend(fontsize=7)
    lw = 0.8 / max(len(report["learned"]), 1)
    for i, n in enumerate(report["learned"]):
        vals = [t["speedup"][n]["speedup"] for t in report["tasks"]]
        cens = [t["speedup"][n]["speedup_censored"] for t in report["tasks"]]
        bars = ax2.bar(x + i * lw, [np.nan if v is None else v for v in vals], lw, color=styles[n][0], label=n)
        for bar, c in zip(bars, cens):
            if c:
                bar.set_hatch("//")
    ax2.axhline(1.0, color="black", lw=1)
    ax2.set_ylim(0, 1.1 * float(report["suite"]["speedup_horizon"]))
    ax2.set_xticks(x + 0.4 - lw / 2, labels, rotation=30, ha="right", fontsize=8)
    ax2.set_title("speedup over tuned Adam (hatched: lower bound)", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_all(report: dict, out_dir: Path) -> dict[str, Path]:
    """``curves_<task>.png`` per task and ``summary.png``."""
    out_dir = Path(out_dir)
    paths = {t["label"]: plot_task(report, t, out_dir / f"curves_{safe_filename(t['label'])}.png") for t in report["tasks"]}
    paths["summary"] = plot_summary(report, out_dir / "summary.png")
    return paths
