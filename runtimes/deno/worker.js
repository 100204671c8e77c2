// The Deno worker of the runtime supervisor (runtimes/python/server.py,
// `--language deno`). Started by worker.sh as `deno eval ... R W`, in the code
// directory: Deno reads the function's deno.json / package.json / deno.lock
// from the directory it starts in, and its import map is fixed at start, so
// the function's bare imports ("greeter", "@std/path", npm packages) resolve
// as with `deno run` in the code directory.
//
// Late code (a warm pool's stem cell): the worker starts before the code is in
// the code directory, so Deno has not seen its deno.json / package.json /
// node_modules / .deno. A load that finds any of those that were not there at
// the start (worker.sh lists them in FUNCTIONS_DENO_SEEN) or finds the code
// directory is not the start directory (a mount over it) restarts the worker:
// execve of worker.sh through FFI, same pid, same fds R and W, in the code
// directory, with the load request in FUNCTIONS_DENO_PENDING; the new worker
// answers that request (the supervisor sees one reply). Without FFI the load
// fails with a message that says why.
//
// Newline-delimited JSON: requests are read from fd R, exactly one reply line
// per request goes to fd W (nothing else, ever). stdout and stderr are pipes
// the supervisor reads; console.* writes to them synchronously, so what the
// function printed is there before its reply is written.
//
//   {"id":..,"type":"ping"}    -> {"id":..,"ok":true,"version":"<Deno.version.deno>"}
//   {"id":..,"type":"load","codeDir":"/code","entrypoint":"src/mod.ts"}
//                              -> {"id":..,"ok":true} | {"id":..,"ok":false,"error":"..."}
//       Once per process. Imports the entrypoint (TypeScript or JavaScript,
//       a path inside codeDir) and keeps its default export, a function.
//   {"id":..,"type":"execute","payload":"...","env":{...},"headers":{...}}
//                              -> {"id":..,"statusCode":int,"body":str,"error":str}
//       Awaits fn(req, res), Appwrite 0.13 style: req.payload (string),
//       req.env, req.headers (objects); res.send(text, status = 200) and
//       res.json(obj, status = 200) set the response (the last call counts,
//       or the one the function returns). Deno.env is overlaid with env for
//       the call and restored afterwards.
//   anything else              -> {"id":..,"ok":false,"error":"unknown message type: ..."}
//
// The supervisor enforces the body limit and cuts long errors; exits at EOF on R.

const SELF = import.meta.url;
const encoder = new TextEncoder();
const decoder = new TextDecoder(); // invalid UTF-8 becomes U+FFFD
const startDir = Deno.cwd();

let fn = null; // the function, once loaded

