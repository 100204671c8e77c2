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

PYTHON_HOSTILE = r'''
import json, os, subprocess, sys, time


def sockets():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found[fd] = int(target[8:-1])
    return found


def main(req, res):
    action = req.headers.get("x-action", "")
    if action == "bg" or req.payload == "bg":  # reliability-probe.md F1, verbatim
        if req.payload == "bg" and os.fork() == 0:
            return res.json({"from": "child", "payload": req.payload})
        return res.json({"from": "parent", "payload": req.payload})
    if action == "fds":
        return res.json({"sockets": sockets(), "pid": os.getpid()})
    if action == "junk":  # every fd it can find, during the execution
        for fd in range(256):
            try:
                os.write(fd, b'junk\n{"id":null,"statusCode":200,"body":"forged"}\n')
            except OSError:
                pass
        return res.json({"payload": req.payload})
    if action == "late-junk":  # a forked child writes to every fd after the reply
        if os.fork() == 0:
            time.sleep(0.3)
            for fd in range(256):
                try:
                    os.write(fd, b'{"id":null,"statusCode":200,"body":"forged"}\n')
                except OSError:
                    pass
            os._exit(0)
        return res.json({"payload": req.payload})
    if action == "size":
        return res.send(req.payload[0] * int(req.payload[1:]))
    if action == "bytes":
        sys.stdout.buffer.write(b"\xff\xfe out\n")
        sys.stdout.flush()
        return res.send(b"\xff ok")
    if action == "fd-output":
        print("from print")
        os.write(1, b"from os.write\n")
        os.system("echo from-a-child; echo child-err >&2")
        return res.send("ok")
    if action == "long-error":
        raise ValueError("e" * 20000 + "END")
    if action == "exit":
        print("before exit", flush=True)
        os._exit(3)
    if action == "spawn-bg":
        return res.json({"pid": subprocess.Popen(["sleep", "30"]).pid})
    return res.json({"payload": req.payload})
'''

NODE_HOSTILE = r'''
const fs = require('fs');
const cp = require('child_process');

function sockets() {
  const found = {};
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target;
    try { target = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch (_) { continue; }
    if (target.startsWith('socket:[')) found[fd] = Number(target.slice(8, -1));
  }
  return found;
}

module.exports = async (req, res) => {
  const action = req.headers['x-action'] || '';
  if (action === 'fds') return res.json({ sockets: sockets(), pid: process.pid });
  if (action === 'junk') {
    for (let fd = 0; fd < 256; fd++) {
      try { fs.writeSync(fd, 'junk\n{"id":null,"statusCode":200,"body":"forged"}\n'); } catch (_) { /* not writable */ }
    }
    return res.json({ payload: req.payload });
  }
  if (action === 'late-junk' || req.payload === 'bg') {  // a child writes on every inherited fd after the reply
    cp.spawn('sh', ['-c', 'sleep 0.3; echo junk >&3; echo junk >&4'], { stdio: ['ignore', 'ignore', 'ignore', 3, 4], detached: true }).unref();
    return res.json({ from: 'parent', payload: req.payload });
  }
  if (action === 'size') return res.send(req.payload[0].repeat(Number(req.payload.slice(1))));
  if (action === 'bytes') {
    process.stdout.write(Buffer.from([0xff, 0xfe, 0x20, 0x6f, 0x75, 0x74, 0x0a]));
    return res.send(Buffer.from([0xff, 0x20, 0x6f, 0x6b]));
  }
  if (action === 'fd-output') {
    console.log('from print');
    fs.writeSync(1, 'from os.write\n');
    cp.execSync('echo from-a-child; echo child-err >&2', { stdio: 'inherit' });
    return res.send('ok');
  }
  if (action === 'long-error') throw new Error('e'.repeat(20000) + 'END');
  if (action === 'exit') { fs.writeSync(1, 'before exit\n'); process.exit(3); }
  if (action === 'spawn-bg') return res.json({ pid: cp.spawn('sleep', ['30'], { stdio: 'ignore', detached: true }).pid });
  return res.json({ payload: req.payload });
};
'''
RUNTIMES["python"]["samples"]["hostile"] = {"main.py": PYTHON_HOSTILE}
RUNTIMES["node"]["samples"]["hostile"] = {"index.js": NODE_HOSTILE}

