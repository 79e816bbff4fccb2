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
    return f">{s}" if entry.get("censored") else s


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _mark(task: dict, metric: str) -> str:
    return "" if task["counted"][metric]["counts"] else " (saturated)"


def summary_table(report: dict) -> str:
    """Markdown: best valid loss and final train loss of every optimizer; speedups and outcomes of each learned one."""
    names = report["learned"] + report["baselines"]
    tasks = report["tasks"]
    valid = _table(["task", "steps"] + names, [
        [t["label"] + _mark(t, "valid"), str(t["steps"])]
        + [_fmt(t["optimizers"][n]["best_valid_loss"]) + _div_mark(t["optimizers"][n]) for n in names]
        for t in tasks])
    train = _table(["task"] + names, [
        [t["label"] + _mark(t, "train")] + [_fmt(t["optimizers"][n]["final_train_loss"]) for n in names]
        for t in tasks])
    parts = ["Best validation loss along the run (whole validation split, seed mean; "
             "'(saturated)': the task does not count for this metric):\n", valid,
             "\nFinal training loss (seed mean):\n", train]
    if _has_acc(report):
        parts += ["\nValidation accuracy at the best-validation step:\n", _table(["task"] + names, [
            [t["label"]] + [_fmt(t["optimizers"][n].get("best_valid_accuracy"), 3) for n in names]
            for t in tasks if any(o.get("best_valid_accuracy") is not None for o in t["optimizers"].values())])]
    for n in report["learned"] if report["baselines"] else ():  # --baselines none: nothing to compare with
        base = report["baselines"]
        head = ["task"] + [f"valid x {b}" for b in base] + [f"train x {b}" for b in base]
        rows = [[t["label"]]
                + [_fmt_speedup(t["speedup"][n][b]["valid"]) + " " + t["outcomes"][n][b]["valid"] for b in base]
                + [_fmt_speedup(t["speedup"][n][b]["train"]) + " " + t["outcomes"][n][b]["train"] for b in base]
                for t in tasks]
        parts += [f"\nSpeedup and outcome of `{n}` over each baseline (validation: steps to reach its best valid "
                  "loss; training: steps to reach its final train loss; baselines ran up to speedup_horizon x "
                  "longer, AdamW-cosine planned for 0.25-2x the horizon; '>x': no run got there):\n",
                  _table(head, rows)]
    return "\n".join(parts) + "\n"


def _has_acc(report: dict) -> bool:
    return any(o.get("best_valid_accuracy") is not None for t in report["tasks"] for o in t["optimizers"].values())


def _div_mark(entry: dict) -> str:
    d = entry.get("diverged", 0)
    return f" ({d} div)" if d else ""


def outcome_lines(report: dict) -> list[str]:
    """One line per learned optimizer and metric: win/tie/loss and geometric-mean speedup on the counted tasks."""
    lines = []
    summary = report["summary"]
    for metric, what in (("valid", "best valid loss"), ("train", "final train loss")):
        counted = summary["counted_tasks"][metric]
        lines.append(f"- **{what}**: {len(counted)} of {len(report['tasks'])} tasks count "
                     f"({', '.join(counted) or 'none'})")
        for n in report["learned"] if report["baselines"] else ():
            s = summary[n][metric]
            per = "; ".join(
                f"{b}: {c['win']}/{c['tie']}/{c['loss']}, speedup {_fmt(s['speedup_geomean'][b], 3)}"
                + (f" ({s['speedup_censored'][b]} censored)" if s["speedup_censored"][b] else "")
                for b, c in s["win_tie_loss"].items())
            lines.append(f"  - `{n}` win/tie/loss, geometric-mean speedup: {per}")
    for n in report["learned"]:
        lines.append(f"- `{n}` divergences: {summary[n]['divergences']}")
    base_div = summary["baseline_divergences"]
    lines.append("- baseline divergences: " + (", ".join(f"{b}: {d}" for b, d in base_div.items()) or "no baselines run"))
    lines.append("- wall time per optimizer (all tasks, compiles included): "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in summary["wall_time_s"].items()))
    return lines


