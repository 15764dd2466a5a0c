"""Scheduled retrains: each cron slot of a spec's `schedule` triggers once, even with
several processes on one job store (the slot is the idempotency key)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from croniter import croniter

from service.errors import ServiceError
from service.forecasting.specs import read_spec
from service.jobs.store import JobStore
from service.jobs.submit import submit_retrain
from service.registry.store import Registry

log = logging.getLogger(__name__)


def latest_slot(schedule: str, now: datetime) -> datetime:
    return croniter(schedule, now).get_prev(datetime)


def trigger_due(registry: Registry, jobs: JobStore, now: datetime, window: float) -> list[str]:
    """Create the retrain of every slot that fell within the last ``window`` seconds."""
    created = []
    for name in registry.list_models():
        try:
            spec = read_spec(registry, name)
        except ServiceError as exc:
            log.warning("schedule: cannot read %s: %s", name, exc.detail)
            continue
        if spec is None or not spec.schedule:
            continue
        slot = latest_slot(spec.schedule, now)
        if (now - slot).total_seconds() > window:
            continue
        key = f"schedule:{name}:{slot.isoformat()}"
        try:
            job, is_new = submit_retrain(
                jobs, registry, name, {"trigger": "schedule", "slot": slot.isoformat()}, key, check_source=False
            )
        except ServiceError as exc:
            log.warning("schedule: retrain of %s not started: %s", name, exc.detail)
            continue
        if is_new:
            log.info("schedule: slot %s of %s -> job %s", slot.isoformat(), name, job.id)
            created.append(job.id)
    return created


async def run_scheduler(registry: Registry, jobs: JobStore, interval: float, stop: asyncio.Event, wake: object) -> None:
    """Check the schedules every ``interval`` seconds; a slot counts while it is younger
    than two intervals (so a restart does not replay old slots)."""
    while not stop.is_set():
        try:
            created = await asyncio.to_thread(trigger_due, registry, jobs, datetime.now(UTC), 2 * interval)
            if created and callable(wake):
                wake()
        except Exception:  # the scheduler must outlive a bad spec or a database hiccup
            log.exception("scheduler tick failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
