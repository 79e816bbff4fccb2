"""``optimizer.init_from_partial``: extend a trained optimizer by options that add meta-parameters.

A recipe stage that turns on ``small_fc``'s ``learned_schedule`` starts from the
previous stage's file: every trained tensor is copied, the schedule weights
keep their fresh (zero, no-op) init, and anything else that differs is a clear
ConfigError rather than a silent partial copy.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lopt import TrainedOptimizer, architectures
from lopt.metatrain.build import load_init_meta_params, overlay_meta_params
from lopt.metatrain.config import ConfigError, OptimizerConfig, TrainConfig


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory):
    arch = architectures.get("small_fc")
    meta = jax.tree.map(lambda x: np.asarray(x) + 0.5, arch.init_meta_params(jax.random.PRNGKey(0)))
    path = tmp_path_factory.mktemp("init_from") / "stage.safetensors"
    TrainedOptimizer(arch, meta).save(path)
    return path, meta


def _config(path, partial: bool, **hparams) -> TrainConfig:
    return TrainConfig(optimizer=OptimizerConfig("small_fc", hparams, str(path), partial))


def test_partial_init_copies_every_trained_tensor_and_starts_added_ones_fresh(trained_file):
    path, meta = trained_file
    config = _config(path, True, learned_schedule=True)
    arch = architectures.get("small_fc", learned_schedule=True)
    fresh = arch.init_meta_params(jax.random.PRNGKey(1))
    merged = overlay_meta_params(fresh, load_init_meta_params(config, arch))
    assert set(merged) == set(meta) | {"schedule"}
    np.testing.assert_array_equal(merged["schedule"], np.zeros_like(fresh["schedule"]))
    for (path_a, a), (path_b, b) in zip(
        jax.tree_util.tree_leaves_with_path({k: v for k, v in merged.items() if k != "schedule"}),
        jax.tree_util.tree_leaves_with_path(meta),
    ):
        assert path_a == path_b
        np.testing.assert_array_equal(np.asarray(a), b)
    # The extended optimizer runs and, with zero schedule weights, gives the file's updates.
    params = {"w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)}
    grads = {"w": np.cos(np.arange(12, dtype=np.float32)).reshape(3, 4)}
    base_arch = architectures.get("small_fc")
    upd_ext, _ = arch.update(merged, arch.init(merged, params, 100), grads, params, 1.0)
    upd_base, _ = base_arch.update(meta, base_arch.init(meta, params, 100), grads, params, 1.0)
    np.testing.assert_allclose(upd_ext["w"], upd_base["w"], rtol=1e-6)


def test_without_partial_any_architecture_difference_is_an_error(trained_file):
    path, _ = trained_file
    arch = architectures.get("small_fc", learned_schedule=True)
    with pytest.raises(ConfigError, match="holds SmallFC"):
        load_init_meta_params(_config(path, False, learned_schedule=True), arch)


def test_partial_refuses_differences_outside_the_extension_options(trained_file):
    path, _ = trained_file
    arch = architectures.get("small_fc", hidden=8, learned_schedule=True)
    with pytest.raises(ConfigError, match="may differ from it only in learned_schedule"):
        load_init_meta_params(_config(path, True, hidden=8, learned_schedule=True), arch)


def test_overlay_names_the_first_mismatching_tensor():
    fresh = {"a": np.zeros((2,)), "b": {"c": np.zeros((3,))}}
    with pytest.raises(ConfigError, match=r"meta_params\.b\.c has shape \(4,\) in the file, \(3,\)"):
        overlay_meta_params(fresh, {"a": np.ones((2,)), "b": {"c": np.ones((4,))}})
    with pytest.raises(ConfigError, match=r"meta_params has no 'z'"):
        overlay_meta_params(fresh, {"z": np.ones((2,))})


def test_init_from_a_shipped_name_reads_the_packaged_file_from_any_directory(tmp_path, monkeypatch):
    """``pretrained:NAME`` warm-starts from the shipped file, also outside the repository root."""
    import lopt
    from lopt.metatrain.build import init_from_file

    monkeypatch.chdir(tmp_path)
    shipped = lopt.pretrained("default_v2")
    config = TrainConfig(optimizer=OptimizerConfig(shipped.arch.arch, {}, "pretrained:default_v2"))
    got = load_init_meta_params(config, shipped.arch)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(shipped.meta_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert init_from_file("pretrained:default_v2").is_file()
    assert str(init_from_file("some/run/optimizer.safetensors")) == "some/run/optimizer.safetensors"
    with pytest.raises(ConfigError, match="unknown pretrained optimizer 'no_such'"):
        load_init_meta_params(TrainConfig(optimizer=OptimizerConfig("small_fc", {}, "pretrained:no_such")),
                              architectures.get("small_fc"))
