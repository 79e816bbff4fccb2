"""Round 7's scores (rule_meta.md): a candidate and the placebos against v13, pooled over the suites.

Pooling many suites' runs resolves effects that one suite of 7-18 runs cannot: the placebos, which change
nothing, score within about 0.1% of 1 over the 74 short runs. Per suite and pooled, it prints the geometric
mean of X / v13 per task (best valid over seeds 1-4 and 3-4; final train over seeds 1-4) for X = the candidate
(reports `PREFIX_*.json`) and each placebo draw that ran there, and the candidate's divergences.

    python docs/recipe_results/default_v14/pooled.py meta   # reads meta_decision4.json, meta_decision_v15.json, ...
"""

import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "default_v12"))
from compare import best_valid, final_train, learned  # noqa: E402  (the rules' own per-task scores)
from placebo import scores  # noqa: E402  (per-task ratios of a report against v13's, as the placebo table reads them)

SHORT = ["decision4", "decision_v15", "decision_v16", "decision_v17", "decision_v18"]
LONG = ["decision_long_v14", "decision_long_v16", "decision_long_v17", "decision_long_v18"]
DRAWS = {"placebo 1": "placebo_{}.json", "placebo 2": "placebo2_{}.json"}
METRICS = {"valid 1-4": (best_valid, [0, 1, 2, 3]), "valid 3-4": (best_valid, [2, 3]),
           "train 1-4": (final_train, [0, 1, 2, 3])}


def log_ratios(report, base):
    """Per task and metric, log(X / v13)."""
    assert [t["label"] for t in report["tasks"]] == [t["label"] for t in base["tasks"]]
    return {m: [math.log(r) for r in scores(report, base, f, s)[1]] for m, (f, s) in METRICS.items()}


def table(suites, prefix):
    print("| suite | who | runs | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    pooled, diverged = {}, 0
    for suite in suites:
        base = json.loads((HERE / f"{suite}_v13.json").read_text())
        files = {"candidate": f"{prefix}_{suite}.json", **{k: v.format(suite) for k, v in DRAWS.items()}}
        for who, name in files.items():
            if not (HERE / name).is_file():
                continue
            report = json.loads((HERE / name).read_text())
            if who == "candidate":
                diverged += sum(int(learned(t)["diverged"]) for t in report["tasks"])
            logs = log_ratios(report, base)
            for m, v in logs.items():
                pooled.setdefault(who, {}).setdefault(m, []).extend(v)
            cells = " | ".join(f"{math.exp(np.mean(v)):.3f}" for v in logs.values())
            print(f"| `{suite}` | {who} | {len(logs['valid 1-4'])} | {cells} |")
    for who, logs in pooled.items():
        cells = " | ".join(f"**{math.exp(np.mean(v)):.4f}**" for v in logs.values())
        print(f"| pooled | {who} | {len(logs['valid 1-4'])} | {cells} |")
    print(f"\ncandidate divergences: {diverged}\n")


if __name__ == "__main__":
    prefix = sys.argv[1] if len(sys.argv) > 1 else "meta"
    print("Short suites\n")
    table(SHORT, prefix)
    print("Long suites\n")
    table(LONG, prefix)
