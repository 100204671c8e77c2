"""Peewee models: plain tables, one class each.

Every resource has an autoincrement `seq` (its creation order, used for
ordering and cursor paging) and a public `uid` unique within its project.
Timestamps are integer Unix seconds, as in the API.
"""

from __future__ import annotations

import json

import peewee as pw

from server.store.db import database
from server.store.lifecycles import BuildStatus, ExecutionStatus, StatusField


class JSONField(pw.TextField):
    """A JSON document stored as text (portable across SQLite and PostgreSQL)."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class ProjectResource(BaseModel):
    """A resource with a public `uid`, unique within its project. Every lookup
    names the project: one project never reaches another's rows."""

    @classmethod
    def find(cls, project: str, uid: str, *where: pw.Expression):
        """The row with this uid in `project` (narrowed by `where`), or None."""
        return cls.get_or_none(cls._one(project, uid, where)) if uid else None

    @classmethod
    def locked(cls, project: str, uid: str):
        """`find`, locking the row for the rest of the transaction (PostgreSQL:
        SELECT … FOR UPDATE; SQLite: the transaction's write lock does it)."""
        from server.store.db import is_postgres

        query = cls.select().where(cls._one(project, uid, ()))
        return (query.for_update() if is_postgres() else query).first()

    @classmethod
    def seq_of(cls, project: str, uid: str, *where: pw.Expression) -> int | None:
        """The row's `seq` (its place in lists, for cursors), or None."""
        row = cls.select(cls.seq).where(cls._one(project, uid, where)).first() if uid else None
        return row.seq if row else None

    @classmethod
    def _one(cls, project: str, uid: str, where) -> pw.Expression:
        condition = (cls.project == project) & (cls.uid == uid)
        for extra in where:
            condition &= extra
        return condition


class SchemaVersion(BaseModel):
    id = pw.IntegerField(primary_key=True)
    version = pw.IntegerField()


class Project(BaseModel):
    id = pw.CharField(max_length=36, primary_key=True)
    name = pw.CharField(max_length=128)
    date_created = pw.IntegerField()


class ApiKey(BaseModel):
    id = pw.AutoField()
    project = pw.ForeignKeyField(Project, on_delete="CASCADE", backref="keys")
    name = pw.CharField(max_length=128)
    # sha256 of the secret. Secrets are 512-bit random values, so a fast hash
    # is enough: there is nothing to brute-force, and lookups stay O(1).
    secret_hash = pw.CharField(max_length=64, unique=True)
    scopes = JSONField()
    date_created = pw.IntegerField()


class Function(ProjectResource):
    seq = pw.AutoField()
    project = pw.CharField(max_length=36)
    uid = pw.CharField(max_length=36)
    name = pw.CharField(max_length=128)
    execute = JSONField()
    runtime = pw.CharField(max_length=64)
    deployment = pw.CharField(max_length=36, default="")
    vars = JSONField()
    events = JSONField()
    schedule = pw.CharField(max_length=128, default="")
    schedule_next = pw.BigIntegerField(default=0)
    schedule_previous = pw.BigIntegerField(default=0)
    timeout = pw.IntegerField()
    status = pw.CharField(max_length=16, default="disabled")
    date_created = pw.BigIntegerField()
    date_updated = pw.BigIntegerField()

    class Meta:
        # schedule_next: the schedule job's "what is due" scan.
        indexes = ((("project", "uid"), True), (("project", "seq"), False), (("schedule_next",), False))


class Deployment(ProjectResource):
    seq = pw.AutoField()
    project = pw.CharField(max_length=36)
    uid = pw.CharField(max_length=36)
    function = pw.CharField(max_length=36)
    entrypoint = pw.CharField(max_length=1028)
    size = pw.BigIntegerField(default=0)
    build = pw.CharField(max_length=36, default="")
    activate = pw.BooleanField(default=False)
    chunks_total = pw.IntegerField(default=1)
    chunks_uploaded = pw.IntegerField(default=0)
    # Byte ranges received so far, [[start, end), ...] merged; complete when
    # they cover [0, size).
    received = JSONField(default=list)
    # Path of the complete package under the data directory, "" while partial.
    path = pw.CharField(max_length=1024, default="")
    sha256 = pw.CharField(max_length=64, default="")
    date_created = pw.BigIntegerField()

    class Meta:
        indexes = ((("project", "uid"), True), (("project", "function", "seq"), False))


