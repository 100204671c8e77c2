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
    page = requests.get(f"{svc.url}/functions/{fid}/executions", headers=svc.headers()).json()
    return [e for e in page["executions"] if e["trigger"] == "schedule"]


def test_a_due_schedule_fires_once_as_a_schedule_trigger(service):
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
    set_schedule(service, fid, "* * * * *")
    force_due(service, fid, int(time.time()) - 3600)  # the default catch-up is 10 minutes
    fn, _ = poll(lambda: requests.get(f"{service.url}/functions/{fid}", headers=service.headers()).json(),
                 lambda f: f["scheduleNext"] > time.time(), timeout=30)
    assert fn["schedulePrevious"] == 0 and scheduled_runs(service, fid) == []


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
