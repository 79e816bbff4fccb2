"""How long the meta-training step takes to compile under several sets of XLA flags.

Why: on an H200 (XLA:GPU, JAX 0.11.2) the reference PES step did not finish
compiling in 290 s with 1,024 tasks, nor in 140 s with 8, while the 2-core CPU
compiles it in ~22 s (BENCHMARKS.md). A device lease is a few minutes, so the
cause has to be narrowed down in one call: this runs the same step once per
flag set, each in its own process (XLA reads ``XLA_FLAGS`` once, when the
backend starts), optionally all at once, each under a time limit, and reports
which finished, how long lowering and compiling took, and the step time once
compiled. ``--pick`` then prints the flags of the fastest-compiling set that
keeps XLA's default code generation (the table goes to stderr), so that
``export XLA_FLAGS="$(python -m lopt.eval.compile_probe --parallel --pick)"``
sets them for the throughput run that follows.

``python -m lopt.eval.compile_probe [--config reference] [--set KEY=VALUE]
[--variants a,b] [--parallel] [--timeout S] [--out FILE] [--pick]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

# Flag sets, each a guess at where XLA:GPU spends the time. GPU flags are accepted
# (and ignored) by XLA:CPU, so the probe itself can be checked on a CPU.
VARIANTS: dict[str, str] = {
    "default": "",
    "no_loop_unroll": "--xla_gpu_enable_while_loop_unrolling=WHILE_LOOP_UNROLLING_NO_UNROLL",
    "no_triton_gemm": "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false",
    "no_command_buffer": "--xla_gpu_enable_command_buffer=",
    "llvm_o1": "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true",
}
VARIANTS["all"] = " ".join(VARIANTS.values()).strip()
# These lower LLVM's optimization level: faster to compile, slower kernels. --pick uses them last.
SLOWER_CODE = frozenset({"llvm_o1", "all"})


def probe(config_name: str, overrides: list[str], tag: str, steps: int = 3) -> None:
    """In this process: lower, compile and run the training step; one JSON line per phase."""
    import jax

    from lopt.metatrain.config import load_config
    from lopt.metatrain.trainer import Engine

    def say(**kw: Any) -> None:
        print(json.dumps({"variant": tag, **kw}), flush=True)

    t0 = time.perf_counter()
    engine = Engine(load_config(config_name, overrides))
    state = engine.init_state()
    lowered = engine.step_fn.lower(state, engine.step_key(0), engine.data)
    say(phase="lowered", lower_s=round(time.perf_counter() - t0, 2), backend=jax.default_backend(),
        stablehlo_lines=lowered.as_text().count("\n"))
    t0 = time.perf_counter()
    compiled = lowered.compile()
    say(phase="compiled", compile_s=round(time.perf_counter() - t0, 2))
    state, _ = compiled(state, engine.step_key(0), engine.data)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        state, _ = compiled(state, engine.step_key(i), engine.data)
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - t0) / steps
    say(phase="ran", step_s=round(step_s, 5), inner_steps_per_s=round(engine.inner_steps_per_outer / step_s, 1))


def _parse(lines: str, tag: str) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": tag, "flags": VARIANTS[tag], "finished": False}
    for line in lines.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("variant") == tag:
            row.update({k: v for k, v in rec.items() if k not in ("variant", "phase")})
            row["finished"] = row["finished"] or rec.get("phase") == "ran"
    return row


def run_variants(config_name: str, overrides: list[str], variants: list[str], timeout: float,
                 parallel: bool) -> list[dict[str, Any]]:
    """Each variant in a child process with its ``XLA_FLAGS``; rows in the order given."""
    def start(tag: str) -> subprocess.Popen:
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + VARIANTS[tag]).strip())
        cmd = [sys.executable, "-m", "lopt.eval.compile_probe", "--child", tag, "--config", config_name]
        for o in overrides:
            cmd += ["--set", o]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(tag: str, proc: subprocess.Popen, deadline: float) -> dict[str, Any]:
        try:
            out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            timed_out = True
        row = _parse(out, tag)
        row["timed_out"] = timed_out
        if not row["finished"] and not timed_out:
            row["error"] = " ".join(out.strip().splitlines()[-3:])[-400:]
        return row

    if parallel:
        procs = {tag: start(tag) for tag in variants}
        deadline = time.monotonic() + timeout
        return [finish(tag, p, deadline) for tag, p in procs.items()]
    return [finish(tag, start(tag), time.monotonic() + timeout) for tag in variants]


def pick(rows: list[dict[str, Any]]) -> str | None:
    """The fastest-compiling finished variant, preferring those that keep XLA's default codegen."""
    done = [r for r in rows if "compile_s" in r]
    for pool in ([r for r in done if r["variant"] not in SLOWER_CODE], done):
        if pool:
            return min(pool, key=lambda r: r["compile_s"])["variant"]
    return None


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | lower s | compile s | step s | inner steps/s | outcome |", "|---|---|---|---|---|---|"]
    for r in rows:
        outcome = "ok" if r["finished"] else ("timed out" if r["timed_out"] else f"failed: {r.get('error', '')}")
        cells = [r.get(k, "-") for k in ("lower_s", "compile_s", "step_s", "inner_steps_per_s")]
        lines.append(f"| {r['variant']} | " + " | ".join(str(c) for c in cells) + f" | {outcome} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="reference", help="meta-training config (default: reference)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--parallel", action="store_true", help="run every variant at once (a many-core host)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds each variant may take (default 300)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--pick", action="store_true",
                   help="print the chosen variant's XLA flags on stdout (table on stderr)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        probe(a.config, a.overrides, a.child)
        return 0
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if not a.timeout > 0:
        p.error(f"--timeout must be > 0, got {a.timeout}")
    from lopt.metatrain.config import ConfigError, load_config

    try:  # a bad config is reported here, once, not as a traceback per child
        load_config(a.config, a.overrides)
    except ConfigError as err:
        p.error(str(err))
    rows = run_variants(a.config, a.overrides, variants, a.timeout, a.parallel)
    best = pick(rows)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"config": a.config, "overrides": a.overrides, "rows": rows, "picked": best}, f, indent=2)
    report = sys.stderr if a.pick else sys.stdout  # --pick: stdout holds the flags alone, for $(...)
    print(render(rows), file=report)
    print(f"picked: {best}", file=report, flush=True)
    if a.pick:
        print(VARIANTS[best] if best is not None else "", flush=True)
        return 0 if best is not None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
