'use strict';
/*
 * The worker side of a JavaScript runtime, shared by the Node runtime
 * (node/server.js, its worker process) and the Bun worker (bun/worker.js):
 * stdlib only (Node 14+, Bun 1.4). In a container both live under
 * /opt/functions-runtime (node/contract.js, required as ../node/contract.js
 * by bun/worker.js).
 *
 * A Worker loads the user's entrypoint once and calls it per execution with
 * the Appwrite 0.13 req/res: req.payload (string), req.env, req.headers
 * (objects); res.send(text, status = 200), res.json(obj, status = 200), the
 * first call wins. process.env is overlaid with env for the call, then
 * restored. Worker.serve() reads newline-delimited JSON requests from a
 * stream and writes exactly one JSON reply line per request (with its "id")
 * on the reply fd; see the top of each runtime's file for the messages.
 *
 * What differs between the runtimes comes in as options:
 *   writeErr(text)       writes the worker's own text to stderr, never throws
 *                        (a late error, stray errors of the user's code)
 *   importEntry(file)    resolves to the entrypoint's module (default:
 *                        require(), then import() for an ES module)
 *   ping()               the reply to a ping
 *   defaultCodeDir       codeDir when a load names none
 *   beforeReply()        awaited before each reply is written (flush stdio)
 * and ownFile(__filename) names the runtime's file, whose frames (like this
 * file's) leave the stacks errorText() shows.
 */

const fs = require('fs');
const path = require('path');
const url = require('url');
const { StringDecoder } = require('string_decoder');

const LIMIT = 16384;
const DEFAULT_RESPONSE_MAX = 1048576;
const OWN_FILES = new Set([__filename]); // the runtime's files: their frames leave the stacks shown

function cutMark(n) { return `[\u2026 ${n} earlier characters cut \u2026]\n`; }

// The last part of `text` (whose full length was `total`): at most LIMIT
// characters including a first line that says how much was cut.
function cut(text, total = text.length) {
  if (total <= LIMIT) return text;
  const base = cutMark(0).length - 1;
  let keep = LIMIT - base - String(total).length; // never too long
  for (let digits = 1; digits <= 20; digits++) {
    if (String(total - (LIMIT - base - digits)).length === digits) { keep = LIMIT - base - digits; break; }
  }
  let kept = text.slice(-keep);
  const c = kept.charCodeAt(0);
  if (c >= 0xdc00 && c <= 0xdfff) kept = kept.slice(1); // no half surrogate pair
  return cutMark(total - kept.length) + kept;
}

function ownFile(file) { OWN_FILES.add(file); }

function ownFrame(line) {
  for (const file of OWN_FILES) if (line.includes(file)) return true;
  return /node:internal\/(modules|process\/task_queues)|^\s*at processTicksAndRejections \(native:/.test(line);
}

// The stack without the runtime's own frames (or Bun's build message); never throws.
function errorText(e) {
  try {
    const ctor = e && typeof e === 'object' && e.constructor ? e.constructor.name : '';
    if (ctor === 'BuildMessage' || ctor === 'ResolveMessage') {
      // Bun's BuildMessage (the file does not parse) or ResolveMessage (an import not found)
      const p = e.position;
      let text = `${ctor === 'BuildMessage' ? 'SyntaxError' : 'Error'}: ${String(e.message || e)}`;
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
      stack = stack.split('\n').filter((l) => !ownFrame(l)).join('\n');
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

function sleepSync(ms) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); }

function writeAllSync(fd, data) { // all of `data` (a Buffer), waiting while a non-blocking fd is full
  let off = 0;
  for (let spins = 0; off < data.length;) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN' || ++spins > 1000000) throw e;
      if (spins > 100) sleepSync(1); // (the reader may be slow: a live execution's backpressure)
    }
  }
}

