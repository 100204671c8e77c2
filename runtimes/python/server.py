"""Functions runtime server for Python (stdlib only, Python 3.8+), and the
supervisor of every language that has a worker of its own.

Runs inside a function container as `python3 .../python/server.py` and
executes the user's code on request from the service. For another language:
`python3 .../python/server.py --language php -- php .../php/worker.php`
(the worker command; see "Workers of other languages" below).

Two processes:
  - the supervisor (the process the container starts) listens on
    $FUNCTIONS_RUNTIME_SOCKET and talks to the service;
  - the worker (`server.py --worker R W`, or the given worker command with R
    and W appended, started by the supervisor at once) loads and runs the
    user's code. It never holds the service's socket or a
    connection: it gets requests on pipe R, answers on pipe W, its stdout and
    stderr are pipes the supervisor reads all the time (so output is captured
    at the file-descriptor level: print, C extensions, child processes), and
    its stdin is /dev/null.

Transport: a UNIX stream socket at $FUNCTIONS_RUNTIME_SOCKET (a stale one is
removed first; the socket is created mode 0600, owned by the sandbox user; the
service connects as root). Newline-delimited JSON: one request line, one
response line; a connection may carry many requests in sequence and several
connections may be open. Requests are handled one at a time, so executions are
sequential. A request may carry "id" (any JSON value): the reply echoes it.

  {"id":..,"type":"ping"}
      -> {"id":..,"ok":true,"runtime":"python","pid":N}   (N: the supervisor;
         "version": the interpreter's, when the worker reports one)
  {"id":..,"type":"load","codeDir":"/code","entrypoint":"src/index.py","responseMaxBytes":1048576}
      -> {"id":..,"ok":true} | {"id":..,"ok":false,"error":"..."}
      Once per container. Puts codeDir, <codeDir>/.deps (pip --target) and the
      entrypoint's directory on sys.path, imports the entrypoint by file (as
      `userlib.<dotted path>` so relative imports work) and requires `main`.
      responseMaxBytes (default 1048576) bounds the response body.
  {"id":..,"type":"execute","payload":"...","env":{...},"headers":{...}}
      -> {"id":..,"statusCode":int,"body":str,"logs":str,"errors":str,"error":str}
      Calls main(req, res) (Appwrite 0.13 contract: req.payload/env/headers;
      res.send(text, status=200) / res.json(obj, status=200) return a response
      that main returns; if main returns None the last one made is used).
      Output written during the call to fd 1 goes to logs, to fd 2 to errors.
      os.environ is overlaid with env for the call and restored afterwards.
      The body is returned whole; a body over responseMaxBytes UTF-8 bytes
      fails the execution (500, body "", error says so). logs, errors and
      error keep their last part: at most 16384 characters including a first
      line "[… N earlier characters cut …]" when something was cut.
  {"id":..,"type":"execute",...,"live":true}
      The same, and while the execution runs, output frames go out on the
      requesting connection before its reply (only when "live" is true):
        {"id":..,"type":"output","stream":"stdout"|"stderr","lines":["...",..]}
      ("id" echoed as in the reply, left out when the request has none.)
      fd 1 is "stdout", fd 2 "stderr"; each stream is decoded as UTF-8 on its
      own (invalid bytes become U+FFFD) and split at "\\n" (not part of the
      line). A line over 16384 characters goes as pieces of 16384 (each a
      line); an unterminated last part is held until more output completes it,
      it reaches 16384 characters or the execution ends (then it is a last
      line before the reply). All lines read at once from a pipe share one
      frame, sent at once; order within a stream is kept. logs/errors in the
      reply are as without "live". A failed execution (see below) still gets
      the frames for the output read before its error reply. Frames are
      written as they come: while the service does not read them, the
      worker's output is not read either (it waits, as with a full pipe).
  anything else -> {"id":..,"ok":false,"error":"..."}

The container is compromised when the worker answers with a wrong id, writes
anything on its reply pipe while no request is in flight, or dies: the
supervisor then answers the pending request (if any) with an error and
"closing":true, and exits (closing every connection), so the service discards
the container. (A worker killed by SIGKILL, e.g. by the kernel's OOM killer, is
not answered for: the supervisor exits 137 and the service finds out why.)

Workers of other languages speak the same newline-delimited JSON on fds R
(requests, read) and W (replies, written), numbers given as their last two
arguments; stdin is /dev/null, stdout and stderr are the pipes above.
  ping    -> {"id":..,"ok":true,"version":"<interpreter version>"}
  load    -> {"id":..,"ok":true} | {"id":..,"ok":false,"error":"..."}
  execute -> {"id":..,"statusCode":int,"body":str,"error":str}
Exactly one reply line per request, with the request's id, written after the
worker has flushed its own output; nothing else is ever written on W. The
supervisor adds logs and errors, cuts error to 16384 characters and fails a
body over responseMaxBytes, so workers need not. A worker exits when R ends.

Processes an execution leaves behind are killed, but only when the supervisor
is certain to be alone in its container's PID namespace:
FUNCTIONS_RUNTIME_PID_NAMESPACE=1, PID 1 is docker-init or tini, and PID 1 is
the supervisor's parent. Then, after each load and execution and before
answering, every process but PID 1, the supervisor and the worker is stopped
(SIGSTOP until none runs) and killed, and the same is done every second while
idle. If they cannot be killed in time, the container counts as compromised.
"""

