"""``lopt tasks`` lists every registered task and family with parameter count and data."""

from __future__ import annotations

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks import registry


def test_lopt_tasks_lists_everything(capsys):
    from lopt.cli import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    table, summary = out.split("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == ["name", "kind", "params", "data", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert len(rows) == len(lines) - 1 == len(registry.task_names()) + len(registry.family_names())
    for name in registry.task_names():
        assert rows[name].split()[1] == "task"
    for name in registry.family_names():
        assert rows[name].split()[1] == "family"
    assert rows["mlp_digits"].split()[2] == "2,410" and "digits 8x8x1" in rows["mlp_digits"]
    assert "stdlib source text" in rows["char_lm"]
    assert f"{len(registry.task_names())} tasks, {len(registry.family_names())} families" in summary


def test_lopt_tasks_kind_filter():
    import argparse

    from lopt.tasks import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(parser.parse_args(["--kind", "family"])) == 0
    body = buf.getvalue().split("\n\n")[0].splitlines()[1:]
    assert len(body) == len(registry.family_names()) and all(line.split()[1] == "family" for line in body)


def test_user_defined_task_from_docstring_example():
    """The few-lines recipe in tasks/supervised.py (and README) really works."""
    from lopt.tasks.supervised import SimpleClassificationTask

    def init(key):
        return {"w": 0.1 * jax.random.normal(key, (64, 10)), "b": jnp.zeros(10)}

    def apply(params, images):
        return images.reshape(images.shape[0], -1) @ params["w"] + params["b"]

    task = SimpleClassificationTask("my_softmax", init, apply, dataset="digits", batch_size=64)
    data = task.load_data()
    params = task.init(jax.random.PRNGKey(0))
    batch = task.sample_batch(data, jax.random.PRNGKey(1))
    loss, aux = task.loss_and_aux(params, batch)
    assert task.name == "my_softmax" and task.num_params() == 650
    assert batch["image"].shape == (64, 8, 8, 1) and np.isfinite(float(loss)) and 0 <= float(aux["accuracy"]) <= 1