// Calls onLine(line) for every non-blank newline-terminated line of `stream`
// (UTF-8; only new text is searched); onTooLong() when an unterminated line
// grows past maxLine characters (it is dropped).
function onLines(stream, onLine, onTooLong = () => {}, maxLine = Infinity) {
  const decoder = new StringDecoder('utf8');
  let parts = [];
  let size = 0;
  stream.on('data', (chunk) => {
    let text = typeof chunk === 'string' ? chunk : decoder.write(chunk);
    let nl;
    while ((nl = text.indexOf('\n')) >= 0) {
      parts.push(text.slice(0, nl));
      text = text.slice(nl + 1);
      const line = parts.join('');
      parts = [];
      size = 0;
      if (/\S/.test(line)) onLine(line);
    }
    if (text) { parts.push(text); size += text.length; }
    if (size > maxLine) {
      parts = [];
      size = 0;
      onTooLong();
    }
  });
}

function toStatus(status) {
  const n = Number(status === undefined || status === null ? 200 : status);
  if (!Number.isInteger(n)) throw new TypeError(`invalid status code: ${status}`);
  return n;
}

function envText(v) {
  if (typeof v === 'string') return v;
  const json = JSON.stringify(v);
  return json === undefined ? String(v) : json;
}

function wellFormed(text) { // lone surrogates become U+FFFD, as in UTF-8
  if (!/[\ud800-\udfff]/.test(text)) return text;
  return typeof text.toWellFormed === 'function' ? text.toWellFormed() : Buffer.from(text, 'utf8').toString('utf8');
}

function bytesText(data) { // a Uint8Array (Buffer) or ArrayBuffer as UTF-8 text
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('utf8');
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
}

function pickExport(mod) {
  for (const candidate of [mod, mod && mod.default, mod && mod.default && mod.default.default]) {
    if (typeof candidate === 'function') return candidate;
  }
  return null;
}

async function requireOrImport(file) { // CommonJS, or an ES module when require() cannot load it
  try {
    return require(file);
  } catch (e) {
    if (!e || !['ERR_REQUIRE_ESM', 'ERR_REQUIRE_ASYNC_MODULE'].includes(e.code)) throw e;
    return import(url.pathToFileURL(file).href);
  }
}

function objectOr(value, fallback) {
  return value && typeof value === 'object' && !Array.isArray(value) ? value : fallback;
}

class Worker {
  constructor(options = {}) {
    this.writeErr = options.writeErr || ((text) => { try { process.stderr.write(text); } catch (_) { /* gone */ } });
    this.importEntry = options.importEntry || requireOrImport;
    this.ping = options.ping || (() => ({ ok: true }));
    this.defaultCodeDir = options.defaultCodeDir || '/code';
    this.beforeReply = options.beforeReply || (() => {});
    this.fn = null; // the user's function once loaded
    this.responseMax = DEFAULT_RESPONSE_MAX;
  }

  async load(msg) {
    if (this.fn) return { ok: false, error: 'code already loaded' };
    if (Number.isInteger(msg.responseMaxBytes) && msg.responseMaxBytes >= 0) this.responseMax = msg.responseMaxBytes;
    const codeDir = path.resolve(String(msg.codeDir || this.defaultCodeDir));
    const raw = String(msg.entrypoint || 'index.js');
    const entry = path.normalize(raw);
    if (path.isAbsolute(raw) || entry === '..' || entry.startsWith(`..${path.sep}`) || raw.includes('\0')) {
      return { ok: false, error: `entrypoint must be inside the code directory: ${entry}` };
    }
    const file = path.join(codeDir, entry);
    let stat = null;
    try { stat = fs.statSync(file); } catch (_) { /* missing */ }
    if (!stat || !stat.isFile()) return { ok: false, error: `entrypoint not found: ${file}` };
    try { process.chdir(codeDir); } catch (_) { /* keep the current directory */ }
    let mod;
    try {
      mod = await this.importEntry(file);
    } catch (e) {
      return { ok: false, error: cut(wellFormed(`failed to load ${entry}:\n${errorText(e)}`)) };
    }
    const f = pickExport(mod);
    if (!f) {
      return { ok: false, error: `${entry} must export a function: module.exports = async (req, res) => { ... } (got ${typeof mod})` };
    }
    this.fn = f;
    return { ok: true };
  }