import codecs
import importlib
import importlib.util
import itertools
import json
import os
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback

LIMIT = 16384
DEFAULT_RESPONSE_MAX = 1048576
MAX_LINE = 64 * 1024 * 1024
CUT_MARK = "[\u2026 %d earlier characters cut \u2026]\n"
IDLE_REAP = 1.0  # seconds between reaps while idle
sys.dont_write_bytecode = True  # code dirs are read-only; don't even try


def cut(text, total=None):
    """The last part of `text` (whose full length was `total`), at most LIMIT
    characters including a first line that says how much was cut."""
    total = len(text) if total is None else total
    if total <= LIMIT:
        return text
    base = len(CUT_MARK % 0) - 1
    keep = LIMIT - base - len(str(total))  # never too long
    for digits in range(1, 21):
        if len(str(total - (LIMIT - base - digits))) == digits:
            keep = LIMIT - base - digits
            break
    return CUT_MARK % (total - keep) + text[-keep:]


def to_utf8(text):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return text.encode("utf-8", "replace")


def dumps_line(obj):
    return to_utf8(json.dumps(obj, ensure_ascii=False, separators=(",", ":"))) + b"\n"


def format_exc(e):
    """The traceback without this server's and importlib's own frames."""
    stack = [f for f in traceback.extract_tb(e.__traceback__)
             if f.filename != __file__ and not f.filename.startswith("<frozen importlib")]
    head = "Traceback (most recent call last):\n" if stack else ""
    lines = traceback.format_list(stack) + traceback.format_exception_only(type(e), e)
    return (head + "".join(lines)).rstrip("\n")


def _libc_prctl(option, arg):
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except Exception:  # no ctypes in this image: best effort
        pass


# ---------------------------------------------------------------------------
# The worker: loads and runs the user's code.
# ---------------------------------------------------------------------------

class Request:
    __slots__ = ("payload", "env", "headers")

    def __init__(self, payload, env, headers):
        self.payload, self.env, self.headers = payload, env, headers

    def __repr__(self):
        return "Request(payload=%r, headers=%r)" % (self.payload, self.headers)


class Response:
    """What res.send()/res.json() return; `main` returns it."""

    __slots__ = ("body", "status")

    def __init__(self, body, status):
        self.body, self.status = body, status


