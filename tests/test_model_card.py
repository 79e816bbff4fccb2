"""The model card and README show what the committed reports say, and name the weights that ship.

The card's reporting tables are pasted from ``lopt eval`` output; the committed
``report.json`` of each run lives beside the round's other results. Rendering
those reports with the package's own report code must give the card's tables
character for character, and the README's headline cells must round the same
numbers. A card edited by hand, or a report rerun without updating the card,
fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import lopt
from lopt.eval import report as report_md

ROOT = Path(__file__).resolve().parents[1]
ROUND = ROOT / "docs" / "recipe_results" / "default_v10"
SUITES = ("held_out", "realistic")


def _report(suite: str) -> dict:
    return json.loads((ROUND / f"report_v10_{suite}.json").read_text())


def _as_default(text: str, report: dict) -> str:
    """The card renames the learned column (the run loaded the versioned file) to `default`."""
    (name,) = report["learned"]
    return (text.replace(f"`{name}`", "`default`").replace(f"| {name} |", "| default |")
            .replace(f"): {name} ", "): default "))


@pytest.mark.parametrize("suite", SUITES)
def test_card_tables_are_the_committed_reports(suite):
    card = (ROOT / "docs" / "model_card.md").read_text()
    report = _report(suite)
    tables = _as_default(report_md.summary_table(report), report)
    outcomes = _as_default("\n".join(report_md.outcome_lines(report)), report)
    assert tables in card, f"docs/model_card.md's {suite} tables differ from {ROUND.name}/report_v10_{suite}.json"
    assert outcomes in card, f"docs/model_card.md's {suite} outcome lines differ from the committed report"


def test_committed_reports_ran_the_shipped_default():
    shipped = lopt.pretrained("default")
    for suite in SUITES:
        report = _report(suite)
        (name,) = report["learned"]
        ran = lopt.pretrained(name)  # the versioned name the run loaded
        for a, b in zip(_leaves(shipped), _leaves(ran)):
            np.testing.assert_array_equal(a, b)


def _leaves(opt):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(opt.meta_params)]


def test_readme_headline_rounds_the_committed_reports():
    readme = (ROOT / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        m = re.match(r"\| (\w+) \((held_out|realistic)\) \| (.+) \|$", line)
        if m:
            rows[(m.group(1), m.group(2))] = [c.strip().strip("*").split(" ")[0] for c in m.group(3).split("|")]
    checked = 0
    for suite in SUITES:
        report = _report(suite)
        (name,) = report["learned"]
        for task in report["tasks"]:
            cells = rows.get((task["label"], suite))
            assert cells is not None, f"README's headline table has no row for {task['label']} ({suite})"
            opts = task["optimizers"]
            want = [opts[name], opts["adam_default"], opts["adamw_cosine"]]
            assert cells[:3] == [f"{o['best_valid_loss']:.3g}" for o in want], task["label"]
            checked += 1
    assert checked == sum(len(_report(s)["tasks"]) for s in SUITES)
