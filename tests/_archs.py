"""The architecture configurations every conformance test covers: each registered architecture at its
defaults, plus the options that change what an architecture keeps in its state (``normed_fc``'s
distance-adapted step size adds accumulators and a global reduction; its previous-step tensor statistics add
per-tensor scalars and move the guard before the pass)."""

from lopt import architectures

EXTRA = {
    "normed_fc:distance": ("normed_fc", {"step_size": "distance"}),
    "normed_fc:distance_lagged": ("normed_fc", {"step_size": "distance", "tensor_stats": "previous"}),
}
SPECS = architectures.names() + sorted(EXTRA)


def build(spec: str):
    """The architecture a spec names: a registered name, or one of ``EXTRA``."""
    name, hparams = EXTRA.get(spec, (spec, {}))
    return architectures.get(name, **hparams)