class ResponseFactory:
    __slots__ = ("last",)

    def __init__(self):
        self.last = None

    def send(self, text="", status=200):
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        elif not isinstance(text, str):
            text = "" if text is None else str(text)
        self.last = Response(text, int(status))
        return self.last

    def json(self, obj, status=200):
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        self.last = Response(body, int(status))
        return self.last


def env_text(value):
    return value if isinstance(value, str) else json.dumps(value)


class Runtime:
    def __init__(self):
        self.main = None
        self.response_max = DEFAULT_RESPONSE_MAX

    def handle(self, msg):
        kind = msg.get("type")
        if kind == "execute":
            return self.execute(msg)
        if kind == "load":
            return self.load(msg)
        if kind == "ping":
            return {"ok": True, "version": sys.version.split()[0]}
        return {"ok": False, "error": "unknown message type: %r" % (kind,)}

    def load(self, msg):
        if self.main is not None:
            return {"ok": False, "error": "code already loaded"}
        limit = msg.get("responseMaxBytes")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            self.response_max = limit
        code_dir = os.path.abspath(str(msg.get("codeDir") or "/code"))
        entry = os.path.normpath(str(msg.get("entrypoint") or "main.py"))
        path = os.path.join(code_dir, entry)
        if entry.startswith("..") or os.path.isabs(entry):
            return {"ok": False, "error": "entrypoint must be inside the code directory: %s" % entry}
        if not os.path.isfile(path):
            return {"ok": False, "error": "entrypoint not found: %s" % path}
        import site  # once per container; already imported at startup

        before = list(sys.path)
        deps = os.path.join(code_dir, ".deps")
        if os.path.isdir(deps):
            site.addsitedir(deps)  # also honours .pth files
        added = [p for p in sys.path if p not in before]
        front = [code_dir] + added + [os.path.dirname(path)]
        sys.path[:] = list(dict.fromkeys(front + [p for p in before if p not in front]))
        importlib.invalidate_caches()
        try:
            os.chdir(code_dir)
        except OSError:
            pass
        parts = entry[:-3].split(os.sep) if entry.endswith(".py") else None
        dotted = parts and all(p.isidentifier() for p in parts)
        name = "userlib." + ".".join(parts) if dotted else "userlib_main"
        try:
            pkg = type(sys)("userlib")
            pkg.__path__, pkg.__package__ = [code_dir], "userlib"
            sys.modules["userlib"] = pkg
            if dotted and len(parts) > 1:
                importlib.import_module(name.rpartition(".")[0])  # parent packages
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except BaseException as e:  # SyntaxError, ImportError, SystemExit, KeyboardInterrupt, ...
            for key in [k for k in sys.modules if k == "userlib" or k.startswith("userlib.") or k == name]:
                del sys.modules[key]
            return {"ok": False, "error": cut("failed to load %s:\n%s" % (entry, format_exc(e)))}
        main = getattr(module, "main", None)
        if not callable(main):
            return {"ok": False, "error": "%s does not define a main(req, res) function" % entry}
        self.main = main
        return {"ok": True}

    def execute(self, msg):
        if self.main is None:
            return {"statusCode": 500, "body": "", "error": "no code loaded"}
        payload, env, headers = msg.get("payload"), msg.get("env"), msg.get("headers")
        payload = payload if isinstance(payload, str) else ("" if payload is None else json.dumps(payload))
        env = env if isinstance(env, dict) else {}
        headers = headers if isinstance(headers, dict) else {}
        saved = {}  # only the variables set here are restored (os.environ is slow to copy)
        for key, value in env.items():
            key = str(key)
            try:
                saved[key] = os.environ.get(key)
                os.environ[key] = env_text(value)
            except (ValueError, OSError):  # e.g. "=" or NUL in a name
                saved.pop(key, None)
        res = ResponseFactory()
        status, body, error = 500, "", ""
        try:
            result = self.main(Request(payload, env, headers), res)
            if hasattr(result, "__await__"):
                import asyncio  # only for async def main

                result = asyncio.run(_await(result))
            if result is None:
                result = res.last
            if isinstance(result, Response):
                status, body = result.status, result.body
            elif isinstance(result, str):
                status, body = 200, result
            elif isinstance(result, (dict, list)):
                status, body = 200, res.json(result).body
            elif result is None:
                error = "Function returned no response: return res.send(...) or res.json(...)"
            else:
                error = "Function returned %s; return res.send(...) or res.json(...)" % type(result).__name__
        except (Exception, SystemExit, KeyboardInterrupt) as e:
            status, body, error = 500, "", format_exc(e)
        finally:
            restore_environ(saved)
        size = len(to_utf8(body)) if len(body) * 4 > self.response_max else 0
        if size > self.response_max:
            status, body = 500, ""
            error = ("Execution failed: the response body is %d bytes; the limit is %d bytes "
                     "(FUNCTIONS_RESPONSE_MAX_BYTES)." % (size, self.response_max))
        return {"statusCode": status, "body": body, "error": cut(error)}


