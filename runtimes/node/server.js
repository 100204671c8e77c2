'use strict';
/*
 * Functions runtime server for Node.js (builtin modules only, Node 18+).
 *
 * Runs inside a function container as `node /opt/functions-runtime/server.js`
 * and executes the user's code on request from the service.
 *
 * Transport: a UNIX stream socket at $FUNCTIONS_RUNTIME_SOCKET (a stale one is
 * removed first; the socket is made mode 0666). Newline-delimited JSON: one
 * request line, one response line; a connection may carry many requests in
 * sequence and several connections may be open. All requests go through one
 * queue, so executions are sequential.
 *
 *   {"type":"ping"}
 *       -> {"ok":true,"runtime":"node","pid":N}
 *   {"type":"load","codeDir":"/code","entrypoint":"src/index.js"}
 *       -> {"ok":true} | {"ok":false,"error":"..."}
 *       Once per container. require()s the entrypoint (node_modules resolve
 *       from the code dir as usual; ES modules fall back to import()). The
 *       export must be a function: module.exports, or a default export.
 *   {"type":"execute","payload":"...","env":{...},"headers":{...}}
 *       -> {"statusCode":int,"body":str,"logs":str,"errors":str,"error":str}
 *       Awaits fn(req, res) (Appwrite 0.13 contract: req.payload/env/headers;
 *       res.send(text, status=200) / res.json(obj, status=200), first call
 *       wins). Output written during the call to process.stdout (console.log/
 *       info/debug) goes to logs, to process.stderr (console.error/warn) to
 *       errors. process.env is overlaid with env for the call, then restored.
 *       logs, errors and body are cut to their last 16384 characters.
 *   anything else -> {"ok":false,"error":"..."}
 */

const fs = require('fs');
const net = require('net');
const path = require('path');
const url = require('url');
const { StringDecoder } = require('string_decoder');

const LIMIT = 16384;
const MAX_LINE = 64 * 1024 * 1024;

let fn = null; // the user's function once loaded
let capture = null; // {stdout: Sink, stderr: Sink} while an execution runs

function tail(text) {
  if (text.length <= LIMIT) return text;
  const cut = text.slice(-LIMIT);
  const c = cut.charCodeAt(0);
  return c >= 0xdc00 && c <= 0xdfff ? cut.slice(1) : cut; // no half surrogate pair
}

class Sink {
  constructor() { this.text = ''; this.decoder = new StringDecoder('utf8'); }
  add(chunk, encoding) {
    if (typeof chunk === 'string') {
      if (encoding && encoding !== 'utf8' && encoding !== 'utf-8') chunk = Buffer.from(chunk, encoding).toString('utf8');
    } else {
      chunk = this.decoder.write(Buffer.from(chunk.buffer || chunk, chunk.byteOffset || 0, chunk.byteLength));
    }
    this.text += chunk;
    if (this.text.length > 4 * LIMIT) this.text = tail(this.text); // bound memory
  }
  done() { return tail(this.text + this.decoder.end()); }
}

// Route process.stdout/stderr writes (which is what console.* uses) into the
// current execution's sinks; outside executions they go to the real streams.
for (const name of ['stdout', 'stderr']) {
  const stream = process[name];
  const real = stream.write;
  stream.write = function write(chunk, encoding, cb) {
    if (!capture) return real.apply(stream, arguments);
    if (typeof encoding === 'function') { cb = encoding; encoding = undefined; }
    capture[name].add(chunk, encoding);
    if (typeof cb === 'function') process.nextTick(cb);
    return true;
  };
}

function errorText(e) { // the stack without this server's own frames
  if (e instanceof Error && e.stack) {
    const own = (l) => l.includes(__filename) || /node:internal\/(modules|process\/task_queues)/.test(l);
    return String(e.stack).split('\n').filter((l) => !own(l)).join('\n');
  }
  try { return typeof e === 'string' ? e : `Thrown value: ${JSON.stringify(e)}`; } catch (_) { return String(e); }
}

function toStatus(status) {
  const n = Number(status === undefined ? 200 : status);
  if (!Number.isInteger(n)) throw new TypeError(`invalid status code: ${status}`);
  return n;
}