# Output for live executions ("live": true): what each action writes, on which fd, when.
PYTHON_LIVE = r'''
import os, subprocess, sys, time


def main(req, res):
    action = req.headers.get("x-action", "")
    if action == "slow":
        print("first")
        sys.stderr.write("err-1\n")
        time.sleep(0.3)
        print("second")
        sys.stderr.write("err-2\n")
        time.sleep(0.3)
        return res.send("done")
    if action == "child":
        subprocess.run(["sh", "-c", "echo child; echo child-err >&2"])
        return res.send("ok")
    if action == "bytes":
        os.write(1, b"\xff\xfeok\n")
        return res.send("ok")
    if action == "long":  # no newline: two whole pieces at once, the rest at the end
        os.write(1, ("0123456789" * 4000).encode())
        time.sleep(0.3)
        return res.send("ok")
    if action == "exact":  # a whole piece, later the newline that ends its line
        os.write(1, b"y" * 16384)
        time.sleep(0.1)
        os.write(1, b"\nz\n")
        return res.send("ok")
    if action == "unterminated":
        os.write(1, b"first\nlast")
        os.write(2, b"no newline")
        return res.send("ok")
    if action == "many":
        for i in range(10000):
            print(i)
        return res.send("ok")
    return res.send("unknown action " + action, 400)
'''

NODE_LIVE = r'''
const fs = require('fs');
const cp = require('child_process');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = async (req, res) => {
  switch (req.headers['x-action'] || '') {
    case 'slow':
      console.log('first');
      console.error('err-1');
      await sleep(300);
      console.log('second');
      console.error('err-2');
      await sleep(300);
      return res.send('done');
    case 'child':
      cp.execSync('echo child; echo child-err >&2', { stdio: 'inherit' });
      return res.send('ok');
    case 'bytes':
      fs.writeSync(1, Buffer.from([0xff, 0xfe, 0x6f, 0x6b, 0x0a]));
      return res.send('ok');
    case 'long':  // no newline: two whole pieces at once, the rest at the end
      fs.writeSync(1, '0123456789'.repeat(4000));
      await sleep(300);
      return res.send('ok');
    case 'exact':  // a whole piece, later the newline that ends its line
      fs.writeSync(1, 'y'.repeat(16384));
      await sleep(100);
      fs.writeSync(1, '\nz\n');
      return res.send('ok');
    case 'unterminated':
      fs.writeSync(1, 'first\nlast');
      fs.writeSync(2, 'no newline');
      return res.send('ok');
    case 'many':
      for (let i = 0; i < 10000; i++) console.log(String(i));
      return res.send('ok');
  }
  return res.send('unknown action ' + req.headers['x-action'], 400);
};
'''
RUNTIMES["python"]["samples"]["live"] = {"main.py": PYTHON_LIVE}
RUNTIMES["node"]["samples"]["live"] = {"index.js": NODE_LIVE}


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

    def live(self, action: str = "", **extra):
        """A live execution: ([(arrival time, frame), ...], reply, reply's arrival time)."""
        msg = {"type": "execute", "payload": "", "headers": {"x-action": action}, "live": True, **extra}
        self.send_raw(json.dumps(msg).encode() + b"\n")
        frames = []
        while True:
            line = self.recv()
            now = time.monotonic()
            if line.get("type") != "output":
                return frames, line, now
            frames.append((now, line))

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
        self.extra_env: dict = {}

    def start(self) -> "RuntimeServer":
        env = {**os.environ, "FUNCTIONS_RUNTIME_SOCKET": self.socket_path, **self.extra_env}
        env.pop("RT_VAR", None)
        if "FUNCTIONS_RUNTIME_PID_NAMESPACE" not in self.extra_env:
            env.pop("FUNCTIONS_RUNTIME_PID_NAMESPACE", None)
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
    reply = rt.client().request(type="ping")
    assert reply == {"ok": True, "runtime": rt.language, "pid": rt.proc.pid, "version": reply["version"]}
    assert reply["version"].split(".")[0].isdigit()  # the interpreter's own version


def test_socket_replaces_stale_file_and_is_private(make_server):
    """F2: mode 0600 from the start (created under umask 0177), owned by the runtime's user."""
    server = make_server()
    Path(server.socket_path).write_text("stale")
    server.start()
    st = os.stat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


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


