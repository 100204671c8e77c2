// Uses the local package `greeter` (packages/greeter), installed offline by
// runtimes/bun/build.sh with `bun install` from package.json (a file: dependency).
const { greet } = require('greeter');

module.exports = async (req, res) => res.send(greet(req.payload));
