'use strict';
/*
 * Functions runtime server for Node.js (builtin modules only, Node 18+).
 *
 * Runs inside a function container as `node /opt/functions-runtime/server.js`
 * and executes the user's code on request from the service.
 *
 * Two processes:
 *   - the supervisor (the process the container starts) listens on
 *     $FUNCTIONS_RUNTIME_SOCKET and talks to the service;
 *   - the worker (`server.js --worker`, spawned by the supervisor at once)
 *     loads and runs the user's code (contract.js, next to this file, shared
 *     with the Bun worker). It never holds the service's socket or a
 *     connection: requests arrive on its fd 3, replies leave on its fd 4, its
 *     stdout and stderr are channels the supervisor reads all the time (so
 *     output is captured at the file-descriptor level: console.*, native
 *     addons, child processes), and its stdin is /dev/null.
 *
 * Transport: a UNIX stream socket at $FUNCTIONS_RUNTIME_SOCKET (a stale one is
 * removed first; the socket is created mode 0600, owned by the sandbox user;
 * the service connects as root). Newline-delimited JSON: one request line, one
 * response line; a connection may carry many requests in sequence and several
 * connections may be open. All requests go through one queue, so executions
 * are sequential. A request may carry "id" (any JSON value): the reply echoes it.
 *
 *   {"id":..,"type":"ping"}
 *       -> {"id":..,"ok":true,"runtime":"node","pid":N,"version":V}   (N: the supervisor, V: node's version)
 *   {"id":..,"type":"load","codeDir":"/code","entrypoint":"src/index.js","responseMaxBytes":1048576}
 *       -> {"id":..,"ok":true} | {"id":..,"ok":false,"error":"..."}
 *       Once per container. require()s the entrypoint (node_modules resolve
 *       from the code dir as usual; ES modules fall back to import()). The
 *       export must be a function: module.exports, or a default export.
 *       responseMaxBytes (default 1048576) bounds the response body.
 *   {"id":..,"type":"execute","payload":"...","env":{...},"headers":{...}}
 *       -> {"id":..,"statusCode":int,"body":str,"logs":str,"errors":str,"error":str}
 *       Awaits fn(req, res) (Appwrite 0.13 contract: req.payload/env/headers;
 *       res.send(text, status=200) / res.json(obj, status=200), first call
 *       wins). Output written during the call to fd 1 (console.log/info/debug)
 *       goes to logs, to fd 2 (console.error/warn) to errors. process.env is
 *       overlaid with env for the call, then restored. The body is returned
 *       whole; a body over responseMaxBytes UTF-8 bytes fails the execution
 *       (500, body "", error says so). logs, errors and error keep their last
 *       part: at most 16384 characters including a first line
 *       "[… N earlier characters cut …]" when something was cut.
 *   {"id":..,"type":"execute",...,"live":true}
 *       The same, and while the execution runs, output frames go out on the
 *       requesting connection before its reply (only when "live" is true):
 *         {"id":..,"type":"output","stream":"stdout"|"stderr","lines":["...",..]}
 *       ("id" echoed as in the reply, left out when the request has none.)
 *       fd 1 is "stdout", fd 2 "stderr"; each stream is decoded as UTF-8 on
 *       its own (invalid bytes become U+FFFD) and split at "\n" (not part of
 *       the line). A line over 16384 characters goes as pieces of 16384 (each
 *       a line; never half a surrogate pair, so a piece may be 16383 UTF-16
 *       units); an unterminated last part is held until more output completes
 *       it, it reaches 16384 characters or the execution ends (then it is a
 *       last line before the reply). All lines read at once from a channel
 *       share one frame, sent at once; order within a stream is kept.
 *       logs/errors in the reply are as without "live". A failed execution
 *       (see below) still gets the frames for the output read before its
 *       error reply. While the connection's unsent data exceeds 1 MiB, the
 *       worker's output is not read (it waits, as with a full pipe).
 *   anything else -> {"id":..,"ok":false,"error":"..."}
 *
 * The container is compromised when the worker answers with a wrong id,
 * writes anything on its reply channel while no request is in flight, or
 * dies: the supervisor then answers the pending request (if any) with an
 * error and "closing":true, and exits (closing every connection), so the
 * service discards the container. (A worker killed by SIGKILL, e.g. by the
 * kernel's OOM killer, is not answered for: the supervisor exits 137 and the
 * service finds out why.)
 *
 * Processes an execution leaves behind are killed, but only when the
 * supervisor is certain to be alone in its container's PID namespace:
 * FUNCTIONS_RUNTIME_PID_NAMESPACE=1, PID 1 is docker-init or tini, and PID 1
 * is the supervisor's parent. Then, after each load and execution and before
 * answering, every process but PID 1, the supervisor and the worker is stopped
 * (SIGSTOP until none runs) and killed, and the same is done every second
 * while idle. If they cannot be killed in time, the container counts as
 * compromised.
 */

