"""Functions runtime server for Python (stdlib only, Python 3.8+).

Runs inside a function container as `python3 /opt/functions-runtime/server.py`
and executes the user's code on request from the service.

Transport: a UNIX stream socket at $FUNCTIONS_RUNTIME_SOCKET (a stale one is
removed first; the socket is made mode 0666). Newline-delimited JSON: one
request line, one response line; a connection may carry many requests in
sequence and several connections may be open. Requests are handled one at a
time, so executions are sequential.

  {"type":"ping"}
      -> {"ok":true,"runtime":"python","pid":N}
  {"type":"load","codeDir":"/code","entrypoint":"src/index.py"}
      -> {"ok":true} | {"ok":false,"error":"..."}
      Once per container. Puts codeDir, <codeDir>/.deps (pip --target) and the
      entrypoint's directory on sys.path, imports the entrypoint by file (as
      `userlib.<dotted path>` so relative imports work) and requires `main`.
  {"type":"execute","payload":"...","env":{...},"headers":{...}}
      -> {"statusCode":int,"body":str,"logs":str,"errors":str,"error":str}
      Calls main(req, res) (Appwrite 0.13 contract: req.payload/env/headers;
      res.send(text, status=200) / res.json(obj, status=200) return a response
      that main returns; if main returns None the last one made is used).
      Output printed during the call goes to logs (stdout) / errors (stderr).
      os.environ is overlaid with env for the call and restored afterwards.
      logs, errors and body are cut to their last 16384 characters.
  anything else -> {"ok":false,"error":"..."}
"""

import codecs
import importlib
import importlib.util
import io
import json
import os
import selectors
import signal
import socket
import sys
import traceback

LIMIT = 16384
MAX_LINE = 64 * 1024 * 1024
sys.dont_write_bytecode = True  # code dirs are read-only; don't even try


class Capture(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr for the whole process life: text is
    collected while an execution runs, and passed to the real stream otherwise
    (so loggers bound to sys.stderr at import time are captured too)."""

    def __init__(self, real):
        self.real, self.parts, self.size = real, None, 0
        self.buffer = _BinaryCapture(self)

    def start(self):
        self.parts, self.size = [], 0

    def stop(self):
        text, self.parts = "".join(self.parts or ()), None
        self.buffer.reset()
        return text[-LIMIT:]

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if self.parts is None:
            return self.real.write(s)
        self.parts.append(s)
        self.size += len(s)
        if self.size > 4 * LIMIT:  # bound memory for chatty functions
            self.parts = ["".join(self.parts)[-LIMIT:]]
            self.size = LIMIT
        return len(s)

    def flush(self):
        if self.parts is None:
            self.real.flush()

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self.real.fileno()

    @property
    def encoding(self):
        return "utf-8"


class _BinaryCapture(io.RawIOBase):
    """sys.stdout.buffer: decodes bytes (incrementally) into the text capture."""

    def __init__(self, text):
        self.text, self.decoder = text, codecs.getincrementaldecoder("utf-8")("replace")

    def reset(self):
        self.decoder.reset()

    def writable(self):
        return True

    def write(self, b):
        if self.text.parts is None:
            self.text.real.flush()
            return self.text.real.buffer.write(b)
        self.text.write(self.decoder.decode(bytes(b)))
        return len(b)


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
        self.out = sys.stdout = Capture(sys.stdout)
        self.err = sys.stderr = Capture(sys.stderr)

    def handle(self, msg):
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "execute":
            return self.execute(msg)
        if kind == "ping":
            return {"ok": True, "runtime": "python", "pid": os.getpid()}
        if kind == "load":
            return self.load(msg)
        return {"ok": False, "error": "unknown message type: %r" % (kind,)}

    def load(self, msg):
        if self.main is not None:
            return {"ok": False, "error": "code already loaded"}
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
        except BaseException as e:  # SyntaxError, ImportError, SystemExit, ...
            if isinstance(e, KeyboardInterrupt):
                raise
            for key in [k for k in sys.modules if k == "userlib" or k.startswith("userlib.") or k == name]:
                del sys.modules[key]
            return {"ok": False, "error": "failed to load %s:\n%s" % (entry, format_exc(e))}
        main = getattr(module, "main", None)
        if not callable(main):
            return {"ok": False, "error": "%s does not define a main(req, res) function" % entry}
        self.main = main
        return {"ok": True}

    def execute(self, msg):
        if self.main is None:
            return {"statusCode": 500, "body": "", "logs": "", "errors": "", "error": "no code loaded"}
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
        sys.stdout, sys.stderr = self.out, self.err
        self.out.start()
        self.err.start()
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
        except (Exception, SystemExit) as e:
            status, body, error = 500, "", format_exc(e)
        finally:
            logs, errors = self.out.stop(), self.err.stop()
            sys.stdout, sys.stderr = self.out, self.err
            restore_environ(saved)
        return {"statusCode": status, "body": body[-LIMIT:], "logs": logs, "errors": errors, "error": error[-LIMIT:]}


async def _await(awaitable):
    return await awaitable


def format_exc(e):
    """The traceback without this server's and importlib's own frames."""
    stack = [f for f in traceback.extract_tb(e.__traceback__)
             if f.filename != __file__ and not f.filename.startswith("<frozen importlib")]
    head = "Traceback (most recent call last):\n" if stack else ""
    lines = traceback.format_list(stack) + traceback.format_exception_only(type(e), e)
    return (head + "".join(lines)).rstrip("\n")


def restore_environ(saved):
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def serve(path, runtime):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(16)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    buffers = {}
    print("functions-runtime python %s listening on %s" % (sys.version.split()[0], path), file=sys.__stderr__, flush=True)

    def close(conn):
        sel.unregister(conn)
        buffers.pop(conn, None)
        conn.close()

    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                conn.settimeout(60)  # only bounds writes to a stuck client
                sel.register(conn, selectors.EVENT_READ, True)
                buffers[conn] = b""
                continue
            conn = key.fileobj
            try:
                chunk = conn.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                close(conn)
                continue
            data = buffers[conn] + chunk
            try:
                while b"\n" in data:
                    line, _, data = data.partition(b"\n")
                    if line.strip():
                        conn.sendall(reply(runtime, line))
                if len(data) > MAX_LINE:
                    conn.sendall(b'{"ok":false,"error":"request line too long"}\n')
                    raise OSError("line too long")
                buffers[conn] = data
            except OSError:
                close(conn)


def reply(runtime, line):
    try:
        msg = json.loads(line)
    except ValueError as e:
        out = {"ok": False, "error": "invalid JSON: %s" % e}
    else:
        try:
            out = runtime.handle(msg)
        except Exception as e:  # a bug here must not kill the container
            out = {"ok": False, "error": "runtime error: %s" % format_exc(e)}
    return json.dumps(out, ensure_ascii=False).encode("utf-8", "replace") + b"\n"


def main():
    path = os.environ.get("FUNCTIONS_RUNTIME_SOCKET")
    if not path:
        sys.exit("FUNCTIONS_RUNTIME_SOCKET is not set")

    def stop(*_):
        try:
            os.unlink(path)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    serve(path, Runtime())


if __name__ == "__main__":
    main()
