"""`Jobs`: the one place background work is started and stopped."""

from __future__ import annotations

import asyncio
import logging

from server.jobs.base import Job

log = logging.getLogger(__name__)


class Jobs:
    """Starts jobs in the order added and stops them in reverse, all within one deadline."""

    def __init__(self, *jobs: Job):
        self._jobs: list[Job] = []
        self._started: list[Job] = []
        for job in jobs:
            self.add(job)

    def add(self, job: Job) -> Job:
        if any(existing.name == job.name for existing in self._jobs):
            raise ValueError(f"two jobs named {job.name!r}")
        self._jobs.append(job)
        return job

    def __iter__(self):
        return iter(self._jobs)

    async def start(self) -> None:
        """Start every job in order. If one fails to start, the ones started are stopped and the error raised."""
        for job in self._jobs:
            try:
                await job.start()
            except BaseException:
                log.exception("job failed to start", extra={"job": job.name})
                await self.stop(timeout=10.0)
                raise
            self._started.append(job)
            log.debug("job started", extra={"job": job.name, "runs_on": job.runs_on})
        log.info("background jobs started", extra={"jobs": ", ".join(job.name for job in self._started)})

    async def stop(self, timeout: float = 30.0) -> list[str]:
        """Signal every started job, then stop them in reverse order by one
        deadline. Returns what is still alive (also logged)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        started, self._started = self._started, []
        for job in reversed(started):
            try:
                job.signal()
            except Exception:
                log.exception("signalling a job failed", extra={"job": job.name})
        for job in reversed(started):
            try:
                await job.stop(deadline)
            except Exception:
                log.exception("stopping a job failed", extra={"job": job.name})
        left = self.alive()
        if left:
            log.warning("background work still running after stop", extra={"alive": left})
        return left

    def alive(self) -> list[str]:
        return [name for job in self._jobs for name in job.alive()]
