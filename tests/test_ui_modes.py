"""The page's rules around signing in and tokens, checked against an in-memory service: on a Space
(service mode) publishing needs a signed-in user; a token reaches the service for the request
only and never comes back in the page."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")

from hubbot.app.ui import build_ui, launch_options  # noqa: E402
from hubbot.jobs.settings import Settings  # noqa: E402
from tests.app_server import free_port  # noqa: E402
from tests.fake_service import FakeService  # noqa: E402

RECIPE = "merge_method: linear\nmodels:\n  - {model: org/a, parameters: {weight: 1}}\n  - {model: org/b, parameters: {weight: 1}}\n"
TOKEN = "hf_secret_user_token"


def _serve(service: FakeService, settings: Settings):
    demo = build_ui(service, settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    return demo, f"http://127.0.0.1:{port}"


@pytest.fixture(params=["local", "service"])
def app(request, tmp_path):
    from gradio_client import Client

    service = FakeService()
    settings = Settings.from_env({}, data_dir=tmp_path, service=request.param == "service")
    demo, url = _serve(service, settings)
    try:
        yield request.param, service, Client(url, verbose=False, oauth_token=TOKEN)
    finally:
        demo.close()


def test_publishing_rules_and_token_handling(app):
    mode, service, client = app
    assert "Ready to merge" in client.predict(RECIPE, api_name="/validate")[0]  # validating needs no account
    out = client.predict(RECIPE, "me/merged", False, False, api_name="/submit")
    if mode == "service":
        assert "Sign in to publish" in out[0]
        assert service.submitted == []
        assert "Sign in to watch" in client.predict(RECIPE, "me/merged", False, False, api_name="/watch")[0]
    else:
        assert "Submitted" in out[0]
        assert service.submitted == [dict(owner=None, target="me/merged", private=False, pr=False, token=TOKEN, flavor=None)]
        watched = client.predict(RECIPE, "me/merged", False, True, api_name="/watch")
        assert "Watching" in watched[0] and "as pull requests" in watched[0] and "`0123456789ab`" in watched[0]
        assert watched[1] in service.jobs  # the first run, followed in the Jobs tab
        assert service.watches[-1]["token"] == TOKEN
    assert TOKEN not in repr(out)


def test_local_mode_without_target_saves_to_a_folder(tmp_path):
    from gradio_client import Client

    service = FakeService(steps_per_poll=100)
    demo, url = _serve(service, Settings.from_env({}, data_dir=tmp_path))
    try:
        client = Client(url, verbose=False)
        out = client.predict(RECIPE, "  ", True, False, api_name="/submit")
        assert "local folder" in out[0] and service.submitted[-1]["target"] is None
        job_id = out[1]
        for _ in range(5):
            follow = client.predict(job_id, api_name="/follow")
        assert "Saved to" in follow[3]
        out = client.predict(RECIPE, "", False, False, api_name="/submit")
        cancelled = client.predict(out[1], api_name="/cancel")
        assert 'data-state="cancelled"' in cancelled[2] and "Nothing was published" in cancelled[3]
    finally:
        demo.close()
