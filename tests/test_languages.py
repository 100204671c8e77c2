"""Every runtime built here runs the same function, written in its own
language (tests/samples/<language>/), with the same results: through real
Envoy and Docker, one service with FUNCTIONS_RUNTIMES=all.

The sample answers by payload: `echo` (payload, headers, vars and the
APPWRITE_FUNCTION_* variables), `unicode`, `print` (stdout and stderr),
`child` (a child process's output), `status` (418), `raise`, `sleep` (past
the timeout). The `deps` sample installs a local `greeter` package with the
language's package manager during an offline build.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import docker
import pytest
import requests

from codepkg import targz, wheel
from harness import make_service
from restkit import execute, new_project, upload, wait_build
from server.domain.runtimes import load_catalog
from server.settings import REPO_ROOT

SAMPLES = Path(__file__).resolve().parent / "samples"
CATALOG = load_catalog(REPO_ROOT / "runtimes" / "catalog.toml")
BUILT = [r for r in CATALOG if r.recipe]
BY_ID = {r.id: r for r in CATALOG}
TIMEOUT = 3  # seconds: the `sleep` payload runs past it

# The interpreter's own version, as the image reports it (for the ID check).
VERSION_COMMANDS = {
    "python": "python3 -c 'import platform; print(platform.python_version())'",
    "node": "node -p process.versions.node",
    "php": "php -r 'echo PHP_VERSION;'",
    "ruby": "ruby -e 'print RUBY_VERSION'",
    "java": "java -version 2>&1 | head -n 1",
    "deno": "deno --version",
    "bun": "bun --version",
}


def sample_dir(language: str) -> Path:
    """A language's samples; `like` names another language's (Bun runs Node's code as it is)."""
    return SAMPLES / tomllib.loads((SAMPLES / language / "sample.toml").read_text()).get("like", language)


def sample(language: str, kind: str) -> tuple[dict[str, bytes], str]:
    """The sample's files (relative path → bytes) and its entrypoint."""
    root = sample_dir(language) / kind
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    entry = tomllib.loads((SAMPLES / language / "sample.toml").read_text())[kind]
    return files, entry


def prepared_deps(runtime, image: str) -> tuple[dict[str, bytes], str]:
    """The deps sample, plus what a user would ship built: a wheel (Python),
    a jar (Java, made with the image's own javac and jar, offline)."""
    files, entry = sample(runtime.language, "deps")
    if runtime.language == "python":
        name, data = wheel("greeter", "1.0", "def greet(name):\n    return f'Hello, {name}!'\n")
        files[f"wheels/{name}"] = data
    if runtime.language == "java":
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(SAMPLES / "java" / "deps", tmp, dirs_exist_ok=True)
            Path(tmp).chmod(0o777)
            (Path(tmp) / "libs").mkdir(exist_ok=True, mode=0o777)
            docker.from_env().containers.run(
                image, ["sh", "-c", "cd /w && sh make-jar.sh"], volumes={tmp: {"bind": "/w", "mode": "rw"}},
                network_mode="none", remove=True, user="0:0")
            jar = Path(tmp) / "libs" / "greeter.jar"
            files = {k: v for k, v in files.items() if not k.startswith("greeter-src/")}
            files["libs/greeter.jar"] = jar.read_bytes()
    return files, entry


@pytest.fixture(scope="module")
def polyglot(runtime_images):
    """One service with every runtime enabled, and a project of its own."""
    svc = make_service(Path(tempfile.mkdtemp(prefix="fs-")), FUNCTIONS_BUILD_NETWORK="none",
                       FUNCTIONS_RUNTIMES="all", FUNCTIONS_PREWARM="0").start(timeout=120)
    yield new_project(svc, "lang")
    svc.stop()


def create_and_deploy(p, runtime_id: str, files: dict[str, bytes], entrypoint: str, vars=None) -> tuple[str, str]:
    fid = f"{runtime_id.replace('.', '')}-{uuid.uuid4().hex[:6]}"
    r = requests.post(f"{p.url}/functions", headers=p.headers(), json={
        "functionId": fid, "name": f"sample {runtime_id}", "runtime": runtime_id, "execute": ["role:all"],
        "vars": vars or {}, "timeout": TIMEOUT})
    assert r.status_code == 201, r.text
    dep = upload(p, fid, targz(files), entrypoint=entrypoint).json()
    final, _ = wait_build(p, fid, dep["$id"], timeout=300)
    assert final["status"] == "ready", final["buildStdout"] + final["buildStderr"]
    return fid, dep["$id"]


@pytest.fixture(scope="module", params=[r.id for r in BUILT])
def basic(request, polyglot):
    runtime = BY_ID[request.param]
    files, entry = sample(runtime.language, "basic")
    fid, deployment = create_and_deploy(polyglot, runtime.id, files, entry, vars={"GREETING": "hi ☃"})
    return polyglot, runtime, fid, deployment


def run(p, fid: str, data: str) -> dict:
    r = execute(p, fid, data=data)
    assert r.status_code == 201, r.text
    return r.json()


def test_every_built_runtime_is_listed(polyglot):
    listed = requests.get(f"{polyglot.url}/functions/runtimes", headers=polyglot.headers()).json()
    assert {r.id for r in BUILT} <= {r["$id"] for r in listed["runtimes"]}
    data_only = {r.id for r in CATALOG if not r.recipe}  # no image given: not listed, not accepted
    assert not data_only & {r["$id"] for r in listed["runtimes"]}
    r = requests.post(f"{polyglot.url}/functions", headers=polyglot.headers(),
                      json={"functionId": "unique()", "name": "old", "runtime": "python-3.9", "execute": []})
    assert r.status_code == 400 and "runtime" in r.json()["message"]


def test_the_id_names_the_version_the_image_runs(basic, runtime_images):
    _, runtime, _, _ = basic
    # The newline: the output of a container that exits at once can lose an unterminated last line.
    out = docker.from_env().containers.run(runtime.image, ["sh", "-c", VERSION_COMMANDS[runtime.language] + "; echo"],
                                          network_mode="none", remove=True, user="10001:10001").decode()
    real = re.search(r"\d+\.\d+(\.\d+)?", out).group(0)
    # Node keeps Appwrite's <major>.0 IDs (node-18.0 is the Node 18 line); the rest name major.minor exactly.
    wanted = runtime.version.split(".")[0] + "." if runtime.language == "node" else runtime.version + "."
    assert (real + ".").startswith(wanted), (runtime.id, out)


def test_echo_returns_payload_headers_vars_and_function_variables(basic):
    p, runtime, fid, deployment = basic
    ex = run(p, fid, "echo")
    assert ex["status"] == "completed" and ex["statusCode"] == 200, ex
    assert json.loads(ex["stdout"]) == {"payload": "echo", "headers": {}, "env": {
        "GREETING": "hi ☃",
        "APPWRITE_FUNCTION_ID": fid,
        "APPWRITE_FUNCTION_NAME": f"sample {runtime.id}",
        "APPWRITE_FUNCTION_DEPLOYMENT": deployment,
        "APPWRITE_FUNCTION_TRIGGER": "http",
        "APPWRITE_FUNCTION_RUNTIME_NAME": runtime.name,
        "APPWRITE_FUNCTION_RUNTIME_VERSION": runtime.version,
        "APPWRITE_FUNCTION_EVENT": "",
        "APPWRITE_FUNCTION_EVENT_DATA": "",
        "APPWRITE_FUNCTION_DATA": "echo",
        "APPWRITE_FUNCTION_PROJECT_ID": p.project,
        "APPWRITE_FUNCTION_USER_ID": "",
        "APPWRITE_FUNCTION_JWT": "",
    }}


def test_text_output_status_and_errors_are_the_same_in_every_language(basic):
    p, runtime, fid, _ = basic
    assert run(p, fid, "unicode")["stdout"] == "héllo ☃ 7"
    assert run(p, fid, "anything")["stdout"] == "default:anything"

    printed = run(p, fid, "print")
    assert printed["stdout"] == "printed"
    assert printed["logs"] == "to stdout\n" and printed["errors"] == "to stderr\n", printed

    child = run(p, fid, "child")
    assert child["stdout"] == "ran" and "from a child" in child["logs"], child

    teapot = run(p, fid, "status")
    assert teapot["statusCode"] == 418 and teapot["stdout"] == "short and stout" and teapot["status"] == "failed"

    raised = run(p, fid, "raise")
    assert raised["status"] == "failed" and raised["statusCode"] == 500 and "boom" in raised["stderr"], raised
    assert run(p, fid, "unicode")["stdout"] == "héllo ☃ 7"  # the same container goes on after an error


def test_a_function_past_its_timeout_is_cut_off(basic):
    p, runtime, fid, _ = basic
    late = run(p, fid, "sleep")
    assert late["status"] == "failed" and late["statusCode"] == 124, late
    assert late["time"] < TIMEOUT + 5
    assert run(p, fid, "echo")["status"] == "completed"  # a new container takes over


def test_printed_lines_stream_live(basic):
    p, runtime, fid, _ = basic
    ex = run(p, fid, "print")
    r = requests.get(f"{p.url}/functions/{fid}/executions/{ex['$id']}/logs", params={"follow": "false"},
                     headers=p.headers(), timeout=30)
    messages = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
    got = {(m["stream"], m["text"]) for m in messages if m["type"] == "line"}
    assert got == {("stdout", "to stdout"), ("stderr", "to stderr")}, messages
    assert messages[-1]["type"] == "end" and messages[-1]["status"] == "completed"


@pytest.mark.parametrize("runtime_id", [r.id for r in BUILT if (sample_dir(r.language) / "deps").is_dir()])
def test_dependencies_install_offline_with_the_languages_package_manager(polyglot, runtime_id):
    runtime = BY_ID[runtime_id]
    files, entry = prepared_deps(runtime, runtime.image)
    fid, _ = create_and_deploy(polyglot, runtime_id, files, entry)
    ex = run(polyglot, fid, "World")
    assert ex["status"] == "completed" and ex["stdout"] == "Hello, World!", (ex["stderr"], ex["errors"])


def test_the_official_python_sdk_runs_a_php_function_end_to_end(polyglot, tmp_path):
    """appwrite==0.8.0, unmodified: create a php-8.2 function, upload, build, execute sync and async."""
    from appwrite.client import Client
    from appwrite.services.functions import Functions

    functions = Functions(Client().set_endpoint(polyglot.url).set_project(polyglot.project).set_key(polyglot.key))
    fid = "sdkphp" + uuid.uuid4().hex[:8]
    created = functions.create(fid, "SDK PHP", ["role:all"], "php-8.2", vars={"GREETING": "from the SDK"}, timeout=10)
    assert created["runtime"] == "php-8.2"
    files, entry = sample("php", "basic")
    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(targz(files))
    dep = functions.create_deployment(fid, entry, str(archive), True)
    for _ in range(600):
        dep = functions.get_deployment(fid, dep["$id"])
        if dep["status"] in ("ready", "failed"):
            break
        time.sleep(0.2)
    assert dep["status"] == "ready", dep["buildStderr"]
    sync = functions.create_execution(fid, data="echo", xasync=False)
    assert sync["status"] == "completed", sync
    body = json.loads(sync["stdout"])
    assert body["env"]["GREETING"] == "from the SDK" and body["env"]["APPWRITE_FUNCTION_RUNTIME_NAME"] == "PHP"
    queued = functions.create_execution(fid, data="unicode")
    for _ in range(600):
        ex = functions.get_execution(fid, queued["$id"])
        if ex["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert ex["status"] == "completed" and ex["stdout"] == "héllo ☃ 7"
    assert functions.list_executions(fid)["total"] == 2
    functions.delete(fid)


def test_catalog_data_runs_once_pointed_at_an_image(runtime_images):
    """python-3.9 has no recipe: with FUNCTIONS_RUNTIME_IMAGES it is listed,
    accepted and runs on that image, with the same runtime server mounted
    (here a local stand-in image: no registry is reachable)."""
    client = docker.from_env()
    stand_in = "local-test/python:3.9-stand-in"
    client.images.get(BY_ID["python-3.11"].image).tag(stand_in)
    svc = make_service(Path(tempfile.mkdtemp(prefix="fs-")), FUNCTIONS_BUILD_NETWORK="none", FUNCTIONS_RUNTIMES="python-3.9",
                       FUNCTIONS_RUNTIME_IMAGES=f"python-3.9={stand_in}").start()
    try:
        listed = requests.get(f"{svc.url}/functions/runtimes", headers=svc.headers()).json()
        assert [(r["$id"], r["image"]) for r in listed["runtimes"]] == [("python-3.9", stand_in)]
        p = new_project(svc, "data")
        files, entry = sample("python", "basic")
        fid, _ = create_and_deploy(p, "python-3.9", files, entry)
        ex = run(p, fid, "echo")
        assert ex["status"] == "completed" and json.loads(ex["stdout"])["env"]["APPWRITE_FUNCTION_RUNTIME_VERSION"] == "3.9"
    finally:
        svc.stop()
        client.images.remove(stand_in)
