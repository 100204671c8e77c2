"""The contract every background job keeps.

    start()          begin; returns once the job runs (an awaited start-up
                     job returns once its work is done)
    signal()         stop taking new work; returns at once. Every job is
                     signalled before any is stopped, so e.g. the build
                     workers know the service is stopping before the pool
                     removes containers.
    stop(deadline)   finish and return by `deadline` (event-loop time);
                     whatever still runs then is abandoned and named by
                     alive()
    alive()          names of this job's tasks and threads still running
                     (empty once stopped: the registry logs any left behind)

A failing round of work is logged with the job's name and the job goes on;
only stop() ends it.
"""

from __future__ import annotations

import abc


class Job(abc.ABC):
    #: unique; names its tasks and threads, and its log lines
    name: str
    #: what runs it: "event loop", "blocking pool", "thread", "N threads"
    runs_on: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    def signal(self) -> None:
        """Stop taking new work (no waiting). Default: nothing to do before stop()."""

    @abc.abstractmethod
    async def stop(self, deadline: float) -> None: ...

    @abc.abstractmethod
    def alive(self) -> list[str]: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.runs_on}>"
