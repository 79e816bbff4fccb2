"""The meta-training loop: outer steps, metrics, validation, checkpoints, resume.

One outer step is one jitted call: the estimator advances every task by one
truncation and returns a meta-gradient, the meta-optimizer applies it (a
non-finite meta-gradient is skipped and counted). The whole state -- meta-
parameters, meta-optimizer state, every inner state and PES accumulator -- is
one pytree, and every random key is derived from the seed and the outer-step
number, so a run that is killed (even with SIGKILL) and resumed from its last
checkpoint computes exactly what the uninterrupted run computes.

Ctrl-C (SIGINT) only sets a flag; the loop then finishes the step in flight,
writes a checkpoint and raises :class:`TrainingInterrupted`, so the state on
disk is always consistent and ``lopt train`` with the same arguments resumes.
``lopt train`` installs that flag before it reads the config or compiles
anything (a KeyboardInterrupt landing inside JAX's compiler can crash the
interpreter), and a Ctrl-C before the first outer step saves nothing new.

Resuming is refused when the config differs from the one the directory's
run was started with (one line listing ``key: old -> new``) unless the caller
allows it (``--allow-config-change``), which is then recorded in the
checkpoints and the final optimizer's metadata. A damaged newest checkpoint is
skipped with a warning (:func:`lopt.metatrain.checkpoint.restore_latest`).
Meta-steps skipped for a non-finite meta-gradient are counted in every
metrics record, the progress bar and the checkpoints; a run that skipped
most of them says so at the end. Every metrics line is strict JSON
(non-finite numbers are written as the strings ``"inf"``/``"nan"``).

The state is laid out by a :class:`~lopt.metatrain.sharding.TaskMesh`: tasks split
over every device (of every process, after :func:`lopt.metatrain.distributed.initialize`),
the rest replicated. With several processes, process 0 alone writes files;
all of them gather the state for a checkpoint and read it on resume; a Ctrl-C
is acted on at the next ``log_every`` boundary, where they agree on it, and a
SIGTERM (preemption) at the step JAX's preemption service picks.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from lopt.base import tree_all_finite
from lopt.io import json_safe
from lopt.metatrain import build, checkpoint, distributed
from lopt.metatrain.config import ConfigError, TrainConfig, to_dict
from lopt.metatrain.interrupt import InterruptFlag
from lopt.metatrain.rundir import check_config_change, remove_stale_tmp, trim_metrics, write_record
from lopt.metatrain.sharding import TaskMesh
from lopt.metatrain.validation import MetaValidator

METRICS_FILE = "metrics.jsonl"
OPTIMIZER_FILE = "optimizer.safetensors"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved at ``step`` (unless nothing new existed)."""

    def __init__(self, step: int, out_dir: Path, saved: bool = True):
        if saved:
            msg = f"interrupted at outer step {step}; checkpoint saved in {out_dir}; rerun to resume"
        else:
            msg = f"interrupted before outer step {step + 1}; nothing new to save in {out_dir}; rerun to resume"
        super().__init__(msg)
        self.step = step
        self.saved = saved


# A share of skipped meta-steps above this is reported at the end of a run.
SKIPPED_WARN_FRACTION = 0.5


