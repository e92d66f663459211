"""The Hugging Face Space entry point: the same server as `hubbot serve` (UI, JSON API, webhooks,
scheduler and worker), configured from the Space's environment (service mode on a Space)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import hubbot  # noqa: F401  (on the Space, hubbot/ sits next to this file)
except ModuleNotFoundError:  # in a checkout, this file lives in space/ under the project root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubbot.app.server import serve  # noqa: E402
from hubbot.jobs.settings import Settings  # noqa: E402

if __name__ == "__main__":
    serve(Settings.from_env())
