"""Evaluation suites: which tasks, how long, against which baselines.

A suite is a YAML file in ``configs/eval/`` (or any path). It is parsed with
a safe YAML loader (:func:`lopt.metatrain.config.yaml_load`: ``yaml.safe_load`` that
also reads ``3e-4`` as a float) into frozen dataclasses and validated strictly: an unknown
key is an error that names it, because a silently ignored typo (``step:`` for
``steps:``) would make a benchmark quietly measure something else.

Schema (every top-level key but ``tasks`` is optional)::

    name: smoke
    description: one line
    seeds: 2                  # reporting seeds 1..N
    tuning_seeds: 1           # seeds 0, -1, ... that choose Adam's learning rate (disjoint from reporting)
    eval_every: 10            # steps between two points of a loss curve
    default_lr: 1.0e-3        # the "Adam(1e-3)" baseline
    lr_grid: {min: 1.0e-4, max: 1.0e-1, num: 10}   # log grid for tuned Adam
    speedup_horizon: 2.0      # speedup range: horizon-free baselines run this x the steps, AdamW-cosine plans up to it
    tie_rtol: 0.02            # relative tolerance of a tie (see lopt.eval.metrics)
    tie_atol: 1.0e-4          # absolute tolerance, in units of the task's loss_scale
    divergence_factor: 10.0   # a run whose loss exceeds this x its initial loss diverged
    mup: false                # true: every learned optimizer runs in the muP mode (lopt.mup) on muP tasks;
                              # an optimizer file whose metadata says mup: true runs in it anyway
    saturation:               # which tasks count for each metric (see lopt.eval.metrics, "Saturation rule"):
      reference: adamw_cosine #   the baseline that decides (adam_tuned when the reference was not run)
      bands: 10               #   a task counts if the reference ends >= this many tie bands above the floor
    baselines:                # extra optax optimizers, fixed hyperparameters (beside the built-in ones
                              # that ``lopt eval --baselines`` picks: see lopt.eval.baselines)
      - {name: sgd_momentum, optax: sgd, kwargs: {learning_rate: 0.1, momentum: 0.9}}
    include_tasks: [quick]    # optional: the tasks of other suites (names or paths) come first, as they are
                              # written there (label, steps, eval_every, overrides); every other setting is this file's
    tasks:
      - {task: mlp_digits, steps: 300}
      - {task: quadratic_10, steps: 200, label: quad_long, overrides: {condition: 100.0}}

``overrides`` replace fields of the registered task's frozen dataclass (a
width, a depth, a batch size), which is how a suite reaches architectures and
widths no registered name spells out.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from lopt import configs
from lopt.metatrain.config import yaml_load
from lopt.eval.errors import EvalError



@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a suite: a registered name, a step budget, optional field overrides."""

    task: str
    steps: int
    label: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()
    eval_every: int | None = None

    @property
    def display(self) -> str:
        return self.label or self.task


@dataclasses.dataclass(frozen=True)
class BaselineSpec:
    """An extra optax optimizer: ``getattr(optax, optax_name)(**kwargs)``."""

    name: str
    optax_name: str
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[TaskSpec, ...]
    description: str = ""
    seeds: int = 2
    tuning_seeds: int = 1
    eval_every: int = 10
    default_lr: float = 1e-3
    lr_grid: tuple[float, ...] = ()
    speedup_horizon: float = 2.0
    tie_rtol: float = 0.02
    tie_atol: float = 1e-4
    divergence_factor: float = 10.0
    baselines: tuple[BaselineSpec, ...] = ()
    mup: bool = False
    saturation_reference: str = "adamw_cosine"
    saturation_bands: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, stored in every report so results say what produced them."""
        return {
            "name": self.name,
            "description": self.description,
            "seeds": self.seeds,
            "tuning_seeds": self.tuning_seeds,
            "eval_every": self.eval_every,
            "default_lr": self.default_lr,
            "lr_grid": list(self.lr_grid),
            "speedup_horizon": self.speedup_horizon,
            "tie_rtol": self.tie_rtol,
            "tie_atol": self.tie_atol,
            "divergence_factor": self.divergence_factor,
            "mup": self.mup,
            "saturation": {"reference": self.saturation_reference, "bands": self.saturation_bands},
            "baselines": [{"name": b.name, "optax": b.optax_name, "kwargs": dict(b.kwargs)} for b in self.baselines],
            "tasks": [
                {"task": t.task, "steps": t.steps, "label": t.display, "overrides": dict(t.overrides)}
                for t in self.tasks
            ],
        }


_TOP_KEYS = {
    "name", "description", "seeds", "tuning_seeds", "eval_every", "default_lr", "lr_grid", "speedup_horizon",
    "tie_rtol", "tie_atol", "divergence_factor", "baselines", "tasks", "mup", "saturation", "include_tasks",
}
_SATURATION_KEYS = {"reference", "bands"}
_TASK_KEYS = {"task", "steps", "label", "overrides", "eval_every"}
_BASELINE_KEYS = {"name", "optax", "kwargs"}
_GRID_KEYS = {"min", "max", "num"}
_DEFAULT_GRID = {"min": 1e-4, "max": 1e-1, "num": 10}
MIN_GRID_POINTS = 8


def suite_names() -> list[str]:
    """Names of the suites shipped in ``configs/eval/``."""
    return configs.names("eval")


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by shipped name (``smoke``) or by path to a YAML file."""
    return _load_suite(name_or_path, ())