async def _await(awaitable):
    return await awaitable


def restore_environ(saved):
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def worker_main(request_fd, reply_fd):
    _libc_prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: go with the supervisor
    me = os.getpid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    runtime = Runtime()
    requests = os.fdopen(request_fd, "rb", buffering=0)
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = requests.read(1 << 16)
            if not chunk:
                os._exit(0)  # the supervisor went away
            buffer += chunk
        line, _, buffer = buffer.partition(b"\n")
        try:
            msg = json.loads(line)
            out = runtime.handle(msg)
        except BaseException as e:  # a bug here: say so, the supervisor decides
            msg, out = {}, {"ok": False, "error": "runtime error: %s" % format_exc(e)}
        if os.getpid() != me:
            os._exit(0)  # a child the user's code forked, back in this loop: never answer
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        out["id"] = msg.get("id") if isinstance(msg, dict) else None
        data = dumps_line(out)
        view = memoryview(data)
        while view:
            view = view[os.write(reply_fd, view):]


# ---------------------------------------------------------------------------
# The supervisor: the service's socket, the worker, stray processes.
# ---------------------------------------------------------------------------

class OutputTail:
    """The bounded tail of one of the worker's output pipes during an execution."""

    __slots__ = ("decoder", "parts", "size", "total")

    def __init__(self):
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.parts, self.size, self.total = [], 0, 0

    def add(self, data):
        text = self.decoder.decode(data)
        if text:
            self.parts.append(text)
            self.size += len(text)
            self.total += len(text)
            if self.size > 4 * LIMIT:  # bounded memory for chatty functions
                keep = "".join(self.parts)[-LIMIT:]
                self.parts, self.size = [keep], len(keep)

    def text(self):
        rest = self.decoder.decode(b"", True)
        self.parts.append(rest)
        self.total += len(rest)
        return cut("".join(self.parts), self.total)


LIVE_BATCH = 1 << 20  # characters of lines that make a frame go out within one drain


class LiveLines:
    """The output frames of one of the worker's output pipes during a live
    execution: an incremental decoder and the unterminated last part."""

    __slots__ = ("conn", "head", "decoder", "partial", "glued")

    def __init__(self, conn, msg, stream):
        self.conn = conn
        head = {"id": msg["id"]} if "id" in msg else {}
        head.update(type="output", stream=stream, lines=None)
        self.head = dumps_line(head)[:-len(b"null}\n")]  # '{"id":..,...,"lines":'
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.partial = ""
        self.glued = False  # the last line sent was a full piece of a longer one

    def feed(self, data, final=False):
        """The lines completed by `data` (all of them when `final`)."""
        text = self.decoder.decode(data, final)
        if self.glued and text:
            self.glued = False
            if text[0] == "\n":  # ends the line whose last piece went out already
                text = text[1:]
        if self.partial:
            text = self.partial + text
        parts = text.split("\n")
        rest = parts.pop()
        lines = []
        for line in parts:
            if len(line) > LIMIT:
                lines.extend(line[i:i + LIMIT] for i in range(0, len(line), LIMIT))
            else:
                lines.append(line)
        if len(rest) >= LIMIT:
            whole = len(rest) - len(rest) % LIMIT
            lines.extend(rest[i:i + LIMIT] for i in range(0, whole, LIMIT))
            rest = rest[whole:]
            self.glued = not rest
        if final and rest:
            lines.append(rest)
            rest = ""
        self.partial = rest
        return lines

    def frame(self, lines):
        return self.head + to_utf8(json.dumps(lines, ensure_ascii=False, separators=(",", ":"))) + b"}\n"


