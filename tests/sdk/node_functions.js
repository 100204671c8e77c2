#!/usr/bin/env node
// Every function-management call of the official node client of the Appwrite
// 0.13 era (npm node-appwrite 5.1.0, unmodified) against a running service.
//
// Usage: node node_functions.js [endpoint project key readKey tag]
//   or the env APPWRITE_ENDPOINT, APPWRITE_PROJECT, APPWRITE_KEY,
//   APPWRITE_READ_KEY (a key with only functions.read) and APPWRITE_TAG (a
//   unique lowercase word: prefix of every id and name created here).
//
// It asserts nothing: it prints one JSON object, {steps: {name: outcome}},
// where an outcome is {ok: <SDK return value>} or {error: {code, type,
// message, response}} (AppwriteException's fields), and tests/test_sdk_node.py
// checks it. It deletes what it created. Exit status 0 unless the scenario
// itself crashed (then the object also has `fatal`, and the status is 1).
//
// The SDK sends `null` JSON bodies (Content-Type application/json) on every
// GET and `{}` on DELETE: ../../shared/research/sdk-client.md.

'use strict';

const sdk = require('node-appwrite');

const [argEndpoint, argProject, argKey, argReadKey, argTag] = process.argv.slice(2);
const endpoint = argEndpoint || process.env.APPWRITE_ENDPOINT;
const project = argProject || process.env.APPWRITE_PROJECT || 'default';
const key = argKey || process.env.APPWRITE_KEY;
const readKey = argReadKey || process.env.APPWRITE_READ_KEY;
const tag = argTag || process.env.APPWRITE_TAG || ('js' + Date.now().toString(36));

const EVENTS = ['account.create', 'database.documents.create'];

function functionsFor(apiKey) {
  const client = new sdk.Client().setEndpoint(endpoint).setProject(project).setKey(apiKey);
  return new sdk.Functions(client);
}

