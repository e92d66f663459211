"""Run the app as users do, for end-to-end tests: `hubbot serve` in a subprocess (UI, API,
scheduler and worker) on a free port, with its data and gallery in temporary folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_gallery(folder: Path, base: Path | str, ft1: Path | str, ft2: Path | str) -> Path:
    """A gallery of recipes over local tiny models (the real gallery names Hub models this
    machine cannot reach), named by their paths, absolute or relative to the server's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-soup.yml").write_text(f"""\
# title: Tiny llama soup
# description: An even average of two tiny Llama fine-tunes, for trying the app without a network.
# tags: linear, soup, tiny
# models: {ft1}, {ft2}
merge_method: linear
models:
  - model: {ft1}
    parameters:
      weight: 0.5
  - model: {ft2}
    parameters:
      weight: 0.5
dtype: bfloat16
""")
    (folder / "tiny-slerp.yml").write_text(f"""\
# title: Tiny llama SLERP with a curve
# description: SLERP from the tiny base to a fine-tune, with t rising over the layers.
# tags: slerp, gradient, tiny
# models: {base}, {ft1}
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {ft1}
parameters:
  t: [0, 0.5, 1]
dtype: bfloat16
""")
    return folder


class AppServer:
    """`hubbot serve` on 127.0.0.1:<free port>; its output goes to `log` for failure reports."""

    def __init__(self, data_dir: Path, recipes_dir: Path, env: dict[str, str] | None = None):
        self.data_dir, self.recipes_dir = data_dir, recipes_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "AppServer":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "HUBBOT_RECIPES_DIR": str(self.recipes_dir), "HUBBOT_DISPATCH_SECONDS": "0.2",
               "HUBBOT_DEVICE": "cpu", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **self.extra_env}
        for name in ("SPACE_ID", "SYSTEM", "HUBBOT_MODE", "HF_TOKEN"):
            if name not in self.extra_env:
                env.pop(name, None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubbot.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data", str(self.data_dir)], cwd=self.data_dir.parent, env=env, stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hubbot serve exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        with urllib.request.urlopen(self.url + "/", timeout=10):
                            return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"hubbot serve did not answer within {timeout:.0f} s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
