'use strict';
/*
 * Functions runtime worker for Bun (Bun's builtin and node: modules only).
 *
 * Started by the supervisor (runtimes/python/server.py, which talks to the
 * service; see runtimes/bun/language.toml) as
 *
 *   env BUN_RUNTIME_TRANSPILER_CACHE_PATH=0 \
 *     bun --no-install --no-env-file --no-orphans /opt/functions-runtime/bun/worker.js R W
 *
 * (no auto-install of missing packages, no .env loaded from the code dir, the
 * worker goes when the supervisor dies; no transpiler cache written to $HOME.)
 *
 * R and W are pipe fds: newline-delimited JSON requests arrive on R, exactly
 * one newline-terminated JSON reply per request leaves on W (with the
 * request's "id"), and nothing else is ever written on W. stdout and stderr
 * are pipes the supervisor reads (an execution's logs and errors); stdin is
 * /dev/null. The worker exits when R reaches EOF.
 *
 *   {"id":..,"type":"ping"}    -> {"id":..,"ok":true,"version":"<Bun.version>"}
 *   {"id":..,"type":"load","codeDir":"/opt/functions/code","entrypoint":"index.js"}
 *       -> {"id":..,"ok":true} | {"id":..,"ok":false,"error":"..."}
 *       Once per process. chdir to codeDir, import() the entrypoint (CommonJS,
 *       ES module or TypeScript; node_modules resolve from the code as usual).
 *       The export must be a function: module.exports = async (req, res) => {}
 *       or export default async (req, res) => {}.
 *   {"id":..,"type":"execute","payload":"..","env":{..},"headers":{..}}
 *       -> {"id":..,"statusCode":int,"body":str,"error":str}
 *       Awaits fn(req, res), the Appwrite 0.13 contract of the Node runtime:
 *       req.payload (string), req.env, req.headers (objects);
 *       res.send(text, status = 200), res.json(obj, status = 200); the first
 *       call wins. No call: 500 "Function returned no response: ...". A throw
 *       or rejection: 500, body "", error = the stack. process.env is
 *       overlaid with env for the call and restored afterwards. Output is on
 *       its fd (1 or 2) before the reply is written: console.* writes at once,
 *       process.stdout/stderr are made synchronous here (see syncStdio);
 *       Bun.write(Bun.stdout, ...) must be awaited.
 *   anything else -> {"id":..,"ok":false,"error":"unknown message type: .."}
 *
 * The supervisor enforces the response size limit and cuts long errors.
 */

const fs = require('fs');
const path = require('path');

const argv = process.argv;
const REQUEST_FD = Number(argv[argv.length - 2]);
const REPLY_FD = Number(argv[argv.length - 1]);

let fn = null; // the user's function once loaded

function errorText(e) { // the stack (or Bun's build message) without this worker's frames
  try {
    const ctor = e && typeof e === 'object' && e.constructor ? e.constructor.name : '';
    if (ctor === 'BuildMessage' || ctor === 'ResolveMessage') {
      // Bun's BuildMessage (the file does not parse) or ResolveMessage (an import not found)
      const p = e.position;
      const kind = ctor === 'BuildMessage' ? 'SyntaxError' : 'Error';
      let text = `${kind}: ${String(e.message || e)}`;
      if (p && p.file) {
        text += `\n    at ${p.file}:${p.line}:${p.column}`;
        if (p.lineText) text += `\n${p.line} | ${p.lineText}`;
      }
      return text;
    }
    if (e && typeof e === 'object' && Array.isArray(e.errors) && e.errors.length && !e.stack) {
      return e.errors.map(errorText).join('\n');
    }
    if (e instanceof Error || (e && typeof e === 'object' && typeof e.stack === 'string')) {
      let stack = typeof e.stack === 'string' && e.stack ? e.stack : `${e.name || 'Error'}: ${e.message}`;
      if (!stack.includes(String(e.message))) stack = `${e.name || 'Error'}: ${e.message}\n${stack}`;
      const own = (l) => l.includes(__filename) || /^\s*at processTicksAndRejections \(native:/.test(l);
      stack = stack.split('\n').filter((l) => !own(l)).join('\n');
      if (Array.isArray(e.errors) && e.errors.length) stack += `\n${e.errors.map(errorText).join('\n')}`;
      return stack;
    }
    if (typeof e === 'string') return e;
    const json = JSON.stringify(e);
    return `Thrown value: ${json === undefined ? String(e) : json}`;
  } catch (_) {
    try { return String(e); } catch (_e) { return 'Thrown value (cannot be shown)'; }
  }
}

function writeAllSync(fd, data) {
  let off = 0;
  for (let spins = 0; off < data.length;) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN' || ++spins > 1000000) throw e;
      Bun.sleepSync(1);
    }
  }
}

