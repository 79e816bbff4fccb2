"""``lopt bench``: what a learned optimizer costs, in time and memory, next to Adam.

Three parts, each selectable:

* ``step_time``  -- every architecture exported through optax vs ``optax.adam``
  on the reference models (:mod:`lopt.eval.bench_step`);
* ``throughput`` -- meta-training outer steps/s and inner steps/s on the
  reference configuration, and the engine's efficiency (inner steps/s of
  meta-training relative to plain Adam training of the same tasks), from
  :func:`lopt.metatrain.throughput.measure_throughput`;
* ``memory``     -- optimizer state bytes per parameter vs Adam;
* ``large``      -- a 10.5M-parameter model, where the optimizer's per-parameter
  cost shows: full step time, optimizer-alone ns/param and state bytes of
  every architecture and ``pretrained:default`` against ``optax.adam`` and
  ``optax.adamw`` (:mod:`lopt.eval.bench_large`).

Results carry the machine they ran on, because a timing without its machine
means nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax

from lopt import configs
from lopt.eval import bench_large, bench_step
from lopt.eval.errors import EvalError
from lopt.eval.report import to_jsonable

PARTS = ("step_time", "throughput", "memory", "large")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """How much to measure. ``quick`` is for smoke checks: numbers are indicative only."""

    parts: tuple[str, ...] = PARTS
    models: tuple[str, ...] = bench_step.REFERENCE_MODELS
    architectures: tuple[str, ...] | None = None  # None = all registered
    num_steps: int = 1000
    repeats: int = 3
    outer_steps: int = 20
    config: str | None = None  # meta-training config for throughput (default: the reference one)
    large_steps: int = 10  # steps per timed scan on the large model
    large_widths: tuple[int, ...] = bench_large.WIDTHS  # layer widths of the large model (10.5M parameters)

    @classmethod
    def quick(cls, **kw: Any) -> "BenchSettings":
        base = dict(models=("mlp_digits",), num_steps=50, repeats=2, outer_steps=3, large_steps=2,
                    large_widths=(64, 128, 128, 64))
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def parse_parts(text: str | None) -> tuple[str, ...]:
    if not text:
        return PARTS
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise EvalError(f"unknown bench part {unknown[0]!r}; valid parts: {', '.join(PARTS)}")
    return parts


def check_names(models: tuple[str, ...], architectures: tuple[str, ...] | None) -> None:
    """Fail fast, with the valid names, before any compile."""
    from lopt import architectures as archs
    from lopt.tasks.registry import task_names

    for m in models:
        if m not in task_names():
            raise EvalError(f"unknown model {m!r}; valid tasks: {', '.join(task_names())}")
    import lopt
    from lopt.eval.bench_step import PRETRAINED_PREFIX

    shipped = [f"{PRETRAINED_PREFIX}{n}" for n in lopt.pretrained()]
    from lopt.kernels import KERNELS

    for a in architectures or ():
        name, at, kernel = a.partition("@")
        if name not in archs.names() and name not in shipped:
            valid = ", ".join([*archs.names(), *shipped])
            raise EvalError(f"unknown architecture {name!r}; valid: {valid}")
        if at and kernel not in KERNELS:
            raise EvalError(f"unknown implementation {kernel!r} in {a!r}; valid suffixes: "
                            f"{', '.join('@' + k for k in KERNELS)}")
        if kernel == "pallas" and jax.default_backend() != "gpu":
            raise EvalError(f"{a!r}: off a GPU the Pallas kernel runs under Pallas's interpreter, far too slow to "
                            f"time (JAX's backend here is {jax.default_backend()!r}); bench it on a GPU")


def machine_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "device": f"{dev.platform} ({getattr(dev, 'device_kind', '?')})",
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def bench_throughput(config_path: str | None, outer_steps: int, repeats: int = 2) -> dict[str, Any]:
    """Meta-training throughput on the reference configuration (or ``config_path``)."""
    from lopt.metatrain.config import load_config
    from lopt.metatrain.throughput import measure_throughput

    path = Path(config_path) if config_path else configs.resolve("train", "reference")
    if not path.exists():
        raise EvalError(f"meta-training config not found: {path}")
    config = load_config(path)
    result = dict(measure_throughput(config, outer_steps, repeats=repeats))
    result["config"] = str(path)
    return result


def run_bench(settings: BenchSettings, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Measure the selected parts; returns the ``bench.json`` dict."""
    check_names(settings.models, settings.architectures)
    archs = list(settings.architectures) if settings.architectures else None
    out: dict[str, Any] = {"machine": machine_info(), "quick": quick, "settings": dataclasses.asdict(settings)}
    t0 = time.perf_counter()
    say = (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    if "memory" in settings.parts:
        say("optimizer state memory")
        out["memory"] = bench_step.bench_memory(list(settings.models), archs)
    if "step_time" in settings.parts:
        say(f"step time on {', '.join(settings.models)} ({settings.num_steps} steps x {settings.repeats} repeats)")
        out["step_time"] = bench_step.bench_step_time(list(settings.models), settings.num_steps, settings.repeats, archs)
    if "throughput" in settings.parts:
        say(f"meta-training throughput ({settings.outer_steps} outer steps)")
        out["throughput"] = bench_throughput(settings.config, settings.outer_steps, 1 if quick else 2)
    if "large" in settings.parts:
        n = bench_large.num_params(settings.large_widths)
        say(f"large model ({n:,} parameters, {settings.large_steps} steps x {settings.repeats} repeats)")
        learned = bench_step.learned_txs(1000, archs)
        out["large"] = bench_large.bench_large(learned, settings.large_steps, settings.repeats, settings.large_widths)
    out["wall_time_s"] = time.perf_counter() - t0
    return out


def render_table(result: dict[str, Any]) -> str:
    """Markdown tables of every measured part (also written as ``bench.md``)."""
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['device']}, jax {m['jax']}, {m['date']}"
             + (" (quick mode: indicative only)" if result.get("quick") else ""), ""]
    if "step_time" in result:
        st = result["step_time"]
        lines += [f"### Step time ({st['num_steps']} steps in one scanned jit, best of {st['repeats']})", "",
                  "| model | params | adam ms/step | optimizer | ms/step | x adam |", "|---|---|---|---|---|---|"]
        for model, r in st["models"].items():
            for name, v in r["learned"].items():
                lines.append(f"| {model} | {r['num_params']} | {r['adam_ms_per_step']:.4f} | {name} | "
                             f"{v['ms_per_step']:.4f} | {v['ratio_to_adam']:.2f} |")
        lines.append("")
    if "throughput" in result:
        tp = result["throughput"]
        lines += ["### Meta-training throughput", "", "| metric | value |", "|---|---|"]
        for k, v in tp.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lines.append(f"| {k} | {v:.4g} |")
            elif isinstance(v, str):
                lines.append(f"| {k} | {v} |")
        lines.append("")
    if "memory" in result:
        lines += ["### Optimizer state memory", "", "| model | params | adam bytes/param | optimizer | bytes/param | x adam |",
                  "|---|---|---|---|---|---|"]
        for model, r in result["memory"].items():
            for name, v in r["learned"].items():
                lines.append(f"| {model} | {r['num_params']} | {r['adam_bytes_per_param']:.2f} | {name} | "
                             f"{v['bytes_per_param']:.2f} | {v['ratio_to_adam']:.2f} |")
        lines.append("")
    if "large" in result:
        lines += bench_large.render(result["large"])
    return "\n".join(lines)


def write_bench(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md"}
    paths["json"].write_text(json.dumps(to_jsonable(result), indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(render_table(result) + "\n")
    return paths
