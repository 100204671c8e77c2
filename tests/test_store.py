"""The store and the function rules against both databases: SQLite (the
embedded default) and PostgreSQL (FUNCTIONS_TEST_DATABASE_URL, which
`make test` sets after starting a private instance)."""

from __future__ import annotations

import os
import time

import pytest

from server.domain.errors import ApiError
from server.domain.functions import FunctionInput, FunctionRules
from server.domain.runtimes import RuntimeCatalog, load_catalog
from server.settings import Settings
from server.store import db as store_db
from server.store import models, open_database
from server.store.models import Deployment, Execution, Function, SearchToken

PG_URL = os.environ.get("FUNCTIONS_TEST_DATABASE_URL", "")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "postgresql":
        if not PG_URL:
            if os.environ.get("CI"):
                pytest.fail("FUNCTIONS_TEST_DATABASE_URL must be set in CI (make test sets it)")
            pytest.skip("FUNCTIONS_TEST_DATABASE_URL not set (make test sets it)")
        db = open_database(PG_URL, tmp_path / "unused.db")
        db.drop_tables(models.ALL_MODELS, safe=True)
        url = PG_URL
    else:
        url = ""
    db = open_database(url, tmp_path / "functions.db")
    yield url, tmp_path / "functions.db"
    db.close()


@pytest.fixture
def rules(store):
    catalog = RuntimeCatalog(load_catalog(Settings().runtime_catalog))
    return FunctionRules(catalog=catalog, max_timeout=900, vars_max_bytes=8192)


def data(name="fn", **kw):
    return FunctionInput(name=name, execute=kw.get("execute", []), vars=kw.get("vars", {}),
                         events=kw.get("events", []), schedule=kw.get("schedule", ""), timeout=kw.get("timeout"))


def test_schema_creation_is_idempotent_and_keeps_data(store, rules):
    url, path = store
    rules.create("p", "keep", "python-3.11", data())
    open_database(url, path)
    open_database(url, path)
    assert models.SchemaVersion.get_by_id(1).version == store_db.SCHEMA_VERSION
    assert rules.get("p", "keep").name == "fn"


def test_sqlite_uses_wal(store):
    url, _ = store
    if url:
        pytest.skip("SQLite only")
    assert store_db.database.execute_sql("pragma journal_mode").fetchone()[0] == "wal"


def test_crud_and_duplicates(store, rules):
    fn = rules.create("p", "one", "python-3.11", data(vars={"K": "V"}, schedule="@daily"))
    assert fn.vars == {"K": "V"} and fn.schedule_next > time.time()
    with pytest.raises(ApiError) as caught:
        rules.create("p", "one", "python-3.11", data())
    assert caught.value.status == 409
    rules.create("q", "one", "python-3.11", data())  # another project: fine
    updated = rules.update("p", "one", data(name="new"))
    assert updated.name == "new" and updated.vars == {} and updated.timeout == 15
    with pytest.raises(ApiError) as caught:
        rules.get("p", "nope")
    assert caught.value.type == "function_not_found"


def test_paging_and_search(store, rules):
    for i in range(30):
        rules.create("p", f"f{i:02d}", "python-3.11", data(name=f"name {'even' if i % 2 == 0 else 'odd'} {i}"))
    listing = dict(search="", limit=None, offset=0, cursor="", cursor_direction="", order_type="")
    page = rules.list("p", **listing)
    assert page.total == 30 and [f.uid for f in page.items] == [f"f{i:02d}" for i in range(25)]
    page = rules.list("p", **{**listing, "cursor": "f10", "limit": 3})
    assert [f.uid for f in page.items] == ["f11", "f12", "f13"]
    page = rules.list("p", **{**listing, "cursor": "f10", "limit": 3, "cursor_direction": "before"})
    assert [f.uid for f in page.items] == ["f07", "f08", "f09"]
    page = rules.list("p", **{**listing, "cursor": "f10", "limit": 3, "order_type": "DESC"})
    assert [f.uid for f in page.items] == ["f09", "f08", "f07"]
    page = rules.list("p", **{**listing, "search": "ev", "limit": 2, "offset": 1})
    assert page.total == 15 and [f.uid for f in page.items] == ["f02", "f04"]
    page = rules.list("p", **{**listing, "search": "odd 2"})  # every word must match
    assert {f.uid for f in page.items} == {"f21", "f23", "f25", "f27", "f29"}
    with pytest.raises(ApiError) as caught:
        rules.list("p", **{**listing, "cursor": "missing"})
    assert caught.value.type == "general_cursor_not_found"


