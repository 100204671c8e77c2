"""Background work: every loop of the service is a Job with one contract,
started and stopped by one `Jobs` registry (see server.app for the list).

Kinds: `Periodic` (housekeeping on an interval), `QueueWorkers` (asyncio
consumers of a queue), `ThreadWorkers` (blocking consumers, e.g. builds),
`OneShot` (start-up work, awaited or in a thread of its own) and `Resource`
(a component with start/stop, such as the container pool, ordered among them).
"""

from server.jobs.base import Job
from server.jobs.kinds import OneShot, Periodic, QueueWorkers, Resource
from server.jobs.registry import Jobs
from server.jobs.threads import ThreadWorkers

__all__ = ["Job", "Jobs", "OneShot", "Periodic", "QueueWorkers", "Resource", "ThreadWorkers"]
