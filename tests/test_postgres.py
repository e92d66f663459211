"""One queue for several machines: a server and two `hubbot worker` processes share a PostgreSQL
store. Schema creation races, concurrent submissions and a worker killed mid-merge leave every
job run exactly once. Needs Debian's PostgreSQL server (scripts/test installs it); CI never
skips these tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hubbot.jobs.service import Service
from hubbot.jobs.settings import Settings
from hubbot.jobs.store import Store, display_url
from hubbot.jobs.worker import TEST_DELAY_ENV
from tests.jobkit import linear, ties, wait_for
from tests.postgres import Postgres, binaries

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def postgres():
    bindir = binaries()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing; scripts/test installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    server = Postgres(bindir).start()
    yield server
    server.stop()


def test_store_url_password_is_masked():
    url = "postgresql+psycopg://hubbot:s3cret-pass@db.example:5432/jobs"
    assert "s3cret-pass" not in display_url(url) and "db.example" in display_url(url)
    settings = Settings.from_env({"HUBBOT_STORE_URL": url}, data_dir=Path("/tmp/unused"))
    assert "s3cret-pass" not in repr(settings)


def test_schema_created_once_by_processes_starting_together(postgres):
    """Four processes open an empty database at the same instant, three times over: none fails."""
    for attempt in range(3):
        url = postgres.create_database(f"race{attempt}")
        start_at = time.time() + 3
        code = ("import time, sys\n"
                "from hubbot.jobs.store import Store\n"
                f"time.sleep(max(0, {start_at} - time.time()))\n"
                "Store(sys.argv[1]).close()\n")
        procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(4)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(errors)
        store = Store(url)
        assert store.list() == [] and store.queue() == []
        store.close()


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hubbot.cli", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_server_and_two_workers_run_every_job_exactly_once(postgres, families, tmp_path):
    base, ft1, ft2 = families("llama")
    url = postgres.create_database("queue")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HUBBOT_DATA_DIR": str(tmp_path / "data"),
           "HUBBOT_STORE_URL": url, "HUBBOT_SHARD_BYTES": "40000", "HUBBOT_LEASE_SECONDS": "2",
           "HUBBOT_DISPATCH_SECONDS": "0.2", "HUBBOT_PORT": "0", TEST_DELAY_ENV: "0.02"}
    env.pop("HF_TOKEN", None)
    settings = Settings.from_env(env)
    server_log, logs = tmp_path / "server.log", [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    with open(server_log, "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "hubbot.cli", "serve", "--no-ui", "--port", "0"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    workers = [_worker(env, log) for log in logs]
    try:
        service = Service(settings)
        recipes = [linear(ft1, ft2, round(0.1 + 0.08 * i, 2)) for i in range(8)] + [ties(base, ft1, ft2)]
        ids: list[str] = []
        lock = threading.Lock()

        def submit(text: str) -> None:
            job = Service(settings).submit(text)
            with lock:
                ids.append(job.id)

        threads = [threading.Thread(target=submit, args=(r,)) for r in recipes]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(set(ids)) == len(recipes)

        def victim() -> str | None:
            """A job running in the first `hubbot worker`'s process tree, midway."""
            for row in service.store.list(states=("running",)):
                if row["worker_pid"] and _parent(row["worker_pid"]) == workers[0].pid \
                        and (row["progress"] or {}).get("tensors_done", 0) >= 5:
                    return row["id"]
            return None

        killed = wait_for(victim, 120, what="a job midway in the first worker")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        wait_for(lambda: all(service.store.get(i)["state"] in ("done", "failed", "cancelled") for i in ids), 240,
                 what="every job to finish")
        assert server.poll() is None, server_log.read_text()[-3000:]
    finally:
        for p in (server, *workers):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)

    for job_id in ids:
        job, log = service.get(job_id), service.log(job_id)
        assert job.state == "done", (job.error, log)
        assert sum("merged:" in line for line in log) == 1, ("merged exactly once", log)
        assert sum(line.endswith(" done") for line in log) == 1, log
    assert service.get(killed).attempts == 2, service.log(killed)
    output = "".join(p.read_text(errors="replace") for p in logs)
    assert "jobs from postgresql+psycopg://hubbot@" in output and "Traceback" not in output
