"""A job's states, in the order a job goes through them: the store keeps them, the worker and the
service move jobs between them, and the app shows them (no database here, so anyone may import it)."""

from __future__ import annotations

QUEUED = "queued"
ACTIVE = ("validating", "running", "publishing")  # held by a worker
FINAL = ("done", "failed", "cancelled")
STATES = (QUEUED, *ACTIVE, *FINAL)
WAITING_KEY = "waiting"  # in a queued job's progress: why it waits for its owner to sign in again (after a restart)