def test_huge_output_keeps_the_last_16384_with_a_cut_marker_and_the_whole_body(app):
    reply = app.execute("huge")
    assert reply["statusCode"] == 200 and reply["error"] == ""
    assert reply["body"] == "z" * 50000 + "END-BODY"  # within the limit: whole
    for field, total, marker, char in (("logs", 100007, "END-OUT", "x"), ("errors", 50007, "END-ERR", "y")):
        text = reply[field]
        assert len(text) == LIMIT and text.endswith(marker), field
        first, rest = text.split("\n", 1)
        assert first == f"[\u2026 {total - len(rest)} earlier characters cut \u2026]", first
        assert set(rest[:-len(marker)]) == {char}, field


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


# --- isolation: request ids, the worker, hostile code (reliability-probe.md F1, F5) ---

def _alive(proc: subprocess.Popen, timeout: float) -> bool:
    """False once the server process exited within `timeout` seconds."""
    try:
        proc.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        return True


@pytest.fixture
def hostile(rt) -> Client:
    assert rt.load("hostile") == {"ok": True}
    return rt.client()


def test_request_ids_are_echoed(app):
    assert app.request(type="ping", id="abc-1")["id"] == "abc-1"
    reply = app.request(type="execute", id=42, payload="p", headers={"x-action": "default"})
    assert (reply["id"], reply["body"]) == (42, "plain")
    reply = app.request(type="bogus", id="x")
    assert reply["id"] == "x" and reply["ok"] is False
    assert "id" not in app.execute("default")  # no id, none echoed


def test_the_worker_holds_no_service_socket(hostile, rt):
    """The user's code runs in a child with neither the listening socket nor a connection."""
    reply = hostile.execute("fds")
    assert reply["statusCode"] == 200, reply
    seen = json.loads(reply["body"])
    assert seen["pid"] != rt.proc.pid
    service = set()  # the listener and every accepted connection show the path in /proc/net/unix
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == rt.socket_path:
            service.add(int(fields[6]))
    supervisor = {int(os.readlink(f"/proc/{rt.proc.pid}/fd/{fd}")[8:-1]) for fd in os.listdir(f"/proc/{rt.proc.pid}/fd")
                  if os.readlink(f"/proc/{rt.proc.pid}/fd/{fd}").startswith("socket:[")}
    assert service & supervisor, "sanity: the supervisor holds the service's sockets"
    assert not set(seen["sockets"].values()) & service, (seen, service)


def test_junk_on_every_fd_fails_clearly_and_never_reaches_another_caller(make_server):
    server = make_server().start()
    assert server.load("hostile") == {"ok": True}
    client = server.client()
    reply = client.execute("junk", payload="u1-data")
    # its own answer, or a clear failure; never the forged one
    assert reply.get("body") != "forged"
    if reply["statusCode"] != 200:
        assert "compromised" in reply["error"] or "worker" in reply["error"], reply
        assert reply["closing"] is True
        assert not _alive(server.proc, 5), "a compromised runtime exits"
    else:
        assert json.loads(reply["body"]) == {"payload": "u1-data"}
    fresh = make_server().start()
    assert fresh.load("hostile") == {"ok": True}
    assert json.loads(fresh.client().execute(payload="u2-data")["body"]) == {"payload": "u2-data"}


def _own_or_failed(client: Client, payload: str) -> None:
    try:
        reply = client.execute("", payload=payload)
    except (AssertionError, OSError):
        return  # the connection closed: a failure, not someone else's answer
    if reply["statusCode"] == 200:
        assert json.loads(reply["body"])["payload"] == payload, reply
    else:
        assert reply["body"] == "" and reply["error"], reply


def test_probe_f1_reproduction_every_caller_gets_its_own_answer(make_server):
    """Execute `bg` (Python: forks, and the child returns; Node: a child writes on
    the worker's fds later), then `u2-data`, `u3-data`."""
    server = make_server().start()
    assert server.load("hostile") == {"ok": True}
    client = server.client()
    reply = client.execute("", payload="bg")
    assert reply["statusCode"] == 200 and json.loads(reply["body"]) == {"from": "parent", "payload": "bg"}, reply
    for payload in ("u2-data", "u3-data"):
        _own_or_failed(client, payload)
    time.sleep(0.5)
    for payload in ("u4-data", "u5-data"):
        _own_or_failed(client, payload)