def in_own_pid_namespace():
    """Certain to be alone in the container's PID namespace (else never kill anything)."""
    if os.environ.get("FUNCTIONS_RUNTIME_PID_NAMESPACE") != "1" or os.getppid() != 1:
        return False
    try:
        with open("/proc/1/comm") as fh:
            return fh.read().strip() in ("docker-init", "tini")
    except OSError:
        return False


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3].decode("ascii", "replace")


# None: the entry is gone. A process gone between the listing and the read
# may have forked first, so "stopped" (stable: can fork no more) leaves it out.
DEAD = (None, "Z", "X", "x")
STOPPED = ("Z", "X", "x", "T", "t")


class Reaper:
    """Kills every process of the container but PID 1, the supervisor and the worker."""

    def __init__(self, enabled):
        self.enabled, self.me = enabled, os.getpid()

    def others(self, exempt):
        return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in exempt]

    def reap(self, worker_pid):
        """True when nothing is left (always True when disabled). worker_pid None: no worker."""
        if not self.enabled:
            return True
        exempt = {1, self.me}
        if worker_pid is not None and worker_pid > 1:
            exempt.add(worker_pid)
        else:
            worker_pid = None
        if not self.others(exempt):
            # The usual case: one listing, empty. Any other pid, even one gone by
            # the time it is read (a fork bomb churns faster than it can be
            # listed), takes the slow path.
            return True
        deadline = time.monotonic() + 3.0
        if worker_pid is not None:
            _signal(worker_pid, signal.SIGSTOP)  # it may be spawning more (a daemon thread)
        try:
            for _ in range(1000):  # stop them all: stopped processes cannot fork
                running = 0
                for pid in self.others(exempt):
                    if proc_state(pid) not in STOPPED:
                        running += 1
                        _signal(pid, signal.SIGSTOP)
                if not running or time.monotonic() > deadline:
                    break
            for _ in range(3):
                left = [p for p in self.others(exempt) if proc_state(p) not in DEAD]
                for pid in left:
                    _signal(pid, signal.SIGKILL)
                for _ in range(100):
                    left = [p for p in left if proc_state(p) not in DEAD]
                    if not left:
                        break
                    time.sleep(0.005)
                if not left and not [p for p in self.others(exempt) if proc_state(p) not in DEAD]:
                    return True
                if time.monotonic() > deadline:
                    break
            return False
        finally:
            if worker_pid is not None:
                _signal(worker_pid, signal.SIGCONT)


def _signal(pid, sig):
    if not isinstance(pid, int) or pid <= 1:  # never 0, -1 (every process) or init
        return
    try:
        os.kill(pid, sig)
    except OSError:
        pass


class Compromised(Exception):
    pass


