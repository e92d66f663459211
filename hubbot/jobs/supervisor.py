"""The supervisor: claims queued jobs and runs each in a worker process.

At most `worker_slots` workers run at once (one GPU job at a time by default). Each tick it
reaps finished workers (a worker that died leaves its job to be re-queued or failed), stops
workers whose job was cancelled, renews its jobs' leases, takes over jobs whose lease lapsed
(their server or worker died) and starts new workers. It runs inside `hubbot serve` (driven by
the scheduler) or alone as `hubbot worker`.

A worker gets only the secrets its job needs: the user's token for a user's job, the service's
own token only for jobs that publish with it (bot, watch and schedule runs; locally, the
machine's login). Its environment is the server's minus every token and secret, and its output
reaches worker.log through a pump that blanks any secret this process knows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable

from ..redact import install_log_redaction, redact, remember
from .remote import worker_module
from .service import settle_lost_tokens
from .settings import Settings
from .store import Store, new_id

log = logging.getLogger("hubbot.jobs")

STOP_GRACE_S = 10.0  # after SIGTERM (cancel), a worker gets this long before SIGKILL
SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|API_KEY|ACCESS_KEY)(?:_|$)", re.I)


@dataclass
class _Run:
    job_id: str
    claim: str
    proc: subprocess.Popen
    pump: threading.Thread
    stop_sent: float | None = None


class Supervisor:
    """Runs claimed jobs in worker processes.

    `tokens` and `held` give access to the users' tokens that this process keeps in memory
    (the server's Service); a supervisor without them (`hubbot worker`) runs only jobs that
    need no user token and leaves those that do to the server.
    """

    def __init__(self, settings: Settings, store: Store, *, tokens: Callable[[str], str | None] | None = None,
                 held: Callable[[], set[str]] | None = None):
        self.settings, self.store = settings, store
        remember(settings.hub_token, settings.webhook_secret)
        install_log_redaction()
        self.tokens, self.held = tokens, held
        self.runs: dict[str, _Run] = {}  # by claim
        self._lock = threading.Lock()
        self._stopped = False

    def tick(self) -> None:
        with self._lock:
            if self._stopped:  # a tick that began as the service stopped starts nothing
                return
            self._reap()
            self._stop_cancelled()
            self.store.renew(self.runs, self.settings.lease_seconds)
            self._recover()
            self._fill()

    def _fill(self) -> None:
        held = self.held() if self.held else set()
        while len(self.runs) < self.settings.worker_slots:
            claim = new_id()
            row = self.store.claim(claim, self.settings.lease_seconds, held_tokens=held,
                                   running_per_owner=self.settings.limits.running_per_owner)
            if row is None:
                return
            self._spawn(row, claim)

    def _spawn(self, row, claim: str) -> None:
        job_id = row["id"]
        work = self.settings.jobs_dir / job_id
        work.mkdir(parents=True, exist_ok=True)
        token = self.tokens(job_id) if row["token_source"] == "user" and self.tokens else None
        proc = subprocess.Popen([sys.executable, "-m", worker_module(row), "--job", job_id], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                env=worker_env(os.environ, local=self.settings.local))
        pump = threading.Thread(target=_pump, args=(proc.stdout, work / "worker.log"), name=f"hubbot-log-{job_id}",
                                daemon=True)
        pump.start()
        self.runs[claim] = _Run(job_id, claim, proc, pump)
        settings = worker_settings(self.settings, row["token_source"])
        try:  # one line, then stdin stays open: it is the worker's lifeline
            proc.stdin.write((json.dumps({"settings": settings.to_dict(), "claim": claim, "token": token})
                              + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; the next reap handles it
        self.store.set_pid(job_id, claim, proc.pid)
        self.store.log(job_id, f"attempt {row['attempts']}: started worker process {proc.pid}")

    def _reap(self) -> None:
        for claim, run in list(self.runs.items()):
            rc = run.proc.poll()
            if rc is None:
                continue
            self._close(claim)
            # A worker that closed its job is not holding it any more and release() does nothing.
            self.store.release(run.job_id, claim, max_attempts=self.settings.max_attempts, why=_died(rc))

    def _close(self, claim: str) -> None:
        run = self.runs.pop(claim)
        try:
            run.proc.stdin.close()
        except OSError:
            pass
        run.pump.join(5)  # the worker has exited: its last lines are on their way to worker.log

    def _stop_cancelled(self) -> None:
        for claim in self.store.cancel_requests(self.runs):
            run = self.runs[claim]
            if run.stop_sent is None:
                run.stop_sent = time.monotonic()
                _signal(run.proc, signal.SIGTERM)
            elif time.monotonic() - run.stop_sent > STOP_GRACE_S:
                _signal(run.proc, signal.SIGKILL)

    def _recover(self) -> None:
        """Jobs whose lease lapsed lost their worker (or their whole server): run them again. Those whose
        user token is gone fail, or on Hugging Face Jobs wait for their owner (service.settle_lost_tokens)."""
        held = self.held() if self.held is not None else None
        if held is not None:
            settle_lost_tokens(self.store, held, lapsed_only=True)
        for row in self.store.expired():
            if row["claim"] in self.runs:
                continue
            if row["token_source"] == "user" and (held is None or row["id"] not in held):
                continue  # only the server that keeps tokens decides about these (above)
            self.store.release(row["id"], row["claim"], max_attempts=self.settings.max_attempts,
                               why="its worker stopped answering (the server or the worker was restarted or killed)")

    def stop(self) -> None:
        """Orderly shutdown: stop the workers and put their jobs back in the queue at once
        (they resume from their finished shards; the attempt is not counted)."""
        with self._lock:
            self._stopped = True
            for claim, run in list(self.runs.items()):
                _signal(run.proc, signal.SIGKILL)
                run.proc.wait()
                self._close(claim)
                self.store.release(run.job_id, claim, max_attempts=self.settings.max_attempts,
                                   why="the service stopped", counts=False)

    def run_forever(self, stop: threading.Event) -> None:
        """`hubbot worker`: tick until `stop` is set."""
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:
                    log.exception("supervisor tick failed; trying again")
                stop.wait(self.settings.dispatch_seconds)
        finally:
            self.stop()


def worker_settings(settings: Settings, token_source: str | None) -> Settings:
    """The settings a job's worker gets: never the webhook secret, and the service's Hub token
    only where the job publishes with it (locally the token is the machine user's own)."""
    keep = settings.local or token_source == "service"
    return replace(settings, hub_token=settings.hub_token if keep else None, webhook_secret=None)


def worker_env(env: dict[str, str] | os._Environ, *, local: bool) -> dict[str, str]:
    """The server's environment minus every variable that names a token or secret. In service
    mode the Hub client is also kept from the server's stored login."""
    clean = {k: v for k, v in env.items() if not SECRET_NAME.search(k)}
    if not local:
        clean["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    return clean


def _pump(stream: IO[bytes], path: Path) -> None:
    """Copy a worker's output into its worker.log line by line, redacted."""
    with stream, open(path, "ab") as out:
        for line in iter(stream.readline, b""):
            out.write(redact(line.decode("utf-8", "replace")).encode())
            out.flush()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _died(rc: int) -> str:
    if rc < 0:
        name = signal.Signals(-rc).name
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process ended (exit code {rc}) without finishing the job; see worker.log in the job folder"