const fs = require('fs');
const net = require('net');
const crypto = require('crypto');
const childProcess = require('child_process');
const { StringDecoder } = require('string_decoder');

const {
  LIMIT, DEFAULT_RESPONSE_MAX, cut, ownFile, errorText, onLines, sleepSync, Worker,
} = require('./contract.js'); // the worker's side, shared with the Bun worker

ownFile(__filename); // its frames leave the stacks shown

const MAX_LINE = 64 * 1024 * 1024;
const IDLE_REAP_MS = 1000;
const REQUEST_FD = 3;
const REPLY_FD = 4;

/* ------------------------------------------------------------------------
 * The worker: loads and runs the user's code (contract.js).
 * --------------------------------------------------------------------- */

function flushed(stream) { // resolves once everything written so far reached the fd
  return new Promise((resolve) => {
    if (!stream || stream.destroyed || !stream.writable) return resolve();
    const timer = setTimeout(resolve, 5000);
    try {
      stream.write('', () => { clearTimeout(timer); resolve(); });
    } catch (_) { clearTimeout(timer); resolve(); }
  });
}

function workerMain() {
  const worker = new Worker({
    writeErr: (text) => { try { process.stderr.write(text); } catch (_) { /* gone */ } },
    beforeReply: () => Promise.all([flushed(process.stdout), flushed(process.stderr)]),
  });
  worker.serve(new net.Socket({ fd: REQUEST_FD, readable: true, writable: false }), REPLY_FD);
}

/* ------------------------------------------------------------------------
 * The supervisor: the service's socket, the worker, stray processes.
 * --------------------------------------------------------------------- */

class OutputTail { // the bounded tail of one of the worker's output channels
  constructor() { this.text = ''; this.total = 0; this.decoder = new StringDecoder('utf8'); }
  add(chunk) {
    const s = this.decoder.write(chunk);
    this.total += s.length;
    this.text += s;
    if (this.text.length > 4 * LIMIT) this.text = this.text.slice(-LIMIT); // bounded memory
  }
  done() {
    const rest = this.decoder.end();
    this.total += rest.length;
    return cut(this.text + rest, this.total);
  }
}

const LIVE_BATCH = 1 << 20; // characters of lines that make a frame go out within one drain
const LIVE_HIGH_WATER = 1 << 20; // bytes unsent on a live connection that pause the worker's output

function isHighSurrogate(code) { return code >= 0xd800 && code <= 0xdbff; }

// The output frames of one of the worker's output channels during a live
// execution: an incremental decoder and the unterminated last part.
class LiveLines {
  constructor(conn, msg, stream) {
    this.conn = conn;
    this.stream = null; // the worker's channel while it is paused for backpressure
    this.ending = false; // the final drain is under way: no more pausing
    const id = 'id' in msg ? `"id":${JSON.stringify(msg.id)},` : '';
    this.head = `{${id}"type":"output","stream":"${stream}","lines":`;
    this.decoder = new StringDecoder('utf8');
    this.partial = '';
    this.glued = false; // the last line sent was a full piece of a longer one
  }