def saturation_lines(report: dict) -> list[str]:
    """Why each task counts or not, per metric (the rule is in the definitions)."""
    return [f"- {t['label']}: valid {'counts' if t['counted']['valid']['counts'] else 'saturated'} "
            f"({t['counted']['valid']['why']}); train {'counts' if t['counted']['train']['counts'] else 'saturated'} "
            f"({t['counted']['train']['why']})" for t in report["tasks"]]


def render_markdown(report: dict) -> str:
    suite = report["suite"]
    proto = report["protocol"]
    learned = ", ".join(f"`{n}` ({report['sources'][n]})" for n in report["learned"])
    tuned = [(t["label"], b, r["chosen_lr"]) for t in report["tasks"] for b, r in t["tuning"].items()]
    times = report["summary"]["wall_time_s"]
    parts = [
        f"# lopt eval: suite `{suite['name']}`\n",
        f"{suite.get('description', '')}\n",
        f"Learned: {learned}. Baselines: {', '.join(report['baselines'])}. "
        f"Seeds reported: {proto['report_seeds']}; learning rates tuned on seeds {proto['tuning_seeds']} "
        f"over {len(suite['lr_grid'])} values {suite['lr_grid'][0]:g}..{suite['lr_grid'][-1]:g}.\n",
        "## Results\n",
        summary_table(report),
        "\n## Outcomes on the tasks that count\n",
        "\n".join(outcome_lines(report)) + "\n",
        "\n## Which tasks count\n",
        f"Rule: reference `{suite['saturation']['reference']}`, {suite['saturation']['bands']:g} tie bands above "
        "the loss floor (see the definitions).\n",
        "\n".join(saturation_lines(report)) + "\n",
        "\n## Tuned learning rates\n",
        "\n".join(f"- {label} {b}: {lr:g}" for label, b, lr in tuned) + ("\n" if tuned else "- none\n"),
        "\n## Wall time per optimizer (all tasks, compiles included)\n",
        "\n".join(f"- {k}: {v:.1f} s" for k, v in times.items()) + "\n",
        "\n## Definitions\n",
        "\n".join(f"- **{k}**: {v}" for k, v in proto["definitions"].items()) + "\n",
        f"\nTotal wall time {report['wall_time_s']:.1f} s on {report['device']}.\n",
    ]
    return "\n".join(parts)


def summarize(report: dict) -> dict:
    """Per learned optimizer and metric: win/tie/loss and speedup aggregates on the counted tasks."""
    tasks = report["tasks"]
    out: dict[str, Any] = {"counted_tasks": {m: [t["label"] for t in tasks if t["counted"][m]["counts"]]
                                             for m in ("train", "valid")}}
    for n in report["learned"]:
        out[n] = {"divergences": sum(t["optimizers"][n]["diverged"] for t in tasks)}
        for m in ("train", "valid"):
            counted = [t for t in tasks if t["counted"][m]["counts"]]
            sp = {b: [t["speedup"][n][b][m] for t in counted] for b in report["baselines"]}
            out[n][m] = {
                "win_tie_loss": {b: metrics.count_outcomes([t["outcomes"][n][b][m] for t in counted])
                                 for b in report["baselines"]},
                "speedup_geomean": {b: metrics.geometric_mean([e["speedup"] for e in v]) for b, v in sp.items()},
                "speedup_median": {b: metrics.median([e["speedup"] for e in v]) for b, v in sp.items()},
                "speedup_censored": {b: sum(bool(e["censored"]) for e in v) for b, v in sp.items()},
            }
    out["baseline_divergences"] = {b: sum(t["optimizers"][b]["diverged"] for t in tasks) for b in report["baselines"]}
    times: dict[str, float] = {}
    for t in tasks:
        for k, v in t["wall_time_s"].items():
            times[k] = times.get(k, 0.0) + float(v)
    out["wall_time_s"] = times
    return out
