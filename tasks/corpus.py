"""A text corpus that needs no download: the Python standard library's own source.

Every CPython install ships its standard library as ``.py`` files, so a fixed,
sorted list of modules present in every CPython 3.11+ is a real, always
available character-level corpus (about 0.5 MB). Files are read as bytes in the
listed order; bytes >= 128 become ``?`` so the vocabulary is the 128 ASCII
codes. The last ``VALID_FRACTION`` of the concatenated text is the validation
split. The text differs slightly between Python versions, so the corpus is
deterministic per interpreter, not across them.
"""

from __future__ import annotations

import functools
import os
import sysconfig

import numpy as np

from lopt.tasks.base import TaskError

STDLIB_FILES: tuple[str, ...] = (
    "abc.py",
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "numbers.py",
    "operator.py",
    "queue.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "textwrap.py",
    "types.py",
    "weakref.py",
)
VOCAB_SIZE = 128
VALID_FRACTION = 0.1


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=1)
def load_corpus() -> dict[str, np.ndarray]:
    """``{"train": uint8[N], "valid": uint8[M]}`` token ids in ``[0, VOCAB_SIZE)``, read-only."""
    root = stdlib_dir()
    missing = [f for f in STDLIB_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise TaskError(f"standard-library corpus incomplete: {', '.join(missing)} not found in {root}")
    chunks = []
    for fname in STDLIB_FILES:
        with open(os.path.join(root, fname), "rb") as fh:
            chunks.append(np.frombuffer(fh.read(), dtype=np.uint8))
    tokens = np.concatenate(chunks)
    tokens = np.where(tokens < VOCAB_SIZE, tokens, ord("?")).astype(np.uint8)
    cut = int(len(tokens) * (1.0 - VALID_FRACTION))
    out = {"train": tokens[:cut], "valid": tokens[cut:]}
    for arr in out.values():
        arr.flags.writeable = False
    return out


def decode(tokens) -> str:
    """Token ids back to text (for looking at samples)."""
    return bytes(int(t) for t in np.asarray(tokens).ravel()).decode("ascii", errors="replace")
