"""What users install: one import name, a light deploy path, configs found by name."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("flax", "tensorflow", "tensorflow_datasets", "sklearn", "matplotlib", "tqdm", "yaml", "chex")

DEPLOY = """
import sys
import jax.numpy as jnp, optax
import lopt
tx = lopt.pretrained("default").as_optax(100)
params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
state = tx.init(params)
updates, state = tx.update(params, state, params, value=jnp.ones(()))
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
assert not heavy, f"the deploy path imported {heavy}"
assert not any(m.startswith(("lopt.tasks", "lopt.metatrain", "lopt.eval")) for m in sys.modules)
print("ok")
""" % (HEAVY,)


def test_deploy_path_imports_only_jax_optax_numpy_safetensors(tmp_path):
    out = subprocess.run([sys.executable, "-c", DEPLOY], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_one_top_level_import_name_and_no_implicit_namespace_packages():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = meta["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == {"lopt"}
    mapping = meta["tool"]["setuptools"].get("package-dir", {})
    for package in packages:
        folder = ROOT / mapping.get(package, package.replace(".", "/"))
        assert (folder / "__init__.py").is_file(), f"{package} ({folder}) has no __init__.py"
    # every folder holding Python files under a mapped package is itself a listed package
    for package in packages:
        folder = ROOT / mapping.get(package, package.replace(".", "/"))
        for sub in folder.iterdir():
            if sub.is_dir() and any(sub.glob("*.py")):
                assert f"{package}.{sub.name}" in packages, f"{sub} holds Python files but is not packaged"
    core = {d.split(">")[0].split("=")[0].strip() for d in meta["project"]["dependencies"]}
    assert core == {"jax", "optax", "numpy", "safetensors"}


def test_configs_resolve_by_name_from_any_folder(tmp_path):
    code = (
        "from lopt import configs; "
        "print(configs.resolve('train', 'smoke').name, configs.resolve('eval', 'smoke').name, "
        "'default_v1' in configs.names('recipes'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["smoke.yaml", "smoke.yaml", "True"]


def test_a_folder_does_not_shadow_a_shipped_config_name(tmp_path, monkeypatch):
    import pytest

    from lopt import configs

    (tmp_path / "smoke").mkdir()
    monkeypatch.chdir(tmp_path)
    assert configs.resolve("train", "smoke").parent.name == "train"
    with pytest.raises(FileNotFoundError, match="shipped names: .*smoke"):
        configs.resolve("train", "smok")