function writeStdio(fd, data) { // output of the worker itself or of the user's code; never throws
  try {
    writeAllSync(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  } catch (_) { /* the pipe is gone: the output is lost, the execution goes on */ }
}

// Bun's process.stdout/process.stderr write asynchronously to a pipe (and set
// it O_NONBLOCK): what they still hold when the reply goes out would land in
// the next execution's logs, or nowhere. As in Node on Linux, writes to
// stdio pipes are synchronous here: process.stdout/stderr are streams that
// write to fd 1/2 at once (created when first used). console.* is Bun's own
// and writes synchronously already.
function syncStdio() {
  // (Bun creates its stream when the property is inspected or redefined, but
  // not when it is assigned: assign first, then define.)
  for (const [name, fd] of [['stdout', 1], ['stderr', 2]]) {
    let stream = null;
    try {
      process[name] = null;
      Object.defineProperty(process, name, {
        configurable: true,
        enumerable: true,
        get() {
          if (!stream) stream = syncWriteStream(fd);
          return stream;
        },
        set(value) { stream = value; },
      });
    } catch (_) { /* not configurable: Bun's own stream stays */ }
  }
}

function syncWriteStream(fd) {
  const { Writable } = require('stream');
  const stream = new Writable({
    write(chunk, encoding, cb) {
      writeStdio(fd, typeof chunk === 'string' ? Buffer.from(chunk, encoding) : chunk);
      cb();
    },
    destroy(err, cb) { cb(err); }, // never closes fd 1 or 2
  });
  stream.fd = fd;
  stream.isTTY = false;
  stream._type = 'pipe';
  stream._isStdio = true;
  stream.destroySoon = stream.destroy;
  return stream;
}

function toStatus(status) {
  const n = Number(status === undefined || status === null ? 200 : status);
  if (!Number.isInteger(n)) throw new TypeError(`invalid status code: ${status}`);
  return n;
}

function wellFormed(text) { // lone surrogates become U+FFFD, as in UTF-8
  return typeof text.toWellFormed === 'function' ? text.toWellFormed() : Buffer.from(text, 'utf8').toString('utf8');
}

function envText(v) {
  if (typeof v === 'string') return v;
  const json = JSON.stringify(v);
  return json === undefined ? String(v) : json;
}

function pickExport(mod) {
  for (const candidate of [mod, mod && mod.default, mod && mod.default && mod.default.default]) {
    if (typeof candidate === 'function') return candidate;
  }
  return null;
}

async function load(msg) {
  if (fn) return { ok: false, error: 'code already loaded' };
  const codeDir = path.resolve(String(msg.codeDir || '/opt/functions/code'));
  const raw = String(msg.entrypoint || 'index.js');
  const entry = path.normalize(raw);
  if (path.isAbsolute(raw) || entry === '..' || entry.startsWith(`..${path.sep}`) || raw.includes('\0')) {
    return { ok: false, error: `entrypoint must be inside the code directory: ${raw}` };
  }
  const file = path.join(codeDir, entry);
  let stat = null;
  try { stat = fs.statSync(file); } catch (_) { /* missing */ }
  if (!stat || !stat.isFile()) return { ok: false, error: `entrypoint not found: ${file}` };
  try { process.chdir(codeDir); } catch (_) { /* keep the current directory */ }
  let mod;
  try {
    mod = await import(file);
  } catch (e) {
    return { ok: false, error: `failed to load ${entry}:\n${errorText(e)}` };
  }
  const f = pickExport(mod);
  if (!f) {
    const got = mod && typeof mod === 'object' ? `exports: ${Object.keys(mod).join(', ') || 'none'}` : typeof mod;
    return {
      ok: false,
      error: `${entry} must export a function: module.exports = async (req, res) => { ... } `
        + `or export default async (req, res) => { ... } (${got})`,
    };
  }
  fn = f;
  return { ok: true };
}

async function execute(msg) {
  if (!fn) return { statusCode: 500, body: '', error: 'no code loaded' };
  const payload = typeof msg.payload === 'string' ? msg.payload : msg.payload == null ? '' : JSON.stringify(msg.payload);
  const env = msg.env && typeof msg.env === 'object' && !Array.isArray(msg.env) ? msg.env : {};
  const headers = msg.headers && typeof msg.headers === 'object' && !Array.isArray(msg.headers) ? msg.headers : {};
  const saved = new Map(); // only the variables set here are restored
  for (const [k, v] of Object.entries(env)) {
    if (!k || k.includes('=') || k.includes('\0')) continue;
    try {
      const old = Object.prototype.hasOwnProperty.call(process.env, k) ? process.env[k] : undefined;
      process.env[k] = envText(v);
      saved.set(k, old);
    } catch (_) { /* invalid name */ }
  }
  let response = null;
  const res = {
    send(text = '', status = 200) {
      const statusCode = toStatus(status);
      if (text instanceof Uint8Array || text instanceof ArrayBuffer) text = Buffer.from(text).toString('utf8');
      else if (text !== null && typeof text === 'object') text = JSON.stringify(text);
      if (!response) response = { statusCode, body: text == null ? '' : String(text) };
    },
    json(obj, status = 200) {
      const statusCode = toStatus(status);
      const body = JSON.stringify(obj);
      if (!response) response = { statusCode, body: body === undefined ? '' : body };
    },
  };
  let error = '';
  try {
    await fn({ payload, env, headers }, res);
    if (!response) error = 'Function returned no response: call res.send(...) or res.json(...)';
  } catch (e) {
    if (response) writeStdio(2, `${errorText(e)}\n`); // already answered: first call wins
    else error = errorText(e);
  } finally {
    for (const [k, v] of saved) {
      try {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      } catch (_) { /* leave it */ }
    }
  }
  if (error) return { statusCode: 500, body: '', error: wellFormed(error) };
  return { statusCode: response.statusCode, body: wellFormed(response.body), error: '' };
}

async function handle(msg) {
  try {
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return { ok: false, error: 'request is not a JSON object' };
    if (msg.type === 'execute') return await execute(msg);
    if (msg.type === 'load') return await load(msg);
    if (msg.type === 'ping') return { ok: true, version: Bun.version };
    return { ok: false, error: `unknown message type: ${JSON.stringify(msg.type === undefined ? null : msg.type)}` };
  } catch (e) {
    return { ok: false, error: `runtime error: ${errorText(e)}` };
  }
}

function encodeReply(out) {
  let text;
  try {
    text = JSON.stringify(out);
  } catch (e) {
    text = JSON.stringify({ id: out.id, ok: false, error: `runtime error: the reply cannot be encoded: ${errorText(e)}` });
  }
  return Buffer.from(`${text}\n`, 'utf8'); // lone surrogates become U+FFFD
}

async function answer(line) {
  let msg = null;
  let out;
  try {
    msg = JSON.parse(line);
    out = await handle(msg);
  } catch (e) {
    out = { ok: false, error: `runtime error: ${errorText(e)}` };
  }
  out.id = msg && typeof msg === 'object' && msg.id !== undefined ? msg.id : null;
  writeAllSync(REPLY_FD, encodeReply(out));
}

function main() {
  if (!Number.isInteger(REQUEST_FD) || !Number.isInteger(REPLY_FD) || REQUEST_FD < 0 || REPLY_FD < 0) {
    writeStdio(2, 'usage: bun worker.js REQUEST_FD REPLY_FD\n');
    process.exit(2);
  }
  // Stray errors from user code (timers, unawaited promises) must not kill
  // the worker; they are reported on stderr (captured during executions).
  process.on('uncaughtException', (e) => writeStdio(2, `Uncaught exception: ${errorText(e)}\n`));
  process.on('unhandledRejection', (e) => writeStdio(2, `Unhandled rejection: ${errorText(e)}\n`));
  syncStdio();
  const requests = fs.createReadStream(null, { fd: REQUEST_FD, highWaterMark: 1 << 16, autoClose: false });
  requests.on('end', () => process.exit(0)); // the supervisor went away
  requests.on('error', () => process.exit(0));
  const { StringDecoder } = require('string_decoder');
  const decoder = new StringDecoder('utf8');
  let parts = []; // the start of a line still without its newline (only new text is searched)
  let queue = Promise.resolve();
  requests.on('data', (chunk) => {
    let text = decoder.write(chunk);
    let nl;
    while ((nl = text.indexOf('\n')) >= 0) {
      parts.push(text.slice(0, nl));
      text = text.slice(nl + 1);
      const line = parts.join('');
      parts = [];
      if (!/\S/.test(line)) continue; // (blank lines are ignored)
      queue = queue.then(() => answer(line)).catch((e) => {
        writeStdio(2, `worker error: ${errorText(e)}\n`);
        process.exit(70);
      });
    }
    if (text) parts.push(text);
  });
}

main();