async function main() {
  const steps = {};
  const result = { tag, steps };
  const functions = functionsFor(key);
  const created = new Set();

  // Runs one SDK call and records its outcome; returns the value (or undefined).
  async function step(name, call) {
    try {
      const value = await call();
      steps[name] = { ok: value === undefined ? null : value };
      return value;
    } catch (e) {
      if (!(e instanceof sdk.AppwriteException)) {
        steps[name] = { crash: String(e && e.stack || e) };
        return undefined;
      }
      steps[name] = { error: { code: e.code, type: e.type, message: e.message, response: e.response } };
      return undefined;
    }
  }
  async function create(name, ...args) {
    const value = await step(name, () => functions.create(...args));
    if (value && value.$id) created.add(value.$id);
    return value;
  }

  try {
    if (!endpoint || !key) {
      throw new Error('endpoint and key are required (argv or APPWRITE_ENDPOINT / APPWRITE_KEY)');
    }
    const runtimes = await step('listRuntimes', () => functions.listRuntimes());
    const runtime = runtimes.runtimes[0].$id;

    // create: custom id with every option, the minimal form, unique().
    const full = `${tag}full`;
    await create('createFull', full, `${tag} Full`, ['role:all', 'team:abc'], runtime,
      { API_KEY: 'secret', MODE: 'test' }, EVENTS, '*/5 * * * *', 30);
    await step('getFull', () => functions.get(full));
    const minimal = `${tag}min`;
    await create('createMinimal', minimal, 'Minimal', [], runtime);
    await step('getMinimal', () => functions.get(minimal));
    const first = await create('createUnique1', 'unique()', `${tag} uniq one`, ['role:all'], runtime, { A: '1' }, undefined, undefined, 5);
    await create('createUnique2', 'unique()', `${tag} uniq two`, [], runtime);
    if (first) await step('getUnique1', () => functions.get(first.$id));

    // list: search with a space (sent as `+`).
    await create('createAlpha', `${tag}a`, `${tag}alpha ${tag}beta`, [], runtime);
    await create('createDelta', `${tag}c`, `${tag}delta`, [], runtime);
    await step('listSearchSpace', () => functions.list(`${tag}alpha ${tag}beta`));
    await step('listSearchId', () => functions.list(`${tag}c`));
    await step('listSearchNothing', () => functions.list(`${tag}nomatch`));

    // list: paging over 5 functions, scoped by the word `${tag}pg`.
    for (let i = 0; i < 5; i++) {
      await create(`createPage${i}`, `${tag}p${i}`, `${tag}pg item${i}`, [], runtime);
    }
    const pg = `${tag}pg`;
    const lists = {
      all: [pg],
      limit2: [pg, 2],
      limit2offset2: [pg, 2, 2],
      offset4: [pg, undefined, 4],
      cursorP1: [pg, undefined, undefined, `${tag}p1`],
      cursorP1limit1: [pg, 1, undefined, `${tag}p1`],
      cursorP3after: [pg, undefined, undefined, `${tag}p3`, 'after'],
      cursorP3before: [pg, undefined, undefined, `${tag}p3`, 'before'],
      desc: [pg, undefined, undefined, undefined, undefined, 'DESC'],
      descLimit2: [pg, 2, undefined, undefined, undefined, 'DESC'],
      descCursorP2: [pg, undefined, undefined, `${tag}p2`, undefined, 'DESC'],
      descCursorP2before: [pg, undefined, undefined, `${tag}p2`, 'before', 'DESC'],
    };
    for (const [name, args] of Object.entries(lists)) {
      await step(`list_${name}`, () => functions.list(...args));
    }

    // update: PUT replaces; the omitted optional fields go back to defaults.
    await step('updateReplace', () => functions.update(full, 'After', ['role:member']));
    await step('getAfterReplace', () => functions.get(full));
    await step('updateAll', () => functions.update(full, 'Again', [], { X: 'y' }, ['functions.create'], '30 2 * * *', 900));
    await step('getAfterUpdateAll', () => functions.get(full));

    // delete: 204.
    await step('delete', () => functions.delete(minimal));
    await step('getDeleted', () => functions.get(minimal));
    await step('deleteAgain', () => functions.delete(minimal));

    // errors.
    const missing = `${tag}missing`;
    await step('errGetMissing', () => functions.get(missing));
    await step('errUpdateMissing', () => functions.update(missing, 'x', []));
    await step('errDeleteMissing', () => functions.delete(missing));
    await step('errDuplicate', () => functions.create(full, 'dup', [], runtime));
    await create('errInvalidId', 'bad id!', 'x', [], runtime);
    await create('errLongId', 'a'.repeat(37), 'x', [], runtime);
    await create('errRuntime', `${tag}bad1`, 'x', [], 'cobol-1.0');
    await create('errTimeout', `${tag}bad2`, 'x', [], runtime, undefined, undefined, undefined, 0);
    await create('errCron', `${tag}bad3`, 'x', [], runtime, undefined, undefined, 'every minute');
    await create('errEvent', `${tag}bad4`, 'x', [], runtime, undefined, ['no.such.event']);
    await step('errUpdateTimeout', () => functions.update(full, 'x', [], undefined, undefined, undefined, 10000));
    await step('getAfterBadUpdate', () => functions.get(full));
    await step('errListLimit', () => functions.list(undefined, 101));
    await step('errListCursor', () => functions.list(undefined, undefined, undefined, 'nosuchfunction'));
    await step('errListDirection', () => functions.list(undefined, undefined, undefined, undefined, 'sideways'));
    await step('errListOrder', () => functions.list(undefined, undefined, undefined, undefined, undefined, 'RANDOM'));

    // A key with only functions.read: reads work, writes get 401.
    if (readKey) {
      const readOnly = functionsFor(readKey);
      await step('scopedGet', () => readOnly.get(full));
      await step('scopedList', () => readOnly.list(full));
      await step('scopedCreate', () => readOnly.create(`${tag}scoped`, 'x', [], runtime));
      await step('scopedUpdate', () => readOnly.update(full, 'x', []));
      await step('scopedDelete', () => readOnly.delete(full));
      await step('getAfterScoped', () => functions.get(full));
    }
    await step('errUnknownKey', () => functionsFor('not-a-key').list());
  } catch (e) {
    result.fatal = String(e && e.stack || e);
  } finally {
    const cleanup = {};
    for (const id of created) {
      try {
        await functions.delete(id);
      } catch (e) {
        if (e.code !== 404) cleanup[id] = `${e.code} ${e.message}`;
      }
    }
    steps.cleanupFailures = { ok: cleanup };
  }
  return result;
}

main().then((result) => {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = result.fatal ? 1 : 0;
});
