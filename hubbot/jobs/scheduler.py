"""The service's clock: APScheduler runs the dispatcher, watch polling, cron schedules, discussion
replies and housekeeping, with its own jobs kept in the store's database.

APScheduler persists a job as a reference to a module-level function plus its arguments, so
the functions below take the store URL and find this process's running `Runtime` by it.
"""

from __future__ import annotations

import logging
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from .service import Service, cron_trigger
from .store import now
from .supervisor import Supervisor
from .webhooks import post_reports

log = logging.getLogger("hubbot.jobs")

_RUNTIMES: dict[str, "Runtime"] = {}
HOUSEKEEPING_HOURS = 1.0


def dispatch(key: str) -> None:
    if (rt := _RUNTIMES.get(key)) is not None:
        rt.dispatch()


def poll_watches(key: str) -> None:
    if (rt := _RUNTIMES.get(key)) is not None:
        rt.service.poll_watches()


def housekeeping(key: str) -> None:
    if (rt := _RUNTIMES.get(key)) is not None:
        log.info("housekeeping: %s", rt.service.housekeeping())


def run_schedule(key: str, schedule_id: str) -> None:
    if (rt := _RUNTIMES.get(key)) is not None:
        rt.service.run_schedule(schedule_id)


class Runtime:
    """The scheduler and the supervisor around one Service, started and stopped together."""

    def __init__(self, service: Service, *, workers: bool = True):
        self.service = service
        self.settings = service.settings
        self.key = service.store.url
        self.supervisor = (Supervisor(self.settings, service.store, tokens=service.token_for,
                                      held=service.held_tokens) if workers else None)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=service.store.engine, tablename="hubbot_scheduler")},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone="UTC",
        )

    def start(self) -> None:
        # A tick that outlasts its interval is skipped, as intended; do not log each skip.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        _RUNTIMES[self.key] = self
        failed = self.service.fail_lost_tokens()
        if failed:
            log.warning("%d jobs needed sign-in tokens lost in a restart and were failed", len(failed))
        self.scheduler.start()
        s = self.settings
        self._every("dispatch", dispatch, s.dispatch_seconds, first=True)
        self._every("poll-watches", poll_watches, s.poll_seconds)
        self._every("housekeeping", housekeeping, HOUSEKEEPING_HOURS * 3600, first=True)
        wanted = {f"schedule-{row['id']}": row for row in self.service.store.schedules()}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("schedule-") and job.id not in wanted:
                job.remove()
        for row in wanted.values():
            self.add_schedule(row)
        self.service.scheduler = self

    def _every(self, job_id: str, func: Any, seconds: float, first: bool = False) -> None:
        start = {"next_run_time": now()} if first else {}  # (next_run_time=None would pause the job)
        self.scheduler.add_job(func, "interval", seconds=seconds, id=job_id, args=[self.key], replace_existing=True,
                               misfire_grace_time=max(1, int(seconds)), **start)

    def add_schedule(self, row: Any) -> None:
        self.scheduler.add_job(run_schedule, cron_trigger(row["cron"]), id=f"schedule-{row['id']}",
                               args=[self.key, row["id"]], replace_existing=True)

    def dispatch(self) -> None:
        """One dispatcher tick: run the queue, then post finished jobs' outcomes."""
        if self.supervisor is not None:
            self.supervisor.tick()
        post_reports(self.service)
        self.service.forget_finished_tokens()

    def stop(self) -> None:
        self.service.scheduler = None
        self.scheduler.shutdown(wait=True)
        if self.supervisor is not None:
            self.supervisor.stop()
        _RUNTIMES.pop(self.key, None)