function envText(v) {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function pickExport(mod) {
  for (const candidate of [mod, mod && mod.default, mod && mod.default && mod.default.default]) {
    if (typeof candidate === 'function') return candidate;
  }
  return null;
}

async function load(msg) {
  if (fn) return { ok: false, error: 'code already loaded' };
  const codeDir = path.resolve(String(msg.codeDir || '/code'));
  const entry = path.normalize(String(msg.entrypoint || 'index.js'));
  if (entry.startsWith('..') || path.isAbsolute(entry)) {
    return { ok: false, error: `entrypoint must be inside the code directory: ${entry}` };
  }
  const file = path.join(codeDir, entry);
  const stat = fs.statSync(file, { throwIfNoEntry: false });
  if (!stat || !stat.isFile()) return { ok: false, error: `entrypoint not found: ${file}` };
  try { process.chdir(codeDir); } catch (_) { /* keep the current directory */ }
  let mod;
  try {
    mod = require(file);
  } catch (e) {
    if (!e || !['ERR_REQUIRE_ESM', 'ERR_REQUIRE_ASYNC_MODULE'].includes(e.code)) {
      return { ok: false, error: `failed to load ${entry}:\n${errorText(e)}` };
    }
    try {
      mod = await import(url.pathToFileURL(file).href);
    } catch (e2) {
      return { ok: false, error: `failed to load ${entry}:\n${errorText(e2)}` };
    }
  }
  const f = pickExport(mod);
  if (!f) {
    return { ok: false, error: `${entry} must export a function: module.exports = async (req, res) => { ... } (got ${typeof mod})` };
  }
  fn = f;
  return { ok: true };
}

async function execute(msg) {
  if (!fn) return { statusCode: 500, body: '', logs: '', errors: '', error: 'no code loaded' };
  const payload = typeof msg.payload === 'string' ? msg.payload : msg.payload == null ? '' : JSON.stringify(msg.payload);
  const env = msg.env && typeof msg.env === 'object' ? msg.env : {};
  const headers = msg.headers && typeof msg.headers === 'object' ? msg.headers : {};
  const saved = new Map(); // only the variables set here are restored
  for (const [k, v] of Object.entries(env)) {
    try {
      const old = process.env[k];
      process.env[k] = envText(v);
      saved.set(k, old);
    } catch (_) { /* invalid name */ }
  }
  let response = null;
  const res = {
    send(text = '', status = 200) {
      const statusCode = toStatus(status);
      if (Buffer.isBuffer(text)) text = text.toString('utf8');
      else if (text !== null && typeof text === 'object') text = JSON.stringify(text);
      if (!response) response = { statusCode, body: text == null ? '' : String(text) };
    },
    json(obj, status = 200) {
      const statusCode = toStatus(status);
      const body = JSON.stringify(obj);
      if (!response) response = { statusCode, body: body === undefined ? '' : body };
    },
  };
  const sinks = { stdout: new Sink(), stderr: new Sink() };
  capture = sinks;
  let error = '';
  try {
    await fn({ payload, env, headers }, res);
    if (!response) error = 'Function finished without responding: call res.send(...) or res.json(...)';
  } catch (e) {
    if (response) sinks.stderr.add(`${errorText(e)}\n`); // already answered: first call wins
    else error = errorText(e);
  } finally {
    capture = null;
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  const out = error ? { statusCode: 500, body: '' } : response;
  return { statusCode: out.statusCode, body: tail(out.body), logs: sinks.stdout.done(), errors: sinks.stderr.done(), error: tail(error) };
}

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    return { ok: false, error: `invalid JSON: ${e.message}` };
  }
  const type = msg && typeof msg === 'object' ? msg.type : undefined;
  try {
    if (type === 'execute') return await execute(msg);
    if (type === 'ping') return { ok: true, runtime: 'node', pid: process.pid };
    if (type === 'load') return await load(msg);
    return { ok: false, error: `unknown message type: ${JSON.stringify(type)}` };
  } catch (e) { // a bug here must not kill the container
    return { ok: false, error: `runtime error: ${errorText(e)}` };
  }
}

let queue = Promise.resolve(); // one request at a time, across connections

function onConnection(conn) {
  let buffer = '';
  conn.setEncoding('utf8');
  conn.on('error', () => conn.destroy());
  conn.on('data', (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (!line.trim()) continue;
      queue = queue.then(() => handle(line)).then((out) => {
        if (!conn.destroyed) conn.write(`${JSON.stringify(out)}\n`);
      }).catch(() => { /* keep the queue alive */ });
    }
    if (buffer.length > MAX_LINE) {
      conn.end('{"ok":false,"error":"request line too long"}\n');
      buffer = '';
    }
  });
}

function main() {
  const socketPath = process.env.FUNCTIONS_RUNTIME_SOCKET;
  if (!socketPath) {
    process.stderr.write('FUNCTIONS_RUNTIME_SOCKET is not set\n');
    process.exit(1);
  }
  const stop = () => {
    try { fs.unlinkSync(socketPath); } catch (_) { /* gone */ }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Stray errors from user code (timers, unawaited promises) must not kill
  // the container; they are reported on stderr (captured during executions).
  process.on('uncaughtException', (e) => process.stderr.write(`Uncaught exception: ${errorText(e)}\n`));
  process.on('unhandledRejection', (e) => process.stderr.write(`Unhandled rejection: ${errorText(e)}\n`));
  try { fs.unlinkSync(socketPath); } catch (_) { /* no stale socket */ }
  const server = net.createServer(onConnection);
  server.on('error', (e) => {
    process.stderr.write(`cannot listen on ${socketPath}: ${e.message}\n`);
    process.exit(1);
  });
  server.listen(socketPath, () => {
    fs.chmodSync(socketPath, 0o666);
    process.stderr.write(`functions-runtime node ${process.version} listening on ${socketPath}\n`);
  });
}

main();
