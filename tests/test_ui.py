"""The running app (`hubbot serve`, local mode) driven end to end with gradio_client: validate a
good and a bad recipe, submit, follow to done and find the merged model in its folder. Errors
come back as readable messages, never as stack traces."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")

# The API's outputs of /submit and /follow, in order (buttons, tabs and session state are not part of it).
SUBMIT = ("status", "job_id", "stored_job", "job", "result", "files", "log", "timer", "job_recipe", "jobs", "curves",
          "legend")
FOLLOW = ("job_id", "stored_job", "job", "result", "files", "log", "timer", "job_recipe", "jobs")


@pytest.fixture(scope="module")
def client(space_app):
    from gradio_client import Client

    return Client(space_app.url, verbose=False)


@pytest.fixture(scope="module")
def tiny(families):
    return families("llama")


def soup(a: Path, b: Path, weight: float = 0.5) -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: {weight}}}\n"
            f"  - model: {b}\n    parameters: {{weight: {1 - weight}}}\ndtype: bfloat16\n")


def named(values, names) -> dict:
    assert len(values) == len(names), values
    return dict(zip(names, values))


def no_traceback(*texts) -> None:
    for text in texts:
        assert "Traceback" not in str(text) and 'File "' not in str(text)


def follow_until_done(client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        out = named(client.predict(job_id, api_name="/follow"), FOLLOW)
        if 'data-state="done"' in out["job"] or 'data-state="failed"' in out["job"]:
            return out
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {out['job']}"
        time.sleep(0.5)


def test_validate_a_good_recipe_shows_the_plan(client, tiny):
    base, ft1, _ = tiny
    recipe = f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {ft1}\nparameters:\n  t: [0, 1]\n"
    text, plot, legend = client.predict(recipe, api_name="/validate")
    assert "Ready to merge" in text
    assert str(ft1) in text and "local folder" in text  # models, with where they come from
    assert "Estimated time" in text and "Peak memory" in text and " KB" in text  # sizes of a tiny model
    assert plot["visible"] is True
    rows = plot["value"]["data"]
    assert len({r[2] for r in rows}) == 1 and rows[0][2].startswith("t")  # every tensor follows one curve
    assert rows[0][1] == 0.0 and rows[-1][1] == 1.0
    assert f"</i>{rows[0][2]}</span>" in legend["value"]  # named under the plot


@pytest.mark.parametrize("recipe, expected", [
    ("merge_method: slerpp\nmodels: [{model: a/b}]\n", "did you mean 'slerp'"),
    ("merge_method: linear\nmodels:\n  - model: a/b\n   parameters: {weight: 1}\n", "not valid YAML at line"),
    ("merge_method: ties\nmodels: [{model: ./no/such/folder, parameters: {weight: 1}}]\n", "base_model"),
])
def test_validate_a_bad_recipe_lists_problems(client, recipe, expected):
    text, plot, _ = client.predict(recipe, api_name="/validate")
    assert "to fix" in text and expected in text.replace("\\", "")
    assert plot["visible"] is False
    no_traceback(text)


def test_validate_reports_mismatched_models(client, families):
    llama, qwen = families("llama")[1], families("qwen2")[1]
    text, *_ = client.predict(soup(llama, qwen), api_name="/validate")
    assert "to fix" in text and "architectures" in text


def test_submit_follow_to_done_and_find_the_result(client, tiny):
    _, ft1, ft2 = tiny
    out = named(client.predict(soup(ft1, ft2, 0.3), "", False, False, api_name="/submit"), SUBMIT)
    assert "Submitted" in out["status"] and "local folder" in out["status"]
    job_id = out["job_id"]
    assert job_id and out["stored_job"] == job_id  # remembered by the browser, so a reload follows it again
    assert job_id in json.dumps(out["jobs"])

    done = follow_until_done(client, job_id)
    assert 'data-state="done"' in done["job"], done
    assert "width:100.0%" in done["job"]
    assert done["log"].strip()
    assert done["timer"]["active"] is False  # polling stops at the end
    folder = Path(re.search(r"Saved to\*\* `([^`]+)`", done["result"]).group(1))
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert "mergekit_config.yml" in {p.name for p in folder.iterdir()}

    jobs = client.predict(api_name="/jobs")
    row = next(r for r in jobs["data"] if r[0] == job_id)
    assert row[1] == "Done" and row[2] == "linear" and row[3] == "local folder"


def test_rejected_submission_is_explained(client):
    out = client.predict("merge_method: linear\nmodels: [{model: a/b, parameters: {wieght: 1}}]\n", "", False, False,
                         api_name="/submit")
    status = out[0]
    assert "Not submitted" in status and "did you mean 'weight'" in status.replace("\\", "")
    no_traceback(*out)


def test_unknown_job_and_bad_target_are_readable(client, tiny):
    out = named(client.predict("no-such-job", api_name="/follow"), FOLLOW)
    assert "No such job" in out["result"]
    out = client.predict(soup(tiny[1], tiny[2]), "not a repo id", False, False, api_name="/submit")
    assert "Not submitted" in out[0] and "namespace/name" in out[0]
    no_traceback(*out)


def test_gallery_search_lists_the_configured_folder(client):
    table = client.predict("soup", "All tags", api_name="/gallery")[0]
    assert [r[0] for r in table["data"]] == ["Tiny llama soup"]
    table = client.predict("", "slerp", api_name="/gallery")[0]
    assert [r[1] for r in table["data"]] == ["slerp"]


def test_share_and_watch_explain_what_is_missing(client, tiny):
    text = client.predict(soup(tiny[1], tiny[2]), "", "", "", "dataset", api_name="/share")
    assert "Nowhere to share" in text or "title" in text
    text = client.predict(soup(tiny[1], tiny[2]), "", False, False, api_name="/watch")[0]
    assert "Name the result repo" in text
    no_traceback(text)


def test_publish_to_the_hub_with_the_users_token(space_app, hub, tiny):
    """A signed-in user's token goes with the request to the service, which pushes the merge to
    the Hub stand-in; the page links the repo and never shows the token."""
    from gradio_client import Client

    from tests.hub_fixtures import ALICE_TOKEN

    client = Client(space_app.url, verbose=False, oauth_token=ALICE_TOKEN)
    out = named(client.predict(soup(tiny[1], tiny[2], 0.4), "alice/tiny-soup", False, False, api_name="/submit"),
                SUBMIT)
    assert "Submitted" in out["status"] and "alice/tiny-soup" in out["status"]
    done = follow_until_done(client, out["job_id"])
    assert 'data-state="done"' in done["job"], done
    assert "Published" in done["result"] and "alice/tiny-soup" in done["result"]
    files = hub.repo_files("alice/tiny-soup")
    assert {"README.md", "config.json", "mergekit_config.yml"} <= set(files)
    assert any(name.endswith(".safetensors") for name in files)
    assert ALICE_TOKEN not in json.dumps(out) + json.dumps(done)