// The stack of an error, without this worker's own frames (nor the colours
// Deno puts in some of its messages, such as "Module not found").
function errorText(e) {
  if (e instanceof Error) {
    const stack = typeof e.stack === 'string' && e.stack ? e.stack : `${e.name}: ${e.message}`;
    // deno-lint-ignore no-control-regex
    return stack.replace(/\x1b\[[0-9;]*m/g, '').split('\n')
      .filter((l) => !l.includes(SELF) && !l.includes('$deno$eval')).join('\n');
  }
  if (typeof e === 'string') return e;
  try {
    return `Thrown value: ${JSON.stringify(e)}`;
  } catch (_) {
    return `Thrown value: ${String(e)}`;
  }
}

function envText(v) {
  return typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function toStatus(status) {
  const n = Number(status === undefined ? 200 : status);
  if (!Number.isInteger(n)) throw new TypeError(`invalid status code: ${String(status)}`);
  return n;
}

// "a/./b/../c.ts" -> "a/c.ts"; null when it is absolute or leaves the directory.
function normalizeEntry(entry) {
  if (entry.startsWith('/') || entry.includes('\0')) return null;
  const parts = [];
  for (const part of entry.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (!parts.length) return null;
      parts.pop();
    } else {
      parts.push(part);
    }
  }
  return parts.length ? parts.join('/') : null;
}

function resolveDir(dir) {
  const parts = [];
  for (const part of (dir.startsWith('/') ? dir : `${Deno.cwd()}/${dir}`).split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') parts.pop();
    else parts.push(part);
  }
  return `/${parts.join('/')}`;
}

function fileUrl(path) {
  const url = new URL('file:///');
  url.pathname = path.replace(/%/g, '%25'); // the setter escapes the rest (spaces, #, ?)
  return url.href;
}

function sameDir(a, b) {
  try {
    return Deno.realPathSync(a) === Deno.realPathSync(b);
  } catch (_) {
    return a === b;
  }
}

// What worker.sh saw in the directory Deno started in (see there), and whether
// this process is already the restarted one (FUNCTIONS_DENO_PENDING).
const STARTUP_FILES = ['deno.json', 'deno.jsonc', 'package.json', 'deno.lock', 'node_modules',
  'node_modules/.deno', '.deno'];
const seenText = takeEnv('FUNCTIONS_DENO_SEEN');
const seenAtStart = seenText === undefined ? null : new Set(seenText.split(' ').filter(Boolean));
const dirSetByScript = takeEnv('FUNCTIONS_DENO_DIR_SET') === '1';
const pendingText = takeEnv('FUNCTIONS_DENO_PENDING');
const pendingRest = takeEnv('FUNCTIONS_DENO_PENDING_REST');
const restarted = pendingText !== undefined;

function takeEnv(name) { // read and remove (the function's env is the container's)
  const value = Deno.env.get(name);
  if (value !== undefined) Deno.env.delete(name);
  return value;
}

// The files of STARTUP_FILES in codeDir that the running Deno did not see at
// its start: those not there then, or all of them when codeDir is not the
// directory it started in (another path, or a mount made over it since).
// Unknown (not started by worker.sh) and the same directory: none.
function unseenFiles(codeDir) {
  let same = false;
  try {
    const here = Deno.statSync('.'); // the start directory (no chdir yet)
    const there = Deno.statSync(codeDir);
    same = here.dev === there.dev && here.ino === there.ino;
  } catch (_) { /* as if another directory */ }
  if (same && seenAtStart === null) return [];
  const found = STARTUP_FILES.filter((name) => {
    if (same && seenAtStart.has(name)) return false;
    try {
      Deno.statSync(`${codeDir}/${name}`);
      return true;
    } catch (_) {
      return false;
    }
  });
  // node_modules/.deno comes with node_modules: name the latter only.
  return found.includes('node_modules') ? found.filter((n) => n !== 'node_modules/.deno') : found;
}

async function load(msg) {
  if (fn) return { ok: false, error: 'code already loaded' };
  const codeDir = resolveDir(String(msg.codeDir || '/code'));
  const given = String(msg.entrypoint || 'mod.ts');
  const entry = normalizeEntry(given);
  if (entry === null) return { ok: false, error: `entrypoint must be inside the code directory: ${given}` };
  const file = `${codeDir}/${entry}`;
  let stat = null;
  try {
    stat = Deno.statSync(file);
  } catch (_) { /* not there */ }
  if (!stat || !stat.isFile) return { ok: false, error: `entrypoint not found: ${file}` };
  const unseen = restarted ? [] : unseenFiles(codeDir);
  try {
    Deno.chdir(codeDir);
  } catch (_) { /* keep the current directory */ }
  if (unseen.length) {
    const what = unseen.join(', ');
    if (!pipes.restart) {
      return {
        ok: false,
        error: `cannot load ${entry}: ${what} in ${codeDir} appeared after the worker started, ` +
          'and Deno reads them only when it starts; this worker cannot restart itself there without ' +
          'FFI (execve through libc.so.6): start the runtime once the code is in place',
      };
    }
    const failure = pipes.restart(msg, codeDir); // returns only when execve failed
    return { ok: false, error: `cannot load ${entry}: ${what} in ${codeDir} appeared after the worker started, ` +
      `and restarting the worker there failed: ${failure}` };
  }
  let mod;
  try {
    mod = await import(fileUrl(file));
  } catch (e) {
    let error = `failed to load ${entry}:\n${errorText(e)}`;
    if (!sameDir(codeDir, startDir)) {
      error += `\n(the worker started in ${startDir}, not in the code directory ${codeDir}: ` +
        'deno.json and package.json are read from the directory the worker starts in)';
    }
    return { ok: false, error };
  }
  const candidates = [mod.default, mod.default && mod.default.default];
  const found = candidates.find((c) => typeof c === 'function');
  if (!found) {
    return {
      ok: false,
      error: `${entry} must export a default function: export default async function (req, res) { ... } ` +
        `(its default export is ${mod.default === null ? 'null' : typeof mod.default})`,
    };
  }
  fn = found;
  return { ok: true };
}

class FunctionResponse { // what res.send() and res.json() make (and may be returned)
  constructor(body, statusCode) {
    this.body = body;
    this.statusCode = statusCode;
  }
}

async function execute(msg) {
  if (!fn) return { statusCode: 500, body: '', error: 'no code loaded' };
  const payload = typeof msg.payload === 'string' ? msg.payload
    : msg.payload == null ? '' : JSON.stringify(msg.payload);
  const env = isObject(msg.env) ? msg.env : {};
  const headers = isObject(msg.headers) ? msg.headers : {};
  const saved = new Map(); // only the variables set here are restored
  for (const [key, value] of Object.entries(env)) {
    try {
      const old = Deno.env.get(key);
      Deno.env.set(key, envText(value));
      saved.set(key, old);
    } catch (_) { /* a name or value the OS refuses ("=", NUL) */ }
  }
  let last = null;
  const res = {
    send(text = '', status = 200) {
      const statusCode = toStatus(status);
      let body;
      if (typeof text === 'string') body = text;
      else if (text == null) body = '';
      else if (text instanceof Uint8Array || text instanceof ArrayBuffer) body = decoder.decode(text);
      else if (typeof text === 'object') body = JSON.stringify(text) ?? '';
      else body = String(text);
      last = new FunctionResponse(body, statusCode);
      return last;
    },
    json(obj, status = 200) {
      const statusCode = toStatus(status);
      last = new FunctionResponse(JSON.stringify(obj) ?? '', statusCode);
      return last;
    },
  };
  let out;
  try {
    const result = await fn({ payload, env, headers }, res);
    const response = result instanceof FunctionResponse ? result : last;
    if (response) {
      out = { statusCode: response.statusCode, body: response.body, error: '' };
    } else {
      const what = result === undefined || result === null ? 'no response' : typeof result;
      out = {
        statusCode: 500, body: '',
        error: `Function returned ${what}: call res.send(...) or res.json(...)`,
      };
    }
  } catch (e) {
    out = { statusCode: 500, body: '', error: errorText(e) };
  } finally {
    for (const [key, value] of saved) {
      try {
        if (value === undefined) Deno.env.delete(key);
        else Deno.env.set(key, value);
      } catch (_) { /* as it was */ }
    }
  }
  await settle();
  out.body = out.body.toWellFormed(); // lone surrogates become U+FFFD, as in UTF-8
  out.error = out.error.toWellFormed();
  return out;
}

// Before an execution's reply: an empty write on stdout and on stderr, each
// queued behind the writes to the same stream the function did not await, and
// one turn of the event loop, in which rejections nobody handled are reported
// (on stderr). So that output belongs to this execution. (setTimeout(0) would
// do too, but costs about 2 ms; this, some 10 us.)
const EMPTY = new Uint8Array(0);
async function settle() {
  for (const stream of [Deno.stdout, Deno.stderr]) {
    try {
      await stream.write(EMPTY);
    } catch (_) { /* closed by the function */ }
  }
}

async function handle(msg) {
  if (!isObject(msg)) return { ok: false, error: 'runtime error: the request is not a JSON object' };
  try {
    if (msg.type === 'execute') return await execute(msg);
    if (msg.type === 'load') return await load(msg);
    if (msg.type === 'ping') return { ok: true, version: Deno.version.deno };
    return { ok: false, error: `unknown message type: ${JSON.stringify(msg.type) ?? String(msg.type)}` };
  } catch (e) {
    return { ok: false, error: `runtime error: ${errorText(e)}` };
  }
}

// The request and reply pipes, fds R and W. Deno 2 has no API over a file
// descriptor number, so libc's read and write do it (through FFI; the read
// runs on a thread of Deno's pool, so the event loop goes on meanwhile). That
// also marks R and W close-on-exec (the function's child processes do not
// inherit them) and makes the worker die with the supervisor
// (PR_SET_PDEATHSIG, as the Python worker). Without FFI (no glibc), the pipes
// are reopened through /proc/self/fd, which needs them to belong to this uid
// (true when the supervisor made them) and leaves them inheritable.
// restart(msg, codeDir) (FFI only): the process becomes worker.sh again, in
// the current directory, with the pending request msg (see the top).
function openPipes(r, w) {
  let libc = null;
  try {
    libc = Deno.dlopen('libc.so.6', {
      read: { parameters: ['i32', 'buffer', 'usize'], result: 'isize', nonblocking: true },
      write: { parameters: ['i32', 'buffer', 'usize'], result: 'isize' },
      fcntl: { parameters: ['i32', 'i32', 'i32'], result: 'i32' },
      prctl: { parameters: ['i32', 'u64', 'u64', 'u64', 'u64'], result: 'i32' },
      execve: { parameters: ['buffer', 'buffer', 'buffer'], result: 'i32' },
      sigprocmask: { parameters: ['i32', 'buffer', 'buffer'], result: 'i32' },
      __errno_location: { parameters: [], result: 'pointer' },
    });
  } catch (_) { /* no FFI here */ }
  if (libc) {
    const { read, write, fcntl, prctl } = libc.symbols;
    for (const fd of [r, w]) fcntl(fd, 2 /* F_SETFD */, 1 /* FD_CLOEXEC */);
    prctl(1 /* PR_SET_PDEATHSIG */, 9n /* SIGKILL */, 0n, 0n, 0n);
    return {
      restart: (msg, codeDir) => restart(libc.symbols, [r, w], msg, codeDir),
      async read(buffer) { // null at EOF (or when R is unusable)
        for (let failures = 0; failures < 100; failures++) {
          const n = Number(await read(r, buffer, buffer.length));
          if (n > 0) return n;
          if (n === 0) return null;
        } // -1 a hundred times: not EINTR
        return null;
      },
      writeAll(data) {
        let off = 0;
        for (let failures = 0; off < data.length;) {
          const n = Number(write(w, data.subarray(off), data.length - off));
          if (n > 0) off += n;
          else if (++failures > 100) throw new Error('the reply pipe does not take the reply');
        }
      },
    };
  }
  const reopen = (fd, options) => {
    try {
      return Deno.openSync(`/proc/self/fd/${fd}`, options);
    } catch (_) {
      return Deno.openSync(`/dev/fd/${fd}`, options);
    }
  };
  const requests = reopen(r, { read: true });
  const replies = reopen(w, { write: true });
  return {
    read: (buffer) => requests.read(buffer),
    writeAll(data) {
      let off = 0;
      while (off < data.length) off += replies.writeSync(data.subarray(off));
    },
  };
}

const cString = (text) => encoder.encode(`${text}\0`);

// execve("/bin/sh", ["sh", worker.sh, ...Deno.args], env + the pending
// request): returns only when it failed (what went wrong).
function restart(libc, fds, msg, codeDir) {
  const env = Deno.env.toObject();
  env.PWD = codeDir; // the shell's $PWD (worker.sh links DENO_DIR with it)
  env.FUNCTIONS_DENO_PENDING = JSON.stringify(msg); // JSON escapes NUL and newlines
  if (rest.length) env.FUNCTIONS_DENO_PENDING_REST = base64(rest); // (the supervisor sends one at a time)
  if (dirSetByScript || (ownDir && ownDir === env.DENO_DIR)) delete env.DENO_DIR; // worker.sh chooses again
  const shell = cString('/bin/sh');
  const argv = ['sh', `${import.meta.dirname}/worker.sh`, ...Deno.args].map(cString);
  const envp = Object.entries(env).filter(([k]) => k && !k.includes('=')).map(([k, v]) => cString(`${k}=${v}`));
  const table = (list) => {
    const pointers = new BigUint64Array(list.length + 1); // NULL-terminated
    list.forEach((buf, i) => { pointers[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf))); });
    return pointers;
  };
  const argvTable = table(argv);
  const envTable = table(envp);
  cleanUp(); // this process's own DENO_DIR
  for (const fd of fds) libc.fcntl(fd, 2 /* F_SETFD */, 0); // R and W stay open across execve
  const none = new BigUint64Array(16); // an empty sigset_t (glibc: 1024 bits)
  libc.sigprocmask(2 /* SIG_SETMASK */, none, null);
  libc.execve(shell, argvTable, envTable);
  const errno = new Deno.UnsafePointerView(libc.__errno_location()).getInt32();
  for (const fd of fds) libc.fcntl(fd, 2 /* F_SETFD */, 1 /* FD_CLOEXEC */);
  const name = { 2: 'ENOENT', 7: 'E2BIG', 8: 'ENOEXEC', 12: 'ENOMEM', 13: 'EACCES' }[errno] ?? `errno ${errno}`;
  // (argv and envp, whose memory the tables point to, are in use until here)
  return `execve(/bin/sh, ${argv.length} arguments, ${envp.length} variables) failed: ${name}`;
}