def _load_suite(name_or_path: str | Path, including: tuple[str, ...]) -> Suite:
    """``load_suite``; ``including``: the files whose ``include_tasks`` led here (to refuse a cycle)."""
    try:
        path = configs.resolve("eval", name_or_path)
    except FileNotFoundError as err:
        raise EvalError(str(err).replace("eval config", "suite")) from None
    try:
        raw = yaml_load(path.read_text())
    except yaml.YAMLError as err:
        raise EvalError(f"suite {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    key = str(path.resolve())
    if key in including:
        raise EvalError(f"suite {path}: include_tasks forms a cycle ({' -> '.join(including + (key,))})")
    return _parse(raw, path.stem, str(path), including + (key,))


def parse_suite(raw: Any, default_name: str = "suite", where: str = "suite") -> Suite:
    """Validate a parsed YAML mapping into a :class:`Suite` (errors name the bad key)."""
    return _parse(raw, default_name, where, ())


def _included_tasks(raw: Any, where: str, including: tuple[str, ...]) -> tuple[TaskSpec, ...]:
    """The tasks of the suites named by ``include_tasks`` (one name/path or a list), in order."""
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise EvalError(f"{where}: key 'include_tasks' must be a suite name or path, or a list of them")
    tasks: list[TaskSpec] = []
    for name in names:
        try:
            tasks.extend(_load_suite(name, including).tasks)
        except EvalError as err:
            raise EvalError(f"{where}: include_tasks {name!r}: {err}") from None
    return tuple(tasks)


def _parse(raw: Any, default_name: str, where: str, including: tuple[str, ...]) -> Suite:
    if not isinstance(raw, Mapping):
        raise EvalError(f"{where}: expected a mapping at top level, got {type(raw).__name__}")
    _check_keys(raw, _TOP_KEYS, where)
    included = _included_tasks(raw["include_tasks"], where, including) if "include_tasks" in raw else ()
    own = raw.get("tasks") or []
    if not included and not own:
        raise EvalError(f"{where}: key 'tasks' is missing or empty")
    if not isinstance(own, list):
        raise EvalError(f"{where}: key 'tasks' must be a list")
    tasks = included + tuple(_parse_task(t, f"{where}: tasks[{i}]") for i, t in enumerate(own))
    labels = [t.display for t in tasks]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise EvalError(f"{where}: duplicate task labels {dupes}; give each a distinct 'label'")
    baselines_raw = raw.get("baselines") or []
    if not isinstance(baselines_raw, list):
        raise EvalError(f"{where}: key 'baselines' must be a list")
    baselines = tuple(_parse_baseline(b, f"{where}: baselines[{i}]") for i, b in enumerate(baselines_raw))
    default_lr = _positive(raw.get("default_lr", 1e-3), "default_lr", where)
    suite = Suite(
        name=str(raw.get("name", default_name)),
        description=str(raw.get("description", "")),
        tasks=tasks,
        seeds=_positive_int(raw.get("seeds", 2), "seeds", where),
        tuning_seeds=_positive_int(raw.get("tuning_seeds", 1), "tuning_seeds", where),
        eval_every=_positive_int(raw.get("eval_every", 10), "eval_every", where),
        default_lr=default_lr,
        lr_grid=_parse_grid(raw.get("lr_grid", _DEFAULT_GRID), default_lr, where),
        speedup_horizon=_positive(raw.get("speedup_horizon", 2.0), "speedup_horizon", where),
        tie_rtol=_nonneg(raw.get("tie_rtol", 0.02), "tie_rtol", where),
        tie_atol=_nonneg(raw.get("tie_atol", 1e-4), "tie_atol", where),
        divergence_factor=_positive(raw.get("divergence_factor", 10.0), "divergence_factor", where),
        mup=_bool(raw.get("mup", False), "mup", where),
        baselines=baselines,
        **_parse_saturation(raw.get("saturation") or {}, where),
    )
    if suite.speedup_horizon < 1.0:
        raise EvalError(f"{where}: key 'speedup_horizon' must be >= 1, got {suite.speedup_horizon}")
    return suite


def _parse_task(raw: Any, where: str) -> TaskSpec:
    if isinstance(raw, str):
        raise EvalError(f"{where}: expected a mapping like {{task: {raw}, steps: 100}}, got a bare name")
    if not isinstance(raw, Mapping):
        raise EvalError(f"{where}: expected a mapping, got {type(raw).__name__}")
    _check_keys(raw, _TASK_KEYS, where)
    for key in ("task", "steps"):
        if key not in raw:
            raise EvalError(f"{where}: key {key!r} is missing")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise EvalError(f"{where}: key 'overrides' must be a mapping of task fields")
    every = raw.get("eval_every")
    return TaskSpec(
        task=str(raw["task"]),
        steps=_positive_int(raw["steps"], "steps", where),
        label=str(raw.get("label", "")),
        overrides=tuple(sorted((str(k), _freeze(v)) for k, v in overrides.items())),
        eval_every=None if every is None else _positive_int(every, "eval_every", where),
    )


def _parse_baseline(raw: Any, where: str) -> BaselineSpec:
    if not isinstance(raw, Mapping):
        raise EvalError(f"{where}: expected a mapping with keys name, optax, kwargs")
    _check_keys(raw, _BASELINE_KEYS, where)
    if "optax" not in raw:
        raise EvalError(f"{where}: key 'optax' is missing (an optax function name, e.g. sgd)")
    import optax  # local: suite parsing should not need jax unless baselines are used

    fn_name = str(raw["optax"])
    if not callable(getattr(optax, fn_name, None)):
        raise EvalError(f"{where}: optax has no optimizer {fn_name!r}")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise EvalError(f"{where}: key 'kwargs' must be a mapping")
    from lopt.eval.baselines import BUILTIN

    reserved = {"learned", *BUILTIN}
    name = str(raw.get("name", fn_name))
    if name in reserved:
        raise EvalError(f"{where}: baseline name {name!r} is reserved")
    return BaselineSpec(name=name, optax_name=fn_name, kwargs=tuple(sorted((str(k), _freeze(v)) for k, v in kwargs.items())))


def _parse_saturation(raw: Any, where: str) -> dict[str, Any]:
    from lopt.eval.baselines import BUILTIN

    if not isinstance(raw, Mapping):
        raise EvalError(f"{where}: key 'saturation' must be a mapping with keys bands, reference")
    _check_keys(raw, _SATURATION_KEYS, f"{where}: saturation")
    ref = str(raw.get("reference", "adamw_cosine"))
    if ref not in BUILTIN:
        raise EvalError(f"{where}: key 'saturation.reference' must be a built-in baseline ({', '.join(BUILTIN)}), got {ref!r}")
    return {"saturation_reference": ref, "saturation_bands": _nonneg(raw.get("bands", 10.0), "saturation.bands", where)}


def _parse_grid(raw: Any, default_lr: float, where: str) -> tuple[float, ...]:
    """A log grid; the default learning rate is always added so tuned Adam can never lose to it."""
    if isinstance(raw, list):
        values = [_positive(v, "lr_grid", where) for v in raw]
    elif isinstance(raw, Mapping):
        _check_keys(raw, _GRID_KEYS, f"{where}: lr_grid")
        lo = _positive(raw.get("min", _DEFAULT_GRID["min"]), "lr_grid.min", where)
        hi = _positive(raw.get("max", _DEFAULT_GRID["max"]), "lr_grid.max", where)
        num = _positive_int(raw.get("num", _DEFAULT_GRID["num"]), "lr_grid.num", where)
        if hi <= lo:
            raise EvalError(f"{where}: key 'lr_grid.max' must exceed 'lr_grid.min'")
        values = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / max(num - 1, 1)) for i in range(num)]
    else:
        raise EvalError(f"{where}: key 'lr_grid' must be a list or {{min, max, num}}")
    values = [float(f"{v:.6g}") for v in values]
    if not any(math.isclose(v, default_lr, rel_tol=1e-6) for v in values):
        values.append(default_lr)
    values = sorted(set(values))
    if len(values) < MIN_GRID_POINTS:
        raise EvalError(f"{where}: key 'lr_grid' needs at least {MIN_GRID_POINTS} values, got {len(values)}")
    return tuple(values)


def _check_keys(raw: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise EvalError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _bool(v: Any, key: str, where: str) -> bool:
    if not isinstance(v, bool):
        raise EvalError(f"{where}: key {key!r} must be true or false, got {v!r}")
    return v


def _positive_int(v: Any, key: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise EvalError(f"{where}: key {key!r} must be a positive integer, got {v!r}")
    return int(v)


def _number(v: Any, key: str, where: str) -> float:
    if isinstance(v, bool):
        raise EvalError(f"{where}: key {key!r} must be a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise EvalError(f"{where}: key {key!r} must be a number, got {v!r}") from None


def _positive(v: Any, key: str, where: str) -> float:
    x = _number(v, key, where)
    if not x > 0 or not math.isfinite(x):
        raise EvalError(f"{where}: key {key!r} must be a positive number, got {v!r}")
    return x


def _nonneg(v: Any, key: str, where: str) -> float:
    x = _number(v, key, where)
    if x < 0 or not math.isfinite(x):
        raise EvalError(f"{where}: key {key!r} must be >= 0, got {v!r}")
    return x