class Engine:
    """Everything built from a config: pure pieces plus the jitted outer step.

    ``devices`` (default: all devices of all processes) is where the tasks are
    split; the result does not depend on it (up to float summation order).
    """

    def __init__(self, config: TrainConfig, devices: Sequence[jax.Device] | None = None):
        self.config = config
        self.arch = build.build_arch(config)
        self.unroller = build.build_unroller(config, self.arch)
        self.estimator = build.build_estimator(config, self.unroller)
        self.meta_opt = build.build_meta_optimizer(config)
        self.mesh = TaskMesh.create(devices)
        rep = self.mesh.replicated
        cache: dict[Any, Any] = {}  # groups of one task share its (replicated) data
        for g in self.unroller.groups:
            if g.task not in cache:
                cache[g.task] = self.mesh.put(jax.device_get(g.task.load_data()), rep)
        self.data = tuple(cache[g.task] for g in self.unroller.groups)
        root = jax.random.PRNGKey(config.seed)
        self.key_meta, self.key_est, self.key_steps = jax.random.split(root, 3)
        sizes = [g.num_tasks for g in self.unroller.groups]
        # A warm start (optimizer.init_from) has the fresh init's structure and
        # shapes (build.overlay_meta_params), so the layout is known without
        # reading its file: a resumed run never needs it.
        self.state_shapes = jax.eval_shape(self._init_state, self.key_meta, self.key_est)
        self.state_shardings = self.mesh.state_shardings(self.state_shapes, sizes)
        self.step_fn = jax.jit(
            self._outer_step,
            in_shardings=(self.state_shardings, rep, rep),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=0,
        )
        self._init_fn = jax.jit(self._init_state, out_shardings=self.state_shardings)

    @property
    def inner_steps_per_outer(self) -> int:
        u = self.unroller
        return u.truncation_length * u.num_tasks * u.num_branches

    def init_state(self) -> dict:
        """The state before outer step 0 (one jitted call: no op-by-op dispatch).

        With ``optimizer.init_from`` this reads and checks that file (a clear
        ConfigError if it is missing, corrupted or another architecture).
        """
        warm = build.load_init_meta_params(self.config, self.arch)
        return self._init_fn(self.key_meta, self.key_est, warm)

    def _init_state(self, key_meta: jax.Array, key_est: jax.Array, warm: Any = None) -> dict:
        meta_params = self.arch.init_meta_params(key_meta)
        if warm is not None:
            meta_params = build.overlay_meta_params(meta_params, warm)
        return {
            "meta_params": meta_params,
            "opt_state": self.meta_opt.init(meta_params),
            "est": self.estimator.init(meta_params, key_est),
        }

    def gather(self, state: dict) -> dict:
        """The whole state as numpy on every process (what a checkpoint stores)."""
        return self.mesh.gather(state)

    def place(self, host_state: dict) -> dict:
        """Numpy state (e.g. a restored checkpoint) -> arrays laid out like :meth:`init_state`'s."""
        return self.mesh.put(host_state, self.state_shardings)

    def step_key(self, step: int) -> jax.Array:
        return jax.random.fold_in(self.key_steps, step)

    def _outer_step(self, state: dict, key: jax.Array, data: tuple) -> tuple[dict, dict]:
        mp = state["meta_params"]
        grad, est, metrics = self.estimator.step(mp, state["est"], key, data)
        ok = tree_all_finite(grad)
        grad = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grad)
        updates, opt_state = self.meta_opt.update(grad, state["opt_state"], mp)
        new_mp = optax.apply_updates(mp, updates)
        keep = lambda new, old: jnp.where(ok, new, old)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grad), skipped_meta_steps=(~ok).astype(jnp.float32))
        new_state = {
            "meta_params": jax.tree.map(keep, new_mp, mp),
            "opt_state": jax.tree.map(keep, opt_state, state["opt_state"]),
            "est": est,
        }
        return new_state, metrics

    def run(self, state: dict, start: int, stop: int) -> dict:
        """Outer steps ``start..stop-1`` with no I/O (tests, benchmarks)."""
        for i in range(start, stop):
            state, _ = self.step_fn(state, self.step_key(i), self.data)
        return state


# ---------------------------------------------------------------------- I/O helpers
def _mean_metrics(pending: list[dict]) -> dict:
    host = jax.device_get(pending)
    return {k: float(sum(float(m[k]) for m in host) / len(host)) for k in host[0]}


