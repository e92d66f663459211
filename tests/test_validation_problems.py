"""Validation reports every problem of every stage that can still run, and says a repeated one
once: a dtype typo does not hide the others, recipe problems do not hide missing models, and
models of different hidden sizes give one line instead of one per tensor."""

from __future__ import annotations

import pytest

from hubbot.jobs.service import Service
from hubbot.jobs.settings import Settings
from tests.models import make_family


@pytest.fixture
def service(tmp_path):
    s = Service(Settings.from_env({}, data_dir=tmp_path / "data"))
    yield s
    s.close()


def test_a_dtype_typo_hides_nothing(service, tmp_path):
    text = (f"merge_method: ties\nbase_model: {tmp_path}/missing-base\nmodels:\n"
            f"  - model: {tmp_path}/missing-a\n    parameters: {{wieght: 1, density: 2}}\n"
            f"  - model: {tmp_path}/missing-b\n    parameters: {{weight: 1, density: 0.5}}\ndtype: bfloat17\n")
    problems = service.validate(text).problems
    assert any("bfloat17" in p for p in problems)
    assert any("did you mean 'weight'" in p for p in problems)
    assert any("density: 2 is outside" in p for p in problems)
    for name in ("missing-base", "missing-a", "missing-b"):  # the model stage still ran
        assert any(name in p and "no such folder" in p for p in problems), problems
    assert len(problems) == 6


def test_different_hidden_sizes_are_one_line(service, tmp_path, families):
    small = families("llama")[1]
    wide = make_family(tmp_path / "wide", variants=0, hidden=96, intermediate=192)[0]
    text = f"merge_method: linear\nmodels:\n  - model: {small}\n    parameters: {{weight: 1}}\n" \
           f"  - model: {wide}\n    parameters: {{weight: 1}}\n"
    problems = service.validate(text).problems
    shapes = [p for p in problems if "shapes differ" in p or "cannot be merged tensor by tensor" in p]
    assert len(shapes) == 1, problems
    assert "hidden size 64 vs 96" in shapes[0]
