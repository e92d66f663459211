"""The service's clock: APScheduler runs the dispatcher, watch polling, cron schedules, discussion
replies and housekeeping for one running Service.

Its jobs are this Runtime's own methods, so each is handed the service and supervisor it works
with. The store is the record of what is scheduled: the schedules are read from it when the
runtime starts and again on every dispatcher tick, so a schedule added through any Service (this
process's or another's on the same store) runs without the Service knowing the scheduler.
"""

from __future__ import annotations

import faulthandler
import logging
from typing import Any, Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from .service import Service, cron_trigger
from .store import now
from .supervisor import Supervisor
from .webhooks import post_reports

log = logging.getLogger("hubbot.jobs")

HOUSEKEEPING_HOURS = 1.0
STOP_REPORT_S = 20.0
SCHEDULE_PREFIX = "schedule-"


class Runtime:
    """The scheduler and the supervisor around one Service, started and stopped together."""

    def __init__(self, service: Service, *, workers: bool = True):
        self.service = service
        self.settings = service.settings
        self.supervisor = (Supervisor(self.settings, service.store, tokens=service.token_for,
                                      held=service.held_tokens) if workers else None)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone="UTC",
        )

    def start(self) -> None:
        # A tick that outlasts its interval is skipped, as intended; do not log each skip.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        failed = self.service.fail_lost_tokens()
        if failed:
            log.warning("%d jobs needed sign-in tokens lost in a restart and were failed", len(failed))
        self.sync_schedules()
        self.scheduler.start()
        s = self.settings
        self._every("dispatch", self.dispatch, s.dispatch_seconds, first=True)
        self._every("poll-watches", self.service.poll_watches, s.poll_seconds)
        self._every("housekeeping", self.housekeeping, HOUSEKEEPING_HOURS * 3600, first=True)

    def _every(self, job_id: str, func: Callable[[], Any], seconds: float, first: bool = False) -> None:
        start = {"next_run_time": now()} if first else {}  # (next_run_time=None would pause the job)
        self.scheduler.add_job(func, "interval", seconds=seconds, id=job_id, replace_existing=True,
                               misfire_grace_time=max(1, int(seconds)), **start)

    def sync_schedules(self) -> None:
        """One cron job per schedule in the store: new ones added, deleted ones removed."""
        wanted = {f"{SCHEDULE_PREFIX}{row['id']}": row for row in self.service.store.schedules()}
        have = {job.id for job in self.scheduler.get_jobs() if job.id.startswith(SCHEDULE_PREFIX)}
        for job_id in have - wanted.keys():
            self.scheduler.remove_job(job_id)
        for job_id in wanted.keys() - have:
            row = wanted[job_id]
            self.scheduler.add_job(self.service.run_schedule, cron_trigger(row["cron"]), id=job_id,
                                   args=[row["id"]], replace_existing=True)

    def dispatch(self) -> None:
        """One dispatcher tick: run the queue, pick up new schedules, then post finished jobs' outcomes."""
        if self.supervisor is not None:
            self.supervisor.tick()
        self.sync_schedules()
        post_reports(self.service)
        self.service.forget_finished_tokens()

    def housekeeping(self) -> None:
        log.info("housekeeping: %s", self.service.housekeeping())

    def stop(self) -> None:
        """Stop firing, then stop the workers (after any tick in flight: they share a lock). A stop
        that takes longer than STOP_REPORT_S prints every thread's stack to stderr, so a hung
        shutdown says where it hangs."""
        faulthandler.dump_traceback_later(STOP_REPORT_S, exit=False)
        try:
            self.scheduler.shutdown(wait=False)
            if self.supervisor is not None:
                self.supervisor.stop()
        finally:
            faulthandler.cancel_dump_traceback_later()
