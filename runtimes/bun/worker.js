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
 *       Awaits fn(req, res), the Appwrite 0.13 contract of the Node runtime
 *       (node/contract.js, shared with it: /opt/functions-runtime/node/ in a
 *       container): req.payload (string), req.env, req.headers (objects);
 *       res.send(text, status = 200), res.json(obj, status = 200); the first
 *       call wins. No call: 500 "Function finished without responding: ...". A throw
 *       or rejection: 500, body "", error = the stack. process.env is
 *       overlaid with env for the call and restored afterwards. Output is on
 *       its fd (1 or 2) before the reply is written: console.* writes at once,
 *       process.stdout/stderr are made synchronous here (see syncStdio);
 *       Bun.write(Bun.stdout, ...) must be awaited.
 *   anything else -> {"id":..,"ok":false,"error":"unknown message type: .."}
 *
 * The supervisor enforces the response size limit and cuts long errors (the
 * contract does both too, with the same messages).
 */

const fs = require('fs');
const { ownFile, writeAllSync, Worker } = require('../node/contract.js');

ownFile(__filename); // its frames leave the stacks shown

const argv = process.argv;
const REQUEST_FD = Number(argv[argv.length - 2]);
const REPLY_FD = Number(argv[argv.length - 1]);

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

function main() {
  if (!Number.isInteger(REQUEST_FD) || !Number.isInteger(REPLY_FD) || REQUEST_FD < 0 || REPLY_FD < 0) {
    writeStdio(2, 'usage: bun worker.js REQUEST_FD REPLY_FD\n');
    process.exit(2);
  }
  syncStdio();
  const worker = new Worker({
    writeErr: (text) => writeStdio(2, text),
    importEntry: (file) => import(file), // CommonJS, ES module or TypeScript alike
    ping: () => ({ ok: true, version: Bun.version }),
    defaultCodeDir: '/opt/functions/code',
  });
  worker.serve(fs.createReadStream(null, { fd: REQUEST_FD, highWaterMark: 1 << 16, autoClose: false }), REPLY_FD);
}

main();
