"""The page's handlers called directly, without a browser or a server: each returns (or, while it
waits, yields) the updates of the components it changes, keyed by the page's components."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")

from hubbot.app import views  # noqa: E402
from hubbot.app.estimates import estimate  # noqa: E402
from hubbot.app.ui import STARTER, build_app  # noqa: E402
from hubbot.jobs.settings import Settings  # noqa: E402
from tests.fake_service import FakeService  # noqa: E402

RECIPE = ("merge_method: linear\nmodels:\n  - {model: org/a, parameters: {weight: 1}}\n"
          "  - {model: org/b, parameters: {weight: 1}}\n")


@pytest.fixture
def app(tmp_path):
    service = FakeService(steps_per_poll=100)
    demo, handlers = build_app(service, Settings.from_env({}, data_dir=tmp_path))
    return service, handlers, handlers.p


def last(updates):
    """The final update of a handler that yields progress first."""
    out = None
    for out in updates:
        pass
    return out


def test_validate_updates_the_one_status_and_the_plot(app):
    _, h, p = app
    out = last(h.validate(RECIPE))
    assert "Ready to merge" in out[p.status] and out[p.checked] == RECIPE
    assert out[p.curves].visible is False


def test_an_edit_marks_the_status_stale_once(app):
    _, h, p = app
    assert p.status not in h.edited(RECIPE, RECIPE)  # nothing changed
    out = h.edited(RECIPE + "# more\n", RECIPE)
    assert "Edited since the last check" in out[p.status] and out[p.checked] is None
    assert out[p.curves].visible is False
    assert p.status not in h.edited(RECIPE + "# more still\n", None)  # already stale


def test_submit_then_follow_to_done(app):
    service, h, p = app
    out = last(h.submit(RECIPE, "", False, False, "", None, None))
    assert "Submitted" in out[p.status] and out[p.job_id] == out[p.job_store]
    assert out[p.job_recipe] == RECIPE  # the job view shows the recipe it runs
    job_id = out[p.job_id]
    for _ in range(3):
        out = h.follow(job_id, out[p.logs_state], None)
    assert 'data-state="done"' in out[p.job_view] and "Saved to" in out[p.result]
    assert out[p.timer].active is False


def test_resubmitting_names_the_identical_job(app):
    service, h, p = app
    first = last(h.submit(RECIPE, "", False, False, "", None, None))[p.job_id]
    service.submit = lambda *a, **k: service.jobs[first]  # the real service returns the existing job
    service.jobs[first].created_at -= timedelta(minutes=5)
    out = last(h.submit(RECIPE, "", False, False, "", None, None))
    assert "Identical merge exists" in out[p.status] and f"?job={first}" in out[p.status]
    assert "Submitted" not in out[p.status]


def test_follow_an_unknown_job(app):
    _, h, p = app
    out = h.follow("nope", None, None)
    assert "No such job" in out[p.result] and out[p.timer].active is False


def test_loading_a_recipe_asks_before_replacing_edits(app):
    _, h, p = app
    out = h.form_to_editor("linear", "", [["org/a", "1", ""], ["org/b", "1", ""]], [["", "", ""]], "bfloat16", "",
                           STARTER, STARTER)
    assert "merge_method: linear" in out[p.editor]  # the starter untouched: replaced at once
    out = h.form_to_editor("linear", "", [["org/a", "1", ""]], [["", "", ""]], "bfloat16", "",
                           "merge_method: ties  # mine\n", STARTER)
    assert p.editor not in out and out[p.confirm_box].visible is True
    out = h.replace(out[p.pending])
    assert "merge_method: linear" in out[p.editor] and out[p.confirm_box].visible is False
    assert out[p.pristine] == out[p.editor]


def test_form_row_buttons_keep_the_columns(app):
    _, h, p = app
    rows = [["org/a", "1", ""]]
    added = h.add_model(rows, "linear")[p.form_models]
    assert len(added.value["data"]) == 2 and added.value["headers"] == ["model", "weight", "layers"]
    assert len(h.remove_model(added.value["data"], "linear")[p.form_models].value["data"]) == 1
    assert len(h.remove_model(rows, "linear")[p.form_models].value["data"]) == 1  # one row always stays


def test_gallery_search_without_match_says_so_and_forgets_the_pick(app):
    _, h, p = app
    out = h.search_gallery("no such recipe anywhere", "All tags", "some-slug")
    assert out[p.gallery_table] == [] and "No recipe matches" in out[p.gallery_note]
    assert out[p.picked_slug] == ""


def test_method_summaries_render_code_spans():
    assert views.md_code("keeps `t` of a_b") == "keeps `t` of a\\_b"


def test_estimates_use_the_machines_past_jobs():
    now = datetime.now(timezone.utc)
    job = SimpleNamespace(recipe="merge_method: ties\n", state="done", progress={"bytes_total": 1_000_000_000},
                          started_at=now - timedelta(seconds=50), finished_at=now)
    guess = estimate("ties", 2_000_000_000, 2.0, [job])
    assert guess.seconds == pytest.approx(100) and "1 recent ties merge" in guess.basis
    rough = estimate("slerp", 2_000_000_000, 2.0, [job])
    assert rough.seconds == 2.0 and "rough" in rough.basis


def test_a_space_without_the_oauth_packages_says_what_is_missing(tmp_path, monkeypatch):
    from hubbot.app import ui
    from hubbot.errors import HubbotError

    monkeypatch.setattr(ui, "get_space", lambda: "someone/hubbot")
    monkeypatch.setattr(ui, "oauth_missing", lambda: ["authlib"])
    with pytest.raises(HubbotError, match=r"gradio\[oauth\].*authlib"):
        build_app(FakeService(), Settings.from_env({}, data_dir=tmp_path))


def test_a_slow_check_says_what_it_waits_for(app, monkeypatch):
    import time

    service, h, p = app
    slow = service.validate
    monkeypatch.setattr(service, "validate", lambda text: (time.sleep(1.6), slow(text))[1])
    updates = list(h.validate(RECIPE))
    waiting = [u[p.status] for u in updates[:-1]]
    assert waiting and "Checking the recipe" in waiting[0] and "org/a" in waiting[0] and "config.json" in waiting[0]
    assert "Ready to merge" in updates[-1][p.status]


def test_cancel_asks_first(app):
    service, h, p = app
    job_id = last(h.submit(RECIPE, "", False, False, "", None, None))[p.job_id]
    assert h.ask_cancel()[p.cancel_box].visible is True
    assert service.jobs[job_id].state != "cancelled"  # only "Yes, cancel it" cancels
    out = h.cancel(job_id, None, None)
    assert 'data-state="cancelled"' in out[p.job_view] and out[p.cancel_box].visible is False


def test_the_plot_names_filters_and_shows_the_fallback_rule(app, monkeypatch):
    service, h, p = app
    text = ("merge_method: slerp\nbase_model: org/a\nmodels:\n  - model: org/a\n  - model: org/b\nparameters:\n"
            "  t:\n    - filter: self_attn\n      value: [0, 1]\n    - value: 0.5\n")
    valid = service.validate(text)
    valid.curves = {"t · self_attn.q_proj.weight (+3)": [0.0, 0.5, 1.0]}
    monkeypatch.setattr(service, "validate", lambda _: valid)
    out = last(h.validate(text))
    frame = out[p.curves].value
    names = {row[2] for row in frame["data"]}
    assert names == {"t · self_attn", "t · other tensors"}
    colors = out[p.curves].color_map  # the legend under the plot names each curve in the plot's colour
    assert set(colors) == names and all(f"background:{c}" in out[p.legend].value for c in colors.values())
    assert all(isinstance(row[0], int) for row in frame["data"])  # whole layers


def test_the_hardware_picker_follows_the_backend(tmp_path):
    from hubbot.app.ui import AUTO_FLAVOR

    local = build_app(FakeService(), Settings.from_env({}, data_dir=tmp_path))[1]
    assert local.flavor_choices() == []  # local backend: no picker
    env = {"HUBBOT_BACKEND": "auto", "HUBBOT_JOBS_FLAVORS": "cpu-upgrade,a10g-small"}
    demo, h = build_app(FakeService(steps_per_poll=100), Settings.from_env(env, data_dir=tmp_path))
    assert h.flavor_choices() == [AUTO_FLAVOR, ("cpu-upgrade", "cpu-upgrade"), ("a10g-small", "a10g-small")]
    picker = demo.config["components"]
    shown = next(c for c in picker if c["props"].get("elem_id") == "hardware")["props"]
    assert shown["visible"] is not False and shown["label"] == "Hardware"
    last(h.submit(RECIPE, "me/merged", False, False, "a10g-small", None, None))
    assert h.service.submitted[-1]["flavor"] == "a10g-small"  # the pick reaches the submission
    last(h.submit(RECIPE, "me/other", False, False, "", None, None))
    assert h.service.submitted[-1]["flavor"] is None  # auto: the service decides


def test_the_form_offers_a_ternary_output(app):
    _, h, p = app
    out = h.form_to_editor("linear", "", [["org/a", "1", ""], ["org/b", "1", ""]], [["", "", ""]], "bfloat16",
                           "ternary", STARTER, STARTER)
    assert "out_dtype: ternary" in out[p.editor]