# ---------------------------------------------------------------------- the loop
def train(
    config: TrainConfig,
    out_dir: str | Path,
    progress: bool | None = None,
    *,
    engine: Engine | None = None,
    interrupt: InterruptFlag | None = None,
    allow_config_change: bool = False,
) -> Any:
    """Meta-train per ``config``, writing everything to ``out_dir``; returns the TrainedOptimizer.

    Resumes automatically from the newest intact checkpoint in ``out_dir``;
    refuses (:class:`~lopt.metatrain.rundir.ConfigChanged`) when that run had another config unless
    ``allow_config_change``. ``engine`` may pass an :class:`Engine` already
    built (and compiled) for this config; ``interrupt`` an :class:`InterruptFlag`
    the caller entered already (else one is installed here). With several
    processes every one calls this; only process 0 writes.
    """
    from tqdm import tqdm

    main = distributed.is_main_process()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    # Before anything is built or compiled: never mix two configs in one directory by accident.
    changes = check_config_change(out, config, allow_config_change, main)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(out)
    flag_ctx = contextlib.nullcontext(interrupt) if interrupt is not None else InterruptFlag(announce=False)
    with flag_ctx as sigint:
        return _train(config, out, progress, engine, sigint, changes, main, tqdm)


def _train(config, out, progress, engine, sigint, changes, main, tqdm) -> Any:
    if engine is None:
        engine = Engine(config)
    elif engine.config != config:
        raise ValueError("train: the engine passed was built for a different config")
    if jax.process_count() == 1 and sigint.raised:  # Ctrl-C while building: nothing computed yet
        raise TrainingInterrupted(0, out, saved=False)
    start = 0
    warn = (lambda msg: print(f"lopt train: warning: {msg}", file=sys.stderr, flush=True)) if main else None
    restored = checkpoint.restore_latest(out, engine.state_shapes, on_skip=warn)
    history: list = []
    skipped_total = 0
    if restored is None:
        state = engine.init_state()
    else:
        host_state, saved_info = restored
        state = engine.place(host_state)
        start = int(saved_info["step"])
        history = list(saved_info.get("config_changes", []))
        skipped_total = int(saved_info.get("skipped_meta_steps", 0))
    if changes:
        history.append({"step": start, "changes": changes})
    _check_same_start(start, out)
    note = engine.mesh.describe([g.num_tasks for g in engine.unroller.groups])
    if main and note:
        print(f"lopt train: note: {note}", flush=True)
    metrics_path = out / METRICS_FILE
    if main:
        trim_metrics(metrics_path, start)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2, allow_nan=False) + "\n")
    validator = _make_validator(engine) if main else None
    info = {"config": to_dict(config), "arch": engine.arch.arch}
    if history:
        info["config_changes"] = history
    total = config.num_outer_steps
    show = (config.progress if progress is None else progress) and main
    bar = tqdm(total=total, initial=start, disable=not show, dynamic_ncols=True, desc="meta-train")
    pending: list[dict] = []
    t_window, steps_window = time.perf_counter(), 0
    step = start

    def counted() -> dict:  # what a checkpoint records: the info plus skipped meta-steps so far
        extra = sum(float(m["skipped_meta_steps"]) for m in jax.device_get(pending)) if pending else 0.0
        return {**info, "skipped_meta_steps": skipped_total + int(round(extra))}

    # other processes log to the null device: the same code path, nothing written
    with open(metrics_path if main else os.devnull, "a") as log:
        while step < total:
            if _stop_requested(sigint, step, config.log_every):
                bar.close()
                if step == start:  # nothing computed since the checkpoint we started from
                    raise TrainingInterrupted(step, out, saved=False)
                _save(engine, out, step, state, counted(), config.keep_checkpoints)
                raise TrainingInterrupted(step, out)
            state, metrics = engine.step_fn(state, engine.step_key(step), engine.data)
            step += 1
            pending.append(metrics)
            steps_window += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total:
                record = _mean_metrics(pending)
                skipped_total += int(round(record["skipped_meta_steps"] * len(pending)))
                elapsed = time.perf_counter() - t_window
                record["inner_steps_per_s"] = steps_window * engine.inner_steps_per_outer / max(elapsed, 1e-9)
                record["skipped_meta_steps_total"] = skipped_total
                record["step"] = step
                write_record(log, record)
                post = {"meta_loss": f"{record['meta_loss']:.4f}", "inner_sps": f"{record['inner_steps_per_s']:.0f}"}
                if skipped_total:
                    post["skipped"] = str(skipped_total)
                bar.set_postfix(post)
                pending, t_window, steps_window = [], time.perf_counter(), 0
            if validator is not None and (step % config.validation.every == 0 or step == total):
                for rec in validator(jax.device_get(state["meta_params"])):
                    write_record(log, {"step": step, "kind": "validation", **rec})
                t_window, steps_window = time.perf_counter(), 0
            if step % config.checkpoint_every == 0 or step == total:
                _save(engine, out, step, state, counted(), config.keep_checkpoints)
    bar.close()
    if main and total and skipped_total > SKIPPED_WARN_FRACTION * total:
        print(
            f"lopt train: warning: {skipped_total} of {total} meta-steps ({100 * skipped_total / total:.0f}%) were "
            "skipped for a non-finite meta-gradient: the optimizer barely trained (try a smaller "
            "meta_opt.learning_rate or estimator.std, or check the tasks)",
            file=sys.stderr,
            flush=True,
        )
    extra = {"skipped_meta_steps": skipped_total}
    if history:
        extra["config_changes"] = history
    return _export(engine, state["meta_params"], out, step, write=main, extra=extra)


