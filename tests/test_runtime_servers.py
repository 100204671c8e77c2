"""The in-container runtime servers (runtimes/python/server.py and
runtimes/node/server.js), run on the host as subprocesses and driven over
their UNIX socket with the newline-delimited JSON protocol.

Every behavioural test runs against both runtimes: the test logic is shared
and only the user code samples (RUNTIMES[...]["samples"]) differ per language.
RUNTIME_TEST_PYTHON / RUNTIME_TEST_NODE choose other interpreters (for example
a Python 3.8) to run the servers with."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIMIT = 16384

PYTHON_APP = '''
import json
import os
import sys


def main(req, res):
    action = req.headers.get("x-action", "")
    if action == "json":
        return res.json({"a": 1, "b": [1, "x"], "u": "\u00e9"}, 201)
    if action == "send":
        return res.send("hello", status=202)
    if action == "default":
        return res.send("plain")
    if action == "echo":
        return res.json({"payload": req.payload, "env": req.env, "headers": req.headers,
                         "environ": os.environ.get("RT_VAR")})
    if action == "print":
        print("out", req.payload)
        print("info")
        sys.stdout.buffer.write(b"more\\n")
        sys.stderr.write("err " + req.payload + "\\n")
        print("warn", file=sys.stderr)
        return res.send("printed")
    if action == "huge":
        print("x" * 100000 + "END-OUT", end="")
        sys.stderr.write("y" * 50000 + "END-ERR")
        return res.send("z" * 50000 + "END-BODY")
    if action == "raise":
        print("before failure")
        raise ValueError("boom")
    if action == "silent":
        return None
    if action == "twice":  # returns nothing: the last response made is used
        res.send("first")
        res.send("second")
        return None
    return res.send("unknown action " + action, 400)
'''

NODE_APP = r'''
module.exports = async (req, res) => {
  const action = req.headers['x-action'] || '';
  switch (action) {
    case 'json': return res.json({ a: 1, b: [1, 'x'], u: '\u00e9' }, 201);
    case 'send': return res.send('hello', 202);
    case 'default': return res.send('plain');
    case 'echo':
      return res.json({ payload: req.payload, env: req.env, headers: req.headers,
                        environ: process.env.RT_VAR ?? null });
    case 'print':
      console.log('out', req.payload);
      console.info('info');
      process.stdout.write(Buffer.from('more\n'));
      console.error('err ' + req.payload);
      console.warn('warn');
      return res.send('printed');
    case 'huge':
      process.stdout.write('x'.repeat(100000) + 'END-OUT');
      process.stderr.write('y'.repeat(50000) + 'END-ERR');
      return res.send('z'.repeat(50000) + 'END-BODY');
    case 'raise':
      console.log('before failure');
      await null;
      throw new Error('boom');
    case 'silent': return;
    case 'twice':  // the first response wins
      res.send('first');
      res.send('second');
      return;
  }
  res.send('unknown action ' + action, 400);
};
'''

# Per runtime: how to start it, its default entry point, and code samples
# ({relative path: source}). Tests pick samples by name.
RUNTIMES = {
    "python": {
        "cmd": [os.environ.get("RUNTIME_TEST_PYTHON") or shutil.which("python3") or sys.executable,
                str(REPO / "runtimes/python/server.py")],
        "entry": "main.py",
        "twice": "second",
        "samples": {
            "app": {"main.py": PYTHON_APP},
            "syntax": {"main.py": "def main(req, res)\n    return res.send('x')\n"},
            "no-main": {"main.py": "handler = None\n"},
            "import-error": {"main.py": "raise RuntimeError('failing at import')\n"},
            "deps": {
                "main.py": "import fakedep\nimport toplevel\n\n"
                           "def main(req, res):\n    return res.send(fakedep.NAME + '+' + toplevel.NAME)\n",
                "toplevel.py": "NAME = 'toplevel'\n",
                ".deps/fakedep/__init__.py": "NAME = 'fakedep'\n",
            },
            "nested": {
                "src/index.py": "from .helper import NAME\nimport fakedep\nimport sibling\n\n"
                                "def main(req, res):\n"
                                "    return res.send(NAME + '+' + fakedep.NAME + '+' + sibling.NAME)\n",
                "src/helper.py": "NAME = 'helper'\n",
                "src/sibling.py": "NAME = 'sibling'\n",
                ".deps/fakedep/__init__.py": "NAME = 'fakedep'\n",
            },
            "alt-export": {  # lenient: async def main
                "main.py": "async def main(req, res):\n    return res.json({'async': True})\n",
            },
        },
    },
    "node": {
        "cmd": [os.environ.get("RUNTIME_TEST_NODE") or shutil.which("node") or "node",
                str(REPO / "runtimes/node/server.js")],
        "entry": "index.js",
        "twice": "first",
        "samples": {
            "app": {"index.js": NODE_APP},
            "syntax": {"index.js": "module.exports = async (req, res) => {\n  res.send('x'\n"},
            "no-main": {"index.js": "module.exports = { handler: null };\n"},
            "import-error": {"index.js": "throw new Error('failing at import');\n"},
            "deps": {
                "index.js": "const dep = require('fakedep');\nconst top = require('./toplevel');\n"
                            "module.exports = async (req, res) => res.send(dep.NAME + '+' + top.NAME);\n",
                "toplevel.js": "module.exports = { NAME: 'toplevel' };\n",
                "node_modules/fakedep/package.json": '{"name": "fakedep", "main": "lib/main.js"}',
                "node_modules/fakedep/lib/main.js": "module.exports = { NAME: 'fakedep' };\n",
            },
            "nested": {
                "src/index.js": "const { NAME } = require('./helper');\nconst dep = require('fakedep');\n"
                                "const sib = require('./sibling');\n"
                                "module.exports = (req, res) => res.send(NAME + '+' + dep.NAME + '+' + sib.NAME);\n",
                "src/helper.js": "module.exports = { NAME: 'helper' };\n",
                "src/sibling.js": "module.exports = { NAME: 'sibling' };\n",
                "node_modules/fakedep/index.js": "module.exports = { NAME: 'fakedep' };\n",
            },
            "alt-export": {  # an ES module with a default export
                "index.mjs": "export default async (req, res) => res.json({ async: true });\n",
            },
        },
    },
}
ALT_ENTRY = {"python": "main.py", "node": "index.mjs"}


class Client:
    """One connection to a runtime server: a request line, a response line."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> dict:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed or truncated: {line[:200]!r}"
        return json.loads(line)

    def request(self, **msg) -> dict:
        self.send_raw(json.dumps(msg).encode() + b"\n")
        return self.recv()

    def execute(self, action: str = "", payload: str = "", env=None, headers=None) -> dict:
        headers = {"x-action": action, **(headers or {})}
        return self.request(type="execute", payload=payload, env=env or {}, headers=headers)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class RuntimeServer:
    """A runtime server subprocess with its socket and code dir in temp dirs."""

    def __init__(self, language: str):
        self.language = language
        self.spec = RUNTIMES[language]
        self.dir = Path(tempfile.mkdtemp(prefix="rt-"))  # short: sun_path < 108 bytes
        self.socket_path = str(self.dir / "rt.sock")
        self.code_dir = Path(tempfile.mkdtemp(prefix="rt-code-"))
        self.proc: subprocess.Popen | None = None
        self.clients: list[Client] = []

    def start(self) -> "RuntimeServer":
        env = {**os.environ, "FUNCTIONS_RUNTIME_SOCKET": self.socket_path}
        env.pop("RT_VAR", None)
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(self.spec["cmd"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.output()}"
            try:
                self.client().request(type="ping")
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"server did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "server.log").read_text(errors="replace")

    def client(self) -> Client:
        client = Client(self.socket_path)
        self.clients.append(client)
        return client

    def write(self, sample: str) -> None:
        for rel, text in self.spec["samples"][sample].items():
            path = self.code_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def load(self, sample: str | None = None, entry: str | None = None) -> dict:
        if sample:
            self.write(sample)
        return self.client().request(type="load", codeDir=str(self.code_dir), entrypoint=entry or self.spec["entry"])

    def stop(self) -> None:
        for client in self.clients:
            try:
                client.close()
            except OSError:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.code_dir, ignore_errors=True)


