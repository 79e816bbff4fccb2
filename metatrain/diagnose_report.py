"""Writes what ``lopt diagnose`` measured: ``diagnose.json``, ``diagnose.md`` and PNG plots.

The JSON holds every number (non-finite ones, e.g. "never reaches the target
cosine", as ``null``); the markdown is the one-minute read: which estimator
gives the most signal per second on this config and machine, and the sweeps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lopt.metatrain.diagnose_options import SWEEP_KEYS
from lopt.metatrain.diagnose_stats import reference_is_noise


def sweep_points(results: list[dict], sweeps: list[dict], field: str) -> list[dict]:
    """The rows of one swept field, and the config's own row of each swept estimator at its own value.

    The config's setting is a point of the sweep too: a grid that leaves it out (``truncation_length=10,50``
    around the config's 20) would otherwise name a worse value "best".
    """
    swept = [r for r in sweeps if r.get("sweep") and SWEEP_KEYS[r["sweep"]][1] == field and "error" not in r]
    names = {r["estimator"] for r in swept}
    own = [{**r, "value": r[field]} for r in results
           if r["estimator"] in names and r.get("sweep") is None and field in r and "error" not in r]
    measured = {(o["estimator"], o["value"]) for o in own}  # a swept value equal to the config's is not a second point
    return own + [r for r in swept if (r["estimator"], r["value"]) not in measured]


def seconds_to_target(r: dict) -> float:
    """Seconds to the target cosine; never reached (None or inf) sorts last."""
    v = r.get("seconds_to_target")
    return math.inf if v is None else float(v)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return _jsonable(x.item())
    return x


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "never"
    return fmt.format(x)


def _point(r: dict) -> str:
    """The bias cosine; an unresolved mean (smaller than its own noise) has no point estimate, only its interval."""
    return f"{r['cosine']:.2f}" if r.get("mean_resolved", True) else "unresolved"


def _rel_error(r: dict) -> str:
    """Like the cosine: the noise-corrected error of an unresolved mean is no estimate (it can clip to 0)."""
    return f"{r['rel_error']:.3g}" if r.get("mean_resolved", True) else "unresolved"


def _table(rows: list[dict], target: float, first: str = "estimator") -> list[str]:
    head = (
        f"| {first} | trunc | std | bias cosine [90% CI] | rel. error | per-sample var | autocorr | "
        f"samples to cos {target:g} | s / estimate | inner steps / estimate | **s to cos {target:g}** |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        name = r["estimator"] if first == "estimator" else f"{r['estimator']} @ {r['value']}"
        if "error" in r:
            lines.append(f"| {name} | {r['truncation_length']} | | {r['error']} |" + " |" * 7)
            continue
        lo, hi = r["cosine_ci90"]
        lines.append(
            f"| {name} | {r['truncation_length']} | {_num(r['std'], '{:g}') if r['std'] is not None else '-'} | "
            f"{_point(r)} [{lo:.2f}, {hi:.2f}] | {_rel_error(r)} | {r['variance']:.3g} | "
            f"{r['autocorr_time']:.1f} | {_num(r['samples_to_target'])} | {r['seconds_per_estimate']:.3g} | "
            f"{r['inner_steps_per_estimate']:,} | **{_num(r['seconds_to_target'])}** |"
        )
    return lines


def markdown(result: dict) -> str:
    opt, ref, obj, mach = result["options"], result["reference"], result["objective"], result["machine"]
    target = opt["target_cosine"]
    ep = obj["episode"]
    episode = (f"{ep['length']} steps" if ep["kind"] == "constant"
               else f"log-uniform {ep['min_length']}-{ep['max_length']} steps")
    out = [
        f"# lopt diagnose: {result['config_name'] or 'config'}",
        "",
        f"Meta-parameters: {result['meta_params_source']} ({result['num_meta_params']:,} numbers). "
        f"Objective: full episodes ({episode}, mean {obj['expected_episode_length']:.0f}), "
        f"meta-loss `{obj['meta_loss']}`/`{obj['loss_transform']}`, {obj['num_tasks']} tasks per estimate.",
        f"Machine: {mach['cpu_count']} CPUs, load average {mach['load_average_1_5_15']}, jax {mach['jax']}, "
        f"{mach['date_utc']} UTC; {result['wall_seconds']:.0f} s in all"
        + (f" ({result['cpu_seconds']:.0f} s of CPU, {result['compile_seconds']:.0f} s compiling"
           + (", two compiles at a time" if result.get("background_compile") else "") + ")"
           if "cpu_seconds" in result else "") + ".",
        "",
        f"Reference: full-episode **{ref['method']}**"
        + (f" (directional derivatives along the {ref['subspace_exact_dims']} directions of the estimators' means, "
           f"exact, and {ref['subspace_random_dims']} random Gaussian ones for the rest; every estimator is compared "
           "in these coordinates, and the intervals include the random projection's error)"
           if ref["method"] == "subspace" else "")
        + f" ({ref['samples']} samples"
        + (f" of {ref['requested_samples']} requested, capped by --sample-budget-s {opt.get('sample_budget_s', 0):g}"
           if (ref.get("requested_samples") or 0) > ref["samples"] else "")
        + (f" (more than the {ref['requested_samples']} requested while its mean was noisy)"
           if 0 < (ref.get("requested_samples") or 0) < ref["samples"] else "")
        + f", {ref['seconds_per_sample']:.2f} s each"
        + f"){'; ' + ref['fallback_reason'] if ref['fallback_reason'] else ''}: "
        f"expected cosine with the true gradient {ref['expected_cosine_to_truth']:.3f}"
        + (f", split-half cosine {ref['split_half_cosine']:.3f}" if "split_half_cosine" in ref else "")
        + ".",
        "",
    ]
    rank = result["ranking"]
    if reference_is_noise(ref):  # comparing with noise would rank noise
        out += [f"**No ranking: the reference itself is noise** (its expected cosine with the true gradient is "
                f"{ref['expected_cosine_to_truth']:.2f}); draw more reference samples ("
                + ("`--reference-samples`" if ref["method"] == "subspace" else "`--reference-es-samples`")
                + ", `--sample-budget-s`) or "
                + ("let backprop compile (`--reference backprop`)." if "to compile" in ref.get("fallback_reason", "")
                   else "make backprop through the episode finite."), ""]
        rank = []
    if rank:
        best = rank[0]
        if best["seconds_to_target"] is not None and math.isfinite(best["seconds_to_target"]):
            out.append(
                f"**Most signal per second here: `{best['estimator']}`** "
                f"({_num(best['seconds_to_target'])} s of estimates to reach cosine {target:g} with the full-episode gradient). "
                "Ranking: " + ", ".join(f"`{r['estimator']}` ({_num(r['seconds_to_target'])} s)" for r in rank) + "."
            )
        else:
            out.append(f"No estimator reaches cosine {target:g} at these settings (bias or too few samples to tell).")
        out.append("")
    out += _table(result["results"], target)
    out += [
        "",
        "Bias cosine: of the estimator's mean with the reference (noise-corrected; 1 = unbiased). "
        f"Samples to cos {target:g}: independent estimates whose mean reaches it; consecutive meta-steps of a "
        "stateful estimator need `autocorr` times more. s to cos: samples x seconds per estimate (cost of one unit of signal). "
        "unresolved: the mean is smaller than its own noise, so only the interval (block bootstrap) is informative "
        "(its cosine and relative error have no point estimate).",
    ]
    notes = [r["note"] for r in result["results"] if r.get("note")]
    notes += [f"`{r['estimator']}`" + (f" at {r['sweep']}={r['value']}" if r.get("sweep") else "")
              + f" not measured: {r['reason']}" for r in result.get("skipped", [])]
    out += [f"Note: {n}." for n in dict.fromkeys(notes)]
    sweeps = result["sweeps"]
    for key in dict.fromkeys(r["sweep"] for r in sweeps):
        rows = [r for r in sweeps if r["sweep"] == key]
        out += ["", f"## Sweep `{key}`", ""] + _table(rows, target, first="estimator @ value")
    for field in ("truncation_length", "std"):
        best = result.get(f"best_{field}")
        if best:
            out += ["", f"Best {field.replace('_', ' ')}: " + ", ".join(
                f"`{k}` {v['value']} ({_num(v['seconds_to_target'])} s)" for k, v in best.items()) + "."]
    return "\n".join(out) + "\n"


def plots(result: dict, out_dir: Path) -> list[Path]:
    """cosine_vs_samples.png, and signal_cost_vs_<field>.png for each sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = result["options"]["target_cosine"]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(result["results"]):
        if "curve_n" not in r:
            continue
        color = f"C{i}"
        ax.plot(r["curve_n"], r["curve_expected"], color=color, label=f"{r['estimator']} (expected)")
        ax.plot(r["curve_n"], r["curve_empirical"], "o", color=color, ms=4, label=f"{r['estimator']} (measured)")
    ax.axhline(target, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("estimates averaged")
    ax.set_ylabel("cosine with full-episode gradient")
    ax.set_ylim(-0.2, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(f"lopt diagnose: {result['config_name']}", fontsize=9)
    fig.tight_layout()
    path = out_dir / "cosine_vs_samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for key in dict.fromkeys(r["sweep"] for r in result["sweeps"]):
        rows = sweep_points(result["results"], result["sweeps"], SWEEP_KEYS[key][1])
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, est in enumerate(dict.fromkeys(r["estimator"] for r in rows)):
            pts = sorted((r["value"], seconds_to_target(r)) for r in rows if r["estimator"] == est)
            xs = [float(x) for x, y in pts if math.isfinite(y)]
            ys = [y for x, y in pts if math.isfinite(y)]
            ax.plot(xs, ys, "o-", color=f"C{i}", label=est)
            never = [float(x) for x, y in pts if not math.isfinite(y)]
            if never:
                ax.plot(never, [max(ys or [1.0]) * 3] * len(never), "x", color=f"C{i}", label=f"{est}: never")
        if all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in rows):
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"seconds of estimates to cosine {target:g}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"signal_cost_vs_{key.split('.')[-1]}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_all(result: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    raw = result.pop("samples", None)
    written = []
    if raw:  # every sample, so that the statistics can be recomputed (numpy format, no pickle)
        import numpy as np

        np.savez_compressed(out / "samples.npz", **{k: np.asarray(v, np.float32) for k, v in raw.items()})
        written.append(out / "samples.npz")
    write_json(result, out / "diagnose.json")
    (out / "diagnose.md").write_text(markdown(result))
    return [out / "diagnose.json", out / "diagnose.md"] + plots(result, out) + written
