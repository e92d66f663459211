"""The page's handlers called directly, without a browser or a server: each returns the updates
of the components it changes, keyed by the page's components."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")

from hubbot.app.ui import build_app  # noqa: E402
from hubbot.jobs.settings import Settings  # noqa: E402
from tests.fake_service import FakeService  # noqa: E402

RECIPE = ("merge_method: linear\nmodels:\n  - {model: org/a, parameters: {weight: 1}}\n"
          "  - {model: org/b, parameters: {weight: 1}}\n")


@pytest.fixture
def app(tmp_path):
    service = FakeService(steps_per_poll=100)
    demo, handlers = build_app(service, Settings.from_env({}, data_dir=tmp_path))
    return service, handlers, handlers.p


def test_validate_updates_the_status_and_the_plot(app):
    _, h, p = app
    out = h.validate(RECIPE)
    assert "Ready to merge" in out[p.validation]
    assert out[p.curves].visible is False


def test_submit_then_follow_to_done(app):
    service, h, p = app
    out = h.submit(RECIPE, "", False, False, None, None)
    assert "Submitted" in out[p.submit_status] and out[p.job_id] == out[p.job_store]
    job_id = out[p.job_id]
    for _ in range(3):
        out = h.follow(job_id, out[p.logs_state], None)
    assert 'data-state="done"' in out[p.job_view] and "Saved to" in out[p.result]
    assert out[p.timer].active is False


def test_follow_an_unknown_job(app):
    _, h, p = app
    out = h.follow("nope", None, None)
    assert "No such job" in out[p.result] and out[p.timer].active is False


def test_form_writes_the_editor(app):
    _, h, p = app
    out = h.form_to_editor("linear", "", [["org/a", "1", ""], ["org/b", "1", ""]], [["", "", ""]], "bfloat16")
    assert "merge_method: linear" in out[p.editor]