class Build(ProjectResource):
    seq = pw.AutoField()
    project = pw.CharField(max_length=36)
    uid = pw.CharField(max_length=36)
    deployment = pw.CharField(max_length=36)
    runtime = pw.CharField(max_length=64)
    status = StatusField(BuildStatus, default=BuildStatus.PROCESSING)  # see server.store.lifecycles
    stdout = pw.TextField(default="")
    stderr = pw.TextField(default="")
    output_path = pw.CharField(max_length=1024, default="")
    output_bytes = pw.BigIntegerField(default=0)  # size of the build output on disk (project quota)
    start_time = pw.BigIntegerField(default=0)
    end_time = pw.BigIntegerField(default=0)
    duration = pw.IntegerField(default=0)
    # The replica running it while `building` (its lease: Replica.heartbeat).
    owner = pw.CharField(max_length=64, default="")

    class Meta:
        indexes = ((("project", "uid"), True), (("status", "seq"), False))


class Execution(ProjectResource):
    seq = pw.AutoField()
    project = pw.CharField(max_length=36)
    uid = pw.CharField(max_length=36)
    function = pw.CharField(max_length=36)
    deployment = pw.CharField(max_length=36, default="")
    read = JSONField()
    trigger = pw.CharField(max_length=16, default="http")
    status = StatusField(ExecutionStatus, default=ExecutionStatus.WAITING)  # see server.store.lifecycles
    # Unix ms when the function was handed its request (0: not yet). After a
    # crash a `processing` execution that never started is queued again; one
    # that started ends failed. Sync executions count as started when recorded.
    run_started = pw.BigIntegerField(default=0)
    # The replica running it while `processing` (its lease: Replica.heartbeat).
    owner = pw.CharField(max_length=64, default="")
    status_code = pw.IntegerField(default=0)
    stdout = pw.TextField(default="")
    stderr = pw.TextField(default="")
    logs = pw.TextField(default="")
    errors = pw.TextField(default="")
    time = pw.DoubleField(default=0.0)
    data = pw.TextField(default="")
    user_id = pw.CharField(max_length=36, default="")
    date_created = pw.BigIntegerField()
    # Event-triggered executions: the event's name and JSON payload
    # (APPWRITE_FUNCTION_EVENT / _EVENT_DATA).
    event = pw.CharField(max_length=64, default="")
    event_data = pw.TextField(default="")
    # Causality (server.domain.events): `chain` is the ID of what started a
    # chain of executions and events (this execution's own uid for one a
    # client or a schedule started), `depth` how many event hops led here.
    chain = pw.CharField(max_length=36, default="")
    depth = pw.IntegerField(default=0)
    # Times the function was handed this execution (or a container refused
    # it); async ones cut off by a fault of the service run again until
    # FUNCTIONS_ASYNC_RETRIES is spent, no earlier than `run_after` (Unix ms).
    attempts = pw.IntegerField(default=0)
    run_after = pw.BigIntegerField(default=0)
    sync = pw.BooleanField(default=False)  # the caller waits for it (never run again: they got an error)

    class Meta:
        indexes = (
            (("project", "uid"), True),
            (("project", "function", "seq"), False),
            (("status", "seq"), False),
            (("chain", "function"), False),
        )

    @classmethod
    def waiting_in(cls, project: str) -> int:
        """How many of the project's executions wait in the async queue."""
        return cls.select().where((cls.project == project) & (cls.status == ExecutionStatus.WAITING)).count()



class Subscription(BaseModel):
    """Function `function` of `project` subscribes to `event`: the index an
    event's fan-out reads, kept in step with Function.events."""

    project = pw.CharField(max_length=36)
    event = pw.CharField(max_length=64)
    function = pw.CharField(max_length=36)

    class Meta:
        primary_key = pw.CompositeKey("project", "event", "function")

    @classmethod
    def functions_of(cls, project: str, event: str) -> list[str]:
        from server.store import statements

        return statements.subscribers(project, event)

    @classmethod
    def replace(cls, project: str, function: str, events: list[str]) -> None:
        """The function's subscriptions are now `events` (inside the caller's transaction)."""
        cls.delete().where((cls.project == project) & (cls.function == function)).execute()
        rows = [dict(project=project, event=event, function=function) for event in sorted(set(events))]
        if rows:
            cls.insert_many(rows).execute()


class Event(BaseModel):
    """An event an internal service published (PublishEvent). Unique per
    (project, source, source_id): a publisher that retries is told it was a
    duplicate, and nothing runs twice (CloudEvents' `source` + `id`)."""

    seq = pw.AutoField()
    project = pw.CharField(max_length=36)
    uid = pw.CharField(max_length=36)
    name = pw.CharField(max_length=64)
    source = pw.CharField(max_length=255)
    source_id = pw.CharField(max_length=255)
    data = pw.TextField(default="")
    user_id = pw.CharField(max_length=36, default="")
    depth = pw.IntegerField(default=0)
    matched = pw.IntegerField(default=0)  # executions queued for it
    date_created = pw.BigIntegerField()

    class Meta:
        indexes = ((("project", "source", "source_id"), True), (("date_created",), False))


