"""Compile lopt's C++ kernels on this machine, load them and register them with XLA.

Why compile here rather than ship binaries: the kernels are XLA FFI custom
calls. They must be built against the FFI headers of the installed jaxlib, and
``-march=native`` lets the compiler use this CPU's vector instructions. So the
first use compiles the source (a few seconds) with the system's C++ compiler
into a cache folder, keyed by everything that changes the binary. Later uses
and other processes load the cached library.

Without a compiler, or if the build fails, :func:`load` raises
:class:`KernelUnavailable` with the reason. ``kernel="auto"`` then keeps the
XLA implementation (see :mod:`lopt.kernels`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import jax

FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w")
# C++ symbol of each FFI handler, by the target name the Python side calls.
TARGETS = {
    "normed_fc_cpu": {
        "lopt_normed_fc_stats": "LoptNormedFcStats",
        "lopt_normed_fc_dnorm": "LoptNormedFcDNorm",
        "lopt_normed_fc_apply": "LoptNormedFcApply",
        "lopt_normed_fc_step": "LoptNormedFcStep",
    },
}
COMPILE_TIMEOUT_S = 300


class KernelUnavailable(RuntimeError):
    """A kernel cannot be built or loaded here (no compiler, no FFI headers, a failed build)."""


def cache_dir() -> Path:
    """Where compiled kernels live: ``$LOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lopt``, else ``~/.cache/lopt``."""
    root = os.environ.get("LOPT_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lopt" / "kernels"


def compiler() -> str:
    """The C++ compiler to use: ``$CXX``, else the first of c++, g++, clang++ on the PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise KernelUnavailable("no C++ compiler found (set CXX or install g++ / clang++)")


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
        if keep:
            return "\n".join(keep)
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _source(name: str) -> bytes:
    return resources.files("lopt.kernels").joinpath(f"{name}.cc").read_bytes()


def _build(name: str) -> Path:
    """The compiled library of kernel ``name``, built now if the cache does not have it."""
    cxx = compiler()
    include = jax.ffi.include_dir()
    if not os.path.isdir(include):
        raise KernelUnavailable(f"jaxlib's FFI headers are missing ({include})")
    source = _source(name)
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"C++ compiler {cxx!r} does not run: {e}") from e
    key = hashlib.sha256(
        b"\0".join(s.encode() if isinstance(s, str) else s for s in
                   (source, version, jax.__version__, " ".join(FLAGS), _cpu_identity(), include))
    ).hexdigest()[:20]
    target = cache_dir() / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / f"{name}.cc"
        src.write_bytes(source)
        out = Path(tmp) / target.name
        cmd = [cxx, *FLAGS, f"-I{include}", str(src), "-o", str(out)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise KernelUnavailable(f"compiling kernel {name!r} failed: {e}") from e
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-12:])
            raise KernelUnavailable(f"compiling kernel {name!r} failed ({' '.join(cmd)}):\n{tail}")
        os.replace(out, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target


_LOADED: dict[str, ctypes.CDLL] = {}  # XLA's FFI registry is per process; so is this record of it


def load(name: str) -> None:
    """Build (once per machine) and register (once per process) the FFI targets of kernel ``name``."""
    if name in _LOADED:
        return
    if name not in TARGETS:
        raise KernelUnavailable(f"unknown kernel {name!r}; known: {sorted(TARGETS)}")
    if not hasattr(jax, "ffi"):  # the package itself supports older JAX through the XLA update
        raise KernelUnavailable(f"it needs jax.ffi (jax >= 0.5); this is jax {jax.__version__}")
    path = _build(name)
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in TARGETS[name].items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, AttributeError) as e:
        raise KernelUnavailable(f"loading kernel {name!r} from {path} failed: {e}") from e
    _LOADED[name] = lib
