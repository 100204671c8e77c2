// Deployments and executions with node-appwrite 5.1.0, unmodified: a small
// upload, a chunked one (> 5 MiB), activation, sync and async executions.
// Prints one JSON object; the assertions live in tests/test_sdk_node_lifecycle.py.
const sdk = require('node-appwrite');

const [endpoint, project, key, functionId, smallPath, bigPath] = process.argv.slice(2);
const client = new sdk.Client().setEndpoint(endpoint).setProject(project).setKey(key);
const functions = new sdk.Functions(client);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitBuild(deploymentId) {
  for (let i = 0; i < 600; i++) {
    const dep = await functions.getDeployment(functionId, deploymentId);
    if (dep.status === 'ready' || dep.status === 'failed') return dep;
    await sleep(100);
  }
  throw new Error('build did not finish');
}

(async () => {
  const out = {};
  await functions.create(functionId, 'node lifecycle', ['role:all'], 'python-3.11');
  const small = await functions.createDeployment(functionId, 'main.py', smallPath, true);
  out.small = await waitBuild(small.$id);
  out.activeAfterSmall = (await functions.get(functionId)).deployment;
  const progress = [];
  const big = await functions.createDeployment(functionId, 'main.py', bigPath, false, (p) => progress.push(p));
  out.bigUpload = big;
  out.progress = progress;
  out.big = await waitBuild(big.$id);
  out.activated = await functions.updateDeployment(functionId, big.$id);
  out.sync = await functions.createExecution(functionId, 'from node', false);
  const queued = await functions.createExecution(functionId, 'later');
  out.queued = queued;
  for (let i = 0; i < 600; i++) {
    out.async = await functions.getExecution(functionId, queued.$id);
    if (out.async.status === 'completed' || out.async.status === 'failed') break;
    await sleep(100);
  }
  out.list = await functions.listExecutions(functionId);
  out.deleted = await functions.deleteDeployment(functionId, small.$id);
  await functions.delete(functionId);
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.log(JSON.stringify({ fatal: String(e && e.message), code: e && e.code, response: e && e.response }));
  process.exit(1);
});