class OutputLine(BaseModel):
    """A line an execution or a build printed, kept for live-log replay
    (server.domain.livelogs). `source` is the execution's or the
    deployment's uid; `seq` counts from 1 within it. `id` orders every line
    of a function (the function-wide tail reads new ones by it)."""

    id = pw.AutoField()
    project = pw.CharField(max_length=36)
    function = pw.CharField(max_length=36)
    source = pw.CharField(max_length=36)
    seq = pw.IntegerField()
    stream = pw.CharField(max_length=8)  # stdout, stderr; `dropped`: `text` says how many were not kept
    text = pw.TextField()
    time = pw.BigIntegerField()  # Unix ms it was printed

    class Meta:
        indexes = ((("project", "source", "seq"), True), (("project", "function", "id"), False))


class SearchToken(BaseModel):
    """Word index for list searches: one row per (resource, lowercased word).

    `scope` narrows the list a resource appears in ("" for functions, the
    function ID for deployments and executions). A prefix search is a range
    scan on (kind, project, scope, token).
    """

    kind = pw.CharField(max_length=16)
    project = pw.CharField(max_length=36)
    scope = pw.CharField(max_length=36)
    owner = pw.BigIntegerField()
    token = pw.CharField(max_length=64)

    class Meta:
        primary_key = False
        indexes = (
            (("kind", "project", "scope", "token", "owner"), False),
            (("kind", "owner", "token"), False),
        )


class ListCount(BaseModel):
    """Row count of one list (kind, project, scope), kept in step with inserts
    and deletes so `total` of an unfiltered list costs one lookup, not a scan."""

    kind = pw.CharField(max_length=16)
    project = pw.CharField(max_length=36)
    scope = pw.CharField(max_length=36)
    count = pw.BigIntegerField(default=0)

    class Meta:
        primary_key = pw.CompositeKey("kind", "project", "scope")


class Replica(BaseModel):
    """One running server process, and its lease. A replica renews
    `heartbeat` (Unix ms) now and then; one silent for longer than the lease
    is dead: another replica takes over its work (server.cluster.leases)."""

    id = pw.CharField(max_length=64, primary_key=True)  # <host id>-<index>: the same slot keeps its id across restarts
    host = pw.CharField(max_length=32)  # replicas of one host share its Docker engine and data directory
    pool_owner = pw.CharField(max_length=64, default="")  # the owner label of its containers
    address = pw.CharField(max_length=256, default="")
    pid = pw.IntegerField(default=0)
    started = pw.BigIntegerField(default=0)
    heartbeat = pw.BigIntegerField(default=0)

    @classmethod
    def register(cls, id: str, host: str, pool_owner: str, address: str, pid: int, now_ms: int) -> None:
        """This replica runs, from now on (its row made, or taken back)."""
        fields = dict(host=host, pool_owner=pool_owner, address=address, pid=pid, started=now_ms, heartbeat=now_ms)
        cls.insert(id=id, **fields).on_conflict(conflict_target=[cls.id], update=fields).execute()

    @classmethod
    def renew(cls, id: str, now_ms: int) -> bool:
        """Extend the lease; False if another replica took this one over meanwhile."""
        with database.atomic():
            return cls.update(heartbeat=now_ms).where(cls.id == id).execute() == 1

    @classmethod
    def expired(cls, cutoff_ms: int) -> list["Replica"]:
        return list(cls.select().where(cls.heartbeat < cutoff_ms))

    @classmethod
    def take_over(cls, id: str, cutoff_ms: int) -> bool:
        """Claim a dead replica's work: True for the one replica whose delete
        of its (still expired) row succeeded. Inside a transaction."""
        return cls.delete().where((cls.id == id) & (cls.heartbeat < cutoff_ms)).execute() == 1


class Generation(BaseModel):
    """One row: bumped by every change that decides how a function runs
    (settings, active deployment, builds), so each replica's run-plan cache
    knows when it is stale (server.store.generation)."""

    id = pw.IntegerField(primary_key=True)
    value = pw.BigIntegerField(default=0)


class RateWindow(BaseModel):
    """Fixed-window rate-limit counters shared by every replica."""

    key = pw.CharField(max_length=255, primary_key=True)
    window_start = pw.BigIntegerField()  # Unix ms
    count = pw.IntegerField(default=0)


class BlobPart(BaseModel):
    """A part of a file kept in the database (server.store.blobs)."""

    key = pw.CharField(max_length=255)
    part = pw.IntegerField()
    data = pw.BlobField()

    class Meta:
        primary_key = pw.CompositeKey("key", "part")


ALL_MODELS = [SchemaVersion, Project, ApiKey, Function, Deployment, Build, Execution, Subscription, Event, OutputLine,
              SearchToken, ListCount, Replica, Generation, RateWindow, BlobPart]