def test_delete_removes_deployments_executions_and_search_rows(store, rules):
    deleted = []
    rules.on_delete.append(lambda fn, deployments: deleted.append((fn.uid, [d.uid for d in deployments])))
    fn = rules.create("p", "gone", "python-3.11", data())
    keep = rules.create("p", "kept", "python-3.11", data())
    now = int(time.time())
    for owner in (fn, keep):
        Deployment.create(project="p", uid=f"d-{owner.uid}", function=owner.uid, entrypoint="main.py", date_created=now)
        Execution.create(project="p", uid=f"e-{owner.uid}", function=owner.uid, read=[], date_created=now)
    rules.delete("p", "gone")
    assert Deployment.select().where(Deployment.function == "gone").count() == 0
    assert Execution.select().where(Execution.function == "gone").count() == 0
    assert SearchToken.select().where((SearchToken.kind == "function") & (SearchToken.owner == fn.seq)).count() == 0
    assert Deployment.select().where(Deployment.function == "kept").count() == 1
    assert Function.select().where(Function.uid == "kept").count() == 1
    assert deleted == [("gone", ["d-gone"])]


# ---- lifecycles (server/store/lifecycles.py) -----------------------------------

from server.store.lifecycles import BuildStatus, ExecutionStatus, transition  # noqa: E402
from server.store.models import Build  # noqa: E402


def _build(uid: str, status: BuildStatus = BuildStatus.PROCESSING) -> Build:
    return Build.create(project="p", uid=uid, deployment="d" + uid, runtime="python-3.11", status=status)


def test_statuses_round_trip_as_enums(store):
    _build("b1")
    row = Build.find("p", "b1")
    assert row.status is BuildStatus.PROCESSING and row.status == "processing"
    assert Build.find("other-project", "b1") is None  # every lookup names the project


def test_a_transition_moves_only_rows_in_the_source_state(store):
    _build("b1")
    claim = lambda: transition(Build, BuildStatus.PROCESSING, BuildStatus.BUILDING, Build.uid == "b1").execute()  # noqa: E731
    assert claim() == 1
    assert claim() == 0  # a second worker loses the race
    assert Build.find("p", "b1").status is BuildStatus.BUILDING
    assert transition(Build, BuildStatus.BUILDING, BuildStatus.READY, Build.uid == "b1", output_path="/x").execute() == 1
    assert Build.find("p", "b1").output_path == "/x"


def test_transitions_the_lifecycle_does_not_allow_are_refused(store):
    with pytest.raises(ValueError, match="ready -> building"):
        transition(Build, BuildStatus.READY, BuildStatus.BUILDING)
    with pytest.raises(ValueError, match="completed -> waiting"):
        transition(Execution, ExecutionStatus.COMPLETED, ExecutionStatus.WAITING)
    assert ExecutionStatus.allowed(ExecutionStatus.WAITING, ExecutionStatus.PROCESSING)
    assert not ExecutionStatus.allowed(ExecutionStatus.FAILED, ExecutionStatus.PROCESSING)


def test_sqlite_writers_take_turns_in_the_order_they_came():
    """The in-process queue of SQLite writers (server/store/db.py FairLock)
    hands the lock over first come first served."""
    import threading

    from server.store.db import FairLock

    lock, order = FairLock(), []
    lock.acquire()

    def writer(n: int):
        lock.acquire()
        order.append(n)
        lock.release()

    threads = []
    for n in range(5):
        threads.append(threading.Thread(target=writer, args=(n,)))
        threads[-1].start()
        deadline = time.monotonic() + 5
        while len(lock._waiting) < n + 1:  # queued before the next one comes
            assert time.monotonic() < deadline, "a writer never queued"
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]