def _save(engine: Engine, out: Path, step: int, state: dict, info: dict, keep: int) -> None:
    """Gather the state (a collective across processes); process 0 writes it."""
    host_state = engine.gather(state)
    if distributed.is_main_process():
        checkpoint.save(out, step, host_state, info, keep)


def _stop_requested(sigint: InterruptFlag, step: int, every: int) -> bool:
    """Stop and checkpoint now? Called at every step by every process.

    One process: on Ctrl-C. Several: when JAX's preemption service says all
    reached the step it chose after a SIGTERM anywhere, or at an ``every``-step
    boundary after a Ctrl-C anywhere (agreed on by a collective).
    """
    if jax.process_count() == 1:
        return sigint.raised
    if distributed.preemption_step_reached(step):
        return True
    return step % every == 0 and distributed.any_process(sigint.raised)


def _check_same_start(start: int, out: Path) -> None:
    """Every process must resume from the same checkpoint (or none), or their tasks would mix."""
    starts = distributed.all_values(start)
    if len(set(starts)) > 1:
        raise distributed.DistributedError(
            f"processes found different checkpoints in {out} (steps {starts} by process): "
            "the output directory must be the same, shared, directory for all of them"
        )


def _make_validator(engine: Engine) -> MetaValidator | None:
    cfg = engine.config.validation
    if cfg.every <= 0 or not cfg.tasks:
        return None
    tasks = [build.resolve_task(name) for name in cfg.tasks]
    return MetaValidator(engine.arch, tasks, cfg.num_steps, cfg.num_seeds, engine.config.seed, engine.config.mup)


def _export(
    engine: Engine, meta_params: Any, out: Path, step: int, write: bool = True, extra: dict | None = None
) -> Any:
    """Write ``out/optimizer.safetensors`` (if ``write``) in lopt's format and return the TrainedOptimizer.

    The metadata goes through :func:`lopt.io.json_safe` first: after a run
    succeeded, writing its result must not fail on how its record is spelled.
    """
    from lopt import TrainedOptimizer

    config = engine.config
    metadata = {
        "trained_on": [s.name for s in config.tasks],
        "outer_steps": step,
        "estimator": config.estimator.kind,
        "truncation_length": engine.unroller.truncation_length,
        "episode_length": engine.unroller.schedule.longest,
        "seed": config.seed,
        "init_from": config.optimizer.init_from,
        # Evaluation reads this: a muP-mode optimizer needs each task's muP factors (lopt.mup).
        "mup": config.mup,
        **(extra or {}),
    }
    trained = TrainedOptimizer(engine.arch, jax.device_get(meta_params), json_safe(metadata))
    if write:
        trained.save(out / OPTIMIZER_FILE, provenance={"config": json_safe(to_dict(config))})
    return trained
