"""The weights shipped in the package and the main-job routing of the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.cli import _is_main_job, build_parser


def test_shipped_default_loads_and_descends():
    assert {"default", "default_v1"} <= set(lopt.pretrained())
    opt = lopt.pretrained("default")
    assert opt.arch.arch in lopt.architectures.names()
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(opt.meta_params))
    assert "model_card" in opt.metadata and "recipe" in opt.metadata  # provenance: docs/model_card.md

    target = jnp.array([0.3, -0.6, 0.15])  # within reach of Adam-sized steps (~1e-3 per step)
    loss_fn = lambda p: jnp.sum((p["x"] - target) ** 2)
    tx = optax.chain(optax.clip_by_global_norm(10.0), opt.as_optax(num_steps=1000))
    params = {"x": jnp.zeros(3)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    for _ in range(1000):
        params, state = step(params, state)
    assert float(loss_fn(params)) < 0.1 * float(loss_fn({"x": jnp.zeros(3)}))


def test_train_without_config_is_the_main_job():
    parser, _ = build_parser()
    assert _is_main_job(parser.parse_args(["train"]))
    assert _is_main_job(parser.parse_args(["train", "--out", "runs/x", "--set", "num_outer_steps=10"]))
    assert not _is_main_job(parser.parse_args(["train", "--config", "configs/train/smoke.yaml"]))
    assert not _is_main_job(parser.parse_args(["train", "--distributed"]))
    assert not _is_main_job(parser.parse_args(["train", "--num-processes", "0"]))
    assert not _is_main_job(parser.parse_args(["tasks"]))


def test_main_job_trains_then_compares(tmp_path):
    """The main job end to end, shrunk: a few outer steps on quadratics, the smoke suite."""
    from lopt.eval.main_job import run_main_job

    overrides = (
        "num_outer_steps=3",
        "tasks=[{name: quadratic, num_tasks: 2}]",
        "unroll.truncation_length=5",
        "unroll.episode_length=20",
        "validation.every=0",
        "checkpoint_every=3",
    )
    report = run_main_job(tmp_path, overrides, progress=False, suite="smoke")
    assert (tmp_path / "optimizer.safetensors").is_file()
    for name in ("report.json", "report.md", "summary.png"):
        assert (tmp_path / "compare" / name).is_file()
    md = (tmp_path / "compare" / "report.md").read_text()
    assert "fresh" in md and "shipped_default" in md and "adam_tuned" in md
    assert report["suite"]["name"] == "smoke"
    assert set(report["learned"]) == {"fresh", "shipped_default"}


def test_mismatched_pytree_is_a_clear_error():
    import pytest

    opt = lopt.pretrained("default")
    state = opt.arch.init(opt.meta_params, {"w": jnp.zeros(3)}, num_steps=10)
    with pytest.raises(lopt.OptimizerError, match="grads pytree does not match"):
        opt.arch.update(opt.meta_params, state, {"v": jnp.zeros(3)}, {"w": jnp.zeros(3)})
