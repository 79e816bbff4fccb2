"""How far do this day's decision scores move when nothing changes? A placebo against v13 on every suite.

The placebo is v13 with `relative_step_exponent: 1e-5` from the initial RMS: each matrix's step times
`(rms(p_0) / 0.125)**1e-5`, a change of a few parts in a million, about float32 rounding; a second draw
(`placebo2_*`) uses 3e-5 on five of the suites. Any ratio away from 1
is how far a run's path moves when its arithmetic is nudged. For each suite it prints the score the rules
use (geometric mean of placebo / v13 best valid; for long suites also final train), over seeds 1-4 and 3-4,
the number of tasks that moved by more than 0.1%, and the largest move.

    python docs/recipe_results/default_v14/placebo.py   # reads the committed reports
"""

import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "default_v12"))
from compare import best_valid, final_train, learned  # noqa: E402  (the rules' own per-task scores)
PAIRS = [  # (suite, placebo report, v13 report)
    ("default_decision_v8", "placebo_decision4.json", "decision4_v13.json"),
    ("default_decision_v15", "placebo_decision_v15.json", "decision_v15_v13.json"),
    ("default_decision_v16", "placebo_decision_v16.json", "decision_v16_v13.json"),
    ("default_decision_v17", "placebo_decision_v17.json", "decision_v17_v13.json"),
    ("default_decision_long_v14", "placebo_decision_long_v14.json", "decision_long_v14_v13.json"),
    ("default_decision_long_v16", "placebo_decision_long_v16.json", "decision_long_v16_v13.json"),
    ("default_decision_long_v17", "placebo_decision_long_v17.json", "decision_long_v17_v13.json"),
    ("default_decision_v16", "placebo2_decision_v16.json", "decision_v16_v13.json"),
    ("default_decision_v17", "placebo2_decision_v17.json", "decision_v17_v13.json"),
    ("default_decision_long_v16", "placebo2_decision_long_v16.json", "decision_long_v16_v13.json"),
    ("default_decision_long_v17", "placebo2_decision_long_v17.json", "decision_long_v17_v13.json"),
    # Round 6 (rule_calibrated.md) ran both placebos beside its candidate.
    ("default_decision_v18", "placebo_decision_v18.json", "decision_v18_v13.json"),
    ("default_decision_v18", "placebo2_decision_v18.json", "decision_v18_v13.json"),
    ("default_decision_long_v18", "placebo_decision_long_v18.json", "decision_long_v18_v13.json"),
    ("default_decision_long_v18", "placebo2_decision_long_v18.json", "decision_long_v18_v13.json"),
]


def scores(placebo, base, metric, seeds):
    ratios = [metric(learned(a), seeds) / metric(learned(b), seeds)
              for a, b in zip(placebo["tasks"], base["tasks"], strict=True)]
    return math.exp(np.mean(np.log(ratios))), ratios


def main():
    print("| suite | draw | tasks | valid 1-4 | valid 3-4 | train 1-4 | tasks moved > 0.1% (valid 1-4) | largest move |")
    print("|---|---|---|---|---|---|---|---|")
    for suite, p, b in PAIRS:
        if not (HERE / p).is_file():
            continue
        placebo, base = json.loads((HERE / p).read_text()), json.loads((HERE / b).read_text())
        assert [t["label"] for t in placebo["tasks"]] == [t["label"] for t in base["tasks"]]
        v14, ratios = scores(placebo, base, best_valid, [0, 1, 2, 3])
        v34, _ = scores(placebo, base, best_valid, [2, 3])
        t14, _ = scores(placebo, base, final_train, [0, 1, 2, 3])
        moved = [r for r in ratios if abs(math.log(r)) > 1e-3]
        big = max(ratios, key=lambda r: abs(math.log(r)))
        draw = 2 if p.startswith("placebo2") else 1
        print(f"| `{suite}` | {draw} | {len(ratios)} | {v14:.3f} | {v34:.3f} | {t14:.3f} | {len(moved)} | {big:.3f} |")


if __name__ == "__main__":
    main()
