"""Writing a finished evaluation: ``report.json``, ``report.md`` and the plots.

The report is a plain dict built by :mod:`lopt.eval.evaluate`; this module only
renders it. JSON has no infinities, so non-finite numbers are written as
``null`` -- every such place also carries a ``diverged`` count saying why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lopt.eval import metrics


def to_jsonable(x: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python, non-finite floats into None."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and (optionally) PNG plots; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(to_jsonable(report), indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(render_markdown(report))
    if plots:
        from lopt.eval import plots as plots_mod

        for label, path in plots_mod.plot_all(report, out).items():
            paths[f"plot:{label}"] = path
    return paths


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "diverged" if x > 0 else "nan"
        return f"{x:.{digits}g}"
    return str(x)


def _fmt_speedup(entry: dict | None) -> str:
    if not entry or entry.get("speedup") is None:
        return "-"
    s = f"{entry['speedup']:.2f}"
    return f">{s}" if entry.get("speedup_censored") else s


def summary_table(report: dict) -> str:
    """Markdown: final train loss of every optimizer with speedups and outcomes, then validation numbers."""
    names = report["learned"] + report["baselines"]
    learned = report["learned"]
    head = ["task", "steps"] + names + [f"speedup {n}" for n in learned]
    head += [f"{n} vs {b}" for n in learned for b in report["baselines"]]
    train = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    acc = _has_acc(report)
    vhead = ["task"] + [f"{n} loss" for n in names] + ([f"{n} acc" for n in names] if acc else [])
    valid = ["| " + " | ".join(vhead) + " |", "|" + "---|" * len(vhead)]
    for t in report["tasks"]:
        opt = t["optimizers"]
        row = [t["label"], str(t["steps"])]
        row += [_fmt(opt[n]["final_train_loss"]) + _div_mark(opt[n]) for n in names]
        row += [_fmt_speedup(t["speedup"].get(n)) for n in learned]
        row += [t["outcomes"][n][b] for n in learned for b in report["baselines"]]
        train.append("| " + " | ".join(row) + " |")
        vrow = [t["label"]] + [_fmt(opt[n].get("final_valid_loss")) for n in names]
        if acc:
            vrow += [_fmt(opt[n].get("final_valid_accuracy"), 3) for n in names]
        valid.append("| " + " | ".join(vrow) + " |")
    return ("Final train loss (mean over reported seeds):\n\n" + "\n".join(train)
            + "\n\nValidation at the last step (mean over reported seeds):\n\n" + "\n".join(valid) + "\n")


def _has_acc(report: dict) -> bool:
    return any(o.get("final_valid_accuracy") is not None for t in report["tasks"] for o in t["optimizers"].values())


def _div_mark(entry: dict) -> str:
    d = entry.get("diverged", 0)
    return f" ({d} div)" if d else ""


def outcome_lines(report: dict) -> list[str]:
    lines = []
    for n in report["learned"]:
        s = report["summary"][n]
        wtl = ", ".join(f"{b}: {c['win']}/{c['tie']}/{c['loss']}" for b, c in s["win_tie_loss"].items())
        lines.append(
            f"- **{n}** win/tie/loss vs {wtl}; speedup over tuned Adam median {_fmt(s.get('speedup_median'), 3)}, "
            f"geometric mean {_fmt(s.get('speedup_geomean'), 3)} ({s['speedup_censored']} censored); "
            f"divergences {s['divergences']}"
        )
    saturated = report["summary"].get("no_win_possible", {})
    if any(saturated.values()):
        n = len(report["tasks"])
        lines.append(
            "- tasks where a baseline's final loss is within the tie tolerance of the task's loss floor "
            "(0, or the exact minimum where known), so at best a tie: "
            + ", ".join(f"{b}: {k} (at most {n - k} of {n} tasks can be won)" for b, k in saturated.items())
        )
    base_div = report["summary"]["baseline_divergences"]
    lines.append("- baseline divergences: " + ", ".join(f"{b}: {d}" for b, d in base_div.items()))
    return lines


def render_markdown(report: dict) -> str:
    suite = report["suite"]
    proto = report["protocol"]
    learned = ", ".join(f"`{n}` ({report['sources'][n]})" for n in report["learned"])
    parts = [
        f"# lopt eval: suite `{suite['name']}`\n",
        f"{suite.get('description', '')}\n",
        f"Learned: {learned}. "
        f"Seeds reported: {proto['report_seeds']}; Adam learning rate tuned on seeds {proto['tuning_seeds']} "
        f"over {len(suite['lr_grid'])} values {suite['lr_grid'][0]:g}..{suite['lr_grid'][-1]:g}.\n",
        "## Results\n",
        summary_table(report),
        "\n## Outcomes\n",
        "\n".join(outcome_lines(report)) + "\n",
        "\n## Tuned Adam learning rates\n",
        "\n".join(f"- {t['label']}: {t['tuning']['chosen_lr']:g}" for t in report["tasks"]) + "\n",
        "\n## Definitions\n",
        "\n".join(f"- **{k}**: {v}" for k, v in proto["definitions"].items()) + "\n",
        f"\nTotal wall time {report['wall_time_s']:.1f} s on {report['device']}.\n",
    ]
    return "\n".join(parts)


def summarize(report: dict) -> dict:
    """Per learned optimizer: win/tie/loss counts, divergences, speedup aggregate."""
    out: dict[str, Any] = {}
    for n in report["learned"]:
        counts = {b: metrics.count_outcomes([t["outcomes"][n][b] for t in report["tasks"]]) for b in report["baselines"]}
        speedups = [t["speedup"][n]["speedup"] for t in report["tasks"]]
        out[n] = {
            "win_tie_loss": counts,
            "divergences": sum(t["optimizers"][n]["diverged"] for t in report["tasks"]),
            "speedup_median": metrics.median(speedups),
            "speedup_geomean": metrics.geometric_mean(speedups),
            "speedup_censored": sum(bool(t["speedup"][n]["speedup_censored"]) for t in report["tasks"]),
        }
    out["no_win_possible"] = {
        b: sum(not t.get("win_possible", {}).get(b, True) for t in report["tasks"]) for b in report["baselines"]
    }
    out["baseline_divergences"] = {
        b: sum(t["optimizers"][b]["diverged"] for t in report["tasks"]) for b in report["baselines"]
    }
    return out
