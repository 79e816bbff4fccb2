"""The model card and README show what the committed reports say, and name the weights that ship.

The card's reporting tables are pasted from ``lopt eval`` output; the committed
``report.json`` of each run lives beside the round's other results. Rendering
those reports with the package's own report code must give the card's tables
character for character, and the README's headline cells must round the same
numbers. A card edited by hand, or a report rerun without updating the card,
fails here.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

import lopt
from lopt import io as lopt_io
from lopt.eval import report as report_md

ROOT = Path(__file__).resolve().parents[1]
ROUND = ROOT / "docs" / "recipe_results" / "default_v13"  # the latest reporting runs of the shipped default
VERSION = "v13"
SUITES = ("held_out", "realistic")


@functools.cache
def _report(suite: str) -> dict:
    return json.loads((ROUND / f"report_{VERSION}_{suite}.json").read_text())


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
    assert tables in card, f"docs/model_card.md's {suite} tables differ from {ROUND.name}/report_{VERSION}_{suite}.json"
    assert outcomes in card, f"docs/model_card.md's {suite} outcome lines differ from the committed report"


def test_committed_reports_ran_the_shipped_default():
    """The optimizer each report loaded (a shipped name or a committed candidate file) has the shipped
    default's tensors and hyperparameters."""
    def identity(opt):
        return lopt_io.checksum(lopt_io.flatten_meta_params(opt.meta_params)), opt.arch.arch, opt.arch.hparams()

    shipped = identity(lopt.pretrained("default"))
    for suite in SUITES:
        report = _report(suite)
        (name,) = report["learned"]
        source = report["sources"][name]
        opt = lopt.pretrained(source.split(":", 1)[1]) if source.startswith("pretrained:") else lopt.load(ROOT / source)
        assert identity(opt) == shipped, f"{suite} report ran {source}, not the shipped default"


def test_readme_headline_rounds_the_committed_reports():
    readme = (ROOT / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        m = re.match(r"\| (\w+) \((held_out|realistic)\) \| (.+) \|$", line)
        if m:
            rows[(m.group(1), m.group(2))] = [c.strip().strip("*").split(" ")[0] for c in m.group(3).split("|")]
    reported = set()
    for suite in SUITES:
        report = _report(suite)
        (name,) = report["learned"]
        for task in report["tasks"]:
            cells = rows.get((task["label"], suite))
            assert cells is not None, f"README's headline table has no row for {task['label']} ({suite})"
            opts = task["optimizers"]
            want = [opts[name], opts["adam_default"], opts["adamw_cosine"]]
            assert cells[:3] == [f"{o['best_valid_loss']:.3g}" for o in want], task["label"]
            reported.add((task["label"], suite))
    assert set(rows) == reported, f"README's headline rows not in the reports: {sorted(set(rows) - reported)}"


def test_card_client_check_table_is_the_committed_results():
    """The card's client-check tables are `lopt.eval.client_check`'s rendering of its committed results."""
    from lopt.eval import client_check

    results = client_check.collect(ROOT / "docs" / "recipe_results" / "client_check")
    assert set(results) == set(client_check.WORKLOADS), "a client-check workload's result is not committed"
    card = (ROOT / "docs" / "model_card.md").read_text()
    assert client_check.render(results) in card, "docs/model_card.md's client-check tables differ from the results"