class Supervisor:
    def __init__(self, path, language="python", worker_command=None):
        self.path = path
        self.language = language
        # Started with the two pipe fds appended; default: this file's own worker.
        self.worker_command = worker_command or [sys.executable, "-u", os.path.abspath(__file__), "--worker"]
        self.sel = selectors.DefaultSelector()
        self.container = in_own_pid_namespace()
        self.reaper = Reaper(self.container)
        self.ids = itertools.count(1)
        self.queue = []  # (conn, line) in arrival order, across connections
        self.buffers = {}
        self.pending = None  # the request the worker is working on
        self.reply_buf = b""
        self.response_max = DEFAULT_RESPONSE_MAX  # until a load says otherwise
        self.out = self.err = None  # OutputTails while a request is pending
        self.live_out = self.live_err = None  # LiveLines while a live execution is pending
        self.last_reap = time.monotonic()
        self.start_worker()

    # -- the worker ----------------------------------------------------------

    def start_worker(self):
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = {k: v for k, v in os.environ.items()
               if k not in ("FUNCTIONS_RUNTIME_SOCKET", "FUNCTIONS_RUNTIME_PID_NAMESPACE")}
        self.worker = subprocess.Popen(
            self.worker_command + [str(req_r), str(rep_w)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(req_r, rep_w), close_fds=True, env=env)
        os.close(req_r)
        os.close(rep_w)
        self.req_w, self.rep_r = req_w, rep_r
        self.out_fd, self.err_fd = self.worker.stdout.fileno(), self.worker.stderr.fileno()
        for fd, tag in ((rep_r, "reply"), (self.out_fd, "out"), (self.err_fd, "err")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, tag)

    def drain(self, fd, tail, live=None, final=False):
        """Read what the worker wrote so far (non-blocking); False at EOF.
        With `live`, the lines read go out as one frame (the held last part
        too when `final`)."""
        if live is not None:
            return self.drain_live(fd, tail, live, final)
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                return False
            if tail is not None:
                tail.add(data)

    def drain_live(self, fd, tail, live, final):
        lines, size, more = [], 0, True
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                more = False
                break
            tail.add(data)
            new = live.feed(data)
            if new:
                lines += new
                size += sum(map(len, new))
                if size >= LIVE_BATCH:  # a writer faster than this loop: bounded frames
                    self.send_frame(live, lines)
                    lines, size = [], 0
        if final:
            lines += live.feed(b"", True)
        if lines:
            self.send_frame(live, lines)
        return more

    def send_frame(self, live, lines):
        if live is not self.live_out and live is not self.live_err:
            return  # the connection failed: no more frames
        try:
            live.conn.sendall(live.frame(lines))
        except OSError:
            self.live_out = self.live_err = None
            self.close(live.conn)

    def on_output(self, fd, tail, live):
        if not self.drain(fd, tail, live):
            self.sel.unregister(fd)  # the user's code closed it

    def send_to_worker(self, conn, msg, wid):
        self.pending = (conn, msg, wid)
        self.reply_buf = b""  # (output that arrived while idle was read and dropped by the loop)
        self.out, self.err = OutputTail(), OutputTail()
        if msg.get("live") is True and msg.get("type") == "execute":
            self.live_out, self.live_err = LiveLines(conn, msg, "stdout"), LiveLines(conn, msg, "stderr")
        fwd = dict(msg)
        fwd["id"] = wid
        data = dumps_line(fwd)
        try:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self.req_w, view):]
                except BlockingIOError:
                    time.sleep(0.001)
        except OSError:
            raise Compromised("the worker process does not take requests") from None

    def on_reply(self):
        try:
            data = os.read(self.rep_r, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.worker_gone()
        if self.pending is None:
            raise Compromised("the worker wrote on its reply channel while no request was in flight")
        self.reply_buf += data
        if b"\n" not in data:
            if len(self.reply_buf) > 6 * self.response_max + 8 * 6 * LIMIT:
                raise Compromised("the worker's reply is too long")
            return
        line, _, rest = self.reply_buf.partition(b"\n")
        if rest:
            raise Compromised("the worker wrote more than one reply")
        try:
            reply = json.loads(line)
        except ValueError:
            raise Compromised("the worker's reply is not JSON: %r" % line[:200]) from None
        conn, msg, wid = self.pending
        if not isinstance(reply, dict) or reply.get("id") != wid:
            raise Compromised("the worker's reply has the wrong request id")
        del reply["id"]
        self.finish(reply)

    def finish(self, reply):
        conn, msg, wid = self.pending
        self.drain(self.out_fd, self.out, self.live_out, True)
        self.drain(self.err_fd, self.err, self.live_err, True)
        if msg.get("type") == "execute":
            reply = self.execution_reply(reply)
        elif msg.get("type") == "ping" and reply.get("ok") is True:
            version = reply.get("version")
            reply = {"ok": True, "runtime": self.language, "pid": os.getpid()}
            if isinstance(version, str) and version:
                reply["version"] = version
        elif msg.get("type") == "load" and reply.get("ok") is True:
            limit = msg.get("responseMaxBytes")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
                self.response_max = limit
        clean = self.reaper.reap(self.worker.pid)
        self.last_reap = time.monotonic()
        self.pending, self.out, self.err = None, None, None
        self.live_out = self.live_err = None
        if not clean:
            self.answer(conn, msg, dict(reply, closing=True))
            self.fail("processes started by the function could not be stopped")
        self.answer(conn, msg, reply)

    def execution_reply(self, reply):
        """The service's reply from the worker's: the same rules for every
        language's worker (status, body limit, cut error), plus the output."""
        status, body, error = reply.get("statusCode", 500), reply.get("body", ""), reply.get("error", "")
        if not isinstance(status, int) or isinstance(status, bool):
            status, error = 500, error or "the function's status code is not an integer"
        body = body if isinstance(body, str) else ""
        error = error if isinstance(error, str) else json.dumps(error)
        size = len(to_utf8(body)) if len(body) * 4 > self.response_max else 0
        if size > self.response_max:
            status, body = 500, ""
            error = ("Execution failed: the response body is %d bytes; the limit is %d bytes "
                     "(FUNCTIONS_RESPONSE_MAX_BYTES)." % (size, self.response_max))
        return {"statusCode": status, "body": body, "logs": self.out.text(), "errors": self.err.text(),
                "error": cut(error)}

    def worker_gone(self):
        try:
            code = self.worker.wait(2)
        except subprocess.TimeoutExpired:
            raise Compromised("the worker closed its reply channel") from None
        if code == -signal.SIGKILL:
            self.exit(137, None)  # likely the OOM killer: the service finds out
        what = "exit code %d" % code if code >= 0 else "killed by signal %s" % _signame(-code)
        raise Compromised("the runtime exited unexpectedly (%s)" % what)

    # -- failing ---------------------------------------------------------------

    def fail(self, reason, code=1):
        """The container is compromised: answer what is pending, then exit."""
        if self.pending is not None:
            conn, msg, _ = self.pending
            logs = errors = ""
            if self.out is not None:
                self.drain(self.out_fd, self.out, self.live_out, True)
                self.drain(self.err_fd, self.err, self.live_err, True)
                logs, errors = self.out.text(), self.err.text()
            self.pending = None
            self.live_out = self.live_err = None
            error = "Execution failed: %s; the container is discarded." % reason
            if msg.get("type") == "execute":
                reply = {"statusCode": 500, "body": "", "logs": logs, "errors": errors, "error": error}
            else:
                reply = {"ok": False, "error": error}
            reply["closing"] = True
            self.answer(conn, msg, reply)
        print("functions-runtime: %s; exiting" % reason, file=sys.stderr, flush=True)
        self.exit(code, None)

    def exit(self, code, _):
        try:
            self.worker.kill()
        except OSError:
            pass
        self.reaper.reap(None)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os._exit(code)

    # -- the service's side ----------------------------------------------------

    def answer(self, conn, msg, reply):
        if isinstance(msg, dict) and "id" in msg:
            reply["id"] = msg["id"]
        try:
            conn.sendall(dumps_line(reply))
        except OSError:
            self.close(conn)

    def close(self, conn):
        if conn in self.buffers:
            self.sel.unregister(conn)
            del self.buffers[conn]
            conn.close()
        self.queue = [(c, line) for c, line in self.queue if c is not conn]

    def accept(self, listener):
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        if self.container and peer_pid(conn) != 0:  # a process of this container (the user's code)
            conn.close()
            return
        conn.setblocking(True)
        conn.settimeout(60)  # only bounds writes to a stuck client
        self.sel.register(conn, selectors.EVENT_READ, conn)
        self.buffers[conn] = b""

    def on_conn(self, conn):
        try:
            chunk = conn.recv(1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self.close(conn)
            return
        data = self.buffers[conn] + chunk
        while b"\n" in data:
            line, _, data = data.partition(b"\n")
            if line.strip():
                self.queue.append((conn, line))
        if len(data) > MAX_LINE:
            try:
                conn.sendall(b'{"ok":false,"error":"request line too long"}\n')
            except OSError:
                pass
            self.close(conn)
            return
        self.buffers[conn] = data

    def start_next(self):
        """Handle queued requests until one goes to the worker (then it is pending)."""
        while self.queue and self.pending is None:
            conn, line = self.queue.pop(0)
            try:
                msg = json.loads(line)
            except ValueError as e:
                self.answer(conn, None, {"ok": False, "error": "invalid JSON: %s" % e})
                continue
            kind = msg.get("type") if isinstance(msg, dict) else None
            # A ping goes through the worker too: the runtime is ready when the
            # worker answers, not merely when this process listens.
            if kind in ("execute", "load", "ping"):
                wid = msg.get("id")
                if not isinstance(wid, str) or not wid:
                    wid = "s%d-%s" % (next(self.ids), secrets.token_hex(8))
                self.send_to_worker(conn, msg, wid)
            else:
                self.answer(conn, msg, {"ok": False, "error": "unknown message type: %r" % (kind,)})

    def serve(self):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: no window with a wider mode
        try:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            listener.bind(self.path)
        finally:
            os.umask(old)
        listener.listen(16)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, "listen")
        print("functions-runtime %s (supervisor: python %s) listening on %s"
              % (self.language, sys.version.split()[0], self.path), file=sys.stderr, flush=True)
        while True:
            try:
                self.start_next()
                timeout = IDLE_REAP if self.container and self.pending is None else None
                events = self.sel.select(timeout)
                for key, _ in events:
                    tag = key.data
                    if tag == "listen":
                        self.accept(listener)
                    elif tag == "reply":
                        self.on_reply()
                    elif tag == "out":
                        self.on_output(self.out_fd, self.out, self.live_out)
                    elif tag == "err":
                        self.on_output(self.err_fd, self.err, self.live_err)
                    elif key.fileobj in self.buffers:
                        self.on_conn(key.fileobj)
                if self.container and self.pending is None and time.monotonic() - self.last_reap >= IDLE_REAP:
                    self.last_reap = time.monotonic()
                    if not self.reaper.reap(self.worker.pid):
                        raise Compromised("processes started by the function could not be stopped")
            except Compromised as e:
                self.fail(str(e))


def peer_pid(conn):
    try:
        return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
    except (OSError, AttributeError):
        return -1


def _signame(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]), int(sys.argv[3]))
        return
    language, worker_command = "python", None
    args = sys.argv[1:]
    if args[:1] == ["--language"] and len(args) >= 4 and args[2] == "--":
        language, worker_command = args[1], args[3:]
    elif args:
        sys.exit("usage: server.py [--language NAME -- WORKER-COMMAND...]")
    path = os.environ.get("FUNCTIONS_RUNTIME_SOCKET")
    if not path:
        sys.exit("FUNCTIONS_RUNTIME_SOCKET is not set")
    _libc_prctl(4, 0)  # PR_SET_DUMPABLE 0: the worker (same uid) cannot ptrace us or take our fds
    supervisor = Supervisor(path, language, worker_command)

    def stop(*_):
        supervisor.exit(0, None)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    supervisor.serve()


if __name__ == "__main__":
    main()
