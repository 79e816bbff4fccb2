"""``lopt diagnose`` from a config: which estimator gives the most signal per second here.

:func:`diagnose` builds the config's unroller and meta-parameters (fresh, the
config's ``optimizer.init_from``, or a run's newest checkpoint), samples the
reference gradient of the full-episode objective
(:mod:`lopt.metatrain.diagnose_core`), then every requested estimator at the
config's settings and at each value of each ``--sweep`` (one factor at a time:
the other settings stay at the config's), and compares them
(:mod:`lopt.metatrain.diagnose_stats`). The result is one JSON-able dict;
:mod:`lopt.metatrain.diagnose_report` writes it out.

Sweeps may only change how the objective is *estimated* (truncation length,
stagger, perturbation std, sign-ES, non-finite handling): a key that changes
the objective itself (episode lengths, meta-loss, tasks) would need a
different reference, so it is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from lopt.metatrain import build
from lopt.metatrain import diagnose_core as core
from lopt.metatrain import diagnose_reference
from lopt.metatrain import diagnose_report as report
from lopt.metatrain import diagnose_stats as stats
from lopt.metatrain.config import ConfigError, TrainConfig, to_dict
from lopt.metatrain.diagnose_compile import BACKPROP_STEP_COMPILE_RATIO, CompileTime
from lopt.metatrain.diagnose_options import _APPLIES, SWEEP_KEYS, DiagnoseOptions, parse_sweep  # noqa: F401
from lopt.metatrain.diagnose_warm import Warmer

# ---------------------------------------------------------------------- inputs
def load_meta_params(config: TrainConfig, arch: Any, from_dir: str | None) -> tuple[Any, str]:
    """Meta-parameters to diagnose at, and where they came from.

    ``from_dir``: a run directory; its newest checkpoint (a run in progress),
    else its exported ``optimizer.safetensors``. Otherwise the config's own
    start: ``optimizer.init_from`` or the fresh init of its seed (as the trainer does).
    """
    fresh = arch.init_meta_params(jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])
    if from_dir is None:
        warm = build.load_init_meta_params(config, arch)
        if warm is None:
            return fresh, f"fresh init (seed {config.seed})"
        return build.overlay_meta_params(fresh, warm), f"optimizer.init_from {config.optimizer.init_from}"
    from lopt.metatrain import checkpoint

    if not Path(from_dir).is_dir():
        raise ConfigError(f"--from {from_dir}: no such run directory")
    damaged = []
    for step, path in reversed(checkpoint.list_checkpoints(from_dir)):
        try:  # only the meta-parameters of the trainer's state (its public partial restore)
            state, _ = checkpoint.restore(path, {"meta_params": fresh}, partial=True)
        except checkpoint.CorruptCheckpoint as err:
            damaged.append(str(err))
            continue
        except checkpoint.CheckpointError as err:
            raise ConfigError(f"--from {from_dir}: {err} (the config builds another architecture)") from None
        note = f"; skipped damaged: {'; '.join(damaged)}" if damaged else ""
        return state["meta_params"], f"checkpoint {path} (outer step {step}){note}"
    exported = Path(from_dir) / "optimizer.safetensors"
    if exported.is_file():
        from lopt import load

        trained = load(exported)
        if trained.arch != arch:
            raise ConfigError(f"--from {from_dir}: {exported} holds {trained.arch!r}, the config builds {arch!r}")
        return jax.tree.map(np.asarray, trained.meta_params), str(exported)
    if damaged:
        raise ConfigError(f"--from {from_dir}: every checkpoint is damaged ({'; '.join(damaged)})")
    raise ConfigError(f"--from {from_dir}: no checkpoint (ckpt_*.safetensors) or optimizer.safetensors there")


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }


# ---------------------------------------------------------------------- the run
class _Progress:
    """A tqdm bar over every planned estimator call (burn-in, samples, reference)."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, desc="diagnose", unit="call", dynamic_ncols=True)

    def phase(self, text: str) -> None:
        self.bar.set_description(text)

    def tick(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _calls(est: Any, opt: DiagnoseOptions) -> int:
    """Progress ticks of one estimator: one per call (burn-in and samples)."""
    if isinstance(est, core.ESTIMATORS["full_es"]):
        return opt.full_es_samples
    return core.burn_in_steps(est) + opt.samples


def _plan(base, settings, opt: DiagnoseOptions) -> list[dict]:
    """Every (estimator, setting) to measure: the config's, then each sweep's values."""
    jobs = [{"estimator": k, "sweep": None, "value": None, "unroller": base, "settings": settings} for k in opt.estimators]
    for key, values in opt.sweeps:
        where, field, _ = SWEEP_KEYS[key]
        for v in values:
            for k in opt.sweep_estimators or opt.estimators:
                if k not in _APPLIES[field]:
                    continue
                u = dataclasses.replace(base, **{field: v}) if where == "unroller" else base
                s = dataclasses.replace(settings, **{field: v}) if where == "settings" else settings
                jobs.append({"estimator": k, "sweep": key, "value": v, "unroller": u, "settings": s})
    return jobs


def diagnose(
    config: TrainConfig,
    options: DiagnoseOptions = DiagnoseOptions(),
    from_dir: str | None = None,
    progress: bool = True,
    config_name: str = "",
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Measure every requested estimator against the full-episode reference; returns the report dict.

    With ``out_dir``, the estimators' samples are written there
    (``estimator_samples.npz``) if the subspace reference, drawn after them,
    fails or is interrupted: on a long config they are most of the run.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    arch = build.build_arch(config)
    base = build.build_unroller(dataclasses.replace(config, estimator=dataclasses.replace(config.estimator, kind="pes")), arch)
    e = config.estimator
    settings = core.EstimatorSettings(std=e.std, nonfinite=e.nonfinite, sign=e.sign, episode_length=base.schedule.longest)
    meta_params, source = load_meta_params(config, arch, from_dir)
    meta_params = jax.tree.map(lambda x: jax.numpy.asarray(x, jax.numpy.float32), meta_params)
    cache: dict[Any, Any] = {}
    for g in base.groups:
        if g.task not in cache:
            cache[g.task] = jax.device_put(g.task.load_data())
    data = tuple(cache[g.task] for g in base.groups)
    key = jax.random.PRNGKey(options.seed)
    objective = core.EpisodeObjective(base, chunk=options.chunk)

    jobs = _plan(base, settings, options)
    for i, j in enumerate(jobs):
        j["est"] = core.make_estimator(j["estimator"], j["unroller"], j["settings"])
        j["id"], j["chains"] = i, 1 if j["estimator"] == "full_es" else options.chains
    ref_calls = options.reference_samples if options.reference != "es" else -(-options.reference_es_samples // 4)
    total = ref_calls + sum(_calls(j["est"], options) for j in jobs)
    bar = _Progress(total, progress)
    warmer = Warmer(options.background_compile and Warmer.useful())
    warm = lambda js: [warmer.submit(j["id"], j["est"], meta_params, data, key, j["chains"]) for j in js]
    try:
        probe, skipped = CompileTime(0.0, 0.0), []
        cap = options.compile_budget_s
        bp_jobs = any(j["estimator"] == "backprop" for j in jobs)
        if (cap > 0 and bp_jobs) or (options.reference == "auto" and options.reference_compile_budget_s > 0):
            bar.phase("predicting backprop's compile time")
            probe = core.forward_compile_seconds(objective, meta_params, data, jax.random.fold_in(key, 1), options.chains)
            step = BACKPROP_STEP_COMPILE_RATIO * probe.cpu
            if cap > 0 and step > cap:  # a truncated-backprop step would compile for longer than the run should take
                why = (f"its step would take ~{step:.0f} CPU s to compile ({BACKPROP_STEP_COMPILE_RATIO:g}x the "
                       f"{probe.cpu:.1f} CPU s of one forward truncation), over --compile-budget-s {cap:g}")
                skipped = [{"estimator": j["estimator"], "sweep": j["sweep"], "value": j["value"], "reason": why}
                           for j in jobs if j["estimator"] == "backprop"]
                bar.bar.total -= sum(_calls(j["est"], options) for j in jobs if j["estimator"] == "backprop")
                jobs = [j for j in jobs if j["estimator"] != "backprop"]
        # after the probe: its CPU seconds (all threads) must not include another compile
        warm(jobs)
        reference, pending = diagnose_reference.draw(objective, meta_params, data, key, settings, options, bar,
                                                     probe, num_jobs=len(jobs))
        bar.phase("compiling the estimators")
        warmer.drain()  # from here on nothing compiles while an estimator is timed
        sampled = []
        for i, j in enumerate(jobs):
            what = j["estimator"] if j["sweep"] is None else f"{j['estimator']} {j['sweep']}={j['value']}"
            bar.phase(f"{what} ({i + 1}/{len(jobs)})")
            n = options.full_es_samples if j["estimator"] == "full_es" else options.samples
            warmed = warmer.wait(j["id"])
            s = core.sample_estimator(j["est"], meta_params, data, jax.random.fold_in(key, 1000 + i), n,
                                      chains=j["chains"], tick=bar.tick, budget_s=options.sample_budget_s)
            if warmed is not None:  # compiled on the worker thread: its first call found the programs ready
                s = dataclasses.replace(s, compile_seconds=warmed.wall)
            sampled.append((j, s))
        # the meta-parameters diagnosed at (flattened), so that a result names exactly where it was measured
        raw = {"meta_params": np.asarray(core._flat(meta_params))[None],
               **{_sample_name(i, j): s.grads for i, (j, s) in enumerate(sampled)}}
        if pending is not None:  # the subspace reference: along the estimators' means (now known), and more
            try:
                reference = pending(bar, [diagnose_reference.finite_mean(s.grads) for _, s in sampled])
            except KeyboardInterrupt:
                saved = _save_estimator_samples(raw, out_dir)
                if saved is not None:
                    print(f"lopt diagnose: the estimators' samples are saved in {saved}", file=sys.stderr)
                raise
            except ConfigError as err:
                saved = _save_estimator_samples(raw, out_dir)
                if saved is None:
                    raise
                raise ConfigError(f"{err} (the estimators' samples are saved in {saved})") from None
        ref_grads, basis = reference.pop("grads"), reference.pop("basis")
        raw["reference"] = ref_grads
        if basis is not None:  # the subspace reference's coordinates are along these rows
            raw["basis_exact"], raw["basis_random"] = basis.exact, basis.random
        rows = [_row(j, s, ref_grads, options, basis) for j, s in sampled]
    finally:
        warmer.close()
        bar.close()
    u = objective.unroller
    result = {
        "config_name": config_name,
        "config": to_dict(config),
        "meta_params_source": source,
        "num_meta_params": int(sum(np.size(x) for x in jax.tree.leaves(meta_params))),
        "machine": machine_info(),
        "options": to_dict(options),
        "objective": {
            "episode": dataclasses.asdict(u.schedule),
            "expected_episode_length": core.expected_episode_length(u.schedule),
            "meta_loss": base.meta_loss,
            "loss_transform": base.loss_transform,
            "num_tasks": base.num_tasks,
        },
        "reference": reference,
        "results": [r for r in rows if r["sweep"] is None],
        "skipped": skipped,  # estimators not measured, and why
        "sweeps": [r for r in rows if r["sweep"] is not None],
        "samples": raw,  # flattened gradients (written to samples.npz, not to the JSON)
    }
    result["background_compile"] = warmer.pool is not None  # estimators compiled on a second thread
    result["ranking"] = ranking(result["results"])
    result["best_truncation_length"] = best_setting(result["results"], result["sweeps"], "truncation_length")
    result["best_std"] = best_setting(result["results"], result["sweeps"], "std")
    result["wall_seconds"] = time.perf_counter() - t_start
    result["cpu_seconds"] = time.process_time() - cpu_start  # all threads; next to the load, says how shared the CPU was
    result["compile_seconds"] = (reference["compile_seconds"] + reference["probe_compile_seconds"]
                                 + sum(r["compile_seconds"] for r in rows))
    return result


def _sample_name(i: int, job: dict) -> str:
    return f"{i:02d}_{job['estimator']}" + (f"_{job['sweep']}={job['value']}" if job["sweep"] else "")


def _save_estimator_samples(raw: dict, out_dir) -> Path | None:
    """``raw`` (samples.npz's arrays so far) in ``out_dir/estimator_samples.npz``; None without a folder."""
    if out_dir is None:
        return None
    path = Path(out_dir) / "estimator_samples.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **raw)
    return path


def _row(job: dict, s: core.Samples, ref_grads: np.ndarray, opt: DiagnoseOptions, basis=None) -> dict:
    """One estimator's statistics; with a subspace reference, in the coordinates of its ``basis``."""
    if basis is None:
        res = stats.compare(s.grads, ref_grads, opt.target_cosine, seed=opt.seed)
    else:  # the autocorrelation time is the estimator's own: from its full samples
        res = stats.compare(basis.coords(s.grads), ref_grads, opt.target_cosine, seed=opt.seed,
                            random_coords=basis.dims[1], tau=stats.chains_tau(s.grads))
    u = job["est"].unroller
    secs = s.seconds_per_estimate
    row = {
        "estimator": job["estimator"],
        "sweep": job["sweep"],
        "value": job["value"],
        "truncation_length": u.truncation_length,
        "std": None if job["estimator"] == "backprop" else job["settings"].std,
        "stagger": u.stagger,
        "seconds_per_estimate": secs,
        "inner_steps_per_estimate": s.inner_steps_per_estimate,
        "compile_seconds": s.compile_seconds,
        "seconds_to_target": res.get("samples_to_target", math.inf) * secs,
        **s.extra,
        **res,
    }
    notes = []
    if job["estimator"] == "full_es" and u.schedule != job["unroller"].schedule:
        notes.append(f"full_es runs constant episodes of {u.schedule.length} steps (the config's longest), "
                     "not the config's episode distribution")
    drawn, asked = s.grads.shape[1], s.extra.get("requested", s.grads.shape[1])
    if drawn < asked:
        notes.append(f"{job['estimator']}: {drawn} of {asked} samples drawn (capped by --sample-budget-s "
                     f"{opt.sample_budget_s:g}: whole episodes are expensive here), so its interval is wider")
    if notes:
        row["note"] = "; ".join(notes)
    return row


def ranking(rows: list[dict]) -> list[dict]:
    """Estimators by seconds to reach the target cosine (never-reaching last, by cosine)."""
    key = lambda r: (report.seconds_to_target(r), -r.get("cosine", -1.0))
    return [
        {"estimator": r["estimator"], "seconds_to_target": report.seconds_to_target(r), "cosine": r.get("cosine"),
         "mean_resolved": r.get("mean_resolved", True)}
        for r in sorted(rows, key=key)
    ]


def best_setting(results: list[dict], sweeps: list[dict], field: str) -> dict | None:
    """Per swept estimator, the value of ``field`` (the config's own included) with the fewest seconds to the target."""
    out = {}
    for r in report.sweep_points(results, sweeps, field):
        cur, secs = out.get(r["estimator"]), report.seconds_to_target(r)
        if cur is None or secs < cur["seconds_to_target"]:
            out[r["estimator"]] = {"value": r["value"], "seconds_to_target": secs}
    return out or None
