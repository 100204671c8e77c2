const { greet } = require('greeter');

module.exports = async (req, res) => res.send(greet(req.payload));
