"""Restart safety with real processes: `hubbot serve` and its worker are killed with SIGKILL in
the middle of merges; after a restart every job finishes exactly once, resuming from its
finished shards, and its output is byte for byte the output of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from hubbot.jobs.service import Service
from hubbot.jobs.settings import Settings
from hubbot.jobs.worker import TEST_DELAY_ENV
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from tests.jobkit import linear, same_files, ties, wait_for

ROOT = Path(__file__).resolve().parent.parent
SHARD_BYTES = 40_000  # the tiny model's ~380 KB output becomes about ten shards


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Server:
    """`hubbot serve --no-ui` in a subprocess, its output in a file for post-mortems."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "hubbot.cli", "serve", "--no-ui"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def check(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, \
            "the server exited:\n" + self.log.read_text()[-3000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def test_kill9_of_worker_and_server_mid_merge(families, tmp_path):
    base, ft1, ft2 = families("llama")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HUBBOT_DATA_DIR": str(tmp_path / "data"),
           "HUBBOT_SHARD_BYTES": str(SHARD_BYTES), "HUBBOT_LEASE_SECONDS": "2", "HUBBOT_DISPATCH_SECONDS": "0.2",
           "HUBBOT_PORT": str(free_port()), TEST_DELAY_ENV: "0.1"}
    env.pop("HF_TOKEN", None)
    service = Service(Settings.from_env(env))
    recipes = [linear(ft1, ft2, 0.3), ties(base, ft1, ft2), linear(ft1, ft2, 0.8)]
    jobs = [service.submit(r).id for r in recipes]
    a, b, c = jobs

    def job(job_id: str):
        server.check()
        return service.store.get(job_id)

    def midway(job_id: str) -> bool:
        row = job(job_id)
        return row["state"] == "running" and (row["progress"] or {}).get("tensors_done", 0) >= 10

    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        # 1. The worker dies (as in an out-of-memory kill) in the middle of job a.
        wait_for(lambda: midway(a), 90, what="job a to be midway")
        os.kill(job(a)["worker_pid"], signal.SIGKILL)
        # 2. The whole service dies in the middle of job b; its worker must not outlive it.
        wait_for(lambda: midway(b), 90, what="job b to be midway")
        b_worker = job(b)["worker_pid"]
        server.kill()
        wait_for(lambda: not alive(b_worker), 30, what="job b's worker to exit with its server")
        assert service.store.get(b)["state"] == "running", "nobody is left to notice yet"
        # 3. A restart finds b (once its lease lapses), then runs c, in order.
        server.start()
        wait_for(lambda: all(job(j)["state"] in ("done", "failed", "cancelled") for j in jobs), 120,
                 what="every job to finish")
    finally:
        server.stop()

    for job_id, recipe, attempts in zip(jobs, recipes, (2, 2, 1)):
        done = service.get(job_id)
        log = service.log(job_id)
        assert done.state == "done", (done.error, log)
        assert done.attempts == attempts, log
        assert sum("merged:" in line for line in log) == 1, "the merge completed exactly once"
        assert sum(line.endswith(" done") for line in log) == 1
        if attempts == 2:
            assert any("kept from the interrupted run" in line for line in log), log
        reference = tmp_path / f"reference-{job_id}"
        engine.run(build(parse(recipe)), reference, device="cpu", shard_bytes=SHARD_BYTES)
        folder = Path(done.result["folder"])
        assert "## Merge facts" in (folder / "README.md").read_text(), "the card (with run timings) is written"
        same_files(folder, reference, ignore=("README.md",))
    assert sorted(p.name for p in (tmp_path / "data" / "jobs").iterdir()) == sorted(jobs)
