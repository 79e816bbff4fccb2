"""Candidate / incumbent ratios of the v12 round's rule (rule.md), from `lopt eval` reports.

Usage: python compare.py CANDIDATE_REPORT.json INCUMBENT_REPORT.json [--long]
Per task: the lowest point of the seed-mean validation curve (and, with --long, the seed-mean final training
loss), for seeds 1-4 and for seeds 3-4 alone; geometric means over the tasks.
"""

import json
import math
import sys

import numpy as np


def learned(task):
    (name,) = task["optimizers"]  # --baselines none: one optimizer per task
    return task["optimizers"][name]


def best_valid(opt, seeds):
    return float(np.min(np.mean(np.asarray(opt["curve"]["valid_loss"])[seeds], axis=0)))


def final_train(opt, seeds):
    return float(np.mean(np.asarray(opt["final_train_loss_per_seed"])[seeds]))


def main(cand_path, inc_path, long=False):
    cand, inc = json.load(open(cand_path)), json.load(open(inc_path))
    groups = {"1-4": [0, 1, 2, 3], "3-4": [2, 3]}
    ratios = {(m, g): [] for m in ("valid", "train") for g in groups}
    diverged = 0
    for tc, ti in zip(cand["tasks"], inc["tasks"]):
        assert tc["label"] == ti["label"]
        oc, oi = learned(tc), learned(ti)
        diverged += int(oc["diverged"])
        row = [tc["label"]]
        for g, seeds in groups.items():
            r = best_valid(oc, seeds) / best_valid(oi, seeds)
            ratios[("valid", g)].append(r)
            row.append(f"valid {g} {r:.3f}")
            if long:
                r = final_train(oc, seeds) / final_train(oi, seeds)
                ratios[("train", g)].append(r)
                row.append(f"train {g} {r:.3f}")
        print(" | ".join(row))
    for (m, g), rs in ratios.items():
        if rs:
            print(f"geomean {m} seeds {g}: {math.exp(np.mean(np.log(rs))):.4f} over {len(rs)} tasks")
    print(f"candidate divergences: {diverged}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--long" in sys.argv[3:])