@pytest.fixture(params=sorted(RUNTIMES))
def language(request) -> str:
    if not shutil.which(RUNTIMES[request.param]["cmd"][0]):
        pytest.skip(f"no interpreter for {request.param}")
    return request.param


@pytest.fixture
def make_server(language):
    started: list[RuntimeServer] = []

    def make() -> RuntimeServer:
        server = RuntimeServer(language)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def rt(make_server) -> RuntimeServer:
    return make_server().start()


@pytest.fixture
def app(rt) -> Client:
    """A server with the `app` sample loaded; returns a connection to it."""
    assert rt.load("app") == {"ok": True}
    return rt.client()


# --- protocol basics ---------------------------------------------------------

def test_ping(rt):
    assert rt.client().request(type="ping") == {"ok": True, "runtime": rt.language, "pid": rt.proc.pid}


def test_socket_replaces_stale_file_and_is_world_writable(make_server):
    server = make_server()
    Path(server.socket_path).write_text("stale")
    server.start()
    mode = os.stat(server.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o666


def test_sigterm_exits_cleanly_and_removes_socket(rt):
    rt.proc.send_signal(signal.SIGTERM)
    assert rt.proc.wait(5) == 0
    assert not os.path.exists(rt.socket_path)


def test_garbled_and_unknown_messages_keep_connection_usable(rt):
    client = rt.client()
    client.send_raw(b"this is not json\n")
    reply = client.recv()
    assert reply["ok"] is False and "invalid JSON" in reply["error"]
    for msg in ({"type": "bogus"}, [1, 2], "ping", {}, None):
        client.send_raw(json.dumps(msg).encode() + b"\n")
        reply = client.recv()
        assert reply["ok"] is False and "unknown message type" in reply["error"]
    client.send_raw(b"\n\n")  # blank lines are ignored
    assert client.request(type="ping")["ok"] is True


def test_execute_before_load(rt):
    reply = rt.client().execute("default")
    assert reply["statusCode"] == 500 and reply["error"] == "no code loaded"
    assert reply["body"] == reply["logs"] == reply["errors"] == ""


# --- load ----------------------------------------------------------------------

def test_load_missing_entrypoint_then_retry(rt):
    reply = rt.load(entry="nope" + Path(rt.spec["entry"]).suffix)
    assert reply["ok"] is False and "not found" in reply["error"]
    assert rt.load("app") == {"ok": True}
    assert rt.client().execute("default")["body"] == "plain"


@pytest.mark.parametrize("sample, expected", [
    ("syntax", "SyntaxError"),
    ("no-main", "function"),
    ("import-error", "failing at import"),
])
def test_load_errors(rt, sample, expected):
    reply = rt.load(sample)
    assert reply["ok"] is False
    assert expected in reply["error"]
    assert rt.spec["entry"] in reply["error"]
    assert rt.client().execute("default")["error"] == "no code loaded"


def test_load_only_once(app, rt):
    reply = rt.load("app")
    assert reply["ok"] is False and "already loaded" in reply["error"]
    assert app.execute("default")["body"] == "plain"


def test_dependencies_resolve_from_code_dir(rt):
    """Python: <codeDir>/.deps and codeDir on sys.path; Node: node_modules."""
    assert rt.load("deps") == {"ok": True}
    reply = rt.client().execute()
    assert (reply["statusCode"], reply["body"], reply["error"]) == (200, "fakedep+toplevel", "")


@pytest.mark.parametrize("prefix", ["", "./"])
def test_nested_entrypoint(rt, prefix):
    entry = prefix + "src/index" + Path(rt.spec["entry"]).suffix
    assert rt.load("nested", entry=entry) == {"ok": True}
    reply = rt.client().execute()
    assert (reply["statusCode"], reply["body"], reply["error"]) == (200, "helper+fakedep+sibling", "")


def test_alternative_exports(rt):
    """Python: async def main; Node: an ES module default export."""
    assert rt.load("alt-export", entry=ALT_ENTRY[rt.language]) == {"ok": True}
    reply = rt.client().execute()
    assert (reply["statusCode"], reply["body"], reply["error"]) == (200, '{"async":true}', "")


# --- execute ---------------------------------------------------------------------

@pytest.mark.parametrize("action, status, body", [
    ("json", 201, '{"a":1,"b":[1,"x"],"u":"\u00e9"}'),
    ("send", 202, "hello"),
    ("default", 200, "plain"),
])
def test_responses(app, action, status, body):
    reply = app.execute(action)
    assert reply == {"statusCode": status, "body": body, "logs": "", "errors": "", "error": ""}


def test_payload_env_headers_echo_and_environ_restored(app):
    env = {"RT_VAR": "v1", "APPWRITE_FUNCTION_ID": "fn1", "NUM": 5}
    headers = {"x-action": "echo", "x-custom": "h"}
    reply = app.execute("echo", payload='{"k": [1, 2]}', env=env, headers=headers)
    assert reply["statusCode"] == 200, reply
    assert json.loads(reply["body"]) == {"payload": '{"k": [1, 2]}', "env": env, "headers": headers,
                                         "environ": "v1"}
    reply = app.execute("echo")  # the previous env is gone
    assert json.loads(reply["body"])["environ"] is None
    assert json.loads(reply["body"])["env"] == {}


def test_output_captured_per_execution(app):
    for n in ("1", "2"):
        reply = app.execute("print", payload=n)
        assert reply == {"statusCode": 200, "body": "printed", "logs": f"out {n}\ninfo\nmore\n",
                         "errors": f"err {n}\nwarn\n", "error": ""}
    assert app.execute("default")["logs"] == ""


def test_huge_output_truncated_to_last_16384(app):
    reply = app.execute("huge")
    assert reply["statusCode"] == 200
    for field, marker in (("logs", "END-OUT"), ("errors", "END-ERR"), ("body", "END-BODY")):
        assert len(reply[field]) == LIMIT and reply[field].endswith(marker), field


def test_exception_gives_500_with_traceback_and_later_executions_work(app, rt):
    reply = app.execute("raise")
    assert reply["statusCode"] == 500 and reply["body"] == ""
    assert "boom" in reply["error"] and rt.spec["entry"] in reply["error"]
    assert ("Traceback" in reply["error"]) if rt.language == "python" else ("Error: boom" in reply["error"])
    assert reply["logs"] == "before failure\n"
    reply = app.execute("json")
    assert (reply["statusCode"], reply["error"], reply["logs"]) == (201, "", "")


def test_no_response(app):
    reply = app.execute("silent")
    assert reply["statusCode"] == 500 and "respon" in reply["error"]
    assert app.execute("default")["statusCode"] == 200


def test_several_responses(app, rt):
    reply = app.execute("twice")
    assert (reply["statusCode"], reply["body"]) == (200, rt.spec["twice"])


def test_sequential_and_pipelined_requests_on_two_connections(app, rt):
    other = rt.client()
    for i in range(5):
        for client, tag in ((app, "a"), (other, "b")):
            reply = client.execute("echo", payload=f"{tag}{i}")
            assert json.loads(reply["body"])["payload"] == f"{tag}{i}"
    # several requests written at once are answered in order
    app.send_raw(b"".join(
        json.dumps({"type": "execute", "payload": f"p{i}", "headers": {"x-action": "echo"}}).encode() + b"\n"
        for i in range(3)) + b'{"type":"ping"}\n')
    assert [json.loads(app.recv()["body"])["payload"] for _ in range(3)] == ["p0", "p1", "p2"]
    assert app.recv()["ok"] is True
    other.close()
    assert app.execute("default")["body"] == "plain"


def test_per_execution_overhead(app, rt):
    """Median round trip of a trivial execution over the socket."""
    for _ in range(50):
        app.execute("default")
    times = []
    for _ in range(1000):
        start = time.perf_counter()
        reply = app.execute("default")
        times.append(time.perf_counter() - start)
        assert reply["statusCode"] == 200
    median_ms = statistics.median(times) * 1000
    print(f"\n{rt.language}: median {median_ms:.3f} ms, p99 {sorted(times)[989] * 1000:.3f} ms per execution")
    assert median_ms < 5
