"""Start-up, restart and shutdown of the whole service (gRPC server + Envoy)."""

from __future__ import annotations

import os
import signal
import subprocess

import requests


def test_sigterm_stops_everything_and_data_survives_restart(fresh_service):
    svc = fresh_service()
    key = svc.bootstrap_key
    r = requests.post(f"{svc.url}/functions", headers=svc.headers(), json={"functionId": "persist", "name": "p", "runtime": "python-3.11"})
    assert r.status_code == 201
    envoy_pids = subprocess.run(["pgrep", "-f", str(svc.data_dir / "run" / "envoy.yaml")], capture_output=True, text=True).stdout.split()
    assert envoy_pids
    assert svc.stop(signal.SIGTERM) == 0
    for pid in envoy_pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert '"message": "stopped"' in svc.log()

    svc.start()
    assert svc.bootstrap_key == key  # not rewritten on restart
    assert requests.get(f"{svc.url}/functions/persist", headers=svc.headers()).json()["name"] == "p"


def test_gateway_reports_server_down_in_appwrite_format(tmp_path):
    """Envoy's own error (no upstream) reaches REST clients as an Appwrite error body."""
    import tempfile
    import time
    from pathlib import Path

    from harness import free_port
    from server import gateway
    from server.settings import Settings

    short = Path(tempfile.mkdtemp(prefix="gw-"))
    settings = Settings(port=free_port(), grpc_address=f"unix:{short / 'nobody.sock'}", data_dir=short)
    config = gateway.render(settings, short / "run")
    envoy = subprocess.Popen(gateway.command(settings, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{settings.port}/v1/functions", headers={"X-Appwrite-Project": "default"})
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 503
        body = r.json()
        assert body["code"] == 503 and body["message"] and body["type"] == "general_server_error"
    finally:
        envoy.terminate()
        envoy.wait(10)
