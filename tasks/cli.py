"""List the registered tasks and task families: ``lopt tasks``.

Prints one table row per entry: name, kind (task or family), number of
parameters (a range over a family's variants), data, and a description.
Parameter counts come from shape evaluation, so nothing is loaded or
computed; listing is instant and works offline.
"""

from __future__ import annotations

import argparse

from lopt.tasks import registry
from lopt.tasks.base import Task, TaskFamily

COLUMNS = ("name", "kind", "params", "data", "description")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind", choices=("all", "task", "family"), default="all", help="list only tasks or only families"
    )


def rows(kind: str = "all") -> list[tuple[str, str, str, str, str]]:
    """The table ``lopt tasks`` prints, as rows of strings (tasks first, then families)."""
    out = []
    if kind in ("all", "task"):
        out += [_task_row(name, registry.get_task(name)) for name in registry.task_names()]
    if kind in ("all", "family"):
        out += [_family_row(name, registry.get_family(name)) for name in registry.family_names()]
    return out


def _task_row(name: str, task: Task) -> tuple[str, str, str, str, str]:
    return (name, "task", f"{task.num_params():,}", task.data_summary(), task.describe())


def _family_row(name: str, family: TaskFamily) -> tuple[str, str, str, str, str]:
    counts = [t.num_params() for t in family.tasks]
    params = f"{min(counts):,}" if min(counts) == max(counts) else f"{min(counts):,}-{max(counts):,}"
    kinds = list(dict.fromkeys(t.data_summary() for t in family.tasks))
    data = ", ".join(kinds) if len(kinds) <= 2 else f"{kinds[0]}, +{len(kinds) - 1} more"
    description = f"{len(family.tasks)} variants: {family.description}"
    return (name, "family", params, data, description)


def format_table(table: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *table]) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in [COLUMNS, *table]:
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    table = rows(getattr(args, "kind", "all"))
    print(format_table(table))
    n_tasks = sum(r[1] == "task" for r in table)
    print(f"\n{n_tasks} tasks, {len(table) - n_tasks} families. Use a name with lopt.tasks.registry.get_task / get_family.")
    return 0
