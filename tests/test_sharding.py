"""Learned optimizers on parameters sharded over a mesh (issue 18, section 1).

For every registered architecture, with parameters placed by ``NamedSharding``
over an 8-device mesh (forced CPU devices) and everything under ``jit``:

* ``tx.init`` returns every accumulator shaped like a parameter with that
  parameter's sharding (so state memory follows the shard, not the model);
* the compiled update contains no all-gather (reductions such as Adafactor's
  row/column moments or per-tensor RMS are all-reduces of small vectors; a
  gather would mean a full parameter was assembled on every device);
* two steps give the unsharded run's updates to float tolerance.

JAX fixes its device count when it starts, so the checks run in a subprocess:
this file doubles as the worker (``python tests/test_sharding.py OUT``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUM_DEVICES = 8
TIMEOUT_S = 600
# name -> (shape, partition spec); shapes are all different so a state leaf's
# shape says which parameter it belongs to.
PARAMS = {
    "w": ((64, 48), ("x", None)),
    "w2": ((24, 32), (None, "x")),
    "conv": ((3, 16, 8), (None, "x", None)),
    "b": ((40,), ("x",)),
    "s": ((), ()),
}
STEPS = 2


def _worker(out_path: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import lopt
    from _archs import SPECS, build

    assert len(jax.devices()) == NUM_DEVICES, jax.devices()
    mesh = jax.make_mesh((NUM_DEVICES,), ("x",))  # explicit axes (JAX's default)
    shardings = {n: NamedSharding(mesh, P(*spec)) for n, (_, spec) in PARAMS.items()}
    keys = dict(zip(PARAMS, jax.random.split(jax.random.PRNGKey(0), len(PARAMS))))
    params = {n: jax.random.normal(keys[n], shape) for n, (shape, _) in PARAMS.items()}

    def grads_at(t):
        ks = dict(zip(PARAMS, jax.random.split(jax.random.PRNGKey(10 + t), len(PARAMS))))
        return {n: jax.random.normal(ks[n], shape) for n, (shape, _) in PARAMS.items()}

    def run(tx, place):
        p = {n: place(n, x) for n, x in params.items()}
        state = jax.jit(tx.init)(p)
        update = jax.jit(tx.update)
        out = []
        for t in range(STEPS):
            g = {n: place(n, x) for n, x in grads_at(t).items()}
            u, state = update(g, state, p, value=jnp.asarray(1.0 - 0.1 * t))
            p = jax.tree.map(lambda a, b: a + b, p, u)
            out.append({n: np.asarray(x) for n, x in u.items()})
        return out, p, state, update

    by_shape = {shape: n for n, (shape, _) in PARAMS.items()}
    report = {}
    for name in SPECS:
        arch = build(name)
        tx = lopt.as_optax(arch, arch.init_meta_params(jax.random.PRNGKey(1)), num_steps=10)
        one = jax.devices()[0]
        ref, _, _, _ = run(tx, lambda n, x: jax.device_put(x, one))
        t0 = time.perf_counter()
        try:
            with jax.set_mesh(mesh):
                report[name] = _check_sharded(tx, run, ref, shardings, grads_at, by_shape)
        except Exception as e:  # reported per architecture, so one failure does not hide the others
            report[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        print(f"{name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    Path(out_path).write_text(json.dumps(report, indent=1))


def _check_sharded(tx, run, ref, shardings, grads_at, by_shape):
    """Sharding of the state, gathers in the compiled update, agreement with ``ref`` (inside the mesh)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    got, p_sh, _, update = run(tx, lambda n, x: jax.device_put(x, shardings[n]))
    state0 = jax.jit(tx.init)(p_sh)
    covered, wrong = {}, []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state0.inner)[0]:
        n = by_shape.get(tuple(leaf.shape))
        if n is None or not leaf.shape:
            continue
        covered[n] = covered.get(n, 0) + 1
        if not leaf.sharding.is_equivalent_to(shardings[n], leaf.ndim):
            wrong.append(f"{jax.tree_util.keystr(path)}: {leaf.sharding.spec} (param {n}: {shardings[n].spec})")
    g0 = {n: jax.device_put(x, shardings[n]) for n, x in grads_at(0).items()}
    hlo = update.lower(g0, state0, p_sh, value=jnp.asarray(1.0)).compile().as_text()
    gathers = [line.strip()[:160] for line in hlo.splitlines() if re.search(r"\ball-gather(-start)?\(", line)]
    err = max(
        float(np.max(np.abs(a[n] - b[n]) / (np.abs(b[n]) + 1e-6))) if np.size(b[n]) else 0.0
        for a, b in zip(got, ref)
        for n in PARAMS
    )
    return {"covered": covered, "wrong": wrong, "gathers": gathers, "max_rel_err": err}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding") / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _names():
    from _archs import SPECS

    return SPECS


@pytest.mark.parametrize("name", _names())
def test_state_is_sharded_like_the_params(report, name):
    r = report[name]
    assert "error" not in r, r.get("error")
    assert not r["wrong"], r["wrong"]
    # every non-scalar parameter has at least one accumulator shaped (and sharded) like it
    assert set(r["covered"]) >= {n for n, (shape, _) in PARAMS.items() if shape}, r["covered"]


@pytest.mark.parametrize("name", _names())
def test_update_gathers_no_parameter(report, name):
    assert "error" not in report[name], report[name].get("error")
    assert not report[name]["gathers"], report[name]["gathers"]


@pytest.mark.parametrize("name", _names())
def test_sharded_updates_equal_the_unsharded_ones(report, name):
    assert "error" not in report[name], report[name].get("error")
    assert report[name]["max_rel_err"] < 1e-4, report[name]["max_rel_err"]


if __name__ == "__main__":
    _worker(sys.argv[1])