  feed(chunk, final = false) { // the lines completed by `chunk` (all of them when `final`)
    let text = chunk ? this.decoder.write(chunk) : '';
    if (final) text += this.decoder.end();
    if (this.glued && text) {
      this.glued = false;
      if (text.charCodeAt(0) === 10) text = text.slice(1); // ends the line whose last piece went out
    }
    if (this.partial) text = this.partial + text;
    const lines = [];
    let start = 0;
    for (let nl; (nl = text.indexOf('\n', start)) >= 0; start = nl + 1) {
      if (nl - start <= LIMIT) lines.push(text.slice(start, nl));
      else start = this.pieces(text, start, nl, lines);
    }
    let rest = start ? text.slice(start) : text;
    if (rest.length >= LIMIT) {
      const end = this.pieces(rest, 0, rest.length, lines, true);
      rest = rest.slice(end);
      this.glued = !rest;
    }
    if (final && rest) { lines.push(rest); rest = ''; }
    this.partial = rest;
    return lines;
  }

  // Pushes text[start:end] as pieces of LIMIT (only whole ones when `whole`);
  // returns where the pieces stopped.
  pieces(text, start, end, lines, whole = false) {
    while (start < end) {
      let stop = start + LIMIT;
      if (stop >= end) {
        if (whole && stop > end) break;
        stop = end;
      } else if (isHighSurrogate(text.charCodeAt(stop - 1))) {
        stop--; // never half a pair
      }
      lines.push(text.slice(start, stop));
      start = stop;
    }
    return start;
  }

  send(lines) {
    if (lines.length && !this.conn.destroyed) this.conn.write(`${this.head}${JSON.stringify(lines)}}\n`);
  }
}

function inOwnPidNamespace() { // certain to be alone in the container's PID namespace (else never kill)
  if (process.env.FUNCTIONS_RUNTIME_PID_NAMESPACE !== '1' || process.ppid !== 1) return false;
  try {
    return ['docker-init', 'tini'].includes(fs.readFileSync('/proc/1/comm', 'utf8').trim());
  } catch (_) {
    return false;
  }
}

