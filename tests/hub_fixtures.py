"""Pytest wiring for the local Hub stand-in (`tests/hub_server.py`).

How to include it, either way works:

- `tests/conftest.py` declares `pytest_plugins = ["tests.hub_fixtures"]` and does not import `huggingface_hub`
  (nor `transformers`, `datasets`, ...) at module level;
- or the plugin is loaded early, before any conftest (which may then import anything): under
  `[tool.pytest.ini_options]`, `addopts = "-p tests.hub_fixtures"` with `pythonpath = ["."]` (so that bare
  `pytest` finds the module), or `python -m pytest -p tests.hub_fixtures ...` for a one-off run.

Why: `huggingface_hub` reads `HF_ENDPOINT`, `HF_HOME` and friends once, when it is first imported. The hooks
below therefore start one server per test process on a free port and set, before the client is imported:

- `HF_ENDPOINT=http://127.0.0.1:<port>`: every client call, transformers included, goes to the stand-in;
- `HF_HUB_DISABLE_XET=1`: with `hf_xet` installed, uploads would otherwise go to Xet storage, which the
  stand-in does not speak;
- `HF_HUB_DISABLE_TELEMETRY=1`: no telemetry or agent-detection calls in the request log;
- `HF_HOME=<tmp>/hf_home`: a private cache and token store (the `hub` fixture empties the cache per test);
- `HF_HUB_DISABLE_PROGRESS_BARS=1`, and `127.0.0.1` added to `NO_PROXY` so that proxies are bypassed.
It removes tokens, token paths, `HF_HUB_OFFLINE` and cache-location overrides inherited from the shell. No token is
set by default: pass `token=` (see `ALICE_TOKEN`, `BOB_TOKEN`) or use the `alice_api` / `bob_api` fixtures.
If `huggingface_hub` was imported before the server started, `start_session_server` stops the run instead of
letting the suite talk to the wrong endpoint.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.hub_server import HubServer, WebhookReceiver

if TYPE_CHECKING:
    from huggingface_hub import HfApi

ALICE, ALICE_TOKEN = "alice", "hf_alice"
BOB, BOB_TOKEN = "bob", "hf_bob"
ORG = "merge-lab"  # alice is a member

_INHERITED_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HF_HUB_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
)
_session: tuple[HubServer, Path] | None = None


def start_session_server() -> HubServer:
    """Start this process's Hub stand-in (once) and point the client's environment at it."""
    global _session
    if _session is None:
        home = Path(tempfile.mkdtemp(prefix="hubbot-hub-"))
        server = HubServer(home / "server").start()
        for name in _INHERITED_VARS:
            os.environ.pop(name, None)
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        os.environ.update(
            HF_ENDPOINT=server.url,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HOME=str(home / "hf_home"),
            NO_PROXY=no_proxy,
            no_proxy=no_proxy,
        )
        _session = server, home
    server = _session[0]
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and constants.ENDPOINT != server.url:
        raise pytest.UsageError(
            f"huggingface_hub was imported before the Hub stand-in started, so it talks to {constants.ENDPOINT}. "
            "Load tests.hub_fixtures with -p, or keep conftest.py from importing huggingface_hub at module level."
        )
    return server


def stop_session_server() -> None:
    global _session
    if _session is not None:
        server, home = _session
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
        _session = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Loaded with -p, the plugin starts the server before any conftest can import the client."""
    start_session_server()


def pytest_configure(config: pytest.Config) -> None:
    start_session_server()


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_session_server()


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The process-wide server, as is: prefer `hub`, which resets it."""
    return start_session_server()


@pytest.fixture
def hub(hub_server: HubServer) -> Iterator[HubServer]:
    """An empty Hub for this test, with users `alice` (member of org `merge-lab`) and `bob`, and a cold client cache.

    Fails the test if the server hit an internal error while answering (the client would have seen a 500).
    """
    from huggingface_hub import HfFileSystem, constants

    hub_server.reset()
    hub_server.add_user(ALICE, ALICE_TOKEN, orgs=[ORG])
    hub_server.add_user(BOB, BOB_TOKEN)
    shutil.rmtree(constants.HF_HUB_CACHE, ignore_errors=True)
    HfFileSystem.clear_instance_cache()
    yield hub_server
    if errors := hub_server.server_errors:
        pytest.fail("The Hub stand-in failed while answering:\n" + "\n".join(errors))


@pytest.fixture
def alice_api(hub: HubServer) -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(token=ALICE_TOKEN)


@pytest.fixture
def bob_api(hub: HubServer) -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(token=BOB_TOKEN)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A local endpoint to point webhooks at; its `received` list holds what the Hub delivered."""
    with WebhookReceiver() as receiver:
        yield receiver