def test_bytes_on_the_reply_channel_while_idle_end_the_runtime(make_server):
    server = make_server().start()
    assert server.load("hostile") == {"ok": True}
    client = server.client()
    reply = client.execute("late-junk", payload="u1")
    assert json.loads(reply["body"])["payload"] == "u1"
    assert not _alive(server.proc, 5), "unsolicited bytes from the worker: the supervisor exits"
    assert client.reader.readline() == b""  # closed, nothing forged arrives
    assert "no request was in flight" in server.output()


def test_worker_exit_is_answered_and_ends_the_runtime(hostile, rt):
    reply = hostile.execute("exit")
    assert reply["statusCode"] == 500 and reply["body"] == "" and reply["closing"] is True, reply
    assert "exited unexpectedly (exit code 3)" in reply["error"]
    assert "before exit" in reply["logs"]  # printed before the exit: kept
    assert not _alive(rt.proc, 5)


@pytest.mark.parametrize("limit", [None, 1000])
def test_response_limit(rt, limit):
    msg = {"type": "load", "codeDir": str(rt.code_dir), "entrypoint": rt.spec["entry"]}
    rt.write("hostile")
    if limit is not None:
        msg["responseMaxBytes"] = limit
    assert rt.client().request(**msg) == {"ok": True}
    client = rt.client()
    limit = limit or 1048576
    reply = client.execute("size", payload=f"a{limit}")
    assert (reply["statusCode"], reply["error"], len(reply["body"])) == (200, "", limit)  # whole, not cut
    for payload, size in ((f"a{limit + 1}", limit + 1), (f"\u00e9{limit // 2 + 1}", 2 * (limit // 2 + 1))):
        reply = client.execute("size", payload=payload)
        assert reply == {"statusCode": 500, "body": "", "logs": "", "errors": "", "error":
                         f"Execution failed: the response body is {size} bytes; the limit is {limit} bytes "
                         f"(FUNCTIONS_RESPONSE_MAX_BYTES)."}
    assert client.execute(payload="after")["statusCode"] == 200  # still usable


def test_long_error_is_cut_with_a_marker(hostile):
    reply = hostile.execute("long-error")
    assert reply["statusCode"] == 500
    error = reply["error"]
    assert len(error) <= LIMIT and error.startswith("[\u2026 ") and "earlier characters cut \u2026]\n" in error
    assert error.rstrip().endswith("END") or "END" in error[-200:]


def test_output_captured_at_the_fd_level(hostile):
    reply = hostile.execute("fd-output")
    assert reply["statusCode"] == 200, reply
    assert reply["logs"] == "from print\nfrom os.write\nfrom-a-child\n"
    assert reply["errors"] == "child-err\n"


def test_non_utf8_is_replaced(hostile):
    reply = hostile.execute("bytes")
    assert (reply["statusCode"], reply["body"], reply["logs"]) == (200, "\ufffd ok", "\ufffd\ufffd out\n")


def test_no_process_is_killed_outside_a_container(make_server):
    """FUNCTIONS_RUNTIME_PID_NAMESPACE=1 alone is not enough: PID 1 is not the
    runtime's parent here, so nothing on the host may be touched."""
    server = make_server()
    server.extra_env = {"FUNCTIONS_RUNTIME_PID_NAMESPACE": "1"}
    server.start()
    assert server.load("hostile") == {"ok": True}
    pid = json.loads(server.client().execute("spawn-bg")["body"])["pid"]
    try:
        time.sleep(1.5)  # past an idle reap
        assert Path(f"/proc/{pid}").exists()
        assert (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) not in ("T", "Z")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- live output frames ("live": true) ------------------------------------------

@pytest.fixture
def live(rt) -> Client:
    assert rt.load("live") == {"ok": True}
    return rt.client()


def _lines(frames, stream: str) -> list:
    return [line for _, frame in frames if frame["stream"] == stream for line in frame["lines"]]


def _check_frames(frames, **id_) -> None:
    for _, frame in frames:
        assert frame == {**id_, "type": "output", "stream": frame["stream"], "lines": frame["lines"]}, frame
        assert frame["stream"] in ("stdout", "stderr") and frame["lines"], frame
        assert all(isinstance(line, str) for line in frame["lines"]), frame


def test_live_frames_arrive_while_the_function_runs(live):
    start = time.monotonic()
    frames, reply, replied = live.live("slow", id=7)
    assert reply == {"id": 7, "statusCode": 200, "body": "done", "logs": "first\nsecond\n",
                     "errors": "err-1\nerr-2\n", "error": ""}
    _check_frames(frames, id=7)
    assert _lines(frames, "stdout") == ["first", "second"]
    assert _lines(frames, "stderr") == ["err-1", "err-2"]
    first = frames[0]
    assert first[1]["lines"] == (["first"] if first[1]["stream"] == "stdout" else ["err-1"])
    assert replied - first[0] >= 0.2, f"first frame {first[0] - start:.3f} s, reply {replied - start:.3f} s"
    # the reply is the same as without live
    plain = live.request(type="execute", id=7, payload="", headers={"x-action": "slow"})
    assert plain == reply


def test_live_frames_carry_the_request_id_as_given(live):
    for id_ in ({"id": "abc"}, {"id": None}, {"id": {"n": [1, "x"]}}, {}):
        frames, reply, _ = live.live("unterminated", **id_)
        assert reply == {**id_, "statusCode": 200, "body": "ok", "logs": "first\nlast", "errors": "no newline",
                         "error": ""}
        _check_frames(frames, **id_)


def test_live_unterminated_last_lines_are_sent_before_the_reply(live):
    frames, reply, _ = live.live("unterminated")
    _check_frames(frames)
    assert _lines(frames, "stdout") == ["first", "last"]
    assert _lines(frames, "stderr") == ["no newline"]
    assert (reply["logs"], reply["errors"]) == ("first\nlast", "no newline")


def test_live_child_process_output(live):
    frames, reply, _ = live.live("child")
    assert reply["statusCode"] == 200, reply
    assert (_lines(frames, "stdout"), _lines(frames, "stderr")) == (["child"], ["child-err"])
    assert (reply["logs"], reply["errors"]) == ("child\n", "child-err\n")


def test_live_non_utf8_is_replaced(live):
    frames, reply, _ = live.live("bytes")
    assert _lines(frames, "stdout") == ["\ufffd\ufffdok"]
    assert reply["logs"] == "\ufffd\ufffdok\n"


def test_live_long_line_goes_in_pieces_of_16384(live):
    text = "0123456789" * 4000
    frames, reply, replied = live.live("long")
    _check_frames(frames)
    assert [len(line) for line in _lines(frames, "stdout")] == [16384, 16384, 7232]
    assert "".join(_lines(frames, "stdout")) == text
    # the whole pieces went out at once, the held rest at the end
    assert frames[0][1]["lines"] == [text[:16384], text[16384:32768]]
    assert replied - frames[0][0] >= 0.2
    assert frames[-1][1]["lines"] == [text[32768:]]
    assert reply == live.execute("long")  # as without live
    # a newline right after a whole piece ends that line: no empty line
    frames, reply, _ = live.live("exact")
    assert _lines(frames, "stdout") == ["y" * 16384, "z"]


def test_live_many_lines_arrive_complete_in_order_and_batched(live, rt):
    frames, reply, _ = live.live("many")
    assert reply["statusCode"] == 200, reply
    lines = _lines(frames, "stdout")
    assert lines == [str(i) for i in range(10000)]
    print(f"\n{rt.language}: 10000 lines in {len(frames)} frames")
    assert len(frames) <= 1000, len(frames)  # batched: far fewer frames than lines


def test_no_frames_without_live(live):
    for extra in ({}, {"live": False}):
        live.send_raw(json.dumps({"type": "execute", "payload": "", "headers": {"x-action": "unterminated"},
                                  **extra}).encode() + b"\n" + b'{"type":"ping","id":"after"}\n')
        reply = live.recv()
        assert reply == {"statusCode": 200, "body": "ok", "logs": "first\nlast", "errors": "no newline", "error": ""}
        assert live.recv()["id"] == "after"  # the next line is the ping's reply: no frame came in between


def test_live_frames_precede_the_failure_reply(hostile, rt):
    frames, reply, _ = hostile.live("exit", id="x")
    assert reply["statusCode"] == 500 and reply["closing"] is True, reply
    assert "exited unexpectedly (exit code 3)" in reply["error"]
    _check_frames(frames, id="x")
    assert _lines(frames, "stdout") == ["before exit"]
    assert not _alive(rt.proc, 5)


# --- the service's side: server/engine/invoker.py -------------------------------

class FakeRuntime:
    """A UNIX socket server that answers the way `answer(request) -> bytes` says."""

    def __init__(self, answer):
        self.dir = tempfile.mkdtemp(prefix="fk-")
        self.path = os.path.join(self.dir, "s")
        self.answer, self.writers = answer, []

    async def __aenter__(self):
        import asyncio

        async def handle(reader, writer):
            self.writers.append(writer)
            while line := await reader.readline():
                data = self.answer(json.loads(line))
                if data:
                    writer.write(data)

        self.server = await asyncio.start_unix_server(handle, self.path)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _run(coro):
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, 20))


def test_invoker_request_ids_are_fresh_and_checked():
    from server.engine.invoker import RuntimeCompromised, RuntimeConnection

    seen = []

    def echo(req):
        seen.append(req["id"])
        return json.dumps({"id": req["id"], "ok": True}).encode() + b"\n"

    async def scenario():
        async with FakeRuntime(echo) as fake:
            conn = await RuntimeConnection.open(fake.path)
            for _ in range(3):
                await conn.ping(5)
            assert len(set(seen)) == 3 and all(len(i) > 16 for i in seen)
            conn.close()
        for bad in ({"id": "someone-else", "ok": True}, {"ok": True}):
            async with FakeRuntime(lambda req, bad=bad: json.dumps(bad).encode() + b"\n") as fake:
                conn = await RuntimeConnection.open(fake.path)
                with pytest.raises(RuntimeCompromised, match="compromised"):
                    await conn.ping(5)
                assert conn.at_eof()
                with pytest.raises(RuntimeCompromised):
                    await conn.execute("x", {}, {}, 5)

    _run(scenario())


def test_invoker_unsolicited_bytes_mark_an_idle_connection_compromised():
    import asyncio

    from server.engine.invoker import RuntimeCompromised, RuntimeConnection

    def twice(req):  # the reply, then a second one (a forked runtime)
        line = json.dumps({"id": req["id"], "ok": True}).encode() + b"\n"
        return line + line

    async def scenario():
        async with FakeRuntime(lambda req: json.dumps({"id": req["id"], "ok": True}).encode() + b"\n") as fake:
            conn = await RuntimeConnection.open(fake.path)
            await conn.ping(5)
            assert not conn.at_eof()
            fake.writers[0].write(b'{"id":"guess","statusCode":200,"body":"forged"}\n')  # while idle
            for _ in range(200):
                if conn.at_eof():
                    break
                await asyncio.sleep(0.01)
            assert conn.at_eof() and "no request was in flight" in conn.compromised
            with pytest.raises(RuntimeCompromised):
                await conn.execute("x", {}, {}, 5)
        async with FakeRuntime(twice) as fake:
            conn = await RuntimeConnection.open(fake.path)
            with pytest.raises(RuntimeCompromised, match="more than one reply"):
                await conn.ping(5)
            assert conn.at_eof()

    _run(scenario())


def test_invoker_against_the_runtimes(make_server):
    """The real runtime through RuntimeConnection: load with response_max_bytes,
    over and under the limit, a closing reply, and the reply limit."""
    from server.engine.invoker import MAX_REPLY_BYTES, RuntimeConnection, reply_limit

    assert reply_limit(1048576) == MAX_REPLY_BYTES >= 6 * 1048576
    server = make_server().start()
    server.write("hostile")

    async def scenario():
        conn = await RuntimeConnection.open(server.socket_path)
        await conn.ping(5)
        assert await conn.load(str(server.code_dir), server.spec["entry"], 10, response_max_bytes=2_000_000) is None
        body = "\x01" * 2_000_000  # 12 MB as JSON: a legal reply is never refused
        reply = await conn.execute("\x01" + "2000000", {}, {"x-action": "size"}, 20)
        assert (reply["statusCode"], reply["body"] == body) == (200, True)
        reply = await conn.execute("a2000001", {}, {"x-action": "size"}, 20)
        assert reply["statusCode"] == 500 and "2000001 bytes; the limit is 2000000 bytes" in reply["error"]
        assert not conn.at_eof()
        reply = await conn.execute("", {}, {"x-action": "exit"}, 20)
        assert reply["statusCode"] == 500 and "exit code 3" in reply["error"]
        assert conn.at_eof()  # "closing": never reused
        conn.close()

    _run(scenario())