function base64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function unbase64(text) {
  try {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch (_) {
    return new Uint8Array(0);
  }
}

// A DENO_DIR worker.sh made for this process only (see there): removed at exit.
const ownDir = Deno.env.get('FUNCTIONS_DENO_OWN_DIR');
if (ownDir !== undefined) Deno.env.delete('FUNCTIONS_DENO_OWN_DIR');

function cleanUp() {
  if (ownDir && ownDir === Deno.env.get('DENO_DIR')) {
    try {
      Deno.removeSync(ownDir, { recursive: true });
    } catch (_) { /* leave it */ }
  }
}

let pipes = null; // openPipes()
let rest = new Uint8Array(0); // read from R, not handled yet

async function answer(msg) {
  let out;
  try {
    out = await handle(msg);
  } catch (e) {
    out = { ok: false, error: `runtime error: ${errorText(e)}` };
  }
  out.id = isObject(msg) && msg.id !== undefined ? msg.id : null;
  pipes.writeAll(encoder.encode(`${JSON.stringify(out)}\n`));
}

async function main() {
  const [r, w] = Deno.args.slice(-2).map(Number);
  if (!Number.isInteger(r) || !Number.isInteger(w)) {
    console.error('usage: worker.js REQUEST_FD REPLY_FD');
    Deno.exit(2);
  }
  pipes = openPipes(r, w);
  // Stray errors of the function's code (timers, promises nobody awaits) must
  // not kill the worker; they go to stderr (an execution's errors, if one runs).
  globalThis.addEventListener('error', (event) => {
    event.preventDefault();
    console.error(`Uncaught exception: ${errorText(event.error ?? event.message)}`);
  });
  globalThis.addEventListener('unhandledrejection', (event) => {
    event.preventDefault();
    console.error(`Unhandled rejection: ${errorText(event.reason)}`);
  });

  if (restarted) { // the request the worker before this execve left to it
    if (pendingRest) rest = unbase64(pendingRest);
    let msg = null;
    try {
      msg = JSON.parse(pendingText);
    } catch (_) { /* answered as not an object */ }
    await answer(msg);
  }

  const chunks = []; // of the line being read
  const buffer = new Uint8Array(1 << 16);
  for (;;) {
    let nl = rest.indexOf(10);
    while (nl < 0) {
      if (rest.length) chunks.push(rest);
      const n = await pipes.read(buffer);
      if (n === null) {
        cleanUp();
        Deno.exit(0); // the supervisor went away
      }
      rest = buffer.slice(0, n);
      nl = rest.indexOf(10);
    }
    chunks.push(rest.subarray(0, nl));
    rest = rest.slice(nl + 1);
    let line = chunks.length === 1 ? chunks[0] : concat(chunks);
    chunks.length = 0;
    let msg = null;
    let bad = null;
    try {
      msg = JSON.parse(decoder.decode(line));
    } catch (e) {
      bad = e;
    }
    line = null;
    if (bad) {
      const out = { ok: false, error: `runtime error: ${errorText(bad)}`, id: null };
      pipes.writeAll(encoder.encode(`${JSON.stringify(out)}\n`));
    } else {
      await answer(msg);
    }
  }
}

function concat(chunks) {
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return all;
}

await main();