function procState(pid) {
  let stat;
  try { stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1'); } catch (_) { return null; }
  return stat.charAt(stat.lastIndexOf(')') + 2);
}

// null: the entry is gone. A process gone between the listing and the read
// may have forked first, so "stopped" (stable: can fork no more) leaves it out.
const DEAD = new Set([null, 'Z', 'X', 'x']);
const STOPPED = new Set(['Z', 'X', 'x', 'T', 't']);

function signal(pid, sig) {
  if (!Number.isInteger(pid) || pid <= 1) return; // never 0, -1 (every process) or init
  try { process.kill(pid, sig); } catch (_) { /* gone, or not ours */ }
}

class Reaper { // kills every process of the container but PID 1, the supervisor and the worker
  constructor(enabled) { this.enabled = enabled; }
  others(exempt) {
    return fs.readdirSync('/proc').filter((n) => n.charCodeAt(0) <= 57 && /^\d+$/.test(n)).map(Number).filter((p) => !exempt.has(p));
  }
  reap(workerPid) { // true when nothing is left (always true when disabled)
    if (!this.enabled) return true;
    const exempt = new Set([1, process.pid]);
    if (Number.isInteger(workerPid) && workerPid > 1) exempt.add(workerPid);
    else workerPid = null;
    // The usual case: one listing, empty. Any other pid, even one that is gone
    // by the time it is read (a fork bomb churns faster than it can be listed),
    // takes the slow path.
    if (!this.others(exempt).length) return true;
    const deadline = Date.now() + 3000;
    if (workerPid) signal(workerPid, 'SIGSTOP'); // it may be spawning more
    try {
      for (let round = 0; round < 1000; round++) { // stop them all: stopped processes cannot fork
        let running = 0;
        for (const pid of this.others(exempt)) {
          if (!STOPPED.has(procState(pid))) { running++; signal(pid, 'SIGSTOP'); }
        }
        if (!running || Date.now() > deadline) break;
      }
      for (let attempt = 0; attempt < 3; attempt++) {
        let left = this.others(exempt).filter((p) => !DEAD.has(procState(p)));
        for (const pid of left) signal(pid, 'SIGKILL');
        for (let i = 0; i < 100 && left.length; i++) {
          left = left.filter((p) => !DEAD.has(procState(p)));
          if (left.length) sleepSync(5);
        }
        if (!left.length && !this.others(exempt).some((p) => !DEAD.has(procState(p)))) return true;
        if (Date.now() > deadline) break;
      }
      return false;
    } finally {
      if (workerPid) signal(workerPid, 'SIGCONT');
    }
  }
}

class Supervisor {
  constructor(socketPath) {
    this.socketPath = socketPath;
    this.container = inOwnPidNamespace();
    this.reaper = new Reaper(this.container);
    this.seq = 0;
    this.pending = null; // {conn, msg, wid, resolve, out, err, done, liveOut, liveErr}
    this.replyBuf = '';
    this.responseMax = DEFAULT_RESPONSE_MAX;
    this.exiting = false;
    this.conns = new Set();
    this.queue = Promise.resolve(); // one request at a time, across connections
    this.startWorker();
  }

  startWorker() {
    const env = { ...process.env };
    delete env.FUNCTIONS_RUNTIME_SOCKET;
    delete env.FUNCTIONS_RUNTIME_PID_NAMESPACE;
    const w = childProcess.spawn(process.execPath, [...process.execArgv, __filename, '--worker'], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'], env,
    });
    this.worker = w;
    this.workerExit = null;
    w.stdout.on('data', (chunk) => {
      const p = this.pending;
      if (p) { p.out.add(chunk); if (p.liveOut) this.live(p.liveOut, chunk, w.stdout); }
    });
    w.stderr.on('data', (chunk) => {
      const p = this.pending;
      if (p) { p.err.add(chunk); if (p.liveErr) this.live(p.liveErr, chunk, w.stderr); }
    });
    for (const s of [w.stdout, w.stderr, w.stdio[REQUEST_FD], w.stdio[REPLY_FD]]) s.on('error', () => {});
    const replies = w.stdio[REPLY_FD];
    replies.setEncoding('utf8');
    replies.on('data', (chunk) => this.onReply(chunk));
    replies.on('end', () => {
      if (this.workerExit) return;
      setTimeout(() => { if (!this.workerExit) this.compromised('the worker closed its reply channel'); }, 2000).unref();
    });
    w.on('exit', (code, sig) => {
      this.workerExit = { code, sig };
      if (this.exiting) return;
      if (sig === 'SIGKILL') { this.exit(137); return; } // likely the OOM killer: the service finds out
      this.compromised(`the runtime exited unexpectedly (${sig ? `killed by signal ${sig}` : `exit code ${code}`})`);
    });
    w.on('error', (e) => this.compromised(`the worker could not start: ${e.message}`));
  }

  live(live, chunk, stream) { // a live execution's output: its frame, and backpressure
    live.send(live.feed(chunk));
    const conn = live.conn;
    if (live.ending || live.stream || conn.destroyed || conn.writableLength < LIVE_HIGH_WATER) return;
    live.stream = stream;
    stream.pause(); // the worker waits (full pipe) until the service has read the frames
    const go = () => this.unpause(live);
    live.go = go;
    conn.on('drain', go);
    conn.on('close', go);
  }

  unpause(live) {
    if (!live.stream) return;
    live.conn.off('drain', live.go);
    live.conn.off('close', live.go);
    const stream = live.stream;
    live.stream = null;
    stream.resume();
  }

  // What the worker wrote so far and the loop has not read yet (non-blocking).
  // `live` (a live execution, at its end): those lines and the held last part
  // go out as frames.
  drain(stream, tail, live) {
    if (live) {
      live.ending = true;
      while (stream.readableLength && stream.read() !== null); // read while paused: first (via 'data')
      this.unpause(live);
    }
    const fd = stream && stream._handle && stream._handle.fd;
    let lines = live ? [] : null;
    let size = 0;
    if (Number.isInteger(fd) && fd >= 0) {
      const buf = Buffer.allocUnsafe(65536);
      for (let i = 0; i < 100000; i++) {
        let n;
        try { n = fs.readSync(fd, buf, 0, buf.length, null); } catch (_) { break; }
        if (!n) break;
        if (tail) tail.add(buf.subarray(0, n));
        if (live) {
          for (const line of live.feed(buf.subarray(0, n))) { lines.push(line); size += line.length; }
          if (size >= LIVE_BATCH) { live.send(lines); lines = []; size = 0; } // bounded frames
        }
      }
    }
    if (live) {
      for (const line of live.feed(null, true)) lines.push(line);
      live.send(lines);
    }
  }

  onReply(chunk) {
    if (!this.pending || this.pending.done) {
      this.compromised('the worker wrote on its reply channel while no request was in flight');
      return;
    }
    this.replyBuf += chunk;
    const nl = this.replyBuf.indexOf('\n');
    if (nl < 0) {
      if (this.replyBuf.length > 6 * this.responseMax + 8 * 6 * LIMIT) this.compromised("the worker's reply is too long");
      return;
    }
    const line = this.replyBuf.slice(0, nl);
    if (this.replyBuf.length > nl + 1) { this.compromised('the worker wrote more than one reply'); return; }
    this.replyBuf = '';
    let reply;
    try { reply = JSON.parse(line); } catch (_) {
      this.compromised(`the worker's reply is not JSON: ${JSON.stringify(line.slice(0, 200))}`);
      return;
    }
    if (!reply || typeof reply !== 'object' || reply.id !== this.pending.wid) {
      this.compromised("the worker's reply has the wrong request id");
      return;
    }
    delete reply.id;
    this.finish(reply);
  }

  finish(reply) {
    const p = this.pending;
    p.done = true;
    this.drain(this.worker.stdout, p.out, p.liveOut);
    this.drain(this.worker.stderr, p.err, p.liveErr);
    let out = reply;
    if (p.msg.type === 'execute') {
      out = { statusCode: reply.statusCode === undefined ? 500 : reply.statusCode, body: reply.body || '',
        logs: p.out.done(), errors: p.err.done(), error: reply.error || '' };
    } else if (p.msg.type === 'ping' && reply.ok === true) {
      out = { ok: true, runtime: 'node', pid: process.pid, version: process.versions.node };
    } else if (p.msg.type === 'load' && reply.ok === true
               && Number.isInteger(p.msg.responseMaxBytes) && p.msg.responseMaxBytes >= 0) {
      this.responseMax = p.msg.responseMaxBytes;
    }
    const clean = this.reaper.reap(this.worker.pid);
    this.lastReap = Date.now();
    this.pending = null;
    if (!clean) {
      this.answer(p.conn, p.msg, { ...out, closing: true });
      this.compromised('processes started by the function could not be stopped');
    } else {
      this.answer(p.conn, p.msg, out);
    }
    p.resolve();
  }

  compromised(reason) { // answer what is pending, then exit
    if (this.exiting) return;
    const p = this.pending;
    if (p && !p.done) {
      p.done = true;
      this.drain(this.worker.stdout, p.out, p.liveOut); // (still pending: read while paused counts)
      this.drain(this.worker.stderr, p.err, p.liveErr);
      this.pending = null;
      const error = `Execution failed: ${reason}; the container is discarded.`;
      const out = p.msg.type === 'execute'
        ? { statusCode: 500, body: '', logs: p.out.done(), errors: p.err.done(), error, closing: true }
        : { ok: false, error, closing: true };
      this.answer(p.conn, p.msg, out);
    }
    this.pending = null;
    try { process.stderr.write(`functions-runtime: ${reason}; exiting\n`); } catch (_) { /* gone */ }
    this.exit(1);
  }

  exit(code) {
    if (this.exiting) return;
    this.exiting = true;
    try { this.worker.kill('SIGKILL'); } catch (_) { /* gone */ }
    this.reaper.reap(null);
    try { fs.unlinkSync(this.socketPath); } catch (_) { /* gone, or not ours */ }
    let left = this.conns.size;
    const done = () => process.exit(code);
    if (!left) done();
    for (const conn of this.conns) conn.end(() => { if (--left === 0) done(); });
    setTimeout(done, 1000).unref();
  }

  answer(conn, msg, reply) {
    if (msg && typeof msg === 'object' && 'id' in msg) reply.id = msg.id;
    if (!conn.destroyed) conn.write(`${JSON.stringify(reply)}\n`);
  }

  toWorker(conn, msg) {
    let wid = msg.id;
    if (typeof wid !== 'string' || !wid) wid = `s${++this.seq}-${crypto.randomBytes(8).toString('hex')}`;
    return new Promise((resolve) => {
      if (this.exiting) { resolve(); return; }
      // (output that arrived while idle was dropped by the 'data' handlers)
      this.pending = { conn, msg, wid, resolve, out: new OutputTail(), err: new OutputTail(), done: false,
        liveOut: null, liveErr: null };
      if (msg.live === true && msg.type === 'execute') {
        this.pending.liveOut = new LiveLines(conn, msg, 'stdout');
        this.pending.liveErr = new LiveLines(conn, msg, 'stderr');
      }
      this.replyBuf = '';
      this.worker.stdio[REQUEST_FD].write(`${JSON.stringify({ ...msg, id: wid })}\n`);
    });
  }

  async handle(conn, line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      this.answer(conn, null, { ok: false, error: `invalid JSON: ${e.message}` });
      return;
    }
    const type = msg && typeof msg === 'object' ? msg.type : undefined;
    // A ping goes through the worker too: the runtime is ready when the worker
    // answers, not merely when this process listens.
    if (type === 'execute' || type === 'load' || type === 'ping') await this.toWorker(conn, msg);
    else this.answer(conn, msg, { ok: false, error: `unknown message type: ${JSON.stringify(type)}` });
  }

  onConnection(conn) {
    this.conns.add(conn);
    conn.on('close', () => this.conns.delete(conn));
    if (this.exiting) { conn.destroy(); return; }
    conn.on('error', () => conn.destroy());
    onLines(conn, (line) => {
      this.queue = this.queue.then(() => (conn.destroyed ? null : this.handle(conn, line)))
        .catch((e) => this.compromised(`supervisor error: ${errorText(e)}`));
    }, () => conn.end('{"ok":false,"error":"request line too long"}\n'), MAX_LINE);
  }

  listen() {
    try { fs.unlinkSync(this.socketPath); } catch (_) { /* no stale socket */ }
    const server = net.createServer((conn) => this.onConnection(conn));
    server.on('error', (e) => {
      process.stderr.write(`cannot listen on ${this.socketPath}: ${e.message}\n`);
      this.exit(1);
    });
    const old = process.umask(0o177); // created 0600: no window with a wider mode
    server.listen(this.socketPath, () => {
      process.stderr.write(`functions-runtime node ${process.version} listening on ${this.socketPath}\n`);
    });
    process.umask(old); // bind(2) ran synchronously inside listen()
    if (this.container) {
      this.lastReap = Date.now();
      setInterval(() => {
        if (this.pending || this.exiting || Date.now() - this.lastReap < IDLE_REAP_MS) return;
        this.lastReap = Date.now();
        if (!this.reaper.reap(this.worker.pid)) this.compromised('processes started by the function could not be stopped');
      }, IDLE_REAP_MS).unref();
    }
  }
}

function main() {
  if (process.argv[2] === '--worker') { workerMain(); return; }
  const socketPath = process.env.FUNCTIONS_RUNTIME_SOCKET;
  if (!socketPath) {
    process.stderr.write('FUNCTIONS_RUNTIME_SOCKET is not set\n');
    process.exit(1);
  }
  const supervisor = new Supervisor(socketPath);
  const stop = () => supervisor.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('uncaughtException', (e) => supervisor.compromised(`supervisor error: ${errorText(e)}`));
  supervisor.listen();
}

main();
