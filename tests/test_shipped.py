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


def test_with_weight_decay_replaces_only_the_decay(tmp_path):
    import pytest

    from lopt.base import OptimizerError

    opt = lopt.pretrained("default")
    before = np.asarray(opt.meta_params["log_wd"]).copy()
    learned = float(jnp.exp(opt.meta_params["log_wd"]))
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "g": jnp.full((4,), 0.5)}
    zero = jax.tree.map(jnp.zeros_like, params)
    grads = {"w": jnp.cos(params["w"]), "g": jnp.sin(params["g"])}

    def first_update(o, g):
        tx = o.as_optax(num_steps=100)
        return tx.update(g, tx.init(params), params, value=1.0)[0]

    # The learned value given back: the same updates (to float rounding of log/exp).
    same = first_update(opt.with_weight_decay(learned), grads)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(first_update(opt, grads))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    # With zero gradients the update is the decay alone, -lr_t * wd * p: proportional to wd.
    u_learned, u_small = first_update(opt, zero), first_update(opt.with_weight_decay(learned / 10), zero)
    for p, a, b in zip(jax.tree.leaves(params), jax.tree.leaves(u_learned), jax.tree.leaves(u_small)):
        assert np.all(np.sign(a) == -np.sign(p))
        np.testing.assert_allclose(b, a / 10, rtol=1e-5)
    # Recorded, and kept through a save and a load.
    small = opt.with_weight_decay(np.float32(1e-2))  # numpy scalars are numbers too
    small.save(tmp_path / "o.safetensors")
    back = lopt.load(tmp_path / "o.safetensors")
    np.testing.assert_allclose(back.metadata["weight_decay_override"], 1e-2, rtol=1e-7)
    np.testing.assert_allclose(float(jnp.exp(back.meta_params["log_wd"])), 1e-2, rtol=1e-6)
    np.testing.assert_array_equal(opt.meta_params["log_wd"], before)  # the original is untouched
    for bad in (0.0, -1e-3, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(OptimizerError, match="weight_decay must be a finite number > 0"):
            opt.with_weight_decay(bad)
    with pytest.raises(OptimizerError, match="has no learned weight decay"):
        lopt.pretrained("default_v1").with_weight_decay(1e-2)


def test_default_is_v12_with_lagged_statistics_and_the_lineage_to_v10():
    """v13 (the default) = v12 + tensor_stats "previous"; v12 = v11 + warm-up over 10% of the run; v11 =
    v10's tensors + decay_horizon 3000, exponent 0.5; nothing else of the architecture differs, and all four
    share one set of tensors."""
    import dataclasses

    from lopt import io as lopt_io

    v13, v12 = lopt.pretrained("default"), lopt.pretrained("default_v12")
    v11, v10 = lopt.pretrained("default_v11"), lopt.pretrained("default_v10")
    assert v13.arch.tensor_stats == "previous" and v12.arch.tensor_stats == "current"
    assert dataclasses.replace(v13.arch, tensor_stats="current") == v12.arch
    assert v12.arch.warmup_fraction == 0.10 and v11.arch.warmup_fraction == 0.05
    assert dataclasses.replace(v12.arch, warmup_fraction=0.05) == v11.arch
    assert (v11.arch.decay_horizon, v11.arch.decay_horizon_exponent) == (3000, 0.5)
    assert dataclasses.replace(v11.arch, decay_horizon=0, decay_horizon_exponent=1.0) == v10.arch
    sha = lambda o: lopt_io.checksum(lopt_io.flatten_meta_params(o.meta_params))
    assert sha(v13) == sha(v12) == sha(v11) == sha(v10) == sha(lopt.pretrained("default_v13"))
    assert v13.arch == lopt.pretrained("default_v13").arch
