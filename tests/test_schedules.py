"""CRON schedules fire (server/domain/schedules.py): through Envoy, real
Docker, SQLite. A fire time is forced due by writing `schedule_next` in the
database, except in the one test that waits for a real minute."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import requests

from harness import poll
from restkit import deploy, new_function

PY_ENV = ("import json, os\ndef main(req, res):\n"
          "    return res.json({k: v for k, v in os.environ.items() if k.startswith('APPWRITE_FUNCTION_')})\n")


def set_schedule(svc, fid: str, schedule: str) -> dict:
    fn = requests.get(f"{svc.url}/functions/{fid}", headers=svc.headers()).json()
    r = requests.put(f"{svc.url}/functions/{fid}", headers=svc.headers(),
                     json={"name": fn["name"], "execute": fn["execute"], "schedule": schedule})
    assert r.status_code == 200, r.text
    return r.json()


def force_due(svc, fid: str, fire_time: int) -> None:
    with sqlite3.connect(svc.data_dir / "functions.db", timeout=30) as conn:
        conn.execute("UPDATE function SET schedule_next = ? WHERE uid = ?", (fire_time, fid))


def scheduled_runs(svc, fid: str) -> list[dict]:
    page = requests.get(f"{svc.url}/functions/{fid}/executions", headers=svc.headers(), params={"limit": 100}).json()
    return [e for e in page["executions"] if e["trigger"] == "schedule"]


def clear_of_a_minute_boundary(needed: float = 20) -> None:
    """Wait, if need be, so that no real `* * * * *` fire comes in the next `needed` seconds."""
    if 60 - time.time() % 60 < needed:
        time.sleep(61 - time.time() % 60)


def test_a_due_schedule_fires_once_as_a_schedule_trigger(service):
    clear_of_a_minute_boundary()
    fid = deploy(service, f"cron{uuid.uuid4().hex[:8]}", {"main.py": PY_ENV})
    set_schedule(service, fid, "* * * * *")
    fire_time = int(time.time()) - 1
    force_due(service, fid, fire_time)
    (run,), _ = poll(lambda: scheduled_runs(service, fid), lambda runs: len(runs) == 1 and runs[0]["status"] == "completed",
                     timeout=30)
    env = json.loads(run["stdout"])
    assert env["APPWRITE_FUNCTION_TRIGGER"] == "schedule" and env["APPWRITE_FUNCTION_USER_ID"] == ""
    assert run["$read"] == []
    fn = requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()
    assert fn["schedulePrevious"] == fire_time
    assert fn["scheduleNext"] > time.time() and fn["scheduleNext"] % 60 == 0
    time.sleep(2)
    assert len(scheduled_runs(service, fid)) == 1  # fired once, not once per tick


def test_a_fire_older_than_the_catchup_is_skipped(service):
    fid = deploy(service, f"late{uuid.uuid4().hex[:8]}", {"main.py": PY_ENV})
    set_schedule(service, fid, "0 0 1 1 *")  # yearly: the latest fire time is weeks or months ago
    force_due(service, fid, int(time.time()) - 3600)  # the default catch-up is 10 minutes
    fn, _ = poll(lambda: requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json(),
                 lambda f: f["scheduleNext"] > time.time(), timeout=30)
    assert fn["schedulePrevious"] == 0 and scheduled_runs(service, fid) == []
    assert time.gmtime(fn["scheduleNext"])[1:6] == (1, 1, 0, 0, 0)


def test_after_downtime_the_latest_missed_fire_runs_once(fresh_service):
    """Stopped across fire times: the first missed one is 15 minutes old
    (past the catch-up), the latest under a minute: that one runs, once."""
    svc = fresh_service()
    clear_of_a_minute_boundary(30)
    fid = deploy(svc, f"down{uuid.uuid4().hex[:8]}", {"main.py": PY_ENV})
    set_schedule(svc, fid, "* * * * *")
    assert svc.stop() == 0
    force_due(svc, fid, (int(time.time()) // 60 - 15) * 60)
    svc.start()
    (run,), _ = poll(lambda: scheduled_runs(svc, fid), lambda runs: len(runs) == 1 and runs[0]["status"] == "completed",
                     timeout=30)
    fn = requests.get(f"{svc.url}/functions/{fid}", headers=svc.headers()).json()
    latest = int(time.time()) // 60 * 60
    assert fn["schedulePrevious"] in (latest, latest - 60)  # the latest minute before the restart
    assert fn["scheduleNext"] > time.time() and fn["scheduleNext"] % 60 == 0
    assert json.loads(run["stdout"])["APPWRITE_FUNCTION_TRIGGER"] == "schedule"
    time.sleep(1)
    assert len(scheduled_runs(svc, fid)) == 1


def test_a_fire_without_an_active_deployment_is_skipped_and_the_schedule_goes_on(service):
    fid = new_function(service, f"nodep{uuid.uuid4().hex[:8]}")
    set_schedule(service, fid, "*/5 * * * *")
    force_due(service, fid, int(time.time()) - 1)
    fn, _ = poll(lambda: requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json(),
                 lambda f: f["scheduleNext"] > time.time(), timeout=30)
    assert fn["scheduleNext"] % 300 == 0
    assert requests.get(f"{service.url}/functions/{fid}/executions", headers=service.headers()).json()["total"] == 0


def test_every_minute_really_fires(service):
    fid = deploy(service, f"minute{uuid.uuid4().hex[:8]}", {"main.py": PY_ENV})
    set_schedule(service, fid, "* * * * *")
    (run, *_), _ = poll(lambda: scheduled_runs(service, fid), lambda runs: len(runs) >= 1, timeout=75, interval=0.5)
    fn = requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json()
    assert fn["schedulePrevious"] % 60 == 0 and abs(run["dateCreated"] - fn["schedulePrevious"]) <= 2


def test_three_replicas_on_postgresql_fire_every_minute_exactly_once(pg_database, fresh_service):
    """Every replica looks for due fires each second at once; each fire runs
    once, minute after minute. Halfway, one schedule is changed to yearly
    and one cleared (PUT): from the next minute on neither fires again,
    while the third goes on."""
    svc = fresh_service(FUNCTIONS_REPLICAS="3", FUNCTIONS_DATABASE_URL=pg_database)
    steady, changed, cleared = (deploy(svc, f"{name}{uuid.uuid4().hex[:6]}", {"main.py": PY_ENV})
                                for name in ("steady", "changed", "cleared"))
    for fid in (steady, changed, cleared):
        set_schedule(svc, fid, "* * * * *")

    def minutes(fid: str) -> list[int]:
        return sorted(run["dateCreated"] // 60 for run in scheduled_runs(svc, fid))

    poll(lambda: [minutes(f) for f in (steady, changed, cleared)], lambda ms: all(len(m) >= 2 for m in ms),
         timeout=200, interval=1)
    clear_of_a_minute_boundary(15)
    before = {fid: minutes(fid) for fid in (changed, cleared)}
    yearly = set_schedule(svc, changed, "0 0 1 1 *")
    assert time.gmtime(yearly["scheduleNext"])[1:6] == (1, 1, 0, 0, 0)
    assert set_schedule(svc, cleared, "")["scheduleNext"] == 0
    start = len(minutes(steady))
    fired, _ = poll(lambda: minutes(steady), lambda m: len(m) >= start + 2, timeout=150, interval=1)
    time.sleep(3)

    fired = minutes(steady)
    assert fired == list(range(fired[0], fired[0] + len(fired))), fired  # one per minute: never two, never none
    assert {fid: minutes(fid) for fid in (changed, cleared)} == before
    for run in scheduled_runs(svc, steady):
        assert run["status"] == "completed" and json.loads(run["stdout"])["APPWRITE_FUNCTION_TRIGGER"] == "schedule"