  async execute(msg) {
    const fn = this.fn;
    if (!fn) return { statusCode: 500, body: '', error: 'no code loaded' };
    const payload = typeof msg.payload === 'string' ? msg.payload : msg.payload == null ? '' : JSON.stringify(msg.payload);
    const env = objectOr(msg.env, {});
    const headers = objectOr(msg.headers, {});
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
        if (text instanceof Uint8Array || text instanceof ArrayBuffer) text = bytesText(text);
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
      if (!response) error = 'Function finished without responding: call res.send(...) or res.json(...)';
    } catch (e) {
      if (response) this.writeErr(`${errorText(e)}\n`); // already answered: first call wins
      else error = errorText(e);
    } finally {
      for (const [k, v] of saved) {
        try {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        } catch (_) { /* leave it */ }
      }
    }
    if (error) return { statusCode: 500, body: '', error: cut(wellFormed(error)) };
    const body = wellFormed(response.body);
    const size = body.length * 3 > this.responseMax ? Buffer.byteLength(body, 'utf8') : 0;
    if (size > this.responseMax) {
      return {
        statusCode: 500, body: '',
        error: `Execution failed: the response body is ${size} bytes; the limit is ${this.responseMax} bytes (FUNCTIONS_RESPONSE_MAX_BYTES).`,
      };
    }
    return { statusCode: response.statusCode, body, error: '' };
  }

  async handle(msg) {
    try {
      if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return { ok: false, error: 'request is not a JSON object' };
      if (msg.type === 'execute') return await this.execute(msg);
      if (msg.type === 'load') return await this.load(msg);
      if (msg.type === 'ping') return this.ping();
      return { ok: false, error: `unknown message type: ${JSON.stringify(msg.type === undefined ? null : msg.type)}` };
    } catch (e) {
      return { ok: false, error: `runtime error: ${errorText(e)}` };
    }
  }

  async answer(line) { // the reply line (UTF-8) to a request line
    let msg = null;
    let out;
    try {
      msg = JSON.parse(line);
      out = await this.handle(msg);
    } catch (e) {
      out = { ok: false, error: `runtime error: ${errorText(e)}` };
    }
    out.id = msg && typeof msg === 'object' && msg.id !== undefined ? msg.id : null;
    let text;
    try {
      text = JSON.stringify(out);
    } catch (e) {
      text = JSON.stringify({ id: out.id, ok: false, error: `runtime error: the reply cannot be encoded: ${errorText(e)}` });
    }
    return Buffer.from(`${text}\n`, 'utf8'); // lone surrogates become U+FFFD
  }

  // Answers the request lines of `requests` one at a time on `replyFd`; the
  // process exits when `requests` ends. Stray errors from user code (timers,
  // unawaited promises) must not kill the worker: they go to stderr
  // (captured during executions).
  serve(requests, replyFd) {
    process.on('uncaughtException', (e) => this.writeErr(`Uncaught exception: ${errorText(e)}\n`));
    process.on('unhandledRejection', (e) => this.writeErr(`Unhandled rejection: ${errorText(e)}\n`));
    requests.on('end', () => process.exit(0)); // the supervisor went away
    requests.on('error', () => process.exit(0));
    let queue = Promise.resolve();
    onLines(requests, (line) => {
      queue = queue.then(async () => {
        const reply = await this.answer(line);
        await this.beforeReply();
        writeAllSync(replyFd, reply);
      }).catch((e) => {
        this.writeErr(`worker error: ${errorText(e)}\n`);
        process.exit(70);
      });
    });
  }
}

module.exports = {
  LIMIT, DEFAULT_RESPONSE_MAX, cut, ownFile, errorText, sleepSync, writeAllSync, onLines,
  toStatus, envText, wellFormed, pickExport, requireOrImport, Worker,
};
