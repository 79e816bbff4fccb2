"""Optimizer files: bit-exact round trips, one clear error per kind of bad file, pretrained lookup."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save

import lopt
from lopt import architectures, io

KEY = jax.random.PRNGKey(0)


def perturbed(name):
    arch = architectures.get(name)
    mp = arch.init_meta_params(KEY)
    rng = np.random.default_rng(3)
    return arch, jax.tree.map(lambda x: x + np.float32(0.01) * rng.normal(size=x.shape).astype(np.float32), mp)


@pytest.mark.parametrize("name", ["small_fc", "mlp", "learned_adam"])
def test_round_trip_bit_for_bit(tmp_path, name):
    arch, mp = perturbed(name)
    path = tmp_path / f"{name}.safetensors"
    lopt.TrainedOptimizer(arch, mp, {"meta_steps": 7}).save(path, provenance={"config": {"lr": 1e-4}})
    back = lopt.load(path)
    assert back.arch == arch and back.metadata == {"meta_steps": 7, "config": {"lr": 1e-4}}
    assert jax.tree.structure(back.meta_params) == jax.tree.structure(mp)
    for a, b in zip(jax.tree.leaves(back.meta_params), jax.tree.leaves(mp)):
        assert a.dtype == b.dtype and a.shape == b.shape and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_non_default_hparams_round_trip(tmp_path):
    arch = architectures.get("small_fc", hidden=3, momentum_decays=(0.5, 0.9))
    path = tmp_path / "h.safetensors"
    lopt.TrainedOptimizer(arch, arch.init_meta_params(KEY), {}).save(path)
    assert lopt.load(path).arch == arch


def write_raw(path, tensors, header):
    path.write_bytes(save(tensors, metadata={"lopt": json.dumps(header)}))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    arch, mp = perturbed("learned_adam")
    path = tmp_path_factory.mktemp("files") / "good.safetensors"
    lopt.TrainedOptimizer(arch, mp, {}).save(path)
    tensors = io.flatten_meta_params(jax.device_get(mp))
    tensors = {k: np.array(v, np.float32) for k, v in tensors.items()}
    header = {"format": io.FORMAT, "format_version": io.FORMAT_VERSION, "arch": "learned_adam",
              "hparams": arch.hparams(), "provenance": {}, "sha256": io.checksum(tensors)}
    return path, tensors, header


def test_bad_files_give_one_clear_error(tmp_path, good):
    path, tensors, header = good
    raw = path.read_bytes()
    cases = []

    def case(name, data, match):
        p = tmp_path / name
        p.write_bytes(data) if isinstance(data, bytes) else write_raw(p, *data)
        cases.append((p, match))

    case("truncated", raw[: len(raw) - 5], "truncated")
    case("truncated_header", raw[:20], "truncated")
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF
    case("flipped", bytes(flipped), "corrupted")
    case("text", b"this is not an optimizer file at all", "not a safetensors file")
    case("empty", b"", "not a safetensors file")
    case("unknown_arch", (tensors, {**header, "arch": "nope"}), "unknown architecture 'nope'")
    case("newer", (tensors, {**header, "format_version": io.FORMAT_VERSION + 1}), "newer lopt")
    case("bad_hparam", (tensors, {**header, "hparams": {"width": 3}}), "no hyperparameter 'width'")
    t_missing = {k: v for k, v in tensors.items() if k != "log_lr"}
    case("missing", (t_missing, {**header, "sha256": io.checksum(t_missing)}), "tensor 'log_lr' missing")
    t_extra = {**tensors, "extra/w": np.zeros(2, np.float32)}
    case("extra", (t_extra, {**header, "sha256": io.checksum(t_extra)}), "unexpected tensor 'extra/w'")
    t_shape = {**tensors, "decay": np.zeros(3, np.float32)}
    case("shape", (t_shape, {**header, "sha256": io.checksum(t_shape)}), r"tensor 'decay' has shape \(3,\)")
    p = tmp_path / "plain.safetensors"
    p.write_bytes(save(tensors))
    cases.append((p, "not a lopt optimizer"))
    cases.append((tmp_path / "absent.safetensors", "no such optimizer file"))
    for p, match in cases:
        with pytest.raises(lopt.OptimizerError, match=match):
            lopt.load(p)


def test_pretrained_lookup(tmp_path):
    from lopt.pretrained import pretrained

    assert isinstance(lopt.pretrained(), list)
    arch = architectures.get("learned_adam")
    lopt.TrainedOptimizer(arch, arch.init_meta_params(KEY), {"who": "test"}).save(tmp_path / "mine.safetensors")
    assert "mine" in pretrained(search_path=[tmp_path])
    loaded = pretrained("mine", search_path=[tmp_path])
    assert loaded.arch == arch and loaded.metadata == {"who": "test"}
    with pytest.raises(lopt.OptimizerError, match="unknown pretrained optimizer 'nope'; available: .*mine"):
        pretrained("nope", search_path=[tmp_path])
    with pytest.raises(lopt.OptimizerError, match="invalid pretrained optimizer name"):
        pretrained("../etc/passwd")
