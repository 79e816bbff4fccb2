"""Would AdamW-cosine at a neighbouring grid rate reach the learned optimizer's best valid loss in fewer steps?

For each task of a report: the rate tuned for the planned horizon T and its two neighbours on the suite's grid,
each planned for T and the ladder's longer horizons (shortest first, stop once reached), reporting seeds.
Prints S (steps to reach the target) per rate against the report's speedup, and writes them to
adamw_neighbours_<suite>.json beside the report. Usage: python adamw_neighbours.py REPORT.json [labels to skip]
"""
import json, os, sys
import numpy as np
from lopt.eval import metrics
from lopt.eval.baselines import adamw_cosine
from lopt.eval.evaluate import build_task
from lopt.eval.runs import GridRunner
from lopt.eval.suite import load_suite
from lopt.eval.tuned_runs import horizon_ladder

report = json.load(open(sys.argv[1]))
skip = set(sys.argv[2:])
suite = load_suite(report["suite"]["name"])
(me,) = report["learned"]
seeds = report["protocol"]["report_seeds"]
grid = list(suite.lr_grid)
out = []
for spec, t in zip(suite.tasks, report["tasks"]):
    if t["label"] in skip:
        continue
    task = build_task(spec); data = task.load_data()
    T, every = t["steps"], t["eval_every"]
    lr = t["tuning"]["adamw_cosine"]["chosen_lr"]
    i = int(np.argmin([abs(np.log(g / lr)) for g in grid]))
    rates = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]
    target = t["optimizers"][me]["best_valid_loss"]; tstar = t["optimizers"][me]["best_valid_step"]
    best = {}
    for h in [T] + horizon_ladder(T, every, suite.speedup_horizon):
        if len(best) == len(rates):
            break
        todo = [r for r in rates if r not in best]
        runner = GridRunner(task, h, every, len(todo) * len(seeds), lambda p, h=h: adamw_cosine(p, h))
        c = runner(data, [r for r in todo for _ in seeds], seeds * len(todo))
        for k, r in enumerate(todo):
            v = metrics.seed_mean_curve(c.valid_loss[k * len(seeds):(k + 1) * len(seeds)])
            s = metrics.steps_to_reach(c.steps, v, target)
            if s is not None:
                best[r] = (s, h)
    rep = t["speedup"][me]["adamw_cosine"]["valid"]
    row = {"task": t["label"], "tuned_lr": lr, "report": rep, "neighbours": {str(r): best.get(r) for r in rates}}
    out.append(row)
    print(json.dumps(row), flush=True)
json.dump(out, open(os.path.join(os.path.dirname(sys.argv[1]), f"adamw_neighbours_{suite.name}.json"), "w"), indent=1)
